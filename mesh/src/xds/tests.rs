use std::net::IpAddr;

use ipnet::IpNet;
use prost::Message;

use super::proto::istio::security as sec;
use super::proto::istio::workload as wl;
use super::*;
use crate::discovery::{MeshSettings, MeshState, local};
use crate::identity::Identity;
use crate::policy::{Attributes, PeerMode, evaluate};

const MESH: &str = r#"
namespaces:
  - {name: shop, dataplaneMode: ambient}
waypoints:
  - {name: wp, namespace: shop, serviceAccount: wp, ips: [10.9.0.1, 10.9.0.2]}
workloads:
  - {name: web, namespace: shop, serviceAccount: web, node: node-a, ips: [10.1.0.1, "fd00::1"], labels: {app: web}}
  - {name: api, namespace: shop, serviceAccount: api, node: node-b, ips: [10.1.0.2], labels: {app: api}}
  - {name: db, namespace: shop, serviceAccount: db, node: node-b, ips: [10.1.0.3], labels: {app: db}}
  - {name: admin, namespace: ops, serviceAccount: admin, node: node-a, ips: [10.2.0.1], labels: {app: admin}}
  - {name: batch, namespace: ops, serviceAccount: batch, node: node-b, ips: [10.2.0.2], labels: {app: batch, tier: low}}
  - {name: legacy, namespace: ops, serviceAccount: legacy, node: node-b, ips: [10.2.0.3], enrolled: false}
  - {name: front, namespace: shop, serviceAccount: front, node: node-a, ips: [10.1.0.9], useWaypoint: wp}
services:
  - {name: api, namespace: shop, vips: [10.96.0.2], ports: [{port: 80, targetPort: 8080}], selector: {app: api}}
  - {name: db, namespace: shop, vips: [10.96.0.3], ports: [{port: 5432}], selector: {app: db}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: api-from-web, namespace: shop}
    spec:
      selector: {matchLabels: {app: api}}
      rules:
        - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
          to: [{operation: {ports: ["8080"]}}]
        - from: [{source: {namespaces: [ops], notPrincipals: ["*/sa/batch"]}}]
          to: [{operation: {methods: [GET]}}, {operation: {ports: ["9090"]}}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-http-admin, namespace: shop}
    spec:
      selector: {matchLabels: {app: api}}
      action: DENY
      rules:
        - to: [{operation: {paths: [/admin*], ports: ["9090"]}}]
        - when: [{key: "request.headers[x-debug]", values: ["1"]}, {key: source.ip, values: [10.2.0.0/16]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: db-from-api, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: db}]
      rules:
        - from: [{source: {serviceAccounts: [shop/api], notIpBlocks: [10.1.0.0/30]}}]
        - when: [{key: "request.headers[x-ok]", values: ["yes"]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: ops-only-low, namespace: ops}
    spec:
      rules:
        - from: [{source: {}}]
          when: [{key: destination.port, notValues: ["22"]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: mesh-deny-telnet, namespace: veil-system}
    spec:
      action: DENY
      rules: [{to: [{operation: {ports: ["23"]}}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: audit-all, namespace: ops}
    spec: {action: AUDIT, rules: [{}]}
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: ops, namespace: ops}
    spec: {mtls: {mode: PERMISSIVE}}
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: batch, namespace: ops}
    spec:
      selector: {matchLabels: {tier: low}}
      mtls: {mode: PERMISSIVE}
      portLevelMtls: {"8443": {mode: STRICT}}
  - apiVersion: security.veil.dev/v1
    kind: PeerAuthentication
    metadata: {name: shop, namespace: shop}
    spec:
      selector: {matchLabels: {app: db}}
      portLevelMtls: {"9187": {mode: PERMISSIVE}}
"#;

fn state() -> MeshState {
    local::parse(MESH, &MeshSettings::default()).expect("the test mesh is valid")
}

fn address(resources: &Resources, name: &str) -> wl::address::Type {
    let entry = resources
        .of(Kind::Address)
        .get(name)
        .unwrap_or_else(|| panic!("no address {name}"));
    wl::Address::decode(entry.body.as_ref())
        .unwrap()
        .r#type
        .unwrap()
}

fn workload(resources: &Resources, namespace: &str, name: &str) -> wl::Workload {
    match address(resources, &workload_name(namespace, name)) {
        wl::address::Type::Workload(w) => w,
        other => panic!("{name} is not a workload: {other:?}"),
    }
}

fn authorizations(resources: &Resources) -> Vec<(String, sec::Authorization)> {
    resources
        .of(Kind::Authorization)
        .iter()
        .map(|(name, e)| {
            (
                name.to_string(),
                sec::Authorization::decode(e.body.as_ref()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn workloads_and_services_carry_istio_names_and_encodings() {
    let resources = Resources::from_state(&state());
    let web = workload(&resources, "shop", "web");
    assert_eq!(web.uid, "Kubernetes//Pod/shop/web");
    assert_eq!(
        web.addresses,
        vec![vec![10, 1, 0, 1], {
            let mut v6 = vec![0xfd, 0];
            v6.extend([0; 13]);
            v6.push(1);
            v6
        }]
    );
    assert_eq!(web.tunnel_protocol, wl::TunnelProtocol::Hbone as i32);
    assert_eq!(
        (web.trust_domain.as_str(), web.service_account.as_str()),
        ("cluster.local", "web")
    );
    assert_eq!(web.node, "node-a");
    assert_eq!(web.canonical_name, "web");

    let api = workload(&resources, "shop", "api");
    let ports = &api.services["shop/api.shop.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));
    assert_eq!(
        api.authorization_policies,
        vec![
            "shop/api-from-web",
            "shop/no-http-admin",
            "veil-system/veil:peer-strict"
        ]
    );
    // A Service policy without a waypoint is listed on the Service's pods.
    let db = workload(&resources, "shop", "db");
    assert_eq!(
        db.authorization_policies,
        vec![
            "shop/db-from-api",
            "veil-system/veil:peer-strict-except:9187"
        ]
    );
    // Not enrolled: plaintext, no policy.
    let legacy = workload(&resources, "ops", "legacy");
    assert_eq!(legacy.tunnel_protocol, wl::TunnelProtocol::None as i32);
    assert!(legacy.authorization_policies.is_empty());
    // PERMISSIVE namespace; the tier=low workload is STRICT on one port.
    assert!(
        workload(&resources, "ops", "admin")
            .authorization_policies
            .is_empty()
    );
    assert_eq!(
        workload(&resources, "ops", "batch").authorization_policies,
        vec!["veil-system/veil:peer-strict-on:8443"]
    );

    // Behind a waypoint: the waypoint's first address, and only the waypoint admitted.
    let front = workload(&resources, "shop", "front");
    let gateway = front.waypoint.expect("a waypoint");
    assert_eq!(gateway.hbone_mtls_port, 15008);
    match gateway.destination {
        Some(wl::gateway_address::Destination::Address(a)) => {
            assert_eq!(a.address, vec![10, 9, 0, 1]);
            assert_eq!(a.length, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        front.authorization_policies,
        vec!["veil-system/veil:waypoint-only:shop.wp"]
    );
    // The waypoint's instances are a workload with its identity.
    match address(&resources, "Kubernetes//Waypoint/shop/wp") {
        wl::address::Type::Workload(w) => {
            assert_eq!(w.addresses, vec![vec![10, 9, 0, 1], vec![10, 9, 0, 2]]);
            assert_eq!(w.service_account, "wp");
        }
        other => panic!("{other:?}"),
    }

    match address(&resources, "shop/api.shop.svc.cluster.local") {
        wl::address::Type::Service(s) => {
            assert_eq!(s.hostname, "api.shop.svc.cluster.local");
            assert_eq!(s.addresses[0].address, vec![10, 96, 0, 2]);
            assert_eq!(s.addresses[0].length, None);
        }
        other => panic!("{other:?}"),
    }

    let names: Vec<String> = authorizations(&resources)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "ops/ops-only-low",
            "shop/api-from-web",
            "shop/db-from-api",
            "shop/no-http-admin",
            "veil-system/mesh-deny-telnet",
            "veil-system/veil:peer-strict",
            "veil-system/veil:peer-strict-except:9187",
            "veil-system/veil:peer-strict-on:8443",
            "veil-system/veil:waypoint-only:shop.wp",
        ],
        "AUDIT policies have no Istio form"
    );
    for (name, a) in authorizations(&resources) {
        assert_eq!(name, format!("{}/{}", a.namespace, a.name));
    }
}

#[test]
fn versions_change_with_content_and_only_then() {
    let a = Resources::from_state(&state());
    let b = Resources::from_state(&state());
    assert_eq!(a, b, "translation is deterministic");
    let changed = MESH.replace("ips: [10.1.0.3]", "ips: [10.1.0.4]");
    let c = Resources::from_state(&local::parse(&changed, &MeshSettings::default()).unwrap());
    for kind in Kind::ALL {
        for (name, entry) in a.of(kind) {
            let other = &c.of(kind)[name];
            let moved = name.as_ref() == "Kubernetes//Pod/shop/db";
            assert_eq!(entry.version != other.version, moved, "{name}");
        }
    }
}

// ---- Istio's evaluation, as Istio's ztunnel does it, to check the translation against veil's ----

struct Conn<'a> {
    source: Option<&'a Identity>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    port: u16,
}

impl Conn<'_> {
    fn attributes(&self) -> Attributes<'_> {
        Attributes {
            source: self.source,
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            http: None,
        }
    }
}

fn string_match(m: &sec::StringMatch, value: &str) -> bool {
    use sec::string_match::MatchType;
    match m.match_type.as_ref().unwrap() {
        MatchType::Exact(s) => value == s,
        MatchType::Prefix(s) => value.starts_with(s.as_str()),
        MatchType::Suffix(s) => value.ends_with(s.as_str()),
        MatchType::Presence(()) => !value.is_empty(),
    }
}

fn net(a: &sec::Address) -> IpNet {
    let ip = match a.address.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(a.address.as_slice()).unwrap()),
        16 => IpAddr::from(<[u8; 16]>::try_from(a.address.as_slice()).unwrap()),
        n => panic!("address of {n} bytes"),
    };
    IpNet::new(ip, a.length as u8).unwrap()
}

fn field<T>(is: &[T], not: &[T], pred: impl Fn(&T) -> bool) -> bool {
    (is.is_empty() || is.iter().any(&pred)) && !not.iter().any(&pred)
}

fn istio_matches(a: &sec::Authorization, c: &Conn<'_>) -> bool {
    let principal = c.source.map(Identity::principal).unwrap_or_default();
    let namespace = c.source.map(Identity::namespace).unwrap_or_default();
    a.rules.iter().any(|rule| {
        rule.clauses.iter().all(|clause| {
            clause.matches.is_empty()
                || clause.matches.iter().any(|m| {
                    *m != sec::Match::default()
                        && field(&m.principals, &m.not_principals, |s| {
                            string_match(s, principal)
                        })
                        && field(&m.namespaces, &m.not_namespaces, |s| {
                            string_match(s, namespace)
                        })
                        && field(&m.service_accounts, &m.not_service_accounts, |s| {
                            c.source.is_some_and(|id| {
                                id.namespace() == s.namespace
                                    && id.service_account() == s.service_account
                            })
                        })
                        && field(&m.source_ips, &m.not_source_ips, |a| {
                            net(a).contains(&c.source_ip)
                        })
                        && field(&m.destination_ips, &m.not_destination_ips, |a| {
                            net(a).contains(&c.destination_ip)
                        })
                        && field(&m.destination_ports, &m.not_destination_ports, |p| {
                            *p == u32::from(c.port)
                        })
                })
        })
    })
}

fn istio_allows(resources: &Resources, w: &wl::Workload, c: &Conn<'_>) -> bool {
    let all = authorizations(resources);
    let applicable: Vec<&sec::Authorization> = all
        .iter()
        .filter(|(name, a)| {
            a.scope == sec::Scope::Global as i32
                || (a.scope == sec::Scope::Namespace as i32 && a.namespace == w.namespace)
                || w.authorization_policies.contains(name)
        })
        .map(|(_, a)| a)
        .collect();
    let of = |action: sec::Action| applicable.iter().filter(move |a| a.action == action as i32);
    if of(sec::Action::Deny).any(|a| istio_matches(a, c)) {
        return false;
    }
    let mut allows = of(sec::Action::Allow).peekable();
    allows.peek().is_none() || allows.any(|a| istio_matches(a, c))
}

/// veil ztunnel's admission for a workload without a waypoint.
fn veil_allows(state: &MeshState, w: &crate::discovery::Workload, c: &Conn<'_>) -> bool {
    if c.source.is_none() && state.peer_mode(w, c.port) == PeerMode::Strict {
        return false;
    }
    let attrs = c.attributes();
    evaluate(&state.authz_for(w), &attrs).allowed()
}

/// The connections the equivalence tests walk: peers (the last one plaintext), source addresses,
/// destination ports.
struct Grid {
    peers: [Option<Identity>; 6],
    source_ips: [IpAddr; 4],
    ports: [u16; 8],
}

impl Grid {
    /// Every connection of the grid to `destination_ip`.
    fn conns(&self, destination_ip: IpAddr) -> impl Iterator<Item = Conn<'_>> {
        self.peers.iter().flat_map(move |peer| {
            self.source_ips.iter().flat_map(move |source_ip| {
                self.ports.iter().map(move |port| Conn {
                    source: peer.as_ref(),
                    source_ip: *source_ip,
                    destination_ip,
                    port: *port,
                })
            })
        })
    }
}

fn grid() -> Grid {
    let id = |ns: &str, sa: &str| Some(Identity::new("cluster.local", ns, sa).unwrap());
    Grid {
        peers: [
            id("shop", "web"),
            id("shop", "api"),
            id("ops", "admin"),
            id("ops", "batch"),
            id("shop", "wp"),
            None,
        ],
        source_ips: ["10.1.0.1", "10.1.0.2", "10.1.0.5", "10.2.0.1"].map(|ip| ip.parse().unwrap()),
        ports: [22, 23, 80, 5432, 8080, 8443, 9090, 9187],
    }
}

#[test]
fn istio_evaluation_of_the_translation_decides_as_veil_does() {
    let state = state();
    let resources = Resources::from_state(&state);
    let id = |ns: &str, sa: &str| Identity::new("cluster.local", ns, sa).unwrap();
    let cases = grid();
    let mut checked = 0;
    for w in state.workloads().iter().filter(|w| w.enrolled) {
        let istio = workload(&resources, &w.namespace, &w.name);
        for c in cases.conns(w.ips[0]) {
            let (peer, source_ip, port) = (c.source, c.source_ip, c.port);
            let veil = match &w.waypoint {
                // Behind a waypoint: only it, over mTLS.
                Some(_) => peer.is_some_and(|p| p == &id("shop", "wp")),
                None => veil_allows(&state, w, &c),
            };
            let ours = istio_allows(&resources, &istio, &c);
            if w.waypoint.is_none() {
                assert_eq!(
                    ours,
                    veil,
                    "{} from {:?} at {source_ip} to port {port}",
                    w.key(),
                    peer.map(Identity::principal)
                );
            } else if veil {
                // Istio also applies namespace-wide policies to the waypoint's traffic;
                // what veil denies, Istio's reading must deny too.
            } else {
                assert!(!ours, "{} admitted {peer:?} around its waypoint", w.key());
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked} cases");
}

// ---- The subscriber's side: the resources received back into a mesh, decided by veil ----

fn resource(
    kind: Kind,
    name: &str,
    version: &str,
    body: Vec<u8>,
) -> super::proto::discovery::Resource {
    super::proto::discovery::Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(prost_types::Any {
            type_url: kind.type_url().into(),
            value: body,
        }),
        ..Default::default()
    }
}

fn received(resources: &Resources) -> Store {
    let mut store = Store::new(MeshSettings::default());
    for kind in Kind::ALL {
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

fn address_resource(
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
    assert_eq!(db.namespace, "shop", "the running pod keeps its address");
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
