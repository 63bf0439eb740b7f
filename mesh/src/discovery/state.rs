//! An immutable, indexed snapshot of the mesh. A source builds a new one for every change and
//! publishes it whole, so a connection always sees one consistent view.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use super::model::{Service, Serving, Waypoint, WaypointRef, Workload};
mod assemble;
mod compare;
mod lists;
#[cfg(feature = "kubernetes")]
mod patching;

pub(crate) use assemble::front_one;
pub(crate) use lists::Lists;
#[cfg(feature = "kubernetes")]
pub(crate) use patching::selected;

use crate::policy::{
    AuthzPolicy, PeerAuthPolicy, PeerMode, PeerProfile, PolicyError, PolicyId, PolicyIndex, Target,
    TelemetryPolicy, TelemetrySettings, peer_profile, resolve_peer_mode, resolve_telemetry,
};

/// Settings every source shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// The trust domain identities are in.
    pub trust_domain: String,
    /// The namespace whose policies apply mesh-wide.
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: "veil-system".into(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// An object is invalid or conflicts with another.
    #[error("{object}: {reason}")]
    Invalid { object: String, reason: String },
    /// A policy cannot be enforced as written.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The input could not be read or parsed.
    #[error("{0}")]
    Parse(String),
}

impl ConfigError {
    pub(crate) fn invalid(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

/// A workload ordered by its uid alone (a node's workloads, sorted without a copy of each uid).
#[derive(Clone, Debug)]
struct ByUid(Arc<Workload>);

impl PartialEq for ByUid {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid == other.0.uid
    }
}

impl Eq for ByUid {}

impl PartialOrd for ByUid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByUid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.uid.cmp(&other.0.uid)
    }
}

// Ordered as the uid is: maps and sets of these are looked up by uid.
impl std::borrow::Borrow<str> for ByUid {
    fn borrow(&self) -> &str {
        &self.0.uid
    }
}

/// A service's key: its namespace and name.
pub(crate) type ServiceKey = (String, String);

/// The snapshot. Its maps are persistent: a clone shares them, so a subscriber can patch a copy
/// for one changed workload in time that does not grow with the mesh (see `xds::store`).
#[derive(Clone, Debug, Default)]
pub struct MeshState {
    settings: Option<MeshSettings>,
    /// Workloads by uid.
    workloads: imbl::OrdSet<ByUid>,
    by_ip: imbl::OrdMap<IpAddr, Arc<Workload>>,
    /// The uids of the workloads on each node.
    by_node: imbl::OrdMap<Arc<str>, imbl::OrdSet<ByUid>>,
    services: imbl::OrdMap<ServiceKey, Arc<Service>>,
    by_vip: imbl::OrdMap<IpAddr, Arc<Service>>,
    waypoints: Arc<HashMap<WaypointRef, Arc<Waypoint>>>,
    authz: Arc<PolicyIndex>,
    peer_auth: Arc<[PeerAuthPolicy]>,
    telemetry: Arc<[TelemetryPolicy]>,
    ambient_namespaces: Arc<BTreeSet<String>>,
    /// Pods scheduled to a node whose network is not set up yet (no address): not part of the
    /// mesh, but described to control-plane subscribers so the node can capture them at once.
    pending: Arc<[Arc<Workload>]>,
    /// The services each workload (by uid) is an endpoint of.
    services_of: imbl::OrdMap<ByUid, Arc<[ServiceKey]>>,
    rejected: Arc<[ConfigError]>,
    /// Received from a control plane in Istio's form (see [`Self::istio_semantics`]).
    istio_semantics: bool,
}

impl MeshState {
    /// Builds and cross-checks a snapshot: unique workload ids and addresses, service addresses that
    /// collide with nothing, unique policy names, one waypoint per workload. The first problem is an
    /// error (for sources that are validated whole, like the local file).
    pub fn build(
        settings: MeshSettings,
        workloads: Vec<Workload>,
        services: Vec<Service>,
        waypoints: Vec<Waypoint>,
        authz: Vec<AuthzPolicy>,
        peer_auth: Vec<PeerAuthPolicy>,
    ) -> Result<Self, ConfigError> {
        let state =
            Self::build_isolating(settings, workloads, services, waypoints, authz, peer_auth);
        match state.rejected.first() {
            Some(e) => Err(e.clone()),
            None => Ok(state),
        }
    }

    /// Builds a snapshot from what is consistent: an object that fails a cross-check is left out
    /// (or, for a workload claimed by several waypoints, kept but unreachable) and listed in
    /// [`Self::rejected`], and the rest of the mesh is built as usual. For sources where one author
    /// must not be able to stop everyone else's updates (Kubernetes).
    pub fn build_isolating(
        settings: MeshSettings,
        workloads: Vec<Workload>,
        services: Vec<Service>,
        waypoints: Vec<Waypoint>,
        authz: Vec<AuthzPolicy>,
        peer_auth: Vec<PeerAuthPolicy>,
    ) -> Self {
        let mut rejected = Vec::new();
        let waypoints = assemble::waypoints(waypoints, &mut rejected);
        let waypoint_ips: HashMap<IpAddr, WaypointRef> = waypoints
            .iter()
            .flat_map(|w| w.ips.iter().map(|ip| (*ip, w.reference())))
            .collect();
        let (mut workloads, workload_ips) =
            assemble::workloads(workloads, &waypoint_ips, &mut rejected);
        let services = assemble::services(
            services,
            &workloads,
            &workload_ips,
            &waypoint_ips,
            &mut rejected,
        );
        assemble::front(&mut workloads, &services, &mut rejected);
        let authz = assemble::unique("AuthorizationPolicy", authz, |p| &p.id, &mut rejected);
        let peer_auth = assemble::unique("PeerAuthentication", peer_auth, |p| &p.id, &mut rejected);

        let mut state = Self {
            waypoints: Arc::new(
                waypoints
                    .into_iter()
                    .map(|w| (w.reference(), Arc::new(w)))
                    .collect(),
            ),
            ..Self::default()
        };
        for workload in workloads {
            state.put_workload(Arc::new(workload));
        }
        let mut services_of: HashMap<Arc<str>, Vec<ServiceKey>> = HashMap::new();
        for service in services {
            let key = (service.namespace.clone(), service.name.clone());
            if state.services.contains_key(&key) {
                rejected.push(ConfigError::invalid(
                    format!("service {}", service.key()),
                    "defined twice; the first definition is used",
                ));
                continue;
            }
            for uid in &service.endpoints {
                services_of
                    .entry(uid.clone())
                    .or_default()
                    .push(key.clone());
            }
            state.put_service(Arc::new(service));
        }
        // Workloads backing the same services (a Deployment's replicas) share one list.
        let mut lists = Lists::default();
        state.services_of = services_of
            .into_iter()
            .filter_map(|(uid, keys)| {
                let workload = state.workloads.get(&*uid)?.clone();
                Some((workload, lists.services(keys)))
            })
            .collect();
        state.authz = Arc::new(PolicyIndex::new(
            &settings.root_namespace,
            authz.into_iter().map(Arc::new).collect(),
        ));
        state.peer_auth = peer_auth.into();
        state.settings = Some(settings);
        state.rejected = rejected.into();
        state
    }

    /// Adds `workload` under its uid, its addresses and its node (replacing what they led to).
    fn put_workload(&mut self, workload: Arc<Workload>) {
        for ip in &workload.ips {
            self.by_ip.insert(*ip, workload.clone());
        }
        self.by_node
            .entry(workload.node.clone())
            .or_default()
            .insert(ByUid(workload.clone()));
        self.workloads.insert(ByUid(workload));
    }

    /// Adds `service` under its key and its addresses (replacing what they led to).
    fn put_service(&mut self, service: Arc<Service>) {
        for vip in &service.vips {
            self.by_vip.insert(*vip, service.clone());
        }
        let key = (service.namespace.clone(), service.name.clone());
        self.services.insert(key, service);
    }

    /// Takes the workload `uid` out: its addresses, its node's list, the services it backs (which
    /// the caller replaces). Returns it.
    pub(crate) fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let workload = self.workloads.remove(uid)?.0;
        for ip in &workload.ips {
            if self
                .by_ip
                .get(ip)
                .is_some_and(|w| Arc::ptr_eq(w, &workload))
            {
                self.by_ip.remove(ip);
            }
        }
        if let Some(uids) = self.by_node.get_mut(&*workload.node) {
            uids.remove(&ByUid(workload.clone()));
            if uids.is_empty() {
                self.by_node.remove(&*workload.node);
            }
        }
        self.services_of.remove(uid);
        Some(workload)
    }

    /// Adds `workload`, an endpoint of the services `services`. Its addresses must be free.
    pub(crate) fn insert_workload(
        &mut self,
        workload: Arc<Workload>,
        services: impl Into<Arc<[ServiceKey]>>,
    ) {
        let services = services.into();
        if !services.is_empty() {
            self.services_of.insert(ByUid(workload.clone()), services);
        }
        self.put_workload(workload);
    }

    /// The lists of services the workloads back, as held (replicas share one).
    pub(crate) fn service_lists(&self) -> impl Iterator<Item = &Arc<[ServiceKey]>> {
        self.services_of.values()
    }

    /// The lists of policies the workloads hold (replicas share one).
    pub(crate) fn policy_lists(&self) -> impl Iterator<Item = &Arc<[Arc<AuthzPolicy>]>> {
        self.workloads
            .iter()
            .filter_map(|ByUid(w)| w.policies.get())
    }

    /// Replaces the service with the same key and addresses as `service`.
    pub(crate) fn replace_service(&mut self, service: Arc<Service>) {
        self.put_service(service);
    }

    /// Takes the service `key` out: its addresses, and its key from the lists of the services its
    /// endpoints back. Returns it.
    pub(crate) fn remove_service(&mut self, key: &ServiceKey) -> Option<Arc<Service>> {
        let service = self.services.remove(key)?;
        for vip in &service.vips {
            if self
                .by_vip
                .get(vip)
                .is_some_and(|s| Arc::ptr_eq(s, &service))
            {
                self.by_vip.remove(vip);
            }
        }
        for uid in &service.endpoints {
            let Some((workload, keys)) = self.services_of.get_key_value(&**uid) else {
                continue;
            };
            let rest: Vec<ServiceKey> = keys.iter().filter(|k| *k != key).cloned().collect();
            let workload = workload.clone();
            if rest.is_empty() {
                self.services_of.remove(&workload);
            } else {
                self.services_of.insert(workload, rest.into());
            }
        }
        Some(service)
    }

    /// The service `key`, if in the mesh.
    pub(crate) fn service_by_key(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The namespaces in the mesh, to change.
    pub(crate) fn ambient_namespaces_mut(&mut self) -> &mut BTreeSet<String> {
        Arc::make_mut(&mut self.ambient_namespaces)
    }

    /// Puts `namespace` in the mesh's namespaces (`ambient`) or takes it out; the set is copied
    /// only when that changes it.
    pub(crate) fn set_ambient(&mut self, namespace: &str, ambient: bool) {
        if self.ambient_namespaces.contains(namespace) == ambient {
            return;
        }
        let set = self.ambient_namespaces_mut();
        if ambient {
            set.insert(namespace.to_owned());
        } else {
            set.remove(namespace);
        }
    }

    /// Replaces the AuthorizationPolicies: those `keep` refuses are taken out, `new` put in (the
    /// index of them is made anew: its order, and so every decision, is as a whole build's).
    pub(crate) fn replace_policies(
        &mut self,
        keep: impl Fn(&AuthzPolicy) -> bool,
        new: impl IntoIterator<Item = Arc<AuthzPolicy>>,
    ) {
        let root = self.settings().root_namespace;
        let all: Vec<Arc<AuthzPolicy>> = self
            .authz
            .all()
            .iter()
            .filter(|p| keep(p))
            .cloned()
            .chain(new)
            .collect();
        self.authz = Arc::new(PolicyIndex::new(&root, all));
    }

    /// The keys of the services `workload` is an endpoint of.
    pub(crate) fn service_keys_of(&self, workload: &Workload) -> &[ServiceKey] {
        self.service_keys_of_uid(&workload.uid)
    }

    /// The keys of the services the workload (or pod being set up) `uid` is an endpoint of.
    pub(crate) fn service_keys_of_uid(&self, uid: &str) -> &[ServiceKey] {
        self.services_of.get(uid).map_or(&[], |keys| &keys[..])
    }

    /// The objects left out of this snapshot (or kept but unreachable), and why.
    pub fn rejected(&self) -> &[ConfigError] {
        &self.rejected
    }

    /// Marks a snapshot received from a control plane: the policies each workload is to be
    /// checked against are given by `policies` (the control plane selected them). With
    /// `istio_semantics` (a ztunnel's, in Istio's form) PeerAuthentication arrives as
    /// Authorizations that refuse plaintext (so every port's own mode is PERMISSIVE and those
    /// policies decide), and a workload's Authorizations also apply to the tunnels its waypoint
    /// opens to it, as in Istio's ztunnel; without (a waypoint's, policies as written) neither.
    pub(crate) fn with_received_policies(
        mut self,
        all: Vec<Arc<AuthzPolicy>>,
        policies: impl Fn(&Workload) -> Arc<[Arc<AuthzPolicy>]>,
        rejected: Vec<ConfigError>,
        istio_semantics: bool,
    ) -> Self {
        let root = self.settings().root_namespace;
        self.authz = Arc::new(PolicyIndex::new(&root, all));
        // Workloads with the same policies (a Deployment's replicas, a namespace's pods) share
        // one list of them.
        let mut lists = Lists::default();
        for ByUid(workload) in &self.workloads {
            // Fresh workloads: nothing has read their policies yet.
            let _ = workload.policies.set(lists.policies(policies(workload)));
        }
        self.istio_semantics = istio_semantics;
        self.rejected = self.rejected.iter().cloned().chain(rejected).collect();
        self
    }

    /// Whether this snapshot came from a control plane in Istio's form: PeerAuthentication is
    /// expressed in the Authorizations, and those a workload names also apply to its waypoint's
    /// tunnels.
    pub fn istio_semantics(&self) -> bool {
        self.istio_semantics
    }

    /// Sets the Telemetry objects (two of one name: the first is kept, the second reported).
    pub fn with_telemetry(mut self, telemetry: Vec<TelemetryPolicy>) -> Self {
        let mut rejected = self.rejected.to_vec();
        let telemetry = assemble::unique("Telemetry", telemetry, |p| &p.id, &mut rejected);
        self.rejected = rejected.into();
        self.telemetry = telemetry.into();
        self
    }

    /// Every Telemetry object.
    pub fn telemetry_policies(&self) -> &[TelemetryPolicy] {
        &self.telemetry
    }

    /// What the proxies may record about `workload`'s traffic: as its control plane resolved it,
    /// else from the Telemetry objects that select it. Empty: the proxies' own settings.
    pub fn telemetry_for(&self, workload: &Workload) -> TelemetrySettings {
        if let Some(resolved) = &workload.telemetry {
            return (**resolved).clone();
        }
        if self.telemetry.is_empty() {
            return TelemetrySettings::default();
        }
        resolve_telemetry(
            &self.telemetry,
            &self.settings().root_namespace,
            &workload.namespace,
            &workload.labels,
        )
    }

    /// Declares which namespaces are in the mesh: their new pods must be captured before they start.
    pub fn with_ambient_namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Self {
        self.ambient_namespaces = Arc::new(namespaces.into_iter().collect());
        self
    }

    /// Declares the pods that are scheduled but have no address yet (see [`Self::pending`]). Call
    /// once the services are in: a pod is judged as the services that select it will make it
    /// (their waypoint in front, the policies attached to them), though it is no endpoint yet.
    pub fn with_pending(mut self, pending: impl IntoIterator<Item = Workload>) -> Self {
        let out: Vec<Arc<Workload>> = pending
            .into_iter()
            .map(|workload| self.judge_pending(workload))
            .collect();
        self.pending = out.into();
        self
    }

    /// `workload`, a pod being set up, judged as the services that select it will make it (their
    /// waypoint) and listed as backing them.
    fn judge_pending(&mut self, mut workload: Workload) -> Arc<Workload> {
        let services = self.services_selecting(&workload.namespace, &workload.labels);
        // A conflict is reported once the pod runs; until then it only admits nothing.
        let _ = assemble::front_one(
            &mut workload,
            services.iter().filter_map(|s| s.waypoint.as_ref()),
        );
        let workload = Arc::new(workload);
        if !services.is_empty() {
            let keys: Vec<ServiceKey> = services
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone()))
                .collect();
            self.services_of
                .insert(ByUid(workload.clone()), keys.into());
        }
        workload
    }

    /// The services of `namespace` whose selector `labels` match.
    pub(crate) fn services_selecting(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<Arc<Service>> {
        // Keyed by namespace first: the namespace's services are one range of the map.
        self.services
            .range((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, s)| s)
            .filter(|s| !s.selector.is_empty() && super::model::selects(&s.selector, labels))
            .cloned()
            .collect()
    }

    /// Pods scheduled to a node whose network is not set up yet: everything a workload has but an
    /// address. They take no part in the mesh (nothing can reach them); a control plane describes
    /// them to its subscribers so that the node's ztunnel knows a new pod's identity and policies
    /// when the CNI plugin hands it the pod's address, before the API lists that address.
    pub fn pending(&self) -> &[Arc<Workload>] {
        &self.pending
    }

    /// The namespaces in the mesh.
    pub fn ambient_namespaces(&self) -> &BTreeSet<String> {
        &self.ambient_namespaces
    }

    /// The settings it was built with.
    pub fn settings(&self) -> MeshSettings {
        self.settings.clone().unwrap_or_default()
    }

    /// The workload with address `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    /// The workload with `uid`.
    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid).map(|w| &w.0)
    }

    /// The service with virtual address `ip`.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)
    }

    /// The waypoint `reference` names, if it exists. Traffic bound to a missing waypoint fails.
    pub fn waypoint(&self, reference: &WaypointRef) -> Option<&Arc<Waypoint>> {
        self.waypoints.get(reference)
    }

    /// Every waypoint, sorted.
    pub fn waypoints(&self) -> Vec<Arc<Waypoint>> {
        let mut out: Vec<_> = self.waypoints.values().cloned().collect();
        out.sort_by_key(|w| w.reference());
        out
    }

    /// The workloads behind `service`, in a stable order.
    pub fn endpoints(&self, service: &Service) -> Vec<Arc<Workload>> {
        service
            .endpoints
            .iter()
            .filter_map(|uid| self.workloads.get(&**uid).map(|w| w.0.clone()))
            .collect()
    }

    /// The endpoints of `service` that take new connections: those ready; when none is, those
    /// being deleted that are still ready (draining), as kube-proxy falls back to terminating
    /// endpoints that still serve; never one that is not ready. In a stable order.
    pub fn serving_endpoints(&self, service: &Service) -> Vec<Arc<Workload>> {
        let mut endpoints = self.endpoints(service);
        let wanted = if endpoints.iter().any(|w| w.serving == Serving::Ready) {
            Serving::Ready
        } else {
            Serving::Terminating
        };
        endpoints.retain(|w| w.serving == wanted);
        endpoints
    }

    /// The [serving endpoints](Self::serving_endpoints) of `service` with their address of
    /// `family`'s family and `port`: where a connection to the service may go. Endpoints without
    /// such an address are left out.
    pub fn serving_addresses(
        &self,
        service: &Service,
        family: IpAddr,
        port: u16,
    ) -> Vec<(Arc<Workload>, SocketAddr)> {
        self.serving_endpoints(service)
            .into_iter()
            .filter_map(|w| {
                let ip = w
                    .ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == family.is_ipv4())?;
                Some((w, SocketAddr::new(ip, port)))
            })
            .collect()
    }

    /// The services `workload` is an endpoint of.
    pub fn services_of(&self, workload: &Workload) -> Vec<Arc<Service>> {
        self.services_of
            .get(&*workload.uid)
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|key| self.services.get(key).cloned())
            .collect()
    }

    /// The workloads on `node`, sorted by uid.
    pub fn workloads_on_node(&self, node: &str) -> Vec<Arc<Workload>> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(|w| w.0.clone())
            .collect()
    }

    /// Every workload, sorted by uid.
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        self.workloads_by_uid().cloned().collect()
    }

    /// Every workload, in the order of their uids, without a copy of the list.
    pub(crate) fn workloads_by_uid(&self) -> impl Iterator<Item = &Arc<Workload>> + '_ {
        self.workloads.iter().map(|w| &w.0)
    }

    /// Every service, by namespace and name.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Arc<Service>> + '_ {
        self.services.values()
    }

    /// The AuthorizationPolicies that apply to `workload` (computed once per snapshot): those that
    /// select it, and those attached to a Service it backs that has no waypoint. Nothing would
    /// enforce the latter per request, so its pods' ztunnels enforce them at L4, where their HTTP
    /// conditions deny whatever they could match: fail closed, never a silent no-op.
    pub fn authz_for(&self, workload: &Workload) -> Arc<[Arc<AuthzPolicy>]> {
        workload
            .policies
            .get_or_init(|| {
                let mut out = self
                    .authz
                    .for_workload(&workload.namespace, &workload.labels);
                for service in self.services_of(workload) {
                    if service.waypoint.is_some() {
                        continue;
                    }
                    let target = Target::Service(service.name.clone());
                    for policy in self.authz.for_target(&service.namespace, &target) {
                        if !out.iter().any(|p| Arc::ptr_eq(p, &policy)) {
                            out.push(policy);
                        }
                    }
                }
                out.sort_by(|a, b| a.id.cmp(&b.id));
                out.into()
            })
            .clone()
    }

    /// The Service `namespace/name`, if it is in the mesh.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Whether `port` of `workload` accepts plaintext.
    pub fn peer_mode(&self, workload: &Workload, port: u16) -> PeerMode {
        if self.istio_semantics {
            return PeerMode::Permissive;
        }
        let settings = self.settings();
        resolve_peer_mode(
            &self.peer_auth,
            &settings.root_namespace,
            &workload.namespace,
            &workload.labels,
            port,
        )
    }

    /// What every port of `workload` accepts.
    pub fn peer_profile(&self, workload: &Workload) -> PeerProfile {
        if self.istio_semantics {
            return PeerProfile {
                default: PeerMode::Permissive,
                exceptions: Vec::new(),
            };
        }
        let settings = self.settings();
        peer_profile(
            &self.peer_auth,
            &settings.root_namespace,
            &workload.namespace,
            &workload.labels,
        )
    }

    /// Every PeerAuthentication.
    pub fn peer_auth_policies(&self) -> &[PeerAuthPolicy] {
        &self.peer_auth
    }

    /// Every AuthorizationPolicy.
    pub fn authz_policies(&self) -> &[Arc<AuthzPolicy>] {
        self.authz.all()
    }

    /// The policies attached to a target through `targetRefs`.
    pub fn authz_for_target(&self, namespace: &str, target: &Target) -> Vec<Arc<AuthzPolicy>> {
        self.authz.for_target(namespace, target)
    }

    /// Policies with HTTP attributes that apply to workloads without a waypoint (selected, or attached
    /// to a Service without one): ztunnel cannot check those attributes, so they deny whatever they
    /// could match.
    pub fn l7_policies_enforced_at_l4(&self) -> Vec<PolicyId> {
        // Most meshes have none: no pass over every workload then.
        if !self.authz.all().iter().any(|p| p.uses_l7) {
            return Vec::new();
        }
        let mut out: Vec<PolicyId> = self
            .workloads
            .iter()
            .map(|w| &w.0)
            .filter(|w| w.waypoint.is_none())
            .flat_map(|w| self.authz_for(w).iter().cloned().collect::<Vec<_>>())
            // Only policies ztunnel enforces are here: gateway-attached ones never, service-attached
            // ones when the service has no waypoint.
            .filter(|p| p.uses_l7)
            .map(|p| p.id.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Counts, for logs.
    pub fn summary(&self) -> Summary {
        Summary {
            workloads: self.workloads.len(),
            services: self.services.len(),
            waypoints: self.waypoints.len(),
            authorization_policies: self.authz.all().len(),
            peer_authentications: self.peer_auth.len(),
        }
    }
}

/// How much a snapshot holds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Summary {
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

#[cfg(test)]
mod tests;
