//! Table tests of the policy engine.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use veil_crd::authorization::AuthorizationPolicySpec;
use veil_crd::peer_authentication::PeerAuthenticationSpec;

use super::*;
use crate::identity::Identity;

const NS: &str = "user-data";

fn policy_in(ns: &str, name: &str, yaml: &str) -> Arc<AuthzPolicy> {
    let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).expect("policy YAML");
    Arc::new(compile_authz(ns, name, &spec).unwrap_or_else(|e| panic!("{e}")))
}

fn policy(yaml: &str) -> Arc<AuthzPolicy> {
    policy_in(NS, "p", yaml)
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// A connection from `source` (None: plaintext) at 10.1.0.5 to 10.2.0.7:8080.
fn conn(source: Option<&Identity>) -> Attributes<'_> {
    Attributes {
        source,
        source_ip: "10.1.0.5".parse().unwrap(),
        destination_ip: "10.2.0.7".parse().unwrap(),
        destination_port: 8080,
        http: None,
    }
}

fn request<'a>(
    source: Option<&'a Identity>,
    method: &'a str,
    path: &'a str,
    headers: &'a HeaderMap,
) -> Attributes<'a> {
    Attributes {
        http: Some(HttpAttributes {
            method,
            path,
            host: "user-profile-service.user-data.svc.cluster.local",
            headers,
        }),
        ..conn(source)
    }
}

#[test]
fn source_fields_and_matching_forms() {
    let account = id("production", "account-service");
    let admin = id("production", "admin-service");
    let reporting = id("analytics", "reporting");
    // (source YAML, who, expected match)
    let cases: &[(&str, Option<&Identity>, Truth)] = &[
        (
            "principals: [cluster.local/ns/production/sa/account-service]",
            Some(&account),
            Truth::Yes,
        ),
        (
            "principals: [cluster.local/ns/production/sa/account-service]",
            Some(&admin),
            Truth::No,
        ),
        (
            "principals: [cluster.local/ns/production/*]",
            Some(&admin),
            Truth::Yes,
        ),
        (
            "principals: [cluster.local/ns/production/*]",
            Some(&reporting),
            Truth::No,
        ),
        (
            "principals: ['*/sa/reporting']",
            Some(&reporting),
            Truth::Yes,
        ),
        ("principals: ['*']", Some(&reporting), Truth::Yes),
        ("principals: ['*']", None, Truth::No),
        (
            "notPrincipals: [cluster.local/ns/production/sa/admin-service]",
            Some(&admin),
            Truth::No,
        ),
        (
            "notPrincipals: [cluster.local/ns/production/sa/admin-service]",
            Some(&account),
            Truth::Yes,
        ),
        ("notPrincipals: ['*']", None, Truth::Yes),
        ("namespaces: [production]", Some(&account), Truth::Yes),
        ("namespaces: [prod*]", Some(&account), Truth::Yes),
        ("namespaces: ['*tics']", Some(&reporting), Truth::Yes),
        ("namespaces: [production]", Some(&reporting), Truth::No),
        ("namespaces: [production]", None, Truth::No),
        ("notNamespaces: [production]", Some(&reporting), Truth::Yes),
        ("notNamespaces: [production]", Some(&admin), Truth::No),
        (
            "serviceAccounts: [production/admin-service]",
            Some(&admin),
            Truth::Yes,
        ),
        (
            "serviceAccounts: [production/admin-service]",
            Some(&account),
            Truth::No,
        ),
        (
            "serviceAccounts: [production/admin-service]",
            None,
            Truth::No,
        ),
        (
            "notServiceAccounts: [production/admin-service]",
            Some(&account),
            Truth::Yes,
        ),
        (
            "notServiceAccounts: [production/admin-service]",
            Some(&admin),
            Truth::No,
        ),
        ("ipBlocks: [10.1.0.0/16]", None, Truth::Yes),
        ("ipBlocks: [10.1.0.5]", None, Truth::Yes),
        ("ipBlocks: [10.9.0.0/16, 10.1.0.0/24]", None, Truth::Yes),
        ("ipBlocks: [10.9.0.0/16]", None, Truth::No),
        ("notIpBlocks: [10.1.0.0/16]", None, Truth::No),
        ("notIpBlocks: [10.9.0.0/16]", None, Truth::Yes),
        // Fields AND, values OR.
        (
            "namespaces: [production], ipBlocks: [10.1.0.0/16]",
            Some(&admin),
            Truth::Yes,
        ),
        (
            "namespaces: [production], ipBlocks: [10.9.0.0/16]",
            Some(&admin),
            Truth::No,
        ),
        (
            "namespaces: [production], notPrincipals: [cluster.local/ns/production/sa/admin-service]",
            Some(&admin),
            Truth::No,
        ),
        ("", None, Truth::Yes),
    ];
    for (source, who, want) in cases {
        let p = policy(&format!("rules: [{{from: [{{source: {{{source}}}}}]}}]"));
        assert_eq!(p.matches(&conn(*who)), *want, "source {source} for {who:?}");
    }
}

#[test]
fn operation_fields_and_conditions() {
    let account = id("production", "account-service");
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "acme".parse().unwrap());
    headers.append("x-role", "viewer".parse().unwrap());
    headers.append("x-role", "admin".parse().unwrap());
    let get = request(Some(&account), "GET", "/api/v1/profiles/42", &headers);
    // (rule YAML, expected at L7 for GET /api/v1/profiles/42, expected at L4)
    let cases: &[(&str, Truth, Truth)] = &[
        (
            "to: [{operation: {ports: ['8080']}}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "to: [{operation: {ports: ['80', '443']}}]",
            Truth::No,
            Truth::No,
        ),
        (
            "to: [{operation: {notPorts: ['8080']}}]",
            Truth::No,
            Truth::No,
        ),
        (
            "to: [{operation: {methods: [GET]}}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {methods: [PUT]}}]",
            Truth::No,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {notMethods: [GET]}}]",
            Truth::No,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {paths: [/api/v1/profiles/*]}}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {paths: ['*/42']}}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {paths: [/api/v1/profiles]}}]",
            Truth::No,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {notPaths: [/admin*]}}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {hosts: ['USER-PROFILE-SERVICE.*']}}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "to: [{operation: {notHosts: ['*.cluster.local']}}]",
            Truth::No,
            Truth::Unknown,
        ),
        // An L4 clause that fails decides even at L4.
        (
            "to: [{operation: {ports: ['9999'], methods: [GET]}}]",
            Truth::No,
            Truth::No,
        ),
        // Operations OR.
        (
            "to: [{operation: {methods: [PUT]}}, {operation: {ports: ['8080']}}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "when: [{key: source.ip, values: [10.1.0.0/16]}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "when: [{key: source.ip, notValues: [10.1.0.0/16]}]",
            Truth::No,
            Truth::No,
        ),
        (
            "when: [{key: destination.ip, values: [10.2.0.7]}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "when: [{key: destination.port, values: ['8080']}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "when: [{key: destination.port, notValues: ['8080']}]",
            Truth::No,
            Truth::No,
        ),
        (
            "when: [{key: source.namespace, values: [prod*]}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "when: [{key: source.principal, values: ['*/sa/account-service']}]",
            Truth::Yes,
            Truth::Yes,
        ),
        (
            "when: [{key: 'request.headers[x-tenant]', values: [acme]}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "when: [{key: 'request.headers[x-tenant]', values: [other]}]",
            Truth::No,
            Truth::Unknown,
        ),
        (
            "when: [{key: 'request.headers[x-missing]', values: ['*']}]",
            Truth::No,
            Truth::Unknown,
        ),
        (
            "when: [{key: 'request.headers[x-missing]', notValues: ['*']}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        // A repeated header: one line matching `values` suffices; one line matching `notValues`
        // is enough to fail.
        (
            "when: [{key: 'request.headers[x-role]', values: [admin]}]",
            Truth::Yes,
            Truth::Unknown,
        ),
        (
            "when: [{key: 'request.headers[x-role]', notValues: [admin]}]",
            Truth::No,
            Truth::Unknown,
        ),
        // Conditions AND.
        (
            "when: [{key: source.ip, values: [10.1.0.0/16]}, {key: destination.port, values: ['80']}]",
            Truth::No,
            Truth::No,
        ),
        ("{}", Truth::Yes, Truth::Yes),
    ];
    for (rule, at_l7, at_l4) in cases {
        let p = policy(&format!("rules: [{rule}]"));
        assert_eq!(p.matches(&get), *at_l7, "{rule} at L7");
        assert_eq!(p.matches(&conn(Some(&account))), *at_l4, "{rule} at L4");
    }
}

#[test]
fn rules_or_and_an_empty_policy_matches_nothing() {
    let account = id("production", "account-service");
    let p = policy(
        "rules: [{from: [{source: {namespaces: [nope]}}]}, {to: [{operation: {ports: ['8080']}}]}]",
    );
    assert_eq!(p.matches(&conn(Some(&account))), Truth::Yes);
    assert_eq!(policy("{}").matches(&conn(Some(&account))), Truth::No);
    assert_eq!(
        policy("action: DENY").matches(&conn(Some(&account))),
        Truth::No
    );
}

fn decide(policies: &[Arc<AuthzPolicy>], attrs: &Attributes<'_>) -> Decision {
    evaluate(policies, attrs)
}

#[test]
fn evaluation_order() {
    let account = id("production", "account-service");
    let reporting = id("analytics", "reporting");
    let allow_prod = policy_in(
        NS,
        "allow-prod",
        "rules: [{from: [{source: {namespaces: [production]}}]}]",
    );
    let deny_account = policy_in(
        NS,
        "deny-account",
        "action: DENY\nrules: [{from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]}]",
    );
    let audit_all = policy_in(NS, "audit-all", "action: AUDIT\nrules: [{}]");

    // No policy: allowed.
    assert_eq!(
        decide(&[], &conn(Some(&account))).verdict,
        Verdict::Allow(None)
    );
    // Only an AUDIT policy: allowed, and audited.
    let d = decide(std::slice::from_ref(&audit_all), &conn(Some(&account)));
    assert_eq!(d.verdict, Verdict::Allow(None));
    assert_eq!(d.audit, Some(PolicyId::new(NS, "audit-all")));
    // An ALLOW that matches.
    let d = decide(std::slice::from_ref(&allow_prod), &conn(Some(&account)));
    assert_eq!(
        d.verdict,
        Verdict::Allow(Some(PolicyId::new(NS, "allow-prod")))
    );
    // An ALLOW that does not match: denied, naming it.
    let d = decide(std::slice::from_ref(&allow_prod), &conn(Some(&reporting)));
    assert_eq!(
        d.verdict,
        Verdict::Deny(DenyReason::NoAllowMatched(PolicyId::new(NS, "allow-prod")))
    );
    // DENY beats ALLOW.
    let d = decide(
        &[allow_prod.clone(), deny_account.clone()],
        &conn(Some(&account)),
    );
    assert_eq!(
        d.verdict,
        Verdict::Deny(DenyReason::DenyPolicy(PolicyId::new(NS, "deny-account")))
    );
    // A DENY that does not match leaves the decision to ALLOW policies (none here: allowed).
    let d = decide(std::slice::from_ref(&deny_account), &conn(Some(&reporting)));
    assert_eq!(d.verdict, Verdict::Allow(None));
    // `spec: {}` allows nothing.
    let nothing = policy_in(NS, "allow-nothing", "{}");
    let d = decide(&[nothing], &conn(Some(&account)));
    assert!(!d.allowed());
    assert_eq!(d.policy(), Some(&PolicyId::new(NS, "allow-nothing")));
}

#[test]
fn l7_policies_fail_closed_where_only_l4_is_visible() {
    let account = id("production", "account-service");
    let allow_get = policy_in(
        NS,
        "allow-get",
        "rules: [{from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}], to: [{operation: {methods: [GET]}}]}]",
    );
    let deny_admin_path = policy_in(
        NS,
        "deny-admin",
        "action: DENY\nrules: [{to: [{operation: {paths: [/admin*]}}]}]",
    );
    // ALLOW with L7: cannot be confirmed at L4, so denied.
    let d = decide(std::slice::from_ref(&allow_get), &conn(Some(&account)));
    assert_eq!(
        d.verdict,
        Verdict::Deny(DenyReason::AllowUndecidable(PolicyId::new(NS, "allow-get")))
    );
    // DENY with only L7 attributes: Istio's ztunnel drops such a rule and allows; veil denies.
    let d = decide(
        std::slice::from_ref(&deny_admin_path),
        &conn(Some(&account)),
    );
    assert_eq!(
        d.verdict,
        Verdict::Deny(DenyReason::DenyPolicyUndecidable(PolicyId::new(
            NS,
            "deny-admin"
        )))
    );
    // With HTTP attributes (a waypoint), both decide normally.
    let headers = HeaderMap::new();
    let get = request(Some(&account), "GET", "/api/v1/profiles/1", &headers);
    assert!(decide(&[allow_get.clone(), deny_admin_path.clone()], &get).allowed());
    let admin = request(Some(&account), "GET", "/admin/users", &headers);
    assert!(!decide(&[allow_get, deny_admin_path], &admin).allowed());
    assert!(policy("rules: [{to: [{operation: {methods: [GET]}}]}]").uses_l7);
    assert!(!policy("rules: [{to: [{operation: {ports: ['80']}}]}]").uses_l7);
}

#[test]
fn validation_names_the_policy_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "rules: [{from: [{source: {namespaces: [prod, '']}}]}]",
            "spec.rules[0].from[0].source.namespaces[1]",
            "empty pattern",
        ),
        (
            "rules: [{when: [{key: source.principal, notValues: ['']}]}]",
            "spec.rules[0].when[0].notValues[0]",
            "empty pattern",
        ),
        (
            "rules: [{when: [{key: source.user, values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "unknown condition key",
        ),
        (
            "rules: [{when: [{key: remote.ip, values: [10.0.0.1]}]}]",
            "spec.rules[0].when[0].key",
            "unknown condition key",
        ),
        (
            "rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "JWT",
        ),
        (
            "rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0]",
            "needs values",
        ),
        (
            "rules: [{when: [{key: 'request.headers[bad header]', values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "not a header name",
        ),
        (
            "rules: [{when: [{key: source.ip, values: [10.0.0.0/33]}]}]",
            "spec.rules[0].when[0].values[0]",
            "not an IP",
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 300.1.1.1]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[1]",
            "not an IP",
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [10.1.2.3/8]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "host bits",
        ),
        (
            "rules: [{from: [{source: {serviceAccounts: [a/b], principals: [x]}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts",
            "cannot be combined",
        ),
        (
            "rules: [{from: [{source: {notServiceAccounts: [a/b], namespaces: [x]}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts",
            "cannot be combined",
        ),
        (
            "rules: [{from: [{source: {serviceAccounts: [justname]}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "<namespace>/<service-account>",
        ),
        (
            "rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]",
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "without wildcards",
        ),
        (
            "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
            "spec.rules[0].from[0].source.requestPrincipals",
            "JWT",
        ),
        (
            "rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}]",
            "spec.rules[0].from[0].source.remoteIpBlocks",
            "not supported",
        ),
        (
            "rules: [{from: [{source: {principals: ['a*b']}}]}]",
            "spec.rules[0].from[0].source.principals",
            "only allowed at the start or the end",
        ),
        (
            "rules: [{to: [{operation: {ports: [http]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port",
        ),
        (
            "rules: [{to: [{operation: {notPorts: ['0']}}]}]",
            "spec.rules[0].to[0].operation.notPorts[0]",
            "not a port",
        ),
        (
            "action: CUSTOM\nprovider: {name: ext}",
            "spec.action",
            "CUSTOM",
        ),
        (
            "selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Service, name: s}]",
            "spec.selector",
            "mutually exclusive",
        ),
        (
            "targetRefs: [{kind: Pod, name: s}]",
            "spec.targetRefs[0]",
            "unsupported target",
        ),
        (
            "targetRefs: [{kind: Service, name: s, namespace: other}]",
            "spec.targetRefs[0]",
            "own namespace",
        ),
    ];
    for (yaml, field, reason) in cases {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).expect(yaml);
        let err = compile_authz(NS, "bad", &spec).expect_err(yaml);
        assert_eq!(err.policy, PolicyId::new(NS, "bad"), "{yaml}");
        assert_eq!(err.field, *field, "{yaml}: {err}");
        assert!(err.reason.contains(reason), "{yaml}: {err}");
        assert!(
            err.to_string()
                .starts_with("AuthorizationPolicy user-data/bad: "),
            "{err}"
        );
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

#[test]
fn the_index_applies_policies_by_namespace_selector_and_root_namespace() {
    let policies = vec![
        policy_in("user-data", "ns-wide", "{}"),
        policy_in(
            "user-data",
            "for-profile",
            "selector: {matchLabels: {app: profile}}",
        ),
        policy_in(
            "user-data",
            "for-profile-v2",
            "selector: {matchLabels: {app: profile, version: v2}}",
        ),
        policy_in("production", "other-ns", "{}"),
        policy_in("veil-system", "mesh-wide", "action: DENY"),
        policy_in(
            "veil-system",
            "mesh-selector",
            "selector: {matchLabels: {tier: db}}",
        ),
        policy_in(
            "user-data",
            "to-service",
            "targetRefs: [{kind: Service, name: profile}]",
        ),
    ];
    let index = PolicyIndex::new("veil-system", policies);
    let names = |ps: Vec<Arc<AuthzPolicy>>| -> Vec<String> {
        ps.iter().map(|p| p.id.to_string()).collect()
    };
    assert_eq!(
        names(index.for_workload(
            "user-data",
            &labels(&[("app", "profile"), ("version", "v1")])
        )),
        [
            "user-data/for-profile",
            "user-data/ns-wide",
            "veil-system/mesh-wide"
        ]
    );
    assert_eq!(
        names(index.for_workload(
            "user-data",
            &labels(&[("app", "profile"), ("version", "v2")])
        )),
        [
            "user-data/for-profile",
            "user-data/for-profile-v2",
            "user-data/ns-wide",
            "veil-system/mesh-wide"
        ]
    );
    assert_eq!(
        names(index.for_workload("analytics", &labels(&[("tier", "db")]))),
        ["veil-system/mesh-selector", "veil-system/mesh-wide"]
    );
    assert_eq!(
        names(index.for_target("user-data", &Target::Service("profile".into()))),
        ["user-data/to-service"]
    );
    assert_eq!(index.all().len(), 7);
}

#[test]
fn peer_authentication_resolution() {
    let pa = |ns: &str, name: &str, yaml: &str| {
        let spec: PeerAuthenticationSpec = serde_saphyr::from_str(yaml).unwrap();
        compile_peer_auth(ns, name, &spec).unwrap()
    };
    let root = "veil-system";
    let web = labels(&[("app", "web")]);
    let mode = |ps: &[PeerAuthPolicy], port| resolve_peer_mode(ps, root, "shop", &web, port);
    assert_eq!(mode(&[], 80), PeerMode::Strict, "STRICT by default");
    let mesh_permissive = pa(root, "mesh", "mtls: {mode: PERMISSIVE}");
    assert_eq!(
        mode(std::slice::from_ref(&mesh_permissive), 80),
        PeerMode::Permissive
    );
    let ns_strict = pa("shop", "ns", "mtls: {mode: STRICT}");
    assert_eq!(
        mode(&[mesh_permissive.clone(), ns_strict.clone()], 80),
        PeerMode::Strict
    );
    let web_port = pa(
        "shop",
        "web",
        "selector: {matchLabels: {app: web}}\nmtls: {mode: UNSET}\nportLevelMtls: {8080: {mode: PERMISSIVE}}",
    );
    let all = [mesh_permissive, ns_strict, web_port];
    assert_eq!(mode(&all, 8080), PeerMode::Permissive, "port-level wins");
    assert_eq!(
        mode(&all, 80),
        PeerMode::Strict,
        "UNSET defers to the namespace"
    );
    let other = resolve_peer_mode(&all, root, "shop", &labels(&[("app", "db")]), 8080);
    assert_eq!(
        other,
        PeerMode::Strict,
        "selector does not pick other workloads"
    );

    let spec: PeerAuthenticationSpec =
        serde_saphyr::from_str("portLevelMtls: {80: {mode: STRICT}}").unwrap();
    let err = compile_peer_auth("shop", "bad", &spec).unwrap_err();
    assert_eq!(err.field, "spec.portLevelMtls");
}

#[test]
fn plaintext_sources_have_no_identity_to_match() {
    let ip: IpAddr = "10.1.0.5".parse().unwrap();
    let p = policy("rules: [{from: [{source: {ipBlocks: [10.1.0.0/16], notPrincipals: ['*']}}]}]");
    let mut attrs = conn(None);
    attrs.source_ip = ip;
    assert_eq!(p.matches(&attrs), Truth::Yes, "plaintext from the block");
    let with_id = id("a", "b");
    assert_eq!(p.matches(&conn(Some(&with_id))), Truth::No);
}
