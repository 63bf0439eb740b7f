//! Prometheus metrics of the data path, labelled by source and destination identity.
//!
//! Label values hold `Identity` / `PolicyId` handles (reference-counted), so counting a connection
//! allocates no strings; they are written out only when scraped.

use std::fmt::Write as _;
use std::time::SystemTime;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
}

impl Resource {
    /// Every resource, in a fixed order (the index of each is its position).
    pub const ALL: [Self; 5] = [
        Self::HboneConnections,
        Self::TlsHandshakes,
        Self::InboundTunnels,
        Self::OutboundConnections,
        Self::PlaintextConnections,
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
        }
    }

    /// Which way the connections it counts go.
    pub fn direction(self) -> Direction {
        match self {
            Self::OutboundConnections => Direction::Outbound,
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

/// Every metric of a proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted or opened.
    pub connections_opened: Family<ConnectionLabels, Counter>,
    /// Connections finished.
    pub connections_closed: Family<ConnectionLabels, Counter>,
    /// Bytes from source to destination.
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    /// Bytes from destination back to source.
    pub received_bytes: Family<ConnectionLabels, Counter>,
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
    /// Configuration updates refused (a whole local file), or objects left out of the mesh.
    pub config_rejected: Counter,
    /// 1 while the stream from the control plane is up (when the mesh comes from one), else 0.
    pub control_plane_connected: Gauge,
    /// Unix time at which each workload certificate expires.
    pub certificate_expiry: Family<CertLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `veil_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("veil");
        let m = Self {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
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
            config_rejected: Counter::default(),
            control_plane_connected: Gauge::default(),
            certificate_expiry: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.connections_opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.connections_closed.clone(),
        );
        r.register(
            "tcp_sent_bytes",
            "Bytes sent from source to destination",
            m.sent_bytes.clone(),
        );
        r.register(
            "tcp_received_bytes",
            "Bytes sent from destination to source",
            m.received_bytes.clone(),
        );
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
            "certificate_expiry_seconds",
            "Unix time at which the workload certificate expires",
            m.certificate_expiry.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition, with certificate expiries read from `certs` first.
    pub fn encode(&self, certs: Option<&CertManager>) -> String {
        if let Some(certs) = certs {
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
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
        m.connections_opened
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
            text.contains("veil_tcp_connections_opened_total{direction=\"inbound\""),
            "{text}"
        );
    }
}
