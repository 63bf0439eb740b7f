//! A waypoint's stream: its namespace only, and each type only once what it depends on is held —
//! policies as written, then which select whom (each binding says which policies it was made
//! with), then the workloads.

use veil_mesh::xds::Audience;

use super::*;

const MESH: &str = r#"
namespaces:
  - {name: shop, dataplaneMode: ambient, useWaypoint: wp}
waypoints:
  - {name: wp, namespace: shop, serviceAccount: wp, ips: [10.9.0.1]}
workloads:
  - {name: web, namespace: shop, serviceAccount: web, node: x, ips: [10.1.0.1], labels: {app: web}}
  - {name: ledger, namespace: bank, serviceAccount: ledger, node: x, ips: [10.2.0.1], labels: {app: ledger}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: web-gets, namespace: shop}
    spec:
      selector: {matchLabels: {app: web}}
      rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

fn waypoint_stream(hub: Arc<Hub>) -> Stream {
    stream_of(hub).with_audience(Audience::Waypoint {
        namespace: "shop".into(),
        root: "veil-system".into(),
    })
}

#[test]
fn bindings_wait_for_their_policies_and_workloads_for_both() {
    let hub = Hub::new(resources(MESH));
    let mut stream = waypoint_stream(hub.clone());
    for kind in [Kind::Policy, Kind::Binding, Kind::Address] {
        stream.on_request(request(kind)).unwrap();
    }
    let policy = stream.next_response(Kind::Policy).expect("policies first");
    assert_eq!(names(&policy), ["shop/web-gets"]);
    assert!(
        stream.next_response(Kind::Binding).is_none(),
        "before its policies are held"
    );
    assert!(stream.next_response(Kind::Address).is_none());
    stream.on_request(ack(Kind::Policy, &policy)).unwrap();
    let binding = stream.next_response(Kind::Binding).expect("then bindings");
    assert_eq!(names(&binding), ["Kubernetes//Pod/shop/web"]);
    assert!(
        stream.next_response(Kind::Address).is_none(),
        "before the bindings are held"
    );
    stream.on_request(ack(Kind::Binding, &binding)).unwrap();
    let addresses = stream.next_response(Kind::Address).expect("then workloads");
    // bank's workload is not the waypoint's.
    assert!(
        names(&addresses)
            .iter()
            .all(|n| n.contains("/shop/") || n.starts_with("shop/"))
    );
    stream.on_request(ack(Kind::Address, &addresses)).unwrap();

    // A change of the policy's rules: its new version, then the bindings that say so.
    hub.publish(resources(&MESH.replace("[GET]", "[POST]")));
    let policy = stream.next_response(Kind::Policy).expect("the new version");
    assert!(stream.next_response(Kind::Binding).is_none());
    stream.on_request(ack(Kind::Policy, &policy)).unwrap();
    let binding = stream
        .next_response(Kind::Binding)
        .expect("the bindings made with it");
    assert_eq!(names(&binding), ["Kubernetes//Pod/shop/web"]);
}

#[test]
fn a_waypoint_is_not_served_what_is_not_for_waypoints() {
    let hub = Hub::new(resources(MESH));
    let mut stream = waypoint_stream(hub);
    for kind in [Kind::Authorization, Kind::Namespace] {
        let refused = stream.on_request(request(kind)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{kind:?}");
    }
    // Asked for by name, another namespace's workload is answered as gone.
    stream
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["Kubernetes//Pod/bank/ledger".into()],
            ..request(Kind::Address)
        })
        .unwrap();
    let answer = stream.next_response(Kind::Address).unwrap();
    assert!(answer.resources.is_empty());
    assert_eq!(answer.removed_resources, ["Kubernetes//Pod/bank/ledger"]);
}
