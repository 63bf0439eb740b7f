use std::net::SocketAddr;

use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::parse;
use veil_mesh::identity::Identity;
use veil_mesh::policy::{DenyReason, PolicyId, Verdict};

use super::*;

const WORKLOADS: &str = r#"
workloads:
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.10], labels: {app: profile}}
  - {name: account-0, namespace: production, serviceAccount: account, node: a, ips: [10.1.0.10], labels: {app: account}}
"#;

const DENY_PRODUCTION: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-production, namespace: user-data}
    spec:
      action: DENY
      rules: [{from: [{source: {namespaces: [production]}}]}]
"#;

const PERMISSIVE: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: permissive, namespace: user-data}
    spec: {mtls: {mode: PERMISSIVE}}
"#;

/// The mesh with `policies` (a YAML list, possibly empty).
fn state(policies: &str) -> MeshState {
    let yaml = if policies.trim().is_empty() {
        WORKLOADS.to_owned()
    } else {
        format!("{WORKLOADS}policies:{policies}")
    };
    parse(&yaml, &MeshSettings::default()).unwrap()
}

fn uid(state: &MeshState) -> std::sync::Arc<str> {
    state
        .workload_by_ip("10.2.0.10".parse().unwrap())
        .unwrap()
        .uid
        .clone()
}

fn account() -> Identity {
    Identity::new("cluster.local", "production", "account").unwrap()
}

/// A tunnel from the account service to the profile pod.
fn hbone(state: &MeshState) -> Admitted {
    Admitted {
        workload_uid: uid(state),
        source: Some(account()),
        source_ip: "10.1.0.10".parse().unwrap(),
        destination: "10.2.0.10:8080".parse::<SocketAddr>().unwrap(),
    }
}

/// A plaintext connection from outside the mesh to the profile pod.
fn plaintext(state: &MeshState) -> Admitted {
    Admitted {
        source: None,
        source_ip: "192.0.2.7".parse().unwrap(),
        ..hbone(state)
    }
}

/// Whether `tracked` is told to close within `within` (paused time: no real waiting).
async fn closes_within(tracked: &mut Tracked, within: Duration) -> Option<Closing> {
    tokio::time::timeout(within, tracked.closed()).await.ok()
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_that_a_new_deny_policy_matches_is_closed_after_the_grace() {
    let live = Arc::new(LiveConnections::default());
    let before = state("");
    let mut tracked = live.track(hbone(&before));
    let workload = before.workload(&uid(&before)).unwrap().clone();
    assert!(decide(&before, &workload, tracked.admitted()).allowed());

    let report = live
        .recheck(&state(DENY_PRODUCTION), Duration::from_secs(2))
        .await;
    assert_eq!(report.denied, 1, "{report:?}");
    // Not before the grace...
    assert!(
        closes_within(&mut tracked, Duration::from_millis(1900))
            .await
            .is_none()
    );
    // ...but once it is over, naming the policy that now denies.
    let closing = closes_within(&mut tracked, Duration::from_millis(200))
        .await
        .expect("closed after the grace");
    let Denial::Denied(Admission::Policy(decision)) = closing.denial else {
        panic!("{closing:?}");
    };
    assert_eq!(
        decision.verdict,
        Verdict::Deny(DenyReason::DenyPolicy(PolicyId::new(
            "user-data",
            "no-production"
        )))
    );

    // Counted and audited under the deciding policy.
    let metrics = Metrics::new();
    let closing = Closing {
        at: Instant::now(),
        denial: Denial::Denied(Admission::Policy(decision)),
    };
    report_closed(&metrics, &tracked, &closing, &workload);
    let text = metrics.encode(None);
    assert!(
        text.contains("veil_connections_closed_by_recheck_total{decision=\"deny\",policy=\"user-data/no-production\",source_identity=\"spiffe://cluster.local/ns/production/sa/account\",destination_identity=\"spiffe://cluster.local/ns/user-data/sa/profile\"} 1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_allowed_tunnel_survives_an_unrelated_or_still_allowing_change() {
    let live = Arc::new(LiveConnections::default());
    let mut tracked = live.track(hbone(&state("")));
    // A DENY for another namespace, then an ALLOW that still admits production.
    let unrelated = DENY_PRODUCTION.replace("[production]", "[analytics]");
    let still_allowed = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: only-production, namespace: user-data}
    spec: {rules: [{from: [{source: {namespaces: [production]}}]}]}
"#;
    for policies in [unrelated.as_str(), still_allowed] {
        let report = live.recheck(&state(policies), Duration::ZERO).await;
        assert_eq!((report.checked, report.denied), (1, 0), "{policies}");
    }
    assert!(
        closes_within(&mut tracked, Duration::from_secs(3600))
            .await
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_allowed_again_within_its_grace_is_reprieved() {
    let live = Arc::new(LiveConnections::default());
    let mut tracked = live.track(hbone(&state("")));
    let grace = Duration::from_secs(5);
    assert_eq!(live.recheck(&state(DENY_PRODUCTION), grace).await.denied, 1);
    // A second denying state keeps the first deadline; it does not push it back.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(live.recheck(&state(DENY_PRODUCTION), grace).await.denied, 0);
    // The policy is withdrawn before the deadline: the connection lives on.
    assert_eq!(live.recheck(&state(""), grace).await.reprieved, 1);
    assert!(
        closes_within(&mut tracked, Duration::from_secs(3600))
            .await
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn permissive_plaintext_is_closed_when_strict_returns() {
    let live = Arc::new(LiveConnections::default());
    let permissive = state(PERMISSIVE);
    let mut tracked = live.track(plaintext(&permissive));
    let workload = permissive.workload(&uid(&permissive)).unwrap().clone();
    assert!(decide(&permissive, &workload, tracked.admitted()).allowed());
    // An unrelated change leaves it alone.
    let report = live
        .recheck(
            &state(&format!("{PERMISSIVE}{}", DENY_PRODUCTION)),
            Duration::ZERO,
        )
        .await;
    assert_eq!(report.denied, 0);
    // The PeerAuthentication is withdrawn: STRICT, the default, applies again.
    assert_eq!(live.recheck(&state(""), Duration::ZERO).await.denied, 1);
    let closing = closes_within(&mut tracked, Duration::from_millis(1)).await;
    assert_eq!(
        closing.map(|c| c.denial),
        Some(Denial::Denied(Admission::Strict))
    );
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_to_a_workload_removed_from_the_mesh_is_closed() {
    let live = Arc::new(LiveConnections::default());
    let mut tracked = live.track(hbone(&state("")));
    let without = parse(
        "workloads:\n  - {name: account-0, namespace: production, serviceAccount: account, node: a, ips: [10.1.0.10]}\n",
        &MeshSettings::default(),
    )
    .unwrap();
    assert_eq!(live.recheck(&without, Duration::ZERO).await.denied, 1);
    let closing = closes_within(&mut tracked, Duration::from_millis(1)).await;
    assert_eq!(closing.map(|c| c.denial), Some(Denial::Gone));
}

#[tokio::test]
async fn the_registry_forgets_every_connection_that_ends() {
    let live = Arc::new(LiveConnections::default());
    let s = state(DENY_PRODUCTION);
    let tracked: Vec<Tracked> = (0..1000).map(|_| live.track(hbone(&s))).collect();
    assert_eq!(live.len(), 1000);
    // A re-check in progress holds handles only for its own duration.
    live.recheck(&s, Duration::ZERO).await;
    drop(tracked);
    assert!(live.is_empty(), "{} entries leaked", live.len());
    // Connections ending in a task (the data path's way) are forgotten too.
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let t = live.track(hbone(&s));
            tokio::spawn(async move { drop(t) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(live.is_empty(), "{} entries leaked", live.len());
}

/// The cost of a re-check with many connections: printed (run with `--nocapture`) and bounded so
/// that a regression to something quadratic, or to deciding under the lock, shows.
#[tokio::test]
#[allow(
    clippy::print_stdout,
    reason = "the figures are the point of this test"
)]
async fn rechecking_ten_thousand_connections_stays_cheap_and_leaves_the_registry_usable() {
    const N: usize = 10_000;
    let live = Arc::new(LiveConnections::default());
    let allowing = state("");
    let tracked: Vec<Tracked> = (0..N).map(|_| live.track(hbone(&allowing))).collect();
    let denying = state(DENY_PRODUCTION);
    let mut times = Vec::new();
    for (s, expected) in [(&allowing, 0), (&denying, N), (&allowing, 0)] {
        let started = Instant::now();
        let report = live.recheck(s, Duration::from_secs(60)).await;
        times.push(started.elapsed());
        assert_eq!(report.checked, N);
        assert_eq!(report.denied, expected);
    }
    // While a re-check runs, registering is not blocked for its duration: measured between batches.
    let started = Instant::now();
    let extra = live.track(hbone(&allowing));
    let register = started.elapsed();
    println!(
        "re-check of {N} live connections: {:?} (all allowed), {:?} (all newly denied), {:?} (all reprieved); one registration {register:?}",
        times[0], times[1], times[2]
    );
    for t in &times {
        assert!(*t < Duration::from_secs(2), "re-check took {t:?}");
    }
    drop((tracked, extra));
    assert!(live.is_empty());
}
