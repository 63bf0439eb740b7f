//! What every connection handler shares: the current mesh state, certificates, the pool, metrics,
//! and settings. Plus the per-pod state of an enrolled workload.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::watch;
use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::hbone::H2Settings;
use veil_mesh::identity::{CertHandle, CertManager, TrustBundle};
use veil_mesh::policy::TelemetrySettings;
use veil_mesh::pool::Pool;
use veil_mesh::telemetry::LogLimiter;
use veil_mesh::telemetry::metrics::{Counter, Metrics, TrafficLabels};
use veil_mesh::telemetry::trace::{Span, SpanKind, Tracing};

use crate::accept::LogKey;
use crate::budget::{Budgets, Limits, PodBudget};
use crate::capture::{PROXY_PORTS, UdpAllowance};
use crate::conntrack::LiveConnections;
use crate::netns::NetNs;

/// What to do with outbound traffic to an address the mesh does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum UnknownDestination {
    /// Let it through in plaintext, as the application sent it.
    Passthrough,
    /// Refuse it.
    Deny,
}

/// Settings of the data path.
#[derive(Clone, Debug)]
pub struct DataPathSettings {
    /// Outbound traffic to unknown destinations.
    pub unknown_destination: UnknownDestination,
    /// Send the client address in `forwarded` on HBONE requests.
    pub send_forwarded: bool,
    /// Send the client workload's names in `baggage` on HBONE requests (for the server's metrics).
    pub send_baggage: bool,
    /// Time allowed to connect to an application or a passthrough destination.
    pub connect_timeout: Duration,
    /// HTTP/2 settings of HBONE (and the equivalent QUIC ones).
    pub h2: H2Settings,
    /// HBONE over QUIC.
    pub quic: crate::quic::QuicSettings,
    /// Send a connection's first bytes right behind its HBONE `CONNECT` instead of after the `200`
    /// (one round trip less per new connection; see [`veil_mesh::hbone::EarlyData`]).
    pub early_data: bool,
    /// Join connections between two pods of this node without HBONE ([`crate::local`]).
    pub same_node: bool,
    /// Connection budgets.
    pub limits: Limits,
    /// UDP destinations enrolled pods may reach in clear; whether the rest is carried or refused.
    pub udp: UdpAllowance,
    /// How long a carried UDP flow lives without a datagram.
    pub udp_idle_timeout: Duration,
    /// Admit the kubelet's probes: the node's own connections to captured pods reach them in
    /// plaintext, with a source only the node can originate ([`crate::probes`]).
    pub kubelet_probes: bool,
    /// How long a live connection that a new mesh state denies may go on before it is closed.
    pub recheck_grace: Duration,
}

impl Default for DataPathSettings {
    fn default() -> Self {
        Self {
            unknown_destination: UnknownDestination::Passthrough,
            send_forwarded: false,
            send_baggage: true,
            connect_timeout: Duration::from_secs(5),
            h2: H2Settings::default(),
            quic: crate::quic::QuicSettings::default(),
            early_data: true,
            same_node: true,
            limits: Limits::for_nofile(1024),
            udp: UdpAllowance::default(),
            udp_idle_timeout: Duration::from_secs(60),
            kubelet_probes: false,
            recheck_grace: Duration::ZERO,
        }
    }
}

/// Shared by all handlers.
#[derive(Debug)]
pub struct Context {
    /// The node this ztunnel serves.
    pub node: String,
    /// The mesh, as last published by the source.
    pub state: watch::Receiver<Arc<MeshState>>,
    /// Workload certificates.
    pub certs: CertManager,
    /// Pooled HBONE connections.
    pub pool: Pool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Roots peers are verified against.
    pub bundle: Arc<TrustBundle>,
    /// Settings.
    pub settings: DataPathSettings,
    /// Connection budgets of the node and its pods.
    pub budgets: Budgets,
    /// Limits the log lines of refusals and accept errors.
    pub logs: LogLimiter<LogKey>,
    /// Live inbound connections, re-checked on every mesh change.
    pub live: Arc<LiveConnections>,
    /// The pods enrolled on this node.
    pub locals: Locals,
    /// Whether the node's guard against the kubelet probe source is in place (only then do pods
    /// admit that source).
    pub probe_guard: std::sync::atomic::AtomicBool,
    /// Why the node's kubelet probe rules could not be set, while they cannot (for readiness).
    pub probe_error: std::sync::Mutex<Option<String>>,
    /// Spans of tunnels, when traces are exported.
    pub tracing: Option<Arc<Tracing>>,
    /// Peers dialled on HTTP/2 alone for now (they did not answer QUIC).
    pub quic_peers: crate::quic::Peers,
    /// Round-robin position for picking service endpoints.
    next_endpoint: AtomicUsize,
    /// Whether the stream from the control plane is up, when the mesh comes from one.
    control_plane: Option<watch::Receiver<bool>>,
    /// Set when ztunnel stops: listeners stop accepting, HBONE connections are told to go away.
    draining: watch::Sender<bool>,
}

impl Context {
    /// A context over `state`.
    pub fn new(
        node: String,
        state: watch::Receiver<Arc<MeshState>>,
        certs: CertManager,
        pool: Pool,
        metrics: Arc<Metrics>,
        settings: DataPathSettings,
    ) -> Self {
        let bundle = certs.bundle().clone();
        let budgets = Budgets::new(settings.limits, &metrics);
        Self {
            node,
            state,
            certs,
            pool,
            metrics,
            bundle,
            settings,
            budgets,
            // One line per second per reason: enough to see an attack, not enough to fill a disk.
            logs: LogLimiter::new(Duration::from_secs(1)),
            live: Arc::default(),
            locals: Locals::default(),
            probe_guard: std::sync::atomic::AtomicBool::new(false),
            probe_error: std::sync::Mutex::new(None),
            tracing: None,
            next_endpoint: AtomicUsize::new(0),
            control_plane: None,
            draining: watch::Sender::new(false),
            quic_peers: Default::default(),
        }
    }

    /// Makes the data path depend on the control plane's stream being up (`connected`): while it
    /// is down, destinations the last mesh does not know are refused whatever
    /// [`DataPathSettings::unknown_destination`] says — they may be pods created meanwhile.
    pub fn with_control_plane(mut self, connected: watch::Receiver<bool>) -> Self {
        self.control_plane = Some(connected);
        self
    }

    /// Exports spans of tunnels with `tracing`.
    pub fn with_tracing(mut self, tracing: Option<Arc<Tracing>>) -> Self {
        self.tracing = tracing;
        self
    }

    /// A span for a tunnel (none when traces are off, or `telemetry` turns them off), child of
    /// `parent` (a `traceparent` a peer sent) or the root of a new trace, sampled as `telemetry`
    /// says (else as configured).
    pub fn span(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<&http::HeaderValue>,
        telemetry: &TelemetrySettings,
    ) -> Span {
        Tracing::span_for(
            self.tracing.as_deref(),
            name,
            kind,
            parent.as_slice(),
            telemetry,
        )
    }

    /// Whether the mesh comes from a control plane whose stream is down.
    pub fn control_plane_down(&self) -> bool {
        self.control_plane
            .as_ref()
            .is_some_and(|connected| !*connected.borrow())
    }

    /// What to do with a destination the mesh does not know, now.
    pub fn unknown_destination(&self) -> UnknownDestination {
        if self.control_plane_down() {
            UnknownDestination::Deny
        } else {
            self.settings.unknown_destination
        }
    }

    /// Starts draining: no connection is accepted from now on, and peers are told to open no more
    /// tunnels on the HBONE connections they have here. Live connections go on.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes once draining has started.
    pub fn drain_started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.subscribe();
        async move {
            // An error means the context is gone: nothing is served any more either.
            let _ = draining.wait_for(|d| *d).await;
        }
    }

    /// The current mesh snapshot.
    pub fn state(&self) -> Arc<MeshState> {
        self.state.borrow().clone()
    }

    /// A rotating index for load balancing.
    pub fn next_endpoint(&self) -> usize {
        self.next_endpoint.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a connection's metric handles and counts it opened; counts it closed when dropped.
    pub fn track_connection(&self, labels: TrafficLabels) -> ConnectionMeter {
        let m = &self.metrics;
        m.tcp_opened.get_or_create(&labels).inc();
        ConnectionMeter {
            to_destination: m.tcp_received_bytes.get_or_create_owned(&labels),
            to_source: m.tcp_sent_bytes.get_or_create_owned(&labels),
            closed: m.tcp_closed.get_or_create_owned(&labels),
        }
    }
}

/// Live byte counters of one connection.
#[derive(Debug)]
pub struct ConnectionMeter {
    /// Bytes source → destination.
    pub to_destination: Counter,
    /// Bytes destination → source.
    pub to_source: Counter,
    closed: Counter,
}

impl Drop for ConnectionMeter {
    fn drop(&mut self) {
        self.closed.inc();
    }
}

/// An enrolled pod on this node: its namespace, its certificate, its TLS server configuration.
#[derive(Debug)]
pub struct LocalWorkload {
    /// The workload as it was when enrolled (its uid finds the current version in the state).
    pub workload: Arc<Workload>,
    /// Its network namespace.
    pub netns: Arc<NetNs>,
    /// Its certificate.
    pub cert: CertHandle,
    /// The TLS server configuration of its HBONE listener.
    pub tls: Arc<ServerConfig>,
    /// What its connections hold of the node's budgets.
    pub budget: PodBudget,
    /// Its names as `baggage` for its tunnels (`None` when not sent).
    pub baggage: Option<http::HeaderValue>,
    /// What metrics call it (computed once: every connection it opens is labelled with it).
    pub party: veil_mesh::telemetry::metrics::Party,
    /// Its QUIC endpoints, with `--hbone-quic` ([`crate::quic`]).
    pub quic: crate::quic::Endpoints,
}

impl LocalWorkload {
    /// The pod's own address of the same family as `peer` (the source address of its tunnels).
    pub fn address_for(&self, peer: IpAddr) -> Option<IpAddr> {
        self.workload
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == peer.is_ipv4())
    }

    /// Why a connection into the pod for `dst` must be refused before any policy runs: `dst` is
    /// not one of the pod's mesh addresses (loopback, another pod, IPv6 link-local…) or is one of
    /// ztunnel's own ports. `None` when the pod serves it.
    pub fn misdirected(&self, dst: SocketAddr) -> Option<&'static str> {
        if !self.workload.ips.contains(&dst.ip()) {
            Some("not one of the workload's mesh addresses")
        } else if PROXY_PORTS.contains(&dst.port()) {
            Some("a proxy port")
        } else {
            None
        }
    }
}

/// The pods enrolled on this node, by uid: captured, their listeners serving. Kept by enrolment;
/// where the same-node path finds a destination.
#[derive(Debug, Default)]
pub struct Locals(RwLock<HashMap<Arc<str>, Arc<LocalWorkload>>>);

impl Locals {
    /// Records an enrolled pod.
    pub fn insert(&self, local: Arc<LocalWorkload>) {
        let mut locals = self.0.write().unwrap_or_else(|e| e.into_inner());
        locals.insert(local.workload.uid.clone(), local);
    }

    /// Forgets a pod (before its capture is taken down).
    pub fn remove(&self, uid: &str) {
        let mut locals = self.0.write().unwrap_or_else(|e| e.into_inner());
        locals.remove(uid);
    }

    /// The enrolled pod `uid`.
    pub fn get(&self, uid: &str) -> Option<Arc<LocalWorkload>> {
        let locals = self.0.read().unwrap_or_else(|e| e.into_inner());
        locals.get(uid).cloned()
    }

    /// Every enrolled pod.
    pub fn all(&self) -> Vec<Arc<LocalWorkload>> {
        let locals = self.0.read().unwrap_or_else(|e| e.into_inner());
        locals.values().cloned().collect()
    }
}
