//! End-to-end tests of the control plane: the real `veil-controller` serving the mesh file over
//! Istio's workload discovery, and Istio's own ztunnel (from `../shared/upstream/`, skipped with a
//! loud message where it is absent) running on it next to veil's ztunnels. Need root.

use std::time::Duration;

use serde_json::json;

use veil_e2e::cluster::exec;
use veil_e2e::controlplane::{
    Controller, XDS_PORT, start_controller, start_replica, start_upstream, upstream_config_dump,
    upstream_ztunnel,
};
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root, sum_metric};
use veil_e2e::process::Proc;

const SETTLE: Duration = Duration::from_secs(15);
const UPSTREAM_TOKEN: &str = "token-of-istio-ztunnel-0123456789";

fn only_from(principal: &str) -> String {
    format!(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {{name: upstream-access, namespace: shop}}
    spec:
      selector: {{matchLabels: {{app: upstream}}}}
      rules: [{{from: [{{source: {{principals: [cluster.local/ns/shop/sa/{principal}]}}}}]}}]
"#
    )
}

const DENY_INTRUDER: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-intruder, namespace: shop}
    spec:
      action: DENY
      rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/intruder]}}]}]
"#;

fn reaches(m: &Mesh, from: &str, to: &str) -> bool {
    let url = format!("http://{}:8080/hello", m.cluster.pod(to).ip);
    matches!(m.curl(from, &url), Ok((200, _)))
}

/// A mesh where node-b's only pod, `upstream`, is served by Istio's ztunnel (inside the pod) on
/// veil's controller, and node-a's pods by veil's ztunnel; `None` (after a loud message) where
/// the tests cannot run.
fn upstream_mesh(
    test: &str,
    node_a: &[&str],
    kubernetes: bool,
    policies: &str,
) -> Option<(Mesh, Controller, Proc)> {
    if skip_unless_root(test) {
        return None;
    }
    let Some(binary) = upstream_ztunnel() else {
        eprintln!(
            "\n*** SKIPPED {test}: Istio's ztunnel is not at ../shared/upstream/ztunnel (set VEIL_UPSTREAM_ZTUNNEL to its path) ***\n"
        );
        return None;
    };
    let upstream = PodSpec::new("upstream", "shop", "node-b");
    let mut pods: Vec<PodSpec> = node_a
        .iter()
        .map(|name| PodSpec::new(name, "shop", "node-a"))
        .collect();
    pods.push(upstream.clone());
    let m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        without_ztunnel: vec!["node-b".into()],
        pods,
        extra_tokens: vec![(UPSTREAM_TOKEN.into(), upstream.identity())],
        policies: policies.into(),
        kubernetes,
        // This test runs a controller of its own, for Istio's ztunnel; in Kubernetes mode veil's
        // ztunnels subscribe to the mesh's (they do not watch the API themselves).
        through_controller: Some(false),
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    // Beside the mesh's, when there is one.
    let controller = start_replica(&m, &[upstream.identity()], false, u16::from(kubernetes))
        .expect("starting the controller");
    let token = m.dir.join("token-upstream");
    std::fs::write(&token, UPSTREAM_TOKEN).unwrap();
    let istio = start_upstream(&m, &binary, "upstream", &controller, &token, 1)
        .expect("Istio's ztunnel on veil's controller");
    Some((m, controller, istio))
}

#[test]
fn istio_ztunnel_runs_on_veils_controller_and_carries_traffic_with_veils_ztunnels() {
    let Some((mut m, controller, istio)) = upstream_mesh(
        "istio_ztunnel_on_veil_controller",
        &["server", "client", "intruder"],
        false,
        &only_from("client"),
    ) else {
        return;
    };
    let upstream = m.pod("upstream").clone();

    // It received veil's workloads, services and policies, generated ones included.
    let dump = upstream_config_dump(&m, "upstream");
    for needle in [
        "Kubernetes//Pod/shop/server",
        "Kubernetes//Pod/shop/upstream",
        "upstream-access",
        "veil:peer-strict",
    ] {
        assert!(
            dump.contains(needle),
            "{needle} missing from Istio's ztunnel:\n{dump}"
        );
    }

    // Istio's ztunnel → veil's: its SPIFFE identity arrives at veil's ztunnel.
    assert!(reaches(&m, "upstream", "server"), "{}", istio.output());
    assert!(
        m.eventually(SETTLE, || m
            .ztunnel_log("node-a")
            .contains("spiffe://cluster.local/ns/shop/sa/upstream")),
        "veil's ztunnel did not see Istio's ztunnel's identity"
    );
    // veil's → Istio's, which enforces veil's policy: the client is admitted, the intruder not.
    assert!(reaches(&m, "client", "upstream"), "{}", istio.output());
    assert!(!reaches(&m, "intruder", "upstream"));

    // A policy change reaches it as a delta: now only the intruder.
    m.set_policies(&only_from("intruder")).unwrap();
    assert!(
        m.eventually(SETTLE, || reaches(&m, "intruder", "upstream")
            && !reaches(&m, "client", "upstream")),
        "the policy change did not reach Istio's ztunnel:\n{}",
        istio.output()
    );

    assert!(
        m.eventually(SETTLE, || istio.output().lines().any(|l| l
            .contains("src.workload=\"intruder\"")
            && l.contains("policy rejection"))),
        "Istio's ztunnel did not refuse the intruder by policy:\n{}",
        istio.output()
    );

    let metrics = controller.metrics_text(&m);
    assert!(metrics.contains("veil_controller_streams 1"), "{metrics}");
    assert!(
        metrics.contains("veil_controller_nacks_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("veil_controller_subscriptions_refused_total 0"),
        "{metrics}"
    );

    // A namespace-wide policy (an Authorization no workload lists by name: only its removal
    // takes it away) keeps the intruder out.
    m.set_policies(DENY_INTRUDER).unwrap();
    assert!(
        m.eventually(SETTLE, || reaches(&m, "client", "upstream")
            && !reaches(&m, "intruder", "upstream")),
        "the namespace-wide policy did not reach Istio's ztunnel:\n{}",
        istio.output()
    );
    // The controller goes away: traffic keeps flowing on the state Istio's ztunnel holds.
    drop(controller);
    assert!(reaches(&m, "client", "upstream"));
    assert!(!reaches(&m, "intruder", "upstream"));
    assert!(reaches(&m, "upstream", "server"));
    // While it is away the policy is deleted. Back, the controller learns from the reconnecting
    // client what it holds and removes what no longer exists.
    m.set_policies("").unwrap();
    let controller =
        start_controller(&m, &[upstream.identity()], false).expect("restarting the controller");
    assert!(
        m.eventually(SETTLE, || reaches(&m, "intruder", "upstream")),
        "the removal did not reach Istio's ztunnel after it reconnected:\n{}",
        istio.output()
    );
    let metrics = controller.metrics_text(&m);
    assert!(
        metrics.contains("veil_controller_nacks_total 0"),
        "{metrics}"
    );
}

#[test]
fn in_kubernetes_mode_the_controller_watches_the_api_and_one_bad_object_spoils_nothing_else() {
    let Some((m, controller, istio)) = upstream_mesh(
        "controller_kubernetes_mode",
        &["server", "client"],
        true,
        "",
    ) else {
        return;
    };
    assert!(reaches(&m, "client", "upstream"), "{}", istio.output());
    assert!(reaches(&m, "upstream", "server"), "{}", istio.output());

    // A Service claiming a pod's address is left out and reported on itself...
    let api = m.api();
    let server_ip = m.cluster.pod("server").ip.to_string();
    api.put(
        "services",
        "squatter",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "squatter", "namespace": "shop", "uid": "svc-squatter"}, "spec": {"clusterIP": server_ip, "clusterIPs": [server_ip], "selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    )
    .unwrap();
    // ...while a policy written after it still reaches Istio's ztunnel.
    api.put(
        "authorizationpolicies",
        "deny-client",
        &json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny-client", "namespace": "shop", "uid": "ap-deny-client", "generation": 1}, "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}),
    )
    .unwrap();
    assert!(
        m.eventually(SETTLE, || !reaches(&m, "client", "upstream")),
        "the policy from the API did not reach Istio's ztunnel:\n{}",
        istio.output()
    );
    assert!(reaches(&m, "upstream", "server"));
    assert!(
        m.eventually(SETTLE, || controller
            .metrics_text(&m)
            .contains("veil_controller_rejected_objects 1")),
        "{}",
        controller.metrics_text(&m)
    );
    let log = controller.proc.output();
    assert!(
        log.contains("squatter"),
        "the bad Service was not reported:\n{log}"
    );
}

/// Whether `from` gets any HTTP answer from `url` (a refused connection is an error).
fn answers(m: &Mesh, from: &str, url: &str) -> bool {
    m.curl_with(from, &["-k"], url).is_ok()
}

/// Through the controller: `client` and `intruder` on node-a, `server` on node-b.
fn client_intruder_server(policies: &str) -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "shop", "node-a"),
            PodSpec::new("intruder", "shop", "node-a"),
            PodSpec::new("server", "shop", "node-b"),
        ],
        policies: policies.into(),
        through_controller: Some(true),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

#[test]
fn veils_ztunnels_keep_their_mesh_through_a_controller_outage_and_resume_on_another_replica() {
    if skip_unless_root("veil_ztunnel_on_controller") {
        return;
    }
    let mut m = client_intruder_server(DENY_INTRUDER);
    for node in ["node-a", "node-b"] {
        assert!(
            m.ztunnel_log(node)
                .contains("first mesh received from the control plane"),
            "{node} did not take its mesh from the controller"
        );
    }
    assert!(reaches(&m, "client", "server"));
    assert!(
        !reaches(&m, "intruder", "server"),
        "the DENY arrived over xDS"
    );
    // A destination outside the mesh (the CA's port on the control-plane address): passthrough.
    let outside = format!("https://{}:15012/", m.cluster.control_plane_ip);
    assert!(
        answers(&m, "client", &outside),
        "passthrough while connected"
    );

    // The controller goes away: the ztunnels keep the mesh they hold.
    drop(m.controller.take());
    assert!(m.eventually(SETTLE, || {
        ["node-a", "node-b"]
            .iter()
            .all(|n| m.ztunnel_log(n).contains("keeping the last mesh"))
    }));
    assert_eq!(m.metric("node-a", "veil_control_plane_connected", &[]), 0.0);
    assert!(
        reaches(&m, "client", "server"),
        "traffic flows on the last mesh"
    );
    assert!(!reaches(&m, "intruder", "server"), "and so do its denials");
    // What the last mesh does not know might be a pod created meanwhile: refused, not guessed.
    assert!(
        !answers(&m, "client", &outside),
        "an unknown destination passed while the control plane was away"
    );
    assert!(
        m.ztunnel_log("node-a")
            .contains("unreachable: the mesh may be stale")
    );

    // Meanwhile the DENY is deleted. Another replica, which never saw these ztunnels, comes up;
    // they resume from the versions they hold and get only what changed.
    m.set_policies("").unwrap();
    let replica = start_controller(&m, &[], m.spec.kubernetes).expect("another controller replica");
    assert!(
        m.eventually(Duration::from_secs(40), || reaches(
            &m, "intruder", "server"
        )),
        "the deletion made during the outage did not arrive"
    );
    // node-a counts itself connected once its own new mesh is published, which may come just
    // after node-b's (the one the intruder's connection above went through).
    assert!(
        m.eventually(Duration::from_secs(10), || answers(&m, "client", &outside)),
        "passthrough again once connected"
    );
    assert!(
        m.eventually(Duration::from_secs(10), || m.metric(
            "node-a",
            "veil_control_plane_connected",
            &[]
        ) == 1.0),
        "connected again"
    );
    let metrics = replica.metrics_text(&m);
    assert_eq!(
        sum_metric(&metrics, "veil_controller_streams", &[]),
        2.0,
        "{metrics}"
    );
    // Resumed, not re-sent: the only change was a removal, so no resource was sent at all.
    assert_eq!(
        sum_metric(&metrics, "veil_controller_resources_sent_total", &[]),
        0.0,
        "{metrics}"
    );
    for node in ["node-a", "node-b"] {
        assert_eq!(
            m.ztunnel_log(node)
                .matches("first mesh received from the control plane")
                .count(),
            1,
            "{node} started over instead of resuming"
        );
    }
    m.controller = Some(replica);
}

/// Sends the xDS connections from `source` (any, when `None`) arriving at the control-plane
/// address to replica `replica` instead, as a Service moves clients between replicas.
fn route_to_replica(m: &Mesh, source: Option<std::net::Ipv4Addr>, replica: u16) {
    let port = (XDS_PORT + 100 * replica).to_string();
    let dport = XDS_PORT.to_string();
    let source = source.map(|ip| ip.to_string());
    let mut argv = vec!["iptables", "-t", "nat", "-I", "PREROUTING", "-p", "tcp"];
    if let Some(ip) = &source {
        argv.extend(["-s", ip.as_str()]);
    }
    argv.extend(["--dport", &dport, "-j", "REDIRECT", "--to-ports", &port]);
    let out = exec(&m.cluster.control_plane, &argv).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn streams(m: &Mesh, c: &Controller) -> f64 {
    sum_metric(&c.metrics_text(m), "veil_controller_streams", &[])
}

fn sent(m: &Mesh, c: &Controller) -> f64 {
    sum_metric(
        &c.metrics_text(m),
        "veil_controller_resources_sent_total",
        &[],
    )
}

#[test]
fn two_replicas_serve_side_by_side_and_a_ztunnel_moves_between_them_without_starting_over() {
    if skip_unless_root("controller_replicas") {
        return;
    }
    let mut m = client_intruder_server("");
    // A second replica beside the first, each reading the mesh on its own; node-b's connections
    // go to the second.
    let second = start_replica(&m, &[], m.spec.kubernetes, 1).expect("a second replica");
    route_to_replica(&m, Some(m.cluster.node("node-b").ip), 1);
    m.start_ztunnel("node-b")
        .expect("node-b's ztunnel, on the second replica");
    let first = m.controller.take().expect("the first replica");
    assert!(m.eventually(SETTLE, || streams(&m, &first) == 1.0
        && streams(&m, &second) == 1.0));
    assert!(reaches(&m, "intruder", "server"));

    // A change reaches both nodes, each through its own replica.
    m.set_policies(DENY_INTRUDER).unwrap();
    assert!(
        m.eventually(SETTLE, || !reaches(&m, "intruder", "server")),
        "node-b's replica never sent the DENY"
    );
    assert!(reaches(&m, "client", "server"));

    // The first replica goes away and node-a's connections go to the second: node-a resumes from
    // what it holds, which the second replica's versions match (content hashes of deterministic
    // encodings): nothing is sent again.
    // Once both nodes hold all of it (what each replica sends them has stopped growing).
    let steady = |what: &dyn Fn() -> f64| {
        let mut last = what();
        m.eventually(SETTLE, || {
            std::thread::sleep(Duration::from_millis(500));
            let now = what();
            std::mem::replace(&mut last, now) == now
        })
    };
    assert!(steady(&|| sent(&m, &first)) && steady(&|| sent(&m, &second)));
    let before = sent(&m, &second);
    drop(first);
    route_to_replica(&m, None, 1);
    assert!(
        m.eventually(Duration::from_secs(30), || streams(&m, &second) == 2.0),
        "node-a never reached the second replica:\n{}",
        m.ztunnel_log("node-a")
    );
    assert!(m.eventually(SETTLE, || m.metric(
        "node-a",
        "veil_control_plane_connected",
        &[]
    ) == 1.0));
    assert_eq!(sent(&m, &second), before, "node-a was sent what it held");
    assert_eq!(
        m.ztunnel_log("node-a")
            .matches("first mesh received from the control plane")
            .count(),
        1,
        "node-a started over instead of resuming"
    );
    // And follows the second replica from there: the DENY is lifted for both nodes.
    m.set_policies("").unwrap();
    assert!(m.eventually(SETTLE, || reaches(&m, "intruder", "server")));
    assert!(m.eventually(SETTLE, || {
        m.ztunnel_log("node-a")
            .matches("applied new mesh configuration")
            .count()
            >= 2
    }));
    m.controller = Some(second);
}
