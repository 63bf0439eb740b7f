//! Request canonicalization: the one path and the one host a request is judged by, which are also
//! the path and host forwarded — so the endpoint serves exactly what policy decided on.
//!
//! Pure functions over bytes and `http::Request`s, panic-free on any input (a fuzz target calls
//! them). The path levels follow Istio's `meshConfig.pathNormalization` (see [`Normalization`]);
//! hosts follow Istio's matching: the authority as sent, port included, compared case-insensitively.

pub mod host;
pub mod path;

use http::header::HOST;
use http::{Method, Request, Version};

pub use path::{Normalization, PathError};

pub use host::HostError;

/// Why a request is refused (400) before policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The path is not one the waypoint can judge.
    #[error("bad path: {0}")]
    Path(#[from] PathError),
    /// The Host header or authority is not a valid host.
    #[error("bad host: {0}")]
    Host(#[from] HostError),
    /// More than one Host header.
    #[error("more than one Host header")]
    MultipleHosts,
    /// An HTTP/1.1 request without a Host header (RFC 9112 §3.2).
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// The URI's authority (absolute-form or `:authority`) and the Host header name different hosts.
    #[error("the URI authority and the Host header disagree")]
    HostMismatch,
    /// The authority carries user information (`user@host`), which HTTP forbids.
    #[error("user information in the authority")]
    UserInfo,
    /// The query contains bytes a request target cannot carry.
    #[error("invalid byte in the query")]
    Query,
}

/// What policy judges and what is forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    /// The canonical path (no query): `*` only for `OPTIONS *`.
    pub path: String,
    /// The query, unchanged.
    pub query: Option<String>,
    /// The canonical host (`name` or `name:port`, lowercase), empty when the request named none
    /// (HTTP/1.0 or HTTP/2 without `:authority`).
    pub host: String,
}

impl Canonical {
    /// Path and query as forwarded: `path?query`.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Canonicalizes `req`'s path (at `level`), query and host, or says why it must be refused.
pub fn request<B>(req: &Request<B>, level: Normalization) -> Result<Canonical, Refusal> {
    let uri = req.uri();
    let path = if req.method() == Method::OPTIONS && uri.path() == "*" {
        "*".to_owned()
    } else {
        path::canonicalize(uri.path().as_bytes(), level)?
    };
    let query = uri.query().map(str::to_owned);
    if let Some(q) = &query {
        check_query(q.as_bytes())?;
    }
    Ok(Canonical {
        path,
        query,
        host: request_host(req)?,
    })
}

/// The request's canonical host: the URI authority and the Host header must agree when both are
/// present (a proxy reading one while the backend reads the other is how policy gets confused).
fn request_host<B>(req: &Request<B>) -> Result<String, Refusal> {
    let mut headers = req.headers().get_all(HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err(Refusal::MultipleHosts);
    }
    let header = header
        .map(|h| host::canonicalize(h.as_bytes()))
        .transpose()?;
    let authority = match req.uri().authority() {
        Some(a) if a.as_str().contains('@') => return Err(Refusal::UserInfo),
        Some(a) => Some(host::canonicalize(a.as_str().as_bytes())?),
        None => None,
    };
    match (authority, header) {
        (Some(a), Some(h)) if a != h => Err(Refusal::HostMismatch),
        (Some(a), _) => Ok(a),
        (None, Some(h)) => Ok(h),
        (None, None) if req.version() == Version::HTTP_11 => Err(Refusal::MissingHost),
        (None, None) => Ok(String::new()),
    }
}

/// A query is forwarded as is, but only printable ASCII without `#` (no fragment, no controls).
fn check_query(q: &[u8]) -> Result<(), Refusal> {
    if q.iter().all(|b| b.is_ascii_graphic() && *b != b'#') {
        Ok(())
    } else {
        Err(Refusal::Query)
    }
}

#[cfg(test)]
mod tests;
