//! What differs between two meshes' workloads, for [`super::Resources::from_state_after`]: the
//! workloads to encode again.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use veil_crd::authorization::Action;

use crate::discovery::{MeshState, Workload};
use crate::policy::{AuthzPolicy, PolicyId, Scope};

/// The workloads of `prior_state` that are gone or changed, and those of `state` that are new or
/// changed, found by walking both in the order of their uids. A workload is unchanged when it is
/// equal in every field, backs the same services, none of them defined otherwise (its uid not
/// in `backing`), names alike the policies that apply to it and, in the namespaces of `peer`
/// (those whose PeerAuthentications changed; `Some(None)`: all), has the same peer
/// authentication (the rest of what its resource depends on was checked for the whole mesh).
pub(super) fn changed_workloads<'a>(
    prior_state: &'a MeshState,
    state: &'a MeshState,
    backing: &HashSet<&str>,
    peer: Option<&Option<BTreeSet<Arc<str>>>>,
) -> (Vec<&'a Arc<Workload>>, Vec<&'a Arc<Workload>>) {
    // A workload names a policy of its peer authentication only when enrolled and neither
    // behind a waypoint nor in conflict over one (see `policy_names`); a workload that differs
    // in those is encoded again anyway (`same_as`).
    let names_peer_policy =
        |w: &Workload| w.enrolled && w.waypoint.is_none() && w.waypoint_conflict().is_empty();
    let peer_reaches = |w: &Workload| match peer {
        None => false,
        Some(None) => true,
        Some(Some(namespaces)) => namespaces.contains(&w.namespace),
    };
    let (mut gone, mut new) = (Vec::new(), Vec::new());
    let mut before = prior_state.workloads_by_uid().peekable();
    let mut after = state.workloads_by_uid().peekable();
    loop {
        match (before.peek(), after.peek()) {
            (None, None) => break,
            (Some(b), Some(a)) if b.uid == a.uid => {
                let same = !backing.contains(&*a.uid)
                    && (Arc::ptr_eq(b, a)
                        || (b.same_as(a)
                            && prior_state.service_keys_of(b) == state.service_keys_of(a)
                            && named_alike(prior_state, b, state, a)))
                    && (!peer_reaches(a)
                        || !names_peer_policy(a)
                        || prior_state.peer_profile(b) == state.peer_profile(a));
                if !same {
                    gone.push(*b);
                    new.push(*a);
                }
                before.next();
                after.next();
            }
            (Some(b), Some(a)) if b.uid < a.uid => {
                gone.push(*b);
                before.next();
            }
            (Some(b), None) => {
                gone.push(*b);
                before.next();
            }
            (_, Some(a)) => {
                new.push(*a);
                after.next();
            }
        }
    }
    (gone, new)
}

/// Whether the policies that apply to `b` in `prior_state` and to `a` in `state` are named alike
/// in their resources: the same ids, actions and forms (as written or not) of those that are not
/// namespace-wide (a workload names those, and its binding lists them); their rules are in
/// resources of their own.
fn named_alike(prior_state: &MeshState, b: &Workload, state: &MeshState, a: &Workload) -> bool {
    let (before, after) = (prior_state.authz_for(b), state.authz_for(a));
    let named = |list: &[Arc<AuthzPolicy>]| -> Vec<(PolicyId, Action, bool)> {
        list.iter()
            .filter(|p| !matches!(p.scope, Scope::Namespace))
            .map(|p| (p.id.clone(), p.action, p.spec.is_some()))
            .collect()
    };
    Arc::ptr_eq(&before, &after) || named(&before) == named(&after)
}
