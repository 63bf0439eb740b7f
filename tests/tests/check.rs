//! End-to-end: `veil check`, the real binary with only a kubeconfig, against the stand-in API
//! server serving a veil install as a cluster would (the chart's objects with their controllers'
//! status) for a running mesh. The stand-in serves from the cluster's network, so its pod proxy
//! reaches the real ztunnels: their metrics (workload certificates) and their readiness answers
//! (why one is not ready). Each case changes the objects a cluster would change and checks that
//! exactly the checks concerned change, with the exit status. Needs root; skips loudly otherwise.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use veil_e2e::install::{self, CheckRun, NAMESPACE};
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, bin, skip_unless_root};

/// `veil check -o json` of veil's namespace, with `kubeconfig` and `args`.
fn veil_check(kubeconfig: &Path, args: &[&str]) -> CheckRun {
    veil_check_in(NAMESPACE, kubeconfig, args)
}

/// `veil check -o json` of namespace `ns`.
fn veil_check_in(ns: &str, kubeconfig: &Path, args: &[&str]) -> CheckRun {
    let args: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
    install::veil_check(ns, kubeconfig, &args)
}

fn mesh() -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into(), "node-c".into()],
        pods: vec![
            PodSpec::new("web", "shop", "node-a"),
            PodSpec::new("api", "shop", "node-b"),
        ],
        // Enrolled on node-c, its network namespace missing: that ztunnel is never ready.
        ghost_pods: vec![PodSpec::new("ghost", "shop", "node-c")],
        // What the install's DaemonSet says they ask for (the CA grants 1h).
        ztunnel_args: vec!["--cert-ttl=1h".into()],
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

#[test]
fn check_judges_an_install_from_its_api_objects_and_its_ztunnels() {
    if skip_unless_root("check_judges_an_install") {
        return;
    }
    let m = mesh();
    let (api, server) = install::serve(&m, &["node-a", "node-b"]).expect("serving the install");
    let kubeconfig = install::kubeconfig(&m, server).unwrap();

    // Healthy: every check ok, the certificates read from both ztunnels through the pod proxy.
    let healthy = veil_check(&kubeconfig, &[]);
    assert_eq!(
        healthy.not_ok(),
        Vec::<String>::new(),
        "{:#}",
        healthy.report
    );
    assert_eq!(healthy.code, 0, "{}", healthy.stderr);
    assert_eq!(healthy.report["result"], "ok");
    assert_eq!(
        healthy.names(),
        [
            "kubernetes-api",
            "crds",
            "ca",
            "controller",
            "ztunnel",
            "ca-service",
            "controller-service",
            "workload-certificates",
            "root-certificate",
            "authorization-policies",
            "peer-authentications",
            "enrolled-namespaces",
        ]
    );
    let certs = healthy.check("workload-certificates")["message"].to_string();
    assert!(
        certs.contains("2 certificates valid on 2 ztunnels"),
        "web's and api's, one on each node: {certs}"
    );
    assert_eq!(
        healthy.check("enrolled-namespaces")["message"],
        "1: shop",
        "the label decides"
    );
    let table = Command::new(bin("veil"))
        .args(["check", "--namespace", NAMESPACE])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ok    ztunnel ") && text.contains("all checks passed"),
        "{text}"
    );

    // Certificates closer to expiry than asked: a warning naming each, still exit 0.
    let near = veil_check(&kubeconfig, &["--cert-expiry-warning", "2h"]);
    assert_eq!(
        near.not_ok(),
        ["workload-certificates"],
        "{:#}",
        near.report
    );
    assert_eq!(near.code, 0);
    assert_eq!(near.check("workload-certificates")["result"], "warning");
    let details = near.details("workload-certificates");
    assert!(
        details.contains("node-a: spiffe://cluster.local/ns/shop/sa/web expires in 59m")
            || details.contains("node-a: spiffe://cluster.local/ns/shop/sa/web expires in 58m"),
        "{details}"
    );

    // node-c's ztunnel scheduled but not ready: the node, ztunnel's own reason (read through the
    // pod proxy) and the kubelet's event.
    let node_c = m.cluster.node("node-c").ip.to_string();
    api.change(|s| {
        install::put(s, install::daemonset(3, 2));
        install::put(s, install::ztunnel_pod("node-c", &node_c, false));
        install::put(s, install::probe_failed_event("node-c"));
    });
    let unready = veil_check(&kubeconfig, &[]);
    assert_eq!(unready.code, 1, "{:#}", unready.report);
    assert_eq!(unready.not_ok(), ["ztunnel"], "{:#}", unready.report);
    let ztunnel = unready.check("ztunnel");
    assert_eq!(ztunnel["result"], "failed");
    assert_eq!(
        ztunnel["message"],
        "1 of 3 ztunnels not ready on node-c: enrolled pods there have no mesh"
    );
    let detail = ztunnel["details"][0].as_str().unwrap();
    assert!(
        detail.starts_with("node-c: ztunnel-c not ready: "),
        "{detail}"
    );
    assert!(
        detail.contains("ztunnel says: shop/ghost: capture failed"),
        "ztunnel's own answer: {detail}"
    );
    assert!(
        detail.contains(
            "event Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503 (×68)"
        ),
        "{detail}"
    );
    // node-c's ztunnel is running: its certificates are read too.
    assert!(
        unready.check("workload-certificates")["message"]
            .as_str()
            .unwrap()
            .contains("on 3 ztunnels"),
        "{:#}",
        unready.check("workload-certificates")
    );
    api.change(|s| {
        install::put(s, install::daemonset(2, 2));
        s.delete("pods", &format!("{NAMESPACE}/ztunnel-c"));
    });

    // A policy the controller rejected: failed, naming it and the controller's reason.
    let mut rejected = install::authorization_policy();
    rejected["metadata"]["name"] = json!("bad-when");
    rejected["status"]["conditions"][0] = json!({"type": "Accepted", "status": "False", "reason": "Invalid", "message": "rules[0].when[0]: unknown key request.headers[x-team] is not a documented key", "observedGeneration": 1, "lastTransitionTime": "2026-12-01T09:03:00Z"});
    rejected["status"]["conditions"][1] = json!({"type": "Enforced", "status": "True", "reason": "FailingClosed", "message": "refused: its scope denies until it is fixed", "observedGeneration": 1, "lastTransitionTime": "2026-12-01T09:03:00Z"});
    api.change(|s| install::put(s, rejected));
    let policy = veil_check(&kubeconfig, &[]);
    assert_eq!(policy.code, 1);
    assert_eq!(
        policy.not_ok(),
        ["authorization-policies"],
        "{:#}",
        policy.report
    );
    assert_eq!(
        policy.check("authorization-policies")["details"],
        json!([
            "shop/bad-when: rejected: Invalid: rules[0].when[0]: unknown key request.headers[x-team] is not a documented key"
        ])
    );
    api.change(|s| s.delete("authorizationpolicies", "shop/bad-when"));

    // A malformed object: no panic (exit 1, not 101); the check says what it could not read.
    let mut mangled = install::deployment("veil-ca");
    mangled["status"]["readyReplicas"] = json!("two");
    api.change(|s| install::put(s, mangled));
    let malformed = veil_check(&kubeconfig, &[]);
    assert_eq!(malformed.code, 1, "{}", malformed.stderr);
    assert_eq!(malformed.not_ok(), ["ca"], "{:#}", malformed.report);
    let message = malformed.check("ca")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with(
            "could not read Deployment veil-system/veil-ca: invalid type: string \"two\""
        ),
        "{message}"
    );
    api.change(|s| install::put(s, install::deployment("veil-ca")));
    assert_eq!(veil_check(&kubeconfig, &[]).code, 0, "back to healthy");

    // Another namespace than the install's: said at once, nothing else asked.
    let elsewhere = veil_check_in("mesh-system", &kubeconfig, &[]);
    assert_eq!(elsewhere.code, 1);
    assert_eq!(elsewhere.not_ok(), ["namespace"], "{:#}", elsewhere.report);
    assert_eq!(
        elsewhere.check("namespace")["message"],
        "namespace mesh-system does not exist: veil is not installed there"
    );
}

#[test]
fn check_exits_2_with_a_clear_message_when_the_api_server_cannot_be_reached() {
    // Nothing listens on this port: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("veil-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        veil_e2e::kube::kubeconfig(&format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let run = veil_check(&kubeconfig, &[]);
    assert_eq!(run.code, 2, "{:#}", run.report);
    assert_eq!(run.report["api_reachable"], false);
    let api = run.check("kubernetes-api");
    assert_eq!(api["result"], "failed");
    let message = api["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the Kubernetes API could not be asked: the API server at http://127.0.0.1:{port}/ could not be reached: "
        )) && message.contains("onnection refused"),
        "{message}"
    );
    assert!(api["hint"].as_str().unwrap().contains("KUBECONFIG"));

    // No kubeconfig at all: the same, before any request.
    let missing = veil_check(&dir.join("absent"), &[]);
    assert_eq!(missing.code, 2, "{:#}", missing.report);
    assert!(
        missing.check("kubernetes-api")["message"]
            .as_str()
            .unwrap()
            .starts_with("the Kubernetes API could not be asked"),
        "{:#}",
        missing.report
    );
    let _ = std::fs::remove_dir_all(&dir);
}
