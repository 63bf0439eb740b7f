//! Descriptor exhaustion (issue 10, class 8): one pod opens far more connections than it may hold —
//! captured outbound, raw TCP to a pod's HBONE port (TLS handshakes that never finish or crawl),
//! plaintext inbound — or drives ztunnel out of descriptors. The budgets refuse what is over them at
//! once and count it, log lines stay bounded, ztunnel stays ready, other pods on the node keep
//! working during the attack (measured), and everything recovers once the attacker stops.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::time::Instant;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};

use crate::SETTLE;

/// Requests another pod makes while an attack runs: every one must succeed.
const PROBES: usize = 10;

fn start(pods: Vec<PodSpec>, flags: &[&str], policies: &str) -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods,
        policies: policies.into(),
        ztunnel_args: flags.iter().map(|f| (*f).to_owned()).collect(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

fn addr(m: &Mesh, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::new(m.cluster.pod(pod).ip.into(), port)
}

/// Connections opened from inside pod `pod`'s network namespace and held until dropped.
struct Flood {
    streams: Vec<TcpStream>,
}

impl Flood {
    /// Opens `count` connections to `target` from `pod`, writing `first` on each.
    fn open(m: &Mesh, pod: &str, target: SocketAddr, count: usize, first: &[u8]) -> Self {
        let path = m.cluster.pod(pod).netns_path();
        let first = first.to_vec();
        // A thread of its own: entering a network namespace is per thread, and this one ends.
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("opening the pod's namespace");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("entering the pod's namespace");
            let mut streams = Vec::new();
            for _ in 0..count {
                if let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    if !first.is_empty() {
                        let _ = s.write_all(&first);
                    }
                    streams.push(s);
                }
            }
            Self { streams }
        })
        .join()
        .expect("the attacker thread")
    }

    /// How many of the connections the other side still holds open (neither closed nor reset).
    fn alive(&mut self) -> usize {
        let mut buf = [0u8; 64];
        self.streams.retain_mut(|s| {
            if s.set_read_timeout(Some(Duration::from_millis(20))).is_err() {
                return false;
            }
            match s.read(&mut buf) {
                // Data (an echo) or silence: open. End of stream or a reset: closed.
                Ok(n) => n > 0,
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        });
        self.streams.len()
    }
}

/// `PROBES` requests from `from` to `to`'s HTTP port: how many answered 200.
fn probe(m: &Mesh, from: &str, to: &str) -> usize {
    let url = format!("http://{}:8080/probe", m.cluster.pod(to).ip);
    (0..PROBES)
        .filter(|_| m.curl(from, &url).is_ok_and(|(code, _)| code == 200))
        .count()
}

fn refused(m: &Mesh, node: &str, resource: &str, reason: &str) -> f64 {
    m.metric(
        node,
        "veil_connections_refused_total",
        &[("resource", resource), ("reason", reason)],
    )
}

/// Log lines of `node`'s ztunnel that contain `needle`.
fn log_lines(m: &Mesh, node: &str, needle: &str) -> usize {
    m.ztunnel_log(node)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn assert_ready(m: &mut Mesh, node: &str) {
    m.wait_ready(node, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("ztunnel {node} is not ready after the attack: {e}"));
}

#[test]
fn outbound_connection_flood_from_one_pod_is_capped_and_neighbours_keep_working() {
    if skip_unless_root("outbound_connection_flood") {
        return;
    }
    let mut m = start(
        vec![
            PodSpec::new("attacker", "tenant", "node-a"),
            PodSpec::new("neighbour", "tenant", "node-a"),
            PodSpec::new("server", "backend", "node-b"),
        ],
        &["--max-outbound-connections-per-pod", "50"],
        "",
    );
    let started = Instant::now();
    let mut flood = Flood::open(&m, "attacker", addr(&m, "server", 9090), 1000, b"hi\n");
    assert_eq!(
        probe(&m, "neighbour", "server"),
        PROBES,
        "a neighbour failed during the attack"
    );
    let alive = flood.alive();
    assert!(
        alive <= 50,
        "{alive} connections of one pod held past its limit of 50"
    );
    let count = refused(&m, "node-a", "outbound_connections", "pod_limit");
    assert!(count >= 900.0, "refusals counted: {count}");
    let seconds = started.elapsed().as_secs() as usize;
    let lines = log_lines(&m, "node-a", "over budget");
    assert!(
        lines <= seconds + 2,
        "{lines} refusal lines in {seconds}s: not rate-limited"
    );
    assert_ready(&mut m, "node-a");
    // Once the attacker lets go, its own connections work again.
    drop(flood);
    assert!(m.eventually(SETTLE, || probe(&m, "attacker", "server") == PROBES));
}

#[test]
fn never_finishing_tls_handshakes_are_capped_and_timed_out() {
    if skip_unless_root("never_finishing_tls_handshakes") {
        return;
    }
    let mut m = start(
        vec![
            PodSpec::new("client", "tenant", "node-a"),
            PodSpec::new("rogue", "outside", "node-a").not_enrolled(),
            PodSpec::new("victim", "backend", "node-b"),
            PodSpec::new("other", "backend", "node-b"),
        ],
        &[
            "--max-tls-handshakes-per-pod",
            "20",
            "--hbone-handshake-timeout",
            "2s",
        ],
        "",
    );
    // Raw TCP to the victim's HBONE port that never says a word: each is a handshake in progress.
    let mut flood = Flood::open(&m, "rogue", addr(&m, "victim", 15008), 300, b"");
    assert_eq!(
        probe(&m, "client", "other"),
        PROBES,
        "another pod on the node failed during the attack"
    );
    let count = refused(&m, "node-b", "tls_handshakes", "pod_limit");
    assert!(count >= 250.0, "refusals counted: {count}");
    // What was admitted is closed at the handshake timeout: the attacker holds nothing for long.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        flood.alive(),
        0,
        "handshakes outlived the handshake timeout"
    );
    assert_eq!(
        m.metric(
            "node-b",
            "veil_resource_in_use",
            &[("resource", "tls_handshakes")]
        ),
        0.0
    );
    assert_ready(&mut m, "node-b");
    assert_eq!(
        probe(&m, "client", "victim"),
        PROBES,
        "the victim did not recover"
    );
}

#[test]
fn a_crawling_client_hello_is_cut_off_at_the_handshake_timeout() {
    if skip_unless_root("crawling_client_hello") {
        return;
    }
    let mut m = start(
        vec![
            PodSpec::new("client", "tenant", "node-a"),
            PodSpec::new("rogue", "outside", "node-a").not_enrolled(),
            PodSpec::new("victim", "backend", "node-b"),
        ],
        &["--hbone-handshake-timeout", "2s"],
        "",
    );
    // A TLS handshake record header announcing 16 KiB, then only its first bytes: ztunnel waits
    // for the rest, which never comes.
    let partial = [0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f];
    let mut flood = Flood::open(&m, "rogue", addr(&m, "victim", 15008), 100, &partial);
    assert!(
        m.metric(
            "node-b",
            "veil_resource_in_use",
            &[("resource", "tls_handshakes")]
        ) > 0.0,
        "the handshakes are not counted while they last"
    );
    assert_eq!(
        probe(&m, "client", "victim"),
        PROBES,
        "the victim failed during the attack"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        flood.alive(),
        0,
        "a crawling handshake outlived the handshake timeout"
    );
    assert_ready(&mut m, "node-b");
}

#[test]
fn plaintext_connection_flood_is_capped_per_pod() {
    if skip_unless_root("plaintext_connection_flood") {
        return;
    }
    let permissive = r#"
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: permissive, namespace: backend}
    spec: {mtls: {mode: PERMISSIVE}}
"#;
    let mut m = start(
        vec![
            PodSpec::new("client", "tenant", "node-a"),
            PodSpec::new("rogue", "outside", "node-a").not_enrolled(),
            PodSpec::new("victim", "backend", "node-b"),
            PodSpec::new("other", "backend", "node-b"),
        ],
        &["--max-plaintext-connections-per-pod", "30"],
        permissive,
    );
    let victim = addr(&m, "victim", 9090);
    // PERMISSIVE admits plaintext: each admitted connection is relayed to the application and held.
    assert!(m.eventually(SETTLE, || {
        m.tcp("rogue", &victim.to_string(), "hello", 1).is_ok()
    }));
    let mut flood = Flood::open(&m, "rogue", victim, 500, b"hi\n");
    let alive = flood.alive();
    assert!(
        alive <= 30,
        "{alive} plaintext connections held past the pod's limit of 30"
    );
    assert!(refused(&m, "node-b", "plaintext_connections", "pod_limit") >= 400.0);
    assert_eq!(
        probe(&m, "client", "other"),
        PROBES,
        "another pod on the node failed during the attack"
    );
    assert_eq!(
        probe(&m, "client", "victim"),
        PROBES,
        "HBONE to the victim failed during the attack"
    );
    assert_ready(&mut m, "node-b");
    drop(flood);
    assert!(m.eventually(SETTLE, || {
        m.tcp("rogue", &victim.to_string(), "again", 1).is_ok()
    }));
}

#[test]
fn hbone_connection_flood_across_pods_stops_at_the_node_limit() {
    if skip_unless_root("hbone_connection_flood") {
        return;
    }
    let mut m = start(
        vec![
            PodSpec::new("client", "tenant", "node-a"),
            PodSpec::new("rogue", "outside", "node-a").not_enrolled(),
            PodSpec::new("victim", "backend", "node-b"),
            PodSpec::new("other", "backend", "node-b"),
            PodSpec::new("local", "backend", "node-b"),
        ],
        &[
            "--max-hbone-connections",
            "60",
            "--max-hbone-connections-per-pod",
            "60",
            "--hbone-handshake-timeout",
            "3s",
        ],
        "",
    );
    let mut one = Flood::open(&m, "rogue", addr(&m, "victim", 15008), 200, b"");
    let mut two = Flood::open(&m, "rogue", addr(&m, "other", 15008), 200, b"");
    let held = one.alive() + two.alive();
    assert!(
        held <= 60,
        "{held} HBONE connections held past the node's limit of 60"
    );
    assert!(refused(&m, "node-b", "hbone_connections", "node_limit") > 0.0);
    // Other budgets are untouched: a pod on the attacked node still reaches out.
    assert_eq!(
        probe(&m, "local", "client"),
        PROBES,
        "outbound from the attacked node failed"
    );
    assert_ready(&mut m, "node-b");
    drop((one, two));
    assert!(m.eventually(SETTLE, || probe(&m, "client", "victim") == PROBES));
    assert_eq!(probe(&m, "client", "other"), PROBES);
}

#[test]
fn descriptor_exhaustion_backs_off_instead_of_spinning_and_recovers() {
    if skip_unless_root("descriptor_exhaustion") {
        return;
    }
    let mut m = start(
        vec![
            PodSpec::new("attacker", "tenant", "node-a"),
            PodSpec::new("neighbour", "tenant", "node-a"),
            PodSpec::new("server", "backend", "node-b"),
        ],
        // Limits above what the descriptors allow: accept itself must fail (EMFILE).
        &[
            "--max-outbound-connections",
            "100000",
            "--max-outbound-connections-per-pod",
            "100000",
        ],
        "",
    );
    let pid = m.ztunnels["node-a"].pid().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=256:256"])
        .output()
        .expect("running prlimit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cpu_before = m.ztunnels["node-a"].cpu_seconds().unwrap_or(0.0);
    let flood = Flood::open(&m, "attacker", addr(&m, "server", 9090), 600, b"hi\n");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let cpu = m.ztunnels["node-a"].cpu_seconds().unwrap_or(0.0) - cpu_before;
    let seconds = started.elapsed().as_secs_f64() + 2.0;
    assert!(
        cpu < seconds * 0.5,
        "ztunnel used {cpu:.2}s of CPU in {seconds:.1}s: spinning on accept errors"
    );
    let lines = log_lines(&m, "node-a", "accept failed");
    assert!(lines >= 1, "accept errors not logged");
    assert!(
        lines <= 3 * (seconds as usize + 2),
        "{lines} accept-error lines: not rate-limited"
    );
    drop(flood);
    assert_ready(&mut m, "node-a");
    assert!(m.metric("node-a", "veil_accept_errors_total", &[("error", "EMFILE")]) > 0.0);
    assert!(
        m.eventually(SETTLE, || probe(&m, "neighbour", "server") == PROBES),
        "no recovery after the attack"
    );
}

const TUNNEL_TOKEN: &str = "token-of-the-tunnel-flooder-0123456789";

/// An HBONE client with a genuine certificate that opens many tunnels on one connection.
struct TunnelFlood {
    /// The namespace it runs in.
    netns: String,
    /// The HBONE port it dials.
    hbone: SocketAddr,
    /// What each tunnel asks for.
    target: SocketAddr,
    /// How many tunnels.
    count: usize,
    /// Its identity (the CA grants it with `TUNNEL_TOKEN`).
    identity: String,
    /// The identity the server must prove.
    expect: String,
    /// The CA's address.
    ca: String,
    /// The mesh root.
    root: std::path::PathBuf,
}

/// Runs `flood`: reports (accepted, refused with 503) and holds the accepted tunnels until `stop`.
fn tunnel_flood(
    flood: TunnelFlood,
    report: std::sync::mpsc::Sender<(usize, usize)>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let TunnelFlood {
        netns,
        hbone,
        target,
        count,
        identity,
        expect,
        ca,
        root,
    } = flood;
    use veil_mesh::hbone::{ConnectError, H2Client, H2Settings, TunnelMeta, connect_request};
    use veil_mesh::identity::{Identity, client_config};
    let ns = File::open(&netns).expect("opening the pod's namespace");
    setns(&ns, CloneFlags::CLONE_NEWNET).expect("entering the pod's namespace");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let (bundle, cert) = veil_e2e::certs::genuine(&identity, &ca, &root, TUNNEL_TOKEN)
            .await
            .expect("a genuine certificate");
        let tls = client_config(bundle, &cert, vec![Identity::parse(&expect).unwrap()]);
        let tcp = tokio::net::TcpStream::connect(hbone)
            .await
            .expect("connecting");
        let client = H2Client::handshake(tcp, tls, &H2Settings::default())
            .await
            .expect("HBONE handshake");
        let (mut held, mut refused) = (Vec::new(), 0);
        for _ in 0..count {
            match client
                .open(connect_request(target, &TunnelMeta::default()), None)
                .await
            {
                Ok(tunnel) => held.push(tunnel),
                Err(ConnectError::Status(s)) if s.as_u16() == 503 => refused += 1,
                Err(e) => panic!("unexpected tunnel failure: {e}"),
            }
        }
        report.send((held.len(), refused)).unwrap();
        // Keep the connection driven and the tunnels open until told to stop.
        while stop.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(held);
    });
}

#[test]
fn tunnel_flood_on_one_hbone_connection_gets_503_past_the_pod_limit() {
    if skip_unless_root("tunnel_flood") {
        return;
    }
    let client = PodSpec::new("client", "tenant", "node-a");
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            client.clone(),
            PodSpec::new("rogue", "outside", "node-a").not_enrolled(),
            PodSpec::new("victim", "backend", "node-b"),
            PodSpec::new("other", "backend", "node-b"),
        ],
        extra_tokens: vec![(TUNNEL_TOKEN.into(), client.identity())],
        ztunnel_args: vec!["--max-inbound-tunnels-per-pod".into(), "10".into()],
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let (report_tx, report) = std::sync::mpsc::channel();
    let (stop, stop_rx) = std::sync::mpsc::channel();
    let flood = TunnelFlood {
        netns: m.cluster.pod("rogue").netns_path(),
        hbone: addr(&m, "victim", 15008),
        target: addr(&m, "victim", 9090),
        count: 50,
        identity: client.identity(),
        expect: m.pod("victim").identity(),
        ca: m.ca_address(),
        root: m.root_cert(),
    };
    let attacker = std::thread::spawn(move || tunnel_flood(flood, report_tx, stop_rx));
    let (held, refused_503) = report
        .recv_timeout(Duration::from_secs(30))
        .expect("the attacker's report");
    assert_eq!(
        (held, refused_503),
        (10, 40),
        "tunnels held / refused with 503"
    );
    assert!(refused(&m, "node-b", "inbound_tunnels", "pod_limit") >= 40.0);
    assert_eq!(
        probe(&m, "client", "other"),
        PROBES,
        "another pod on the node failed during the attack"
    );
    assert_ready(&mut m, "node-b");
    stop.send(()).unwrap();
    attacker.join().expect("the attacker thread");
    assert!(
        m.eventually(SETTLE, || probe(&m, "client", "victim") == PROBES),
        "no recovery"
    );
}
