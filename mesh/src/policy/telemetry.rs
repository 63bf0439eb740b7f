//! Telemetry: what the proxies may record about a workload's traffic (access log, traces),
//! compiled from veil's `Telemetry` resource and resolved per workload.
//!
//! The most specific object that sets a field decides it: one selecting the workload in its
//! namespace, then the namespace's own (no selector), then the root namespace's (mesh-wide).
//! Several at one level combine to what records least: the lowest access-log level, only headers
//! all of them list, every redacted parameter, the lowest sampling, spans off if any turns them
//! off. An object that cannot be compiled records nothing where it would apply (fail closed for
//! privacy): access log off, no spans.

use std::collections::BTreeMap;

use veil_crd::telemetry::{AccessLogLevel, TelemetrySpec};

use super::compile::{PolicyError, PolicyId};

/// A compiled Telemetry.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryPolicy {
    /// Which object.
    pub id: PolicyId,
    selector: Option<BTreeMap<String, String>>,
    settings: TelemetrySettings,
    /// A stand-in for an object that could not be read: without a readable selector it applies to
    /// every workload of its namespace at the selected level too, so that no selector object can
    /// outrank it there.
    fail_closed: bool,
}

/// What one object (or, resolved, all that apply to a workload) says; `None`: not said here.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Access-log level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogLevel>,
    /// Headers written at `full` (lower-case names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// Query parameters redacted besides the built-in ones (lower-case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_query_parameters: Vec<String>,
    /// Fraction (0–1) of new traces sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// No spans (`Some(false)`: spans, whatever a less specific level says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans_disabled: Option<bool>,
}

impl TelemetrySettings {
    /// Whether nothing is said (the proxies' own settings apply).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// What records least of `self` and `other`, field by field.
    fn least(mut self, other: &Self) -> Self {
        self.access_log = match (self.access_log, other.access_log) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.headers = match (self.headers.take(), &other.headers) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|h| b.contains(h)).collect()),
            (a, b) => a.or_else(|| b.clone()),
        };
        self.redact_query_parameters
            .extend(other.redact_query_parameters.iter().cloned());
        self.redact_query_parameters.sort();
        self.redact_query_parameters.dedup();
        self.sampling = match (self.sampling, other.sampling) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.spans_disabled = match (self.spans_disabled, other.spans_disabled) {
            (Some(a), Some(b)) => Some(a || b),
            (a, b) => a.or(b),
        };
        self
    }

    /// `self`, with what it does not say taken from `fallback` (a less specific level). Redacted
    /// parameters add up: a more specific object cannot take back a redaction.
    fn or(mut self, fallback: &Self) -> Self {
        self.access_log = self.access_log.or(fallback.access_log);
        self.headers = self.headers.or_else(|| fallback.headers.clone());
        self.redact_query_parameters
            .extend(fallback.redact_query_parameters.iter().cloned());
        self.redact_query_parameters.sort();
        self.redact_query_parameters.dedup();
        self.sampling = self.sampling.or(fallback.sampling);
        self.spans_disabled = self.spans_disabled.or(fallback.spans_disabled);
        self
    }

    /// Whether spans are off.
    pub fn no_spans(&self) -> bool {
        self.spans_disabled == Some(true)
    }

    /// Record nothing: what an object that cannot be compiled stands for.
    pub fn record_nothing() -> Self {
        Self {
            access_log: Some(AccessLogLevel::Off),
            headers: Some(Vec::new()),
            redact_query_parameters: Vec::new(),
            sampling: Some(0.0),
            spans_disabled: Some(true),
        }
    }
}

fn error(id: &PolicyId, field: &str, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        kind: "Telemetry",
        policy: id.clone(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Compiles one Telemetry.
pub fn compile_telemetry(
    namespace: &str,
    name: &str,
    spec: &TelemetrySpec,
) -> Result<TelemetryPolicy, PolicyError> {
    let id = PolicyId::new(namespace, name);
    let selector = super::peer_auth::selector_labels(spec.selector.as_ref());
    let mut settings = TelemetrySettings::default();
    if let Some(log) = &spec.access_log {
        settings.access_log = log.level;
        if !log.headers.is_empty() {
            let headers = log
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .map(|n| n.as_str().to_owned())
                        .map_err(|_| {
                            error(
                                &id,
                                &format!("spec.accessLog.headers[{i}]"),
                                format!("{h:?} is not a header name"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            settings.headers = Some(headers);
        }
        for (i, p) in log.redact_query_parameters.iter().enumerate() {
            if p.is_empty() || p.len() > 256 || p.chars().any(char::is_control) {
                return Err(error(
                    &id,
                    &format!("spec.accessLog.redactQueryParameters[{i}]"),
                    "not a parameter name (1-256 characters, no control characters)",
                ));
            }
            settings
                .redact_query_parameters
                .push(p.to_ascii_lowercase());
        }
        settings.redact_query_parameters.sort();
        settings.redact_query_parameters.dedup();
    }
    if let Some(tracing) = &spec.tracing {
        if let Some(percent) = tracing.random_sampling_percentage {
            if !(0.0..=100.0).contains(&percent) {
                return Err(error(
                    &id,
                    "spec.tracing.randomSamplingPercentage",
                    format!("{percent} is not between 0 and 100"),
                ));
            }
            settings.sampling = Some(percent / 100.0);
        }
        settings.spans_disabled = tracing.disable_span_reporting;
    }
    Ok(TelemetryPolicy {
        id,
        selector,
        settings,
        fail_closed: false,
    })
}

/// What stands for a Telemetry that cannot be compiled: it records nothing in the scope it would
/// have had (its selector, if that much could be read; else its namespace).
pub fn telemetry_fail_closed(
    namespace: &str,
    name: &str,
    selector: Option<BTreeMap<String, String>>,
) -> TelemetryPolicy {
    TelemetryPolicy {
        id: PolicyId::new(namespace, name),
        selector: selector.filter(|s| !s.is_empty()),
        settings: TelemetrySettings::record_nothing(),
        fail_closed: true,
    }
}

impl TelemetryPolicy {
    /// The workload labels it selects by; none when it applies to its whole namespace.
    pub fn selector(&self) -> Option<&BTreeMap<String, String>> {
        self.selector.as_ref()
    }

    /// What it says.
    pub fn settings(&self) -> &TelemetrySettings {
        &self.settings
    }
}

/// What applies to a workload of `namespace` with `labels`; empty when nothing does.
pub fn resolve_telemetry(
    policies: &[TelemetryPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> TelemetrySettings {
    let level = |pick: &dyn Fn(&TelemetryPolicy) -> bool| {
        policies
            .iter()
            .filter(|p| pick(p))
            .fold(None, |acc: Option<TelemetrySettings>, p| {
                Some(match acc {
                    Some(acc) => acc.least(&p.settings),
                    None => p.settings.clone(),
                })
            })
            .unwrap_or_default()
    };
    let selected = level(&|p| {
        &*p.id.namespace == namespace
            && match &p.selector {
                Some(sel) => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
                None => p.fail_closed,
            }
    });
    let own = level(&|p| &*p.id.namespace == namespace && p.selector.is_none());
    let mesh = level(&|p| &*p.id.namespace == root_namespace && p.selector.is_none());
    selected.or(&own).or(&mesh)
}

#[cfg(test)]
mod tests;
