//! The Kubernetes source: one reflector per kind, kept in sync by kube-rs watchers that restart with
//! backoff on errors; every change marks the snapshot dirty, and a debounced rebuild translates the
//! stores and publishes the result. A snapshot that fails to translate is reported and the last good
//! one stays published; while a watch is down, its last listed objects stay in its store.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;

use super::translate::{Objects, translate, with_cni_addresses};
use crate::discovery::state::{ConfigError, MeshSettings, MeshState};
use crate::policy::PolicyError;

/// What the source publishes.
#[derive(Debug)]
pub struct Snapshot {
    /// The objects it was built from.
    pub objects: Objects,
    /// The mesh.
    pub state: Arc<MeshState>,
    /// Policies refused by validation (enforced as deny-all / STRICT).
    pub invalid: Vec<PolicyError>,
}

/// How long changes are gathered before a rebuild: a burst of events (a rollout) costs one.
const DEBOUNCE: Duration = Duration::from_millis(100);

struct Stores {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    authorization_policies: Store<AuthorizationPolicy>,
    peer_authentications: Store<PeerAuthentication>,
}

impl Stores {
    fn objects(&self) -> Objects {
        fn all<K: Clone + Resource<DynamicType = ()>>(store: &Store<K>) -> Vec<K> {
            store.state().iter().map(|k| (**k).clone()).collect()
        }
        Objects {
            namespaces: all(&self.namespaces),
            pods: all(&self.pods),
            services: all(&self.services),
            authorization_policies: all(&self.authorization_policies),
            peer_authentications: all(&self.peer_authentications),
        }
    }

    async fn ready(&self) {
        // Errors mean a writer was dropped, which only happens on shutdown.
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.authorization_policies.wait_until_ready().await;
        let _ = self.peer_authentications.wait_until_ready().await;
    }
}

/// Starts watching through `client`; returns once every kind has been listed once, with the first
/// snapshot published on the returned channel. `on_reject` is told about snapshots that could not
/// be built.
pub async fn start(
    client: Client,
    settings: MeshSettings,
    on_reject: impl Fn(&ConfigError) + Send + 'static,
) -> Result<watch::Receiver<Arc<Snapshot>>, ConfigError> {
    let dirty = Arc::new(Notify::new());
    let stores = Stores {
        namespaces: reflect::<Namespace>(&client, &dirty),
        pods: reflect::<Pod>(&client, &dirty),
        services: reflect::<Service>(&client, &dirty),
        authorization_policies: reflect::<AuthorizationPolicy>(&client, &dirty),
        peer_authentications: reflect::<PeerAuthentication>(&client, &dirty),
    };
    stores.ready().await;
    let first = build(&stores, &settings)?;
    info!(summary = ?first.state.summary(), "synced with the Kubernetes API");
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            dirty.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            match build(&stores, &settings) {
                Ok(snapshot) => {
                    tx.send_replace(Arc::new(snapshot));
                }
                Err(e) => {
                    error!(error = %e, "could not build the mesh from the cluster; keeping the last good state");
                    on_reject(&e);
                }
            }
        }
    });
    Ok(rx)
}

/// Publishes the mesh of every snapshot on `tx`, with the addresses `known` gives for pods the API
/// lists without one yet (see [`with_cni_addresses`]); publishes again whenever `refresh` changes.
/// Returns when `snapshots` ends.
pub async fn publish(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    settings: MeshSettings,
    tx: watch::Sender<Arc<MeshState>>,
    mut refresh: watch::Receiver<u64>,
    known: impl Fn(&str, &str) -> Option<Vec<IpAddr>>,
) {
    let mut refresh_open = true;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        refresh.borrow_and_update();
        let state = match with_cni_addresses(&snapshot.objects, &known) {
            None => Ok(snapshot.state.clone()),
            Some(objects) => translate(&objects, &settings).map(|t| Arc::new(t.state)),
        };
        match state {
            Ok(state) => {
                tx.send_replace(state);
            }
            // The snapshot itself translated; its overlay cannot fail differently in practice,
            // but if it does the published state stays as it was.
            Err(e) => error!(error = %e, "could not add node-local pod addresses to the mesh"),
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            changed = refresh.changed(), if refresh_open => refresh_open = changed.is_ok(),
        }
    }
}

fn build(stores: &Stores, settings: &MeshSettings) -> Result<Snapshot, ConfigError> {
    let objects = stores.objects();
    let translation = translate(&objects, settings)?;
    Ok(Snapshot {
        objects,
        state: Arc::new(translation.state),
        invalid: translation.invalid,
    })
}

/// A store of every `K` in the cluster, kept current by a watcher that backs off and retries on
/// errors; each change notifies `dirty`.
fn reflect<K>(client: &Client, dirty: &Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    let dirty = dirty.clone();
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => dirty.notify_one(),
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
