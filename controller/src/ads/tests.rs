use prost::Message as _;
use std::collections::HashMap;

use veil_mesh::discovery::{MeshSettings, local};
use veil_mesh::xds::Resources;
use veil_mesh::xds::proto::discovery::Status as RpcStatus;

use super::*;

fn resources(yaml: &str) -> Resources {
    Resources::from_state(&local::parse(yaml, &MeshSettings::default()).unwrap())
}

fn mesh(pods: &[(&str, &str)]) -> Resources {
    let mut yaml = String::from("workloads:\n");
    for (name, ip) in pods {
        yaml.push_str(&format!(
            "  - {{name: {name}, namespace: n, serviceAccount: {name}, node: x, ips: [{ip}]}}\n"
        ));
    }
    resources(&yaml)
}

/// What a ztunnel subscribes to.
const ZTUNNEL_KINDS: [Kind; 3] = [Kind::Authorization, Kind::Address, Kind::Namespace];

/// A stream that does not wait for an Authorization subscription (most tests subscribe to
/// Addresses only).
fn stream_of(hub: Arc<Hub>) -> Stream {
    Stream::new(hub).with_authorization_grace(std::time::Duration::ZERO)
}

fn pod(name: &str) -> String {
    format!("Kubernetes//Pod/n/{name}")
}

fn request(kind: Kind) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: kind.type_url().to_owned(),
        ..Default::default()
    }
}

fn ack(kind: Kind, response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: response.nonce.clone(),
        ..request(kind)
    }
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn every_first_request_is_answered_even_when_there_is_nothing() {
    let hub = Hub::new(Resources::default());
    let mut stream = stream_of(hub);
    for kind in Kind::ALL {
        assert!(stream.next_response(kind).is_none(), "not asked yet");
        stream.on_request(request(kind)).unwrap();
        let response = stream.next_response(kind).expect("answered");
        assert_eq!(response.type_url, kind.type_url());
        assert!(!response.nonce.is_empty());
        assert!(response.resources.is_empty() && response.removed_resources.is_empty());
        assert!(stream.next_response(kind).is_none(), "answered once");
        // Acknowledged: enrolled namespaces wait for the Addresses to be held.
        stream.on_request(ack(kind, &response)).unwrap();
    }
}

#[test]
fn wildcard_gets_everything_then_only_changes_once_acknowledged() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    let mut stream = stream_of(hub.clone());
    stream.on_request(request(Kind::Address)).unwrap();
    let first = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&first), [pod("a"), pod("b")]);
    assert!(first.resources.iter().all(|r| {
        let any = r.resource.as_ref().unwrap();
        any.type_url == Kind::Address.type_url() && !r.version.is_empty()
    }));

    // Two changes before the acknowledgement: nothing is sent until then, and then one response
    // brings the client to the newest snapshot.
    hub.publish(mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.3")]));
    assert!(
        stream.next_response(Kind::Address).is_none(),
        "unacknowledged"
    );
    hub.publish(mesh(&[("b", "10.0.0.3"), ("c", "10.0.0.4")]));
    assert_eq!(stream.on_request(ack(Kind::Address, &first)).unwrap(), None);
    let second = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&second), [pod("b"), pod("c")]);
    assert_eq!(second.removed_resources, [pod("a")]);
    assert_ne!(second.nonce, first.nonce);

    // Acknowledged and nothing changed: nothing to say.
    stream.on_request(ack(Kind::Address, &second)).unwrap();
    assert!(stream.next_response(Kind::Address).is_none());
    // A republication of the same content sends nothing either.
    hub.publish(mesh(&[("b", "10.0.0.3"), ("c", "10.0.0.4")]));
    assert!(stream.next_response(Kind::Address).is_none());
}

#[test]
fn a_reconnecting_client_gets_only_what_differs_and_removals_of_what_is_gone() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    let mut first = stream_of(hub.clone());
    first.on_request(request(Kind::Address)).unwrap();
    let held: HashMap<String, String> = first
        .next_response(Kind::Address)
        .unwrap()
        .resources
        .into_iter()
        .map(|r| (r.name, r.version))
        .collect();
    drop(first);
    // While it was away: b changed, a left, c arrived.
    hub.publish(mesh(&[("b", "10.0.0.9"), ("c", "10.0.0.3")]));
    let mut again = stream_of(hub);
    again
        .on_request(DeltaDiscoveryRequest {
            initial_resource_versions: held,
            ..request(Kind::Address)
        })
        .unwrap();
    let response = again.next_response(Kind::Address).unwrap();
    assert_eq!(names(&response), [pod("b"), pod("c")]);
    assert_eq!(response.removed_resources, [pod("a")]);
}

#[test]
fn a_client_up_to_date_on_reconnect_gets_an_empty_answer() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1")]));
    let mut first = stream_of(hub.clone());
    first.on_request(request(Kind::Address)).unwrap();
    let held = first.next_response(Kind::Address).unwrap().resources;
    let mut again = stream_of(hub);
    again
        .on_request(DeltaDiscoveryRequest {
            initial_resource_versions: held.into_iter().map(|r| (r.name, r.version)).collect(),
            ..request(Kind::Address)
        })
        .unwrap();
    let response = again.next_response(Kind::Address).expect("still answered");
    assert!(response.resources.is_empty() && response.removed_resources.is_empty());
}

#[test]
fn explicit_names_are_answered_as_resources_or_removed() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    let mut stream = stream_of(hub.clone());
    stream
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec![pod("a"), pod("ghost")],
            ..request(Kind::Address)
        })
        .unwrap();
    let response = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&response), [pod("a")]);
    assert_eq!(response.removed_resources, [pod("ghost")]);
    stream.on_request(ack(Kind::Address, &response)).unwrap();
    // b changes: not subscribed, not sent. a changes: sent.
    hub.publish(mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.7")]));
    assert!(stream.next_response(Kind::Address).is_none());
    hub.publish(mesh(&[("a", "10.0.0.5"), ("b", "10.0.0.7")]));
    let response = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&response), [pod("a")]);
    stream.on_request(ack(Kind::Address, &response)).unwrap();
    // Subscribing again to a name it holds is answered anyway; unsubscribed names go quiet.
    stream
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec![pod("b")],
            resource_names_unsubscribe: vec![pod("a")],
            ..request(Kind::Address)
        })
        .unwrap();
    let response = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&response), [pod("b")]);
    stream.on_request(ack(Kind::Address, &response)).unwrap();
    hub.publish(mesh(&[("a", "10.0.0.6"), ("b", "10.0.0.7")]));
    assert!(stream.next_response(Kind::Address).is_none());
    // Istio's on-demand opener: subscribe and unsubscribe `*` at once means nothing yet.
    let mut on_demand = stream_of(hub);
    on_demand
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["*".into()],
            resource_names_unsubscribe: vec!["*".into()],
            ..request(Kind::Address)
        })
        .unwrap();
    let response = on_demand.next_response(Kind::Address).expect("answered");
    assert!(response.resources.is_empty());
}

#[test]
fn refusals_are_reported_and_stale_nonces_do_not_acknowledge() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1")]));
    let mut stream = stream_of(hub.clone());
    stream.on_request(request(Kind::Address)).unwrap();
    let first = stream.next_response(Kind::Address).unwrap();
    // A reply with another nonce acknowledges nothing.
    stream
        .on_request(DeltaDiscoveryRequest {
            response_nonce: "stale".into(),
            ..request(Kind::Address)
        })
        .unwrap();
    hub.publish(mesh(&[("a", "10.0.0.2")]));
    assert!(stream.next_response(Kind::Address).is_none());
    // A NACK (error_detail with code 0, as Istio's ztunnel sends it) is a reply too.
    let nack = stream
        .on_request(DeltaDiscoveryRequest {
            error_detail: Some(RpcStatus {
                code: 0,
                message: "Kubernetes//Pod/n/a: bad".into(),
                details: vec![],
            }),
            ..ack(Kind::Address, &first)
        })
        .unwrap();
    assert_eq!(
        nack,
        Some(Nack {
            kind: Kind::Address,
            message: "Kubernetes//Pod/n/a: bad".into()
        })
    );
    assert!(
        stream.oldest_pending().is_none(),
        "a refusal answers the response"
    );
    let next = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&next), [pod("a")]);
}

#[test]
fn unknown_types_and_late_initial_versions_are_refused() {
    let hub = Hub::new(Resources::default());
    let mut stream = stream_of(hub);
    let err = stream
        .on_request(DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    stream.on_request(request(Kind::Authorization)).unwrap();
    let response = stream.next_response(Kind::Authorization).unwrap();
    let err = stream
        .on_request(DeltaDiscoveryRequest {
            initial_resource_versions: [("x".to_owned(), "1".to_owned())].into(),
            ..ack(Kind::Authorization, &response)
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

const POLICY: &str = "policies:\n  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {name: only-b, namespace: n}\n    spec:\n      selector: {matchLabels: {app: a}}\n      rules: [{from: [{source: {principals: [cluster.local/ns/n/sa/b]}}]}]\n";

fn with_policy(policy: bool) -> Resources {
    let mut yaml = String::from(
        "workloads:\n  - {name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1], labels: {app: a}}\n",
    );
    if policy {
        yaml.push_str(POLICY);
    }
    resources(&yaml)
}

/// Subscribes to Istio's two types, as Istio's ztunnel does.
fn open_both(stream: &mut Stream) {
    for kind in [Kind::Authorization, Kind::Address] {
        stream.on_request(request(kind)).unwrap();
    }
}

#[test]
fn a_workload_never_arrives_before_the_policies_it_names() {
    let hub = Hub::new(with_policy(false));
    let mut stream = stream_of(hub.clone());
    open_both(&mut stream);
    // Addresses wait for the Authorizations of the same snapshot to be acknowledged.
    assert!(stream.next_response(Kind::Address).is_none());
    let authz = stream.next_response(Kind::Authorization).unwrap();
    assert!(
        stream.next_response(Kind::Address).is_none(),
        "not acknowledged yet"
    );
    stream.on_request(ack(Kind::Authorization, &authz)).unwrap();
    let addresses = stream.next_response(Kind::Address).unwrap();
    stream.on_request(ack(Kind::Address, &addresses)).unwrap();

    // A policy appears that the workload names: the policy first, then the workload.
    hub.publish(with_policy(true));
    assert!(stream.next_response(Kind::Address).is_none());
    let authz = stream.next_response(Kind::Authorization).unwrap();
    assert_eq!(names(&authz), ["n/only-b"]);
    assert!(stream.next_response(Kind::Address).is_none());
    stream.on_request(ack(Kind::Authorization, &authz)).unwrap();
    let addresses = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&addresses), [pod("a")]);
    stream.on_request(ack(Kind::Address, &addresses)).unwrap();

    // It goes away: the workload that no longer names it first, then its removal.
    hub.publish(with_policy(false));
    let authz = stream.next_response(Kind::Authorization);
    assert!(
        authz.is_none(),
        "nothing to add, and the removal waits: {authz:?}"
    );
    let addresses = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&addresses), [pod("a")]);
    assert!(
        stream.next_response(Kind::Authorization).is_none(),
        "workload not acknowledged"
    );
    stream.on_request(ack(Kind::Address, &addresses)).unwrap();
    let authz = stream.next_response(Kind::Authorization).unwrap();
    assert_eq!(authz.removed_resources, ["n/only-b"]);
}

#[test]
fn what_a_named_client_holds_stays_subscribed_and_a_widened_subscription_resyncs() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    // Istio's on-demand client reconnecting: nothing by wildcard, but it holds a.
    let mut stream = stream_of(hub.clone());
    stream
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["*".into()],
            resource_names_unsubscribe: vec!["*".into()],
            initial_resource_versions: [(pod("a"), "stale".to_owned())].into(),
            ..request(Kind::Address)
        })
        .unwrap();
    let first = stream.next_response(Kind::Address).unwrap();
    assert_eq!(names(&first), [pod("a")]);
    stream.on_request(ack(Kind::Address, &first)).unwrap();
    hub.publish(mesh(&[("a", "10.0.0.9"), ("b", "10.0.0.7")]));
    assert_eq!(
        names(&stream.next_response(Kind::Address).unwrap()),
        [pod("a")]
    );

    // A named subscriber that widens to `*` gets everything, not only what changes later.
    let mut named = stream_of(hub);
    named
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec![pod("a")],
            ..request(Kind::Address)
        })
        .unwrap();
    let first = named.next_response(Kind::Address).unwrap();
    named.on_request(ack(Kind::Address, &first)).unwrap();
    named
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["*".into()],
            ..request(Kind::Address)
        })
        .unwrap();
    assert_eq!(
        names(&named.next_response(Kind::Address).unwrap()),
        [pod("a"), pod("b")]
    );
}

#[test]
fn oversized_names_are_refused_and_churning_subscriptions_do_not_accumulate() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1")]));
    let mut stream = stream_of(hub);
    let err = stream
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["x".repeat(MAX_NAME_BYTES + 1)],
            ..request(Kind::Address)
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    stream
        .on_request(DeltaDiscoveryRequest {
            resource_names_subscribe: vec![pod("a")],
            ..request(Kind::Address)
        })
        .unwrap();
    let first = stream.next_response(Kind::Address).unwrap();
    // While that response is unacknowledged, a client subscribes and unsubscribes in a loop.
    for _ in 0..10_000 {
        stream
            .on_request(DeltaDiscoveryRequest {
                resource_names_subscribe: vec![pod("ghost")],
                ..request(Kind::Address)
            })
            .unwrap();
        stream
            .on_request(DeltaDiscoveryRequest {
                resource_names_unsubscribe: vec![pod("ghost")],
                ..request(Kind::Address)
            })
            .unwrap();
    }
    stream.on_request(ack(Kind::Address, &first)).unwrap();
    assert!(
        stream.next_response(Kind::Address).is_none(),
        "an unsubscribed name is not answered"
    );
}

#[tokio::test]
async fn addresses_wait_a_moment_for_an_authorization_subscription() {
    let hub = Hub::new(mesh(&[("a", "10.0.0.1")]));
    let mut stream =
        Stream::new(hub).with_authorization_grace(std::time::Duration::from_millis(100));
    stream.on_request(request(Kind::Address)).unwrap();
    assert!(stream.next_response(Kind::Address).is_none(), "too early");
    assert!(stream.wake_at().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    // No Authorization subscription came: a client that wants none is served all the same.
    assert!(stream.wake_at().is_none());
    assert_eq!(
        names(&stream.next_response(Kind::Address).unwrap()),
        [pod("a")]
    );
}

#[test]
fn a_policy_no_workload_names_is_removed_even_when_no_workload_changes() {
    let ns_wide = |name: &str| {
        resources(&format!(
            "workloads:\n  - {{name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1]}}\npolicies:\n  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {{name: {name}, namespace: n}}\n    spec: {{}}\n"
        ))
    };
    let hub = Hub::new(ns_wide("first"));
    let mut stream = stream_of(hub.clone());
    open_both(&mut stream);
    for response in stream.due() {
        let kind = Kind::from_type_url(&response.type_url).unwrap();
        stream.on_request(ack(kind, &response)).unwrap();
    }
    let addresses = stream.due();
    assert_eq!(
        addresses.len(),
        1,
        "the addresses, once the policies are held"
    );
    stream
        .on_request(ack(Kind::Address, &addresses[0]))
        .unwrap();
    assert!(stream.due().is_empty());

    // The namespace-wide policy is replaced: no workload names either, so no Address changes.
    hub.publish(ns_wide("second"));
    let due = stream.due();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(names(&due[0]), ["n/second"]);
    // The removal waits for the Addresses of this snapshot to settle; asking for them settles
    // them (nothing changed), and the removal is released in the same round.
    stream
        .on_request(ack(Kind::Authorization, &due[0]))
        .unwrap();
    let due = stream.due();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].type_url, Kind::Authorization.type_url());
    assert_eq!(due[0].removed_resources, ["n/first"]);
}

/// A mesh of `pods` pods in three groups, each group's policy present when `policies` says so.
fn grouped(round: u64, pods: usize, policies: [bool; 3]) -> Resources {
    let mut yaml = String::from("workloads:\n");
    for i in 0..pods {
        let ip = 10 + (i as u64 + round) % 200;
        yaml.push_str(&format!(
            "  - {{name: p{i:03}, namespace: n, serviceAccount: s, node: x, ips: [10.0.{}.{ip}], labels: {{app: g{}}}}}\n",
            round % 3,
            i % 3
        ));
    }
    yaml.push_str("policies:\n");
    for (g, present) in policies.iter().enumerate() {
        if *present {
            yaml.push_str(&format!(
                "  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {{name: pol-g{g}, namespace: n}}\n    spec:\n      selector: {{matchLabels: {{app: g{g}}}}}\n      rules: [{{from: [{{source: {{principals: [cluster.local/ns/n/sa/s{round}]}}}}]}}]\n"
            ));
        }
    }
    resources(&yaml)
}

/// What a client holds: every name and its version, per type.
#[derive(Default)]
struct Held(HashMap<Kind, HashMap<String, String>>);

impl Held {
    fn apply(&mut self, kind: Kind, response: &DeltaDiscoveryResponse) {
        let held = self.0.entry(kind).or_default();
        for name in &response.removed_resources {
            held.remove(name);
        }
        for r in &response.resources {
            held.insert(r.name.clone(), r.version.clone());
        }
    }

    fn of(&self, kind: Kind) -> HashMap<String, String> {
        self.0.get(&kind).cloned().unwrap_or_default()
    }
}

fn snapshot_of(hub: &Hub, kind: Kind) -> HashMap<String, String> {
    hub.current()
        .resources
        .of(kind)
        .iter()
        .map(|(name, entry)| (name.to_string(), entry.version.to_string()))
        .collect()
}

fn split_request(kind: Kind) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(veil_mesh::xds::proto::discovery::Node {
            id: "x".into(),
            metadata: Some(veil_mesh::xds::split_metadata()),
            ..Default::default()
        }),
        ..request(kind)
    }
}

#[test]
fn split_responses_stay_within_the_budget_and_bring_a_client_to_the_newest_snapshot() {
    const BUDGET: usize = 700;
    let hub = Hub::new(grouped(0, 40, [true, true, true]));
    let mut stream = stream_of(hub.clone()).with_response_budget(BUDGET);
    for kind in ZTUNNEL_KINDS {
        stream.on_request(split_request(kind)).unwrap();
    }
    let mut held = Held::default();
    let mut published = HashMap::from([(hub.current().seq, hub.current())]);
    let mut parts = 0;
    let mut seed = 7_u64;
    // Rounds of: a few responses acknowledged, then maybe a new snapshot (pods readdressed,
    // policies come and go), so that parts of one split response are made from later snapshots.
    for round in 1..400_u64 {
        for response in stream.due() {
            let kind = Kind::from_type_url(&response.type_url).unwrap();
            let size: usize = response.resources.iter().map(|r| r.encoded_len()).sum();
            assert!(
                response.resources.len() <= 1 || size <= BUDGET,
                "{size} bytes in {} resources",
                response.resources.len()
            );
            let partial = veil_mesh::xds::is_partial(&response);
            parts += usize::from(partial);
            held.apply(kind, &response);
            // The last part leaves the client holding all of one snapshot (Authorizations: and
            // the removals still held back).
            if !partial {
                let seq: u64 = response.system_version_info.parse().unwrap();
                let whole: HashMap<String, String> = published[&seq]
                    .resources
                    .of(kind)
                    .iter()
                    .map(|(n, e)| (n.to_string(), e.version.to_string()))
                    .collect();
                let mut have = held.of(kind);
                if kind == Kind::Authorization {
                    have.retain(|name, _| whole.contains_key(name));
                }
                assert_eq!(have, whole, "{kind:?} after the last part of {seq}");
            }
            // Make before break, across parts: every policy a held workload names is held.
            if kind == Kind::Address {
                let policies = held.of(Kind::Authorization);
                for r in &response.resources {
                    let body = &r.resource.as_ref().unwrap().value;
                    let address =
                        veil_mesh::xds::proto::istio::workload::Address::decode(&body[..]).unwrap();
                    let Some(veil_mesh::xds::proto::istio::workload::address::Type::Workload(w)) =
                        address.r#type
                    else {
                        continue;
                    };
                    for named in &w.authorization_policies {
                        assert!(
                            policies.contains_key(named),
                            "{} names {named}, not held (round {round})",
                            r.name
                        );
                    }
                }
            }
            stream.on_request(ack(kind, &response)).unwrap();
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if round < 300 && (seed >> 33).is_multiple_of(4) {
            let bits = seed >> 40;
            let next = hub.publish(grouped(
                round,
                30 + (bits % 15) as usize,
                [bits & 1 == 0, bits & 2 == 0, bits & 4 == 0],
            ));
            published.insert(next.seq, next);
        }
    }
    assert!(parts > 50, "responses were split ({parts} parts)");
    let due = stream.due();
    assert!(stream.synced() && due.is_empty(), "{due:?} {stream:?}");
    for kind in ZTUNNEL_KINDS {
        assert_eq!(held.of(kind), snapshot_of(&hub, kind), "{kind:?}");
    }
}

#[test]
fn a_client_that_does_not_accept_split_responses_gets_them_whole() {
    let hub = Hub::new(grouped(0, 40, [true, true, true]));
    let mut stream = stream_of(hub.clone()).with_response_budget(700);
    open_both(&mut stream);
    let authz = stream.next_response(Kind::Authorization).unwrap();
    assert_eq!(
        authz.resources.len(),
        snapshot_of(&hub, Kind::Authorization).len()
    );
    stream.on_request(ack(Kind::Authorization, &authz)).unwrap();
    let addresses = stream.next_response(Kind::Address).unwrap();
    assert_eq!(addresses.resources.len(), 40);
    assert!(!veil_mesh::xds::is_partial(&addresses));

    // The same client, announcing it accepts them: parts, the last one unmarked.
    let mut stream = stream_of(hub.clone()).with_response_budget(700);
    for kind in ZTUNNEL_KINDS {
        stream.on_request(split_request(kind)).unwrap();
    }
    let mut marks = Vec::new();
    while let Some(response) = stream.due().pop() {
        if response.type_url == Kind::Address.type_url() {
            marks.push(veil_mesh::xds::is_partial(&response));
        }
        let kind = Kind::from_type_url(&response.type_url).unwrap();
        stream.on_request(ack(kind, &response)).unwrap();
    }
    assert!(marks.len() > 2, "{marks:?}");
    assert_eq!(marks.last(), Some(&false));
    assert!(marks[..marks.len() - 1].iter().all(|m| *m));

    // One resource per part: an acknowledged part of the Authorizations does not let Addresses
    // through while more parts are to come.
    let mut stream = stream_of(hub).with_response_budget(1);
    for kind in ZTUNNEL_KINDS {
        stream.on_request(split_request(kind)).unwrap();
    }
    let first = stream.next_response(Kind::Authorization).unwrap();
    assert_eq!(first.resources.len(), 1);
    assert!(veil_mesh::xds::is_partial(&first));
    stream.on_request(ack(Kind::Authorization, &first)).unwrap();
    assert!(stream.next_response(Kind::Address).is_none());
}

mod model;
mod waypoint;

/// `pods` running (address `10.0.0.<i>`), plus `pending` being set up on their node.
fn with_pending(pods: &[(&str, &str)], pending: &[(&str, &str)]) -> Resources {
    let mut yaml = String::from("workloads:\n");
    for (name, ip) in pods {
        yaml.push_str(&format!(
            "  - {{name: {name}, namespace: n, serviceAccount: {name}, node: x, ips: [{ip}]}}\n"
        ));
    }
    let state = local::parse(&yaml, &MeshSettings::default())
        .unwrap()
        .with_pending(
            pending
                .iter()
                .map(|(name, node)| veil_mesh::testing::pending_workload("n", name, node, &[])),
        );
    Resources::from_state(&state)
}

fn node_stream(hub: Arc<Hub>, authenticated: Option<&str>, declared: &str) -> Stream {
    let mut stream = stream_of(hub).with_node(authenticated);
    let mut first = request(Kind::Address);
    first.node = Some(veil_mesh::xds::proto::discovery::Node {
        id: declared.into(),
        ..Default::default()
    });
    stream.on_request(first).unwrap();
    stream
}

#[test]
fn a_pod_being_set_up_goes_to_its_node_alone_until_it_has_an_address() {
    let hub = Hub::new(with_pending(&[("a", "10.0.0.1")], &[("p", "node-a")]));
    // Node a declares itself; node b's credential names it (what it declares does not count).
    let mut on_a = node_stream(hub.clone(), None, "node-a");
    let mut on_b = node_stream(hub.clone(), Some("node-b"), "node-a");
    let first_a = on_a.next_response(Kind::Address).unwrap();
    let first_b = on_b.next_response(Kind::Address).unwrap();
    assert_eq!(names(&first_a), [pod("a"), pod("p")]);
    assert_eq!(names(&first_b), [pod("a")]);
    on_a.on_request(ack(Kind::Address, &first_a)).unwrap();
    on_b.on_request(ack(Kind::Address, &first_b)).unwrap();

    // It gets its address: everyone gets it (an update for a, new for b).
    hub.publish(mesh(&[("a", "10.0.0.1"), ("p", "10.0.0.2")]));
    let second_a = on_a.next_response(Kind::Address).unwrap();
    let second_b = on_b.next_response(Kind::Address).unwrap();
    assert_eq!(names(&second_a), [pod("p")]);
    assert_eq!(names(&second_b), [pod("p")]);
    on_a.on_request(ack(Kind::Address, &second_a)).unwrap();
    on_b.on_request(ack(Kind::Address, &second_b)).unwrap();

    // Another pod is set up on a, then deleted before it had an address: b hears of neither.
    hub.publish(with_pending(
        &[("a", "10.0.0.1"), ("p", "10.0.0.2")],
        &[("q", "node-a")],
    ));
    let third_a = on_a.next_response(Kind::Address).unwrap();
    assert_eq!(names(&third_a), [pod("q")]);
    assert!(on_b.next_response(Kind::Address).is_none());
    on_a.on_request(ack(Kind::Address, &third_a)).unwrap();
    hub.publish(mesh(&[("a", "10.0.0.1"), ("p", "10.0.0.2")]));
    let fourth_a = on_a.next_response(Kind::Address).unwrap();
    assert_eq!(fourth_a.removed_resources, [pod("q")]);
    assert!(on_b.next_response(Kind::Address).is_none());
}

#[test]
fn a_resumed_stream_drops_what_it_holds_of_another_nodes_pods() {
    let hub = Hub::new(with_pending(&[("a", "10.0.0.1")], &[("p", "node-a")]));
    let current = hub.current();
    let entries = current.resources.of(Kind::Address);
    // A client of node b claims to hold node a's pod being set up (it never should have).
    let mut stream = stream_of(hub.clone()).with_node(Some("node-b"));
    let mut resume = request(Kind::Address);
    resume.initial_resource_versions = entries
        .iter()
        .map(|(n, e)| (n.to_string(), e.version.to_string()))
        .collect();
    stream.on_request(resume).unwrap();
    let first = stream.next_response(Kind::Address).unwrap();
    assert!(first.resources.is_empty());
    assert_eq!(first.removed_resources, [pod("p")]);
}

#[test]
fn enrolled_namespaces_follow_the_addresses_of_their_snapshot() {
    let enrolled = |ambient: bool| {
        let state = local::parse(
            "workloads:\n  - {name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1]}\n",
            &MeshSettings::default(),
        )
        .unwrap();
        let namespaces = if ambient {
            vec!["fresh".to_owned()]
        } else {
            vec![]
        };
        Resources::from_state(&state.with_ambient_namespaces(namespaces))
    };
    let hub = Hub::new(enrolled(false));
    let mut stream = stream_of(hub.clone());
    for kind in [Kind::Authorization, Kind::Address, Kind::Namespace] {
        stream.on_request(request(kind)).unwrap();
    }
    let mut sent = Vec::new();
    // Each type's first response comes once the one before it is acknowledged.
    for expected in [Kind::Authorization, Kind::Address, Kind::Namespace] {
        let due = stream.due();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].type_url, expected.type_url());
        stream.on_request(ack(expected, &due[0])).unwrap();
        sent.push(expected);
    }
    assert!(stream.due().is_empty() && stream.synced());
    // A namespace enrolled: sent once the snapshot's Addresses are held (here they did not change,
    // and asking for them settles them in the same round).
    hub.publish(enrolled(true));
    let due = stream.due();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].type_url, Kind::Namespace.type_url());
    assert_eq!(names(&due[0]), ["fresh"]);
}
