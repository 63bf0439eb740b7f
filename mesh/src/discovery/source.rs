//! Opening the mesh's source: the local file, or (feature `kubernetes`, the controller's) the
//! Kubernetes API's snapshots.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

#[cfg(feature = "kubernetes")]
use super::kubernetes;
use super::local::FileSource;
use super::state::{ConfigError, MeshSettings, MeshState};

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

/// Opens the local mesh description `path`, checked for changes every `poll`, and returns the
/// channel it publishes the mesh on. `on_reject` is told about every refusal of the whole file (the
/// last good one stays published).
pub fn open(
    path: &Path,
    poll: Duration,
    settings: MeshSettings,
    on_reject: impl Fn(&ConfigError) + Send + 'static,
) -> Result<watch::Receiver<Arc<MeshState>>, ConfigError> {
    let (source, state) = FileSource::load(path, settings)?;
    info!(path = %path.display(), summary = ?state.summary(), "loaded mesh configuration");
    let (tx, rx) = watch::channel(Arc::new(state));
    tokio::spawn(source.watch(poll, tx, on_reject));
    Ok(rx)
}

#[cfg(feature = "kubernetes")]
/// The mesh of each of the Kubernetes API's snapshots, for a caller that reads the snapshots too
/// (the controller writes policy status from their objects).
pub fn states_of(
    mut snapshots: watch::Receiver<Arc<kubernetes::Snapshot>>,
) -> watch::Receiver<Arc<MeshState>> {
    let (tx, rx) = watch::channel(snapshots.borrow_and_update().state.clone());
    tokio::spawn(async move {
        while snapshots.changed().await.is_ok() {
            let state = snapshots.borrow_and_update().state.clone();
            // A snapshot of the same mesh (a policy's status changed) is no new state.
            tx.send_if_modified(|current| {
                let new = !Arc::ptr_eq(current, &state);
                *current = state;
                new
            });
        }
    });
    rx
}
