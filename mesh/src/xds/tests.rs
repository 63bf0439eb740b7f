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
  - {name: api, namespace: shop, vips: [10.96.0.2], ports: [{port: 80, targetPort: 8080}, {port: 53, targetPort: 5353, protocol: UDP}], selector: {app: api}}
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

mod burst;
mod dump;
mod enrolment;
mod patch;
mod service_patch;
mod subscriber;
mod telemetry;
mod waypoint;
