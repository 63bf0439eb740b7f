//! The writes the stand-in API server takes: coordination.k8s.io Leases (get, create, server-side
//! apply and merge patches, with the field ownership that makes two appliers of a different
//! `holderIdentity` conflict, as the real server's does), merge patches of policies' status
//! subresource (stored, announced to watches, logged), and creates and server-side applies of
//! Secrets and ConfigMaps (what the CA writes: its root Secret, once, and the root ConfigMap in
//! every namespace). Anything else is not served.
//!
//! Field ownership is modelled for the Lease's `spec` fields only, one owner per field: an apply
//! that changes a field another manager set is refused with `409 Conflict` (unless forced); an
//! update (merge or strategic patch) never conflicts and takes ownership; a field set to `null` is
//! removed with its owner.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::{ApiStore, Body, json_response};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";
/// The core kinds created and applied here.
const CORE: &[&str] = &["secrets", "configmaps"];

/// A Lease and who owns each of its `spec` fields.
#[derive(Debug, Default)]
pub(super) struct Lease {
    object: Value,
    owners: BTreeMap<String, String>,
}

/// A write request.
#[derive(Debug)]
pub struct Write<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its path.
    pub path: &'a str,
    /// Its query string's pairs.
    pub query: &'a BTreeMap<&'a str, &'a str>,
    /// Its `Content-Type`.
    pub content_type: &'a str,
    /// Its body.
    pub body: &'a [u8],
}

fn status(code: StatusCode, reason: &str, message: &str) -> http::Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code.as_u16()});
    json_response(code, body.to_string().into())
}

fn ok(code: StatusCode, object: &Value) -> http::Response<Body> {
    json_response(code, object.to_string().into())
}

/// RFC 7386 JSON merge patch of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(fields) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

impl ApiStore {
    /// The answer to a write; `None` for a path this server does not write.
    pub fn write(&mut self, w: &Write<'_>) -> Option<http::Response<Body>> {
        if w.path == super::reviews::REVIEWS && w.method == Method::POST {
            return Some(self.review(w.body));
        }
        if let Some(rest) = w.path.strip_prefix(LEASES) {
            return Some(self.lease(w, rest));
        }
        if let Some(answer) = self.core(w) {
            return Some(answer);
        }
        self.status_patch(w)
    }

    /// `POST /api/v1/namespaces/<ns>/<kind>` (create: `409 AlreadyExists` if the name is taken)
    /// and `PATCH …/<kind>/<name>` (a server-side apply or merge patch: created if absent, with
    /// `201`, as the real server does) of Secrets and ConfigMaps. Field ownership is not modelled:
    /// the CA, their only writer, forces its applies.
    fn core(&mut self, w: &Write<'_>) -> Option<http::Response<Body>> {
        let rest = w.path.strip_prefix("/api/v1/namespaces/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, resource, named) = match parts.as_slice() {
            [ns, r] => (*ns, *r, None),
            [ns, r, name] => (*ns, *r, Some(*name)),
            _ => return None,
        };
        let resource = *CORE.iter().find(|r| **r == resource)?;
        let Ok(body) = serde_json::from_slice::<Value>(w.body) else {
            return Some(status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON"));
        };
        Some(match (w.method, named) {
            (&Method::POST, None) => self.create(resource, namespace, body),
            (&Method::PATCH, Some(name)) => self.apply(resource, namespace, name, &body),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not served",
            ),
        })
    }

    fn create(
        &mut self,
        resource: &str,
        namespace: &str,
        mut object: Value,
    ) -> http::Response<Body> {
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no name");
        };
        let key = format!("{namespace}/{name}");
        if self.stored(resource, &key).is_some() {
            let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("{resource} \"{name}\" already exists"), "reason": "AlreadyExists", "details": {"name": name, "kind": resource}, "code": 409});
            return json_response(StatusCode::CONFLICT, body.to_string().into());
        }
        self.stamp_new(&mut object, namespace);
        self.put(resource, &key, object, true);
        self.answer(StatusCode::CREATED, resource, &key)
    }

    fn apply(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> http::Response<Body> {
        let key = format!("{namespace}/{name}");
        let (code, mut object) = match self.stored(resource, &key) {
            Some(existing) => (StatusCode::OK, existing),
            None => {
                let mut fresh = json!({"metadata": {"name": name}});
                self.stamp_new(&mut fresh, namespace);
                (StatusCode::CREATED, fresh)
            }
        };
        // The object applied owns all its fields: its `data` replaces what was there.
        if let Some(data) = patch.get("data") {
            object["data"] = data.clone();
        }
        let mut rest = patch.clone();
        if let Some(fields) = rest.as_object_mut() {
            fields.remove("data");
        }
        merge(&mut object, &rest);
        self.put(resource, &key, object, true);
        self.answer(code, resource, &key)
    }

    /// The object under `key`, parsed.
    fn stored(&self, resource: &str, key: &str) -> Option<Value> {
        let resource = Self::served(resource)?;
        let served = self.objects.get(&(resource, key.to_owned()))?;
        serde_json::from_slice(served).ok()
    }

    /// What the API server adds to an object it creates (the resourceVersion is `put`'s).
    fn stamp_new(&self, object: &mut Value, namespace: &str) {
        let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["uid"] = json!(format!("uid-{}", self.version + 1));
        object["metadata"]["creationTimestamp"] = json!(created.to_string());
    }

    fn answer(&self, code: StatusCode, resource: &str, key: &str) -> http::Response<Body> {
        let resource = Self::resource(resource);
        let served = self.objects[&(resource, key.to_owned())].clone();
        json_response(code, served)
    }

    fn lease(&mut self, w: &Write<'_>, rest: &str) -> http::Response<Body> {
        let parts: Vec<&str> = rest.split('/').collect();
        let manager = w.query.get("fieldManager").copied().unwrap_or("unknown");
        let body = || serde_json::from_slice::<Value>(w.body).ok();
        match (w.method, parts.as_slice()) {
            (&Method::POST, [namespace, "leases"]) => {
                let Some(mut object) = body() else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
                };
                let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no name");
                };
                let key = format!("{namespace}/{name}");
                if self.leases.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
                }
                object["metadata"]["namespace"] = json!(namespace);
                let mut lease = Lease {
                    object,
                    owners: BTreeMap::new(),
                };
                let spec = lease.object["spec"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for field in spec.keys() {
                    lease.owners.insert(field.clone(), manager.to_owned());
                }
                self.stamp_lease(&mut lease);
                let answer = ok(StatusCode::CREATED, &lease.object);
                self.leases.insert(key, lease);
                answer
            }
            (&Method::GET, [namespace, "leases", name]) => {
                match self.leases.get(&format!("{namespace}/{name}")) {
                    Some(lease) => ok(StatusCode::OK, &lease.object),
                    None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
                }
            }
            (&Method::PATCH, [namespace, "leases", name]) => {
                let Some(patch) = body() else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
                };
                let key = format!("{namespace}/{name}");
                let apply = w.content_type.starts_with("application/apply-patch");
                let force = w.query.get("force") == Some(&"true");
                let Some(mut lease) = self.leases.remove(&key).or_else(|| {
                    apply.then(|| Lease {
                        object: json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": namespace}, "spec": {}}),
                        owners: BTreeMap::new(),
                    })
                }) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                let changes = patch["spec"].as_object().cloned().unwrap_or_default();
                if apply && !force {
                    let conflicts: Vec<String> = changes
                        .iter()
                        .filter(|(field, value)| {
                            lease
                                .owners
                                .get(*field)
                                .is_some_and(|owner| owner != manager)
                                && lease.object["spec"].get(*field) != Some(*value)
                        })
                        .map(|(field, _)| {
                            format!("conflict with {:?}: .spec.{field}", lease.owners[field])
                        })
                        .collect();
                    if !conflicts.is_empty() {
                        self.leases.insert(key, lease);
                        return status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            &format!(
                                "Apply failed with {} conflict(s): {}",
                                conflicts.len(),
                                conflicts.join("; ")
                            ),
                        );
                    }
                }
                for (field, value) in &changes {
                    if value.is_null() {
                        lease.owners.remove(field);
                    } else {
                        lease.owners.insert(field.clone(), manager.to_owned());
                    }
                }
                merge(&mut lease.object["spec"], &Value::Object(changes));
                self.stamp_lease(&mut lease);
                let answer = ok(StatusCode::OK, &lease.object);
                self.leases.insert(key, lease);
                answer
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not served",
            ),
        }
    }

    fn stamp_lease(&mut self, lease: &mut Lease) {
        self.version += 1;
        lease.object["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }

    /// `PATCH …/namespaces/<ns>/<policies>/<name>/status` with a merge patch.
    fn status_patch(&mut self, w: &Write<'_>) -> Option<http::Response<Body>> {
        let rest = w
            .path
            .strip_prefix("/apis/security.veil.dev/v1/namespaces/")?;
        let [namespace, resource, name, "status"] = rest.split('/').collect::<Vec<_>>()[..] else {
            return None;
        };
        let resource = Self::served(resource)?;
        if w.method != Method::PATCH || !w.content_type.starts_with("application/merge-patch") {
            return Some(status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "only merge patches of status are served",
            ));
        }
        let Ok(patch) = serde_json::from_slice::<Value>(w.body) else {
            return Some(status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON"));
        };
        let found = self.objects.iter().find_map(|((r, key), served)| {
            let object: Value = serde_json::from_slice(served).ok()?;
            (*r == resource
                && object["metadata"]["namespace"] == namespace
                && object["metadata"]["name"] == name)
                .then(|| (key.clone(), object))
        });
        let Some((key, mut object)) = found else {
            return Some(status(StatusCode::NOT_FOUND, "NotFound", "not found"));
        };
        // Only the status subresource is written through this path.
        merge(&mut object["status"], &patch["status"]);
        #[allow(
            clippy::print_stdout,
            reason = "the stand-in's log is its stdout: tests read the statuses written there"
        )]
        {
            println!(
                "status of {resource} {namespace}/{name}: {}",
                object["status"]
            );
        }
        self.put(resource, &key, object, true);
        let (_, served) = self
            .objects
            .iter()
            .find(|((r, k), _)| *r == resource && *k == key)?;
        Some(json_response(StatusCode::OK, served.clone()))
    }
}
