//! The Telemetry that applies to each workload travels with it (veil's extension of Istio's
//! Workload): resolved by the control plane from labels the subscriber never receives, read back
//! the same, and an unreadable one records nothing.

use super::subscriber::{address_resource, received};
use super::*;
use crate::policy::{AccessLogLevel, TelemetrySettings};

const TELEMETRY: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: Telemetry
    metadata: {name: quiet, namespace: shop}
    spec: {accessLog: {level: "off"}, tracing: {randomSamplingPercentage: 5}}
  - apiVersion: security.veil.dev/v1
    kind: Telemetry
    metadata: {name: api-full, namespace: shop}
    spec:
      selector: {matchLabels: {app: api}}
      accessLog: {level: full, headers: [x-request-id]}
"#;

fn with_telemetry() -> MeshState {
    let text = format!("{MESH}{TELEMETRY}");
    local::parse(&text, &MeshSettings::default()).expect("the test mesh is valid")
}

/// The settings of workload `namespace/name`.
fn settings(state: &MeshState, key: &str) -> TelemetrySettings {
    let w = state
        .workloads()
        .into_iter()
        .find(|w| w.key() == key)
        .unwrap_or_else(|| panic!("no workload {key}"));
    state.telemetry_for(&w)
}

#[test]
fn each_workloads_telemetry_reaches_the_subscriber_without_its_labels() {
    let native = with_telemetry();
    let resources = Resources::from_state(&native);
    let received = received(&resources).to_state();
    assert!(
        received.telemetry_policies().is_empty(),
        "objects are not sent, only results"
    );
    for key in ["shop/api", "shop/db", "shop/front", "ops/admin"] {
        assert_eq!(settings(&received, key), settings(&native, key), "{key}");
    }
    let api = settings(&received, "shop/api");
    assert_eq!(api.access_log, Some(AccessLogLevel::Full));
    assert_eq!(
        api.headers.as_deref(),
        Some(&["x-request-id".to_owned()][..])
    );
    assert_eq!(api.sampling, Some(0.05));
    assert_eq!(
        settings(&received, "shop/db").access_log,
        Some(AccessLogLevel::Off)
    );
    assert!(settings(&received, "ops/admin").is_empty());
    // Only workloads something applies to carry the extension.
    let admin = workload(&resources, "ops", "admin");
    assert!(
        admin
            .extensions
            .iter()
            .all(|e| e.name != TELEMETRY_EXTENSION)
    );
}

#[test]
fn a_changed_telemetry_changes_the_workloads_version() {
    let before = Resources::from_state(&state());
    let after = Resources::from_state(&with_telemetry());
    let version = |r: &Resources, name: &str| r.of(Kind::Address)[name].version.clone();
    let db = workload_name("shop", "db");
    let admin = workload_name("ops", "admin");
    assert_ne!(version(&before, &db), version(&after, &db));
    assert_eq!(version(&before, &admin), version(&after, &admin));
}

#[test]
fn an_unreadable_telemetry_extension_records_nothing_about_the_workload() {
    let resources = Resources::from_state(&with_telemetry());
    let mut store = received(&resources);
    let name = workload_name("shop", "api");
    let mut api = workload(&resources, "shop", "api");
    for config in [
        None,
        Some(prost_types::Any {
            type_url: STRING_VALUE_TYPE.into(),
            value: b"\xff\xff not a message".to_vec(),
        }),
        Some(prost_types::Any {
            type_url: STRING_VALUE_TYPE.into(),
            value: StringValue {
                value: "{\"accessLog\": \"loud\"}".into(),
            }
            .encode_to_vec(),
        }),
        Some(prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.Struct".into(),
            value: Vec::new(),
        }),
    ] {
        for e in &mut api.extensions {
            if e.name == TELEMETRY_EXTENSION {
                e.config = config.clone();
            }
        }
        let update = address_resource(&name, "v2", wl::address::Type::Workload(api.clone()));
        assert_eq!(store.apply(Kind::Address, &[update], &[]), vec![]);
        let got = settings(&store.to_state(), "shop/api");
        assert_eq!(got, TelemetrySettings::record_nothing(), "{config:?}");
    }
}
