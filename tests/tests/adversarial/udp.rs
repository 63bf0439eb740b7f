//! Carried UDP (`--carry-udp`, issue 15): UDP between enrolled pods goes over HBONE as CONNECT-UDP
//! flows, checked against L4 policy at the destination, and never crosses the wire in clear; UDP
//! anywhere else is still refused; a pod spraying flows is held to its budget. Real clients and
//! servers: Python sockets, dnsmasq answering dig.

use std::time::Duration;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, skip_unless_root};
use veil_e2e::wire::Capture;

use super::apply;
use super::capture::{
    UDP_SERVER, assert_mesh_still_serves, ip, link_local, output, python, serve, udp,
};

/// The address of the Service in front of the server.
const SERVICE_VIP: &str = "10.96.0.77";

/// A client in `production` (node-a), a server in `user-data` (node-b), an outsider (node-a, not
/// enrolled); ztunnels carry UDP, with `args` besides.
fn mesh(args: &[&str], policies: &str) -> Mesh {
    Mesh::start(spec(args, policies)).expect("starting the mesh")
}

fn spec(args: &[&str], policies: &str) -> MeshSpec {
    let mut ztunnel_args = vec!["--carry-udp".to_owned()];
    ztunnel_args.extend(args.iter().map(|a| (*a).to_owned()));
    MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("server", "user-data", "node-b"),
            PodSpec::new("outsider", "legacy", "node-a").not_enrolled(),
        ],
        // The server behind a Service too: TCP 5353, and UDP 1053 to its resolver on 5300 (not
        // 53: port 53 is allowed out in clear by default, to any address).
        services: vec![
            ServiceSpec::new("user-data", "server", SERVICE_VIP, &[(5353, 5353)])
                .with_udp(&[(1053, 5300)]),
        ],
        policies: policies.into(),
        ztunnel_args,
        ..MeshSpec::default()
    }
}

/// Every IP packet between the nodes (UDP included).
fn capture(m: &Mesh) -> Capture {
    Capture::start_ip(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .expect("tcpdump")
}

/// Carried flows' bytes counted by `node`, as `reporter`.
fn udp_bytes(m: &Mesh, node: &str, reporter: &str) -> f64 {
    m.metric(
        node,
        "istio_tcp_received_bytes_total",
        &[("request_protocol", "udp"), ("reporter", reporter)],
    )
}

#[test]
fn udp_between_enrolled_pods_is_carried_over_hbone_and_never_crosses_in_clear() {
    if skip_unless_root("udp_carried") {
        return;
    }
    let mut m = mesh(&[], "");
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    serve(
        &mut m,
        "outsider",
        "outside",
        UDP_SERVER,
        &["0.0.0.0", "5353"],
    );
    let wire = capture(&m);
    let sent = udp(&m, "client", &ip(&m, "server"), 5353, "UDP-MESH-MARKER");
    // Outside the mesh (and not allowed out in clear): still refused, whatever TCP would do.
    let outside = udp(&m, "client", &ip(&m, "outsider"), 5353, "UDP-OUT-MARKER");
    // A Service's port that is TCP only: refused, not mapped as if it were UDP.
    let service = udp(&m, "client", SERVICE_VIP, 5353, "UDP-SVC-MARKER");
    let wire = wire.finish().expect("capture");
    assert!(!service.starts_with("REPLY"), "{service}");
    assert!(!output(&m, "udp").contains("UDP-SVC-MARKER"));
    assert!(
        m.ztunnel_log("node-a")
            .contains("service user-data/server has no UDP port 5353")
    );
    assert_eq!(sent, "REPLY UDP-MESH-MARKER");
    assert!(output(&m, "udp").contains("RECEIVED UDP-MESH-MARKER"));
    assert!(!outside.starts_with("REPLY"), "{outside}");
    assert!(!output(&m, "outside").contains("RECEIVED"));
    assert_eq!(wire.packets_on_port(5353), 0, "{}", wire.summary);
    assert!(wire.packets_on_port(15008) > 0, "{}", wire.summary);
    for marker in [
        &b"UDP-MESH-MARKER"[..],
        b"UDP-OUT-MARKER",
        b"UDP-SVC-MARKER",
    ] {
        assert!(!wire.contains(marker), "a UDP payload crossed the wire");
    }
    // Both ends count the flow as UDP, with its bytes.
    assert!(
        m.eventually(Duration::from_secs(5), || udp_bytes(&m, "node-a", "source")
            >= 15.0)
    );
    assert!(udp_bytes(&m, "node-b", "destination") >= 15.0);
    assert!(
        m.ztunnel_log("node-a")
            .contains("outbound UDP flow refused"),
        "the refusal to the outsider was not audited"
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn a_dns_query_to_an_in_mesh_resolver_and_its_service_is_carried_and_cluster_dns_passes_in_clear() {
    if skip_unless_root("udp_dns_carried") {
        return;
    }
    // From the Kubernetes API (real Service JSON, `protocol: UDP`) through the controller's
    // translation and xDS.
    let mut m = Mesh::start(MeshSpec {
        kubernetes: true,
        ..spec(&[], "")
    })
    .expect("starting the mesh");
    // An in-mesh resolver on 5300 (carried) and the "cluster DNS" outside the mesh on 53 (allowed
    // out in clear by default).
    for (pod, port, answer) in [
        ("server", "5300", "10.9.8.7"),
        ("outsider", "53", "10.9.8.53"),
    ] {
        resolver(&mut m, pod, port, answer);
    }
    let wire = capture(&m);
    let in_mesh = dig(&m, &ip(&m, "server"), "5300");
    // Through the resolver's Service: its UDP port 1053 leads to the resolver's 5300.
    let by_service = dig(&m, SERVICE_VIP, "1053");
    let wire = wire.finish().expect("capture");
    assert_eq!(in_mesh, "10.9.8.7");
    assert_eq!(by_service, "10.9.8.7");
    assert_eq!(wire.packets_on_port(5300), 0, "{}", wire.summary);
    assert_eq!(wire.packets_on_port(1053), 0, "{}", wire.summary);
    assert!(
        !wire.contains(b"\x04veil\x04test"),
        "the query crossed the wire in clear"
    );
    assert_eq!(dig(&m, &ip(&m, "outsider"), "53"), "10.9.8.53");
    assert_mesh_still_serves(&mut m);
}

#[test]
fn dns_on_53_to_an_in_mesh_resolver_is_carried_where_the_cluster_dns_is_allowed_by_address() {
    if skip_unless_root("udp_dns_53_by_address") {
        return;
    }
    // Port 53 allowed out in clear (the default) lets a query to an in-mesh resolver on 53 leave
    // in clear, where the resolver's pod drops it. The documented configuration instead: no port
    // allowed, the cluster DNS (here the outsider) allowed by its address.
    let mut m = mesh(&[], "");
    let outsider = ip(&m, "outsider");
    let cidr = format!("--udp-allowed-cidrs={outsider}/32");
    m.spec
        .ztunnel_args
        .extend(["--udp-allowed-ports".to_owned(), cidr]);
    m.start_ztunnel("node-a")
        .expect("node-a's ztunnel with the cluster DNS allowed by address");
    resolver(&mut m, "server", "53", "10.9.8.9");
    resolver(&mut m, "outsider", "53", "10.9.8.53");
    let wire = capture(&m);
    let in_mesh = dig(&m, &ip(&m, "server"), "53");
    let wire = wire.finish().expect("capture");
    assert_eq!(in_mesh, "10.9.8.9", "the in-mesh resolver on 53 answers");
    assert_eq!(wire.packets_on_port(53), 0, "{}", wire.summary);
    assert!(
        !wire.contains(b"\x04veil\x04test"),
        "the query crossed the wire in clear"
    );
    // The cluster DNS, allowed by address, answers in clear; another address on 53 is refused.
    assert_eq!(dig(&m, &outsider, "53"), "10.9.8.53");
    let elsewhere = dig(&m, SERVICE_VIP, "53");
    assert!(!elsewhere.contains("10.9.8"), "{elsewhere}");
    let refused = format!(r#""destination":"{SERVICE_VIP}:53""#);
    assert!(
        m.ztunnel_log("node-a").contains(&refused),
        "53 elsewhere was not refused (and audited) by ztunnel"
    );
    assert_mesh_still_serves(&mut m);
}

/// Only port 8080 (the mesh's HTTP check) and 5354 reach the server.
const ALLOW_8080_AND_5354: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: some-ports, namespace: user-data}
    spec:
      rules: [{to: [{operation: {ports: ["8080", "5354"]}}]}]
"#;

#[test]
fn an_l4_policy_denies_a_udp_flow_by_port_and_a_new_policy_cuts_a_live_one() {
    if skip_unless_root("udp_policy") {
        return;
    }
    let mut m = mesh(&[], ALLOW_8080_AND_5354);
    serve(&mut m, "server", "denied", UDP_SERVER, &["0.0.0.0", "5353"]);
    serve(
        &mut m,
        "server",
        "allowed",
        UDP_SERVER,
        &["0.0.0.0", "5354"],
    );
    let denied = udp(&m, "client", &ip(&m, "server"), 5353, "DENIED-FLOW");
    assert!(!denied.starts_with("REPLY"), "{denied}");
    assert!(!output(&m, "denied").contains("RECEIVED"));
    assert!(
        m.ztunnel_log("node-b").contains("connection_denied"),
        "the denied flow was not audited"
    );
    let allowed = udp(&m, "client", &ip(&m, "server"), 5354, "ALLOWED-FLOW");
    assert_eq!(allowed, "REPLY ALLOWED-FLOW");
    // A live flow is re-checked: once 5354 is no longer allowed, the flow is closed and the next
    // datagram (a new flow) is denied.
    apply(&mut m, &ALLOW_8080_AND_5354.replace(", \"5354\"", ""));
    assert!(
        m.eventually(Duration::from_secs(10), || {
            m.metric("node-b", "veil_connections_closed_by_recheck_total", &[]) >= 1.0
        }),
        "the live UDP flow was not closed"
    );
    let after = udp(&m, "client", &ip(&m, "server"), 5354, "AFTER-CHANGE");
    assert!(!after.starts_with("REPLY"), "{after}");
    assert!(!output(&m, "allowed").contains("AFTER-CHANGE"));
    assert_mesh_still_serves(&mut m);
}

/// Sends one datagram to each of `count` ports of `host`, from one socket.
const SPRAY: &str = r#"
import socket, sys
host, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(first, first + count):
    try:
        s.sendto(b'spray', (host, port))
    except OSError:
        pass
print('sent')
"#;

/// Queries `host port` `count` times, each from a socket of its own (as a resolver library takes a
/// port per query), waiting up to `timeout` seconds for each echo; prints how many came back.
const PORT_PER_QUERY: &str = r#"
import socket, sys
host, port, count, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
answered = 0
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    query = b'query-%d' % i
    s.sendto(query, (host, port))
    try:
        answered += s.recv(2048) == query
    except OSError:
        pass
    s.close()
print(answered)
"#;

#[test]
fn a_client_with_a_port_per_query_is_answered_beyond_its_budget_as_idle_flows_make_room() {
    if skip_unless_root("udp_port_per_query") {
        return;
    }
    // Flows live 60 s after their last datagram (the default); the pod may hold 5.
    let mut m = mesh(&["--max-udp-flows-per-pod=5"], "");
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    let server = ip(&m, "server");
    let queries =
        |count: &str| python(&m, "client", PORT_PER_QUERY, &[&server, "5353", count, "2"]);
    assert_eq!(queries("5"), "5", "the budget's worth");
    // Five finished queries hold the budget; idle for over a second, each makes room for a new one.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(queries("5"), "5", "{}", m.ztunnel_log("node-a"));
    assert_eq!(
        m.metric(
            "node-a",
            "veil_udp_flows_evicted_total",
            &[("workload", "production/client")]
        ),
        5.0
    );
    // Its UDP flows are not its TCP connections: those still open (the budgets are apart).
    assert_mesh_still_serves(&mut m);
}

#[test]
fn a_pod_spraying_udp_flows_is_held_to_its_budget_and_its_flows_expire() {
    if skip_unless_root("udp_spray") {
        return;
    }
    let mut m = mesh(&["--udp-idle-timeout=2s", "--max-udp-flows-per-pod=20"], "");
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    let sprayed = python(&m, "client", SPRAY, &[&ip(&m, "server"), "20000", "2000"]);
    assert_eq!(sprayed, "sent");
    let refused = |m: &Mesh| {
        m.metric(
            "node-a",
            "veil_connections_refused_total",
            &[("resource", "udp_flows")],
        )
    };
    assert!(
        m.eventually(Duration::from_secs(5), || refused(&m) > 0.0),
        "no flow was refused beyond the pod's budget"
    );
    // Idle for a second, a sprayed flow makes room (and all expire after 2 s): the pod reaches
    // the server again.
    let mut reply = String::new();
    let back = m.eventually(Duration::from_secs(10), || {
        reply = udp(&m, "client", &ip(&m, "server"), 5353, "AFTER-SPRAY");
        reply == "REPLY AFTER-SPRAY"
    });
    assert!(back, "{reply}");
    assert_mesh_still_serves(&mut m);
}

/// Sends `message` to `host port` from a socket bound to `eth0` (`SO_BINDTODEVICE`, which routing
/// rules cannot override); prints `REPLY …` or why not.
const BOUND_CLIENT: &str = r#"
import socket, sys
host, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')
s.settimeout(1)
out = 'NOREPLY'
for _ in range(3):
    try:
        s.sendto(msg, (host, port))
        d, _ = s.recvfrom(2048)
        out = 'REPLY ' + d.decode(errors='replace')
        break
    except OSError as e:
        out = 'ERROR ' + str(e)
print(out)
"#;

#[test]
fn udp_bound_to_a_device_or_to_ipv6_link_local_never_leaves_and_loopback_stays_local() {
    if skip_unless_root("udp_bound") {
        return;
    }
    let mut m = mesh(&[], "");
    serve(&mut m, "outsider", "v6", UDP_SERVER, &["::", "5355"]);
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    serve(
        &mut m,
        "client",
        "local",
        UDP_SERVER,
        &["127.0.0.1", "5356"],
    );
    link_local(&m, "client");
    let neighbour = link_local(&m, "outsider");
    let wire = capture(&m);
    // A scoped link-local address: refused at the source, as without carrying.
    let sent = udp(&m, "client", &neighbour, 5355, "LINK-LOCAL-MARKER");
    // A socket bound to the pod's interface keeps it whatever the routing rule says: the datagram
    // is marked for capture but cannot reach ztunnel, and the guard drops it on its way out.
    let bound = python(
        &m,
        "client",
        BOUND_CLIENT,
        &[&ip(&m, "server"), "5353", "BOUND-MARKER"],
    );
    let wire = wire.finish().expect("capture");
    assert!(!sent.starts_with("REPLY"), "{sent}");
    assert!(!output(&m, "v6").contains("RECEIVED"));
    assert!(!bound.starts_with("REPLY"), "{bound}");
    assert!(!output(&m, "udp").contains("RECEIVED"));
    for port in [5353, 5355] {
        assert_eq!(wire.packets_on_port(port), 0, "{}", wire.summary);
    }
    for marker in [&b"LINK-LOCAL-MARKER"[..], b"BOUND-MARKER"] {
        assert!(!wire.contains(marker), "a UDP payload crossed the wire");
    }
    // Loopback inside the pod is the pod's own business.
    assert_eq!(
        udp(&m, "client", "127.0.0.1", 5356, "LOOPBACK"),
        "REPLY LOOPBACK"
    );
    assert_mesh_still_serves(&mut m);
}

/// From one socket, sends `message` to `host port` every 200 ms and prints each answer.
const TICKER: &str = r#"
import socket, sys, time
host, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
print('listening', flush=True)
while True:
    try:
        s.sendto(msg, (host, port))
        d, _ = s.recvfrom(2048)
        print('REPLY', d.decode(errors='replace'), flush=True)
    except OSError as e:
        print('ERROR', e, flush=True)
    time.sleep(0.2)
"#;

#[test]
fn a_flow_carried_before_carrying_is_turned_off_does_not_go_on_in_clear() {
    if skip_unless_root("udp_carry_off") {
        return;
    }
    let mut m = mesh(&[], "");
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    let server = ip(&m, "server");
    serve(
        &mut m,
        "client",
        "ticker",
        TICKER,
        &[&server, "5353", "TICK-MARKER"],
    );
    assert!(
        m.eventually(Duration::from_secs(5), || output(&m, "ticker")
            .contains("REPLY TICK-MARKER")),
        "the flow was not carried: {}",
        output(&m, "ticker")
    );
    // node-a's ztunnel comes back without carrying: it removes UDP capture, while conntrack still
    // knows the flow (answered) and the application goes on sending from the same socket.
    m.spec.ztunnel_args.retain(|a| a != "--carry-udp");
    m.start_ztunnel("node-a")
        .expect("ztunnel without --carry-udp");
    // On the pod's own interface: what leaves the pod (its node need not forward it).
    let wire = Capture::start_ip(
        &m.cluster.pod("client").netns,
        "eth0",
        &m.dir.join("pod.pcap"),
        &m.dir.join("pod-tcpdump.log"),
    )
    .expect("tcpdump");
    std::thread::sleep(Duration::from_secs(2));
    let wire = wire.finish().expect("capture");
    assert_eq!(wire.packets_on_port(5353), 0, "{}", wire.summary);
    assert!(!wire.contains(b"TICK-MARKER"), "the flow went on in clear");
    assert!(output(&m, "ticker").contains("ERROR"));
    assert_mesh_still_serves(&mut m);
}

/// dnsmasq in `pod` on UDP `port` of the pod's address, answering `db.veil.test` with `answer`.
pub(super) fn resolver(m: &mut Mesh, pod: &str, port: &str, answer: &str) {
    let name = format!("dnsmasq-{pod}");
    let address = format!("--address=/db.veil.test/{answer}");
    let listen = format!("--listen-address={}", ip(m, pod));
    let port = format!("--port={port}");
    let pid_file = format!("--pid-file={}", m.dir.join(format!("{name}.pid")).display());
    let argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        &pid_file,
        &port,
        &listen,
        &address,
        "--log-queries",
    ];
    let proc = m.spawn_in_pod(pod, &name, &argv).expect("dnsmasq");
    proc.wait_for("started", Duration::from_secs(10))
        .expect("dnsmasq started");
}

/// `dig` from the client pod at `server`:`port` for `db.veil.test`: the short answer.
pub(super) fn dig(m: &Mesh, server: &str, port: &str) -> String {
    let at = format!("@{server}");
    let argv = [
        "dig",
        &at,
        "-p",
        port,
        "+short",
        "+tries=2",
        "+time=2",
        "db.veil.test",
    ];
    let out = m.run_in_pod("client", &argv).expect("dig");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
