//! End-to-end tests of L7 authorization through a waypoint: the real CA, ztunnels and waypoint in
//! network namespaces, namespace `user-data` behind its waypoint, and this policy on
//! `user-profile-service`: account-service may GET `/api/v1/profiles/*`, admin-service may GET and
//! PUT it, everything else is denied.

use std::time::Duration;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, bin, skip_unless_root};

const VIP: &str = "10.96.0.20";

const POLICY: &str = r#"
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
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
          to: [{operation: {methods: [POST], paths: [/istio.v1.auth.IstioCertificateService/*]}}]
"#;

const BYPASS_TOKEN: &str = "account-own-token-0123456789";

fn mesh() -> Mesh {
    let mut profile = PodSpec::new("user-profile-service", "user-data", "node-b");
    profile
        .labels
        .insert("app".into(), "user-profile-service".into());
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("account-service", "production", "node-a"),
            PodSpec::new("admin-service", "production", "node-a"),
            PodSpec::new("reporting", "production", "node-a"),
            // Outside capture: where a bypass attempt comes from.
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            // On the profile service's node: where the same-node path could step around it.
            PodSpec::new("neighbour", "production", "node-b"),
            profile,
        ],
        services: vec![ServiceSpec {
            name: "user-profile-service".into(),
            namespace: "user-data".into(),
            vip: VIP.into(),
            selects: "user-profile-service".into(),
            ports: vec![(80, 8080), (50051, 50051)],
            udp_ports: Vec::new(),
        }],
        waypoints: vec![WaypointSpec {
            name: "waypoint".into(),
            namespace: "user-data".into(),
            node: "node-b".into(),
            args: vec![
                "--access-log".into(),
                "full".into(),
                "--log-header".into(),
                "x-request-id,authorization".into(),
            ],
        }],
        extra_tokens: vec![(
            BYPASS_TOKEN.into(),
            "spiffe://cluster.local/ns/production/sa/account-service".into(),
        )],
        policies: POLICY.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

fn status(m: &Mesh, from: &str, method: &str, url: &str) -> Result<u16, String> {
    m.curl_with(
        from,
        &["-X", method, "-H", "authorization: Bearer top-secret"],
        url,
    )
    .map(|(code, _)| code)
}

/// How many requests the profile service's application has seen.
fn served(m: &Mesh) -> usize {
    m.app_log("user-profile-service")
        .matches("http from")
        .count()
}

#[test]
fn l7_policy_is_enforced_per_request_by_the_waypoint_and_cannot_be_bypassed() {
    if skip_unless_root("l7_policy") {
        return;
    }
    let mut m = mesh();
    let svc = format!("http://{VIP}/api/v1/profiles/42?token=abc&page=1");
    assert_eq!(status(&m, "account-service", "GET", &svc), Ok(200));
    assert_eq!(status(&m, "account-service", "PUT", &svc), Ok(403));
    assert_eq!(status(&m, "admin-service", "PUT", &svc), Ok(200));
    assert_eq!(status(&m, "reporting", "GET", &svc), Ok(403));
    assert_eq!(
        status(
            &m,
            "admin-service",
            "GET",
            &format!("http://{VIP}/internal/metrics")
        ),
        Ok(403)
    );
    assert_eq!(
        served(&m),
        2,
        "only the allowed requests reached the application"
    );

    // The pod's own address is policed the same way: its traffic goes through the waypoint too.
    let pod = m.cluster.pod("user-profile-service").ip;
    let direct = format!("http://{pod}:8080/api/v1/profiles/7");
    assert_eq!(status(&m, "account-service", "GET", &direct), Ok(200));
    assert_eq!(status(&m, "reporting", "GET", &direct), Ok(403));
    assert_eq!(served(&m), 3);
    // A pod on the service's own node goes through the waypoint too (its 403, not a reset or a
    // 200): the same-node path never steps around a waypoint.
    assert_eq!(status(&m, "neighbour", "GET", &direct), Ok(403));
    assert_eq!(status(&m, "neighbour", "GET", &svc), Ok(403));
    assert_eq!(served(&m), 3);

    // Bypass: a genuine certificate of a workload that *is* allowed, used from outside capture to
    // dial the pod's HBONE port directly instead of the waypoint: refused by the destination ztunnel.
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let root = m.root_cert().to_string_lossy().into_owned();
    let ca = m.ca_address();
    let out = m
        .run_in_pod(
            "rogue",
            &[
                &app,
                "hbone-direct",
                &format!("{pod}:15008"),
                &format!("{pod}:8080"),
                "--identity",
                "spiffe://cluster.local/ns/production/sa/account-service",
                "--ca",
                &ca,
                "--root",
                &root,
                "--token",
                BYPASS_TOKEN,
                "--expect",
                &m.pod("user-profile-service").identity(),
            ],
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("401"),
        "bypass not refused: {stderr}"
    );
    let ztunnel = m.ztunnel_log("node-b");
    assert!(
        ztunnel.contains("reachable only through waypoint user-data/waypoint"),
        "{ztunnel}"
    );
    assert_eq!(served(&m), 3, "the bypass reached the application");

    // The waypoint logged each denial with the policy and rule, and never the credentials.
    let log = m.waypoint_log("waypoint");
    let denials: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request denied"))
        .collect();
    // account-service's PUT, reporting's two, admin-service's GET of /internal; the neighbour's two.
    assert_eq!(denials.len(), 6, "{log}");
    let put = denials
        .iter()
        .find(|l| l.contains("\"method\":\"PUT\""))
        .expect("the denied PUT");
    assert!(
        put.contains("user-data/user-profile-access")
            && put.contains("production/sa/account-service"),
        "{put}"
    );
    assert!(put.contains("\"rule\":\"-\""), "no rule allows it: {put}");
    let allowed_put = log
        .lines()
        .find(|l| l.contains("\"decision\":\"allow\"") && l.contains("\"method\":\"PUT\""))
        .expect("the allowed PUT");
    assert!(
        allowed_put.contains("\"rule\":\"1\""),
        "admin's rule: {allowed_put}"
    );
    assert!(
        allowed_put.contains("token=REDACTED&page=1"),
        "{allowed_put}"
    );
    assert!(
        !log.contains("top-secret") && !log.contains("abc&"),
        "credentials in the access log"
    );

    // Waypoint stopped: requests fail, none reaches the service, nothing falls back to direct.
    m.stop_waypoint("waypoint");
    assert!(status(&m, "account-service", "GET", &svc).is_err());
    assert!(status(&m, "admin-service", "GET", &direct).is_err());
    assert_eq!(served(&m), 3);
}

#[test]
fn keep_alive_http2_and_grpc_are_authorized_request_by_request() {
    if skip_unless_root("l7_protocols") {
        return;
    }
    let m = mesh();
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let requests = [
        "GET:/api/v1/profiles/1",
        "PUT:/api/v1/profiles/1",
        "GET:/api/v1/profiles/2",
    ];
    for h2 in [false, true] {
        let mut argv = vec![app.as_str(), "http", "10.96.0.20:80"];
        if h2 {
            argv.push("--h2");
        }
        argv.extend(requests);
        let out = m.run_in_pod("account-service", &argv).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let statuses: Vec<&str> = stdout.lines().map(|l| &l[..3]).collect();
        assert_eq!(statuses, ["200", "403", "200"], "h2={h2}: {stdout}");
    }
    // Both protocols reached the app as themselves, two allowed requests each, one connection each.
    let app_log = m.app_log("user-profile-service");
    assert_eq!(app_log.matches("HTTP/1.1").count(), 2, "{app_log}");
    assert_eq!(app_log.matches("HTTP/2.0").count(), 2, "{app_log}");
    let waypoint = m.waypoint_log("waypoint");
    // Each client opened one tunnel for its three requests.
    assert_eq!(
        waypoint.matches("\"method\":\"GET\"").count(),
        4,
        "{waypoint}"
    );

    // gRPC: allowed for account-service, denied (PermissionDenied, from HTTP 403) for reporting.
    let grpc = |from: &str| {
        let out = m
            .run_in_pod(from, &[&app, "grpc", "10.96.0.20:50051"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(grpc("account-service"), "OK fake-chain");
    assert_eq!(grpc("reporting"), "PermissionDenied");
    assert_eq!(
        m.app_log("user-profile-service")
            .matches("grpc CreateCertificate")
            .count(),
        1
    );
    // Counted as gRPC clients saw them: HTTP 200, with the code from the app's trailers or the
    // waypoint's own denial.
    let metrics = veil_e2e::cluster::exec(
        &m.cluster.pod("waypoint").netns,
        &["curl", "-s", "-m", "2", "http://127.0.0.1:15020/metrics"],
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap();
    for (client, code) in [("account-service", "0"), ("reporting", "7")] {
        let labels = [
            ("source_workload", client),
            ("request_protocol", "grpc"),
            ("response_code", "200"),
            ("grpc_response_status", code),
        ];
        assert_eq!(
            veil_e2e::mesh::sum_metric(&metrics, "istio_requests_total", &labels),
            1.0,
            "{client}: {metrics}"
        );
    }
}

#[test]
fn opaque_tcp_through_the_waypoint_gets_l4_policy_only_and_l7_rules_fail_closed() {
    if skip_unless_root("l7_tcp") {
        return;
    }
    let mut m = mesh();
    // The echo port is not HTTP. Nothing allows it at L4 (every rule needs HTTP): denied.
    let echo = format!("{}:9090", m.cluster.pod("user-profile-service").ip);
    assert!(m.tcp("admin-service", &echo, "hello", 1).is_err());
    // An L4 rule for the port admits it, for the allowed principal only.
    m.set_policies(&format!(
        "{POLICY}        - from: [{{source: {{principals: [cluster.local/ns/production/sa/admin-service]}}}}]\n          to: [{{operation: {{ports: [\"9090\"]}}}}]\n"
    ))
    .unwrap();
    assert!(m.eventually(Duration::from_secs(10), || {
        m.tcp("admin-service", &echo, "hello", 1)
            .is_ok_and(|r| r.trim() == "hello")
    }));
    assert!(m.tcp("reporting", &echo, "hello", 1).is_err());
}

#[test]
fn a_stopping_waypoint_finishes_in_flight_requests_and_takes_no_new_ones() {
    if skip_unless_root("l7_drain") {
        return;
    }
    let mut m = mesh();
    let slow = format!("http://{VIP}/api/v1/profiles/slow");
    let in_flight = std::thread::scope(|scope| {
        let m = &m;
        let request = scope.spawn(move || status(m, "account-service", "GET", &slow));
        std::thread::sleep(Duration::from_millis(400));
        m.waypoints.get("waypoint").unwrap().terminate();
        request.join().unwrap()
    });
    assert_eq!(in_flight, Ok(200), "the in-flight request was cut");
    let waypoint = m.waypoint("waypoint").unwrap();
    assert!(
        waypoint.wait_exit(Duration::from_secs(15)),
        "the waypoint did not exit"
    );
    let log = m.waypoint_log("waypoint");
    assert!(
        log.contains("draining in-flight requests") && log.contains("veil-waypoint stopped"),
        "{log}"
    );
    assert!(
        status(
            &m,
            "account-service",
            "GET",
            &format!("http://{VIP}/api/v1/profiles/1")
        )
        .is_err()
    );
}
