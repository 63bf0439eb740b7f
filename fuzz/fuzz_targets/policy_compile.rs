//! AuthorizationPolicy and PeerAuthentication compilation (`veil_mesh::policy::compile_authz`,
//! `compile_peer_auth`) from the objects as users write them: JSON as the API server serves it
//! (the Kubernetes source) and YAML as the local mesh file holds it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;
use veil_mesh::policy::{compile_authz, compile_peer_auth};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = serde_json::from_str::<AuthorizationPolicy>(text) {
        authz(&p);
    }
    if let Ok(p) = serde_json::from_str::<PeerAuthentication>(text) {
        peer_auth(&p);
    }
    if let Ok(p) = serde_saphyr::from_str::<AuthorizationPolicy>(text) {
        authz(&p);
    }
    if let Ok(p) = serde_saphyr::from_str::<PeerAuthentication>(text) {
        peer_auth(&p);
    }
});

fn authz(p: &AuthorizationPolicy) {
    let (namespace, name) = names(&p.metadata);
    let _ = compile_authz(namespace, name, &p.spec);
}

fn peer_auth(p: &PeerAuthentication) {
    let (namespace, name) = names(&p.metadata);
    let _ = compile_peer_auth(namespace, name, &p.spec);
}

fn names(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("fuzz"),
    )
}
