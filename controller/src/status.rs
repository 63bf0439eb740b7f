//! Policy status: whether each AuthorizationPolicy and PeerAuthentication was accepted, and where
//! and how it is enforced — in particular when it fails closed. Computed from the same snapshot the
//! controller serves, written to the status subresource only when it changed, by one replica at a
//! time: the one holding the status lease ([`crate::lease`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use veil_crd::status::{
    ACCEPTED, ENFORCED, PolicyStatus, REASON_ACCEPTED, REASON_FAILING_CLOSED, REASON_INVALID,
    REASON_NO_TARGETS, REASON_NO_WAYPOINT, REASON_WAYPOINT, REASON_ZTUNNEL,
};
use veil_mesh::discovery::MeshState;
use veil_mesh::discovery::kubernetes::Snapshot;
use veil_mesh::policy::{AuthzPolicy, PolicyError, PolicyId, Scope, Target};
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};

/// `(status, reason, message)` of one condition.
type Verdict = (&'static str, &'static str, String);

/// Which enrolled workloads a policy selects: with and without a waypoint.
#[derive(Default)]
struct Selected {
    behind_waypoint: usize,
    direct: usize,
    /// The first few without a waypoint, to name in a message.
    direct_names: Vec<String>,
}

/// What one snapshot says about every AuthorizationPolicy: computed once (one pass over the
/// workloads), then read per policy.
pub struct Enforcement<'a> {
    state: &'a MeshState,
    invalid: &'a [PolicyError],
    policies: HashMap<&'a PolicyId, &'a Arc<AuthzPolicy>>,
    selected: HashMap<PolicyId, Selected>,
}

impl std::fmt::Debug for Enforcement<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcement")
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Enforcement<'a> {
    /// The enforcement of `state`'s policies; `invalid` are those refused.
    pub fn new(state: &'a MeshState, invalid: &'a [PolicyError]) -> Self {
        let mut selected: HashMap<PolicyId, Selected> = HashMap::new();
        for workload in state.workloads().iter().filter(|w| w.enrolled) {
            for policy in state.authz_for(workload).iter() {
                let entry = selected.entry(policy.id.clone()).or_default();
                if workload.waypoint.is_some() {
                    entry.behind_waypoint += 1;
                } else {
                    entry.direct += 1;
                    if entry.direct_names.len() < 5 {
                        entry.direct_names.push(workload.key());
                    }
                }
            }
        }
        Self {
            state,
            invalid,
            policies: state.authz_policies().iter().map(|p| (&p.id, p)).collect(),
            selected,
        }
    }

    /// The `Accepted` and `Enforced` conditions of AuthorizationPolicy `id`.
    pub fn authz(&self, id: &PolicyId) -> [Verdict; 2] {
        if let Some(e) = self
            .invalid
            .iter()
            .find(|e| &e.policy == id && e.kind == "AuthorizationPolicy")
        {
            return [
                ("False", REASON_INVALID, e.to_string()),
                (
                    "True",
                    REASON_FAILING_CLOSED,
                    "refused: everything it applies to is denied until it is fixed".into(),
                ),
            ];
        }
        let accepted = ("True", REASON_ACCEPTED, "valid".to_owned());
        let Some(policy) = self.policies.get(id) else {
            return [accepted, ("False", REASON_NO_TARGETS, "not found".into())];
        };
        [accepted, self.enforcement(policy)]
    }

    fn enforcement(&self, policy: &AuthzPolicy) -> Verdict {
        if let Scope::Targets(targets) = &policy.scope {
            return targets_enforcement(self.state, &policy.id.namespace, targets);
        }
        let Some(selected) = self.selected.get(&policy.id) else {
            return (
                "False",
                REASON_NO_TARGETS,
                "selects no enrolled workload".into(),
            );
        };
        if policy.uses_l7 && selected.direct > 0 {
            return (
                "True",
                REASON_FAILING_CLOSED,
                format!(
                    "uses HTTP attributes on {} workload(s) without a waypoint ({}): ztunnel cannot check them and denies what the policy could match",
                    selected.direct,
                    selected.direct_names.join(", ")
                ),
            );
        }
        if selected.direct == 0 {
            return (
                "True",
                REASON_WAYPOINT,
                format!(
                    "enforced per request by the waypoint of {} workload(s)",
                    selected.behind_waypoint
                ),
            );
        }
        (
            "True",
            REASON_ZTUNNEL,
            format!(
                "enforced by ztunnel on {} workload(s){}",
                selected.direct,
                if selected.behind_waypoint == 0 {
                    String::new()
                } else {
                    format!(" and by the waypoint of {} more", selected.behind_waypoint)
                }
            ),
        )
    }
}

/// The `Accepted` and `Enforced` conditions of AuthorizationPolicy `id` (for one policy; to go
/// through all of a snapshot's, make one [`Enforcement`]).
pub fn authz_conditions(state: &MeshState, id: &PolicyId, invalid: &[PolicyError]) -> [Verdict; 2] {
    Enforcement::new(state, invalid).authz(id)
}

/// Where a `targetRefs` policy is enforced: by the waypoint of what it is attached to, or, for a
/// Service without a waypoint, by the ztunnels of the Service's pods at L4 (failing closed on its HTTP
/// conditions) — never silently nowhere.
fn targets_enforcement(state: &MeshState, namespace: &str, targets: &[Target]) -> Verdict {
    let without_waypoint: Vec<String> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Service(name) => state.service(namespace, name),
            Target::Gateway(_) => None,
        })
        .filter(|s| s.waypoint.is_none())
        .map(|s| s.key())
        .collect();
    if without_waypoint.is_empty() {
        return (
            "True",
            REASON_WAYPOINT,
            format!("attached to {targets:?}; enforced by the waypoint that serves them"),
        );
    }
    (
        "True",
        REASON_NO_WAYPOINT,
        format!(
            "attached to Service(s) without a waypoint ({}): no proxy checks it per request, so the ztunnels of their pods enforce it at L4 and deny whatever its HTTP conditions could match; give the Service a waypoint (label veil.dev/use-waypoint) to enforce it as written",
            without_waypoint.join(", ")
        ),
    )
}

/// The conditions of PeerAuthentication `id`.
pub fn peer_auth_conditions(id: &PolicyId, invalid: &[PolicyError]) -> [Verdict; 2] {
    match invalid
        .iter()
        .find(|e| &e.policy == id && e.kind == "PeerAuthentication")
    {
        Some(e) => [
            ("False", REASON_INVALID, e.to_string()),
            (
                "True",
                REASON_FAILING_CLOSED,
                "refused: STRICT applies in its scope until it is fixed".into(),
            ),
        ],
        None => [
            ("True", REASON_ACCEPTED, "valid".into()),
            (
                "True",
                REASON_ZTUNNEL,
                "enforced by ztunnel on plaintext arriving at the selected workloads".into(),
            ),
        ],
    }
}

/// The status for `verdicts`, keeping transition times of conditions whose status did not change.
pub fn status_of(
    verdicts: &[Verdict; 2],
    previous: Option<&PolicyStatus>,
    generation: Option<i64>,
) -> PolicyStatus {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = [ACCEPTED, ENFORCED]
        .iter()
        .zip(verdicts)
        .map(|(kind, (status, reason, message))| {
            let before = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == *kind))
                .filter(|c| c.status == *status);
            Condition {
                type_: (*kind).to_owned(),
                status: (*status).to_owned(),
                reason: (*reason).to_owned(),
                message: message.clone(),
                observed_generation: generation,
                last_transition_time: before
                    .map_or(now.clone(), |c| c.last_transition_time.clone()),
            }
        })
        .collect();
    PolicyStatus { conditions }
}

/// Whether two statuses say the same (ignoring transition times).
fn same(a: Option<&PolicyStatus>, b: &PolicyStatus) -> bool {
    let key = |s: &PolicyStatus| -> BTreeMap<String, (String, String, String, Option<i64>)> {
        s.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    (
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                        c.observed_generation,
                    ),
                )
            })
            .collect()
    };
    a.is_some_and(|a| key(a) == key(b))
}

/// Writes policy status while `leading` says this replica holds the status lease: the status of
/// every policy whose status changed, for the newest snapshot, each time there is a new one (and once
/// on taking the lease), and again `retry` after a write failed. Returns when either channel closes.
pub async fn write_while_leading(
    client: Client,
    mut leading: watch::Receiver<bool>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    retry: std::time::Duration,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        info!("holding the status lease: writing policy status");
        // The policies seen while leading: those gone from a later snapshot are audited as removed.
        let mut known: Option<BTreeSet<(&'static str, PolicyId)>> = None;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let written = write(&client, &snapshot, &leading).await;
            audit_removed(&mut known, &snapshot);
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() {
                    return;
                },
                changed = leading.changed() => if changed.is_err() {
                    return;
                },
                // A write that failed is tried again, even if nothing changes meanwhile.
                () = tokio::time::sleep(retry), if !written => {}
            }
            if !*leading.borrow() {
                info!("lost the status lease: another replica writes policy status");
                break;
            }
        }
    }
}

/// Audits the policies of the previous snapshot (`known`) that `snapshot` no longer has, and
/// remembers `snapshot`'s.
fn audit_removed(known: &mut Option<BTreeSet<(&'static str, PolicyId)>>, snapshot: &Snapshot) {
    let ids = |kind, namespace: Option<String>, name: String| {
        (kind, PolicyId::new(&namespace.unwrap_or_default(), &name))
    };
    let objects = &snapshot.objects;
    let now: BTreeSet<(&'static str, PolicyId)> = objects
        .authorization_policies
        .iter()
        .map(|p| ids("AuthorizationPolicy", p.namespace(), p.name_any()))
        .chain(
            objects
                .peer_authentications
                .iter()
                .map(|p| ids("PeerAuthentication", p.namespace(), p.name_any())),
        )
        .collect();
    if let Some(before) = known.as_ref() {
        for (kind, id) in before.difference(&now) {
            info!(target: AUDIT, audit = SCHEMA, event = "policy_removed", component = "controller", kind, policy = %id, "policy removed");
        }
    }
    *known = Some(now);
}

/// How long after a failed status write it is tried again.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes the status of every policy of `snapshot` whose status changed, while `leading`; whether
/// every write that was due succeeded.
pub async fn write(client: &Client, snapshot: &Snapshot, leading: &watch::Receiver<bool>) -> bool {
    let enforcement = Enforcement::new(&snapshot.state, &snapshot.invalid);
    let objects = &snapshot.objects;
    let authz = write_kind(
        client,
        &objects.authorization_policies,
        |p| p.status.as_ref(),
        |id| enforcement.authz(id),
        leading,
    )
    .await;
    let peer = write_kind(
        client,
        &objects.peer_authentications,
        |p| p.status.as_ref(),
        |id| peer_auth_conditions(id, &snapshot.invalid),
        leading,
    )
    .await;
    authz && peer
}

/// Writes the status of each of `policies` (of one kind) whose status changed, while `leading`.
async fn write_kind<K>(
    client: &Client,
    policies: &[Arc<K>],
    status: impl Fn(&K) -> Option<&PolicyStatus>,
    verdicts: impl Fn(&PolicyId) -> [Verdict; 2],
    leading: &watch::Receiver<bool>,
) -> bool
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut all = true;
    for policy in policies {
        if !*leading.borrow() {
            return true;
        }
        let id = PolicyId::new(&policy.namespace().unwrap_or_default(), &policy.name_any());
        let api = Api::<K>::namespaced(client.clone(), &id.namespace);
        all &= patch(
            &api,
            &id,
            status(policy),
            &verdicts(&id),
            policy.meta().generation,
        )
        .await;
    }
    all
}

async fn patch<K>(
    api: &Api<K>,
    id: &PolicyId,
    previous: Option<&PolicyStatus>,
    verdicts: &[Verdict; 2],
    generation: Option<i64>,
) -> bool
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let status = status_of(verdicts, previous, generation);
    if same(previous, &status) {
        return true;
    }
    let body = serde_json::json!({ "status": status });
    match api
        .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => {
            debug!(policy = %id, "wrote policy status");
            let [
                (accepted, reason, message),
                (enforced, enforcement, enforcement_message),
            ] = verdicts;
            let event = if *accepted == "True" {
                "policy_accepted"
            } else {
                "policy_rejected"
            };
            info!(
                target: AUDIT,
                audit = SCHEMA,
                event,
                component = "controller",
                kind = %K::kind(&()),
                policy = %id,
                generation,
                reason,
                detail = message.as_str(),
                enforced,
                enforcement,
                enforcement_detail = enforcement_message.as_str(),
                "policy status"
            );
            true
        }
        Err(e) => {
            warn!(policy = %id, error = %e, "could not write policy status; tried again shortly");
            false
        }
    }
}

#[cfg(test)]
mod tests;
