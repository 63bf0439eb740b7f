//! Enrolment: keeps the set of captured pods equal to the mesh's enrolled workloads on this node.
//!
//! For each pod: open its namespace, start the three listeners inside it, claim its certificate,
//! then install the capture rules. A failure at any step is undone, logged, counted, shown by the
//! readiness endpoint, and retried: a pod is never left enrolled but uncaptured without anyone
//! knowing. A removed pod loses its rules first, then its listeners.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{error, info};
use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::hbone::HBONE_PORT;
use veil_mesh::identity::server_config;
use veil_mesh::telemetry::metrics::WorkloadLabels;

use crate::capture::{self, Family, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::context::{Context, LocalWorkload};
use crate::netns::NetNs;
use crate::{inbound, outbound, plaintext};

/// How long to wait before retrying a pod whose capture failed.
const RETRY: Duration = Duration::from_secs(3);

/// The capture state of one pod, for readiness and the admin dump.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CaptureStatus {
    /// Listeners up, rules in place.
    Captured,
    /// Capture failed; retried.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Capture status of every pod this ztunnel should capture, by uid.
pub type StatusMap = Arc<Mutex<BTreeMap<String, CaptureStatus>>>;

struct Enrolled {
    local: Arc<LocalWorkload>,
    tasks: Vec<JoinHandle<()>>,
    families: Vec<Family>,
}

/// Reconciles forever, on every state change and periodically while some capture is failing.
pub async fn run(ctx: Arc<Context>, status: StatusMap) {
    let mut rx = ctx.state.clone();
    let mut enrolled: HashMap<String, Enrolled> = HashMap::new();
    loop {
        let state = rx.borrow_and_update().clone();
        reconcile(&ctx, &state, &mut enrolled, &status).await;
        let failing = lock(&status)
            .values()
            .any(|s| matches!(s, CaptureStatus::Failed { .. }));
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(RETRY), if failing => {}
        }
    }
}

fn lock(status: &StatusMap) -> std::sync::MutexGuard<'_, BTreeMap<String, CaptureStatus>> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pods of this node that should be captured.
fn desired(ctx: &Context, state: &MeshState) -> Vec<Arc<Workload>> {
    state
        .workloads_on_node(&ctx.node)
        .into_iter()
        .filter(|w| w.enrolled)
        .collect()
}

/// Whether a change to the workload needs a fresh capture (not just new policies).
fn same_capture(a: &Workload, b: &Workload) -> bool {
    a.ips == b.ips && a.identity == b.identity && a.netns == b.netns
}

async fn reconcile(
    ctx: &Arc<Context>,
    state: &MeshState,
    enrolled: &mut HashMap<String, Enrolled>,
    status: &StatusMap,
) {
    let want: HashMap<String, Arc<Workload>> = desired(ctx, state)
        .into_iter()
        .map(|w| (w.uid.clone(), w))
        .collect();
    let stale: Vec<String> = enrolled
        .iter()
        .filter(|(uid, e)| {
            want.get(*uid)
                .is_none_or(|w| !same_capture(w, &e.local.workload))
        })
        .map(|(uid, _)| uid.clone())
        .collect();
    for uid in stale {
        if let Some(e) = enrolled.remove(&uid) {
            release(e).await;
            lock(status).remove(&uid);
            info!(workload = %uid, "released pod");
        }
    }
    lock(status).retain(|uid, _| want.contains_key(uid));
    for (uid, workload) in want {
        if enrolled.contains_key(&uid) {
            continue;
        }
        match enrol(ctx, workload.clone()).await {
            Ok(e) => {
                info!(workload = %workload.key(), identity = %workload.identity, netns = %workload.netns.as_deref().map(|p| p.display().to_string()).unwrap_or_default(), "captured pod");
                enrolled.insert(uid.clone(), e);
                lock(status).insert(uid, CaptureStatus::Captured);
            }
            Err(reason) => {
                error!(workload = %workload.key(), %reason, "CAPTURE FAILED: the pod's traffic is not protected; retrying");
                ctx.metrics
                    .capture_failures
                    .get_or_create(&WorkloadLabels {
                        workload: workload.key(),
                    })
                    .inc();
                lock(status).insert(uid, CaptureStatus::Failed { reason });
            }
        }
    }
}

async fn enrol(ctx: &Arc<Context>, workload: Arc<Workload>) -> Result<Enrolled, String> {
    let path = workload
        .netns
        .clone()
        .ok_or("no network namespace is known for this pod")?;
    let netns = NetNs::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let cert = ctx.certs.track(workload.identity.clone());
    let tls = server_config(ctx.bundle.clone(), Arc::new(cert.clone()));
    let local = Arc::new(LocalWorkload {
        workload: workload.clone(),
        netns,
        cert,
        tls,
    });
    let families: Vec<Family> = if workload.ips.iter().any(IpAddr::is_ipv6) {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    };
    let tasks = start_listeners(ctx, &local, &families).map_err(|e| format!("listeners: {e}"))?;
    let mut enrolled = Enrolled {
        local,
        tasks,
        families,
    };
    if let Err(e) = install(&path, enrolled.families.clone()).await {
        enrolled.families.clear();
        release(enrolled).await;
        return Err(e);
    }
    Ok(enrolled)
}

fn start_listeners(
    ctx: &Arc<Context>,
    local: &Arc<LocalWorkload>,
    families: &[Family],
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let abort_all = |tasks: &Vec<JoinHandle<()>>| tasks.iter().for_each(JoinHandle::abort);
    for family in families {
        let (loopback, any): (IpAddr, IpAddr) = match family {
            Family::V4 => (Ipv4Addr::LOCALHOST.into(), Ipv4Addr::UNSPECIFIED.into()),
            Family::V6 => (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::UNSPECIFIED.into()),
        };
        let bind = |ip, port| local.netns.listen(SocketAddr::new(ip, port));
        let listeners = (|| {
            Ok::<_, std::io::Error>((
                bind(loopback, OUTBOUND_PORT)?,
                bind(any, HBONE_PORT)?,
                bind(any, INBOUND_PLAINTEXT_PORT)?,
            ))
        })();
        let (out, hbone, plain) = match listeners {
            Ok(l) => l,
            Err(e) => {
                abort_all(&tasks);
                return Err(e);
            }
        };
        tasks.push(tokio::spawn(outbound::run(ctx.clone(), local.clone(), out)));
        tasks.push(tokio::spawn(inbound::run(
            ctx.clone(),
            local.clone(),
            hbone,
        )));
        tasks.push(tokio::spawn(plaintext::run(
            ctx.clone(),
            local.clone(),
            plain,
        )));
    }
    Ok(tasks)
}

async fn install(path: &std::path::Path, families: Vec<Family>) -> Result<(), String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        for family in families {
            capture::install(&path, family).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Rules out first, so that nothing is redirected to listeners that are going away.
async fn release(enrolled: Enrolled) {
    let path = enrolled.local.netns.path().to_owned();
    let families = enrolled.families.clone();
    let removed = tokio::task::spawn_blocking(move || {
        families
            .into_iter()
            .try_for_each(|family| capture::uninstall(&path, family))
    })
    .await;
    if let Ok(Err(e)) = removed {
        error!(netns = %enrolled.local.netns.path().display(), error = %e, "could not remove capture rules");
    }
    for task in enrolled.tasks {
        task.abort();
    }
}
