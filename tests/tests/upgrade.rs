//! End-to-end: a ztunnel upgrade in Kubernetes mode (the controller fed by the harness's fake API
//! server, ztunnel admitting kubelet probes) replaced mid-traffic on both nodes, with a long-lived
//! stream, a request loop and the nodes' "kubelets" probing throughout; once over HBONE on HTTP/2,
//! once with HBONE over QUIC on (whose sockets are not handed over: the old ztunnels keep their
//! QUIC tunnels while they drain, new tunnels go over HTTP/2, and QUIC comes back once they have
//! exited). Needs root; skips with a loud message otherwise.

use std::time::Duration;

use serde_json::json;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};

const SETTLE: Duration = Duration::from_secs(15);

/// Traffic for an upgrade: one long-lived stream and a new connection every 50 ms, to a server
/// echoing as it reads; what each saw goes to standard output (see the script).
const UPGRADE_TRAFFIC: &str = include_str!("upgrade_traffic.py");

#[test]
fn upgrading_ztunnel_mid_traffic_refuses_no_connection_and_cuts_no_stream() {
    upgrade_mid_traffic(false);
}

#[test]
fn upgrading_ztunnel_with_hbone_over_quic_refuses_no_connection_and_cuts_no_stream() {
    upgrade_mid_traffic(true);
}

/// The transports of the HBONE connections opened, as logged in `log`, in order.
fn transports(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("opened HBONE connection"))
        .filter_map(|l| l.split(r#""transport":""#).nth(1))
        .filter_map(|t| t.split('"').next())
        .collect()
}

fn upgrade_mid_traffic(quic: bool) {
    use veil_e2e::wire::Capture;
    if skip_unless_root("upgrade") {
        return;
    }
    let mut pods = vec![
        PodSpec::new("client", "shop", "node-a"),
        PodSpec::new("server", "shop", "node-b"),
    ];
    let mut ztunnel_args = vec!["--kubelet-probes=true".to_owned()];
    if quic {
        // A client that first connects after the upgrade: over QUIC again, once the new
        // ztunnels hold UDP 15008.
        pods.push(PodSpec::new("late", "shop", "node-a"));
        ztunnel_args.push("--hbone-quic".to_owned());
    }
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods,
        kubernetes: true,
        ztunnel_args,
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    // Each node's "kubelet" probes its pod throughout (HTTP, TCP and gRPC, every 100 ms), in plaintext
    // from the node, as under STRICT only the node's probe source may.
    let mut kubelets = Vec::new();
    for (node, pod) in [("node-a", "client"), ("node-b", "server")] {
        let ip = m.cluster.pod(pod).ip;
        let targets = [
            format!("http://{ip}:8080/healthz"),
            format!("tcp://{ip}:9090"),
            format!("grpc://{ip}:50051"),
        ];
        kubelets.push((node, m.start_kubelet(node, &targets).unwrap()));
    }
    let capture = Capture::start(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("wire.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .unwrap();
    let script = m.dir.join("upgrade-traffic.py");
    std::fs::write(&script, UPGRADE_TRAFFIC).unwrap();
    let stop = m.dir.join("upgrade-traffic.stop");
    let server = m.cluster.pod("server").ip.to_string();
    let client_netns = m.cluster.pod("client").netns.clone();
    let traffic = {
        let (script, stop) = (script.clone(), stop.clone());
        std::thread::spawn(move || {
            let argv = [
                "python3",
                script.to_str().unwrap(),
                &server,
                "7070",
                stop.to_str().unwrap(),
            ];
            veil_e2e::cluster::exec(&client_netns, &argv).unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // A successor that reads the handover and vanishes: the running ztunnel keeps the node.
    m.vanishing_successor("node-a").unwrap();
    let kept =
        |m: &Mesh, line: &str| m.eventually(SETTLE, || m.ztunnel_log("node-a").contains(line));
    assert!(kept(&m, "the handover failed: this ztunnel keeps the node"));
    assert!(
        m.readiness("node-a").starts_with("ready"),
        "{}",
        m.readiness("node-a")
    );

    // The client's node: the new ztunnel starts beside the old one, takes its pods over, is
    // ready; the old one is then told to stop, as the kubelet does. The server's node: the old one
    // is told to stop first (the kubelet took its readiness answer for the new one's), then the
    // new one starts and takes over the sockets the old one keeps open for it.
    let mut old = Vec::new();
    for (node, stop_old_first) in [("node-a", false), ("node-b", true)] {
        let previous = m.upgrade_ztunnel(node, stop_old_first).expect("upgrading");
        if !stop_old_first {
            // Another successor vanishing now changes nothing: the new one keeps the node.
            m.vanishing_successor(node).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            previous.terminate();
        }
        std::thread::sleep(Duration::from_secs(2));
        old.push((node, previous));
    }
    // The long-lived stream still goes through both old ones: they drain, still running.
    for (node, previous) in &mut old {
        assert!(
            previous.running(),
            "{node}'s old ztunnel exited with a stream still open"
        );
    }
    // Meanwhile the pods' rules let out a marked socket from either ztunnel's cgroup: the new
    // one's, and the old one's by the mark alone (a process's cgroup cannot be named from another's).
    let mark_only = |rules: &str| {
        rules
            .lines()
            .any(|l| l.contains("--mark 0x539") && !l.contains("--path"))
    };
    for (node, pod) in [("node-a", "client"), ("node-b", "server")] {
        let rules = m.nat_rules(pod);
        assert!(mark_only(&rules), "{pod}: {rules}");
        assert!(rules.contains("--path"), "{pod}: {rules}");
        // Counted as a way around capture for as long (the harness's kernel lets CAP_NET_RAW
        // set a mark).
        let exposed = m.metric(node, "veil_capture_mark_only_pods", &[]);
        assert!(exposed >= 1.0, "{node}: {exposed}");
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").unwrap();
    let out = traffic.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["stream_errors"], json!([]), "{report}");
    assert_eq!(report["call_errors"], json!([]), "{report}");
    // About 9 s of traffic at one echo and one call each 50 ms (and a little more time each), and
    // none of it held up: no connection waited in a queue nobody served.
    assert!(report["echoes"].as_u64().unwrap() > 60, "{report}");
    assert!(report["calls"].as_u64().unwrap() > 30, "{report}");
    assert!(
        report["slowest_echo_ms"].as_u64().unwrap() < 1000,
        "{report}"
    );
    assert!(
        report["slowest_call_ms"].as_u64().unwrap() < 1000,
        "{report}"
    );

    // Once the stream ended, the old ones had nothing left: they exit.
    for (node, previous) in &mut old {
        assert!(
            previous.wait_exit(Duration::from_secs(10)),
            "{node}'s old ztunnel still running after its last connection ended"
        );
    }
    // Once they have exited, only the new ones' sockets pass.
    for (node, pod) in [("node-a", "client"), ("node-b", "server")] {
        // And no pod is counted as a way around capture any more.
        let gone = m.eventually(SETTLE, || {
            m.ztunnel_log(node).contains("the predecessors have exited")
                && !mark_only(&m.nat_rules(pod))
                && m.metrics(node)
                    .contains("\nveil_capture_mark_only_pods 0\n")
        });
        assert!(gone, "{pod}: {}\n{}", m.nat_rules(pod), m.metrics(node));
    }
    let old_log = std::fs::read_to_string(m.dir.join("ztunnel-node-a.log.1")).unwrap();
    if quic {
        // Before the upgrade, the traffic went over QUIC; during it, the new ztunnels could not
        // bind UDP 15008 (the old ones held it, draining) and went over HTTP/2.
        assert!(transports(&old_log).contains(&"h3"), "{old_log}");
        let new_log = m.ztunnel_log("node-a");
        assert!(transports(&new_log).contains(&"h2"), "{new_log}");
        assert!(new_log.contains("UDP 15008 is still held"), "{new_log}");
        // Once the old ones have exited, the new ones bind it and tunnels go over QUIC again.
        // Every pod's endpoint that waited is bound (each pod and family logs both lines).
        let bound = |m: &Mesh, node: &str| {
            m.eventually(SETTLE, || {
                let log = m.ztunnel_log(node);
                let held = log.matches("UDP 15008 is still held").count();
                held > 0 && log.matches("UDP 15008 bound: serving HBONE").count() == held
            })
        };
        assert!(bound(&m, "node-a") && bound(&m, "node-b"));
        let url = format!("http://{}:8080/", m.cluster.pod("server").ip);
        let (code, body) = m.curl("late", &url).expect("a call after the upgrade");
        assert_eq!(code, 200, "{body}");
        let after = m.ztunnel_log("node-a");
        assert_eq!(transports(&after).last(), Some(&"h3"), "{after}");
    }
    for line in [
        "handed this node's pods over",
        "draining",
        "drained: no connection left",
    ] {
        assert!(
            old_log.contains(line),
            "{line:?} not in the old log:\n{old_log}"
        );
    }
    // The new ones served the pods with the sockets handed over, and carried traffic.
    for node in ["node-a", "node-b"] {
        let log = m.ztunnel_log(node);
        assert!(
            log.contains("serving the sockets handed over"),
            "{node}:\n{log}"
        );
    }
    let client = m.pod("client").identity();
    let carried = m.metric(
        "node-a",
        "istio_tcp_connections_opened_total",
        &[("source_principal", &client), ("reporter", "source")],
    );
    assert!(
        carried > 5.0,
        "the new ztunnel carried {carried} connections"
    );
    // The kubelets' probes all passed, before, during and after.
    for (node, kubelet) in &mut kubelets {
        let (ok, failed) = veil_e2e::mesh::kubelet_counts(&kubelet.output());
        assert!(
            failed == 0 && ok > 100,
            "{node}'s kubelet: {}",
            kubelet.output()
        );
    }
    let served = m.metric(
        "node-b",
        "istio_tcp_connections_opened_total",
        &[("source_principal", &client), ("reporter", "destination")],
    );
    assert!(served > 5.0, "the server's new ztunnel served {served}");
    let a_old = std::fs::read_to_string(m.dir.join("ztunnel-node-a.log.1")).unwrap();
    assert!(a_old.contains("a second handover failed; the node stays with the successor"));
    // Nothing crossed in plaintext meanwhile.
    let wire = capture.finish().unwrap();
    assert_eq!(wire.packets_on_port(7070), 0, "{}", wire.summary);
    assert!(
        !wire.contains(b"stream 1"),
        "the stream crossed in plaintext"
    );
    assert!(!wire.contains(b"call 1"), "a call crossed in plaintext");
}
