//! Telemetry: structured logs, Prometheus metrics, OpenTelemetry traces, and the small HTTP endpoints that expose them
//! (metrics, readiness, admin).

pub mod audit;
pub mod http;
mod logging;
pub mod metrics;
mod otlp;
pub mod ratelimit;
pub mod trace;
mod traffic;

pub use logging::{LogExport, LogFormat, init_logging, init_logging_exporting};
pub use ratelimit::LogLimiter;
pub(crate) use traffic::valid_name;
