//! Translation of API objects (JSON in the API server's format, under `../testdata/`) into the model.

use std::net::IpAddr;

use serde::de::DeserializeOwned;

use super::*;
use crate::policy::PeerMode;

mod patch;
mod reads;
pub(crate) mod reuse;
mod telemetry;

fn list<K: DeserializeOwned>(json: &str) -> Vec<Arc<K>> {
    #[derive(serde::Deserialize)]
    struct List<K> {
        items: Vec<Arc<K>>,
    }
    serde_json::from_str::<List<K>>(json)
        .expect("API list JSON")
        .items
}

pub(crate) fn objects() -> Objects {
    Objects {
        namespaces: list(include_str!("../testdata/namespaces.json")),
        pods: list(include_str!("../testdata/pods.json")),
        services: list(include_str!("../testdata/services.json")),
        authorization_policies: list(include_str!("../testdata/authorizationpolicies.json")),
        peer_authentications: list(include_str!("../testdata/peerauthentications.json")),
        telemetries: list(include_str!("../testdata/telemetries.json")),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn translated(objects: &Objects) -> Translation {
    translate(objects, &MeshSettings::default())
}

/// Every workload's policies in full (rules and all), and the policies refused: what a patch must
/// leave exactly as a whole translation does, beyond the names `mesh_fingerprint` compares.
pub(crate) fn judged(state: &MeshState, invalid: &[PolicyError]) -> String {
    let mut out = String::new();
    for w in state.workloads().iter().chain(state.pending()) {
        let peer = state.peer_profile(w);
        out += &format!("{} {:?} {peer:?}\n", w.uid, state.authz_for(w));
    }
    let mut invalid: Vec<String> = invalid.iter().map(|e| format!("{e:?}")).collect();
    invalid.sort();
    out + &invalid.join("\n")
}

pub(crate) fn addresses(objects: &Objects) -> Vec<IpAddr> {
    let mut out: std::collections::HashSet<IpAddr> =
        (0..8).map(|i| ip(&format!("10.244.9.{i}"))).collect();
    out.extend([ip("10.96.0.30"), ip("10.244.2.11")]);
    for pod in &objects.pods {
        out.extend(pod_ips(pod));
    }
    out.into_iter().collect()
}

#[test]
fn labelled_namespaces_enrol_their_pods_unless_a_pod_opts_out() {
    let t = translated(&objects());
    let state = &t.state;
    let account = state.workload_by_ip(ip("10.244.1.10")).unwrap();
    assert!(account.enrolled);
    assert_eq!(
        account.identity.as_str(),
        "spiffe://cluster.local/ns/production/sa/account-service"
    );
    assert_eq!(&*account.node, "node-a");
    assert_eq!(&*account.uid, "a1a1a1a1-0000-4000-8000-000000000001");
    // Opted out by its own label.
    assert!(!state.workload_by_ip(ip("10.244.1.11")).unwrap().enrolled);
    // Namespace without the label: known (for routing), not enrolled; default service account.
    let legacy = state.workload_by_ip(ip("10.244.1.12")).unwrap();
    assert!(!legacy.enrolled);
    assert_eq!(&*legacy.service_account, "default");
    // Finished, host-network and address-less pods are not workloads at all.
    assert!(state.workload_by_ip(ip("10.244.1.13")).is_none());
    assert!(state.workload_by_ip(ip("172.18.0.3")).is_none());
    assert_eq!(state.workloads().len(), 4);
    // Dual stack: both addresses.
    let profile = state.workload_by_ip(ip("fd00:10:244:2::a")).unwrap();
    assert_eq!(profile.ips.len(), 2);
    assert_eq!(state.workloads_on_node("node-b").len(), 1);
}

#[test]
fn waypoints_are_their_labelled_service_and_are_used_by_namespace_or_object_labels() {
    let t = translated(&objects());
    let state = &t.state;
    let reference = WaypointRef {
        namespace: "user-data".into(),
        name: "waypoint".into(),
    };
    let waypoint = state.waypoint(&reference).expect("the waypoint");
    assert_eq!(
        waypoint.identity.as_str(),
        "spiffe://cluster.local/ns/user-data/sa/waypoint"
    );
    assert_eq!(waypoint.ips, vec![ip("10.244.2.11")]);
    // Its instance is part of the waypoint (it speaks HBONE itself), not a workload, and its Service
    // is not a service of the mesh.
    assert!(state.workload_by_ip(ip("10.244.2.11")).is_none());
    assert!(state.service_by_vip(ip("10.96.0.21")).is_none());
    // The namespace's label routes its workload and service through it…
    let profile = state.workload_by_ip(ip("10.244.2.10")).unwrap();
    assert_eq!(profile.waypoint, Some(reference.clone()));
    let service = state.service_by_vip(ip("10.96.0.20")).unwrap();
    assert_eq!(service.waypoint, Some(reference));
    // …unless the service opts out; and outside the namespace nothing uses it.
    assert_eq!(
        state.service_by_vip(ip("10.96.0.22")).unwrap().waypoint,
        None
    );
    assert_eq!(
        state.service_by_vip(ip("10.96.0.30")).unwrap().waypoint,
        None
    );
}

#[test]
fn services_map_named_and_numbered_ports_of_each_protocol_and_skip_headless() {
    let t = translated(&objects());
    let state = &t.state;
    let service = state.service_by_vip(ip("10.96.0.20")).unwrap();
    assert_eq!(service.vips, vec![ip("10.96.0.20"), ip("fd00:10:96::20")]);
    assert_eq!(
        service.target_port(80),
        Some(8080),
        "named targetPort resolved on the pods"
    );
    assert_eq!(service.target_port(50051), Some(50051));
    assert_eq!(
        service.target_port(9999),
        None,
        "UDP ports are not TCP ports"
    );
    assert_eq!(service.udp_target_port(9999), Some(9999));
    assert_eq!(service.udp_target_port(80), None, "nor TCP ports UDP ones");
    assert_eq!(
        service.endpoints,
        vec![std::sync::Arc::from("a1a1a1a1-0000-4000-8000-000000000003")]
    );
    assert_eq!(
        state.services().len(),
        3,
        "headless and waypoint services are not mesh services"
    );
}

#[test]
fn invalid_policies_deny_everything_in_their_scope_and_are_reported() {
    let t = translated(&objects());
    assert_eq!(t.invalid.len(), 1);
    assert_eq!(t.invalid[0].policy.to_string(), "production/typo");
    assert_eq!(t.invalid[0].field, "spec.rules[0].when[0].key");
    let account = t.state.workload_by_ip(ip("10.244.1.10")).unwrap();
    let policies = t.state.authz_for(account);
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].action, Action::Deny, "fails closed");
    assert_eq!(t.state.peer_mode(account, 8080), PeerMode::Permissive);
}

#[test]
fn policy_additions_changes_and_deletions_show_in_the_next_snapshot() {
    let mut objects = objects();
    let profile_ip = ip("10.244.2.10");
    let target = crate::policy::Target::Service("user-profile-service".into());
    let names = |t: &Translation| -> Vec<String> {
        t.state
            .authz_for_target("user-data", &target)
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    };
    assert_eq!(
        names(&translated(&objects)),
        ["user-data/user-profile-access"]
    );

    // Changed: a DENY now.
    Arc::make_mut(&mut objects.authorization_policies[0])
        .spec
        .action = Action::Deny;
    let t = translated(&objects);
    assert_eq!(
        t.state.authz_for_target("user-data", &target)[0].action,
        Action::Deny
    );

    // Added: a selector policy on the workload.
    let mut added = (*objects.authorization_policies[0]).clone();
    added.metadata.name = Some("extra".into());
    added.spec = serde_json::from_value(
        serde_json::json!({"selector": {"matchLabels": {"app": "user-profile-service"}}}),
    )
    .unwrap();
    objects.authorization_policies.push(Arc::new(added));
    let t = translated(&objects);
    let profile = t.state.workload_by_ip(profile_ip).unwrap();
    assert_eq!(
        t.state.authz_for(profile)[0].id.to_string(),
        "user-data/extra"
    );

    // Deleted: gone from the next snapshot.
    objects
        .authorization_policies
        .retain(|p| p.metadata.name.as_deref() != Some("user-profile-access"));
    let t = translated(&objects);
    assert!(names(&t).is_empty());
}

#[test]
fn a_namespace_label_change_enrols_and_releases_its_pods() {
    let mut objects = objects();
    let legacy = ip("10.244.1.12");
    assert!(
        !translated(&objects)
            .state
            .workload_by_ip(legacy)
            .unwrap()
            .enrolled
    );
    let default = objects
        .namespaces
        .iter_mut()
        .find(|n| n.metadata.name.as_deref() == Some("default"))
        .unwrap();
    Arc::make_mut(default)
        .metadata
        .labels
        .get_or_insert_default()
        .insert(DATAPLANE_MODE.into(), "ambient".into());
    assert!(
        translated(&objects)
            .state
            .workload_by_ip(legacy)
            .unwrap()
            .enrolled
    );
}

#[test]
fn ambient_namespaces() {
    let objects = objects();
    let t = translated(&objects);
    let ambient: Vec<&str> = t
        .state
        .ambient_namespaces()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(ambient, ["production", "user-data"]);
}

#[test]
fn scheduled_pods_without_an_address_yet_are_pending_not_workloads() {
    let mut objects = objects();
    let pending_name = "account-service-7d9f8c6b5-pending";
    // Not scheduled yet: no node will set it up, nothing to say.
    assert!(translated(&objects).state.pending().is_empty());
    let pod = objects
        .pods
        .iter_mut()
        .find(|p| p.name_any() == pending_name)
        .unwrap();
    Arc::make_mut(pod).spec.as_mut().unwrap().node_name = Some("node-a".into());
    let t = translated(&objects);
    let names: Vec<&str> = t.state.pending().iter().map(|w| &*w.name).collect();
    assert_eq!(names, [pending_name]);
    let w = &t.state.pending()[0];
    assert!(w.ips.is_empty() && w.enrolled && &*w.node == "node-a");
    assert_eq!(
        w.identity.as_str(),
        "spiffe://cluster.local/ns/production/sa/account-service"
    );
    assert!(t.state.workloads().iter().all(|w| &*w.name != pending_name));
    // Being deleted, on the host's network, or finished: never set up, not pending.
    for change in [
        |p: &mut SlimPod| {
            p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        },
        |p: &mut SlimPod| p.spec.as_mut().unwrap().host_network = Some(true),
        |p: &mut SlimPod| p.status.as_mut().unwrap().phase = Some("Failed".into()),
    ] {
        let mut changed = objects.clone();
        let pod = changed
            .pods
            .iter_mut()
            .find(|p| p.name_any() == pending_name)
            .unwrap();
        change(Arc::make_mut(pod));
        assert!(translated(&changed).state.pending().is_empty());
    }
}

/// The test cluster plus `conflicts.json` (a `kubectl get -o json` List of mixed kinds): namespace
/// `tenant` with two waypoint Services claiming the name `wp`, and namespace `shop` with services in
/// front of waypoints, a pod backing two services with different waypoints, and a service-attached
/// policy on a service without one.
fn with_conflicts() -> Objects {
    let list: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/conflicts.json")).unwrap();
    let mut objects = objects();
    for item in list["items"].as_array().unwrap() {
        let item = item.clone();
        match item["kind"].as_str().unwrap() {
            "Namespace" => objects
                .namespaces
                .push(serde_json::from_value(item).unwrap()),
            "Pod" => objects.pods.push(serde_json::from_value(item).unwrap()),
            "Service" => objects.services.push(serde_json::from_value(item).unwrap()),
            "AuthorizationPolicy" => objects
                .authorization_policies
                .push(serde_json::from_value(item).unwrap()),
            other => panic!("unexpected kind {other}"),
        }
    }
    objects
}

fn wp(namespace: &str, name: &str) -> WaypointRef {
    WaypointRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

#[test]
fn two_waypoints_of_one_name_are_isolated_and_the_rest_of_the_mesh_still_updates() {
    let t = translated(&with_conflicts());
    let state = &t.state;
    // The claimed name exists for nobody: traffic bound to it is refused (fails closed)…
    assert!(state.waypoint(&wp("tenant", "wp")).is_none());
    let app = state.workload_by_ip(ip("10.244.3.21")).unwrap();
    assert_eq!(app.waypoint, Some(wp("tenant", "wp")));
    // …both claimants are reported on themselves…
    let rejected: Vec<String> = state.rejected().iter().map(ToString::to_string).collect();
    assert_eq!(
        rejected
            .iter()
            .filter(|r| r.starts_with("waypoint tenant/wp: defined twice"))
            .count(),
        2,
        "{rejected:?}"
    );
    // …and everything else is current: other namespaces' workloads, waypoints and a new policy.
    assert!(state.workload_by_ip(ip("10.244.1.10")).unwrap().enrolled);
    assert!(state.waypoint(&wp("shop", "shop-wp")).is_some());
    assert!(state.waypoint(&wp("user-data", "waypoint")).is_some());
    let account = state.workload_by_ip(ip("10.244.1.10")).unwrap();
    let policies: Vec<String> = state
        .authz_for(account)
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert!(
        policies.contains(&"production/deny-legacy".to_owned()),
        "{policies:?}"
    );
}

#[test]
fn pods_of_a_service_with_a_waypoint_are_behind_it_even_if_they_opt_out() {
    let t = translated(&with_conflicts());
    let state = &t.state;
    // `cart-0` says `use-waypoint: none`, but backs `cart`, which uses shop-wp: calling the pod's
    // address must not step around the service's waypoint.
    let cart = state.workload_by_ip(ip("10.244.4.22")).unwrap();
    assert_eq!(cart.waypoint, Some(wp("shop", "shop-wp")));
    assert!(cart.waypoint_conflict().is_empty());
    // The profile pod backs a waypoint service and an opted-out one: one waypoint, no conflict.
    let profile = state.workload_by_ip(ip("10.244.2.10")).unwrap();
    assert_eq!(profile.waypoint, Some(wp("user-data", "waypoint")));
    assert!(profile.waypoint_conflict().is_empty());
}

#[test]
fn a_pod_behind_two_services_with_different_waypoints_is_unreachable_and_reported() {
    let t = translated(&with_conflicts());
    let ledger = t.state.workload_by_ip(ip("10.244.4.23")).unwrap();
    assert!(ledger.waypoint.is_some());
    assert_eq!(ledger.waypoint_conflict().len(), 1, "{ledger:?}");
    let rejected: Vec<String> = t.state.rejected().iter().map(ToString::to_string).collect();
    assert!(
        rejected
            .iter()
            .any(|r| r.starts_with("workload shop/ledger-0")
                && r.contains("shop/audit-wp, shop/shop-wp")),
        "{rejected:?}"
    );
}

#[test]
fn a_policy_on_a_service_without_a_waypoint_applies_at_its_pods() {
    let t = translated(&with_conflicts());
    let stock = t.state.workload_by_ip(ip("10.244.4.24")).unwrap();
    assert!(stock.waypoint.is_none());
    let policies: Vec<String> = t
        .state
        .authz_for(stock)
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(policies, ["shop/stock-writers"]);
    // It needs HTTP (POST), which ztunnel cannot see: it is among the policies that fail closed.
    assert!(
        t.state
            .l7_policies_enforced_at_l4()
            .contains(&crate::policy::PolicyId::new("shop", "stock-writers"))
    );
    // Enforced at L4 it denies: no connection can prove it is a POST.
    let attrs = crate::policy::Attributes {
        source: Some(&stock.identity),
        source_ip: ip("10.244.4.22"),
        destination_ip: ip("10.244.4.24"),
        destination_port: 8080,
        http: None,
    };
    let cart = crate::identity::Identity::new("cluster.local", "shop", "cart").unwrap();
    let attrs = crate::policy::Attributes {
        source: Some(&cart),
        ..attrs
    };
    assert!(!crate::policy::evaluate(&t.state.authz_for(stock), &attrs).allowed());
}

#[test]
fn slim_stores_translate_to_the_same_mesh_for_a_fraction_of_the_size() {
    use crate::discovery::kubernetes::watch::{slim_meta, slim_pod};
    let full = objects();
    let mut slim = objects();
    fn each<K: Clone>(objects: &mut [Arc<K>], slim: fn(&mut K)) {
        objects.iter_mut().for_each(|k| slim(Arc::make_mut(k)));
    }
    each(&mut slim.pods, slim_pod);
    each(&mut slim.namespaces, slim_meta);
    each(&mut slim.services, slim_meta);
    each(&mut slim.authorization_policies, slim_meta);
    each(&mut slim.peer_authentications, slim_meta);
    each(&mut slim.telemetries, slim_meta);
    assert!(slim.telemetries[0].metadata.managed_fields.is_none());
    let (a, b) = (translated(&full), translated(&slim));
    assert_eq!(a.state.telemetry_policies(), b.state.telemetry_policies());
    let json = |v: &dyn erased::Json| v.json();
    assert_eq!(json(&a.state.workloads()), json(&b.state.workloads()));
    assert_eq!(
        json(&a.state.services().cloned().collect::<Vec<_>>()),
        json(&b.state.services().cloned().collect::<Vec<_>>())
    );
    assert_eq!(json(&a.state.waypoints()), json(&b.state.waypoints()));
    assert_eq!(a.state.rejected(), b.state.rejected());
    assert_eq!(a.state.summary(), b.state.summary());
    for w in a.state.workloads() {
        let ids = |s: &MeshState| -> Vec<String> {
            let w = s.workload(&w.uid).unwrap();
            s.authz_for(w).iter().map(|p| p.id.to_string()).collect()
        };
        assert_eq!(ids(&a.state), ids(&b.state), "{}", w.key());
    }
    // A pod as the API server serves one of a Deployment (field managers, annotations, env,
    // volumes, probes, conditions): the store keeps a small part of it, and the same workload.
    let served_json = include_str!("../testdata/pod-as-served.json");
    let served: Vec<Arc<SlimPod>> = list(served_json);
    let mut kept = served.clone();
    each(&mut kept, slim_pod);
    let size = |pods: &[Arc<SlimPod>]| serde_json::to_vec(pods).unwrap().len();
    assert!(
        size(&kept) * 5 < served_json.len(),
        "{} bytes kept of {}",
        size(&kept),
        served_json.len()
    );
    let with = |pods: Vec<Arc<SlimPod>>| {
        let mut o = objects();
        o.pods = pods;
        json(&translated(&o).state.workloads())
    };
    let workloads = with(kept);
    assert!(workloads.contains("10.244.3.17"), "{workloads}");
    // Telemetry names it after its Deployment (its ReplicaSet less the template hash), not the pod.
    assert!(
        workloads
            .contains(r#""naming":{"workload":"checkout","app":"checkout","version":"2.14.1"}"#),
        "{workloads}"
    );
    assert_eq!(workloads, with(served));
}

/// The name of what runs a pod, for each kind of controller.
#[test]
fn pods_are_named_after_their_controller() {
    let named = |owner: serde_json::Value, labels: serde_json::Value| {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-0", "namespace": "shop", "labels": labels,
                         "ownerReferences": owner},
        }))
        .unwrap();
        super::workload_name(&pod)
    };
    let owner = |kind: &str, name: &str, controller: bool| {
        serde_json::json!([{"apiVersion": "v1", "kind": kind, "name": name, "uid": "u",
                            "controller": controller}])
    };
    let hash = serde_json::json!({"pod-template-hash": "5d8f"});
    let none = serde_json::json!({});
    assert_eq!(
        named(owner("ReplicaSet", "web-5d8f", true), hash.clone()),
        "web"
    );
    // A ReplicaSet of its own (no template hash in its name): its name.
    assert_eq!(named(owner("ReplicaSet", "web", true), hash), "web");
    assert_eq!(
        named(owner("ReplicaSet", "web-5d8f", true), none.clone()),
        "web-5d8f"
    );
    assert_eq!(named(owner("StatefulSet", "db", true), none.clone()), "db");
    assert_eq!(named(owner("Node", "node-a", true), none.clone()), "p-0");
    assert_eq!(
        named(owner("Job", "report-29000000", true), none.clone()),
        "report"
    );
    assert_eq!(
        named(owner("Job", "migrate-2", true), none.clone()),
        "migrate-2"
    );
    // Not the controller, or no owner at all: the pod itself.
    assert_eq!(
        named(owner("ReplicaSet", "web-5d8f", false), none.clone()),
        "p-0"
    );
    assert_eq!(named(serde_json::Value::Null, none), "p-0");
}

/// A `SlimPod` reads every field translation uses exactly as `k8s_openapi`'s Pod does (a misspelt
/// field would read as absent: a host-network pod taken for a workload, an address missed).
#[test]
fn slim_pods_read_what_the_api_types_read() {
    use k8s_openapi::api::core::v1::Pod;
    let mut json: Vec<serde_json::Value> = Vec::new();
    for file in [
        include_str!("../testdata/pods.json"),
        include_str!("../testdata/pod-as-served.json"),
    ] {
        let list: serde_json::Value = serde_json::from_str(file).unwrap();
        json.extend(list["items"].as_array().unwrap().iter().cloned());
    }
    // The fields that are absent or false in the test data, set once.
    let mut host = json[0].clone();
    host["spec"]["hostNetwork"] = true.into();
    host["status"]["phase"] = "Succeeded".into();
    json.push(host);
    let mut draining = json[0].clone();
    draining["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z".into();
    draining["status"]["conditions"] = serde_json::json!([
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": "2026-12-03T12:00:01Z"},
    ]);
    json.push(draining);
    let mut seen_readiness = [false; 2];
    let mut seen_host_network = false;
    for item in json {
        let full: Pod = serde_json::from_value(item.clone()).unwrap();
        let slim: SlimPod = serde_json::from_value(item).unwrap();
        assert_eq!(full.metadata, slim.metadata);
        let (fs, ss) = (full.spec.unwrap(), slim.spec.unwrap());
        assert_eq!(fs.host_network, ss.host_network);
        seen_host_network |= ss.host_network == Some(true);
        assert_eq!(fs.node_name, ss.node_name);
        assert_eq!(fs.service_account_name, ss.service_account_name);
        let full_ports: Vec<_> = fs
            .containers
            .into_iter()
            .map(|c| (c.name, c.ports))
            .collect();
        let slim_ports: Vec<_> = ss
            .containers
            .into_iter()
            .map(|c| (c.name, c.ports))
            .collect();
        assert_eq!(full_ports, slim_ports);
        let (fst, sst) = (full.status.unwrap(), slim.status.unwrap());
        assert_eq!(fst.phase, sst.phase);
        assert_eq!(fst.pod_ip, sst.pod_ip);
        assert_eq!(fst.pod_ips, sst.pod_ips);
        let ready = fst
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True");
        assert_eq!(ready, sst.ready);
        if let Some(ready) = ready {
            seen_readiness[usize::from(ready)] = true;
        }
    }
    assert!(seen_host_network);
    assert_eq!(seen_readiness, [true, true], "both readinesses in the data");
}

/// Readiness and deletion make a pod's serving state, and a service picks its endpoints by it.
#[test]
fn endpoints_follow_readiness_and_deletion() {
    use crate::discovery::Serving;
    let pod = |ready: Option<&str>, deleted: bool| -> SlimPod {
        let mut json = serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"nodeName": "node-a"},
            "status": {"phase": "Running", "podIP": "10.1.0.9", "podIPs": [{"ip": "10.1.0.9"}]},
        });
        if let Some(status) = ready {
            json["status"]["conditions"] = serde_json::json!([
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": status},
            ]);
        }
        if deleted {
            json["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z".into();
        }
        serde_json::from_value(json).unwrap()
    };
    assert_eq!(pod(Some("True"), false).serving(), Serving::Ready);
    assert_eq!(pod(Some("True"), true).serving(), Serving::Terminating);
    assert_eq!(pod(Some("False"), false).serving(), Serving::NotReady);
    assert_eq!(pod(Some("False"), true).serving(), Serving::NotReady);
    assert_eq!(pod(Some("Unknown"), false).serving(), Serving::NotReady);
    // A source that says nothing about readiness (no Ready condition): ready.
    assert_eq!(pod(None, false).serving(), Serving::Ready);
    // Read back as written, the other conditions gone.
    let again: SlimPod =
        serde_json::from_value(serde_json::to_value(pod(Some("False"), false)).unwrap()).unwrap();
    assert_eq!(again.serving(), Serving::NotReady);
}

mod erased {
    pub(super) trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

/// Two live pods listing one address, created in the same second: which holds it does not depend
/// on the order the stores list them in (replicas, and each translation, list them in their own).
#[test]
fn of_two_pods_created_together_at_one_address_the_holder_does_not_depend_on_order() {
    let mut objects = objects();
    let first = objects
        .pods
        .iter()
        .find(|p| !pod_ips(p).is_empty())
        .unwrap()
        .clone();
    let mut twin = first.clone();
    reuse::edit(&mut twin, |p| {
        p["metadata"]["name"] = "aaa-twin".into();
        p["metadata"]["uid"] = "uid-aaa-twin".into();
    });
    let address = pod_ips(&first)[0];
    objects.pods.push(twin);
    let all = objects.pods.clone();
    let holder = |pods: Vec<Arc<SlimPod>>| {
        let objects = Objects {
            pods,
            ..objects.clone()
        };
        let state = translated(&objects).state;
        state.workload_by_ip(address).map(|w| w.name.to_string())
    };
    let forward = holder(all.clone());
    let mut reversed = all;
    reversed.reverse();
    assert_eq!(forward, holder(reversed));
    assert_eq!(
        forward.as_deref(),
        Some("aaa-twin"),
        "by namespace and name"
    );
}
