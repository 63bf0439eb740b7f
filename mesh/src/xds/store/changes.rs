//! What changed since the mesh was last made, and how large a patch of it may be and where it
//! runs (see `patch`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::entries::{AddressEntry, ServiceEntry, WorkloadEntry};
use super::{Policy, Received, Store};
use crate::policy::AuthzPolicy;

/// The most workloads one patch takes on in any mesh; in a larger mesh, up to a quarter of its
/// workloads ([`patch_at_most`]). A larger burst is built whole.
const PATCH_AT_MOST: usize = 512;

/// The most workloads one patch of a mesh of `workloads` takes on. Patching costs about 20 µs per
/// workload changed, a whole build about 8 µs per workload in the mesh (100,000 pods: a 1,000-pod
/// namespace enrolled patches in 19 ms, a whole build takes 0.8 s and leaves the allocator's heap
/// fragmented: docs/controller.md), so a patch of a quarter of the mesh costs about what a whole
/// build does.
pub(super) fn patch_at_most(workloads: usize) -> usize {
    PATCH_AT_MOST.max(workloads / 4)
}

/// The most changed workloads and services a patch may take on the caller's thread (an async
/// worker of the data path) — tens of microseconds each. Larger bursts, and changes that reach
/// further than what changed (an Authorization reaches its namespace's workloads, a readdressed
/// Service those that back it), are patched on a blocking thread ([`Store::patches_in_place`]).
const IN_PLACE_AT_MOST: usize = 64;

/// The most backers, over the services a patch in place recomputes, it may take on: each
/// service's endpoints and ports are made anew from all of its backers (a fraction of a
/// microsecond each), so one pod of a Deployment of 50,000 replicas made ready costs that many.
const IN_PLACE_BACKERS_AT_MOST: usize = 2_048;

/// What changed since the mesh was last made.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Something a patch does not follow: the next mesh is built whole.
    pub(super) whole: bool,
    /// Changed workloads (by name, their uid), each with the entry it had when the mesh was last
    /// made (none: it is new).
    pub(super) workloads: HashMap<String, Option<Box<WorkloadEntry>>>,
    /// Services (xDS names) received again as they were but for their ports.
    pub(super) services: BTreeSet<String>,
    /// Services (xDS names) added, removed, or received with other addresses, another name or
    /// another waypoint, each with what it was when the mesh was last made (none: absent).
    pub(super) readdressed: HashMap<String, Option<Box<ServiceEntry>>>,
    /// Changed Authorizations (by name), each with what it was when the mesh was last made
    /// (none: it is new).
    pub(super) authorizations: HashMap<String, Option<Arc<AuthzPolicy>>>,
    /// Enrolled namespaces received or removed.
    pub(super) namespaces: BTreeSet<String>,
}

impl Changes {
    /// The next mesh is built whole.
    pub(super) fn everything(&mut self) {
        self.whole = true;
        self.workloads.clear();
        self.services.clear();
        self.readdressed.clear();
        self.authorizations.clear();
        self.namespaces.clear();
    }

    /// The enrolled namespace `name` was received or removed; `refused`, as it was or is (a
    /// refused one is reported, and a report covers the whole mesh).
    pub(super) fn namespace(&mut self, name: &str, refused: bool) {
        if self.whole {
            return;
        }
        if refused {
            return self.everything();
        }
        self.namespaces.insert(name.to_owned());
    }

    /// The Authorization `name` changed: it was `before` (`None`: absent). One refused, as it was
    /// or is, is reported, and a report covers the whole mesh.
    pub(super) fn authorization(&mut self, name: &str, before: Option<&Policy>, refused: bool) {
        if self.whole {
            return;
        }
        if refused || before.is_some_and(|b| b.refused.is_some()) {
            return self.everything();
        }
        self.authorizations
            .entry(name.to_owned())
            .or_insert_with(|| before.map(|b| b.policy.clone()));
    }

    /// The address `name` changed: it was `before`, it is now `after` (`None`: removed).
    pub(super) fn address(
        &mut self,
        name: &str,
        before: Option<Received>,
        after: Option<&AddressEntry>,
    ) {
        if self.whole {
            return;
        }
        let before = match before {
            None => None,
            Some(Received {
                refused: Some(_), ..
            }) => return self.everything(),
            Some(Received { entry, .. }) => match entry {
                Some(AddressEntry::Workload(w)) => Some(w),
                Some(AddressEntry::Service(old)) => {
                    // Its ports are recomputed with its endpoints; other addresses, name or
                    // waypoint take it out and put it back.
                    return match after {
                        Some(AddressEntry::Service(new)) if old.same_but_ports(new) => {
                            self.services.insert(name.to_owned());
                        }
                        Some(AddressEntry::Workload(_)) => self.everything(),
                        _ => {
                            self.readdressed.entry(name.to_owned()).or_insert(Some(old));
                        }
                    };
                }
                None => None,
            },
        };
        if matches!(after, Some(AddressEntry::Service(_))) {
            if before.is_some() {
                return self.everything(); // a workload's name now a service's
            }
            self.readdressed.entry(name.to_owned()).or_insert(None);
            return;
        }
        self.workloads.entry(name.to_owned()).or_insert(before);
    }

    /// The workload `name`, unchanged as received, may have a new address from this node.
    pub(super) fn refill(&mut self, name: &str, current: &WorkloadEntry) {
        if !self.whole && !self.workloads.contains_key(name) {
            self.workloads
                .insert(name.to_owned(), Some(Box::new(current.clone())));
        }
    }
}

impl Store {
    /// Whether what changed since the last mesh patches in well under a millisecond, so that the
    /// data path's own worker may patch it: a few workloads and services, none readdressed, no
    /// Authorization, and the services to recompute (those changed, and those the changed
    /// workloads back, as they were or are) backed by few workloads in all.
    pub fn patches_in_place(&self) -> bool {
        let c = &self.changes;
        let few = !c.whole
            && c.readdressed.is_empty()
            && c.authorizations.is_empty()
            && c.workloads.len() + c.services.len() <= IN_PLACE_AT_MOST;
        let Some(derived) = self.derived.as_ref().filter(|_| few) else {
            return false;
        };
        // The services recomputed, each once.
        let mut services: BTreeSet<&str> = c.services.iter().map(String::as_str).collect();
        for (uid, before) in &c.workloads {
            let now = match self.addresses.get(uid.as_str()) {
                Some(Received {
                    entry: Some(AddressEntry::Workload(w)),
                    ..
                }) => Some(&**w),
                _ => None,
            };
            for w in before.as_deref().into_iter().chain(now) {
                services.extend(w.services.keys());
            }
        }
        let backed = |key: &&str| derived.backing.get(*key).map_or(0, BTreeSet::len);
        let backers: usize = services.iter().map(backed).sum();
        backers <= IN_PLACE_BACKERS_AT_MOST
    }
}
