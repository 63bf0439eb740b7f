//! The Kubernetes translation (`veil_mesh::discovery::kubernetes::translate`): Namespaces, Pods,
//! Services and the two veil CRDs, as the API server serves them in JSON, into a mesh state.
//!
//! Input: one JSON object whose lists are the watched objects,
//! `{"namespaces": [...], "pods": [...], "services": [...], "authorizationPolicies": [...],
//! "peerAuthentications": [...]}` (every list optional).

#![no_main]

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;
use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::kubernetes::{Objects, SlimPod, TelemetryObject, translate};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    #[serde(default)]
    namespaces: Vec<Namespace>,
    #[serde(default)]
    pods: Vec<SlimPod>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    authorization_policies: Vec<AuthorizationPolicy>,
    #[serde(default)]
    peer_authentications: Vec<PeerAuthentication>,
    #[serde(default)]
    telemetries: Vec<TelemetryObject>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    fn shared<K>(objects: Vec<K>) -> Vec<Arc<K>> {
        objects.into_iter().map(Arc::new).collect()
    }
    let objects = Objects {
        namespaces: shared(input.namespaces),
        pods: shared(input.pods),
        services: shared(input.services),
        authorization_policies: shared(input.authorization_policies),
        peer_authentications: shared(input.peer_authentications),
        telemetries: shared(input.telemetries),
    };
    let _ = translate(&objects, &MeshSettings::default());
});
