use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::parse;

use super::*;

const MESH: &str = r#"
workloads:
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.10], labels: {app: profile}}
  - {name: profile-1, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.11], labels: {app: profile}}
  - {name: legacy, namespace: user-data, serviceAccount: legacy, node: b, ips: [10.2.0.20], labels: {app: legacy}, enrolled: false}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.10], ports: [{port: 80, targetPort: 8080}], selector: {app: profile}}
  - {name: legacy, namespace: user-data, vips: [10.96.0.20], ports: [{port: 80, targetPort: 9090}], selector: {app: legacy}}
  - {name: empty, namespace: user-data, vips: [10.96.0.30], ports: [{port: 80}], selector: {app: nobody}}
"#;

fn state() -> MeshState {
    parse(MESH, &MeshSettings::default()).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn mesh_workloads_are_reached_over_hbone_on_the_port_dialled() {
    match route(
        &state(),
        addr("10.2.0.10:8080"),
        Transport::Tcp,
        UnknownDestination::Passthrough,
        0,
    ) {
        Route::Hbone { endpoint, target } => {
            assert_eq!(&*endpoint.name, "profile-0");
            assert_eq!(target, addr("10.2.0.10:8080"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn services_are_balanced_over_their_endpoints_with_the_target_port() {
    let mut seen = Vec::new();
    for pick in 0..4 {
        match route(
            &state(),
            addr("10.96.0.10:80"),
            Transport::Tcp,
            UnknownDestination::Passthrough,
            pick,
        ) {
            Route::Hbone { endpoint, target } => {
                assert_eq!(target.port(), 8080);
                assert_eq!(target.ip(), endpoint.ips[0]);
                seen.push(endpoint.name.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["profile-0", "profile-1", "profile-0", "profile-1"]);
}

#[test]
fn workloads_outside_the_mesh_and_unknown_addresses_pass_through_unless_denied() {
    let s = state();
    assert!(matches!(
        route(&s, addr("10.2.0.20:9090"), Transport::Tcp, UnknownDestination::Passthrough, 0),
        Route::Passthrough(a) if a == addr("10.2.0.20:9090")
    ));
    assert!(matches!(
        route(&s, addr("10.96.0.20:80"), Transport::Tcp, UnknownDestination::Passthrough, 0),
        Route::Passthrough(a) if a == addr("10.2.0.20:9090")
    ));
    assert!(matches!(
        route(
            &s,
            addr("192.0.2.1:443"),
            Transport::Tcp,
            UnknownDestination::Passthrough,
            0
        ),
        Route::Passthrough(_)
    ));
    assert!(matches!(
        route(
            &s,
            addr("192.0.2.1:443"),
            Transport::Tcp,
            UnknownDestination::Deny,
            0
        ),
        Route::Refuse(_)
    ));
}

#[test]
fn services_without_the_port_or_endpoints_are_refused() {
    let s = state();
    assert!(
        matches!(route(&s, addr("10.96.0.10:81"), Transport::Tcp, UnknownDestination::Passthrough, 0), Route::Refuse(r) if r.contains("no port 81"))
    );
    assert!(
        matches!(route(&s, addr("10.96.0.30:80"), Transport::Tcp, UnknownDestination::Passthrough, 0), Route::Refuse(r) if r.contains("no ready endpoints"))
    );
}

const DNS: &str = r#"
workloads:
  - {name: dns-0, namespace: infra, serviceAccount: dns, node: b, ips: [10.2.0.30], labels: {app: dns}}
services:
  - name: dns
    namespace: infra
    vips: [10.96.0.53]
    ports: [{port: 53, targetPort: 5353}, {port: 53, targetPort: 5354, protocol: UDP}, {port: 9153, protocol: TCP}]
    selector: {app: dns}
"#;

#[test]
fn a_service_port_is_of_one_transport_each_with_its_own_target() {
    let s = parse(DNS, &MeshSettings::default()).unwrap();
    let target = |port, transport| match route(
        &s,
        SocketAddr::new("10.96.0.53".parse().unwrap(), port),
        transport,
        UnknownDestination::Passthrough,
        0,
    ) {
        Route::Hbone { endpoint, target } => {
            assert_eq!(&*endpoint.name, "dns-0");
            Ok(target)
        }
        Route::Refuse(why) => Err(why),
        other => panic!("{other:?}"),
    };
    assert_eq!(target(53, Transport::Tcp), Ok(addr("10.2.0.30:5353")));
    assert_eq!(target(53, Transport::Udp), Ok(addr("10.2.0.30:5354")));
    assert_eq!(target(9153, Transport::Tcp), Ok(addr("10.2.0.30:9153")));
    // A TCP port is no UDP port, whatever its number.
    assert_eq!(
        target(9153, Transport::Udp),
        Err("service infra/dns has no UDP port 9153".to_owned())
    );
}

const WITH_WAYPOINT: &str = r#"
namespaces: [{name: user-data, useWaypoint: waypoint}]
waypoints: [{name: waypoint, namespace: user-data, serviceAccount: waypoint, ips: [10.2.0.50, 10.2.0.51]}]
workloads:
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.10], labels: {app: profile}}
  - {name: batch, namespace: user-data, serviceAccount: batch, node: b, ips: [10.2.0.11], useWaypoint: none}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.10], ports: [{port: 80, targetPort: 8080}], selector: {app: profile}}
"#;

#[test]
fn services_and_workloads_behind_a_waypoint_are_sent_to_it_never_around_it() {
    let s = parse(WITH_WAYPOINT, &MeshSettings::default()).unwrap();
    for (dst, pick, want_address) in [
        ("10.96.0.10:80", 0, "10.2.0.50"),
        ("10.96.0.10:80", 1, "10.2.0.51"),
        ("10.2.0.10:8080", 0, "10.2.0.50"),
    ] {
        match route(
            &s,
            addr(dst),
            Transport::Tcp,
            UnknownDestination::Passthrough,
            pick,
        ) {
            Route::Waypoint {
                waypoint,
                address,
                target,
            } => {
                assert_eq!(waypoint.name, "waypoint");
                assert_eq!(address.to_string(), want_address);
                assert_eq!(
                    target,
                    addr(dst),
                    "the waypoint gets the original destination"
                );
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
    // Opted out: direct.
    assert!(matches!(
        route(
            &s,
            addr("10.2.0.11:80"),
            Transport::Tcp,
            UnknownDestination::Passthrough,
            0
        ),
        Route::Hbone { .. }
    ));
}

const FRONTED: &str = r#"
waypoints: [{name: wp, namespace: shop, serviceAccount: wp, ips: [10.3.0.50]}]
workloads:
  - {name: cart-0, namespace: shop, serviceAccount: cart, node: b, ips: [10.3.0.10], labels: {app: cart}, useWaypoint: none}
services:
  - {name: cart, namespace: shop, vips: [10.96.3.10], ports: [{port: 80, targetPort: 8080}], selector: {app: cart}, useWaypoint: wp}
"#;

#[test]
fn the_pod_address_of_a_service_behind_a_waypoint_goes_to_the_waypoint_on_every_port() {
    let state = parse(FRONTED, &MeshSettings::default()).unwrap();
    for dst in ["10.3.0.10:8080", "10.3.0.10:9090", "10.96.3.10:80"] {
        match route(
            &state,
            addr(dst),
            Transport::Tcp,
            UnknownDestination::Passthrough,
            0,
        ) {
            Route::Waypoint {
                waypoint, target, ..
            } => {
                assert_eq!(waypoint.name, "wp");
                assert_eq!(target, addr(dst));
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
}

#[test]
fn own_ports_loopback_and_link_local_are_refused_before_and_after_service_mapping() {
    let state = parse(
        &format!(
            "{MESH}  - {{name: sneaky, namespace: user-data, vips: [10.96.0.40], ports: [{{port: 80, targetPort: 15008}}], selector: {{app: profile}}}}\n"
        ),
        &MeshSettings::default(),
    )
    .unwrap();
    for (dst, why) in [
        ("127.0.0.1:15001", Forbidden::ProxyPort(15001)),
        ("10.2.0.10:15006", Forbidden::ProxyPort(15006)),
        ("127.0.0.1:8080", Forbidden::Loopback),
        ("[fe80::1]:8080", Forbidden::LinkLocal),
        ("10.96.0.40:80", Forbidden::ProxyPort(15008)),
    ] {
        match route(
            &state,
            addr(dst),
            Transport::Tcp,
            UnknownDestination::Passthrough,
            0,
        ) {
            Route::Forbidden(_, got) => assert_eq!(got, why, "{dst}"),
            other => panic!("{dst}: {other:?}"),
        }
    }
    // A UDP port mapped onto ztunnel's own (its transparent UDP socket listens on 15001).
    let state = parse(
        &format!(
            "{MESH}  - {{name: sneaky, namespace: user-data, vips: [10.96.0.40], ports: [{{port: 53, targetPort: 15001, protocol: UDP}}], selector: {{app: profile}}}}\n"
        ),
        &MeshSettings::default(),
    )
    .unwrap();
    match route(
        &state,
        addr("10.96.0.40:53"),
        Transport::Udp,
        UnknownDestination::Deny,
        0,
    ) {
        Route::Forbidden(_, got) => assert_eq!(got, Forbidden::ProxyPort(15001)),
        other => panic!("{other:?}"),
    }
}
