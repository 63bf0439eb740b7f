//! One copy of what many workloads hold alike. A subscriber holds every workload of the cluster,
//! and most of their fields repeat: a namespace, a node, a service account, a Deployment's names
//! and policies and services are those of hundreds of pods. Held once each, a workload costs its
//! own name, addresses and version, not a dozen small allocations (issue 11's memory target: each
//! allocation also costs the allocator a header and rounding).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use crate::discovery::Naming;
use crate::identity::Identity;

/// A value held by reference count, so a pool can tell whether anything but itself still holds it.
pub(super) trait Counted: Clone + Eq + Hash {
    /// Whether anything besides the pool holds it.
    fn held_elsewhere(&self) -> bool;
}

impl<T: ?Sized + Eq + Hash> Counted for Arc<T> {
    fn held_elsewhere(&self) -> bool {
        Arc::strong_count(self) > 1
    }
}

impl Counted for Identity {
    fn held_elsewhere(&self) -> bool {
        self.holders() > 1
    }
}

/// The values of one kind, one copy of each. What nothing else holds any more is let go once the
/// pool has doubled since it was last swept (and holds more than [`SWEEP_ABOVE`]), so a cluster's
/// churn (pods' revisions, nodes come and gone) does not pile up and a sweep costs O(1) per value
/// added. Values larger than [`POOLED_AT_MOST`] are not pooled: no name in a cluster is that long,
/// and a sender that makes up long ones cannot have the pool keep its dead ones.
#[derive(Debug)]
pub(super) struct Pool<H> {
    held: HashSet<H>,
    /// How many it held after the last sweep.
    kept: usize,
}

impl<H> Default for Pool<H> {
    fn default() -> Self {
        Self {
            held: HashSet::new(),
            kept: 0,
        }
    }
}

/// Below this, a pool is not swept: a mesh's namespaces, nodes and accounts are at least this many.
const SWEEP_ABOVE: usize = 1024;

/// The largest value pooled, in bytes of strings (and ports): a Kubernetes name is at most 253.
/// Between sweeps a pool holds at most as many dead values as it kept at the last sweep (or
/// `SWEEP_ABOVE`), each at most this large.
pub(super) const POOLED_AT_MOST: usize = 1024;

impl<H: Counted> Pool<H> {
    /// The copy of `value` held, made by `make` when there is none; `size` is the value's size in
    /// bytes, above [`POOLED_AT_MOST`] made and not held.
    pub(super) fn get<Q>(&mut self, value: &Q, size: usize, make: impl FnOnce() -> H) -> H
    where
        H: Borrow<Q>,
        Q: ?Sized + Eq + Hash,
    {
        if size > POOLED_AT_MOST {
            return make();
        }
        if let Some(held) = self.held.get(value) {
            return held.clone();
        }
        let made = make();
        self.held.insert(made.clone());
        if self.held.len() > SWEEP_ABOVE.max(2 * self.kept) {
            self.held.retain(Counted::held_elsewhere);
            self.kept = self.held.len();
            // A pool that shrank a lot gives its table back: a sweep walks the whole table.
            if self.held.capacity() > 4 * self.kept.max(SWEEP_ABOVE) {
                self.held.shrink_to(2 * self.kept);
            }
        }
        made
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }
}

/// The services a workload backs (xDS names, sorted), with their ports.
pub(super) type ServiceList = [(Arc<str>, super::entries::Ports)];

/// The store's pools.
#[derive(Debug, Default)]
pub(super) struct Shared {
    strings: Pool<Arc<str>>,
    namings: Pool<Arc<Naming>>,
    identities: Pool<Identity>,
    policies: Pool<Arc<[Arc<str>]>>,
    services: Pool<Arc<ServiceList>>,
}

impl Shared {
    /// `s`, shared.
    pub(super) fn str(&mut self, s: &str) -> Arc<str> {
        self.strings.get(s, s.len(), || Arc::from(s))
    }

    pub(super) fn naming(&mut self, naming: Naming) -> Arc<Naming> {
        let size = naming.workload.len() + naming.app.len() + naming.version.len();
        self.namings.get(&naming, size, || Arc::new(naming.clone()))
    }

    pub(super) fn identity(&mut self, identity: Identity) -> Identity {
        let size = identity.as_str().len();
        self.identities.get(&identity, size, || identity.clone())
    }

    /// A workload's Authorizations (their names).
    pub(super) fn policies(&mut self, names: Vec<Arc<str>>) -> Arc<[Arc<str>]> {
        let size = names.iter().map(|n| n.len() + 16).sum();
        self.policies
            .get(names.as_slice(), size, || names.clone().into())
    }

    /// The services a workload backs, with their ports.
    pub(super) fn services(
        &mut self,
        services: Vec<(Arc<str>, super::entries::Ports)>,
    ) -> Arc<ServiceList> {
        let size = services
            .iter()
            .map(|(key, ports)| key.len() + 32 + 4 * ports.len())
            .sum();
        self.services
            .get(services.as_slice(), size, || services.clone().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_held_once_and_let_go_when_nothing_else_holds_them() {
        let mut shared = Shared::default();
        let a = shared.str("ns1");
        let b = shared.str(&String::from("ns1"));
        assert!(Arc::ptr_eq(&a, &b), "one copy of equal strings");
        let name = shared.str("ns1/p");
        let p = shared.policies(vec![a.clone(), name.clone()]);
        let again = shared.str("ns1/p");
        let q = shared.policies(vec![b.clone(), again]);
        assert!(Arc::ptr_eq(&p, &q), "one copy of equal lists");
        drop((p, q));

        // Values nothing else holds are let go as the pool grows, and only those.
        let kept: Vec<Arc<str>> = (0..100).map(|i| shared.str(&format!("kept-{i}"))).collect();
        for i in 0..10 * SWEEP_ABOVE {
            drop(shared.str(&format!("churn-{i}")));
        }
        assert!(
            shared.strings.len() <= 2 * SWEEP_ABOVE + kept.len(),
            "{} strings held",
            shared.strings.len()
        );
        for (i, k) in kept.iter().enumerate() {
            assert!(
                Arc::ptr_eq(k, &shared.str(&format!("kept-{i}"))),
                "kept-{i} was let go while held"
            );
        }
        assert!(Arc::ptr_eq(&a, &shared.str("ns1")));

        // What no cluster's names are like is not pooled: made up anew each time, never held.
        let long = "n".repeat(POOLED_AT_MOST + 1);
        let before = shared.strings.len();
        let (x, y) = (shared.str(&long), shared.str(&long));
        assert!(!Arc::ptr_eq(&x, &y) && *x == *long);
        assert_eq!(shared.strings.len(), before);
    }
}
