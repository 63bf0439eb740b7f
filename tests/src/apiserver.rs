//! A stand-in for the Kubernetes API server, enough for kube-rs reflectors: paginated lists and
//! watches from a resourceVersion of the kinds veil reads, in the JSON the real one serves. The
//! objects are put in by the caller (the end-to-end tests from files, the scale benchmark from a
//! generator); every change becomes a watch event with a fresh resourceVersion. Only the newest
//! events are kept: a watch from an older version gets `410 Expired`, as from a real API server
//! whose watch cache has moved on, and the client lists again. The writes the controller makes
//! (its status Lease, policy status) are served too ([`writes`]), and what `veil check` reads: single
//! objects, a namespace's objects by label and field ([`reads`]), the pod proxy ([`proxy`]), and
//! access reviews ([`reviews`]).
//! A test can keep a journal of the requests answered and hold GETs back ([`journal`]).
//!
//! veil's own kinds are served as a real API server serves a CRD's kinds: only while the CRD is
//! installed ([`crds`]).

mod crds;
mod journal;
mod proxy;
mod reads;
mod reviews;
mod writes;

pub use crds::unknown_resource;
pub use journal::Noted;
pub use writes::Write;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::watch;

/// (URL path, resource, kind of its items): the kinds veil watches.
pub const RESOURCES: &[(&str, &str, &str)] = &[
    ("/api/v1/namespaces", "namespaces", "Namespace"),
    ("/api/v1/pods", "pods", "Pod"),
    ("/api/v1/services", "services", "Service"),
    (
        "/apis/security.veil.dev/v1/authorizationpolicies",
        "authorizationpolicies",
        "AuthorizationPolicy",
    ),
    (
        "/apis/security.veil.dev/v1/peerauthentications",
        "peerauthentications",
        "PeerAuthentication",
    ),
    (
        "/apis/security.veil.dev/v1/telemetries",
        "telemetries",
        "Telemetry",
    ),
    // What `veil check` reads of an install.
    ("/apis/apps/v1/deployments", "deployments", "Deployment"),
    ("/apis/apps/v1/daemonsets", "daemonsets", "DaemonSet"),
    ("/api/v1/events", "events", "Event"),
    ("/api/v1/configmaps", "configmaps", "ConfigMap"),
    // What `veil check --pre` reads before an install.
    ("/api/v1/nodes", "nodes", "Node"),
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "clusterroles",
        "ClusterRole",
    ),
    (
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "clusterrolebindings",
        "ClusterRoleBinding",
    ),
    // What the CA keeps its root in.
    ("/api/v1/secrets", "secrets", "Secret"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "endpointslices",
        "EndpointSlice",
    ),
    (
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "customresourcedefinitions",
        "CustomResourceDefinition",
    ),
];

/// How many events are kept for watches that resume.
const EVENTS_KEPT: usize = 100_000;

struct Event {
    version: u64,
    resource: &'static str,
    /// The watch line: `{"type": …, "object": …}` and a newline.
    line: Bytes,
}

/// The objects and the recent events.
#[derive(Default)]
#[allow(missing_debug_implementations, reason = "megabytes of JSON")]
pub struct ApiStore {
    version: u64,
    /// (resource, `namespace/name`) → the object as served.
    objects: BTreeMap<(&'static str, String), Bytes>,
    events: VecDeque<Event>,
    /// `namespace/name` → a Lease.
    leases: BTreeMap<String, writes::Lease>,
    /// (group, resource) that access reviews deny.
    denied: std::collections::BTreeSet<(String, String)>,
}

impl ApiStore {
    fn resource(resource: &str) -> &'static str {
        Self::served(resource).unwrap_or_else(|| panic!("{resource} is not a resource served"))
    }

    fn served(resource: &str) -> Option<&'static str> {
        RESOURCES
            .iter()
            .find(|(_, r, _)| *r == resource)
            .map(|(_, r, _)| *r)
    }

    /// Creates or replaces `object` (under `key`, unique within its resource), stamped with the
    /// next resourceVersion; `announce` records the watch event (`false` while loading what exists
    /// before anyone watches).
    pub fn put(&mut self, resource: &str, key: &str, mut object: Value, announce: bool) {
        let resource = Self::resource(resource);
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let kind = if self.objects.contains_key(&(resource, key.to_owned())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let served = Bytes::from(object.to_string());
        if announce {
            self.record(resource, kind, &served);
        }
        self.objects.insert((resource, key.to_owned()), served);
    }

    /// Deletes the object under `key`, if there is one.
    pub fn delete(&mut self, resource: &str, key: &str) {
        let resource = Self::resource(resource);
        if let Some(served) = self.objects.remove(&(resource, key.to_owned())) {
            self.version += 1;
            self.record(resource, "DELETED", &served);
        }
    }

    /// The current resourceVersion.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn record(&mut self, resource: &'static str, kind: &str, object: &[u8]) {
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(format!(r#"{{"type":"{kind}","object":"#).as_bytes());
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        self.events.push_back(Event {
            version: self.version,
            resource,
            line: Bytes::from(line),
        });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }

    /// One page of `resource`'s list: at most `limit` objects after the `after` key.
    fn page(&self, resource: &'static str, kind: &str, limit: usize, after: &str) -> Bytes {
        let start = (resource, after.to_owned());
        let mut items = self
            .objects
            .range(start..)
            .take_while(|((r, _), _)| *r == resource)
            .filter(|((_, k), _)| after.is_empty() || k.as_str() > after)
            .take(limit.saturating_add(1))
            .collect::<Vec<_>>();
        let more = items.len() > limit;
        items.truncate(limit);
        let mut metadata = json!({"resourceVersion": self.version.to_string()});
        if more && let Some(((_, last), _)) = items.last() {
            metadata["continue"] = json!(continue_token(last));
        }
        let mut out = Vec::new();
        out.extend_from_slice(
            format!(r#"{{"kind":"{kind}List","apiVersion":"v1","metadata":{metadata},"items":["#)
                .as_bytes(),
        );
        for (i, (_, object)) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(object);
        }
        out.extend_from_slice(b"]}");
        Bytes::from(out)
    }
}

/// The store shared by the server and whoever changes it, and the signal of a change.
#[derive(Clone)]
#[allow(missing_debug_implementations, reason = "megabytes of JSON")]
pub struct Api {
    store: Arc<Mutex<ApiStore>>,
    changed: Arc<watch::Sender<u64>>,
    watched: Arc<journal::Watched>,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            store: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            watched: Arc::default(),
        }
    }
}

/// A response body.
pub type Body = BoxBody<Bytes, Infallible>;

impl Api {
    /// Changes the store; watchers are told when `change` returns.
    pub fn change<T>(&self, change: impl FnOnce(&mut ApiStore) -> T) -> T {
        let (out, version) = {
            let mut store = self.lock();
            let out = change(&mut store);
            (out, store.version)
        };
        self.changed.send_replace(version);
        out
    }

    fn lock(&self) -> MutexGuard<'_, ApiStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to a list or watch of a served kind; `None` for any other path.
    pub fn handle<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let &(_, resource, kind) = RESOURCES.iter().find(|(p, ..)| *p == req.uri().path())?;
        let query = query_pairs(req.uri().query());
        let store = self.lock();
        if !store.serves(resource) {
            return Some(unknown_resource());
        }
        if matches!(query.get("watch"), Some(&("true" | "1"))) {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(store.version);
            let oldest = store.events.front().map_or(store.version, |e| e.version);
            if from + 1 < oldest {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("too old resource version: {from} ({oldest})"), "reason": "Expired", "code": 410}});
                return Some(json_response(StatusCode::OK, format!("{gone}\n").into()));
            }
            drop(store);
            return Some(self.watch(resource, from));
        }
        let limit = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let after = match query.get("continue") {
            None => String::new(),
            Some(token) => match after_token(token) {
                Some(key) => key,
                None => {
                    let bad = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "invalid continue token", "reason": "BadRequest", "code": 400});
                    return Some(json_response(
                        StatusCode::BAD_REQUEST,
                        bad.to_string().into(),
                    ));
                }
            },
        };
        Some(json_response(
            StatusCode::OK,
            store.page(resource, kind, limit, &after),
        ))
    }

    /// The answer to a GET of one object, of a namespace's objects or of `/version`; `None` for
    /// any other path.
    pub fn read<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let query = query_pairs(req.uri().query());
        self.lock().read(req.uri().path(), &query)
    }

    /// The events of `resource` after version `from`, then each new one as it happens; ends once
    /// the resource is no longer served (its CRD deleted), as the real server ends such watches.
    fn watch(&self, resource: &'static str, from: u64) -> Response<Body> {
        let api = self.clone();
        let changed = self.changed.subscribe();
        let events = stream::unfold((changed, from), move |(mut changed, mut after)| {
            let api = api.clone();
            async move {
                loop {
                    let (lines, served) = {
                        let s = api.lock();
                        let fresh: Vec<u8> = s
                            .events
                            .iter()
                            .filter(|e| e.version > after && e.resource == resource)
                            .flat_map(|e| e.line.iter().copied())
                            .collect();
                        after = s.version;
                        (fresh, s.serves(resource))
                    };
                    if !lines.is_empty() {
                        return Some((Ok(Frame::data(Bytes::from(lines))), (changed, after)));
                    }
                    if !served {
                        return None;
                    }
                    changed.changed().await.ok()?;
                }
            }
        });
        let mut response = Response::new(StreamBody::new(events).boxed());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The `key=value` pairs of a query string.
fn query_pairs(query: Option<&str>) -> BTreeMap<&str, &str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// The continue token after `key`: opaque and URL-safe, as the real API server's (hex).
fn continue_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key a continue token names.
fn after_token(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The API's `404 NotFound` status.
pub fn not_found() -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    json_response(StatusCode::NOT_FOUND, status.to_string().into())
}

/// Serves `api` on `listener` until the process ends; `other` answers paths that are not the API's.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    other: impl Fn(&http::request::Parts) -> Response<Body> + Clone + Send + Sync + 'static,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let (api, other) = (api.clone(), other.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (api, other) = (api.clone(), other.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    api.held(&parts).await;
                    let response = answer(&api, &parts, &body, &other).await;
                    api.note(&parts, &body, response.status());
                    Ok::<_, Infallible>(response)
                }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
        });
    }
}

/// The answer to one request: a list or watch, a read, the pod proxy, a write, or `other`'s.
async fn answer(
    api: &Api,
    parts: &http::request::Parts,
    body: &Bytes,
    other: &impl Fn(&http::request::Parts) -> Response<Body>,
) -> Response<Body> {
    if parts.method == http::Method::GET {
        let mut req = Request::new(());
        *req.uri_mut() = parts.uri.clone();
        if let Some(response) = api.handle(&req).or_else(|| api.read(&req)) {
            return response;
        }
        let route = api.lock().proxy_route(parts.uri.path(), parts.uri.query());
        match route {
            Some(Ok((target, path))) => return proxy::forward(target, path).await,
            Some(Err(refused)) => return refused,
            None => {}
        }
    }
    let query = query_pairs(parts.uri.query());
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let write = Write {
        method: &parts.method,
        path: parts.uri.path(),
        query: &query,
        content_type,
        body,
    };
    api.change(|s| s.write(&write))
        .unwrap_or_else(|| other(parts))
}

/// Serves `api` on `listener` (bound where its clients are) from a thread of its own in network
/// namespace `netns`: the connections the server opens — the pod proxy's — start there, as a real API
/// server's start from the cluster's network. The thread lives as long as the process.
pub fn spawn_in_netns(
    listener: std::net::TcpListener,
    api: Api,
    netns: &str,
) -> std::io::Result<()> {
    let namespace = std::fs::File::open(format!("/var/run/netns/{netns}"))?;
    spawn_thread(listener, api, format!("api-{netns}"), move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
    })
}

/// Serves `api` on `listener` from a thread of its own in this process's network namespace (for
/// clients that need no pod proxy). The thread lives as long as the process.
pub fn spawn(listener: std::net::TcpListener, api: Api) -> std::io::Result<()> {
    spawn_thread(listener, api, "api".into(), || Ok(()))
}

fn spawn_thread(
    listener: std::net::TcpListener,
    api: Api,
    name: String,
    enter: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let (started, result) = std::sync::mpsc::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = enter().and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        });
        let runtime = match runtime {
            Ok(r) => {
                let _ = started.send(Ok(()));
                r
            }
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                let _ = serve(listener, api, |_| not_found()).await;
            }
        });
    })?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("the API server's thread ended"))?
}

/// A response's status and JSON body, read at once (test answers are whole when made).
#[cfg(test)]
fn status_and_json(response: Response<Body>) -> (u16, Value) {
    let code = response.status().as_u16();
    let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
        .expect("a whole body")
        .unwrap()
        .to_bytes();
    (code, serde_json::from_slice(&body).unwrap())
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn get(api: &Api, uri: &str) -> Value {
        let req = Request::get(uri).body(()).unwrap();
        let response = api.handle(&req).expect("a served path");
        let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("a whole body")
            .unwrap()
            .to_bytes();
        let line = body.split(|b| *b == b'\n').next().unwrap();
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn lists_are_paginated_as_kube_rs_asks_and_old_watches_expire() {
        let api = Api::default();
        api.change(|s| {
            for i in 0..5 {
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}"), "namespace": "n"}});
                s.put("pods", &format!("n/p{i}"), pod, false);
            }
        });
        let mut names = Vec::new();
        let mut uri = "/api/v1/pods?limit=2".to_owned();
        loop {
            let page = get(&api, &uri);
            assert_eq!(page["kind"], "PodList");
            assert_eq!(page["metadata"]["resourceVersion"], "5");
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 2);
            names.extend(
                items
                    .iter()
                    .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()),
            );
            match page["metadata"]["continue"].as_str() {
                Some(token) => {
                    // Passed back as clients do, URL-encoded: it must need no encoding.
                    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
                    uri = format!("/api/v1/pods?limit=2&continue={token}");
                }
                None => break,
            }
        }
        assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
        assert_eq!(get(&api, "/api/v1/services")["items"], json!([]));
        assert_eq!(
            get(&api, "/api/v1/pods?limit=2&continue=n%2Fp1")["code"],
            400
        );

        // Past the events kept, a watch is told its version is gone (410), and lists again.
        api.change(|s| {
            for i in 0..=EVENTS_KEPT {
                s.put(
                    "namespaces",
                    "n",
                    json!({"metadata": {"name": "n", "generation": i}}),
                    true,
                );
            }
        });
        let gone = get(&api, "/api/v1/pods?watch=1&resourceVersion=5");
        assert_eq!(gone["type"], "ERROR");
        assert_eq!(gone["object"]["code"], 410);
    }

    fn write(
        api: &Api,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let query: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let body = body.to_string();
        let w = Write {
            method: &method,
            path,
            query: &query,
            content_type,
            body: body.as_bytes(),
        };
        let response = api.change(|s| s.write(&w)).expect("a served path");
        super::status_and_json(response)
    }

    #[test]
    fn two_appliers_of_a_lease_conflict_until_the_holder_is_cleared() {
        let api = Api::default();
        let lease = "/apis/coordination.k8s.io/v1/namespaces/veil-system/leases/l";
        let apply = "application/apply-patch+yaml";
        let strategic = "application/strategic-merge-patch+json";
        let holder = |h: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": h, "leaseDurationSeconds": 15}});
        assert_eq!(write(&api, Method::GET, lease, "", Value::Null).0, 404);
        let (code, created) = write(
            &api,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/veil-system/leases?fieldManager=a",
            "application/json",
            json!({"metadata": {"name": "l"}, "spec": {}}),
        );
        assert_eq!(code, 201, "{created}");
        assert_eq!(
            write(
                &api,
                Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/veil-system/leases",
                "application/json",
                json!({"metadata": {"name": "l"}})
            )
            .0,
            409
        );

        // a takes it; b, applying another holder, conflicts; a renewing does not.
        assert_eq!(
            write(
                &api,
                Method::PATCH,
                &format!("{lease}?fieldManager=a"),
                apply,
                holder("a")
            )
            .0,
            200
        );
        let (code, refused) = write(
            &api,
            Method::PATCH,
            &format!("{lease}?fieldManager=b"),
            apply,
            holder("b"),
        );
        assert_eq!(
            (code, refused["reason"].as_str()),
            (409, Some("Conflict")),
            "{refused}"
        );
        assert_eq!(
            write(
                &api,
                Method::PATCH,
                &format!("{lease}?fieldManager=a"),
                strategic,
                json!({"spec": {"renewTime": "2026-12-03T12:00:00.000000Z"}})
            )
            .0,
            200
        );

        // Cleared (released, or an expired holder cleared by b), b's apply goes through.
        let clear = json!({"spec": {"holderIdentity": null, "renewTime": null}});
        assert_eq!(
            write(
                &api,
                Method::PATCH,
                &format!("{lease}?fieldManager=b"),
                strategic,
                clear
            )
            .0,
            200
        );
        let (code, taken) = write(
            &api,
            Method::PATCH,
            &format!("{lease}?fieldManager=b"),
            apply,
            holder("b"),
        );
        assert_eq!(code, 200, "{taken}");
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        assert!(taken["spec"].get("renewTime").is_none());
        let (_, read) = write(&api, Method::GET, lease, "", Value::Null);
        assert_eq!(read["spec"]["holderIdentity"], "b");
    }

    #[test]
    fn a_status_patch_is_stored_and_announced() {
        let api = Api::default();
        api.change(|s| {
            let policy = json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p", "namespace": "n"}, "spec": {"action": "DENY"}});
            s.put("authorizationpolicies", "p.json", policy, true);
        });
        let uri = "/apis/security.veil.dev/v1/namespaces/n/authorizationpolicies/p/status";
        let status = json!({"status": {"conditions": [{"type": "Accepted", "status": "True"}]}});
        let (code, written) = write(
            &api,
            Method::PATCH,
            uri,
            "application/merge-patch+json",
            status.clone(),
        );
        assert_eq!(code, 200, "{written}");
        assert_eq!(written["status"], status["status"]);
        assert_eq!(written["spec"]["action"], "DENY", "the spec is kept");
        let missing = uri.replace("/p/", "/q/");
        assert_eq!(
            write(
                &api,
                Method::PATCH,
                &missing,
                "application/merge-patch+json",
                status
            )
            .0,
            404
        );
        // A MODIFIED event for watchers.
        assert_eq!(
            api.lock().events.back().map(|e| e.resource),
            Some("authorizationpolicies")
        );
        assert!(
            api.lock()
                .events
                .back()
                .is_some_and(|e| e.line.starts_with(br#"{"type":"MODIFIED""#))
        );
        let list = get(&api, "/apis/security.veil.dev/v1/authorizationpolicies");
        assert_eq!(
            list["items"][0]["status"]["conditions"][0]["type"],
            "Accepted"
        );
    }
}
