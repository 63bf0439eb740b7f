//! Reading resources into entries: every field checked, a clear reason for what is refused.

use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;

use super::super::proto::discovery::Resource;
use super::super::proto::istio::workload as wl;
use super::super::proto::veil::AmbientNamespace;
use super::super::{Kind, ip_from_bytes};
use crate::discovery::{MeshSettings, Naming, ServicePort, Serving};
use crate::identity::Identity;
use crate::policy::TelemetrySettings;
use crate::xds::SERVING_WHILE_TERMINATING;

use super::shared::Shared;

/// A validated workload or service, as received.
#[derive(Debug)]
pub(super) enum AddressEntry {
    // Boxed: a store holds one per workload, and the map's spare slots are then small.
    Workload(Box<WorkloadEntry>),
    Service(Box<ServiceEntry>),
}

#[derive(Clone, Debug)]
pub(super) struct WorkloadEntry {
    // Shared strings and lists (see `shared`), a boxed gateway, no uid (the store's key): a store
    // holds one entry per workload of the cluster (issue 11's memory target), and most have no
    // waypoint. The mesh's workloads share these strings too.
    pub(super) name: Arc<str>,
    pub(super) namespace: Arc<str>,
    pub(super) service_account: Arc<str>,
    pub(super) naming: Arc<Naming>,
    pub(super) node: Arc<str>,
    pub(super) ips: Box<[IpAddr]>,
    pub(super) enrolled: bool,
    /// Whether it may be a service's endpoint.
    pub(super) serving: Serving,
    pub(super) identity: Identity,
    pub(super) waypoint: Option<Box<Gateway>>,
    pub(super) policies: Arc<[Arc<str>]>,
    /// The services it backs, with their ports.
    pub(super) services: Backs,
    /// The Telemetry the control plane resolved for it ([`crate::xds::TELEMETRY_EXTENSION`]).
    pub(super) telemetry: Option<Arc<TelemetrySettings>>,
}

/// A workload entry with its uid: the xDS name it is held under, not held twice.
#[derive(Clone, Copy, Debug)]
pub(super) struct Named<'a> {
    pub(super) uid: &'a Arc<str>,
    pub(super) w: &'a WorkloadEntry,
}

impl std::ops::Deref for Named<'_> {
    type Target = WorkloadEntry;
    fn deref(&self) -> &WorkloadEntry {
        self.w
    }
}

/// The services a workload backs (xDS names, sorted), with their ports. A sorted slice: most
/// workloads back one service, for which a map's node would be most of the workload's memory;
/// shared by the workloads that back the same (a Deployment's replicas).
#[derive(Clone, Debug)]
pub(super) struct Backs(Arc<super::shared::ServiceList>);

/// Service ports and their target ports (0: per endpoint).
pub(super) type Ports = Box<[(u16, u16)]>;

impl Backs {
    /// The services' xDS names, sorted.
    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(key, _)| &**key)
    }

    /// The ports of service `key`, if it backs it.
    pub(super) fn get(&self, key: &str) -> Option<&[(u16, u16)]> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[i].1)
    }
}

#[derive(Clone, Debug)]
pub(super) struct ServiceEntry {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) hostname: String,
    pub(super) vips: Vec<IpAddr>,
    pub(super) ports: Vec<(u16, u16)>,
    /// veil's extension ([`crate::xds::UDP_PORTS_EXTENSION`]): every target given.
    pub(super) udp_ports: Vec<ServicePort>,
    pub(super) waypoint: Option<Gateway>,
}

impl ServiceEntry {
    /// Whether `other` is this service but for its ports (of either protocol).
    pub(super) fn same_but_ports(&self, other: &Self) -> bool {
        let Self {
            name,
            namespace,
            hostname,
            vips,
            ports: _,
            udp_ports: _,
            waypoint,
        } = self;
        *name == other.name
            && *namespace == other.namespace
            && *hostname == other.hostname
            && *vips == other.vips
            && *waypoint == other.waypoint
    }
}

/// Where a waypoint is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Gateway {
    Address(IpAddr),
    Hostname { namespace: String, hostname: String },
}

/// The message of `resource`, which must be of `kind`.
pub(super) fn decode<M: Message + Default>(kind: Kind, resource: &Resource) -> Result<M, String> {
    let Some(any) = &resource.resource else {
        return Err("no resource body".into());
    };
    if any.type_url != kind.type_url() {
        return Err(format!(
            "type {:?} in a response of type {:?}",
            any.type_url,
            kind.type_url()
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("not a valid {}: {e}", kind.type_url()))
}

pub(super) fn address_entry(
    name: &str,
    a: &wl::Address,
    settings: &MeshSettings,
    shared: &mut Shared,
) -> Result<AddressEntry, String> {
    match &a.r#type {
        Some(wl::address::Type::Workload(w)) => {
            workload_entry(name, w, settings, shared).map(|w| AddressEntry::Workload(Box::new(w)))
        }
        Some(wl::address::Type::Service(s)) => {
            service_entry(name, s).map(|s| AddressEntry::Service(Box::new(s)))
        }
        None => Err("an address that is neither a workload nor a service".into()),
    }
}

fn workload_entry(
    name: &str,
    w: &wl::Workload,
    settings: &MeshSettings,
    shared: &mut Shared,
) -> Result<WorkloadEntry, String> {
    if w.uid != name {
        return Err(format!(
            "sent under the name {name:?}, but its uid is {:?}",
            w.uid
        ));
    }
    if w.name.is_empty() || w.namespace.is_empty() {
        return Err("a workload needs a name and a namespace".into());
    }
    let trust_domain = if w.trust_domain.is_empty() {
        settings.trust_domain.as_str()
    } else {
        w.trust_domain.as_str()
    };
    let service_account = if w.service_account.is_empty() {
        "default"
    } else {
        w.service_account.as_str()
    };
    let identity = Identity::new(trust_domain, &w.namespace, service_account)
        .map_err(|e| format!("identity: {e}"))?;
    let ips = w
        .addresses
        .iter()
        .map(|a| ip_from_bytes(a))
        .collect::<Result<Vec<_>, _>>()?;
    let enrolled = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::Hbone) => true,
        Ok(wl::TunnelProtocol::None) => false,
        // Neither carried nor plaintext-safe: refused rather than guessed.
        Ok(other) => return Err(format!("tunnel protocol {other:?} is not supported")),
        Err(_) => return Err(format!("unknown tunnel protocol {}", w.tunnel_protocol)),
    };
    if w.network_gateway.is_some() {
        return Err("network gateways (multi-network) are not supported".into());
    }
    // Unknown statuses count as unhealthy: a workload is an endpoint only when said to be ready,
    // or (veil's extension) said to be draining.
    let serving = if w.status == wl::WorkloadStatus::Healthy as i32 {
        Serving::Ready
    } else if w
        .extensions
        .iter()
        .any(|e| e.name == SERVING_WHILE_TERMINATING)
    {
        Serving::Terminating
    } else {
        Serving::NotReady
    };
    let mut services = Vec::with_capacity(w.services.len());
    for (key, list) in &w.services {
        let ports = list
            .ports
            .iter()
            .map(|p| Ok((port(p.service_port)?, optional_port(p.target_port)?)))
            .collect::<Result<Box<[_]>, String>>()
            .map_err(|e| format!("services[{key}]: {e}"))?;
        services.push((shared.str(key), ports));
    }
    services.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let waypoint = w.waypoint.as_ref().map(gateway).transpose()?.map(Box::new);
    let policies = w
        .authorization_policies
        .iter()
        .map(|p| shared.str(p))
        .collect();
    Ok(WorkloadEntry {
        name: w.name.as_str().into(),
        namespace: shared.str(&w.namespace),
        service_account: shared.str(service_account),
        naming: shared.naming(naming(w)),
        node: shared.str(&w.node),
        ips: ips.into(),
        enrolled,
        serving,
        identity: shared.identity(identity),
        waypoint,
        policies: shared.policies(policies),
        services: Backs(shared.services(services)),
        telemetry: telemetry(w),
    })
}

/// The Telemetry of [`crate::xds::TELEMETRY_EXTENSION`]; one that cannot be read records nothing
/// (privacy fails closed: the workload's traffic is not logged or traced).
fn telemetry(w: &wl::Workload) -> Option<Arc<TelemetrySettings>> {
    let extension = w
        .extensions
        .iter()
        .find(|e| e.name == crate::xds::TELEMETRY_EXTENSION)?;
    let settings = extension
        .config
        .as_ref()
        .filter(|any| any.type_url == crate::xds::STRING_VALUE_TYPE)
        .and_then(|any| {
            <crate::xds::StringValue as prost::Message>::decode(any.value.as_slice()).ok()
        })
        .and_then(|s| serde_json::from_str::<TelemetrySettings>(&s.value).ok())
        .unwrap_or_else(|| {
            tracing::warn!(workload = %w.uid, "unreadable telemetry extension: recording nothing about this workload");
            TelemetrySettings::record_nothing()
        });
    Some(Arc::new(settings))
}

/// What telemetry calls the workload. These names only label metrics, so a name that is missing or
/// could not be a Kubernetes name or label value (they end up in every series: long or odd values
/// would let a sender bloat them) is replaced, never refused.
fn naming(w: &wl::Workload) -> Naming {
    let pick = |s: &str, fallback: &str| {
        [s, fallback]
            .into_iter()
            .find(|s| crate::telemetry::valid_name(s))
            .unwrap_or("unknown")
            .to_owned()
    };
    let workload = pick(&w.workload_name, &w.name);
    Naming {
        app: pick(&w.canonical_name, &workload),
        version: pick(&w.canonical_revision, "latest"),
        workload,
    }
}

/// Checks an enrolled namespace: sent under its own name, which is a Kubernetes namespace name (an
/// RFC 1123 label).
pub(super) fn namespace_entry(name: &str, n: &AmbientNamespace) -> Result<(), String> {
    if n.name != name {
        return Err(format!(
            "sent under the name {name:?}, but names namespace {:?}",
            n.name
        ));
    }
    let label = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label(name) {
        return Err("not a namespace name (an RFC 1123 label)".into());
    }
    Ok(())
}

fn service_entry(name: &str, s: &wl::Service) -> Result<ServiceEntry, String> {
    if s.name.is_empty() || s.namespace.is_empty() || s.hostname.is_empty() {
        return Err("a service needs a name, a namespace and a hostname".into());
    }
    let expected = super::super::service_name_of(&s.namespace, &s.hostname);
    if name != expected {
        return Err(format!("sent under the name {name:?}, not {expected:?}"));
    }
    let vips = s
        .addresses
        .iter()
        .map(|a| ip_from_bytes(&a.address))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = s
        .ports
        .iter()
        .map(|p| Ok((port(p.service_port)?, optional_port(p.target_port)?)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ServiceEntry {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips,
        ports,
        udp_ports: udp_ports(s)?,
        waypoint: s.waypoint.as_ref().map(gateway).transpose()?,
    })
}

/// The UDP ports of [`crate::xds::UDP_PORTS_EXTENSION`]. Unreadable, the update is refused: the
/// service's last readable UDP ports stay (none taken for granted, none dropped on a bad write).
fn udp_ports(s: &wl::Service) -> Result<Vec<ServicePort>, String> {
    let mut extensions = s
        .extensions
        .iter()
        .filter(|e| e.name == crate::xds::UDP_PORTS_EXTENSION);
    let Some(extension) = extensions.next() else {
        return Ok(Vec::new());
    };
    let unreadable = |why: &str| format!("extension {}: {why}", crate::xds::UDP_PORTS_EXTENSION);
    if extensions.next().is_some() {
        return Err(unreadable("given twice"));
    }
    let list = extension
        .config
        .as_ref()
        .filter(|any| any.type_url == crate::xds::PORT_LIST_TYPE)
        .ok_or_else(|| unreadable("its config is not an istio.workload.PortList"))?;
    let list =
        wl::PortList::decode(list.value.as_slice()).map_err(|e| unreadable(&e.to_string()))?;
    let mut ports: Vec<ServicePort> = Vec::with_capacity(list.ports.len());
    // A set, not a scan per port: a list of thousands must not cost a square of them.
    let mut seen = std::collections::HashSet::with_capacity(list.ports.len());
    for p in &list.ports {
        let (port, target_port) = (port(p.service_port), port(p.target_port));
        let (port, target_port) = port
            .and_then(|port| Ok((port, target_port?)))
            .map_err(|e| unreadable(&e))?;
        if !seen.insert(port) {
            return Err(unreadable(&format!("port {port} given twice")));
        }
        ports.push(ServicePort { port, target_port });
    }
    Ok(ports)
}

fn port(p: u32) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{p} is not a port (1-65535)"))
}

/// A target port; 0 means "per endpoint".
fn optional_port(p: u32) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| format!("{p} is not a port (1-65535)"))
}

fn gateway(g: &wl::GatewayAddress) -> Result<Gateway, String> {
    use wl::gateway_address::Destination;
    if g.hbone_mtls_port != 0 && g.hbone_mtls_port != 15008 {
        return Err(format!(
            "waypoint HBONE port {} (veil reaches waypoints on 15008 only)",
            g.hbone_mtls_port
        ));
    }
    match &g.destination {
        Some(Destination::Address(a)) => ip_from_bytes(&a.address).map(Gateway::Address),
        Some(Destination::Hostname(h)) if !h.hostname.is_empty() => Ok(Gateway::Hostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
        }),
        _ => Err("a waypoint without an address or a hostname".into()),
    }
}
