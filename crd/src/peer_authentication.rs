//! `PeerAuthentication`: whether a workload accepts plaintext next to mutual TLS.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::WorkloadSelector;
use crate::status::PolicyStatus;

/// The `spec` of a PeerAuthentication.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "security.veil.dev",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    status = "PolicyStatus",
    shortname = "pa",
    category = "veil",
    doc = "Whether workloads accept plaintext next to mutual TLS. Istio's security.istio.io/v1 schema.",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The workloads it applies to; all of the namespace when absent (mesh-wide in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides, keyed by the workload's (target) port.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "port_map")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// A map keyed by port numbers. Kubernetes structural schemas have no `patternProperties`, so the
/// keys are checked by veil's validation rather than by the schema.
fn port_map(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let value = generator.subschema_for::<MutualTls>();
    schemars::json_schema!({
        "type": "object",
        "description": "Per-port overrides, keyed by the workload's (target) port.",
        "additionalProperties": value,
    })
}

/// A mutual-TLS mode setting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Mutual-TLS modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the enclosing scope.
    #[default]
    Unset,
    /// Accept plaintext as well (veil treats DISABLE like PERMISSIVE: HBONE is always accepted).
    Disable,
    /// Accept both mutual TLS and plaintext.
    Permissive,
    /// Accept only mutual TLS.
    Strict,
}
