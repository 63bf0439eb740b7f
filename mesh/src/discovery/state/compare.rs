//! Comparisons of two meshes, for translating one into resources starting from the other's
//! (`xds::Resources::from_state_after`): what differs, walked in order, pointer comparisons where
//! one was patched from the other.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{MeshState, ServiceKey};
use crate::policy::{AuthzPolicy, PeerAuthPolicy, PolicyId};

impl MeshState {
    /// The services whose definitions (not their endpoints) differ between `self` and `other`:
    /// added, removed or changed, by key. One walk over both, in key order; a mesh patched from
    /// the other shares the services it did not change, and those are not compared.
    pub(crate) fn services_defined_otherwise(&self, other: &Self) -> Vec<ServiceKey> {
        let mut out = Vec::new();
        let mut theirs = other.services.iter().peekable();
        for (key, ours) in &self.services {
            while let Some((gone, _)) = theirs.next_if(|(k, _)| *k < key) {
                out.push(gone.clone());
            }
            match theirs.next_if(|(k, _)| *k == key) {
                Some((_, prior)) if Arc::ptr_eq(ours, prior) || ours.same_definition(prior) => {}
                _ => out.push(key.clone()),
            }
        }
        out.extend(theirs.map(|(k, _)| k.clone()));
        out.sort();
        out
    }

    /// Whether everything a workload's resources depend on besides the workload itself, the
    /// services it backs, the policies that apply to it and its peer authentication is the same
    /// in `self` and `other`: the settings, telemetry and the waypoints. The services' definitions
    /// are compared apart ([`Self::services_defined_otherwise`]), and so are the policies, workload
    /// by workload (`xds::resources`) and one by one ([`Self::policies_replaced`]), and peer
    /// authentication, workload by workload where it changed ([`Self::peer_auth_changed`]).
    pub(crate) fn same_surroundings(&self, other: &Self) -> bool {
        fn by_id<T>(items: &[T], id: impl Fn(&T) -> &PolicyId) -> Vec<&T> {
            let mut sorted: Vec<&T> = items.iter().collect();
            sorted.sort_by(|a, b| id(a).cmp(id(b)));
            sorted
        }
        // A mesh patched from the other shares what it did not change: those are not compared.
        self.settings == other.settings
            && self.istio_semantics == other.istio_semantics
            && (Arc::ptr_eq(&self.telemetry, &other.telemetry)
                || by_id(&self.telemetry, |p| &p.id) == by_id(&other.telemetry, |p| &p.id))
            && (Arc::ptr_eq(&self.waypoints, &other.waypoints) || self.waypoints == other.waypoints)
    }

    /// Where the PeerAuthentications of `self` and `other` differ: `None` nowhere, else the
    /// namespaces of those added, removed or changed (`Some(None)`: everywhere, one of the root
    /// namespace's did, whose apply mesh-wide). One sort of each by id; none when they are the very
    /// same (a mesh patched from the other for anything else).
    pub(crate) fn peer_auth_changed(&self, other: &Self) -> Option<Option<BTreeSet<Arc<str>>>> {
        if Arc::ptr_eq(&self.peer_auth, &other.peer_auth) {
            return None;
        }
        fn sorted(s: &MeshState) -> Vec<&PeerAuthPolicy> {
            let mut all: Vec<&PeerAuthPolicy> = s.peer_auth.iter().collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            all
        }
        let (ours, theirs) = (sorted(self), sorted(other));
        let mut namespaces = BTreeSet::new();
        let mut theirs = theirs.into_iter().peekable();
        for p in ours {
            while let Some(gone) = theirs.next_if(|q| q.id < p.id) {
                namespaces.insert(gone.id.namespace.clone());
            }
            match theirs.next_if(|q| q.id == p.id) {
                Some(prior) if prior == p => {}
                _ => drop(namespaces.insert(p.id.namespace.clone())),
            }
        }
        namespaces.extend(theirs.map(|q| q.id.namespace.clone()));
        let root = self.settings().root_namespace;
        if namespaces.iter().any(|ns| **ns == *root) {
            return Some(None);
        }
        (!namespaces.is_empty()).then_some(Some(namespaces))
    }

    /// The AuthorizationPolicies that are not the very same in `self` and `other` (added, removed
    /// or replaced), by id, each with `self`'s (`None`: removed). One walk over both, in the
    /// order of their ids; a mesh patched from the other shares the policies it did not replace.
    pub(crate) fn policies_replaced(
        &self,
        other: &Self,
    ) -> Vec<(PolicyId, Option<&Arc<AuthzPolicy>>)> {
        let mut out = Vec::new();
        let mut theirs = other.authz.all().iter().peekable();
        for ours in self.authz.all() {
            while let Some(gone) = theirs.next_if(|p| p.id < ours.id) {
                out.push((gone.id.clone(), None));
            }
            match theirs.next_if(|p| p.id == ours.id) {
                Some(prior) if Arc::ptr_eq(ours, prior) => {}
                _ => out.push((ours.id.clone(), Some(ours))),
            }
        }
        out.extend(theirs.map(|p| (p.id.clone(), None)));
        out
    }

    /// Whether the policies are the very same as `other`'s (a mesh patched from the other).
    pub(crate) fn same_policies(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.authz, &other.authz)
    }
}
