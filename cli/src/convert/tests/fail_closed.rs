//! Fail-closed stand-ins: what takes the place of an AuthorizationPolicy that is not converted, where
//! it applies, and where there is none. Every conversion here is also read back by veil.

use veil_crd::authorization::Action;

use super::load_back::assert_veil_accepts;
use super::*;

fn policy(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// Converts, and checks that veil accepts what is emitted.
fn run_checked(input: &str) -> Conversion {
    let conversion = run(input);
    assert_veil_accepts(&conversion);
    conversion
}

fn spec(object: &VeilPolicy) -> &AuthorizationPolicySpec {
    match &object.spec {
        VeilSpec::AuthorizationPolicy(spec) => spec,
        VeilSpec::PeerAuthentication(_) => panic!("an AuthorizationPolicy"),
    }
}

fn deny_all(selector: Option<&str>) -> AuthorizationPolicySpec {
    AuthorizationPolicySpec {
        selector: selector.map(app),
        rules: vec![Default::default()],
        action: Action::Deny,
        ..Default::default()
    }
}

fn allow_nothing(selector: Option<&str>) -> AuthorizationPolicySpec {
    AuthorizationPolicySpec {
        selector: selector.map(app),
        ..Default::default()
    }
}

fn app(value: &str) -> veil_crd::selector::WorkloadSelector {
    veil_crd::selector::WorkloadSelector {
        match_labels: [("app".to_owned(), value.to_owned())].into(),
    }
}

// A misspelt field in a rule: the ALLOW policy is refused, and its stand-in allows nothing to the
// same workloads.
#[test]
fn an_allow_policy_that_is_refused_is_replaced_by_one_that_allows_nothing() {
    let input = policy(
        "viewers",
        "foo",
        "{selector: {matchLabels: {app: a}}, rules: [{from: [{source: {notPrincipal: [x]}}]}]}",
    );
    let conversion = run_checked(&input);
    let at = "AuthorizationPolicy foo/viewers (document 1)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{at} | not_converted | spec.rules[0].from[0].source.notPrincipal"),
            format!("{at} | stand_in | "),
        ]
    );
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: viewers
  namespace: foo
  annotations:
    veil.dev/conversion-stand-in: >-
      Istio's ALLOW policy could not be converted to veil, so this stand-in allows no
      request to what the policy applied to.
spec:
  selector:
    matchLabels:
      app: a
  action: ALLOW
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    let why = reason(&conversion, "");
    assert!(
        why.contains("other ALLOW policies still allow what they match"),
        "{why}"
    );
    assert!(!why.contains("widened"), "{why}");
}

// A selector veil cannot read: the stand-in applies to the whole namespace, and the finding says so.
#[test]
fn a_selector_that_cannot_be_read_widens_the_stand_in_to_the_namespace() {
    let input = [
        policy(
            "deny",
            "foo",
            "{selector: {matchLabels: {app: [a]}}, action: DENY, rules: [{from: [{source: {requestPrincipals: [x]}}]}]}",
        ),
        policy("allow", "foo", "{selector: {matchLabel: {app: a}}, rules: [{}]}"),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    assert_eq!(conversion.objects.len(), 2);
    assert_eq!(*spec(&conversion.objects[0]), deny_all(None));
    assert_eq!(*spec(&conversion.objects[1]), allow_nothing(None));
    let stand_ins: Vec<&str> = conversion
        .findings
        .iter()
        .filter(|f| f.severity == Severity::StandIn)
        .map(|f| f.reason.as_str())
        .collect();
    assert_eq!(stand_ins.len(), 2);
    assert!(
        stand_ins[0].contains(
            "in the whole namespace foo, wider than the policy (veil cannot enforce which \
             requests the policy denied); its scope is widened to the whole namespace because \
             its spec.selector.matchLabels.app cannot be carried over"
        ),
        "{}",
        stand_ins[0]
    );
    assert!(
        stand_ins[1].contains("because its spec.selector.matchLabel cannot be carried over"),
        "{}",
        stand_ins[1]
    );
    let annotation = &conversion.objects[1].metadata.annotations[STAND_IN_ANNOTATION];
    assert!(
        annotation.ends_with(
            "allows no request in the whole namespace foo, wider than the policy, whose \
             spec.selector.matchLabel veil cannot carry over."
        ),
        "{annotation}"
    );
}

// veil's root namespace applies a policy without targets to the whole mesh; in Istio it applied to
// one namespace. No stand-in there, but one for a policy with targets, which apply wherever it is.
#[test]
fn no_stand_in_where_it_would_apply_to_the_whole_mesh() {
    let input = [
        policy(
            "deny",
            "veil-system",
            "{action: DENY, rules: [{from: [{source: {requestPrincipals: [x]}}]}]}",
        ),
        policy(
            "custom",
            "veil-system",
            "{selector: {matchLabels: {app: a}}, action: CUSTOM, provider: {name: opa}}",
        ),
        policy(
            "targeted",
            "veil-system",
            "{targetRefs: [{kind: Service, name: api}], action: CUSTOM, provider: {name: opa}}",
        ),
        // Istio's root namespace, whose selector reaches every namespace: in veil that would need
        // a stand-in for the whole mesh.
        policy(
            "root",
            "istio-system",
            "{selector: {matchLabels: {app: 7}}, action: DENY}",
        ),
        // A misspelt field may have been the selector: the same.
        policy(
            "selectr",
            "istio-system",
            "{selectr: {matchLabels: {app: a}}, action: DENY}",
        ),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    let names: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["targeted"]);
    assert_eq!(spec(&conversion.objects[0]).target_refs[0].name, "api");
    let whole: Vec<(String, &str)> = conversion
        .findings
        .iter()
        .filter(|f| f.field.is_empty())
        .map(|f| (f.object.name.clone().unwrap(), f.reason.as_str()))
        .collect();
    let mesh = "no stand-in: in veil-system, veil's root namespace, a stand-in would apply to the \
                whole mesh, not to one namespace as the policy did in Istio";
    assert_eq!(whole[0].0, "deny");
    assert!(whole[0].1.starts_with(mesh), "{}", whole[0].1);
    assert_eq!(whole[1].0, "custom");
    assert!(whole[1].1.starts_with(mesh), "{}", whole[1].1);
    assert_eq!(whole[2].0, "targeted");
    assert!(whole[2].1.starts_with("replaced by a fail-closed stand-in"));
    assert_eq!(whole[3].0, "root");
    assert!(
        whole[3]
            .1
            .starts_with("no stand-in: its spec.selector.matchLabels.app cannot be carried over"),
        "{}",
        whole[3].1
    );
    assert_eq!(whole[4].0, "selectr");
    assert!(
        whole[4]
            .1
            .starts_with("no stand-in: its spec.selectr cannot be carried over"),
        "{}",
        whole[4].1
    );
    assert!(report_table(&conversion).ends_with(
        "0 converted, 1 replaced by fail-closed stand-ins, 4 left out; see the findings above.\n"
    ));
}

// Istio's mesh-wide CUSTOM policy: its stand-in denies every request in the whole mesh, which is
// where the original applied.
#[test]
fn a_mesh_wide_custom_policy_gets_a_mesh_wide_deny_all_stand_in() {
    let input = policy(
        "ext-authz",
        "istio-system",
        "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
    );
    let conversion = run_checked(&input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: veil-system
  annotations:
    veil.dev/conversion-stand-in: >-
      Istio's CUSTOM policy could not be converted to veil, so this stand-in denies
      every request in the whole mesh, as the policy did.
spec:
  rules:
  - {}
  action: DENY
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    let at = "AuthorizationPolicy istio-system/ext-authz (document 1)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{at} | not_converted | spec.action"),
            format!("{at} | stand_in | "),
        ]
    );
    // With other root namespaces, the same.
    let options = Options {
        root_namespace_from: "istio-config".to_owned(),
        root_namespace_to: "mesh-root".to_owned(),
    };
    let moved = convert(&input.replace("istio-system", "istio-config"), &options).unwrap();
    assert_eq!(
        moved.objects[0].metadata.namespace.as_deref(),
        Some("mesh-root")
    );
}

// An AUDIT policy, or a dry-run one, decides nothing: leaving it out admits nothing more.
#[test]
fn a_policy_that_decides_nothing_needs_no_stand_in() {
    let input = [
        policy("audit", "foo", "{action: AUDIT, rules: [{Form: []}]}"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: dry, namespace: foo, annotations: {istio.io/dry-run: \"true\"}}\n\
         spec: {action: DENY, rules: [{form: []}]}\n"
            .to_owned(),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    assert!(conversion.objects.is_empty());
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/audit (document 1) | not_converted | spec.rules[0].Form",
            "AuthorizationPolicy foo/audit (document 1) | not_converted | ",
            "AuthorizationPolicy foo/dry (document 2) | not_converted | spec.rules[0].form",
            "AuthorizationPolicy foo/dry (document 2) | not_converted | ",
        ]
    );
    assert!(
        conversion.findings[1]
            .reason
            .contains("an AUDIT policy decides nothing")
    );
    assert!(
        conversion.findings[3]
            .reason
            .contains("with istio.io/dry-run")
    );
    assert!(!conversion.is_lossless());
}

// An action that is not Istio's, or one a misspelt field may have set: the stand-in denies all.
#[test]
fn an_unreadable_action_gets_a_deny_all_stand_in() {
    let input = [
        policy(
            "reject",
            "foo",
            "{action: REJECT, selector: {matchLabels: {app: a}}}",
        ),
        policy("number", "foo", "{action: 7}"),
        policy("misspelt", "foo", "{acton: DENY, rules: [{}]}"),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    let specs: Vec<&AuthorizationPolicySpec> = conversion.objects.iter().map(spec).collect();
    // "misspelt" may have had a misspelt selector too: its stand-in is for the whole namespace.
    assert_eq!(
        specs,
        [&deny_all(Some("a")), &deny_all(None), &deny_all(None)]
    );
    let annotation = &conversion.objects[2].metadata.annotations[STAND_IN_ANNOTATION];
    assert!(
        annotation.starts_with("An Istio AuthorizationPolicy whose action cannot be read"),
        "{annotation}"
    );
}

#[test]
fn conflicting_duplicates_get_one_stand_in_the_strictest() {
    let same = |spec: &str| policy("same", "foo", spec);
    // A converted ALLOW policy and a CUSTOM one with the same selector: DENY-all, that selector.
    let input = [
        same("{selector: {matchLabels: {app: a}}, rules: [{}]}"),
        same("{selector: {matchLabels: {app: a}}, action: CUSTOM, provider: {name: opa}}"),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    assert_eq!(conversion.objects.len(), 1);
    assert_eq!(*spec(&conversion.objects[0]), deny_all(Some("a")));
    let severities: Vec<Severity> = conversion.findings.iter().map(|f| f.severity).collect();
    use Severity::{NotConverted, StandIn};
    assert_eq!(
        severities,
        [NotConverted, StandIn, NotConverted, NotConverted, StandIn]
    );
    // Two ALLOW policies refused, with different selectors: allow nothing in the whole namespace.
    let input = [
        same("{selector: {matchLabels: {app: a}}, rules: [{to: [{operation: {ports: [80]}}]}]}"),
        same("{selector: {matchLabels: {app: b}}, rules: [{to: [{operation: {ports: [80]}}]}]}"),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    assert_eq!(conversion.objects.len(), 1);
    assert_eq!(*spec(&conversion.objects[0]), allow_nothing(None));
    let stand_in = conversion
        .findings
        .iter()
        .find(|f| f.severity == Severity::StandIn)
        .unwrap();
    assert!(
        stand_in.reason.contains("since their scopes differ"),
        "{}",
        stand_in.reason
    );
    // Moved to veil's root namespace with different selectors: the whole namespace would be the
    // whole mesh, which neither was.
    let root = |spec: &str| policy("same", "istio-system", spec);
    let input = [
        root("{selector: {matchLabels: {app: a}}, action: CUSTOM, provider: {name: opa}}"),
        root("{selector: {matchLabels: {app: b}}, action: DENY, rules: [{}]}"),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    assert!(conversion.objects.is_empty());
    let last = &conversion.findings.last().unwrap().reason;
    assert!(
        last.starts_with(
            "no stand-in: their scopes differ, and a stand-in for the whole of veil-system"
        ),
        "{last}"
    );
    // Alike: one stand-in, kept once, in place of both.
    let custom = same("{action: CUSTOM, provider: {name: opa}}");
    let conversion = run_checked(&[custom.clone(), custom].join("---\n"));
    assert_eq!(conversion.objects.len(), 1);
    let severities: Vec<Severity> = conversion.findings.iter().map(|f| f.severity).collect();
    use Severity::Dropped;
    assert_eq!(
        severities,
        [NotConverted, StandIn, NotConverted, StandIn, Dropped]
    );
    assert!(report_table(&conversion).ends_with(
        "0 converted, 2 replaced by fail-closed stand-ins, 0 left out; see the findings above.\n"
    ));
    // AUDIT policies only: nothing to stand in for.
    let input = [
        same("{action: AUDIT, rules: [{}]}"),
        same("{action: AUDIT}"),
    ]
    .join("---\n");
    let conversion = run_checked(&input);
    assert!(conversion.objects.is_empty());
    assert!(
        conversion.findings[1]
            .reason
            .contains("none of them decides anything")
    );
}

// A stand-in veil's validation refuses is a bug; it is reported, never written, never a panic.
#[test]
fn a_stand_in_veil_refuses_is_reported_not_written() {
    let conversion = run(&policy(
        "c",
        "foo",
        "{action: CUSTOM, provider: {name: opa}}",
    ));
    let mut refused = conversion.objects[0].clone();
    let VeilSpec::AuthorizationPolicy(spec) = &mut refused.spec else {
        panic!("an AuthorizationPolicy")
    };
    spec.action = Action::Custom;
    let why = crate::convert::stand_in::checked(refused).unwrap_err();
    assert!(why.contains("which is a bug of the converter"), "{why}");
}
