//! The labels of Istio's standard traffic metrics (`istio_tcp_*`, `istio_requests_total`, …), with
//! the names and values that Istio's dashboards and Kiali query.
//!
//! Every value names something the mesh lists (a workload's controller, namespace, application and
//! version, an identity, a service) or is one of a few fixed words: never a pod's own name, an
//! address, a path or anything a client sent, so the number of series follows the number of
//! workloads and services, not of pods or requests.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use opentelemetry::KeyValue;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use crate::discovery::{MeshState, Service, Waypoint, Workload};
use crate::identity::Identity;

/// The cluster every workload is reported in (Istio's default name of a single cluster).
const CLUSTER: &str = "Kubernetes";

/// How many distinct names learnt from `baggage` a proxy keeps apart; past that, new ones are not
/// believed and such peers are named by their identity alone.
pub const BAGGAGE_NAMES: usize = 2048;

/// How many of them one client identity may use (a service account runs a few workloads and
/// versions, not hundreds): one client cannot take the proxy's whole allowance, nor multiply its
/// series by more than this.
pub const BAGGAGE_NAMES_PER_IDENTITY: usize = 16;

/// Whether `s` can be a name in a label: what Kubernetes names and label values are made of, at
/// most as long as the longest Kubernetes name.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Which proxy reports a metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The ztunnel of the client.
    Source,
    /// The ztunnel of the server.
    Destination,
    /// A waypoint between them.
    Waypoint,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Source => "source",
            Self::Destination => "destination",
            Self::Waypoint => "waypoint",
        })
    }
}

/// Whether the hop the reporter saw was mutual TLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Security {
    /// HBONE: both ends authenticated.
    MutualTls,
    /// Plaintext (PERMISSIVE, passthrough).
    Unknown,
}

impl EncodeLabelValue for Security {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::MutualTls => "mutual_tls",
            Self::Unknown => "unknown",
        })
    }
}

/// The protocol the reporter saw.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes (ztunnel, or a waypoint's opaque TCP).
    Tcp,
    /// Datagrams of a carried UDP flow (ztunnel).
    Udp,
    /// HTTP requests.
    Http,
    /// gRPC requests.
    Grpc,
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Http => "http",
            Self::Grpc => "grpc",
        })
    }
}

/// A label value, `unknown` when absent. Shared: a label set is cloned for every series it creates.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
struct Known(Option<Arc<str>>);

impl EncodeLabelValue for Known {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_deref().unwrap_or("unknown"))
    }
}

impl EncodeLabelValue for &Known {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        (*self).encode(encoder)
    }
}

impl From<&str> for Known {
    fn from(s: &str) -> Self {
        Self(Some(s.into()))
    }
}

/// One end of a connection or request, as the labels name it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Party {
    workload: Known,
    namespace: Known,
    principal: Known,
    app: Known,
    version: Known,
    cluster: Known,
}

impl Party {
    /// A workload the mesh lists. Its principal is its identity: for a source, only call this for a
    /// workload the peer authenticated as (see [`Party::authenticated`]).
    pub fn of(w: &Workload) -> Self {
        Self {
            workload: w.naming.workload.as_str().into(),
            namespace: (*w.namespace).into(),
            principal: w.identity.as_str().into(),
            app: w.naming.app.as_str().into(),
            version: w.naming.version.as_str().into(),
            cluster: CLUSTER.into(),
        }
    }

    /// A peer that presented `identity`: the workload `listed` (looked up by the peer's address)
    /// when it has that identity, else only what the identity says (its namespace).
    pub fn authenticated(identity: &Identity, listed: Option<&Workload>) -> Self {
        match listed {
            Some(w) if w.identity == *identity => Self::of(w),
            _ => Self {
                namespace: identity.namespace().into(),
                principal: identity.as_str().into(),
                ..Self::default()
            },
        }
    }

    /// Span attributes naming this party: `veil.<side>.workload`, `.namespace`, `.principal` (those
    /// known).
    pub fn span_attributes(&self, side: &'static str) -> impl Iterator<Item = KeyValue> + '_ {
        [
            ("workload", &self.workload),
            ("namespace", &self.namespace),
            ("principal", &self.principal),
        ]
        .into_iter()
        .filter_map(move |(field, value)| {
            let value = value.0.as_deref()?;
            Some(KeyValue::new(
                format!("veil.{side}.{field}"),
                value.to_owned(),
            ))
        })
    }

    /// A waypoint (the destination of a tunnel to it).
    pub fn waypoint(w: &Waypoint) -> Self {
        Self {
            workload: w.name.as_str().into(),
            namespace: w.identity.namespace().into(),
            principal: w.identity.as_str().into(),
            app: w.name.as_str().into(),
            version: "latest".into(),
            cluster: CLUSTER.into(),
        }
    }

    /// The `baggage` a client's ztunnel sends with its tunnels: its workload's names, with the keys
    /// Istio's ztunnel writes and reads. `None` if a name cannot be a header value.
    pub fn baggage(w: &Workload) -> Option<HeaderValue> {
        let n = &w.naming;
        HeaderValue::from_str(&format!(
            "k8s.cluster.name={CLUSTER},k8s.namespace.name={},k8s.deployment.name={},service.name={},service.version={}",
            w.namespace, n.workload, n.app, n.version
        ))
        .ok()
    }

    /// What a peer that authenticated as `identity` says of itself in `baggage`: believed only for
    /// its own namespace (the identity's) and names made of name characters.
    fn from_baggage(identity: &Identity, baggage: &HeaderValue) -> Option<Self> {
        let mut party = Self {
            namespace: identity.namespace().into(),
            principal: identity.as_str().into(),
            cluster: CLUSTER.into(),
            ..Self::default()
        };
        let mut namespace_said = false;
        for member in baggage.to_str().ok()?.split(',') {
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            // W3C baggage allows properties after `;`: none of these keys has any.
            let value = value.split(';').next().unwrap_or_default().trim();
            let slot = match key.trim() {
                "k8s.namespace.name" => {
                    if value != identity.namespace() {
                        return None;
                    }
                    namespace_said = true;
                    continue;
                }
                "k8s.deployment.name" | "k8s.cronjob.name" | "k8s.job.name" | "k8s.pod.name" => {
                    &mut party.workload
                }
                "service.name" => &mut party.app,
                "service.version" => &mut party.version,
                _ => continue,
            };
            if !valid_name(value) {
                return None;
            }
            *slot = value.into();
        }
        (namespace_said && party.workload.0.is_some()).then_some(party)
    }

    /// Nothing known (a plaintext peer, an address outside the mesh).
    pub fn unknown() -> Self {
        Self::default()
    }
}

/// Names authenticated peers, keeping apart at most [`BAGGAGE_NAMES`] names known only from what
/// peers said of themselves, [`BAGGAGE_NAMES_PER_IDENTITY`] per client identity.
#[derive(Debug, Default)]
pub struct PeerNames {
    said: Mutex<Said>,
}

#[derive(Debug, Default)]
struct Said {
    names: HashSet<Party>,
    per_identity: HashMap<Known, usize>,
}

impl PeerNames {
    /// A peer that presented `identity`: the workload `listed` at its address when it has that
    /// identity; else what its `baggage` says, within bounds; else what the identity says.
    pub fn name(
        &self,
        identity: &Identity,
        listed: Option<&Workload>,
        baggage: Option<&HeaderValue>,
    ) -> Party {
        if let Some(w) = listed.filter(|w| w.identity == *identity) {
            return Party::of(w);
        }
        if let Some(party) = baggage.and_then(|b| Party::from_baggage(identity, b)) {
            // A poisoned lock only means another thread panicked mid-insert: the sets are sound.
            let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
            if said.names.contains(&party) {
                return party;
            }
            let used = said
                .per_identity
                .get(&party.principal)
                .copied()
                .unwrap_or(0);
            if said.names.len() < BAGGAGE_NAMES && used < BAGGAGE_NAMES_PER_IDENTITY {
                said.per_identity.insert(party.principal.clone(), used + 1);
                said.names.insert(party.clone());
                return party;
            }
        }
        Party::authenticated(identity, None)
    }
}

/// The service a connection or request was for.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct ServiceLabel {
    host: Known,
    name: Known,
    namespace: Known,
}

impl ServiceLabel {
    /// `service`, by its cluster hostname.
    pub fn of(service: &Service) -> Self {
        Self {
            host: Known(Some(
                format!("{}.{}.svc.cluster.local", service.name, service.namespace).into(),
            )),
            name: service.name.as_str().into(),
            namespace: service.namespace.as_str().into(),
        }
    }

    /// The service's cluster hostname as a span attribute (`veil.destination.service`), if known.
    pub fn span_attribute(&self) -> Option<KeyValue> {
        let host = self.host.0.as_deref()?;
        Some(KeyValue::new("veil.destination.service", host.to_owned()))
    }

    /// No service (a workload addressed directly, or one that backs several on that port).
    pub fn none() -> Self {
        Self::default()
    }

    /// The service a connection to `dst` was for: the service with that address; else, for a
    /// connection straight to `endpoint`, the one service it backs on that port (none when it backs
    /// several: the labels do not guess).
    pub fn for_destination(
        state: &MeshState,
        dst: std::net::SocketAddr,
        endpoint: Option<&Workload>,
    ) -> Self {
        Self::for_destination_on(state, dst, endpoint, |s| &s.ports)
    }

    /// [`ServiceLabel::for_destination`] for a carried UDP flow: by the services' UDP ports.
    pub fn for_udp_destination(
        state: &MeshState,
        dst: std::net::SocketAddr,
        endpoint: Option<&Workload>,
    ) -> Self {
        Self::for_destination_on(state, dst, endpoint, |s| &s.udp_ports)
    }

    fn for_destination_on(
        state: &MeshState,
        dst: std::net::SocketAddr,
        endpoint: Option<&Workload>,
        ports: fn(&Service) -> &[crate::discovery::ServicePort],
    ) -> Self {
        if let Some(service) = state.service_by_vip(dst.ip()) {
            return Self::of(service);
        }
        let Some(endpoint) = endpoint else {
            return Self::none();
        };
        let services = state.services_of(endpoint);
        let mut on_port = services
            .iter()
            .filter(|s| ports(s).iter().any(|p| p.target_port == dst.port()));
        match (on_port.next(), on_port.next()) {
            (Some(only), None) => Self::of(only),
            _ => Self::none(),
        }
    }
}

/// The labels of one connection or request: Istio's standard set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TrafficLabels {
    /// Who reports.
    pub reporter: Reporter,
    /// The client.
    pub source: Party,
    /// The server (the workload the reporter sent to or received for).
    pub destination: Party,
    /// The service it was addressed to.
    pub service: ServiceLabel,
    /// What the reporter saw.
    pub protocol: Protocol,
    /// Mutual TLS or not.
    pub security: Security,
}

impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("reporter", self.reporter).encode(encoder.encode_label())?;
        party(encoder, "source", &self.source)?;
        let s = &self.service;
        ("destination_service", &s.host).encode(encoder.encode_label())?;
        ("destination_service_name", &s.name).encode(encoder.encode_label())?;
        ("destination_service_namespace", &s.namespace).encode(encoder.encode_label())?;
        party(encoder, "destination", &self.destination)?;
        ("request_protocol", self.protocol).encode(encoder.encode_label())?;
        ("response_flags", "-").encode(encoder.encode_label())?;
        ("connection_security_policy", self.security).encode(encoder.encode_label())
    }
}

fn party(encoder: &mut LabelSetEncoder<'_>, side: &str, p: &Party) -> Result<(), std::fmt::Error> {
    let mut key = String::with_capacity(40);
    let mut label = |name: &str, value: &Known| {
        key.clear();
        // Writing to a String cannot fail.
        let _ = write!(key, "{side}_{name}");
        (key.as_str(), value).encode(encoder.encode_label())
    };
    label("workload", &p.workload)?;
    label("workload_namespace", &p.namespace)?;
    label("principal", &p.principal)?;
    label("app", &p.app)?;
    label("version", &p.version)?;
    label("canonical_service", &p.app)?;
    label("canonical_revision", &p.version)?;
    label("cluster", &p.cluster)
}

/// The labels of one HTTP request: the traffic labels and the response's status.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    /// Who, to whom, how.
    pub traffic: TrafficLabels,
    /// The HTTP status sent to the client (also for answers the proxy gave itself: 403 on a deny;
    /// gRPC answers are 200 with their code in `grpc_response_status`).
    pub response_code: u16,
    /// The gRPC status of a gRPC answer (empty for other requests, or when none arrived).
    pub grpc_response_status: Option<u16>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.traffic.encode(encoder)?;
        ("response_code", self.response_code).encode(encoder.encode_label())?;
        let grpc = self
            .grpc_response_status
            .map(|c| c.to_string())
            .unwrap_or_default();
        ("grpc_response_status", grpc.as_str()).encode(encoder.encode_label())
    }
}

#[cfg(test)]
mod tests;
