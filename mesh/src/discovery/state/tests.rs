//! Snapshot assembly: a conflicting object is isolated (left out and reported) by
//! `build_isolating`, and is an error for `build`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::discovery::model::ServicePort;
use crate::identity::Identity;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn workload(name: &str, address: &str, app: &str) -> Workload {
    Workload {
        uid: format!("shop/{name}").into(),
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
        node: "node-a".into(),
        ips: vec![ip(address)],
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        naming: std::sync::Arc::new(crate::discovery::Naming {
            workload: name.into(),
            app: app.into(),
            version: "latest".into(),
        }),
        netns: None,
        enrolled: true,
        serving: crate::discovery::Serving::Ready,
        identity: Identity::new("cluster.local", "shop", name).unwrap(),
        waypoint: None,
        waypoint_conflict: Vec::new(),
        telemetry: None,
        policies: Default::default(),
    }
}

fn service(name: &str, vip: &str, app: &str) -> Service {
    Service {
        name: name.into(),
        namespace: "shop".into(),
        vips: vec![ip(vip)],
        ports: vec![ServicePort {
            port: 80,
            target_port: 8080,
        }],
        udp_ports: Vec::new(),
        selector: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        endpoints: Vec::new(),
        waypoint: None,
    }
}

fn waypoint(name: &str, address: &str) -> Waypoint {
    Waypoint {
        name: name.into(),
        namespace: "shop".into(),
        identity: Identity::new("cluster.local", "shop", name).unwrap(),
        ips: vec![ip(address)],
    }
}

#[test]
fn a_service_address_taken_twice_isolates_the_later_service_only() {
    let parts = || {
        (
            vec![workload("cart", "10.1.0.1", "cart")],
            vec![
                service("cart", "10.96.0.1", "cart"),
                service("squatter", "10.96.0.1", "cart"),
                service("other", "10.96.0.2", "cart"),
            ],
        )
    };
    let (w, s) = parts();
    let state = MeshState::build_isolating(
        MeshSettings::default(),
        w,
        s,
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    assert_eq!(state.service_by_vip(ip("10.96.0.1")).unwrap().name, "cart");
    assert_eq!(state.service_by_vip(ip("10.96.0.2")).unwrap().name, "other");
    assert_eq!(state.services().len(), 2);
    let rejected: Vec<String> = state.rejected().iter().map(ToString::to_string).collect();
    assert_eq!(
        rejected,
        ["service shop/squatter: address 10.96.0.1 is also service shop/cart"]
    );
    // The cart pod backs both remaining services.
    let cart = state.workload_by_ip(ip("10.1.0.1")).unwrap();
    assert_eq!(state.services_of(cart).len(), 2);
    // A strict source refuses the whole thing with the same reason.
    let (w, s) = parts();
    let err = MeshState::build(
        MeshSettings::default(),
        w,
        s,
        Vec::new(),
        Vec::new(),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), rejected[0]);
}

#[test]
fn waypoints_sharing_an_address_are_both_left_out_and_their_workloads_fail_closed() {
    let mut fronted = workload("cart", "10.1.0.1", "cart");
    fronted.waypoint = Some(WaypointRef {
        namespace: "shop".into(),
        name: "wp-a".into(),
    });
    let state = MeshState::build_isolating(
        MeshSettings::default(),
        vec![fronted],
        Vec::new(),
        vec![
            waypoint("wp-a", "10.1.0.50"),
            waypoint("wp-b", "10.1.0.50"),
            waypoint("wp-c", "10.1.0.51"),
        ],
        Vec::new(),
        Vec::new(),
    );
    assert_eq!(state.waypoints().len(), 1);
    assert_eq!(state.rejected().len(), 2);
    let cart = state.workload_by_ip(ip("10.1.0.1")).unwrap();
    // Still behind wp-a, which no longer exists: nothing can reach it (fails closed).
    let reference = cart.waypoint.as_ref().unwrap();
    assert!(state.waypoint(reference).is_none());
}

#[test]
fn a_workload_fronted_by_two_waypoints_is_marked_conflicting() {
    let mut a = service("cart", "10.96.0.1", "cart");
    a.waypoint = Some(WaypointRef {
        namespace: "shop".into(),
        name: "wp-a".into(),
    });
    let mut b = service("cart-admin", "10.96.0.2", "cart");
    b.waypoint = Some(WaypointRef {
        namespace: "shop".into(),
        name: "wp-b".into(),
    });
    let state = MeshState::build_isolating(
        MeshSettings::default(),
        vec![workload("cart", "10.1.0.1", "cart")],
        vec![a, b],
        vec![waypoint("wp-a", "10.1.0.50"), waypoint("wp-b", "10.1.0.51")],
        Vec::new(),
        Vec::new(),
    );
    let cart = state.workload_by_ip(ip("10.1.0.1")).unwrap();
    assert_eq!(cart.waypoint.as_ref().unwrap().name, "wp-a");
    assert_eq!(cart.waypoint_conflict()[0].name, "wp-b");
    assert_eq!(state.rejected().len(), 1);
}

/// Replicas backing the same services share one list of them, and workloads with the same
/// policies one list of those, when the mesh is built (the patch path: `xds::tests::patch`): a
/// subscriber holds each once per set, not once per pod (issue 11's memory per workload).
#[test]
fn replicas_share_the_lists_they_hold_alike() {
    let endpoints = ["shop/cart-1", "shop/cart-2", "shop/cart-3"].map(std::sync::Arc::<str>::from);
    let services = ["cart", "cart-admin"].map(|name| Service {
        endpoints: endpoints.to_vec(),
        ..service(
            name,
            if name == "cart" {
                "10.96.0.1"
            } else {
                "10.96.0.2"
            },
            "cart",
        )
    });
    let workloads = (1..=3)
        .map(|i| workload(&format!("cart-{i}"), &format!("10.1.0.{i}"), "cart"))
        .collect();
    let state = MeshState::build(
        MeshSettings::default(),
        workloads,
        services.into(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let first = state.service_keys_of_uid("shop/cart-1");
    assert_eq!(first.len(), 2);
    assert!(std::ptr::eq(
        first,
        state.service_keys_of_uid("shop/cart-2")
    ));

    use crate::policy::{PolicyId, Scope, deny_everything};
    let policy = Arc::new(deny_everything(PolicyId::new("shop", "p"), Scope::Named));
    let other = Arc::new(deny_everything(PolicyId::new("shop", "p"), Scope::Named));
    // cart-3's policy has the same name but is another object: its own list.
    let list = |w: &Workload| -> Arc<[Arc<AuthzPolicy>]> {
        let p = if &*w.name == "cart-3" {
            &other
        } else {
            &policy
        };
        Arc::from(vec![p.clone()])
    };
    let state = state.with_received_policies(Vec::new(), list, Vec::new(), true);
    let held = |uid: &str| state.workload(uid).unwrap().policies.get().unwrap().clone();
    assert!(Arc::ptr_eq(&held("shop/cart-1"), &held("shop/cart-2")));
    assert!(!Arc::ptr_eq(&held("shop/cart-1"), &held("shop/cart-3")));
    assert_eq!(state.policy_lists().count(), 3);
}
