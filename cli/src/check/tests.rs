//! The judgements, on objects shaped as the API server serves them (`kubectl get -o json`), and
//! ztunnel's metrics as its encoder writes them.

mod certificates;
mod objects;
mod preflight;
mod ztunnel;

use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::{Value, json};

use super::cluster::{judge_crds, judge_namespaces};
use super::components::{CA, CONTROLLER, judge_deployment, judge_endpoints};
use super::policies::{Policy, Standing, Writer, judge, standing, writer};
use super::ztunnel::{cert_ttl, judge_daemonset, last_seen, pod_problems};
use super::{Check, Outcome, Report, table};
use objects::*;

pub(super) fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-formed object")
}

pub(super) const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_deployment_is_judged_by_available_ready_and_updated_replicas() {
    let judge = |v: Value| judge_deployment(&CA, &from::<Deployment>(v), "describe it");
    let ok = judge(deployment("veil-ca", 2, 2, 2, 2));
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");
    assert_eq!(ok.hint, None);

    let none = judge(deployment("veil-ca", 2, 0, 0, 2));
    assert_eq!(none.result, Outcome::Failed);
    assert!(
        none.message.contains("no replica available"),
        "{}",
        none.message
    );
    assert!(
        none.message.contains("certificates"),
        "says what breaks: {}",
        none.message
    );
    assert_eq!(none.hint.as_deref(), Some("describe it"));

    let degraded = judge(deployment("veil-ca", 2, 1, 1, 2));
    assert_eq!(degraded.result, Outcome::Warning);
    assert!(
        degraded.message.starts_with("1 of 2 replicas available"),
        "{}",
        degraded.message
    );

    let rolling = judge(deployment("veil-ca", 2, 2, 2, 1));
    assert_eq!(rolling.result, Outcome::Warning, "{rolling:?}");

    let mut unseen = deployment("veil-ca", 2, 2, 2, 2);
    unseen["metadata"]["generation"] = json!(4);
    let unseen = judge(unseen);
    assert_eq!(unseen.result, Outcome::Warning);
    assert!(
        unseen.message.contains("not rolled out yet"),
        "{}",
        unseen.message
    );

    let mut zero = deployment("veil-ca", 0, 0, 0, 0);
    zero["status"] = json!({"observedGeneration": 3});
    assert!(judge(zero).message.starts_with("scaled to 0"));

    let mut stuck = deployment("veil-ca", 2, 1, 1, 1);
    stuck["status"]["conditions"][1] = json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"veil-ca-6d4b9c7f5d\" has timed out progressing.", "lastUpdateTime": "2026-12-01T10:00:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z"});
    let stuck = judge(stuck);
    assert_eq!(stuck.result, Outcome::Failed);
    assert!(
        stuck.message.contains("has timed out progressing"),
        "{}",
        stuck.message
    );
}

#[test]
fn the_controller_names_what_its_absence_costs() {
    let check = judge_deployment(
        &CONTROLLER,
        &from(deployment("veil-controller", 2, 0, 0, 2)),
        "",
    );
    assert_eq!(check.name, "controller");
    assert!(
        check.message.contains("policy status is not written"),
        "{}",
        check.message
    );
}

#[test]
fn a_policy_stands_by_its_accepted_condition_for_its_generation() {
    let standing_of = |v: Value| standing(&from::<Policy>(v));
    assert_eq!(
        standing_of(policy(
            "shop",
            "allow-web",
            Some(("True", "Accepted", "valid")),
            1
        )),
        Standing::Accepted(None)
    );
    assert_eq!(
        standing_of(policy(
            "shop",
            "bad",
            Some((
                "False",
                "Invalid",
                "rules[0].when[0]: unknown key request.foo"
            )),
            1
        )),
        Standing::Rejected("Invalid: rules[0].when[0]: unknown key request.foo".into())
    );
    assert_eq!(
        standing_of(policy("shop", "new", None, 1)),
        Standing::Pending
    );
    let mut stale = policy("shop", "edited", Some(("True", "Accepted", "valid")), 1);
    stale["metadata"]["generation"] = json!(2);
    assert_eq!(
        standing_of(stale),
        Standing::Stale {
            observed: 1,
            generation: 2
        }
    );
    let mut closed = policy("shop", "l7", Some(("True", "Accepted", "valid")), 1);
    closed["status"]["conditions"][1]["reason"] = json!("FailingClosed");
    closed["status"]["conditions"][1]["message"] =
        json!("uses HTTP attributes on shop/web-1 without a waypoint");
    assert_eq!(
        standing_of(closed),
        Standing::Accepted(Some(
            "FailingClosed: uses HTTP attributes on shop/web-1 without a waypoint".into()
        ))
    );
}

#[test]
fn rejected_and_unreadable_policies_fail_and_pending_ones_name_the_status_writer() {
    let writer = Writer("status is written by veil-controller-5f7d9-abcde (holder of Lease veil-system/veil-controller-status)".into());
    let all_good = [policy("shop", "a", Some(("True", "Accepted", "valid")), 1)];
    assert_eq!(
        judge(
            "authorization-policies",
            "AuthorizationPolicy",
            &all_good,
            &writer
        )
        .result,
        Outcome::Ok
    );
    assert_eq!(
        judge(
            "authorization-policies",
            "AuthorizationPolicy",
            &[],
            &writer
        )
        .message,
        "0 of 0 accepted"
    );

    let mut malformed = policy("shop", "mangled", None, 1);
    malformed["status"] = json!({"conditions": "Accepted"});
    let items = [
        policy("shop", "a", Some(("True", "Accepted", "valid")), 1),
        policy(
            "shop",
            "bad",
            Some(("False", "Invalid", "unknown key request.foo")),
            1,
        ),
        malformed,
        policy("shop", "new", None, 1),
    ];
    let check = judge(
        "authorization-policies",
        "AuthorizationPolicy",
        &items,
        &writer,
    );
    assert_eq!(check.result, Outcome::Failed);
    assert_eq!(
        check.message,
        "1 of 4 accepted, 1 rejected, 1 could not be read"
    );
    assert_eq!(
        check.details[0],
        "shop/bad: rejected: Invalid: unknown key request.foo"
    );
    assert!(
        check.details[1]
            .starts_with("could not read AuthorizationPolicy shop/mangled: invalid type: string"),
        "{:?}",
        check.details
    );
    assert_eq!(check.details[2], "shop/new: no status yet");

    let pending = judge(
        "peer-authentications",
        "PeerAuthentication",
        &[policy("shop", "new", None, 1)],
        &writer,
    );
    assert_eq!(pending.result, Outcome::Warning);
    assert!(
        pending
            .message
            .contains("veil-controller-5f7d9-abcde (holder of Lease"),
        "{}",
        pending.message
    );
}

#[test]
fn the_status_writer_is_the_lease_holder_while_the_lease_is_renewed() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let lease = |holder: Option<&str>, renewed_ago: u64| {
        let renewed = now - Duration::from_secs(renewed_ago);
        let stamp = k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap();
        from(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "veil-controller-status", "namespace": "veil-system"}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": format!("{stamp}")}}),
        )
    };
    let held = writer(
        "veil-system",
        Ok(Some(lease(Some("veil-controller-5f7d9-abcde"), 3))),
        now,
    );
    assert_eq!(
        held.0,
        "status is written by veil-controller-5f7d9-abcde (holder of Lease veil-system/veil-controller-status)"
    );
    let expired = writer(
        "veil-system",
        Ok(Some(lease(Some("veil-controller-5f7d9-abcde"), 600))),
        now,
    );
    assert!(
        expired.0.contains("last renewed it 10m 0s ago (expired)"),
        "{}",
        expired.0
    );
    assert!(
        writer("veil-system", Ok(Some(lease(None, 3))), now)
            .0
            .starts_with("no controller holds")
    );
    assert!(
        writer("veil-system", Ok(None), now)
            .0
            .starts_with("no controller has taken")
    );
    assert!(
        writer("veil-system", Err("HTTP 403: forbidden".into()), now)
            .0
            .contains("could not be read: HTTP 403")
    );
}

#[test]
fn crds_must_be_installed_established_and_serve_v1() {
    let names = super::cluster::CRDS;
    let ok = judge_crds(&[
        (names[0], Ok(Some(from(crd(names[0], true, "v1"))))),
        (names[1], Ok(Some(from(crd(names[1], true, "v1"))))),
    ]);
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");

    let bad = judge_crds(&[
        (names[0], Ok(None)),
        (names[1], Ok(Some(from(crd(names[1], false, "v1"))))),
    ]);
    assert_eq!(bad.result, Outcome::Failed);
    assert_eq!(
        bad.details[0],
        "authorizationpolicies.security.veil.dev is not installed"
    );
    assert!(
        bad.details[1].starts_with("peerauthentications.security.veil.dev: not established"),
        "{:?}",
        bad.details
    );
    assert!(bad.hint.unwrap().contains("charts/veil/crds"));

    let old = judge_crds(&[
        (names[0], Ok(Some(from(crd(names[0], true, "v1beta1"))))),
        (names[1], Err("HTTP 403: forbidden".into())),
    ]);
    assert_eq!(
        old.details,
        [
            "authorizationpolicies.security.veil.dev: does not serve version v1",
            "HTTP 403: forbidden"
        ]
    );
}

#[test]
fn enrolled_namespaces_are_those_labelled_ambient() {
    let ns = |name: &str, mode: Option<&str>| {
        let mut labels = json!({"kubernetes.io/metadata.name": name});
        if let Some(mode) = mode {
            labels["veil.dev/dataplane-mode"] = json!(mode);
        }
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1", "creationTimestamp": "2026-11-01T00:00:00Z", "labels": labels}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    };
    // The server may not have applied the selector: the label decides.
    let check = judge_namespaces(&[
        ns("shop", Some("ambient")),
        ns("default", None),
        ns("legacy", Some("none")),
        ns("bank", Some("ambient")),
    ]);
    assert_eq!(check.result, Outcome::Ok);
    assert_eq!(check.message, "2: bank, shop");
    assert!(judge_namespaces(&[]).message.starts_with("none yet"));
    let mut broken = ns("odd", Some("ambient"));
    broken["metadata"]["labels"] = json!(["ambient"]);
    assert_eq!(judge_namespaces(&[broken]).result, Outcome::Warning);
}

#[test]
fn a_service_needs_a_ready_endpoint_on_its_port() {
    let ok = judge_endpoints(
        &CA,
        &[endpoint_slice(
            "veil-ca",
            "grpc-ca",
            15012,
            &[("10.244.1.7", Some(true)), ("10.244.2.9", None)],
        )],
    );
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");
    assert_eq!(
        ok.message,
        "Service veil-ca: 2 ready endpoints (10.244.1.7:15012, 10.244.2.9:15012)"
    );

    let down = judge_endpoints(
        &CA,
        &[endpoint_slice(
            "veil-ca",
            "grpc-ca",
            15012,
            &[("10.244.1.7", Some(false))],
        )],
    );
    assert_eq!(down.result, Outcome::Failed);
    assert!(
        down.message.contains("no ready endpoint, 1 not ready"),
        "{}",
        down.message
    );
    assert!(
        judge_endpoints(&CA, &[])
            .message
            .contains("no EndpointSlice")
    );

    // Another Service's slice (a server that ignored the selector) does not count.
    let other = judge_endpoints(
        &CA,
        &[endpoint_slice(
            "veil-controller",
            "grpc-xds",
            15012,
            &[("10.244.1.8", Some(true))],
        )],
    );
    assert_eq!(other.result, Outcome::Failed);
    let wrong_port = judge_endpoints(
        &CA,
        &[endpoint_slice(
            "veil-ca",
            "http",
            80,
            &[("10.244.1.7", Some(true))],
        )],
    );
    assert_eq!(wrong_port.result, Outcome::Failed);
    assert!(wrong_port.details[0].contains("has no port grpc-ca"));
}

/// Every leaf of each object replaced, one at a time, by a value of the wrong type: reading and
/// judging never panics, and a policy or slice that does not decode is never judged ok.
#[test]
fn malformed_objects_never_panic_and_are_never_ok() {
    use super::api::decode;
    let wrong = [
        json!("x"),
        json!(-1),
        json!([1]),
        json!({"a": 1}),
        Value::Null,
        json!(1e300),
    ];
    let running = json!({"running": {"startedAt": "2026-12-01T10:00:00Z"}});
    let originals = [
        deployment("veil-ca", 2, 2, 2, 2),
        daemonset(2, 2, 2),
        ztunnel_pod("ztunnel-a", "node-a", "10.0.0.1", false, running, 3),
        event(
            "ztunnel-a",
            POD_UID,
            "Unhealthy",
            "Readiness probe failed",
            "2026-12-01T10:05:00Z",
            2,
        ),
        policy("shop", "a", Some(("True", "Accepted", "valid")), 1),
        endpoint_slice("veil-ca", "grpc-ca", 15012, &[("10.0.0.1", Some(true))]),
    ];
    let mut cases = 0;
    for original in originals {
        for path in leaves(&original, String::new()) {
            for w in &wrong {
                let mut v = original.clone();
                *v.pointer_mut(&path).unwrap() = w.clone();
                cases += 1;
                match original["kind"].as_str() {
                    Some("Deployment") => {
                        if let Ok(d) = decode::<Deployment>("Deployment", &v) {
                            judge_deployment(&CA, &d, "");
                        }
                    }
                    Some("DaemonSet") => {
                        if let Ok(d) = decode::<DaemonSet>("DaemonSet", &v) {
                            judge_daemonset(&d, &[], &[], &[], "");
                            cert_ttl(&d);
                        }
                    }
                    Some("Pod") => {
                        if let Ok(p) = decode::<Pod>("Pod", &v) {
                            pod_problems(&p);
                        }
                    }
                    Some("Event") => {
                        if let Ok(e) = decode::<Event>("Event", &v) {
                            last_seen(&e);
                        }
                    }
                    Some("EndpointSlice") => {
                        let check = judge_endpoints(&CA, &[v.clone()]);
                        let decodes = decode::<k8s_openapi::api::discovery::v1::EndpointSlice>(
                            "EndpointSlice",
                            &v,
                        )
                        .is_ok();
                        assert!(
                            decodes || check.result != Outcome::Ok,
                            "{path} = {w}: {check:?}"
                        );
                    }
                    _ => {
                        let check = judge(
                            "authorization-policies",
                            "AuthorizationPolicy",
                            &[v.clone()],
                            &Writer(String::new()),
                        );
                        let decodes = decode::<Policy>("AuthorizationPolicy", &v).is_ok();
                        assert!(
                            decodes || check.result == Outcome::Failed,
                            "{path} = {w}: {check:?}"
                        );
                    }
                }
            }
        }
    }
    assert!(cases > 500, "{cases} cases");
}

/// JSON pointers to every leaf of `v`.
fn leaves(v: &Value, at: String) -> Vec<String> {
    match v {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .flat_map(|(k, v)| {
                leaves(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                )
            })
            .collect(),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .enumerate()
            .flat_map(|(i, v)| leaves(v, format!("{at}/{i}")))
            .collect(),
        _ => vec![at],
    }
}

#[test]
fn the_table_and_the_exit_status_follow_the_worst_result() {
    let report = |checks: Vec<Check>| Report::new("veil-system", true, checks);
    let ok = report(vec![Check::ok(
        "kubernetes-api",
        "reachable, Kubernetes v1.33.2",
    )]);
    assert_eq!(ok.exit_code(), 0);
    let warned = report(vec![
        Check::ok("a", "fine"),
        Check::warning("b", "hmm", "look"),
    ]);
    assert_eq!(warned.exit_code(), 0, "warnings do not fail");
    let failed = report(vec![
        Check::ok("kubernetes-api", "reachable"),
        Check::failed(
            "ztunnel",
            "1 of 3 ztunnels not ready on node-c",
            "describe it",
        )
        .with_details(vec![
            "node-c: ztunnel-x not ready: ztunnel says: shop/a: capture failed".into(),
        ]),
    ]);
    assert_eq!(failed.exit_code(), 1);
    assert_eq!(
        table(&failed),
        "ok    kubernetes-api  reachable\n\
         FAIL  ztunnel         1 of 3 ztunnels not ready on node-c\n\
         \x20                     - node-c: ztunnel-x not ready: ztunnel says: shop/a: capture failed\n\
         \x20                     hint: describe it\n\
         \nveil in namespace veil-system: some checks failed\n"
    );
    let error = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no kubeconfig at /root/.kube/config",
    );
    let unreachable = Report::unreachable("veil-system", &error);
    assert_eq!(unreachable.exit_code(), 2);
    assert!(!unreachable.api_reachable);
    assert!(table(&unreachable).contains("FAIL  kubernetes-api  the Kubernetes API could not be asked: no kubeconfig at /root/.kube/config"));
    let json = serde_json::to_value(&failed).unwrap();
    assert_eq!(json["result"], "failed");
    assert_eq!(
        json["checks"][1]["details"][0],
        "node-c: ztunnel-x not ready: ztunnel says: shop/a: capture failed"
    );
    assert!(json["checks"][0].get("hint").is_none() && json["checks"][0].get("details").is_none());
}
