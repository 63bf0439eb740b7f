//! End-to-end: OTLP to a collector over TLS, and the metrics over OTLP. Both ztunnels and the
//! waypoint export spans, the audit/access log and their metrics (every second) to a receiver that
//! serves only TLS with a certificate from a CA of its own and requires a client certificate from
//! it. What `/metrics` shows arrives as OTLP (Istio's names without `_total`, the same labels,
//! cumulative sums and histograms), and nothing of it crosses the wire in clear: a capture of the
//! fabric holds the exports' packets but none of the names, services or lines they carry.

use serde_json::Value;
use veil_e2e::cluster::exec;
use veil_e2e::mesh::{Mesh, skip_unless_root};
use veil_e2e::otlp::{self, PROFILE_VIP, wait_for};
use veil_e2e::wire::Capture;

const SECRETS: [&str; 2] = ["token-5ecret-in-header", "query-5ecret"];

fn point<'a>(
    service: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Fn(&Value) -> bool + 'a {
    move |p| {
        p["service"] == service
            && p["name"] == name
            && labels.iter().all(|(k, v)| p["attributes"][*k] == *v)
    }
}

#[test]
fn spans_logs_and_metrics_reach_a_tls_collector_and_nothing_crosses_in_clear() {
    if skip_unless_root("otlp_tls") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let tls = otlp::tls_files(certs.path()).unwrap();
    let m = Mesh::start(otlp::demo(&otlp::tls_proxy_args(&tls))).expect("starting the mesh");
    let capture = Capture::start(
        &m.cluster.fabric,
        "br0",
        &m.dir.join("otlp.pcap"),
        &m.dir.join("tcpdump.log"),
    )
    .unwrap();
    let receiver = otlp::start_with(&m, Some(&tls)).expect("starting the OTLP receiver");

    // Traffic: a request through the user-data waypoint, and TCP to the ledger.
    let auth = format!("authorization: Bearer {}", SECRETS[0]);
    let url = format!("http://{PROFILE_VIP}/api/v1/profiles/1?key={}", SECRETS[1]);
    let out = exec(
        &m.cluster.pod("account-service").netns,
        &[
            "curl",
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &auth,
            &url,
        ],
    )
    .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    otlp::ledger_line(&m);

    // Metrics: node-b's ztunnel reports the ledger connection as Istio's standard sum…
    let ledger = [
        ("reporter", "destination"),
        ("source_workload", "account-service"),
        ("destination_workload", "ledger"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let opened = wait_for(
        &receiver.metrics,
        "istio_tcp_connections_opened for the ledger",
        point("veil-ztunnel", "istio_tcp_connections_opened", &ledger),
    );
    assert_eq!(opened["instance"], "node-b");
    assert_eq!(opened["kind"], "sum");
    assert_eq!(opened["monotonic"], true);
    assert_eq!(opened["temporality"], 2, "cumulative");
    assert_eq!(opened["value"], 1.0);
    let (start, time) = (
        opened["start"].as_u64().unwrap(),
        opened["time"].as_u64().unwrap(),
    );
    assert!(0 < start && start < time, "{opened}");
    let labels: Vec<(&str, &str)> = ledger.to_vec();
    assert_eq!(
        m.metric("node-b", "istio_tcp_connections_opened_total", &labels),
        1.0,
        "/metrics shows the same"
    );
    wait_for(&receiver.metrics, "the ledger's bytes", |p| {
        point("veil-ztunnel", "istio_tcp_received_bytes", &ledger)(p)
            && p["value"].as_f64() > Some(0.0)
    });
    // …and the waypoint its requests, with the duration histogram.
    let request = [
        ("reporter", "waypoint"),
        ("destination_workload", "user-profile-service"),
        ("response_code", "200"),
    ];
    let requests = wait_for(
        &receiver.metrics,
        "istio_requests at the waypoint",
        point("veil-waypoint", "istio_requests", &request),
    );
    assert_eq!(requests["value"], 1.0);
    let duration = wait_for(
        &receiver.metrics,
        "the request's duration",
        point(
            "veil-waypoint",
            "istio_request_duration_milliseconds",
            &request,
        ),
    );
    assert_eq!(duration["kind"], "histogram");
    assert_eq!(duration["count"], 1);
    let buckets: Vec<u64> = serde_json::from_value(duration["bucket_counts"].clone()).unwrap();
    assert_eq!(buckets.iter().sum::<u64>(), 1, "{duration}");
    assert_eq!(
        buckets.len(),
        duration["explicit_bounds"].as_array().unwrap().len() + 1
    );

    // Spans and log records travel the same TLS connection setup.
    wait_for(&receiver.spans, "the ledger's inbound tunnel span", |s| {
        s["name"] == "ztunnel inbound" && s["attributes"]["veil.destination.workload"] == "ledger"
    });
    wait_for(&receiver.logs, "node-b's access line", |r| {
        r["service"] == "veil-ztunnel" && r["body"] == "connection complete"
    });

    // Nothing the exports carried is readable on the wire; they did cross it.
    let captured = capture.finish().unwrap();
    assert!(
        captured.packets_on_port(4317) > 0,
        "no export crossed the fabric"
    );
    for clear in [
        "istio_tcp_connections_opened",
        "istio_request_duration_milliseconds",
        "veil-ztunnel",
        "ztunnel inbound",
        "connection complete",
        "account-service",
    ] {
        assert!(
            !captured.contains(clear.as_bytes()),
            "{clear} on the wire in clear"
        );
    }
    // No secret a client sent is in any metric.
    let exported = std::fs::read_to_string(&receiver.metrics).unwrap();
    for secret in SECRETS.iter().chain(&["/api/", "profiles"]) {
        assert!(!exported.contains(secret), "{secret} in a metric");
    }
}
