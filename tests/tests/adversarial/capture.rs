//! Capture under attack (issue 10, classes 1 and 2): an application that dials ztunnel's own
//! ports to make it loop, plaintext over IPv6 (link-local, every pod has it, and global) in and out
//! of enrolled pods, UDP and other protocols around the TCP-only mesh. Every case asserts the safe
//! outcome, then that the node's ztunnel is ready and meshed pods still reach each other.

use std::time::Duration;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};
use veil_e2e::process::Proc;
use veil_e2e::wire::Capture;

const PYTHON: &str = "/usr/bin/python3";

/// A TCP server on `host port`: prints `ACCEPTED <peer>` for every connection and echoes it.
pub(crate) const TCP_SERVER: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if ':' in host:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((host, port))
s.listen(64)
print('listening', flush=True)
while True:
    c, a = s.accept()
    print('ACCEPTED', a[0], flush=True)
    c.settimeout(2)
    try:
        c.sendall(c.recv(1024))
    except OSError:
        pass
    c.close()
"#;

/// Connects to `host port` (a scoped `fe80::…%eth0` works), sends `message`, half-closes, and
/// prints `REPLY <what came back>` or `ERROR <why>`. A fourth argument: the socket's mark
/// (`SO_MARK`, which a process keeping `CAP_NET_RAW` may set on Linux 5.17 and later).
const TCP_CLIENT: &str = r#"
import socket, sys
host, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
try:
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    if len(sys.argv) > 4:
        s.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[4], 0))  # SO_MARK
    s.settimeout(3)
    s.connect(ai[4])
    s.sendall(msg)
    s.shutdown(socket.SHUT_WR)
    d = b''
    while True:
        b = s.recv(1024)
        if not b:
            break
        d += b
    print('REPLY', d.decode(errors='replace'))
except OSError as e:
    print('ERROR', e)
"#;

/// A UDP echo server on `host port` that prints `RECEIVED <datagram>`.
pub(crate) const UDP_SERVER: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
print('listening', flush=True)
while True:
    d, a = s.recvfrom(2048)
    print('RECEIVED', d.decode(errors='replace'), flush=True)
    s.sendto(d, a)
"#;

/// Sends `message` to `host port` over UDP up to three times; prints `REPLY …` or why not.
pub(crate) const UDP_CLIENT: &str = r#"
import socket, sys
host, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
s = socket.socket(ai[0], socket.SOCK_DGRAM)
s.settimeout(1)
out = 'NOREPLY'
for _ in range(3):
    try:
        s.sendto(msg, ai[4])
        d, _ = s.recvfrom(2048)
        out = 'REPLY ' + d.decode(errors='replace')
        break
    except OSError as e:
        out = 'ERROR ' + str(e)
print(out)
"#;

/// ICMP (or ICMPv6) echo to `host` over a raw socket: prints `PONG` or `NOPONG`.
const PING: &str = r#"
import os, socket, struct, sys
host = sys.argv[1]
v6 = ':' in host
fam = socket.AF_INET6 if v6 else socket.AF_INET
ai = socket.getaddrinfo(host, None, fam, socket.SOCK_DGRAM)[0]
s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
s.settimeout(1)
ident = os.getpid() & 0xffff
def checksum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    t += t >> 16
    return ~t & 0xffff
body = b'veil-ping!'
typ = 128 if v6 else 8
pkt = struct.pack('!BBHHH', typ, 0, 0, ident, 1) + body
if not v6:
    pkt = struct.pack('!BBHHH', typ, 0, checksum(pkt), ident, 1) + body
for _ in range(3):
    s.sendto(pkt, ai[4])
    try:
        while True:
            d, _ = s.recvfrom(2048)
            if not v6:
                d = d[(d[0] & 0xf) * 4:]
            if d[0] == (129 if v6 else 0) and struct.unpack('!H', d[4:6])[0] == ident:
                print('PONG')
                sys.exit(0)
    except OSError:
        pass
print('NOPONG')
"#;

/// Two nodes; `client` (node-a) and `server` (node-b) in the mesh, `outsider` (node-a) not.
fn mesh_with(extra: Vec<PodSpec>) -> Mesh {
    let mut pods = vec![
        PodSpec::new("client", "production", "node-a"),
        PodSpec::new("server", "user-data", "node-b"),
        PodSpec::new("outsider", "legacy", "node-a").not_enrolled(),
    ];
    pods.extend(extra);
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods,
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

fn mesh() -> Mesh {
    mesh_with(Vec::new())
}

/// Runs a Python snippet in `pod` to completion; its standard output.
pub(crate) fn python(m: &Mesh, pod: &str, script: &str, args: &[&str]) -> String {
    let mut argv = vec![PYTHON, "-c", script];
    argv.extend_from_slice(args);
    let out = m.run_in_pod(pod, &argv).expect("running python");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Starts a Python server in `pod` and waits until it listens.
pub(crate) fn serve(m: &mut Mesh, pod: &str, name: &str, script: &str, args: &[&str]) {
    let mut argv = vec![PYTHON, "-c", script];
    argv.extend_from_slice(args);
    let proc = m.spawn_in_pod(pod, name, &argv).expect("starting a server");
    proc.wait_for("listening", Duration::from_secs(10))
        .expect("server listening");
}

/// What a server started with [`serve`] printed.
pub(crate) fn output(m: &Mesh, name: &str) -> String {
    m.app_log(name)
}

/// Sends `message` over TCP from `pod` to `host port`.
pub(crate) fn tcp(m: &Mesh, pod: &str, host: &str, port: u16, message: &str) -> String {
    python(m, pod, TCP_CLIENT, &[host, &port.to_string(), message])
}

/// Sends `message` over UDP from `pod` to `host port`.
pub(crate) fn udp(m: &Mesh, pod: &str, host: &str, port: u16, message: &str) -> String {
    python(m, pod, UDP_CLIENT, &[host, &port.to_string(), message])
}

/// `pod`'s IPv6 link-local address once duplicate address detection is over, scoped to `eth0`.
pub(crate) fn link_local(m: &Mesh, pod: &str) -> String {
    let mut last = String::new();
    let found = m.eventually(Duration::from_secs(10), || {
        let out = m
            .run_in_pod(
                pod,
                &[
                    "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
                ],
            )
            .expect("ip addr");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        !last.is_empty() && !last.contains("tentative")
    });
    assert!(
        found,
        "{pod} has no usable IPv6 link-local address: {last:?}"
    );
    let addr = last
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no inet6 in {last:?}"));
    format!("{addr}%eth0")
}

pub(crate) fn ip(m: &Mesh, pod: &str) -> String {
    m.cluster.pod(pod).ip.to_string()
}

pub(crate) fn forbidden(m: &Mesh, node: &str) -> f64 {
    m.metric(node, "veil_forbidden_destinations_total", &[])
}

fn plaintext_rejected(m: &Mesh, node: &str) -> f64 {
    m.metric(node, "veil_plaintext_rejected_total", &[])
}

/// The descriptors the ztunnel of `node` holds.
fn open_fds(m: &Mesh, node: &str) -> usize {
    let pid = m.ztunnels[node].pid();
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// After every attack: both ztunnels ready, the meshed pods still reach each other, ztunnel's
/// descriptors are not piling up.
pub(crate) fn assert_mesh_still_serves(m: &mut Mesh) {
    for node in ["node-a", "node-b"] {
        m.wait_ready(node, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{node}'s ztunnel is not ready after the attack: {e}"));
        let fds = open_fds(m, node);
        assert!(fds < 500, "{node}'s ztunnel holds {fds} descriptors");
    }
    let url = format!("http://{}:8080/after-attack", ip(m, "server"));
    assert_eq!(m.curl("client", &url).map(|r| r.0), Ok(200));
    let back = format!("http://{}:8080/after-attack", ip(m, "client"));
    assert_eq!(m.curl("server", &back).map(|r| r.0), Ok(200));
}

/// An application dials one of ztunnel's in-pod ports on loopback: it gets no plaintext path, no
/// loop starts, and ztunnel stays healthy.
fn dial_own_port(host: &str, port: u16) {
    let mut m = mesh();
    let before = open_fds(&m, "node-a");
    for _ in 0..3 {
        let reply = tcp(&m, "client", host, port, "LOOP-MARKER");
        assert!(
            !reply.contains("LOOP-MARKER"),
            "{host}:{port} echoed: {reply}"
        );
    }
    // A loop would still be growing: give it time to show.
    std::thread::sleep(Duration::from_secs(2));
    let after = open_fds(&m, "node-a");
    assert!(
        after < before + 50,
        "ztunnel's descriptors grew from {before} to {after}"
    );
    let log = m.ztunnel_log("node-a");
    assert!(
        log.len() < 1_000_000,
        "ztunnel wrote {} bytes of log",
        log.len()
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn app_dialling_loopback_outbound_port_cannot_make_ztunnel_loop() {
    if skip_unless_root("loopback_15001") {
        return;
    }
    dial_own_port("127.0.0.1", 15001);
}

#[test]
fn app_dialling_loopback_plaintext_port_is_reset() {
    if skip_unless_root("loopback_15006") {
        return;
    }
    dial_own_port("127.0.0.1", 15006);
}

#[test]
fn app_dialling_loopback_hbone_port_gets_no_plaintext_path() {
    if skip_unless_root("loopback_15008") {
        return;
    }
    dial_own_port("127.0.0.1", 15008);
}

#[test]
fn app_dialling_ipv6_loopback_outbound_port_cannot_make_ztunnel_loop() {
    if skip_unless_root("loopback6_15001") {
        return;
    }
    dial_own_port("::1", 15001);
}

#[test]
fn app_dialling_its_own_pod_address_on_proxy_ports_is_refused_by_ztunnel() {
    if skip_unless_root("own_ip_proxy_ports") {
        return;
    }
    let mut m = mesh();
    let own = ip(&m, "client");
    for port in [15001, 15006, 15008] {
        let reply = tcp(&m, "client", &own, port, "SELF-MARKER");
        assert!(!reply.contains("SELF-MARKER"), "{own}:{port}: {reply}");
    }
    // Redirected to 15001 (it is not loopback), then refused by ztunnel itself, with a metric.
    assert_eq!(forbidden(&m, "node-a"), 3.0);
    assert!(
        m.ztunnel_log("node-a")
            .contains("outbound connection refused: forbidden destination"),
        "no log line"
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn passthrough_to_ztunnel_ports_on_the_node_address_is_refused() {
    if skip_unless_root("node_proxy_ports") {
        return;
    }
    let mut m = mesh();
    let node = m.cluster.node("node-a").clone();
    // Listeners on the node's own address on ztunnel's ports: a passthrough would reach them.
    let mut listeners = Vec::new();
    for port in [15001u16, 15006, 15008] {
        let name = format!("node-listener-{port}");
        let mut proc = Proc::spawn(
            &name,
            Some(&node.netns),
            &[PYTHON, "-c", TCP_SERVER, "0.0.0.0", &port.to_string()],
            &[],
            &m.dir.join(format!("{name}.log")),
        )
        .expect("node listener");
        proc.wait_for("listening", Duration::from_secs(10))
            .expect("node listener up");
        listeners.push(proc);
    }
    for port in [15001, 15006, 15008] {
        let reply = tcp(&m, "client", &node.ip.to_string(), port, "NODE-MARKER");
        assert!(!reply.contains("NODE-MARKER"), "node port {port}: {reply}");
    }
    for l in &listeners {
        assert!(
            !l.output().contains("ACCEPTED"),
            "{}: {}",
            l.name,
            l.output()
        );
    }
    assert_eq!(forbidden(&m, "node-a"), 3.0);
    assert_mesh_still_serves(&mut m);
}

#[test]
fn plaintext_tcp_over_ipv6_link_local_into_an_enrolled_pod_is_refused() {
    if skip_unless_root("link_local_in") {
        return;
    }
    let mut m = mesh();
    serve(&mut m, "client", "v6-server", TCP_SERVER, &["::", "9999"]);
    let target = link_local(&m, "client");
    // The source's own link-local address must be usable too (duplicate address detection).
    link_local(&m, "outsider");
    let reply = tcp(&m, "outsider", &target, 9999, "LINK-LOCAL-IN");
    assert!(!reply.contains("LINK-LOCAL-IN"), "{reply}");
    assert!(
        !output(&m, "v6-server").contains("ACCEPTED"),
        "plaintext over link-local reached the enrolled pod"
    );
    assert!(plaintext_rejected(&m, "node-a") >= 1.0);
    assert_mesh_still_serves(&mut m);
}

#[test]
fn plaintext_tcp_over_ipv6_link_local_out_of_an_enrolled_pod_is_captured_and_refused() {
    if skip_unless_root("link_local_out") {
        return;
    }
    let mut m = mesh();
    serve(&mut m, "outsider", "v6-server", TCP_SERVER, &["::", "9999"]);
    let target = link_local(&m, "outsider");
    link_local(&m, "client");
    let started = tokio::time::Instant::now();
    let reply = tcp(&m, "client", &target, 9999, "LINK-LOCAL-OUT");
    // Refused at once with a reset (not left to time out), and nothing reached the neighbour.
    assert!(reply.starts_with("ERROR"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2), "{reply}");
    assert!(
        !output(&m, "v6-server").contains("ACCEPTED"),
        "the enrolled pod reached a neighbour in plaintext over link-local"
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn plaintext_tcp_over_ipv6_global_address_cannot_reach_an_enrolled_pod_either_way() {
    if skip_unless_root("ipv6_global") {
        return;
    }
    // The harness gives pods no global IPv6: add unique local addresses on the shared node bridge.
    let mut m = mesh_with(vec![PodSpec::new("neighbour", "production", "node-a")]);
    for (pod, addr) in [
        ("client", "fd00:10::1"),
        ("outsider", "fd00:10::2"),
        ("neighbour", "fd00:10::3"),
    ] {
        let cidr = format!("{addr}/64");
        let out = m
            .run_in_pod(
                pod,
                &["ip", "-6", "addr", "add", &cidr, "dev", "eth0", "nodad"],
            )
            .expect("ip addr add");
        assert!(out.status.success(), "{out:?}");
    }
    serve(&mut m, "client", "client-v6", TCP_SERVER, &["::", "9999"]);
    serve(
        &mut m,
        "neighbour",
        "neighbour-v6",
        TCP_SERVER,
        &["::", "9999"],
    );
    // In: from outside the mesh to an enrolled pod.
    let reply = tcp(&m, "outsider", "fd00:10::1", 9999, "GLOBAL-IN");
    assert!(!reply.contains("GLOBAL-IN"), "{reply}");
    // Out: from an enrolled pod, to an enrolled pod by an address the mesh does not know.
    let reply = tcp(&m, "client", "fd00:10::3", 9999, "GLOBAL-OUT");
    assert!(!reply.contains("GLOBAL-OUT"), "{reply}");
    for server in ["client-v6", "neighbour-v6"] {
        assert!(
            !output(&m, server).contains("ACCEPTED"),
            "{server} accepted plaintext"
        );
    }
    assert!(plaintext_rejected(&m, "node-a") >= 2.0);
    assert_mesh_still_serves(&mut m);
}

#[test]
fn plaintext_udp_from_outside_the_mesh_into_an_enrolled_pod_is_dropped() {
    if skip_unless_root("udp_in") {
        return;
    }
    let mut m = mesh();
    serve(&mut m, "client", "udp4", UDP_SERVER, &["0.0.0.0", "5353"]);
    serve(&mut m, "client", "udp6", UDP_SERVER, &["::", "5354"]);
    let v4 = udp(&m, "outsider", &ip(&m, "client"), 5353, "UDP-IN-V4");
    link_local(&m, "outsider");
    let v6 = udp(&m, "outsider", &link_local(&m, "client"), 5354, "UDP-IN-V6");
    assert!(
        !v4.starts_with("REPLY") && !v6.starts_with("REPLY"),
        "{v4} / {v6}"
    );
    for server in ["udp4", "udp6"] {
        assert!(
            !output(&m, server).contains("RECEIVED"),
            "{server} received plaintext UDP"
        );
    }
    // Inside the pod, loopback UDP is untouched.
    let local = udp(&m, "client", "127.0.0.1", 5353, "UDP-LOOPBACK");
    assert_eq!(local, "REPLY UDP-LOOPBACK");
    assert_mesh_still_serves(&mut m);
}

#[test]
fn udp_between_enrolled_pods_never_crosses_the_wire() {
    if skip_unless_root("udp_between") {
        return;
    }
    let mut m = mesh();
    serve(&mut m, "server", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    let capture = Capture::start_ip(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .expect("tcpdump");
    let sent = udp(&m, "client", &ip(&m, "server"), 5353, "UDP-CLEAR-MARKER");
    let wire = capture.finish().expect("capture");
    assert!(!sent.starts_with("REPLY"), "{sent}");
    assert!(!output(&m, "udp").contains("RECEIVED"));
    assert_eq!(wire.packets_on_port(5353), 0, "{}", wire.summary);
    assert!(
        !wire.contains(b"UDP-CLEAR-MARKER"),
        "the UDP payload crossed the wire"
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn dns_over_udp_port_53_still_leaves_an_enrolled_pod() {
    if skip_unless_root("udp_dns") {
        return;
    }
    let mut m = mesh();
    // A stand-in for the cluster DNS, outside the mesh; any other UDP port is refused.
    serve(&mut m, "outsider", "dns", UDP_SERVER, &["0.0.0.0", "53"]);
    serve(
        &mut m,
        "outsider",
        "other",
        UDP_SERVER,
        &["0.0.0.0", "5353"],
    );
    let dns = udp(&m, "client", &ip(&m, "outsider"), 53, "DNS-QUERY");
    assert_eq!(dns, "REPLY DNS-QUERY");
    let other = udp(&m, "client", &ip(&m, "outsider"), 5353, "NOT-DNS");
    assert!(!other.starts_with("REPLY"), "{other}");
    assert!(!output(&m, "other").contains("RECEIVED"));
    assert_mesh_still_serves(&mut m);
}

#[test]
fn icmp_and_ipv6_neighbour_discovery_still_work_around_enrolled_pods() {
    if skip_unless_root("icmp") {
        return;
    }
    let mut m = mesh();
    let server = ip(&m, "server");
    let client = ip(&m, "client");
    let outsider_v6 = link_local(&m, "outsider");
    let client_v6 = link_local(&m, "client");
    assert_eq!(
        python(&m, "client", PING, &[&server]),
        "PONG",
        "meshed to meshed"
    );
    assert_eq!(
        python(&m, "outsider", PING, &[&client]),
        "PONG",
        "into a meshed pod"
    );
    // ICMPv6 over link-local needs neighbour discovery, both ways.
    assert_eq!(
        python(&m, "client", PING, &[&outsider_v6]),
        "PONG",
        "v6 out"
    );
    assert_eq!(python(&m, "outsider", PING, &[&client_v6]), "PONG", "v6 in");
    assert_mesh_still_serves(&mut m);
}

/// Every rule veil added in `pod`, both families.
fn veil_rules(m: &Mesh, pod: &str) -> Vec<String> {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .flat_map(|tool| {
            let out = m.run_in_pod(pod, &[tool]).expect("iptables-save");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("VEIL_"))
                .map(|l| format!("{tool}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn jumps(rules: &[String]) -> usize {
    rules.iter().filter(|r| r.contains("-j VEIL_")).count()
}

#[test]
fn uninstall_leaves_nothing_behind_and_reinstall_adds_nothing_twice() {
    if skip_unless_root("uninstall") {
        return;
    }
    let mut m = mesh();
    // Four jumps per family (nat in/out, filter in/out).
    assert_eq!(
        jumps(&veil_rules(&m, "client")),
        8,
        "{:?}",
        veil_rules(&m, "client")
    );
    m.set_enrolled("client", false).unwrap();
    let gone = m.eventually(Duration::from_secs(15), || {
        veil_rules(&m, "client").is_empty()
    });
    assert!(gone, "left behind: {:?}", veil_rules(&m, "client"));
    // Out of the mesh, UDP flows again.
    serve(&mut m, "outsider", "udp", UDP_SERVER, &["0.0.0.0", "5353"]);
    assert_eq!(
        udp(&m, "client", &ip(&m, "outsider"), 5353, "UNCAPTURED"),
        "REPLY UNCAPTURED"
    );
    m.set_enrolled("client", true).unwrap();
    let back = m.eventually(Duration::from_secs(15), || {
        jumps(&veil_rules(&m, "client")) == 8
    });
    assert!(back, "{:?}", veil_rules(&m, "client"));
    // A restarted ztunnel re-installs over its own rules: still one jump each.
    let before = veil_rules(&m, "client");
    m.start_ztunnel("node-a").unwrap();
    assert_eq!(veil_rules(&m, "client"), before);
    assert_mesh_still_serves(&mut m);
}

/// Sends `data` through a corked socket with one byte of TCP urgent data (`mark`) after `before`:
/// `before`, the mark and `after` leave in one segment, all queued at the reader at once.
const SEND_AROUND_A_MARK: &str = r#"
def send_around_a_mark(s, before, mark, after):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    s.send(before + mark, socket.MSG_OOB)
    s.sendall(after)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

def read_exactly(s, n):
    d = b''
    while len(d) < n:
        b = s.recv(n - len(d))
        if not b:
            break
        d += b
    return d
"#;

/// Echoes `hello` (so the tunnel is open before what follows), then reads 11 bytes (`before`
/// and `after` around the client's urgent byte) and answers `reply-` and `tail` around its own.
const URGENT_SERVER: &str = r#"
import socket, sys
HELPERS
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1])))
s.listen(4)
print('listening', flush=True)
c, _ = s.accept()
c.settimeout(10)
try:
    c.sendall(read_exactly(c, 5))
    got = read_exactly(c, 11)
    print('RECEIVED', got.decode(errors='replace'), flush=True)
    send_around_a_mark(c, b'reply-', b'#', b'tail')
    read_exactly(c, 1)
except OSError as e:
    print('ERROR', e, flush=True)
"#;

/// Sends `hello` and waits for its echo, then `before`, an urgent byte and `after`; prints `REPLY`
/// and the 10 bytes that came back, or `ERROR` and why.
const URGENT_CLIENT: &str = r#"
import socket, sys
HELPERS
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b'hello')
    assert read_exactly(s, 5) == b'hello'
    send_around_a_mark(s, b'before', b'!', b'after')
    print('REPLY', read_exactly(s, 10).decode(errors='replace'))
except (OSError, AssertionError) as e:
    print('ERROR', repr(e))
"#;

#[test]
fn tcp_urgent_data_through_the_mesh_stalls_neither_way() {
    // A read stops short at TCP urgent data and the bytes queued behind the mark raise no event
    // of their own: ztunnel must still carry them (the urgent byte itself is not carried: HBONE
    // has no out-of-band data), within its 50 ms recheck, both ways.
    if skip_unless_root("urgent_data") {
        return;
    }
    let mut m = mesh();
    let server_script = URGENT_SERVER.replace("HELPERS", SEND_AROUND_A_MARK);
    serve(&mut m, "server", "urgent-server", &server_script, &["9998"]);
    let server = ip(&m, "server");
    let started = tokio::time::Instant::now();
    let client_script = URGENT_CLIENT.replace("HELPERS", SEND_AROUND_A_MARK);
    let reply = python(&m, "client", &client_script, &[&server, "9998"]);
    assert_eq!(reply, "REPLY reply-tail", "{reply}");
    assert!(
        output(&m, "urgent-server").contains("RECEIVED beforeafter"),
        "{}",
        output(&m, "urgent-server")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_mesh_still_serves(&mut m);
}

#[test]
fn an_application_marking_its_socket_as_ztunnels_is_still_captured() {
    if skip_unless_root("marked_socket") {
        return;
    }
    let mut m = mesh();
    for node in ["node-a", "node-b"] {
        let log = m.ztunnel_log(node);
        assert!(
            log.contains("let out marked sockets from this cgroup only"),
            "{node}'s ztunnel does not match its cgroup (is cgroup v2 mounted?):\n{log}"
        );
    }
    serve(
        &mut m,
        "server",
        "tcp-server",
        TCP_SERVER,
        &["0.0.0.0", "9999"],
    );
    let capture = Capture::start(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .expect("tcpdump");
    let server = ip(&m, "server");
    // ztunnel's own mark, which the harness's pods (root) may set.
    let reply = python(
        &m,
        "client",
        TCP_CLIENT,
        &[&server, "9999", "MARKED-CLEAR", "0x539"],
    );
    let wire = capture.finish().expect("capture");
    // Carried over HBONE like any other connection of the pod (in clear, the server's STRICT
    // capture would have refused it), and nothing of it on the wire in clear.
    assert_eq!(reply, "REPLY MARKED-CLEAR", "{reply}");
    assert_eq!(wire.packets_on_port(9999), 0, "{}", wire.summary);
    assert!(
        !wire.contains(b"MARKED-CLEAR"),
        "the marked socket's payload crossed the wire in clear"
    );
    assert!(wire.packets_on_port(15008) > 0, "{}", wire.summary);
    // The rules name ztunnel's cgroup with its mark on the way out.
    let rules = m.nat_rules("client");
    let marked: Vec<&str> = rules.lines().filter(|l| l.contains("0x539")).collect();
    assert!(
        !marked.is_empty() && marked.iter().all(|l| l.contains("--path")),
        "{rules}"
    );
    // And the metric that would tell an operator otherwise counts no pod of either node.
    for node in ["node-a", "node-b"] {
        let metrics = m.metrics(node);
        assert!(
            metrics.contains("\nveil_capture_mark_only_pods 0\n"),
            "{node}: {metrics}"
        );
    }
    assert_mesh_still_serves(&mut m);
}
