//! End-to-end: a ztunnel upgrade in Kubernetes mode (the controller fed by the harness's fake API
//! server, ztunnel admitting kubelet probes) replaced mid-traffic on both nodes, with a long-lived
//! stream, a request loop and the nodes' "kubelets" probing throughout. Needs root; skips with a
//! loud message otherwise.

use std::time::Duration;

use serde_json::json;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};

const SETTLE: Duration = Duration::from_secs(15);

/// Traffic for an upgrade: one long-lived stream and a new connection every 50 ms, to a server
/// echoing as it reads; what each saw goes to standard output (see the script).
const UPGRADE_TRAFFIC: &str = include_str!("upgrade_traffic.py");

#[test]
fn upgrading_ztunnel_mid_traffic_refuses_no_connection_and_cuts_no_stream() {
    use veil_e2e::wire::Capture;
    if skip_unless_root("upgrade") {
        return;
    }
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "shop", "node-a"),
            PodSpec::new("server", "shop", "node-b"),
        ],
        kubernetes: true,
        ztunnel_args: vec!["--kubelet-probes=true".into()],
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
    let old_log = std::fs::read_to_string(m.dir.join("ztunnel-node-a.log.1")).unwrap();
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
