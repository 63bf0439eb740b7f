//! End-to-end: a real Prometheus (Debian's `prometheus`) scrapes both ztunnels and the waypoint of a
//! running mesh, and the queries of Istio's standard Grafana dashboards return the series of the
//! traffic sent — HTTP through the waypoint, TCP straight between ztunnels — named after workloads
//! and services, with nothing a client sent (tokens, cookies, query values, paths) and no address in
//! any label.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;
use veil_e2e::cluster::exec;
use veil_e2e::mesh::{
    ACCOUNT_READS, Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, bin, skip_unless_root,
};
use veil_e2e::process::Proc;

const PROFILE_VIP: &str = "10.96.0.20";
const LEDGER_VIP: &str = "10.96.0.30";
const PROMETHEUS: &str = "127.0.0.1:9091";
/// What the clients send that must never show up in telemetry.
const SECRETS: [&str; 3] = ["token-5ecret-in-header", "cookie-5ecret", "query-5ecret"];

fn mesh() -> Mesh {
    let labelled = |name: &str, namespace: &str, node: &str, version: &str| {
        let mut pod = PodSpec::new(name, namespace, node);
        pod.labels.insert("app".into(), name.into());
        pod.labels.insert("version".into(), version.into());
        pod
    };
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            labelled("account-service", "production", "node-a", "v1"),
            labelled("user-profile-service", "user-data", "node-b", "v3"),
            labelled("ledger", "finance", "node-b", "v2"),
        ],
        services: ServiceSpec::demo(PROFILE_VIP, LEDGER_VIP),
        waypoints: vec![WaypointSpec::demo(Vec::new())],
        policies: ACCOUNT_READS.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

/// Prometheus in the control plane's namespace, scraping every second.
fn prometheus(m: &Mesh) -> Proc {
    let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("this test needs Prometheus: apt-get install prometheus (.ci/run does)");
    let targets = |addrs: Vec<String>| {
        addrs
            .iter()
            .map(|a| format!("'{a}:15020'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let nodes = targets(m.cluster.nodes.iter().map(|n| n.ip.to_string()).collect());
    let waypoint = targets(vec![m.cluster.pod("waypoint").ip.to_string()]);
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: ztunnel\n  static_configs: [{{targets: [{nodes}]}}]\n\
         - job_name: waypoint\n  static_configs: [{{targets: [{waypoint}]}}]\n"
    );
    let dir = m.dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let config_arg = format!("--config.file={}", file.display());
    let storage = format!("--storage.tsdb.path={}", dir.join("data").display());
    let listen = format!("--web.listen-address={PROMETHEUS}");
    Proc::spawn(
        "prometheus",
        Some(&m.cluster.control_plane),
        &[binary, &config_arg, &storage, &listen, "--log.level=warn"],
        &[],
        &m.dir.join("prometheus.log"),
    )
    .expect("starting Prometheus")
}

/// Client traffic until dropped: GETs the policy allows and DELETEs it denies, through the
/// waypoint, each with credentials and a query value; TCP exchanges with the ledger.
fn traffic(m: &Mesh) -> Vec<Proc> {
    let [token, cookie, query] = SECRETS;
    let http = format!(
        "while :; do \
           curl -s -o /dev/null -H 'authorization: Bearer {token}' -H 'cookie: s={cookie}' \
             'http://{PROFILE_VIP}/api/v1/profiles/1?key={query}'; \
           curl -s -o /dev/null -X DELETE 'http://{PROFILE_VIP}/api/v1/profiles/2?key={query}'; \
           sleep 0.1; \
         done"
    );
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let tcp =
        format!("while :; do {app} tcp {LEDGER_VIP}:9090 ledger-line --count 3; sleep 0.1; done");
    let netns = m.cluster.pod("account-service").netns.clone();
    [("http", http), ("tcp", tcp)]
        .into_iter()
        .map(|(name, script)| {
            Proc::spawn(
                &format!("{name} client"),
                Some(&netns),
                &["sh", "-c", &script],
                &[],
                &m.dir.join(format!("{name}-client.log")),
            )
            .expect("starting a client")
        })
        .collect()
}

/// Asks Prometheus `path` (an API call with its query string).
fn api(m: &Mesh, path: &str, params: &[(&str, &str)]) -> Value {
    let mut argv = vec!["curl", "-s", "-m", "5", "--get"];
    let encoded: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for p in &encoded {
        argv.extend(["--data-urlencode", p.as_str()]);
    }
    let url = format!("http://{PROMETHEUS}{path}");
    argv.push(&url);
    let out = exec(&m.cluster.control_plane, &argv).expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The result vector of a PromQL query: each series' labels and value.
fn query(m: &Mesh, promql: &str) -> Vec<(Value, f64)> {
    let answer = api(m, "/api/v1/query", &[("query", promql)]);
    answer["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                    (s["metric"].clone(), value.unwrap_or(f64::NAN))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A dashboard query with its Grafana variables filled in.
fn dashboard(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut q = expr.replace("$__rate_interval", "30s");
    for (name, value) in vars {
        q = q.replace(&format!("${name}"), value);
    }
    q
}

/// The metric families a query names (`istio_…`/`veil_…`, without `_total`, `_bucket`…).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("istio_") || t.starts_with("veil_"))
        .map(|t| {
            ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| t.strip_suffix(suffix))
                .unwrap_or(t)
                .to_owned()
        })
        .collect()
}

/// A query of veil's dashboard with Grafana's rate interval filled in.
fn dashboard_expr(expr: &str) -> String {
    dashboard(expr, &[])
}

/// Polls until `check` holds for the answer to `promql`, or reports the last answer.
fn until(m: &Mesh, what: &str, promql: &str, check: impl Fn(&[(Value, f64)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = query(m, promql);
        if check(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: {promql}\nanswered {last:?}");
}

fn has(labels: &Value, pairs: &[(&str, &str)]) -> bool {
    pairs.iter().all(|(k, v)| labels[*k] == *v)
}

#[test]
fn prometheus_answers_istios_dashboard_queries_for_the_mesh_traffic() {
    if skip_unless_root("prometheus_dashboards") {
        return;
    }
    let m = mesh();
    let _prometheus = prometheus(&m);
    // Every target scraped and parsed (the exposition is OpenMetrics).
    until(&m, "all targets up", "sum(up)", |r| {
        r.first().is_some_and(|(_, v)| *v == 3.0)
    });
    let _clients = traffic(&m);

    // Istio Mesh Dashboard.
    until(
        &m,
        "global request volume",
        &dashboard(
            r#"round(sum (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), 0.01)"#,
            &[],
        ),
        |r| r.first().is_some_and(|(_, v)| *v > 0.5),
    );
    until(
        &m,
        "global success rate (no 5xx)",
        &dashboard(
            r#"sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code!~"5.."}[$__rate_interval])) / sum (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval]))"#,
            &[],
        ),
        |r| r.first().is_some_and(|(_, v)| *v == 1.0),
    );
    until(
        &m,
        "4xx (the denied DELETEs)",
        &dashboard(
            r#"round(sum (rate(istio_requests_total{reporter=~"source|waypoint",response_code=~"4.."}[$__rate_interval])), 0.01)or vector(0)"#,
            &[],
        ),
        |r| r.first().is_some_and(|(_, v)| *v > 0.2),
    );
    let profile = [
        ("destination_workload", "user-profile-service"),
        ("destination_workload_namespace", "user-data"),
        (
            "destination_service",
            "user-profile-service.user-data.svc.cluster.local",
        ),
    ];
    until(
        &m,
        "HTTP workloads",
        &dashboard(
            r#"label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
            &[],
        ),
        |r| {
            r.iter().any(|(l, v)| {
                has(l, &profile)
                    && l["destination_workload_var"] == "user-profile-service.user-data"
                    && *v > 0.5
            })
        },
    );
    until(
        &m,
        "P50 latency of the HTTP workload",
        &dashboard(
            r#"label_join(histogram_quantile(0.5, sum by (le,destination_workload,destination_workload_namespace) (rate(istio_request_duration_milliseconds_bucket{reporter=~"source|waypoint"}[$__rate_interval]))), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
            &[],
        ),
        |r| {
            r.iter()
                .any(|(l, v)| has(l, &profile[..2]) && v.is_finite() && *v > 0.0)
        },
    );
    let ledger = [
        ("destination_workload", "ledger"),
        ("destination_workload_namespace", "finance"),
        ("destination_service", "ledger.finance.svc.cluster.local"),
    ];
    until(
        &m,
        "TCP workloads",
        &dashboard(
            r#"label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_tcp_received_bytes_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
            &[],
        ),
        |r| r.iter().any(|(l, v)| has(l, &ledger) && *v > 0.0),
    );

    // Istio Workload Dashboard, for the ledger as the server's ztunnel reports it.
    let ledger_vars = [
        ("qrep", "destination"),
        ("namespace", "finance"),
        ("workload", "ledger"),
        ("srcwl", ".*"),
        ("srcns", ".*"),
    ];
    until(
        &m,
        "inbound TCP bytes",
        &dashboard(
            r#"sum(irate(istio_tcp_sent_bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[$__rate_interval])) + sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", destination_workload_namespace=~"$namespace", destination_workload=~"$workload"}[$__rate_interval]))"#,
            &ledger_vars,
        ),
        |r| r.first().is_some_and(|(_, v)| *v > 0.0),
    );
    until(
        &m,
        "inbound mTLS TCP by source workload",
        &dashboard(
            r#"round(sum(irate(istio_tcp_received_bytes_total{reporter=~"$qrep", connection_security_policy="mutual_tls", destination_workload_namespace=~"$namespace", destination_workload=~"$workload", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace), 0.001)"#,
            &ledger_vars,
        ),
        |r| {
            r.iter().any(|(l, v)| {
                has(
                    l,
                    &[
                        ("source_workload", "account-service"),
                        ("source_workload_namespace", "production"),
                    ],
                ) && *v > 0.0
            })
        },
    );
    // The client's side of the same traffic (Workload Dashboard, outbound by service).
    until(
        &m,
        "outbound mTLS TCP by destination service",
        &dashboard(
            r#"round(sum(irate(istio_tcp_received_bytes_total{connection_security_policy="mutual_tls", reporter="source", source_workload_namespace=~"$namespace", source_workload=~"$workload", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service), 0.001)"#,
            &[
                ("namespace", "production"),
                ("workload", "account-service"),
                ("dstsvc", ".*"),
            ],
        ),
        |r| r.iter().any(|(l, v)| has(l, &ledger[2..]) && *v > 0.0),
    );

    // The waypoint names its cross-namespace client (which it does not list) by what the
    // client's ztunnel sent, bounded by the client's identity.
    until(
        &m,
        "requests at the waypoint by source and status",
        r#"sum by (source_workload, source_workload_namespace, source_principal, source_version, response_code) (istio_requests_total{reporter="waypoint"})"#,
        |r| {
            ["200", "403"].iter().all(|code| {
                r.iter().any(|(l, _)| {
                    has(
                        l,
                        &[
                            ("source_workload", "account-service"),
                            ("source_workload_namespace", "production"),
                            (
                                "source_principal",
                                "spiffe://cluster.local/ns/production/sa/account-service",
                            ),
                            ("source_version", "v1"),
                            ("response_code", code),
                        ],
                    )
                })
            })
        },
    );

    // veil's own dashboard (charts/veil/dashboards): every query of every panel is valid PromQL
    // and shows the traffic (panels of things that did not happen show 0, not "no data").
    let dashboard: Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/veil/dashboards/veil-mesh.json"
    )))
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    // Every metric a panel names is one the proxies register (`or vector(0)` would hide a misspelt
    // one; a family that never counted anything is not in the exposition, so the registry's source
    // is what is read).
    let registry = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mesh/src/telemetry/metrics.rs"
    ));
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = dashboard_expr(target["expr"].as_str().unwrap());
            let title = panel["title"].as_str().unwrap();
            for name in metric_names(&expr) {
                let registered = name
                    .strip_prefix("istio_")
                    .or_else(|| name.strip_prefix("veil_"))
                    .is_some_and(|short| registry.contains(&format!("\"{short}\",")));
                assert!(registered, "{title}: no metric {name} is registered");
            }
            let answer = api(&m, "/api/v1/query", &[("query", &expr)]);
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            until(&m, title, &expr, |r| {
                !r.is_empty() && r.iter().all(|(_, v)| v.is_finite())
            });
        }
    }
    until(
        &m,
        "denials by policy",
        &dashboard_expr(
            r#"sum by (policy) (rate(veil_policy_decisions_total{decision="deny"}[$__rate_interval]))"#,
        ),
        |r| {
            r.iter()
                .any(|(l, v)| l["policy"] == "user-data/account-reads" && *v > 0.0)
        },
    );

    // The waypoint's and ztunnels' audit lines (the denied DELETEs among them) follow the schema.
    let lines = audit_lines(&m);
    assert!(
        lines.iter().any(|l| l["event"] == "request_denied"
            && l["policy"] == "user-data/account-reads"
            && l["status"] == 403),
        "{lines:#?}"
    );
    check_audit_schema(&lines);

    // Nothing a client sent in any log of the mesh: ztunnels', the waypoint's (access and audit
    // lines included), the controller's, the CA's.
    let scanned = scan_logs_for_secrets(&m.dir);
    let waypoint_log = m.waypoint_log("waypoint");
    // The waypoint logged the requests (metadata, the default): without their paths.
    assert!(
        scanned >= 4
            && waypoint_log.contains("bytes_sent")
            && !waypoint_log.contains("/api/v1/profiles"),
        "{scanned} files scanned; the waypoint's log:\n{waypoint_log}"
    );

    // Bounded labels: nothing a client sent, no path and no address, in any series of the mesh.
    let series = api(
        &m,
        "/api/v1/series",
        &[("match[]", r#"{__name__=~"istio_.*|veil_.*"}"#)],
    );
    let series = series["data"].as_array().cloned().unwrap_or_default();
    assert!(series.len() > 10, "{series:?}");
    for s in &series {
        let text = s.to_string();
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for forbidden in ["/api", "profiles", "10.2", "10.96.", "10.10."] {
            let labels = s.as_object().unwrap();
            for (k, v) in labels {
                if k == "instance" {
                    continue;
                }
                assert!(
                    !v.as_str().unwrap_or_default().contains(forbidden),
                    "{forbidden} in {k}={v}"
                );
            }
        }
    }
}

/// Every file the run wrote that a proxy, the controller or the CA could have put a client's
/// secret in: everything under the mesh's directory except the applications' and clients' own
/// output (an application sees its requests) and Prometheus's storage (checked through its API).
/// Returns how many files were read, panicking on the first secret found.
fn scan_logs_for_secrets(dir: &std::path::Path) -> usize {
    let mut scanned = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if name != "prometheus" {
                pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
            continue;
        }
        if name.starts_with("app-") || name.ends_with("-client.log") || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for secret in SECRETS {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} in {}", path.display());
        }
        scanned += 1;
    }
    scanned
}

/// The fields of the audit lines of a policy's status.
const POLICY_STATUS: &[&str] = &[
    "kind",
    "policy",
    "generation",
    "reason",
    "detail",
    "enforced",
    "enforcement",
    "enforcement_detail",
];

/// The fields every line of each audit event carries (docs/observability.md, schema `v1`).
const AUDIT_EVENTS: [(&str, &[&str]); 11] = [
    (
        "connection_denied",
        &["source", "destination", "policy", "reason"],
    ),
    (
        "connection_refused",
        &["source", "destination", "reason", "control_plane"],
    ),
    (
        "connection_closed",
        &[
            "source",
            "source_ip",
            "destination",
            "port",
            "policy",
            "reason",
        ],
    ),
    (
        "request_denied",
        &[
            "source",
            "destination",
            "policy",
            "rule",
            "status",
            "reason",
        ],
    ),
    (
        "certificate_issued",
        &["caller", "node", "identity", "serial", "not_after", "key"],
    ),
    (
        "certificate_refused",
        &["code", "caller", "node", "identity", "peer", "reason"],
    ),
    ("policy_accepted", POLICY_STATUS),
    ("policy_rejected", POLICY_STATUS),
    ("policy_removed", &["kind", "policy"]),
    (
        "workload_enrolled",
        &["node", "workload", "uid", "identity", "netns"],
    ),
    ("workload_released", &["node", "workload", "uid"]),
];

/// Every audit line the mesh's processes wrote (their logs are JSON lines in the mesh's directory).
fn audit_lines(m: &Mesh) -> Vec<Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&m.dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "veil::audit"),
        );
    }
    lines
}

fn audited(m: &Mesh, event: &str, pairs: &[(&str, &str)]) -> bool {
    audit_lines(m)
        .iter()
        .any(|l| l["event"] == event && has(l, pairs))
}

#[test]
fn one_audit_stream_records_enrolment_certificates_policies_and_denials_with_a_stable_schema() {
    if skip_unless_root("audit_stream") {
        return;
    }
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into()],
        pods: vec![
            PodSpec::new("client", "shop", "node-a"),
            PodSpec::new("server", "shop", "node-a"),
        ],
        kubernetes: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let server = format!("{}:9090", m.cluster.pod("server").ip);
    assert!(m.tcp("client", &server, "hello", 1).is_ok());
    let settle = Duration::from_secs(20);

    // A policy accepted, one rejected, a connection it denies, then the policy removed.
    let policy = |name: &str, spec: Value| {
        serde_json::json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("ap-{name}"), "generation": 1},
            "spec": spec})
    };
    let api = m.api();
    api.put(
        "authorizationpolicies",
        "no-client",
        &policy(
            "no-client",
            serde_json::json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}),
        ),
    )
    .unwrap();
    api.put(
        "authorizationpolicies",
        "broken",
        &policy(
            "broken",
            // It fails closed on what it selects: nothing here.
            serde_json::json!({"selector": {"matchLabels": {"app": "nobody"}},
                "rules": [{"from": [{"source": {"ipBlocks": ["not-an-address"]}}]}]}),
        ),
    )
    .unwrap();
    assert!(m.eventually(settle, || m.tcp("client", &server, "hello", 1).is_err()));
    // A new connection, refused on arrival (the one above may have been cut as the policy came).
    assert!(m.tcp("client", &server, "hello", 1).is_err());
    assert!(
        m.eventually(settle, || audited(
            &m,
            "policy_accepted",
            &[("policy", "shop/no-client")]
        ) && audited(
            &m,
            "policy_rejected",
            &[("policy", "shop/broken")]
        )),
        "{:#?}",
        audit_lines(&m)
    );
    m.api()
        .delete("authorizationpolicies", "no-client")
        .unwrap();
    assert!(m.eventually(settle, || audited(
        &m,
        "policy_removed",
        &[
            ("policy", "shop/no-client"),
            ("kind", "AuthorizationPolicy")
        ]
    )));

    // A certificate refused: a request with a token the API server does not know.
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let root = m.root_cert().to_string_lossy().into_owned();
    let ca = m.ca_address();
    let client = m.pod("client").identity();
    let out = m
        .run_in_pod(
            "client",
            &[
                &app,
                "hbone-direct",
                &server.replace(":9090", ":15008"),
                &server,
                "--identity",
                &client,
                "--ca",
                &ca,
                "--root",
                &root,
                "--token",
                "no-such-token",
                "--expect",
                &client,
            ],
        )
        .unwrap();
    assert!(!out.status.success());

    // Both pods released when their namespace leaves the mesh.
    m.label_namespace("shop", false).unwrap();
    assert!(m.eventually(settle, || {
        audit_lines(&m)
            .iter()
            .filter(|l| l["event"] == "workload_released")
            .count()
            == 2
    }));

    let lines = audit_lines(&m);
    let server_identity = m.pod("server").identity();
    for (event, pairs) in [
        (
            "workload_enrolled",
            vec![("workload", "shop/client"), ("node", "node-a")],
        ),
        (
            "workload_released",
            vec![("workload", "shop/server"), ("node", "node-a")],
        ),
        ("certificate_issued", vec![("identity", client.as_str())]),
        ("certificate_refused", vec![("component", "ca")]),
        (
            "connection_denied",
            vec![
                ("source", client.as_str()),
                ("destination", server_identity.as_str()),
                ("policy", "shop/no-client"),
            ],
        ),
    ] {
        assert!(
            lines.iter().any(|l| l["event"] == event && has(l, &pairs)),
            "no {event} {pairs:?} in {lines:#?}"
        );
    }
    check_audit_schema(&lines);
}

/// Every audit line: the schema version, a known event from a known component, and its fields.
fn check_audit_schema(lines: &[Value]) {
    for line in lines {
        assert_eq!(line["audit"], "v1", "{line}");
        assert!(
            ["ztunnel", "waypoint", "ca", "controller"]
                .contains(&line["component"].as_str().unwrap_or("")),
            "{line}"
        );
        let event = line["event"].as_str().unwrap_or_default();
        let (_, fields) = AUDIT_EVENTS
            .iter()
            .find(|(name, _)| *name == event)
            .unwrap_or_else(|| panic!("unknown audit event in {line}"));
        for field in *fields {
            assert!(
                line.get(*field).is_some(),
                "{event} without {field}: {line}"
            );
        }
    }
}
