//! A patched mesh is the mesh a whole build gives: thousands of random changes (addresses taken,
//! contested and freed, services backed and left, waypoints named, policies missing, resources
//! refused, addresses filled in by the node), each patched mesh compared with a whole build of
//! the same store.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::subscriber::{address_resource, received, resource};
use super::*;
use crate::discovery::{MeshState, Workload};
use crate::testing::mesh_fingerprint;

/// A node's network plugin: the addresses it gave pods, by namespace and name.
type Table = HashMap<(String, String), Vec<IpAddr>>;

struct Generator {
    rng: fastrand::Rng,
    templates: Vec<wl::Workload>,
    gateways: Vec<Option<wl::GatewayAddress>>,
    services: Vec<String>,
    policies: Vec<String>,
    addresses: Vec<IpAddr>,
    versions: u64,
}

impl Generator {
    fn ips(&mut self) -> Vec<Vec<u8>> {
        // Mostly one address of a pod's own; sometimes none, two, or one that is someone else's.
        let n = [0, 1, 1, 1, 1, 2][self.rng.usize(..6)];
        (0..n)
            .map(|_| {
                if self.rng.u8(..20) == 0 {
                    match self.addresses[self.rng.usize(..self.addresses.len())] {
                        IpAddr::V4(v4) => v4.octets().to_vec(),
                        IpAddr::V6(v6) => v6.octets().to_vec(),
                    }
                } else {
                    vec![10, 1, self.rng.u8(1..=250), self.rng.u8(1..=250)]
                }
            })
            .collect()
    }

    fn workload(&mut self) -> wl::Workload {
        let mut w = self.templates[self.rng.usize(..self.templates.len())].clone();
        // Mostly a pod of its own (with addresses of its own); else a change to a known one.
        if self.rng.u8(..4) != 0 {
            let name = format!("n{}", self.rng.u8(..40));
            w.namespace = ["shop", "ops", "fresh"][self.rng.usize(..3)].into();
            w.uid = workload_name(&w.namespace, &name);
            w.name = name;
            w.addresses = self.ips();
        } else if self.rng.bool() {
            w.addresses = self.ips();
        }
        if self.rng.u8(..3) == 0 {
            w.node = ["node-a", "node-b"][self.rng.usize(..2)].into();
        }
        if self.rng.u8(..3) == 0 {
            w.status = self.rng.i32(0..=1);
        }
        if self.rng.u8(..5) == 0 {
            w.tunnel_protocol = self.rng.i32(0..=1);
        }
        if self.rng.u8(..3) == 0 {
            w.services.clear();
            for _ in 0..self.rng.usize(0..=2) {
                let key = self.services[self.rng.usize(..self.services.len())].clone();
                let target = [0, 8080, 9090][self.rng.usize(..3)];
                let port = [80, 5432][self.rng.usize(..2)];
                w.services.insert(
                    key,
                    wl::PortList {
                        ports: vec![wl::Port {
                            service_port: port,
                            target_port: target,
                            ..Default::default()
                        }],
                    },
                );
            }
        }
        if self.rng.u8(..4) == 0 {
            w.waypoint = self.gateways[self.rng.usize(..self.gateways.len())].clone();
        }
        if self.rng.u8(..8) == 0 {
            w.authorization_policies = (0..self.rng.usize(0..=2))
                .map(|_| self.policies[self.rng.usize(..self.policies.len())].clone())
                .collect();
        }
        w
    }

    fn version(&mut self) -> String {
        self.versions += 1;
        format!("v{}", self.versions)
    }
}

#[test]
fn a_patched_mesh_is_the_mesh_a_whole_build_gives() {
    let resources = Resources::from_state(&state());
    let templates: Vec<wl::Workload> = resources
        .of(Kind::Address)
        .values()
        .filter_map(
            |e| match wl::Address::decode(e.body.as_ref()).ok()?.r#type? {
                wl::address::Type::Workload(w) => Some(w),
                wl::address::Type::Service(_) => None,
            },
        )
        .collect();
    let services: Vec<(String, wl::Service)> = resources
        .of(Kind::Address)
        .iter()
        .filter_map(
            |(name, e)| match wl::Address::decode(e.body.as_ref()).ok()?.r#type? {
                wl::address::Type::Service(s) => Some((name.to_string(), s)),
                wl::address::Type::Workload(_) => None,
            },
        )
        .collect();
    let mut gateways: Vec<Option<wl::GatewayAddress>> =
        templates.iter().map(|w| w.waypoint.clone()).collect();
    gateways.push(None);
    gateways.push(Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                address: vec![10, 1, 0, 5],
                ..Default::default()
            },
        )),
        hbone_mtls_port: 15008,
    }));
    let mut policy_names: Vec<String> = resources
        .of(Kind::Authorization)
        .keys()
        .map(ToString::to_string)
        .collect();
    policy_names.push("shop/not-sent".into());
    let mut service_keys: Vec<String> = services.iter().map(|(k, _)| k.clone()).collect();
    service_keys.push("shop/nowhere.shop.svc.cluster.local".into());
    let addresses: Vec<IpAddr> = [
        "10.1.0.1",
        "10.1.0.2",
        "10.1.0.3",
        "10.1.0.5",
        "10.1.0.7",
        "10.1.0.8",
        "10.2.0.1",
        "10.96.0.2",
        "10.9.0.1",
        "fd00::1",
        "fd00::7",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();

    // node-a's network plugin, whose table the test changes.
    let table: Arc<Mutex<Table>> = Arc::default();
    let lookup = {
        let table = table.clone();
        move |ns: &str, name: &str| {
            let table = table.lock().unwrap();
            table.get(&(ns.to_owned(), name.to_owned())).cloned()
        }
    };
    let mut store = received(&resources).with_node_addresses("node-a".into(), Arc::new(lookup));
    store.build_whole();
    let mut g = Generator {
        rng: fastrand::Rng::with_seed(0x5eed),
        templates,
        gateways,
        services: service_keys,
        policies: policy_names,
        addresses: addresses.clone(),
        versions: 0,
    };
    let (mut patched, mut whole) = (0, 0);
    for step in 0..3_000 {
        for _ in 0..g.rng.usize(1..=2) {
            match g.rng.u8(..100) {
                0..=69 => {
                    let w = g.workload();
                    let version = g.version();
                    let name = w.uid.clone();
                    store.apply(
                        Kind::Address,
                        &[address_resource(
                            &name,
                            &version,
                            wl::address::Type::Workload(w),
                        )],
                        &[],
                    );
                }
                70..=89 => {
                    let w = g.workload();
                    store.apply(Kind::Address, &[], &[w.uid]);
                }
                90..=94 => {
                    // The node's plugin gives (or takes back) a pod's address.
                    let w = g.workload();
                    let ips: Vec<IpAddr> = g
                        .ips()
                        .iter()
                        .filter_map(|b| crate::xds::ip_from_bytes(b).ok())
                        .collect();
                    table.lock().unwrap().insert((w.namespace, w.name), ips);
                    store.node_addresses_changed();
                }
                95 => {
                    // A body that is not a workload: refused.
                    let w = g.workload();
                    let version = g.version();
                    store.apply(
                        Kind::Address,
                        &[resource(Kind::Address, &w.uid, &version, vec![0xff, 0x01])],
                        &[],
                    );
                }
                96..=97 => {
                    let (name, mut s) = services[g.rng.usize(..services.len())].clone();
                    if g.rng.bool() {
                        s.ports.clear();
                    }
                    let version = g.version();
                    store.apply(
                        Kind::Address,
                        &[address_resource(
                            &name,
                            &version,
                            wl::address::Type::Service(s),
                        )],
                        &[],
                    );
                }
                98 => {
                    let name = g.policies[g.rng.usize(..g.policies.len())].clone();
                    store.apply(Kind::Authorization, &[], &[name]);
                }
                _ => {
                    // Every Authorization (back) as sent.
                    let all: Vec<_> = resources
                        .of(Kind::Authorization)
                        .iter()
                        .map(|(name, e)| resource(Kind::Authorization, name, "v1", e.body.to_vec()))
                        .collect();
                    store.apply(Kind::Authorization, &all, &[]);
                }
            }
        }
        let (mesh, was_patched) = match store.patch() {
            Some(mesh) => (mesh, true),
            None => (store.build_whole(), false),
        };
        if was_patched {
            patched += 1;
        } else {
            whole += 1;
        }
        let expected = mesh_fingerprint(&store.to_state(), &addresses);
        let got = mesh_fingerprint(&mesh, &addresses);
        if expected != got {
            let only = |a: &str, b: &str| -> Vec<String> {
                a.lines()
                    .filter(|l| !b.lines().any(|m| m == *l))
                    .map(str::to_owned)
                    .collect()
            };
            panic!(
                "step {step} (patched: {was_patched}): whole build only {:#?}\npatched only {:#?}",
                only(&expected, &got),
                only(&got, &expected)
            );
        }
    }
    // The comparison means something only if most changes were patched.
    assert!(patched > whole, "{patched} patched, {whole} built whole");
}

#[test]
fn a_patch_touches_only_the_changed_workload_and_its_services() {
    let mut store = received(&Resources::from_state(&state()));
    let before = store.build_whole();
    let resources = Resources::from_state(&state());
    let mut api = workload(&resources, "shop", "api");
    api.addresses = vec![vec![10, 1, 0, 42]];
    store.apply(
        Kind::Address,
        &[address_resource(
            &api.uid.clone(),
            "v2",
            wl::address::Type::Workload(api),
        )],
        &[],
    );
    let after = store.patch().expect("one workload moved: patched");
    let moved = after.workload_by_ip("10.1.0.42".parse().unwrap()).unwrap();
    assert_eq!(moved.name, "api");
    assert!(after.workload_by_ip("10.1.0.2".parse().unwrap()).is_none());
    // Untouched workloads are the same objects, not copies.
    let web = |s: &MeshState| -> Arc<Workload> {
        s.workload_by_ip("10.1.0.1".parse().unwrap())
            .unwrap()
            .clone()
    };
    assert!(Arc::ptr_eq(&web(&before), &web(&after)));
    // The service it backs now leads to it.
    let svc = after.service_by_vip("10.96.0.2".parse().unwrap()).unwrap();
    assert_eq!(after.endpoints(svc)[0].name, "api");
}

#[test]
fn a_burst_of_many_workloads_is_built_whole_off_the_caller() {
    let resources = Resources::from_state(&state());
    let template = workload(&resources, "shop", "web");
    let burst = |store: &mut Store, n: u8, from: u8| {
        let list: Vec<_> = (0..n)
            .flat_map(|hi| (0..=3).map(move |lo| (hi, lo)))
            .map(|(hi, lo)| {
                let mut w = template.clone();
                w.name = format!("b{from}-{hi}-{lo}");
                w.uid = workload_name("shop", &w.name);
                w.addresses = vec![vec![10, 7 + from, hi, lo]];
                address_resource(&w.uid.clone(), "v1", wl::address::Type::Workload(w))
            })
            .collect();
        store.apply(Kind::Address, &list, &[]);
    };
    let mut store = received(&resources);
    store.build_whole();
    burst(&mut store, 100, 0); // 400 workloads
    let patched = store.patch().expect("a burst of 400 is patched");
    assert_eq!(
        patched.summary().workloads,
        state().summary().workloads + 400
    );
    burst(&mut store, 150, 1); // 600 workloads
    assert!(store.patch().is_none(), "a burst of 600 is built whole");
    let whole = store.build_whole();
    assert_eq!(
        whole.summary().workloads,
        state().summary().workloads + 1000
    );
}
