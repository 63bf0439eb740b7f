//! Reading the Kubernetes API for `veil check`: plain GETs through kube's client (so kubeconfig,
//! in-cluster configuration and credentials work as for kubectl), each bounded in time and size, and
//! every object decoded on its own — a malformed object is reported by name, never a failed list or
//! a panic.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The largest answer read (a ztunnel's metrics on a busy node are well under this).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Objects asked for per page of a list.
pub(crate) const PAGE: usize = 500;
/// The most pages one list is followed for: 1,000,000 objects, beyond any cluster's.
const MAX_PAGES: usize = 2_000;

/// Characters escaped in query values: all but the unreserved ones.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why something could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// No answer: the API server could not be reached (connection, TLS, credentials plugin).
    #[error("the API server at {server} could not be reached: {reason}")]
    Unreachable {
        /// Its address, from the kubeconfig.
        server: String,
        /// Why, with the error's sources.
        reason: String,
    },
    /// No answer within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The object does not exist.
    #[error("not found")]
    NotFound,
    /// The API server refused or failed the request.
    #[error("HTTP {code}: {message}")]
    Status {
        /// The HTTP status.
        code: u16,
        /// The `Status` message the API server gave, or the start of the body.
        message: String,
    },
    /// The answer is not what the API serves for this path.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl ReadError {
    /// Whether the request was refused for lack of permission (RBAC).
    pub(crate) fn forbidden(&self) -> bool {
        matches!(self, Self::Status { code: 403, .. })
    }
}

/// A raw answer: its status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Answer {
    /// The body as text (lossy: it is shown to people or parsed leniently).
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GETs from the API server (and reviews, which change nothing).
#[derive(Clone)]
pub(crate) struct Reader {
    client: kube::Client,
    /// For the pod proxy: without kube's retries of `503` (ztunnel's readiness answers `503` when
    /// not ready, and kube would ask again for minutes) — each request is bounded and reported.
    proxy: kube::Client,
    /// The API server's address, for messages.
    server: String,
    timeout: Duration,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Reads with the client of `config` (pod proxy requests without retries), allowing each request
    /// `timeout`.
    pub(crate) fn new(config: kube::Config, timeout: Duration) -> Result<Self, kube::Error> {
        let mut once = config.clone();
        once.default_retry = false;
        Ok(Self {
            server: config.cluster_url.to_string(),
            client: kube::Client::try_from(config)?,
            proxy: kube::Client::try_from(once)?,
            timeout,
        })
    }

    /// The answer to `GET path`, whatever its status.
    pub(crate) async fn raw(&self, path: &str) -> Result<Answer, ReadError> {
        self.send(&self.client, path).await
    }

    /// The answer of pod `pod` in `ns` to `GET http://<pod>:<port>/<path>`, through the API server's
    /// pod proxy, whatever its status.
    pub(crate) async fn proxy(
        &self,
        ns: &str,
        pod: &str,
        port: u16,
        path: &str,
    ) -> Result<Answer, ReadError> {
        let url = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}");
        self.send(&self.proxy, &url).await
    }

    fn unreachable(&self, reason: String) -> ReadError {
        ReadError::Unreachable {
            server: self.server.clone(),
            reason,
        }
    }

    async fn send(&self, client: &kube::Client, path: &str) -> Result<Answer, ReadError> {
        let request = http::Request::get(path)
            .header(http::header::ACCEPT, "application/json, */*")
            .body(kube::client::Body::empty())
            .map_err(|e| ReadError::Malformed(format!("request for {path}: {e}")))?;
        self.exchange(client, request).await
    }

    /// The JSON answer to `POST path` with `body` — for reviews (`SelfSubjectAccessReview`), which
    /// the API server answers without storing anything; any status but 2xx is an error.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, ReadError> {
        let request = http::Request::post(path)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(kube::client::Body::from(body.to_string().into_bytes()))
            .map_err(|e| ReadError::Malformed(format!("request for {path}: {e}")))?;
        let answer = self.exchange(&self.client, request).await?;
        if !answer.status.is_success() {
            return Err(status_error(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| ReadError::Malformed(e.to_string()))
    }

    async fn exchange(
        &self,
        client: &kube::Client,
        request: http::Request<kube::client::Body>,
    ) -> Result<Answer, ReadError> {
        let exchange = async {
            let response = client
                .send(request)
                .await
                .map_err(|e| self.unreachable(chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ReadError::Timeout(self.timeout))?
    }

    /// The JSON answer to `GET path`; any status but 2xx is an error.
    pub(crate) async fn json(&self, path: &str) -> Result<Value, ReadError> {
        let answer = self.raw(path).await?;
        if !answer.status.is_success() {
            return Err(status_error(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| ReadError::Malformed(e.to_string()))
    }

    /// The JSON object at `path`; `None` when it does not exist.
    pub(crate) async fn object(&self, path: &str) -> Result<Option<Value>, ReadError> {
        match self.json(path).await {
            Ok(v) => Ok(Some(v)),
            Err(ReadError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every item of the list at `path` (page after page), filtered by `selectors` (query pairs such
    /// as `("labelSelector", "app=x")`). Items are returned undecoded: see [`decode`].
    pub(crate) async fn list(
        &self,
        path: &str,
        selectors: &[(&str, &str)],
    ) -> Result<Vec<Value>, ReadError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query: Vec<(&str, &str)> = selectors.to_vec();
            let limit = PAGE.to_string();
            query.push(("limit", &limit));
            if let Some(token) = &token {
                query.push(("continue", token));
            }
            let page = self.json(&with_query(path, &query)).await?;
            match page.get("items") {
                Some(Value::Array(page_items)) => items.extend(page_items.iter().cloned()),
                Some(Value::Null) | None => {}
                Some(_) => {
                    return Err(ReadError::Malformed(format!("{path}: items is not a list")));
                }
            }
            token = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(items);
            }
        }
        Err(ReadError::Malformed(format!(
            "{path}: more than {MAX_PAGES} pages of {PAGE} (a server that never ends its list?)"
        )))
    }
}

/// `path?k=v&…`, the values escaped.
pub(crate) fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_VALUE)))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// The error a non-2xx answer means, with the API server's `Status` message when it sent one.
pub(crate) fn status_error(answer: &Answer) -> ReadError {
    if answer.status == StatusCode::NOT_FOUND {
        return ReadError::NotFound;
    }
    let message = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| first_line(&answer.text(), 200));
    ReadError::Status {
        code: answer.status.as_u16(),
        message,
    }
}

/// An error and its sources, one sentence (kube's own messages stop at "client error (Connect)").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The first line of `text`, at most `max` characters.
pub(crate) fn first_line(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}

/// `namespace/name` of an undecoded object, for messages (`?` for what it lacks).
pub(crate) fn key_of(object: &Value) -> String {
    let field = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
    };
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        (_, None) => "(an object without a name)".to_owned(),
    }
}

/// `object` as a `T`, or why it is not one (the object named).
pub(crate) fn decode<T: DeserializeOwned>(kind: &str, object: &Value) -> Result<T, String> {
    T::deserialize(object).map_err(|e| format!("could not read {kind} {}: {e}", key_of(object)))
}

/// Whether `name` can be put in a URL path as it is: what the API server accepts as a name (DNS
/// subdomains and labels). Names come from the API's own answers; this keeps a malformed answer
/// from steering the next request elsewhere.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}
