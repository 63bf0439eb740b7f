//! Opening the mesh's source: the local file, or the Kubernetes API when there is no file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::kubernetes;
use super::local::FileSource;
use super::state::{ConfigError, MeshSettings, MeshState};

/// Where the mesh comes from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// The local mesh description, polled for changes.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is checked.
        poll: Duration,
    },
    /// The Kubernetes API, with in-cluster (or kubeconfig) credentials.
    Kubernetes,
}

/// A pod's addresses by namespace and name, when known.
pub type AddressLookup = dyn Fn(&str, &str) -> Option<Vec<IpAddr>> + Send + Sync;

/// Pod addresses a node knows before the API lists them (what the CNI plugin handed to ztunnel).
#[allow(missing_debug_implementations, reason = "holds a closure")]
pub struct NodeAddresses {
    /// Changes whenever `lookup` would answer differently.
    pub changed: watch::Receiver<u64>,
    /// A pod's addresses by namespace and name.
    pub lookup: Box<AddressLookup>,
}

/// Opens the source and returns the channel it publishes the mesh on. With the Kubernetes API this
/// returns once every watched kind has been listed. `on_reject` is told about every refusal: of a
/// whole local file (the last good one stays published), or of one Kubernetes object (left out, the
/// rest published).
pub async fn open(
    origin: &Origin,
    settings: MeshSettings,
    on_reject: impl Fn(&ConfigError) + Send + 'static,
    node: Option<NodeAddresses>,
) -> Result<watch::Receiver<Arc<MeshState>>, ConfigError> {
    match origin {
        Origin::File { path, poll } => {
            let (source, state) = FileSource::load(path, settings)?;
            info!(path = %path.display(), summary = ?state.summary(), "loaded mesh configuration");
            let (tx, rx) = watch::channel(Arc::new(state));
            tokio::spawn(source.watch(*poll, tx, on_reject));
            Ok(rx)
        }
        Origin::Kubernetes => {
            let client = kube::Client::try_default().await.map_err(|e| {
                ConfigError::Parse(format!(
                    "no mesh configuration file, and no Kubernetes API to watch instead: {e}"
                ))
            })?;
            info!("watching the Kubernetes API");
            let snapshots = kubernetes::start(client, settings.clone(), on_reject).await;
            Ok(states_of(snapshots, settings, node))
        }
    }
}

/// The mesh of each of the Kubernetes API's snapshots, as [`open`] publishes it, for a caller
/// that reads the snapshots too (the controller writes policy status from their objects).
pub fn states_of(
    snapshots: watch::Receiver<Arc<kubernetes::Snapshot>>,
    settings: MeshSettings,
    node: Option<NodeAddresses>,
) -> watch::Receiver<Arc<MeshState>> {
    let (tx, rx) = watch::channel(snapshots.borrow().state.clone());
    let NodeAddresses { changed, lookup } = node.unwrap_or_else(|| NodeAddresses {
        changed: watch::channel(0).1,
        lookup: Box::new(|_, _| None),
    });
    tokio::spawn(kubernetes::publish(
        snapshots, settings, tx, changed, lookup,
    ));
    rx
}
