use std::sync::Mutex;

use super::*;
use crate::policy::PeerMode;

const GOOD: &str = r#"
workloads:
  - name: account-0
    namespace: production
    serviceAccount: account-service
    node: node-a
    ips: [10.1.0.10]
    netns: /var/run/netns/account
    labels: {app: account-service}
  - name: profile-0
    namespace: user-data
    serviceAccount: user-profile-service
    node: node-b
    ips: [10.2.0.10, "fd00::10"]
    labels: {app: user-profile-service}
  - name: rogue
    namespace: default
    serviceAccount: default
    node: node-b
    ips: [10.2.0.99]
    enrolled: false
services:
  - name: user-profile-service
    namespace: user-data
    vips: [10.96.0.20]
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: user-profile-service}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: profile-access, namespace: user-data}
    spec:
      selector: {matchLabels: {app: user-profile-service}}
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: permissive, namespace: user-data}
    spec: {mtls: {mode: PERMISSIVE}}
"#;

fn settings() -> MeshSettings {
    MeshSettings::default()
}

#[test]
fn a_valid_file_becomes_an_indexed_state() {
    let state = parse(GOOD, &settings()).unwrap();
    let account = state.workload_by_ip("10.1.0.10".parse().unwrap()).unwrap();
    assert_eq!(
        account.identity.as_str(),
        "spiffe://cluster.local/ns/production/sa/account-service"
    );
    assert_eq!(
        account.netns.as_deref(),
        Some(Path::new("/var/run/netns/account"))
    );
    let profile = state.workload_by_ip("fd00::10".parse().unwrap()).unwrap();
    assert_eq!(&*profile.uid, "user-data/profile-0");
    assert!(
        !state
            .workload_by_ip("10.2.0.99".parse().unwrap())
            .unwrap()
            .enrolled
    );

    let service = state.service_by_vip("10.96.0.20".parse().unwrap()).unwrap();
    assert_eq!(service.target_port(80), Some(8080));
    assert_eq!(service.target_port(81), None);
    let endpoints = state.endpoints(service);
    assert_eq!(endpoints.len(), 1);
    assert_eq!(&*endpoints[0].uid, "user-data/profile-0");

    let policies = state.authz_for(profile);
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].id.to_string(), "user-data/profile-access");
    assert!(state.authz_for(account).is_empty());
    assert_eq!(state.peer_mode(profile, 8080), PeerMode::Permissive);
    assert_eq!(state.peer_mode(account, 8080), PeerMode::Strict);
    assert_eq!(state.workloads_on_node("node-b").len(), 2);
    assert_eq!(state.summary().authorization_policies, 1);
}

#[test]
fn empty_sections_mean_none() {
    let state = parse("workloads:\nservices:\npolicies:\n", &settings()).unwrap();
    assert_eq!(state.summary().workloads, 0);
    assert_eq!(parse("", &settings()).unwrap().summary().services, 0);
}

#[test]
fn invalid_files_are_refused_with_the_object_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "typo in a field",
            "workloads: [{name: a, namespace: n, serviceAcount: s, node: x, ips: [10.0.0.1]}]",
            "serviceAcount",
        ),
        ("not YAML", "workloads: [", ""),
        (
            "bad service account",
            "workloads: [{name: a, namespace: n, serviceAccount: 'a b', node: x, ips: [10.0.0.1]}]",
            "workloads[0] (n/a)",
        ),
        (
            "no address",
            "workloads: [{name: a, namespace: n, serviceAccount: s, node: x, ips: []}]",
            "workloads[0] (n/a)",
        ),
        (
            "bad address",
            "workloads: [{name: a, namespace: n, serviceAccount: s, node: x, ips: [10.0.0.300]}]",
            "",
        ),
        (
            "duplicate address",
            "workloads: [{name: a, namespace: n, serviceAccount: s, node: x, ips: [10.0.0.1]}, {name: b, namespace: n, serviceAccount: s, node: x, ips: [10.0.0.1]}]",
            "address 10.0.0.1 is also used by workload n/a",
        ),
        (
            "VIP on a workload address",
            "workloads: [{name: a, namespace: n, serviceAccount: s, node: x, ips: [10.0.0.1]}]\nservices: [{name: s, namespace: n, vips: [10.0.0.1], ports: [{port: 80}]}]",
            "service n/s",
        ),
        (
            "duplicate service port",
            "services: [{name: s, namespace: n, vips: [10.9.0.1], ports: [{port: 80}, {port: 80}]}]",
            "TCP port 80 listed twice",
        ),
        (
            "duplicate UDP service port",
            "services: [{name: s, namespace: n, vips: [10.9.0.1], ports: [{port: 53, protocol: UDP}, {port: 53}, {port: 53, protocol: UDP}]}]",
            "ports[2]: UDP port 53 listed twice",
        ),
        (
            "SCTP service port",
            "services: [{name: s, namespace: n, vips: [10.9.0.1], ports: [{port: 53, protocol: SCTP}]}]",
            "SCTP",
        ),
        (
            "wrong apiVersion",
            "policies: [{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: n}, spec: {}}]",
            "expected security.veil.dev/v1",
        ),
        (
            "unknown kind",
            "policies: [{apiVersion: security.veil.dev/v1, kind: Sidecar, metadata: {name: p, namespace: n}, spec: {}}]",
            "unknown kind",
        ),
        (
            "misspelt policy field",
            "policies: [{apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: n}, spec: {rule: []}}]",
            "policies[0] (AuthorizationPolicy n/p): spec",
        ),
        (
            "policy that cannot be enforced",
            "policies: [{apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: n}, spec: {rules: [{when: [{key: source.user, values: [x]}]}]}}]",
            "AuthorizationPolicy n/p: spec.rules[0].when[0].key",
        ),
        (
            "duplicate policy",
            "policies: [{apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: n}}, {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: p, namespace: n}}]",
            "defined twice",
        ),
    ];
    for (name, yaml, expected) in cases {
        let err = parse(yaml, &settings()).expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
}

#[test]
fn waypoints_bind_by_namespace_with_per_object_overrides() {
    let yaml = r#"
namespaces: [{name: user-data, useWaypoint: waypoint}]
waypoints: [{name: waypoint, namespace: user-data, serviceAccount: waypoint, ips: [10.2.0.50]}]
workloads:
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.10], labels: {app: profile}}
  - {name: batch, namespace: user-data, serviceAccount: batch, node: b, ips: [10.2.0.11], useWaypoint: none}
  - {name: account, namespace: production, serviceAccount: account, node: a, ips: [10.1.0.10]}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.20], ports: [{port: 80}], selector: {app: profile}}
"#;
    let state = parse(yaml, &settings()).unwrap();
    let wp = WaypointRef {
        namespace: "user-data".into(),
        name: "waypoint".into(),
    };
    let ip = |s: &str| s.parse().unwrap();
    assert_eq!(
        state.workload_by_ip(ip("10.2.0.10")).unwrap().waypoint,
        Some(wp.clone())
    );
    assert_eq!(
        state.workload_by_ip(ip("10.2.0.11")).unwrap().waypoint,
        None
    );
    assert_eq!(
        state.workload_by_ip(ip("10.1.0.10")).unwrap().waypoint,
        None
    );
    assert_eq!(
        state.service_by_vip(ip("10.96.0.20")).unwrap().waypoint,
        Some(wp.clone())
    );
    let waypoint = state.waypoint(&wp).unwrap();
    assert_eq!(
        waypoint.identity.as_str(),
        "spiffe://cluster.local/ns/user-data/sa/waypoint"
    );

    // L7 policies fail closed only where no waypoint can enforce them.
    let l7 = format!(
        "{yaml}policies:\n{}\n{}\n",
        "  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: l7-on-waypointed, namespace: user-data}, spec: {selector: {matchLabels: {app: profile}}, rules: [{to: [{operation: {methods: [GET]}}]}]}}",
        "  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: l7-on-plain, namespace: production}, spec: {rules: [{to: [{operation: {paths: [/x]}}]}]}}"
    );
    let state = parse(&l7, &settings()).unwrap();
    let ids: Vec<String> = state
        .l7_policies_enforced_at_l4()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, ["production/l7-on-plain"]);

    let unknown = "namespaces: [{name: user-data, useWaypoint: nope}]";
    let err = parse(unknown, &settings()).unwrap_err().to_string();
    assert!(err.contains("no waypoint user-data/nope"), "{err}");
    let clash = "waypoints: [{name: w, namespace: n, serviceAccount: w, ips: [10.0.0.1]}]\nworkloads: [{name: a, namespace: n, serviceAccount: s, node: x, ips: [10.0.0.1]}]";
    let err = parse(clash, &settings()).unwrap_err().to_string();
    assert!(err.contains("also waypoint n/w"), "{err}");
}

#[tokio::test]
async fn the_watcher_applies_good_changes_and_keeps_the_last_good_state_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let (source, initial) = FileSource::load(&path, settings()).unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(initial));
    let rejected = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = rejected.clone();
    let task = tokio::spawn(source.watch(Duration::from_millis(20), tx, move |e| {
        sink.lock().unwrap().push(e.to_string())
    }));

    // A good change: one policy fewer.
    let without_policies = GOOD.split("policies:").next().unwrap().to_owned();
    std::fs::write(&path, &without_policies).unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().summary().authorization_policies, 0);

    // A bad change: refused, reported, the last good state stays.
    std::fs::write(&path, format!("{without_policies}\nbogus: true\n")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while rejected.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(rejected.lock().unwrap()[0].contains("bogus"));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(rx.borrow().summary().workloads, 3);
    task.abort();
}

#[test]
fn the_documented_example_policies_are_accepted_as_written() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut policies = String::from("policies:\n");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let doc: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_owned();
        if kind == "AuthorizationPolicy" || kind == "PeerAuthentication" {
            policies.push_str(&format!("  - {doc}\n"));
            kinds.push(kind);
        }
    }
    assert!(kinds.iter().any(|k| k == "AuthorizationPolicy"));
    assert!(kinds.iter().any(|k| k == "PeerAuthentication"));
    let state = parse(&policies, &settings()).unwrap_or_else(|e| panic!("{e}\n{policies}"));
    assert_eq!(
        state.summary().authorization_policies + state.summary().peer_authentications,
        kinds.len()
    );
}
