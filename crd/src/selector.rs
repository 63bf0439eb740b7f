//! Selecting workloads and naming targets.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Selects the workloads (pods) of the policy's namespace whose labels include all of these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A reference to the resource a policy applies to (a Service, or a waypoint's Gateway).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`""` for core, `gateway.networking.k8s.io` for Gateway).
    #[serde(default)]
    pub group: String,
    /// Kind of the target: `Service` or `Gateway`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; must be the policy's own when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
