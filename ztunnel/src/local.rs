//! The same-node path: a connection between two pods of this node, joined by ztunnel without HBONE.
//!
//! ztunnel captured the connection inside the source pod's namespace, so it knows the source's
//! identity as surely as a handshake would tell it (it holds that pod's certificate), and it serves
//! the destination pod. It admits the connection as the destination's inbound would — the same
//! budget, the same check of the target, the same policies ([`inbound::admit`]), the same re-checks
//! while it lives — then joins the source's socket to one it opens inside the destination's
//! namespace. Nothing crosses a pod's interface: no byte of the connection leaves the node, in clear
//! or encrypted, and no TLS is spent on it; bulk is spliced from socket to socket in the kernel
//! ([`veil_mesh::relay`]). What stays as over HBONE: identities, policy, STRICT
//! (the source is a mesh identity, as a tunnel's is), metrics from both ends (`mutual_tls`: the
//! source is authenticated), the access log (`path=local`).
//!
//! Taken only when the destination is enrolled here (captured, its listeners serving), both pods
//! hold a valid certificate now (identities the CA issued, as a handshake between them would need),
//! and no waypoint stands in front of the destination (the route says so). Otherwise, or with
//! `--same-node-fast-path=false`, the connection goes over HBONE like any other.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::warn;
use veil_mesh::discovery::Workload;
use veil_mesh::hbone::abort_socket;
use veil_mesh::relay::relay_counted;
use veil_mesh::telemetry::metrics::{
    Party, Protocol, Reporter, Resource, Security, ServiceLabel, TrafficLabels,
};
use veil_mesh::telemetry::trace::{KeyValue, Span, SpanKind};

use crate::accept;
use crate::admission::Admitted;
use crate::conntrack::report_closed;
use crate::context::{Context, LocalWorkload};
use crate::inbound;

/// The destination `endpoint` as a pod enrolled here, when a connection from `src` to it may take
/// the same-node path.
pub(crate) fn destination(
    ctx: &Context,
    src: &LocalWorkload,
    endpoint: &Workload,
) -> Option<Arc<LocalWorkload>> {
    if !here(ctx.settings.same_node, &ctx.node, endpoint) {
        return None;
    }
    let dst = ctx.locals.get(&endpoint.uid)?;
    let certified = src.cert.current().is_some() && dst.cert.current().is_some();
    joinable(&dst.workload, endpoint, certified).then_some(dst)
}

/// Whether the same-node path is on (`enabled`) and `endpoint` is on this `node`.
fn here(enabled: bool, node: &str, endpoint: &Workload) -> bool {
    enabled && *endpoint.node == *node
}

/// Whether a connection to `endpoint`, as the mesh has it now, may be joined to the pod `enrolled`
/// here: both pods hold a valid certificate now (`certified`: identities the CA issued, as a
/// handshake between them would need) and the pod as enrolled is the endpoint (a handshake would
/// check the identity; a pod whose identity or addresses changed is enrolled afresh, over HBONE
/// till then).
fn joinable(enrolled: &Workload, endpoint: &Workload, certified: bool) -> bool {
    certified
        && enrolled.uid == endpoint.uid
        && enrolled.identity == endpoint.identity
        && enrolled.ips == endpoint.ips
}

/// Admits and joins a connection from `src` to `target` in `dst` (`service`: the service it was
/// for, as the source's metrics name it). A refusal aborts the source's socket, as a refused
/// tunnel does.
pub(crate) async fn proxy(
    ctx: &Arc<Context>,
    src: &Arc<LocalWorkload>,
    dst: Arc<LocalWorkload>,
    tcp: &mut TcpStream,
    target: SocketAddr,
    service: ServiceLabel,
) {
    let _permit = match ctx.budgets.acquire(&dst.budget, Resource::InboundTunnels) {
        Ok(permit) => permit,
        Err(refused) => {
            accept::count_refusal(ctx, &dst, &refused);
            return abort_socket(tcp);
        }
    };
    if let Some(reason) = dst.misdirected(target) {
        warn!(source = %src.workload.key(), workload = %dst.workload.key(), %target, reason, "same-node connection for another destination");
        return abort_socket(tcp);
    }
    let Some(source_ip) = src.address_for(target.ip()) else {
        warn!(source = %src.workload.key(), %target, "no source address of the destination's family");
        return abort_socket(tcp);
    };
    let peer = &src.workload.identity;
    // Registered before the state is read, so that no later state can miss it (as inbound).
    let mut tracked = ctx.live.track(Admitted {
        workload_uid: dst.workload.uid.clone(),
        source: Some(peer.clone()),
        source_ip,
        destination: target,
    });
    let mut span = span(ctx, src, &dst, target);
    let (workload, policy) = match inbound::admit(ctx, &dst, peer, &tracked, &mut span) {
        Ok(admitted) => admitted,
        Err(_) => return abort_socket(tcp),
    };
    span.set_all(|| {
        let mut attributes = inbound::admitted_attributes(&workload, policy.as_ref());
        attributes.extend(service.span_attribute());
        attributes
    });
    let Some(mut app) = inbound::connect_app(ctx, &dst, peer, &workload, target, &mut span).await
    else {
        return abort_socket(tcp);
    };
    // Both ends' metrics, as the two ztunnels of an HBONE tunnel would count it.
    let (outbound, inbound) = {
        let state = ctx.state();
        // Each end names the source as it does over HBONE: the source's ztunnel as the pod was
        // enrolled, the destination's from the current state.
        let labels = |reporter, source, service| TrafficLabels {
            reporter,
            source,
            destination: Party::of(&workload),
            service,
            protocol: Protocol::Tcp,
            security: Security::MutualTls,
        };
        let seen =
            ctx.metrics
                .peers
                .name(peer, state.workload(&src.workload.uid).map(|w| &**w), None);
        (
            ctx.track_connection(labels(Reporter::Source, src.party.clone(), service)),
            ctx.track_connection(labels(
                Reporter::Destination,
                seen,
                ServiceLabel::for_destination(&state, target, Some(&workload)),
            )),
        )
    };
    let started = tokio::time::Instant::now();
    let joined = relay_counted(
        tcp,
        &mut app,
        &ctx.budgets.pipes,
        |n| {
            outbound.to_destination.inc_by(n as u64);
            inbound.to_destination.inc_by(n as u64);
        },
        |n| {
            outbound.to_source.inc_by(n as u64);
            inbound.to_source.inc_by(n as u64);
        },
    );
    let result = tokio::select! {
        result = joined => result,
        closing = tracked.closed() => {
            abort_socket(&app);
            abort_socket(tcp);
            span.fail("closed: no longer allowed");
            return report_closed(&ctx.metrics, &tracked, &closing, &workload);
        }
    };
    match &result {
        Ok((sent, received)) => span.set_all(|| {
            [
                KeyValue::new("veil.bytes_sent", *sent as i64),
                KeyValue::new("veil.bytes_received", *received as i64),
            ]
        }),
        Err(_) => span.fail("connection aborted"),
    }
    inbound::log_finished(
        ctx,
        tracked.admitted(),
        peer,
        &workload,
        policy.as_ref(),
        result.map_err(|e| e.to_string()),
        started.elapsed().as_millis() as u64,
        "local",
    );
}

/// The connection's one span (where an HBONE tunnel has one at each end): none when either pod's
/// Telemetry turns spans off; sampled as the source's says.
fn span(ctx: &Context, src: &LocalWorkload, dst: &LocalWorkload, target: SocketAddr) -> Span {
    if ctx.tracing.is_none() {
        return Span::none();
    }
    let state = ctx.state();
    let current = |l: &LocalWorkload| {
        state
            .workload(&l.workload.uid)
            .cloned()
            .unwrap_or_else(|| l.workload.clone())
    };
    if state.telemetry_for(&current(dst)).no_spans() {
        return Span::none();
    }
    let mut span = ctx.span(
        "ztunnel local",
        SpanKind::Internal,
        None,
        &state.telemetry_for(&current(src)),
    );
    span.set_all(|| {
        src.party
            .span_attributes("source")
            .chain([
                KeyValue::new("server.port", i64::from(target.port())),
                KeyValue::new("veil.path", "local"),
            ])
            .collect::<Vec<_>>()
    });
    span
}

#[cfg(test)]
mod tests;
