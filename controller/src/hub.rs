//! The snapshots the controller serves: every change of the mesh becomes a new, immutable set of
//! resources, published to all streams at once. A stream only ever holds a reference to the
//! snapshot its client last received, so a slow client costs one reference, never a queue; and the
//! difference between two snapshots is computed once and shared by every stream that needs it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use veil_mesh::xds::{Kind, Resources};

/// One published set of resources.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every publication.
    pub seq: u64,
    /// The resources.
    pub resources: Resources,
}

/// What changed for one kind between two snapshots.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Names that are new or whose version changed.
    pub updated: Vec<Arc<str>>,
    /// Names that are gone.
    pub removed: Vec<Arc<str>>,
}

/// How many computed differences are remembered (streams are usually at one of the last few
/// snapshots).
const CACHED_CHANGES: usize = 32;

type ChangesKey = (Kind, u64, u64);

/// Publishes snapshots and shares the differences between them.
#[derive(Debug)]
pub struct Hub {
    tx: watch::Sender<Arc<Snapshot>>,
    cache: Mutex<VecDeque<(ChangesKey, Arc<Changes>)>>,
}

impl Hub {
    /// A hub serving `first`.
    pub fn new(first: Resources) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(Snapshot {
            seq: 1,
            resources: first,
        }));
        Arc::new(Self {
            tx,
            cache: Mutex::new(VecDeque::new()),
        })
    }

    /// Publishes the next snapshot. Entries equal to the current snapshot's share its memory.
    pub fn publish(&self, mut resources: Resources) -> Arc<Snapshot> {
        let current = self.current();
        resources.share_unchanged(&current.resources);
        let next = Arc::new(Snapshot {
            seq: current.seq + 1,
            resources,
        });
        self.tx.send_replace(next.clone());
        next
    }

    /// The newest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Wakes on every publication.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// What changed for `kind` from `from` to `to`.
    pub fn changes(&self, kind: Kind, from: &Snapshot, to: &Snapshot) -> Arc<Changes> {
        let key = (kind, from.seq, to.seq);
        if let Some((_, hit)) = self.lock().iter().find(|(k, _)| *k == key) {
            return hit.clone();
        }
        let computed = Arc::new(diff(kind, from, to));
        let mut cache = self.lock();
        if cache.len() == CACHED_CHANGES {
            cache.pop_front();
        }
        cache.push_back((key, computed.clone()));
        computed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(ChangesKey, Arc<Changes>)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Walks the two snapshots' entries once, skipping what they share (a snapshot translated from
/// the previous one shares everything that did not change).
fn diff(kind: Kind, from: &Snapshot, to: &Snapshot) -> Changes {
    use imbl::ordmap::DiffItem;
    let mut out = Changes::default();
    for item in from.resources.of(kind).diff(to.resources.of(kind)) {
        match item {
            DiffItem::Add(name, _) => out.updated.push(name.clone()),
            DiffItem::Update {
                old: (_, before),
                new: (name, after),
            } if before.version != after.version => out.updated.push(name.clone()),
            DiffItem::Update { .. } => {}
            DiffItem::Remove(name, _) => out.removed.push(name.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use veil_mesh::discovery::{MeshSettings, local};

    use super::*;

    fn resources(yaml: &str) -> Resources {
        Resources::from_state(&local::parse(yaml, &MeshSettings::default()).unwrap())
    }

    const ONE: &str = "workloads:\n  - {name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1]}\n  - {name: b, namespace: n, serviceAccount: b, node: x, ips: [10.0.0.2]}\n";

    #[test]
    fn changes_list_updated_and_removed_names_and_are_shared() {
        let hub = Hub::new(resources(ONE));
        let first = hub.current();
        let second = hub.publish(resources(
            &ONE.replace("10.0.0.2", "10.0.0.3")
                .replace("name: a,", "name: c,"),
        ));
        let changes = hub.changes(Kind::Address, &first, &second);
        let names = |v: &[Arc<str>]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&changes.updated),
            ["Kubernetes//Pod/n/b", "Kubernetes//Pod/n/c"]
        );
        assert_eq!(names(&changes.removed), ["Kubernetes//Pod/n/a"]);
        assert!(Arc::ptr_eq(
            &changes,
            &hub.changes(Kind::Address, &first, &second)
        ));
        assert_eq!(
            *hub.changes(Kind::Authorization, &first, &second),
            Changes::default()
        );
        // Unchanged entries share the previous snapshot's bytes.
        let third = hub.publish(resources(ONE));
        let fourth = hub.publish(resources(ONE));
        let same = |name: &str| {
            third.resources.of(Kind::Address)[name].body.as_ptr()
                == fourth.resources.of(Kind::Address)[name].body.as_ptr()
        };
        assert!(same("Kubernetes//Pod/n/a") && same("Kubernetes//Pod/n/b"));
    }
}
