//! Telemetry in Kubernetes mode, end to end: a `Telemetry` object in the (stand-in) API server is
//! watched by the controller and reaches the ztunnels it serves, which then write no access log
//! for the workloads it covers; and a cluster upgraded without the Telemetry CRD (`helm upgrade`
//! installs no new CRD) runs as before and picks the Telemetry up once the CRD is installed. Need
//! root; skip with a loud message otherwise.

use std::time::Duration;

use serde_json::json;
use veil_e2e::controlplane::start_controller;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};

const SETTLE: Duration = Duration::from_secs(20);

const CRD: &str = "telemetries.security.veil.dev";

/// No access log for user-data's workloads. (JSON on one line: the harness passes the spec's
/// policies to the API server as they are.)
const QUIET: &str = r#"
  - {"apiVersion": "security.veil.dev/v1", "kind": "Telemetry", "metadata": {"name": "quiet", "namespace": "user-data"}, "spec": {"accessLog": {"level": "off"}}}
"#;

/// A client on node-a; on node-b, the user-data pod the Telemetry covers and a finance pod it
/// does not.
fn mesh(test: &str) -> Option<Mesh> {
    if skip_unless_root(test) {
        return None;
    }
    let m = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("profile", "user-data", "node-b"),
            PodSpec::new("ledger", "finance", "node-b"),
        ],
        policies: QUIET.into(),
        kubernetes: true,
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    if !m.spec.uses_controller() {
        eprintln!("{test}: skipped without a controller (VEIL_E2E_THROUGH_CONTROLLER=0)");
        return None;
    }
    Some(m)
}

/// Access-log lines node-b's ztunnel wrote for connections to pod `name` of `namespace`.
fn logged(m: &Mesh, namespace: &str, name: &str) -> usize {
    let destination = format!(r#""destination_workload":"{namespace}/{name}""#);
    m.ztunnel_log("node-b")
        .lines()
        .filter(|l| l.contains("connection complete") && l.contains(&destination))
        .count()
}

/// One HTTP request from the client to `pod` (a connection of its own); panics unless answered.
fn call(m: &Mesh, pod: &str) {
    let url = format!("http://{}:8080/", m.cluster.pod(pod).ip);
    assert_eq!(
        m.curl("client", &url).map(|(status, _)| status),
        Ok(200),
        "{pod}"
    );
}

/// Whether a round of connections — to profile, then ledger, twice — leaves lines for ledger's
/// and none for profile's. Ledger's lines, written after profile's connections ended, are the
/// sign that ztunnel has logged what it was going to.
fn profile_unlogged(m: &Mesh) -> bool {
    let (profile, ledger) = (
        logged(m, "user-data", "profile"),
        logged(m, "finance", "ledger"),
    );
    for _ in 0..2 {
        call(m, "profile");
        call(m, "ledger");
    }
    let ledger_logged = m.eventually(Duration::from_secs(5), || {
        logged(m, "finance", "ledger") >= ledger + 2
    });
    assert!(ledger_logged, "{}", m.ztunnel_log("node-b"));
    logged(m, "user-data", "profile") == profile
}

#[test]
fn a_telemetry_in_the_api_reaches_ztunnel_through_the_controller() {
    let Some(m) = mesh("telemetry_through_controller") else {
        return;
    };
    // The first mesh the controller sent already holds it.
    assert!(profile_unlogged(&m), "{}", m.ztunnel_log("node-b"));
    assert!(profile_unlogged(&m), "{}", m.ztunnel_log("node-b"));
    assert_eq!(logged(&m, "user-data", "profile"), 0);
    assert!(logged(&m, "finance", "ledger") >= 4);

    // Deleted: user-data's connections are logged again.
    m.api().delete("telemetries", "user-data.quiet").unwrap();
    assert!(
        m.eventually(SETTLE, || !profile_unlogged(&m)),
        "{}",
        m.ztunnel_log("node-b")
    );
}

#[test]
fn without_the_telemetry_crd_the_mesh_runs_and_telemetry_applies_once_it_is_installed() {
    let Some(mut m) = mesh("telemetry_crd_missing") else {
        return;
    };
    assert!(profile_unlogged(&m), "{}", m.ztunnel_log("node-b"));

    // The CRD deleted (the API server deletes its objects first, then ends their watches): the
    // running controller is told 404, and the Telemetry no longer applies.
    let crd = m
        .api()
        .dir()
        .join("customresourcedefinitions")
        .join(format!("{CRD}.json"));
    let crd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(crd).unwrap()).unwrap();
    m.api().delete("telemetries", "user-data.quiet").unwrap();
    m.api().delete("customresourcedefinitions", CRD).unwrap();
    assert!(
        m.eventually(SETTLE, || !profile_unlogged(&m)),
        "{}",
        m.ztunnel_log("node-b")
    );
    let hint = "kubectl apply -f charts/veil/crds/telemetries.yaml";
    let old = m.controller.take().expect("the controller");
    assert_eq!(
        old.proc.output().matches(hint).count(),
        1,
        "{}",
        old.proc.output()
    );
    drop(old);

    // A controller started while it is missing (an upgrade's new pod) syncs and serves, and says
    // once what is missing; the ztunnels carry on with it.
    let controller = start_controller(&m, &[], true).expect("a controller without the CRD");
    let log = controller.proc.output();
    assert_eq!(log.matches(hint).count(), 1, "{log}");
    assert!(
        !profile_unlogged(&m),
        "no Telemetry applies without its CRD"
    );
    m.controller = Some(controller);

    // Installed, and the Telemetry applied again: picked up without a restart.
    m.api().put("customresourcedefinitions", CRD, &crd).unwrap();
    let quiet = json!({"apiVersion": "security.veil.dev/v1", "kind": "Telemetry",
        "metadata": {"name": "quiet", "namespace": "user-data", "uid": "te-quiet-2", "generation": 1},
        "spec": {"accessLog": {"level": "off"}}});
    m.api()
        .put("telemetries", "user-data.quiet", &quiet)
        .unwrap();
    assert!(
        m.eventually(Duration::from_secs(60), || profile_unlogged(&m)),
        "{}",
        m.ztunnel_log("node-b")
    );
    assert!(profile_unlogged(&m), "{}", m.ztunnel_log("node-b"));
    let log = m.controller.as_ref().unwrap().proc.output();
    assert!(log.contains("the CRD is installed now"), "{log}");
}
