//! Prometheus metrics of the data path: Istio's standard traffic metrics (`istio_*`, see
//! [`super::traffic`]) and veil's own (`veil_*`, labelled by identity and policy).
//!
//! Label values hold `Identity` / `PolicyId` handles (reference-counted), so counting a connection
//! allocates no strings; they are written out only when scraped.

use std::fmt::Write as _;
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub mod export;

pub use super::traffic::{
    BAGGAGE_NAMES, BAGGAGE_NAMES_PER_IDENTITY, Party, PeerNames, Protocol, Reporter, RequestLabels,
    Security, ServiceLabel, TrafficLabels,
};

/// Bucket bounds of request durations, in milliseconds (Istio's).
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Bucket bounds of body sizes, in bytes (powers of ten up to 100 MB).
const SIZE_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

use crate::identity::{CertManager, Identity};
use crate::policy::PolicyId;

/// Which way a connection goes through this proxy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From a local workload out.
    Outbound,
    /// To a local workload.
    Inbound,
}

/// A peer identity label; `unknown` for plaintext peers.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Principal(pub Option<Identity>);

impl EncodeLabelValue for Principal {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(id) => encoder.write_str(id.as_str()),
            None => encoder.write_str("unknown"),
        }
    }
}

/// A policy label; `none` when no policy decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PolicyLabel(pub Option<PolicyId>);

impl EncodeLabelValue for PolicyLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(id) => write!(encoder, "{}/{}", id.namespace, id.name),
            None => encoder.write_str("none"),
        }
    }
}

/// Labels of connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// Who connects.
    pub source_identity: Principal,
    /// Who is connected to.
    pub destination_identity: Principal,
}

/// The outcome of an authorization decision.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

// Label values in lower case, as Prometheus conventions have them (the derive keeps variant case).
impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        })
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// Labels of policy decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Allowed or denied.
    pub decision: Outcome,
    /// The policy that decided.
    pub policy: PolicyLabel,
    /// Who connected.
    pub source_identity: Principal,
    /// The workload connected to.
    pub destination_identity: Principal,
}

/// Labels of TLS handshake failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Inbound (we are the server) or outbound.
    pub direction: Direction,
    /// Our side's identity.
    pub local_identity: Principal,
}

/// Labels naming one workload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// `namespace/name`.
    pub workload: String,
}

/// A budgeted resource of a proxy (each entry holds descriptors for as long as it lasts).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Resource {
    /// Accepted HBONE (TLS) connections.
    HboneConnections,
    /// HBONE connections still in their TLS/HTTP/2 handshake.
    TlsHandshakes,
    /// HBONE `CONNECT` tunnels, each with a connection to the application.
    InboundTunnels,
    /// Captured outbound connections.
    OutboundConnections,
    /// Captured plaintext inbound connections.
    PlaintextConnections,
    /// Carried outbound UDP flows (`--carry-udp`).
    UdpFlows,
}

impl Resource {
    /// Every resource, in a fixed order (the index of each is its position).
    pub const ALL: [Self; 6] = [
        Self::HboneConnections,
        Self::TlsHandshakes,
        Self::InboundTunnels,
        Self::OutboundConnections,
        Self::PlaintextConnections,
        Self::UdpFlows,
    ];

    /// The resource's position in [`Resource::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HboneConnections => "hbone_connections",
            Self::TlsHandshakes => "tls_handshakes",
            Self::InboundTunnels => "inbound_tunnels",
            Self::OutboundConnections => "outbound_connections",
            Self::PlaintextConnections => "plaintext_connections",
            Self::UdpFlows => "udp_flows",
        }
    }

    /// Which way the connections it counts go.
    pub fn direction(self) -> Direction {
        match self {
            Self::OutboundConnections | Self::UdpFlows => Direction::Outbound,
            _ => Direction::Inbound,
        }
    }
}

impl EncodeLabelValue for Resource {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Why a connection was refused before it was handled.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    /// The node-wide limit of the resource is reached.
    NodeLimit,
    /// The pod's own limit of the resource is reached.
    PodLimit,
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::NodeLimit => "node_limit",
            Self::PodLimit => "pod_limit",
        })
    }
}

/// Labels of connections refused over budget. `workload` is one of the node's pods (bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The exhausted resource.
    pub resource: Resource,
    /// Node-wide or per-pod limit.
    pub reason: RefusalReason,
    /// `namespace/name` of the pod the connection was for or from.
    pub workload: String,
}

/// Labels of a resource's node-wide use.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The resource.
    pub resource: Resource,
}

/// Labels of failed `accept` calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptErrorLabels {
    /// The listener's resource (which port of the pod).
    pub resource: Resource,
    /// The error, e.g. `EMFILE` (bounded: an errno name or `other`).
    pub error: &'static str,
}

/// Labels of certificate expiry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// The certificate's identity.
    pub identity: Principal,
}

/// Histograms of requests, one per label set.
pub type RequestHistograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Every metric of a proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// When counting started (the start of every cumulative value).
    pub started: SystemTime,
    /// Held while the certificate gauges are refreshed and read: a scrape and an OTLP export at
    /// once must not see them cleared.
    reading: std::sync::Mutex<()>,
    /// Connections proxied (`istio_tcp_connections_opened_total`).
    pub tcp_opened: Family<TrafficLabels, Counter>,
    /// Connections proxied and finished.
    pub tcp_closed: Family<TrafficLabels, Counter>,
    /// Bytes from the source to the destination (Istio's `received`: the request side).
    pub tcp_received_bytes: Family<TrafficLabels, Counter>,
    /// Bytes from the destination back to the source (Istio's `sent`: the response side).
    pub tcp_sent_bytes: Family<TrafficLabels, Counter>,
    /// HTTP requests answered (`istio_requests_total`).
    pub requests: Family<RequestLabels, Counter>,
    /// Time from a request's arrival to the end of its response, in milliseconds.
    pub request_duration: RequestHistograms,
    /// Request body sizes in bytes.
    pub request_bytes: RequestHistograms,
    /// Response body sizes in bytes.
    pub response_bytes: RequestHistograms,
    /// How authenticated peers are named in the labels.
    pub peers: PeerNames,
    /// Authorization decisions.
    pub policy_decisions: Family<DecisionLabels, Counter>,
    /// Live connections closed because a re-check against a new mesh state denied them.
    pub connections_closed_by_recheck: Family<DecisionLabels, Counter>,
    /// Plaintext connections refused: under STRICT, to a workload behind a waypoint, or to an
    /// address or port the mesh does not admit plaintext on.
    pub plaintext_rejected: Family<WorkloadLabels, Counter>,
    /// TLS handshakes that failed.
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    /// HBONE (TLS) connections opened by the pool.
    pub hbone_connections_opened: Family<ConnectionLabels, Counter>,
    /// Pods whose capture failed.
    pub capture_failures: Family<WorkloadLabels, Counter>,
    /// Connections refused over a budget.
    pub connections_refused: Family<RefusalLabels, Counter>,
    /// Node-wide use of each budgeted resource.
    pub resource_in_use: Family<ResourceLabels, Gauge>,
    /// `accept` calls that failed (each is followed by a back-off).
    pub accept_errors: Family<AcceptErrorLabels, Counter>,
    /// Captured connections refused because their destination would lead back into the proxy
    /// (its own ports, loopback) or out of the mesh's reach (IPv6 link-local).
    pub forbidden_destinations: Family<WorkloadLabels, Counter>,
    /// Carried UDP flows ended early to make room for a new flow of their pod (the pod's UDP-flow
    /// budget, or the node's, was full and they were its least recently active).
    pub udp_flows_evicted: Family<WorkloadLabels, Counter>,
    /// Configuration updates refused (a whole local file), or objects left out of the mesh.
    pub config_rejected: Counter,
    /// 1 while the stream from the control plane is up (when the mesh comes from one), else 0.
    pub control_plane_connected: Gauge,
    /// Pods whose rules may let out any socket carrying ztunnel's mark on a kernel where a pod can
    /// set it (Linux 5.17 and later, with `CAP_NET_RAW`): a way around capture.
    pub capture_mark_only_pods: Gauge,
    /// Unix time at which each workload certificate expires.
    pub certificate_expiry: Family<CertLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers Istio's standard metrics under `istio_`, the rest under `veil_`.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_received_bytes: Family::default(),
            tcp_sent_bytes: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS_MS.iter().copied())
            }),
            request_bytes: Family::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS.iter().copied())
            }),
            response_bytes: Family::new_with_constructor(|| {
                Histogram::new(SIZE_BUCKETS.iter().copied())
            }),
            peers: PeerNames::default(),
            policy_decisions: Family::default(),
            connections_closed_by_recheck: Family::default(),
            plaintext_rejected: Family::default(),
            handshake_failures: Family::default(),
            hbone_connections_opened: Family::default(),
            capture_failures: Family::default(),
            connections_refused: Family::default(),
            resource_in_use: Family::default(),
            accept_errors: Family::default(),
            forbidden_destinations: Family::default(),
            udp_flows_evicted: Family::default(),
            config_rejected: Counter::default(),
            control_plane_connected: Gauge::default(),
            capture_mark_only_pods: Gauge::default(),
            certificate_expiry: Family::default(),
            registry: Registry::default(),
            started: SystemTime::now(),
            reading: std::sync::Mutex::default(),
        };
        let r = registry.sub_registry_with_prefix("istio");
        r.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        r.register(
            "tcp_received_bytes",
            "Bytes from the source to the destination (the request side)",
            m.tcp_received_bytes.clone(),
        );
        r.register(
            "tcp_sent_bytes",
            "Bytes from the destination to the source (the response side)",
            m.tcp_sent_bytes.clone(),
        );
        r.register("requests", "HTTP requests answered", m.requests.clone());
        r.register(
            "request_duration_milliseconds",
            "Time from a request's arrival to the end of its response, in milliseconds",
            m.request_duration.clone(),
        );
        r.register(
            "request_bytes",
            "Request body sizes in bytes",
            m.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "Response body sizes in bytes",
            m.response_bytes.clone(),
        );
        let r = registry.sub_registry_with_prefix("veil");
        r.register(
            "policy_decisions",
            "Authorization decisions",
            m.policy_decisions.clone(),
        );
        r.register(
            "connections_closed_by_recheck",
            "Live connections closed because the policy re-checked on a mesh change denied them",
            m.connections_closed_by_recheck.clone(),
        );
        r.register(
            "plaintext_rejected",
            "Plaintext connections refused (STRICT, or the workload is behind a waypoint)",
            m.plaintext_rejected.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed",
            m.handshake_failures.clone(),
        );
        r.register(
            "hbone_connections_opened",
            "HBONE (mTLS) connections opened",
            m.hbone_connections_opened.clone(),
        );
        r.register(
            "capture_failures",
            "Pods whose traffic could not be captured",
            m.capture_failures.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused because a node-wide or per-pod limit was reached",
            m.connections_refused.clone(),
        );
        r.register(
            "resource_in_use",
            "Node-wide use of each budgeted resource",
            m.resource_in_use.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accept calls (followed by a back-off)",
            m.accept_errors.clone(),
        );
        r.register(
            "forbidden_destinations",
            "Captured connections refused: their destination was the proxy itself, loopback or link-local",
            m.forbidden_destinations.clone(),
        );
        r.register(
            "udp_flows_evicted",
            "Carried UDP flows ended early to make room for a new flow of their pod (the least recently active, idle for at least a second)",
            m.udp_flows_evicted.clone(),
        );
        r.register(
            "config_rejected",
            "Configuration updates refused, or objects left out of the mesh",
            m.config_rejected.clone(),
        );
        r.register(
            "control_plane_connected",
            "1 while the stream from the control plane is up (the mesh received from one); while 0 the last mesh is in force and unknown destinations are refused",
            m.control_plane_connected.clone(),
        );
        r.register(
            "capture_mark_only_pods",
            "Pods whose capture rules may let out every socket carrying ztunnel's mark, which on Linux 5.17 and later a pod keeping CAP_NET_RAW can set to send around capture (ztunnel's cgroup could not be used, a predecessor is still draining, or a pod handed over is not taken over yet); 0 when every pod's rules also require ztunnel's cgroup or only CAP_NET_ADMIN can set a mark",
            m.capture_mark_only_pods.clone(),
        );
        r.register(
            "certificate_expiry_seconds",
            "Unix time at which the workload certificate expires",
            m.certificate_expiry.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition, with certificate expiries read from `certs` first.
    pub fn encode(&self, certs: Option<&CertManager>) -> String {
        let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(certs);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same values as [`Self::encode`], as data (for the OTLP export).
    pub(crate) fn snapshot(
        &self,
        certs: Option<&CertManager>,
    ) -> Vec<prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily>
    {
        let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(certs);
        // Only label encoding can fail, and veil's label values write to a String.
        prometheus_client::encoding::prometheus_protobuf::encode(&self.registry).unwrap_or_else(
            |e| {
                tracing::warn!(error = %e, "reading the metrics failed");
                Vec::new()
            },
        )
    }

    /// Sets the certificate expiry gauges to what `certs` holds now.
    fn refresh(&self, certs: Option<&CertManager>) {
        let Some(certs) = certs else { return };
        self.certificate_expiry.clear();
        for (identity, expiry) in certs.expiries() {
            let Some(expiry) = expiry else { continue };
            let secs = expiry
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.certificate_expiry
                .get_or_create(&CertLabels {
                    identity: Principal(Some(identity)),
                })
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_lower_case_identities_and_policy_ids() {
        let m = Metrics::new();
        let id = Identity::new("cluster.local", "prod", "web").unwrap();
        m.policy_decisions
            .get_or_create(&DecisionLabels {
                decision: Outcome::Deny,
                policy: PolicyLabel(Some(PolicyId::new("user-data", "only-account"))),
                source_identity: Principal(Some(id)),
                destination_identity: Principal(None),
            })
            .inc();
        m.hbone_connections_opened
            .get_or_create(&ConnectionLabels {
                direction: Direction::Inbound,
                source_identity: Principal(None),
                destination_identity: Principal(None),
            })
            .inc();
        let text = m.encode(None);
        assert!(text.contains(
            "veil_policy_decisions_total{decision=\"deny\",policy=\"user-data/only-account\",source_identity=\"spiffe://cluster.local/ns/prod/sa/web\",destination_identity=\"unknown\"} 1"
        ), "{text}");
        assert!(
            text.contains("veil_hbone_connections_opened_total{direction=\"inbound\""),
            "{text}"
        );
    }
}
