//! HBONE over QUIC (`--hbone-quic`, off by default): each enrolled pod gets a QUIC endpoint on UDP
//! 15008 inside its namespace, which serves tunnels into the pod (the same handler as HBONE over
//! HTTP/2: admission, L4 policy, the application) and dials the pod's tunnels out.
//!
//! Which transport a tunnel takes is decided per destination address ([`Peers`]): QUIC first, with
//! HTTP/2 dialled too once QUIC has had a head start without answering (a peer that does not speak
//! QUIC — Istio's ztunnel, a waypoint, a node with QUIC off whose pods drop UDP 15008 — never
//! answers: QUIC gives no signal, so only time tells). Whichever connects first carries the tunnel;
//! when it is HTTP/2, the peer is dialled on HTTP/2 alone for a while before QUIC is tried again.
//! A failed QUIC handshake, certificate failures included, falls back the same way: both
//! transports verify the same identities with the same mutual TLS, so the fallback lowers nothing.
//!
//! What is not done: a pod's QUIC socket is not handed over on upgrade (the old ztunnel serves its
//! QUIC tunnels to their end while it drains and refuses new QUIC connections, so peers fall back
//! to HTTP/2 at once; the new one binds the port once it is free).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};
use veil_mesh::hbone::quic::{self, serve_connection};
use veil_mesh::hbone::{ConnectError, H3Client, HBONE_PORT};
use veil_mesh::telemetry::metrics::Resource;

use crate::accept;
use crate::capture::Family;
use crate::context::{Context, LocalWorkload};
use crate::inbound;

/// Settings of HBONE over QUIC.
#[derive(Clone, Copy, Debug)]
pub struct QuicSettings {
    /// Serve and dial HBONE over QUIC.
    pub enabled: bool,
    /// How long a QUIC dial goes alone before HTTP/2 is dialled too.
    pub head_start: Duration,
    /// How long a QUIC dial may take at all.
    pub connect_timeout: Duration,
    /// How long a peer that fell back is dialled on HTTP/2 alone.
    pub fallback_ttl: Duration,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            head_start: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            fallback_ttl: Duration::from_secs(300),
        }
    }
}

/// The most peers remembered as HTTP/2-only (beyond, the expired are forgotten, then new ones are
/// not remembered: they are raced again, which costs a head start, never a failure).
const MAX_FALLEN_BACK: usize = 65_536;

/// Destination addresses that did not answer QUIC lately, and until when they are dialled on
/// HTTP/2 alone.
#[derive(Debug, Default)]
pub struct Peers(Mutex<HashMap<SocketAddr, Instant>>);

impl Peers {
    /// Whether `addr` is to be dialled on HTTP/2 alone now.
    pub fn h2_only(&self, addr: SocketAddr) -> bool {
        let mut peers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(&addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                peers.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// `addr` did not answer QUIC: HTTP/2 alone for `ttl`.
    pub fn fell_back(&self, addr: SocketAddr, ttl: Duration) {
        let mut peers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if peers.len() >= MAX_FALLEN_BACK {
            peers.retain(|_, until| *until > now);
        }
        if peers.len() < MAX_FALLEN_BACK {
            peers.insert(addr, now + ttl);
        }
    }

    /// How many peers are remembered.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A pod's QUIC endpoints, one per address family (set once bound).
#[derive(Debug, Default)]
pub struct Endpoints([OnceLock<quinn::Endpoint>; 2]);

impl Endpoints {
    /// The endpoint that reaches `ip`, if the pod has one.
    pub fn for_peer(&self, ip: IpAddr) -> Option<&quinn::Endpoint> {
        self.0[usize::from(ip.is_ipv6())].get()
    }

    /// The endpoints bound.
    fn bound(&self) -> impl Iterator<Item = &quinn::Endpoint> {
        self.0.iter().filter_map(OnceLock::get)
    }

    fn set(&self, family: Family, endpoint: quinn::Endpoint) {
        // Set once per family: a second endpoint would be a bug, and the first keeps serving.
        let _ = self.0[usize::from(family == Family::V6)].set(endpoint);
    }
}

/// Binds the pod's QUIC endpoint of `family`; what serves it, for the caller to run once the pod's
/// rules are written (before, rules left by another ztunnel would redirect the connections this one
/// opens for it); `None` when IPv6 is off in the pod. A port still held (by the ztunnel this one
/// replaces) is bound once free, retried every second.
pub fn start(
    ctx: &Arc<Context>,
    local: &Arc<LocalWorkload>,
    family: Family,
) -> std::io::Result<Option<impl Future<Output = ()> + Send + 'static>> {
    let server = quic::server_config(&local.tls, &ctx.settings.h2)
        .map_err(|e| std::io::Error::other(format!("QUIC server configuration: {e}")))?;
    let bound = match bind(local, family, server.clone()) {
        Ok(endpoint) => Some(endpoint),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            info!(workload = %local.workload.key(), ?family, "UDP 15008 is still held (by the ztunnel this one replaces): QUIC tunnels once it is free, HTTP/2 until then");
            None
        }
        Err(e) if family == Family::V6 && crate::enrol::ipv6_off(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (ctx, local) = (ctx.clone(), local.clone());
    Ok(Some(async move {
        let endpoint = match bound {
            Some(endpoint) => endpoint,
            None => loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match bind(&local, family, server.clone()) {
                    Ok(endpoint) => {
                        info!(workload = %local.workload.key(), ?family, "UDP 15008 bound: serving HBONE over QUIC");
                        break endpoint;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                    Err(e) => {
                        return warn!(workload = %local.workload.key(), ?family, error = %e, "cannot bind UDP 15008: no HBONE over QUIC for this pod");
                    }
                }
            },
        };
        // In the pod's task, which its release aborts.
        local.quic.set(family, endpoint.clone());
        run(ctx, local, endpoint).await
    }))
}

fn bind(
    local: &LocalWorkload,
    family: Family,
    server: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    let any: IpAddr = match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = local
        .netns
        .udp(SocketAddr::new(any, HBONE_PORT), None, false)?
        .into_std()?;
    quic::endpoint(socket, Some(server))
}

/// Accepts QUIC connections for `local` until the endpoint closes. A client first proves its
/// address (a Retry); then each connection holds an HBONE connection permit for its life and a
/// handshake permit until its handshakes are over; over budget, or once ztunnel drains, a
/// connection is refused at once (the peer falls back to HTTP/2 without waiting).
async fn run(ctx: Arc<Context>, local: Arc<LocalWorkload>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        if ctx.is_draining() {
            incoming.refuse();
            continue;
        }
        if !incoming.remote_address_validated() {
            // A QUIC Initial can come from a forged address (UDP has no handshake of its own): the
            // client proves it receives at its address (a Retry token, one round trip) before it
            // costs a budget permit or a TLS handshake, as a TCP client does with its SYN.
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let permits = ctx
            .budgets
            .acquire(&local.budget, Resource::HboneConnections)
            .and_then(|conn| {
                let handshake = ctx
                    .budgets
                    .acquire(&local.budget, Resource::TlsHandshakes)?;
                Ok((conn, handshake))
            });
        let (permit, handshake) = match permits {
            Ok(permits) => permits,
            Err(refused) => {
                incoming.refuse();
                accept::count_refusal(&ctx, &local, &refused);
                continue;
            }
        };
        let (ctx, local) = (ctx.clone(), local.clone());
        tokio::spawn(async move {
            connection(ctx, local, incoming, handshake).await;
            drop(permit);
        });
    }
}

async fn connection(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    incoming: quinn::Incoming,
    handshake: crate::budget::Permit,
) {
    let peer = incoming.remote_address();
    let handler = {
        let (ctx, local) = (ctx.clone(), local.clone());
        move |stream| inbound::tunnel(ctx.clone(), local.clone(), stream)
    };
    let served = serve_connection(
        incoming,
        &ctx.settings.h2,
        handler,
        ctx.drain_started(),
        move || drop(handshake),
    );
    // A QUIC handshake's TLS failure arrives as a QUIC error: counted as a failed handshake too.
    let served = match served.await {
        Err(ConnectError::Quic(e)) if matches!(*e, quinn::ConnectionError::TransportError(_)) => {
            Err(ConnectError::Tls(std::io::Error::other(e.to_string())))
        }
        served => served,
    };
    inbound::ended(&ctx, &local, Some(peer), served);
}

/// How long a stopping ztunnel gives its QUIC connections' closes to go out.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Closes every pod's QUIC connections (a stopping ztunnel, once drained or out of time): peers
/// learn at once that they have ended, as a TCP peer does from the kernel when a process exits.
pub async fn close_all(ctx: &Context) {
    let endpoints: Vec<quinn::Endpoint> = ctx
        .locals
        .all()
        .iter()
        .flat_map(|local| local.quic.bound().cloned().collect::<Vec<_>>())
        .collect();
    if endpoints.is_empty() {
        return;
    }
    for endpoint in &endpoints {
        endpoint.close(quic::H3_NO_ERROR, b"ztunnel stopped");
    }
    // Closing all at once above; the waits overlap.
    let idle = async {
        for endpoint in &endpoints {
            endpoint.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, idle).await;
}

/// Dials `addr` over QUIC from `endpoint` with the client TLS configuration `tls`, within the
/// QUIC connect timeout.
pub async fn dial(
    ctx: &Context,
    endpoint: &quinn::Endpoint,
    tls: &rustls::ClientConfig,
    addr: SocketAddr,
) -> Result<H3Client, ConnectError> {
    let config = quic::client_config(tls, &ctx.settings.h2)
        .map_err(|e| ConnectError::Tls(std::io::Error::other(e)))?;
    let limit = ctx.settings.quic.connect_timeout;
    tokio::time::timeout(
        limit,
        H3Client::connect(endpoint, config, addr, &ctx.settings.h2),
    )
    .await
    .map_err(|_| ConnectError::Timeout(limit))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_fell_back_is_dialled_on_http2_until_its_time_is_up() {
        let peers = Peers::default();
        let addr: SocketAddr = "10.0.0.1:15008".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:15008".parse().unwrap();
        assert!(!peers.h2_only(addr));
        peers.fell_back(addr, Duration::from_secs(300));
        assert!(peers.h2_only(addr));
        assert!(!peers.h2_only(other), "only the peer that fell back");
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(peers.h2_only(addr));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!peers.h2_only(addr), "tried on QUIC again");
        assert!(peers.is_empty(), "forgotten once expired");
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_of_fallen_back_peers_is_bounded() {
        let peers = Peers::default();
        let addr = |i: u32| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(i)), HBONE_PORT);
        for i in 0..MAX_FALLEN_BACK as u32 {
            peers.fell_back(addr(i), Duration::from_secs(1));
        }
        peers.fell_back(addr(u32::MAX), Duration::from_secs(10));
        assert_eq!(peers.len(), MAX_FALLEN_BACK);
        assert!(
            !peers.h2_only(addr(u32::MAX)),
            "full of live entries: not remembered"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        peers.fell_back(addr(u32::MAX), Duration::from_secs(10));
        assert_eq!(peers.len(), 1, "the expired were forgotten to make room");
        assert!(peers.h2_only(addr(u32::MAX)));
    }
}
