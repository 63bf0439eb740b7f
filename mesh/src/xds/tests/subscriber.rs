//! The subscriber's side: the resources received back into a mesh (`Store`), decided by veil —
//! equivalence with the mesh they were sent from, and what must fail closed.

use super::*;

pub(super) fn resource(
    kind: Kind,
    name: &str,
    version: &str,
    body: Vec<u8>,
) -> super::proto::discovery::Resource {
    kind.resource(name, version, body)
}

pub(super) fn received(resources: &Resources) -> Store {
    let mut store = Store::new(MeshSettings::default());
    // What a ztunnel subscribes to (policies as written are for waypoints).
    for kind in [Kind::Authorization, Kind::Address, Kind::Namespace] {
        let list: Vec<_> = resources
            .of(kind)
            .iter()
            .map(|(name, e)| resource(kind, name, &e.version, e.body.to_vec()))
            .collect();
        assert_eq!(store.apply(kind, &list, &[]), vec![], "{kind:?}");
    }
    store
}

/// veil ztunnel's admission (ztunnel/src/admission.rs) on either kind of mesh.
fn admits(state: &MeshState, w: &crate::discovery::Workload, c: &Conn<'_>) -> bool {
    match (&w.waypoint, c.source) {
        (Some(_), None) => false,
        (Some(reference), Some(peer)) => {
            let from_waypoint = w.waypoint_conflict().is_empty()
                && state
                    .waypoint(reference)
                    .is_some_and(|wp| &wp.identity == peer);
            let attrs = c.attributes();
            from_waypoint
                && (!state.istio_semantics() || evaluate(&state.authz_for(w), &attrs).allowed())
        }
        (None, _) => veil_allows(state, w, c),
    }
}

#[test]
fn a_mesh_received_over_xds_decides_as_the_mesh_it_was_sent_from() {
    let native = state();
    let xds = received(&Resources::from_state(&native)).to_state();
    assert!(xds.istio_semantics());
    assert_eq!(xds.rejected(), &[], "nothing refused");
    let id = |ns: &str, sa: &str| Identity::new("cluster.local", ns, sa).unwrap();
    let cases = grid();
    let mut checked = 0;
    let mut admitted = 0;
    for w in native.workloads() {
        let x = xds
            .workload_by_ip(w.ips[0])
            .unwrap_or_else(|| panic!("{} was not received", w.key()));
        assert_eq!(
            (x.enrolled, &x.identity, &x.node),
            (w.enrolled, &w.identity, &w.node)
        );
        assert_eq!(x.waypoint.is_some(), w.waypoint.is_some(), "{}", w.key());
        if !w.enrolled {
            continue;
        }
        for c in cases.conns(w.ips[0]) {
            let (peer, source_ip, port) = (c.source, c.source_ip, c.port);
            let theirs = admits(&native, &w, &c);
            let ours = admits(&xds, x, &c);
            let case = || {
                format!(
                    "{} from {:?} at {source_ip} to port {port}",
                    w.key(),
                    peer.map(Identity::principal)
                )
            };
            if w.waypoint.is_none() {
                assert_eq!(ours, theirs, "{}", case());
            } else {
                // Istio's reading also applies mesh- and namespace-wide policies to the
                // waypoint's tunnels: it may deny more, never admit more.
                assert!(!ours || theirs, "{}", case());
            }
            admitted += usize::from(theirs);
            checked += 1;
        }
    }
    assert!(
        checked > 1000 && admitted > 100 && admitted < checked - 100,
        "{admitted} of {checked}"
    );
    // Services, their endpoints and the waypoint come back too.
    let api = xds.service("shop", "api").expect("service api");
    assert_eq!(api.target_port(80), Some(8080));
    assert_eq!(xds.endpoints(api).len(), 1);
    let wp = xds.waypoints();
    assert_eq!(wp.len(), 1);
    assert_eq!(wp[0].identity, id("shop", "wp"));
    assert_eq!(wp[0].ips.len(), 2);
    assert_eq!(
        xds.ambient_namespaces().iter().collect::<Vec<_>>(),
        ["ops", "shop"]
    );
}

fn policy_body(a: &sec::Authorization) -> Vec<u8> {
    a.encode_to_vec()
}

fn allow_from(ns: &str, name: &str, scope: sec::Scope, principal: &str) -> sec::Authorization {
    sec::Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Exact(principal.into())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

fn decide(state: &MeshState, ip: &str, peer: &Identity) -> bool {
    let w = state.workload_by_ip(ip.parse().unwrap()).unwrap();
    let c = Conn {
        source: Some(peer),
        source_ip: "10.1.0.1".parse().unwrap(),
        destination_ip: w.ips[0],
        port: 8080,
    };
    admits(state, w, &c)
}

#[test]
fn what_is_refused_or_missing_fails_closed_and_the_rest_is_applied() {
    let native = state();
    let mut store = received(&Resources::from_state(&native));
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let api_ip = "10.1.0.2";
    let admin_ip = "10.2.0.1";
    assert!(decide(&store.to_state(), api_ip, &web));
    assert!(decide(&store.to_state(), admin_ip, &web));

    // A new version of a policy the api names, with an address of 5 bytes: refused, NACKed by
    // name, and the api admits nothing; the rest of the mesh still decides as before.
    let mut bad = allow_from(
        "shop",
        "api-from-web",
        sec::Scope::WorkloadSelector,
        "cluster.local/ns/shop/sa/web",
    );
    bad.rules[0].clauses[0].matches[0].source_ips = vec![sec::Address {
        address: vec![10, 0, 0, 0, 1],
        length: 8,
    }];
    let refused = store.apply(
        Kind::Authorization,
        &[resource(
            Kind::Authorization,
            "shop/api-from-web",
            "v2",
            policy_body(&bad),
        )],
        &[],
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].name, "shop/api-from-web");
    assert!(
        refused[0].reason.contains("5 bytes"),
        "{}",
        refused[0].reason
    );
    let state = store.to_state();
    assert!(!decide(&state, api_ip, &web), "the api admits nothing");
    assert!(
        decide(&state, admin_ip, &web),
        "the rest of the mesh is unaffected"
    );
    assert!(
        state
            .rejected()
            .iter()
            .any(|e| e.to_string().contains("shop/api-from-web"))
    );
    // Its versions are remembered, so a resumed stream does not get the same bad copy again.
    assert_eq!(
        store.versions(Kind::Authorization)["shop/api-from-web"],
        "v2"
    );

    // A valid version restores it.
    let good = allow_from(
        "shop",
        "api-from-web",
        sec::Scope::WorkloadSelector,
        "cluster.local/ns/shop/sa/web",
    );
    let restore = [resource(
        Kind::Authorization,
        "shop/api-from-web",
        "v3",
        policy_body(&good),
    )];
    assert_eq!(store.apply(Kind::Authorization, &restore, &[]), vec![]);
    assert!(decide(&store.to_state(), api_ip, &web));

    // Removed while the api still names it: the api admits nothing.
    store.apply(Kind::Authorization, &[], &["shop/api-from-web".into()]);
    let state = store.to_state();
    assert!(!decide(&state, api_ip, &web));
    assert!(
        state
            .rejected()
            .iter()
            .any(|e| e.to_string().contains("not received"))
    );
    assert_eq!(store.apply(Kind::Authorization, &restore, &[]), vec![]);

    // A namespace-wide policy that cannot be read denies its namespace only.
    let mut ns_wide = allow_from("ops", "broken", sec::Scope::Namespace, "x");
    ns_wide.rules[0].clauses[0].matches[0].principals[0].match_type = None;
    let refused = store.apply(
        Kind::Authorization,
        &[resource(
            Kind::Authorization,
            "ops/broken",
            "v1",
            policy_body(&ns_wide),
        )],
        &[],
    );
    assert!(
        refused[0].reason.contains("without a pattern"),
        "{refused:?}"
    );
    let state = store.to_state();
    assert!(!decide(&state, admin_ip, &web), "ops admits nothing");
    assert!(decide(&state, api_ip, &web), "shop is unaffected");
    // Garbage under a root-namespace name denies the whole mesh: its scope could be GLOBAL.
    let refused = store.apply(
        Kind::Authorization,
        &[resource(
            Kind::Authorization,
            "veil-system/junk",
            "v1",
            vec![0xff, 0xff],
        )],
        &[],
    );
    assert_eq!(refused.len(), 1);
    assert!(!decide(&store.to_state(), api_ip, &web));
    store.apply(
        Kind::Authorization,
        &[],
        &["veil-system/junk".into(), "ops/broken".into()],
    );
    assert!(decide(&store.to_state(), api_ip, &web));

    // A workload whose new version cannot be read stays known (its pod stays captured, its
    // address in the mesh) and admits nothing; the others are unaffected.
    let name = workload_name("shop", "db");
    let mut db = workload(&Resources::from_state(&native), "shop", "db");
    db.addresses.push(vec![1, 2, 3]);
    let body = wl::Address {
        r#type: Some(wl::address::Type::Workload(db)),
    }
    .encode_to_vec();
    let refused = store.apply(
        Kind::Address,
        &[resource(Kind::Address, &name, "v9", body)],
        &[],
    );
    assert_eq!(refused.len(), 1);
    let state = store.to_state();
    let db = state
        .workload_by_ip("10.1.0.3".parse().unwrap())
        .expect("db stays known");
    assert!(
        state
            .workloads_on_node("node-b")
            .iter()
            .any(|w| w.uid == db.uid)
    );
    let api = Identity::new("cluster.local", "shop", "api").unwrap();
    let from_api = Conn {
        source: Some(&api),
        source_ip: "10.1.0.2".parse().unwrap(),
        destination_ip: db.ips[0],
        port: 5432,
    };
    assert!(!admits(&state, db, &from_api), "db admits nothing");
    assert!(state.workload_by_ip("10.1.0.2".parse().unwrap()).is_some());
    assert!(
        state
            .rejected()
            .iter()
            .any(|e| e.to_string().contains("admits nothing"))
    );

    // A resource under another's name, or of the wrong type, is refused.
    let web_name = workload_name("shop", "web");
    let entry = &Resources::from_state(&native).of(Kind::Address)[web_name.as_str()].clone();
    let refused = store.apply(
        Kind::Address,
        &[resource(
            Kind::Address,
            &workload_name("shop", "api"),
            "v9",
            entry.body.to_vec(),
        )],
        &[],
    );
    assert!(refused[0].reason.contains("uid"), "{refused:?}");
    let mut wrong = resource(Kind::Address, "shop/x", "v1", vec![]);
    wrong.resource.as_mut().unwrap().type_url = Kind::Authorization.type_url().into();
    assert!(
        store.apply(Kind::Address, &[wrong], &[])[0]
            .reason
            .contains("type")
    );
}

#[test]
fn istio_forms_veil_does_not_know_are_refused_not_widened() {
    let mut a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    a.extensions.push(wl::Extension::default());
    assert!(crate::policy::compile_istio("shop/p", &a).is_err());
    let mut a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    a.rules[0].clauses[0].matches[0].destination_ports = vec![70000];
    assert!(crate::policy::compile_istio("shop/p", &a).is_err());
    let mut a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    a.rules[0].clauses[0].matches[0].not_source_ips = vec![sec::Address {
        address: vec![10, 0, 0, 0],
        length: 33,
    }];
    assert!(crate::policy::compile_istio("shop/p", &a).is_err());
    let a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    assert!(
        crate::policy::compile_istio("shop/other", &a).is_err(),
        "name mismatch"
    );
    let mut a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    a.action = 7;
    assert!(crate::policy::compile_istio("shop/p", &a).is_err());
    // A dry-run policy decides nothing.
    let mut a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    a.dry_run = true;
    let p = crate::policy::compile_istio("shop/p", &a).unwrap();
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let attrs = Attributes {
        source: Some(&web),
        source_ip: "10.1.0.1".parse().unwrap(),
        destination_ip: "10.1.0.2".parse().unwrap(),
        destination_port: 80,
        http: None,
    };
    assert!(evaluate(&[std::sync::Arc::new(p)], &attrs).allowed());
}

// ---- Found by review: what must not fail open ----

pub(super) fn address_resource(
    name: &str,
    version: &str,
    t: wl::address::Type,
) -> super::proto::discovery::Resource {
    resource(
        Kind::Address,
        name,
        version,
        wl::Address { r#type: Some(t) }.encode_to_vec(),
    )
}

fn conn_to<'a>(peer: Option<&'a Identity>, dst: &str, port: u16) -> Conn<'a> {
    Conn {
        source: peer,
        source_ip: "10.1.0.1".parse().unwrap(),
        destination_ip: dst.parse().unwrap(),
        port,
    }
}

#[test]
fn a_later_claim_on_a_running_workloads_address_is_left_out() {
    let native = state();
    let mut store = received(&Resources::from_state(&native));
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    // An impostor sorting before shop/db claims db's address.
    let impostor = wl::Workload {
        uid: workload_name("aaa", "x"),
        name: "x".into(),
        namespace: "aaa".into(),
        service_account: "x".into(),
        addresses: vec![vec![10, 1, 0, 3]],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        node: "node-b".into(),
        ..Default::default()
    };
    store.apply(
        Kind::Address,
        &[address_resource(
            &workload_name("aaa", "x"),
            "v1",
            wl::address::Type::Workload(impostor),
        )],
        &[],
    );
    let s = store.to_state();
    let db = s.workload_by_ip("10.1.0.3".parse().unwrap()).unwrap();
    assert_eq!(&*db.namespace, "shop", "the running pod keeps its address");
    assert!(s.workload(&workload_name("aaa", "x")).is_none());
    assert!(!admits(&s, db, &conn_to(Some(&web), "10.1.0.3", 5432)));
    assert!(
        s.rejected()
            .iter()
            .any(|e| e.to_string().contains("already workload"))
    );
}

#[test]
fn a_refused_service_update_keeps_its_waypoint_in_front() {
    let native = state();
    let mut store = received(&Resources::from_state(&native));
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let name = service_name("shop", "api");
    let wl::address::Type::Service(mut svc) = address(&Resources::from_state(&native), &name)
    else {
        panic!("not a service");
    };
    svc.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(
            wl::NetworkAddress {
                network: String::new(),
                address: vec![10, 9, 0, 1],
                length: None,
            },
        )),
        hbone_mtls_port: 15008,
    });
    let v2 = address_resource(&name, "v2", wl::address::Type::Service(svc.clone()));
    assert_eq!(store.apply(Kind::Address, &[v2], &[]), vec![]);
    let s = store.to_state();
    let api = s.workload_by_ip("10.1.0.2".parse().unwrap()).unwrap();
    assert!(api.waypoint.is_some(), "fronted by its service's waypoint");
    assert!(!admits(&s, api, &conn_to(Some(&web), "10.1.0.2", 8080)));
    // v3 cannot be read: v2 stays in force.
    svc.waypoint.as_mut().unwrap().hbone_mtls_port = 15009;
    let v3 = address_resource(&name, "v3", wl::address::Type::Service(svc));
    assert_eq!(store.apply(Kind::Address, &[v3], &[]).len(), 1);
    let s = store.to_state();
    let api = s.workload_by_ip("10.1.0.2".parse().unwrap()).unwrap();
    assert!(api.waypoint.is_some(), "still fronted");
    assert!(s.service_by_vip("10.96.0.2".parse().unwrap()).is_some());
    assert!(!admits(&s, api, &conn_to(Some(&web), "10.1.0.2", 8080)));
}

#[test]
fn a_refused_policy_denies_in_the_scope_it_declares() {
    let native = state();
    let mut store = received(&Resources::from_state(&native));
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let mut deny = allow_from(
        "shop",
        "deny-web",
        sec::Scope::Namespace,
        "cluster.local/ns/shop/sa/web",
    );
    deny.action = sec::Action::Deny as i32;
    // A valid body for shop, sent under an ops name: refused, and shop (its scope) is denied.
    let sent = resource(
        Kind::Authorization,
        "ops/deny-web",
        "v1",
        policy_body(&deny),
    );
    assert_eq!(store.apply(Kind::Authorization, &[sent], &[]).len(), 1);
    let s = store.to_state();
    assert!(
        !decide(&s, "10.1.0.2", &web),
        "shop, the declared scope, is denied"
    );
}

#[test]
fn addresses_in_ipv4_mapped_form_are_refused() {
    let mut a = allow_from("shop", "p", sec::Scope::Namespace, "x");
    let mut mapped = vec![0u8; 10];
    mapped.extend([0xff, 0xff, 10, 0, 0, 0]);
    a.rules[0].clauses[0].matches[0].source_ips = vec![sec::Address {
        address: mapped,
        length: 104,
    }];
    let e = crate::policy::compile_istio("shop/p", &a).unwrap_err();
    assert!(e.to_string().contains("4 bytes"), "{e}");
}

#[test]
fn udp_ports_travel_in_veil_s_extension_and_an_unreadable_one_keeps_the_last() {
    let resources = Resources::from_state(&state());
    let name = service_name("shop", "api");
    let wl::address::Type::Service(svc) = address(&resources, &name) else {
        panic!("not a service");
    };
    // Istio's `ports` are the TCP ones; the UDP port travels only in the extension.
    assert_eq!(svc.ports.len(), 1);
    assert_eq!(
        svc.extensions
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        [UDP_PORTS_EXTENSION]
    );
    let wl::address::Type::Service(db) = address(&resources, &service_name("shop", "db")) else {
        panic!("not a service");
    };
    assert!(db.extensions.is_empty(), "no UDP port, no extension");
    let received_api = |store: &Store| {
        let s = store.to_state();
        let api = s.service("shop", "api").expect("service api");
        (
            api.target_port(53),
            api.udp_target_port(53),
            api.udp_target_port(80),
        )
    };
    let mut store = received(&resources);
    assert_eq!(received_api(&store), (None, Some(5353), None));

    // A new target for the UDP port alone is applied.
    let with_udp = |ports: Vec<wl::Port>| wl::Extension {
        name: UDP_PORTS_EXTENSION.into(),
        config: Some(prost_types::Any {
            type_url: PORT_LIST_TYPE.into(),
            value: wl::PortList { ports }.encode_to_vec(),
        }),
    };
    let udp = |service_port, target_port| wl::Port {
        service_port,
        target_port,
        app_protocol: 0,
    };
    let mut v2 = svc.clone();
    v2.extensions = vec![with_udp(vec![udp(53, 5354)])];
    let update = address_resource(&name, "v2", wl::address::Type::Service(v2));
    assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
    assert_eq!(received_api(&store), (None, Some(5354), None));

    // Unreadable: refused, and the UDP ports last read stay.
    let broken: [(&str, Vec<wl::Extension>); 5] = [
        ("no target", vec![with_udp(vec![udp(53, 0)])]),
        ("no port", vec![with_udp(vec![udp(0, 53)])]),
        ("not a port", vec![with_udp(vec![udp(70_000, 53)])]),
        (
            "a port twice",
            vec![with_udp(vec![udp(53, 53), udp(53, 54)])],
        ),
        (
            "given twice",
            vec![with_udp(vec![udp(53, 53)]), with_udp(vec![udp(54, 54)])],
        ),
    ];
    for (case, extensions) in broken {
        let mut bad = svc.clone();
        bad.extensions = extensions;
        let update = address_resource(&name, "v3", wl::address::Type::Service(bad));
        assert_eq!(
            store.apply(Kind::Address, &[update], &[]).len(),
            1,
            "{case}"
        );
        assert_eq!(received_api(&store), (None, Some(5354), None), "{case}");
    }
    let mut bad = svc.clone();
    bad.extensions = vec![wl::Extension {
        name: UDP_PORTS_EXTENSION.into(),
        config: Some(prost_types::Any {
            type_url: STRING_VALUE_TYPE.into(),
            value: Vec::new(),
        }),
    }];
    let update = address_resource(&name, "v3", wl::address::Type::Service(bad));
    assert_eq!(
        store.apply(Kind::Address, &[update], &[]).len(),
        1,
        "wrong type"
    );
    assert_eq!(received_api(&store), (None, Some(5354), None));

    // Without the extension: no UDP port (the service has none now).
    let mut v4 = svc;
    v4.extensions.clear();
    let update = address_resource(&name, "v4", wl::address::Type::Service(v4));
    assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
    assert_eq!(received_api(&store), (None, None, None));
}
