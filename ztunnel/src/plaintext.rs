//! Inbound plaintext: TCP that reaches a pod without HBONE, captured on 15006 inside its namespace.
//!
//! Under STRICT (the default) it is refused with a reset. Under PERMISSIVE it is admitted subject to
//! L4 policy, with no peer identity: rules on principals or namespaces cannot match it. A workload
//! behind a waypoint admits only HBONE from its waypoint, whatever the mode: plaintext would step
//! around the waypoint's L7 policy. An admitted connection stays registered in `conntrack` and is
//! closed if a later mesh state denies it (a STRICT PeerAuthentication included).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use veil_mesh::discovery::Workload;
use veil_mesh::hbone::abort_socket;
use veil_mesh::policy::AccessLogLevel;
use veil_mesh::relay::relay;
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{
    Party, Protocol, Reporter, Resource, Security, ServiceLabel, TrafficLabels, WorkloadLabels,
};

use crate::accept;
use crate::admission::{Admitted, decide};
use crate::conntrack::{Tracked, report_closed};
use crate::context::{Context, LocalWorkload};
use crate::inbound::{ACCESS_LOG, count_decision};
use crate::outbound::original_dst;

/// Accepts plaintext connections for `local` until the listener is dropped.
pub async fn run(ctx: Arc<Context>, local: Arc<LocalWorkload>, listener: TcpListener) {
    accept::serve_each(ctx, local, listener, Resource::PlaintextConnections, handle).await;
}

/// Serves one plaintext connection from `peer`. No Nagle's delay is added to what the client wrote
/// without it: the socket has TCP_NODELAY from its listener (see [`crate::netns`]).
pub(crate) async fn handle(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) {
    let Ok(dst) = original_dst(&tcp, peer) else {
        return abort_socket(&tcp);
    };
    // An address the mesh does not list for the pod (IPv6 link-local, which every pod has) has no
    // PeerAuthentication of its own: plaintext there is refused whatever the mode, never admitted.
    if let Some(misdirected) = local.misdirected(dst) {
        count_rejected(&ctx, &local.workload);
        let reason = format!("plaintext refused: {misdirected}");
        warn!(target: AUDIT, audit = SCHEMA, event = "connection_denied", component = "ztunnel", decision = "deny", source = "-", source_ip = %peer.ip(), destination = %local.workload.identity, destination_ip = %dst.ip(), port = dst.port(), policy = "-", reason, "connection denied");
        return abort_socket(&tcp);
    }
    // Registered before the state is read, so that no later state can miss it (see `track`).
    let mut tracked = ctx.live.track(Admitted {
        workload_uid: local.workload.uid.clone(),
        source: None,
        source_ip: peer.ip(),
        destination: dst,
    });
    let Some(workload) = admit(&ctx, &tracked) else {
        return abort_socket(&tcp);
    };
    let connect = async { local.netns.socket(dst.ip())?.connect(dst).await };
    let Ok(Ok(mut app)) = tokio::time::timeout(ctx.settings.connect_timeout, connect).await else {
        return abort_socket(&tcp);
    };
    // The source is not authenticated: its address names no one.
    let meter = ctx.track_connection(TrafficLabels {
        reporter: Reporter::Destination,
        source: Party::unknown(),
        destination: Party::of(&workload),
        service: ServiceLabel::for_destination(&ctx.state(), dst, Some(&workload)),
        protocol: Protocol::Tcp,
        security: Security::Unknown,
    });
    let outcome = tokio::select! {
        relayed = relay(&mut tcp, &mut app, &ctx.budgets.pipes) => Ok(relayed),
        closing = tracked.closed() => Err(closing),
    };
    let relayed = match outcome {
        Ok(relayed) => relayed,
        Err(closing) => {
            abort_socket(&tcp);
            abort_socket(&app);
            return report_closed(&ctx.metrics, &tracked, &closing, &workload);
        }
    };
    if let Ok((sent, received)) = relayed {
        meter.to_destination.inc_by(sent);
        meter.to_source.inc_by(received);
        // Unless the workload's Telemetry turns its access log off (read now: it may have changed).
        let state = ctx.state();
        let current = state.workload(&workload.uid).unwrap_or(&workload);
        if state.telemetry_for(current).access_log != Some(AccessLogLevel::Off) {
            info!(target: ACCESS_LOG, decision = "allow", source_ip = %peer.ip(), destination = %workload.identity, port = dst.port(), bytes_sent = sent, bytes_received = received, "plaintext connection complete (PERMISSIVE)");
        }
    }
}

/// Decides a plaintext connection against the current state (STRICT refuses it outright); the
/// workload when it is allowed.
fn admit(ctx: &Context, tracked: &Tracked) -> Option<Arc<Workload>> {
    let conn = tracked.admitted();
    let state = ctx.state();
    let workload = state.workload(&conn.workload_uid).cloned()?;
    let admission = decide(&state, &workload, conn);
    let Some(decision) = admission.decision() else {
        count_rejected(ctx, &workload);
        warn!(target: AUDIT, audit = SCHEMA, event = "connection_denied", component = "ztunnel", decision = "deny", source = "-", source_ip = %conn.source_ip, destination = %workload.identity, port = conn.destination.port(), policy = "-", reason = %admission.reason(&workload), "connection denied");
        return None;
    };
    count_decision(
        ctx,
        None,
        &workload.identity,
        decision.allowed(),
        decision.policy(),
    );
    if !decision.allowed() {
        warn!(target: AUDIT, audit = SCHEMA, event = "connection_denied", component = "ztunnel", decision = "deny", source = "-", source_ip = %conn.source_ip, destination = %workload.identity, port = conn.destination.port(), policy = %decision.policy().map_or("-".to_owned(), ToString::to_string), reason = "PERMISSIVE plaintext denied by policy", "plaintext connection denied");
        return None;
    }
    Some(workload)
}

fn count_rejected(ctx: &Context, workload: &Workload) {
    ctx.metrics
        .plaintext_rejected
        .get_or_create(&WorkloadLabels {
            workload: workload.key(),
        })
        .inc();
}
