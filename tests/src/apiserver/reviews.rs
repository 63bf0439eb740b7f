//! `SelfSubjectAccessReview`, as `kubectl auth can-i` and `veil check --pre` ask it: the review
//! echoed back with its `status`, `201 Created`, nothing stored. Every request is allowed (the
//! stand-in's client is an administrator) unless a test denied its group and resource
//! ([`ApiStore::deny`]); a review without attributes is refused with `422`, as the real server
//! refuses it.

use http::StatusCode;
use serde_json::{Value, json};

use super::{ApiStore, Body, json_response};

/// Where reviews are posted.
pub(super) const REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

impl ApiStore {
    /// From now on, reviews of any verb on `resource` of `group` (`""`: the core group) are
    /// answered "not allowed".
    pub fn deny(&mut self, group: &str, resource: &str) {
        self.denied.insert((group.to_owned(), resource.to_owned()));
    }

    /// The answer to `POST` of a review with `body`.
    pub(super) fn review(&self, body: &[u8]) -> http::Response<Body> {
        let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
            return invalid(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not JSON",
            );
        };
        let attributes = review.pointer("/spec/resourceAttributes").cloned();
        let non_resource = review.pointer("/spec/nonResourceAttributes").is_some();
        let allowed = match (attributes, non_resource) {
            (Some(a), false) => {
                let field = |f: &str| a.get(f).and_then(Value::as_str).unwrap_or_default();
                !self
                    .denied
                    .contains(&(field("group").to_owned(), field("resource").to_owned()))
            }
            (None, true) => true,
            _ => {
                return invalid(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                );
            }
        };
        review["metadata"] = json!({"creationTimestamp": null});
        review["status"] = if allowed {
            json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"cluster-admin\" of ClusterRole \"cluster-admin\" to Group \"system:masters\""})
        } else {
            json!({"allowed": false})
        };
        json_response(StatusCode::CREATED, review.to_string().into())
    }
}

fn invalid(code: StatusCode, reason: &str, message: &str) -> http::Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    json_response(code, status.to_string().into())
}
