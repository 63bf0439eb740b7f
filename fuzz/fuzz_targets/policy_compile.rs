//! AuthorizationPolicy, PeerAuthentication and Telemetry compilation (`veil_mesh::policy::
//! compile_authz`, `compile_peer_auth`, `compile_telemetry`, and a Telemetry's resolution for a
//! workload) from the objects as users write them: JSON as the API server serves it (the
//! Kubernetes source) and YAML as the local mesh file holds it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_crd::authorization::AuthorizationPolicy;
use veil_crd::peer_authentication::PeerAuthentication;
use veil_crd::telemetry::Telemetry;
use veil_mesh::policy::{compile_authz, compile_peer_auth, compile_telemetry, resolve_telemetry};

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
    if let Ok(t) = serde_json::from_str::<Telemetry>(text) {
        telemetry(&t);
    }
    if let Ok(t) = serde_saphyr::from_str::<Telemetry>(text) {
        telemetry(&t);
    }
});

fn telemetry(t: &Telemetry) {
    let (namespace, name) = names(&t.metadata);
    if let Ok(compiled) = compile_telemetry(namespace, name, &t.spec) {
        let labels = compiled.selector().cloned().unwrap_or_default();
        let settings = resolve_telemetry(&[compiled], "veil-system", namespace, &labels);
        // What a control plane sends must read back the same.
        let json = serde_json::to_string(&settings).expect("settings serialize");
        let back: veil_mesh::policy::TelemetrySettings =
            serde_json::from_str(&json).expect("settings read back");
        assert_eq!(back, settings);
    }
}

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
