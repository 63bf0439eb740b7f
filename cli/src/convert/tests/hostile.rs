//! Odd and hostile inputs: nothing crashes, nothing unreadable is half-converted, nothing misspelt
//! is silently dropped.

use super::*;

fn object(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: foo}}\n\
         spec: {spec}\n"
    )
}

#[test]
fn empty_input_converts_to_nothing() {
    for input in ["", "\n", "# only a comment\n", "---\n---\n", "~\n"] {
        let conversion = run(input);
        assert_eq!(conversion, Conversion::default(), "{input:?}");
        assert_eq!(conversion.objects_yaml(), "");
        assert_eq!(
            report_table(&conversion),
            "0 converted, 0 replaced by fail-closed stand-ins, 0 left out; nothing lost.\n"
        );
    }
}

#[test]
fn unreadable_yaml_is_an_error_with_its_position() {
    let input = object("AuthorizationPolicy", "a", "{}") + "---\nspec:\n  rules: [{from: \n- x\n";
    let e = convert(&input, &Options::default()).unwrap_err();
    assert_eq!((e.line, e.column), (Some(8), Some(1)), "{e}");
    assert!(
        e.to_string()
            .starts_with("the input is not readable YAML: "),
        "{e}"
    );
    // A key written twice is an error too, not a silent choice of one value.
    let twice =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nkind: PeerAuthentication\n";
    let e = convert(twice, &Options::default()).unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn documents_that_are_not_objects_are_findings() {
    let input = format!(
        "just a string\n---\n- a\n- list\n---\n42\n---\n{{}}\n---\n{}",
        object("AuthorizationPolicy", "ok", "{}")
    );
    let conversion = run(&input);
    assert_eq!(conversion.objects.len(), 1);
    assert_eq!(
        findings(&conversion),
        [
            "document 1 | not_converted | ",
            "document 2 | not_converted | ",
            "document 3 | not_converted | ",
            "document 4 | not_converted | ",
        ]
    );
    assert!(
        conversion.findings[0]
            .reason
            .starts_with("not a Kubernetes object")
    );
    let table = report_table(&conversion);
    assert!(
        table.contains("document 2:\n  not_converted  -  not a Kubernetes object"),
        "{table}"
    );
    assert!(
        table.ends_with(
            "1 converted, 0 replaced by fail-closed stand-ins, 4 left out; see the findings above.\n"
        ),
        "{table}"
    );
}

#[test]
fn other_kinds_and_versions_are_findings() {
    let input = [
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: foo}\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\n",
        "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: old, namespace: foo}\n",
        "apiVersion: authentication.istio.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: default}\n",
        "apiVersion: security.veil.dev/v1\nkind: PeerAuthentication\nmetadata: {name: mine, namespace: foo}\n",
        "apiVersion: 7\nkind: [AuthorizationPolicy]\n",
    ]
    .join("---\n");
    let conversion = run(&input);
    assert!(conversion.objects.is_empty());
    assert_eq!(
        findings(&conversion),
        [
            "Deployment foo/web (document 1) | not_converted | kind",
            "VirtualService vs (document 2) | not_converted | kind",
            "RequestAuthentication foo/jwt (document 3) | not_converted | kind",
            "AuthorizationPolicy foo/old (document 4) | not_converted | apiVersion",
            "MeshPolicy default (document 5) | not_converted | kind",
            "PeerAuthentication foo/mine (document 6) | not_converted | apiVersion",
            "document 7 | not_converted | ",
        ]
    );
    assert!(conversion.findings[2].reason.contains("JWT"));
    assert!(
        conversion.findings[5]
            .reason
            .contains("already a veil object")
    );
}

#[test]
fn misspelt_fields_leave_the_object_out() {
    let input = [
        object(
            "AuthorizationPolicy",
            "typo",
            "{action: DENY, rules: [{from: [{source: {notPrincipal: [cluster.local/ns/a/sa/b]}}]}]}",
        ),
        object("AuthorizationPolicy", "case", "{Rules: [{}]}"),
        object("PeerAuthentication", "mode", "{mtls: {mode: strict}}"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: top, namespace: foo}\nspce: {action: DENY, rules: [{}]}\n"
            .to_owned(),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: meta, namspace: istio-system}\nspec: {}\n"
            .to_owned(),
    ]
    .join("---\n");
    let conversion = run(&input);
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/typo (document 1) | not_converted | spec.rules[0].from[0].source.notPrincipal",
            "AuthorizationPolicy foo/typo (document 1) | stand_in | ",
            "AuthorizationPolicy foo/case (document 2) | not_converted | spec.Rules",
            "AuthorizationPolicy foo/case (document 2) | stand_in | ",
            "PeerAuthentication foo/mode (document 3) | not_converted | spec.mtls.mode",
            "PeerAuthentication foo/mode (document 3) | not_converted | ",
            "AuthorizationPolicy foo/top (document 4) | not_converted | spce",
            "AuthorizationPolicy foo/top (document 4) | stand_in | ",
            "AuthorizationPolicy meta (document 5) | not_converted | metadata.namspace",
            "AuthorizationPolicy meta (document 5) | not_converted | ",
        ]
    );
    let reasons: Vec<&str> = conversion
        .findings
        .iter()
        .map(|f| f.reason.as_str())
        .collect();
    assert_eq!(
        reasons[0],
        "unknown field \"notPrincipal\" (did you mean \"notPrincipals\"?)"
    );
    assert_eq!(
        reasons[2],
        "unknown field \"Rules\" (did you mean \"rules\"?)"
    );
    assert_eq!(
        reasons[4],
        "\"strict\" is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
    );
    assert!(
        reasons[9].contains("may be a misspelt namespace"),
        "{}",
        reasons[9]
    );
    // The DENY policy's stand-in denies everything; so do those of the policies whose action may be
    // misspelt (in `Rules`' spec, in `spce`), with the whole namespace as their scope.
    let names: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["typo", "case", "top"]);
    for object in &conversion.objects {
        assert!(object.stand_in);
        assert_eq!(object.spec, deny_all(), "{}", object.metadata.name);
    }
}

/// The spec of a stand-in that denies every request in its namespace.
fn deny_all() -> VeilSpec {
    VeilSpec::AuthorizationPolicy(AuthorizationPolicySpec {
        rules: vec![Default::default()],
        action: veil_crd::authorization::Action::Deny,
        ..Default::default()
    })
}

#[test]
fn wrong_types_are_refused_at_their_path() {
    let input = [
        // Kubernetes refuses an unquoted port: Istio's schema has strings.
        object(
            "AuthorizationPolicy",
            "int-port",
            "{rules: [{to: [{operation: {ports: [8080]}}]}]}",
        ),
        object("AuthorizationPolicy", "rules-map", "{rules: {from: []}}"),
        object(
            "AuthorizationPolicy",
            "no-key",
            "{rules: [{when: [{values: [a]}]}]}",
        ),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: labelled, namespace: foo, labels: {version: 2}}\nspec: {}\n"
            .to_owned(),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: foo}\n"
            .to_owned(),
        // YAML 1.1, as kubectl reads it too: `no` is the boolean false, not a name.
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no, namespace: foo}\n"
            .to_owned(),
    ]
    .join("---\n");
    let conversion = run(&input);
    let at = |name: &str, document: usize| {
        format!("AuthorizationPolicy foo/{name} (document {document})")
    };
    assert_eq!(
        findings(&conversion),
        [
            format!(
                "{} | not_converted | spec.rules[0].to[0].operation.ports[0]",
                at("int-port", 1)
            ),
            format!("{} | stand_in | ", at("int-port", 1)),
            format!("{} | not_converted | spec.rules", at("rules-map", 2)),
            format!("{} | stand_in | ", at("rules-map", 2)),
            format!(
                "{} | not_converted | spec.rules[0].when[0].key",
                at("no-key", 3)
            ),
            format!("{} | stand_in | ", at("no-key", 3)),
            format!(
                "{} | not_converted | metadata.labels.version",
                at("labelled", 4)
            ),
            format!("{} | stand_in | ", at("labelled", 4)),
            format!("{} | not_converted | metadata.name", at("(no name)", 5)),
            format!("{} | not_converted | ", at("(no name)", 5)),
            format!("{} | not_converted | metadata.name", at("(no name)", 6)),
            format!("{} | not_converted | ", at("(no name)", 6)),
        ]
    );
    assert_eq!(
        conversion.findings[0].reason,
        "expected a string, found the number 8080"
    );
    assert_eq!(conversion.findings[10].reason, "expected a string");
    // ALLOW policies (no action written): stand-ins that allow nothing; unreadable labels are left off.
    assert_eq!(conversion.objects.len(), 4);
    for object in &conversion.objects {
        let allow_nothing = VeilSpec::AuthorizationPolicy(AuthorizationPolicySpec::default());
        assert_eq!(object.spec, allow_nothing, "{}", object.metadata.name);
        assert!(object.metadata.labels.is_empty());
    }
    assert!(
        conversion.findings[11]
            .reason
            .starts_with("no stand-in: without a readable metadata.name")
    );
}

#[test]
fn nulls_read_as_absent_fields() {
    let input = object(
        "AuthorizationPolicy",
        "nulls",
        "{selector: ~, rules: [{from: ~, to: [{operation: {ports: [\"80\"], paths: null}}]}], action: ~}",
    );
    let conversion = run(&input);
    let expected = r#"
apiVersion: security.veil.dev/v1
kind: AuthorizationPolicy
metadata:
  name: nulls
  namespace: foo
spec:
  rules:
  - to:
    - operation:
        ports:
        - "80"
  action: ALLOW
"#;
    assert_eq!(conversion.objects_yaml(), text(expected));
    assert!(conversion.is_lossless(), "{:#?}", conversion.findings);
}

#[test]
fn huge_and_out_of_range_ports() {
    let huge = "99999999999999999999999";
    let input = [
        object("AuthorizationPolicy", "allow", &format!("{{rules: [{{to: [{{operation: {{ports: [\"{huge}\"]}}}}]}}, {{}}]}}")),
        object("AuthorizationPolicy", "deny", &format!("{{action: DENY, rules: [{{to: [{{operation: {{notPorts: [\"{huge}\"]}}}}]}}]}}")),
        object("AuthorizationPolicy", "zero", "{action: DENY, rules: [{when: [{key: destination.port, values: [\"0\"]}]}]}"),
        object("PeerAuthentication", "huge-key", &format!("{{selector: {{matchLabels: {{app: a}}}}, portLevelMtls: {{{huge}: {{mode: STRICT}}}}}}")),
        object("PeerAuthentication", "big-key", "{selector: {matchLabels: {app: a}}, portLevelMtls: {70000: {mode: STRICT}}}"),
        object("PeerAuthentication", "zero-key", "{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: PERMISSIVE}}}"),
    ]
    .join("---\n");
    let conversion = run(&input);
    let names: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    // The ALLOW policy keeps its other rule (allow all): dropping the port rule takes nothing away
    // that the other rule did not already allow, and never adds.
    // The DENY policies are replaced by stand-ins; PeerAuthentications need none.
    assert_eq!(names, ["allow", "deny", "zero"]);
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/allow (document 1) | dropped | spec.rules[0].to[0].operation.ports[0]".to_owned(),
            "AuthorizationPolicy foo/deny (document 2) | not_converted | spec.rules[0].to[0].operation.notPorts[0]".to_owned(),
            "AuthorizationPolicy foo/deny (document 2) | stand_in | ".to_owned(),
            "AuthorizationPolicy foo/zero (document 3) | not_converted | spec.rules[0].when[0].values[0]".to_owned(),
            "AuthorizationPolicy foo/zero (document 3) | stand_in | ".to_owned(),
            format!("PeerAuthentication foo/huge-key (document 4) | not_converted | spec.portLevelMtls[{huge}]"),
            "PeerAuthentication foo/huge-key (document 4) | not_converted | ".to_owned(),
            "PeerAuthentication foo/big-key (document 5) | not_converted | spec.portLevelMtls[70000]".to_owned(),
            "PeerAuthentication foo/big-key (document 5) | not_converted | ".to_owned(),
            "PeerAuthentication foo/zero-key (document 6) | not_converted | spec.portLevelMtls[0]".to_owned(),
            "PeerAuthentication foo/zero-key (document 6) | not_converted | ".to_owned(),
        ]
    );
    // Selector policies that required mutual TLS on a port: the namespace's or the mesh-wide policy
    // decides there instead, which may admit plaintext. One that admitted it: never wider.
    let left_out = |i: usize| conversion.findings[i].reason.as_str();
    assert!(
        left_out(6).contains("admits plaintext if it is PERMISSIVE"),
        "{}",
        left_out(6)
    );
    assert!(
        left_out(10).starts_with("leaving it out never widens access"),
        "{}",
        left_out(10)
    );
}

#[test]
fn what_veil_refuses_in_scope_is_replaced_by_a_stand_in_that_allows_nothing() {
    let input = [
        object(
            "AuthorizationPolicy",
            "both",
            "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: a}]}",
        ),
        object(
            "AuthorizationPolicy",
            "provider",
            "{action: ALLOW, provider: {name: opa}, rules: [{}]}",
        ),
        object(
            "AuthorizationPolicy",
            "cross-ns",
            "{targetRefs: [{kind: Service, name: a, namespace: bar}]}",
        ),
        object(
            "PeerAuthentication",
            "ports-without-selector",
            "{portLevelMtls: {8080: {mode: PERMISSIVE}}}",
        ),
    ]
    .join("---\n");
    let conversion = run(&input);
    let severities: Vec<Severity> = conversion.findings.iter().map(|f| f.severity).collect();
    use Severity::{NotConverted, StandIn};
    let replaced = [NotConverted, StandIn];
    assert_eq!(
        severities,
        [replaced, replaced, replaced, [NotConverted; 2]].concat()
    );
    assert!(
        conversion
            .findings
            .iter()
            .filter(|f| !f.field.is_empty())
            .all(|f| f.reason.starts_with("veil refuses it: "))
    );
    // ALLOW policies: stand-ins that allow nothing in the whole namespace. "provider" had no selector;
    // the scopes of "both" and "cross-ns" are refused, so theirs are widened to the namespace.
    assert_eq!(conversion.objects.len(), 3);
    let allow_nothing = VeilSpec::AuthorizationPolicy(AuthorizationPolicySpec::default());
    assert!(conversion.objects.iter().all(|o| o.spec == allow_nothing));
    let widened = |i: usize| {
        conversion.findings[i]
            .reason
            .contains("widened to the whole namespace")
    };
    assert_eq!([widened(1), widened(3), widened(5)], [true, false, true]);
}

#[test]
fn rules_veil_refuses_are_dropped_from_allow_and_leave_deny_out() {
    let rules = "[{from: [{source: {principals: [\"\"]}}]}, {when: [{key: source.ip}]}, \
                 {from: [{source: {ipBlocks: [10.1.2.3/8]}}]}, {to: [{operation: {paths: [\"/a*b\"]}}]}]";
    let input = [
        object(
            "AuthorizationPolicy",
            "allow",
            &format!("{{rules: {rules}}}"),
        ),
        object(
            "AuthorizationPolicy",
            "deny",
            &format!("{{action: DENY, rules: {rules}}}"),
        ),
    ]
    .join("---\n");
    let conversion = run(&input);
    assert_eq!(conversion.objects.len(), 2);
    let VeilSpec::AuthorizationPolicy(spec) = &conversion.objects[0].spec else {
        panic!("an AuthorizationPolicy")
    };
    assert!(spec.rules.is_empty());
    assert_eq!(conversion.objects[1].spec, deny_all());
    let fields: Vec<(Severity, &str)> = conversion
        .findings
        .iter()
        .map(|f| (f.severity, f.field.as_str()))
        .collect();
    let per_rule = [
        "spec.rules[0].from[0].source.principals[0]",
        "spec.rules[1].when[0]",
        "spec.rules[2].from[0].source.ipBlocks[0]",
        "spec.rules[3].to[0].operation.paths",
    ];
    let mut expected: Vec<(Severity, &str)> =
        per_rule.iter().map(|f| (Severity::Dropped, *f)).collect();
    expected.push((Severity::Changed, "spec.rules"));
    expected.extend(per_rule.iter().map(|f| (Severity::NotConverted, *f)));
    expected.push((Severity::StandIn, ""));
    assert_eq!(fields, expected);
}

#[test]
fn identical_duplicates_are_kept_once_and_conflicting_ones_replaced_by_one_stand_in() {
    let allow = object("AuthorizationPolicy", "same", "{rules: [{}]}");
    let deny = object("AuthorizationPolicy", "same", "{action: DENY, rules: [{}]}");
    let twin = object("PeerAuthentication", "twin", "{mtls: {mode: STRICT}}");
    let input = [allow.clone(), twin.clone(), allow, twin, deny].join("---\n");
    let conversion = run(&input);
    let kept: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    // One stand-in for the three, in the place of the first: the strictest, denying everything.
    assert_eq!(kept, ["same", "twin"]);
    assert_eq!(conversion.objects[0].spec, deny_all());
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/same (document 1) | not_converted | ",
            "AuthorizationPolicy foo/same (document 1) | stand_in | ",
            "AuthorizationPolicy foo/same (document 3) | not_converted | ",
            "AuthorizationPolicy foo/same (document 3) | stand_in | ",
            "PeerAuthentication foo/twin (document 4) | dropped | ",
            "AuthorizationPolicy foo/same (document 5) | not_converted | ",
            "AuthorizationPolicy foo/same (document 5) | stand_in | ",
        ]
    );
    assert!(
        conversion.findings[0]
            .reason
            .contains("as do documents 3, 5, and they differ")
    );
    let stand_in = &conversion.findings[1].reason;
    assert!(
        stand_in.starts_with("documents 1, 3 and 5 are replaced by one"),
        "{stand_in}"
    );
}

#[test]
fn scope_wide_peer_authentications_istio_and_veil_would_choose_between_differently() {
    let pa = |name: &str, mode: &str, created: Option<&str>| {
        let created = created.map_or(String::new(), |t| format!(", creationTimestamp: \"{t}\""));
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: {name}, namespace: istio-system{created}}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    // veil would pick "a-permissive" (first by name); Istio picks the older "z-strict".
    let dated = [
        pa("a-permissive", "PERMISSIVE", Some("2025-02-01T00:00:00Z")),
        pa("z-strict", "STRICT", Some("2024-01-01T00:00:00Z")),
    ];
    let conversion = run(&dated.join("---\n"));
    let kept: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(kept, ["z-strict"]);
    let out = findings(&conversion);
    assert!(
        out.contains(
            &"PeerAuthentication istio-system/a-permissive (document 1) | not_converted | "
                .to_owned()
        ),
        "{out:#?}"
    );
    // Undated: neither.
    let undated = [pa("a", "PERMISSIVE", None), pa("b", "STRICT", None)];
    assert!(run(&undated.join("---\n")).objects.is_empty());
    // The same mode (DISABLE reads as PERMISSIVE): no conflict.
    let agreeing = [pa("a", "PERMISSIVE", None), pa("b", "DISABLE", None)];
    assert_eq!(run(&agreeing.join("---\n")).objects.len(), 2);
}

#[test]
fn a_policy_in_veils_root_namespace_is_not_converted_where_it_would_widen() {
    let input = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                 metadata: {name: default, namespace: veil-system}\nspec: {mtls: {mode: PERMISSIVE}}\n\
                 ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: t, namespace: veil-system}\n\
                 spec: {targetRefs: [{kind: Service, name: api}], rules: [{}]}\n";
    let conversion = run(input);
    let kept: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    // A targeted policy applies to its targets wherever it is.
    assert_eq!(kept, ["t"]);
    assert_eq!(
        findings(&conversion)[0],
        "PeerAuthentication veil-system/default (document 1) | not_converted | metadata.namespace"
    );
}

#[test]
fn metadata_about_the_istio_objects_life_is_dropped_with_a_finding() {
    let input = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
                 name: owned\n  namespace: foo\n  finalizers: [example.com/keep]\n  \
                 ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: x, uid: u}]\nspec: {}\n";
    let conversion = run(input);
    assert_eq!(conversion.objects.len(), 1);
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/owned (document 1) | dropped | metadata.finalizers",
            "AuthorizationPolicy foo/owned (document 1) | dropped | metadata.ownerReferences",
        ]
    );
}

#[test]
fn an_invalid_dry_run_value_is_enforced_by_a_stand_in() {
    let input = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: d, namespace: foo, annotations: {istio.io/dry-run: maybe}}\n\
                 spec: {rules: [{}]}\n---\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: e, namespace: foo, annotations: {istio.io/dry-run: \"false\"}}\n\
                 spec: {rules: [{}]}\n";
    let conversion = run(input);
    // Whether Istio enforced "d" is unknown: its stand-in allows nothing, as an enforced one would.
    let names: Vec<&str> = conversion
        .objects
        .iter()
        .map(|o| o.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["d", "e"]);
    let allow_nothing = VeilSpec::AuthorizationPolicy(AuthorizationPolicySpec::default());
    assert_eq!(conversion.objects[0].spec, allow_nothing);
    assert_eq!(
        findings(&conversion),
        [
            "AuthorizationPolicy foo/d (document 1) | not_converted | metadata.annotations[istio.io/dry-run]",
            "AuthorizationPolicy foo/d (document 1) | stand_in | ",
        ]
    );
}

#[test]
fn the_report_serializes_for_machines() {
    let input = object(
        "AuthorizationPolicy",
        "c",
        "{action: CUSTOM, provider: {name: opa}}",
    );
    let conversion = run(&input);
    let json = serde_json::to_value(&conversion.findings).unwrap();
    assert_eq!(
        json[0],
        serde_json::json!({
            "object": {"document": 1, "kind": "AuthorizationPolicy", "namespace": "foo", "name": "c"},
            "severity": "not_converted",
            "field": "spec.action",
            "reason": conversion.findings[0].reason,
        })
    );
    assert_eq!(json[1]["severity"], "stand_in");
    let yaml = serde_saphyr::to_string(&conversion).unwrap();
    assert!(yaml.contains("severity: not_converted"), "{yaml}");
    assert!(yaml.contains("severity: stand_in"), "{yaml}");
}
