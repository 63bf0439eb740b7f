//! The waypoint's access log, private by default.
//!
//! - `off`: nothing, except denials (below).
//! - `metadata` (default): identities, decision, status, bytes, duration — nothing about what was
//!   asked.
//! - `full`: adds method, path, query, host, and the request headers named in `--log-header`.
//!
//! `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` are never written, nor are the
//! headers named in `--redact-header`. Values of query parameters named in `--redact-query-param`
//! (and of a default list of credential-like names) are replaced by `REDACTED`; names are compared
//! as a backend reads them (percent-decoded, `+` as space, case-folded, `&` and `;` both
//! separators), and a parameter whose name cannot be decoded is redacted whole. Every denial is
//! logged, whatever the level, with the policy and rule that decided it (or why the request could
//! not be judged).

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tracing::{info, warn};
use veil_mesh::identity::Identity;
use veil_mesh::policy::{AccessLogLevel, PolicyId, TelemetrySettings};
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};

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
    redact_headers: Vec<HeaderName>,
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
    /// Why a request was refused before policy (400), if it was.
    pub reason: Option<&'a str>,
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
        let redact_headers = redact_headers.to_vec();
        let headers = loggable(headers, &redact_headers);
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
            redact_headers,
            redact_params,
        }
    }

    /// The log of requests to a workload whose Telemetry says `t`: its level and headers instead
    /// of this process's where it sets them, its redacted parameters besides this process's.
    /// Credentials and `--redact-header`s are never written, whatever it says.
    pub fn for_workload(&self, t: &TelemetrySettings) -> Cow<'_, Self> {
        if t.access_log.is_none() && t.headers.is_none() && t.redact_query_parameters.is_empty() {
            return Cow::Borrowed(self);
        }
        let mut log = self.clone();
        if let Some(level) = t.access_log {
            log.level = match level {
                AccessLogLevel::Off => Level::Off,
                AccessLogLevel::Metadata => Level::Metadata,
                AccessLogLevel::Full => Level::Full,
            };
        }
        if let Some(headers) = &t.headers {
            let named = headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect();
            log.headers = loggable(named, &self.redact_headers);
        }
        log.redact_params.extend(
            t.redact_query_parameters
                .iter()
                .map(|p| p.to_ascii_lowercase()),
        );
        log.redact_params.sort();
        log.redact_params.dedup();
        Cow::Owned(log)
    }

    /// The level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// `query` with the values of redacted parameters replaced; separators are kept as they were.
    pub fn redact_query(&self, query: &str) -> String {
        let mut out = String::with_capacity(query.len());
        let mut rest = query;
        loop {
            let end = rest.find(['&', ';']).unwrap_or(rest.len());
            let (pair, tail) = rest.split_at(end);
            self.redact_pair(pair, &mut out);
            let mut tail = tail.chars();
            match tail.next() {
                Some(separator) => out.push(separator),
                None => return out,
            }
            rest = tail.as_str();
        }
    }

    /// Appends `pair` to `out`, its value redacted if its decoded name is a redacted one, or all of
    /// it if the name cannot be decoded (it might be one).
    fn redact_pair(&self, pair: &str, out: &mut String) {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        match decode_component(name) {
            None => out.push_str("REDACTED"),
            Some(decoded)
                if pair.len() > name.len()
                    && self.redact_params.contains(&decoded.to_lowercase()) =>
            {
                out.push_str(name);
                out.push_str("=REDACTED");
            }
            Some(_) => out.push_str(pair),
        }
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
        let reason = r.reason.unwrap_or("-");
        let duration_ms = r.duration.as_millis() as u64;
        match (level, deny) {
            (Level::Off, _) => {}
            (Level::Metadata, false) => {
                info!(target: TARGET, decision = r.decision, source = %r.source, destination = r.destination, endpoint, policy, rule, status = r.status, bytes_received = r.bytes_received, bytes_sent = r.bytes_sent, duration_ms, "request")
            }
            (Level::Metadata, true) => {
                warn!(target: AUDIT, audit = SCHEMA, event = "request_denied", component = "waypoint", decision = r.decision, source = %r.source, destination = r.destination, policy, rule, status = r.status, reason, "request denied")
            }
            (Level::Full, _) => {
                let query = r.query.map(|q| self.redact_query(q)).unwrap_or_default();
                let headers = self.selected_headers(r.headers);
                if deny {
                    warn!(target: AUDIT, audit = SCHEMA, event = "request_denied", component = "waypoint", decision = r.decision, source = %r.source, destination = r.destination, policy, rule, status = r.status, reason, method = r.method, path = r.path, query, host = r.host, headers, "request denied");
                } else {
                    info!(target: TARGET, decision = r.decision, source = %r.source, destination = r.destination, endpoint, policy, rule, status = r.status, bytes_received = r.bytes_received, bytes_sent = r.bytes_sent, duration_ms, method = r.method, path = r.path, query, host = r.host, headers, "request");
                }
            }
        }
    }
}

/// `headers` without credentials and the `redact` ones.
fn loggable(headers: Vec<HeaderName>, redact: &[HeaderName]) -> Vec<HeaderName> {
    headers
        .into_iter()
        .filter(|h| !NEVER_LOGGED.contains(&h.as_str()) && !redact.contains(h))
        .collect()
}

/// A query component as an application reads it (`application/x-www-form-urlencoded`): `+` is a
/// space, `%XX` a byte; `None` if an escape is not `%` and two hex digits (applications disagree on
/// those) or the bytes are not UTF-8.
fn decode_component(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let escapes_valid = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_valid {
        return None;
    }
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
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
    fn a_workloads_telemetry_sets_level_and_headers_and_adds_redactions_never_credentials() {
        let log = AccessLog::new(
            Level::Metadata,
            vec![HeaderName::from_static("x-request-id")],
            &[HeaderName::from_static("x-tenant")],
            vec!["session".into()],
        );
        let nothing = TelemetrySettings::default();
        assert!(matches!(log.for_workload(&nothing), Cow::Borrowed(_)));
        let t = TelemetrySettings {
            access_log: Some(AccessLogLevel::Full),
            headers: Some(vec![
                "x-trace".into(),
                "authorization".into(),
                "x-tenant".into(),
                "not a header".into(),
            ]),
            redact_query_parameters: vec!["Email".into()],
            ..TelemetrySettings::default()
        };
        let own = log.for_workload(&t);
        assert_eq!(own.level(), Level::Full);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        headers.insert("x-tenant", "acme".parse().unwrap());
        headers.insert("x-trace", "t1".parse().unwrap());
        headers.insert("x-request-id", "r1".parse().unwrap());
        assert_eq!(own.selected_headers(&headers), "x-trace: t1");
        assert_eq!(
            own.redact_query("email=a@b&session=s&page=1"),
            "email=REDACTED&session=REDACTED&page=1"
        );
        let off = TelemetrySettings {
            access_log: Some(AccessLogLevel::Off),
            ..TelemetrySettings::default()
        };
        assert_eq!(log.for_workload(&off).level(), Level::Off);
        // The process's settings are untouched.
        assert_eq!(log.level(), Level::Metadata);
        assert_eq!(log.selected_headers(&headers), "x-request-id: r1");
    }

    #[test]
    fn query_values_of_redacted_parameters_are_replaced() {
        let log = AccessLog::new(Level::Full, vec![], &[], vec!["session".into()]);
        let cases = [
            ("page=2&token=abc", "page=2&token=REDACTED"),
            ("SESSION=xyz&q=rust", "SESSION=REDACTED&q=rust"),
            ("access_token=1&flag", "access_token=REDACTED&flag"),
            ("q=token", "q=token"),
            // Names as the backend decodes them (issue 10, class 9).
            ("%74oken=abc&page=2", "%74oken=REDACTED&page=2"),
            ("page=2;token=abc", "page=2;token=REDACTED"),
            ("access%5Ftoken=abc", "access%5Ftoken=REDACTED"),
            ("TOKEN=abc", "TOKEN=REDACTED"),
            ("%54%4F%4b%45%4e=abc", "%54%4F%4b%45%4e=REDACTED"),
            ("api+key=abc&x=1", "api+key=abc&x=1"),
            ("to%zzken=abc&page=2", "REDACTED&page=2"),
            ("%ff%fe=abc;q=1", "REDACTED;q=1"),
            ("%=abc", "REDACTED"),
            ("%+5token=abc", "REDACTED"),
            ("sess%69on=1;;&", "sess%69on=REDACTED;;&"),
            ("token", "token"),
            ("", ""),
        ];
        for (query, want) in cases {
            assert_eq!(log.redact_query(query), want, "{query}");
        }
    }
}
