//! Ways around the waypoint and policies that would be enforced nowhere (issue 10, class 5), and one
//! bad object freezing the mesh (class 6). Namespace `user-data` is behind waypoint `waypoint`; the
//! policy lets only account-service GET `/api/v1/profiles/*` on `user-profile-service`.

use std::time::Duration;

use serde_json::json;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, bin, skip_unless_root};

const VIP: &str = "10.96.0.20";
const BYPASS_TOKEN: &str = "account-own-token-0123456789";
const ACCOUNT: &str = "spiffe://cluster.local/ns/production/sa/account-service";

const POLICY: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: user-profile-access, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: user-profile-service}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
          to: [{operation: {methods: [GET], paths: [/api/v1/profiles/*]}}]
"#;

const PERMISSIVE: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: permissive, namespace: user-data}
    spec: {mtls: {mode: PERMISSIVE}}
"#;

fn waypoint_mesh(policies: &str) -> Mesh {
    let mut profile = PodSpec::new("user-profile-service", "user-data", "node-b");
    profile
        .labels
        .insert("app".into(), "user-profile-service".into());
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("account-service", "production", "node-a"),
            PodSpec::new("reporting", "production", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            profile,
        ],
        services: vec![ServiceSpec {
            name: "user-profile-service".into(),
            namespace: "user-data".into(),
            vip: VIP.into(),
            selects: "user-profile-service".into(),
            ports: vec![(80, 8080)],
            udp_ports: Vec::new(),
        }],
        waypoints: vec![WaypointSpec {
            name: "waypoint".into(),
            namespace: "user-data".into(),
            node: "node-b".into(),
            args: Vec::new(),
        }],
        extra_tokens: vec![(BYPASS_TOKEN.into(), ACCOUNT.into())],
        policies: policies.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

/// Requests the profile service's application has served.
fn served(m: &Mesh) -> usize {
    m.app_log("user-profile-service")
        .matches("http from")
        .count()
}

fn code(m: &Mesh, from: &str, url: &str) -> Result<u16, String> {
    m.curl(from, url).map(|(code, _)| code)
}

fn profile_url(m: &Mesh, port: u16) -> String {
    let pod = m.cluster.pod("user-profile-service").ip;
    format!("http://{pod}:{port}/api/v1/profiles/7")
}

/// Both ztunnels and the waypoint still answer ready.
fn assert_proxies_ready(m: &mut Mesh) {
    for node in ["node-a", "node-b"] {
        m.wait_ready(node, Duration::from_secs(10))
            .expect("ztunnel ready after the attack");
    }
    if m.waypoints.contains_key("waypoint") {
        assert!(
            m.waypoint_readiness("waypoint").starts_with("ready"),
            "waypoint not ready: {}",
            m.waypoint_log("waypoint")
        );
    }
}

/// An HBONE tunnel opened from outside capture with account-service's genuine certificate straight
/// to the pod's HBONE port, for `target`: whether the destination ztunnel refused it with 401.
fn direct_hbone_refused(m: &Mesh, target: &str) -> bool {
    let pod = m.cluster.pod("user-profile-service").ip;
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let root = m.root_cert().to_string_lossy().into_owned();
    let argv = [
        app.as_str(),
        "hbone-direct",
        &format!("{pod}:15008"),
        target,
        "--identity",
        ACCOUNT,
        "--ca",
        &m.ca_address(),
        "--root",
        &root,
        "--token",
        BYPASS_TOKEN,
        "--expect",
        &m.pod("user-profile-service").identity(),
    ];
    let out = m.run_in_pod("rogue", &argv).unwrap();
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401")
}

#[test]
fn pod_address_of_a_waypoint_fronted_workload_is_policed_by_the_waypoint() {
    if skip_unless_root("bypass_pod_address") {
        return;
    }
    let mut m = waypoint_mesh(POLICY);
    let direct = profile_url(&m, 8080);
    assert_eq!(code(&m, "account-service", &direct), Ok(200));
    // reporting is not allowed on the service: calling the pod's address changes nothing.
    assert_eq!(code(&m, "reporting", &direct), Ok(403));
    assert_eq!(served(&m), 1);
    // Nor does a genuine certificate dialled around the waypoint.
    let pod = m.cluster.pod("user-profile-service").ip;
    assert!(direct_hbone_refused(&m, &format!("{pod}:8080")));
    assert_eq!(served(&m), 1);
    assert_proxies_ready(&mut m);
}

#[test]
fn another_port_of_a_waypoint_fronted_workload_is_no_way_around() {
    if skip_unless_root("bypass_other_port") {
        return;
    }
    let mut m = waypoint_mesh(POLICY);
    // The echo port is in no Service: still only through the waypoint, where the L7-only policy
    // admits nothing that is not HTTP.
    let echo = format!("{}:9090", m.cluster.pod("user-profile-service").ip);
    assert!(m.tcp("reporting", &echo, "hello", 1).is_err());
    assert!(m.tcp("account-service", &echo, "hello", 1).is_err());
    assert!(direct_hbone_refused(&m, &echo));
    let log = m.ztunnel_log("node-b");
    assert!(
        log.contains("reachable only through waypoint user-data/waypoint"),
        "{log}"
    );
    assert_proxies_ready(&mut m);
}

#[test]
fn permissive_plaintext_to_a_waypoint_fronted_workload_is_refused() {
    if skip_unless_root("bypass_permissive") {
        return;
    }
    let mut m = waypoint_mesh(&format!("{POLICY}{PERMISSIVE}"));
    // PERMISSIVE lets plaintext in, but not around the waypoint: a pod outside the mesh is refused.
    assert!(code(&m, "rogue", &profile_url(&m, 8080)).is_err());
    assert_eq!(served(&m), 0, "plaintext reached the application");
    let log = m.ztunnel_log("node-b");
    assert!(
        log.contains("plaintext refused: user-data/user-profile-service is reachable only through waypoint user-data/waypoint"),
        "{log}"
    );
    // Through the waypoint it still works.
    assert_eq!(code(&m, "account-service", &profile_url(&m, 8080)), Ok(200));
    assert_proxies_ready(&mut m);
}

#[test]
fn pod_of_a_service_that_uses_a_waypoint_cannot_be_called_around_it() {
    if skip_unless_root("bypass_service_waypoint") {
        return;
    }
    let mut m = waypoint_mesh(POLICY);
    // Only the Service uses the waypoint now, not the namespace (so not the pod by itself).
    let path = m.dir.join("mesh.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text
        .replace(
            "  - {name: user-data, useWaypoint: waypoint}",
            "  - {name: user-data}",
        )
        .replace(
            "selector: {app: user-profile-service}}",
            "selector: {app: user-profile-service}, useWaypoint: waypoint}",
        );
    assert_ne!(text, edited, "{text}");
    let tmp = m.dir.join("mesh.yaml.tmp");
    std::fs::write(&tmp, &edited).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let svc = format!("http://{VIP}/api/v1/profiles/1");
    let direct = profile_url(&m, 8080);
    // Once applied: the Service is policed by its waypoint, and so is its pod's own address.
    // (Through a controller, the waypoint is sent its namespace only, where this edit changes
    // nothing: the pod was and stays behind it.)
    assert!(m.eventually(Duration::from_secs(10), || {
        m.first_change_applied("node-a")
            && m.first_change_applied("node-b")
            && (m.spec.uses_controller()
                || m.waypoint_log("waypoint")
                    .contains("applied new mesh configuration"))
    }));
    // Through a controller, "published" is not yet "received": allow the push its moment.
    assert!(
        m.eventually(Duration::from_secs(5), || code(&m, "reporting", &svc)
            == Ok(403))
    );
    assert_eq!(code(&m, "reporting", &direct), Ok(403));
    assert_eq!(code(&m, "account-service", &direct), Ok(200));
    assert_eq!(served(&m), 1, "a denied request reached the application");
    assert_proxies_ready(&mut m);
}

#[test]
fn service_policy_without_a_waypoint_denies_at_the_pods() {
    if skip_unless_root("bypass_service_policy_no_waypoint") {
        return;
    }
    let mut web = PodSpec::new("web", "shop", "node-b");
    web.labels.insert("app".into(), "web".into());
    let policy = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-reporting, namespace: shop}
    spec:
      targetRefs: [{kind: Service, name: web}]
      action: DENY
      rules: [{from: [{source: {principals: [cluster.local/ns/production/sa/reporting]}}]}]
"#;
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("account-service", "production", "node-a"),
            PodSpec::new("reporting", "production", "node-a"),
            web,
        ],
        services: vec![ServiceSpec {
            name: "web".into(),
            namespace: "shop".into(),
            vip: "10.96.0.40".into(),
            selects: "web".into(),
            ports: vec![(80, 8080)],
            udp_ports: Vec::new(),
        }],
        policies: policy.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let pod = m.cluster.pod("web").ip;
    // No waypoint enforces it, so the ztunnel of the Service's pod does: by VIP and by pod address.
    assert!(code(&m, "reporting", "http://10.96.0.40/").is_err());
    assert!(code(&m, "reporting", &format!("http://{pod}:8080/")).is_err());
    assert_eq!(code(&m, "account-service", "http://10.96.0.40/"), Ok(200));
    let log = m.ztunnel_log("node-b");
    assert!(log.contains("shop/no-reporting"), "{log}");
    assert_eq!(m.app_log("web").matches("http from").count(), 1);
    assert_proxies_ready(&mut m);
}

#[test]
fn a_bad_object_in_one_namespace_does_not_freeze_policy_updates_in_another() {
    if skip_unless_root("isolate_bad_object") {
        return;
    }
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into()],
        pods: vec![
            PodSpec::new("web", "shop", "node-a"),
            PodSpec::new("client", "shop", "node-a"),
        ],
        kubernetes: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let url = format!("http://{}:8080/", m.cluster.pod("web").ip);
    assert_eq!(m.curl("client", &url).unwrap().0, 200);
    // Anyone who may create Services in `evil` claims one waypoint name twice.
    let api = m.api();
    api.put("namespaces", "evil", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "evil", "uid": "ns-evil", "labels": {"kubernetes.io/metadata.name": "evil"}}})).unwrap();
    api.put("pods", "evil-wp", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evil-wp", "namespace": "evil", "uid": "pod-evil-wp", "labels": {"app": "evil-wp"}}, "spec": {"nodeName": "node-z", "serviceAccountName": "wp", "containers": [{"name": "wp", "image": "x"}]}, "status": {"phase": "Running", "podIP": "10.250.0.9", "podIPs": [{"ip": "10.250.0.9"}]}})).unwrap();
    for (name, vip) in [("wp-a", "10.96.9.1"), ("wp-b", "10.96.9.2")] {
        api.put("services", name, &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "evil", "uid": format!("svc-{name}"), "labels": {"veil.dev/waypoint": "wp"}}, "spec": {"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "selector": {"app": "evil-wp"}, "ports": [{"port": 15008, "targetPort": 15008, "protocol": "TCP"}]}})).unwrap();
    }
    // Reported where the mesh is translated: the controller.
    assert!(m.eventually(Duration::from_secs(15), || {
        m.controller
            .as_ref()
            .is_some_and(|c| c.proc.output().contains("waypoint evil/wp: defined twice"))
    }));
    // A policy change in `shop` still applies.
    api.put("authorizationpolicies", "deny-client", &json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny-client", "namespace": "shop", "uid": "ap-deny-client", "generation": 1}, "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}})).unwrap();
    assert!(
        m.eventually(Duration::from_secs(15), || m.curl("client", &url).is_err()),
        "the policy in shop never applied: {}",
        m.ztunnel_log("node-a")
    );
    // Counted where it was refused.
    let rejected = match &m.controller {
        Some(c) => c
            .metrics_text(&m)
            .lines()
            .find_map(|l| l.strip_prefix("veil_controller_rejected_objects "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_default(),
        None => m.metric("node-a", "veil_config_rejected_total", &[]),
    };
    assert!(rejected >= 2.0, "{rejected}");
    m.wait_ready("node-a", Duration::from_secs(10))
        .expect("ztunnel ready");
}
