//! A [`MeshState`] as the set of xDS resources a ztunnel subscribes to, each with a content version.
//!
//! Names follow Istio: a workload is named by its `uid` (`Kubernetes//Pod/<namespace>/<name>`), a
//! service by `<namespace>/<hostname>`, an Authorization by `<namespace>/<name>`. What veil decides
//! that Istio's schema has no field for is expressed as Authorizations veil generates, so that any
//! ztunnel that enforces Istio's Authorizations enforces it too. They live in the root namespace and
//! their names contain `:`, which no Kubernetes object name can, so they never collide with a policy
//! of a user:
//!
//! - `veil:deny-all` — a workload two waypoints claim, or whose waypoint does not exist, admits
//!   nothing;
//! - `veil:waypoint-only:<namespace>.<name>` — a workload behind a waypoint admits only that
//!   waypoint's identity (its policies are the waypoint's to enforce);
//! - `veil:peer-strict`, `veil:peer-strict-except:<ports>` and `veil:peer-strict-on:<ports>` — the
//!   ports where PeerAuthentication refuses plaintext.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::authorization::{authorization, ip_bytes, istio_action};
use super::proto::istio::security as sec;
use super::proto::istio::workload as wl;
use super::proto::veil::AmbientNamespace;
use crate::discovery::{
    MeshState, Service, ServiceKey, ServicePort, Serving, Waypoint, WaypointRef, Workload,
};
use crate::identity::Identity;
use crate::policy::{PeerMode, PeerProfile, Scope};

mod changes;
mod messages;

use changes::changed_workloads;
use messages::{service_message, waypoint_message, workload_message};

/// The cluster id veil reports (Istio's default for a single cluster).
pub const CLUSTER_ID: &str = "Kubernetes";
/// The DNS domain of Service hostnames.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The name prefix of the generated policies that admit only a waypoint.
pub const WAYPOINT_ONLY_PREFIX: &str = "veil:waypoint-only:";
pub(crate) const DENY_ALL: &str = "veil:deny-all";
const PEER_STRICT: &str = "veil:peer-strict";
/// The port HBONE is served on.
const HBONE_PORT: u32 = 15008;

/// The most services defined otherwise that a translation patches for (each costs encoding the
/// workloads that back it): more are translated whole. As many as the controller patches at
/// once: a namespace naming another waypoint redefines its every Service (ns1's 101 at 100,000
/// pods encoded whole took 0.64-0.73 s).
const SERVICES_PATCHED_AT_MOST: usize = 512;

/// The resource types a ztunnel subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `istio.workload.Address`: workloads and services.
    Address,
    /// `istio.security.Authorization`.
    Authorization,
    /// `veil.discovery.AmbientNamespace`: the namespaces enrolled in the mesh (veil's extension).
    Namespace,
    /// `veil.discovery.AuthorizationPolicy`: policies as written, for waypoints (veil's extension).
    Policy,
    /// `veil.discovery.PolicyBinding`: the policies a waypoint enforces for a workload behind it
    /// (veil's extension).
    Binding,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Address,
        Kind::Authorization,
        Kind::Namespace,
        Kind::Policy,
        Kind::Binding,
    ];

    /// Whether it carries policies, which a subscriber must hold before the workloads that name
    /// them.
    pub fn is_policy(self) -> bool {
        matches!(self, Self::Authorization | Self::Policy | Self::Binding)
    }

    /// Its type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Address => super::ADDRESS_TYPE,
            Self::Authorization => super::AUTHORIZATION_TYPE,
            Self::Namespace => super::NAMESPACE_TYPE,
            Self::Policy => super::POLICY_TYPE,
            Self::Binding => super::BINDING_TYPE,
        }
    }

    /// The kind of a type URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// A resource of this kind as it travels: `body` (an encoded message) under `name`, `version`.
    pub fn resource(
        self,
        name: &str,
        version: &str,
        body: Vec<u8>,
    ) -> super::proto::discovery::Resource {
        super::proto::discovery::Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(prost_types::Any {
                type_url: self.type_url().into(),
                value: body,
            }),
            ..Default::default()
        }
    }
}

/// One resource: its encoded message and a version that changes when, and only when, the message
/// does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// A hash of `body`.
    pub version: Arc<str>,
    /// The encoded message (`istio.workload.Address`, `istio.security.Authorization` or
    /// `veil.discovery.AmbientNamespace`).
    pub body: Bytes,
    /// The one node it is for, when it is of use to that node only (a pod being set up): a control
    /// plane sends it to that node's subscribers alone.
    pub node: Option<Arc<str>>,
}

impl Entry {
    pub(super) fn new(message: &impl Message) -> Self {
        let body = Bytes::from(message.encode_to_vec());
        let mut hasher = std::hash::DefaultHasher::new();
        body.hash(&mut hasher);
        Self {
            version: format!("{:016x}", hasher.finish()).into(),
            body,
            node: None,
        }
    }

    /// Whether a subscriber on `node` (if known) is to receive it.
    pub fn is_for(&self, node: Option<&str>) -> bool {
        self.node.as_deref().is_none_or(|n| Some(n) == node)
    }
}

/// Resources of one kind by name. Persistent: a translation that starts from the previous one
/// shares every entry it keeps, and the difference between the two is found without visiting them.
pub type ByName = imbl::OrdMap<Arc<str>, Entry>;

/// Every resource of a mesh, by kind and name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resources {
    addresses: ByName,
    authorizations: ByName,
    namespaces: ByName,
    /// AuthorizationPolicies as written (for waypoints).
    policies: ByName,
    /// Which of them apply to each workload behind a waypoint, by the workload's name (for its
    /// waypoint).
    bindings: ByName,
    /// The identities of the mesh's waypoints: each may subscribe to what its namespace needs.
    waypoint_identities: BTreeSet<Identity>,
    /// The generated Authorizations (their names in the root namespace) each workload names, by
    /// the workload's address.
    generated_uses: imbl::OrdMap<Arc<str>, Box<[String]>>,
    /// What the pods being set up name of them.
    pending_uses: Box<[String]>,
    /// How many workloads and pods being set up name each generated Authorization: it is sent
    /// while any does.
    generated_users: BTreeMap<String, usize>,
    /// Two workloads had one xDS name (only the first by uid was sent): which workload an address
    /// came from is not known by its name, so a later translation does not start from this one.
    shared_names: bool,
}

/// The xDS name (and `uid`) of a workload.
pub fn workload_name(namespace: &str, name: &str) -> String {
    format!("{CLUSTER_ID}//Pod/{namespace}/{name}")
}

/// The namespace in a workload's xDS name.
pub(crate) fn workload_name_namespace(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(CLUSTER_ID)?.strip_prefix("//Pod/")?;
    let (namespace, name) = rest.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty()).then_some(namespace)
}

/// The xDS name of the workload that stands for a waypoint's instances.
fn waypoint_workload_name(reference: &WaypointRef) -> String {
    format!(
        "{CLUSTER_ID}//Waypoint/{}/{}",
        reference.namespace, reference.name
    )
}

/// A Service's hostname.
fn hostname(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// The xDS name of a Service (`<namespace>/<hostname>`).
pub fn service_name(namespace: &str, name: &str) -> String {
    service_name_of(namespace, &hostname(namespace, name))
}

/// The xDS name of the Service with `hostname`.
pub(crate) fn service_name_of(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

impl Resources {
    /// Translates a snapshot. Workloads that would share an xDS name (the same namespace and name
    /// under different uids) are sent once, the first by uid.
    pub fn from_state(state: &MeshState) -> Self {
        let settings = state.settings();
        let root = settings.root_namespace.as_str();
        let mut out = Self::default();
        let mut generated: BTreeMap<String, sec::Authorization> = BTreeMap::new();
        let mut digests = super::waypoint::Digests::default();
        out.authorizations = policies(state, root);
        // Before the workloads: their bindings say which policies they were made with.
        out.policies = super::waypoint::policies(state);
        for workload in state.workloads_by_uid() {
            let name: Arc<str> = workload_name(&workload.namespace, &workload.name).into();
            if out.addresses.contains_key(&name) {
                out.shared_names = true;
                continue;
            }
            out.put_workload(state, workload, name, root, &mut generated, &mut digests);
        }
        out.put_pending(state, root, &mut generated);
        for waypoint in state.waypoints() {
            let message = waypoint_message(&waypoint);
            out.insert_address(&message.uid.clone(), wl::address::Type::Workload(message));
        }
        for service in state.services() {
            let message = service_message(state, service);
            out.insert_address(
                &service_name(&service.namespace, &service.name),
                wl::address::Type::Service(message),
            );
        }
        out.put_generated(root, generated);
        out.namespaces = namespaces(state);
        out.waypoint_identities = super::waypoint::identities(state);
        out
    }

    /// Translates `state` as [`Self::from_state`] does, starting from `previous` (the translation
    /// of `previous_state`) when nothing a workload's resource depends on besides the workload,
    /// the services it backs, the policies that apply to it and its peer authentication changed
    /// (telemetry, waypoints: see `MeshState::same_surroundings`; the policies and peer
    /// authentication are compared workload by workload, see [`changed_workloads`]): only the
    /// workloads that changed, and the
    /// services whose definitions changed with the workloads that back them (before or after), are
    /// encoded; everything else is `previous`'s, shared. A pod changing then costs encoding that
    /// pod (and a pass over the uids of both meshes), not the mesh. Pods being set up, enrolled
    /// namespaces and, unless the mesh holds `previous_state`'s very policies, Authorizations are
    /// encoded afresh (entries equal to `previous`'s are kept as they were).
    pub fn from_state_after(
        state: &MeshState,
        previous_state: &MeshState,
        previous: &Resources,
    ) -> Self {
        if previous.shared_names || !state.same_surroundings(previous_state) {
            return Self::from_state(state);
        }
        let services = state.services_defined_otherwise(previous_state);
        if services.len() > SERVICES_PATCHED_AT_MOST {
            return Self::from_state(state);
        }
        Self::patched(state, previous_state, previous, &services)
            .unwrap_or_else(|| Self::from_state(state))
    }

    /// `previous` patched for the workloads that changed; `None` when a changed workload's name
    /// is taken by another (left to a whole translation, which settles who has it), or when
    /// policies as written changed while workloads have bindings (each says what it was made
    /// with).
    fn patched(
        state: &MeshState,
        previous_state: &MeshState,
        previous: &Resources,
        services: &[ServiceKey],
    ) -> Option<Self> {
        let settings = state.settings();
        let root = settings.root_namespace.as_str();
        let mut out = Self {
            addresses: previous.addresses.clone(),
            authorizations: previous.authorizations.clone(),
            namespaces: previous.namespaces.clone(),
            policies: previous.policies.clone(),
            bindings: previous.bindings.clone(),
            waypoint_identities: super::waypoint::identities(state),
            generated_uses: previous.generated_uses.clone(),
            pending_uses: Box::default(),
            generated_users: previous.generated_users.clone(),
            shared_names: false,
        };
        // The AuthorizationPolicies replaced (none when the mesh was patched from the previous
        // one for pods and services: it holds the very same).
        let replaced = if state.same_policies(previous_state) {
            Vec::new()
        } else {
            state.policies_replaced(previous_state)
        };
        // Policies as written first: the bindings of the workloads put below say which they were
        // made with. A binding of an unchanged workload says so too, so when they changed and
        // there are bindings, everything is translated afresh.
        let mut written_changed = false;
        for (id, now) in &replaced {
            let name: Arc<str> = id.to_string().into();
            let entry = now.and_then(|p| super::waypoint::policy_as_written(p));
            if out.policies.get(&name) != entry.as_ref() {
                written_changed = true;
                match entry {
                    Some(entry) => out.policies.insert(name, entry),
                    None => out.policies.remove(&name),
                };
            }
        }
        if written_changed && !previous.bindings.is_empty() {
            return None;
        }
        // The workloads that back a service defined otherwise carry its new definition.
        let backing: HashSet<&str> = services
            .iter()
            .flat_map(|key| {
                [
                    previous_state.service_by_key(key),
                    state.service_by_key(key),
                ]
            })
            .flatten()
            .flat_map(|service| service.endpoints.iter().map(|uid| &**uid))
            .collect();
        for (namespace, name) in services {
            let xds_name = service_name(namespace, name);
            out.addresses.remove(xds_name.as_str());
            if let Some(service) = state.service_by_key(&(namespace.clone(), name.clone())) {
                let message = service_message(state, service);
                out.insert_address(&xds_name, wl::address::Type::Service(message));
            }
        }
        let peer = state.peer_auth_changed(previous_state);
        let (gone, new) = changed_workloads(previous_state, state, &backing, peer.as_ref());
        for workload in previous_state.pending() {
            let name = workload_name(&workload.namespace, &workload.name);
            if out
                .addresses
                .get(name.as_str())
                .is_some_and(|e| e.node.is_some())
            {
                out.addresses.remove(name.as_str());
            }
        }
        out.drop_users(&previous.pending_uses);
        for workload in gone {
            let name = workload_name(&workload.namespace, &workload.name);
            out.addresses.remove(name.as_str());
            out.bindings.remove(name.as_str());
            if let Some(uses) = out.generated_uses.remove(name.as_str()) {
                out.drop_users(&uses);
            }
        }
        let mut generated: BTreeMap<String, sec::Authorization> = BTreeMap::new();
        let mut digests = super::waypoint::Digests::default();
        for workload in new {
            let name: Arc<str> = workload_name(&workload.namespace, &workload.name).into();
            if out.addresses.contains_key(&name) {
                return None;
            }
            out.put_workload(state, workload, name, root, &mut generated, &mut digests);
        }
        out.put_pending(state, root, &mut generated);
        // A pod still being set up as it was keeps its entry as it was.
        for workload in state.pending() {
            let name = workload_name(&workload.namespace, &workload.name);
            if let Some(prior) = previous.addresses.get(name.as_str())
                && out.addresses.get(name.as_str()) == Some(prior)
            {
                out.addresses.insert(name.into(), prior.clone());
            }
        }
        // The policies replaced: encoded anew where they decide, removed where they are gone or
        // no longer do (a generated Authorization never has a policy's name: it is no
        // Kubernetes name).
        for (id, now) in &replaced {
            let name: Arc<str> = id.to_string().into();
            match now.and_then(|p| authorization(p, root)) {
                Some(message) => {
                    let entry = Entry::new(&message);
                    if out.authorizations.get(&name) != Some(&entry) {
                        out.authorizations.insert(name, entry);
                    }
                }
                None => drop(out.authorizations.remove(&name)),
            }
        }
        for name in previous.generated_users.keys() {
            if !out.generated_users.contains_key(name) {
                out.authorizations.remove(format!("{root}/{name}").as_str());
            }
        }
        out.put_generated(root, generated);
        let fresh = namespaces(state);
        for name in previous.namespaces.keys() {
            if !fresh.contains_key(name) {
                out.namespaces.remove(name);
            }
        }
        keep_unchanged(&mut out.namespaces, fresh);
        Some(out)
    }

    /// Encodes `workload` at `name`, with the Authorizations it names (generated ones into
    /// `generated`).
    fn put_workload(
        &mut self,
        state: &MeshState,
        workload: &Workload,
        name: Arc<str>,
        root: &str,
        generated: &mut BTreeMap<String, sec::Authorization>,
        digests: &mut super::waypoint::Digests,
    ) {
        let mut uses = Vec::new();
        let policies = policy_names(state, workload, root, generated, &mut uses);
        self.add_users(&uses);
        if !uses.is_empty() {
            self.generated_uses.insert(name.clone(), uses.into());
        }
        let message = workload_message(state, workload, policies);
        let entry = Entry::new(&wl::Address {
            r#type: Some(wl::address::Type::Workload(message)),
        });
        match super::waypoint::binding(state, workload, &self.policies, digests) {
            Some(binding) => self.bindings.insert(name.clone(), binding),
            None => self.bindings.remove(&name),
        };
        self.addresses.insert(name, entry);
    }

    /// Pods whose network is being set up: no address and no service yet, but their identity and
    /// policies, for their node's ztunnel (and it alone) to capture them with the address its CNI
    /// plugin knows. A workload with the same name comes first.
    fn put_pending(
        &mut self,
        state: &MeshState,
        root: &str,
        generated: &mut BTreeMap<String, sec::Authorization>,
    ) {
        let mut all_uses = Vec::new();
        for workload in state.pending() {
            let mut uses = Vec::new();
            let policies = policy_names(state, workload, root, generated, &mut uses);
            all_uses.extend(uses);
            let message = workload_message(state, workload, policies);
            let name = message.uid.clone();
            if self.addresses.contains_key(name.as_str()) {
                continue;
            }
            let mut entry = Entry::new(&wl::Address {
                r#type: Some(wl::address::Type::Workload(message)),
            });
            entry.node = Some((*workload.node).into());
            self.addresses.insert(name.into(), entry);
        }
        self.add_users(&all_uses);
        self.pending_uses = all_uses.into();
    }

    /// Sends the generated Authorizations in `generated` that something names.
    fn put_generated(&mut self, root: &str, generated: BTreeMap<String, sec::Authorization>) {
        for (name, message) in generated {
            if self.generated_users.contains_key(&name) {
                let entry = Entry::new(&message);
                let full: Arc<str> = format!("{root}/{name}").into();
                if self.authorizations.get(&full) != Some(&entry) {
                    self.authorizations.insert(full, entry);
                }
            }
        }
    }

    fn add_users(&mut self, uses: &[String]) {
        for name in uses {
            *self.generated_users.entry(name.clone()).or_default() += 1;
        }
    }

    fn drop_users(&mut self, uses: &[String]) {
        for name in uses {
            if let Some(count) = self.generated_users.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    self.generated_users.remove(name);
                }
            }
        }
    }

    fn insert_address(&mut self, name: &str, kind: wl::address::Type) {
        let entry = Entry::new(&wl::Address { r#type: Some(kind) });
        self.addresses.insert(name.into(), entry);
    }

    /// Makes every entry equal to one of `previous` share its bytes, so that snapshots held at
    /// the same time cost memory only for what differs between them (one walk over both, in
    /// order; entries a patched translation already shares are left alone).
    pub fn share_unchanged(&mut self, previous: &Resources) {
        for kind in Kind::ALL {
            let old = previous.of(kind);
            let new = match kind {
                Kind::Address => &mut self.addresses,
                Kind::Authorization => &mut self.authorizations,
                Kind::Namespace => &mut self.namespaces,
                Kind::Policy => &mut self.policies,
                Kind::Binding => &mut self.bindings,
            };
            let mut equal: Vec<(Arc<str>, Entry)> = Vec::new();
            let mut before = old.iter().peekable();
            for (name, entry) in new.iter() {
                while before.next_if(|(prior, _)| *prior < name).is_some() {}
                if let Some((_, prior)) = before.next_if(|(prior, _)| *prior == name)
                    && prior.version == entry.version
                    && prior.body.as_ptr() != entry.body.as_ptr()
                {
                    equal.push((name.clone(), prior.clone()));
                }
            }
            for (name, prior) in equal {
                if let Some(entry) = new.get_mut(&name) {
                    *entry = prior;
                }
            }
        }
    }

    /// The resources of one kind, by name.
    pub fn of(&self, kind: Kind) -> &ByName {
        match kind {
            Kind::Address => &self.addresses,
            Kind::Authorization => &self.authorizations,
            Kind::Namespace => &self.namespaces,
            Kind::Policy => &self.policies,
            Kind::Binding => &self.bindings,
        }
    }

    /// Whether `identity` is a waypoint's: it may subscribe to what its namespace needs.
    pub fn is_waypoint(&self, identity: &Identity) -> bool {
        self.waypoint_identities.contains(identity)
    }

    /// How many resources of every kind.
    pub fn len(&self) -> usize {
        Kind::ALL.into_iter().map(|k| self.of(k).len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The WORKLOAD_SELECTOR Authorizations that apply to `workload`, by xDS name; generated ones are
/// added to `generated` and their names to `uses`. Namespace-wide and mesh-wide policies apply through their scope.
fn policy_names(
    state: &MeshState,
    workload: &Workload,
    root: &str,
    generated: &mut BTreeMap<String, sec::Authorization>,
    uses: &mut Vec<String>,
) -> Vec<String> {
    if !workload.enrolled {
        return Vec::new();
    }
    let mut use_generated = |name: String, make: &dyn Fn(&str) -> sec::Authorization| {
        generated.entry(name.clone()).or_insert_with(|| make(&name));
        let full = format!("{root}/{name}");
        uses.push(name);
        full
    };
    let deny_all = |name: &str| generated_policy(name, root, vec![sec::Rule { clauses: vec![] }]);
    if !workload.waypoint_conflict().is_empty() {
        return vec![use_generated(DENY_ALL.into(), &deny_all)];
    }
    if let Some(reference) = &workload.waypoint {
        let Some(waypoint) = state.waypoint(reference) else {
            return vec![use_generated(DENY_ALL.into(), &deny_all)];
        };
        let identity = waypoint.identity.clone();
        let name = format!(
            "{WAYPOINT_ONLY_PREFIX}{}.{}",
            reference.namespace, reference.name
        );
        return vec![use_generated(name, &|name| {
            waypoint_only(name, root, &identity)
        })];
    }
    let mut names: Vec<String> = state
        .authz_for(workload)
        .iter()
        .filter(|p| !matches!(p.scope, Scope::Namespace))
        .filter(|p| istio_action(p).is_some())
        .map(|p| p.id.to_string())
        .collect();
    let profile = state.peer_profile(workload);
    if let Some(name) = peer_policy_name(&profile) {
        names.push(use_generated(name, &|name| {
            peer_policy(name, root, &profile)
        }));
    }
    names
}

/// Every deciding policy, by xDS name. One applies to a workload only through its scope or when
/// the workload names it. Policies attached to waypoints, or to Services with one, are named by no
/// workload: the waypoint enforces them, ztunnels hold them inert.
fn policies(state: &MeshState, root: &str) -> ByName {
    state
        .authz_policies()
        .iter()
        .filter_map(|policy| {
            let message = authorization(policy, root)?;
            let name: Arc<str> = format!("{}", policy.id).into();
            Some((name, Entry::new(&message)))
        })
        .collect()
}

/// The enrolled namespaces.
fn namespaces(state: &MeshState) -> ByName {
    state
        .ambient_namespaces()
        .iter()
        .map(|namespace| {
            let message = AmbientNamespace {
                name: namespace.clone(),
            };
            (Arc::from(namespace.as_str()), Entry::new(&message))
        })
        .collect()
}

/// Puts `fresh` into `into`, leaving alone the entries it already has as they are (so that what
/// is unchanged stays shared with the snapshot `into` was copied from).
pub(super) fn keep_unchanged(into: &mut ByName, fresh: ByName) {
    for (name, entry) in fresh {
        if into.get(&name) != Some(&entry) {
            into.insert(name, entry);
        }
    }
}

fn generated_policy(name: &str, root: &str, rules: Vec<sec::Rule>) -> sec::Authorization {
    sec::Authorization {
        name: name.into(),
        namespace: root.into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules,
        dry_run: false,
        extensions: Vec::new(),
    }
}

fn exact(value: &str) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(value.into())),
    }
}

fn presence() -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Presence(())),
    }
}

fn clause(m: sec::Match) -> sec::Clause {
    sec::Clause { matches: vec![m] }
}

/// Denies every peer but the waypoint (plaintext has no identity and is denied too).
fn waypoint_only(name: &str, root: &str, waypoint: &Identity) -> sec::Authorization {
    let rule = sec::Rule {
        clauses: vec![clause(sec::Match {
            not_principals: vec![exact(waypoint.principal())],
            ..Default::default()
        })],
    };
    generated_policy(name, root, vec![rule])
}

fn peer_policy_name(profile: &PeerProfile) -> Option<String> {
    let ports = || {
        profile
            .exceptions
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    match (profile.default, profile.exceptions.is_empty()) {
        (PeerMode::Strict, true) => Some(PEER_STRICT.into()),
        (PeerMode::Strict, false) => Some(format!("{PEER_STRICT}-except:{}", ports())),
        (PeerMode::Permissive, true) => None,
        (PeerMode::Permissive, false) => Some(format!("{PEER_STRICT}-on:{}", ports())),
    }
}

/// Denies plaintext (no principal) on the ports where `profile` is STRICT.
fn peer_policy(name: &str, root: &str, profile: &PeerProfile) -> sec::Authorization {
    let plaintext = clause(sec::Match {
        not_principals: vec![presence()],
        ..Default::default()
    });
    let ports: Vec<u32> = profile.exceptions.iter().map(|p| u32::from(*p)).collect();
    let mut clauses = vec![plaintext];
    match profile.default {
        PeerMode::Strict if !ports.is_empty() => clauses.push(clause(sec::Match {
            not_destination_ports: ports,
            ..Default::default()
        })),
        PeerMode::Strict => {}
        PeerMode::Permissive => clauses.push(clause(sec::Match {
            destination_ports: ports,
            ..Default::default()
        })),
    }
    generated_policy(name, root, vec![sec::Rule { clauses }])
}
