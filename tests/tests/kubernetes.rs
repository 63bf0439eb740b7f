//! End-to-end tests of ztunnel in Kubernetes mode: the controller watches an API server (the
//! harness's fake one, serving the objects a cluster would hold) and ztunnel receives the mesh from
//! it, with no access to the API, as the chart runs them; the `veil-cni` plugin is invoked exactly
//! as a container runtime invokes it, and pods' network namespaces are real. Need root; skip with a loud message otherwise.

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

/// Whether the network configuration `file` chains veil-cni.
fn chained(file: &std::path::Path) -> bool {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .contains("veil-cni")
}

fn url(m: &Mesh, pod: &str) -> String {
    format!("http://{}:8080/", m.cluster.pod(pod).ip)
}

/// Outbound connections ztunnel carried for `identity`.
fn outbound_from(m: &Mesh, identity: &str) -> f64 {
    m.metric(
        "node-a",
        "istio_tcp_connections_opened_total",
        &[("source_principal", identity), ("reporter", "source")],
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

    // A policy selecting web whose rules are edited in place: web names it throughout, so each
    // edit reaches the ztunnels as that one Authorization changed (patched at the controller and
    // in each ztunnel's mesh, not rebuilt): every version is enforced, either way.
    let web_from = |namespace: &str| {
        json!({
            "apiVersion": "security.veil.dev/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "web-from", "namespace": "shop", "uid": "ap-2"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"namespaces": [namespace]}}]}],
            },
        })
    };
    let admitted = |m: &Mesh| {
        m.curl("old", &url(m, "web"))
            .is_ok_and(|(status, _)| status == 200)
    };
    for (from, admits) in [("shop", false), ("legacy", true), ("shop", false)] {
        m.api()
            .put("authorizationpolicies", "web-from", &web_from(from))
            .unwrap();
        assert!(
            m.eventually(SETTLE, || admitted(&m) == admits),
            "web-from admitting {from}: legacy admitted is not {admits}"
        );
    }
    m.api().delete("authorizationpolicies", "web-from").unwrap();
    assert!(m.eventually(SETTLE, || admitted(&m)));

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
    // ztunnel has no access to the API at all: what it knows of namespaces and new pods comes
    // over xDS.
    let log = m.ztunnel_log("node-a");
    assert!(log.contains("streaming from the control plane"), "{log}");
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
    // The namespace no longer names the waypoint: web is not behind it, and its ztunnel, which
    // cannot check paths, lets none of the policy's HTTP requests in.
    m.api()
        .put(
            "namespaces",
            "shop",
            &veil_e2e::kube::namespace("shop", true),
        )
        .unwrap();
    assert!(m.eventually(SETTLE, || code(&m, "private/a") == 0));
    // A Service in front of web put behind the waypoint puts web behind it too (the controller
    // patches the Service and web's workload: no whole translation), at its own address as well.
    let mut service = veil_e2e::kube::service(&veil_e2e::mesh::ServiceSpec::new(
        "shop",
        "web",
        "10.96.0.90",
        &[(80, 8080)],
    ));
    service["metadata"]["labels"] = json!({"veil.dev/use-waypoint": "waypoint"});
    m.api().put("services", "web", &service).unwrap();
    assert!(
        m.eventually(SETTLE, || code(&m, "private/a") == 200),
        "{}",
        m.ztunnel_log("node-a")
    );
    assert_eq!(code(&m, "public/a"), 403);
    // Taken from behind the waypoint again: denied at web's ztunnel as before.
    service["metadata"]["labels"] = json!({});
    m.api().put("services", "web", &service).unwrap();
    assert!(m.eventually(SETTLE, || code(&m, "private/a") == 0));
    m.stop_waypoint("waypoint");
}

/// The statuses the fake API server was sent for AuthorizationPolicy `shop/<name>`.
fn statuses(m: &Mesh, name: &str) -> Vec<String> {
    let prefix = format!("status of authorizationpolicies shop/{name}: ");
    m.api_log()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

fn policy(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": name, "namespace": "shop", "uid": format!("ap-{name}"), "generation": 1}, "spec": spec})
}

const HOLDING: &str = "holding the status lease";

#[test]
fn policy_status_is_written_once_by_the_replica_holding_the_lease_and_another_takes_over() {
    use veil_e2e::controlplane::start_replica;
    if skip_unless_root("status_lease") {
        return;
    }
    let mut m = kube_mesh(vec![
        PodSpec::new("client", "shop", "node-a"),
        PodSpec::new("server", "shop", "node-a"),
    ]);
    let first = m.controller.take().expect("the first replica");
    let second = start_replica(&m, &[], true, 1).expect("a second replica");

    // A policy with a typo is refused and says so on itself, written by one replica.
    let typo = json!({"selector": {"matchLabels": {"app": "server"}}, "rules": [{"when": [{"key": "request.bogus", "values": ["x"]}]}]});
    m.api()
        .put("authorizationpolicies", "typo", &policy("typo", typo))
        .unwrap();
    assert!(
        m.eventually(SETTLE, || statuses(&m, "typo").len() == 1),
        "no status for the refused policy:\n{}",
        m.api_log()
    );
    assert!(
        statuses(&m, "typo")[0].contains("Invalid"),
        "{:?}",
        statuses(&m, "typo")
    );
    let holders = |replicas: &[&veil_e2e::controlplane::Controller]| {
        replicas
            .iter()
            .filter(|c| c.proc.output().contains(HOLDING))
            .count()
    };
    assert_eq!(
        holders(&[&first, &second]),
        1,
        "not exactly one replica holds the lease"
    );

    // A valid policy: written once, though both replicas see it.
    let allow = json!({"selector": {"matchLabels": {"app": "server"}}, "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]});
    m.api()
        .put("authorizationpolicies", "allow", &policy("allow", allow))
        .unwrap();
    assert!(m.eventually(SETTLE, || !statuses(&m, "allow").is_empty()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        statuses(&m, "allow").len(),
        1,
        "{:?}",
        statuses(&m, "allow")
    );
    assert!(
        statuses(&m, "allow")[0].contains("Ztunnel"),
        "{:?}",
        statuses(&m, "allow")
    );
    assert_eq!(
        statuses(&m, "typo").len(),
        1,
        "an unchanged status was written again"
    );

    // The holder crashes (SIGKILL: it releases nothing); the other takes the lease once it runs
    // out, and writes what changed meanwhile.
    let (mut holder, mut survivor) = if first.proc.output().contains(HOLDING) {
        (first, second)
    } else {
        (second, first)
    };
    holder.proc.kill();
    let late = json!({"selector": {"matchLabels": {"app": "client"}}, "rules": [{}]});
    m.api()
        .put("authorizationpolicies", "late", &policy("late", late))
        .unwrap();
    assert!(
        m.eventually(Duration::from_secs(30), || statuses(&m, "late").len() == 1),
        "the surviving replica never wrote status:\n{}",
        survivor.proc.output()
    );
    assert!(survivor.proc.output().contains(HOLDING));

    // A replica stopped gracefully hands the lease over as it goes.
    let third = start_replica(&m, &[], true, 2).expect("a third replica");
    survivor.proc.terminate();
    assert!(
        survivor.proc.wait_exit(Duration::from_secs(10)),
        "the replica did not stop"
    );
    assert!(
        survivor.proc.output().contains("released the status lease"),
        "{}",
        survivor.proc.output()
    );
    assert!(
        m.eventually(SETTLE, || third.proc.output().contains(HOLDING)),
        "{}",
        third.proc.output()
    );
    let gone = json!({"selector": {"matchLabels": {"app": "nothing"}}, "rules": [{}]});
    m.api()
        .put("authorizationpolicies", "gone", &policy("gone", gone))
        .unwrap();
    assert!(m.eventually(SETTLE, || statuses(&m, "gone").len() == 1));
    assert!(
        statuses(&m, "gone")[0].contains("NoTargets"),
        "{:?}",
        statuses(&m, "gone")
    );
    m.controller = Some(third);
}

/// Rewrites pod `name` in the API as `change` makes it.
fn edit_pod(m: &Mesh, name: &str, change: impl FnOnce(&mut serde_json::Value)) {
    let path = m.api().dir().join("pods").join(format!("{name}.json"));
    let mut pod: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut pod);
    m.api().put("pods", name, &pod).unwrap();
}

fn set_ready(pod: &mut serde_json::Value, ready: bool) {
    pod["status"]["conditions"] =
        json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
}

/// Requests `server` answered so far.
fn served(m: &Mesh, server: &str) -> usize {
    m.app_log(server).matches("http from").count()
}

/// Whether `server` answers no request for a while (the others do).
fn idle(m: &Mesh, server: &str) -> bool {
    let before = served(m, server);
    std::thread::sleep(Duration::from_millis(1500));
    served(m, server) == before
}

#[test]
fn a_rollout_behind_a_service_loses_no_request_and_unready_pods_get_none() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use veil_e2e::mesh::ServiceSpec;
    if skip_unless_root("rollout") {
        return;
    }
    let mut server = PodSpec::new("server-1", "shop", "node-b");
    server.labels.insert("app".into(), "server".into());
    let mut m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![PodSpec::new("client", "shop", "node-a"), server.clone()],
        services: vec![ServiceSpec {
            name: "server".into(),
            namespace: "shop".into(),
            vip: "10.96.0.80".into(),
            selects: "server".into(),
            ports: vec![(80, 8080)],
            udp_ports: Vec::new(),
        }],
        kubernetes: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    assert_eq!(m.curl("client", "http://10.96.0.80/").unwrap().0, 200);

    // A client calls the Service throughout, one new connection per request, retrying nothing.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let client_netns = m.cluster.pod("client").netns.clone();
    let calls = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let out = veil_e2e::cluster::exec(
                    &client_netns,
                    &[
                        "curl",
                        "-s",
                        "-m",
                        "5",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "http://10.96.0.80/",
                    ],
                )
                .unwrap();
                match String::from_utf8_lossy(&out.stdout).trim() {
                    "200" => ok += 1,
                    other => {
                        failed.push(format!("{other} {}", String::from_utf8_lossy(&out.stderr)))
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        })
    };

    // The new pod starts, not ready yet: it gets nothing.
    let mut next = PodSpec::new("server-2", "shop", "node-b");
    next.labels.insert("app".into(), "server".into());
    m.add_pending_pod(next).unwrap();
    let (added, result) = m.cni("ADD", "server-2").unwrap();
    assert!(added, "CNI ADD failed: {result}");
    m.start_app("server-2").unwrap();
    let ip = m.cluster.pod("server-2").ip;
    let mut pod = veil_e2e::kube::pod(m.pod("server-2"), false, Some(ip));
    set_ready(&mut pod, false);
    m.api().put("pods", "server-2", &pod).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        served(&m, "server-2"),
        0,
        "an unready pod was sent requests"
    );

    // Ready: it takes requests. The old one is being deleted (still ready): it gets no new ones.
    edit_pod(&m, "server-2", |p| set_ready(p, true));
    assert!(m.eventually(SETTLE, || served(&m, "server-2") > 0));
    edit_pod(&m, "server-1", |p| {
        p["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z".into();
    });
    assert!(
        m.eventually(SETTLE, || idle(&m, "server-1")),
        "a terminating pod kept getting requests while another was ready"
    );

    // The new one fails its readiness probe: the terminating one, still serving, is all there is.
    edit_pod(&m, "server-2", |p| set_ready(p, false));
    let before = served(&m, "server-1");
    assert!(
        m.eventually(SETTLE, || served(&m, "server-1") > before),
        "the draining pod was not used when nothing else was ready"
    );
    edit_pod(&m, "server-2", |p| set_ready(p, true));
    assert!(m.eventually(SETTLE, || idle(&m, "server-1")));

    // The old one stops serving, then goes.
    edit_pod(&m, "server-1", |p| set_ready(p, false));
    assert!(m.eventually(SETTLE, || idle(&m, "server-1")));
    m.apps.remove("server-1");
    m.api().delete("pods", "server-1").unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // While the calls go on: a second Service in front of the same pod is created, answers at its
    // own address, and once deleted is gone from it; the first gains a port. (Each is patched in
    // the controller's mesh and in ztunnel's, not rebuilt.)
    let mut second = ServiceSpec {
        name: "server-b".into(),
        namespace: "shop".into(),
        vip: "10.96.0.81".into(),
        selects: "server".into(),
        ports: vec![(80, 8080)],
        udp_ports: Vec::new(),
    };
    let answers = |url: &str| m.curl("client", url).is_ok_and(|(status, _)| status == 200);
    assert!(!answers("http://10.96.0.81/"), "no Service there yet");
    m.api()
        .put("services", "server-b", &veil_e2e::kube::service(&second))
        .unwrap();
    assert!(m.eventually(SETTLE, || answers("http://10.96.0.81/")));
    second.name = "server".into();
    second.vip = "10.96.0.80".into();
    second.ports.push((81, 8080));
    m.api()
        .put("services", "server", &veil_e2e::kube::service(&second))
        .unwrap();
    assert!(m.eventually(SETTLE, || answers("http://10.96.0.80:81/")));
    m.api().delete("services", "server-b").unwrap();
    assert!(m.eventually(SETTLE, || !answers("http://10.96.0.81/")));

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = calls.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 50, "only {ok} requests made");
    assert!(served(&m, "server-2") > 0);
}

#[test]
fn a_network_plugin_rewriting_its_configuration_does_not_leave_new_pods_uncaptured() {
    if skip_unless_root("cni_repair") {
        return;
    }
    let mut m = kube_mesh(vec![PodSpec::new("web", "shop", "node-a")]);
    let primary = json!({"cniVersion": "1.0.0", "name": "e2e-net", "plugins": [{"type": "bridge", "bridge": "cbr0"}]});
    m.install_cni("node-a", &primary).unwrap();
    assert!(
        m.ztunnel_log("node-a")
            .contains("keeping veil-cni in the node's CNI chain")
    );
    let (bin_dir, conf_dir) = m.cni_dirs("node-a");
    let file = conf_dir.join("10-e2e.conflist");
    let chained = || chained(&file);
    assert!(chained());

    // The network plugin restarts and writes its configuration again, without veil's entry.
    std::fs::write(&file, primary.to_string()).unwrap();
    assert!(
        m.eventually(SETTLE, || chained()
            && m.ztunnel_log("node-a").contains("put back")),
        "the chain was not repaired:\n{}",
        m.ztunnel_log("node-a")
    );
    // The next pod: the runtime runs the chain as it is now, and veil-cni captures it before it
    // starts.
    m.add_pending_pod(PodSpec::new("next", "shop", "node-a"))
        .unwrap();
    let (ok, result) = m
        .cni_from_chain("ADD", "next")
        .unwrap()
        .expect("veil-cni is in the chain the runtime runs");
    assert!(ok, "{result}");
    assert!(m.nat_rules("next").contains("VEIL_INBOUND"));

    // The plugin binary deleted from the node is put back too.
    std::fs::remove_file(bin_dir.join("veil-cni")).unwrap();
    assert!(m.eventually(SETTLE, || bin_dir.join("veil-cni").is_file()));

    // Rewritten while ztunnel is away (between the init container and ztunnel's start): the
    // restarted ztunnel puts back the entry its installer saved.
    m.stop_ztunnel("node-a");
    std::fs::write(&file, primary.to_string()).unwrap();
    m.start_ztunnel("node-a").unwrap();
    assert!(
        m.eventually(SETTLE, chained),
        "not repaired after a restart:\n{}",
        m.ztunnel_log("node-a")
    );
}

/// ztunnel, stopping, runs `veil-cni-cleanup` (the Kubernetes client is in that binary, not in
/// ztunnel's nor in the plugin's): the plugin goes only when the API says the DaemonSet is gone.
#[test]
fn a_stopping_ztunnel_removes_veil_cni_only_when_its_daemonset_is_gone() {
    if skip_unless_root("cni_cleanup") {
        return;
    }
    let mut m = kube_mesh(vec![PodSpec::new("web", "shop", "node-a")]);
    // No handover to wait for (it would hold a stop for 30 s); the namespace whatever the runner's
    // environment says (the harness names the DaemonSet, veil-ztunnel).
    m.spec
        .ztunnel_args
        .extend(["--drain-period=1s".into(), "--namespace=veil-system".into()]);
    let primary = json!({"cniVersion": "1.0.0", "name": "e2e-net", "plugins": [{"type": "bridge", "bridge": "cbr0"}]});
    let (bin_dir, conf_dir) = m.cni_dirs("node-a");
    let file = conf_dir.join("10-e2e.conflist");
    let chained = || chained(&file);
    // A graceful stop (SIGTERM), as the kubelet's; what the stopped ztunnel logged.
    let stop = |m: &mut Mesh| {
        let mut z = m.ztunnels.remove("node-a").expect("node-a's ztunnel");
        z.terminate();
        assert!(
            z.wait_exit(Duration::from_secs(30)),
            "ztunnel did not stop:\n{}",
            z.output()
        );
        z.output()
    };

    // An API server that does not answer (and never the runner's own credentials): nothing is
    // proven, the plugin stays.
    let nowhere = m.dir.join("kubeconfig-nowhere");
    std::fs::write(&nowhere, veil_e2e::kube::kubeconfig("https://127.0.0.1:9")).unwrap();
    let env =
        |path: &std::path::Path| ("KUBECONFIG".to_owned(), path.to_string_lossy().into_owned());
    m.spec.ztunnel_env.push(env(&nowhere));
    m.install_cni("node-a", &primary).unwrap();
    let log = stop(&mut m);
    assert!(
        log.contains("cannot tell whether veil is being uninstalled"),
        "{log}"
    );
    assert!(chained() && bin_dir.join("veil-cni").is_file());

    // With the access the chart grants (its own DaemonSet, read-only): the DaemonSet is there,
    // an upgrade or a restart: the plugin stays.
    let kubeconfig = m.dir.join("kubeconfig");
    m.spec.ztunnel_env.retain(|(k, _)| k != "KUBECONFIG");
    m.spec.ztunnel_env.push(env(&kubeconfig));
    let daemonset = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "veil-ztunnel", "namespace": "veil-system", "uid": "ds-ztunnel"}});
    m.api()
        .put("daemonsets", "veil-ztunnel", &daemonset)
        .unwrap();
    m.start_ztunnel("node-a").unwrap();
    let log = stop(&mut m);
    assert!(
        log.contains("DaemonSet veil-system/veil-ztunnel remains"),
        "{log}"
    );
    assert!(chained() && bin_dir.join("veil-cni").is_file());
    assert!(m.ambient_file("node-a").exists());

    // Uninstalled: the DaemonSet is gone; the plugin, its binary and the ambient file go too.
    m.api().delete("daemonsets", "veil-ztunnel").unwrap();
    m.start_ztunnel("node-a").unwrap();
    // The fake API server reads its directory every 100 ms.
    std::thread::sleep(Duration::from_millis(500));
    let log = stop(&mut m);
    assert!(log.contains("veil is being uninstalled"), "{log}");
    assert!(!chained(), "still chained:\n{log}");
    assert!(!bin_dir.join("veil-cni").exists());
    assert!(!m.ambient_file("node-a").exists());
}
