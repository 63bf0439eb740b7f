//! End-to-end: the `veil` command against a running mesh.
//!
//! `veil explain`, asked about the mesh file the running mesh was started from and about the live
//! mesh (the controller's resources, decoded as the proxies decode them), agrees with what the
//! data plane actually does — every case of the L7 policy test (through the waypoint, by
//! service and by pod address, canonicalized paths, plaintext from outside the mesh) and of L4
//! policy under STRICT (allowed, denied, plaintext refused). `veil config` shows what a ztunnel and
//! a waypoint hold, live connections included.

use veil_e2e::cluster::exec;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, bin, skip_unless_root};

const PROFILE_VIP: &str = "10.96.0.20";
const LEDGER_VIP: &str = "10.96.0.30";

const POLICIES: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: user-profile-access, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: user-profile-service}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
          to: [{operation: {methods: [GET], paths: [/api/v1/profiles/*]}}]
        - from: [{source: {principals: [cluster.local/ns/production/sa/admin-service]}}]
          to: [{operation: {methods: [GET, PUT], paths: [/api/v1/profiles/*]}}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: ledger-writers, namespace: finance}
    spec:
      selector: {matchLabels: {app: ledger}}
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: strict, namespace: finance}
    spec: {mtls: {mode: STRICT}}
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: legacy-clients, namespace: production}
    spec: {mtls: {mode: PERMISSIVE}}
"#;

fn mesh() -> Mesh {
    let app = |name: &str, namespace: &str, node: &str| {
        let mut pod = PodSpec::new(name, namespace, node);
        pod.labels.insert("app".into(), name.into());
        pod
    };
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("account-service", "production", "node-a"),
            PodSpec::new("admin-service", "production", "node-a"),
            PodSpec::new("reporting", "production", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            app("user-profile-service", "user-data", "node-b"),
            app("ledger", "finance", "node-b"),
        ],
        services: ServiceSpec::demo(PROFILE_VIP, LEDGER_VIP),
        waypoints: vec![WaypointSpec::demo(Vec::new())],
        policies: POLICIES.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

/// One case: who, to what (as `veil explain --to` and as an address), and the request.
struct Case {
    from: &'static str,
    to: &'static str,
    address: String,
    port: u16,
    /// Method and path of an HTTP request; `None`: TCP.
    http: Option<(&'static str, &'static str)>,
}

/// What the data plane did: the request answered 2xx, or the TCP echo came back.
fn data_plane(m: &Mesh, case: &Case) -> bool {
    match case.http {
        Some((method, path)) => {
            let url = format!("http://{}:{}{path}", case.address, case.port);
            let args = ["-X", method, "--path-as-is"];
            // Allowed: a 2xx; denied: the waypoint's 403, or the connection refused or reset
            // (curl exit 7, 52, 56). Anything else (a timeout, a 5xx) is no decision at all.
            match m.curl_with(case.from, &args, &url) {
                Ok((code, _)) if (200..300).contains(&code) => true,
                Ok((403, _)) => false,
                Err(e)
                    if ["exit Some(7)", "exit Some(52)", "exit Some(56)"]
                        .iter()
                        .any(|c| e.contains(c)) =>
                {
                    false
                }
                other => panic!(
                    "{} {method} {url}: neither allowed nor denied: {other:?}",
                    case.from
                ),
            }
        }
        None => {
            let addr = format!("{}:{}", case.address, case.port);
            m.tcp(case.from, &addr, "explain-me", 1)
                .is_ok_and(|replies| replies.contains("explain-me"))
        }
    }
}

/// Where `veil explain` reads the mesh.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// The mesh file the mesh was started from.
    File,
    /// The controller's admin endpoint, as an operator's port-forward reaches it: from the control
    /// plane's network namespace, on its loopback.
    Live,
}

/// What `veil explain` says, with its answer for the failure message.
fn explained(m: &Mesh, case: &Case, source: Source) -> (bool, String) {
    let namespace = |pod: &str| m.pod(pod).namespace.clone();
    let from = format!("{}/{}", namespace(case.from), case.from);
    let port = case.port.to_string();
    let veil = bin("veil").to_string_lossy().into_owned();
    let mesh_file = m.mesh_config().to_string_lossy().into_owned();
    let controller = m.controller.as_ref().expect("the mesh runs a controller");
    let mut argv = vec![veil.as_str(), "explain"];
    match source {
        Source::File => argv.extend(["-f", &mesh_file]),
        Source::Live => argv.extend(["--live", &controller.admin]),
    }
    argv.extend(["--from", &from, "--to", case.to, "--port", &port]);
    if let Some((method, path)) = case.http {
        argv.extend(["--method", method, "--path", path]);
    }
    let out = exec(&m.cluster.control_plane, &argv).expect("running veil");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        other => panic!("veil explain {argv:?} failed ({other:?}): {text}"),
    }
}

#[test]
fn veil_explain_agrees_with_the_data_plane_on_every_policy_case() {
    if skip_unless_root("explain_agrees") {
        return;
    }
    let m = mesh();
    let profile_pod = m.cluster.pod("user-profile-service").ip.to_string();
    let ledger_pod = m.cluster.pod("ledger").ip.to_string();
    let account_pod = m.cluster.pod("account-service").ip.to_string();
    let svc = "user-data/user-profile-service";
    let pod = "workload:user-data/user-profile-service";
    let http = |from, to, address: &str, port, method, path| Case {
        from,
        to,
        address: address.to_owned(),
        port,
        http: Some((method, path)),
    };
    let tcp = |from, to, address: &str| Case {
        from,
        to,
        address: address.to_owned(),
        port: 9090,
        http: None,
    };
    let profile = "/api/v1/profiles/42";
    let cases = [
        http("account-service", svc, PROFILE_VIP, 80, "GET", profile),
        http("account-service", svc, PROFILE_VIP, 80, "PUT", profile),
        http("admin-service", svc, PROFILE_VIP, 80, "PUT", profile),
        http("reporting", svc, PROFILE_VIP, 80, "GET", profile),
        http(
            "admin-service",
            svc,
            PROFILE_VIP,
            80,
            "GET",
            "/internal/metrics",
        ),
        // Paths the waypoint canonicalizes before judging (and forwards as judged).
        http(
            "admin-service",
            svc,
            PROFILE_VIP,
            80,
            "GET",
            "/api/v1/profiles/../../../internal/metrics",
        ),
        http(
            "account-service",
            svc,
            PROFILE_VIP,
            80,
            "GET",
            "/api/v1//profiles/42",
        ),
        http(
            "account-service",
            svc,
            PROFILE_VIP,
            80,
            "GET",
            "/api/v1/profiles/%2e%2e/42",
        ),
        // The pod's own address goes through the waypoint too; plaintext to it is refused.
        http(
            "account-service",
            pod,
            &profile_pod,
            8080,
            "GET",
            "/api/v1/profiles/7",
        ),
        http(
            "reporting",
            pod,
            &profile_pod,
            8080,
            "GET",
            "/api/v1/profiles/7",
        ),
        http(
            "rogue",
            pod,
            &profile_pod,
            8080,
            "GET",
            "/api/v1/profiles/7",
        ),
        // L4 policy at the ledger's ztunnel, STRICT in its namespace.
        tcp("account-service", "finance/ledger", LEDGER_VIP),
        tcp("reporting", "finance/ledger", LEDGER_VIP),
        tcp("account-service", "workload:finance/ledger", &ledger_pod),
        tcp("rogue", "workload:finance/ledger", &ledger_pod),
        // Plaintext where the namespace admits it (PERMISSIVE): admitted.
        tcp("rogue", "workload:production/account-service", &account_pod),
    ];
    let mut allowed = 0;
    for case in &cases {
        let actual = data_plane(&m, case);
        for source in [Source::File, Source::Live] {
            let (said, answer) = explained(&m, case, source);
            assert_eq!(
                said,
                actual,
                "{} → {} {:?}: the data plane {}, veil explain ({source:?}) said:\n{answer}",
                case.from,
                case.to,
                case.http,
                if actual { "let it through" } else { "did not" }
            );
        }
        eprintln!(
            "{} → {} {:?}: {}",
            case.from,
            case.to,
            case.http,
            if actual { "allowed" } else { "denied" }
        );
        allowed += usize::from(actual);
    }
    // Pointed at a proxy's admin port instead of the controller's: refused, saying why.
    let veil = bin("veil").to_string_lossy().into_owned();
    let node_a = m.cluster.node("node-a").netns.clone();
    let wrong = exec(
        &node_a,
        &[
            &veil,
            "explain",
            "--live",
            "http://127.0.0.1:15000",
            "--from",
            "production/account-service",
            "--to",
            "finance/ledger",
            "--port",
            "9090",
        ],
    )
    .expect("running veil");
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(err.contains("/debug/resources"), "{err}");
    // Both outcomes were exercised, not one of them throughout.
    assert!(
        (4..cases.len() - 4).contains(&allowed),
        "{allowed} of {} allowed",
        cases.len()
    );
}

/// `veil config` run where an operator's port-forward leads: in the proxy's own network namespace,
/// against its loopback admin port.
fn veil_config(netns: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let veil = bin("veil").to_string_lossy().into_owned();
    let mut argv = vec![veil.as_str(), "config"];
    argv.extend(args);
    let out = exec(netns, &argv).expect("running veil config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_json(netns: &str, args: &[&str]) -> serde_json::Value {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let (code, out, err) = veil_config(netns, &argv);
    assert_eq!(code, Some(0), "veil config {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn find<'a>(list: &'a serde_json::Value, field: &str, value: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|l| l.iter().find(|e| e[field] == value))
        .unwrap_or_else(|| panic!("no {field}={value} in {list:#}"))
}

#[test]
fn veil_config_shows_what_each_proxy_holds() {
    if skip_unless_root("veil_config") {
        return;
    }
    let mut m = mesh();
    let ledger_ip = m.cluster.pod("ledger").ip.to_string();
    let account = "spiffe://cluster.local/ns/production/sa/account-service";
    let ledger = "spiffe://cluster.local/ns/finance/sa/ledger";
    // A long-lived connection from account-service (node-a) to the ledger (node-b).
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let target = format!("{ledger_ip}:7070");
    m.spawn_in_pod("account-service", "stream", &[&app, "stream", &target])
        .expect("starting the stream")
        .wait_for("echoed 5", std::time::Duration::from_secs(20))
        .expect("the stream never flowed");

    // The destination's ztunnel: the mesh, the policies, its certificates, the connection.
    let node_b = m.cluster.node("node-b").netns.clone();
    let dump = config_json(&node_b, &[]);
    assert_eq!(dump["proxy"]["kind"], "ztunnel");
    assert_eq!(dump["proxy"]["name"], "node-b");
    let profile = find(&dump["workloads"], "name", "user-profile-service");
    assert_eq!(profile["waypoint"], "user-data/waypoint");
    assert_eq!(profile["protocol"], "HBONE");
    assert_eq!(find(&dump["workloads"], "name", "rogue")["protocol"], "TCP");
    // Over xDS, policies arrive as Istio's ztunnel gets them: selected by the control plane, and
    // STRICT as a generated DENY of plaintext.
    let writers = find(&dump["policies"], "name", "ledger-writers");
    assert_eq!(writers["action"], "ALLOW");
    assert_eq!(writers["applies_to"], "1 workload(s): finance/ledger");
    let strict = find(&dump["policies"], "name", "veil:peer-strict");
    assert_eq!(strict["action"], "DENY");
    assert!(
        strict["applies_to"]
            .as_str()
            .is_some_and(|t| t.contains("finance/ledger")),
        "{strict}"
    );
    let cert = find(&dump["certificates"], "identity", ledger);
    let expiry = cert["not_after"]
        .as_str()
        .expect("a held certificate has an expiry");
    let expiry = humantime::parse_rfc3339(expiry).expect("RFC 3339");
    assert!(expiry > std::time::SystemTime::now(), "{cert}");
    let conn = find(
        &dump["connections"]["inbound"],
        "workload",
        "finance/ledger",
    );
    assert_eq!(conn["source_identity"], account);
    assert_eq!(conn["destination"], target.as_str());
    assert!(conn.get("closing").is_none(), "{conn}");

    // The same as a table, one section, one namespace.
    let (code, table, err) = veil_config(&node_b, &["connections", "-n", "finance"]);
    assert_eq!(code, Some(0), "{err}");
    let row = table
        .lines()
        .find(|l| l.starts_with("finance/ledger"))
        .unwrap_or_else(|| panic!("no connection row in\n{table}"));
    assert!(row.contains(account) && row.contains(&target), "{table}");
    assert!(!table.contains("WORKLOADS"), "one section only:\n{table}");

    // The source's ztunnel pools an HBONE connection to the ledger's.
    let node_a = m.cluster.node("node-a").netns.clone();
    let pooled = config_json(&node_a, &["connections"]);
    let out = find(&pooled["outbound"], "destination_identity", ledger);
    assert_eq!(out["source_identity"], account);
    assert_eq!(out["destination"], format!("{ledger_ip}:15008").as_str());

    // The waypoint: its namespace's part of the mesh and its own certificate.
    let waypoint = m.cluster.pod("waypoint").netns.clone();
    let dump = config_json(&waypoint, &[]);
    assert_eq!(dump["proxy"]["kind"], "waypoint");
    assert_eq!(dump["proxy"]["name"], "user-data/waypoint");
    let access = find(&dump["policies"], "name", "user-profile-access");
    assert_eq!(access["applies_to"], "service user-profile-service");
    find(
        &dump["certificates"],
        "identity",
        "spiffe://cluster.local/ns/user-data/sa/waypoint",
    );

    // The raw dumps hold no key material or PEM of any kind, from either kind of proxy.
    for netns in [&node_a, &node_b, &waypoint] {
        let raw = exec(
            netns,
            &[
                "curl",
                "-s",
                "-m",
                "5",
                "http://127.0.0.1:15000/config_dump",
            ],
        )
        .expect("curl");
        let raw = String::from_utf8_lossy(&raw.stdout);
        assert!(raw.contains("veil.dev/config-dump/v1"), "{raw}");
        for forbidden in ["PRIVATE KEY", "BEGIN ", "-----"] {
            assert!(!raw.contains(forbidden), "{forbidden} in a config dump");
        }
    }

    // Nothing listening there: exit 2, and what to do about it.
    let (code, _, err) = veil_config(&node_b, &["--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("port-forward"), "{err}");
}
