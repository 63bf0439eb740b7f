//! The waypoint's access log, private by default.
//!
//! - `off`: nothing, except denials (below).
//! - `metadata` (default): identities, decision, status, bytes, duration — nothing about what was
//!   asked.
//! - `full`: adds method, path, query, host, and the request headers named in `--log-header`.
//!
//! `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` are never written, nor are the
//! headers named in `--redact-header`. Values of query parameters named in `--redact-query-param`
//! (and of a default list of credential-like names) are replaced by `REDACTED`. Every denial is
//! logged, whatever the level, with the policy and rule that decided it.

use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tracing::{info, warn};
use veil_mesh::identity::Identity;
use veil_mesh::policy::PolicyId;

/// Tracing target of the access log.
pub const TARGET: &str = "veil::access";

/// Headers that carry credentials: never logged.
const NEVER_LOGGED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Query parameters whose values are redacted unless configured otherwise.
pub const DEFAULT_REDACTED_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "code",
    "key",
    "password",
    "secret",
    "sig",
    "signature",
    "token",
];

/// How much is logged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Level {
    /// Only denials.
    Off,
    /// Identities, decision, status, bytes, duration.
    #[default]
    Metadata,
    /// Also method, path, query, host and selected headers.
    Full,
}

/// The access log's configuration.
#[derive(Clone, Debug, Default)]
pub struct AccessLog {
    level: Level,
    headers: Vec<HeaderName>,
    redact_params: Vec<String>,
}

/// What is known about a finished (or refused) request.
#[derive(Debug)]
pub struct Record<'a> {
    /// The client's verified identity.
    pub source: &'a Identity,
    /// The service or workload asked for (`namespace/name`).
    pub destination: &'a str,
    /// The endpoint that served it, if any.
    pub endpoint: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The deciding policy, if one decided.
    pub policy: Option<&'a PolicyId>,
    /// The matching rule of that policy.
    pub rule: Option<usize>,
    /// The response status sent to the client.
    pub status: u16,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// Time from request to end of response.
    pub duration: Duration,
    /// Method.
    pub method: &'a str,
    /// Path, without query.
    pub path: &'a str,
    /// Raw query, if any.
    pub query: Option<&'a str>,
    /// Host.
    pub host: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

impl AccessLog {
    /// A log at `level`, writing `headers` (credentials and `redact_headers` excluded) at `full`,
    /// redacting `redact_params` (plus the defaults) in queries.
    pub fn new(
        level: Level,
        headers: Vec<HeaderName>,
        redact_headers: &[HeaderName],
        redact_params: Vec<String>,
    ) -> Self {
        let headers = headers
            .into_iter()
            .filter(|h| !NEVER_LOGGED.contains(&h.as_str()) && !redact_headers.contains(h))
            .collect();
        let mut redact_params: Vec<String> = redact_params
            .into_iter()
            .chain(DEFAULT_REDACTED_PARAMS.iter().map(|p| (*p).to_owned()))
            .map(|p| p.to_ascii_lowercase())
            .collect();
        redact_params.sort();
        redact_params.dedup();
        Self {
            level,
            headers,
            redact_params,
        }
    }

    /// The level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// `query` with the values of redacted parameters replaced.
    pub fn redact_query(&self, query: &str) -> String {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if self.redact_params.contains(&name.to_ascii_lowercase()) => {
                    format!("{name}=REDACTED")
                }
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The configured headers present in `headers`, as `name: value` pairs.
    pub fn selected_headers(&self, headers: &HeaderMap) -> String {
        self.headers
            .iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().unwrap_or("<binary>");
                Some(format!("{name}: {value}"))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Writes the line for `record` (denials at any level).
    pub fn log(&self, r: &Record<'_>) {
        let deny = r.decision == "deny";
        let level = if deny && self.level == Level::Off {
            Level::Metadata
        } else {
            self.level
        };
        let policy = r.policy.map_or("-".to_owned(), ToString::to_string);
        let rule = r.rule.map_or("-".to_owned(), |i| i.to_string());
        let endpoint = r.endpoint.unwrap_or("-");
        let duration_ms = r.duration.as_millis() as u64;
        match (level, deny) {
            (Level::Off, _) => {}
            (Level::Metadata, false) => {
                info!(target: TARGET, decision = r.decision, source = %r.source, destination = r.destination, endpoint, policy, rule, status = r.status, bytes_received = r.bytes_received, bytes_sent = r.bytes_sent, duration_ms, "request")
            }
            (Level::Metadata, true) => {
                warn!(target: TARGET, decision = r.decision, source = %r.source, destination = r.destination, policy, rule, status = r.status, "request denied")
            }
            (Level::Full, _) => {
                let query = r.query.map(|q| self.redact_query(q)).unwrap_or_default();
                let headers = self.selected_headers(r.headers);
                if deny {
                    warn!(target: TARGET, decision = r.decision, source = %r.source, destination = r.destination, policy, rule, status = r.status, method = r.method, path = r.path, query, host = r.host, headers, "request denied");
                } else {
                    info!(target: TARGET, decision = r.decision, source = %r.source, destination = r.destination, endpoint, policy, rule, status = r.status, bytes_received = r.bytes_received, bytes_sent = r.bytes_sent, duration_ms, method = r.method, path = r.path, query, host = r.host, headers, "request");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_configured_headers_are_never_selected() {
        let log = AccessLog::new(
            Level::Full,
            [
                "authorization",
                "cookie",
                "set-cookie",
                "x-request-id",
                "x-tenant",
                "user-agent",
            ]
            .map(HeaderName::from_static)
            .to_vec(),
            &[HeaderName::from_static("x-tenant")],
            vec![],
        );
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer secret-token".parse().unwrap());
        headers.insert("cookie", "session=abc".parse().unwrap());
        headers.insert("x-request-id", "req-1".parse().unwrap());
        headers.insert("x-tenant", "acme".parse().unwrap());
        let selected = log.selected_headers(&headers);
        assert_eq!(selected, "x-request-id: req-1");
    }

    #[test]
    fn query_values_of_redacted_parameters_are_replaced() {
        let log = AccessLog::new(Level::Full, vec![], &[], vec!["session".into()]);
        let cases = [
            ("page=2&token=abc", "page=2&token=REDACTED"),
            ("SESSION=xyz&q=rust", "SESSION=REDACTED&q=rust"),
            ("access_token=1&flag", "access_token=REDACTED&flag"),
            ("q=token", "q=token"),
        ];
        for (query, want) in cases {
            assert_eq!(log.redact_query(query), want, "{query}");
        }
    }
}
