//! What a proxy's admin endpoint (`/config_dump`) tells about the mesh as that proxy holds it, in one
//! schema for ztunnel and the waypoint and for `veil config`, which reads it.
//!
//! The dump is for people and scripts: names, addresses, identities, decisions and expiry dates.
//! Never keys, tokens or request contents. Fields are only ever added within a schema version.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::discovery::{MeshState, Serving, Summary, Workload};
use crate::identity::rfc3339;
use crate::identity::{CertManager, Identity};
use crate::pool::Pool;
use veil_crd::authorization::Action;

use crate::policy::{AuthzPolicy, PolicyId, Scope, Target};

/// The schema version of [`ConfigDump`].
pub const DUMP_SCHEMA: &str = "veil.dev/config-dump/v1";

/// One proxy's view of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDump {
    /// [`DUMP_SCHEMA`].
    pub schema: String,
    /// Which proxy.
    pub proxy: ProxyInfo,
    /// How much it holds.
    pub summary: Counts,
    /// Every workload it knows.
    pub workloads: Vec<WorkloadInfo>,
    /// Every service it knows.
    pub services: Vec<ServiceInfo>,
    /// Every AuthorizationPolicy and PeerAuthentication it holds.
    pub policies: Vec<PolicyInfo>,
    /// The certificates it holds (or waits for), by identity.
    pub certificates: Vec<CertificateInfo>,
    /// Its connections.
    pub connections: Connections,
    /// ztunnel: the capture state of each pod of its node, by uid.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub captured: BTreeMap<String, serde_json::Value>,
    /// Objects its mesh source refused (the rest of the mesh is served without them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
}

/// Which proxy answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    /// `ztunnel` or `waypoint`.
    pub kind: String,
    /// The node (ztunnel) or `namespace/name` (waypoint).
    pub name: String,
    /// veil's version.
    pub version: String,
}

/// Counts of what a proxy holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Workloads.
    pub workloads: usize,
    /// Services.
    pub services: usize,
    /// Waypoints.
    pub waypoints: usize,
    /// AuthorizationPolicies.
    pub authorization_policies: usize,
    /// PeerAuthentications.
    pub peer_authentications: usize,
}

impl From<Summary> for Counts {
    fn from(s: Summary) -> Self {
        Self {
            workloads: s.workloads,
            services: s.services,
            waypoints: s.waypoints,
            authorization_policies: s.authorization_policies,
            peer_authentications: s.peer_authentications,
        }
    }
}

/// A workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// What telemetry calls it (its controller's name).
    pub workload_name: String,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Node.
    pub node: String,
    /// SPIFFE identity.
    pub identity: String,
    /// `HBONE` when in the mesh, `TCP` when traffic to it is plaintext past the mesh.
    pub protocol: String,
    /// `ready`, `terminating` or `not_ready`.
    pub serving: String,
    /// Its waypoint (`namespace/name`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
    /// Further waypoints claiming it: while there are any, nothing may reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waypoint_conflict: Vec<String>,
}

impl WorkloadInfo {
    /// As a dump shows it.
    pub fn of(w: &Workload) -> Self {
        Self {
            namespace: w.namespace.to_string(),
            name: w.name.to_string(),
            workload_name: w.naming.workload.clone(),
            ips: w.ips.clone(),
            node: w.node.to_string(),
            identity: w.identity.to_string(),
            protocol: if w.enrolled { "HBONE" } else { "TCP" }.to_owned(),
            serving: match w.serving {
                Serving::Ready => "ready",
                Serving::Terminating => "terminating",
                Serving::NotReady => "not_ready",
            }
            .to_owned(),
            waypoint: w.waypoint.as_ref().map(ToString::to_string),
            waypoint_conflict: w
                .waypoint_conflict()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// A service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Cluster addresses.
    pub vips: Vec<IpAddr>,
    /// `port` → `target port` (TCP).
    pub ports: BTreeMap<u16, u16>,
    /// `port` → `target port` (UDP, for carried UDP).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub udp_ports: BTreeMap<u16, u16>,
    /// Its endpoints' `namespace/name`.
    pub endpoints: Vec<String>,
    /// Its waypoint (`namespace/name`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
}

/// A policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ALLOW, DENY, AUDIT (AuthorizationPolicy); the mTLS mode (PeerAuthentication).
    pub action: String,
    /// What it applies to, in words.
    pub applies_to: String,
    /// Whether it has HTTP conditions (only a waypoint can check those).
    #[serde(default)]
    pub uses_l7: bool,
    /// Whether this proxy enforces it and how, when not as written: e.g. an HTTP policy on a
    /// workload without a waypoint, which ztunnel enforces by denying what it could match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PolicyInfo {
    /// An AuthorizationPolicy as a dump shows it; `at_l4` when it applies to a workload without a
    /// waypoint although it has HTTP conditions.
    pub fn of(p: &AuthzPolicy, at_l4: bool) -> Self {
        let applies_to = match &p.scope {
            Scope::Namespace => format!("every workload of namespace {}", p.id.namespace),
            Scope::Selector(labels) => format!("workloads labelled {}", labels_text(labels)),
            Scope::Targets(targets) => targets
                .iter()
                .map(|t| match t {
                    Target::Service(s) => format!("service {s}"),
                    Target::Gateway(g) => format!("waypoint {g}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Scope::Mesh => "every workload of the mesh".to_owned(),
            Scope::Named => "the workloads that name it".to_owned(),
        };
        Self {
            kind: "AuthorizationPolicy".to_owned(),
            namespace: p.id.namespace.to_string(),
            name: p.id.name.to_string(),
            action: match p.action {
                Action::Allow => "ALLOW",
                Action::Deny => "DENY",
                Action::Audit => "AUDIT",
                Action::Custom => "CUSTOM",
            }
            .to_owned(),
            applies_to,
            uses_l7: p.uses_l7,
            note: at_l4.then(|| {
                "HTTP conditions on a workload without a waypoint: ztunnel denies what they could \
                 match (fails closed)"
                    .to_owned()
            }),
        }
    }
}

/// `n workloads: a, b, c, …` (at most [`NAMED_SHOWN`] named).
fn workloads_text(keys: &[String]) -> String {
    match keys.len() {
        0 => "no workload".to_owned(),
        n if n <= NAMED_SHOWN => format!("{n} workload(s): {}", keys.join(", ")),
        n => format!("{n} workloads: {}, …", keys[..NAMED_SHOWN].join(", ")),
    }
}

/// How many workloads a policy's `applies_to` names.
const NAMED_SHOWN: usize = 5;

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// The SPIFFE identity it proves.
    pub identity: String,
    /// When it expires (RFC 3339); none while it is being requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

impl CertificateInfo {
    /// From an identity and its certificate's expiry, if one is held.
    pub fn of(identity: &Identity, not_after: Option<SystemTime>) -> Self {
        Self {
            identity: identity.to_string(),
            not_after: not_after.map(rfc3339),
        }
    }
}

/// A proxy's connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// Connections accepted for a local workload (ztunnel), with what they were admitted as.
    pub inbound: Vec<InboundConnection>,
    /// Pooled HBONE connections to other proxies.
    pub outbound: Vec<PooledConnection>,
}

/// A connection accepted for a local workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundConnection {
    /// The client's verified identity; none for plaintext (PERMISSIVE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The address and port the client reached.
    pub destination: SocketAddr,
    /// The workload (`namespace/name`) it reached, if still known.
    pub workload: String,
    /// Set when a policy change now denies it: it is closed at the end of its grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing: Option<String>,
}

/// HBONE connections from one local identity to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PooledConnection {
    /// The identity presented.
    pub source_identity: String,
    /// The identity the peer proved.
    pub destination_identity: String,
    /// The peer's HBONE address.
    pub destination: SocketAddr,
    /// Open connections.
    pub connections: usize,
}

impl ConfigDump {
    /// Adds what every proxy holds besides its mesh: its certificates and pooled connections.
    pub fn with_certificates_and_pool(mut self, certs: &CertManager, pool: &Pool) -> Self {
        self.certificates = certs
            .expiries()
            .iter()
            .map(|(id, exp)| CertificateInfo::of(id, *exp))
            .collect();
        self.connections.outbound = pool
            .connections_by_peer()
            .into_iter()
            .map(|(key, connections)| PooledConnection {
                source_identity: key.src.to_string(),
                destination_identity: key.dst.to_string(),
                destination: key.dst_addr,
                connections,
            })
            .collect();
        self
    }

    /// The parts every proxy shares, from its mesh state: workloads, services, policies, counts.
    pub fn from_state(proxy: ProxyInfo, state: &MeshState) -> Self {
        let at_l4 = state.l7_policies_enforced_at_l4();
        // Who a policy received in Istio's form applies to was decided by the control plane:
        // the workloads that name it.
        let workloads = state.workloads();
        let mut named: BTreeMap<PolicyId, Vec<String>> = BTreeMap::new();
        for w in &workloads {
            for p in state.authz_for(w).iter() {
                if matches!(p.scope, Scope::Named) {
                    named.entry(p.id.clone()).or_default().push(w.key());
                }
            }
        }
        let mut policies: Vec<PolicyInfo> = state
            .authz_policies()
            .iter()
            .map(|p| {
                let mut info = PolicyInfo::of(p, at_l4.contains(&p.id));
                if matches!(p.scope, Scope::Named) {
                    info.applies_to = workloads_text(named.get(&p.id).map_or(&[][..], |v| v));
                }
                info
            })
            .collect();
        policies.extend(state.peer_auth_policies().iter().map(|p| PolicyInfo {
            kind: "PeerAuthentication".to_owned(),
            namespace: p.id.namespace.to_string(),
            name: p.id.name.to_string(),
            action: p.describe_mode(),
            applies_to: match p.selector() {
                Some(labels) => format!("workloads labelled {}", labels_text(labels)),
                None => format!("every workload of namespace {}", p.id.namespace),
            },
            uses_l7: false,
            note: None,
        }));
        policies.sort_by(|a, b| {
            (&a.namespace, &a.name, &a.kind).cmp(&(&b.namespace, &b.name, &b.kind))
        });
        Self {
            schema: DUMP_SCHEMA.to_owned(),
            proxy,
            summary: state.summary().into(),
            workloads: workloads.iter().map(|w| WorkloadInfo::of(w)).collect(),
            services: state
                .services()
                .map(|s| ServiceInfo {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    vips: s.vips.clone(),
                    ports: s.ports.iter().map(|p| (p.port, p.target_port)).collect(),
                    udp_ports: s
                        .udp_ports
                        .iter()
                        .map(|p| (p.port, p.target_port))
                        .collect(),
                    endpoints: s
                        .endpoints
                        .iter()
                        .map(|uid| {
                            state
                                .workload(uid)
                                .map_or_else(|| uid.to_string(), |w| w.key())
                        })
                        .collect(),
                    waypoint: s.waypoint.as_ref().map(ToString::to_string),
                })
                .collect(),
            policies,
            rejected: state.rejected().iter().map(ToString::to_string).collect(),
            ..Self::default()
        }
    }
}
