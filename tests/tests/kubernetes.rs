//! End-to-end tests of ztunnel in Kubernetes mode: the controller watches an API server (the
//! harness's fake one, serving the objects a cluster would hold) and ztunnel receives the mesh from
//! it, with no access to the API, as the chart runs them (`VEIL_E2E_THROUGH_CONTROLLER=0`: ztunnel
//! watches the API itself); the `veil-cni` plugin is invoked exactly as a container runtime invokes
//! it, and pods' network namespaces are real. Need root; skip with a loud message otherwise.

use std::time::Duration;

use serde_json::json;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, WaypointSpec, skip_unless_root};

const SETTLE: Duration = Duration::from_secs(15);

fn kube_mesh(pods: Vec<PodSpec>) -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into()],
        pods,
        kubernetes: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

fn url(m: &Mesh, pod: &str) -> String {
    format!("http://{}:8080/", m.cluster.pod(pod).ip)
}

/// Outbound connections ztunnel carried for `identity`.
fn outbound_from(m: &Mesh, identity: &str) -> f64 {
    m.metric(
        "node-a",
        "veil_tcp_connections_opened_total",
        &[("source_identity", identity), ("direction", "outbound")],
    )
}

fn ambient_file(m: &Mesh) -> Vec<String> {
    std::fs::read_to_string(m.ambient_file("node-a"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[test]
fn cni_add_captures_a_new_pod_before_returning_fails_without_ztunnel_and_del_releases_it() {
    if skip_unless_root("cni_lifecycle") {
        return;
    }
    let mut m = kube_mesh(vec![PodSpec::new("web", "shop", "node-a")]);
    assert_eq!(ambient_file(&m), ["shop"]);

    // ztunnel down: the ADD fails (the kubelet will retry it) and the pod is left as it was.
    m.stop_ztunnel("node-a");
    m.add_pending_pod(PodSpec::new("fresh", "shop", "node-a"))
        .unwrap();
    let (ok, out) = m.cni("ADD", "fresh").unwrap();
    assert!(!ok, "{out}");
    assert_eq!(out["code"], 11, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.contains("cannot reach veil-ztunnel"), "{msg}");
    assert!(!m.nat_rules("fresh").contains("VEIL"));

    // The retry, with ztunnel back: captured when the plugin returns, before anything runs.
    m.start_ztunnel("node-a").unwrap();
    let (ok, out) = m.cni("ADD", "fresh").unwrap();
    assert!(ok, "{out}");
    assert_eq!(
        out["ips"][0]["address"],
        format!("{}/24", m.cluster.pod("fresh").ip),
        "the previous result is passed on: {out}"
    );
    let rules = m.nat_rules("fresh");
    assert!(rules.contains("VEIL_OUTPUT"), "{rules}");
    // Its containers start and the kubelet reports its address: its traffic is the mesh's,
    // with its own identity.
    m.pod_started("fresh").unwrap();
    assert_eq!(m.curl("fresh", &url(&m, "web")).unwrap().0, 200);
    let fresh = "spiffe://cluster.local/ns/shop/sa/fresh";
    assert!(outbound_from(&m, fresh) >= 1.0);

    // DEL: released when the plugin returns; ztunnel stays ready (the pod is going away).
    let (ok, out) = m.cni("DEL", "fresh").unwrap();
    assert!(ok, "{out}");
    assert!(
        !m.nat_rules("fresh").contains("VEIL"),
        "{}",
        m.nat_rules("fresh")
    );
    assert!(
        m.readiness("node-a").starts_with("ready"),
        "{}",
        m.readiness("node-a")
    );
    let log = m.ztunnel_log("node-a");
    assert!(log.contains("CNI ADD") && log.contains("CNI DEL"), "{log}");
}

#[test]
fn pods_outside_ambient_namespaces_or_opted_out_are_left_untouched() {
    if skip_unless_root("cni_untouched") {
        return;
    }
    let mut m = kube_mesh(vec![PodSpec::new("web", "shop", "node-a")]);
    // A namespace that is not ambient: the plugin answers without asking ztunnel.
    m.add_pending_pod(PodSpec::new("plain", "other", "node-a").not_enrolled())
        .unwrap();
    m.label_namespace("other", false).unwrap();
    let (ok, out) = m.cni("ADD", "plain").unwrap();
    assert!(ok, "{out}");
    assert_eq!(
        out["ips"][0]["address"],
        format!("{}/24", m.cluster.pod("plain").ip)
    );
    // An ambient namespace, but the pod says `dataplane-mode: none`: ztunnel lets it be.
    m.add_pending_pod(PodSpec::new("optout", "shop", "node-a").not_enrolled())
        .unwrap();
    let (ok, out) = m.cni("ADD", "optout").unwrap();
    assert!(ok, "{out}");
    for pod in ["plain", "optout"] {
        assert!(
            !m.nat_rules(pod).contains("VEIL"),
            "{pod}: {}",
            m.nat_rules(pod)
        );
    }
    let log = m.ztunnel_log("node-a");
    assert!(
        !log.contains("other/plain"),
        "ztunnel was asked about a non-ambient pod:\n{log}"
    );
    assert!(log.contains("shop/optout"), "{log}");
    assert!(
        m.readiness("node-a").starts_with("ready"),
        "{}",
        m.readiness("node-a")
    );
}

#[test]
fn labelling_a_namespace_enrols_its_running_pods_and_api_policies_apply() {
    if skip_unless_root("label_namespace") {
        return;
    }
    let mut m = kube_mesh(vec![
        PodSpec::new("web", "shop", "node-a"),
        PodSpec::new("old", "legacy", "node-a").not_enrolled(),
    ]);
    assert!(!m.nat_rules("old").contains("VEIL"));
    // Plaintext from outside the mesh: the STRICT default refuses it.
    assert!(m.curl("old", &url(&m, "web")).is_err());

    // Labelled while its pod runs: ztunnel finds the pod's namespace and captures it.
    m.label_namespace("legacy", true).unwrap();
    assert!(m.eventually(SETTLE, || m.nat_rules("old").contains("VEIL_OUTPUT")));
    assert!(m.eventually(SETTLE, || ambient_file(&m) == ["legacy", "shop"]));
    m.wait_ready("node-a", SETTLE).unwrap();
    assert_eq!(m.curl("old", &url(&m, "web")).unwrap().0, 200);
    assert!(outbound_from(&m, "spiffe://cluster.local/ns/legacy/sa/old") >= 1.0);

    // A policy from the API is enforced: shop admits nothing from legacy.
    m.api()
        .put(
            "authorizationpolicies",
            "deny-legacy",
            &json!({
                "apiVersion": "security.veil.dev/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-legacy", "namespace": "shop", "uid": "ap-1"},
                "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]},
            }),
        )
        .unwrap();
    assert!(m.eventually(SETTLE, || m.curl("old", &url(&m, "web")).is_err()));
    m.api()
        .delete("authorizationpolicies", "deny-legacy")
        .unwrap();
    assert!(m.eventually(SETTLE, || {
        m.curl("old", &url(&m, "web"))
            .is_ok_and(|(status, _)| status == 200)
    }));

    // Unlabelled: released.
    m.label_namespace("legacy", false).unwrap();
    assert!(m.eventually(SETTLE, || !m.nat_rules("old").contains("VEIL")));
    assert!(m.eventually(SETTLE, || ambient_file(&m) == ["shop"]));
}

#[test]
fn a_namespace_enrolled_before_its_first_pod_has_that_pod_captured_at_its_start() {
    if skip_unless_root("enrolled_empty_namespace") {
        return;
    }
    let mut m = kube_mesh(vec![PodSpec::new("web", "shop", "node-a")]);
    // Through the controller, ztunnel has no access to the API at all: what it knows of
    // namespaces and new pods comes over xDS.
    if m.controller.is_some() {
        let log = m.ztunnel_log("node-a");
        assert!(log.contains("streaming from the control plane"), "{log}");
        assert!(!log.contains("watching the Kubernetes API"), "{log}");
    }
    // A namespace labelled while it has no pod: the node learns it all the same.
    m.label_namespace("fresh", true).unwrap();
    assert!(m.eventually(SETTLE, || ambient_file(&m) == ["fresh", "shop"]));
    // Its first pod: the plugin waits for the capture, which needs the pod's identity before the
    // API lists its address.
    m.add_pending_pod(PodSpec::new("first", "fresh", "node-a"))
        .unwrap();
    let (ok, out) = m.cni("ADD", "first").unwrap();
    assert!(ok, "{out}");
    assert!(m.nat_rules("first").contains("VEIL_OUTPUT"));
    m.pod_started("first").unwrap();
    assert_eq!(m.curl("first", &url(&m, "web")).unwrap().0, 200);
    assert!(outbound_from(&m, "spiffe://cluster.local/ns/fresh/sa/first") >= 1.0);
}

/// An L7 AuthorizationPolicy of namespace `shop` admitting only paths under `prefix`.
fn paths_policy(prefix: &str) -> serde_json::Value {
    json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "paths", "namespace": "shop", "uid": "ap-paths", "generation": 1},
        "spec": {"rules": [{"to": [{"operation": {"paths": [format!("{prefix}*")]}}]}]},
    })
}

#[test]
fn a_waypoint_receives_its_namespace_from_the_controller_and_enforces_api_policies() {
    if skip_unless_root("k8s_waypoint") {
        return;
    }
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into()],
        pods: vec![
            PodSpec::new("web", "shop", "node-a"),
            PodSpec::new("client", "shop", "node-a"),
            PodSpec::new("ledger", "bank", "node-a"),
        ],
        waypoints: vec![WaypointSpec {
            name: "waypoint".into(),
            namespace: "shop".into(),
            node: "node-a".into(),
            args: Vec::new(),
        }],
        kubernetes: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    if !m.spec.uses_controller() {
        eprintln!("k8s_waypoint: skipped without a controller (VEIL_E2E_THROUGH_CONTROLLER=0)");
        return;
    }
    let log = m.waypoint_log("waypoint");
    assert!(
        log.contains("receiving this waypoint's namespace from the control plane"),
        "{log}"
    );
    // Its namespace only: shop's two pods, not bank's.
    assert!(
        log.contains("workloads: 2, services: 0, waypoints: 1"),
        "{log}"
    );
    let code = |m: &Mesh, path: &str| -> u16 {
        m.curl("client", &format!("{}{path}", url(m, "web")))
            .map_or(0, |(code, _)| code)
    };
    // No policy yet: the waypoint lets everything through.
    assert!(m.eventually(SETTLE, || code(&m, "public/a") == 200));
    // A policy put in the API reaches the waypoint through the controller, HTTP paths and all.
    m.api()
        .put("authorizationpolicies", "paths", &paths_policy("/public"))
        .unwrap();
    assert!(
        m.eventually(SETTLE, || code(&m, "private/a") == 403),
        "{}",
        m.waypoint_log("waypoint")
    );
    assert_eq!(code(&m, "public/a"), 200);
    // Changed in the API: the waypoint follows.
    m.api()
        .put("authorizationpolicies", "paths", &paths_policy("/private"))
        .unwrap();
    assert!(m.eventually(SETTLE, || code(&m, "public/a") == 403));
    assert_eq!(code(&m, "private/a"), 200);
    // Around the waypoint (the pod's own address is behind it too) there is no way in either: a
    // bank pod is denied what the policy denies.
    let bank = m
        .curl("ledger", &format!("{}public/a", url(&m, "web")))
        .map_or(0, |(code, _)| code);
    assert_eq!(bank, 403);
    m.stop_waypoint("waypoint");
}
