//! Tests of `veil policy convert`, on policies from Istio's documentation (the authorization and
//! authentication tasks, and the reference pages' examples in istio/api), written as there.
//! PeerAuthentication is in `tests/peer_authentication.rs`, odd and hostile inputs in
//! `tests/hostile.rs`, fail-closed stand-ins in `tests/fail_closed.rs`, reading the output back in
//! `tests/load_back.rs`.

mod fail_closed;
mod hostile;
mod load_back;
mod peer_authentication;
mod widens;

use super::*;

fn run(input: &str) -> Conversion {
    convert(input, &Options::default()).expect("readable YAML")
}

/// `object | severity | field` per finding, to compare whole lists exactly.
fn findings(conversion: &Conversion) -> Vec<String> {
    conversion
        .findings
        .iter()
        .map(|f| format!("{} | {} | {}", f.object, f.severity, f.field))
        .collect()
}

/// The reason of the one finding at `field`.
fn reason<'a>(conversion: &'a Conversion, field: &str) -> &'a str {
    let matching: Vec<&Finding> = conversion
        .findings
        .iter()
        .filter(|f| f.field == field)
        .collect();
    assert_eq!(matching.len(), 1, "{field}: {:#?}", conversion.findings);
    &matching[0].reason
}

/// A YAML text written indented-free in a raw string, without its first newline.
fn text(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

// authz-http task: `allow-nothing` (v1beta1, `spec: {}` on its own line) and the reference's
// `allow-all`.
#[test]
fn allow_nothing_and_allow_all_carry_over_unchanged() {
    let input = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-all
 namespace: foo
spec:
 rules:
 - {}
"#;
    let conversion = run(input);
    assert_eq!(findings(&conversion), Vec::<String>::new());
    assert!(conversion.is_lossless());
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
spec:
  action: ALLOW
---
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: foo
spec:
  rules:
  - {}
  action: ALLOW
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert_eq!(
        report_table(&conversion),
        "2 converted, 0 replaced by fail-closed stand-ins, 0 left out; nothing lost.\n"
    );
}

// authz-http task: `details-viewer`, ALLOW by principal and method.
#[test]
fn allow_by_principal_carries_over_and_notes_where_http_is_evaluated() {
    let input = r#"
apiVersion: "security.istio.io/v1beta1"
kind: "AuthorizationPolicy"
metadata:
  name: "details-viewer"
  namespace: default
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: details-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: details
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-productpage
    to:
    - operation:
        methods:
        - GET
  action: ALLOW
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert_eq!(
        findings(&conversion),
        ["AuthorizationPolicy default/details-viewer (document 1) | widens | spec.rules"]
    );
    assert!(reason(&conversion, "spec.rules").contains("an ALLOW rule with them never matches"));
}

// authz-deny task: `deny-method-get`, the version with the `x-token` header.
#[test]
fn deny_by_method_and_header_carries_over() {
    let input = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - to:
    - operation:
        methods:
        - GET
    when:
    - key: request.headers[x-token]
      notValues:
      - admin
  action: DENY
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert_eq!(
        findings(&conversion),
        ["AuthorizationPolicy foo/deny-method-get (document 1) | widens | spec.rules"]
    );
    assert!(reason(&conversion, "spec.rules").contains("a DENY rule matches on its other"));
}

// authz-jwt task: `require-jwt`, first with `requestPrincipals`, then also a claim.
#[test]
fn jwt_rules_are_dropped_from_allow_policies_which_then_allow_nothing() {
    let input = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
       requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    let at = "AuthorizationPolicy foo/require-jwt (document 1)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{at} | dropped | spec.rules[0].from[0].source.requestPrincipals"),
            format!("{at} | changed | spec.rules"),
        ]
    );
    let dropped = reason(
        &conversion,
        "spec.rules[0].from[0].source.requestPrincipals",
    );
    assert!(
        dropped.contains("JWT authentication is not supported by veil"),
        "{dropped}"
    );
    assert!(dropped.contains("allows less, never more"), "{dropped}");
    assert!(reason(&conversion, "spec.rules").contains("allows nothing"));
}

// The reference's first example: an ALLOW rule conditioned on `request.auth.claims[iss]`, next to
// a rule veil can enforce, which stays.
#[test]
fn only_the_jwt_rule_of_an_allow_policy_is_dropped() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
  - from:
    - source:
        namespaces: ["prod"]
    to:
    - operation:
        ports: ["8080"]
"#;
    let conversion = run(input);
    let VeilSpec::AuthorizationPolicy(spec) = &conversion.objects[0].spec else {
        panic!("an AuthorizationPolicy")
    };
    assert_eq!(spec.rules.len(), 1);
    assert_eq!(spec.rules[0].from[0].source.namespaces, ["prod"]);
    assert_eq!(spec.rules[0].to[0].operation.ports, ["8080"]);
    assert_eq!(
        findings(&conversion),
        ["AuthorizationPolicy foo/httpbin (document 1) | dropped | spec.rules[0].when[0].key"]
    );
}

// The "require a JWT" DENY of the authn-policy task: a DENY policy cannot lose a rule, so a stand-in
// that denies every request takes its place, with its selector, moved with it to veil's root
// namespace (a selector there selects in every namespace, in Istio and in veil).
#[test]
fn a_deny_policy_with_a_jwt_rule_is_replaced_by_a_deny_all_stand_in() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
"#;
    let conversion = run(input);
    let at = "AuthorizationPolicy istio-system/require-jwt (document 1)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{at} | not_converted | spec.rules[0].from[0].source.notRequestPrincipals"),
            format!("{at} | stand_in | "),
        ]
    );
    let why = &conversion.findings[0].reason;
    assert!(
        why.contains("a DENY policy without this rule would deny less"),
        "{why}"
    );
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: veil-system
  annotations:
    veil.dev/conversion-stand-in: >-
      Istio's DENY policy could not be converted to veil, so this stand-in denies
      every request to what the policy applied to.
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  rules:
  - {}
  action: DENY
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert!(conversion.objects[0].stand_in);
    assert!(!conversion.is_lossless());
    assert!(report_table(&conversion).ends_with(
        "0 converted, 1 replaced by fail-closed stand-ins, 0 left out; see the findings above.\n"
    ));
}

// authz-custom task: `ext-authz`, applied with `-n foo` (no namespace in the object). Its rules say
// when to ask the authorizer, which may deny: the stand-in denies every request to its workloads.
#[test]
fn a_custom_policy_is_replaced_by_a_deny_all_stand_in_with_its_selector() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  labels: {app.kubernetes.io/part-of: httpbin}
  annotations: {owner: team-a}
spec:
  selector:
    matchLabels:
      app: httpbin
  action: CUSTOM
  provider:
    # The provider name must match the extension provider defined in the mesh config.
    name: sample-ext-authz-grpc
  rules:
  # The rules specify when to trigger the external authorizer.
  - to:
    - operation:
        paths: ["/headers"]
"#;
    let conversion = run(input);
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy ext-authz (document 1) | not_converted | spec.action",
            "AuthorizationPolicy ext-authz (document 1) | stand_in | ",
        ]
    );
    assert!(reason(&conversion, "spec.action").contains("\"sample-ext-authz-grpc\""));
    let stand_in = reason(&conversion, "");
    assert!(stand_in.contains("the external authorizer could deny any request"));
    // Labels are kept; the annotations are the stand-in's own.
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  labels:
    app.kubernetes.io/part-of: httpbin
  annotations:
    veil.dev/conversion-stand-in: >-
      Istio's CUSTOM policy could not be converted to veil, so this stand-in denies
      every request to what the policy applied to.
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - {}
  action: DENY
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
}

// authz-dry-run task / the reference's dry-run example.
#[test]
fn a_dry_run_policy_becomes_an_audit_policy() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - to:
    - operation:
        paths:
        - /headers
  action: AUDIT
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    // An AUDIT policy decides nothing, so where HTTP is evaluated is not worth a finding.
    assert_eq!(
        findings(&conversion),
        ["AuthorizationPolicy foo/dry-run-example (document 1) | changed | spec.action"]
    );
    assert!(reason(&conversion, "spec.action").contains("action DENY becomes AUDIT"));
}

// The reference: a mesh-wide `allow-nothing` with a selector, in the root namespace.
#[test]
fn a_selector_policy_in_the_root_namespace_moves_to_veils() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-nothing
 namespace: istio-system
spec:
 selector:
   matchLabels:
     version: v1
"#;
    let conversion = run(input);
    assert_eq!(
        conversion.objects[0].metadata.namespace.as_deref(),
        Some("veil-system")
    );
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy istio-system/allow-nothing (document 1) | changed | metadata.namespace"
        ]
    );
    // The same, with other root namespaces.
    let options = Options {
        root_namespace_from: "istio-config".to_owned(),
        root_namespace_to: "mesh-root".to_owned(),
    };
    let moved = input.replace("istio-system", "istio-config");
    let conversion = convert(&moved, &options).unwrap();
    assert_eq!(
        conversion.objects[0].metadata.namespace.as_deref(),
        Some("mesh-root")
    );
    // istio-system is then an ordinary namespace.
    let conversion = convert(input, &options).unwrap();
    assert!(conversion.is_lossless());
    assert_eq!(
        conversion.objects[0].metadata.namespace.as_deref(),
        Some("istio-system")
    );
}

// What `kubectl get authorizationpolicies -A -o yaml` prints: a List, with the server's fields.
#[test]
fn a_kubectl_list_is_read_and_server_fields_are_dropped() {
    let input = r#"
apiVersion: v1
items:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"annotations":{},"name":"allow-nothing","namespace":"default"},"spec":{}}
      owner: "team-a"
    creationTimestamp: "2025-03-04T10:11:12Z"
    generation: 1
    labels:
      app.kubernetes.io/part-of: bookinfo
      enabled: "true"
    managedFields:
    - apiVersion: security.istio.io/v1
      fieldsType: FieldsV1
      manager: kubectl-client-side-apply
      operation: Update
    name: allow-nothing
    namespace: default
    resourceVersion: "48213"
    uid: 6f1c3d2e-58a3-4b44-9d0e-3c1b2a9f8e77
  spec: {}
  status:
    validationMessages: []
kind: List
metadata:
  resourceVersion: ""
"#;
    let conversion = run(input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: default
  labels:
    app.kubernetes.io/part-of: bookinfo
    enabled: "true"
  annotations:
    owner: team-a
spec:
  action: ALLOW
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert!(conversion.is_lossless(), "{:#?}", conversion.findings);
}

// The API server's typed list leaves `apiVersion` and `kind` out of its items.
#[test]
fn a_typed_list_lends_its_kind_to_its_items() {
    let input = r#"{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthenticationList",
      "items": [{"metadata": {"name": "default", "namespace": "foo"}, "spec": {"mtls": {"mode": "STRICT"}}},
                {"kind": "Secret", "metadata": {"name": "s", "namespace": "foo"}}]}"#;
    let conversion = run(input);
    assert_eq!(conversion.objects.len(), 1);
    assert_eq!(conversion.objects[0].kind, "PeerAuthentication");
    assert_eq!(
        findings(&conversion),
        ["Secret foo/s (document 1, items[1]) | not_converted | kind"]
    );
}

#[test]
fn short_service_accounts_name_the_policys_namespace() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-sleep, namespace: foo}
spec:
  rules:
  - from:
    - source:
        serviceAccounts: ["sleep", "bar/curl"]
"#;
    let conversion = run(input);
    let VeilSpec::AuthorizationPolicy(spec) = &conversion.objects[0].spec else {
        panic!("an AuthorizationPolicy")
    };
    assert_eq!(
        spec.rules[0].from[0].source.service_accounts,
        ["foo/sleep", "bar/curl"]
    );
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/from-sleep (document 1) | changed | spec.rules[0].from[0].source.serviceAccounts[0]"
        ]
    );
}

// The reference's waypoint example (PolicyTargetReference), and a Service target in the `core`
// group, which Istio takes and veil writes "".
#[test]
fn targeted_policies_keep_their_namespace_and_note_service_semantics() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  targetRefs:
  - name: waypoint
    kind: Gateway
    group: gateway.networking.k8s.io
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["POST"]
        ports: ["8080"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress
  namespace: istio-system
spec:
  targetRefs:
  - {kind: Service, group: core, name: istio-ingressgateway}
  rules:
  - from:
    - source: {ipBlocks: ["203.0.113.0/24"]}
"#;
    let conversion = run(input);
    assert_eq!(conversion.objects.len(), 2);
    assert_eq!(
        conversion.objects[1].metadata.namespace.as_deref(),
        Some("istio-system")
    );
    let VeilSpec::AuthorizationPolicy(spec) = &conversion.objects[1].spec else {
        panic!("an AuthorizationPolicy")
    };
    assert_eq!(spec.target_refs[0].group, "");
    let at = "AuthorizationPolicy istio-system/ingress (document 2)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{at} | changed | spec.targetRefs[0].group"),
            format!("{at} | widens | spec.targetRefs"),
        ]
    );
    assert!(reason(&conversion, "spec.targetRefs").contains("can admit pod-addressed traffic"));
}

// A target veil does not know: the stand-in applies to the whole namespace. In Istio's root
// namespace that would apply to the whole mesh (or, kept there, miss the gateways of the class in
// other namespaces): no stand-in.
#[test]
fn targets_veil_does_not_know_are_not_converted() {
    let input = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress, namespace: foo}
spec:
  targetRefs:
  - {kind: ServiceEntry, group: networking.istio.io, name: api-example-com}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: all-gateways, namespace: istio-system}
spec:
  targetRefs:
  - {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio}
  action: DENY
  rules: [{from: [{source: {notNamespaces: [trusted]}}]}]
"#;
    let conversion = run(input);
    let egress = "AuthorizationPolicy foo/egress (document 1)";
    let gateways = "AuthorizationPolicy istio-system/all-gateways (document 2)";
    assert_eq!(
        findings(&conversion),
        [
            format!("{egress} | not_converted | spec.targetRefs[0]"),
            format!("{egress} | stand_in | "),
            format!("{gateways} | not_converted | spec.targetRefs[0]"),
            format!("{gateways} | not_converted | "),
        ]
    );
    assert_eq!(conversion.objects.len(), 1);
    let egress = &conversion.objects[0];
    assert_eq!(egress.metadata.namespace.as_deref(), Some("foo"));
    let VeilSpec::AuthorizationPolicy(spec) = &egress.spec else {
        panic!("an AuthorizationPolicy")
    };
    let allow_nothing = AuthorizationPolicySpec::default();
    assert_eq!(*spec, allow_nothing);
    let widened = &conversion.findings[1].reason;
    assert!(
        widened.contains("widened to the whole namespace because its spec.targetRefs[0]"),
        "{widened}"
    );
    let none = &conversion.findings[3].reason;
    assert!(
        none.starts_with("no stand-in: its spec.targetRefs[0] cannot be carried over"),
        "{none}"
    );
    assert!(none.contains("Istio's root namespace"), "{none}");
}

// What veil refuses in a rule: dropped from ALLOW and AUDIT policies, never from DENY ones.
#[test]
fn unsupported_rules_are_dropped_by_action() {
    let rules = r#"
  rules:
  - from:
    - source: {remoteIpBlocks: ["203.0.113.7"]}
  - from:
    - source: {trustDomains: ["td1"]}
  - when:
    - {key: connection.sni, values: ["www.example.com"]}
  - to:
    - operation: {paths: ["/foo/{*}/bar"]}
  - from:
    - source: {namespaces: [prod]}
"#;
    let object = |name: &str, action: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: foo}}\nspec:\n  action: {action}\n{rules}"
        )
    };
    let input = [
        object("allow", "ALLOW"),
        object("audit", "AUDIT"),
        object("deny", "DENY"),
    ]
    .join("---\n");
    let conversion = run(&input);
    let names: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["allow", "audit", "deny"]);
    assert!(conversion.objects[2].stand_in);
    for object in &conversion.objects[..2] {
        let VeilSpec::AuthorizationPolicy(spec) = &object.spec else {
            panic!("an AuthorizationPolicy")
        };
        assert_eq!(spec.rules.len(), 1, "{}", object.metadata.name);
        assert_eq!(spec.rules[0].from[0].source.namespaces, ["prod"]);
    }
    let fields = [
        "spec.rules[0].from[0].source.remoteIpBlocks",
        "spec.rules[1].from[0].source.trustDomains",
        "spec.rules[2].when[0].key",
        "spec.rules[3].to[0].operation.paths",
    ];
    let expected: Vec<String> = [
        ("allow", 1, "dropped"),
        ("audit", 2, "dropped"),
        ("deny", 3, "not_converted"),
    ]
    .iter()
    .flat_map(|(name, doc, severity)| {
        fields.iter().map(move |field| {
            format!("AuthorizationPolicy foo/{name} (document {doc}) | {severity} | {field}")
        })
    })
    .chain(["AuthorizationPolicy foo/deny (document 3) | stand_in | ".to_owned()])
    .collect();
    assert_eq!(findings(&conversion), expected);
    let audit = &conversion.findings[4].reason;
    assert!(audit.ends_with("the policy logs less"), "{audit}");
}
