//! Tunnels from the waypoint to endpoints: HBONE with the waypoint's own identity, pooled, the
//! endpoint's identity verified. Exposed to hyper's client as a connector, so upstream HTTP/1.1
//! connections are kept alive and HTTP/2 ones multiplexed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::HeaderValue;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::info;
use veil_mesh::discovery::{MeshState, WaypointRef};
use veil_mesh::hbone::{
    ConnectError, H2Client, H2Io, H2Settings, HBONE_PORT, HboneClient, TunnelMeta,
};
use veil_mesh::identity::{BoxFuture, CertHandle, Identity, TrustBundle, client_config};
use veil_mesh::pool::{Dialer, Pool, PoolKey};
use veil_mesh::telemetry::metrics::{
    ConnectionLabels, Direction, HandshakeLabels, Metrics, Principal,
};

use crate::io::Upstream;

/// What opening upstream tunnels needs.
#[derive(Debug)]
pub struct Upstreams {
    /// This waypoint.
    pub me: WaypointRef,
    /// Its identity.
    pub identity: Identity,
    /// Its certificate.
    pub cert: CertHandle,
    /// Roots endpoints are verified against.
    pub bundle: Arc<TrustBundle>,
    /// The mesh.
    pub state: watch::Receiver<Arc<MeshState>>,
    /// Pooled HBONE connections.
    pub pool: Pool,
    /// HTTP/2 settings of HBONE.
    pub h2: H2Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Upstreams {
    /// Opens a tunnel to endpoint address `target`, which must be an enrolled mesh workload;
    /// `traceparent` (the span that needs it) goes with its `CONNECT`.
    pub async fn open(
        &self,
        target: SocketAddr,
        traceparent: Option<HeaderValue>,
    ) -> Result<Upstream, ConnectError> {
        let workload = self
            .state
            .borrow()
            .workload_by_ip(target.ip())
            .filter(|w| w.enrolled)
            .cloned()
            .ok_or_else(|| {
                ConnectError::Tcp(std::io::Error::other(format!(
                    "{target} is not a workload in the mesh"
                )))
            })?;
        let unspecified: IpAddr = if target.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let key = PoolKey {
            src: self.identity.clone(),
            src_ip: unspecified,
            dst: workload.identity.clone(),
            dst_addr: SocketAddr::new(target.ip(), HBONE_PORT),
        };
        let meta = TunnelMeta {
            traceparent,
            ..TunnelMeta::default()
        };
        let (send, recv, guard) = self.pool.open(&key, target, &meta, self, None).await?;
        let io = H2Io::from_tunnel(send, recv).ok_or(ConnectError::Alpn)?;
        Ok(Upstream::new(io, guard))
    }
}

impl Dialer for Upstreams {
    fn dial<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<HboneClient, ConnectError>> {
        Box::pin(async move {
            let cert = self
                .cert
                .current()
                .ok_or_else(|| ConnectError::NoCertificate(key.src.clone()))?;
            let tls = client_config(self.bundle.clone(), &cert, vec![key.dst.clone()]);
            let tcp =
                tokio::time::timeout(self.h2.handshake_timeout, TcpStream::connect(key.dst_addr))
                    .await
                    .map_err(|_| ConnectError::Timeout(self.h2.handshake_timeout))?
                    .map_err(ConnectError::Tcp)?;
            let client = H2Client::handshake(tcp, tls, &self.h2)
                .await
                .inspect_err(|e| {
                    if matches!(e, ConnectError::Tls(_) | ConnectError::Alpn) {
                        self.metrics
                            .handshake_failures
                            .get_or_create(&HandshakeLabels {
                                direction: Direction::Outbound,
                                local_identity: Principal(Some(key.src.clone())),
                            })
                            .inc();
                    }
                })?;
            self.metrics
                .hbone_connections_opened
                .get_or_create(&ConnectionLabels {
                    direction: Direction::Outbound,
                    source_identity: Principal(Some(key.src.clone())),
                    destination_identity: Principal(Some(key.dst.clone())),
                })
                .inc();
            info!(destination = %key.dst, address = %key.dst_addr, "opened HBONE connection to an endpoint");
            Ok(client.into())
        })
    }
}

tokio::task_local! {
    /// The `traceparent` of the request being sent, for the tunnel hyper's client opens for it
    /// (it opens one in the request's task when none is pooled; a tunnel opened elsewhere, or
    /// reused, carries none of its own).
    pub static REQUEST_TRACE: Option<HeaderValue>;
}

/// hyper's connector: the URI's authority is the endpoint address.
#[derive(Clone, Debug)]
pub struct Connector(pub Arc<Upstreams>);

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = ConnectError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let upstreams = self.0.clone();
        let traceparent = REQUEST_TRACE.try_with(Clone::clone).ok().flatten();
        Box::pin(async move {
            let target: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    ConnectError::Tcp(std::io::Error::other(format!("bad upstream URI {uri}")))
                })?;
            Ok(TokioIo::new(upstreams.open(target, traceparent).await?))
        })
    }
}
