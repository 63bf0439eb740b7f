//! The watch of a kind whose CRD may not be installed. `helm upgrade` installs no CRD a chart's
//! `crds/` gained after its first install, so a cluster upgraded to a veil that reads a new kind
//! (Telemetry) may not serve it yet. Such a kind never holds the rest of the mesh back:
//!
//! - the first sync waits for its first answer (objects or a 404), at most [`GRACE`]: an error
//!   (403, 500) is no answer, so a transient one at start does not publish a mesh without the
//!   kind's objects; past [`GRACE`] the mesh goes on without them (logged) until a list succeeds;
//! - while the API answers 404 for it, it has no objects: one warning says how to install the CRD,
//!   and it is listed again after [`RETRY_FIRST`], doubling up to [`RETRY_MAX`], so its objects
//!   appear once the CRD is installed (and go if it is deleted). A missing kind costs no
//!   translation: only a change of its objects does;
//! - any other failure (403, 500) is retried with the watcher's backoff, as for the other kinds,
//!   its last listed objects kept.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// How long the first sync waits for the kind's first answer (shorter in tests, which wait it out).
pub(super) const GRACE: Duration = if cfg!(test) {
    Duration::from_secs(2)
} else {
    Duration::from_secs(10)
};
/// The first wait before a missing kind is listed again; doubled each time up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two lists of a missing kind.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What tells an operator how to install a missing kind.
#[derive(Clone, Copy, Debug)]
pub(super) struct Crd {
    /// Its name (`<plural>.<group>`).
    pub(super) name: &'static str,
    /// The chart's file that defines it.
    pub(super) file: &'static str,
}

/// The store of a kind that may be missing, and whether the API has answered for it yet.
pub(super) struct Optional<K: Resource<DynamicType = ()> + 'static> {
    /// Its objects (none while the API does not serve it).
    pub(super) store: Store<K>,
    answered: watch::Receiver<bool>,
}

impl<K: Resource<DynamicType = ()> + 'static> Optional<K> {
    /// `store`, answered (for tests that fill stores by hand).
    #[cfg(test)]
    pub(super) fn answered_with(store: Store<K>) -> Self {
        Self {
            store,
            answered: watch::channel(true).1,
        }
    }

    /// Returns once the API has answered for the kind (whatever the answer), or after [`GRACE`].
    pub(super) async fn answered(&self) {
        let mut answered = self.answered.clone();
        if tokio::time::timeout(GRACE, answered.wait_for(|a| *a))
            .await
            .is_err()
        {
            warn!(kind = %K::kind(&()), "not listed yet: starting without these objects; they apply once listed");
        }
    }
}

/// A store of every `K` in the cluster, like the other kinds' (each object cut down by `slim`, each
/// change shown to `note` and notifying `dirty`), for a kind whose CRD (`crd`) may be missing.
pub(super) fn reflect<K>(
    client: &Client,
    dirty: &Arc<Notify>,
    slim: fn(&mut K),
    note: impl Fn(&watcher::Event<K>) + Send + 'static,
    crd: Crd,
) -> Optional<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    let (answered_tx, answered) = watch::channel(false);
    let api = Api::<K>::all(client.clone());
    let dirty = dirty.clone();
    let reader = store.clone();
    tokio::spawn(async move {
        let kind = K::kind(&()).into_owned();
        let mut retry = RETRY_FIRST;
        let mut absent = false;
        loop {
            let stream = watcher(api.clone(), watcher::Config::default())
                .default_backoff()
                .modify(slim);
            futures_util::pin_mut!(stream);
            // Until the API answers 404: the stream never ends by itself.
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        let listed = matches!(event, watcher::Event::InitDone);
                        writer.apply_watcher_event(&event);
                        // A list's start and pages fill a buffer, not the store: a list that
                        // fails (each try while the CRD is missing) changes nothing.
                        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                            note(&event);
                            dirty.notify_one();
                        }
                        if listed {
                            if absent {
                                info!(%kind, crd = crd.name, "the CRD is installed now: its objects apply");
                                absent = false;
                            }
                            retry = RETRY_FIRST;
                            answered_tx.send_replace(true);
                        }
                    }
                    Err(e) if not_found(&e) => break,
                    // Not an answer: the first sync waits for a list (or a 404) up to GRACE,
                    // so that a transient error at start does not send every workload without
                    // its Telemetry (privacy would fail open until the next list).
                    Err(e) => {
                        warn!(%kind, error = %e, "watch failed; retrying with backoff (the rest of the mesh is not held back)");
                    }
                }
            }
            if !absent {
                warn!(
                    %kind,
                    crd = crd.name,
                    "the API does not serve {kind} objects: its CRD is not installed (`helm upgrade` installs no new CRDs). No {kind} applies until it is; install it with `kubectl apply -f {}` (from the chart of this release), it is picked up without a restart",
                    crd.file
                );
                absent = true;
            }
            // No objects while it is missing (a deleted CRD takes its objects with it).
            let had_objects = !reader.is_empty();
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
            if had_objects {
                note(&watcher::Event::Init);
                dirty.notify_one();
            }
            answered_tx.send_replace(true);
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    });
    Optional { store, answered }
}

/// Whether the API answered 404 for the kind's list or watch: it does not serve it. (A 404 may come
/// as a `Status` or as plain text, depending on the server; kube keeps the code either way.)
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}
