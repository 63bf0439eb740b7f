//! Services patched at a subscriber: given other ports, other addresses, another waypoint, added
//! and removed, each mesh compared with a whole build of the same store.

use std::net::IpAddr;
use std::sync::Arc;

use super::patch::{backs, by_hostname, pod, service, with_node_table};
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

    // Its UDP ports alone (veil's extension) changed: patched too.
    let udp = wl::Port {
        service_port: 53,
        target_port: 5354,
        ..Default::default()
    };
    api.extensions = vec![wl::Extension {
        name: UDP_PORTS_EXTENSION.into(),
        config: Some(prost_types::Any {
            type_url: PORT_LIST_TYPE.into(),
            value: wl::PortList { ports: vec![udp] }.encode_to_vec(),
        }),
    }];
    let after = change(&mut store, vec![S(api.clone())], &[], true, &looked_up);
    let svc = after.service_by_vip(vip).unwrap();
    assert_eq!(svc.udp_target_port(53), Some(5354));

    api.addresses[0].address = vec![10, 96, 0, 7];
    let after = change(&mut store, vec![S(api.clone())], &[], true, &looked_up);
    assert!(after.service_by_vip(vip).is_none());
    let svc = after
        .service_by_vip(moved)
        .expect("the service at its new address");
    assert_eq!(
        svc.udp_target_port(53),
        Some(5354),
        "its UDP ports move with it"
    );
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
    named.waypoint = by_hostname("gw.shop.svc.cluster.local");
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

// ---- Found by review: Services left out of the mesh, and addresses held for other reasons ----

/// A Service that takes the name of one left out of the mesh (its address a workload's), by
/// arriving or by a rename, is built whole: patched in, the next patch of the left-out one (a pod
/// that backs it changes, or its ports) would give the other its endpoints and ports.
#[test]
fn a_service_named_as_one_left_out_is_built_whole() {
    use wl::address::Type::{Service as S, Workload as W};
    for rename in [false, true] {
        let mut store = Store::new(MeshSettings::default());
        let (b_key, c_key) = (
            "shop/b.shop.svc.cluster.local",
            "shop/c.shop.svc.cluster.local",
        );
        let holder = pod("shop", "holder", "node-b", &[[10, 1, 0, 50]]);
        let mut pb = backs(
            pod("shop", "pb", "node-b", &[[10, 1, 0, 51]]),
            b_key,
            80,
            8080,
        );
        let pc = backs(
            pod("shop", "pc", "node-b", &[[10, 1, 0, 52]]),
            c_key,
            80,
            9090,
        );
        // shop/x at b's hostname: its address is holder's, so it is left out.
        let mut b = service("shop", "x", [10, 1, 0, 50], 80, 8080);
        b.hostname = "b.shop.svc.cluster.local".into();
        let mut c = service("shop", "c", [10, 96, 0, 60], 80, 9090);
        c.hostname = "c.shop.svc.cluster.local".into();
        let looked_up = [ip("10.1.0.50"), ip("10.96.0.60")];
        let mut first = vec![W(holder), W(pb.clone()), W(pc), S(b.clone())];
        if rename {
            first.push(S(c.clone()));
        }
        let mesh = change(&mut store, first, &[], false, &looked_up);
        assert!(mesh.service_by_vip(ip("10.1.0.50")).is_none());
        c.name = "x".into();
        change(&mut store, vec![S(c)], &[], false, &looked_up);
        pb.status = wl::WorkloadStatus::Unhealthy as i32;
        b.ports.push(wl::Port {
            service_port: 81,
            target_port: 8081,
            ..Default::default()
        });
        change(&mut store, vec![W(pb), S(b)], &[], false, &looked_up);
    }
}

/// An address a Service frees stays reserved while a workload left out claims it too, or a
/// waypoint's instance has it: a workload patched onto it would be in the mesh where a whole
/// build leaves it out (or reports another conflict).
#[test]
fn an_address_a_service_frees_stays_reserved_while_held_otherwise() {
    use wl::address::Type::{Service as S, Workload as W};
    // b (after a and c) claims 10.1.0.61 and a's 10.1.0.60: left out, both contested.
    let mut store = Store::new(MeshSettings::default());
    let a = pod("shop", "a", "node-b", &[[10, 1, 0, 60]]);
    let mut c = pod("shop", "c", "node-b", &[[10, 1, 0, 70]]);
    let b = pod("shop", "b", "node-b", &[[10, 1, 0, 61], [10, 1, 0, 60]]);
    let mut s = service("shop", "s", [10, 1, 0, 61], 80, 8080);
    let looked_up = [
        ip("10.1.0.60"),
        ip("10.1.0.61"),
        ip("10.1.0.70"),
        ip("10.96.0.80"),
    ];
    let vips = vec![W(a), W(c.clone()), W(b), S(s.clone())];
    let mesh = change(&mut store, vips, &[], false, &looked_up);
    assert!(mesh.service_by_vip(ip("10.1.0.61")).is_some());
    s.addresses[0].address = vec![10, 96, 0, 80];
    change(&mut store, vec![S(s)], &[], true, &looked_up);
    c.addresses = vec![vec![10, 1, 0, 61]];
    change(&mut store, vec![W(c)], &[], false, &looked_up);

    // w is the instance of two waypoints (both left out: they share it), at a Service's address.
    let mut store = Store::new(MeshSettings::default());
    let (gw1, gw2) = (
        "shop/gw1.shop.svc.cluster.local",
        "shop/gw2.shop.svc.cluster.local",
    );
    let w = pod("shop", "w", "node-b", &[[10, 1, 0, 90]]);
    let w = backs(backs(w, gw1, 15008, 15008), gw2, 15008, 15008);
    let mut u1 = pod("shop", "u1", "node-b", &[[10, 1, 0, 95]]);
    u1.waypoint = by_hostname("gw1.shop.svc.cluster.local");
    let mut u2 = pod("shop", "u2", "node-b", &[[10, 1, 0, 96]]);
    u2.waypoint = by_hostname("gw2.shop.svc.cluster.local");
    let mut s = service("shop", "s", [10, 1, 0, 90], 80, 8080);
    let looked_up = [ip("10.1.0.90"), ip("10.96.0.93")];
    let all = vec![
        W(w),
        S(service("shop", "gw1", [10, 96, 0, 91], 15008, 15008)),
        S(service("shop", "gw2", [10, 96, 0, 92], 15008, 15008)),
        W(u1),
        W(u2),
        S(s.clone()),
    ];
    let mesh = change(&mut store, all, &[], false, &looked_up);
    assert!(mesh.service_by_vip(ip("10.1.0.90")).is_some());
    s.addresses[0].address = vec![10, 96, 0, 93];
    change(&mut store, vec![S(s)], &[], true, &looked_up);
    let n = pod("shop", "n", "node-b", &[[10, 1, 0, 90]]);
    let mesh = change(&mut store, vec![W(n)], &[], false, &looked_up);
    assert!(mesh.workload_by_ip(ip("10.1.0.90")).is_none());
}

/// Services and pods drawn from small pools of names and addresses, so that they collide: names
/// shared, addresses a pod's and a service's, waypoints named by address and by hostname, pods
/// given addresses by the node. Every published mesh is compared with a whole build.
#[test]
fn services_colliding_in_names_and_addresses_patch_as_a_whole_build() {
    use wl::address::Type::{Service as S, Workload as W};
    let pool: Vec<[u8; 4]> = (1..=10)
        .map(|i| [10, 0, 0, i])
        .chain((1..=4).map(|i| [10, 96, 0, i]))
        .collect();
    let looked_up: Vec<IpAddr> = pool.iter().map(|o| IpAddr::from(*o)).collect();
    let hosts: Vec<String> = (0..5)
        .map(|i| format!("h{i}.shop.svc.cluster.local"))
        .collect();
    let keys: Vec<String> = hosts.iter().map(|h| format!("shop/{h}")).collect();
    let (mut patched_steps, mut readdressed) = (0, 0);
    for seed in 0..300 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut store, table) = with_node_table(Store::new(MeshSettings::default()));
        let gateway = |rng: &mut fastrand::Rng| match rng.u8(..6) {
            0..=2 => None,
            3 | 4 => Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Address(
                    wl::NetworkAddress {
                        address: pool[rng.usize(..pool.len())].to_vec(),
                        ..Default::default()
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            _ => by_hostname(&hosts[rng.usize(..hosts.len())]),
        };
        let pod_ips = |rng: &mut fastrand::Rng| -> Vec<Vec<u8>> {
            let n = [0, 1, 1, 1, 2][rng.usize(..5)];
            (0..n).map(|_| pool[rng.usize(..10)].to_vec()).collect()
        };
        let mut last: Option<Vec<String>> = None;
        for step in 0..40 {
            let (mut sent, mut removed) = (Vec::new(), Vec::new());
            for _ in 0..rng.usize(1..=2) {
                match rng.u8(..10) {
                    0..=3 => {
                        let name = format!("p{}", rng.u8(..8));
                        let mut w = pod("shop", &name, ["node-a", "node-b"][rng.usize(..2)], &[]);
                        w.addresses = pod_ips(&mut rng);
                        for _ in 0..rng.usize(0..=2) {
                            let key = &keys[rng.usize(..keys.len())];
                            w = backs(w, key, 80, [0, 8080][rng.usize(..2)]);
                        }
                        if rng.u8(..3) == 0 {
                            w.waypoint = gateway(&mut rng);
                        }
                        if rng.u8(..4) == 0 {
                            w.status = wl::WorkloadStatus::Unhealthy as i32;
                        }
                        if rng.u8(..6) == 0 {
                            w.tunnel_protocol = wl::TunnelProtocol::None as i32;
                        }
                        sent.push(W(w));
                    }
                    4 => removed.push(workload_name("shop", &format!("p{}", rng.u8(..8)))),
                    5..=7 => {
                        let name = ["x", "y", "h0", "h1", "h2", "h3", "h4"][rng.usize(..7)];
                        let target = [0, 8080][rng.usize(..2)];
                        let mut s = service("shop", name, [0, 0, 0, 0], 80, target);
                        s.hostname = hosts[rng.usize(..hosts.len())].clone();
                        s.addresses = pod_ips(&mut rng)
                            .into_iter()
                            .chain(rng.bool().then(|| pool[rng.usize(10..14)].to_vec()))
                            .map(|address| wl::NetworkAddress {
                                address,
                                ..Default::default()
                            })
                            .collect();
                        s.waypoint = gateway(&mut rng);
                        sent.push(S(s));
                    }
                    8 => removed.push(keys[rng.usize(..keys.len())].clone()),
                    _ => {
                        let name = format!("p{}", rng.u8(..8));
                        let ips = pod_ips(&mut rng)
                            .iter()
                            .map(|b| crate::xds::ip_from_bytes(b).unwrap())
                            .collect();
                        table.lock().unwrap().insert(("shop".into(), name), ips);
                        store.node_addresses_changed();
                    }
                }
            }
            let list: Vec<_> = sent
                .into_iter()
                .map(|a| {
                    let name = match &a {
                        W(w) => w.uid.clone(),
                        S(s) => format!("{}/{}", s.namespace, s.hostname),
                    };
                    address_resource(&name, &format!("v{}", rng.u32(..)), a)
                })
                .collect();
            store.apply(Kind::Address, &list, &removed);
            let (mesh, patched) = match store.patch() {
                Some(mesh) => (mesh, true),
                None => (store.build_whole(), false),
            };
            let whole = store.to_state();
            assert_eq!(
                mesh_fingerprint(&mesh, &looked_up) + &policies_fingerprint(&mesh),
                mesh_fingerprint(&whole, &looked_up) + &policies_fingerprint(&whole),
                "seed {seed}, step {step} (patched: {patched})"
            );
            // Services entering, leaving or moving in a patched mesh.
            let services: Vec<String> = mesh
                .services()
                .map(|s| format!("{} {:?} {:?}", s.key(), s.vips, s.waypoint))
                .collect();
            if patched && last.as_ref().is_some_and(|l| *l != services) {
                readdressed += 1;
            }
            patched_steps += usize::from(patched);
            last = Some(services);
        }
    }
    assert!(patched_steps > 1_500, "{patched_steps} steps patched");
    assert!(readdressed > 100, "{readdressed} services moved in a patch");
}
