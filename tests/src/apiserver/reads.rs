//! Reads beside the cluster-wide lists and watches: one object by name, a namespace's objects (with
//! equality label and field selectors, as `kubectl get -l … --field-selector …` sends them), and
//! `/version`. Answers are shaped as the real API server's, `404 NotFound` included.
//!
//! Selectors are honoured on these namespaced lists only: the cluster-wide lists keep answering as
//! before (the watchers of veil's components use none). Set-based label selectors (`in`, `notin`)
//! are refused with `400`, not silently ignored.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Value, json};

use super::{ApiStore, Body, RESOURCES, json_response};

/// What `GET /version` answers.
const VERSION: &str = r#"{"major":"1","minor":"33","emulationMajor":"1","emulationMinor":"33","minCompatibilityMajor":"1","minCompatibilityMinor":"32","gitVersion":"v1.33.2","gitCommit":"a57b6f7709f6c2722b92f07b8b4c48210a51fc40","gitTreeState":"clean","buildDate":"2025-06-17T18:31:53Z","goVersion":"go1.24.4","compiler":"gc","platform":"linux/amd64"}"#;

/// What a path asks for.
enum Target<'a> {
    Object {
        namespace: Option<&'a str>,
        name: &'a str,
    },
    List {
        namespace: &'a str,
    },
}

impl ApiStore {
    /// The answer to a GET of `path` this module serves; `None` for any other path.
    pub(super) fn read(
        &self,
        path: &str,
        query: &BTreeMap<&str, &str>,
    ) -> Option<http::Response<Body>> {
        if path == "/version" {
            return Some(json_response(StatusCode::OK, VERSION.into()));
        }
        let (resource, kind, group, target) =
            RESOURCES.iter().find_map(|&(list, resource, kind)| {
                let prefix = list.strip_suffix(resource)?.strip_suffix('/')?;
                let rest: Vec<&str> = path
                    .strip_prefix(prefix)?
                    .strip_prefix('/')?
                    .split('/')
                    .collect();
                let target = match rest.as_slice() {
                    [r, name] if *r == resource => Target::Object {
                        namespace: None,
                        name,
                    },
                    ["namespaces", ns, r] if *r == resource => Target::List { namespace: ns },
                    ["namespaces", ns, r, name] if *r == resource => Target::Object {
                        namespace: Some(ns),
                        name,
                    },
                    _ => return None,
                };
                let group = prefix
                    .strip_prefix("/apis/")
                    .and_then(|g| g.split('/').next())
                    .unwrap_or("");
                Some((resource, kind, group, target))
            })?;
        if !self.serves(resource) {
            return Some(super::unknown_resource());
        }
        Some(match target {
            Target::Object { namespace, name } => match self.find(resource, namespace, name) {
                Some(object) => json_response(StatusCode::OK, object.to_string().into()),
                None => not_found(resource, group, name),
            },
            Target::List { namespace } => self.namespaced_list(resource, kind, namespace, query),
        })
    }

    /// The objects of `resource` as served, parsed.
    fn objects_of<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = Value> + 'a {
        self.objects
            .iter()
            .filter(move |((r, _), _)| *r == resource)
            .filter_map(|(_, bytes)| serde_json::from_slice::<Value>(bytes).ok())
    }

    pub(super) fn find(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.objects_of(resource).find(|o| {
            o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && o.pointer("/metadata/namespace").and_then(Value::as_str) == namespace
        })
    }

    fn namespaced_list(
        &self,
        resource: &str,
        kind: &str,
        namespace: &str,
        query: &BTreeMap<&str, &str>,
    ) -> http::Response<Body> {
        let labels = match query
            .get("labelSelector")
            .map(|s| label_selector(&decode(s)))
            .transpose()
        {
            Ok(l) => l.unwrap_or_default(),
            Err(e) => return bad_request(&e),
        };
        let fields = match query
            .get("fieldSelector")
            .map(|s| field_selector(&decode(s)))
            .transpose()
        {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => return bad_request(&e),
        };
        let items: Vec<Value> = self
            .objects_of(resource)
            .filter(|o| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
            .filter(|o| {
                labels
                    .iter()
                    .all(|r| r.matches(o.pointer("/metadata/labels")))
            })
            .filter(|o| {
                fields.iter().all(|(path, op, value)| {
                    let actual = o
                        .pointer(path)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .unwrap_or_default();
                    (actual == *value) == (*op == "=")
                })
            })
            .collect();
        let list = json!({
            "kind": format!("{kind}List"),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": self.version.to_string()},
            "items": items,
        });
        json_response(StatusCode::OK, list.to_string().into())
    }
}

/// One requirement of an equality-based label selector.
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Requirement {
    fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            Self::Equals(k, v) => get(k) == Some(v.as_str()),
            Self::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Self::Exists(k) => get(k).is_some(),
            Self::Absent(k) => get(k).is_none(),
        }
    }
}

fn label_selector(s: &str) -> Result<Vec<Requirement>, String> {
    if s.contains('(') {
        return Err(format!(
            "set-based label selectors are not served by the stand-in: {s}"
        ));
    }
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            Ok(if let Some((k, v)) = r.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = r.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else if r.contains(' ') {
                return Err(format!("unparseable label selector {r:?}"));
            } else {
                Requirement::Exists(r.into())
            })
        })
        .collect()
}

/// `(JSON pointer, "=" or "!=", value)` of each requirement of a field selector.
fn field_selector(s: &str) -> Result<Vec<(String, &'static str, String)>, String> {
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (path, op, value) = if let Some((k, v)) = r.split_once("!=") {
                (k, "!=", v)
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                (k, "=", v)
            } else {
                return Err(format!("unparseable field selector {r:?}"));
            };
            Ok((format!("/{}", path.replace('.', "/")), op, value.to_owned()))
        })
        .collect()
}

/// A query value, percent- and `+`-decoded as the API server reads it.
fn decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn not_found(resource: &str, group: &str, name: &str) -> http::Response<Body> {
    let qualified = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    };
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("{qualified} \"{name}\" not found"), "reason": "NotFound", "details": {"name": name, "group": group, "kind": resource}, "code": 404});
    json_response(StatusCode::NOT_FOUND, status.to_string().into())
}

fn bad_request(message: &str) -> http::Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "BadRequest", "code": 400});
    json_response(StatusCode::BAD_REQUEST, status.to_string().into())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::Api;

    fn read(api: &Api, uri: &str) -> (u16, Value) {
        let req = http::Request::get(uri).body(()).unwrap();
        let response = api.read(&req).expect("a served path");
        crate::apiserver::status_and_json(response)
    }

    fn pod(ns: &str, name: &str, app: &str, phase: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/name": app}}, "status": {"phase": phase}})
    }

    #[test]
    fn objects_are_read_by_name_and_by_namespace_with_selectors() {
        let api = Api::default();
        api.change(|s| {
            s.put("pods", "a", pod("veil-system", "ztunnel-a", "ztunnel", "Running"), false);
            s.put("pods", "b", pod("veil-system", "ztunnel-b", "ztunnel", "Pending"), false);
            s.put("pods", "c", pod("veil-system", "veil-ca-1", "veil-ca", "Running"), false);
            s.put("pods", "d", pod("shop", "ztunnel-x", "ztunnel", "Running"), false);
            let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x.security.veil.dev"}});
            s.put("customresourcedefinitions", "x", crd, false);
        });
        let names = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        // As kube and `veil check` send them: percent-encoded.
        let (code, list) = read(
            &api,
            "/api/v1/namespaces/veil-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dztunnel&limit=500",
        );
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(names(&list), ["ztunnel-a", "ztunnel-b"]);
        let (_, running) = read(
            &api,
            "/api/v1/namespaces/veil-system/pods?labelSelector=app.kubernetes.io/name!=veil-ca&fieldSelector=status.phase%3DRunning",
        );
        assert_eq!(names(&running), ["ztunnel-a"]);
        let (_, absent) = read(
            &api,
            "/api/v1/namespaces/veil-system/pods?labelSelector=!app.kubernetes.io/name",
        );
        assert_eq!(names(&absent), Vec::<String>::new());
        assert_eq!(
            read(
                &api,
                "/api/v1/namespaces/veil-system/pods?labelSelector=app+in+(a,b)"
            )
            .0,
            400
        );

        let (code, one) = read(&api, "/api/v1/namespaces/veil-system/pods/veil-ca-1");
        assert_eq!(
            (code, one["metadata"]["name"].as_str()),
            (200, Some("veil-ca-1"))
        );
        let (code, missing) = read(
            &api,
            "/apis/apps/v1/namespaces/veil-system/deployments/veil-ca",
        );
        assert_eq!(code, 404);
        assert_eq!(missing["message"], "deployments.apps \"veil-ca\" not found");
        assert_eq!(
            read(
                &api,
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.security.veil.dev"
            )
            .0,
            200
        );
        assert_eq!(read(&api, "/version").1["gitVersion"], "v1.33.2");
        // Not this module's: the watched lists, leases, and the pod proxy.
        for other in [
            "/api/v1/pods",
            "/apis/coordination.k8s.io/v1/namespaces/veil-system/leases/l",
            "/api/v1/namespaces/veil-system/pods/ztunnel-a:15020/proxy/metrics",
        ] {
            assert!(
                api.read(&http::Request::get(other).body(()).unwrap())
                    .is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn the_pod_proxy_goes_to_the_pods_address() {
        let api = Api::default();
        api.change(|s| {
            let mut ready = pod("veil-system", "ztunnel-a", "ztunnel", "Running");
            ready["status"]["podIP"] = json!("10.10.0.11");
            s.put("pods", "a", ready, false);
            s.put(
                "pods",
                "b",
                pod("veil-system", "ztunnel-b", "ztunnel", "Pending"),
                false,
            );
        });
        let route = |path: &str, query: Option<&str>| api.lock().proxy_route(path, query);
        let (target, path) = route(
            "/api/v1/namespaces/veil-system/pods/ztunnel-a:15020/proxy/metrics",
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (target.to_string(), path.as_str()),
            ("10.10.0.11:15020".into(), "/metrics")
        );
        let (target, path) = route(
            "/api/v1/namespaces/veil-system/pods/http:ztunnel-a:15021/proxy/healthz/ready",
            Some("verbose=1"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (target.port(), path.as_str()),
            (15021, "/healthz/ready?verbose=1")
        );
        assert_eq!(
            route(
                "/api/v1/namespaces/veil-system/pods/ztunnel-b:15020/proxy/metrics",
                None
            )
            .unwrap()
            .unwrap_err()
            .status(),
            503
        );
        assert_eq!(
            route(
                "/api/v1/namespaces/shop/pods/ztunnel-a:15020/proxy/metrics",
                None
            )
            .unwrap()
            .unwrap_err()
            .status(),
            404
        );
        assert!(route("/api/v1/namespaces/veil-system/pods/ztunnel-a", None).is_none());
        assert!(route("/api/v1/namespaces/veil-system/pods/ztunnel-a/status", None).is_none());
    }
}
