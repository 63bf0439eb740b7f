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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

mod changes;
mod derive;
mod entries;
mod patch;
mod shared;
mod waypoint;

use derive::{gather, ips_of, left_to_its_waypoint, placeholder, target_port, waypoint};

use super::Kind;
use super::proto::discovery::Resource;
use super::proto::istio::security as sec;
use super::proto::istio::workload as wl;
use super::proto::veil::AmbientNamespace;
use crate::discovery::{
    AddressLookup, ConfigError, MeshSettings, MeshState, Service, ServicePort, Waypoint,
    WaypointRef, Workload,
};
use crate::policy::{AuthzPolicy, PolicyId, Scope, compile_istio, deny_everything};
use entries::{
    AddressEntry, Gateway, Named, ServiceEntry, WorkloadEntry, address_entry, decode,
    namespace_entry,
};

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
    version: Box<str>,
    /// The newest valid version received under this name.
    entry: Option<AddressEntry>,
    /// Why the newest version was refused. The older valid version, if any, stands in: a workload
    /// stays known (its pod stays captured, its address stays in the mesh) but admits nothing; a
    /// service keeps its last valid form.
    refused: Option<Box<str>>,
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

/// The resources received so far.
#[allow(missing_debug_implementations, reason = "holds a closure")]
pub struct Store {
    settings: MeshSettings,
    /// Workloads and services by xDS name (a workload's is its uid, which its mesh copy shares).
    addresses: HashMap<Arc<str>, Received>,
    authorizations: HashMap<String, Policy>,
    /// Enrolled namespaces: their versions, and why one was refused (see [`Self::apply`]).
    namespaces: HashMap<String, (String, Option<String>)>,
    arrivals: u64,
    /// This subscriber's node, and the addresses its pods were given before the control plane
    /// knew them.
    node: Option<(String, Arc<AddressLookup>)>,
    /// Workloads of this node received without an address (names): the network plugin may fill
    /// theirs in at any time.
    unaddressed: BTreeSet<String>,
    /// What changed since the mesh was last made.
    changes: changes::Changes,
    /// What the last mesh built whole knew, for patching the next one from it.
    derived: Option<patch::Derived>,
    /// A waypoint's store: policies as written and their bindings, which its mesh is checked
    /// against instead of Authorizations.
    waypoint: Option<waypoint::Held>,
    /// One copy of what workloads hold alike.
    shared: shared::Shared,
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
            unaddressed: BTreeSet::new(),
            changes: changes::Changes::default(),
            derived: None,
            waypoint: None,
            shared: shared::Shared::default(),
        }
    }

    /// A waypoint's store: its mesh is checked against the AuthorizationPolicies as written
    /// ([`Kind::Policy`], [`Kind::Binding`]), HTTP conditions and `targetRefs` included, never
    /// against Istio's L4 Authorizations; it is built whole on every change (a waypoint holds one
    /// namespace).
    pub fn for_waypoint(mut self) -> Self {
        self.waypoint = Some(waypoint::Held::default());
        self
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
            waypoint: self.waypoint.as_ref().map(|_| waypoint::Held::default()),
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
                .map(|(name, r)| (name.to_string(), r.version.to_string()))
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
            Kind::Policy | Kind::Binding => self
                .waypoint
                .as_ref()
                .map(|held| held.versions(kind))
                .unwrap_or_default(),
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
        let something = !(resources.is_empty() && removed.is_empty());
        let followed = matches!(kind, Kind::Address | Kind::Authorization | Kind::Namespace);
        if something && (!followed || self.derived.is_none() || self.waypoint.is_some()) {
            // A waypoint's policies are checked as written, and with no mesh built yet there is
            // nothing to patch: the next mesh is built whole.
            self.changes.everything();
        }
        for name in removed {
            match kind {
                Kind::Address => {
                    let before = self.addresses.remove(name.as_str());
                    self.unaddressed.remove(name);
                    self.changes.address(name, before, None);
                }
                Kind::Authorization => {
                    let before = self.authorizations.remove(name);
                    self.changes.authorization(name, before.as_ref(), false);
                }
                Kind::Namespace => {
                    let before = self.namespaces.remove(name);
                    self.changes
                        .namespace(name, before.is_some_and(|(_, r)| r.is_some()));
                }
                Kind::Policy | Kind::Binding => {
                    if let Some(held) = &mut self.waypoint {
                        held.remove(kind, name);
                    }
                }
            }
        }
        let mut refused = Vec::new();
        for resource in resources {
            let name = &resource.name;
            let version = resource.version.clone();
            let refusal = match kind {
                Kind::Address => {
                    let value = decode::<wl::Address>(kind, resource)
                        .and_then(|a| address_entry(name, &a, &self.settings, &mut self.shared));
                    self.arrivals += 1;
                    let (before_key, before) = self
                        .addresses
                        .remove_entry(name.as_str())
                        .map_or((None, None), |(k, b)| (Some(k), Some(b)));
                    let since = before.as_ref().map_or(self.arrivals, |b| b.since);
                    let (received, refusal) = match value {
                        Ok(entry) => {
                            let here = self.node.as_ref().map(|(node, _)| node.as_str());
                            match &entry {
                                AddressEntry::Workload(w)
                                    if w.ips.is_empty() && Some(&*w.node) == here =>
                                {
                                    self.unaddressed.insert(name.clone())
                                }
                                _ => self.unaddressed.remove(name),
                            };
                            self.changes.address(name, before, Some(&entry));
                            let received = Received {
                                version: version.into(),
                                entry: Some(entry),
                                refused: None,
                                since,
                            };
                            (received, None)
                        }
                        Err(reason) => {
                            // The previous valid version stands in, quarantined.
                            self.changes.everything();
                            let received = Received {
                                version: version.into(),
                                entry: before.and_then(|b| b.entry),
                                refused: Some(reason.clone().into()),
                                since,
                            };
                            (received, Some(reason))
                        }
                    };
                    let key = before_key.unwrap_or_else(|| name.as_str().into());
                    self.addresses.insert(key, received);
                    refusal
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
                    let before = self.authorizations.insert(
                        name.clone(),
                        Policy {
                            version,
                            policy: Arc::new(policy),
                            refused: refusal.clone(),
                        },
                    );
                    self.changes
                        .authorization(name, before.as_ref(), refusal.is_some());
                    refusal
                }
                Kind::Namespace => {
                    let refusal = decode::<AmbientNamespace>(kind, resource)
                        .and_then(|n| namespace_entry(name, &n))
                        .err();
                    let before = self
                        .namespaces
                        .insert(name.clone(), (version, refusal.clone()));
                    let refused = refusal.is_some() || before.is_some_and(|(_, r)| r.is_some());
                    self.changes.namespace(name, refused);
                    refusal
                }
                Kind::Policy | Kind::Binding => match &mut self.waypoint {
                    Some(held) => held.apply(kind, resource, &self.settings),
                    None => Some("only a waypoint subscribes to this type".to_owned()),
                },
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
        self.build().0
    }

    /// The mesh these resources describe, built whole; the next ones are patched from it where
    /// they can be (see [`Self::patch`]).
    pub fn build_whole(&mut self) -> MeshState {
        let (state, derived) = self.build();
        self.derived = Some(derived);
        self.changes = changes::Changes::default();
        state
    }

    /// Marks the workloads of this node that arrived without an address as changed: its network
    /// plugin has new addresses.
    pub fn node_addresses_changed(&mut self) {
        for name in &self.unaddressed {
            match self.addresses.get(name.as_str()) {
                Some(Received {
                    entry: Some(AddressEntry::Workload(w)),
                    refused: None,
                    ..
                }) => self.changes.refill(name, w),
                // Quarantined: what stands in for it is decided over everything.
                _ => self.changes.everything(),
            }
        }
    }

    fn build(&self) -> (MeshState, patch::Derived) {
        let mut reserved: HashSet<IpAddr> = HashSet::new();
        // Reserved for another reason than a service's address (which a patch may free).
        let mut held_otherwise: HashSet<IpAddr> = HashSet::new();
        let mut left_out: HashSet<String> = HashSet::new();
        let mut rejected: Vec<ConfigError> = Vec::new();
        let mut claims: Vec<(u64, Named<'_>)> = Vec::new();
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
                        quarantined.insert(name);
                    }
                    claims.push((received.since, Named { uid: name, w }));
                }
                Some(AddressEntry::Service(s)) => services.push(s),
                None => {}
            }
        }
        let filled = self.node_addresses(&claims);
        // Of two workloads claiming an address, the one received first keeps it; the later claim
        // is left out (a new object cannot take over a running pod's address). Except that the
        // addresses this node's network plugin has just given a pod are that pod's: it claims first.
        claims.sort_by_key(|(since, w)| (!filled.contains_key(&**w.uid), *since, w.uid));
        // Who has each address (one workload at most, after this).
        let mut by_ip: HashMap<IpAddr, Named<'_>> = HashMap::new();
        let mut workloads: Vec<(Named<'_>, &[IpAddr])> = Vec::with_capacity(claims.len());
        for (_, w) in claims {
            let ips = ips_of(w, &filled);
            if ips.is_empty() {
                continue; // a pod whose network is not set up yet, elsewhere: not in the mesh yet
            }
            if let Some((ip, owner)) = ips
                .iter()
                .find_map(|ip| by_ip.get(ip).map(|owner| (ip, owner.uid)))
            {
                rejected.push(ConfigError::invalid(
                    format!("address {}", w.uid),
                    format!("{ip} is already workload {owner}'s; left out"),
                ));
                // Who holds a contested address depends on every claim: not patched.
                reserved.extend(ips.iter().copied());
                held_otherwise.extend(ips.iter().copied());
                left_out.insert(w.uid.to_string());
                continue;
            }
            by_ip.extend(ips.iter().map(|ip| (*ip, w)));
            workloads.push((w, ips));
        }
        workloads.sort_by(|a, b| a.0.uid.cmp(b.0.uid));
        services.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        // Who backs each service: built once, not scanned per service.
        let mut backing: HashMap<&str, Vec<Named<'_>>> = HashMap::new();
        for (w, _) in &workloads {
            for key in w.services.keys() {
                backing.entry(key).or_default().push(*w);
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
        let mut gateway_users: HashMap<Gateway, usize> = HashMap::new();
        for gateway in workloads
            .iter()
            .filter_map(|(w, _)| w.waypoint.as_deref())
            .chain(services.iter().filter_map(|s| s.waypoint.as_ref()))
        {
            *gateway_users.entry(gateway.clone()).or_default() += 1;
        }
        let gateways: BTreeSet<&Gateway> = gateway_users.keys().collect();
        reserved.extend(vips.keys().copied());
        let mut gateway_services: HashSet<String> = HashSet::new();
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
                    gateway_services.insert(key.clone());
                    let found = backing.get(key.as_str()).cloned().unwrap_or_default();
                    let reference = WaypointRef {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                    };
                    (reference, found)
                }
                Gateway::Address(ip) => {
                    reserved.insert(*ip);
                    held_otherwise.insert(*ip);
                    let found: Vec<Named<'_>> = by_ip.get(ip).copied().into_iter().collect();
                    let reference = found.first().map_or_else(
                        || WaypointRef {
                            namespace: String::new(),
                            name: ip.to_string(),
                        },
                        |w| WaypointRef {
                            namespace: w.namespace.to_string(),
                            name: w.name.to_string(),
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
                    gateway_services.insert(key.clone());
                    let reference = WaypointRef {
                        namespace: namespace.clone(),
                        name,
                    };
                    (reference, found)
                }
            };
            match waypoint(&reference, &found, &filled) {
                Ok(waypoint) => {
                    instances.extend(found.iter().map(|w| &**w.uid));
                    reserved.extend(waypoint.ips.iter().copied());
                    held_otherwise.extend(waypoint.ips.iter().copied());
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
        let reference = |g: Option<&Gateway>| g.map(|g| references[g].clone());

        let mut model_workloads = Vec::with_capacity(workloads.len());
        let mut named: HashMap<&str, &[Arc<str>]> = HashMap::new();
        for (w, ips) in workloads
            .iter()
            .filter(|(w, _)| !instances.contains(&**w.uid))
        {
            named.insert(w.uid, &w.policies);
            model_workloads.push(Workload {
                uid: w.uid.clone(),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                node: w.node.clone(),
                ips: ips.to_vec(),
                labels: BTreeMap::new(),
                naming: w.naming.clone(),
                netns: None,
                enrolled: w.enrolled,
                serving: w.serving,
                identity: w.identity.clone(),
                waypoint: reference(w.waypoint.as_deref()),
                waypoint_conflict: Vec::new(),
                telemetry: w.telemetry.clone(),
                policies: Default::default(),
            });
        }
        // Services that share a namespace and name: the mesh keeps one of them.
        let mut unpatchable_services: HashSet<String> = HashSet::new();
        let mut named_services: HashMap<(&str, &str), &str> = HashMap::new();
        for s in &services {
            let key = super::service_name_of(&s.namespace, &s.hostname);
            if let Some(other) = named_services.insert((&s.namespace, &s.name), &s.hostname) {
                unpatchable_services.insert(key);
                unpatchable_services.insert(super::service_name_of(&s.namespace, other));
            }
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
                    None => {
                        rejected.push(ConfigError::invalid(
                            format!("service {key}"),
                            format!("port {port}: no target port, or endpoints that disagree on it; the port is left out"),
                        ));
                        unpatchable_services.insert(key.clone());
                    }
                }
            }
            model_services.push(Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                vips: s.vips.clone(),
                ports,
                udp_ports: s.udp_ports.clone(),
                selector: BTreeMap::new(),
                // Every workload that backs it, ready or not: which of them take new connections
                // is read from each when one is picked (`MeshState::serving_endpoints`), and an
                // unready pod addressed directly is still behind its services' waypoint and
                // policies.
                endpoints: backing.iter().map(|w| w.uid.clone()).collect(),
                waypoint: reference(s.waypoint.as_ref()),
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
        // A waypoint holds no Authorizations: what the names say is read from its bindings.
        let istio_named = named.values().filter(|_| self.waypoint.is_none());
        for name in istio_named.flat_map(|n| n.iter()) {
            if !self.authorizations.contains_key(&**name) && !missing.contains_key(&**name) {
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
        let view = self.waypoint.as_ref().map(|held| {
            held.rejected(&mut rejected);
            held.view(&self.settings)
        });
        let applicable = |w: &Workload| -> Arc<[Arc<AuthzPolicy>]> {
            if quarantined.contains(&*w.uid) {
                return Arc::from(vec![refused_update.clone()]);
            }
            if let Some(view) = &view {
                let named = named.get(&*w.uid).copied().unwrap_or_default();
                return gather(view.applicable(w, named));
            }
            let names = named.get(&*w.uid).copied().unwrap_or_default();
            let mut out: Vec<Arc<AuthzPolicy>> = Vec::new();
            if !left_to_its_waypoint(&self.settings.root_namespace, w.waypoint.is_some(), names) {
                out.extend(mesh_wide.iter().cloned());
                out.extend(
                    by_namespace
                        .get(&*w.namespace)
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
            }
            for name in names {
                match self.authorizations.get(&**name) {
                    Some(p) => out.push(p.policy.clone()),
                    None => out.extend(missing.get(&**name).cloned()),
                }
            }
            gather(out)
        };
        for (name, (_, refused)) in &self.namespaces {
            if let Some(reason) = refused {
                rejected.push(ConfigError::invalid(
                    format!("namespace {name}"),
                    format!("{reason}; taken as enrolled: its new pods wait for a capture"),
                ));
            }
        }
        let mut enrolled: HashMap<String, usize> = HashMap::new();
        for w in model_workloads.iter().filter(|w| w.enrolled) {
            *enrolled.entry(w.namespace.to_string()).or_default() += 1;
        }
        let ambient: BTreeSet<String> = enrolled
            .keys()
            .cloned()
            .chain(self.namespaces.keys().cloned())
            .collect();
        let derived = patch::Derived {
            state: MeshState::default(),
            reserved,
            held_otherwise,
            gateway_services,
            references: references
                .iter()
                .map(|(g, r)| ((*g).clone(), r.clone()))
                .collect(),
            gateway_users: gateway_users.clone(),
            instances: instances.iter().map(|uid| (*uid).to_owned()).collect(),
            unpatchable_services,
            left_out_vips: HashSet::new(),
            left_out_names: HashSet::new(),
            left_out,
            mesh_wide: mesh_wide.clone(),
            by_namespace: by_namespace
                .iter()
                .map(|(ns, p)| ((*ns).to_owned(), p.clone()))
                .collect(),
            backing: backing
                .iter()
                .map(|(key, ws)| {
                    let uids = ws.iter().map(|w| w.uid.clone()).collect();
                    ((*key).to_owned(), uids)
                })
                .collect(),
            enrolled,
            lists: crate::discovery::Lists::default(),
        };
        let state = MeshState::build_isolating(
            self.settings.clone(),
            model_workloads,
            model_services,
            waypoints,
            Vec::new(),
            Vec::new(),
        )
        .with_received_policies(
            match &view {
                Some(view) => view.all.clone(),
                None => self
                    .authorizations
                    .values()
                    .map(|p| p.policy.clone())
                    .collect(),
            },
            applicable,
            rejected,
            view.is_none(),
        )
        .with_ambient_namespaces(ambient);
        // The addresses and names of services left out (an address, or their name, another's).
        let (mut left_out_vips, mut left_out_names) = (HashSet::new(), HashSet::new());
        for s in &services {
            let key = (s.namespace.clone(), s.name.clone());
            if state.service_by_key(&key).is_none_or(|m| m.vips != s.vips) {
                left_out_vips.extend(s.vips.iter().copied());
                left_out_names.insert(key);
            }
        }
        let derived = patch::Derived {
            state: state.clone(),
            lists: crate::discovery::Lists::of(&state),
            left_out_vips,
            left_out_names,
            ..derived
        };
        (state, derived)
    }
}
