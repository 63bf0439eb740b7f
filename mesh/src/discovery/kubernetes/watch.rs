//! The Kubernetes source: one reflector per kind, kept in sync by kube-rs watchers that restart with
//! backoff on errors; every change marks the snapshot dirty, and a debounced rebuild publishes the
//! next mesh. When only pods changed since the last one, that mesh is patched for them (see
//! `patch`: time in proportion to the change, not the cluster); otherwise the stores are translated
//! whole. Translation is per object: an object that cannot be translated is left out and reported
//! (an error line and `on_reject`, once each time it becomes rejected), and the rest is published;
//! while a watch is down, its last listed objects stay in its store. Telemetries are watched as a
//! kind whose CRD may be missing (see [`optional`]): they never hold the first sync or the rest of
//! the mesh back.

mod optional;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;

use super::patch::{self, Whole};
use super::pod::SlimPod;
use super::telemetry::TelemetryObject;
use super::translate::{Objects, translate};
use crate::discovery::state::{ConfigError, MeshSettings, MeshState};
use crate::policy::PolicyError;

/// What the source publishes.
#[derive(Debug)]
pub struct Snapshot {
    /// The objects it was built from.
    pub objects: Objects,
    /// The mesh.
    pub state: Arc<MeshState>,
    /// Policies refused by validation (enforced as deny-all / STRICT; Telemetries as recording
    /// nothing).
    pub invalid: Vec<PolicyError>,
}

/// How long changes are gathered before a rebuild: a burst of events (a rollout) costs one.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The Telemetry CRD, added to the chart after its first releases.
const TELEMETRY_CRD: optional::Crd = optional::Crd {
    name: "telemetries.security.veil.dev",
    file: "charts/veil/crds/telemetries.yaml",
};

struct Stores {
    namespaces: Store<Namespace>,
    pods: Store<SlimPod>,
    services: Store<Service>,
    authorization_policies: Store<AuthorizationPolicy>,
    peer_authentications: Store<PeerAuthentication>,
    telemetries: optional::Optional<TelemetryObject>,
}

impl Stores {
    fn objects(&self) -> Objects {
        fn all<K: Clone + Resource<DynamicType = ()>>(store: &Store<K>) -> Vec<Arc<K>> {
            store.state()
        }
        Objects {
            namespaces: all(&self.namespaces),
            pods: all(&self.pods),
            services: all(&self.services),
            authorization_policies: all(&self.authorization_policies),
            peer_authentications: all(&self.peer_authentications),
            telemetries: all(&self.telemetries.store),
        }
    }

    /// Every kind listed, but Telemetries only answered (listed, missing or failing: see
    /// [`optional`]).
    async fn ready(&self) {
        let required = async {
            // Errors mean a writer was dropped, which only happens on shutdown.
            let _ = self.namespaces.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
            let _ = self.services.wait_until_ready().await;
            let _ = self.authorization_policies.wait_until_ready().await;
            let _ = self.peer_authentications.wait_until_ready().await;
        };
        tokio::join!(required, self.telemetries.answered());
    }
}

/// Starts watching through `client`; returns once every kind has been listed once (Telemetries:
/// answered, see [`optional`]), with the first snapshot published on the returned channel.
/// `on_reject` is told about every object that becomes rejected (left out of the mesh, or kept but
/// unreachable).
pub async fn start(
    client: Client,
    settings: MeshSettings,
    on_reject: impl Fn(&ConfigError) + Send + 'static,
) -> watch::Receiver<Arc<Snapshot>> {
    let dirty = Arc::new(Notify::new());
    let changes = Arc::new(Mutex::new(Pending::default()));
    let stores = Stores {
        namespaces: reflect::<Namespace>(&client, &dirty, slim_meta, whole(&changes)),
        pods: reflect::<SlimPod>(&client, &dirty, slim_pod, pods(&changes)),
        services: reflect::<Service>(&client, &dirty, slim_meta, whole(&changes)),
        authorization_policies: reflect::<AuthorizationPolicy>(
            &client,
            &dirty,
            slim_meta,
            whole(&changes),
        ),
        peer_authentications: reflect::<PeerAuthentication>(
            &client,
            &dirty,
            slim_meta,
            whole(&changes),
        ),
        telemetries: optional::reflect::<TelemetryObject>(
            &client,
            &dirty,
            slim_meta,
            whole(&changes),
            TELEMETRY_CRD,
        ),
    };
    stores.ready().await;
    // What the watches delivered before this first translation is in it.
    std::mem::take(&mut *lock(&changes));
    let (first, mut last) = build(&stores, &settings);
    report_rejected(&[], first.state.rejected(), &on_reject);
    info!(summary = ?first.state.summary(), "synced with the Kubernetes API");
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            dirty.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            let delivered = std::mem::take(&mut *lock(&changes));
            let previous = tx.borrow().clone();
            let snapshot = match patched(&stores, &settings, &previous, &mut last, delivered) {
                Ok(snapshot) => snapshot,
                Err(Whole(why)) => {
                    debug!(why, "translating the whole cluster");
                    let (snapshot, now) = build(&stores, &settings);
                    last = now;
                    snapshot
                }
            };
            report_rejected(
                previous.state.rejected(),
                snapshot.state.rejected(),
                &on_reject,
            );
            tx.send_replace(Arc::new(snapshot));
        }
    });
    rx
}

/// What the watches delivered since the last translation.
#[derive(Debug, Default)]
struct Pending {
    /// Something a patch does not follow (anything but a pod, or a watch listing again).
    whole: bool,
    /// The pods (namespace, name) that were applied or deleted.
    pods: BTreeSet<(String, String)>,
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes every event of a watch as one a patch does not follow.
fn whole<K>(pending: &Arc<Mutex<Pending>>) -> impl Fn(&watcher::Event<K>) + Send + 'static {
    let pending = pending.clone();
    move |_| lock(&pending).whole = true
}

/// Notes the pod of each event; a listing again (after an error, or an expired version) is
/// followed by a whole translation.
fn pods(pending: &Arc<Mutex<Pending>>) -> impl Fn(&watcher::Event<SlimPod>) + Send + 'static {
    let pending = pending.clone();
    move |event| {
        let mut pending = lock(&pending);
        match event {
            watcher::Event::Apply(pod) | watcher::Event::Delete(pod) => {
                pending.pods.insert(pod.key());
            }
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {
                pending.whole = true;
            }
        }
    }
}

/// What the last translation was made from, for the next one to patch.
struct Last {
    /// The pods it saw, by namespace and name.
    pods: HashMap<(String, String), Arc<SlimPod>>,
    /// The addresses no patch may take or free (see [`patch::contested`]).
    contested: HashSet<IpAddr>,
}

/// The last snapshot patched for the pods `delivered` names (see [`patch`]).
fn patched(
    stores: &Stores,
    settings: &MeshSettings,
    previous: &Snapshot,
    last: &mut Last,
    delivered: Pending,
) -> Result<Snapshot, Whole> {
    if delivered.whole {
        return Err(Whole("more than pods changed, or a watch listed again"));
    }
    let changes: Vec<_> = delivered
        .pods
        .iter()
        .map(|(namespace, name)| {
            let now = stores.pods.get(&ObjectRef::new(name).within(namespace));
            (
                last.pods.get(&(namespace.clone(), name.clone())).cloned(),
                now,
            )
        })
        .collect();
    let objects = stores.objects();
    let state = patch::patch(
        &previous.state,
        &objects,
        settings,
        &last.contested,
        &changes,
    )?;
    for (key, (_, now)) in delivered.pods.into_iter().zip(changes) {
        match now {
            Some(pod) => last.pods.insert(key, pod),
            None => last.pods.remove(&key),
        };
    }
    Ok(Snapshot {
        objects,
        state: Arc::new(state),
        invalid: previous.invalid.clone(),
    })
}

/// Reports each object of `now` that was not already rejected in `before`: rebuilds are frequent,
/// and a standing problem is reported once, not on every rebuild.
fn report_rejected(before: &[ConfigError], now: &[ConfigError], on_reject: &impl Fn(&ConfigError)) {
    for e in now.iter().filter(|e| !before.contains(e)) {
        error!(error = %e, "object left out of the mesh (what it affects fails closed); the rest of the mesh is up to date");
        on_reject(e);
    }
}

fn build(stores: &Stores, settings: &MeshSettings) -> (Snapshot, Last) {
    let objects = stores.objects();
    let translation = translate(&objects, settings);
    let last = Last {
        pods: objects.pods.iter().map(|p| (p.key(), p.clone())).collect(),
        contested: patch::contested(&objects, &translation.state),
    };
    let snapshot = Snapshot {
        objects,
        state: Arc::new(translation.state),
        invalid: translation.invalid,
    };
    (snapshot, last)
}

/// What no translation reads of any object: the field managers' bookkeeping and annotations (the
/// last applied configuration alone can double an object's size).
pub(crate) fn slim_meta<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// What a pod's metadata holds beyond what every kind keeps and translation reads: its owners
/// other than its controller (whose kind and name name the workload in telemetry), finalizers and
/// name prefix (the rest of the pod is never read: [`SlimPod`]).
pub(crate) fn slim_pod(pod: &mut SlimPod) {
    slim_meta(pod);
    let meta = &mut pod.metadata;
    meta.owner_references = meta.owner_references.take().and_then(|owners| {
        let controller = owners.into_iter().find(|o| o.controller == Some(true))?;
        Some(vec![OwnerReference {
            controller: Some(true),
            kind: controller.kind,
            name: controller.name,
            ..OwnerReference::default()
        }])
    });
    meta.finalizers = None;
    meta.generate_name = None;
}

/// A store of every `K` in the cluster, each object cut down by `slim` before it is stored, kept
/// current by a watcher that backs off and retries on errors; each change is shown to `note` and
/// notifies `dirty`.
fn reflect<K>(
    client: &Client,
    dirty: &Arc<Notify>,
    slim: fn(&mut K),
    note: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(slim),
    );
    let dirty = dirty.clone();
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    note(&event);
                    dirty.notify_one();
                }
                Err(e) => {
                    warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    });
    store
}

#[cfg(test)]
mod tests;
