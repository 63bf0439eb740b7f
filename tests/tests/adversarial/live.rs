//! Live connections outliving policy (class 10) and CA refusals without an audit line (class 9b).
//!
//! A client keeps one connection ticking (a numbered line every 100 ms, echoed by the server) while
//! the mesh's policies change under it: the connection must be cut once the new state denies it,
//! and must keep flowing when the new state still allows it.

use std::time::Duration;

use tokio::time::Instant;

use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, bin, skip_unless_root};

use crate::{SETTLE, apply};

/// The streaming echo port of the test application.
const STREAM_PORT: u16 = 7070;

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

/// A client pod in `production` on node-a, a server in `user-data` on node-b, an outsider (not
/// enrolled) on node-a; ztunnels with `env`.
fn mesh(policies: &str, env: &[(&str, &str)]) -> Mesh {
    Mesh::start(MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "production", "node-a"),
            PodSpec::new("outsider", "default", "node-a").not_enrolled(),
            PodSpec::new("server", "user-data", "node-b"),
        ],
        policies: policies.into(),
        ztunnel_env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh")
}

/// Starts a ticking connection from `from` to the server's stream port; returns its process name
/// once a few ticks have been echoed (the connection is admitted and data flows).
fn start_stream(m: &mut Mesh, from: &str) -> String {
    let name = format!("stream-{from}");
    let addr = format!("{}:{STREAM_PORT}", m.cluster.pod("server").ip);
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let proc = m
        .spawn_in_pod(from, &name, &[&app, "stream", &addr])
        .expect("starting the stream client");
    proc.wait_for("echoed 5", SETTLE)
        .unwrap_or_else(|e| panic!("the stream never flowed: {e}"));
    name
}

/// Ticks echoed so far on the stream `name`, and how it ended if it did.
fn stream_state(m: &Mesh, name: &str) -> (u64, Option<String>) {
    let out = m.app_log(name);
    let ticks = out
        .lines()
        .filter_map(|l| l.strip_prefix("echoed "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0);
    let closed = out
        .lines()
        .find(|l| l.starts_with("closed after"))
        .map(str::to_owned);
    (ticks, closed)
}

/// The stream keeps flowing for `for_how_long`: more ticks echoed, no end.
fn assert_still_flowing(m: &Mesh, name: &str, for_how_long: Duration) {
    let (before, _) = stream_state(m, name);
    std::thread::sleep(for_how_long);
    let (after, closed) = stream_state(m, name);
    assert_eq!(closed, None, "the allowed connection was cut");
    assert!(
        after >= before + 5,
        "the stream stalled: {before} → {after} ticks"
    );
}

fn assert_ready(m: &Mesh) {
    for node in ["node-a", "node-b"] {
        assert!(
            m.readiness(node).starts_with("ready"),
            "ztunnel {node} not ready afterwards: {}",
            m.readiness(node)
        );
    }
}

#[test]
fn deny_policy_arriving_mid_connection_cuts_the_live_tunnel_after_the_grace() {
    if skip_unless_root("live_deny_cuts_tunnel") {
        return;
    }
    let grace = Duration::from_secs(2);
    let mut m = mesh("", &[("VEIL_POLICY_RECHECK_GRACE", "2s")]);
    let stream = start_stream(&mut m, "client");

    let applied_at = Instant::now();
    apply(&mut m, DENY_PRODUCTION);
    // Within the grace it still flows...
    let (before, closed) = stream_state(&m, &stream);
    assert_eq!(closed, None, "closed before the grace was over");
    std::thread::sleep(Duration::from_millis(800));
    let (during, closed) = stream_state(&m, &stream);
    if applied_at.elapsed() < grace {
        assert_eq!(closed, None, "closed before the grace was over");
        assert!(during > before, "the stream stalled during the grace");
    }
    // ...then it is cut, well before it would have ended by itself (never).
    assert!(
        m.eventually(grace + SETTLE, || stream_state(&m, &stream).1.is_some()),
        "the denied connection kept flowing: {:?}",
        stream_state(&m, &stream)
    );
    let cut_after = applied_at.elapsed();
    assert!(
        cut_after >= grace,
        "cut after {cut_after:?}, before the grace"
    );
    let (final_ticks, _) = stream_state(&m, &stream);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stream_state(&m, &stream).0,
        final_ticks,
        "data after the cut"
    );

    // Counted under the deciding policy, and audited naming it.
    let closed = m.metric(
        "node-b",
        "veil_connections_closed_by_recheck_total",
        &[("policy", "user-data/no-production"), ("decision", "deny")],
    );
    assert_eq!(closed, 1.0, "{}", m.metrics("node-b"));
    let log = m.ztunnel_log("node-b");
    let audit = log
        .lines()
        .find(|l| l.contains("live connection closed"))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert!(audit.contains("user-data/no-production"), "{audit}");
    assert!(
        audit.contains("spiffe://cluster.local/ns/production/sa/client"),
        "{audit}"
    );
    // New connections are refused too, and the proxies are fine.
    let addr = format!("{}:9090", m.cluster.pod("server").ip);
    assert!(m.tcp("client", &addr, "hello", 1).is_err());
    assert_ready(&m);
}

#[test]
fn unrelated_policy_change_does_not_cut_an_allowed_live_tunnel() {
    if skip_unless_root("live_unrelated_change") {
        return;
    }
    let mut m = mesh("", &[]);
    let stream = start_stream(&mut m, "client");
    // A DENY for another namespace, and a new workload-less policy elsewhere.
    let unrelated = format!(
        "{}{}",
        DENY_PRODUCTION.replace("[production]", "[analytics]"),
        DENY_PRODUCTION
            .replace("no-production", "elsewhere")
            .replace("namespace: user-data", "namespace: default")
    );
    apply(&mut m, &unrelated);
    assert_still_flowing(&m, &stream, Duration::from_secs(2));
    assert_eq!(
        m.metric("node-b", "veil_connections_closed_by_recheck_total", &[]),
        0.0
    );
    assert_ready(&m);
}

#[test]
fn policy_rewritten_to_something_that_still_allows_keeps_the_live_tunnel() {
    if skip_unless_root("live_still_allowed") {
        return;
    }
    let allow_namespace = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-client, namespace: user-data}
    spec: {rules: [{from: [{source: {namespaces: [production]}}]}]}
"#;
    let mut m = mesh(allow_namespace, &[]);
    let stream = start_stream(&mut m, "client");
    // The same policy, now naming the client's exact principal, on the stream's port only.
    let allow_principal = format!(
        r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {{name: allow-client, namespace: user-data}}
    spec:
      rules:
        - from: [{{source: {{principals: [cluster.local/ns/production/sa/client]}}}}]
          to: [{{operation: {{ports: ["{STREAM_PORT}"]}}}}]
"#
    );
    apply(&mut m, &allow_principal);
    assert_still_flowing(&m, &stream, Duration::from_secs(2));
    // And the re-check is real: narrowing it to another port cuts the stream.
    apply(
        &mut m,
        &allow_principal.replace(&STREAM_PORT.to_string(), "9090"),
    );
    assert!(
        m.eventually(SETTLE, || stream_state(&m, &stream).1.is_some()),
        "the stream outlived the policy that no longer allows it"
    );
    assert_eq!(
        m.metric(
            "node-b",
            "veil_connections_closed_by_recheck_total",
            &[("policy", "user-data/allow-client")]
        ),
        1.0
    );
    assert_ready(&m);
}

#[test]
fn strict_arriving_mid_connection_cuts_permissive_plaintext() {
    if skip_unless_root("live_strict_cuts_plaintext") {
        return;
    }
    let mut m = mesh(PERMISSIVE, &[]);
    // From outside the mesh: plaintext, admitted only because of PERMISSIVE.
    let stream = start_stream(&mut m, "outsider");
    // An unrelated change keeps it...
    apply(
        &mut m,
        &format!(
            "{PERMISSIVE}{}",
            DENY_PRODUCTION.replace("[production]", "[analytics]")
        ),
    );
    assert_still_flowing(&m, &stream, Duration::from_secs(1));
    // ...STRICT cuts it.
    let strict = PERMISSIVE
        .replace("PERMISSIVE", "STRICT")
        .replace("name: permissive", "name: strict");
    apply(&mut m, &strict);
    assert!(
        m.eventually(SETTLE, || stream_state(&m, &stream).1.is_some()),
        "plaintext kept flowing under STRICT: {:?}",
        stream_state(&m, &stream)
    );
    let log = m.ztunnel_log("node-b");
    assert!(
        log.lines()
            .any(|l| l.contains("live connection closed") && l.contains("STRICT")),
        "{log}"
    );
    assert_eq!(
        m.metric(
            "node-b",
            "veil_connections_closed_by_recheck_total",
            &[("source_identity", "unknown")]
        ),
        1.0
    );
    assert_ready(&m);
}

#[test]
fn oversized_csr_is_refused_and_audited_by_the_ca() {
    if skip_unless_root("ca_oversized_csr") {
        return;
    }
    let m = mesh("", &[]);
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let root = m.root_cert().to_string_lossy().into_owned();
    let token = std::fs::read_to_string(m.dir.join("token-node-a")).unwrap();
    let out = m
        .run_in_pod(
            "client",
            &[
                &app,
                "oversized-csr",
                "--ca",
                &m.ca_address(),
                "--root",
                &root,
                "--token",
                &token,
                "--identity",
                "spiffe://cluster.local/ns/production/sa/client",
                "--bytes",
                "200000",
            ],
        )
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("OutOfRange"),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audited = |m: &Mesh| {
        m.ca.output()
            .lines()
            .any(|l| l.contains("veil::audit") && l.contains("OutOfRange"))
    };
    assert!(m.eventually(SETTLE, || audited(&m)), "{}", m.ca.output());
    // The CA still serves the mesh: traffic between pods still gets certificates and flows.
    let addr = format!("{}:9090", m.cluster.pod("server").ip);
    assert_eq!(m.tcp("client", &addr, "hello", 1).unwrap().trim(), "hello");
    assert_ready(&m);
}
