//! Patching the last mesh for changed pods, in time that does not grow with the cluster.
//!
//! Almost every change in a cluster is one pod: scheduled, started, moved, gone. Translating every
//! object again for each costs the controller time in proportion to the cluster (1.5 s at 100,000
//! pods). The mesh's maps are persistent, so a copy of the last one is patched instead: the pod's
//! workload taken out and put back, the services it backs given their new endpoints.
//!
//! A Service changed is patched too ([`patch_services`]): taken out and put back, its endpoints
//! found among the workloads of its namespace, its key taken from and given to their lists. So is
//! an AuthorizationPolicy ([`patch_policies`]): compiled alone, and the workloads of its namespace
//! it may apply to judged anew; and a PeerAuthentication ([`patch_peer_authentications`]):
//! compiled alone (nothing in the mesh holds what it decides).
//!
//! A patch must give exactly the mesh a whole translation would. Where a change reaches further
//! than the pod and its services, it is not patched and the whole cluster is translated:
//!
//! - a Telemetry changed, or the watches listed again; an AuthorizationPolicy of the root
//!   namespace changed (it applies mesh-wide) — a namespace enrolled or no longer, or naming
//!   another waypoint, is patched, its pods (and for a waypoint its Services) as changed ones
//!   ([`Reached`]);
//! - a service (before or after) is a waypoint, has a target port naming a container port, or
//!   claims an address taken by anything else (one behind a waypoint is patched, the pods it
//!   selects as changed pods: [`fronted`]);
//! - the last mesh left an object out or found a conflict (what stands in for it is decided over
//!   everything), or more than [`PATCH_AT_MOST`] pods changed ([`REACHED_PODS_AT_MOST`] when a
//!   namespace's enrolment or a Service behind a waypoint changed);
//! - an address involved is contested (two pods list it, or a pod listing it is no workload), a
//!   service's or a waypoint's, or taken by another pod of the same patch;
//! - the pod (before or after) is a waypoint's instance, backs a service whose target port is a
//!   named container port (the port depends on its endpoints), has no valid identity, would be
//!   behind several waypoints, or has the uid of another workload.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service as KubeService};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::pod::SlimPod;
use super::translate::{
    Objects, USE_WAYPOINT, WAYPOINT, authz_policy, enrolled, label, live, peer_auth_policy,
    pod_ips, pod_uid, scheduled, service, workload,
};
use crate::discovery::model::{Workload, selects};
use crate::discovery::state::{MeshSettings, MeshState, ServiceKey, front_one, selected};
use crate::policy::{AuthzPolicy, PeerAuthPolicy, PolicyError, PolicyId, Scope};
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;

/// The most pods one patch takes on: a rollout of more is translated whole.
pub(crate) const PATCH_AT_MOST: usize = 512;

/// The most pods one patch takes on when a change reached pods besides those that changed (a
/// namespace's enrolment: its every pod; a Service behind a waypoint: those it selects, as it was
/// and is), each translated anew: each costs index lookups, and each Service of its namespace a
/// pass over them, where a whole translation costs seconds at 100,000 pods.
pub(crate) const REACHED_PODS_AT_MOST: usize = 4_096;

/// A pod as it was and as it is (`None`: absent).
pub(crate) type PodChange = (Option<Arc<SlimPod>>, Option<Arc<SlimPod>>);

/// A Service as it was and as it is (`None`: absent).
pub(crate) type ServiceChange = (Option<Arc<KubeService>>, Option<Arc<KubeService>>);

/// An AuthorizationPolicy as it was and as it is (`None`: absent).
pub(crate) type PolicyChange = (
    Option<Arc<AuthorizationPolicy>>,
    Option<Arc<AuthorizationPolicy>>,
);

/// A PeerAuthentication as it was and as it is (`None`: absent).
pub(crate) type PeerChange = (
    Option<Arc<PeerAuthentication>>,
    Option<Arc<PeerAuthentication>>,
);

/// A Namespace as it was and as it is (`None`: absent).
pub(crate) type NamespaceChange = (Option<Arc<Namespace>>, Option<Arc<Namespace>>);

/// A pod added by a patch: its namespace, labels and uid.
type Added = (Arc<str>, BTreeMap<String, String>, Arc<str>);

/// A change a patch does not follow, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Whole(pub(crate) &'static str);

/// Addresses no patch may take or free: listed by two live pods, or by a live pod that is no
/// workload of the mesh (its instance of a waypoint, a pod without a valid identity). Computed
/// with each whole translation; a patch never makes one (it takes only free addresses).
pub(crate) fn contested(objects: &Objects, state: &MeshState) -> HashSet<IpAddr> {
    let mut seen = HashSet::new();
    let mut out = HashSet::new();
    for pod in objects.pods.iter().filter(|p| live(p)) {
        let uid = pod_uid(pod);
        for ip in pod_ips(pod) {
            let its_own = state.workload_by_ip(ip).is_some_and(|w| *w.uid == *uid);
            if !seen.insert(ip) || !its_own {
                out.insert(ip);
            }
        }
    }
    out
}

/// Whether `count` changes can be patched into `previous`: not when the last mesh left objects out
/// (what stands in for them is decided over everything), nor (`too_many`) when they are more than
/// `at_most`.
fn patchable(
    previous: &MeshState,
    count: usize,
    at_most: usize,
    too_many: &'static str,
) -> Result<(), Whole> {
    if !previous.rejected().is_empty() {
        return Err(Whole("the last mesh left objects out"));
    }
    if count > at_most {
        return Err(Whole(too_many));
    }
    Ok(())
}

/// What both patches read around their `count` changes: the namespaces by name, and the
/// waypoints' addresses. A whole translation when the last mesh left objects out, or (`too_many`)
/// when the changes are more than `at_most`.
fn surroundings<'o>(
    previous: &MeshState,
    objects: &'o Objects,
    count: usize,
    at_most: usize,
    too_many: &'static str,
) -> Result<(HashMap<String, &'o Namespace>, HashSet<IpAddr>), Whole> {
    patchable(previous, count, at_most, too_many)?;
    let namespaces = objects
        .namespaces
        .iter()
        .map(|ns| (ns.name_any(), &**ns))
        .collect();
    let waypoint_ips = previous
        .waypoints()
        .iter()
        .flat_map(|w| w.ips.clone())
        .collect();
    Ok((namespaces, waypoint_ips))
}

/// `previous` (the mesh of the objects before) patched for `changes`, no more than `at_most`
/// ([`PATCH_AT_MOST`], or [`REACHED_PODS_AT_MOST`] when a change reached further pods); `objects` are the
/// objects now, `contested` what [`contested`] said of the mesh before.
pub(crate) fn patch(
    previous: &MeshState,
    objects: &Objects,
    settings: &MeshSettings,
    contested: &HashSet<IpAddr>,
    changes: &[PodChange],
    at_most: usize,
) -> Result<MeshState, Whole> {
    let (namespaces, waypoint_ips) = surroundings(
        previous,
        objects,
        changes.len(),
        at_most,
        "too many pods changed at once",
    )?;
    // The Services by namespace, gathered once: a namespace's every pod may be checked.
    let mut services: HashMap<&str, Vec<&KubeService>> = HashMap::new();
    for service in &objects.services {
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        services.entry(namespace).or_default().push(service);
    }
    for pod in changes.iter().flat_map(|(b, a)| [b, a]).flatten() {
        check_pod(pod, &services)?;
    }
    let mut state = previous.clone();
    let mut touched: BTreeSet<ServiceKey> = BTreeSet::new();
    let mut gone: HashSet<String> = HashSet::new();
    let mut added: Vec<Added> = Vec::new();
    // Out with what the pods were.
    for before in changes.iter().filter_map(|(b, _)| b.as_ref()) {
        let uid = pod_uid(before);
        if pod_ips(before).iter().any(|ip| contested.contains(ip)) {
            return Err(Whole("a contested address"));
        }
        touched.extend(state.service_keys_of_uid(&uid).iter().cloned());
        if state.remove_workload(&uid).is_none() {
            state.remove_pending(&uid);
        }
        gone.insert(uid);
    }
    // In with what they are.
    let mut claimed: HashSet<IpAddr> = HashSet::new();
    for after in changes.iter().filter_map(|(_, a)| a.as_ref()) {
        if state.workload(&pod_uid(after)).is_some() {
            return Err(Whole("a uid of two workloads"));
        }
        if live(after) {
            let ips = pod_ips(after);
            for ip in &ips {
                if contested.contains(ip)
                    || waypoint_ips.contains(ip)
                    || !claimed.insert(*ip)
                    || state.workload_by_ip(*ip).is_some()
                    || state.service_by_vip(*ip).is_some()
                {
                    return Err(Whole("an address taken or contested"));
                }
            }
            let Some(mut new) = workload(after, ips, &namespaces, settings) else {
                return Err(Whole("a pod without a valid identity"));
            };
            let services = state.services_selecting(&new.namespace, &new.labels);
            if front_one(
                &mut new,
                services.iter().filter_map(|s| s.waypoint.as_ref()),
            )
            .is_some()
            {
                return Err(Whole("a workload behind several waypoints"));
            }
            let keys: Vec<ServiceKey> = services
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone()))
                .collect();
            touched.extend(keys.iter().cloned());
            added.push((new.namespace.clone(), new.labels.clone(), new.uid.clone()));
            state.insert_workload(Arc::new(new), keys);
        } else if scheduled(after) && pod_ips(after).is_empty() {
            let Some(new) = workload(after, Vec::new(), &namespaces, settings) else {
                return Err(Whole("a pod without a valid identity"));
            };
            state.add_pending(new);
        }
    }
    // The services whose endpoints changed: without the pods as they were, with them as they are
    // (those added looked through by namespace: a namespace's every pod may be among them).
    let mut added_in: HashMap<&str, Vec<&Added>> = HashMap::new();
    for a in &added {
        added_in.entry(&*a.0).or_default().push(a);
    }
    for key in touched {
        let Some(service) = state.service_by_key(&key) else {
            continue;
        };
        let mut endpoints: Vec<Arc<str>> = service
            .endpoints
            .iter()
            .filter(|uid| !gone.contains(&***uid))
            .cloned()
            .chain(
                added_in
                    .get(&*service.namespace)
                    .into_iter()
                    .flatten()
                    .filter(|(_, labels, _)| selects(&service.selector, labels))
                    .map(|(_, _, uid)| uid.clone()),
            )
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let updated = Arc::new(service.with_endpoints(endpoints));
        state.replace_service(updated);
    }
    Ok(state)
}

/// The pods whose waypoint a change of Services may move. A Service behind a waypoint puts the
/// enrolled workloads it selects behind it too (a whole translation: `assemble::front`), so where
/// a changed Service is or was behind one, the pods it selects, as it was and as it is, are
/// patched as changed pods after it ([`patch`] fronts each anew): [`Fronted::selects`] tells them.
/// `previous` is the mesh before, `namespaces` the namespaces as translated.
pub(crate) fn fronted(
    previous: &MeshState,
    namespaces: &[Arc<Namespace>],
    changes: &[ServiceChange],
) -> Fronted {
    let by_name: HashMap<String, &Namespace> =
        namespaces.iter().map(|ns| (ns.name_any(), &**ns)).collect();
    let mut out = Vec::new();
    for (before, now) in changes {
        let Some(object) = now.as_ref().or(before.as_ref()) else {
            continue;
        };
        let namespace = object.namespace().unwrap_or_default();
        if let Some(old) = previous.service(&namespace, &object.name_any())
            && old.waypoint.is_some()
        {
            out.push((namespace.clone(), old.selector.clone()));
        }
        if let Some(new) = now
            .as_ref()
            .and_then(|svc| service(svc, &by_name, |_, _| Vec::new()))
            && new.waypoint.is_some()
        {
            out.push((namespace, new.selector));
        }
    }
    out.retain(|(_, selector)| !selector.is_empty()); // selects nothing
    Fronted(out)
}

/// Selectors, each in its namespace, of Services behind a waypoint that changed ([`fronted`]).
pub(crate) struct Fronted(Vec<(String, BTreeMap<String, String>)>);

impl Fronted {
    /// Whether no pod is fronted anew.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `pod` is selected by one of the Services.
    pub(crate) fn selects(&self, pod: &SlimPod) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let labels = pod.metadata.labels.as_ref();
        self.0.iter().any(|(n, selector)| {
            n == namespace && labels.is_some_and(|labels| selects(selector, labels))
        })
    }
}

/// `previous` (the mesh of the objects before) patched for changed Services; `objects` are the
/// objects now, `contested` what [`contested`] said of the mesh before. Pods are patched after,
/// on the mesh this returns ([`patch`]), those of [`fronted`] among them: until then, the
/// workloads a Service behind a waypoint selects (as it was or is) are not fronted as it says.
pub(crate) fn patch_services(
    previous: &MeshState,
    objects: &Objects,
    contested: &HashSet<IpAddr>,
    changes: &[ServiceChange],
) -> Result<MeshState, Whole> {
    let (namespaces, waypoint_ips) = surroundings(
        previous,
        objects,
        changes.len(),
        PATCH_AT_MOST,
        "too many services changed at once",
    )?;
    let mut state = previous.clone();
    // The workloads whose services change: the policies that apply to them may too (a policy may
    // target a Service).
    let mut rejudge: BTreeSet<Arc<str>> = BTreeSet::new();
    // Out with what they were (all of them first: one may take an address another frees).
    let mut after = Vec::new();
    for (before, now) in changes {
        let Some(object) = now.as_ref().or(before.as_ref()) else {
            continue;
        };
        for svc in [before, now].into_iter().flatten() {
            check_service(svc)?;
        }
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        if let Some(old) = state.remove_service(&key) {
            rejudge.extend(old.endpoints.iter().cloned());
        }
        after.extend(
            now.as_ref()
                .and_then(|svc| service(svc, &namespaces, |_, _| Vec::new())),
        );
    }
    // In with what they are.
    let mut namespaces_changed: BTreeSet<String> = BTreeSet::new();
    for (before, now) in changes {
        namespaces_changed.extend(
            [before, now]
                .into_iter()
                .flatten()
                .map(|svc| svc.namespace().unwrap_or_default()),
        );
    }
    // Their namespaces' workloads, gathered once (a namespace's every Service may have changed).
    let workloads = state.workloads_in(&namespaces_changed);
    for mut new in after {
        for vip in &new.vips {
            if contested.contains(vip)
                || waypoint_ips.contains(vip)
                || state.workload_by_ip(*vip).is_some()
                || state.service_by_vip(*vip).is_some()
            {
                return Err(Whole("a service address taken or contested"));
            }
        }
        new.endpoints = selected(workloads.get(&new.namespace), &new.selector);
        rejudge.extend(new.endpoints.iter().cloned());
        state.add_service(Arc::new(new));
    }
    for uid in &rejudge {
        state.rejudge(uid);
    }
    // The pods being set up are listed as backing the services that select them.
    for namespace in &namespaces_changed {
        state.relist_pending(namespace);
    }
    Ok(state)
}

/// `previous` patched for changed AuthorizationPolicies: each compiled alone and put in place of
/// what it was, and the workloads and pods being set up of its namespace it may apply to, as it
/// was or as it is, judged anew (the others' judgement does not change: a policy applies only in
/// its namespace, but for the root namespace's). `invalid` (the policies refused by validation)
/// is brought up to date. Services are patched before, pods after.
pub(crate) fn patch_policies(
    previous: &MeshState,
    settings: &MeshSettings,
    changes: &[PolicyChange],
    invalid: &mut Vec<PolicyError>,
) -> Result<MeshState, Whole> {
    patchable(
        previous,
        changes.len(),
        PATCH_AT_MOST,
        "too many policies changed at once",
    )?;
    let mut state = previous.clone();
    let mut gone: Vec<PolicyId> = Vec::new();
    let mut new: Vec<Arc<AuthzPolicy>> = Vec::new();
    let mut errors: Vec<PolicyError> = Vec::new();
    // Per namespace, the scopes the policies had or have.
    let mut scopes: BTreeMap<String, Vec<Scope>> = BTreeMap::new();
    for (before, now) in changes {
        let Some(object) = now.as_ref().or(before.as_ref()) else {
            continue;
        };
        let namespace = object.namespace().unwrap_or_default();
        if namespace == settings.root_namespace {
            return Err(Whole("a policy of the root namespace (mesh-wide)"));
        }
        let id = PolicyId::new(&namespace, &object.name_any());
        let all = previous.authz_policies();
        let old = all
            .binary_search_by(|p| p.id.cmp(&id))
            .ok()
            .map(|at| &all[at]);
        let compiled = now.as_ref().map(|p| Arc::new(authz_policy(p, &mut errors)));
        let had = scopes.entry(namespace).or_default();
        had.extend(old.into_iter().chain(&compiled).map(|p| p.scope.clone()));
        gone.push(id);
        new.extend(compiled);
    }
    invalid.retain(|e| !(e.kind == "AuthorizationPolicy" && gone.contains(&e.policy)));
    invalid.extend(errors);
    let replaced: HashSet<&PolicyId> = gone.iter().collect();
    state.replace_policies(|p| !replaced.contains(&p.id), new);
    for (namespace, scopes) in &scopes {
        state.rejudge_in(namespace, |w| scopes.iter().any(|s| may_apply(s, w)));
        state.relist_pending(namespace);
    }
    Ok(state)
}

/// `previous` patched for changed PeerAuthentications: each compiled alone and put in place of
/// what it was. Nothing in the mesh holds what they decide (a workload's is resolved when read),
/// so nothing else changes here; the resources find the workloads whose peer authentication
/// changed (`Resources::from_state_after`). `invalid` (the policies refused by validation) is
/// brought up to date.
pub(crate) fn patch_peer_authentications(
    previous: &MeshState,
    changes: &[PeerChange],
    invalid: &mut Vec<PolicyError>,
) -> Result<MeshState, Whole> {
    patchable(
        previous,
        changes.len(),
        PATCH_AT_MOST,
        "too many PeerAuthentications changed at once",
    )?;
    let mut gone: HashSet<PolicyId> = HashSet::new();
    let mut new: Vec<PeerAuthPolicy> = Vec::new();
    let mut errors: Vec<PolicyError> = Vec::new();
    for (before, now) in changes {
        let Some(object) = now.as_ref().or(before.as_ref()) else {
            continue;
        };
        gone.insert(PolicyId::new(
            &object.namespace().unwrap_or_default(),
            &object.name_any(),
        ));
        new.extend(now.as_ref().map(|p| peer_auth_policy(p, &mut errors)));
    }
    invalid.retain(|e| !(e.kind == "PeerAuthentication" && gone.contains(&e.policy)));
    invalid.extend(errors);
    let mut state = previous.clone();
    state.replace_peer_auth(|p| !gone.contains(&p.id), new);
    Ok(state)
}

/// Whether a policy of the workload's namespace with `scope` may apply to it: selected by it, or
/// through a service it backs (taken as may, whichever).
fn may_apply(scope: &Scope, workload: &Workload) -> bool {
    match scope {
        Scope::Selector(labels) => selects(labels, &workload.labels),
        Scope::Namespace | Scope::Targets(_) | Scope::Mesh | Scope::Named => true,
    }
}

/// Refuses a Service (as it was or is) whose change reaches beyond its endpoints' lists: a
/// waypoint's, or one whose ports depend on its endpoints.
fn check_service(svc: &KubeService) -> Result<(), Whole> {
    if label(svc.metadata.labels.as_ref(), WAYPOINT).is_some() {
        return Err(Whole("a waypoint's service"));
    }
    let named = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .any(|p| matches!(p.target_port, Some(IntOrString::String(_))));
    if named {
        return Err(Whole("a service with a named target port"));
    }
    Ok(())
}

/// Refuses a pod (as it was or is) whose change reaches beyond itself and its services (`services`:
/// the Services by namespace).
fn check_pod(pod: &SlimPod, services: &HashMap<&str, Vec<&KubeService>>) -> Result<(), Whole> {
    let Some(labels) = pod.metadata.labels.as_ref() else {
        return Ok(());
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    for service in services.get(namespace).into_iter().flatten() {
        let Some(spec) = &service.spec else { continue };
        if !spec.selector.as_ref().is_some_and(|s| selects(s, labels)) {
            continue;
        }
        if label(service.metadata.labels.as_ref(), WAYPOINT).is_some() {
            return Err(Whole("a waypoint's instance"));
        }
        let named = spec
            .ports
            .iter()
            .flatten()
            .any(|p| matches!(p.target_port, Some(IntOrString::String(_))));
        if named {
            return Err(Whole("backs a service with a named target port"));
        }
    }
    Ok(())
}

/// Whether the waypoint a namespace names for its objects changed (`veil.dev/use-waypoint`, an
/// absent namespace naming none): its Services are then translated anew as well as its pods
/// ([`Reached`]).
pub(crate) fn waypoint_changed((before, now): &NamespaceChange) -> bool {
    let named = |ns: &Option<Arc<Namespace>>| {
        ns.as_ref()
            .and_then(|ns| label(ns.metadata.labels.as_ref(), USE_WAYPOINT))
            .map(str::to_owned)
    };
    named(before) != named(now)
}

/// What a round's changed namespaces and Services reach besides themselves, patched with them as
/// if they had changed: every pod of a namespace enrolled or no longer, or naming another
/// waypoint; every Service of the latter (its waypoint, where it names none itself, is its
/// namespace's); and the pods a Service behind a waypoint selects ([`fronted`]). A waypoint's own
/// Service and its instances are left out: their translation reads neither (a change of one of
/// them is refused by [`check_service`] and [`check_pod`]).
pub(crate) struct Reached<'a> {
    namespaces: HashSet<String>,
    waypoint_named: HashSet<String>,
    fronted: Fronted,
    /// The addresses of the waypoints of the mesh before, and that mesh.
    instances: HashSet<IpAddr>,
    previous: &'a MeshState,
}

impl<'a> Reached<'a> {
    /// What `namespaces` (changed this round, by name) reach; `previous` is the mesh before.
    pub(crate) fn new(previous: &'a MeshState, namespaces: &[(String, NamespaceChange)]) -> Self {
        Self {
            namespaces: namespaces.iter().map(|(name, _)| name.clone()).collect(),
            waypoint_named: namespaces
                .iter()
                .filter(|(_, change)| waypoint_changed(change))
                .map(|(name, _)| name.clone())
                .collect(),
            fronted: Fronted(Vec::new()),
            instances: previous
                .waypoints()
                .iter()
                .flat_map(|w| w.ips.iter().copied())
                .collect(),
            previous,
        }
    }

    /// Whether `service`, unchanged, is translated anew.
    pub(crate) fn service(&self, service: &KubeService) -> bool {
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        self.waypoint_named.contains(namespace)
            && label(service.metadata.labels.as_ref(), WAYPOINT).is_none()
    }

    /// Adds the pods the changed Services (those reached included) front: see [`fronted`].
    pub(crate) fn fronting(&mut self, fronted: Fronted) {
        self.fronted = fronted;
    }

    /// Whether `pod`, unchanged, is translated anew: not when it is a waypoint's instance (one
    /// of its addresses a waypoint's, and no workload of the mesh: a pod that lost an address to
    /// a newer instance is a workload under its others, and is translated anew).
    pub(crate) fn pod(&self, pod: &SlimPod) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let instance = pod_ips(pod).iter().any(|ip| self.instances.contains(ip))
            && self.previous.workload(&pod_uid(pod)).is_none();
        (self.namespaces.contains(namespace) || self.fronted.selects(pod)) && !instance
    }

    /// Whether it reaches further than what changed: the patch may then take on more pods
    /// ([`REACHED_PODS_AT_MOST`]).
    pub(crate) fn further(&self) -> bool {
        !self.namespaces.is_empty() || !self.fronted.is_empty()
    }
}

/// Puts the namespaces of `changes` (by name) in the mesh's enrolled namespaces, or takes them
/// out, as they are now (as a whole translation lists them: those labelled ambient).
pub(crate) fn enrol_namespaces(state: &mut MeshState, changes: &[(String, NamespaceChange)]) {
    for (name, (_, now)) in changes {
        state.set_ambient(name, now.as_deref().is_some_and(enrolled));
    }
}
