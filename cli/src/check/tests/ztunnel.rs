//! The ztunnel DaemonSet and its pods: readiness, why not, and the certificate lifetime asked for.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::{Value, json};

use super::super::Outcome;
use super::super::certificates::default_threshold;
use super::super::ztunnel::{
    Unready, cert_ttl, examine, judge_daemonset, last_seen, latest_event, pod_problems,
    readiness_lines,
};
use super::objects::*;
use super::{HOUR, from};

fn unready(node: &str, why: &[&str]) -> Unready {
    Unready {
        pod: format!("ztunnel-{node}"),
        node: node.to_owned(),
        why: why.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn a_daemonset_is_ok_only_when_every_scheduled_ztunnel_is_ready_and_updated() {
    let nodes = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let ok = judge_daemonset(
        &from(daemonset(3, 3, 3)),
        &[],
        &nodes(&["a", "b", "c"]),
        &[],
        "h",
    );
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");
    assert!(ok.message.contains("all 3 nodes"), "{}", ok.message);

    let why = "ztunnel says: shop/web-1: capture failed: no such network namespace";
    let down = judge_daemonset(
        &from(daemonset(3, 2, 3)),
        &[unready(
            "node-c",
            &[
                why,
                "event Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503 (×12)",
            ],
        )],
        &nodes(&["node-a", "node-b"]),
        &[],
        "h",
    );
    assert_eq!(down.result, Outcome::Failed);
    assert!(
        down.message.contains("1 of 3 ztunnels not ready on node-c"),
        "{}",
        down.message
    );
    assert_eq!(down.details.len(), 1);
    assert!(
        down.details[0].starts_with("node-c: ztunnel-node-c not ready: "),
        "{:?}",
        down.details
    );
    assert!(down.details[0].contains(why) && down.details[0].contains("statuscode: 503"));

    // Counted not ready but no pod to show: the DaemonSet's own events say why.
    let refused = judge_daemonset(
        &from(daemonset(2, 1, 2)),
        &[],
        &nodes(&["node-a"]),
        &["event FailedCreate: pods \"ztunnel-x\" is forbidden: exceeded quota".into()],
        "h",
    );
    assert_eq!(refused.result, Outcome::Failed);
    assert!(
        refused.details.iter().any(|d| d.contains("exceeded quota")),
        "{:?}",
        refused.details
    );

    let nowhere = judge_daemonset(&from(daemonset(0, 0, 0)), &[], &[], &[], "h");
    assert_eq!(nowhere.result, Outcome::Failed);
    assert!(nowhere.message.contains("no node"));

    let upgrading = judge_daemonset(
        &from(daemonset(3, 3, 1)),
        &[],
        &nodes(&["a", "b", "c"]),
        &[],
        "h",
    );
    assert_eq!(upgrading.result, Outcome::Warning);
    assert!(
        upgrading.message.contains("1 of 3 up to date"),
        "{}",
        upgrading.message
    );

    // The new ztunnel of a surge upgrade, beside the ready old one: a warning, not a node down.
    let surge = judge_daemonset(
        &from(daemonset(2, 2, 1)),
        &[unready("node-b", &["ztunnel says: starting"])],
        &nodes(&["node-a", "node-b"]),
        &[],
        "h",
    );
    assert_eq!(surge.result, Outcome::Warning, "{surge:?}");
    assert!(surge.details[0].contains("upgrade in progress"));

    let mut no_status = daemonset(1, 1, 1);
    no_status.as_object_mut().unwrap().remove("status");
    assert_eq!(
        judge_daemonset(&from(no_status), &[], &[], &[], "h").result,
        Outcome::Failed
    );
}

#[test]
fn the_certificate_lifetime_is_read_from_the_daemonset_arguments() {
    let with = |args: Value| {
        let mut ds = daemonset(1, 1, 1);
        ds["spec"]["template"]["spec"]["containers"][0]["args"] = args;
        cert_ttl(&from::<DaemonSet>(ds))
    };
    assert_eq!(
        with(json!(["--node=$(NODE_NAME)", "--cert-ttl=24h"])),
        Some(24 * HOUR)
    );
    assert_eq!(
        with(json!(["--cert-ttl", "90m"])),
        Some(90 * Duration::from_secs(60))
    );
    assert_eq!(with(json!(["--cert-ttl=soon"])), None);
    assert_eq!(with(json!(["--cert-ttl=0s"])), None);
    assert_eq!(with(json!(["--cert-ttls=1h"])), None);
    assert_eq!(with(json!([])), None);
    assert_eq!(
        default_threshold(24 * HOUR),
        Duration::from_secs(9 * 3600 + 36 * 60)
    );
}

#[test]
fn a_pods_own_status_says_why_it_is_not_ready() {
    let crashing = from::<Pod>(ztunnel_pod(
        "ztunnel-7kx2p",
        "node-b",
        "10.0.0.12",
        false,
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container=ztunnel pod=ztunnel-7kx2p_veil-system(…)"}}),
        7,
    ));
    let problems = pod_problems(&crashing);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("container ztunnel CrashLoopBackOff: back-off 5m0s")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "container ztunnel restarted 7 times, last exit 1 (Error)"),
        "{problems:?}"
    );

    let mut pending = ztunnel_pod(
        "ztunnel-q9z8w",
        "",
        "",
        false,
        json!({"waiting": {"reason": "ContainerCreating"}}),
        0,
    );
    pending["status"] = json!({"phase": "Pending", "qosClass": "Burstable", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory.", "lastProbeTime": null, "lastTransitionTime": "2026-12-01T10:00:00Z"}]});
    assert_eq!(
        pod_problems(&from(pending)),
        ["not scheduled: 0/3 nodes are available: 3 Insufficient memory."]
    );

    let mut init_failed = ztunnel_pod(
        "ztunnel-abcde",
        "node-a",
        "10.0.0.11",
        false,
        json!({"waiting": {"reason": "PodInitializing"}}),
        0,
    );
    init_failed["status"]["initContainerStatuses"][0]["state"] = json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T10:00:01Z", "containerID": "containerd://1"}});
    let problems = pod_problems(&from(init_failed));
    assert_eq!(
        problems,
        ["init container install-cni exited 1 (Error)"],
        "PodInitializing is not a problem of its own"
    );
}

#[test]
fn ztunnels_readiness_answer_becomes_one_detail_per_problem() {
    let body = "not ready:\nshop/web-1: capture failed: entering /var/run/netns/cni-1: No such file or directory\nshop/web-1: no certificate for spiffe://cluster.local/ns/shop/sa/web\n";
    assert_eq!(
        readiness_lines(body),
        [
            "ztunnel says: shop/web-1: capture failed: entering /var/run/netns/cni-1: No such file or directory",
            "ztunnel says: shop/web-1: no certificate for spiffe://cluster.local/ns/shop/sa/web",
        ]
    );
    assert_eq!(
        readiness_lines("not ready:\n"),
        ["ztunnel answers not ready: not ready:"]
    );
    assert_eq!(
        readiness_lines(&"x\n".repeat(9)).len(),
        6,
        "bounded, with a count of the rest"
    );
}

#[test]
fn the_newest_warning_event_of_the_pod_is_the_one_shown() {
    let pod = from::<Pod>(ztunnel_pod(
        "ztunnel-7kx2p",
        "node-b",
        "10.0.0.12",
        false,
        json!({"running": {"startedAt": "2026-12-01T10:00:00Z"}}),
        0,
    ));
    let mut events: Vec<Event> = vec![
        from(event(
            "ztunnel-7kx2p",
            POD_UID,
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
            "2026-12-01T10:05:00Z",
            12,
        )),
        from(event(
            "ztunnel-7kx2p",
            POD_UID,
            "BackOff",
            "Back-off restarting failed container",
            "2026-12-01T10:01:00Z",
            1,
        )),
        from(event(
            "other",
            "another-uid",
            "Unhealthy",
            "not about this pod",
            "2026-12-01T10:09:00Z",
            1,
        )),
    ];
    events.sort_by_key(|e| std::cmp::Reverse(last_seen(e)));
    assert_eq!(
        latest_event(&events, &pod).as_deref(),
        Some(
            "event Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503 (×12)"
        )
    );
    // events.k8s.io-style series: the series' last observation is when it last happened.
    let mut series = event(
        "ztunnel-7kx2p",
        POD_UID,
        "Unhealthy",
        "newer",
        "2026-12-01T09:00:00Z",
        1,
    );
    series["series"] = json!({"count": 40, "lastObservedTime": "2026-12-01T10:30:00.000000Z"});
    events.push(from(series));
    events.sort_by_key(|e| std::cmp::Reverse(last_seen(e)));
    assert_eq!(
        latest_event(&events, &pod).as_deref(),
        Some("event Unhealthy: newer (×40)")
    );
}

#[test]
fn the_daemonsets_pods_are_sorted_by_readiness_and_others_left_out() {
    let ds = from::<DaemonSet>(daemonset(3, 1, 3));
    let running = json!({"running": {"startedAt": "2026-12-01T10:00:00Z"}});
    let ready = ztunnel_pod("ztunnel-a", "node-a", "10.0.0.11", true, running.clone(), 0);
    let crashing = ztunnel_pod(
        "ztunnel-b",
        "node-b",
        "10.0.0.12",
        false,
        json!({"waiting": {"reason": "CrashLoopBackOff"}}),
        4,
    );
    let unready = ztunnel_pod("ztunnel-c", "node-c", "10.0.0.13", false, running, 0);
    let mut stranger = ztunnel_pod("ztunnel-x", "node-x", "10.0.0.14", true, json!({}), 0);
    stranger["metadata"]["ownerReferences"][0]["uid"] = json!("another-daemonset");
    let mut mangled = ztunnel_pod("ztunnel-d", "node-d", "10.0.0.15", true, json!({}), 0);
    mangled["status"]["conditions"] = json!("Ready");
    let events: Vec<Event> = vec![from(event(
        "ztunnel-c",
        POD_UID,
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "2026-12-01T10:05:00Z",
        3,
    ))];
    let seen = examine(&ds, &[ready, crashing, unready, stranger, mangled], &events);
    assert_eq!(seen.ready_nodes, ["node-a"]);
    let running: Vec<&str> = seen.running.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(
        running,
        ["node-a", "node-c"],
        "a crash-looping ztunnel has no metrics to read"
    );
    let unready: Vec<(&str, bool)> = seen
        .unready
        .iter()
        .map(|(u, r)| (u.node.as_str(), *r))
        .collect();
    assert_eq!(unready, [("node-b", false), ("node-c", true)]);
    assert!(
        seen.unready[0].0.why[0].starts_with("container ztunnel CrashLoopBackOff"),
        "{:?}",
        seen.unready[0].0.why
    );
    assert!(
        seen.unready[1]
            .0
            .why
            .iter()
            .any(|w| w.contains("statuscode: 503 (×3)")),
        "{:?}",
        seen.unready[1].0.why
    );
    assert_eq!(seen.unreadable.len(), 1);
    assert!(
        seen.unreadable[0].starts_with("could not read Pod veil-system/ztunnel-d"),
        "{:?}",
        seen.unreadable
    );
}
