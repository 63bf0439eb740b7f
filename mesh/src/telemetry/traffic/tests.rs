use super::*;
use crate::telemetry::metrics::Metrics;
use crate::testing::pending_workload;

fn web() -> Workload {
    let mut w = pending_workload("shop", "web-7d9f8-abcde", "node-a", &[("app", "web")]);
    w.naming = std::sync::Arc::new(crate::discovery::Naming::new(
        "web".into(),
        &[
            ("app".to_owned(), "web".to_owned()),
            ("version".to_owned(), "v2".to_owned()),
        ]
        .into(),
    ));
    w
}

#[test]
fn a_connection_has_istios_labels_named_after_the_workload_not_the_pod() {
    let m = Metrics::new();
    let client = Identity::new("cluster.local", "front", "shell").unwrap();
    let labels = TrafficLabels {
        reporter: Reporter::Destination,
        source: Party::authenticated(&client, None),
        destination: Party::of(&web()),
        service: ServiceLabel::none(),
        protocol: Protocol::Tcp,
        security: Security::MutualTls,
    };
    m.tcp_opened.get_or_create(&labels).inc();
    let text = m.encode(None);
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        line,
        "istio_tcp_connections_opened_total{reporter=\"destination\",\
         source_workload=\"unknown\",source_workload_namespace=\"front\",\
         source_principal=\"spiffe://cluster.local/ns/front/sa/shell\",source_app=\"unknown\",\
         source_version=\"unknown\",source_canonical_service=\"unknown\",\
         source_canonical_revision=\"unknown\",source_cluster=\"unknown\",\
         destination_service=\"unknown\",destination_service_name=\"unknown\",\
         destination_service_namespace=\"unknown\",destination_workload=\"web\",\
         destination_workload_namespace=\"shop\",\
         destination_principal=\"spiffe://cluster.local/ns/shop/sa/web-7d9f8-abcde\",\
         destination_app=\"web\",destination_version=\"v2\",destination_canonical_service=\"web\",\
         destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",\
         request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 1"
    );
}

#[test]
fn a_peer_is_named_after_a_listed_workload_only_when_it_authenticated_as_it() {
    let w = web();
    let same = Party::authenticated(&w.identity.clone(), Some(&w));
    assert_eq!(same, Party::of(&w));
    // Someone else at that address (a waypoint, an address reused): only its own identity counts.
    let other = Identity::new("cluster.local", "shop", "intruder").unwrap();
    let named = Party::authenticated(&other, Some(&w));
    assert_eq!(named.workload, Known(None));
    assert_eq!(named.namespace, Known::from("shop"));
    assert_eq!(named.principal, Known::from(other.as_str()));
}

#[test]
fn requests_carry_the_status_and_the_service_by_its_hostname() {
    let m = Metrics::new();
    let service = Service {
        name: "api".into(),
        namespace: "shop".into(),
        vips: Vec::new(),
        ports: Vec::new(),
        udp_ports: Vec::new(),
        selector: Default::default(),
        endpoints: Vec::new(),
        waypoint: None,
    };
    let labels = RequestLabels {
        traffic: TrafficLabels {
            reporter: Reporter::Waypoint,
            source: Party::of(&web()),
            destination: Party::unknown(),
            service: ServiceLabel::of(&service),
            protocol: Protocol::Http,
            security: Security::MutualTls,
        },
        response_code: 403,
        grpc_response_status: None,
    };
    m.requests.get_or_create(&labels).inc();
    m.request_duration.get_or_create(&labels).observe(3.0);
    let text = m.encode(None);
    for expected in [
        "destination_service=\"api.shop.svc.cluster.local\",destination_service_name=\"api\",destination_service_namespace=\"shop\"",
        "request_protocol=\"http\",response_flags=\"-\",connection_security_policy=\"mutual_tls\",response_code=\"403\",grpc_response_status=\"\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    let bucket_5ms = text
        .lines()
        .find(|l| {
            l.starts_with(
                "istio_request_duration_milliseconds_bucket{le=\"5.0\",reporter=\"waypoint\"",
            )
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(bucket_5ms.ends_with(" 1"), "{bucket_5ms}");
}

#[test]
fn baggage_names_a_peer_the_proxy_does_not_list_within_its_own_namespace_only() {
    let w = web();
    let names = PeerNames::default();
    let baggage = Party::baggage(&w).unwrap();
    assert_eq!(
        baggage,
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web,service.version=v2"
    );
    // Read back by a proxy that does not list the workload: the same names as one that does.
    assert_eq!(names.name(&w.identity, None, Some(&baggage)), Party::of(&w));
    let only_identity = Party::authenticated(&w.identity, None);
    let said = |value: &'static str| {
        let value = HeaderValue::from_bytes(value.as_bytes()).unwrap();
        names.name(&w.identity, None, Some(&value))
    };
    // Another namespace than the identity's, no namespace, no workload, odd characters: the
    // identity alone.
    for lie in [
        "k8s.namespace.name=payments,k8s.deployment.name=web",
        "k8s.deployment.name=web",
        "k8s.namespace.name=shop,service.name=web",
        "k8s.namespace.name=shop,k8s.deployment.name=wéb",
        "k8s.namespace.name=shop,k8s.deployment.name=web\"x",
        "k8s.namespace.name=shop,k8s.deployment.name=a/b",
        "k8s.namespace.name=shop,k8s.deployment.name=",
    ] {
        assert_eq!(said(lie), only_identity, "{lie}");
    }
    assert_eq!(names.name(&w.identity, None, None), only_identity);
    // Properties and unknown members are ignored.
    let named = said("k8s.namespace.name=shop;p=1,foo=bar,k8s.job.name=nightly;q");
    assert_eq!(named.workload, Known::from("nightly"));
}

#[test]
fn a_peer_cannot_grow_the_series_by_sending_new_names() {
    let names = PeerNames::default();
    let name = |sa: usize, i: usize| {
        let identity = Identity::new("cluster.local", "shop", &format!("sa{sa}")).unwrap();
        let value = format!("k8s.namespace.name=shop,k8s.deployment.name=w{i}");
        names.name(
            &identity,
            None,
            Some(&HeaderValue::from_str(&value).unwrap()),
        )
    };
    // One identity: its own allowance, then its identity alone; what it was allowed stays.
    for i in 0..BAGGAGE_NAMES_PER_IDENTITY {
        assert_eq!(name(0, i).workload, Known::from(format!("w{i}").as_str()));
    }
    assert_eq!(name(0, BAGGAGE_NAMES_PER_IDENTITY).workload, Known(None));
    assert_eq!(name(0, 3).workload, Known::from("w3"));
    // Others keep theirs, until the proxy's whole allowance is used.
    let identities = BAGGAGE_NAMES / BAGGAGE_NAMES_PER_IDENTITY;
    for sa in 1..identities {
        for i in 0..BAGGAGE_NAMES_PER_IDENTITY {
            assert_eq!(name(sa, i).workload, Known::from(format!("w{i}").as_str()));
        }
    }
    let late = name(identities, 0);
    assert_eq!(late.workload, Known(None));
    assert_eq!(late.namespace, Known::from("shop"));
}
