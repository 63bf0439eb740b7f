//! End-to-end tests of the L4 mesh: the real CA and one real ztunnel per node, real applications
//! and clients (curl and a Rust client) in pods, all in Linux network namespaces. Need root; skip
//! with a loud message otherwise.

use std::time::Duration;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, bin, skip_unless_root};
use veil_e2e::wire::Capture;

mod same_node;

const SETTLE: Duration = Duration::from_secs(10);

fn mesh(pods: Vec<PodSpec>, policies: &str) -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods,
        policies: policies.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

fn url(mesh: &Mesh, pod: &str, port: u16, path: &str) -> String {
    format!("http://{}:{port}{path}", mesh.cluster.pod(pod).ip)
}

fn echo_addr(mesh: &Mesh, pod: &str) -> String {
    format!("{}:9090", mesh.cluster.pod(pod).ip)
}

#[test]
fn cross_node_traffic_is_only_tls_on_the_wire_and_identified_at_the_destination() {
    if skip_unless_root("cross_node_traffic") {
        return;
    }
    let m = mesh(
        vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        "",
    );
    let capture = Capture::start(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .unwrap();

    let (status, body) = m
        .curl(
            "client",
            &url(&m, "server", 8080, "/profiles/PLAINTEXT-MARKER-HTTP"),
        )
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "hello from server: GET /profiles/PLAINTEXT-MARKER-HTTP\n"
    );
    let reply = m
        .tcp(
            "client",
            &echo_addr(&m, "server"),
            "PLAINTEXT-MARKER-TCP",
            1,
        )
        .unwrap();
    assert_eq!(reply.trim(), "PLAINTEXT-MARKER-TCP");
    let wire = capture.finish().unwrap();

    // The applications saw the plaintext.
    let app = m.app_log("server");
    assert!(app.contains("GET /profiles/PLAINTEXT-MARKER-HTTP"), "{app}");
    assert!(
        app.contains("echo from") && app.contains("PLAINTEXT-MARKER-TCP"),
        "{app}"
    );
    // The destination ztunnel logged the verified source identity.
    let log = m.ztunnel_log("node-b");
    let client_id = m.pod("client").identity();
    assert!(
        log.lines().any(|l| l.contains("connection complete")
            && l.contains(&format!("\"source\":\"{client_id}\""))),
        "{log}"
    );
    // The wire carried HBONE (TLS on 15008) and nothing else, and none of the markers.
    assert!(wire.packets_on_port(15008) > 0, "{}", wire.summary);
    assert_eq!(wire.packets_on_port(8080), 0, "{}", wire.summary);
    assert_eq!(wire.packets_on_port(9090), 0, "{}", wire.summary);
    assert!(
        wire.contains(&[0x16, 0x03, 0x01]),
        "no TLS ClientHello record on the wire"
    );
    for marker in ["PLAINTEXT-MARKER", "profiles", "hello from", "GET /"] {
        assert!(
            !wire.contains(marker.as_bytes()),
            "{marker:?} crossed the wire in plaintext"
        );
    }
}

#[test]
fn l4_policy_denies_by_principal_namespace_and_port_and_allow_nothing_denies_all() {
    if skip_unless_root("l4_policy") {
        return;
    }
    let by_principal = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: only-account, namespace: user-data}
    spec:
      selector: {matchLabels: {app: profile}}
      rules: [{from: [{source: {principals: [cluster.local/ns/production/sa/account]}}]}]
"#;
    let mut m = mesh(
        vec![
            PodSpec::new("account", "production", "node-a"),
            PodSpec::new("reporting", "analytics", "node-a"),
            PodSpec::new("profile", "user-data", "node-b"),
        ],
        by_principal,
    );
    let profile = url(&m, "profile", 8080, "/");
    let ztunnel_pid_before = m.ztunnel_log("node-b").len();
    assert_eq!(m.curl("account", &profile).unwrap().0, 200);
    let denied = m.curl("reporting", &profile);
    assert!(denied.is_err(), "reporting reached profile: {denied:?}");
    let log = m.ztunnel_log("node-b");
    let deny_line = log
        .lines()
        .find(|l| l.contains("connection denied"))
        .unwrap_or_else(|| panic!("no deny logged:\n{log}"));
    assert!(deny_line.contains("user-data/only-account"), "{deny_line}");
    assert!(
        deny_line.contains("spiffe://cluster.local/ns/analytics/sa/reporting"),
        "{deny_line}"
    );
    let denies = |m: &Mesh| {
        m.metric(
            "node-b",
            "veil_policy_decisions_total",
            &[("decision", "deny")],
        )
    };
    assert_eq!(denies(&m), 1.0);
    assert!(
        !m.app_log("profile").contains("10.20.0.12"),
        "the denied request reached the app"
    );
    // A client that speaks first has its bytes sent right behind the CONNECT (early data): the
    // destination still decides before any of them reaches the application.
    let echo = echo_addr(&m, "profile");
    assert!(
        m.tcp("reporting", &echo, "EARLY-DATA-OF-A-DENIED-PEER", 1)
            .is_err()
    );
    assert_eq!(
        m.tcp("account", &echo, "EARLY-DATA-OF-AN-ALLOWED-PEER", 1)
            .unwrap()
            .trim(),
        "EARLY-DATA-OF-AN-ALLOWED-PEER"
    );
    let app = m.app_log("profile");
    assert!(app.contains("EARLY-DATA-OF-AN-ALLOWED-PEER"), "{app}");
    assert!(!app.contains("EARLY-DATA-OF-A-DENIED-PEER"), "{app}");

    // By namespace (a DENY), applied without restarting anything.
    m.set_policies(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-analytics, namespace: user-data}
    spec:
      action: DENY
      rules: [{from: [{source: {namespaces: [analytics]}}]}]
"#,
    )
    .unwrap();
    assert!(m.eventually(SETTLE, || {
        m.ztunnel_log("node-b")
            .contains("applied new mesh configuration")
    }));
    assert!(m.curl("reporting", &profile).is_err());
    assert_eq!(m.curl("account", &profile).unwrap().0, 200);

    // By port: only the echo port is allowed.
    m.set_policies(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: echo-only, namespace: user-data}
    spec:
      rules: [{to: [{operation: {ports: ["9090"]}}]}]
"#,
    )
    .unwrap();
    assert!(m.eventually(SETTLE, || m.curl("account", &profile).is_err()));
    assert_eq!(
        m.tcp("account", &echo_addr(&m, "profile"), "ping", 1)
            .unwrap()
            .trim(),
        "ping"
    );

    // `spec: {}` allows nothing.
    m.set_policies(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-nothing, namespace: user-data}
    spec: {}
"#,
    )
    .unwrap();
    assert!(m.eventually(SETTLE, || {
        m.tcp("account", &echo_addr(&m, "profile"), "x", 1).is_err()
    }));
    assert!(m.curl("account", &profile).is_err());
    assert!(m.curl("reporting", &profile).is_err());
    assert!(m.ztunnel_log("node-b").contains("user-data/allow-nothing"));
    assert!(denies(&m) >= 6.0);
    // One ztunnel process throughout: its log only grew.
    assert!(m.ztunnel_log("node-b").len() > ztunnel_pid_before);
    assert_eq!(
        m.ztunnel_log("node-b")
            .matches("veil-ztunnel running")
            .count(),
        1
    );
}

#[test]
fn strict_refuses_plaintext_from_an_unenrolled_pod_and_permissive_admits_it() {
    if skip_unless_root("strict_and_permissive") {
        return;
    }
    let mut m = mesh(
        vec![
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        "",
    );
    // The other way, an enrolled pod reaches the pod outside the mesh: plaintext passthrough.
    let rogue = url(&m, "rogue", 8080, "/");
    let passthrough = m.curl("server", &rogue);
    assert!(
        passthrough.as_ref().is_ok_and(|r| r.0 == 200),
        "passthrough to a pod outside the mesh failed: {passthrough:?}"
    );
    assert!(m.app_log("rogue").contains("http from"));

    let server = url(&m, "server", 8080, "/");
    let refused = m.curl("rogue", &server);
    assert!(
        refused.is_err(),
        "plaintext got through under STRICT: {refused:?}"
    );
    assert_eq!(
        m.metric(
            "node-b",
            "veil_plaintext_rejected_total",
            &[("workload", "user-data/server")]
        ),
        1.0
    );
    assert!(
        m.ztunnel_log("node-b")
            .contains("plaintext refused: mutual TLS is STRICT")
    );
    assert!(
        !m.app_log("server").contains("http from"),
        "the app saw the rogue request"
    );

    m.set_policies(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: permissive, namespace: user-data}
    spec: {mtls: {mode: PERMISSIVE}}
"#,
    )
    .unwrap();
    assert!(m.eventually(SETTLE, || {
        m.curl("rogue", &server).is_ok_and(|r| r.0 == 200)
    }));
    assert!(m.app_log("server").contains("http from"));

    // PERMISSIVE admits plaintext subject to policy: requiring an identity shuts it out again.
    m.set_policies(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: permissive, namespace: user-data}
    spec: {mtls: {mode: PERMISSIVE}}
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: mtls-only, namespace: user-data}
    spec:
      rules: [{from: [{source: {principals: ["*"]}}]}]
"#,
    )
    .unwrap();
    assert!(m.eventually(SETTLE, || m.curl("rogue", &server).is_err()));
}

#[test]
fn peers_with_a_foreign_root_or_the_wrong_identity_are_refused() {
    if skip_unless_root("foreign_root_and_wrong_identity") {
        return;
    }
    let impostor_identity = "spiffe://cluster.local/ns/payments/sa/impostor";
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into(), "node-c".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            PodSpec::new("server", "user-data", "node-b"),
            // The mesh believes this pod is `payments`; what answers on its 15008 is an impostor.
            PodSpec::new("payments", "payments", "node-c"),
        ],
        without_ztunnel: vec!["node-c".into()],
        extra_tokens: vec![("impostor-token-0123456789".into(), impostor_identity.into())],
        ..MeshSpec::default()
    })
    .unwrap();

    // A client certificate from another root: the destination ztunnel refuses the handshake.
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let server = m.cluster.pod("server").ip;
    let root = m.root_cert().to_string_lossy().into_owned();
    let out = m
        .run_in_pod(
            "rogue",
            &[
                &app,
                "hbone-foreign-root",
                &format!("{server}:15008"),
                &format!("{server}:8080"),
                "--identity",
                "spiffe://cluster.local/ns/production/sa/client",
                "--root",
                &root,
                "--expect",
                &m.pod("server").identity(),
            ],
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "a foreign-root client was accepted: {out:?}"
    );
    assert!(m.eventually(SETTLE, || m.metric(
        "node-b",
        "veil_tls_handshake_failures_total",
        &[("direction", "inbound")]
    ) >= 1.0));
    assert!(!m.app_log("server").contains("http from"));

    // A server proving the wrong identity (a genuine certificate, for someone else).
    let ca = m.ca_address();
    let impostor = m
        .spawn_in_pod(
            "payments",
            "impostor",
            &[
                &app,
                "hbone-serve",
                "--identity",
                impostor_identity,
                "--ca",
                &ca,
                "--root",
                &root,
                "--token",
                "impostor-token-0123456789",
            ],
        )
        .unwrap();
    impostor.wait_for("serving HBONE", SETTLE).unwrap();
    let refused = m.curl("client", &url(&m, "payments", 8080, "/"));
    assert!(
        refused.is_err(),
        "the client accepted an impostor: {refused:?}"
    );
    let log = m.ztunnel_log("node-a");
    assert!(
        log.contains("UnexpectedIdentity") && log.contains(impostor_identity),
        "{log}"
    );
    assert!(
        m.metric(
            "node-a",
            "veil_tls_handshake_failures_total",
            &[("direction", "outbound")]
        ) >= 1.0
    );
    assert!(!m.app_log("impostor").contains("got a tunnel request"));
}

#[test]
fn sequential_connections_share_one_pooled_tls_connection() {
    if skip_unless_root("pooling") {
        return;
    }
    let m = mesh(
        vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        "",
    );
    let replies = m
        .tcp("client", &echo_addr(&m, "server"), "again", 10)
        .unwrap();
    assert_eq!(replies.lines().filter(|l| *l == "again").count(), 10);
    let pair = [
        (
            "source_identity",
            "spiffe://cluster.local/ns/production/sa/client",
        ),
        (
            "destination_identity",
            "spiffe://cluster.local/ns/user-data/sa/server",
        ),
    ];
    assert_eq!(
        m.metric("node-a", "veil_hbone_connections_opened_total", &pair),
        1.0
    );
    // Istio's standard metrics, at both ends: named after the workloads, mutual TLS.
    let principals = [
        (
            "source_principal",
            "spiffe://cluster.local/ns/production/sa/client",
        ),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/user-data/sa/server",
        ),
        ("source_workload", "client"),
        ("source_workload_namespace", "production"),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "user-data"),
        ("connection_security_policy", "mutual_tls"),
        ("request_protocol", "tcp"),
    ];
    let at = |reporter| {
        let mut labels = principals.to_vec();
        labels.push(("reporter", reporter));
        labels
    };
    assert_eq!(
        m.metric(
            "node-a",
            "istio_tcp_connections_opened_total",
            &at("source")
        ),
        10.0
    );
    assert!(m.eventually(SETTLE, || m.metric(
        "node-a",
        "istio_tcp_connections_closed_total",
        &at("source")
    ) == 10.0));
    // "received" is the request side (client to server), "sent" the response side.
    assert_eq!(
        m.metric("node-a", "istio_tcp_received_bytes_total", &at("source")),
        50.0
    );
    assert_eq!(
        m.metric("node-a", "istio_tcp_sent_bytes_total", &at("source")),
        50.0
    );
    assert!(m.eventually(SETTLE, || m.metric(
        "node-b",
        "istio_tcp_received_bytes_total",
        &at("destination")
    ) == 50.0));
    assert_eq!(
        m.metric(
            "node-b",
            "istio_tcp_connections_opened_total",
            &at("destination")
        ),
        10.0
    );
}

#[test]
fn services_balance_over_endpoints_on_both_nodes() {
    if skip_unless_root("services") {
        return;
    }
    let mut a = PodSpec::new("profile-a", "user-data", "node-a");
    let mut b = PodSpec::new("profile-b", "user-data", "node-b");
    for p in [&mut a, &mut b] {
        p.labels.insert("app".into(), "profile".into());
        p.service_account = "profile".into();
    }
    let m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![PodSpec::new("client", "production", "node-a"), a, b],
        services: vec![ServiceSpec {
            name: "profile".into(),
            namespace: "user-data".into(),
            vip: "10.96.0.10".into(),
            selects: "profile".into(),
            ports: vec![(80, 8080)],
            udp_ports: Vec::new(),
        }],
        ..MeshSpec::default()
    })
    .unwrap();
    for _ in 0..4 {
        let (status, body) = m.curl("client", "http://10.96.0.10/").unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with("hello from profile-"), "{body}");
    }
    assert!(m.app_log("profile-a").contains("http from"));
    assert!(m.app_log("profile-b").contains("http from"));
}

#[test]
fn removing_a_pod_from_the_mesh_removes_its_capture() {
    if skip_unless_root("release") {
        return;
    }
    let mut m = mesh(
        vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        "",
    );
    let rules = |m: &Mesh| {
        let out = m
            .run_in_pod("client", &["iptables", "-t", "nat", "-S"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(rules(&m).contains("VEIL_OUTPUT"));
    assert_eq!(
        m.curl("client", &url(&m, "server", 8080, "/")).unwrap().0,
        200
    );
    m.set_enrolled("client", false).unwrap();
    assert!(
        m.eventually(SETTLE, || !rules(&m).contains("VEIL")),
        "{}",
        rules(&m)
    );
    // Now plaintext: the STRICT server refuses it.
    assert!(m.curl("client", &url(&m, "server", 8080, "/")).is_err());
    // Logged once both families' rules are gone: the nat rules checked above go first.
    assert!(m.eventually(SETTLE, || m.ztunnel_log("node-a").contains("released pod")));
}

#[test]
fn a_pod_that_cannot_be_captured_is_reported_not_silently_skipped() {
    if skip_unless_root("capture_failure") {
        return;
    }
    let m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into()],
        pods: vec![PodSpec::new("fine", "production", "node-a")],
        ghost_pods: vec![PodSpec::new("ghost", "production", "node-a")],
        ..MeshSpec::default()
    })
    .unwrap();
    assert!(m.eventually(SETTLE, || m.metric(
        "node-a",
        "veil_capture_failures_total",
        &[("workload", "production/ghost")]
    ) >= 1.0));
    let readiness = m.readiness("node-a");
    assert!(
        readiness.contains("not ready") && readiness.contains("production/ghost: capture failed"),
        "{readiness}"
    );
    assert!(m.ztunnel_log("node-a").contains("CAPTURE FAILED"));
}

/// `curl` from the network namespace `netns` (a node's: what the kubelet runs in), with `args`.
fn curl_in(netns: &str, args: &[&str], url: &str) -> Option<u16> {
    let mut argv = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-m",
        "5",
        "-w",
        "%{http_code}",
    ];
    argv.extend_from_slice(args);
    argv.push(url);
    let out = veil_e2e::cluster::exec(netns, &argv).ok()?;
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// Packets the node's probe guard dropped.
fn guard_drops(node: &str) -> u64 {
    let guard = veil_e2e::cluster::exec(
        node,
        &[
            "iptables",
            "-t",
            "raw",
            "-L",
            "VEIL_PROBE_GUARD",
            "-v",
            "-n",
            "-x",
        ],
    )
    .unwrap();
    String::from_utf8_lossy(&guard.stdout)
        .lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn kubelet_probes_from_the_node_pass_under_strict_and_nothing_else_gets_plaintext_in() {
    if skip_unless_root("kubelet_probes") {
        return;
    }
    // ztunnel runs in the node's namespace here, as the chart runs it with probes admitted.
    let m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("server", "user-data", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
        ],
        ztunnel_args: vec!["--kubelet-probes=true".into()],
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let node_a = m.cluster.node("node-a").netns.clone();
    let node_b = m.cluster.node("node-b").netns.clone();
    let server = url(&m, "server", 8080, "/healthz");
    assert!(
        m.eventually(SETTLE, || m
            .ztunnel_log("node-a")
            .contains("kubelet probe rules set on the node")),
        "{}",
        m.ztunnel_log("node-a")
    );

    // The kubelet's HTTP probe (plaintext from the node) reaches the application, from the probe
    // source; so does a TCP probe.
    assert_eq!(curl_in(&node_a, &[], &server), Some(200));
    assert!(
        m.app_log("server").contains("http from 169.254.7.127"),
        "{}",
        m.app_log("server")
    );
    let tcp = veil_e2e::cluster::exec(
        &node_a,
        &[
            "timeout",
            "5",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{}/9090", m.cluster.pod("server").ip),
        ],
    )
    .unwrap();
    assert!(tcp.status.success(), "TCP probe failed: {tcp:?}");
    // A gRPC probe (grpc.health.v1 over plaintext HTTP/2 on the application's port) too.
    let grpc = format!("grpc://{}:50051", m.cluster.pod("server").ip);
    let probe = |netns: &str| {
        let app = bin("e2e-app").to_string_lossy().into_owned();
        veil_e2e::cluster::exec(netns, &[&app, "probe", &grpc]).unwrap()
    };
    let passed = probe(&node_a);
    assert!(passed.status.success(), "gRPC probe failed: {passed:?}");
    // An exec probe runs in the pod: what it reaches over the pod's loopback is not captured.
    let exec_probe = veil_e2e::cluster::exec(
        &m.cluster.pod("server").netns,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:8080/healthz",
        ],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exec_probe.stdout),
        "200",
        "{exec_probe:?}"
    );

    // A pod outside the mesh on the same node gets nothing in plaintext, not even when it forges
    // the probe source (the node drops it on arrival). Nor does a gRPC probe from it.
    let refused = probe(&m.cluster.pod("rogue").netns);
    assert!(
        !refused.status.success(),
        "a pod outside the mesh passed a gRPC probe"
    );
    assert_eq!(m.curl("rogue", &server).ok().map(|r| r.0), None);
    let rogue = m.cluster.pod("rogue").netns.clone();
    veil_e2e::cluster::exec(
        &rogue,
        &["ip", "addr", "add", "169.254.7.127/32", "dev", "eth0"],
    )
    .unwrap();
    assert_eq!(
        curl_in(&rogue, &["--interface", "169.254.7.127"], &server),
        None,
        "a pod forging the probe source got in"
    );
    // Dropped by the node's guard (bridged between two pods of the node as it is), not merely
    // unanswered.
    assert!(guard_drops(&node_a) > 0, "the node's guard dropped nothing");
    // Another node is not this node: its plaintext is refused, forged probe source or not.
    assert_eq!(curl_in(&node_b, &[], &server), None);
    assert!(
        !probe(&node_b).status.success(),
        "another node passed a gRPC probe"
    );
    veil_e2e::cluster::exec(
        &node_b,
        &["ip", "addr", "add", "169.254.7.127/32", "dev", "lo"],
    )
    .unwrap();
    assert_eq!(
        curl_in(&node_b, &["--interface", "169.254.7.127"], &server),
        None,
        "another node forging the probe source got in"
    );
    assert_eq!(
        m.app_log("server").matches("http from").count(),
        2,
        "only the probes (the kubelet's and the exec probe) reached the application:\n{}",
        m.app_log("server")
    );
}
