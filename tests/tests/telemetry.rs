//! End-to-end: the Telemetry resource, through the controller (local mode: the mesh file feeds
//! `veil-controller`, which resolves each workload's Telemetry and sends it to the ztunnels and the
//! waypoint with the workload). The `user-data` namespace turns its access log and its spans off
//! with one small object; the `finance` namespace keeps its access log; denials stay on the audit
//! stream; the trace of a request into `user-data` goes on past the hops that make no span.

use std::time::Duration;

use veil_e2e::mesh::{ACCOUNT_READS, Mesh, MeshSpec, skip_unless_root};
use veil_e2e::otlp::{self, LEDGER_VIP};

const PROFILE: &str = "http://10.96.0.20/api/v1/profiles/1";

/// The issue's example: a namespace whose traffic is not logged (and, here, not traced).
const USER_DATA_PRIVATE: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: Telemetry
    metadata: {name: private, namespace: user-data}
    spec:
      accessLog: {level: "off"}
      tracing: {disableSpanReporting: true}
"#;

fn mesh() -> Mesh {
    Mesh::start(MeshSpec {
        through_controller: Some(true),
        ..otlp::demo(&otlp::proxy_args(false))
    })
    .expect("starting the mesh")
}

/// Access-log lines (target `veil::access`) in `log` about `workload`.
fn access_lines(log: &str, workload: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("veil::access") && l.contains(workload))
        .count()
}

/// One GET to the profile service (through the waypoint) with `x-close` (the application ends the
/// connection, so the server ztunnel's tunnel ends and is logged) and one TCP exchange with the
/// ledger; returns the traceparent the profile service received.
fn traffic(m: &Mesh) -> String {
    let (code, _) = m
        .curl_with("account-service", &["-H", "x-close: 1"], PROFILE)
        .expect("GET");
    assert_eq!(code, 200);
    m.tcp(
        "account-service",
        &format!("{LEDGER_VIP}:9090"),
        "ledger-line",
        1,
    )
    .expect("TCP to the ledger");
    let netns = &m.cluster.pod("account-service").netns;
    let out = veil_e2e::cluster::exec(
        netns,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "x-close: 1",
            PROFILE,
        ],
    )
    .expect("GET");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("x-seen-traceparent: "))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn spans(m: &Mesh) -> String {
    std::fs::read_to_string(m.dir.join("spans.jsonl")).unwrap_or_default()
}

#[test]
fn a_user_data_telemetry_object_turns_that_namespaces_access_log_and_spans_off_and_no_other() {
    if skip_unless_root("telemetry_resource") {
        return;
    }
    let mut m = mesh();
    let _receiver = otlp::start(&m).expect("starting the OTLP receiver");

    // Before: both namespaces logged at ztunnel, user-data's requests at the waypoint, and the
    // waypoint makes a span for each request.
    traffic(&m);
    let logged = m.eventually(Duration::from_secs(10), || {
        let node_b = m.ztunnel_log("node-b");
        access_lines(&m.waypoint_log("waypoint"), "user-profile-service") >= 2
            && access_lines(&node_b, "user-profile-service") >= 2
            && access_lines(&node_b, "finance/ledger") >= 1
            && spans(&m).contains("\"service\":\"veil-waypoint\"")
    });
    assert!(
        logged,
        "before the Telemetry: waypoint log:\n{}\nnode-b log:\n{}",
        m.waypoint_log("waypoint"),
        m.ztunnel_log("node-b")
    );

    // The object arrives through the controller: once requests to user-data stop being logged…
    m.set_policies(&format!("{ACCOUNT_READS}{USER_DATA_PRIVATE}"))
        .unwrap();
    let quiet = m.eventually(Duration::from_secs(30), || {
        let before = (
            access_lines(&m.waypoint_log("waypoint"), "user-profile-service"),
            access_lines(&m.ztunnel_log("node-b"), "user-profile-service"),
        );
        traffic(&m);
        std::thread::sleep(Duration::from_millis(500));
        let after = (
            access_lines(&m.waypoint_log("waypoint"), "user-profile-service"),
            access_lines(&m.ztunnel_log("node-b"), "user-profile-service"),
        );
        before == after
    });
    assert!(quiet, "user-data is still logged after its Telemetry");
    // …it stays so over more requests, while the ledger's connections still are logged.
    let waypoint_before = access_lines(&m.waypoint_log("waypoint"), "user-profile-service");
    let profile_before = access_lines(&m.ztunnel_log("node-b"), "user-profile-service");
    let ledger_before = access_lines(&m.ztunnel_log("node-b"), "finance/ledger");
    let spans_before = spans(&m).lines().count();
    let mut seen = String::new();
    for _ in 0..3 {
        seen = traffic(&m);
    }
    let ledger_logged = m.eventually(Duration::from_secs(10), || {
        access_lines(&m.ztunnel_log("node-b"), "finance/ledger") >= ledger_before + 3
    });
    assert!(ledger_logged, "finance's access log went off too");
    assert_eq!(
        access_lines(&m.waypoint_log("waypoint"), "user-profile-service"),
        waypoint_before
    );
    assert_eq!(
        access_lines(&m.ztunnel_log("node-b"), "user-profile-service"),
        profile_before
    );

    // Denials are not access log: still on the audit stream.
    let (code, _) = m
        .curl_with("account-service", &["-X", "DELETE"], PROFILE)
        .expect("DELETE");
    assert_eq!(code, 403);
    let audited = m.eventually(Duration::from_secs(10), || {
        m.waypoint_log("waypoint")
            .lines()
            .filter(|l| l.contains("request_denied"))
            .count()
            >= 1
    });
    assert!(audited, "the denial is not on the audit stream");

    // No spans for user-data's hops any more; the trace the client's ztunnel started still reaches
    // the application (the waypoint passes it on unchanged).
    let parent = seen
        .split('-')
        .nth(2)
        .expect("the application received a traceparent")
        .to_owned();
    let new_spans = || -> Vec<serde_json::Value> {
        spans(&m)
            .lines()
            .skip(spans_before)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let linked = m.eventually(Duration::from_secs(10), || {
        new_spans()
            .iter()
            .any(|s| s["span_id"] == parent.as_str() && s["name"] == "ztunnel outbound")
    });
    assert!(
        linked,
        "the application's traceparent {seen} names no client tunnel span: {:?}",
        new_spans()
    );
    let user_data = |s: &serde_json::Value| {
        s["service"] == "veil-waypoint"
            || (s["name"] == "ztunnel inbound"
                && s["attributes"]["veil.destination.workload"] == "user-profile-service")
    };
    assert!(
        !new_spans().iter().any(user_data),
        "a span for user-data after its Telemetry: {:?}",
        new_spans()
    );
}
