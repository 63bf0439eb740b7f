//! What every tunnel and request of the waypoint shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use veil_mesh::discovery::MeshState;
use veil_mesh::policy::TelemetrySettings;
use veil_mesh::telemetry::trace::{Span, SpanKind, Tracing};

use crate::access_log::AccessLog;
use crate::canon::Normalization;
use crate::upstream::{Connector, Upstreams};

/// Body type of requests sent upstream.
pub type UpstreamBody = BoxBody<bytes::Bytes, hyper::Error>;

/// Timeouts and limits.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Time for an upstream response (headers) to arrive.
    pub request_timeout: Duration,
    /// How long to wait for a client's first bytes before treating the tunnel as opaque TCP.
    pub sniff_timeout: Duration,
    /// How request paths are canonicalized before policy and forwarding.
    pub path_normalization: Normalization,
}

/// Shared by all handlers.
#[derive(Debug)]
pub struct Context {
    /// Upstream tunnels (and this waypoint's identity and view of the mesh).
    pub upstreams: Arc<Upstreams>,
    /// HTTP/1.1 client over tunnels (keep-alive).
    pub http1: Client<Connector, UpstreamBody>,
    /// HTTP/2 client over tunnels (multiplexed; gRPC).
    pub http2: Client<Connector, UpstreamBody>,
    /// The access log.
    pub access_log: AccessLog,
    /// Settings.
    pub settings: Settings,
    /// Spans of requests and tunnels, when traces are exported.
    pub tracing: Option<Arc<Tracing>>,
    next: AtomicUsize,
}

impl Context {
    /// A context around `upstreams`.
    pub fn new(upstreams: Arc<Upstreams>, access_log: AccessLog, settings: Settings) -> Self {
        let connector = Connector(upstreams.clone());
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            upstreams,
            http1,
            http2,
            access_log,
            settings,
            tracing: None,
            next: AtomicUsize::new(0),
        }
    }

    /// Exports spans with `tracing`.
    pub fn with_tracing(mut self, tracing: Option<Arc<Tracing>>) -> Self {
        self.tracing = tracing;
        self
    }

    /// A span (none when traces are off, or `telemetry` turns them off) whose parent is the first
    /// of `parents` that is a valid `traceparent` — the others that are become its links — or the
    /// root of a new trace, sampled as `telemetry` says (else as configured).
    pub fn span(
        &self,
        name: &'static str,
        kind: SpanKind,
        parents: &[&HeaderValue],
        telemetry: &TelemetrySettings,
    ) -> Span {
        Tracing::span_for(self.tracing.as_deref(), name, kind, parents, telemetry)
    }

    /// The current mesh.
    pub fn state(&self) -> Arc<MeshState> {
        self.upstreams.state.borrow().clone()
    }

    /// A rotating index for load balancing.
    pub fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}
