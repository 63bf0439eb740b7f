//! The resources document of `veil explain --live`: decoded into the meshes ztunnels and waypoints
//! hold, and refused whole or in part (failing closed) when it is not what the controller writes.

use std::collections::BTreeSet;

use bytes::BytesMut;

use super::subscriber::received;
use super::waypoint::waypoint_state;
use super::*;
use crate::xds::dump::{decode, encode};
use crate::xds::proto::discovery::DeltaDiscoveryResponse;

fn keys(state: &MeshState) -> BTreeSet<String> {
    state.workloads().iter().map(|w| w.key()).collect()
}

fn ids(state: &MeshState) -> BTreeSet<String> {
    state
        .authz_policies()
        .iter()
        .map(|p| p.id.to_string())
        .collect()
}

#[test]
fn a_document_decodes_into_the_meshes_each_proxy_holds() {
    let native = waypoint_state();
    let resources = Resources::from_state(&native);
    let decoded = decode(&encode(&resources), &MeshSettings::default()).expect("decodes");
    assert_eq!(decoded.refused, vec![], "nothing refused");
    // ztunnels: Istio's form, exactly what a ztunnel subscribed to the controller holds.
    assert!(decoded.ztunnel.istio_semantics());
    let subscribed = received(&resources).to_state();
    assert_eq!(keys(&decoded.ztunnel), keys(&subscribed));
    assert_eq!(ids(&decoded.ztunnel), ids(&subscribed));
    assert_eq!(keys(&decoded.ztunnel), keys(&native));
    // Waypoints: policies as written, HTTP rules included.
    assert!(!decoded.waypoint.istio_semantics());
    assert_eq!(keys(&decoded.waypoint), keys(&native));
    assert_eq!(ids(&decoded.waypoint), ids(&native));
    assert!(
        decoded
            .waypoint
            .authz_policies()
            .iter()
            .any(|p| p.id.to_string() == "shop/api-reads"),
        "the waypoint's L7 policy is there"
    );
}

/// A document of `messages`, as `encode` frames them.
fn document(messages: &[DeltaDiscoveryResponse]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for m in messages {
        m.encode_length_delimited(&mut out).unwrap();
    }
    out.to_vec()
}

fn of_kind(
    kind: Kind,
    resources: Vec<crate::xds::proto::discovery::Resource>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: kind.type_url().into(),
        resources,
        ..Default::default()
    }
}

#[test]
fn what_is_not_a_whole_document_is_refused_with_a_reason() {
    let settings = MeshSettings::default();
    let good = encode(&Resources::from_state(&waypoint_state())).to_vec();
    let error = |body: &[u8]| decode(body, &settings).expect_err("refused");
    assert!(error(&[]).contains("the document has no"), "empty");
    assert!(
        error(&good[..good.len() - 1]).contains("not a resources document"),
        "truncated"
    );
    assert!(
        error(&[0xff; 64]).contains("not a resources document"),
        "garbage"
    );
    let all: Vec<DeltaDiscoveryResponse> =
        Kind::ALL.iter().map(|k| of_kind(*k, Vec::new())).collect();
    assert!(
        decode(&document(&all), &settings).is_ok(),
        "an empty mesh is a mesh"
    );
    let mut unknown = all.clone();
    unknown[0].type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    assert!(error(&document(&unknown)).contains("unknown type"));
    let mut twice = all.clone();
    twice.push(of_kind(Kind::Address, Vec::new()));
    assert!(error(&document(&twice)).contains("appears twice"));
    assert!(
        error(&document(&all[1..])).contains(Kind::Address.type_url()),
        "a kind missing"
    );
}

#[test]
fn a_resource_the_proxies_would_refuse_is_named_and_fails_closed() {
    let native = waypoint_state();
    let resources = Resources::from_state(&native);
    let mut messages: Vec<DeltaDiscoveryResponse> = Vec::new();
    for kind in Kind::ALL {
        let mut list: Vec<_> = resources
            .of(kind)
            .iter()
            .map(|(name, e)| kind.resource(name, &e.version, e.body.to_vec()))
            .collect();
        if kind == Kind::Authorization {
            // Not an Authorization at all: the policy's scope denies everything, as in ztunnel.
            let victim = list
                .iter_mut()
                .find(|r| r.name == "shop/db-from-api")
                .expect("the policy is sent");
            victim.resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
        }
        messages.push(of_kind(kind, list));
    }
    let decoded = decode(&document(&messages), &MeshSettings::default()).expect("decodes");
    assert_eq!(decoded.refused.len(), 1, "{:?}", decoded.refused);
    assert_eq!(decoded.refused[0].name, "shop/db-from-api");
    assert_eq!(keys(&decoded.ztunnel), keys(&native), "the rest is applied");
}
