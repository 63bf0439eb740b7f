//! Outbound: connections a pod opens, captured on 15001 inside its namespace.
//!
//! `run → handle → route → (proxy_hbone | passthrough)`: the original destination is looked up in
//! the mesh; a mesh workload or a service endpoint is reached over HBONE with the pod's own
//! certificate and must prove the endpoint's identity (or, on this node, joined on the same-node
//! path: [`crate::local`]); anything else passes through in plaintext (or is refused, if so
//! configured).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};
use veil_mesh::discovery::{MeshState, Service, Waypoint, WaypointRef, Workload};
use veil_mesh::hbone::{
    ConnectError, EarlyData, H2Client, HBONE_PORT, HboneClient, TunnelMeta, abort_socket, splice,
};
use veil_mesh::identity::{BoxFuture, client_config};
use veil_mesh::pool::{Dialer, PoolKey};
use veil_mesh::relay::relay;
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{
    ConnectionLabels, Direction, HandshakeLabels, Party, Principal, Protocol, Reporter, Resource,
    Security, ServiceLabel, TrafficLabels, WorkloadLabels,
};
use veil_mesh::telemetry::trace::{KeyValue, Span, SpanKind};

use crate::accept;
use crate::capture::{Forbidden, forbidden};
use crate::context::{Context, LocalWorkload, UnknownDestination};
use crate::local;

/// Where an outbound connection goes.
#[derive(Debug)]
pub enum Route {
    /// Over HBONE to a mesh workload.
    Hbone {
        /// The workload reached.
        endpoint: Arc<Workload>,
        /// The address the tunnel leads to (endpoint address, endpoint port).
        target: SocketAddr,
    },
    /// Over HBONE to the waypoint in front of the destination, which takes it from there.
    Waypoint {
        /// The waypoint.
        waypoint: Arc<Waypoint>,
        /// One of its addresses.
        address: IpAddr,
        /// The original destination (a service address or a workload address).
        target: SocketAddr,
    },
    /// Plaintext to this address.
    Passthrough(SocketAddr),
    /// Refused, with the reason.
    Refuse(String),
    /// Refused whatever the mesh says: the destination (as dialled, or the endpoint it resolved
    /// to) would lead back into ztunnel or out of the mesh's reach.
    Forbidden(SocketAddr, Forbidden),
}

/// The transport of a route: a service's ports are its TCP or its UDP ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection.
    Tcp,
    /// A carried UDP flow.
    Udp,
}

impl Transport {
    /// The endpoint port behind `service`'s port `port` over this transport, or why there is none.
    pub fn target_port(self, service: &Service, port: u16) -> Result<u16, String> {
        let (target, named) = match self {
            Self::Tcp => (service.target_port(port), "port"),
            Self::Udp => (service.udp_target_port(port), "UDP port"),
        };
        target.ok_or_else(|| format!("service {} has no {named} {port}", service.key()))
    }
}

/// Decides the route to `dst` over `transport`. `pick` chooses among a service's endpoints.
pub fn route(
    state: &MeshState,
    dst: SocketAddr,
    transport: Transport,
    unknown: UnknownDestination,
    pick: usize,
) -> Route {
    if let Some(why) = forbidden(dst) {
        return Route::Forbidden(dst, why);
    }
    let route = resolve(state, dst, transport, unknown, pick);
    // A service may map a port onto one of ztunnel's: checked again after resolution.
    let target = match &route {
        Route::Hbone { target, .. } | Route::Passthrough(target) => *target,
        _ => return route,
    };
    match forbidden(target) {
        Some(why) => Route::Forbidden(target, why),
        None => route,
    }
}

fn resolve(
    state: &MeshState,
    dst: SocketAddr,
    transport: Transport,
    unknown: UnknownDestination,
    pick: usize,
) -> Route {
    if let Some(workload) = state.workload_by_ip(dst.ip()) {
        if let (true, Some(reference)) = (workload.enrolled, &workload.waypoint) {
            if !workload.waypoint_conflict().is_empty() {
                return Route::Refuse(format!(
                    "{} is claimed by several waypoints",
                    workload.key()
                ));
            }
            return via_waypoint(state, reference, dst, pick);
        }
        return to_workload(workload, dst);
    }
    if let Some(service) = state.service_by_vip(dst.ip()) {
        if let Some(reference) = &service.waypoint {
            return via_waypoint(state, reference, dst, pick);
        }
        let port = match transport.target_port(service, dst.port()) {
            Ok(port) => port,
            Err(why) => return Route::Refuse(why),
        };
        let endpoints = state.serving_endpoints(service);
        if endpoints.is_empty() {
            return Route::Refuse(format!("service {} has no ready endpoints", service.key()));
        }
        let endpoint = &endpoints[pick % endpoints.len()];
        let Some(ip) = endpoint
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        else {
            return Route::Refuse(format!(
                "endpoint {} has no address of the service's family",
                endpoint.key()
            ));
        };
        return to_workload(endpoint, SocketAddr::new(ip, port));
    }
    match unknown {
        UnknownDestination::Passthrough => Route::Passthrough(dst),
        UnknownDestination::Deny => Route::Refuse(format!("{dst} is not in the mesh")),
    }
}

/// Through the waypoint `reference`, never around it: a missing waypoint refuses the connection.
fn via_waypoint(
    state: &MeshState,
    reference: &WaypointRef,
    target: SocketAddr,
    pick: usize,
) -> Route {
    let Some(waypoint) = state.waypoint(reference) else {
        return Route::Refuse(format!("waypoint {reference} is not available"));
    };
    let addresses: Vec<IpAddr> = waypoint
        .ips
        .iter()
        .copied()
        .filter(|ip| ip.is_ipv4() == target.is_ipv4())
        .collect();
    if addresses.is_empty() {
        return Route::Refuse(format!(
            "waypoint {reference} has no address of the destination's family"
        ));
    }
    Route::Waypoint {
        waypoint: waypoint.clone(),
        address: addresses[pick % addresses.len()],
        target,
    }
}

fn to_workload(workload: &Arc<Workload>, target: SocketAddr) -> Route {
    if workload.enrolled {
        Route::Hbone {
            endpoint: workload.clone(),
            target,
        }
    } else {
        Route::Passthrough(target)
    }
}

/// Accepts captured connections of `local` until the listener is dropped.
pub async fn run(ctx: Arc<Context>, local: Arc<LocalWorkload>, listener: TcpListener) {
    accept::serve_each(ctx, local, listener, Resource::OutboundConnections, handle).await;
}

/// Serves one captured connection from `peer`. No Nagle's delay is added to what the application
/// wrote without it: the socket has TCP_NODELAY from its listener (see [`crate::netns`]).
pub(crate) async fn handle(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) {
    let dst = match original_dst(&tcp, peer) {
        Ok(dst) => dst,
        Err(e) => {
            warn!(workload = %local.workload.key(), error = %e, "outbound connection without an original destination");
            return abort_socket(&tcp);
        }
    };
    let state = ctx.state();
    match route(
        &state,
        dst,
        Transport::Tcp,
        ctx.unknown_destination(),
        ctx.next_endpoint(),
    ) {
        Route::Hbone { endpoint, target } => {
            let service = ServiceLabel::for_destination(&state, dst, Some(&endpoint));
            if let Some(here) = local::destination(&ctx, &local, &endpoint) {
                drop(state);
                return local::proxy(&ctx, &local, here, &mut tcp, target, service).await;
            }
            let peer = Peer {
                identity: &endpoint.identity,
                address: target.ip(),
                labels: Party::of(&endpoint),
                service,
                quic: true,
            };
            drop(state);
            proxy_hbone(&ctx, &local, &mut tcp, peer, target).await;
        }
        Route::Waypoint {
            waypoint,
            address,
            target,
        } => {
            let peer = Peer {
                identity: &waypoint.identity,
                address,
                labels: Party::waypoint(&waypoint),
                service: ServiceLabel::for_destination(&state, dst, None),
                quic: false,
            };
            drop(state);
            proxy_hbone(&ctx, &local, &mut tcp, peer, target).await;
        }
        Route::Passthrough(target) => {
            let labels = TrafficLabels {
                reporter: Reporter::Source,
                source: local.party.clone(),
                destination: state
                    .workload_by_ip(target.ip())
                    .map_or_else(Party::unknown, |w| Party::of(w)),
                service: ServiceLabel::for_destination(&state, dst, None),
                protocol: Protocol::Tcp,
                security: Security::Unknown,
            };
            drop(state);
            passthrough(&ctx, &local, tcp, target, labels).await;
        }
        Route::Refuse(reason) => {
            let control_plane = if ctx.control_plane_down() {
                "unreachable: the mesh may be stale"
            } else {
                "-"
            };
            warn!(target: AUDIT, audit = SCHEMA, event = "connection_refused", component = "ztunnel", source = %local.workload.key(), destination = %dst, %reason, control_plane, "outbound connection refused");
            abort_socket(&tcp);
        }
        Route::Forbidden(target, why) => {
            ctx.metrics
                .forbidden_destinations
                .get_or_create(&WorkloadLabels {
                    workload: local.workload.key(),
                })
                .inc();
            warn!(target: AUDIT, audit = SCHEMA, event = "connection_refused", component = "ztunnel", source = %local.workload.key(), destination = %target, reason = %why, control_plane = "-", "outbound connection refused: forbidden destination");
            abort_socket(&tcp);
        }
    }
}

/// The HBONE server a tunnel goes to: the destination workload, or its waypoint.
struct Peer<'a> {
    identity: &'a veil_mesh::identity::Identity,
    address: IpAddr,
    /// What metrics call it.
    labels: Party,
    /// The service the connection was for.
    service: ServiceLabel,
    /// It may speak HBONE over QUIC (a workload's ztunnel; waypoints speak HTTP/2 only).
    quic: bool,
}

async fn proxy_hbone(
    ctx: &Arc<Context>,
    local: &Arc<LocalWorkload>,
    tcp: &mut TcpStream,
    peer: Peer<'_>,
    target: SocketAddr,
) {
    let src = &local.workload.identity;
    let Some(src_ip) = local.address_for(peer.address) else {
        warn!(source = %local.workload.key(), %target, "no source address of the destination's family");
        return abort_socket(tcp);
    };
    let key = PoolKey {
        src: src.clone(),
        src_ip,
        dst: peer.identity.clone(),
        dst_addr: SocketAddr::new(peer.address, HBONE_PORT),
    };
    let mut span = match &ctx.tracing {
        Some(_) => {
            let state = ctx.state();
            let current = state
                .workload(&local.workload.uid)
                .unwrap_or(&local.workload);
            // A destination whose Telemetry turns spans off is not described in a span either.
            let private = state
                .workload_by_ip(peer.address)
                .is_some_and(|w| state.telemetry_for(w).no_spans());
            if private {
                Span::none()
            } else {
                ctx.span(
                    "ztunnel outbound",
                    SpanKind::Client,
                    None,
                    &state.telemetry_for(current),
                )
            }
        }
        None => Span::none(),
    };
    span.set_all(|| {
        local
            .party
            .span_attributes("source")
            .chain(peer.labels.span_attributes("destination"))
            .chain(peer.service.span_attribute())
            .chain([KeyValue::new("server.port", i64::from(target.port()))])
            .collect::<Vec<_>>()
    });
    let meta = TunnelMeta {
        forwarded_for: ctx.settings.send_forwarded.then_some(src_ip),
        traceparent: span.traceparent(),
        baggage: local.baggage.clone(),
    };
    let dialer = PodDialer {
        ctx,
        local,
        quic: peer.quic,
    };
    let mut early = EarlyData::new(tcp);
    let opened = ctx
        .pool
        .open(
            &key,
            target,
            &meta,
            &dialer,
            ctx.settings.early_data.then_some(&mut early),
        )
        .await;
    let (early, last) = (early.len(), early.last_read());
    let (send, recv, _guard) = match opened {
        Ok(stream) => stream,
        Err(ConnectError::Source(e)) => {
            debug!(source = %src, destination = %peer.identity, %target, error = %e, "outbound connection aborted before its tunnel opened");
            span.fail("connection aborted");
            return abort_socket(tcp);
        }
        Err(e) => {
            warn!(source = %src, destination = %peer.identity, %target, error = %e, "HBONE tunnel failed");
            span.fail(tunnel_failure(&e));
            return abort_socket(tcp);
        }
    };
    let meter = ctx.track_connection(TrafficLabels {
        reporter: Reporter::Source,
        source: local.party.clone(),
        destination: peer.labels,
        service: peer.service,
        protocol: Protocol::Tcp,
        security: Security::MutualTls,
    });
    // Sent with the CONNECT, before the splice.
    meter.to_destination.inc_by(early as u64);
    let started = tokio::time::Instant::now();
    let result = splice(
        tcp,
        last,
        send,
        recv,
        |n| {
            meter.to_destination.inc_by(n as u64);
        },
        |n| {
            meter.to_source.inc_by(n as u64);
        },
    )
    .await;
    match result {
        Ok(mut t) => {
            t.to_stream += early as u64;
            span.set_all(|| {
                [
                    KeyValue::new("veil.bytes_sent", t.to_stream as i64),
                    KeyValue::new("veil.bytes_received", t.to_socket as i64),
                ]
            });
            debug!(source = %src, destination = %peer.identity, %target, sent = t.to_stream, received = t.to_socket, duration_ms = started.elapsed().as_millis() as u64, "outbound connection complete")
        }
        Err(e) => {
            span.fail("connection aborted");
            debug!(source = %src, destination = %peer.identity, %target, error = %e, "outbound connection aborted")
        }
    }
}

/// Why a tunnel could not be opened, in a few words for its span (no address, no identity).
fn tunnel_failure(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::Status(_) => "refused by the destination",
        ConnectError::Tcp(_) => "connection failed",
        ConnectError::Tls(_) | ConnectError::Alpn => "TLS handshake failed",
        ConnectError::Timeout(_) => "timed out",
        _ => "tunnel failed",
    }
}

async fn passthrough(
    ctx: &Context,
    local: &LocalWorkload,
    mut tcp: TcpStream,
    target: SocketAddr,
    labels: TrafficLabels,
) {
    let connect = async { local.netns.socket(target.ip())?.connect(target).await };
    let mut upstream = match tokio::time::timeout(ctx.settings.connect_timeout, connect).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            debug!(source = %local.workload.key(), %target, error = %e, "passthrough connect failed");
            return abort_socket(&tcp);
        }
        Err(_) => return abort_socket(&tcp),
    };
    let meter = ctx.track_connection(labels);
    if let Ok((sent, received)) = relay(&mut tcp, &mut upstream, &ctx.budgets.pipes).await {
        meter.to_destination.inc_by(sent);
        meter.to_source.inc_by(received);
    }
}

/// The address a captured connection from `peer` was originally sent to. The socket's address
/// family is its peer's (the listeners are of one family each).
pub fn original_dst(tcp: &TcpStream, peer: SocketAddr) -> std::io::Result<SocketAddr> {
    if peer.is_ipv4() {
        let addr = getsockopt(tcp, sockopt::OriginalDst).map_err(std::io::Error::from)?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::new(ip.into(), u16::from_be(addr.sin_port)))
    } else {
        let addr = getsockopt(tcp, sockopt::Ip6tOriginalDst).map_err(std::io::Error::from)?;
        let ip = std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::new(ip.into(), u16::from_be(addr.sin6_port)))
    }
}

/// Dials HBONE connections from inside a pod's namespace with its certificate: over QUIC when
/// both ends may speak it, else (or when QUIC does not answer in time) over HTTP/2 ([`crate::quic`]).
pub(crate) struct PodDialer<'a> {
    pub(crate) ctx: &'a Context,
    pub(crate) local: &'a LocalWorkload,
    /// The peer may speak QUIC: a workload's ztunnel, not a waypoint (which serves HTTP/2 only).
    pub(crate) quic: bool,
}

impl Dialer for PodDialer<'_> {
    fn dial<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<HboneClient, ConnectError>> {
        Box::pin(async move {
            let cert = self
                .local
                .cert
                .current()
                .ok_or_else(|| ConnectError::NoCertificate(key.src.clone()))?;
            let tls = client_config(self.ctx.bundle.clone(), &cert, vec![key.dst.clone()]);
            let quic = self.ctx.settings.quic;
            let endpoint =
                (quic.enabled && self.quic && !self.ctx.quic_peers.h2_only(key.dst_addr))
                    .then(|| self.local.quic.for_peer(key.dst_addr.ip()))
                    .flatten();
            let client = match endpoint {
                Some(endpoint) => self.race(key, endpoint, tls).await,
                None => self.dial_h2(key, tls).await.map(HboneClient::from),
            }
            .inspect_err(|e| {
                if matches!(e, ConnectError::Tls(_) | ConnectError::Alpn) {
                    self.ctx
                        .metrics
                        .handshake_failures
                        .get_or_create(&HandshakeLabels {
                            direction: Direction::Outbound,
                            local_identity: Principal(Some(key.src.clone())),
                        })
                        .inc();
                }
            })?;
            self.ctx
                .metrics
                .hbone_connections_opened
                .get_or_create(&ConnectionLabels {
                    direction: Direction::Outbound,
                    source_identity: Principal(Some(key.src.clone())),
                    destination_identity: Principal(Some(key.dst.clone())),
                })
                .inc();
            info!(source = %key.src, destination = %key.dst, address = %key.dst_addr, transport = client.transport(), "opened HBONE connection");
            Ok(client)
        })
    }
}

impl PodDialer<'_> {
    async fn dial_h2(
        &self,
        key: &PoolKey,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<H2Client, ConnectError> {
        let connect = async {
            let socket = self.local.netns.socket(key.dst_addr.ip())?;
            socket.connect(key.dst_addr).await
        };
        let tcp = tokio::time::timeout(self.ctx.settings.h2.handshake_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(self.ctx.settings.h2.handshake_timeout))?
            .map_err(ConnectError::Tcp)?;
        H2Client::handshake(tcp, tls, &self.ctx.settings.h2).await
    }

    /// QUIC first; HTTP/2 too once QUIC has had its head start, or at once when QUIC fails. The
    /// first connection made carries the tunnel; the other dial is dropped. A peer that ends on
    /// HTTP/2 is dialled on HTTP/2 alone for a while.
    async fn race(
        &self,
        key: &PoolKey,
        endpoint: &quinn::Endpoint,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<HboneClient, ConnectError> {
        let settings = self.ctx.settings.quic;
        let h3 = crate::quic::dial(self.ctx, endpoint, &tls, key.dst_addr);
        // HTTP/2 waits for the head start, or for QUIC's failure, whichever comes first.
        let quic_failed = tokio::sync::Notify::new();
        let h2 = async {
            tokio::select! {
                () = tokio::time::sleep(settings.head_start) => {}
                () = quic_failed.notified() => {}
            }
            self.dial_h2(key, tls.clone()).await
        };
        tokio::pin!(h3, h2);
        let fell_back = |e: &dyn std::fmt::Display| {
            info!(address = %key.dst_addr, error = %e, "no HBONE over QUIC to this peer: HTTP/2 for now");
            self.ctx
                .quic_peers
                .fell_back(key.dst_addr, settings.fallback_ttl);
        };
        tokio::select! {
            biased;
            quic = &mut h3 => match quic {
                Ok(client) => Ok(client.into()),
                Err(e) => {
                    let handshake = match &e {
                        ConnectError::Quic(e) => {
                            matches!(**e, quinn::ConnectionError::TransportError(_))
                        }
                        ConnectError::Tls(_) | ConnectError::Alpn => true,
                        _ => false,
                    };
                    if handshake {
                        // The peer answered QUIC but the handshake failed (its certificate, or
                        // ours): worth a warning, though HTTP/2 may still be what it speaks.
                        warn!(source = %key.src, destination = %key.dst, address = %key.dst_addr, error = %e, "HBONE over QUIC handshake failed; trying HTTP/2");
                    }
                    fell_back(&e);
                    quic_failed.notify_one();
                    h2.await.map(HboneClient::from)
                }
            },
            tcp = &mut h2 => match tcp {
                Ok(client) => {
                    fell_back(&"no answer over QUIC within its head start");
                    Ok(client.into())
                }
                // HTTP/2 failed: QUIC may still make it.
                Err(e) => h3.await.map(HboneClient::from).map_err(|_| e),
            },
        }
    }
}

#[cfg(test)]
mod tests;
