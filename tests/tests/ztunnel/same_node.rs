//! The same-node path: two pods of one node joined by their ztunnel without HBONE.

use veil_e2e::cluster::exec;
use veil_e2e::mesh::{Mesh, PodSpec, bin, skip_unless_root};
use veil_e2e::wire::Capture;

use crate::{SETTLE, echo_addr, mesh, url};

/// Two pods of one node are joined by their ztunnel without HBONE (the same-node path): nothing of
/// theirs crosses the node's pod bridge, in clear or encrypted, while identity, policy, STRICT and
/// the re-check of live connections hold as they do over HBONE.
#[test]
fn same_node_connections_never_reach_the_wire_and_keep_identity_policy_and_strict() {
    if skip_unless_root("same_node_path") {
        return;
    }
    let only_account = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: only-account, namespace: user-data}
    spec:
      selector: {matchLabels: {app: profile}}
      rules: [{from: [{source: {principals: [cluster.local/ns/production/sa/account, cluster.local/ns/production/sa/remote]}}]}]
"#;
    let mut m = mesh(
        vec![
            PodSpec::new("account", "production", "node-a"),
            PodSpec::new("reporting", "analytics", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            PodSpec::new("profile", "user-data", "node-a"),
            PodSpec::new("remote", "production", "node-b"),
        ],
        only_account,
    );
    // The bridge every pod of node-a hangs on: pod-to-pod traffic of the node crosses it.
    let node_a = m.cluster.node("node-a").netns.clone();
    let capture = Capture::start(
        &node_a,
        "cbr0",
        &m.dir.join("cbr0.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .unwrap();
    let (status, body) = m
        .curl("account", &url(&m, "profile", 8080, "/LOCAL-MARKER-HTTP"))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "hello from profile: GET /LOCAL-MARKER-HTTP\n");
    let echo = echo_addr(&m, "profile");
    // Three connections, each echoed.
    let echoed = m.tcp("account", &echo, "LOCAL-MARKER-TCP", 3).unwrap();
    assert_eq!(
        echoed.lines().filter(|l| *l == "LOCAL-MARKER-TCP").count(),
        3,
        "{echoed}"
    );
    // Bulk both ways (1 MiB up, echoed back): spliced through pipes by node-a's ztunnel, which then
    // keeps them for the next burst; every byte arrives in order.
    let pipes_before = pipes_held(&m, "node-a");
    let app_bin = bin("e2e-app").to_string_lossy().into_owned();
    let bulk = exec(
        &m.cluster.pod("account").netns,
        &[&app_bin, "tcp", &echo, "LOCAL-BULK-", "--repeat", "95325"],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bulk.stdout).trim(),
        "echoed 1048575 bytes intact",
        "{}",
        String::from_utf8_lossy(&bulk.stderr)
    );
    assert!(
        pipes_held(&m, "node-a") > pipes_before,
        "the bulk was not spliced (no pipe kept)"
    );
    // Denied by the destination's policy, as over HBONE: its bytes never reach the application.
    let denied = m.curl(
        "reporting",
        &url(&m, "profile", 8080, "/DENIED-MARKER-HTTP"),
    );
    assert!(denied.is_err(), "reporting reached profile: {denied:?}");
    assert!(m.tcp("reporting", &echo, "DENIED-MARKER-TCP", 1).is_err());
    // The control: a pod of another node reaches profile over HBONE, across this same bridge.
    assert_eq!(
        m.curl("remote", &url(&m, "profile", 8080, "/REMOTE-MARKER-HTTP"))
            .unwrap()
            .0,
        200
    );
    let wire = capture.finish().unwrap();

    let app = m.app_log("profile");
    for seen in [
        "LOCAL-MARKER-HTTP",
        "LOCAL-MARKER-TCP",
        "REMOTE-MARKER-HTTP",
    ] {
        assert!(app.contains(seen), "{seen} missing:\n{app}");
    }
    for unseen in ["DENIED-MARKER-HTTP", "DENIED-MARKER-TCP"] {
        assert!(!app.contains(unseen), "{unseen} reached the app:\n{app}");
    }
    // The capture saw the remote pod's tunnel, TLS on 15008, and nothing else: not one packet of
    // the node's own pods' connections (over HBONE they would cross it), no byte of any marker.
    assert!(wire.packets_on_port(15008) > 0, "{}", wire.summary);
    let ip = |pod: &str| m.cluster.pod(pod).ip;
    assert!(wire.packets_from(ip("remote")) > 0, "{}", wire.summary);
    for pod in ["account", "reporting"] {
        assert_eq!(wire.packets_from(ip(pod)), 0, "{pod}:\n{}", wire.summary);
    }
    // profile answers the remote pod's tunnel, and nothing else.
    assert_eq!(
        wire.packets_from(ip("profile")),
        wire.packets_between(ip("profile"), ip("remote")),
        "{}",
        wire.summary
    );
    assert_eq!(wire.packets_on_port(8080), 0, "{}", wire.summary);
    assert_eq!(wire.packets_on_port(9090), 0, "{}", wire.summary);
    for marker in ["MARKER", "LOCAL-BULK", "hello from", "GET /"] {
        assert!(
            !wire.contains(marker.as_bytes()),
            "{marker:?} crossed the bridge"
        );
    }
    // Identities as the source's certificate names them: in the access log, the deny and metrics
    // from both ends. No HBONE connection was opened from a pod of this node.
    let log = m.ztunnel_log("node-a");
    let account = m.pod("account").identity();
    assert!(
        log.lines().any(|l| l.contains("connection complete")
            && l.contains("\"path\":\"local\"")
            && l.contains(&format!("\"source\":\"{account}\""))),
        "{log}"
    );
    let deny_line = log
        .lines()
        .find(|l| l.contains("connection denied"))
        .unwrap_or_else(|| panic!("no deny logged:\n{log}"));
    assert!(deny_line.contains("user-data/only-account"), "{deny_line}");
    assert!(
        deny_line.contains(&m.pod("reporting").identity()),
        "{deny_line}"
    );
    assert!(
        !log.contains("opened HBONE connection"),
        "a same-node connection went over HBONE:\n{log}"
    );
    for reporter in ["source", "destination"] {
        let opened = m.metric(
            "node-a",
            "istio_tcp_connections_opened_total",
            &[
                ("source_principal", &account),
                ("reporter", reporter),
                ("connection_security_policy", "mutual_tls"),
            ],
        );
        // One HTTP request, three echoes, the bulk echo.
        assert_eq!(opened, 5.0, "reported by the {reporter}");
    }
    assert_eq!(
        m.metric(
            "node-a",
            "veil_policy_decisions_total",
            &[("decision", "deny")]
        ),
        2.0
    );

    // STRICT: a pod of the same node outside the mesh gets nothing in plaintext.
    let refused = m.curl("rogue", &url(&m, "profile", 8080, "/ROGUE-MARKER"));
    assert!(refused.is_err(), "plaintext got through: {refused:?}");
    assert!(!m.app_log("profile").contains("ROGUE-MARKER"));

    // A live connection the policy stops allowing is cut, as a tunnel is.
    let addr = format!("{}:7070", m.cluster.pod("profile").ip);
    let app = bin("e2e-app").to_string_lossy().into_owned();
    m.spawn_in_pod("account", "stream", &[&app, "stream", &addr])
        .unwrap()
        .wait_for("echoed 5", SETTLE)
        .expect("the stream never flowed");
    m.set_policies(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-production, namespace: user-data}
    spec:
      action: DENY
      rules: [{from: [{source: {namespaces: [production]}}]}]
"#,
    )
    .unwrap();
    assert!(
        m.eventually(SETTLE, || m.app_log("stream").contains("closed after")),
        "the denied stream kept flowing:\n{}",
        m.app_log("stream")
    );
    assert!(
        m.ztunnel_log("node-a")
            .contains("live connection closed: the mesh's policy now denies it")
    );
    assert!(m.curl("account", &url(&m, "profile", 8080, "/")).is_err());
}

/// Pipes `node`'s ztunnel holds open (the relays' pipes, kept for reuse, and any others).
fn pipes_held(m: &Mesh, node: &str) -> usize {
    let pid = m.ztunnels[node].pid();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}
