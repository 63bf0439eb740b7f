//! `Telemetry`: what the mesh's proxies may record about a workload's traffic — its access log and
//! its traces. veil's own resource (Istio's `telemetry.istio.io` Telemetry configures providers
//! veil does not have); the leaf names follow Istio's where the meaning is the same.
//!
//! Privacy first: the most specific object wins (selector, then namespace, then the root
//! namespace's mesh-wide one); objects of equal specificity combine to what records least.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::WorkloadSelector;

/// The `spec` of a Telemetry.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.veil.dev",
    version = "v1",
    kind = "Telemetry",
    namespaced,
    shortname = "vtelemetry",
    category = "veil",
    doc = "What veil's proxies may record about workloads' traffic: access log and traces.",
    printcolumn = r#"{"name":"Access log","type":"string","jsonPath":".spec.accessLog.level"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The workloads of its namespace it applies to; all of the namespace when absent (the whole
    /// mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The access log of connections and requests to these workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
    /// Traces through these workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

/// The access log of a workload's inbound connections (ztunnel) and requests (its waypoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogSpec {
    /// `off`: nothing but denials (always on the audit stream); `metadata`: identities, decision,
    /// status, sizes, duration; `full`: also method, path, query (redacted), host and `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<AccessLogLevel>,
    /// Request headers written at `full` (credentials never are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Query parameters whose values are written as `REDACTED`, besides the built-in credential
    /// names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_query_parameters: Vec<String>,
}

/// How much of a request the access log writes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum AccessLogLevel {
    /// Only denials.
    Off,
    /// Identities, decision, status, sizes, duration.
    Metadata,
    /// Also method, path, query, host and the listed headers.
    Full,
}

/// Traces through a workload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSpec {
    /// Percentage (0–100) of the traces started at these workloads' tunnels that are sampled (a
    /// trace started upstream keeps its own decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    /// No spans for these workloads' tunnels and requests (the trace context still passes
    /// through, so the hops around them stay linked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
}
