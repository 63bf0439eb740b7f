//! Telemetry: structured logs, Prometheus metrics, and the small HTTP endpoints that expose them
//! (metrics, readiness, admin).

pub mod audit;
pub mod http;
mod logging;
pub mod metrics;
pub mod ratelimit;
mod traffic;

pub use logging::{LogFormat, init_logging};
pub use ratelimit::LogLimiter;
pub(crate) use traffic::valid_name;
