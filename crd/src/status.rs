//! The `status` of veil's policies: whether a policy was accepted, and where and how it is enforced.
//! Written by veil's control plane; conditions follow the Kubernetes conventions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the policy is valid and in force (`True`), or refused (`False`, reason
/// [`REASON_INVALID`], the validation error in the message).
pub const ACCEPTED: &str = "Accepted";
/// Condition type: how the policy is enforced. Its reason says where.
pub const ENFORCED: &str = "Enforced";

/// Accepted.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Refused by validation.
pub const REASON_INVALID: &str = "Invalid";
/// Enforced by the ztunnels of the selected workloads.
pub const REASON_ZTUNNEL: &str = "Ztunnel";
/// Enforced by a waypoint.
pub const REASON_WAYPOINT: &str = "Waypoint";
/// Uses HTTP attributes on workloads without a waypoint: denies whatever it could match.
pub const REASON_FAILING_CLOSED: &str = "FailingClosed";
/// Attached to a Service without a waypoint: enforced at L4 by the ztunnels of its pods, its HTTP
/// conditions denying whatever they could match.
pub const REASON_NO_WAYPOINT: &str = "NoWaypoint";
/// Selects nothing at the moment.
pub const REASON_NO_TARGETS: &str = "NoTargets";

/// The status of an AuthorizationPolicy or PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted` and `Enforced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
