use super::*;

const MESH: &str = r#"
namespaces:
  - {name: user-data, useWaypoint: waypoint}
waypoints:
  - {name: waypoint, namespace: user-data, serviceAccount: waypoint, ips: [10.21.0.50]}
workloads:
  - {name: account, namespace: production, serviceAccount: account, node: node-a, ips: [10.20.0.11]}
  - {name: reporting, namespace: production, serviceAccount: reporting, node: node-a, ips: [10.20.0.12]}
  - {name: rogue, namespace: default, serviceAccount: default, node: node-a, ips: [10.20.0.13], enrolled: false}
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: node-b, ips: [10.21.0.11], labels: {app: profile}}
  - {name: ledger-0, namespace: finance, serviceAccount: ledger, node: node-b, ips: [10.21.0.12], labels: {app: ledger}}
  - {name: ledger-1, namespace: finance, serviceAccount: ledger, node: node-c, ips: [10.22.0.12], labels: {app: ledger}}
  - {name: legacy-0, namespace: user-data, serviceAccount: legacy, node: node-b, ips: [10.21.0.13], labels: {app: legacy}, enrolled: false}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.20], ports: [{port: 80, targetPort: 8080}], selector: {app: profile}}
  - {name: ledger, namespace: finance, vips: [10.96.0.30], ports: [{port: 9090}, {port: 53, targetPort: 5353, protocol: UDP}], selector: {app: ledger}}
  - {name: legacy, namespace: user-data, vips: [10.96.0.40], ports: [{port: 80}], selector: {app: legacy}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: profile-reads, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: profile}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account]}}]
          to: [{operation: {methods: [GET], paths: [/api/*]}}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: ledger-from-account, namespace: finance}
    spec:
      selector: {matchLabels: {app: ledger}}
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/reporting]}}]
          to: [{operation: {ports: ["1"]}}]
        - from: [{source: {principals: [cluster.local/ns/production/sa/account]}}]
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: strict, namespace: finance}
    spec: {mtls: {mode: STRICT}}
"#;

fn state() -> MeshState {
    veil_mesh::discovery::local::parse(MESH, &Default::default()).unwrap()
}

fn ask(from: &str, to: To, port: u16, http: Option<(&str, &str)>) -> Answer {
    ask_over(Transport::Tcp, from, to, port, http)
}

fn ask_udp(from: &str, to: To, port: u16) -> Answer {
    ask_over(Transport::Udp, from, to, port, None)
}

fn ask_over(
    transport: Transport,
    from: &str,
    to: To,
    port: u16,
    http: Option<(&str, &str)>,
) -> Answer {
    let (namespace, name) = from.split_once('/').unwrap();
    let question = Question {
        from: From::Workload {
            namespace: namespace.into(),
            name: name.into(),
        },
        to,
        port,
        http: http.map(|(method, path)| Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }),
        normalization: Normalization::MergeSlashes,
        unknown: UnknownDestination::Passthrough,
        transport,
    };
    explain(&state(), &question).unwrap()
}

#[test]
fn a_udp_flow_goes_by_the_services_udp_ports_never_through_a_waypoint_or_out_of_the_mesh() {
    let reason = |a: &Answer| a.paths[0].hops.last().unwrap().reason.clone();
    // By the service's UDP port (53 → 5353) to each endpoint, admitted by L4 policy as TCP is.
    let a = ask_udp("production/account", service("finance", "ledger"), 53);
    assert!(a.allowed, "{a:#?}");
    assert_eq!(a.paths.len(), 2, "{a:#?}");
    assert!(a.paths.iter().all(|p| p.hops.len() == 1), "{a:#?}");
    let a = ask_udp("production/reporting", service("finance", "ledger"), 53);
    assert!(!a.allowed, "reporting is allowed port 1 only: {a:#?}");
    // A TCP port is no UDP port.
    let a = ask_udp("production/account", service("finance", "ledger"), 9090);
    assert!(!a.allowed);
    assert_eq!(reason(&a), "service finance/ledger has no UDP port 9090");
    // Behind a waypoint, or outside the mesh (whatever --unknown-destination says): refused.
    let a = ask_udp("production/account", service("user-data", "profile"), 80);
    assert!(!a.allowed);
    assert!(reason(&a).contains("carries no UDP"), "{a:#?}");
    let a = ask_udp(
        "production/account",
        To::Address("192.0.2.1".parse().unwrap()),
        53,
    );
    assert!(!a.allowed);
    assert!(reason(&a).contains("not in the mesh"), "{a:#?}");
    // From outside the mesh into an enrolled pod: dropped there, whatever PeerAuthentication says.
    let pod = To::Workload {
        namespace: "finance".into(),
        name: "ledger-0".into(),
    };
    let a = ask_udp("default/rogue", pod, 5353);
    assert!(!a.allowed);
    assert!(reason(&a).starts_with("plaintext UDP"), "{a:#?}");
    let legacy = To::Workload {
        namespace: "user-data".into(),
        name: "legacy-0".into(),
    };
    assert!(ask_udp("default/rogue", legacy, 5353).allowed);
    // To a service's UDP port from outside the mesh: its endpoints are enrolled, so dropped.
    let a = ask_udp("default/rogue", service("finance", "ledger"), 53);
    assert!(!a.allowed);
    assert_eq!(a.paths.len(), 2, "{a:#?}");
}

fn service(namespace: &str, name: &str) -> To {
    To::Service {
        namespace: namespace.into(),
        name: name.into(),
    }
}

#[test]
fn an_allowed_request_passes_the_waypoint_by_its_rule_then_the_destinations_ztunnel() {
    let a = ask(
        "production/account",
        service("user-data", "profile"),
        80,
        Some(("GET", "/api/v1/p/1")),
    );
    assert!(a.allowed, "{a:#?}");
    assert_eq!(a.source, "spiffe://cluster.local/ns/production/sa/account");
    assert_eq!(a.destination, "10.96.0.20:80");
    let [path] = &a.paths[..] else {
        panic!("{a:#?}")
    };
    assert_eq!(path.endpoint.as_deref(), Some("user-data/profile-0"));
    let [waypoint, ztunnel] = &path.hops[..] else {
        panic!("{a:#?}")
    };
    assert_eq!(waypoint.at, "waypoint user-data/waypoint");
    assert_eq!(waypoint.policy.as_deref(), Some("user-data/profile-reads"));
    assert_eq!(waypoint.rule, Some(0));
    assert_eq!(
        ztunnel.at,
        "ztunnel on node-b (inbound to user-data/profile-0)"
    );
    assert!(ztunnel.allowed);
}

#[test]
fn denied_requests_stop_at_the_waypoint_with_the_policy_that_decided() {
    for (who, method, path) in [
        ("production/account", "DELETE", "/api/v1/p/1"),
        ("production/reporting", "GET", "/api/v1/p/1"),
        // Canonicalized as the waypoint does: these are /admin, which no rule allows.
        ("production/account", "GET", "/api/../admin"),
        ("production/account", "GET", "/api/%2e%2e/admin"),
    ] {
        let a = ask(
            who,
            service("user-data", "profile"),
            80,
            Some((method, path)),
        );
        assert!(!a.allowed, "{who} {method} {path}: {a:#?}");
        let hops = &a.paths[0].hops;
        assert_eq!(hops.len(), 1, "{hops:#?}");
        assert_eq!(hops[0].policy.as_deref(), Some("user-data/profile-reads"));
        assert!(hops[0].reason.contains("no rule"), "{hops:#?}");
    }
    // A path the waypoint refuses to judge: 400, no policy.
    let a = ask(
        "production/account",
        service("user-data", "profile"),
        80,
        Some(("GET", "/api/%2F..%2Fadmin")),
    );
    assert!(!a.allowed);
    assert!(a.paths[0].hops[0].reason.starts_with("400"), "{a:#?}");
}

#[test]
fn a_tcp_connection_through_the_waypoint_cannot_meet_http_rules() {
    let a = ask(
        "production/account",
        service("user-data", "profile"),
        80,
        None,
    );
    assert!(!a.allowed, "{a:#?}");
    assert!(a.paths[0].hops[0].reason.contains("HTTP"), "{a:#?}");
}

#[test]
fn l4_policy_is_decided_at_the_destinations_ztunnel_for_every_endpoint() {
    let a = ask(
        "production/account",
        service("finance", "ledger"),
        9090,
        None,
    );
    assert!(a.allowed, "{a:#?}");
    // Both endpoints a service may send it to, each with its node's ztunnel.
    let endpoints: Vec<_> = a
        .paths
        .iter()
        .map(|p| p.endpoint.clone().unwrap())
        .collect();
    assert_eq!(endpoints, ["finance/ledger-0", "finance/ledger-1"]);
    for path in &a.paths {
        assert_eq!(
            path.hops[0].policy.as_deref(),
            Some("finance/ledger-from-account")
        );
        assert_eq!(path.hops[0].rule, Some(1));
    }
    let a = ask(
        "production/reporting",
        service("finance", "ledger"),
        9090,
        None,
    );
    assert!(!a.allowed);
    assert_eq!(a.paths.len(), 2);
}

#[test]
fn plaintext_from_outside_the_mesh_meets_strict_and_the_waypoint_rule() {
    let a = ask("default/rogue", service("finance", "ledger"), 9090, None);
    assert!(!a.allowed);
    assert_eq!(a.source, "plaintext");
    assert!(
        a.paths.iter().all(|p| p.hops[0].reason.contains("STRICT")),
        "{a:#?}"
    );
    let pod = To::Workload {
        namespace: "user-data".into(),
        name: "profile-0".into(),
    };
    let a = ask("default/rogue", pod.clone(), 8080, None);
    assert!(!a.allowed);
    assert!(
        a.paths[0].hops[0].reason.contains("only through waypoint"),
        "{a:#?}"
    );
    // From the mesh, the pod's own address goes through its waypoint too.
    let a = ask("production/account", pod, 8080, Some(("GET", "/api/x")));
    assert!(a.allowed, "{a:#?}");
    assert_eq!(a.paths[0].hops[0].at, "waypoint user-data/waypoint");
}

#[test]
fn destinations_outside_the_mesh_pass_through_and_unknown_names_are_errors() {
    let a = ask(
        "production/account",
        To::Address("192.0.2.1".parse().unwrap()),
        443,
        None,
    );
    assert!(a.allowed);
    assert!(a.paths[0].hops[0].reason.contains("plaintext"), "{a:#?}");
    let missing = Question {
        from: From::Workload {
            namespace: "production".into(),
            name: "nobody".into(),
        },
        to: service("finance", "ledger"),
        port: 9090,
        http: None,
        normalization: Normalization::MergeSlashes,
        unknown: UnknownDestination::Passthrough,
        transport: Transport::Tcp,
    };
    assert_eq!(
        explain(&state(), &missing).unwrap_err(),
        "no workload production/nobody in the mesh"
    );
}

#[test]
fn what_the_data_path_refuses_besides_policy_is_refused_too() {
    // A waypoint forwards only to mesh workloads.
    let a = ask(
        "production/account",
        service("user-data", "legacy"),
        80,
        None,
    );
    assert!(!a.allowed, "{a:#?}");
    let hops = &a.paths[0].hops;
    assert!(hops.last().unwrap().reason.starts_with("503"), "{hops:#?}");
    // Plaintext to one of ztunnel's own ports on a pod.
    let pod = To::Workload {
        namespace: "finance".into(),
        name: "ledger-0".into(),
    };
    let a = ask("default/rogue", pod, 15008, None);
    assert!(!a.allowed);
    assert!(
        a.paths[0].hops[0].reason.contains("ztunnel's own"),
        "{a:#?}"
    );
    // A ztunnel that refuses destinations outside the mesh.
    let question = Question {
        from: From::Workload {
            namespace: "production".into(),
            name: "account".into(),
        },
        to: To::Address("192.0.2.1".parse().unwrap()),
        port: 443,
        http: None,
        normalization: Normalization::MergeSlashes,
        unknown: UnknownDestination::Deny,
        transport: Transport::Tcp,
    };
    let a = explain(&state(), &question).unwrap();
    assert!(!a.allowed);
    assert!(
        a.paths[0].hops[0].reason.contains("not in the mesh"),
        "{a:#?}"
    );
}
