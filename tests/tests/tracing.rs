//! End-to-end: traces. Both ztunnels and the waypoint export spans over OTLP/gRPC to a receiver
//! built from the published `opentelemetry-proto` definitions (`otlp-receiver`), and each hop is
//! the child of the one before: the client's ztunnel (outbound tunnel) → the waypoint (the
//! request) → the server's ztunnel (inbound tunnel) → the application, which receives a
//! `traceparent` naming the waypoint's span. A request that carries its own trace is continued
//! (and linked to its tunnel); TCP between ztunnels is linked too; a denied request is a span with
//! the policy that denied it. No span holds a credential, a query value, a path or an address. With
//! `--otlp-logs`, the audit stream and the access log reach the receiver as log records, and
//! nothing else does.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::Value;
use veil_e2e::cluster::exec;
use veil_e2e::mesh::{Mesh, skip_unless_root};
use veil_e2e::otlp::{self, PROFILE_VIP, received as spans, wait_for};

const SECRETS: [&str; 3] = ["token-5ecret-in-header", "cookie-5ecret", "query-5ecret"];
/// The trace a client starts itself (W3C's example IDs).
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn mesh() -> Mesh {
    Mesh::start(otlp::demo(&otlp::proxy_args(true))).expect("starting the mesh")
}

/// `curl` from the account service; returns the response headers (lower-cased names) and status.
fn request(m: &Mesh, extra: &[&str], method: &str) -> (u16, HashMap<String, String>) {
    let [token, cookie, query] = SECRETS;
    let auth = format!("authorization: Bearer {token}");
    let cookie = format!("cookie: s={cookie}");
    let url = format!("http://{PROFILE_VIP}/api/v1/profiles/1?key={query}");
    // `x-close`: the application ends its connection after answering, so the tunnel to it ends
    // and its span is exported (a tunnel's span is exported when the tunnel ends).
    let mut argv = vec![
        "curl",
        "-s",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-X",
        method,
        "-H",
        &auth,
        "-H",
        &cookie,
        "-H",
        "x-close: 1",
    ];
    argv.extend(extra);
    argv.push(&url);
    let out = exec(&m.cluster.pod("account-service").netns, &argv).expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?} {:?}", out.stderr));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn by_id<'a>(id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |s| s["span_id"] == id
}

/// `(trace_id, span_id)` of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[3], "01", "sampled: {traceparent}");
    (parts[1].to_owned(), parts[2].to_owned())
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

fn is(span: &Value, service: &str, name: &str, kind: i64) -> bool {
    span["service"] == service && span["name"] == name && span["kind"] == kind
}

#[test]
fn spans_link_ztunnel_waypoint_ztunnel_and_the_application_sees_the_trace() {
    if skip_unless_root("tracing_spans") {
        return;
    }
    let m = mesh();
    let receiver = otlp::start(&m).expect("starting the OTLP receiver");
    let file = receiver.spans.clone();

    // 1. A request with no trace of its own: the client's ztunnel starts one.
    let (status, headers) = request(&m, &[], "GET");
    assert_eq!(status, 200);
    let seen = headers
        .get("x-seen-traceparent")
        .expect("the application received a traceparent");
    let (trace, waypoint_id) = ids(seen);
    let waypoint = wait_for(&file, "the waypoint's request span", by_id(&waypoint_id));
    assert!(is(&waypoint, "veil-waypoint", "GET", SERVER), "{waypoint}");
    assert_eq!(waypoint["trace_id"], trace.as_str());
    let attrs = &waypoint["attributes"];
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(attrs["veil.decision"], "allow");
    assert_eq!(attrs["veil.policy"], "user-data/account-reads");
    assert_eq!(
        attrs["veil.source.principal"],
        "spiffe://cluster.local/ns/production/sa/account-service"
    );
    assert_eq!(
        attrs["veil.destination.service"],
        "user-profile-service.user-data.svc.cluster.local"
    );
    let parent = waypoint["parent_span_id"].as_str().unwrap().to_owned();
    let outbound = wait_for(&file, "the client ztunnel's tunnel span", by_id(&parent));
    assert!(
        is(&outbound, "veil-ztunnel", "ztunnel outbound", CLIENT),
        "{outbound}"
    );
    assert_eq!(outbound["instance"], "node-a");
    assert_eq!(outbound["trace_id"], trace.as_str());
    assert_eq!(outbound["parent_span_id"], "", "a root");
    assert_eq!(
        outbound["attributes"]["veil.destination.workload"],
        "waypoint"
    );
    let inbound = wait_for(&file, "the server ztunnel's tunnel span", |s| {
        s["parent_span_id"] == waypoint_id.as_str()
    });
    assert!(
        is(&inbound, "veil-ztunnel", "ztunnel inbound", SERVER),
        "{inbound}"
    );
    assert_eq!(inbound["instance"], "node-b");
    assert_eq!(inbound["trace_id"], trace.as_str());
    assert_eq!(
        inbound["attributes"]["veil.source.principal"],
        "spiffe://cluster.local/ns/user-data/sa/waypoint"
    );
    assert_eq!(
        inbound["attributes"]["veil.destination.workload"],
        "user-profile-service"
    );

    // 2. A request that carries its own trace: the waypoint continues it and links the tunnel.
    let own = format!("traceparent: 00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, headers) = request(&m, &["-H", &own], "GET");
    assert_eq!(status, 200);
    let (trace, waypoint_id) = ids(&headers["x-seen-traceparent"]);
    assert_eq!(trace, CLIENT_TRACE, "the client's trace goes on");
    assert_ne!(waypoint_id, CLIENT_SPAN);
    let waypoint = wait_for(
        &file,
        "the waypoint's span in the client's trace",
        by_id(&waypoint_id),
    );
    assert_eq!(waypoint["parent_span_id"], CLIENT_SPAN);
    let link = waypoint["links"][0]["span_id"].as_str().expect("a link");
    let tunnel = wait_for(&file, "the linked tunnel span", by_id(link));
    assert!(
        is(&tunnel, "veil-ztunnel", "ztunnel outbound", CLIENT),
        "{tunnel}"
    );
    assert_ne!(tunnel["trace_id"], CLIENT_TRACE);

    // 3. A request the policy denies: a span that says so, and by which policy's absence.
    let (status, _) = request(&m, &[], "DELETE");
    assert_eq!(status, 403);
    let denied = wait_for(&file, "the denied request's span", |s| {
        is(s, "veil-waypoint", "DELETE", SERVER)
    });
    assert_eq!(denied["attributes"]["veil.decision"], "deny");
    assert_eq!(denied["attributes"]["http.response.status_code"], 403);

    // 4. TCP between ztunnels (no waypoint): the server's tunnel span is the client's child.
    otlp::ledger_line(&m);
    let ledger_in = wait_for(&file, "the ledger's inbound tunnel", |s| {
        is(s, "veil-ztunnel", "ztunnel inbound", SERVER)
            && s["attributes"]["veil.destination.workload"] == "ledger"
    });
    let parent = ledger_in["parent_span_id"].as_str().unwrap();
    let ledger_out = wait_for(
        &file,
        "the account service's tunnel to the ledger",
        by_id(parent),
    );
    assert!(is(&ledger_out, "veil-ztunnel", "ztunnel outbound", CLIENT));
    assert_eq!(ledger_out["trace_id"], ledger_in["trace_id"]);
    assert_eq!(
        ledger_out["attributes"]["veil.destination.service"],
        "ledger.finance.svc.cluster.local"
    );
    assert!(ledger_in["attributes"]["veil.bytes_received"].as_i64() > Some(0));

    // With --otlp-logs, the audit stream and the access log arrive as log records too.
    let logs = receiver.logs.clone();
    let denial = wait_for(&logs, "the denial on the audit stream", |r| {
        r["service"] == "veil-waypoint" && r["attributes"]["event"] == "request_denied"
    });
    assert_eq!(denial["attributes"]["audit"], "v1");
    assert_eq!(denial["attributes"]["status"], 403);
    let access = wait_for(&logs, "ztunnel's access line for the ledger", |r| {
        r["service"] == "veil-ztunnel"
            && r["body"] == "connection complete"
            && r["attributes"]["destination_workload"] == "finance/ledger"
    });
    assert_eq!(access["instance"], "node-b");
    let exported = std::fs::read_to_string(&logs).unwrap();
    assert!(
        exported.lines().all(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            let a = &r["attributes"];
            a["audit"] == "v1"
                || r["body"] == "connection complete"
                || r["body"] == "request"
                || r["body"] == "connection aborted"
                || r["body"] == "audited connection"
        }),
        "only the audit stream and the access log are exported:\n{exported}"
    );
    for secret in SECRETS {
        assert!(
            !exported.contains(secret),
            "{secret} in an exported log record"
        );
    }

    // Nothing a client sent, no path and no address in any span.
    let all = spans(&file);
    assert!(all.len() >= 8, "{} spans", all.len());
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in SECRETS.iter().chain(&["/api/", "profiles"]) {
        assert!(!text.contains(secret), "{secret} in a span");
    }
    for span in &all {
        for (key, value) in span["attributes"].as_object().unwrap() {
            let value = value.as_str().unwrap_or_default();
            assert!(value.parse::<IpAddr>().is_err(), "an address in {key}");
            assert!(
                value.split(':').next().unwrap().parse::<IpAddr>().is_err(),
                "an address in {key}={value}"
            );
        }
    }
}
