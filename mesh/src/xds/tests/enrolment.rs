//! What a node needs to capture new pods: the enrolled namespaces (veil's resource type), pods
//! whose network is being set up (workloads without an address), and the addresses the node's CNI
//! plugin filled in for them. Also: an unhealthy workload is in the mesh but no endpoint.

use std::sync::Arc;

use super::subscriber::{address_resource, received, resource};
use super::*;
use crate::discovery::Serving;
use crate::xds::proto::veil::AmbientNamespace;

use crate::testing::pending_workload as pending;

/// The test mesh with a pending `web2` (backs shop/api through its labels) on node-a.
fn with_pending() -> MeshState {
    state().with_pending([pending("shop", "web2", "node-a", &[("app", "api")])])
}

fn namespace(name: &str, body_name: &str) -> super::proto::discovery::Resource {
    resource(
        Kind::Namespace,
        name,
        "v1",
        AmbientNamespace {
            name: body_name.into(),
        }
        .encode_to_vec(),
    )
}

#[test]
fn enrolled_namespaces_are_sent_and_received_even_without_workloads() {
    let native = state().with_ambient_namespaces(["shop".to_owned(), "empty".to_owned()]);
    let resources = Resources::from_state(&native);
    let names: Vec<&str> = resources.of(Kind::Namespace).keys().map(|n| &**n).collect();
    assert_eq!(names, ["empty", "shop"]);
    let received = received(&resources).to_state();
    assert!(received.ambient_namespaces().contains("empty"));
    assert!(received.ambient_namespaces().contains("shop"));
    // ops has enrolled workloads: enrolled however the namespace resources read.
    assert!(received.ambient_namespaces().contains("ops"));
}

#[test]
fn a_refused_namespace_is_taken_as_enrolled_and_reported() {
    let mut store = received(&Resources::from_state(&state()));
    let refused = store.apply(
        Kind::Namespace,
        &[
            namespace("fresh", "fresh"),
            namespace("other", "not-other"),
            namespace("Bad_Name", "Bad_Name"),
        ],
        &[],
    );
    let names: Vec<&str> = refused.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["other", "Bad_Name"]);
    let s = store.to_state();
    for ns in ["fresh", "other", "Bad_Name"] {
        assert!(s.ambient_namespaces().contains(ns), "{ns}");
    }
    assert_eq!(
        s.rejected()
            .iter()
            .filter(|e| e.to_string().contains("taken as enrolled"))
            .count(),
        2
    );
    // Removed: no longer enrolled (no workload of it is).
    store.apply(Kind::Namespace, &[], &["fresh".into(), "other".into()]);
    let s = store.to_state();
    assert!(!s.ambient_namespaces().contains("fresh"));
    assert!(!s.ambient_namespaces().contains("other"));
    assert!(s.ambient_namespaces().contains("Bad_Name"));
}

#[test]
fn a_pending_pod_is_sent_without_address_or_service_but_with_its_policies() {
    let resources = Resources::from_state(&with_pending());
    let w = workload(&resources, "shop", "web2");
    assert!(w.addresses.is_empty());
    assert_eq!(w.status, wl::WorkloadStatus::Unhealthy as i32);
    assert_eq!(w.tunnel_protocol, wl::TunnelProtocol::Hbone as i32);
    assert!(w.services.is_empty(), "no endpoint of anything yet");
    assert_eq!(w.service_account, "web2");
    // A running workload is healthy.
    let api = workload(&resources, "shop", "api");
    assert_eq!(api.status, wl::WorkloadStatus::Healthy as i32);
}

#[test]
fn a_pending_pod_takes_the_address_its_node_knows_and_only_there() {
    let resources = Resources::from_state(&with_pending());
    let fresh: std::net::IpAddr = "10.1.0.50".parse().unwrap();
    let lookup = move |ns: &str, name: &str| (ns == "shop" && name == "web2").then(|| vec![fresh]);

    // Elsewhere: not in the mesh (nothing can reach it) until the control plane knows its address.
    let s = received(&resources).to_state();
    assert!(s.workload_by_ip(fresh).is_none());
    assert!(
        s.workloads_on_node("node-a")
            .iter()
            .all(|w| &*w.name != "web2")
    );

    // On its node: in the mesh with the address the CNI plugin gave, its identity and policies.
    let store = received(&resources).with_node_addresses("node-a".into(), Arc::new(lookup));
    let s = store.to_state();
    let w = s.workload_by_ip(fresh).expect("filled in");
    assert_eq!((&*w.namespace, &*w.name), ("shop", "web2"));
    assert!(w.enrolled);
    assert_eq!(
        w.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web2"
    );
    // Not an endpoint of shop/api before it is ready.
    let api = s.service_by_vip("10.96.0.2".parse().unwrap()).unwrap();
    assert!(!api.endpoints.iter().any(|uid| uid.contains("web2")));

    // Another node's subscriber does not fill it in.
    let store = received(&resources).with_node_addresses("node-b".into(), Arc::new(lookup));
    assert!(store.to_state().workload_by_ip(fresh).is_none());
}

#[test]
fn an_address_the_node_just_gave_a_pod_is_that_pods() {
    // A pod that ended still holds 10.1.0.1 at the control plane (web, received first); this
    // node's network plugin has given the address to the new pod.
    let resources = Resources::from_state(&with_pending());
    let reused: std::net::IpAddr = "10.1.0.1".parse().unwrap();
    let lookup = move |_: &str, name: &str| (name == "web2").then(|| vec![reused]);
    let store = received(&resources).with_node_addresses("node-a".into(), Arc::new(lookup));
    let s = store.to_state();
    assert_eq!(&*s.workload_by_ip(reused).unwrap().name, "web2");
    assert!(
        s.rejected()
            .iter()
            .any(|e| e.to_string().contains("already workload"))
    );
}

#[test]
fn an_unhealthy_workload_is_in_the_mesh_but_no_endpoint() {
    let native = state();
    let resources = Resources::from_state(&native);
    let mut store = received(&resources);
    let mut api = workload(&resources, "shop", "api");
    api.status = wl::WorkloadStatus::Unhealthy as i32;
    let name = api.uid.clone();
    let update = address_resource(&name, "v2", wl::address::Type::Workload(api));
    assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
    let s = store.to_state();
    let api = s
        .workload_by_ip("10.1.0.2".parse().unwrap())
        .expect("in the mesh");
    assert_eq!(api.serving, Serving::NotReady);
    let service = s.service_by_vip("10.96.0.2".parse().unwrap()).unwrap();
    // Still one of the service's (its waypoint and policies judge it), but never picked.
    assert!(service.endpoints.contains(&api.uid));
    assert!(s.serving_endpoints(service).is_empty());
    // An unknown status counts as unhealthy.
    let mut db = workload(&resources, "shop", "db");
    db.status = 7;
    let name = db.uid.clone();
    let update = address_resource(&name, "v2", wl::address::Type::Workload(db));
    assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
    let s = store.to_state();
    let service = s.service_by_vip("10.96.0.3".parse().unwrap()).unwrap();
    assert!(s.serving_endpoints(service).is_empty());
    // Unhealthy and marked draining (veil's extension): picked, as the service has nothing else.
    let mut db = workload(&resources, "shop", "db");
    db.status = wl::WorkloadStatus::Unhealthy as i32;
    db.extensions.push(wl::Extension {
        name: crate::xds::SERVING_WHILE_TERMINATING.into(),
        config: None,
    });
    let name = db.uid.clone();
    let update = address_resource(&name, "v3", wl::address::Type::Workload(db));
    assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
    let s = store.to_state();
    let service = s.service_by_vip("10.96.0.3".parse().unwrap()).unwrap();
    let picked = s.serving_endpoints(service);
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0].serving, Serving::Terminating);
}

#[test]
fn a_pending_pod_is_judged_as_the_services_that_select_it_will_make_it() {
    // db2 will back shop/db, which a policy targets (enforced at L4: no waypoint); web3 will back a
    // service with a waypoint. Neither is an endpoint yet, but both are sent as they will be judged.
    let native = local::parse(
        &MESH.replace(
            "services:\n",
            "services:\n  - {name: fronted, namespace: shop, vips: [10.96.0.9], ports: [{port: 80}], selector: {app: web3}, useWaypoint: wp}\n",
        ),
        &MeshSettings::default(),
    )
    .expect("the test mesh is valid")
    .with_pending([
        pending("shop", "db2", "node-b", &[("app", "db")]),
        pending("shop", "web3", "node-a", &[("app", "web3")]),
    ]);
    let resources = Resources::from_state(&native);
    let db2 = workload(&resources, "shop", "db2");
    assert!(
        db2.authorization_policies
            .contains(&"shop/db-from-api".to_owned()),
        "{:?}",
        db2.authorization_policies
    );
    assert!(db2.services.is_empty());
    let web3 = workload(&resources, "shop", "web3");
    assert!(web3.waypoint.is_some(), "behind its service's waypoint");
    assert!(
        web3.authorization_policies
            .iter()
            .any(|p| p.contains(WAYPOINT_ONLY_PREFIX)),
        "{:?}",
        web3.authorization_policies
    );
    // Received on its node with the address the CNI plugin gave: it admits only the waypoint.
    let fresh: std::net::IpAddr = "10.1.0.60".parse().unwrap();
    let lookup = move |_: &str, name: &str| (name == "web3").then(|| vec![fresh]);
    let s = received(&resources)
        .with_node_addresses("node-a".into(), Arc::new(lookup))
        .to_state();
    let w = s.workload_by_ip(fresh).unwrap();
    assert!(w.waypoint.is_some());
}

const ROLLOUT: &str = r#"
namespaces: [{name: shop, dataplaneMode: ambient}]
workloads:
  - {name: old, namespace: shop, serviceAccount: api, node: a, ips: [10.1.0.1], labels: {app: api}, terminating: true}
  - {name: new, namespace: shop, serviceAccount: api, node: b, ips: [10.1.0.2], labels: {app: api}}
  - {name: next, namespace: shop, serviceAccount: api, node: b, ips: [10.1.0.3], labels: {app: api}, ready: false}
services:
  - {name: api, namespace: shop, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: api}}
"#;

/// Picked endpoints, by name, of the service at 10.96.0.1.
fn picked(state: &MeshState) -> Vec<String> {
    let service = state.service_by_vip("10.96.0.1".parse().unwrap()).unwrap();
    state
        .serving_endpoints(service)
        .iter()
        .map(|w| w.name.to_string())
        .collect()
}

#[test]
fn a_rollout_is_followed_on_both_sides_of_the_wire_and_istio_sees_only_ready_endpoints() {
    let mesh = |yaml: &str| local::parse(yaml, &MeshSettings::default()).unwrap();
    let native = mesh(ROLLOUT);
    let resources = Resources::from_state(&native);
    // Istio's view: only the ready one is HEALTHY; the draining one is marked by veil's extension.
    let status = |name: &str| {
        let w = workload(&resources, "shop", name);
        let marked: Vec<String> = w.extensions.iter().map(|e| e.name.clone()).collect();
        (wl::WorkloadStatus::try_from(w.status).unwrap(), marked)
    };
    assert_eq!(status("new"), (wl::WorkloadStatus::Healthy, vec![]));
    assert_eq!(
        status("old"),
        (
            wl::WorkloadStatus::Unhealthy,
            vec![crate::xds::SERVING_WHILE_TERMINATING.to_owned()]
        )
    );
    assert_eq!(status("next"), (wl::WorkloadStatus::Unhealthy, vec![]));
    // Every one still backs the service (its waypoint and policies judge it).
    assert_eq!(workload(&resources, "shop", "next").services.len(), 1);

    // Both sides pick the ready endpoint only.
    let store = received(&resources);
    assert_eq!(picked(&native), ["new"]);
    assert_eq!(picked(&store.to_state()), ["new"]);

    // The ready one gone: the draining one serves until another is ready, never the unready one.
    let without_new = ROLLOUT.replace(
        "  - {name: new, namespace: shop, serviceAccount: api, node: b, ips: [10.1.0.2], labels: {app: api}}\n",
        "",
    );
    let native = mesh(&without_new);
    assert_eq!(picked(&native), ["old"]);
    assert_eq!(
        picked(&received(&Resources::from_state(&native)).to_state()),
        ["old"]
    );
    // Nothing ready nor draining: nothing to pick (the connection is refused, never sent to `next`).
    let native =
        mesh(&without_new.replace(", terminating: true}", ", ready: false, terminating: true}"));
    assert!(picked(&native).is_empty());
    assert!(picked(&received(&Resources::from_state(&native)).to_state()).is_empty());
    // `next` becomes ready: it takes over from the draining one.
    let native = mesh(&without_new.replace(", ready: false}", "}"));
    assert_eq!(picked(&native), ["next"]);
    assert_eq!(
        picked(&received(&Resources::from_state(&native)).to_state()),
        ["next"]
    );
}
