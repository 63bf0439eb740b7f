//! The pod proxy, `GET /api/v1/namespaces/{ns}/pods/{name}[:port]/proxy/{path}`: as the real API
//! server does, the pod is looked up, and the request goes to its `status.podIP` on that port; the
//! answer comes back as the pod gave it (its status, type and body), or as `503` when the pod cannot
//! be reached. Connections start from wherever the server's task runs ([`super::spawn_in_netns`]
//! puts them in the cluster's network).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};

use super::{ApiStore, Body, json_response};

/// How long the pod has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pod proxy request goes, or the API server's answer when it cannot go anywhere.
pub(super) type Route = Result<(SocketAddr, String), http::Response<Body>>;

impl ApiStore {
    /// The route of a pod proxy request for `path` (and `query`); `None` when `path` is not one.
    pub(super) fn proxy_route(&self, path: &str, query: Option<&str>) -> Option<Route> {
        let rest = path.strip_prefix("/api/v1/namespaces/")?;
        let (namespace, rest) = rest.split_once("/pods/")?;
        let (target, rest) = rest.split_once("/proxy").unwrap_or((rest, ""));
        if target.contains('/')
            || !(rest.is_empty() || rest.starts_with('/'))
            || !path.contains("/proxy")
        {
            return None;
        }
        // `name`, `name:port` or `scheme:name:port`.
        let parts: Vec<&str> = target.split(':').collect();
        let (name, port) = match parts.as_slice() {
            [name] => (*name, "80"),
            [name, port] | [_, name, port] => (*name, *port),
            _ => {
                return Some(Err(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid pod proxy target {target:?}"),
                )));
            }
        };
        let Some(pod) = self
            .objects
            .iter()
            .filter(|((r, _), _)| *r == "pods")
            .find_map(|(_, bytes)| {
                let pod: Value = serde_json::from_slice(bytes).ok()?;
                let here = pod.pointer("/metadata/namespace").and_then(Value::as_str)
                    == Some(namespace)
                    && pod.pointer("/metadata/name").and_then(Value::as_str) == Some(name);
                here.then_some(pod)
            })
        else {
            return Some(Err(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pods \"{name}\" not found"),
            )));
        };
        let ip = pod
            .pointer("/status/podIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let (Some(ip), Ok(port)) = (ip, port.parse::<u16>()) else {
            return Some(Err(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("pod {name} has no address to proxy to"),
            )));
        };
        let path = if rest.is_empty() { "/" } else { rest };
        let path = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.to_owned(),
        };
        Some(Ok((SocketAddr::new(ip, port), path)))
    }
}

/// Sends `GET path` to `target` and gives back its answer.
pub(super) async fn forward(target: SocketAddr, path: String) -> http::Response<Body> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("dial tcp {target}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, target.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((parts, body))
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok((parts, body))) => {
            let mut response = http::Response::new(http_body_util::Full::new(body).boxed());
            *response.status_mut() = parts.status;
            if let Some(t) = parts.headers.get(http::header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, t.clone());
            }
            response
        }
        Ok(Err(e)) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("error trying to reach service: {e}"),
        ),
        Err(_) => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("error trying to reach service: {target}: no answer within {TIMEOUT:?}"),
        ),
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> http::Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    json_response(code, body.to_string().into())
}
