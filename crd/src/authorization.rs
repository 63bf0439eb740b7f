//! `AuthorizationPolicy`: who may reach which workloads, how.
//!
//! Field names and nesting are Istio's, so existing policies deserialize unchanged. Unknown fields are
//! refused rather than ignored: a misspelt `notPrincipals` silently dropped would widen access.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::{PolicyTargetReference, WorkloadSelector};
use crate::status::PolicyStatus;

/// The `spec` of an AuthorizationPolicy.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "security.veil.dev",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "ap",
    category = "veil",
    doc = "Who may reach which workloads, and how. Istio's security.istio.io/v1 schema.",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Enforced","type":"string","jsonPath":".status.conditions[?(@.type==\"Enforced\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The workloads of the policy's namespace it applies to. Without `selector` and `targetRefs` it
    /// applies to the whole namespace (the whole mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Services or waypoints (Gateways) the policy applies to; enforced by the waypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules, ORed. None: an ALLOW policy allows nothing, a DENY policy denies nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What a match means.
    #[serde(default)]
    pub action: Action,
    /// The external authorizer of a CUSTOM policy (not supported by veil).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// What a policy does when one of its rules matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow the request (and deny what no ALLOW policy matches).
    #[default]
    Allow,
    /// Deny the request.
    Deny,
    /// Log the request; the decision is unaffected.
    Audit,
    /// Ask an external authorizer (not supported by veil: such a policy is invalid).
    Custom,
}

/// The external authorizer of a CUSTOM policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The provider's name in the mesh configuration.
    pub name: String,
}

/// One rule: `from` AND `to` AND every `when`. An empty rule matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources, ORed; empty matches any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    /// Operations, ORed; empty matches any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    /// Extra conditions, ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// A source clause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    /// Who the request comes from.
    #[serde(default)]
    pub source: Source,
}

/// Source attributes. Fields are ANDed, the values of one field ORed; a `not*` field matches when
/// none of its values do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities without the scheme: `cluster.local/ns/<ns>/sa/<sa>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// See `principals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT `iss/sub` (not supported by veil).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// See `requestPrincipals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// See `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Service accounts of the peer identity, `<namespace>/<name>`; not combinable with
    /// `principals` or `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// See `serviceAccounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Source IP addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// See `ipBlocks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Original client addresses from `X-Forwarded-For` (not supported by veil).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// See `remoteIpBlocks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// An operation clause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    /// What the request does.
    #[serde(default)]
    pub operation: Operation,
}

/// Operation attributes; combined as in [`Source`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP `Host` / `:authority` values (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// See `hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// See `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// See `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// HTTP paths (L7), without the query string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// See `paths`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A `when` condition: the attribute `key` must match one of `values` and none of `notValues`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute, e.g. `source.ip` or `request.headers[x-tenant]`.
    pub key: String,
    /// Values, ORed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_istio_policies_unchanged() {
        let yaml = r#"
selector:
  matchLabels: {app: user-profile-service}
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/production/sa/account-service"]
  to:
  - operation:
      methods: ["GET"]
      paths: ["/api/v1/profiles/*"]
  when:
  - key: request.headers[x-tenant]
    values: ["acme"]
"#;
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.action, Action::Allow);
        assert_eq!(
            spec.rules[0].from[0].source.principals,
            ["cluster.local/ns/production/sa/account-service"]
        );
        assert_eq!(spec.rules[0].to[0].operation.paths, ["/api/v1/profiles/*"]);
        assert_eq!(spec.rules[0].when[0].key, "request.headers[x-tenant]");
    }

    #[test]
    fn an_empty_spec_is_an_allow_policy_without_rules() {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str("{}").unwrap();
        assert_eq!(spec.action, Action::Allow);
        assert!(spec.rules.is_empty() && spec.selector.is_none());
    }

    #[test]
    fn misspelt_fields_are_refused_not_ignored() {
        let yaml = "rules:\n- from:\n  - source:\n      notPrincipal: [x]\n";
        assert!(serde_saphyr::from_str::<AuthorizationPolicySpec>(yaml).is_err());
        assert!(serde_saphyr::from_str::<AuthorizationPolicySpec>("action: MAYBE").is_err());
    }
}
