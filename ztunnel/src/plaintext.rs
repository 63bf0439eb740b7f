//! Inbound plaintext: TCP that reaches a pod without HBONE, captured on 15006 inside its namespace.
//!
//! Under STRICT (the default) it is refused with a reset. Under PERMISSIVE it is admitted subject to
//! L4 policy, with no peer identity: rules on principals or namespaces cannot match it. An admitted
//! connection stays registered in `conntrack` and is closed if a later mesh state denies it (a
//! STRICT PeerAuthentication included).

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use veil_mesh::discovery::Workload;
use veil_mesh::hbone::abort_socket;
use veil_mesh::relay::relay;
use veil_mesh::telemetry::metrics::{
    DecisionLabels, Direction, Outcome, PolicyLabel, Principal, WorkloadLabels,
};

use crate::admission::{Admitted, decide};
use crate::capture::PROXY_PORTS;
use crate::conntrack::{Tracked, report_closed};
use crate::context::{Context, LocalWorkload, labels};
use crate::inbound::ACCESS_LOG;
use crate::outbound::original_dst;

/// Accepts plaintext connections for `local` until the listener is dropped.
pub async fn run(ctx: Arc<Context>, local: Arc<LocalWorkload>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(handle(ctx.clone(), local.clone(), tcp));
            }
            Err(e) => {
                warn!(workload = %local.workload.key(), error = %e, "plaintext accept failed")
            }
        }
    }
}

pub(crate) async fn handle(ctx: Arc<Context>, local: Arc<LocalWorkload>, mut tcp: TcpStream) {
    // A proxy must not add Nagle's delay to what the application wrote without it: chunks are
    // written as they arrive. (Only fails on a socket already gone, which the next I/O reports.)
    let _ = tcp.set_nodelay(true);
    let (Ok(dst), Ok(peer)) = (original_dst(&tcp), tcp.peer_addr()) else {
        return abort_socket(&tcp);
    };
    if !local.workload.ips.contains(&dst.ip()) || PROXY_PORTS.contains(&dst.port()) {
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
    let meter = ctx.track_connection(labels(Direction::Inbound, None, Some(&workload.identity)));
    let outcome = tokio::select! {
        relayed = relay(&mut tcp, &mut app) => Ok(relayed),
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
        meter.sent.inc_by(sent);
        meter.received.inc_by(received);
        info!(target: ACCESS_LOG, decision = "allow", source_ip = %peer.ip(), destination = %workload.identity, port = dst.port(), bytes_sent = sent, bytes_received = received, "plaintext connection complete (PERMISSIVE)");
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
        ctx.metrics
            .plaintext_rejected
            .get_or_create(&WorkloadLabels {
                workload: workload.key(),
            })
            .inc();
        warn!(target: ACCESS_LOG, decision = "deny", source_ip = %conn.source_ip, destination = %workload.identity, port = conn.destination.port(), reason = %admission.reason(&workload), "connection denied");
        return None;
    };
    ctx.metrics
        .policy_decisions
        .get_or_create(&DecisionLabels {
            decision: if decision.allowed() {
                Outcome::Allow
            } else {
                Outcome::Deny
            },
            policy: PolicyLabel(decision.policy().cloned()),
            source_identity: Principal(None),
            destination_identity: Principal(Some(workload.identity.clone())),
        })
        .inc();
    if !decision.allowed() {
        warn!(target: ACCESS_LOG, decision = "deny", source_ip = %conn.source_ip, destination = %workload.identity, port = conn.destination.port(), policy = %decision.policy().map_or("-".to_owned(), ToString::to_string), "plaintext connection denied");
        return None;
    }
    Some(workload)
}
