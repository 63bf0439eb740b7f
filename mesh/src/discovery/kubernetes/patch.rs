//! Patching the last mesh for changed pods, in time that does not grow with the cluster.
//!
//! Almost every change in a cluster is one pod: scheduled, started, moved, gone. Translating every
//! object again for each costs the controller time in proportion to the cluster (1.5 s at 100,000
//! pods). The mesh's maps are persistent, so a copy of the last one is patched instead: the pod's
//! workload taken out and put back, the services it backs given their new endpoints.
//!
//! A patch must give exactly the mesh a whole translation would. Where a change reaches further
//! than the pod and its services, it is not patched and the whole cluster is translated:
//!
//! - anything but pods changed (namespaces, services, policies), or the watches listed again;
//! - the last mesh left an object out or found a conflict (what stands in for it is decided over
//!   everything), or more than [`PATCH_AT_MOST`] pods changed;
//! - an address involved is contested (two pods list it, or a pod listing it is no workload), a
//!   service's or a waypoint's, or taken by another pod of the same patch;
//! - the pod (before or after) is a waypoint's instance, backs a service whose target port is a
//!   named container port (the port depends on its endpoints), has no valid identity, would be
//!   behind several waypoints, or has the uid of another workload.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::pod::SlimPod;
use super::translate::{Objects, WAYPOINT, label, live, pod_ips, pod_uid, scheduled, workload};
use crate::discovery::model::selects;
use crate::discovery::state::{MeshSettings, MeshState, ServiceKey, front_one};

/// The most pods one patch takes on: a rollout of more is translated whole.
const PATCH_AT_MOST: usize = 512;

/// A pod as it was and as it is (`None`: absent).
pub(crate) type PodChange = (Option<Arc<SlimPod>>, Option<Arc<SlimPod>>);

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

/// `previous` (the mesh of the objects before) patched for `changes`; `objects` are the objects now, `contested` what [`contested`] said of
/// the mesh before.
pub(crate) fn patch(
    previous: &MeshState,
    objects: &Objects,
    settings: &MeshSettings,
    contested: &HashSet<IpAddr>,
    changes: &[PodChange],
) -> Result<MeshState, Whole> {
    if !previous.rejected().is_empty() {
        return Err(Whole("the last mesh left objects out"));
    }
    if changes.len() > PATCH_AT_MOST {
        return Err(Whole("too many pods changed at once"));
    }
    let namespaces: HashMap<String, &Namespace> = objects
        .namespaces
        .iter()
        .map(|ns| (ns.name_any(), &**ns))
        .collect();
    let waypoint_ips: HashSet<IpAddr> = previous
        .waypoints()
        .iter()
        .flat_map(|w| w.ips.clone())
        .collect();
    for pod in changes.iter().flat_map(|(b, a)| [b, a]).flatten() {
        check_pod(pod, objects)?;
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
    // The services whose endpoints changed: without the pods as they were, with them as they are.
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
                added
                    .iter()
                    .filter(|(namespace, labels, _)| {
                        **namespace == *service.namespace && selects(&service.selector, labels)
                    })
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

/// Refuses a pod (as it was or is) whose change reaches beyond itself and its services.
fn check_pod(pod: &SlimPod, objects: &Objects) -> Result<(), Whole> {
    let Some(labels) = pod.metadata.labels.as_ref() else {
        return Ok(());
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    for service in &objects.services {
        if service.metadata.namespace.as_deref().unwrap_or_default() != namespace {
            continue;
        }
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
