//! Services patched at a subscriber: given other ports, other addresses, another waypoint, added
//! and removed, each mesh compared with a whole build of the same store.

use std::net::IpAddr;
use std::sync::Arc;

use super::patch::{backs, pod, service};
use super::subscriber::{address_resource, received};
use super::*;
use crate::discovery::{MeshState, WaypointRef};
use crate::testing::{mesh_fingerprint, policies_fingerprint};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends `sent` and removes `removed`, then checks the mesh is patched (`patched`) or built whole
/// and is the mesh a whole build gives.
fn change(
    store: &mut Store,
    sent: Vec<wl::address::Type>,
    removed: &[&str],
    patched: bool,
    looked_up: &[IpAddr],
) -> MeshState {
    let list: Vec<_> = sent
        .into_iter()
        .map(|a| {
            let name = match &a {
                wl::address::Type::Workload(w) => w.uid.clone(),
                wl::address::Type::Service(s) => format!("{}/{}", s.namespace, s.hostname),
            };
            address_resource(&name, &format!("v{}", fastrand::u32(..)), a)
        })
        .collect();
    let removed: Vec<String> = removed.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(store.apply(Kind::Address, &list, &removed), vec![]);
    let mesh = match store.patch() {
        Some(mesh) => {
            assert!(patched, "patched, where a whole build was expected");
            mesh
        }
        None => {
            assert!(!patched, "built whole, where a patch was expected");
            store.build_whole()
        }
    };
    let whole = store.to_state();
    assert_eq!(
        mesh_fingerprint(&mesh, looked_up) + &policies_fingerprint(&mesh),
        mesh_fingerprint(&whole, looked_up) + &policies_fingerprint(&whole)
    );
    mesh
}

/// A service received again with other ports is patched (its ports recomputed, its endpoints
/// the same objects); with another address it is taken out and put back, the workloads that back
/// it with it; onto an address a workload has, it is built whole (the whole build leaves it out
/// and says why).
#[test]
fn a_service_given_other_ports_or_addresses_is_patched_but_not_onto_a_taken_address() {
    use wl::address::Type::Service as S;
    let resources = Resources::from_state(&state());
    let mut store = received(&resources);
    let before = store.build_whole();
    let name = service_name("shop", "api");
    let S(mut api) = address(&resources, &name) else {
        panic!("{name} is not a service");
    };
    let (vip, moved) = (ip("10.96.0.2"), ip("10.96.0.7"));
    let looked_up = [vip, moved, ip("10.1.0.1"), ip("10.1.0.2")];
    api.ports.push(wl::Port {
        service_port: 9090,
        target_port: 9090,
        ..Default::default()
    });
    let after = change(&mut store, vec![S(api.clone())], &[], true, &looked_up);
    let ports: Vec<(u16, u16)> = after
        .service_by_vip(vip)
        .unwrap()
        .ports
        .iter()
        .map(|p| (p.port, p.target_port))
        .collect();
    assert_eq!(ports, [(80, 8080), (9090, 9090)]);
    // Its endpoints and the workloads are the same objects, not copies.
    let api_workload = |s: &MeshState| s.workload_by_ip(ip("10.1.0.2")).unwrap().clone();
    assert!(Arc::ptr_eq(&api_workload(&before), &api_workload(&after)));

    api.addresses[0].address = vec![10, 96, 0, 7];
    let after = change(&mut store, vec![S(api.clone())], &[], true, &looked_up);
    assert!(after.service_by_vip(vip).is_none());
    let svc = after
        .service_by_vip(moved)
        .expect("the service at its new address");
    assert_eq!(&*after.endpoints(svc)[0].name, "api");
    assert_eq!(&*after.services_of(&api_workload(&after))[0].name, "api");

    api.addresses[0].address = vec![10, 1, 0, 1];
    let whole = change(&mut store, vec![S(api)], &[], false, &looked_up);
    assert!(whole.service_by_vip(ip("10.1.0.1")).is_none());
    let reports: Vec<String> = whole.rejected().iter().map(ToString::to_string).collect();
    assert!(
        reports.iter().any(|r| r.contains("10.1.0.1")),
        "{reports:?}"
    );
}

/// A new Service arrives with the pod that backs it, is put behind a waypoint, moves, and is
/// removed: each patched, the pod's list of services and the waypoint in front of it following.
/// One naming a waypoint not in the mesh, or the address of a service removed while another
/// left out claims it too, is built whole.
#[test]
fn a_service_added_put_behind_a_waypoint_and_removed_is_patched_with_its_endpoints() {
    use wl::address::Type::{Service as S, Workload as W};
    let resources = Resources::from_state(&state());
    let mut store = received(&resources);
    store.build_whole();
    let wp = workload(&resources, "shop", "front").waypoint;
    assert!(wp.is_some(), "the fixture's front is behind wp");
    let key = "shop/cart.shop.svc.cluster.local";
    let (vip, pod_ip) = (ip("10.96.0.20"), ip("10.1.0.20"));
    let looked_up = [vip, pod_ip, ip("10.96.0.21"), ip("10.9.0.1")];
    let cart_pod = backs(
        pod("shop", "cart", "node-a", &[[10, 1, 0, 20]]),
        key,
        80,
        8080,
    );
    let mut cart = service("shop", "cart", [10, 96, 0, 20], 80, 8080);

    let mesh = change(
        &mut store,
        vec![W(cart_pod.clone()), S(cart.clone())],
        &[],
        true,
        &looked_up,
    );
    let svc = mesh.service_by_vip(vip).expect("cart is in the mesh");
    assert_eq!(&*mesh.endpoints(svc)[0].name, "cart");
    let pod_of = |m: &MeshState| m.workload_by_ip(pod_ip).unwrap().clone();
    assert_eq!(&*mesh.services_of(&pod_of(&mesh))[0].name, "cart");
    assert_eq!(pod_of(&mesh).waypoint, None);

    cart.waypoint = wp;
    let mesh = change(&mut store, vec![S(cart.clone())], &[], true, &looked_up);
    let behind = WaypointRef {
        namespace: "shop".into(),
        name: "wp".into(),
    };
    assert_eq!(pod_of(&mesh).waypoint, Some(behind.clone()));
    assert_eq!(mesh.service_by_vip(vip).unwrap().waypoint, Some(behind));

    cart.addresses[0].address = vec![10, 96, 0, 21];
    cart.waypoint = None;
    let mesh = change(&mut store, vec![S(cart.clone())], &[], true, &looked_up);
    assert!(mesh.service_by_vip(vip).is_none());
    assert_eq!(pod_of(&mesh).waypoint, None);

    let mesh = change(&mut store, vec![], &[key], true, &looked_up);
    assert!(mesh.services_of(&pod_of(&mesh)).is_empty());
    assert!(mesh.service_by_vip(ip("10.96.0.21")).is_none());

    // Back, naming a waypoint at an address nothing has: built whole (it is reported missing).
    cart.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                address: vec![10, 1, 0, 77],
                ..Default::default()
            },
        )),
        hbone_mtls_port: 15008,
    });
    change(&mut store, vec![S(cart.clone())], &[], false, &looked_up);

    // A waypoint named by hostname before its Service arrives (reported missing); the Service
    // arriving makes it a waypoint, its endpoints its instances: built whole.
    let mut named = pod("shop", "named", "node-b", &[[10, 1, 0, 30]]);
    named.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "shop".into(),
                hostname: "gw.shop.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    });
    change(&mut store, vec![W(named)], &[], false, &looked_up);
    // (Its name is not its hostname's first label: the waypoint is then known by its name.)
    let mut gw = service("shop", "gateway", [10, 96, 0, 30], 15008, 15008);
    gw.hostname = "gw.shop.svc.cluster.local".into();
    let mesh = change(&mut store, vec![S(gw)], &[], false, &looked_up);
    let named = mesh.workload_by_ip(ip("10.1.0.30")).unwrap();
    assert_eq!(named.waypoint.as_ref().unwrap().name, "gateway");

    // Two services claim one address: the second is left out. Taking out the first lets the
    // second in: built whole.
    cart.waypoint = None;
    let mut other = service("shop", "other", [10, 96, 0, 21], 80, 8080);
    other.hostname = "other.shop.svc.cluster.local".into();
    let mesh = change(&mut store, vec![S(cart), S(other)], &[], false, &looked_up);
    let at = mesh.service_by_vip(ip("10.96.0.21")).unwrap();
    assert_eq!(&*at.name, "cart");
    let mesh = change(&mut store, vec![], &[key], false, &looked_up);
    assert_eq!(
        &*mesh.service_by_vip(ip("10.96.0.21")).unwrap().name,
        "other"
    );
}
