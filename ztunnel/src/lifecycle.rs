//! A running ztunnel's life on its node: owning it, handing it over to a successor, draining.
//!
//! While it owns the node, ztunnel enrols pods, answers the CNI plugin and serves its admin ports.
//! A successor taking over ([`crate::handover`]) ends all three at once — enrolment at the end of
//! its round, so no pod is left half captured — and gets copies of the pods' listening sockets;
//! both then serve them until this one is told to stop. On the first stop request it stops
//! accepting, sends GOAWAY on its HBONE connections, and serves the connections it has until the
//! last one ends, the drain period passes, or a second stop request comes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use veil_mesh::telemetry::http::{Handler, serve};

use crate::context::Context;
use crate::enrol;
use crate::handover::{self, Request};

/// Stop requests (SIGTERM, SIGINT): the first drains, the next stops at once.
pub type Stops = mpsc::UnboundedReceiver<()>;

/// How long a successor retries binding the admin ports its predecessor is letting go of.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// How often a draining ztunnel logs what is left.
const DRAIN_REPORT: Duration = Duration::from_secs(10);

/// How long a draining ztunnel that handed nothing over yet keeps the pods' sockets open (not
/// accepting) for a successor that is still starting: the kubelet may have stopped it early, on a
/// readiness answer that came from it rather than from the successor (with `hostNetwork` both
/// share the port). Connections meanwhile wait in the sockets' queues instead of being refused.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// Binds the admin endpoints and serves them; an address still held (by a predecessor letting go
/// of it) is retried for [`BIND_RETRY`].
pub async fn serve_ops(
    endpoints: Vec<(SocketAddr, Handler)>,
) -> Result<Vec<JoinHandle<()>>, (SocketAddr, std::io::Error)> {
    let mut tasks = Vec::new();
    for (addr, handler) in endpoints {
        let deadline = tokio::time::Instant::now() + BIND_RETRY;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return Err((addr, e));
                }
            }
        };
        tasks.push(tokio::spawn(serve(listener, handler)));
    }
    Ok(tasks)
}

/// What this ztunnel runs while it owns the node.
#[derive(Debug)]
pub struct Owner {
    /// Enrolment's inputs, to start it (again).
    pub enrolment: enrol::Enrolment,
    /// The enrolment loop, while it runs.
    pub reconciler: Option<JoinHandle<enrol::Captured>>,
    /// What enrolment captured, while it is stopped.
    pub captured: Option<enrol::Captured>,
    /// Tells enrolment to stop.
    pub stop_enrolment: watch::Sender<bool>,
    /// The admin endpoints (metrics, readiness, admin).
    pub ops: Vec<JoinHandle<()>>,
    /// The CNI plugin's socket.
    pub cni: Option<JoinHandle<()>>,
    /// The handover socket, when there is one, and its requests.
    pub handover: Option<(handover::Server, mpsc::Receiver<Request>)>,
    /// Whether a successor took the pods over.
    pub handed_over: bool,
}

impl Owner {
    /// Starts owning the node: enrolment runs.
    pub fn start(
        enrolment: enrol::Enrolment,
        ops: Vec<JoinHandle<()>>,
        cni: Option<JoinHandle<()>>,
        handover: Option<(handover::Server, mpsc::Receiver<Request>)>,
    ) -> Self {
        let (stop_enrolment, stop) = watch::channel(false);
        let reconciler = enrolment.clone().spawn(stop, enrol::Captured::default());
        Self {
            enrolment,
            reconciler: Some(reconciler),
            captured: None,
            stop_enrolment,
            ops,
            cni,
            handover,
            handed_over: false,
        }
    }

    fn ctx(&self) -> &Arc<Context> {
        &self.enrolment.ctx
    }

    /// Serves until the first stop request, handing the node over to any successor that asks.
    pub async fn run_until_stopped(&mut self, stops: &mut Stops) {
        loop {
            let request = next_request(&mut self.handover);
            tokio::select! {
                _ = stops.recv() => return,
                request = request => match request {
                    Some(request) => self.hand_over(request).await,
                    None => self.handover = None,
                },
            }
        }
    }

    /// A successor asks for the node. Enrolment stops (at the end of its round) and the pods'
    /// sockets are copied to it; once it says it took them, the CNI socket and the admin ports
    /// are let go of for it and the node is its own (this ztunnel goes on serving the sockets too
    /// until it is stopped). If it did not take them, enrolment starts again here.
    async fn hand_over(&mut self, request: Request) {
        self.stop_enrolling().await;
        let pods = self.copies();
        let offered = pods.len();
        let _ = request.reply.send(pods);
        match request.outcome.await {
            Ok(Ok(taken)) => {
                self.let_go_of_ports().await;
                self.handed_over = true;
                info!(
                    offered,
                    taken,
                    "a successor took this node over: enrolment, the CNI socket and the admin ports are now its own"
                );
            }
            // A successor that took the node before still has it: nothing changes here.
            Ok(Err(reason)) if self.handed_over => {
                warn!(%reason, "a second handover failed; the node stays with the successor that took it");
            }
            Err(_) if self.handed_over => {
                warn!(
                    "a second handover was dropped; the node stays with the successor that took it"
                );
            }
            Ok(Err(reason)) => {
                warn!(%reason, "the handover failed: this ztunnel keeps the node");
                self.resume_enrolling();
            }
            Err(_) => {
                warn!("the handover was dropped: this ztunnel keeps the node");
                self.resume_enrolling();
            }
        }
    }

    /// Copies of the pods' namespaces and sockets for a successor: those enrolled here, and those
    /// handed over here and not enrolled yet.
    fn copies(&self) -> HashMap<String, handover::Handoff> {
        let held = handover::pods(&self.enrolment.held);
        let inherited = handover::pods(&self.enrolment.inherited);
        inherited
            .iter()
            .chain(held.iter())
            .filter_map(|(uid, pod)| match pod.try_clone() {
                Ok(copy) => Some((uid.clone(), copy)),
                Err(e) => {
                    error!(workload = %uid, error = %e, "cannot copy the pod's sockets for the successor: it binds them afresh once this ztunnel lets go");
                    None
                }
            })
            // Enrolled wins over handed over (chained last).
            .collect()
    }

    /// Stops enrolment at the end of its round, keeping what it captured.
    async fn stop_enrolling(&mut self) {
        self.stop_enrolment.send_replace(true);
        if let Some(reconciler) = self.reconciler.take() {
            match reconciler.await {
                Ok(captured) => self.captured = Some(captured),
                Err(e) => error!(error = %e, "enrolment ended abnormally"),
            }
        }
    }

    /// Starts enrolment again from what it had captured.
    fn resume_enrolling(&mut self) {
        if self.reconciler.is_some() {
            return;
        }
        self.stop_enrolment.send_replace(false);
        let captured = self.captured.take().unwrap_or_default();
        self.reconciler = Some(
            self.enrolment
                .clone()
                .spawn(self.stop_enrolment.subscribe(), captured),
        );
    }

    /// Closes the CNI socket and the admin ports (awaited: a successor can bind them once this
    /// returns).
    async fn let_go_of_ports(&mut self) {
        for task in self.cni.take().into_iter().chain(self.ops.drain(..)) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops accepting anything and serves the connections open until they end, `period` passes
    /// or another stop request comes. For [`HANDOVER_WAIT`] of that, a successor may still take
    /// the pods' sockets over (they stay open, not accepting); then nothing is handed over.
    pub async fn drain(mut self, period: Duration, stops: &mut Stops) {
        self.stop_enrolling().await;
        self.let_go_of_ports().await;
        if self.handed_over || self.handover.is_none() {
            // The successor holds the sockets already, or none can come.
            self.stop_handing_over();
        }
        self.ctx().start_draining();
        let open = self.ctx().budgets.connections();
        info!(
            connections = open,
            period = ?period,
            "draining: no new connection is accepted here; the open ones are served until they end"
        );
        self.serve_until_drained(period, stops).await;
        // QUIC has no kernel to end its connections when the process exits: say so to the peers,
        // which would otherwise hold them until their idle timeout.
        crate::quic::close_all(self.ctx()).await;
    }

    /// Serves what is open until nothing is, `period` passes or another stop request comes.
    async fn serve_until_drained(&mut self, period: Duration, stops: &mut Stops) {
        let deadline = tokio::time::Instant::now() + period;
        let handover_ends = tokio::time::Instant::now() + HANDOVER_WAIT.min(period);
        let mut report = tokio::time::interval(DRAIN_REPORT);
        report.tick().await;
        loop {
            let open = self.ctx().budgets.connections();
            let handing_over = self.handover.is_some();
            if open == 0 && !handing_over {
                info!("drained: no connection left");
                return;
            }
            let request = next_request(&mut self.handover);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    warn!(connections = open, "drain period over: the connections left are closed");
                    return;
                }
                _ = stops.recv() => {
                    warn!(connections = open, "stopped again while draining: the connections left are closed");
                    return;
                }
                Some(request) = request => {
                    let pods = self.copies();
                    let _ = request.reply.send(pods);
                    if let Ok(Ok(taken)) = request.outcome.await {
                        info!(taken, "a successor took this node's pods over while this ztunnel drains");
                        // Its copies are its own now; this ztunnel's would only keep sockets
                        // open that nothing here accepts from.
                        self.stop_handing_over();
                    }
                }
                () = tokio::time::sleep_until(handover_ends), if handing_over => self.stop_handing_over(),
                _ = report.tick() => info!(connections = open, "draining"),
                () = tokio::time::sleep(Duration::from_millis(100)), if open > 0 => {}
            }
        }
    }

    /// Nothing more is handed over: the socket is removed and this ztunnel's copies of the pods'
    /// sockets are closed (a successor that took them holds its own).
    fn stop_handing_over(&mut self) {
        if let Some((server, _)) = self.handover.take() {
            server.close();
        }
        handover::pods(&self.enrolment.held).clear();
        handover::pods(&self.enrolment.inherited).clear();
        // What enrolment captured holds no socket copies (its listener tasks hold the sockets).
        self.captured = None;
    }
}

/// The next successor's request, once there is a handover socket (never without one).
async fn next_request(
    handover: &mut Option<(handover::Server, mpsc::Receiver<Request>)>,
) -> Option<Request> {
    match handover {
        Some((_, requests)) => requests.recv().await,
        None => std::future::pending().await,
    }
}
