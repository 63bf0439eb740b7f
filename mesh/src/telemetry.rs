//! Telemetry: structured logs, Prometheus metrics, and the small HTTP endpoints that expose them
//! (metrics, readiness, admin).

pub mod http;
mod logging;
pub mod metrics;
pub mod ratelimit;

pub use logging::{LogFormat, init_logging};
pub use ratelimit::LogLimiter;
