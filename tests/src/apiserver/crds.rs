//! veil's kinds are served as a real API server serves a CustomResourceDefinition's: only while
//! the CRD is stored — else `404 NotFound` with the real server's body, and a watch of the kind
//! ends when its CRD is deleted — in a store that holds any CRD at all. A store that models no CRD
//! (most meshes of the suite, the scale benchmark) serves every kind.

use http::StatusCode;
use serde_json::json;

use super::{ApiStore, Body, RESOURCES, json_response};

/// The group of veil's custom resources.
const CRD_GROUP: &str = "security.veil.dev";

/// The resource CRDs are stored under.
const CRDS: &str = "customresourcedefinitions";

impl ApiStore {
    /// Whether the API serves `resource` now.
    pub(super) fn serves(&self, resource: &str) -> bool {
        let custom = RESOURCES
            .iter()
            .any(|(path, r, _)| *r == resource && path.starts_with(&format!("/apis/{CRD_GROUP}/")));
        !custom
            || !self.models_crds()
            || self
                .find(CRDS, None, &format!("{resource}.{CRD_GROUP}"))
                .is_some()
    }

    fn models_crds(&self) -> bool {
        self.objects
            .range((CRDS, String::new())..)
            .next()
            .is_some_and(|((r, _), _)| *r == CRDS)
    }
}

/// What the real API server answers for a resource it does not serve (a CRD not installed).
pub fn unknown_resource() -> http::Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the server could not find the requested resource", "reason": "NotFound", "details": {}, "code": 404});
    json_response(StatusCode::NOT_FOUND, status.to_string().into())
}

#[cfg(test)]
mod tests {
    use http::Request;
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::super::Api;
    use super::*;

    fn crd(plural: &str) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{CRD_GROUP}")},
            "spec": {"group": CRD_GROUP, "names": {"plural": plural}, "scope": "Namespaced"}})
    }

    fn get(api: &Api, uri: &str) -> (u16, Value) {
        let req = Request::get(uri).body(()).unwrap();
        let response = api
            .handle(&req)
            .or_else(|| api.read(&req))
            .expect("a served path");
        crate::apiserver::status_and_json(response)
    }

    #[tokio::test]
    async fn a_kind_is_served_while_its_crd_is_installed_and_its_watches_end_with_it() {
        let api = Api::default();
        let telemetries = "/apis/security.veil.dev/v1/telemetries";
        // No CRD modelled: every kind is served.
        assert_eq!(get(&api, telemetries).0, 200);

        api.change(|s| {
            s.put(CRDS, "ap", crd("authorizationpolicies"), true);
        });
        let (code, status) = get(&api, telemetries);
        assert_eq!(code, 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(
            status["message"],
            "the server could not find the requested resource"
        );
        assert_eq!(get(&api, &format!("{telemetries}?watch=true")).0, 404);
        assert_eq!(
            get(
                &api,
                "/apis/security.veil.dev/v1/namespaces/shop/telemetries"
            )
            .0,
            404
        );
        assert_eq!(
            get(&api, "/apis/security.veil.dev/v1/authorizationpolicies").0,
            200
        );
        assert_eq!(
            get(&api, "/api/v1/pods").0,
            200,
            "built-in kinds need no CRD"
        );

        // Installed: served, and watched; deleted: the watch delivers what went before and ends.
        api.change(|s| s.put(CRDS, "te", crd("telemetries"), true));
        assert_eq!(get(&api, telemetries).0, 200);
        let from = api.lock().version();
        let watch = Request::get(format!("{telemetries}?watch=true&resourceVersion={from}"))
            .body(())
            .unwrap();
        let mut body = api.handle(&watch).expect("a watch").into_body();
        let object = json!({"apiVersion": "security.veil.dev/v1", "kind": "Telemetry", "metadata": {"name": "quiet", "namespace": "shop"}, "spec": {}});
        api.change(|s| s.put("telemetries", "shop/quiet", object, true));
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(frame.starts_with(br#"{"type":"ADDED""#));
        api.change(|s| {
            s.delete("telemetries", "shop/quiet");
            s.delete(CRDS, "te");
        });
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(frame.starts_with(br#"{"type":"DELETED""#));
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("the watch ends");
        assert!(end.is_none());
        assert_eq!(get(&api, telemetries).0, 404);
    }
}
