//! Telemetry objects from the API: resolved per workload, an invalid or unreadable one reported and
//! recording nothing in its scope (and nowhere else), and kept by a patch for pods.

use k8s_openapi::api::core::v1::PodIP;
use serde_json::{Value, json};
use veil_crd::telemetry::AccessLogLevel;

use super::*;
use crate::discovery::kubernetes::patch::{PATCH_AT_MOST, contested, patch};
use crate::discovery::kubernetes::telemetry::TelemetryObject;
use crate::policy::TelemetrySettings;

const PROFILE: &str = "10.244.2.10"; // user-data, app=user-profile-service
const ACCOUNT: &str = "10.244.1.10"; // production, app=account-service
const REPORTING: &str = "10.244.1.11"; // production, app=reporting
const LEGACY: &str = "10.244.1.12"; // default, app=legacy

/// A Telemetry as the API serves it (`spec` `Null`: none).
fn telemetry(namespace: &str, name: &str, spec: Value) -> Arc<TelemetryObject> {
    let mut object = json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "Telemetry",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "generation": 1},
    });
    if !spec.is_null() {
        object["spec"] = spec;
    }
    Arc::new(serde_json::from_value(object).expect("a Telemetry"))
}

/// What applies to the workload at `address`.
fn at(state: &MeshState, address: &str) -> TelemetrySettings {
    let workload = state.workload_by_ip(ip(address)).expect("a workload");
    state.telemetry_for(workload)
}

/// The Telemetries refused, as `namespace/name field`.
fn refused(t: &Translation) -> Vec<String> {
    t.invalid
        .iter()
        .filter(|e| e.kind == "Telemetry")
        .map(|e| format!("{} {}", e.policy, e.field))
        .collect()
}

#[test]
fn telemetries_apply_to_their_namespace_the_workloads_they_select_and_from_the_root_namespace() {
    let mut objects = objects();
    let t = translated(&objects);
    assert!(refused(&t).is_empty(), "{:?}", t.invalid);
    // user-data's namespace-wide one.
    let profile = at(&t.state, PROFILE);
    assert_eq!(profile.access_log, Some(AccessLogLevel::Off));
    assert_eq!(profile.sampling, None);
    // production's selects account-service alone.
    let account = at(&t.state, ACCOUNT);
    assert_eq!(account.access_log, Some(AccessLogLevel::Full));
    assert_eq!(account.headers, Some(vec!["x-request-id".to_owned()]));
    assert_eq!(account.sampling, Some(0.25));
    assert!(at(&t.state, REPORTING).is_empty());
    assert!(at(&t.state, LEGACY).is_empty());

    // One in the root namespace is mesh-wide, under what a namespace or selector says.
    let root = MeshSettings::default().root_namespace;
    objects.telemetries.push(telemetry(
        &root,
        "mesh",
        json!({"accessLog": {"level": "metadata"}, "tracing": {"disableSpanReporting": true}}),
    ));
    let t = translated(&objects);
    let legacy = at(&t.state, LEGACY);
    assert_eq!(legacy.access_log, Some(AccessLogLevel::Metadata));
    assert!(legacy.no_spans());
    let profile = at(&t.state, PROFILE);
    assert_eq!(profile.access_log, Some(AccessLogLevel::Off));
    assert!(profile.no_spans());
    assert_eq!(at(&t.state, ACCOUNT).access_log, Some(AccessLogLevel::Full));
}

#[test]
fn an_invalid_telemetry_is_reported_and_records_nothing_in_its_scope_alone() {
    let mut objects = objects();
    objects.telemetries[1] = telemetry(
        "production",
        "account-traces",
        json!({"selector": {"matchLabels": {"app": "account-service"}}, "accessLog": {"level": "full"}, "tracing": {"randomSamplingPercentage": 150}}),
    );
    let t = translated(&objects);
    assert_eq!(
        refused(&t),
        ["production/account-traces spec.tracing.randomSamplingPercentage"]
    );
    // The workloads it selects: no access log, no spans, nothing sampled — not `full`.
    assert_eq!(at(&t.state, ACCOUNT), TelemetrySettings::record_nothing());
    // Its namespace's other workloads, and another namespace's, are as they were.
    assert!(at(&t.state, REPORTING).is_empty());
    let profile = at(&t.state, PROFILE);
    assert_eq!(profile.access_log, Some(AccessLogLevel::Off));
    assert!(!profile.no_spans());
    assert!(at(&t.state, LEGACY).is_empty());
    // The rest of the mesh is translated as usual.
    assert!(t.state.rejected().is_empty());
    assert_eq!(t.state.workloads().len(), 4);
}

#[test]
fn a_telemetry_this_version_cannot_read_fails_closed_and_holds_no_other_back() {
    let mut objects = objects();
    objects.telemetries.extend([
        // A field of a newer CRD, its selector readable: fails closed for what it selects.
        telemetry(
            "production",
            "newer",
            json!({"selector": {"matchLabels": {"app": "reporting"}}, "accessLog": {"level": "off", "format": "json"}}),
        ),
        // Not even its selector can be read: fails closed for its whole namespace.
        telemetry(
            "default",
            "garbled",
            json!({"selector": {"matchLabels": "app=legacy"}, "tracing": {"randomSamplingPercentage": "ten"}}),
        ),
        // No spec at all.
        telemetry("user-data", "empty", Value::Null),
    ]);
    let t = translated(&objects);
    assert_eq!(
        refused(&t),
        [
            "production/newer spec",
            "default/garbled spec",
            "user-data/empty spec"
        ]
    );
    let reasons: Vec<&str> = t.invalid.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("unknown field `format`")),
        "{reasons:?}"
    );
    for address in [REPORTING, LEGACY, PROFILE] {
        assert_eq!(
            at(&t.state, address),
            TelemetrySettings::record_nothing(),
            "{address}"
        );
    }
    // The valid one beside them still applies.
    assert_eq!(at(&t.state, ACCOUNT).sampling, Some(0.25));
}

#[test]
fn telemetries_are_kept_by_a_patch_for_pods() {
    let settings = MeshSettings::default();
    let objects = objects();
    let previous = translated(&objects).state;
    // A second account-service pod starts: a change a patch follows.
    let mut next = objects.clone();
    let mut pod = (*next.pods[0]).clone();
    assert_eq!(
        pod.metadata.name.as_deref(),
        Some("account-service-7d9f8c6b5-x2k4p")
    );
    pod.metadata.name = Some("account-service-7d9f8c6b5-second".into());
    pod.metadata.uid = Some("a1a1a1a1-0000-4000-8000-0000000000ff".into());
    let status = pod.status.as_mut().unwrap();
    status.pod_ip = Some("10.244.9.1".into());
    status.pod_ips = Some(vec![PodIP {
        ip: "10.244.9.1".into(),
    }]);
    let pod = Arc::new(pod);
    next.pods.push(pod.clone());
    let patched = patch(
        &previous,
        &next,
        &settings,
        &contested(&objects, &previous),
        &[(None, Some(pod))],
        PATCH_AT_MOST,
    )
    .expect("a pod-only change is patched");
    assert_eq!(patched.telemetry_policies(), previous.telemetry_policies());
    assert_eq!(patched.telemetry_policies().len(), 2);
    let second = at(&patched, "10.244.9.1");
    assert_eq!(second.sampling, Some(0.25));
    assert_eq!(second, at(&translated(&next).state, "10.244.9.1"));
    assert_eq!(at(&patched, PROFILE).access_log, Some(AccessLogLevel::Off));
}
