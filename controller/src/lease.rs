//! Which replica writes to the API: the one holding a coordination.k8s.io Lease (through
//! `kube-lease-manager`). Every replica serves subscribers; only the holder writes policy status, so
//! N replicas do not write every status N times or fight over transition times.
//!
//! The lease is not a safety mechanism: status is computed from the API's own objects, so a replica
//! that still believes it holds an expired lease (it lost the API for longer than the lease) writes
//! what the new holder writes, and nothing in the data path reads status.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The lease a replica competes for.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// Its namespace (the controller's).
    pub namespace: String,
    /// This replica's name in the Lease (its pod name).
    pub holder: String,
    /// How long a holder keeps it without renewing; a crashed holder's replica takes over within this.
    pub duration: Duration,
}

impl LeaseConfig {
    /// The lease's duration and its renewal margin in whole seconds, as the Lease API counts them:
    /// the holder renews a third of the duration before it runs out.
    fn seconds(&self) -> Result<(u64, u64), String> {
        let duration = self.duration.as_secs();
        if duration < 2 {
            return Err(format!(
                "the lease duration must be at least 2s, not {:?}",
                self.duration
            ));
        }
        Ok((duration, (duration / 3).max(1)))
    }

    /// Checks the configuration (a clear error at start rather than a failure in the background).
    pub fn validate(&self) -> Result<(), String> {
        self.seconds()?;
        if self.holder.is_empty() {
            return Err("the lease holder's name is empty (set --pod-name)".into());
        }
        Ok(())
    }
}

/// Competes for the lease for as long as the returned receiver is held: it reads `true` while this
/// replica holds it. The lease is created when missing; an API error is logged and retried (the
/// receiver stays `false` until the lease is taken). Dropping the receiver releases the lease: await
/// the handle to let the release reach the API (a rollout's new replica then takes over at once).
pub fn compete(client: Client, config: LeaseConfig) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let (duration, grace) = match config.seconds() {
            Ok(seconds) => seconds,
            Err(e) => {
                warn!(error = %e, "not competing for the status lease");
                return;
            }
        };
        let mut retry = Duration::from_secs(1);
        let manager = loop {
            let built = LeaseManagerBuilder::new(client.clone(), &config.name)
                .with_namespace(&config.namespace)
                .with_parameters(LeaseParams::new(&config.holder, duration, grace))
                .with_create_mode(LeaseCreateMode::AutoCreate)
                .build()
                .await;
            match built {
                Ok(manager) => break manager,
                Err(e) => {
                    warn!(lease = %config.name, namespace = %config.namespace, error = %e, "cannot use the status lease; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = tx.closed() => return,
                    }
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        };
        let (mut held, task) = manager.watch().await;
        loop {
            tokio::select! {
                changed = held.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let holds = *held.borrow_and_update();
                    info!(lease = %config.name, holder = %config.holder, holds, "status lease changed hands");
                    tx.send_replace(holds);
                }
                () = tx.closed() => break,
            }
        }
        // Dropping the manager's receiver makes it release the lease.
        drop(held);
        match task.await {
            Ok(Ok(_)) => info!(lease = %config.name, "released the status lease"),
            Ok(Err(e)) => {
                warn!(lease = %config.name, error = %e, "could not release the status lease")
            }
            Err(e) => warn!(lease = %config.name, error = %e, "the status lease task failed"),
        }
    });
    (rx, handle)
}
