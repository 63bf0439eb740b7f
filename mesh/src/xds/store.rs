//! A subscriber's copy of the resources a control plane sent, and the [`MeshState`] they make.
//!
//! Every resource is validated on arrival; one that is not valid is reported (the response is then
//! NACKed with its name and reason) and the rest are applied. What a refused resource would have
//! said is unknown, so it fails closed:
//!
//! - a refused new version of a workload leaves the previous valid one known (its pod stays
//!   captured, its address in the mesh) admitting nothing; of a service, the previous valid one in
//!   force; one never received valid is left out;
//! - of two workloads claiming one address, the one received first keeps it;
//! - a refused Authorization denies everything in the scope it declares (or, when it cannot even
//!   be decoded, in the namespace its name gives; the whole mesh if that is the root namespace);
//! - a workload naming an Authorization that is not here (never sent, or removed) admits nothing
//!   until it arrives.
//!
//! A workload without an address is a pod whose network is not set up yet: on this subscriber's
//! node it takes the address the CNI plugin handed over (see [`Store::with_node_addresses`]); else
//! it is not part of the mesh until one arrives. A workload marked unhealthy (a pod not ready) is
//! in the mesh but no service's endpoint.
//!
//! Namespaces enrolled in the mesh (veil's [`Kind::Namespace`]) add to those that have an enrolled
//! workload: a namespace is taken as enrolled when either says so, so that neither a namespace
//! enrolled before its first pod nor a subscriber of a control plane that does not send them
//! (istiod) lets a new pod start uncaptured.
//!
//! Waypoints have no resource of their own in Istio's schema: a workload's or service's waypoint
//! is a gateway address, either an address (a Service's, istiod's form, whose endpoints are the
//! instances; else the workload that is the waypoint, veil's form) or a hostname (of the waypoint's
//! Service). Instances that do not share one identity make the waypoint unusable, and traffic
//! bound to it fails closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;

use super::proto::discovery::Resource;
use super::proto::istio::security as sec;
use super::proto::istio::workload as wl;
use super::proto::veil::AmbientNamespace;
use super::{Kind, ip_from_bytes};
use crate::discovery::{
    AddressLookup, ConfigError, MeshSettings, MeshState, Service, ServicePort, Waypoint,
    WaypointRef, Workload,
};
use crate::identity::Identity;
use crate::policy::{AuthzPolicy, PolicyId, Scope, compile_istio, deny_everything};

/// A resource that was refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Its xDS name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// A workload or service as received: the newest valid version, and whether a newer one was
/// refused.
#[derive(Debug)]
struct Received {
    version: String,
    /// The newest valid version received under this name.
    entry: Option<AddressEntry>,
    /// Why the newest version was refused. The older valid version, if any, stands in: a workload
    /// stays known (its pod stays captured, its address stays in the mesh) but admits nothing; a
    /// service keeps its last valid form.
    refused: Option<String>,
    /// When this name was first received: of two workloads claiming an address, the older claim
    /// wins.
    since: u64,
}

/// An Authorization as enforced: the policy received, or, when it was refused, a policy that
/// denies everything in its scope.
#[derive(Debug)]
struct Policy {
    version: String,
    policy: Arc<AuthzPolicy>,
    refused: Option<String>,
}

/// A validated workload or service, as received.
#[derive(Debug)]
enum AddressEntry {
    Workload(WorkloadEntry),
    Service(ServiceEntry),
}

#[derive(Debug)]
struct WorkloadEntry {
    uid: String,
    name: String,
    namespace: String,
    service_account: String,
    node: String,
    ips: Vec<IpAddr>,
    enrolled: bool,
    /// Not marked unhealthy: may be a service's endpoint.
    healthy: bool,
    identity: Identity,
    waypoint: Option<Gateway>,
    policies: Vec<String>,
    /// The services it backs (xDS names), with their ports.
    services: BTreeMap<String, Vec<(u16, u16)>>,
}

#[derive(Debug)]
struct ServiceEntry {
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<IpAddr>,
    ports: Vec<(u16, u16)>,
    waypoint: Option<Gateway>,
}

/// Where a waypoint is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Gateway {
    Address(IpAddr),
    Hostname { namespace: String, hostname: String },
}

/// The resources received so far.
#[allow(missing_debug_implementations, reason = "holds a closure")]
pub struct Store {
    settings: MeshSettings,
    addresses: HashMap<String, Received>,
    authorizations: HashMap<String, Policy>,
    /// Enrolled namespaces: their versions, and why one was refused (see [`Self::apply`]).
    namespaces: HashMap<String, (String, Option<String>)>,
    arrivals: u64,
    /// This subscriber's node, and the addresses its pods were given before the control plane
    /// knew them.
    node: Option<(String, Arc<AddressLookup>)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("addresses", &self.addresses.len())
            .field("authorizations", &self.authorizations.len())
            .field("namespaces", &self.namespaces.len())
            .field("node", &self.node.as_ref().map(|(n, _)| n))
            .finish_non_exhaustive()
    }
}

impl Store {
    /// An empty store.
    pub fn new(settings: MeshSettings) -> Self {
        Self {
            settings,
            addresses: HashMap::new(),
            authorizations: HashMap::new(),
            namespaces: HashMap::new(),
            arrivals: 0,
            node: None,
        }
    }

    /// Gives the workloads of `node` that arrive without an address (pods whose network is being
    /// set up) the addresses `lookup` knows, by namespace and name.
    pub fn with_node_addresses(mut self, node: String, lookup: Arc<AddressLookup>) -> Self {
        self.node = Some((node, lookup));
        self
    }

    /// An empty store with the same settings and node.
    pub fn empty_like(&self) -> Self {
        Self {
            node: self.node.clone(),
            ..Self::new(self.settings.clone())
        }
    }

    /// The version of every resource of `kind` held, for `initial_resource_versions` when a stream
    /// resumes (refused ones included: the same version would be refused again).
    pub fn versions(&self, kind: Kind) -> HashMap<String, String> {
        match kind {
            Kind::Address => self
                .addresses
                .iter()
                .map(|(name, r)| (name.clone(), r.version.clone()))
                .collect(),
            Kind::Authorization => self
                .authorizations
                .iter()
                .map(|(name, p)| (name.clone(), p.version.clone()))
                .collect(),
            Kind::Namespace => self
                .namespaces
                .iter()
                .map(|(name, (version, _))| (name.clone(), version.clone()))
                .collect(),
        }
    }

    /// Applies one response: `resources` added or replaced, `removed` gone. Returns what was
    /// refused (the rest is applied). A refused namespace is taken as enrolled: when it is not, a
    /// new pod of it waits for a capture that does not come, and its start fails loudly, where the
    /// other way round it would start uncaptured.
    pub fn apply(
        &mut self,
        kind: Kind,
        resources: &[Resource],
        removed: &[String],
    ) -> Vec<Refusal> {
        for name in removed {
            match kind {
                Kind::Address => drop(self.addresses.remove(name)),
                Kind::Authorization => drop(self.authorizations.remove(name)),
                Kind::Namespace => drop(self.namespaces.remove(name)),
            }
        }
        let mut refused = Vec::new();
        for resource in resources {
            let name = &resource.name;
            let version = resource.version.clone();
            let refusal = match kind {
                Kind::Address => {
                    let value = decode::<wl::Address>(kind, resource)
                        .and_then(|a| address_entry(name, &a, &self.settings));
                    self.arrivals += 1;
                    let arrival = self.arrivals;
                    let received = self.addresses.entry(name.clone()).or_insert(Received {
                        version: String::new(),
                        entry: None,
                        refused: None,
                        since: arrival,
                    });
                    received.version = version;
                    match value {
                        Ok(entry) => {
                            received.entry = Some(entry);
                            received.refused = None;
                            None
                        }
                        Err(reason) => {
                            received.refused = Some(reason.clone());
                            Some(reason)
                        }
                    }
                }
                Kind::Authorization => {
                    let (policy, refusal) = match decode::<sec::Authorization>(kind, resource) {
                        Ok(a) => match compile_istio(name, &a) {
                            Ok(policy) => (policy, None),
                            Err(e) => (
                                placeholder(name, Some(&a), &self.settings),
                                Some(e.to_string()),
                            ),
                        },
                        Err(reason) => (placeholder(name, None, &self.settings), Some(reason)),
                    };
                    self.authorizations.insert(
                        name.clone(),
                        Policy {
                            version,
                            policy: Arc::new(policy),
                            refused: refusal.clone(),
                        },
                    );
                    refusal
                }
                Kind::Namespace => {
                    let refusal = decode::<AmbientNamespace>(kind, resource)
                        .and_then(|n| namespace_entry(name, &n))
                        .err();
                    self.namespaces
                        .insert(name.clone(), (version, refusal.clone()));
                    refusal
                }
            };
            if let Some(reason) = refusal {
                refused.push(Refusal {
                    name: name.clone(),
                    reason,
                });
            }
        }
        refused
    }

    /// The mesh these resources describe.
    pub fn to_state(&self) -> MeshState {
        let mut rejected: Vec<ConfigError> = Vec::new();
        let mut claims: Vec<(u64, &WorkloadEntry)> = Vec::new();
        let mut services: Vec<&ServiceEntry> = Vec::new();
        let mut quarantined: BTreeSet<&str> = BTreeSet::new();
        for (name, received) in &self.addresses {
            if let Some(reason) = &received.refused {
                let outcome = match &received.entry {
                    Some(AddressEntry::Workload(_)) => {
                        "its previous version stays known and admits nothing until a valid one arrives"
                    }
                    Some(AddressEntry::Service(_)) => "its previous version stays in force",
                    None => "left out",
                };
                rejected.push(ConfigError::invalid(
                    format!("address {name}"),
                    format!("{reason}; {outcome}"),
                ));
            }
            match &received.entry {
                Some(AddressEntry::Workload(w)) => {
                    if received.refused.is_some() {
                        quarantined.insert(&w.uid);
                    }
                    claims.push((received.since, w));
                }
                Some(AddressEntry::Service(s)) => services.push(s),
                None => {}
            }
        }
        let filled = self.node_addresses(&claims);
        // Of two workloads claiming an address, the one received first keeps it; the later claim
        // is left out (a new object cannot take over a running pod's address). Except that the
        // addresses this node's network plugin has just given a pod are that pod's: it claims first.
        claims.sort_by_key(|(since, w)| (!filled.contains_key(w.uid.as_str()), *since, &w.uid));
        // Who has each address (one workload at most, after this).
        let mut by_ip: HashMap<IpAddr, &WorkloadEntry> = HashMap::new();
        let mut workloads: Vec<(&WorkloadEntry, &[IpAddr])> = Vec::with_capacity(claims.len());
        for (_, w) in claims {
            let ips = ips_of(w, &filled);
            if ips.is_empty() {
                continue; // a pod whose network is not set up yet, elsewhere: not in the mesh yet
            }
            if let Some((ip, owner)) = ips
                .iter()
                .find_map(|ip| by_ip.get(ip).map(|owner| (ip, owner.uid.as_str())))
            {
                rejected.push(ConfigError::invalid(
                    format!("address {}", w.uid),
                    format!("{ip} is already workload {owner}'s; left out"),
                ));
                continue;
            }
            by_ip.extend(ips.iter().map(|ip| (*ip, w)));
            workloads.push((w, ips));
        }
        workloads.sort_by(|a, b| a.0.uid.cmp(&b.0.uid));
        services.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        // Who backs each service: built once, not scanned per service.
        let mut backing: HashMap<&str, Vec<&WorkloadEntry>> = HashMap::new();
        for (w, _) in &workloads {
            for key in w.services.keys() {
                backing.entry(key).or_default().push(w);
            }
        }
        let vips: HashMap<IpAddr, &ServiceEntry> = services
            .iter()
            .flat_map(|s| s.vips.iter().map(move |ip| (*ip, *s)))
            .collect();
        let service_names: HashMap<(&str, &str), &str> = services
            .iter()
            .map(|s| ((s.namespace.as_str(), s.hostname.as_str()), s.name.as_str()))
            .collect();

        // The waypoints named anywhere, and the workloads that are their instances.
        let gateways: BTreeSet<&Gateway> = workloads
            .iter()
            .filter_map(|(w, _)| w.waypoint.as_ref())
            .chain(services.iter().filter_map(|s| s.waypoint.as_ref()))
            .collect();
        let mut references: HashMap<&Gateway, WaypointRef> = HashMap::new();
        let mut waypoints = Vec::new();
        let mut instances: BTreeSet<&str> = BTreeSet::new();
        for gateway in gateways {
            let (reference, found) = match gateway {
                // A service's address (istiod names a waypoint by its Service's VIP): the
                // service's endpoints are its instances.
                Gateway::Address(ip) if vips.contains_key(ip) => {
                    let s = vips[ip];
                    let key = super::service_name_of(&s.namespace, &s.hostname);
                    let found = backing.get(key.as_str()).cloned().unwrap_or_default();
                    let reference = WaypointRef {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                    };
                    (reference, found)
                }
                Gateway::Address(ip) => {
                    let found: Vec<&WorkloadEntry> = by_ip.get(ip).copied().into_iter().collect();
                    let reference = found.first().map_or_else(
                        || WaypointRef {
                            namespace: String::new(),
                            name: ip.to_string(),
                        },
                        |w| WaypointRef {
                            namespace: w.namespace.clone(),
                            name: w.name.clone(),
                        },
                    );
                    (reference, found)
                }
                Gateway::Hostname {
                    namespace,
                    hostname,
                } => {
                    let name = service_names
                        .get(&(namespace.as_str(), hostname.as_str()))
                        .map_or_else(
                            || hostname.split('.').next().unwrap_or_default().to_owned(),
                            |n| (*n).to_owned(),
                        );
                    let key = super::service_name_of(namespace, hostname);
                    let found = backing.get(key.as_str()).cloned().unwrap_or_default();
                    let reference = WaypointRef {
                        namespace: namespace.clone(),
                        name,
                    };
                    (reference, found)
                }
            };
            match waypoint(&reference, &found) {
                Ok(waypoint) => {
                    instances.extend(found.iter().map(|w| w.uid.as_str()));
                    waypoints.push(waypoint);
                }
                Err(reason) => {
                    rejected.push(ConfigError::invalid(
                        format!("waypoint {reference}"),
                        reason,
                    ));
                }
            }
            references.insert(gateway, reference);
        }
        let reference = |g: &Option<Gateway>| g.as_ref().map(|g| references[g].clone());

        let mut model_workloads = Vec::with_capacity(workloads.len());
        let mut named: HashMap<&str, &[String]> = HashMap::new();
        for (w, ips) in workloads
            .iter()
            .filter(|(w, _)| !instances.contains(w.uid.as_str()))
        {
            named.insert(&w.uid, &w.policies);
            model_workloads.push(Workload {
                uid: w.uid.clone(),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                node: w.node.clone(),
                ips: ips.to_vec(),
                labels: BTreeMap::new(),
                netns: None,
                enrolled: w.enrolled,
                identity: w.identity.clone(),
                waypoint: reference(&w.waypoint),
                waypoint_conflict: Vec::new(),
                policies: Default::default(),
            });
        }
        let mut model_services = Vec::with_capacity(services.len());
        for s in &services {
            let key = super::service_name_of(&s.namespace, &s.hostname);
            let backing = backing.get(key.as_str()).map_or(&[][..], Vec::as_slice);
            let mut ports = Vec::new();
            for (port, target) in &s.ports {
                match target_port(*port, *target, backing, &key) {
                    Some(target_port) => ports.push(ServicePort {
                        port: *port,
                        target_port,
                    }),
                    None => rejected.push(ConfigError::invalid(
                        format!("service {key}"),
                        format!("port {port}: no target port, or endpoints that disagree on it; the port is left out"),
                    )),
                }
            }
            model_services.push(Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                vips: s.vips.clone(),
                ports,
                selector: BTreeMap::new(),
                endpoints: backing
                    .iter()
                    .filter(|w| w.healthy)
                    .map(|w| w.uid.clone())
                    .collect(),
                waypoint: reference(&s.waypoint),
            });
        }

        // Which policies apply: by scope, and by name.
        let mut mesh_wide = Vec::new();
        let mut by_namespace: HashMap<&str, Vec<Arc<AuthzPolicy>>> = HashMap::new();
        for (name, p) in &self.authorizations {
            match p.policy.scope {
                Scope::Mesh => mesh_wide.push(p.policy.clone()),
                Scope::Namespace => by_namespace
                    .entry(&p.policy.id.namespace)
                    .or_default()
                    .push(p.policy.clone()),
                _ => {}
            }
            if let Some(reason) = &p.refused {
                rejected.push(ConfigError::invalid(
                    format!("authorization {name}"),
                    format!(
                        "{reason}; everything in its scope is denied until a valid version arrives"
                    ),
                ));
            }
        }
        let mut missing: BTreeMap<&str, Arc<AuthzPolicy>> = BTreeMap::new();
        for name in named.values().flat_map(|n| n.iter()) {
            if !self.authorizations.contains_key(name) && !missing.contains_key(name.as_str()) {
                rejected.push(ConfigError::invalid(
                    format!("authorization {name}"),
                    "named by a workload but not received: that workload admits nothing until it is",
                ));
                missing.insert(name, Arc::new(placeholder(name, None, &self.settings)));
            }
        }
        let refused_update = Arc::new(deny_everything(
            PolicyId::new("veil", "refused-update"),
            Scope::Named,
        ));
        let applicable = |w: &Workload| -> Arc<[Arc<AuthzPolicy>]> {
            if quarantined.contains(w.uid.as_str()) {
                return Arc::from(vec![refused_update.clone()]);
            }
            let mut out: Vec<Arc<AuthzPolicy>> = mesh_wide.clone();
            out.extend(
                by_namespace
                    .get(w.namespace.as_str())
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            for name in named.get(w.uid.as_str()).copied().unwrap_or_default() {
                match self.authorizations.get(name) {
                    Some(p) => out.push(p.policy.clone()),
                    None => out.extend(missing.get(name.as_str()).cloned()),
                }
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
            out.into()
        };
        for (name, (_, refused)) in &self.namespaces {
            if let Some(reason) = refused {
                rejected.push(ConfigError::invalid(
                    format!("namespace {name}"),
                    format!("{reason}; taken as enrolled: its new pods wait for a capture"),
                ));
            }
        }
        let ambient: BTreeSet<String> = model_workloads
            .iter()
            .filter(|w| w.enrolled)
            .map(|w| w.namespace.clone())
            .chain(self.namespaces.keys().cloned())
            .collect();
        MeshState::build_isolating(
            self.settings.clone(),
            model_workloads,
            model_services,
            waypoints,
            Vec::new(),
            Vec::new(),
        )
        .with_istio_policies(
            self.authorizations
                .values()
                .map(|p| p.policy.clone())
                .collect(),
            applicable,
            rejected,
        )
        .with_ambient_namespaces(ambient)
    }
}

impl Store {
    /// The addresses this node's network plugin gave its workloads that arrived without one.
    fn node_addresses<'a>(
        &self,
        claims: &[(u64, &'a WorkloadEntry)],
    ) -> HashMap<&'a str, Vec<IpAddr>> {
        let Some((node, lookup)) = &self.node else {
            return HashMap::new();
        };
        claims
            .iter()
            .filter(|(_, w)| w.ips.is_empty() && w.node == *node)
            .filter_map(|(_, w)| {
                let ips = lookup(&w.namespace, &w.name).filter(|ips| !ips.is_empty())?;
                Some((w.uid.as_str(), ips))
            })
            .collect()
    }
}

/// A workload's addresses: as received, or, when it arrived without any, as its node filled in.
fn ips_of<'a>(w: &'a WorkloadEntry, filled: &'a HashMap<&str, Vec<IpAddr>>) -> &'a [IpAddr] {
    if w.ips.is_empty() {
        filled.get(w.uid.as_str()).map_or(&[], Vec::as_slice)
    } else {
        &w.ips
    }
}

/// The message of `resource`, which must be of `kind`.
fn decode<M: Message + Default>(kind: Kind, resource: &Resource) -> Result<M, String> {
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

fn address_entry(
    name: &str,
    a: &wl::Address,
    settings: &MeshSettings,
) -> Result<AddressEntry, String> {
    match &a.r#type {
        Some(wl::address::Type::Workload(w)) => {
            workload_entry(name, w, settings).map(AddressEntry::Workload)
        }
        Some(wl::address::Type::Service(s)) => service_entry(name, s).map(AddressEntry::Service),
        None => Err("an address that is neither a workload nor a service".into()),
    }
}

fn workload_entry(
    name: &str,
    w: &wl::Workload,
    settings: &MeshSettings,
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
    // Unknown statuses count as unhealthy: a workload is an endpoint only when said to be ready.
    let healthy = w.status == wl::WorkloadStatus::Healthy as i32;
    let mut services = BTreeMap::new();
    for (key, list) in &w.services {
        let ports = list
            .ports
            .iter()
            .map(|p| Ok((port(p.service_port)?, optional_port(p.target_port)?)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| format!("services[{key}]: {e}"))?;
        services.insert(key.clone(), ports);
    }
    Ok(WorkloadEntry {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: service_account.to_owned(),
        node: w.node.clone(),
        ips,
        enrolled,
        healthy,
        identity,
        waypoint: w.waypoint.as_ref().map(gateway).transpose()?,
        policies: w.authorization_policies.clone(),
        services,
    })
}

/// Checks an enrolled namespace: sent under its own name, which is a Kubernetes namespace name (an
/// RFC 1123 label).
fn namespace_entry(name: &str, n: &AmbientNamespace) -> Result<(), String> {
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
    let expected = super::service_name_of(&s.namespace, &s.hostname);
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
        waypoint: s.waypoint.as_ref().map(gateway).transpose()?,
    })
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

/// The waypoint `reference` whose instances are `found`, when they share one identity.
fn waypoint(reference: &WaypointRef, found: &[&WorkloadEntry]) -> Result<Waypoint, String> {
    let Some(first) = found.first() else {
        return Err("no instance of it is known: traffic bound to it fails".into());
    };
    if let Some(other) = found.iter().find(|w| w.identity != first.identity) {
        return Err(format!(
            "its instances have different identities ({} and {}): it is not used, and traffic bound to it fails",
            first.identity, other.identity
        ));
    }
    Ok(Waypoint {
        name: reference.name.clone(),
        namespace: reference.namespace.clone(),
        identity: first.identity.clone(),
        ips: found.iter().flat_map(|w| w.ips.iter().copied()).collect(),
    })
}

/// The target port of service port `port`: the service's own, else the one its endpoints agree on.
fn target_port(port: u16, target: u16, backing: &[&WorkloadEntry], key: &str) -> Option<u16> {
    if target != 0 {
        return Some(target);
    }
    let mut found = None;
    for w in backing {
        let Some(ports) = w.services.get(key) else {
            continue;
        };
        for (p, t) in ports {
            if *p == port && *t != 0 {
                match found {
                    None => found = Some(*t),
                    Some(f) if f == *t => {}
                    Some(_) => return None,
                }
            }
        }
    }
    found
}

/// A policy that denies everything in the scope `name` (and, when decoded, `policy`) declares.
fn placeholder(
    name: &str,
    policy: Option<&sec::Authorization>,
    settings: &MeshSettings,
) -> AuthzPolicy {
    // What it declares, when it could be decoded (the scope it meant to apply in); else its name.
    let (namespace, policy_name) = match policy {
        Some(p) if !p.namespace.is_empty() => (p.namespace.as_str(), p.name.as_str()),
        _ => name.split_once('/').unwrap_or((name, "")),
    };
    let id = PolicyId::new(namespace, policy_name);
    let scope = match policy.map(|p| sec::Scope::try_from(p.scope)) {
        Some(Ok(sec::Scope::WorkloadSelector)) => Scope::Named,
        Some(Ok(sec::Scope::Namespace)) => Scope::Namespace,
        Some(Ok(sec::Scope::Global)) => Scope::Mesh,
        _ if namespace == settings.root_namespace => Scope::Mesh,
        _ => Scope::Namespace,
    };
    deny_everything(id, scope)
}
