use veil_crd::authorization::AuthorizationPolicy;
use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::parse;

use super::*;

const MESH: &str = r#"
namespaces: [{name: user-data, useWaypoint: waypoint}]
waypoints: [{name: waypoint, namespace: user-data, serviceAccount: waypoint, ips: [10.2.0.50]}]
workloads:
  - {name: profile, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.10], labels: {app: profile}}
  - {name: account, namespace: production, serviceAccount: account, node: a, ips: [10.1.0.10], labels: {app: account}}
  - {name: legacy, namespace: production, serviceAccount: legacy, node: a, ips: [10.1.0.11], labels: {app: legacy}, enrolled: false}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.20], ports: [{port: 80}], selector: {app: profile}}
  - {name: account, namespace: production, vips: [10.96.0.10], ports: [{port: 80}], selector: {app: account}}
policies:
  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: l4, namespace: production}, spec: {selector: {matchLabels: {app: account}}, rules: [{from: [{source: {namespaces: [user-data]}}]}]}}
  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: l7-no-waypoint, namespace: production}, spec: {selector: {matchLabels: {app: account}}, action: DENY, rules: [{to: [{operation: {paths: [/admin*]}}]}]}}
  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: l7-waypoint, namespace: user-data}, spec: {selector: {matchLabels: {app: profile}}, rules: [{to: [{operation: {methods: [GET]}}]}]}}
  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: on-service, namespace: user-data}, spec: {targetRefs: [{kind: Service, name: profile}], rules: [{}]}}
  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: nobody, namespace: production}, spec: {selector: {matchLabels: {app: legacy}}}}
  - {apiVersion: security.veil.dev/v1, kind: AuthorizationPolicy, metadata: {name: on-bare-service, namespace: production}, spec: {targetRefs: [{kind: Service, name: account}], rules: [{from: [{source: {namespaces: [user-data]}}]}]}}
"#;

fn state() -> MeshState {
    parse(MESH, &MeshSettings::default()).unwrap()
}

fn enforced(state: &MeshState, ns: &str, name: &str) -> (String, String) {
    let [accepted, enforced] = authz_conditions(state, &PolicyId::new(ns, name), &[]);
    assert_eq!(accepted.0, "True");
    (enforced.1.to_owned(), enforced.2)
}

#[test]
fn enforcement_says_where_and_reports_failing_closed() {
    let state = state();
    assert_eq!(enforced(&state, "production", "l4").0, REASON_ZTUNNEL);
    let (reason, message) = enforced(&state, "production", "l7-no-waypoint");
    assert_eq!(reason, REASON_FAILING_CLOSED);
    assert!(
        message.contains("production/account") && message.contains("without a waypoint"),
        "{message}"
    );
    assert_eq!(
        enforced(&state, "user-data", "l7-waypoint").0,
        REASON_WAYPOINT
    );
    assert_eq!(
        enforced(&state, "user-data", "on-service").0,
        REASON_WAYPOINT
    );
    assert_eq!(
        enforced(&state, "production", "nobody").0,
        REASON_NO_TARGETS
    );
}

#[test]
fn a_policy_on_a_service_without_a_waypoint_says_it_is_enforced_at_the_pods() {
    let (reason, message) = enforced(&state(), "production", "on-bare-service");
    assert_eq!(reason, REASON_NO_WAYPOINT);
    assert!(
        message.contains("production/account") && message.contains("ztunnels of their pods"),
        "{message}"
    );
}

#[test]
fn invalid_policies_are_not_accepted_and_fail_closed() {
    let error = PolicyError {
        kind: "AuthorizationPolicy",
        policy: PolicyId::new("production", "typo"),
        field: "spec.rules[0].when[0].key".into(),
        reason: "unknown condition key".into(),
    };
    let [accepted, enforced] =
        authz_conditions(&state(), &error.policy, std::slice::from_ref(&error));
    assert_eq!((accepted.0, accepted.1), ("False", REASON_INVALID));
    assert!(accepted.2.contains("spec.rules[0].when[0].key"));
    assert_eq!(enforced.1, REASON_FAILING_CLOSED);
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let verdicts = authz_conditions(&state(), &PolicyId::new("production", "l4"), &[]);
    let first = status_of(&verdicts, None, Some(1));
    assert!(!same(None, &first));
    let again = status_of(&verdicts, Some(&first), Some(1));
    assert!(same(Some(&first), &again));
    assert_eq!(
        first.conditions[0].last_transition_time,
        again.conditions[0].last_transition_time
    );
    let newer = status_of(&verdicts, Some(&first), Some(2));
    assert!(!same(Some(&first), &newer), "a new generation is written");
}

#[tokio::test]
async fn statuses_are_written_to_the_status_subresource_once() {
    use std::sync::Mutex;
    let patches: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let log = patches.clone();
    let client = veil_mesh::testing::fake_kube(move |method, path, body| {
        assert_eq!(method, http::Method::PATCH);
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        log.lock().unwrap().push((path.to_owned(), value.clone()));
        Some((200, serde_json::json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x", "namespace": "production"}, "spec": {}, "status": value["status"]}).to_string()))
    });
    let state = Arc::new(state());
    let (_lease, leading) = watch::channel(true);
    let mut policy: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "l4", "namespace": "production", "generation": 4},
        "spec": {"selector": {"matchLabels": {"app": "account"}}, "rules": [{"from": [{"source": {"namespaces": ["user-data"]}}]}]}
    }))
    .unwrap();
    let snapshot = Snapshot {
        objects: veil_mesh::discovery::kubernetes::Objects {
            authorization_policies: vec![Arc::new(policy.clone())],
            ..Default::default()
        },
        state: state.clone(),
        invalid: vec![],
    };
    write(&client, &snapshot, &leading).await;
    let written = patches.lock().unwrap().clone();
    assert_eq!(written.len(), 1);
    assert!(
        written[0].0.starts_with(
            "/apis/security.veil.dev/v1/namespaces/production/authorizationpolicies/l4/status"
        ),
        "{}",
        written[0].0
    );
    let conditions = &written[0].1["status"]["conditions"];
    assert_eq!(conditions[0]["type"], ACCEPTED);
    assert_eq!(conditions[1]["reason"], REASON_ZTUNNEL);
    assert_eq!(conditions[1]["observedGeneration"], 4);

    // Written back into the object, the same status is not written again.
    policy.status = Some(serde_json::from_value(written[0].1["status"].clone()).unwrap());
    let snapshot = Snapshot {
        objects: veil_mesh::discovery::kubernetes::Objects {
            authorization_policies: vec![Arc::new(policy)],
            ..Default::default()
        },
        state,
        invalid: vec![],
    };
    write(&client, &snapshot, &leading).await;
    assert_eq!(patches.lock().unwrap().len(), 1);
}

/// A client recording every PATCH it is sent (path, body), answering each as the API server would.
fn recording_client() -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
    let patches: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = patches.clone();
    let client = veil_mesh::testing::fake_kube(move |method, path, body| {
        assert_eq!(method, http::Method::PATCH);
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        log.lock().unwrap().push(path.to_owned());
        Some((200, serde_json::json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x", "namespace": "production"}, "spec": {}, "status": value["status"]}).to_string()))
    });
    (client, patches)
}

fn snapshot_of(names: &[&str]) -> Arc<Snapshot> {
    let policies = names
        .iter()
        .map(|name| {
            Arc::new(
                serde_json::from_value::<AuthorizationPolicy>(serde_json::json!({
                    "apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": name, "namespace": "production", "generation": 1},
                    "spec": {"selector": {"matchLabels": {"app": "account"}}}
                }))
                .unwrap(),
            )
        })
        .collect();
    Arc::new(Snapshot {
        objects: veil_mesh::discovery::kubernetes::Objects {
            authorization_policies: policies,
            ..Default::default()
        },
        state: Arc::new(state()),
        invalid: vec![],
    })
}

#[tokio::test]
async fn only_the_replica_holding_the_lease_writes_and_it_stops_when_it_loses_it() {
    let (client, patches) = recording_client();
    let (lease, leading) = watch::channel(false);
    let (snapshots_tx, snapshots) = watch::channel(snapshot_of(&["first"]));
    let writer = tokio::spawn(write_while_leading(
        client,
        leading,
        snapshots,
        std::time::Duration::from_secs(60),
    ));
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(200));

    settle().await;
    assert!(
        patches.lock().unwrap().is_empty(),
        "written without the lease"
    );

    // Taking the lease writes what the newest snapshot says.
    lease.send_replace(true);
    settle().await;
    assert_eq!(patches.lock().unwrap().len(), 1);
    assert!(patches.lock().unwrap()[0].contains("/authorizationpolicies/first/status"));

    // Each new snapshot while leading is written...
    snapshots_tx.send_replace(snapshot_of(&["second"]));
    settle().await;
    assert_eq!(patches.lock().unwrap().len(), 2);

    // ...and none after the lease is lost.
    lease.send_replace(false);
    settle().await;
    snapshots_tx.send_replace(snapshot_of(&["third"]));
    settle().await;
    assert_eq!(
        patches.lock().unwrap().len(),
        2,
        "written after losing the lease"
    );

    // The source going away ends the writer.
    drop(snapshots_tx);
    lease.send_replace(true);
    tokio::time::timeout(std::time::Duration::from_secs(5), writer)
        .await
        .expect("the writer ends with its source")
        .unwrap();
}

#[tokio::test]
async fn a_writer_without_the_lease_writes_nothing() {
    let (client, patches) = recording_client();
    let (_lease, leading) = watch::channel(false);
    write(&client, &snapshot_of(&["a", "b"]), &leading).await;
    assert!(patches.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_write_is_tried_again_without_waiting_for_a_change() {
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    let client = veil_mesh::testing::fake_kube(move |_, _, body| {
        // The API server refuses the first write (a 500 during an etcd leader change, say).
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Some((500, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"InternalError","code":500}"#.into()));
        }
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        Some((200, serde_json::json!({"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "first", "namespace": "production"}, "spec": {}, "status": value["status"]}).to_string()))
    });
    let (_lease, leading) = watch::channel(true);
    let (_source, snapshots) = watch::channel(snapshot_of(&["first"]));
    let writer = tokio::spawn(write_while_leading(
        client,
        leading,
        snapshots,
        std::time::Duration::from_millis(100),
    ));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    writer.abort();
    // Tried again after the failure, and not again once it succeeded.
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
}
