//! The ztunnel DaemonSet: ready on every node it is scheduled to, and up to date. For each ztunnel
//! that is not ready: its node and why — the pod's own state (scheduling, containers), ztunnel's
//! readiness answer (read through the API server's pod proxy: it names the pods whose capture failed
//! or lack a certificate, or the kubelet probe rules problem) and the pod's latest warning Event
//! (the kubelet's events only say "HTTP probe failed with statuscode: 503", never the answer).

use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use serde_json::Value;

use super::api::{ReadError, Reader, decode, first_line, safe_name};
use super::{Check, bounded};

/// The DaemonSet's name, and its container's.
pub(crate) const NAME: &str = "ztunnel";
/// ztunnel's readiness port and path (ztunnel/src/ops.rs).
pub(crate) const READINESS: (u16, &str) = (15021, "healthz/ready");
/// The lifetime ztunnel asks for when its DaemonSet does not say (ztunnel's `--cert-ttl` default).
pub(crate) const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

const CHECK: &str = "ztunnel";

/// A ztunnel pod with a running container: one whose metrics can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Running {
    pub(crate) pod: String,
    pub(crate) node: String,
}

/// What the ztunnel check found.
#[derive(Debug)]
pub(crate) struct Ztunnels {
    pub(crate) check: Check,
    /// The pods whose metrics can be asked for.
    pub(crate) running: Vec<Running>,
    /// The certificate lifetime they ask for (`--cert-ttl` in the DaemonSet).
    pub(crate) cert_ttl: Duration,
}

/// A ztunnel pod that is not ready, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unready {
    pub(crate) pod: String,
    pub(crate) node: String,
    pub(crate) why: Vec<String>,
}

fn failed(message: String, hint: &str) -> Ztunnels {
    Ztunnels {
        check: Check::failed(CHECK, message, hint),
        running: Vec::new(),
        cert_ttl: DEFAULT_CERT_TTL,
    }
}

/// Reads and judges the ztunnel DaemonSet in `ns` and its pods.
pub(crate) async fn ztunnels(api: &Reader, ns: &str) -> Ztunnels {
    let hint = format!(
        "kubectl -n {ns} describe daemonset/{NAME}; kubectl -n {ns} get pods -l app.kubernetes.io/name={NAME} -o wide"
    );
    let path = format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{NAME}");
    let ds = match api.object(&path).await {
        Ok(Some(v)) => match decode::<DaemonSet>("DaemonSet", &v) {
            Ok(ds) => ds,
            Err(e) => return failed(e, &hint),
        },
        Ok(None) => {
            return failed(
                format!("DaemonSet {ns}/{NAME} not found: no node runs ztunnel"),
                &format!("install or repair veil: helm upgrade --install veil charts/veil -n {ns}"),
            );
        }
        Err(e) => {
            return failed(
                format!("DaemonSet {ns}/{NAME} could not be read: {e}"),
                &hint,
            );
        }
    };
    let cert_ttl = cert_ttl(&ds).unwrap_or(DEFAULT_CERT_TTL);
    let selector = selector(&ds);
    let pods = match api
        .list(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &[("labelSelector", &selector)],
        )
        .await
    {
        Ok(items) => items,
        Err(e) => return failed(format!("the ztunnel pods could not be listed: {e}"), &hint),
    };
    // Events explain, they do not decide: without them the check still judges, and says so.
    let (events, events_error) = match warning_events(api, ns).await {
        Ok(events) => (events, None),
        Err(e) => (Vec::new(), Some(format!("events could not be read: {e}"))),
    };
    let mut seen = examine(&ds, &pods, &events);
    // Only a running ztunnel can say why it is not ready; asked at once, each bounded in time.
    let answers: Vec<Vec<String>> = futures_util::stream::iter(seen.unready.iter())
        .map(|(u, running)| async move {
            if *running {
                readiness(api, ns, &u.pod).await
            } else {
                Vec::new()
            }
        })
        .buffered(8)
        .collect()
        .await;
    let unready: Vec<Unready> = seen
        .unready
        .drain(..)
        .zip(answers)
        .map(|((mut u, _), answer)| {
            // ztunnel's own reason first: it is the most precise.
            let own = std::mem::take(&mut u.why);
            u.why = answer
                .into_iter()
                .chain(own)
                .chain(events_error.clone())
                .collect();
            u
        })
        .collect();
    let ds_events = ds
        .metadata
        .uid
        .as_deref()
        .map(|uid| events_of(&events, uid))
        .unwrap_or_default();
    let check = judge_daemonset(&ds, &unready, &seen.ready_nodes, &ds_events, &hint)
        .with_unreadable(seen.unreadable);
    Ztunnels {
        check,
        running: seen.running,
        cert_ttl,
    }
}

/// The DaemonSet's pods as listed, sorted out.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Not ready: the pod, what its status and events say, and whether its container runs.
    pub(crate) unready: Vec<(Unready, bool)>,
    /// The nodes of the ready ones.
    pub(crate) ready_nodes: Vec<String>,
    /// Those whose metrics can be read.
    pub(crate) running: Vec<Running>,
    /// Those that could not be read, and why.
    pub(crate) unreadable: Vec<String>,
}

/// Sorts the pods `items` of `ds` (others are left out) by readiness, with what their status and
/// `events` say about those not ready.
pub(crate) fn examine(ds: &DaemonSet, items: &[Value], events: &[Event]) -> Seen {
    let owner = ds.metadata.uid.clone().unwrap_or_default();
    let mut seen = Seen::default();
    for item in items {
        let pod = match decode::<Pod>("Pod", item) {
            Ok(p) => p,
            Err(e) => {
                seen.unreadable.push(e);
                continue;
            }
        };
        let owned = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner);
        if !owner.is_empty() && !owned {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "(no node yet)".into());
        let running = container_running(&pod) && safe_name(&name);
        if running && pod_ip(&pod) {
            seen.running.push(Running {
                pod: name.clone(),
                node: node.clone(),
            });
        }
        if is_ready(&pod) {
            seen.ready_nodes.push(node);
            continue;
        }
        let mut why = pod_problems(&pod);
        why.extend(latest_event(events, &pod));
        seen.unready.push((
            Unready {
                pod: name,
                node,
                why,
            },
            running,
        ));
    }
    seen
}

/// The verdict on the DaemonSet: `unready` are its pods that are not ready, `ready_nodes` the nodes
/// of those that are, `ds_events` the DaemonSet's own warning events (newest first).
pub(crate) fn judge_daemonset(
    ds: &DaemonSet,
    unready: &[Unready],
    ready_nodes: &[String],
    ds_events: &[String],
    hint: &str,
) -> Check {
    let Some(status) = ds.status.as_ref() else {
        return Check::failed(CHECK, "the DaemonSet has no status yet", hint);
    };
    let desired = status.desired_number_scheduled;
    let ready = status.number_ready;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if desired <= 0 {
        return Check::failed(CHECK, "scheduled to no node: no pod is in the mesh anywhere", "check the nodes' taints against ztunnel.tolerations, and ztunnel.nodeSelector (kubectl get nodes --show-labels)")
            .with_details(ds_events.to_vec());
    }
    // A second ztunnel beside a ready one is an upgrade in progress (maxSurge), not a node down.
    let (surging, down): (Vec<&Unready>, Vec<&Unready>) =
        unready.iter().partition(|u| ready_nodes.contains(&u.node));
    let describe = |u: &Unready| {
        let why = if u.why.is_empty() {
            "no reason given".to_owned()
        } else {
            u.why.join("; ")
        };
        format!("{}: {} not ready: {why}", u.node, u.pod)
    };
    let mut details: Vec<String> = down.iter().map(|u| describe(u)).collect();
    if ready < desired || !down.is_empty() {
        let nodes: Vec<&str> = down.iter().map(|u| u.node.as_str()).collect();
        let missing = usize::try_from(desired.saturating_sub(ready))
            .unwrap_or(0)
            .saturating_sub(down.len());
        if missing > 0 {
            details.push(format!(
                "{missing} scheduled ztunnel pods not found (not created yet, or refused)"
            ));
            details.extend(ds_events.iter().cloned());
        }
        let named = if nodes.is_empty() {
            String::new()
        } else {
            format!(" on {}", nodes.join(", "))
        };
        let not_ready = desired
            .saturating_sub(ready)
            .max(i32::try_from(down.len()).unwrap_or(i32::MAX));
        return Check::failed(
            CHECK,
            format!("{not_ready} of {desired} ztunnels not ready{named}: enrolled pods there have no mesh"),
            format!("{hint}; ztunnel's answer says which pods it could not capture or certify (kubectl -n <ns> logs <pod> for more)"),
        )
        .with_details(details);
    }
    details.extend(
        surging
            .iter()
            .map(|u| format!("{} (upgrade in progress on this node)", describe(u))),
    );
    let mut notes = Vec::new();
    if updated < desired {
        notes.push(format!(
            "upgrade in progress: {updated} of {desired} up to date"
        ));
    }
    if status.number_misscheduled > 0 {
        notes.push(format!(
            "{} running where they should not",
            status.number_misscheduled
        ));
    }
    if status.observed_generation.unwrap_or(0) < ds.metadata.generation.unwrap_or(0) {
        notes.push("the latest change is not rolled out yet".to_owned());
    }
    let counts = format!("ready on all {desired} nodes it is scheduled to ({updated} up to date)");
    if notes.is_empty() && surging.is_empty() {
        return Check::ok(CHECK, counts);
    }
    notes.insert(0, counts);
    Check::warning(CHECK, notes.join("; "), hint).with_details(details)
}

/// The DaemonSet's pod selector (its `matchLabels`), as a label selector.
fn selector(ds: &DaemonSet) -> String {
    let labels = ds
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    if labels.is_empty() {
        return format!("app.kubernetes.io/name={NAME}");
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `--cert-ttl` the DaemonSet gives ztunnel, if it gives one that parses.
pub(crate) fn cert_ttl(ds: &DaemonSet) -> Option<Duration> {
    let container = ds
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == NAME)?;
    let args = container.args.as_deref().unwrap_or_default();
    let value = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--cert-ttl") {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
            Some("") => args.get(i + 1).cloned(),
            _ => None,
        })?;
    humantime::parse_duration(&value)
        .ok()
        .filter(|d| !d.is_zero())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn pod_ip(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty())
}

fn ztunnel_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == NAME)
}

fn container_running(pod: &Pod) -> bool {
    ztunnel_container(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// What the pod's own status says is wrong: not scheduled, an init container that failed, a container
/// waiting (image, crash loop) or restarting.
pub(crate) fn pod_problems(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(status) = pod.status.as_ref() else {
        return vec!["the pod has no status yet".into()];
    };
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        out.push(format!(
            "not scheduled: {}",
            c.message
                .as_deref()
                .or(c.reason.as_deref())
                .unwrap_or("no reason given")
        ));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .map(|c| (c, true))
        .chain(
            status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| (c, false)),
        );
    for (c, init) in containers {
        let kind = if init { "init container" } else { "container" };
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("Waiting");
            // Init containers wait in PodInitializing while those before them run: not a problem.
            if reason != "PodInitializing" && reason != "ContainerCreating" {
                let message = w
                    .message
                    .as_deref()
                    .map(|m| format!(": {}", first_line(m, 200)))
                    .unwrap_or_default();
                out.push(format!("{kind} {} {reason}{message}", c.name));
            }
        }
        if let Some(t) = state
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
        {
            out.push(format!(
                "{kind} {} exited {} ({})",
                c.name,
                t.exit_code,
                t.reason.as_deref().unwrap_or("Error")
            ));
        }
        if c.restart_count > 0 {
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        ", last exit {} ({})",
                        t.exit_code,
                        t.reason.as_deref().unwrap_or("Error")
                    )
                })
                .unwrap_or_default();
            out.push(format!(
                "{kind} {} restarted {} times{last}",
                c.name, c.restart_count
            ));
        }
    }
    out
}

/// ztunnel's own readiness answer, through the API server's pod proxy.
async fn readiness(api: &Reader, ns: &str, pod: &str) -> Vec<String> {
    let (port, path) = READINESS;
    match api.proxy(ns, pod, port, path).await {
        Ok(answer) if answer.status.is_success() => vec!["ztunnel now answers ready".into()],
        Ok(answer) if answer.status == http::StatusCode::SERVICE_UNAVAILABLE => {
            readiness_lines(&answer.text())
        }
        Ok(answer) => vec![format!(
            "its readiness could not be read through the API server: {}",
            super::api::status_error(&answer)
        )],
        Err(e) => vec![format!(
            "its readiness could not be read through the API server: {e}"
        )],
    }
}

/// The problems in ztunnel's `not ready:` answer, one per line, each marked as ztunnel's.
pub(crate) fn readiness_lines(body: &str) -> Vec<String> {
    let lines: Vec<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "not ready:")
        .map(|l| format!("ztunnel says: {}", first_line(l, 300)))
        .collect();
    if lines.is_empty() {
        vec![format!(
            "ztunnel answers not ready: {}",
            first_line(body, 200)
        )]
    } else {
        bounded(lines, 5)
    }
}

/// The warning events in `ns`, newest first.
async fn warning_events(api: &Reader, ns: &str) -> Result<Vec<Event>, ReadError> {
    let path = format!("/api/v1/namespaces/{ns}/events");
    let items: Vec<Value> = api
        .list(&path, &[("fieldSelector", "type=Warning")])
        .await?;
    // An event that cannot be read explains nothing; the pod's own state still does.
    let mut events: Vec<Event> = items
        .iter()
        .filter_map(|v| decode::<Event>("Event", v).ok())
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(last_seen(e)));
    Ok(events)
}

/// When an event last happened.
pub(crate) fn last_seen(e: &Event) -> Option<SystemTime> {
    let series = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0);
    let stamp = series
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0));
    stamp.map(SystemTime::from)
}

/// The events (newest first) about the object `uid`, described.
pub(crate) fn events_of(events: &[Event], uid: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .take(3)
        .map(describe_event)
        .collect()
}

fn describe_event(e: &Event) -> String {
    let count = e
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .filter(|c| *c > 1)
        .map(|c| format!(" (×{c})"))
        .unwrap_or_default();
    format!(
        "event {}: {}{count}",
        e.reason.as_deref().unwrap_or("?"),
        first_line(e.message.as_deref().unwrap_or_default(), 300)
    )
}

/// The newest warning event about `pod`.
pub(crate) fn latest_event(events: &[Event], pod: &Pod) -> Option<String> {
    let uid = pod.metadata.uid.as_deref()?;
    events
        .iter()
        .find(|e| e.involved_object.uid.as_deref() == Some(uid))
        .map(describe_event)
}
