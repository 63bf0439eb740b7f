//! An immutable, indexed snapshot of the mesh. A source builds a new one for every change and
//! publishes it whole, so a connection always sees one consistent view.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::model::{Service, Waypoint, WaypointRef, Workload, selects};
use crate::policy::{
    AuthzPolicy, PeerAuthPolicy, PeerMode, PolicyError, PolicyId, PolicyIndex, Scope, Target,
    resolve_peer_mode,
};

/// Settings every source shares.
#[derive(Clone, Debug)]
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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// The snapshot.
#[derive(Debug, Default)]
pub struct MeshState {
    settings: Option<MeshSettings>,
    workloads: HashMap<String, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: Vec<Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    waypoints: HashMap<WaypointRef, Arc<Waypoint>>,
    authz: PolicyIndex,
    peer_auth: Vec<PeerAuthPolicy>,
    ambient_namespaces: std::collections::BTreeSet<String>,
}

impl MeshState {
    /// Builds and cross-checks a snapshot: unique workload ids and addresses, service addresses that
    /// collide with nothing, unique policy names.
    pub fn build(
        settings: MeshSettings,
        workloads: Vec<Workload>,
        services: Vec<Service>,
        waypoints: Vec<Waypoint>,
        authz: Vec<AuthzPolicy>,
        peer_auth: Vec<PeerAuthPolicy>,
    ) -> Result<Self, ConfigError> {
        let mut state = Self::default();
        let mut waypoint_ips = HashMap::new();
        for waypoint in waypoints {
            let waypoint = Arc::new(waypoint);
            for ip in &waypoint.ips {
                if waypoint_ips.insert(*ip, waypoint.reference()).is_some() {
                    return Err(ConfigError::invalid(
                        format!("waypoint {}", waypoint.reference()),
                        format!("address {ip} is used twice"),
                    ));
                }
            }
            if state
                .waypoints
                .insert(waypoint.reference(), waypoint.clone())
                .is_some()
            {
                return Err(ConfigError::invalid(
                    format!("waypoint {}", waypoint.reference()),
                    "defined twice",
                ));
            }
        }
        for workload in workloads {
            let workload = Arc::new(workload);
            for ip in &workload.ips {
                if let Some(w) = waypoint_ips.get(ip) {
                    return Err(ConfigError::invalid(
                        format!("workload {}", workload.key()),
                        format!("address {ip} is also waypoint {w}"),
                    ));
                }
                if let Some(other) = state.by_ip.insert(*ip, workload.clone()) {
                    return Err(ConfigError::invalid(
                        format!("workload {}", workload.key()),
                        format!("address {ip} is also used by workload {}", other.key()),
                    ));
                }
            }
            if state
                .workloads
                .insert(workload.uid.clone(), workload.clone())
                .is_some()
            {
                return Err(ConfigError::invalid(
                    format!("workload {}", workload.key()),
                    format!("uid {:?} is used twice", workload.uid),
                ));
            }
        }
        for mut service in services {
            service.endpoints = state.selected_by(&service);
            let service = Arc::new(service);
            for vip in &service.vips {
                if let Some(w) = waypoint_ips.get(vip) {
                    return Err(ConfigError::invalid(
                        format!("service {}", service.key()),
                        format!("address {vip} is also waypoint {w}"),
                    ));
                }
                if let Some(w) = state.by_ip.get(vip) {
                    return Err(ConfigError::invalid(
                        format!("service {}", service.key()),
                        format!("address {vip} is also workload {}", w.key()),
                    ));
                }
                if let Some(other) = state.by_vip.insert(*vip, service.clone()) {
                    return Err(ConfigError::invalid(
                        format!("service {}", service.key()),
                        format!("address {vip} is also service {}", other.key()),
                    ));
                }
            }
            state.services.push(service);
        }
        check_unique("AuthorizationPolicy", authz.iter().map(|p| &p.id))?;
        check_unique("PeerAuthentication", peer_auth.iter().map(|p| &p.id))?;
        state.authz = PolicyIndex::new(
            &settings.root_namespace,
            authz.into_iter().map(Arc::new).collect(),
        );
        state.peer_auth = peer_auth;
        state.settings = Some(settings);
        Ok(state)
    }

    fn selected_by(&self, service: &Service) -> Vec<String> {
        let mut uids: Vec<String> = self
            .workloads
            .values()
            .filter(|w| w.namespace == service.namespace && selects(&service.selector, &w.labels))
            .map(|w| w.uid.clone())
            .collect();
        uids.sort();
        uids
    }

    /// Declares which namespaces are in the mesh: their new pods must be captured before they start.
    pub fn with_ambient_namespaces(mut self, namespaces: impl IntoIterator<Item = String>) -> Self {
        self.ambient_namespaces = namespaces.into_iter().collect();
        self
    }

    /// The namespaces in the mesh.
    pub fn ambient_namespaces(&self) -> &std::collections::BTreeSet<String> {
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
        self.workloads.get(uid)
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
            .filter_map(|uid| self.workloads.get(uid).cloned())
            .collect()
    }

    /// The services `workload` is an endpoint of.
    pub fn services_of(&self, workload: &Workload) -> Vec<Arc<Service>> {
        self.services
            .iter()
            .filter(|s| s.endpoints.contains(&workload.uid))
            .cloned()
            .collect()
    }

    /// The workloads on `node`, sorted by uid.
    pub fn workloads_on_node(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut out: Vec<_> = self
            .workloads
            .values()
            .filter(|w| w.node == node)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Every workload, sorted by uid.
    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        let mut out: Vec<_> = self.workloads.values().cloned().collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Every service.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The AuthorizationPolicies that apply to `workload` (computed once per snapshot).
    pub fn authz_for(&self, workload: &Workload) -> Arc<[Arc<AuthzPolicy>]> {
        workload
            .policies
            .get_or_init(|| {
                self.authz
                    .for_workload(&workload.namespace, &workload.labels)
                    .into()
            })
            .clone()
    }

    /// Whether `port` of `workload` accepts plaintext.
    pub fn peer_mode(&self, workload: &Workload, port: u16) -> PeerMode {
        let settings = self.settings();
        resolve_peer_mode(
            &self.peer_auth,
            &settings.root_namespace,
            &workload.namespace,
            &workload.labels,
            port,
        )
    }

    /// Every AuthorizationPolicy.
    pub fn authz_policies(&self) -> &[Arc<AuthzPolicy>] {
        self.authz.all()
    }

    /// The policies attached to a target through `targetRefs`.
    pub fn authz_for_target(&self, namespace: &str, target: &Target) -> Vec<Arc<AuthzPolicy>> {
        self.authz.for_target(namespace, target)
    }

    /// Policies with HTTP attributes that apply to workloads without a waypoint: ztunnel cannot check
    /// those attributes, so they deny whatever they could match.
    pub fn l7_policies_enforced_at_l4(&self) -> Vec<PolicyId> {
        let mut out: Vec<PolicyId> = self
            .workloads
            .values()
            .filter(|w| w.waypoint.is_none())
            .flat_map(|w| self.authz_for(w).iter().cloned().collect::<Vec<_>>())
            .filter(|p| p.uses_l7 && !matches!(p.scope, Scope::Targets(_)))
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

fn check_unique<'a>(
    kind: &str,
    ids: impl Iterator<Item = &'a PolicyId>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(ConfigError::invalid(
                format!("{kind} {id}"),
                "defined twice",
            ));
        }
    }
    Ok(())
}
