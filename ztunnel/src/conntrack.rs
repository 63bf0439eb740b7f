//! Live inbound connections, re-checked whenever the mesh changes.
//!
//! A policy change must reach connections already flowing, not only new ones: every inbound
//! connection (HBONE tunnel or PERMISSIVE plaintext) is registered with what it was admitted with,
//! and each new mesh state re-runs the admission decision for all of them. One now denied is closed
//! once the grace has passed (unless a later state allows it again first), with a metric and an
//! audit line naming the policy that denies it.
//!
//! The registry costs one entry per live connection and drops it when the connection's [`Tracked`]
//! guard is dropped, however the connection ends. A re-check holds the registry's lock only to copy
//! the entries' handles; the decisions are made outside it, yielding to the data path between
//! batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::policy::Decision;
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{DecisionLabels, Metrics, Outcome, PolicyLabel, Principal};

use crate::admission::{Admission, Admitted, decide};

/// Connections decided between two yields to the runtime during a re-check.
const BATCH: usize = 512;

/// Why a live connection is being closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The current policies deny it (or STRICT now refuses its plaintext).
    Denied(Admission),
    /// Its workload is no longer in the mesh.
    Gone,
}

/// A decision to close a connection, and when.
#[derive(Clone, Debug)]
pub struct Closing {
    /// When it is closed (the re-check's time plus the grace).
    pub at: Instant,
    /// Why.
    pub denial: Denial,
}

#[derive(Debug)]
struct Entry {
    conn: Admitted,
    /// `Some` once a re-check has found the connection denied.
    closing: watch::Sender<Option<Closing>>,
}

/// Every live inbound connection of this ztunnel.
#[derive(Debug, Default)]
pub struct LiveConnections {
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
}

/// What one re-check did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecheckReport {
    /// Connections decided.
    pub checked: usize,
    /// Connections newly found denied (to be closed after the grace).
    pub denied: usize,
    /// Connections found denied earlier and allowed again within their grace.
    pub reprieved: usize,
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection. Register *before* reading the state it is admitted against: a state
    /// published after that read then finds it in the registry.
    pub fn track(self: &Arc<Self>, conn: Admitted) -> Tracked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (closing, rx) = watch::channel(None);
        let entry = Arc::new(Entry { conn, closing });
        self.lock().insert(id, entry.clone());
        Tracked {
            registry: self.clone(),
            id,
            entry,
            rx,
        }
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Every registered connection, with its closing decision if a re-check made one.
    pub fn snapshot(&self) -> Vec<(Admitted, Option<Closing>)> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        entries
            .iter()
            .map(|e| (e.conn.clone(), e.closing.borrow().clone()))
            .collect()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-decides every connection against `state`: those now denied are told to close at
    /// `now + grace` (an earlier deadline is kept), those allowed again are reprieved.
    pub async fn recheck(&self, state: &MeshState, grace: Duration) -> RecheckReport {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        let at = Instant::now() + grace;
        let mut report = RecheckReport::default();
        for batch in entries.chunks(BATCH) {
            for entry in batch {
                report.checked += 1;
                let denial = match state.workload(&entry.conn.workload_uid) {
                    None => Some(Denial::Gone),
                    Some(workload) => Some(decide(state, workload, &entry.conn))
                        .filter(|admission| !admission.allowed())
                        .map(Denial::Denied),
                };
                let was_closing = entry.closing.borrow().is_some();
                match (denial, was_closing) {
                    (Some(denial), false) => {
                        report.denied += 1;
                        entry.closing.send_replace(Some(Closing { at, denial }));
                    }
                    (None, true) => {
                        report.reprieved += 1;
                        entry.closing.send_replace(None);
                    }
                    _ => {}
                }
            }
            tokio::task::yield_now().await;
        }
        report
    }
}

/// A registered connection; dropping it removes the registration.
#[derive(Debug)]
pub struct Tracked {
    registry: Arc<LiveConnections>,
    id: u64,
    entry: Arc<Entry>,
    rx: watch::Receiver<Option<Closing>>,
}

impl Tracked {
    /// What the connection was admitted with.
    pub fn admitted(&self) -> &Admitted {
        &self.entry.conn
    }

    /// Completes when a re-check has found the connection denied and its grace has passed; never
    /// if it stays allowed (or is allowed again before the grace ends).
    pub async fn closed(&mut self) -> Closing {
        // Only the deadline is kept across an await: this future lives in every tunnel's task, so
        // the decision itself (and the timer, boxed) are taken only once a close is scheduled.
        loop {
            let at = self.rx.borrow_and_update().as_ref().map(|c| c.at);
            match at {
                None => {
                    // The sender lives in the registry entry this guard keeps alive, so this never
                    // fails; if it did, nothing could ever ask to close: wait forever, not spin.
                    if self.rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                Some(at) => {
                    tokio::select! {
                        () = Box::pin(tokio::time::sleep_until(at)) => {
                            // Reprieved (or rescheduled) while the timer ran: look again.
                            if let Some(closing) = self.rx.borrow_and_update().clone()
                                && closing.at <= Instant::now()
                            {
                                return closing;
                            }
                        }
                        _ = self.rx.changed() => {}
                    }
                }
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Re-checks every live connection of `registry` on each new state published on `state`.
pub async fn run(
    registry: Arc<LiveConnections>,
    mut state: watch::Receiver<Arc<MeshState>>,
    grace: Duration,
) {
    while state.changed().await.is_ok() {
        let current = state.borrow_and_update().clone();
        let started = Instant::now();
        let report = registry.recheck(&current, grace).await;
        let elapsed_us = started.elapsed().as_micros() as u64;
        if report.denied > 0 || report.reprieved > 0 {
            info!(checked = report.checked, denied = report.denied, reprieved = report.reprieved, grace = ?grace, elapsed_us, "live connections re-checked against the new mesh state");
        } else {
            debug!(
                checked = report.checked,
                elapsed_us, "live connections re-checked: all still allowed"
            );
        }
    }
}

/// Counts and audits a connection closed by a re-check (the caller then closes it).
pub fn report_closed(
    metrics: &Metrics,
    tracked: &Tracked,
    closing: &Closing,
    destination: &Workload,
) {
    let conn = tracked.admitted();
    let (decision, reason) = match &closing.denial {
        Denial::Denied(admission) => (admission.decision(), admission.reason(destination)),
        Denial::Gone => (None, "the workload is no longer in the mesh".to_owned()),
    };
    let policy = decision.and_then(Decision::policy);
    metrics
        .connections_closed_by_recheck
        .get_or_create(&DecisionLabels {
            decision: Outcome::Deny,
            policy: PolicyLabel(policy.cloned()),
            source_identity: Principal(conn.source.clone()),
            destination_identity: Principal(Some(destination.identity.clone())),
        })
        .inc();
    warn!(
        target: AUDIT,
        audit = SCHEMA,
        event = "connection_closed",
        component = "ztunnel",
        decision = "deny",
        source = conn.source.as_ref().map_or("-".to_owned(), ToString::to_string),
        source_ip = %conn.source_ip,
        destination = %destination.identity,
        destination_workload = %destination.key(),
        port = conn.destination.port(),
        policy = %policy.map_or("-".to_owned(), ToString::to_string),
        %reason,
        "live connection closed: the mesh's policy now denies it"
    );
}

#[cfg(test)]
mod tests;
