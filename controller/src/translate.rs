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

/// Translates the source's current state and returns the hub serving it, with that state: the
/// one [`follow`] must start from (the source may publish another meanwhile).
pub fn first(
    states: &watch::Receiver<Arc<MeshState>>,
    metrics: &Metrics,
) -> (Arc<Hub>, Arc<MeshState>) {
    let state = states.borrow().clone();
    let resources = Resources::from_state(&state);
    record(&state, &resources, metrics);
    (Hub::new(resources), state)
}

/// Publishes a snapshot for every change of `states`, until the source ends. Each translation
/// starts from the previous one: what did not change is reused, not encoded again (see
/// [`Resources::from_state_after`]). `previous` is the state the hub's current snapshot was
/// translated from (what [`first`] returned): the resources reused must be that state's.
pub async fn follow(
    mut states: watch::Receiver<Arc<MeshState>>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    mut previous: Arc<MeshState>,
) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use veil_mesh::discovery::{MeshSettings, local};

    use super::*;

    fn state(yaml: &str) -> Arc<MeshState> {
        Arc::new(local::parse(yaml, &MeshSettings::default()).unwrap())
    }

    const TWO: &str = "workloads:\n  - {name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1]}\n  - {name: b, namespace: n, serviceAccount: b, node: x, ips: [10.0.0.2]}\n";

    /// The source publishes again while the first state is being translated: the next
    /// translation must start from the state the hub serves, not from the newer one (whose
    /// changes would then never be sent).
    #[tokio::test]
    async fn a_state_published_during_the_first_translation_is_translated() {
        let (tx, rx) = watch::channel(state(TWO));
        let metrics = Arc::new(Metrics::new());
        let (hub, first_state) = first(&rx, &metrics);
        // Published before `follow` starts: b is gone.
        tx.send_replace(state(&TWO.replace(
            "  - {name: b, namespace: n, serviceAccount: b, node: x, ips: [10.0.0.2]}\n",
            "",
        )));
        tokio::spawn(follow(rx, hub.clone(), metrics, first_state));
        // Then a with a new address.
        let last = state(
            "workloads:\n  - {name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.3]}\n",
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(last.clone());
        let want = Resources::from_state(&last);
        for _ in 0..200 {
            if hub.current().resources == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hub serves {:?}", hub.current().resources);
    }
}
