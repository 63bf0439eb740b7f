use std::collections::BTreeMap;

use veil_crd::telemetry::{AccessLogLevel, TelemetrySpec};

use super::*;

fn spec(yaml: &str) -> TelemetrySpec {
    serde_saphyr::from_str(yaml).unwrap()
}

fn compile(namespace: &str, name: &str, yaml: &str) -> TelemetryPolicy {
    compile_telemetry(namespace, name, &spec(yaml)).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const ROOT: &str = "veil-system";

#[test]
fn the_most_specific_object_that_sets_a_field_decides_it() {
    let policies = [
        compile(
            ROOT,
            "mesh",
            "{accessLog: {level: full, headers: [x-request-id]}, tracing: {randomSamplingPercentage: 10}}",
        ),
        compile("user-data", "ns", "{accessLog: {level: \"off\"}}"),
        compile(
            "user-data",
            "api",
            "{selector: {matchLabels: {app: api}}, accessLog: {level: metadata}}",
        ),
    ];
    // Selected: its level; the rest from the mesh-wide one.
    let api = resolve_telemetry(&policies, ROOT, "user-data", &labels(&[("app", "api")]));
    assert_eq!(api.access_log, Some(AccessLogLevel::Metadata));
    assert_eq!(
        api.headers.as_deref(),
        Some(&["x-request-id".to_owned()][..])
    );
    assert_eq!(api.sampling, Some(0.1));
    // The namespace's own.
    let db = resolve_telemetry(&policies, ROOT, "user-data", &labels(&[("app", "db")]));
    assert_eq!(db.access_log, Some(AccessLogLevel::Off));
    // Another namespace: mesh-wide only; a selector elsewhere never applies.
    let other = resolve_telemetry(&policies, ROOT, "finance", &labels(&[("app", "api")]));
    assert_eq!(other.access_log, Some(AccessLogLevel::Full));
    // Nothing at all: empty, the proxies' own settings.
    assert!(resolve_telemetry(&policies[1..], ROOT, "finance", &labels(&[])).is_empty());
}

#[test]
fn objects_of_one_level_combine_to_what_records_least() {
    let policies = [
        compile(
            "shop",
            "a",
            "{accessLog: {level: full, headers: [x-a, x-b], redactQueryParameters: [Session]}, tracing: {randomSamplingPercentage: 50}}",
        ),
        compile(
            "shop",
            "b",
            "{accessLog: {level: metadata, headers: [x-b, x-c], redactQueryParameters: [id]}, tracing: {randomSamplingPercentage: 5, disableSpanReporting: true}}",
        ),
    ];
    let t = resolve_telemetry(&policies, ROOT, "shop", &labels(&[]));
    assert_eq!(t.access_log, Some(AccessLogLevel::Metadata));
    assert_eq!(t.headers.as_deref(), Some(&["x-b".to_owned()][..]));
    assert_eq!(t.redact_query_parameters, ["id", "session"]);
    assert_eq!(t.sampling, Some(0.05));
    assert!(t.no_spans());
    // Order does not matter.
    let reversed = [policies[1].clone(), policies[0].clone()];
    assert_eq!(resolve_telemetry(&reversed, ROOT, "shop", &labels(&[])), t);
}

#[test]
fn redactions_add_up_across_levels_and_spans_can_be_turned_back_on_by_a_selector() {
    let policies = [
        compile(
            "shop",
            "ns",
            "{accessLog: {redactQueryParameters: [card]}, tracing: {disableSpanReporting: true}}",
        ),
        compile(
            "shop",
            "web",
            "{selector: {matchLabels: {app: web}}, accessLog: {redactQueryParameters: [email]}, tracing: {disableSpanReporting: false}}",
        ),
    ];
    let web = resolve_telemetry(&policies, ROOT, "shop", &labels(&[("app", "web")]));
    assert_eq!(web.redact_query_parameters, ["card", "email"]);
    assert!(!web.no_spans());
    let other = resolve_telemetry(&policies, ROOT, "shop", &labels(&[("app", "db")]));
    assert!(other.no_spans());
}

#[test]
fn invalid_objects_are_refused_with_the_field_and_their_stand_in_records_nothing() {
    for (yaml, field) in [
        (
            "{tracing: {randomSamplingPercentage: 150}}",
            "spec.tracing.randomSamplingPercentage",
        ),
        (
            "{tracing: {randomSamplingPercentage: -1}}",
            "spec.tracing.randomSamplingPercentage",
        ),
        (
            "{accessLog: {headers: [\"bad header\"]}}",
            "spec.accessLog.headers[0]",
        ),
        (
            "{accessLog: {redactQueryParameters: [\"\"]}}",
            "spec.accessLog.redactQueryParameters[0]",
        ),
    ] {
        let e = compile_telemetry("shop", "bad", &spec(yaml)).unwrap_err();
        assert_eq!(e.field, field, "{yaml}");
        assert_eq!(e.kind, "Telemetry");
    }
    // Unknown fields and levels are refused when the spec is read.
    assert!(serde_saphyr::from_str::<TelemetrySpec>("{accessLog: {level: verbose}}").is_err());
    assert!(serde_saphyr::from_str::<TelemetrySpec>("{acessLog: {}}").is_err());
    let stand_in = telemetry_fail_closed("shop", "bad", Some(labels(&[("app", "web")])));
    let web = resolve_telemetry(
        std::slice::from_ref(&stand_in),
        ROOT,
        "shop",
        &labels(&[("app", "web")]),
    );
    assert_eq!(web.access_log, Some(AccessLogLevel::Off));
    assert!(web.no_spans());
    assert_eq!(web.headers.as_deref(), Some(&[][..]));
    // Its scope only.
    assert!(resolve_telemetry(&[stand_in], ROOT, "shop", &labels(&[("app", "db")])).is_empty());
    // Without a readable selector it covers the namespace, and no selector object outranks it.
    let unreadable = telemetry_fail_closed("shop", "broken", None);
    let loud = compile(
        "shop",
        "loud",
        "{selector: {matchLabels: {app: web}}, accessLog: {level: full}, tracing: {disableSpanReporting: false}}",
    );
    let web = resolve_telemetry(
        &[unreadable, loud],
        ROOT,
        "shop",
        &labels(&[("app", "web")]),
    );
    assert_eq!(web.access_log, Some(AccessLogLevel::Off));
    assert!(web.no_spans());
}

#[test]
fn header_names_are_lower_cased_and_settings_survive_json() {
    let t = compile(
        "shop",
        "a",
        "{accessLog: {level: full, headers: [X-Request-ID]}, tracing: {randomSamplingPercentage: 0}}",
    );
    assert_eq!(
        t.settings().headers.as_deref(),
        Some(&["x-request-id".to_owned()][..])
    );
    let json = serde_json::to_string(t.settings()).unwrap();
    let back: TelemetrySettings = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, t.settings());
    assert_eq!(back.sampling, Some(0.0));
    // A field this version does not know might restrict more: not read as nothing said.
    assert!(
        serde_json::from_str::<TelemetrySettings>("{\"accessLog\":\"off\",\"future\":1}").is_err()
    );
}
