//! The Kubernetes source: one reflector per kind, kept in sync by kube-rs watchers that restart with
//! backoff on errors; every change marks the snapshot dirty, and a debounced rebuild publishes the
//! next mesh. A change of a namespace, service or policy that translation does not read (a status
//! written, an annotation, a label nothing reads: see `translate::Reads`) is no change of the mesh
//! and publishes nothing. When only pods, Services, AuthorizationPolicies and PeerAuthentications
//! changed since the last one, that mesh is patched for them (see `patch`: time in proportion to
//! the change, not the cluster); otherwise the stores are translated whole. Translation is per
//! object: an object that cannot be translated is left out and reported (an error line and
//! `on_reject`, once each time it becomes rejected), and the rest is published;
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

use super::patch::{self, NamespaceChange, PeerChange, PolicyChange, ServiceChange, Whole};
use super::pod::SlimPod;
use super::telemetry::TelemetryObject;
use super::translate::{Objects, Reads, translate};
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
        namespaces: reflect::<Namespace>(
            &client,
            &dirty,
            slim_meta,
            other(&changes, Kind::Namespace),
        ),
        pods: reflect::<SlimPod>(&client, &dirty, slim_pod, pods(&changes)),
        services: reflect::<Service>(&client, &dirty, slim_meta, other(&changes, Kind::Service)),
        authorization_policies: reflect::<AuthorizationPolicy>(
            &client,
            &dirty,
            slim_meta,
            other(&changes, Kind::AuthorizationPolicy),
        ),
        peer_authentications: reflect::<PeerAuthentication>(
            &client,
            &dirty,
            slim_meta,
            other(&changes, Kind::PeerAuthentication),
        ),
        telemetries: optional::reflect::<TelemetryObject>(
            &client,
            &dirty,
            slim_meta,
            other(&changes, Kind::Telemetry),
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
            let started = tokio::time::Instant::now();
            let snapshot = match patched(&stores, &settings, &previous, &mut last, delivered) {
                Ok(Some(snapshot)) => {
                    debug!(took_us = started.elapsed().as_micros(), "patched the mesh");
                    snapshot
                }
                Ok(None) => {
                    debug!("nothing translation reads changed");
                    continue;
                }
                Err(Whole(why)) => {
                    let (snapshot, now) = build(&stores, &settings);
                    last = now;
                    info!(
                        why,
                        took_ms = started.elapsed().as_millis(),
                        "translated the whole cluster"
                    );
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
    /// Something a patch does not follow (a watch listing again).
    whole: bool,
    /// The pods (namespace, name) that were applied or deleted.
    pods: BTreeSet<(String, String)>,
    /// The other objects that were applied or deleted: a patch does not follow them, unless
    /// nothing translation reads of them changed.
    others: BTreeSet<(Kind, Key)>,
}

/// The kinds besides pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Service,
    AuthorizationPolicy,
    PeerAuthentication,
    Telemetry,
}

/// An object's namespace (none: cluster-scoped) and name.
type Key = (Option<String>, String);

fn key_of<K: Resource>(object: &K) -> Key {
    let meta = object.meta();
    (
        meta.namespace.clone(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes the object of each event (of `kind`); a listing again (after an error, or an expired
/// version) is followed by a whole translation.
fn other<K: Resource>(
    pending: &Arc<Mutex<Pending>>,
    kind: Kind,
) -> impl Fn(&watcher::Event<K>) + Send + 'static {
    let pending = pending.clone();
    move |event| {
        let mut pending = lock(&pending);
        match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                pending.others.insert((kind, key_of(object)));
            }
            watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone => {
                pending.whole = true;
            }
        }
    }
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
    /// The other objects it saw, or others that read as they do (the stores' own, shared).
    namespaces: Seen<Namespace>,
    services: Seen<Service>,
    authorization_policies: Seen<AuthorizationPolicy>,
    peer_authentications: Seen<PeerAuthentication>,
    telemetries: Seen<TelemetryObject>,
    /// The addresses no patch may take or free (see [`patch::contested`]).
    contested: HashSet<IpAddr>,
}

impl Last {
    /// Whether the object `key` of `kind` reads as the one the last translation saw (both
    /// absent, or present and alike: see [`Reads`]); if so, the store's current version stands
    /// for it from now on.
    fn reads_as_before(&mut self, stores: &Stores, (kind, key): &(Kind, Key)) -> bool {
        match kind {
            Kind::Namespace => self.namespaces.update(&stores.namespaces, key),
            Kind::Service => self.services.update(&stores.services, key),
            Kind::AuthorizationPolicy => self
                .authorization_policies
                .update(&stores.authorization_policies, key),
            Kind::PeerAuthentication => self
                .peer_authentications
                .update(&stores.peer_authentications, key),
            Kind::Telemetry => self.telemetries.update(&stores.telemetries.store, key),
        }
    }
}

/// The objects of one kind a translation saw, by namespace and name.
struct Seen<K>(HashMap<Key, Arc<K>>);

impl<K: Resource<DynamicType = ()> + Reads + Clone> Seen<K> {
    fn of(objects: &[Arc<K>]) -> Self {
        Self(objects.iter().map(|o| (key_of(&**o), o.clone())).collect())
    }

    /// Whether `store`'s version of `key` reads as the one seen; if so, it is the one seen now
    /// (the older one is let go).
    fn update(&mut self, store: &Store<K>, key: &Key) -> bool {
        self.change(store, key).is_none()
    }

    /// `store`'s version of `key` against the one seen: `None` when they read alike (the store's
    /// is the one seen now), else the one seen and the store's (`None`: absent).
    #[allow(clippy::type_complexity, reason = "a pair of versions, as `PodChange`")]
    fn change(&mut self, store: &Store<K>, key: &Key) -> Option<(Option<Arc<K>>, Option<Arc<K>>)> {
        let mut reference = ObjectRef::<K>::new(&key.1);
        reference.namespace.clone_from(&key.0);
        match (self.0.get_mut(key), store.get(&reference)) {
            (None, None) => None,
            (Some(seen), Some(now)) if seen.reads_as(&now) => {
                *seen = now;
                None
            }
            (seen, now) => Some((seen.cloned(), now)),
        }
    }

    /// Every object seen.
    fn all(&self) -> Vec<Arc<K>> {
        self.0.values().cloned().collect()
    }

    /// `key` is seen as `object` (`None`: absent) from now on.
    fn set(&mut self, key: Key, object: Option<Arc<K>>) {
        match object {
            Some(object) => self.0.insert(key, object),
            None => self.0.remove(&key),
        };
    }
}

/// The last snapshot patched for the pods and Services `delivered` names (see [`patch`]); the same
/// mesh with the objects now when nothing translation reads changed but a policy did (its status,
/// its generation); `None` when nothing else did.
fn patched(
    stores: &Stores,
    settings: &MeshSettings,
    previous: &Snapshot,
    last: &mut Last,
    mut delivered: Pending,
) -> Result<Option<Snapshot>, Whole> {
    if delivered.whole {
        return Err(Whole("a watch listed again"));
    }
    // (After one that changed, a whole translation makes `last` anew.)
    let mut namespaces: Vec<(Key, NamespaceChange)> = Vec::new();
    let mut services: Vec<(Key, ServiceChange)> = Vec::new();
    let mut policies: Vec<(Key, PolicyChange)> = Vec::new();
    let mut peers: Vec<(Key, PeerChange)> = Vec::new();
    for other in &delivered.others {
        match other.0 {
            Kind::Namespace => namespaces.extend(
                last.namespaces
                    .change(&stores.namespaces, &other.1)
                    .map(|change| (other.1.clone(), change)),
            ),
            Kind::Service => services.extend(
                last.services
                    .change(&stores.services, &other.1)
                    .map(|change| (other.1.clone(), change)),
            ),
            Kind::AuthorizationPolicy => policies.extend(
                last.authorization_policies
                    .change(&stores.authorization_policies, &other.1)
                    .map(|change| (other.1.clone(), change)),
            ),
            Kind::PeerAuthentication => peers.extend(
                last.peer_authentications
                    .change(&stores.peer_authentications, &other.1)
                    .map(|change| (other.1.clone(), change)),
            ),
            _ if !last.reads_as_before(stores, other) => {
                return Err(Whole("a Telemetry changed"));
            }
            _ => {}
        }
    }
    // A policy's status and generation are read from the snapshot's objects (the status
    // writer): the policies published are those translated (a newer version in the store is
    // compared at the next round), with the rest of the objects now.
    let published = |last: &Last| Objects {
        authorization_policies: last.authorization_policies.all(),
        peer_authentications: last.peer_authentications.all(),
        ..stores.objects()
    };
    // What the namespaces and Services changed reach is translated anew with them: a namespace's
    // pods (and Services, where the waypoint it names changed), a Service's pods where it is or
    // was behind a waypoint.
    let namespace_changes: Vec<(String, NamespaceChange)> = namespaces
        .iter()
        .map(|(key, change)| (key.1.clone(), change.clone()))
        .collect();
    let mut reached = patch::Reached::new(&previous.state, &namespace_changes);
    let unchanged: Vec<(Key, ServiceChange)> = last
        .services
        .0
        .iter()
        .filter(|(key, service)| {
            reached.service(service) && !services.iter().any(|(k, _)| k == *key)
        })
        .map(|(key, service)| (key.clone(), (Some(service.clone()), Some(service.clone()))))
        .collect();
    services.extend(unchanged);
    let service_changes: Vec<ServiceChange> = services.iter().map(|(_, c)| c.clone()).collect();
    // (Most rounds change no Service: no copy of the namespaces then.)
    if !service_changes.is_empty() {
        reached.fronting(patch::fronted(
            &previous.state,
            &last.namespaces.all(),
            &service_changes,
        ));
    }
    let pods_at_most = if reached.further() {
        let of_them = last.pods.iter().filter(|(_, pod)| reached.pod(pod));
        delivered.pods.extend(of_them.map(|(key, _)| key.clone()));
        patch::REACHED_PODS_AT_MOST
    } else {
        patch::PATCH_AT_MOST
    };
    if delivered.pods.is_empty()
        && namespaces.is_empty()
        && services.is_empty()
        && policies.is_empty()
        && peers.is_empty()
    {
        // The mesh is the same: published again for the policies' objects, if any changed.
        let touched = delivered
            .others
            .iter()
            .any(|(kind, _)| matches!(kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication));
        return Ok(touched.then(|| Snapshot {
            objects: published(last),
            state: previous.state.clone(),
            invalid: previous.invalid.clone(),
        }));
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
    for (key, (_, now)) in services {
        last.services.set(key, now);
    }
    let policy_changes: Vec<PolicyChange> = policies.iter().map(|(_, c)| c.clone()).collect();
    for (key, (_, now)) in policies {
        last.authorization_policies.set(key, now);
    }
    let peer_changes: Vec<PeerChange> = peers.iter().map(|(_, c)| c.clone()).collect();
    for (key, (_, now)) in peers {
        last.peer_authentications.set(key, now);
    }
    for (key, (_, now)) in namespaces {
        last.namespaces.set(key, now);
    }
    let objects = published(last);
    // The patches read namespaces and Services (nothing else of `Objects`), as translated: the
    // last ones seen, with this round's Services. One the store holds in a newer version is
    // compared at the next round, and a patch must not have read it meanwhile.
    let translated = Objects {
        namespaces: last.namespaces.all(),
        services: last.services.all(),
        ..Objects::default()
    };
    let with_services = if service_changes.is_empty() {
        None
    } else {
        Some(patch::patch_services(
            &previous.state,
            &translated,
            &last.contested,
            &service_changes,
        )?)
    };
    let mut invalid = previous.invalid.clone();
    let with_policies = if policy_changes.is_empty() {
        with_services
    } else {
        Some(patch::patch_policies(
            with_services.as_ref().unwrap_or(&previous.state),
            settings,
            &policy_changes,
            &mut invalid,
        )?)
    };
    let with_peers = if peer_changes.is_empty() {
        with_policies
    } else {
        Some(patch::patch_peer_authentications(
            with_policies.as_ref().unwrap_or(&previous.state),
            &peer_changes,
            &mut invalid,
        )?)
    };
    let mut state = match with_peers {
        Some(state) if changes.is_empty() => state,
        patched => patch::patch(
            patched.as_ref().unwrap_or(&previous.state),
            &translated,
            settings,
            &last.contested,
            &changes,
            pods_at_most,
        )?,
    };
    patch::enrol_namespaces(&mut state, &namespace_changes);
    for (key, (_, now)) in delivered.pods.into_iter().zip(changes) {
        match now {
            Some(pod) => last.pods.insert(key, pod),
            None => last.pods.remove(&key),
        };
    }
    Ok(Some(Snapshot {
        objects,
        state: Arc::new(state),
        invalid,
    }))
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
        namespaces: Seen::of(&objects.namespaces),
        services: Seen::of(&objects.services),
        authorization_policies: Seen::of(&objects.authorization_policies),
        peer_authentications: Seen::of(&objects.peer_authentications),
        telemetries: Seen::of(&objects.telemetries),
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
