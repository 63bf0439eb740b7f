use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::parse;

use super::*;

const MESH: &str = r#"
namespaces: [{name: user-data, useWaypoint: waypoint}]
waypoints: [{name: waypoint, namespace: user-data, serviceAccount: waypoint, ips: [10.2.0.50]}]
workloads:
  - {name: profile-0, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.10], labels: {app: profile}}
  - {name: profile-1, namespace: user-data, serviceAccount: profile, node: b, ips: [10.2.0.11], labels: {app: profile}}
  - {name: account, namespace: production, serviceAccount: account, node: a, ips: [10.1.0.10], labels: {app: account}}
services:
  - {name: profile, namespace: user-data, vips: [10.96.0.20], ports: [{port: 80, targetPort: 8080}], selector: {app: profile}}
  - {name: account, namespace: production, vips: [10.96.0.30], ports: [{port: 80}], selector: {app: account}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: on-service, namespace: user-data}
    spec: {targetRefs: [{kind: Service, name: profile}], rules: [{}]}
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: on-waypoint, namespace: user-data}
    spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], action: DENY, rules: [{to: [{operation: {paths: [/admin*]}}]}]}
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: on-workload, namespace: user-data}
    spec: {selector: {matchLabels: {app: profile}}, rules: [{}]}
"#;

fn me() -> WaypointRef {
    WaypointRef {
        namespace: "user-data".into(),
        name: "waypoint".into(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn resolves_services_and_workloads_that_use_this_waypoint_only() {
    let state = parse(MESH, &MeshSettings::default()).unwrap();
    match resolve(&state, &me(), addr("10.96.0.20:80")).unwrap() {
        Destination::Service {
            service,
            port,
            target_port,
        } => {
            assert_eq!(
                (service.name.as_str(), port, target_port),
                ("profile", 80, 8080)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        resolve(&state, &me(), addr("10.2.0.11:8080")).unwrap(),
        Destination::Workload { port: 8080, .. }
    ));
    assert_eq!(
        resolve(&state, &me(), addr("10.96.0.20:81")).unwrap_err(),
        NotServed::NoPort {
            service: "user-data/profile".into(),
            port: 81
        }
    );
    assert_eq!(
        resolve(&state, &me(), addr("10.96.0.30:80")).unwrap_err(),
        NotServed::OtherWaypoint(addr("10.96.0.30:80"))
    );
    assert_eq!(
        resolve(&state, &me(), addr("10.1.0.10:80")).unwrap_err(),
        NotServed::OtherWaypoint(addr("10.1.0.10:80"))
    );
    assert_eq!(
        resolve(&state, &me(), addr("192.0.2.1:80")).unwrap_err(),
        NotServed::Unknown(addr("192.0.2.1:80"))
    );
    let other = WaypointRef {
        namespace: "user-data".into(),
        name: "other".into(),
    };
    assert!(matches!(
        resolve(&state, &other, addr("10.96.0.20:80")),
        Err(NotServed::OtherWaypoint(_))
    ));
}

#[test]
fn balances_service_endpoints_and_gathers_every_applicable_policy() {
    let state = parse(MESH, &MeshSettings::default()).unwrap();
    let dest = resolve(&state, &me(), addr("10.96.0.20:80")).unwrap();
    let picked: Vec<SocketAddr> = (0..3)
        .map(|i| dest.endpoint(&state, addr("10.96.0.20:80"), i).unwrap().1)
        .collect();
    assert_eq!(
        picked,
        [
            addr("10.2.0.10:8080"),
            addr("10.2.0.11:8080"),
            addr("10.2.0.10:8080")
        ]
    );

    let names = |ps: Vec<Arc<AuthzPolicy>>| ps.iter().map(|p| p.id.to_string()).collect::<Vec<_>>();
    // Before an endpoint is chosen: the service's and the waypoint's.
    assert_eq!(
        names(dest.policies(&state, &me(), None)),
        ["user-data/on-service", "user-data/on-waypoint"]
    );
    // With the endpoint: its own selector policy too.
    let (endpoint, _) = dest.endpoint(&state, addr("10.96.0.20:80"), 0).unwrap();
    assert_eq!(
        names(dest.policies(&state, &me(), Some(&endpoint))),
        [
            "user-data/on-service",
            "user-data/on-waypoint",
            "user-data/on-workload"
        ]
    );
    // A workload addressed directly: the waypoint's, its own, and those of the services it backs —
    // calling the pod's address must not step around the service's policy.
    let direct = resolve(&state, &me(), addr("10.2.0.10:8080")).unwrap();
    assert_eq!(
        names(direct.policies(&state, &me(), None)),
        [
            "user-data/on-service",
            "user-data/on-waypoint",
            "user-data/on-workload"
        ]
    );
}
