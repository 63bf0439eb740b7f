use http::HeaderValue;
use opentelemetry::trace::{SpanId, Status, TraceId};

use super::*;

/// A tracer exporting to a port nothing answers on (export fails; spans are still made).
fn tracing(sampling: f64) -> Tracing {
    let flags = TraceFlags {
        otlp_endpoint: Some("http://127.0.0.1:9".parse().unwrap()),
        trace_sampling: sampling,
        trace_queue: 16,
        ..TraceFlags::default()
    };
    Tracing::start(&flags, "veil-test", "test")
        .unwrap()
        .unwrap()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn tp(flags: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("00-{TRACE}-{PARENT}-{flags}")).unwrap()
}

fn data(span: &Span) -> opentelemetry_sdk::trace::SpanData {
    span.0.as_ref().unwrap().exported_data().unwrap()
}

/// The trace ID, span ID and flags of a `traceparent`.
fn fields(value: &HeaderValue) -> (String, String, String) {
    let parts: Vec<&str> = value.to_str().unwrap().split('-').collect();
    assert_eq!(parts.len(), 4, "{value:?}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_trace_is_sampled_at_the_ratio_and_propagated_either_way() {
    let all = tracing(1.0);
    let span = all.span("t", SpanKind::Client, &[], all.sampling());
    assert!(span.is_recording());
    let (trace, id, flags) = fields(&span.traceparent().unwrap());
    assert_eq!(flags, "01");
    assert_eq!(trace, data(&span).span_context.trace_id().to_string());
    assert_eq!(id, data(&span).span_context.span_id().to_string());
    assert_eq!(data(&span).parent_span_id, SpanId::INVALID);

    let none = tracing(0.0);
    let span = none.span("t", SpanKind::Client, &[], none.sampling());
    assert!(!span.is_recording());
    // Not sampled, still propagated: the next hop keeps the decision.
    let (trace, _, flags) = fields(&span.traceparent().unwrap());
    assert_eq!(flags, "00");
    assert_ne!(trace, TraceId::INVALID.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_parent_decides_sampling_whatever_the_local_ratio() {
    let none = tracing(0.0);
    let span = none.span("t", SpanKind::Server, &[&tp("01")], none.sampling());
    assert!(span.is_recording(), "a sampled parent is followed");
    let d = data(&span);
    assert_eq!(d.span_context.trace_id().to_string(), TRACE);
    assert_eq!(d.parent_span_id.to_string(), PARENT);
    let (trace, id, flags) = fields(&span.traceparent().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(id, PARENT, "the next hop's parent is this span");

    let all = tracing(1.0);
    let span = all.span("t", SpanKind::Server, &[&tp("00")], all.sampling());
    assert!(!span.is_recording(), "an unsampled parent is followed");
    let (trace, _, flags) = fields(&span.traceparent().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parents_start_a_new_trace() {
    let all = tracing(1.0);
    for bad in [
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ] {
        let value = HeaderValue::from_str(bad).unwrap();
        let span = all.span("t", SpanKind::Server, &[&value], all.sampling());
        let d = data(&span);
        assert_ne!(d.span_context.trace_id().to_string(), TRACE, "{bad}");
        assert_eq!(d.parent_span_id, SpanId::INVALID, "{bad}");
    }
    // Not UTF-8.
    let value = HeaderValue::from_bytes(b"00-\xff").unwrap();
    let span = all.span("t", SpanKind::Server, &[&value], all.sampling());
    assert_eq!(data(&span).parent_span_id, SpanId::INVALID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_valid_parent_is_the_parent_and_the_others_are_links() {
    let all = tracing(1.0);
    let own = HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let tunnel = tp("01");
    let span = all.span("GET", SpanKind::Server, &[&own, &tunnel], all.sampling());
    let d = data(&span);
    assert_eq!(
        d.span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(d.parent_span_id.to_string(), "b7ad6b7169203331");
    let links: Vec<String> = d
        .links
        .iter()
        .map(|l| l.span_context.span_id().to_string())
        .collect();
    assert_eq!(links, [PARENT]);

    let bad = HeaderValue::from_static("nonsense");
    let span = all.span("GET", SpanKind::Server, &[&bad, &tunnel], all.sampling());
    let d = data(&span);
    assert_eq!(d.parent_span_id.to_string(), PARENT);
    assert!(d.links.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_and_failures_are_recorded_only_on_recorded_spans() {
    let all = tracing(1.0);
    let mut span = all.span("t", SpanKind::Client, &[], all.sampling());
    span.set_all(|| [KeyValue::new("veil.decision", "deny")]);
    span.fail("denied by policy");
    let d = data(&span);
    assert!(
        d.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "veil.decision")
    );
    assert_eq!(d.status, Status::error("denied by policy"));

    let none = tracing(0.0);
    let mut span = none.span("t", SpanKind::Client, &[], none.sampling());
    span.set_all(|| -> Vec<KeyValue> { panic!("computed for a span nobody records") });
    let mut off = Span::none();
    off.set_all(|| -> Vec<KeyValue> { panic!("computed with traces off") });
    off.fail("nothing");
    assert!(off.traceparent().is_none());
}

#[test]
fn endpoints_and_ratios_are_checked() {
    assert!(parse_endpoint("http://collector.observability:4317").is_ok());
    assert!(parse_endpoint("https://collector:4317").is_ok());
    for bad in ["collector:4317", "ftp://x", "http://", "https://", "/path"] {
        assert!(parse_endpoint(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_ratio("0.25"), Ok(0.25));
    for bad in ["-0.1", "1.5", "NaN", "x", ""] {
        assert!(parse_ratio(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_interval("15s"), Ok(Duration::from_secs(15)));
    for bad in ["0s", "500ms", "2h", "x", ""] {
        assert!(parse_interval(bad).is_err(), "{bad}");
    }
}
