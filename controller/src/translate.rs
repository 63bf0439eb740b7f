//! From the mesh source to the hub: every new [`MeshState`] is translated into resources off the
//! async workers (a large mesh takes a while) and published as one snapshot. Changes that arrive
//! while a translation runs are coalesced: the next translation starts from the newest state.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};
use veil_mesh::discovery::MeshState;
use veil_mesh::xds::Resources;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Translates the first state and returns the hub serving it.
pub fn first(state: &MeshState, metrics: &Metrics) -> Arc<Hub> {
    let resources = Resources::from_state(state);
    record(state, &resources, metrics);
    Hub::new(resources)
}

/// Publishes a snapshot for every change of `states`, until the source ends. Each translation
/// starts from the previous one: what did not change is reused, not encoded again (see
/// [`Resources::from_state_after`]).
pub async fn follow(
    mut states: watch::Receiver<Arc<MeshState>>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
) {
    let mut previous = states.borrow_and_update().clone();
    while states.changed().await.is_ok() {
        let state = states.borrow_and_update().clone();
        let published = hub.current();
        let prior = previous.clone();
        let translated = tokio::task::spawn_blocking(move || {
            let started = tokio::time::Instant::now();
            let resources = Resources::from_state_after(&state, &prior, &published.resources);
            (state, resources, started.elapsed())
        })
        .await;
        let (state, resources, took) = match translated {
            Ok(done) => done,
            Err(e) => {
                // A panic in translation is a bug; the previous snapshot stays served.
                warn!(error = %e, "translating the mesh failed; still serving the previous snapshot");
                continue;
            }
        };
        record(&state, &resources, &metrics);
        let snapshot = hub.publish(resources);
        info!(
            seq = snapshot.seq,
            resources = snapshot.resources.len(),
            took_ms = took.as_millis(),
            "published a snapshot"
        );
        previous = state;
    }
    warn!("the mesh source ended; serving the last snapshot");
}

fn record(state: &MeshState, resources: &Resources, metrics: &Metrics) {
    metrics.snapshots.inc();
    metrics.resources.set(resources.len() as i64);
    metrics.rejected_objects.set(state.rejected().len() as i64);
}
