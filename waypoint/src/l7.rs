//! HTTP inside a client's tunnel: each request is canonicalized (`canon`: what cannot be judged gets
//! 400), authorized on its own (method, path, host, headers, and the client's verified identity),
//! then sent with that same path and host to an endpoint over a pooled tunnel in the client's
//! protocol — HTTP/1.1 kept alive, or HTTP/2 multiplexed (gRPC).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::debug;
use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::hbone::TRACEPARENT;
use veil_mesh::identity::Identity;
use veil_mesh::policy::{Decision, HttpAttributes, TelemetrySettings};
use veil_mesh::telemetry::metrics::{
    DecisionLabels, Outcome, Party, PolicyLabel, Principal, Protocol, ServiceLabel,
};
use veil_mesh::telemetry::trace::{KeyValue, Span, SpanKind};

use crate::access_log::Record;
use crate::canon::{self, Canonical, Refusal};
use crate::context::Context;
use crate::drain::DrainWatch;
use crate::report::Report;
use crate::target::Destination;
use crate::upstream::REQUEST_TRACE;

/// Who is asking, and for what, on this tunnel.
#[derive(Clone, Debug)]
pub struct Tunnel {
    /// The client's verified identity.
    pub peer: Identity,
    /// The client's address.
    pub peer_addr: SocketAddr,
    /// The tunnel's target (service or workload address).
    pub target: SocketAddr,
    /// What that is.
    pub dest: Destination,
    /// What metrics call the client.
    pub source: Arc<Party>,
    /// The `traceparent` of the tunnel, as the client's ztunnel sent it.
    pub traceparent: Option<HeaderValue>,
}

impl Tunnel {
    /// Span attributes: who asked, which service, which endpoint serves it, on which port.
    pub fn attributes(&self, endpoint: &Workload) -> Vec<KeyValue> {
        let service = match &self.dest {
            Destination::Service { service, .. } => ServiceLabel::of(service).span_attribute(),
            Destination::Workload { .. } => None,
        };
        self.source
            .span_attributes("source")
            .chain(Party::of(endpoint).span_attributes("destination"))
            .chain(service)
            .chain([KeyValue::new("server.port", i64::from(self.target.port()))])
            .collect()
    }
}

/// The span of one request: a child of the trace the request carries, linked to its tunnel's; else
/// a child of its tunnel's. Named by the method (semantic conventions: no path in span names). None
/// where the destination's Telemetry turns spans off.
fn request_span(
    ctx: &Context,
    tunnel: &Tunnel,
    req: &Request<Incoming>,
    grpc: bool,
    telemetry: &TelemetrySettings,
) -> Span {
    let own = req.headers().get(&TRACEPARENT);
    let parents: Vec<&HeaderValue> = own.into_iter().chain(&tunnel.traceparent).collect();
    let method = known_method(req.method());
    let mut span = ctx.span(
        method.unwrap_or("HTTP"),
        SpanKind::Server,
        &parents,
        telemetry,
    );
    span.set_all(|| {
        [
            KeyValue::new("http.request.method", method.unwrap_or("_OTHER")),
            KeyValue::new(
                "network.protocol.version",
                if req.version() == Version::HTTP_2 {
                    "2"
                } else {
                    "1.1"
                },
            ),
            KeyValue::new("veil.request_protocol", if grpc { "grpc" } else { "http" }),
        ]
    });
    span
}

/// A method's name when it is one of HTTP's own (any other could be anything a client made up).
fn known_method(method: &http::Method) -> Option<&'static str> {
    [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ]
    .into_iter()
    .find(|m| *m == method.as_str())
}

/// The answer's status on the request's span; 5xx marks it failed.
fn span_status(span: &mut Span, status: u16) {
    span.set_all(|| {
        [KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        )]
    });
    if status >= 500 {
        span.fail("server error");
    }
}

/// The decision on the request's span.
fn span_decision(span: &mut Span, decision: &Decision) {
    span.set_all(|| {
        [KeyValue::new(
            "veil.decision",
            if decision.allowed() { "allow" } else { "deny" },
        )]
        .into_iter()
        .chain(
            decision
                .policy()
                .map(|p| KeyValue::new("veil.policy", p.to_string())),
        )
        .collect::<Vec<_>>()
    });
}

type DownstreamBody = BoxBody<Bytes, hyper::Error>;

/// Serves HTTP on `io` until the client closes it; when the waypoint drains, in-flight requests
/// complete and the connection closes.
pub async fn serve<T>(ctx: Arc<Context>, tunnel: Tunnel, io: T, mut drain: DrainWatch)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(ctx.clone(), tunnel.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection in tunnel ended with an error");
    }
}

async fn handle(
    ctx: Arc<Context>,
    tunnel: Tunnel,
    req: Request<Incoming>,
) -> Result<Response<DownstreamBody>, Infallible> {
    let started = Instant::now();
    let grpc = is_grpc(&req);
    let state = ctx.state();
    // Before an endpoint is chosen, the waypoint's own settings; then the endpoint's Telemetry.
    let unknown = TelemetrySettings::default();
    let protocol = if grpc { Protocol::Grpc } else { Protocol::Http };
    let mut report = Report::new(
        &state,
        &tunnel.source,
        &tunnel.dest,
        tunnel.target,
        protocol,
    );
    // One path and one host, judged and forwarded: nothing the endpoint sees differs from what
    // policy decided on.
    let canon = match canon::request(&req, ctx.settings.path_normalization) {
        Ok(canon) => canon,
        Err(refusal) => {
            let mut span = request_span(&ctx, &tunnel, &req, grpc, &unknown);
            span_status(&mut span, 400);
            return Ok(refuse(&ctx, &tunnel, &req, &refusal, started, &report));
        }
    };
    let Some((endpoint, addr)) = tunnel.dest.endpoint(&state, tunnel.target, ctx.next()) else {
        let wire = on_the_wire(grpc, StatusCode::SERVICE_UNAVAILABLE);
        report.request(&ctx.upstreams.metrics, wire, 0, 0, started.elapsed());
        let mut span = request_span(&ctx, &tunnel, &req, grpc, &unknown);
        span_status(&mut span, 503);
        return Ok(local_reply(
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy endpoint",
        ));
    };
    report.to_endpoint(&endpoint);
    let telemetry = state.telemetry_for(&endpoint);
    let mut span = request_span(&ctx, &tunnel, &req, grpc, &telemetry);
    span.set_all(|| tunnel.attributes(&endpoint));
    let decision = authorize(&ctx, &tunnel, &state, &endpoint, addr, &req, &canon);
    span_decision(&mut span, &decision);
    let destination = tunnel.dest.key();
    let endpoint_key = endpoint.key();
    if !decision.allowed() {
        let wire = on_the_wire(grpc, StatusCode::FORBIDDEN);
        report.request(&ctx.upstreams.metrics, wire, 0, 0, started.elapsed());
        span_status(&mut span, 403);
        ctx.access_log.for_workload(&telemetry).log(&Record {
            source: &tunnel.peer,
            destination: &destination,
            endpoint: Some(&endpoint_key),
            decision: "deny",
            policy: decision.policy(),
            rule: decision.rule,
            status: 403,
            reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: started.elapsed(),
            method: req.method().as_str(),
            path: &canon.path,
            query: canon.query.as_deref(),
            host: &canon.host,
            headers: req.headers(),
        });
        return Ok(local_reply(
            grpc,
            StatusCode::FORBIDDEN,
            "RBAC: access denied",
        ));
    }
    // What the log needs once the response is done; the request itself moves upstream.
    let log_line = LogLine {
        peer: tunnel.peer.clone(),
        destination,
        endpoint: endpoint_key,
        policy: decision.policy().cloned(),
        rule: decision.rule,
        method: req.method().to_string(),
        path: canon.path.clone(),
        query: canon.query.clone(),
        host: canon.host.clone(),
        headers: req.headers().clone(),
        started,
        report,
        span,
        // Where this hop makes no span, the trace the request came in goes on unchanged.
        pass_through: req
            .headers()
            .get(&TRACEPARENT)
            .or(tunnel.traceparent.as_ref())
            .cloned(),
        telemetry,
    };
    Ok(forward(ctx, req, &canon, addr, log_line, grpc).await)
}

/// Evaluates the policies of the request's destination on its canonical path and host, and counts
/// the decision.
fn authorize(
    ctx: &Context,
    tunnel: &Tunnel,
    state: &MeshState,
    endpoint: &Workload,
    addr: SocketAddr,
    req: &Request<Incoming>,
    canon: &Canonical,
) -> Decision {
    let decision = crate::target::decide(
        state,
        &ctx.upstreams.me,
        &tunnel.dest,
        endpoint,
        addr,
        &tunnel.peer,
        tunnel.peer_addr.ip(),
        Some(HttpAttributes {
            method: req.method().as_str(),
            path: &canon.path,
            host: &canon.host,
            headers: req.headers(),
        }),
    );
    ctx.upstreams
        .metrics
        .policy_decisions
        .get_or_create(&DecisionLabels {
            decision: if decision.allowed() {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            policy: PolicyLabel(decision.policy().cloned()),
            source_identity: Principal(Some(tunnel.peer.clone())),
            destination_identity: Principal(Some(endpoint.identity.clone())),
        })
        .inc();
    decision
}

/// A request that cannot be judged: 400, and a denial line saying why (no path or host: they are
/// what could not be read).
fn refuse(
    ctx: &Context,
    tunnel: &Tunnel,
    req: &Request<Incoming>,
    refusal: &Refusal,
    started: Instant,
    report: &Report,
) -> Response<DownstreamBody> {
    let wire = on_the_wire(is_grpc(req), StatusCode::BAD_REQUEST);
    report.request(&ctx.upstreams.metrics, wire, 0, 0, started.elapsed());
    let reason = refusal.to_string();
    ctx.access_log.log(&Record {
        source: &tunnel.peer,
        destination: &tunnel.dest.key(),
        endpoint: None,
        decision: "deny",
        policy: None,
        rule: None,
        status: 400,
        reason: Some(&reason),
        bytes_received: 0,
        bytes_sent: 0,
        duration: started.elapsed(),
        method: req.method().as_str(),
        path: "-",
        query: None,
        host: "-",
        headers: req.headers(),
    });
    local_reply(is_grpc(req), StatusCode::BAD_REQUEST, "bad request")
}

/// Sends an allowed request to `addr` with its canonical path and host, and relays the answer.
async fn forward(
    ctx: Arc<Context>,
    req: Request<Incoming>,
    canon: &Canonical,
    addr: SocketAddr,
    log_line: LogLine,
    grpc: bool,
) -> Response<DownstreamBody> {
    let version = req.version();
    let (parts, body) = req.into_parts();
    let received = Arc::new(AtomicU64::new(0));
    let body = Counted {
        inner: body,
        count: received.clone(),
        grpc_status: None,
        on_end: None,
    };
    let mut upstream = Request::from_parts(parts, body.boxed());
    *upstream.uri_mut() = upstream_uri(addr, &canon.path_and_query());
    strip_hop_by_hop(upstream.headers_mut());
    // The application continues the trace from this request's span.
    let traceparent = log_line
        .span
        .traceparent()
        .or_else(|| log_line.pass_through.clone());
    if let Some(tp) = &traceparent {
        upstream
            .headers_mut()
            .insert(TRACEPARENT.clone(), tp.clone());
    }
    let client = if version == Version::HTTP_2 {
        *upstream.version_mut() = Version::HTTP_2;
        // The endpoint address is the upstream `:authority` (see docs/waypoint.md); a Host header
        // naming something else would contradict it.
        upstream.headers_mut().remove(header::HOST);
        &ctx.http2
    } else {
        *upstream.version_mut() = Version::HTTP_11;
        set_host(upstream.headers_mut(), &canon.host);
        &ctx.http1
    };
    let sent = REQUEST_TRACE.scope(traceparent, client.request(upstream));
    let response = match tokio::time::timeout(ctx.settings.request_timeout, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            debug!(error = %e, endpoint = %addr, "upstream request failed");
            let status = if e.is_connect() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            let wire = on_the_wire(grpc, status);
            log_line.write(
                &ctx,
                status.as_u16(),
                wire,
                received.load(Ordering::Relaxed),
                0,
            );
            return local_reply(grpc, status, "upstream unavailable");
        }
        Err(_) => {
            let wire = on_the_wire(grpc, StatusCode::GATEWAY_TIMEOUT);
            log_line.write(&ctx, 504, wire, received.load(Ordering::Relaxed), 0);
            return local_reply(grpc, StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status.as_u16();
    // A gRPC answer's code: in its headers (a trailers-only answer), else in its trailers.
    let grpc_status = Arc::new(AtomicU32::new(
        grpc_code(&parts.headers).map_or(NO_CODE, u32::from),
    ));
    let sent = Arc::new(AtomicU64::new(0));
    let log_ctx = ctx.clone();
    let trailer_status = grpc_status.clone();
    let body = Counted {
        inner: body,
        count: sent.clone(),
        grpc_status: grpc.then_some(grpc_status),
        on_end: Some(Box::new(move || {
            let code = trailer_status.load(Ordering::Relaxed);
            let code = (grpc && code != NO_CODE).then(|| u16::try_from(code).unwrap_or(u16::MAX));
            log_line.write(
                &log_ctx,
                status,
                (status, code),
                received.load(Ordering::Relaxed),
                sent.load(Ordering::Relaxed),
            );
        })),
    };
    Response::from_parts(parts, body.boxed())
}

/// The upstream Host is the canonical one (none when the client named none: HTTP/1.0).
fn set_host(headers: &mut HeaderMap, host: &str) {
    match http::HeaderValue::from_str(host) {
        Ok(value) if !host.is_empty() => {
            headers.insert(header::HOST, value);
        }
        _ => {
            headers.remove(header::HOST);
        }
    }
}

/// An access-log line written when the response body ends (or the client goes away).
struct LogLine {
    peer: Identity,
    destination: String,
    endpoint: String,
    policy: Option<veil_mesh::policy::PolicyId>,
    rule: Option<usize>,
    method: String,
    path: String,
    query: Option<String>,
    host: String,
    headers: HeaderMap,
    started: Instant,
    report: Report,
    span: Span,
    /// The `traceparent` passed on unchanged when this hop makes no span (traces off here, or the
    /// endpoint's Telemetry turns spans off).
    pass_through: Option<HeaderValue>,
    /// The endpoint's Telemetry.
    telemetry: TelemetrySettings,
}

impl LogLine {
    /// Writes the line (with `status`, the answer's meaning) and counts the request in the metrics
    /// (with `wire`, what the client received: see [`on_the_wire`]).
    fn write(
        mut self,
        ctx: &Context,
        status: u16,
        wire: (u16, Option<u16>),
        received: u64,
        sent: u64,
    ) {
        self.report.request(
            &ctx.upstreams.metrics,
            wire,
            received,
            sent,
            self.started.elapsed(),
        );
        span_status(&mut self.span, status);
        ctx.access_log.for_workload(&self.telemetry).log(&Record {
            source: &self.peer,
            destination: &self.destination,
            endpoint: Some(&self.endpoint),
            decision: "allow",
            policy: self.policy.as_ref(),
            rule: self.rule,
            status,
            reason: None,
            bytes_received: received,
            bytes_sent: sent,
            duration: self.started.elapsed(),
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            host: &self.host,
            headers: &self.headers,
        });
    }
}

/// `http://<endpoint><canonical path and query>`.
fn upstream_uri(addr: SocketAddr, path_and_query: &str) -> Uri {
    format!("http://{addr}{path_and_query}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

/// Removes headers that describe one hop, not the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
    ] {
        headers.remove(name);
    }
    // `te: trailers` is how gRPC says it accepts trailers; any other value is hop-by-hop.
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Whether the request is gRPC (its errors must be gRPC statuses, not bare HTTP errors).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// An answer produced by the waypoint itself: plain text, or for gRPC a trailers-only response with
/// the gRPC status that corresponds to `status`.
fn local_reply(grpc: bool, status: StatusCode, message: &'static str) -> Response<DownstreamBody> {
    let empty = || {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    };
    if grpc {
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(grpc_code_for(status)),
        );
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
        return response;
    }
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// No gRPC code seen.
const NO_CODE: u32 = u32::MAX;

/// The gRPC code for an answer the waypoint gives itself: PERMISSION_DENIED, INVALID_ARGUMENT,
/// DEADLINE_EXCEEDED, else UNAVAILABLE.
fn grpc_code_for(status: StatusCode) -> u16 {
    match status {
        StatusCode::FORBIDDEN => 7,
        StatusCode::BAD_REQUEST => 3,
        StatusCode::GATEWAY_TIMEOUT => 4,
        _ => 14,
    }
}

/// What a client receives when the waypoint answers `status` itself: that status, or, to a gRPC
/// client, 200 with the matching gRPC code ([`local_reply`]).
fn on_the_wire(grpc: bool, status: StatusCode) -> (u16, Option<u16>) {
    if grpc {
        (200, Some(grpc_code_for(status)))
    } else {
        (status.as_u16(), None)
    }
}

/// The `grpc-status` in `headers`, if it is a number.
fn grpc_code(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A body that counts its data bytes and calls `on_end` once, at its end or when dropped early;
/// with `grpc_status`, it notes the code of gRPC trailers that pass through.
struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    grpc_status: Option<Arc<AtomicU32>>,
    on_end: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let (Some(slot), Some(code)) =
                    (&self.grpc_status, frame.trailers_ref().and_then(grpc_code))
                {
                    slot.store(u32::from(code), Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = self.on_end.take() {
                    f();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_grpc_te_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);
    }
}
