//! Enrolment: keeps the set of captured pods equal to the mesh's enrolled workloads on this node.
//!
//! For each pod: open its namespace, start the three listeners inside it, claim its certificate,
//! then install the capture rules. A failure at any step is undone, logged, counted, shown by the
//! readiness endpoint, and retried: a pod is never left enrolled but uncaptured without anyone
//! knowing. A removed pod loses its rules first, then its listeners.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};
use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::hbone::HBONE_PORT;
use veil_mesh::identity::server_config;
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{Party, WorkloadLabels};

use crate::budget::PodBudget;
use crate::capture::{
    self, Family, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, OwnSockets, UdpAllowance,
};
use crate::context::{Context, LocalWorkload};
use crate::handover::{Handoff, Held, Inherited, Predecessors, pods};
use crate::netns::{NetNs, NsId};
use crate::registry::Registry;
use crate::{inbound, outbound, plaintext, udp};

/// How long to wait before retrying a pod whose capture failed.
const RETRY: Duration = Duration::from_secs(3);

/// How often the node's kubelet probe rules are written again whatever changed.
const PROBE_RESYNC: Duration = Duration::from_secs(30);

/// The capture state of one pod, for readiness and the admin dump.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CaptureStatus {
    /// Listeners up, rules in place, in this namespace.
    Captured {
        /// The namespace captured.
        netns: NsId,
    },
    /// Capture failed; retried.
    Failed {
        /// Why.
        reason: String,
    },
    /// The pod's network was torn down (CNI DEL): it is going away and has nothing to capture.
    Released,
}

/// Capture status of every pod this ztunnel should capture, by uid.
pub type StatusMap = Arc<Mutex<BTreeMap<String, CaptureStatus>>>;

struct Enrolled {
    local: Arc<LocalWorkload>,
    tasks: Vec<JoinHandle<()>>,
    netns_id: NsId,
    /// How its rules, as last written, tell ztunnel's sockets apart.
    own: OwnSockets,
    /// The addresses its rules, as last written, admit the probe source to.
    probes: Vec<IpAddr>,
}

/// Everything enrolment works with (cloned to start it again where it stopped).
#[derive(Clone, Debug)]
pub struct Enrolment {
    /// The shared context.
    pub ctx: Arc<Context>,
    /// What the CNI plugin handed over.
    pub registry: Arc<Registry>,
    /// Capture status of every pod, for readiness and the admin dump.
    pub status: StatusMap,
    /// Where pods that were running before enrolment are looked for (see
    /// [`crate::netns::find_by_address`]).
    pub pinned_dir: PathBuf,
    /// The pods enrolled here, as they would be handed over ([`crate::handover`]).
    pub held: Held,
    /// The pods a predecessor handed over, taken as they are captured; dropped once not wanted.
    pub inherited: Inherited,
    /// ztunnel's cgroup, matched with its mark in the pods' rules ([`crate::cgroup`]).
    pub own_cgroup: Option<String>,
    /// Whether a pod can set ztunnel's mark on its own sockets (Linux 5.17 and later, with
    /// `CAP_NET_RAW`): then rules that let the mark alone through leave a way around capture.
    pub pods_can_mark: bool,
    /// Predecessors still running: their sockets are let out by the mark alone until they exit.
    pub predecessors: Predecessors,
}

/// The pods enrolment captured, given back when it stops: it starts again from them.
#[derive(Default)]
pub struct Captured(HashMap<String, Enrolled>);

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Captured").field(&self.0.len()).finish()
    }
}

impl Enrolment {
    /// Reconciles from `captured` until `stop` is set (at the end of a round: captured pods are
    /// left as they are, their listeners still accepting), then gives back what it captured.
    pub fn spawn(self, stop: watch::Receiver<bool>, captured: Captured) -> JoinHandle<Captured> {
        tokio::spawn(run(self, stop, captured))
    }
}

/// Reconciles on every state change, every change of the CNI registry, and periodically while some
/// capture is failing; until `stop` is set.
async fn run(e: Enrolment, mut stop: watch::Receiver<bool>, captured: Captured) -> Captured {
    let ctx = e.ctx.clone();
    let mut rx = ctx.state.clone();
    let mut cni = e.registry.subscribe();
    let Captured(mut enrolled) = captured;
    // The captured addresses the node's probe rules were last written for.
    let mut probed: Option<BTreeSet<IpAddr>> = None;
    // The guard against the probe source goes in before any pod admits it.
    if ctx.settings.kubelet_probes {
        let targets = probe_targets(&e, &rx.borrow(), &enrolled);
        sync_probes(&ctx, targets, &mut probed).await;
    }
    // Its first tick a period from now: the rules were just written.
    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + PROBE_RESYNC, PROBE_RESYNC);
    let mut predecessors = e.predecessors.clone();
    // Counted before the first round, which captures pods one by one.
    e.count_mark_only(&enrolled);
    loop {
        predecessors.borrow_and_update();
        let state = rx.borrow_and_update().clone();
        cni.borrow_and_update();
        if *stop.borrow_and_update() {
            return Captured(enrolled);
        }
        // The node gives its probes the probe source before a pod is captured, so that a probe
        // sent the moment its rules are in is admitted, not taken for plaintext (nothing to do if
        // no pod is new).
        if ctx.settings.kubelet_probes {
            sync_probes(&ctx, probe_targets(&e, &state, &enrolled), &mut probed).await;
        }
        e.reconcile(&state, &mut enrolled).await;
        let rewritten = e.rewrite(&mut enrolled).await;
        e.registry
            .set_captured(enrolled.values().map(|e| e.local.workload.key()).collect());
        e.count_mark_only(&enrolled);
        let probes_failing = ctx.settings.kubelet_probes
            && !sync_probes(&ctx, probe_targets(&e, &state, &enrolled), &mut probed).await;
        let failing = probes_failing
            || !rewritten
            || lock(&e.status)
                .values()
                .any(|s| matches!(s, CaptureStatus::Failed { .. }));
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { return Captured(enrolled) },
            changed = rx.changed() => if changed.is_err() { return Captured(enrolled) },
            changed = cni.changed() => if changed.is_err() { return Captured(enrolled) },
            () = tokio::time::sleep(RETRY), if failing => {}
            // The node's rules are written again now and then: something may have flushed them.
            _ = resync.tick(), if ctx.settings.kubelet_probes => probed = None,
            // The last predecessor exited: its sockets no longer pass.
            Ok(()) = predecessors.changed() => {}
        }
    }
}

/// How many pods can be stepped around by a pod setting ztunnel's mark: of the captured ones, those
/// whose rules were last written as `own` lets the mark alone through; and every one of the
/// `pending` (handed over, not taken over yet: their rules are the predecessor's, as it wrote them,
/// or partly this ztunnel's where a takeover failed half-way). None where a pod cannot set the mark.
fn mark_only_pods<'a>(
    pods_can_mark: bool,
    own: impl Iterator<Item = &'a OwnSockets>,
    pending: usize,
) -> usize {
    if pods_can_mark {
        own.filter(|own| own.lets_mark_alone()).count() + pending
    } else {
        0
    }
}

/// The pods the node's probe rules are for: those captured here, and those to be captured here
/// (handed over by a predecessor, which still serves them, or new).
fn probe_targets(
    e: &Enrolment,
    state: &MeshState,
    enrolled: &HashMap<String, Enrolled>,
) -> BTreeSet<IpAddr> {
    let mut targets = addresses(enrolled);
    targets.extend(
        desired(&e.ctx, state)
            .iter()
            .filter(|w| !e.registry.released(&w.key()))
            .flat_map(|w| w.ips.iter().copied()),
    );
    targets
}

/// The addresses of the pods captured here.
fn addresses(enrolled: &HashMap<String, Enrolled>) -> BTreeSet<IpAddr> {
    enrolled
        .values()
        .flat_map(|e| e.local.workload.ips.iter().copied())
        .collect()
}

/// Brings the node's probe rules in line with `pods` (when they changed);
/// false if that failed (logged; retried with the next round).
async fn sync_probes(
    ctx: &Context,
    pods: BTreeSet<IpAddr>,
    probed: &mut Option<BTreeSet<IpAddr>>,
) -> bool {
    if probed.as_ref() == Some(&pods) {
        return true;
    }
    let wanted = pods.clone();
    match tokio::task::spawn_blocking(move || crate::probes::sync(&wanted)).await {
        Ok(Ok(())) => {
            info!(pods = pods.len(), "kubelet probe rules set on the node");
            *probed = Some(pods);
            ctx.probe_guard.store(true, Ordering::Release);
            *ctx.probe_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            true
        }
        Ok(Err(e)) => {
            error!(error = %e, "could not set the node's kubelet probe rules: probes of enrolled pods fail under STRICT until this succeeds");
            *ctx.probe_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            // Unsure the guard is there: pods captured from now on do not admit the source.
            ctx.probe_guard.store(false, Ordering::Release);
            false
        }
        Err(e) => {
            error!(error = %e, "the kubelet probe rules task failed");
            false
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
    a.ips == b.ips && a.identity == b.identity
}

/// Where a workload's network namespace is known to be, without scanning: the mesh description
/// (local mode), or what the CNI plugin said.
fn known_netns(workload: &Workload, registry: &Registry) -> Option<PathBuf> {
    workload
        .netns
        .clone()
        .or_else(|| registry.get(&workload.key()).map(|p| p.netns))
}

impl Enrolment {
    /// Sets `veil_capture_mark_only_pods` ([`mark_only_pods`]).
    fn count_mark_only(&self, enrolled: &HashMap<String, Enrolled>) {
        let pending = pods(&self.inherited).len();
        let exposed = mark_only_pods(
            self.pods_can_mark,
            enrolled.values().map(|e| &e.own),
            pending,
        );
        self.ctx
            .metrics
            .capture_mark_only_pods
            .set(i64::try_from(exposed).unwrap_or(i64::MAX));
    }

    /// How the pods' rules tell this ztunnel's sockets apart, now.
    fn own(&self) -> OwnSockets {
        OwnSockets {
            cgroup: self.own_cgroup.clone(),
            // Without a cgroup the mark alone passes anyway.
            mark_only: self.own_cgroup.is_some() && *self.predecessors.borrow() > 0,
        }
    }

    /// The probe source is admitted only to the pod's own addresses, and only once the node's
    /// guard against it is in place.
    fn probes(&self, workload: &Workload) -> Vec<IpAddr> {
        let ctx = &self.ctx;
        if ctx.settings.kubelet_probes && ctx.probe_guard.load(Ordering::Acquire) {
            workload.ips.clone()
        } else {
            Vec::new()
        }
    }

    /// Writes again (in place: no moment without capture) the rules of every captured pod whose
    /// rules are not what they should be now: once the last predecessor has exited, its sockets no
    /// longer pass; once the node's guard against the probe source is in place, a pod captured
    /// before admits its probes (a guard in doubt takes no admission back: it was there when
    /// given). Whether every pod's rules are as they should be (if not, the loop retries; the
    /// pod keeps the rules it has, and stays captured).
    async fn rewrite(&self, enrolled: &mut HashMap<String, Enrolled>) -> bool {
        let own = self.own();
        let (mut rewritten, mut done) = (0, true);
        for e in enrolled.values_mut() {
            let workload = e.local.workload.clone();
            let probes = match self.probes(&workload) {
                none if none.is_empty() => e.probes.clone(),
                probes => probes,
            };
            if e.own == own && e.probes == probes {
                continue;
            }
            let path = e.local.netns.stable_path();
            let udp = self.ctx.settings.udp.clone();
            match install(&path, udp, own.clone(), probes.clone()).await {
                Ok(()) => {
                    rewritten += usize::from(e.own != own);
                    (e.own, e.probes) = (own.clone(), probes);
                }
                Err(reason) => {
                    error!(workload = %workload.key(), %reason, "could not write the pod's capture rules again; retrying");
                    done = false;
                }
            }
        }
        if rewritten > 0 && !own.mark_only {
            info!(
                pods = rewritten,
                "the predecessors have exited: the pods' rules let out this ztunnel's sockets only"
            );
        }
        done
    }

    async fn reconcile(&self, state: &MeshState, enrolled: &mut HashMap<String, Enrolled>) {
        let (ctx, registry, status) = (&self.ctx, &self.registry, &self.status);
        let want: HashMap<String, Arc<Workload>> = desired(ctx, state)
            .into_iter()
            .map(|w| (w.uid.to_string(), w))
            .collect();
        let stale: Vec<String> = enrolled
            .iter()
            .filter(|(uid, e)| {
                want.get(*uid).is_none_or(|w| {
                    !same_capture(w, &e.local.workload)
                        || registry.released(&w.key())
                        || known_netns(w, registry).is_some_and(|p| !e.local.netns.is_at(&p))
                })
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            if let Some(e) = enrolled.remove(&uid) {
                // No new same-node connection goes to it from now on.
                ctx.locals.remove(&uid);
                pods(&self.held).remove(&uid);
                let workload = e.local.workload.key();
                release(e).await;
                lock(status).remove(&uid);
                info!(target: AUDIT, audit = SCHEMA, event = "workload_released", component = "ztunnel", node = %self.ctx.node, workload, uid = %uid, "released pod");
            }
        }
        lock(status).retain(|uid, _| want.contains_key(uid));
        // Sockets handed over for pods no longer wanted here (deleted, unenrolled, released) are
        // let go of: their connections are refused, not left waiting in a queue nobody serves.
        pods(&self.inherited)
            .retain(|uid, _| want.get(uid).is_some_and(|w| !registry.released(&w.key())));
        for (uid, workload) in want {
            if enrolled.contains_key(&uid) {
                continue;
            }
            if registry.released(&workload.key()) {
                // Its CNI DEL has run: it is going away, not to be captured again.
                lock(status).insert(uid, CaptureStatus::Released);
                continue;
            }
            match self
                .enrol(workload.clone(), known_netns(&workload, registry))
                .await
            {
                Ok((e, handoff)) => {
                    info!(target: AUDIT, audit = SCHEMA, event = "workload_enrolled", component = "ztunnel", node = %workload.node, workload = %workload.key(), uid = %workload.uid, identity = %workload.identity, netns = %e.local.netns.path().display(), "captured pod");
                    let netns = e.netns_id;
                    ctx.locals.insert(e.local.clone());
                    enrolled.insert(uid.clone(), e);
                    pods(&self.held).insert(uid.clone(), handoff);
                    lock(status).insert(uid, CaptureStatus::Captured { netns });
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

    /// What a predecessor handed over for `uid`, if it is the namespace the pod is known to be in
    /// (a copy: the original is kept until the capture succeeds).
    fn inherited(&self, uid: &str, netns_from: Option<&Path>) -> Option<Handoff> {
        let mut inherited = pods(&self.inherited);
        let pod = inherited.get(uid)?;
        let same = match netns_from {
            Some(path) => matches!((pod.netns_id(), NsId::of(path)), (Ok(a), Ok(b)) if a == b),
            None => true,
        };
        match pod.try_clone() {
            Ok(copy) if same => Some(copy),
            Ok(_) => {
                info!(workload = %uid, "the pod handed over is in another namespace now: captured afresh");
                inherited.remove(uid);
                None
            }
            Err(e) => {
                error!(workload = %uid, error = %e, "cannot use the sockets handed over for the pod");
                None
            }
        }
    }

    async fn enrol(
        &self,
        workload: Arc<Workload>,
        netns_from: Option<PathBuf>,
    ) -> Result<(Enrolled, Handoff), String> {
        let ctx = &self.ctx;
        let inherited = self.inherited(&workload.uid, netns_from.as_deref());
        let netns = match (&inherited, &netns_from) {
            (Some(pod), _) => NetNs::from_file(
                pod.netns_path.clone(),
                pod.netns_file()
                    .map_err(|e| format!("the namespace handed over: {e}"))?,
            ),
            (None, Some(path)) => {
                NetNs::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?
            }
            (None, None) => find_netns(&workload, &self.pinned_dir).await?,
        };
        let path = netns.stable_path();
        let netns_id = netns
            .id()
            .map_err(|e| format!("reading the namespace's identity: {e}"))?;
        let cert = ctx.certs.track(workload.identity.clone());
        let tls = server_config(ctx.bundle.clone(), Arc::new(cert.clone()));
        let local = Arc::new(LocalWorkload {
            workload: workload.clone(),
            netns,
            cert,
            tls,
            budget: PodBudget::default(),
            baggage: ctx
                .settings
                .send_baggage
                .then(|| Party::baggage(&workload))
                .flatten(),
            party: Party::of(&workload),
            quic: Default::default(),
        });
        // The listeners serve once the pod's rules are this ztunnel's: before, the rules a
        // predecessor (or a ztunnel that died) wrote would not let this one's sockets out, and a
        // connection it took would be redirected back to it. Connections wait in the queues.
        let (rules_written, rules) = watch::channel(false);
        let (tasks, listeners) = start_listeners(ctx, &local, inherited.as_ref(), &rules)
            .map_err(|e| format!("listeners: {e}"))?;
        let handoff = Handoff {
            netns_path: local.netns.path().to_owned(),
            netns: local
                .netns
                .dup()
                .map_err(|e| format!("keeping the namespace for a successor: {e}"))?,
            listeners,
        };
        let (own, probes) = (self.own(), self.probes(&workload));
        let enrolled = Enrolled {
            local,
            tasks,
            netns_id,
            own: own.clone(),
            probes: probes.clone(),
        };
        if let Err(e) = install(&path, ctx.settings.udp.clone(), own, probes).await {
            // Whatever part of the rules went in comes out again: no half-captured pod. Not for
            // a pod handed over: its rules are the predecessor's, and its sockets still serve.
            if inherited.is_some() {
                for task in enrolled.tasks {
                    task.abort();
                }
            } else {
                release(enrolled).await;
            }
            return Err(e);
        }
        rules_written.send_replace(true);
        if inherited.is_some() {
            pods(&self.inherited).remove(&*workload.uid);
            info!(workload = %workload.key(), "serving the sockets handed over by the previous ztunnel");
        }
        Ok((enrolled, handoff))
    }
}

/// A pod that was running before it was enrolled: its namespace is found by its address.
async fn find_netns(workload: &Workload, pinned_dir: &Path) -> Result<Arc<NetNs>, String> {
    let ip = *workload.ips.first().ok_or("the pod has no address")?;
    let dir = pinned_dir.to_owned();
    tokio::task::spawn_blocking(move || crate::netns::find_by_address(ip, &dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("scanning for the pod's network namespace: {e}"))?
        .ok_or_else(|| format!("no network namespace on this node holds {ip} (not known from the CNI plugin either)"))
}

/// Starts serving the pod's listeners: those handed over in `inherited`, else bound afresh. Also
/// returns a copy of each, for a successor. Listeners handed over start accepting once the pod's
/// certificate is there: until then the predecessor, which shares them, takes every connection.
fn start_listeners(
    ctx: &Arc<Context>,
    local: &Arc<LocalWorkload>,
    inherited: Option<&Handoff>,
    rules: &watch::Receiver<bool>,
) -> std::io::Result<(Vec<JoinHandle<()>>, Vec<FamilyListeners>)> {
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut copies = Vec::new();
    for family in Family::ALL {
        let listeners = match inherited {
            Some(pod) => pod
                .tokio_listeners(family)
                .map(|l| l.map(|[a, b, c]| (a, b, c))),
            None => bind_family(local, family),
        };
        let (out, hbone, plain) = match listeners {
            Ok(Some(listeners)) => listeners,
            Ok(None) => continue,
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(e);
            }
        };
        let dup = |l: &TcpListener| l.as_fd().try_clone_to_owned();
        match (dup(&out), dup(&hbone), dup(&plain)) {
            (Ok(a), Ok(b), Ok(c)) => copies.push((family, [a, b, c])),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(e);
            }
        }
        let wait = inherited.is_some();
        tasks.push(spawn_after_cert(
            wait,
            local,
            rules,
            outbound::run(ctx.clone(), local.clone(), out),
        ));
        tasks.push(spawn_after_cert(
            wait,
            local,
            rules,
            inbound::run(ctx.clone(), local.clone(), hbone),
        ));
        tasks.push(spawn_after_cert(
            wait,
            local,
            rules,
            plaintext::run(ctx.clone(), local.clone(), plain),
        ));
        if ctx.settings.quic.enabled {
            match crate::quic::start(ctx, local, family) {
                Ok(serve) => {
                    tasks.extend(serve.map(|serve| spawn_after_cert(false, local, rules, serve)))
                }
                Err(e) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return Err(e);
                }
            }
        }
        if ctx.settings.udp.carry {
            // Bound afresh even for a pod handed over (the socket allows a second binding): a
            // flow the predecessor carried ends with it, and its next datagram starts a new one.
            let socket = match udp::bind(local, family) {
                Ok(socket) => socket,
                Err(e) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return Err(e);
                }
            };
            tasks.push(spawn_after_cert(
                wait,
                local,
                rules,
                udp::run(ctx.clone(), local.clone(), socket),
            ));
        }
    }
    Ok((tasks, copies))
}

/// Serves once the pod's rules are written (and, with `wait`, its certificate is there).
fn spawn_after_cert(
    wait: bool,
    local: &Arc<LocalWorkload>,
    rules: &watch::Receiver<bool>,
    serve: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let (local, mut rules) = (local.clone(), rules.clone());
    tokio::spawn(async move {
        if rules.wait_for(|written| *written).await.is_err() {
            // Never written: the capture failed and the pod is released.
            return;
        }
        if wait {
            local.cert.ready().await;
        }
        serve.await;
    })
}

/// A family's listeners as handed over: outbound, HBONE, plaintext.
type FamilyListeners = (Family, [OwnedFd; 3]);

type Listeners = (TcpListener, TcpListener, TcpListener);

/// The outbound, HBONE and plaintext listeners of one family, or none if the namespace has IPv6
/// turned off (no `::1`): then no IPv6 packet can reach or leave the pod, and the IPv6 rules, which
/// are installed anyway, drop what could.
fn bind_family(local: &LocalWorkload, family: Family) -> std::io::Result<Option<Listeners>> {
    let (loopback, any): (IpAddr, IpAddr) = match family {
        Family::V4 => (Ipv4Addr::LOCALHOST.into(), Ipv4Addr::UNSPECIFIED.into()),
        Family::V6 => (Ipv6Addr::LOCALHOST.into(), Ipv6Addr::UNSPECIFIED.into()),
    };
    let bind = |ip, port| local.netns.listen(SocketAddr::new(ip, port));
    let out = match bind(loopback, OUTBOUND_PORT) {
        Ok(out) => out,
        Err(e) if family == Family::V6 && ipv6_off(&e) => {
            info!(workload = %local.workload.key(), error = %e, "IPv6 is off in the pod: no IPv6 listeners");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(Some((
        out,
        bind(any, HBONE_PORT)?,
        bind(any, INBOUND_PLAINTEXT_PORT)?,
    )))
}

pub(crate) fn ipv6_off(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)
}

/// Both families, always: a pod with only IPv4 in the mesh still has IPv6 link-local addresses.
async fn install(
    path: &std::path::Path,
    udp: UdpAllowance,
    own: OwnSockets,
    probes: Vec<IpAddr>,
) -> Result<(), String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        for family in Family::ALL {
            capture::install(&path, family, &udp, &own, &probes).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Rules out first, so that nothing is redirected to listeners that are going away.
async fn release(enrolled: Enrolled) {
    let path = enrolled.local.netns.stable_path();
    // Each family on its own: a failure in one must not leave the other's rules behind.
    let removed = tokio::task::spawn_blocking(move || {
        Family::ALL.map(|family| capture::uninstall(&path, family))
    })
    .await;
    for e in removed.iter().flatten().filter_map(|r| r.as_ref().err()) {
        error!(netns = %enrolled.local.netns.path().display(), error = %e, "could not remove capture rules");
    }
    for task in enrolled.tasks {
        task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_counted_exposed_only_where_the_mark_alone_passes_and_a_pod_can_set_it() {
        let cgroup = OwnSockets {
            cgroup: Some("/".to_owned()),
            mark_only: false,
        };
        let draining = OwnSockets {
            mark_only: true,
            ..cgroup.clone()
        };
        let none = OwnSockets::default();
        let pods = [cgroup.clone(), draining, none.clone(), cgroup];
        assert_eq!(mark_only_pods(true, pods.iter(), 0), 2);
        // Pods handed over and not taken over yet count whatever their rules are.
        assert_eq!(mark_only_pods(true, pods.iter(), 3), 5);
        // Before Linux 5.17 only CAP_NET_ADMIN sets a mark: the mark alone is no way around.
        assert_eq!(mark_only_pods(false, pods.iter(), 3), 0);
        assert_eq!(mark_only_pods(true, [none].iter(), 0), 1);
    }
}
