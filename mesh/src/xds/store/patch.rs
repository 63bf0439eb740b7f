//! Patching the last mesh for changed workloads, in time that does not grow with the mesh.
//!
//! In a cluster almost every change is one pod: started, readied, moved, gone. Building the whole
//! mesh again for each costs a subscriber time in proportion to the cluster (most of a second at
//! 100,000 pods) on every node. The mesh's maps are persistent, so a copy of the last one is
//! patched instead: the workload taken out and put back, the services it backs recomputed.
//!
//! A patch must give exactly the mesh a whole build would. Where a change reaches further than
//! the workload and its services, it is not patched and the mesh is built whole:
//!
//! - a resource was refused (what stands in for it is decided over everything), or the
//!   subscriber is a waypoint's (its policies are checked as written);
//! - a service is added, removed, or given other addresses, another name or another waypoint (it
//!   is taken out and put back, and the workloads that back it are patched as changed) where a
//!   service left out of the mesh claims an address or the name it frees (that one would come
//!   in); or it is a waypoint's (or named as one), claims an address or a name already taken (by
//!   anything, in the mesh or left out of it), names a waypoint not in the mesh, was the last to
//!   name its waypoint, or is backed by more than [`patch_at_most`] workloads;
//! - an Authorization is mesh-wide (as it was or is), was named before it arrived or is named but
//!   removed (those are reported missing), or reaches more than [`patch_at_most`] workloads (those
//!   that name it and, for a namespace-wide one, those of its namespace: each is patched as
//!   changed, its policies gathered anew);
//! - an address involved is contested (two workloads claim it: who holds it depends on every
//!   claim), a service's, or a waypoint's;
//! - the workload is a waypoint's instance, backs a service that is a waypoint, names a waypoint
//!   not named before, or names an Authorization not received;
//! - it is, or would be, behind several waypoints, or backs a service whose ports depend on
//!   endpoints that disagree (those are reported, and a report covers the whole mesh).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use tracing::debug;

use super::changes::patch_at_most;
use super::entries::{AddressEntry, Gateway, Named, ServiceEntry, WorkloadEntry};
use super::{Received, Store, target_port};
use crate::discovery::{Lists, ServiceKey};
use crate::discovery::{MeshState, Service, ServicePort, WaypointRef, Workload};
use crate::policy::{AuthzPolicy, Scope};

/// What the last mesh built whole knew beyond the mesh itself.
#[derive(Debug)]
pub(super) struct Derived {
    /// The mesh as last published.
    pub(super) state: MeshState,
    /// Addresses no patch may take or free: contested, a service's, a waypoint's.
    pub(super) reserved: HashSet<IpAddr>,
    /// Services (xDS names) that are waypoints: their endpoints are the waypoint's instances.
    pub(super) gateway_services: HashSet<String>,
    /// The waypoint each gateway named turned out to be.
    pub(super) references: HashMap<Gateway, WaypointRef>,
    /// How many workloads in the mesh and services name each gateway: a waypoint is in the mesh
    /// (or reported missing) while anything names it.
    pub(super) gateway_users: HashMap<Gateway, usize>,
    /// Workloads (uids) that are waypoint instances.
    pub(super) instances: HashSet<String>,
    /// Services (xDS names) with a port left out (its endpoints disagree on the target port), or
    /// whose namespace and name another service has too.
    pub(super) unpatchable_services: HashSet<String>,
    /// Of `reserved`, those held for another reason than being a service's address: contested by
    /// workloads, named as a waypoint, a waypoint's.
    pub(super) held_otherwise: HashSet<IpAddr>,
    /// The addresses and names (namespace and name) of services left out because an address or
    /// their name is another's.
    pub(super) left_out_vips: HashSet<IpAddr>,
    pub(super) left_out_names: HashSet<ServiceKey>,
    /// Workloads (uids) left out because an address of theirs is another's.
    pub(super) left_out: HashSet<String>,
    /// The Authorizations for every workload, and for every workload of a namespace.
    pub(super) mesh_wide: Vec<Arc<AuthzPolicy>>,
    pub(super) by_namespace: HashMap<String, Vec<Arc<AuthzPolicy>>>,
    /// The workloads with an address (uids) that back each service (xDS name).
    pub(super) backing: HashMap<String, BTreeSet<Arc<str>>>,
    /// How many enrolled workloads each namespace has in the mesh.
    pub(super) enrolled: HashMap<String, usize>,
    /// The lists workloads hold alike, one copy of each.
    pub(super) lists: Lists,
}

/// A change a patch does not follow, and why.
struct Whole(&'static str);

impl Store {
    /// The mesh patched for what changed since the last one was made, when a patch can follow
    /// every change (see the module's documentation); else `None`, and the next mesh must be
    /// built whole ([`Self::build_whole`]).
    pub fn patch(&mut self) -> Option<MeshState> {
        let changes = std::mem::take(&mut self.changes);
        let mut derived = self.derived.take()?;
        let count = changes.workloads.len() + changes.services.len() + changes.readdressed.len();
        let at_most = patch_at_most(derived.state.summary().workloads);
        if changes.whole || self.waypoint.is_some() || count > at_most {
            return None;
        }
        let mut next = derived.state.clone();
        let mut workloads = changes.workloads;
        let mut affected: BTreeSet<String> = BTreeSet::new();
        if !changes.readdressed.is_empty() {
            if let Err(Whole(why)) = self.readdress_services(
                &mut derived,
                &mut next,
                &changes.readdressed,
                &mut workloads,
                &mut affected,
            ) {
                debug!(why, "the mesh is built whole");
                return None;
            }
            if workloads.len() + changes.services.len() > at_most {
                return None;
            }
        }
        if !changes.authorizations.is_empty() {
            if let Err(Whole(why)) = self.patch_authorizations(
                &mut derived,
                &mut next,
                &changes.authorizations,
                &mut workloads,
            ) {
                debug!(why, "the mesh is built whole");
                return None;
            }
            if workloads.len() + changes.services.len() > at_most {
                return None;
            }
        }
        for (uid, before) in &workloads {
            if let Err(Whole(why)) = self.patch_workload(
                &mut derived,
                &mut next,
                uid,
                before.as_deref(),
                &mut affected,
            ) {
                debug!(workload = %uid, why, "the mesh is built whole");
                return None;
            }
        }
        for key in &changes.services {
            if derived.gateway_services.contains(key) {
                debug!(service = %key, "a waypoint's service: the mesh is built whole");
                return None;
            }
            affected.insert(key.clone());
        }
        for key in &affected {
            if let Err(Whole(why)) = self.patch_service(&derived, &mut next, key) {
                debug!(service = %key, why, "the mesh is built whole");
                return None;
            }
        }
        // A namespace is in the mesh while it is enrolled or has an enrolled workload.
        for namespace in &changes.namespaces {
            let ambient = self.namespaces.contains_key(namespace.as_str())
                || derived.enrolled.contains_key(namespace.as_str());
            next.set_ambient(namespace, ambient);
        }
        derived.state = next.clone();
        self.derived = Some(derived);
        Some(next)
    }

    fn patch_workload(
        &self,
        derived: &mut Derived,
        next: &mut MeshState,
        uid: &str,
        before: Option<&WorkloadEntry>,
        affected: &mut BTreeSet<String>,
    ) -> Result<(), Whole> {
        // What it was.
        let old = next.workload(uid).cloned();
        if derived.instances.contains(uid) || derived.left_out.contains(uid) {
            return Err(Whole(
                "a waypoint instance, or left out for an address another has",
            ));
        }
        if let Some(old) = &old {
            let reserved = old.ips.iter().any(|ip| derived.reserved.contains(ip));
            if reserved || !old.waypoint_conflict().is_empty() || before.is_none() {
                return Err(Whole(
                    "an address of it is reserved, or it is behind several waypoints",
                ));
            }
        }
        // What it is.
        let current = match self.addresses.get(uid) {
            None => None,
            Some(Received {
                entry: Some(AddressEntry::Workload(w)),
                refused: None,
                ..
            }) => Some(&**w),
            Some(_) => return Err(Whole("quarantined")),
        };
        // A missing Authorization it named is reported while a workload in the mesh names it.
        let names_missing = |w: &WorkloadEntry| {
            w.policies
                .iter()
                .any(|p| !self.authorizations.contains_key(&**p))
        };
        let ips = current.map(|w| self.addresses_of(w)).unwrap_or_default();
        if let Some(w) = current {
            for ip in &ips {
                let taken = next.workload_by_ip(*ip).is_some_and(|o| &*o.uid != uid);
                if taken || derived.reserved.contains(ip) {
                    return Err(Whole("an address it claims is taken or contested"));
                }
            }
            let gateway_known = w
                .waypoint
                .as_deref()
                .is_none_or(|g| derived.references.contains_key(g));
            if !gateway_known || names_missing(w) {
                return Err(Whole("it names a waypoint or an Authorization not known"));
            }
        }
        let backs_gateway = |w: &WorkloadEntry| {
            w.services
                .keys()
                .any(|k| derived.gateway_services.contains(k))
        };
        if before.is_some_and(backs_gateway) || current.is_some_and(backs_gateway) {
            return Err(Whole("it backs a waypoint"));
        }
        if old.is_some() && before.is_some_and(names_missing) {
            return Err(Whole("it named an Authorization not received"));
        }
        // The last one to name a waypoint takes it out of the mesh.
        let last_user = |w: &WorkloadEntry| {
            w.waypoint
                .as_deref()
                .is_some_and(|g| derived.gateway_users.get(g).is_none_or(|n| *n <= 1))
        };
        if old.is_some() && before.is_some_and(last_user) {
            return Err(Whole("it was the last to name its waypoint"));
        }

        // Out with the old.
        if let (Some(old), Some(before)) = (next.remove_workload(uid), before) {
            if let Some(users) = before
                .waypoint
                .as_deref()
                .and_then(|g| derived.gateway_users.get_mut(g))
            {
                *users -= 1;
            }
            for key in before.services.keys() {
                if let Some(uids) = derived.backing.get_mut(key) {
                    uids.remove(uid);
                    if uids.is_empty() {
                        derived.backing.remove(key);
                    }
                }
                affected.insert(key.to_owned());
            }
            if old.enrolled {
                self.unenrol(derived, next, &old.namespace);
            }
        }
        // In with the new.
        let Some(w) = current.filter(|_| !ips.is_empty()) else {
            return Ok(()); // gone, or not in the mesh until it has an address
        };
        if let Some(users) = w
            .waypoint
            .as_deref()
            .and_then(|g| derived.gateway_users.get_mut(g))
        {
            *users += 1;
        }
        // The uid as the store holds it, shared by the mesh's copy.
        let shared_uid: Arc<str> = self
            .addresses
            .get_key_value(uid)
            .map_or_else(|| uid.into(), |(key, _)| key.clone());
        for key in w.services.keys() {
            derived
                .backing
                .entry(key.to_owned())
                .or_default()
                .insert(shared_uid.clone());
            affected.insert(key.to_owned());
        }
        let mut workload = Workload {
            uid: shared_uid,
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            node: w.node.clone(),
            ips,
            labels: Default::default(),
            naming: w.naming.clone(),
            netns: None,
            enrolled: w.enrolled,
            serving: w.serving,
            identity: w.identity.clone(),
            waypoint: w.waypoint.as_deref().map(|g| derived.references[g].clone()),
            waypoint_conflict: Vec::new(),
            telemetry: w.telemetry.clone(),
            policies: Default::default(),
        };
        // The services it backs (ready or not), and the waypoints they put in front.
        let mut backed = Vec::new();
        for key in w.services.keys() {
            let Some(Received {
                entry: Some(AddressEntry::Service(s)),
                ..
            }) = self.addresses.get(key)
            else {
                continue;
            };
            let Some(service) = next.service_by_key(&(s.namespace.clone(), s.name.clone())) else {
                continue;
            };
            backed.push((&s.namespace, &s.hostname, service.clone()));
        }
        // In the order a whole build lists them: by namespace and hostname.
        backed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let fronting: Vec<WaypointRef> = backed
            .iter()
            .filter_map(|(_, _, service)| service.waypoint.clone())
            .collect();
        let services: Vec<ServiceKey> = backed
            .iter()
            .map(|(_, _, service)| (service.namespace.clone(), service.name.clone()))
            .collect();
        if crate::discovery::front_one(&mut workload, fronting.iter()).is_some() {
            return Err(Whole("behind several waypoints")); // a conflict to report
        }
        let mut policies = Vec::new();
        let root = &self.settings.root_namespace;
        if !super::left_to_its_waypoint(root, workload.waypoint.is_some(), &w.policies) {
            policies.extend(derived.mesh_wide.iter().cloned());
            policies.extend(
                derived
                    .by_namespace
                    .get(&*w.namespace)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        policies.extend(
            w.policies
                .iter()
                .filter_map(|p| self.authorizations.get(&**p))
                .map(|p| p.policy.clone()),
        );
        let policies = derived.lists.policies(super::gather(policies));
        let _ = workload.policies.set(policies);
        if workload.enrolled {
            let count = derived.enrolled.entry(w.namespace.to_string()).or_default();
            *count += 1;
            if *count == 1 {
                next.ambient_namespaces_mut()
                    .insert(w.namespace.to_string());
            }
        }
        let services = derived.lists.services(services);
        next.insert_workload(Arc::new(workload), services);
        Ok(())
    }

    /// Puts the changed Authorizations (`changed`: each as it was) in place of what they were,
    /// and adds to `workloads` those in the mesh whose policies they reach: that name one, or, for
    /// a namespace-wide one (as it was or is), of its namespace. Those are patched as changed
    /// ([`Self::patch_workload`]: their policies gathered anew).
    fn patch_authorizations(
        &self,
        derived: &mut Derived,
        next: &mut MeshState,
        changed: &HashMap<String, Option<Arc<AuthzPolicy>>>,
        workloads: &mut HashMap<String, Option<Box<WorkloadEntry>>>,
    ) -> Result<(), Whole> {
        let mut namespaces: HashSet<&str> = HashSet::new();
        for (name, before) in changed {
            let now = self.authorizations.get(name).map(|p| &p.policy);
            for policy in before.iter().chain(now) {
                match policy.scope {
                    Scope::Mesh => return Err(Whole("a mesh-wide Authorization")),
                    Scope::Namespace => drop(namespaces.insert(&policy.id.namespace)),
                    _ => {}
                }
            }
            if let Some(before) = before.as_ref().filter(|b| b.scope == Scope::Namespace)
                && let Some(list) = derived.by_namespace.get_mut(&*before.id.namespace)
            {
                list.retain(|p| !Arc::ptr_eq(p, before));
                if list.is_empty() {
                    derived.by_namespace.remove(&*before.id.namespace);
                }
            }
            if let Some(now) = now.filter(|n| n.scope == Scope::Namespace) {
                derived
                    .by_namespace
                    .entry(now.id.namespace.to_string())
                    .or_default()
                    .push(now.clone());
            }
        }
        // Most changes are one Authorization: compared by hand, not hashed, on the walk below.
        let is_changed = |name: &str| -> bool {
            if changed.len() <= 4 {
                changed.keys().any(|k| k == name)
            } else {
                changed.contains_key(name)
            }
        };
        // One that arrived was reported missing if a workload named it when the mesh was last
        // made.
        let arrived_named = |w: &WorkloadEntry| -> bool {
            w.policies
                .iter()
                .any(|p| is_changed(p) && matches!(changed.get(&**p), Some(None)))
        };
        // Those changed or gone since: their entries then are in `workloads`, and they are
        // patched whatever they name now.
        if workloads.values().flatten().any(|b| arrived_named(b)) {
            return Err(Whole("an Authorization named before it arrived"));
        }
        // The others, as they were and are: those the changes reach.
        for (uid, received) in &self.addresses {
            let Some(AddressEntry::Workload(w)) = &received.entry else {
                continue;
            };
            let reached = w.policies.iter().any(|p| is_changed(p))
                || (!namespaces.is_empty() && namespaces.contains(&*w.namespace));
            if !reached
                || workloads.contains_key(&**uid)
                || received.refused.is_some()
                || next.workload(uid).is_none()
            {
                continue; // patched anyway, judged by what stands in for it, or not in the mesh
            }
            if arrived_named(w) {
                // Reported missing, and stood in for.
                return Err(Whole("an Authorization named before it arrived"));
            }
            if w.policies
                .iter()
                .any(|p| is_changed(p) && !self.authorizations.contains_key(&**p))
            {
                // To be reported missing.
                return Err(Whole("an Authorization named but removed"));
            }
            workloads.insert(uid.to_string(), Some(Box::new((**w).clone())));
            if workloads.len() > patch_at_most(derived.state.summary().workloads) {
                return Err(Whole("too many workloads reached"));
            }
        }
        next.replace_policies(
            |p| {
                !changed
                    .values()
                    .flatten()
                    .any(|before| std::ptr::eq(p, &**before))
            },
            changed
                .keys()
                .filter_map(|name| self.authorizations.get(name))
                .map(|p| p.policy.clone()),
        );
        Ok(())
    }

    /// Takes the services added, removed or readdressed (`changed`: each as it was) out of the
    /// mesh and puts them back as they are, and adds to `workloads` those that back them: patched
    /// as changed, the services they list and the waypoints in front of them follow. Their ports
    /// and endpoints are recomputed with the others' (`affected`).
    fn readdress_services(
        &self,
        derived: &mut Derived,
        next: &mut MeshState,
        changed: &HashMap<String, Option<Box<ServiceEntry>>>,
        workloads: &mut HashMap<String, Option<Box<WorkloadEntry>>>,
        affected: &mut BTreeSet<String>,
    ) -> Result<(), Whole> {
        if changed.keys().any(|key| workloads.contains_key(key)) {
            return Err(Whole("a name both a workload's and a service's"));
        }
        // Out with what they were (all first: one may take an address another frees).
        for (key, before) in changed {
            if derived.gateway_services.contains(key) || derived.unpatchable_services.contains(key)
            {
                return Err(Whole(
                    "a waypoint's service, or one with ports or a name in question",
                ));
            }
            let Some(before) = before else {
                continue;
            };
            if let Some(gateway) = &before.waypoint {
                match derived.gateway_users.get_mut(gateway) {
                    Some(users) if *users > 1 => *users -= 1,
                    _ => return Err(Whole("the last to name its waypoint")),
                }
            }
            // Taking it out frees its addresses (but those held otherwise, as by a workload left
            // out that claims one too), unless a service left out claims one or its name too (it
            // would come in).
            let mesh_key = (before.namespace.clone(), before.name.clone());
            if before
                .vips
                .iter()
                .any(|vip| derived.left_out_vips.contains(vip))
                || derived.left_out_names.contains(&mesh_key)
            {
                return Err(Whole(
                    "a service left out claims an address or the name it frees",
                ));
            }
            if next
                .remove_service(&mesh_key)
                .is_none_or(|s| s.vips != before.vips)
            {
                return Err(Whole("a service not in the mesh"));
            }
            for vip in &before.vips {
                if !derived.held_otherwise.contains(vip) {
                    derived.reserved.remove(vip);
                }
            }
        }
        // In with what they are.
        for key in changed.keys() {
            let s = match self.addresses.get(key.as_str()) {
                None => None,
                Some(Received {
                    entry: Some(AddressEntry::Service(s)),
                    refused: None,
                    ..
                }) => Some(s),
                Some(_) => return Err(Whole("quarantined")),
            };
            if let Some(s) = s {
                // (One named as a waypoint is in `gateway_services` by its hostname, above, or
                // claims an address named as one: reserved.)
                let taken = s.vips.iter().any(|vip| {
                    derived.reserved.contains(vip)
                        || next.workload_by_ip(*vip).is_some()
                        || next.service_by_vip(*vip).is_some()
                });
                let mesh_key = (s.namespace.clone(), s.name.clone());
                let named = next.service_by_key(&mesh_key).is_some()
                    || derived.left_out_names.contains(&mesh_key);
                if taken || named {
                    return Err(Whole("an address or a name it claims is taken"));
                }
                let waypoint = match &s.waypoint {
                    None => None,
                    Some(gateway) => {
                        let Some(users) = derived.gateway_users.get_mut(gateway) else {
                            return Err(Whole("it names a waypoint not known"));
                        };
                        *users += 1;
                        Some(derived.references[gateway].clone())
                    }
                };
                derived.reserved.extend(s.vips.iter().copied());
                // Its ports and endpoints: recomputed below, with the workloads that back it.
                next.replace_service(Arc::new(Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    vips: s.vips.clone(),
                    ports: Vec::new(),
                    udp_ports: Vec::new(),
                    selector: Default::default(),
                    endpoints: Vec::new(),
                    waypoint,
                }));
            }
            affected.insert(key.clone());
            for uid in derived.backing.get(key).into_iter().flatten() {
                if workloads.contains_key(&**uid) {
                    continue; // patched anyway
                }
                let Some(Received {
                    entry: Some(AddressEntry::Workload(w)),
                    refused: None,
                    ..
                }) = self.addresses.get(&**uid)
                else {
                    return Err(Whole("a workload that backs it is quarantined"));
                };
                workloads.insert(uid.to_string(), Some(w.clone()));
                if workloads.len() > patch_at_most(derived.state.summary().workloads) {
                    return Err(Whole("too many workloads back it"));
                }
            }
        }
        Ok(())
    }

    /// One enrolled workload fewer in `namespace`.
    fn unenrol(&self, derived: &mut Derived, next: &mut MeshState, namespace: &str) {
        let Some(count) = derived.enrolled.get_mut(namespace) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            derived.enrolled.remove(namespace);
            if !self.namespaces.contains_key(namespace) {
                next.ambient_namespaces_mut().remove(namespace);
            }
        }
    }

    /// Recomputes the service `key` (an xDS name) from the workloads that back it now.
    fn patch_service(
        &self,
        derived: &Derived,
        next: &mut MeshState,
        key: &str,
    ) -> Result<(), Whole> {
        // A service whose newest version was refused keeps its last valid one, endpoints included.
        let Some(Received {
            entry: Some(AddressEntry::Service(s)),
            ..
        }) = self.addresses.get(key)
        else {
            return Ok(()); // backed, but no such service (yet)
        };
        if derived.unpatchable_services.contains(key) {
            return Err(Whole("its service has ports in question"));
        }
        let uids = derived.backing.get(key);
        let backing: Vec<Named<'_>> = uids
            .into_iter()
            .flatten()
            .filter_map(|uid| match self.addresses.get(uid) {
                Some(Received {
                    entry: Some(AddressEntry::Workload(w)),
                    ..
                }) => Some(Named { uid, w }),
                _ => None,
            })
            .collect();
        let mut ports = Vec::with_capacity(s.ports.len());
        for (port, target) in &s.ports {
            let target_port = target_port(*port, *target, &backing, key)
                .ok_or(Whole("its endpoints disagree on a target port"))?;
            ports.push(ServicePort {
                port: *port,
                target_port,
            });
        }
        // A service left out of the mesh is still judged (its ports reported), as above.
        let Some(old) = next.service_by_key(&(s.namespace.clone(), s.name.clone())) else {
            return Ok(());
        };
        let endpoints = backing
            .iter()
            .filter(|w| !derived.instances.contains(&**w.uid))
            .map(|w| w.uid.clone())
            .collect();
        let service = Service {
            ports,
            udp_ports: s.udp_ports.clone(),
            selector: Default::default(),
            ..old.with_endpoints(endpoints)
        };
        next.replace_service(Arc::new(service));
        Ok(())
    }
}
