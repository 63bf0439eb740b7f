//! Logging shared by every veil binary: structured, to stderr, filtered by `RUST_LOG` or a default
//! level, as human-readable text or as one JSON object per line; optionally, the audit stream and
//! the access log also as OTLP log records ([`LogExport`]).

use std::str::FromStr;
use std::time::Duration;

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::logs::{BatchConfigBuilder, BatchLogProcessor, SdkLoggerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::trace::{TraceError, TraceFlags};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// Installs the global subscriber. `default_directive` (e.g. `info`) applies when `RUST_LOG` is unset.
pub fn init_logging(format: LogFormat, default_directive: &str) {
    init_logging_exporting(format, default_directive, None);
}

/// [`init_logging`], and with `export`, the audit stream (`veil::audit`) and the access log
/// (`veil::access`) also go out as OTLP log records — as far as `RUST_LOG` lets them through,
/// like the lines on stderr.
pub fn init_logging_exporting(
    format: LogFormat,
    default_directive: &str,
    export: Option<&LogExport>,
) {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter()).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter()).boxed(),
    };
    let otlp = export.map(|e| {
        let streams = Targets::new()
            .with_target(super::audit::AUDIT, tracing::Level::INFO)
            .with_target(ACCESS_LOG, tracing::Level::INFO);
        OpenTelemetryTracingBridge::new(&e.provider).with_filter(filter().and(streams))
    });
    // A second initialisation (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otlp)
        .try_init();
}

/// The access log's target in every proxy.
const ACCESS_LOG: &str = "veil::access";

/// OTLP export of the audit stream and the access log (`--otlp-logs`), to the traces' endpoint.
#[derive(Debug)]
pub struct LogExport {
    provider: SdkLoggerProvider,
}

impl LogExport {
    /// Starts the exporter when `--otlp-logs` is set (with an endpoint) as `service`, instance
    /// `instance`. Must be called inside the Tokio runtime its connection will run on.
    pub fn start(
        flags: &TraceFlags,
        service: &'static str,
        instance: &str,
    ) -> Result<Option<Self>, TraceError> {
        let (true, Some(endpoint)) = (flags.otlp_logs, &flags.otlp_endpoint) else {
            return Ok(None);
        };
        let mut exporter = opentelemetry_otlp::LogExporter::builder()
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
        let processor = BatchLogProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(queue)
                    .with_max_export_batch_size(queue.min(512))
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let provider = SdkLoggerProvider::builder()
            .with_log_processor(processor)
            .with_resource(super::trace::resource(service, instance))
            .build();
        Ok(Some(Self { provider }))
    }

    /// Exports what is queued and stops. Blocks: call it off the runtime's worker threads.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing log records at shutdown failed");
        }
    }
}
