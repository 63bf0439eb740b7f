//! A stand-in for the Kubernetes API server, enough for kube-rs reflectors: list and watch of the
//! kinds veil reads. The objects are JSON files under `<dir>/<resource>/` (the test writes them);
//! the directory is polled and every change becomes a watch event with a fresh resourceVersion, as
//! the real API server would send it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// (URL path, resource directory, kind of its items).
const RESOURCES: &[(&str, &str, &str)] = &[
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
];

struct Event {
    version: u64,
    resource: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    version: u64,
    /// (resource, file name) → (content as written by the test, object as served).
    objects: BTreeMap<(&'static str, String), (Value, Value)>,
    events: Vec<Event>,
}

impl Store {
    fn record(&mut self, resource: &'static str, kind: &'static str, mut object: Value) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.events.push(Event {
            version: self.version,
            resource,
            kind,
            object: object.clone(),
        });
        object
    }

    /// Brings the store in line with the files; returns whether anything changed.
    fn sync(&mut self, dir: &Path) -> bool {
        let before = self.version;
        for &(_, resource, _) in RESOURCES {
            let mut seen = Vec::new();
            let files = std::fs::read_dir(dir.join(resource))
                .into_iter()
                .flatten()
                .flatten();
            for file in files {
                let name = file.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".json") {
                    continue;
                }
                let Some(content) = std::fs::read(file.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                else {
                    continue; // Half-written or invalid: the test writes atomically, skip.
                };
                seen.push(name.clone());
                let key = (resource, name);
                let kind = if self.objects.get(&key).is_some_and(|(c, _)| *c == content) {
                    continue;
                } else if self.objects.contains_key(&key) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                let served = self.record(resource, kind, content.clone());
                self.objects.insert(key, (content, served));
            }
            let gone: Vec<(&'static str, String)> = self
                .objects
                .keys()
                .filter(|(r, name)| *r == resource && !seen.contains(name))
                .cloned()
                .collect();
            for key in gone {
                if let Some((_, served)) = self.objects.remove(&key) {
                    self.record(resource, "DELETED", served);
                }
            }
        }
        self.version != before
    }
}

/// Serves until killed.
pub(crate) async fn serve(listen: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    let store = Arc::new(Mutex::new(Store::default()));
    let (changed, _) = watch::channel(0u64);
    let changed = Arc::new(changed);
    {
        let (store, changed) = (store.clone(), changed.clone());
        tokio::spawn(async move {
            loop {
                let version = {
                    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                    s.sync(&dir).then_some(s.version)
                };
                if let Some(v) = version {
                    changed.send_replace(v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let listener = TcpListener::bind(listen).await?;
    println!("fake API server listening on {listen}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let (store, changed) = (store.clone(), changed.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (store, changed) = (store.clone(), changed.clone());
                async move { Ok::<_, Infallible>(handle(&req, &store, &changed)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn handle(
    req: &Request<Incoming>,
    store: &Arc<Mutex<Store>>,
    changed: &watch::Sender<u64>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let query: BTreeMap<&str, &str> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    println!("{} {}", req.method(), req.uri());
    let Some(&(_, resource, kind)) = RESOURCES
        .iter()
        .find(|(path, ..)| *path == req.uri().path())
    else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    };
    let s = store.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(query.get("watch"), Some(&("true" | "1"))) {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(s.version);
        drop(s);
        return watch_response(store.clone(), changed.subscribe(), resource, from);
    }
    let items: Vec<&Value> = s
        .objects
        .iter()
        .filter(|((r, _), _)| *r == resource)
        .map(|(_, (_, served))| served)
        .collect();
    let list = json!({
        "kind": format!("{kind}List"),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": s.version.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

fn json_response(status: StatusCode, body: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The events of `resource` after version `from`, then each new one as it happens, one JSON line
/// per event.
fn watch_response(
    store: Arc<Mutex<Store>>,
    changed: watch::Receiver<u64>,
    resource: &'static str,
    from: u64,
) -> Response<BoxBody<Bytes, Infallible>> {
    let events = stream::unfold((changed, from), move |(mut changed, mut after)| {
        let store = store.clone();
        async move {
            loop {
                let lines: String = {
                    let s = store.lock().unwrap_or_else(|e| e.into_inner());
                    let fresh: Vec<&Event> = s
                        .events
                        .iter()
                        .filter(|e| e.version > after && e.resource == resource)
                        .collect();
                    after = s.version;
                    fresh
                        .iter()
                        .map(|e| format!("{}\n", json!({"type": e.kind, "object": e.object})))
                        .collect()
                };
                if !lines.is_empty() {
                    return Some((Ok(Frame::data(Bytes::from(lines))), (changed, after)));
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
