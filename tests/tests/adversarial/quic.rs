//! HBONE over QUIC (`--hbone-quic`, issue 15): tunnels between enrolled pods cross the wire as
//! QUIC on UDP 15008 only (no TCP 15008, no plaintext), L4 policy judges them as over HTTP/2, UDP
//! flows (a UDP echo, a DNS query to dnsmasq) ride them too as HTTP/3 datagrams; a peer whose UDP 15008 is blocked is reached over HTTP/2 within the head
//! start, and then dialled on HTTP/2 alone. Real clients and servers (curl, Python sockets), the
//! wire read by tcpdump.

use std::time::Duration;

use tokio::time::Instant;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};
use veil_e2e::wire::{Capture, Captured};

use super::apply;
use super::capture::{
    TCP_SERVER, UDP_SERVER, assert_mesh_still_serves, ip, output, serve, tcp, udp,
};
use super::udp::{dig, resolver};

/// A client in `production` (node-a) and a server in `user-data` (node-b), both nodes speaking
/// QUIC and carrying UDP.
/// With `second`, another client beside the first (its own pooled connections), and QUIC dials
/// allowed 5 s.
fn mesh(policies: &str, second: bool) -> Mesh {
    let mut pods = vec![
        PodSpec::new("client", "production", "node-a"),
        PodSpec::new("server", "user-data", "node-b"),
    ];
    let mut ztunnel_args = vec!["--hbone-quic".to_owned(), "--carry-udp".to_owned()];
    if second {
        pods.push(PodSpec::new("client2", "production", "node-a"));
        // A QUIC dial may take long: only the head start bounds the wait for HTTP/2.
        ztunnel_args.push("--hbone-quic-connect-timeout=5s".to_owned());
    }
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods,
        policies: policies.into(),
        ztunnel_args,
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

/// Every IP packet between the nodes.
fn capture(m: &Mesh) -> Capture {
    Capture::start_ip(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .expect("tcpdump")
}

/// Packets of `protocol` (`UDP` or `TCP`, as tcpdump prints them) to or from port 15008.
fn hbone_packets(wire: &Captured, protocol: &str) -> usize {
    wire.summary
        .lines()
        .filter(|l| l.contains(".15008:") || l.contains(".15008 >"))
        .filter(|l| match protocol {
            "UDP" => l.contains("UDP"),
            _ => l.contains("Flags ["),
        })
        .count()
}

/// The transports of the HBONE connections node-a's ztunnel opened, in order.
fn transports(m: &Mesh) -> Vec<String> {
    m.ztunnel_log("node-a")
        .lines()
        .filter(|l| l.contains("opened HBONE connection"))
        .filter_map(|l| l.split(r#""transport":""#).nth(1))
        .filter_map(|t| t.split('"').next())
        .map(str::to_owned)
        .collect()
}

const ALLOW_SOME_PORTS: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: some-ports, namespace: user-data}
    spec:
      rules: [{to: [{operation: {ports: ["8080", "5353", "5300"]}}]}]
"#;

#[test]
fn tcp_and_udp_between_enrolled_pods_cross_the_wire_as_quic_only_and_policy_still_judges() {
    if skip_unless_root("quic_hbone") {
        return;
    }
    let mut m = mesh(ALLOW_SOME_PORTS, false);
    serve(&mut m, "server", "tcp", TCP_SERVER, &["0.0.0.0", "5353"]);
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    serve(&mut m, "server", "denied", TCP_SERVER, &["0.0.0.0", "5354"]);
    serve(
        &mut m,
        "server",
        "udp-denied",
        UDP_SERVER,
        &["0.0.0.0", "5354"],
    );
    let server = ip(&m, "server");
    // A resolver in the mesh: a DNS query over QUIC (HTTP/3 datagrams).
    resolver(&mut m, "server", "5300", "10.9.8.7");
    let wire = capture(&m);
    let url = format!("http://{server}:8080/over-quic");
    assert_eq!(m.curl("client", &url).map(|r| r.0), Ok(200));
    assert_eq!(
        tcp(&m, "client", &server, 5353, "QUIC-TCP-MARKER"),
        "REPLY QUIC-TCP-MARKER"
    );
    assert_eq!(
        udp(&m, "client", &server, 5353, "QUIC-UDP-MARKER"),
        "REPLY QUIC-UDP-MARKER"
    );
    // Denied by the L4 policy at the destination, as over HTTP/2: nothing reaches the server.
    let denied = tcp(&m, "client", &server, 5354, "QUIC-DENIED-MARKER");
    let answer = dig(&m, &server, "5300");
    let udp_denied = udp(&m, "client", &server, 5354, "QUIC-UDP-DENIED-MARKER");
    // An application sending its own UDP to the QUIC port: ztunnel's port, never a path out.
    let to_port = udp(&m, "client", &server, 15008, "QUIC-PORT-MARKER");
    let wire = wire.finish().expect("capture");
    assert!(!denied.starts_with("REPLY"), "{denied}");
    assert!(!to_port.starts_with("REPLY"), "{to_port}");
    assert_eq!(answer, "10.9.8.7", "the in-mesh resolver answers over QUIC");
    assert!(!udp_denied.starts_with("REPLY"), "{udp_denied}");
    assert!(!output(&m, "udp-denied").contains("RECEIVED"));
    assert!(!output(&m, "denied").contains("ACCEPTED"));
    assert!(output(&m, "udp").contains("RECEIVED QUIC-UDP-MARKER"));
    assert!(
        hbone_packets(&wire, "UDP") > 0,
        "no QUIC on the wire:\n{}",
        wire.summary
    );
    assert_eq!(
        hbone_packets(&wire, "TCP"),
        0,
        "HBONE over TCP on the wire:\n{}",
        wire.summary
    );
    for port in [8080, 5353, 5354, 5300] {
        assert_eq!(wire.packets_on_port(port), 0, "{}", wire.summary);
    }
    for marker in [
        &b"over-quic"[..],
        b"QUIC-TCP-MARKER",
        b"QUIC-UDP-MARKER",
        b"QUIC-DENIED-MARKER",
        b"QUIC-PORT-MARKER",
        b"QUIC-UDP-DENIED-MARKER",
        b"\x04veil\x04test",
    ] {
        assert!(!wire.contains(marker), "plaintext crossed the wire");
    }
    let opened = transports(&m);
    assert!(
        !opened.is_empty() && opened.iter().all(|t| t == "h3"),
        "{opened:?}"
    );
    assert!(
        m.ztunnel_log("node-b").contains("denied"),
        "the deny was not logged at the destination"
    );
    // A policy change applies to what QUIC carries as to anything else.
    apply(&mut m, "");
    assert_eq!(
        tcp(&m, "client", &server, 5354, "QUIC-ALLOWED-NOW"),
        "REPLY QUIC-ALLOWED-NOW"
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn a_peer_whose_quic_is_blocked_is_reached_over_http2_within_the_head_start_and_remembered() {
    if skip_unless_root("quic_fallback") {
        return;
    }
    let mut m = mesh("", true);
    serve(&mut m, "server", "tcp", TCP_SERVER, &["0.0.0.0", "5353"]);
    // UDP 15008 dropped at the server's pod: its QUIC never answers (no ICMP either).
    let blocked = m
        .run_in_pod(
            "server",
            &[
                "iptables", "-I", "INPUT", "1", "-p", "udp", "--dport", "15008", "-j", "DROP",
            ],
        )
        .expect("iptables");
    assert!(blocked.status.success(), "{blocked:?}");
    let server = ip(&m, "server");
    let wire = capture(&m);
    let started = Instant::now();
    assert_eq!(
        tcp(&m, "client", &server, 5353, "FALLBACK-MARKER"),
        "REPLY FALLBACK-MARKER"
    );
    let took = started.elapsed();
    let wire = wire.finish().expect("capture");
    // The head start (250 ms) and an HTTP/2 handshake, not the QUIC dial's 5 s.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(hbone_packets(&wire, "TCP") > 0, "{}", wire.summary);
    assert!(!wire.contains(b"FALLBACK-MARKER"));
    assert_eq!(transports(&m), ["h2"]);
    assert!(
        m.ztunnel_log("node-a")
            .contains("no HBONE over QUIC to this peer")
    );
    // Another pod's first tunnel to the same peer (a connection of its own, not the pooled one)
    // goes straight to HTTP/2: no new QUIC attempt, no head start.
    let wire = capture(&m);
    assert_eq!(
        m.curl("client2", &format!("http://{server}:8080/again"))
            .map(|r| r.0),
        Ok(200)
    );
    let wire = wire.finish().expect("capture");
    assert_eq!(
        hbone_packets(&wire, "UDP"),
        0,
        "QUIC tried again at once:\n{}",
        wire.summary
    );
    assert_eq!(transports(&m), ["h2", "h2"]);
    assert_mesh_still_serves(&mut m);
}

#[test]
fn a_stopping_ztunnel_ends_its_quic_connections_at_once_not_at_the_peers_idle_timeout() {
    if skip_unless_root("quic_close_on_stop") {
        return;
    }
    // A drain period that ends the wait for a successor soon.
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        ztunnel_args: vec!["--hbone-quic".into(), "--drain-period=2s".into()],
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let url = format!("http://{}:8080/", ip(&m, "server"));
    assert_eq!(m.curl("client", &url).map(|(code, _)| code), Ok(200));
    assert_eq!(transports(&m), ["h3"]);
    let open = |m: &Mesh| {
        m.metric(
            "node-b",
            "veil_resource_in_use",
            &[("resource", "hbone_connections")],
        )
    };
    assert_eq!(open(&m), 1.0, "the client's pooled QUIC connection");
    // node-a's ztunnel stops as the kubelet stops it (SIGTERM; no connection is open into its pod,
    // so it exits once the drain period's wait for a successor is over). Its client connection is
    // kept alive till then.
    let mut stopped = m.ztunnels.remove("node-a").expect("node-a's ztunnel");
    stopped.terminate();
    assert!(
        stopped.wait_exit(Duration::from_secs(10)),
        "{}",
        stopped.output()
    );
    // Its QUIC connection is closed, not abandoned: node-b lets go of it at once, not after QUIC's
    // idle timeout (the 15 s keep-alive interval and the 10 s ping timeout).
    assert!(
        m.eventually(Duration::from_secs(3), || open(&m) == 0.0),
        "node-b still holds {} HBONE connections",
        open(&m)
    );
}

#[test]
fn a_flood_of_quic_handshakes_with_a_foreign_certificate_is_refused_and_spares_the_neighbours() {
    if skip_unless_root("quic_handshake_flood") {
        return;
    }
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("rogue", "outside", "node-a").not_enrolled(),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        ztunnel_args: vec!["--hbone-quic".into()],
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    // From a pod outside the mesh, straight at the server pod's UDP 15008: 32 QUIC dials at once
    // for 5 s, each presenting a client certificate from a root of its own.
    let server = ip(&m, "server");
    let argv: Vec<String> = [
        veil_e2e::mesh::bin("e2e-app")
            .to_string_lossy()
            .into_owned(),
        "quic-foreign-flood".into(),
        format!("{server}:15008"),
        format!("{server}:8080"),
        "--identity".into(),
        m.pod("client").identity(),
        "--root".into(),
        m.root_cert().to_string_lossy().into_owned(),
        "--expect".into(),
        m.pod("server").identity(),
        "--seconds".into(),
        "5".into(),
    ]
    .into();
    let rogue = m.cluster.pod("rogue").netns.clone();
    let flood = std::thread::spawn(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        veil_e2e::cluster::exec(&rogue, &argv).expect("the flood")
    });
    // Meanwhile the client's first tunnel to the server (a handshake of its own) and the ones after.
    std::thread::sleep(Duration::from_secs(1));
    let url = format!("http://{server}:8080/during-the-flood");
    let answered = (0..20)
        .filter(|_| {
            std::thread::sleep(Duration::from_millis(100));
            m.curl("client", &url).is_ok_and(|(code, _)| code == 200)
        })
        .count();
    let out = flood.join().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(answered, 20, "the client's requests during the flood");
    // Not one foreign handshake got through, and the flood was one.
    let attempts: u64 = report
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(report.trim_end().ends_with("ACCEPTED 0"), "{report}");
    assert!(attempts >= 100, "{report}");
    let failed = m.metric(
        "node-b",
        "veil_tls_handshake_failures_total",
        &[("direction", "inbound")],
    );
    assert!(
        failed >= attempts as f64 / 2.0,
        "{failed} handshake failures counted for {attempts} attempts"
    );
    // Nothing of the flood is held afterwards: no handshake, only the client's own connection.
    let in_use =
        |resource: &str| m.metric("node-b", "veil_resource_in_use", &[("resource", resource)]);
    assert!(
        m.eventually(Duration::from_secs(5), || in_use("tls_handshakes") == 0.0
            && in_use("hbone_connections") <= 1.0),
        "held after the flood: {} handshakes, {} connections",
        in_use("tls_handshakes"),
        in_use("hbone_connections")
    );
    m.wait_ready("node-b", Duration::from_secs(5))
        .expect("node-b's ztunnel ready after the flood");
}
