//! Inbound HBONE: tunnels to a local pod, terminated on 15008 inside its namespace.
//!
//! `run → connection → stream`: mutual TLS with the pod's certificate establishes the client's
//! identity; each `CONNECT` must name this pod, is checked against the L4 policies that apply to
//! it (401 on deny), and is connected to the application from inside the pod with a marked socket so
//! that it is not captured again (503 when the application does not answer, 400 for a malformed or
//! misdirected request). A tunnel stays registered in `conntrack` while it lives, and is closed if
//! a later mesh state denies it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};
use veil_mesh::discovery::Workload;
use veil_mesh::hbone::{
    BAGGAGE, ConnectError, InboundStream, LastRead, TRACEPARENT, abort_socket, parse_connect,
    refuse, serve_connection_with, splice,
};
use veil_mesh::identity::Identity;
use veil_mesh::policy::{AccessLogLevel, Decision, PolicyId};
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{
    DecisionLabels, Direction, HandshakeLabels, Outcome, Party, PolicyLabel, Principal, Protocol,
    Reporter, Resource, Security, ServiceLabel, TrafficLabels,
};
use veil_mesh::telemetry::trace::{KeyValue, Span, SpanKind};

use crate::accept;
use crate::admission::{Admitted, decide};
use crate::budget::Permit;
use crate::conntrack::{Tracked, report_closed};
use crate::context::{ConnectionMeter, Context, LocalWorkload};

/// The access log's tracing target.
pub const ACCESS_LOG: &str = "veil::access";

/// Accepts HBONE connections for `local` until the listener is dropped. Each holds an HBONE
/// connection permit for its life and a handshake permit until its handshakes are over.
pub async fn run(ctx: Arc<Context>, local: Arc<LocalWorkload>, listener: TcpListener) {
    let admit = |tcp: TcpStream, _peer, permit: Permit| {
        let handshake = ctx.budgets.acquire(&local.budget, Resource::TlsHandshakes);
        let (ctx, local) = (ctx.clone(), local.clone());
        async move {
            match handshake {
                Ok(handshake) => connection(ctx, local, tcp, handshake).await,
                Err(refused) => accept::refuse(&ctx, &local, &tcp, &refused),
            }
            drop(permit);
        }
    };
    accept::serve(
        ctx.clone(),
        local.clone(),
        listener,
        Resource::HboneConnections,
        admit,
    )
    .await;
}

pub(crate) async fn connection(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    tcp: TcpStream,
    handshake: Permit,
) {
    let peer = tcp.peer_addr().ok();
    let handler = |stream| tunnel(ctx.clone(), local.clone(), stream);
    // When ztunnel drains, the peer is told to open its next tunnels elsewhere (GOAWAY): on the
    // successor sharing the listener, after an upgrade. Open tunnels go on.
    let drained = ctx.drain_started();
    let handshaken = move || drop(handshake);
    let served = serve_connection_with(
        tcp,
        local.tls.clone(),
        &ctx.settings.h2,
        handler,
        drained,
        handshaken,
    );
    ended(&ctx, &local, peer, served.await);
}

/// Counts and logs how an inbound HBONE connection (over either transport) from `peer` ended: a
/// failed handshake is a metric and a warning.
pub(crate) fn ended(
    ctx: &Context,
    local: &LocalWorkload,
    peer: Option<SocketAddr>,
    served: Result<(), ConnectError>,
) {
    match served {
        Ok(()) => {}
        Err(e @ (ConnectError::Tls(_) | ConnectError::Alpn)) => {
            ctx.metrics
                .handshake_failures
                .get_or_create(&HandshakeLabels {
                    direction: Direction::Inbound,
                    local_identity: Principal(Some(local.workload.identity.clone())),
                })
                .inc();
            warn!(workload = %local.workload.key(), ?peer, error = %e, "inbound TLS handshake refused");
        }
        Err(e) => {
            debug!(workload = %local.workload.key(), ?peer, error = %e, "inbound HBONE connection ended")
        }
    }
}

/// Admits a `CONNECT` stream against the tunnel budget (503 when it is spent), then serves it.
pub(crate) async fn tunnel(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    mut stream: InboundStream,
) {
    match ctx.budgets.acquire(&local.budget, Resource::InboundTunnels) {
        Ok(_permit) => stream_task(ctx, local, stream).await,
        Err(refused) => {
            accept::count_refusal(&ctx, &local, &refused);
            refuse(&mut stream.respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

pub(crate) async fn stream_task(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    mut stream: InboundStream,
) {
    if veil_mesh::hbone::udp::is_connect_udp(&stream.request) {
        // Boxed: a UDP flow's state is not paid by every TCP tunnel's future.
        return Box::pin(crate::udp::inbound(ctx, local, stream)).await;
    }
    let Some(target) = check_target(&local, &mut stream) else {
        return;
    };
    // Registered before the state is read, so that no later state can miss it (see `track`).
    let mut tracked = ctx.live.track(Admitted {
        workload_uid: local.workload.uid.clone(),
        source: Some(stream.peer.clone()),
        source_ip: stream.peer_addr.ip(),
        destination: target,
    });
    // Whether this workload's traffic may be traced (its Telemetry).
    let mut span = {
        let state = ctx.state();
        let current = state
            .workload(&local.workload.uid)
            .unwrap_or(&local.workload);
        ctx.span(
            "ztunnel inbound",
            SpanKind::Server,
            stream.request.headers().get(&TRACEPARENT),
            &state.telemetry_for(current),
        )
    };
    span.set_all(|| {
        [
            KeyValue::new("veil.source.principal", stream.peer.to_string()),
            KeyValue::new("server.port", i64::from(target.port())),
        ]
    });
    let (workload, policy) = match admit(&ctx, &local, &stream.peer, &tracked, &mut span) {
        Ok(admitted) => admitted,
        Err(status) => return refuse(&mut stream.respond, status),
    };
    span.set_all(|| admitted_attributes(&workload, policy.as_ref()));
    let Some(mut app) = connect_app(&ctx, &local, &stream.peer, &workload, target, &mut span).await
    else {
        return refuse(&mut stream.respond, StatusCode::SERVICE_UNAVAILABLE);
    };
    let Ok(send) = stream.respond.send_response(http::Response::new(())).await else {
        return;
    };
    let meter = destination_meter(&ctx, &stream, &workload, target, Protocol::Tcp);
    let recv = stream.request.into_body();
    let started = tokio::time::Instant::now();
    // The splice's first count is what the application sends back: the response side.
    let spliced = splice(
        &mut app,
        LastRead::Tracked,
        send,
        recv,
        |n| {
            meter.to_source.inc_by(n as u64);
        },
        |n| {
            meter.to_destination.inc_by(n as u64);
        },
    );
    let outcome = tokio::select! {
        result = spliced => Ok(result),
        closing = tracked.closed() => Err(closing),
    };
    let result = match outcome {
        Ok(result) => result,
        Err(closing) => {
            // The splice is dropped: that resets the stream; the application gets a reset too.
            abort_socket(&app);
            span.fail("closed: no longer allowed");
            return report_closed(&ctx.metrics, &tracked, &closing, &workload);
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(t) => span.set_all(|| {
            [
                KeyValue::new("veil.bytes_sent", t.to_socket as i64),
                KeyValue::new("veil.bytes_received", t.to_stream as i64),
            ]
        }),
        Err(_) => span.fail("connection aborted"),
    }
    let moved = result
        .map(|t| (t.to_socket, t.to_stream))
        .map_err(|e| e.to_string());
    log_finished(
        &ctx,
        tracked.admitted(),
        &stream.peer,
        &workload,
        policy.as_ref(),
        moved,
        duration_ms,
        "hbone",
    );
}

/// The live byte counters (Istio's metrics, reported by the destination) of a tunnel or flow
/// `stream` opened to `workload` at `target`.
pub(crate) fn destination_meter(
    ctx: &Context,
    stream: &InboundStream,
    workload: &Workload,
    target: SocketAddr,
    protocol: Protocol,
) -> ConnectionMeter {
    let state = ctx.state();
    ctx.track_connection(TrafficLabels {
        reporter: Reporter::Destination,
        source: ctx.metrics.peers.name(
            &stream.peer,
            state.workload_by_ip(stream.peer_addr.ip()).map(|w| &**w),
            stream.request.headers().get(&BAGGAGE),
        ),
        destination: Party::of(workload),
        service: match protocol {
            Protocol::Udp => ServiceLabel::for_udp_destination(&state, target, Some(workload)),
            _ => ServiceLabel::for_destination(&state, target, Some(workload)),
        },
        protocol,
        security: Security::MutualTls,
    })
}

/// The span attributes of an admitted connection: its destination and the policy that allowed it.
pub(crate) fn admitted_attributes(workload: &Workload, policy: Option<&PolicyId>) -> Vec<KeyValue> {
    Party::of(workload)
        .span_attributes("destination")
        .chain(policy.map(|p| KeyValue::new("veil.policy", p.to_string())))
        .collect()
}

/// Connects to the application at `target` from inside `local`'s namespace (a marked socket, not
/// captured again), within the connect timeout; `None` (logged, the span failed) when it does not
/// answer.
pub(crate) async fn connect_app(
    ctx: &Context,
    local: &LocalWorkload,
    peer: &Identity,
    workload: &Workload,
    target: SocketAddr,
    span: &mut Span,
) -> Option<TcpStream> {
    let connect = async { local.netns.socket(target.ip())?.connect(target).await };
    let error = match tokio::time::timeout(ctx.settings.connect_timeout, connect).await {
        Ok(Ok(app)) => return Some(app),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    warn!(source = %peer, destination = %workload.key(), %target, %error, "application unreachable");
    span.fail("application unreachable");
    None
}

/// The access log's line for a connection to `workload` that has ended (when its Telemetry, as it
/// says now, keeps access logs: a connection can outlive a change): bytes `moved` toward the
/// workload and back, or the error that ended it. `path`: `hbone` or `local` (the same-node path).
#[allow(clippy::too_many_arguments)]
pub(crate) fn log_finished(
    ctx: &Context,
    conn: &Admitted,
    peer: &Identity,
    workload: &Workload,
    policy: Option<&PolicyId>,
    moved: Result<(u64, u64), String>,
    duration_ms: u64,
    path: &'static str,
) {
    let logged = {
        let state = ctx.state();
        let current = state.workload(&workload.uid).map_or(workload, |w| &**w);
        state.telemetry_for(current).access_log != Some(AccessLogLevel::Off)
    };
    if !logged {
        return;
    }
    match moved {
        Ok((sent, received)) => info!(
            target: ACCESS_LOG,
            decision = "allow",
            source = %peer,
            source_ip = %conn.source_ip,
            destination = %workload.identity,
            destination_workload = %workload.key(),
            port = conn.destination.port(),
            policy = %policy.map_or("-".to_owned(), ToString::to_string),
            bytes_sent = sent,
            bytes_received = received,
            duration_ms,
            path,
            "connection complete"
        ),
        Err(error) => info!(
            target: ACCESS_LOG,
            decision = "allow",
            source = %peer,
            source_ip = %conn.source_ip,
            destination = %workload.identity,
            destination_workload = %workload.key(),
            port = conn.destination.port(),
            duration_ms,
            %error,
            path,
            "connection aborted"
        ),
    }
}

/// Decides a connection from `peer` against the current state (counted, a deny audited): the
/// workload and the allowing policy when it is allowed (only that is kept, not the whole decision:
/// this lives as long as the connection), else the status that refuses it (401, or 503 when the
/// workload has gone).
pub(crate) fn admit(
    ctx: &Context,
    local: &LocalWorkload,
    peer: &Identity,
    tracked: &Tracked,
    span: &mut Span,
) -> Result<(Arc<Workload>, Option<PolicyId>), StatusCode> {
    let state = ctx.state();
    let Some(workload) = state.workload(&local.workload.uid).cloned() else {
        // Removed since enrolment; its listeners are about to go.
        span.fail("workload gone");
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    };
    let admission = decide(&state, &workload, tracked.admitted());
    let decision = admission.decision();
    count_decision(
        ctx,
        Some(peer),
        &local.workload.identity,
        admission.allowed(),
        decision.and_then(Decision::policy),
    );
    if !admission.allowed() {
        warn!(
            target: AUDIT,
            audit = SCHEMA,
            event = "connection_denied",
            component = "ztunnel",
            decision = "deny",
            source = %peer,
            source_ip = %tracked.admitted().source_ip,
            destination = %workload.identity,
            destination_workload = %workload.key(),
            port = tracked.admitted().destination.port(),
            policy = %decision.and_then(Decision::policy).map_or("-".to_owned(), ToString::to_string),
            rule = %decision.and_then(|d| d.rule).map_or("-".to_owned(), |r| r.to_string()),
            reason = %admission.reason(&workload),
            "connection denied"
        );
        span.set_all(|| {
            decision
                .and_then(Decision::policy)
                .map(|p| KeyValue::new("veil.policy", p.to_string()))
        });
        span.fail("denied by policy");
        return Err(StatusCode::UNAUTHORIZED);
    }
    if let Some(audit) = decision.and_then(|d| d.audit.as_ref()) {
        info!(target: ACCESS_LOG, policy = %audit, source = %peer, destination = %workload.identity, port = tracked.admitted().destination.port(), "audited connection");
    }
    let policy = decision.and_then(Decision::policy).cloned();
    Ok((workload, policy))
}

/// The tunnel's target, if the request is a valid CONNECT to this pod; otherwise answers 400.
fn check_target(local: &LocalWorkload, stream: &mut InboundStream) -> Option<SocketAddr> {
    let target = match parse_connect(&stream.request) {
        Ok(t) => t.target,
        Err(e) => {
            warn!(source = %stream.peer, workload = %local.workload.key(), error = %e, "malformed HBONE request");
            refuse(&mut stream.respond, StatusCode::BAD_REQUEST);
            return None;
        }
    };
    if let Some(misdirected) = local.misdirected(target) {
        warn!(source = %stream.peer, workload = %local.workload.key(), %target, reason = misdirected, "HBONE request for another destination");
        refuse(&mut stream.respond, StatusCode::BAD_REQUEST);
        return None;
    }
    Some(target)
}

/// Counts one policy decision about a connection from `source` (`None`: plaintext) to
/// `destination`, and the policy that made it.
pub(crate) fn count_decision(
    ctx: &Context,
    source: Option<&Identity>,
    destination: &Identity,
    allowed: bool,
    policy: Option<&PolicyId>,
) {
    ctx.metrics
        .policy_decisions
        .get_or_create(&DecisionLabels {
            decision: if allowed {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            policy: PolicyLabel(policy.cloned()),
            source_identity: Principal(source.cloned()),
            destination_identity: Principal(Some(destination.clone())),
        })
        .inc();
}
