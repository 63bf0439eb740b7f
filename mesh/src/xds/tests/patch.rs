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
use crate::testing::{mesh_fingerprint, policies_fingerprint};
use crate::xds::proto::istio::security as sec;

/// A node's network plugin: the addresses it gave pods, by namespace and name.
type Table = HashMap<(String, String), Vec<IpAddr>>;

/// `store` on node-a, whose network plugin's table (returned) the test changes.
pub(super) fn with_node_table(store: Store) -> (Store, Arc<Mutex<Table>>) {
    let table: Arc<Mutex<Table>> = Arc::default();
    let lookup = {
        let table = table.clone();
        move |ns: &str, name: &str| {
            let table = table.lock().unwrap();
            table.get(&(ns.to_owned(), name.to_owned())).cloned()
        }
    };
    let store = store.with_node_addresses("node-a".into(), Arc::new(lookup));
    (store, table)
}

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

fn send_service(store: &mut Store, name: &str, version: &str, s: wl::Service) {
    let list = [address_resource(
        name,
        version,
        wl::address::Type::Service(s),
    )];
    store.apply(Kind::Address, &list, &[]);
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
    let sent: Vec<(String, sec::Authorization)> = resources
        .of(Kind::Authorization)
        .iter()
        .map(|(name, e)| {
            let a = sec::Authorization::decode(e.body.as_ref()).unwrap();
            (name.to_string(), a)
        })
        .collect();
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
        "10.96.1.1",
        "10.96.1.2",
        "10.96.1.3",
        "fd00::1",
        "fd00::7",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();

    let (mut store, table) = with_node_table(received(&resources));
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
    let (mut policies_patched, mut services_patched, mut namespaces_patched) = (0, 0, 0);
    let mut services_before: Vec<String> = Vec::new();
    for step in 0..3_000 {
        let (mut policy_changed, mut namespace_changed) = (false, false);
        for _ in 0..g.rng.usize(1..=2) {
            let what = g.rng.u8(..118);
            policy_changed |= (98..106).contains(&what);
            namespace_changed |= (114..117).contains(&what);
            match what {
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
                    send_service(&mut store, &name, &g.version(), s);
                }
                98 => {
                    let name = g.policies[g.rng.usize(..g.policies.len())].clone();
                    store.apply(Kind::Authorization, &[], &[name]);
                }
                100..=105 => {
                    // One Authorization (or one never sent) with another scope, action or rules.
                    let name = g.policies[g.rng.usize(..g.policies.len())].clone();
                    let (namespace, local) = name.split_once('/').unwrap();
                    let mut a = sent
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or_else(sec::Authorization::default, |(_, a)| a.clone());
                    a.name = local.into();
                    a.namespace = namespace.into();
                    a.scope = [
                        sec::Scope::WorkloadSelector,
                        sec::Scope::WorkloadSelector,
                        sec::Scope::Namespace,
                        sec::Scope::Global,
                    ][g.rng.usize(..4)] as i32;
                    a.action = [sec::Action::Allow, sec::Action::Deny][g.rng.usize(..2)] as i32;
                    if g.rng.bool() {
                        a.rules = vec![sec::Rule {
                            clauses: vec![sec::Clause {
                                matches: vec![sec::Match {
                                    namespaces: vec![sec::StringMatch {
                                        match_type: Some(sec::string_match::MatchType::Exact(
                                            ["shop", "ops"][g.rng.usize(..2)].into(),
                                        )),
                                    }],
                                    ..Default::default()
                                }],
                            }],
                        }];
                    }
                    let version = g.version();
                    store.apply(
                        Kind::Authorization,
                        &[resource(
                            Kind::Authorization,
                            &name,
                            &version,
                            a.encode_to_vec(),
                        )],
                        &[],
                    );
                }
                106..=107 => {
                    // A service removed (or one never sent).
                    let key = g.services[g.rng.usize(..g.services.len())].clone();
                    store.apply(Kind::Address, &[], &[key]);
                }
                108..=111 => {
                    // A service (back, or new: one that workloads may name) with other addresses,
                    // another name or another waypoint.
                    let (name, mut s) = if g.rng.u8(..3) == 0 {
                        let (_, mut s) = services[0].clone();
                        s.name = "nowhere".into();
                        s.namespace = "shop".into();
                        s.hostname = "nowhere.shop.svc.cluster.local".into();
                        ("shop/nowhere.shop.svc.cluster.local".to_owned(), s)
                    } else {
                        services[g.rng.usize(..services.len())].clone()
                    };
                    match g.rng.u8(..5) {
                        0 => {
                            // Another address: a fresh one, or one that may be taken.
                            let ip = if g.rng.bool() {
                                vec![10, 96, 1, g.rng.u8(1..=3)]
                            } else {
                                match addresses[g.rng.usize(..addresses.len())] {
                                    IpAddr::V4(v4) => v4.octets().to_vec(),
                                    IpAddr::V6(v6) => v6.octets().to_vec(),
                                }
                            };
                            s.addresses = vec![wl::NetworkAddress {
                                address: ip,
                                ..Default::default()
                            }];
                        }
                        1 => s.waypoint = g.gateways[g.rng.usize(..g.gateways.len())].clone(),
                        2 => s.name = format!("{}-renamed", s.name),
                        3 => s.name = services[g.rng.usize(..services.len())].1.name.clone(),
                        _ => {}
                    }
                    send_service(&mut store, &name, &g.version(), s);
                }
                114..=116 => {
                    // A namespace enrolled (or one that cannot be read), or no longer.
                    let name = ["shop", "ops", "fresh", "empty"][g.rng.usize(..4)];
                    if g.rng.bool() {
                        store.apply(Kind::Namespace, &[], &[name.to_owned()]);
                    } else {
                        let body = if g.rng.u8(..6) == 0 {
                            vec![0xff, 0x01]
                        } else {
                            crate::xds::proto::veil::AmbientNamespace { name: name.into() }
                                .encode_to_vec()
                        };
                        let version = g.version();
                        store.apply(
                            Kind::Namespace,
                            &[resource(Kind::Namespace, name, &version, body)],
                            &[],
                        );
                    }
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
            policies_patched += usize::from(policy_changed);
            namespaces_patched += usize::from(namespace_changed);
        } else {
            whole += 1;
        }
        // Services entering, leaving or moving in a patched mesh.
        let services_now: Vec<String> = mesh
            .services()
            .map(|s| format!("{} {:?} {:?}", s.key(), s.vips, s.waypoint))
            .collect();
        if was_patched && services_now != services_before {
            services_patched += 1;
        }
        services_before = services_now;
        let whole_mesh = store.to_state();
        let expected =
            mesh_fingerprint(&whole_mesh, &addresses) + &policies_fingerprint(&whole_mesh);
        let got = mesh_fingerprint(&mesh, &addresses) + &policies_fingerprint(&mesh);
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
    assert!(
        policies_patched > 60,
        "{policies_patched} Authorization changes patched"
    );
    assert!(
        services_patched > 20,
        "{services_patched} services added, removed or readdressed, patched"
    );
    assert!(
        namespaces_patched > 40,
        "{namespaces_patched} namespaces enrolled or not, patched"
    );
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
    assert_eq!(&*moved.name, "api");
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
    assert_eq!(&*after.endpoints(svc)[0].name, "api");
}

pub(super) fn pod(namespace: &str, name: &str, node: &str, ips: &[[u8; 4]]) -> wl::Workload {
    wl::Workload {
        uid: workload_name(namespace, name),
        name: name.into(),
        namespace: namespace.into(),
        service_account: name.into(),
        node: node.into(),
        addresses: ips.iter().map(|ip| ip.to_vec()).collect(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        status: wl::WorkloadStatus::Healthy as i32,
        ..Default::default()
    }
}

/// A waypoint named by its Service's hostname, in `shop`.
pub(super) fn by_hostname(hostname: &str) -> Option<wl::GatewayAddress> {
    Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "shop".into(),
                hostname: hostname.into(),
            },
        )),
        hbone_mtls_port: 15008,
    })
}

pub(super) fn backs(mut w: wl::Workload, service: &str, port: u32, target: u32) -> wl::Workload {
    let ports = wl::PortList {
        ports: vec![wl::Port {
            service_port: port,
            target_port: target,
            ..Default::default()
        }],
    };
    w.services.insert(service.into(), ports);
    w
}

pub(super) fn service(
    namespace: &str,
    name: &str,
    vip: [u8; 4],
    port: u32,
    target: u32,
) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: namespace.into(),
        hostname: format!("{name}.{namespace}.svc.cluster.local"),
        addresses: vec![wl::NetworkAddress {
            address: vip.to_vec(),
            ..Default::default()
        }],
        ports: vec![wl::Port {
            service_port: port,
            target_port: target,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Sends `addresses` (workloads and services), then publishes as the client does and checks the
/// mesh against a whole build.
pub(super) fn send_and_compare(
    store: &mut Store,
    addresses: Vec<wl::address::Type>,
    looked_up: &[IpAddr],
) {
    let mut list = Vec::new();
    for (i, a) in addresses.into_iter().enumerate() {
        let name = match &a {
            wl::address::Type::Workload(w) => w.uid.clone(),
            wl::address::Type::Service(s) => format!("{}/{}", s.namespace, s.hostname),
        };
        list.push(address_resource(
            &name,
            &format!("v{i}-{}", fastrand::u32(..)),
            a,
        ));
    }
    assert_eq!(store.apply(Kind::Address, &list, &[]), vec![]);
    let published = match store.patch() {
        Some(mesh) => mesh,
        None => store.build_whole(),
    };
    assert_eq!(
        mesh_fingerprint(&published, looked_up),
        mesh_fingerprint(&store.to_state(), looked_up)
    );
}

#[test]
fn a_waypoint_instance_with_addresses_from_the_node_keeps_them() {
    use wl::address::Type::{Service as S, Workload as W};
    let filled: Vec<IpAddr> = vec!["10.1.0.50".parse().unwrap(), "10.1.0.51".parse().unwrap()];
    let lookup = {
        let filled = filled.clone();
        move |ns: &str, name: &str| (ns == "shop" && name == "wp-0").then(|| filled.clone())
    };
    let mut store =
        Store::new(MeshSettings::default()).with_node_addresses("node-a".into(), Arc::new(lookup));
    let wp_key = "shop/wp.shop.svc.cluster.local";
    let mut front = pod("shop", "front", "node-b", &[[10, 1, 0, 1]]);
    front.waypoint = by_hostname("wp.shop.svc.cluster.local");
    let instance = backs(pod("shop", "wp-0", "node-a", &[]), wp_key, 15008, 15008);
    send_and_compare(
        &mut store,
        vec![
            S(service("shop", "wp", [10, 96, 0, 9], 15008, 15008)),
            W(front),
            W(instance),
        ],
        &filled,
    );
    let mesh = store.to_state();
    let waypoint = mesh
        .waypoints()
        .into_iter()
        .find(|w| w.name == "wp")
        .expect("the waypoint");
    assert_eq!(
        waypoint.ips, filled,
        "its instance's addresses, as the node filled them in"
    );
    // A later claim on the instance's second address is left out, patched or not.
    send_and_compare(
        &mut store,
        vec![W(pod("shop", "late", "node-b", &[[10, 1, 0, 51]]))],
        &filled,
    );
    assert!(store.to_state().workload_by_ip(filled[1]).is_none());
}

#[test]
fn reports_on_services_left_out_of_the_mesh_follow_their_endpoints() {
    use wl::address::Type::{Service as S, Workload as W};
    let mut store = Store::new(MeshSettings::default());
    // shop/b shares shop/a's address: left out, but its port is still judged.
    let w = backs(
        pod("shop", "w", "node-b", &[[10, 1, 0, 7]]),
        "shop/b.shop.svc.cluster.local",
        80,
        8080,
    );
    send_and_compare(
        &mut store,
        vec![
            S(service("shop", "a", [10, 96, 0, 1], 80, 8080)),
            S(service("shop", "b", [10, 96, 0, 1], 80, 0)),
            W(w.clone()),
        ],
        &[],
    );
    store.apply(Kind::Address, &[], std::slice::from_ref(&w.uid));
    let published = store.patch().unwrap_or_else(|| store.build_whole());
    assert_eq!(
        mesh_fingerprint(&published, &[]),
        mesh_fingerprint(&store.to_state(), &[])
    );
    send_and_compare(&mut store, vec![W(w)], &[]);
}

#[test]
fn a_workload_of_services_in_two_namespaces_lists_them_as_a_whole_build_does() {
    use wl::address::Type::{Service as S, Workload as W};
    let mut store = Store::new(MeshSettings::default());
    let w = backs(
        backs(
            pod("a", "w", "node-b", &[[10, 1, 0, 7]]),
            "a/x.a.svc.cluster.local",
            80,
            8080,
        ),
        "a-b/y.a-b.svc.cluster.local",
        80,
        8080,
    );
    send_and_compare(
        &mut store,
        vec![
            S(service("a", "x", [10, 96, 0, 1], 80, 8080)),
            S(service("a-b", "y", [10, 96, 0, 2], 80, 8080)),
            W(w.clone()),
        ],
        &[],
    );
    send_and_compare(&mut store, vec![W(w)], &[]);
}

/// Replicas hold one list of the services they back and one of their policies, and a replica
/// patched in after a restart takes those lists rather than copies (else churn would unshare them
/// one restart at a time: issue 11's memory per workload).
#[test]
fn a_restarted_replica_shares_its_replicas_lists_and_strings() {
    use wl::address::Type::{Service as S, Workload as W};
    let mut store = Store::new(MeshSettings::default());
    let policy = sec::Authorization {
        name: "reads".into(),
        namespace: "shop".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Allow as i32,
        ..Default::default()
    };
    let policies = [resource(
        Kind::Authorization,
        "shop/reads",
        "v1",
        policy.encode_to_vec(),
    )];
    assert_eq!(store.apply(Kind::Authorization, &policies, &[]), vec![]);
    let replica = |i: u8, ip: u8| {
        let mut w = backs(
            pod("shop", &format!("web-{i}"), "node-b", &[[10, 1, 0, ip]]),
            "shop/web.shop.svc.cluster.local",
            80,
            8080,
        );
        w.authorization_policies = vec!["shop/reads".into()];
        // A Deployment's replicas: one account, one set of names.
        w.service_account = "web".into();
        w.workload_name = "web".into();
        W(w)
    };
    let mut list = vec![S(service("shop", "web", [10, 96, 0, 1], 80, 8080))];
    list.extend((1..=6).map(|i| replica(i, i)));
    send_and_compare(&mut store, list, &[]);
    let lists = |mesh: &MeshState, name: &str| {
        let uid = workload_name("shop", name);
        let services = mesh.service_keys_of_uid(&uid).as_ptr();
        let policies = mesh.workload(&uid).unwrap().policies.get().unwrap().clone();
        (services, policies)
    };
    let mesh = store.build_whole();
    let (services, policies) = lists(&mesh, "web-1");
    assert_eq!(policies.len(), 1);
    for i in 2..=6 {
        let (s, p) = lists(&mesh, &format!("web-{i}"));
        assert_eq!(s, services, "built whole: one list of services");
        assert!(
            Arc::ptr_eq(&p, &policies),
            "built whole: one list of policies"
        );
    }
    // web-6 restarts (a new version at a new address): patched, and it shares the lists.
    let W(restarted) = replica(6, 16) else {
        unreachable!()
    };
    let update = address_resource(&restarted.uid.clone(), "v2", W(restarted));
    assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
    let patched = store.patch().expect("one restarted replica is patched");
    assert_eq!(
        mesh_fingerprint(&patched, &[]),
        mesh_fingerprint(&store.to_state(), &[])
    );
    assert!(
        patched
            .workload_by_ip("10.1.0.16".parse().unwrap())
            .is_some()
    );
    let (s, p) = lists(&patched, "web-6");
    assert_eq!(s, services, "patched: the replicas' list of services");
    assert!(
        Arc::ptr_eq(&p, &policies),
        "patched: the replicas' policies"
    );
    // And one copy of the strings they hold alike: the namespace, node and account of the one
    // patched in are the other replicas', and its uid is the one the store holds it under.
    let workload =
        |mesh: &MeshState, name: &str| mesh.workload(&workload_name("shop", name)).unwrap().clone();
    let (restarted, other) = (workload(&patched, "web-6"), workload(&mesh, "web-1"));
    assert!(Arc::ptr_eq(&restarted.namespace, &other.namespace));
    assert!(Arc::ptr_eq(&restarted.node, &other.node));
    assert!(Arc::ptr_eq(
        &restarted.service_account,
        &other.service_account
    ));
    assert!(Arc::ptr_eq(&restarted.naming, &other.naming));
    let again = store.build_whole();
    assert!(
        Arc::ptr_eq(&workload(&again, "web-6").uid, &restarted.uid),
        "a whole build and a patch share the store's uid"
    );
    assert!(Arc::ptr_eq(
        &workload(&again, "web-1").namespace,
        &other.namespace
    ));
}
