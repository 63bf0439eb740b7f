//! IPv6 workload addresses (a dual-stack cluster): TCP and carried UDP between enrolled pods by
//! their IPv6 addresses go over HBONE and never cross the wire in clear; L4 policy judges them as
//! it judges IPv4; plaintext IPv6 from outside the mesh does not reach an enrolled pod. With HBONE
//! over QUIC on, the same tunnels cross as QUIC to the IPv6 address's UDP 15008.

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};
use veil_e2e::wire::Capture;

use super::apply;
use super::capture::{TCP_SERVER, UDP_SERVER, assert_mesh_still_serves, output, serve, tcp, udp};

/// A client in `production` (node-a), a server in `user-data` (node-b), an outsider (node-a, not
/// enrolled), each with an IPv4 and an IPv6 address; ztunnels carry UDP, and with `quic` speak
/// HBONE over QUIC.
fn mesh(quic: bool) -> Mesh {
    let mut ztunnel_args = vec!["--carry-udp".to_owned()];
    if quic {
        ztunnel_args.push("--hbone-quic".to_owned());
    }
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("server", "user-data", "node-b"),
            PodSpec::new("outsider", "legacy", "node-a").not_enrolled(),
        ],
        ztunnel_args,
        dual_stack: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

/// The IPv6 address of `pod`.
fn ip6(m: &Mesh, pod: &str) -> String {
    m.cluster
        .pod(pod)
        .ip6
        .expect("a dual-stack cluster")
        .to_string()
}

/// Denies TCP 9090 and UDP 5353 on the server to everyone.
const DENY_9090_AND_5353: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-v6-ports, namespace: user-data}
    spec:
      action: DENY
      rules: [{to: [{operation: {ports: ["9090", "5353"]}}]}]
"#;

#[test]
fn tcp_and_udp_over_ipv6_between_enrolled_pods_are_carried_judged_and_never_in_clear() {
    if skip_unless_root("ipv6_workloads") {
        return;
    }
    carried_judged_never_in_clear(false);
}

#[test]
fn tcp_and_udp_over_ipv6_ride_hbone_over_quic_and_are_judged_there() {
    if skip_unless_root("ipv6_workloads_quic") {
        return;
    }
    carried_judged_never_in_clear(true);
}

/// TCP and UDP from the client to the server's IPv6 address: carried (over QUIC with `quic`, and
/// then nothing but QUIC to the server's port 15008), never in clear, refused to an outsider,
/// denied by an L4 policy.
fn carried_judged_never_in_clear(quic: bool) {
    let mut m = mesh(quic);
    let tag = if quic { "V6-QUIC" } else { "V6" };
    let marker = |what: &str| format!("{tag}-{what}");
    serve(&mut m, "server", "tcp6", TCP_SERVER, &["::", "9090"]);
    serve(&mut m, "server", "udp6", UDP_SERVER, &["::", "5353"]);
    let server = ip6(&m, "server");
    let wire = Capture::start_ip(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .expect("tcpdump");
    let tcp_reply = tcp(&m, "client", &server, 9090, &marker("TCP-MARKER"));
    let udp_reply = udp(&m, "client", &server, 5353, &marker("UDP-MARKER"));
    let wire = wire.finish().expect("capture");
    assert_eq!(tcp_reply, format!("REPLY {}", marker("TCP-MARKER")));
    assert_eq!(udp_reply, format!("REPLY {}", marker("UDP-MARKER")));
    for what in ["TCP-MARKER", "UDP-MARKER"] {
        assert!(
            !wire.contains(marker(what).as_bytes()),
            "a payload crossed the wire in clear"
        );
    }
    assert_eq!(wire.packets_on_port(9090), 0, "{}", wire.summary);
    assert_eq!(wire.packets_on_port(5353), 0, "{}", wire.summary);
    let to_server: Vec<&str> = wire
        .summary
        .lines()
        .filter(|l| l.contains(&format!("{server}.15008")))
        .collect();
    assert!(
        !to_server.is_empty(),
        "no HBONE to the server's IPv6 address: {}",
        wire.summary
    );
    if quic {
        // Everything to the server's IPv6 HBONE port is QUIC: UDP, no TCP segment (tcpdump
        // prints TCP's flags), and every connection opened is HTTP/3.
        assert!(
            to_server
                .iter()
                .all(|l| l.contains("UDP") && !l.contains("Flags [")),
            "{}",
            wire.summary
        );
        let log = m.ztunnel_log("node-a");
        let opened: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("opened HBONE connection"))
            .collect();
        assert!(
            !opened.is_empty() && opened.iter().all(|l| l.contains(r#""transport":"h3""#)),
            "{log}"
        );
    }

    // Outside the mesh: plaintext IPv6 into an enrolled pod does not arrive.
    let outsider = tcp(&m, "outsider", &server, 9090, &marker("OUTSIDER-MARKER"));
    assert!(outsider.starts_with("ERROR"), "{outsider}");
    assert!(!output(&m, "tcp6").contains(&format!("ACCEPTED {}", ip6(&m, "outsider"))));

    // L4 policy judges IPv6 as IPv4, and tunnels over QUIC as over HTTP/2: denied, both
    // protocols.
    apply(&mut m, DENY_9090_AND_5353);
    let denied_tcp = tcp(&m, "client", &server, 9090, &marker("TCP-DENIED"));
    let denied_udp = udp(&m, "client", &server, 5353, &marker("UDP-DENIED"));
    assert!(!denied_tcp.starts_with("REPLY"), "{denied_tcp}");
    assert!(!denied_udp.starts_with("REPLY"), "{denied_udp}");
    assert!(!output(&m, "tcp6").contains(&marker("TCP-DENIED")));
    assert!(!output(&m, "udp6").contains(&marker("UDP-DENIED")));
    apply(&mut m, "");
    assert_mesh_still_serves(&mut m);
}
