//! Tunnels arriving at the waypoint (HBONE on 15008), from source ztunnels.
//!
//! `run → tunnel`: the target must be a service or workload that uses this waypoint (400 otherwise);
//! then the first bytes decide: HTTP is served request by request (`l7`: each one authorized, a
//! denied one answered 403), anything else is forwarded as TCP with L4 policy only — and a policy
//! that needs HTTP attributes denies it, since they cannot be checked. Nothing reaches an endpoint
//! before it is authorized.

use std::future::Future;
use std::sync::Arc;

use bytes::BytesMut;
use http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tracing::{debug, warn};
use veil_mesh::hbone::{
    BAGGAGE, ConnectError, H2Io, InboundStream, TRACEPARENT, parse_connect, refuse,
    serve_connection,
};
use veil_mesh::policy::Decision;
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{Direction, HandshakeLabels, Principal};
use veil_mesh::telemetry::trace::{KeyValue, SpanKind};

use crate::context::Context;
use crate::drain::{Drain, DrainWatch};
use crate::io::Prefixed;
use crate::l7::{self, Tunnel};
use crate::report::Report;
use crate::sniff::{MAX_SNIFF, Protocol, classify};
use crate::target::{self, resolve};

/// Accepts HBONE connections until `shutdown`; tunnels then finish through `drain`.
pub async fn run(
    ctx: Arc<Context>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    drain: &Drain,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let tls = tls.clone();
        let watch = drain.watch();
        tokio::spawn(async move {
            let h2 = ctx.upstreams.h2.clone();
            let handler = |stream| tunnel(ctx.clone(), stream, watch.clone());
            // On drain: GOAWAY, so clients take new tunnels elsewhere while open ones finish.
            let mut on_drain = watch.clone();
            match serve_connection(
                tcp,
                tls,
                &h2,
                handler,
                async move { on_drain.signaled().await },
            )
            .await
            {
                Ok(()) => {}
                Err(e @ (ConnectError::Tls(_) | ConnectError::Alpn)) => {
                    ctx.upstreams
                        .metrics
                        .handshake_failures
                        .get_or_create(&HandshakeLabels {
                            direction: Direction::Inbound,
                            local_identity: Principal(Some(ctx.upstreams.identity.clone())),
                        })
                        .inc();
                    warn!(%peer, error = %e, "TLS handshake refused");
                }
                Err(e) => debug!(%peer, error = %e, "HBONE connection ended"),
            }
        });
    }
}

async fn tunnel(ctx: Arc<Context>, mut stream: InboundStream, drain: DrainWatch) {
    let target = match parse_connect(&stream.request) {
        Ok(t) => t.target,
        Err(e) => {
            warn!(source = %stream.peer, error = %e, "malformed HBONE request");
            return refuse(&mut stream.respond, StatusCode::BAD_REQUEST);
        }
    };
    let state = ctx.state();
    let dest = match resolve(&state, &ctx.upstreams.me, target) {
        Ok(dest) => dest,
        Err(e) => {
            warn!(source = %stream.peer, %target, reason = %e, "tunnel not for this waypoint");
            return refuse(&mut stream.respond, StatusCode::BAD_REQUEST);
        }
    };
    // The client tunnels from its own address: the workload listed there names it if it is the one
    // that authenticated (a waypoint on the controller lists only its own namespace), else the
    // names its ztunnel sent.
    let source = ctx.upstreams.metrics.peers.name(
        &stream.peer,
        state.workload_by_ip(stream.peer_addr.ip()).map(|w| &**w),
        stream.request.headers().get(&BAGGAGE),
    );
    let traceparent = stream.request.headers().get(&TRACEPARENT).cloned();
    let Ok(send) = stream.respond.send_response(http::Response::new(())).await else {
        return;
    };
    let Some(mut io) = H2Io::from_tunnel(send, stream.request.into_body()) else {
        // Not reached: a waypoint serves HBONE over HTTP/2 only.
        return;
    };
    let (protocol, sniffed) = sniff(&mut io, ctx.settings.sniff_timeout).await;
    let io = Prefixed::new(sniffed.freeze(), io);
    let tunnel = Tunnel {
        peer: stream.peer.clone(),
        peer_addr: stream.peer_addr,
        target,
        dest,
        source: Arc::new(source),
        traceparent,
    };
    match protocol {
        Protocol::Http1 | Protocol::Http2 => l7::serve(ctx, tunnel, io, drain).await,
        // Held until the bytes stop: a drain waits for opaque tunnels up to its timeout.
        Protocol::Opaque => forward_tcp(&ctx, &tunnel, io, drain).await,
    }
}

fn log_tcp_deny(peer: &veil_mesh::identity::Identity, dest: &str, decision: &Decision) {
    warn!(
        target: AUDIT,
        audit = SCHEMA,
        event = "connection_denied",
        component = "waypoint",
        decision = "deny",
        source = %peer,
        destination = dest,
        policy = %decision.policy().map_or("-".to_owned(), ToString::to_string),
        rule = %decision.rule.map_or("-".to_owned(), |r| r.to_string()),
        reason = %decision.explanation(),
        "connection denied"
    );
}

/// Reads until the protocol is known, the first bytes are too many, or `timeout` passes without
/// enough (a server-speaks-first protocol): then it is opaque.
async fn sniff(io: &mut H2Io, timeout: std::time::Duration) -> (Protocol, BytesMut) {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(protocol) = classify(&buf) {
            return (protocol, buf);
        }
        if buf.len() >= MAX_SNIFF {
            return (Protocol::Opaque, buf);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return (Protocol::Opaque, buf),
        }
    }
}

/// Opaque TCP: L4 policy with the chosen endpoint, then bytes both ways.
async fn forward_tcp(ctx: &Context, tunnel: &Tunnel, mut io: Prefixed<H2Io>, _drain: DrainWatch) {
    let state = ctx.state();
    let Some((endpoint, addr)) = tunnel.dest.endpoint(&state, tunnel.target, ctx.next()) else {
        return warn!(destination = %tunnel.dest.key(), "no endpoint for TCP tunnel");
    };
    let decision = target::decide(
        &state,
        &ctx.upstreams.me,
        &tunnel.dest,
        &endpoint,
        addr,
        &tunnel.peer,
        tunnel.peer_addr.ip(),
        None,
    );
    let mut span = ctx.span(
        "waypoint tcp",
        SpanKind::Server,
        &tunnel.traceparent.iter().collect::<Vec<_>>(),
        &state.telemetry_for(&endpoint),
    );
    span.set_all(|| tunnel.attributes(&endpoint));
    if !decision.allowed() {
        span.fail("denied by policy");
        // Also when only HTTP attributes could have allowed it: this is not HTTP.
        return log_tcp_deny(&tunnel.peer, &tunnel.dest.key(), &decision);
    }
    // Where this hop makes no span, the tunnel's trace goes on unchanged.
    let traceparent = span.traceparent().or_else(|| tunnel.traceparent.clone());
    let mut upstream = match ctx.upstreams.open(addr, traceparent).await {
        Ok(upstream) => upstream,
        Err(e) => {
            span.fail("tunnel to endpoint failed");
            return warn!(endpoint = %addr, error = %e, "TCP tunnel to endpoint failed");
        }
    };
    let mut report = Report::new(
        &state,
        &tunnel.source,
        &tunnel.dest,
        tunnel.target,
        veil_mesh::telemetry::metrics::Protocol::Tcp,
    );
    report.to_endpoint(&endpoint);
    let metrics = &ctx.upstreams.metrics;
    let labels = report.labels();
    metrics.tcp_opened.get_or_create(labels).inc();
    let result = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    metrics.tcp_closed.get_or_create(labels).inc();
    match &result {
        Ok((to_endpoint, to_client)) => span.set_all(|| {
            [
                KeyValue::new("veil.bytes_received", *to_endpoint as i64),
                KeyValue::new("veil.bytes_sent", *to_client as i64),
            ]
        }),
        Err(_) => span.fail("connection aborted"),
    }
    if let Ok((to_endpoint, to_client)) = result {
        metrics
            .tcp_received_bytes
            .get_or_create(labels)
            .inc_by(to_endpoint);
        metrics
            .tcp_sent_bytes
            .get_or_create(labels)
            .inc_by(to_client);
    }
}
