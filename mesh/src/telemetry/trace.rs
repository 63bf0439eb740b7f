//! Traces: a span for each tunnel a ztunnel opens or accepts and for each request a waypoint
//! serves, linked across hops by W3C Trace Context (`traceparent`) on the HBONE `CONNECT` and, at the
//! waypoint, on the request passed to the application; exported over OTLP/gRPC.
//!
//! Off unless an OTLP endpoint is configured: then no span is made and no `traceparent` is sent.
//! A trace started here is sampled at the configured ratio (by trace ID, so every hop agrees); one
//! started upstream keeps its own decision (W3C `sampled` flag). Spans are queued in a bounded
//! buffer and exported in batches from a thread of their own: a slow or absent collector costs
//! dropped spans, never a stalled connection. Spans carry names, identities, ports, decisions,
//! status codes and byte counts — never a path, query, header value or address.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;
pub use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
pub use opentelemetry::trace::SpanKind;

use opentelemetry::Context;
use opentelemetry::trace::{
    Link, Span as _, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracer, SdkTracerProvider,
    ShouldSample,
};

/// The W3C header, as the propagator names it.
const TRACEPARENT_NAME: &str = "traceparent";

/// Tracing settings, shared by ztunnel and the waypoint.
#[derive(Clone, Debug, clap::Args)]
pub struct TraceFlags {
    /// OTLP/gRPC endpoint spans are exported to, e.g. `http://otel-collector.observability:4317`
    /// (`https://` with `--otlp-ca-file`). Unset: no spans, no `traceparent` sent.
    #[arg(long, env = "VEIL_OTLP_ENDPOINT", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<http::Uri>,
    /// Fraction (0–1) of the traces started here that are sampled. A trace started upstream keeps
    /// its own decision.
    #[arg(long, env = "VEIL_TRACE_SAMPLING", default_value_t = DEFAULT_SAMPLING, value_parser = parse_ratio)]
    pub trace_sampling: f64,
    /// At most this many finished spans (and, with `--otlp-logs`, log records) wait for export;
    /// more are dropped.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub trace_queue: u32,
    /// Also send the audit stream and the access log to the OTLP endpoint, as log records.
    #[arg(long, env = "VEIL_OTLP_LOGS", requires = "otlp_endpoint")]
    pub otlp_logs: bool,
    /// Also send the metrics (those of `/metrics`) to the OTLP endpoint, every
    /// `--otlp-metrics-interval`.
    #[arg(long, env = "VEIL_OTLP_METRICS", requires = "otlp_endpoint")]
    pub otlp_metrics: bool,
    /// How often the metrics are sent with `--otlp-metrics`.
    #[arg(long, env = "VEIL_OTLP_METRICS_INTERVAL", default_value = "60s", value_parser = parse_interval)]
    pub otlp_metrics_interval: Duration,
    /// For an `https://` endpoint: the CA certificates (PEM) the collector's certificate is
    /// verified against. Required with `https://`.
    #[arg(long, env = "VEIL_OTLP_CA_FILE", requires = "otlp_endpoint")]
    pub otlp_ca_file: Option<PathBuf>,
    /// For an `https://` endpoint: the certificate chain (PEM) this proxy presents to the collector
    /// (with `--otlp-client-key`). Unset: no client certificate.
    #[arg(
        long,
        env = "VEIL_OTLP_CLIENT_CERT",
        requires = "otlp_client_key",
        requires = "otlp_endpoint"
    )]
    pub otlp_client_cert: Option<PathBuf>,
    /// The private key (PEM) of `--otlp-client-cert`.
    #[arg(
        long,
        env = "VEIL_OTLP_CLIENT_KEY",
        requires = "otlp_client_cert",
        requires = "otlp_endpoint"
    )]
    pub otlp_client_key: Option<PathBuf>,
}

/// Istio's default sampling: 1% of new traces.
pub const DEFAULT_SAMPLING: f64 = 0.01;

/// How often metrics are exported by default (OpenTelemetry's default).
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
        Ok(d)
    } else {
        Err(format!("{s} is not between 1s and 1h"))
    }
}

impl Default for TraceFlags {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            trace_sampling: DEFAULT_SAMPLING,
            trace_queue: 2048,
            otlp_logs: false,
            otlp_metrics: false,
            otlp_metrics_interval: DEFAULT_METRICS_INTERVAL,
            otlp_ca_file: None,
            otlp_client_cert: None,
            otlp_client_key: None,
        }
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let ratio: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{s} is not between 0 and 1"))
    }
}

fn parse_endpoint(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(uri),
        _ => Err(format!(
            "{s} is not an http://host:port or https://host:port URL"
        )),
    }
}

/// Why an OTLP exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The exporter refused its settings.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The TLS settings are incomplete, or a file does not hold what it should.
    #[error("OTLP over TLS: {0}")]
    Tls(String),
}

impl TraceError {
    pub(crate) fn new(
        endpoint: &http::Uri,
        source: opentelemetry_otlp::ExporterBuildError,
    ) -> Self {
        Self::Exporter {
            endpoint: endpoint.to_string(),
            source,
        }
    }
}

/// What names the exporting process: `service.name` and `service.instance.id`.
pub(crate) fn resource(service: &'static str, instance: &str) -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service),
            KeyValue::new("service.instance.id", instance.to_owned()),
        ])
        .build()
}

/// What a root span is sampled at; carried in the context its sampler sees.
#[derive(Clone, Copy, Debug)]
struct Ratio(f64);

/// Follows a remote parent's decision (the SDK's parent-based sampler); a new trace is sampled by
/// the [`Ratio`] the caller put in its context.
#[derive(Clone, Debug)]
struct RootByRatio;

impl ShouldSample for RootByRatio {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let ratio = parent_context
            .and_then(|cx| cx.get::<Ratio>())
            .map_or(0.0, |r| r.0);
        Sampler::TraceIdRatioBased(ratio).should_sample(
            parent_context,
            trace_id,
            name,
            span_kind,
            attributes,
            links,
        )
    }
}

/// The process's tracer; absent when tracing is off.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampling: f64,
}

impl Tracing {
    /// Starts exporting to the configured endpoint as `service` (`veil-ztunnel`, `veil-waypoint`),
    /// instance `instance` (node or pod name). `None` when no endpoint is configured. Must be
    /// called inside the Tokio runtime the exporter's connection will run on.
    pub fn start(
        flags: &TraceFlags,
        service: &'static str,
        instance: &str,
    ) -> Result<Option<Self>, TraceError> {
        let Some(endpoint) = &flags.otlp_endpoint else {
            return Ok(None);
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_string())
            .with_timeout(Duration::from_secs(5));
        if let Some(channel) = super::otlp::tls_channel(flags)? {
            exporter = exporter.with_channel(channel);
        }
        let exporter = exporter
            .build()
            .map_err(|source| TraceError::new(endpoint, source))?;
        let queue = flags.trace_queue as usize;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(queue)
                    .with_max_export_batch_size(queue.min(512))
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let resource = resource(service, instance);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(RootByRatio)))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(service);
        Ok(Some(Self {
            provider,
            tracer,
            sampling: flags.trace_sampling,
        }))
    }

    /// The ratio new traces are sampled at.
    pub fn sampling(&self) -> f64 {
        self.sampling
    }

    /// Starts a span (attributes are added with [`Span::set_all`], once it is known to be
    /// recorded). Its parent is the first of `parents` that is a valid W3C `traceparent`; the
    /// others that are valid become its links (e.g. the tunnel a request arrived in, when the
    /// request carried its own trace). With none, it starts a new trace sampled at `sampling`.
    pub fn span(
        &self,
        name: &'static str,
        kind: SpanKind,
        parents: &[&HeaderValue],
        sampling: f64,
    ) -> Span {
        let mut valid = parents.iter().filter_map(|tp| {
            let cx = remote_context(tp);
            let valid = cx.span().span_context().is_valid();
            valid.then_some(cx)
        });
        let parent = valid.next().unwrap_or_default().with_value(Ratio(sampling));
        let links = valid
            .map(|cx| Link::with_context(cx.span().span_context().clone()))
            .collect();
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_links(links)
            .start_with_context(&self.tracer, &parent);
        Span(Some(Box::new(span)))
    }

    /// [`Self::span`] for a hop whose workload's Telemetry is `telemetry`: none when it turns spans
    /// off (or traces are off: `tracing` is `None`), else sampled as it says, or as configured.
    pub fn span_for(
        tracing: Option<&Self>,
        name: &'static str,
        kind: SpanKind,
        parents: &[&HeaderValue],
        telemetry: &crate::policy::TelemetrySettings,
    ) -> Span {
        match tracing {
            Some(t) if !telemetry.no_spans() => t.span(
                name,
                kind,
                parents,
                telemetry.sampling.unwrap_or(t.sampling),
            ),
            _ => Span::none(),
        }
    }

    /// Exports what is queued and stops. Blocks: call it off the runtime's worker threads (the
    /// exporter needs them to send).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

/// The context of a `traceparent` header: the SDK's W3C parser decides, and the IDs must be
/// exactly as wide as W3C says (the parser also takes shorter ones). Empty when invalid.
fn remote_context(traceparent: &HeaderValue) -> Context {
    let Ok(value) = traceparent.to_str() else {
        return Context::new();
    };
    let cx = TraceContextPropagator::new().extract(&OneHeader(value));
    let exact = {
        let span = cx.span();
        let sc = span.span_context();
        value.get(3..35) == Some(sc.trace_id().to_string().as_str())
            && value.get(36..52) == Some(sc.span_id().to_string().as_str())
    };
    if exact { cx } else { Context::new() }
}

struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT_NAME).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT_NAME]
    }
}

/// A span; ends when dropped. A no-op when tracing is off ([`Span::none`]). Boxed: it lives in
/// every connection's future, which must stay small when tracing is off
/// (`ztunnel/src/footprint.rs`).
#[derive(Debug)]
pub struct Span(Option<Box<opentelemetry_sdk::trace::Span>>);

impl Span {
    /// No span (tracing off).
    pub fn none() -> Self {
        Self(None)
    }

    /// This span as the `traceparent` of what it causes (a tunnel, a request to the application);
    /// also for a span that is not sampled, so the next hop keeps the decision.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let span = self.0.as_ref()?;
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier
            .remove(TRACEPARENT_NAME)
            .and_then(|v| HeaderValue::from_str(&v).ok())
    }

    /// Whether the span is recorded (sampled); attributes computed only for it.
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Adds an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.0 {
            span.set_attribute(attribute);
        }
    }

    /// Adds attributes, computed only when the span is recorded.
    pub fn set_all<I: IntoIterator<Item = KeyValue>>(&mut self, attributes: impl FnOnce() -> I) {
        if let Some(span) = self.0.as_mut().filter(|s| s.is_recording()) {
            span.set_attributes(attributes());
        }
    }

    /// Marks the span failed, with a short reason (never user data).
    pub fn fail(&mut self, reason: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(reason));
        }
    }
}

#[cfg(test)]
mod tests;
