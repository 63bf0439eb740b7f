//! Policy status: every AuthorizationPolicy and PeerAuthentication should be `Accepted=True` in
//! the status the controller writes (the replica holding Lease `veil-controller-status`). Rejected
//! policies are failures, each named with the controller's reason; policies without status (or with
//! the status of an older generation) are warnings naming who should write it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use veil_crd::status::{
    ACCEPTED, ENFORCED, PolicyStatus, REASON_FAILING_CLOSED, REASON_NO_WAYPOINT,
};

use super::api::{ReadError, Reader, decode};
use super::{Check, Outcome, bounded, human};

/// The Lease whose holder writes policy status (the controller's `--status-lease` default).
pub(crate) const STATUS_LEASE: &str = "veil-controller-status";

/// The kinds checked: (check name, kind, list path).
const KINDS: [(&str, &str, &str); 2] = [
    (
        "authorization-policies",
        "AuthorizationPolicy",
        "/apis/security.veil.dev/v1/authorizationpolicies",
    ),
    (
        "peer-authentications",
        "PeerAuthentication",
        "/apis/security.veil.dev/v1/peerauthentications",
    ),
];

/// What status judgement needs of a policy: its metadata and status, not its spec (a spec that
/// does not parse is the controller's to reject, in the status).
#[derive(Debug, Deserialize)]
pub(crate) struct Policy {
    pub(crate) metadata: ObjectMeta,
    #[serde(default)]
    pub(crate) status: Option<PolicyStatus>,
}

/// Who writes policy status, as one clause for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Writer(pub(crate) String);

/// Reads and judges both kinds of policy.
pub(crate) async fn check(
    api: &Reader,
    ns: &str,
    controller_installed: bool,
    now: SystemTime,
) -> Vec<Check> {
    let writer = if controller_installed {
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{STATUS_LEASE}");
        let lease = match api.object(&path).await {
            Ok(Some(v)) => decode::<Lease>("Lease", &v).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        writer(ns, lease, now)
    } else {
        Writer("no controller is installed to write it (see the controller check)".into())
    };
    let mut checks = Vec::new();
    for (name, kind, path) in KINDS {
        let check = match api.list(path, &[]).await {
            Ok(items) => judge(name, kind, &items, &writer),
            Err(ReadError::NotFound) => Check::failed(
                name,
                format!("{kind}s are not served: the CRD is missing"),
                "see the crds check",
            ),
            Err(e) => Check::failed(
                name,
                format!("{kind}s could not be listed: {e}"),
                "reading them needs `list` on security.veil.dev resources",
            ),
        };
        checks.push(check);
    }
    checks
}

/// Who writes status, from the status Lease (`Err`: it could not be read).
pub(crate) fn writer(ns: &str, lease: Result<Option<Lease>, String>, now: SystemTime) -> Writer {
    let lease = match lease {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Writer(format!(
                "no controller has taken Lease {ns}/{STATUS_LEASE}: is veil-controller running?"
            ));
        }
        Err(e) => return Writer(format!("Lease {ns}/{STATUS_LEASE} could not be read: {e}")),
    };
    let spec = lease.spec.unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Writer(format!(
            "no controller holds Lease {ns}/{STATUS_LEASE}: is veil-controller running?"
        ));
    };
    let renewed = spec.renew_time.map(|t| SystemTime::from(t.0));
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    match renewed.map(|r| (r, now.duration_since(r).unwrap_or_default())) {
        Some((_, ago)) if ago > duration => Writer(format!(
            "{holder} holds Lease {ns}/{STATUS_LEASE} but last renewed it {} ago (expired): is it running?",
            human(ago)
        )),
        _ => Writer(format!(
            "status is written by {holder} (holder of Lease {ns}/{STATUS_LEASE})"
        )),
    }
}

/// Where one policy stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Accepted; `Some` when its enforcement needs attention (it fails closed), with why.
    Accepted(Option<String>),
    /// Refused by the controller: the condition's reason and message.
    Rejected(String),
    /// No `Accepted` condition yet.
    Pending,
    /// The status is for an older generation of the policy.
    Stale { observed: i64, generation: i64 },
    /// `Accepted` is neither True nor False.
    Unknown(String),
}

/// Where `policy` stands.
pub(crate) fn standing(policy: &Policy) -> Standing {
    let conditions = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let Some(accepted) = conditions.iter().find(|c| c.type_ == ACCEPTED) else {
        return Standing::Pending;
    };
    let generation = policy.metadata.generation.unwrap_or(0);
    if let Some(observed) = accepted.observed_generation
        && observed < generation
    {
        return Standing::Stale {
            observed,
            generation,
        };
    }
    let said = |c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        if c.message.is_empty() {
            c.reason.clone()
        } else {
            format!("{}: {}", c.reason, c.message)
        }
    };
    match accepted.status.as_str() {
        "True" => {
            let enforced = conditions.iter().find(|c| c.type_ == ENFORCED);
            let closed = enforced
                .filter(|c| c.reason == REASON_FAILING_CLOSED || c.reason == REASON_NO_WAYPOINT);
            Standing::Accepted(closed.map(said))
        }
        "False" => Standing::Rejected(said(accepted)),
        other => Standing::Unknown(format!("Accepted={other} ({})", said(accepted))),
    }
}

/// The verdict on the policies of one kind (`items` as listed): failed when one is rejected or
/// cannot be read, a warning when one has no (current) status or fails closed.
pub(crate) fn judge(name: &str, kind: &str, items: &[Value], writer: &Writer) -> Check {
    let mut rejected = Vec::new();
    let mut unreadable = Vec::new();
    let mut waiting = Vec::new();
    let mut closed = Vec::new();
    let mut accepted = 0;
    for item in items {
        let policy = match decode::<Policy>(kind, item) {
            Ok(p) => p,
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        let id = format!(
            "{}/{}",
            policy.metadata.namespace.as_deref().unwrap_or_default(),
            policy.metadata.name.as_deref().unwrap_or_default()
        );
        match standing(&policy) {
            Standing::Accepted(None) => accepted += 1,
            Standing::Accepted(Some(why)) => {
                accepted += 1;
                closed.push(format!("{id}: fails closed: {why}"));
            }
            Standing::Rejected(why) => rejected.push(format!("{id}: rejected: {why}")),
            Standing::Pending => waiting.push(format!("{id}: no status yet")),
            Standing::Stale {
                observed,
                generation,
            } => waiting.push(format!(
                "{id}: status is for generation {observed}, the policy is at {generation}"
            )),
            Standing::Unknown(why) => waiting.push(format!("{id}: {why}")),
        }
    }
    let total = items.len();
    let mut parts = vec![format!("{accepted} of {total} accepted")];
    let (result, hint) = if !rejected.is_empty() || !unreadable.is_empty() {
        if !rejected.is_empty() {
            parts.push(format!("{} rejected", rejected.len()));
        }
        if !unreadable.is_empty() {
            parts.push(format!("{} could not be read", unreadable.len()));
        }
        (
            Outcome::Failed,
            format!(
                "a rejected {kind} is not in force (its scope fails closed): fix it as its status says (kubectl describe {})",
                kind.to_lowercase()
            ),
        )
    } else if !waiting.is_empty() {
        parts.push(format!(
            "{} without current status: {}",
            waiting.len(),
            writer.0
        ));
        (
            Outcome::Warning,
            "the controller writes status within seconds of a change; if this lasts, see the controller check and its logs".to_owned(),
        )
    } else if !closed.is_empty() {
        parts.push(format!("{} fail closed on HTTP rules", closed.len()));
        (
            Outcome::Warning,
            "give the selected workloads a waypoint (label veil.dev/use-waypoint), or drop the HTTP conditions".to_owned(),
        )
    } else {
        (Outcome::Ok, String::new())
    };
    let mut details = bounded(rejected, 20);
    details.extend(bounded(unreadable, 10));
    details.extend(bounded(waiting, 10));
    details.extend(bounded(closed, 10));
    Check::judged(name, result, parts.join(", "), hint).with_details(details)
}
