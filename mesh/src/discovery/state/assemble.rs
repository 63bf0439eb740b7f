//! Assembling a snapshot from a source's objects: the cross-object checks (unique names and
//! addresses) and the waypoint that fronts each workload.
//!
//! A check that fails leaves the offending object out and records why, instead of refusing the
//! whole snapshot: in a cluster, anyone who may create a Service in one namespace must not be able
//! to freeze enrolment and policy everywhere. What is left out fails closed: a waypoint claimed
//! twice exists for nobody (traffic bound to it is refused), a workload or service whose address is
//! taken is not reachable through the mesh under that address. Strict sources (the local file)
//! turn the first record into an error instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::ConfigError;
use crate::discovery::model::{Service, Waypoint, WaypointRef, Workload, selects};
use crate::policy::PolicyId;

/// The waypoints whose name and addresses are their own. A name or an address claimed by several
/// waypoints leaves all of them out: no claimant can be told to be the right one.
pub(super) fn waypoints(all: Vec<Waypoint>, rejected: &mut Vec<ConfigError>) -> Vec<Waypoint> {
    let mut names: HashMap<WaypointRef, usize> = HashMap::new();
    let mut owners: HashMap<IpAddr, BTreeSet<WaypointRef>> = HashMap::new();
    for w in &all {
        *names.entry(w.reference()).or_default() += 1;
        for ip in &w.ips {
            owners.entry(*ip).or_default().insert(w.reference());
        }
    }
    let mut out = Vec::with_capacity(all.len());
    for w in all {
        let object = || format!("waypoint {}", w.reference());
        if names[&w.reference()] > 1 {
            rejected.push(ConfigError::invalid(
                object(),
                "defined twice; no definition is used, traffic bound to it is refused",
            ));
            continue;
        }
        // A waypoint may list one address twice; only another waypoint's claim is a conflict.
        if let Some(ip) = w.ips.iter().find(|ip| owners[*ip].len() > 1) {
            rejected.push(ConfigError::invalid(
                object(),
                format!("address {ip} is used twice; left out, traffic bound to it is refused"),
            ));
            continue;
        }
        out.push(w);
    }
    out
}

/// The workloads whose uid and addresses are unique; of two that claim one, the first is kept.
/// An address of a waypoint is never a workload's. Also returns which workload (its key) each kept
/// address belongs to.
pub(super) fn workloads(
    all: Vec<Workload>,
    waypoint_ips: &HashMap<IpAddr, WaypointRef>,
    rejected: &mut Vec<ConfigError>,
) -> (Vec<Workload>, HashMap<IpAddr, String>) {
    let mut by_ip: HashMap<IpAddr, String> = HashMap::new();
    let mut uids = HashSet::new();
    let mut out = Vec::with_capacity(all.len());
    for w in all {
        let conflict = w.ips.iter().find_map(|ip| {
            if let Some(wp) = waypoint_ips.get(ip) {
                return Some(format!("address {ip} is also waypoint {wp}"));
            }
            let other = by_ip.get(ip)?;
            Some(format!("address {ip} is also used by workload {other}"))
        });
        let conflict = conflict.or_else(|| {
            uids.contains(&w.uid)
                .then(|| format!("uid {:?} is used twice", w.uid))
        });
        if let Some(reason) = conflict {
            rejected.push(ConfigError::invalid(
                format!("workload {}", w.key()),
                reason,
            ));
            continue;
        }
        uids.insert(w.uid.clone());
        by_ip.extend(w.ips.iter().map(|ip| (*ip, w.key())));
        out.push(w);
    }
    (out, by_ip)
}

/// The services whose addresses collide with nothing (the first of two is kept), each with the
/// workloads it selects. `workload_ips` is what [`workloads`] returned with `workloads`.
pub(super) fn services(
    all: Vec<Service>,
    workloads: &[Workload],
    workload_ips: &HashMap<IpAddr, String>,
    waypoint_ips: &HashMap<IpAddr, WaypointRef>,
    rejected: &mut Vec<ConfigError>,
) -> Vec<Service> {
    let mut vips: HashMap<IpAddr, String> = HashMap::new();
    let mut out = Vec::with_capacity(all.len());
    // Built once, when a service names its endpoints.
    let mut known: Option<HashSet<&str>> = None;
    // Built once, when a service has a selector.
    let mut labelled: Option<LabelIndex<'_>> = None;
    for mut service in all {
        let conflict = service.vips.iter().find_map(|vip| {
            if let Some(w) = waypoint_ips.get(vip) {
                Some(format!("address {vip} is also waypoint {w}"))
            } else if let Some(w) = workload_ips.get(vip) {
                Some(format!("address {vip} is also workload {w}"))
            } else {
                vips.get(vip)
                    .map(|other| format!("address {vip} is also service {other}"))
            }
        });
        if let Some(reason) = conflict {
            rejected.push(ConfigError::invalid(
                format!("service {}", service.key()),
                reason,
            ));
            continue;
        }
        let mut endpoints: Vec<Arc<str>> = if service.selector.is_empty() {
            // Endpoints named by the source (a control plane that selected them): those that exist.
            let known = known.get_or_insert_with(|| {
                workloads.iter().map(|w| &*w.uid).collect::<HashSet<&str>>()
            });
            std::mem::take(&mut service.endpoints)
                .into_iter()
                .filter(|uid| known.contains(&**uid))
                .collect()
        } else {
            // The workloads of the service's namespace carrying the rarest of its selector's
            // labels, then checked against the whole selector: no scan of every workload per service.
            let labelled = labelled.get_or_insert_with(|| by_label(workloads));
            service
                .selector
                .iter()
                .map(|(k, v)| {
                    labelled
                        .get(&(service.namespace.as_str(), k.as_str(), v.as_str()))
                        .map_or(&[][..], Vec::as_slice)
                })
                .min_by_key(|candidates| candidates.len())
                .unwrap_or_default()
                .iter()
                .filter(|w| selects(&service.selector, &w.labels))
                .map(|w| w.uid.clone())
                .collect()
        };
        endpoints.sort();
        endpoints.dedup();
        service.endpoints = endpoints;
        vips.extend(service.vips.iter().map(|vip| (*vip, service.key())));
        out.push(service);
    }
    out
}

/// Workloads by (namespace, label key, label value).
type LabelIndex<'a> = HashMap<(&'a str, &'a str, &'a str), Vec<&'a Workload>>;

fn by_label(workloads: &[Workload]) -> LabelIndex<'_> {
    let mut index: LabelIndex<'_> = HashMap::new();
    for w in workloads {
        for (k, v) in &w.labels {
            index
                .entry((&*w.namespace, k.as_str(), v.as_str()))
                .or_default()
                .push(w);
        }
    }
    index
}

/// Puts every enrolled workload that backs a service with a waypoint behind that waypoint too:
/// otherwise calling the pod's address would step around the service's L7 policy. A workload that
/// would be behind several waypoints (its own and its services', or two services') is ambiguous: it
/// keeps one of them but is marked conflicting, and its ztunnel admits no one until that is fixed.
pub(super) fn front(
    workloads: &mut [Workload],
    services: &[Service],
    rejected: &mut Vec<ConfigError>,
) {
    let mut claims: HashMap<&str, BTreeSet<&WaypointRef>> = HashMap::new();
    for service in services {
        let Some(reference) = &service.waypoint else {
            continue;
        };
        for uid in &service.endpoints {
            claims.entry(&**uid).or_default().insert(reference);
        }
    }
    for workload in workloads.iter_mut() {
        let Some(by_services) = claims.get(&*workload.uid) else {
            continue;
        };
        if let Some(names) = front_one(workload, by_services.iter().copied()) {
            rejected.push(ConfigError::invalid(
                format!("workload {}", workload.key()),
                format!(
                    "is fronted by several waypoints ({}): it admits no traffic until it is behind one",
                    names.join(", ")
                ),
            ));
        }
    }
}

/// Puts `workload`, if enrolled, behind the waypoints of the services it backs (`by_services`) as
/// well as its own; when that is more than one, marks it conflicting and returns their names.
pub(crate) fn front_one<'a>(
    workload: &mut Workload,
    by_services: impl IntoIterator<Item = &'a WaypointRef>,
) -> Option<Vec<String>> {
    if !workload.enrolled {
        return None;
    }
    let mut all: BTreeSet<WaypointRef> = by_services.into_iter().cloned().collect();
    all.extend(workload.waypoint.clone());
    let chosen = workload
        .waypoint
        .clone()
        .or_else(|| all.iter().next().cloned());
    let conflict = (all.len() > 1).then(|| {
        let names = all.iter().map(ToString::to_string).collect();
        workload.waypoint_conflict = all
            .into_iter()
            .filter(|r| Some(r) != chosen.as_ref())
            .collect();
        names
    });
    workload.waypoint = chosen;
    conflict
}

/// The policies whose `namespace/name` is unique; of two with one name, the first is kept.
pub(super) fn unique<T>(
    kind: &str,
    all: Vec<T>,
    id: impl Fn(&T) -> &PolicyId,
    rejected: &mut Vec<ConfigError>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(all.len());
    for policy in all {
        if seen.insert(id(&policy).clone()) {
            out.push(policy);
        } else {
            rejected.push(ConfigError::invalid(
                format!("{kind} {}", id(&policy)),
                "defined twice",
            ));
        }
    }
    out
}
