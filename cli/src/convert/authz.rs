//! AuthorizationPolicy. A rule veil cannot enforce as written (JWT, `remoteIpBlocks`, trust
//! domains, `when` keys veil lacks, anything veil's validation refuses) is dropped from an ALLOW or
//! AUDIT policy, which then admits (or logs) less; a DENY policy with such a rule is not converted,
//! since dropping the rule would deny less. CUSTOM policies are not converted: veil has no external
//! authorizer. What is not converted is replaced by a stand-in (`stand_in.rs`). Istio's dry-run
//! annotation becomes action AUDIT, which logs matches and decides nothing.

use serde_json::Value;
use veil_crd::authorization::{Action, AuthorizationPolicy, AuthorizationPolicySpec, Rule};
use veil_mesh::policy::{Scope, Target, compile_authz};

use super::{
    Metadata, Notes, Options, Problem, Severity, VeilPolicy, VeilSpec, map_root_namespace,
    read_back, refused, schema,
};

/// Istio's annotation that makes a policy log its decisions without enforcing them.
pub(super) const DRY_RUN: &str = "istio.io/dry-run";

/// The value of [`DRY_RUN`] as Istio reads it (Go's `strconv.ParseBool`); `None` for a value Istio
/// refuses.
pub(super) fn parse_dry_run(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Converts the object with `metadata` and `spec` (as written); `None` when it is left out.
pub(super) fn convert(
    mut metadata: Metadata,
    mut spec: Value,
    options: &Options,
    notes: &mut Notes,
) -> Option<VeilPolicy> {
    if let Err(problem) = schema::check(&mut spec, &schema::AUTHORIZATION_POLICY, "spec") {
        return notes.refuse(problem);
    }
    let rules = match spec.as_object_mut().and_then(|s| s.remove("rules")) {
        Some(Value::Array(rules)) => rules,
        _ => Vec::new(),
    };
    let mut out: AuthorizationPolicySpec = match serde_json::from_value(spec) {
        Ok(out) => out,
        Err(e) => return notes.refuse(Problem::new("spec", e.to_string())),
    };
    dry_run(&mut metadata, &mut out.action, notes)?;
    if out.action == Action::Custom {
        let provider = out.provider.as_ref().map_or("", |p| p.name.as_str());
        let reason = format!(
            "CUSTOM hands the decision to the external authorizer {provider:?}, and veil has no \
             external authorization: write veil policies for what it enforced"
        );
        return notes.refuse(Problem::new("spec.action", reason));
    }
    out.rules = convert_rules(rules, metadata.namespace.as_deref(), out.action, notes)?;
    for (i, target) in out.target_refs.iter_mut().enumerate() {
        core_group(
            &mut target.group,
            &format!("spec.targetRefs[{i}].group"),
            notes,
        );
    }
    if let Some(target) = &mut out.target_ref {
        core_group(&mut target.group, "spec.targetRef.group", notes);
    }
    // A policy with targets applies to them, wherever it is; the others apply mesh-wide in the root
    // namespace.
    if out.target_ref.is_none() && out.target_refs.is_empty() {
        map_root_namespace(&mut metadata, options, notes)?;
    }
    let policy = VeilPolicy::new(metadata, VeilSpec::AuthorizationPolicy(out));
    let compiled = match validate(&policy) {
        Ok(compiled) => compiled,
        Err(problem) => return notes.refuse(problem),
    };
    explain_differences(&compiled, notes);
    Some(policy)
}

/// Istio's dry-run: the policy's matches are logged, nothing is enforced. veil's AUDIT does the
/// same; enforcing instead could widen access (an extra ALLOW policy admits what it matches).
fn dry_run(metadata: &mut Metadata, action: &mut Action, notes: &mut Notes) -> Option<()> {
    if !matches!(action, Action::Allow | Action::Deny) {
        return Some(());
    }
    let Some(value) = metadata.annotations.get(DRY_RUN) else {
        return Some(());
    };
    match parse_dry_run(value) {
        Some(true) => {
            metadata.annotations.remove(DRY_RUN);
            let was = if *action == Action::Allow {
                "ALLOW"
            } else {
                "DENY"
            };
            let reason = format!(
                "istio.io/dry-run: veil has no dry-run; action {was} becomes AUDIT, which logs \
                 matches and decides nothing, as the dry-run did (the annotation is removed)"
            );
            *action = Action::Audit;
            notes.note(Severity::Changed, "spec.action", reason);
            Some(())
        }
        Some(false) => Some(()),
        None => notes.refuse(Problem::new(
            format!("metadata.annotations[{DRY_RUN}]"),
            format!("{value:?}: Istio refuses this value (true or false)"),
        )),
    }
}

/// The rules veil can enforce; the others dropped (ALLOW, AUDIT) or the policy refused (DENY).
fn convert_rules(
    rules: Vec<Value>,
    namespace: Option<&str>,
    action: Action,
    notes: &mut Notes,
) -> Option<Vec<Rule>> {
    let had_rules = !rules.is_empty();
    let mut kept = Vec::new();
    for (i, value) in rules.into_iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        match convert_rule(&field, value, namespace) {
            Ok((rule, mapped)) => {
                for (field, reason) in mapped {
                    notes.note(Severity::Changed, field, reason);
                }
                kept.push(rule);
            }
            Err(problem) if action == Action::Deny => {
                let reason = format!(
                    "{}; a DENY policy without this rule would deny less, so the policy is not \
                     converted",
                    problem.reason
                );
                notes.note(Severity::NotConverted, problem.field, reason);
            }
            Err(problem) => {
                let effect = if action == Action::Audit {
                    "logs less"
                } else {
                    "allows less, never more"
                };
                let reason = format!(
                    "{}; the rule ({field}) is left out: the policy {effect}",
                    problem.reason
                );
                notes.note(Severity::Dropped, problem.field, reason);
            }
        }
    }
    if notes.left_out() {
        return None;
    }
    if had_rules && kept.is_empty() {
        let reason = if action == Action::Audit {
            "no rule is left: the policy logs nothing"
        } else {
            "no rule is left: the policy allows nothing, so every request to what it applies to \
             is denied"
        };
        notes.note(Severity::Changed, "spec.rules", reason);
    }
    Some(kept)
}

/// One rule, and the changes made to carry it over; the first thing veil cannot enforce in it, if
/// any.
fn convert_rule(
    field: &str,
    value: Value,
    namespace: Option<&str>,
) -> Result<(Rule, Vec<(String, String)>), Problem> {
    unsupported_source(field, &value)?;
    let mut rule: Rule =
        serde_json::from_value(value).map_err(|e| Problem::new(field, e.to_string()))?;
    let mut mapped = Vec::new();
    if let Some(namespace) = namespace {
        for (j, from) in rule.from.iter_mut().enumerate() {
            let source = &mut from.source;
            for (name, accounts) in [
                ("serviceAccounts", &mut source.service_accounts),
                ("notServiceAccounts", &mut source.not_service_accounts),
            ] {
                for (k, account) in accounts.iter_mut().enumerate() {
                    if !account.contains('/') && !account.is_empty() {
                        let full = format!("{namespace}/{account}");
                        let reason = format!(
                            "{account:?} means the policy's namespace in Istio; written {full:?}, \
                             the form veil takes"
                        );
                        mapped.push((format!("{field}.from[{j}].source.{name}[{k}]"), reason));
                        *account = full;
                    }
                }
            }
        }
    }
    // The rule alone, in a policy of its own: veil's validation of rules, with its messages.
    let probe = AuthorizationPolicySpec {
        rules: vec![rule.clone()],
        ..AuthorizationPolicySpec::default()
    };
    if let Err(e) = compile_authz(namespace.unwrap_or_default(), "probe", &probe) {
        let mut problem = refused(e);
        problem.field = problem.field.replacen("spec.rules[0]", field, 1);
        return Err(problem);
    }
    Ok((rule, mapped))
}

/// Source fields of Istio's that veil does not enforce, and why; found here rather than by veil's
/// validation so that the finding names the field as written (`notRequestPrincipals`), and because
/// veil's schema has no `trustDomains`.
const UNSUPPORTED_SOURCE: &[(&str, &str)] = &[
    ("requestPrincipals", JWT),
    ("notRequestPrincipals", JWT),
    ("remoteIpBlocks", REMOTE_IP),
    ("notRemoteIpBlocks", REMOTE_IP),
    ("trustDomains", TRUST_DOMAIN),
    ("notTrustDomains", TRUST_DOMAIN),
];
const JWT: &str = "JWT authentication is not supported by veil";
const REMOTE_IP: &str = "client addresses from X-Forwarded-For are not supported by veil \
                         (ipBlocks matches the peer's own address)";
const TRUST_DOMAIN: &str = "trust domains are not supported by veil (a principal carries its own: \
                            <trust-domain>/ns/<ns>/sa/<sa>)";

fn unsupported_source(field: &str, rule: &Value) -> Result<(), Problem> {
    let sources = rule.get("from").and_then(Value::as_array);
    for (j, from) in sources.into_iter().flatten().enumerate() {
        for (key, why) in UNSUPPORTED_SOURCE {
            if from.get("source").and_then(|s| s.get(key)).is_some() {
                return Err(Problem::new(
                    format!("{field}.from[{j}].source.{key}"),
                    *why,
                ));
            }
        }
    }
    Ok(())
}

/// Istio takes `core` for the core API group; veil only `""`.
fn core_group(group: &mut String, field: &str, notes: &mut Notes) {
    if group == "core" {
        group.clear();
        notes.note(
            Severity::Changed,
            field,
            "\"core\" is written \"\", the core group as veil names it",
        );
    }
}

/// Writes the policy out, reads it back as veil's AuthorizationPolicy and compiles it.
pub(super) fn validate(policy: &VeilPolicy) -> Result<veil_mesh::policy::AuthzPolicy, Problem> {
    let back: AuthorizationPolicy = read_back(policy)?;
    if VeilSpec::AuthorizationPolicy(back.spec.clone()) != policy.spec {
        return Err(Problem::new(
            "spec",
            "reads back differently from what was written",
        ));
    }
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    compile_authz(namespace, &policy.metadata.name, &back.spec).map_err(refused)
}

/// Where veil, by design, enforces the converted policy differently from Istio.
fn explain_differences(policy: &veil_mesh::policy::AuthzPolicy, notes: &mut Notes) {
    match &policy.scope {
        Scope::Targets(targets) if targets.iter().any(|t| matches!(t, Target::Service(_))) => {
            let mut reason = "veil also applies a policy attached to a Service to traffic \
                              addressed to the Service's pods, and has their ztunnels enforce it \
                              when the Service has no waypoint; Istio does neither"
                .to_owned();
            let severity = if policy.action == Action::Allow {
                reason.push_str(
                    ": with other ALLOW policies on those pods, it can admit pod-addressed traffic \
                     that Istio refused",
                );
                Severity::Widens
            } else {
                Severity::Changed
            };
            notes.note(severity, "spec.targetRefs", reason);
        }
        Scope::Targets(_) => {}
        _ if policy.uses_l7 && policy.action != Action::Audit => notes.note(
            Severity::Widens,
            "spec.rules",
            "uses HTTP attributes (hosts, methods, paths, request.headers) in a policy on \
             workloads: veil evaluates them at the workload's waypoint, with the client's \
             identity, where Istio's ztunnel cannot (it fails such rules closed): behind a \
             waypoint an ALLOW rule can admit, and a DENY rule let through, what Istio's ambient \
             mode refused; a workload without a waypoint cannot see HTTP, so there an ALLOW rule \
             with them never matches and a DENY rule matches on its other conditions alone",
        ),
        _ => {}
    }
}
