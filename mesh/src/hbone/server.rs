//! The server side of HBONE connections: TLS with the destination workload's certificate, HTTP/2, and
//! one task per `CONNECT` stream. What a stream is allowed to do is the caller's handler's business.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::client::{ConnectError, H2Settings, keepalive};
use super::stream::{Responder, TunnelRecv};
use crate::identity::{ALPN_H2, Identity, peer_identity};

/// What a stream handler gets: the request, the way to answer it, and who is asking.
#[derive(Debug)]
pub struct InboundStream {
    /// The `CONNECT` request (body: the stream's data from the client), in HTTP/2's form whichever
    /// version carried it.
    pub request: Request<TunnelRecv>,
    /// The answer.
    pub respond: Responder,
    /// The client's verified identity.
    pub peer: Identity,
    /// The client's address (of the TCP connection or QUIC path that carries the tunnel).
    pub peer_addr: SocketAddr,
}

/// Serves one accepted TCP connection: TLS with `tls`, then HTTP/2; each stream goes to `handler`
/// in its own task. When `shutdown` completes, GOAWAY tells the client to open no more streams here;
/// the connection ends once its open streams have. Returns when the connection ends.
pub async fn serve_connection<F, Fut>(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    settings: &H2Settings,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConnectError>
where
    F: Fn(InboundStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_connection_with(tcp, tls, settings, handler, shutdown, || {}).await
}

/// [`serve_connection`], calling `handshaken` once the handshakes are over (completed, failed or
/// timed out), e.g. to give back a budget of handshakes in progress.
pub async fn serve_connection_with<F, Fut>(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    settings: &H2Settings,
    handler: F,
    shutdown: impl Future<Output = ()>,
    handshaken: impl FnOnce(),
) -> Result<(), ConnectError>
where
    F: Fn(InboundStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let peer_addr = tcp.peer_addr().map_err(ConnectError::Tcp)?;
    tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let handshake = async {
        let tls = TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .map_err(ConnectError::Tls)?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(ConnectError::Alpn);
        }
        let peer = peer_identity(session)
            .map_err(|e| ConnectError::Tls(std::io::Error::other(e.to_string())))?;
        let conn = h2::server::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_concurrent_streams(settings.max_concurrent_streams)
            // Extended CONNECT (RFC 8441), for UDP flows (`super::udp`); whether one is allowed is
            // the handler's business, as for any stream.
            .enable_connect_protocol()
            .handshake::<_, Bytes>(tls)
            .await?;
        Ok((conn, peer))
    };
    // Boxed: the handshakes' state is large and needed only until they end, not for the
    // connection's life.
    let handshake = tokio::time::timeout(settings.handshake_timeout, Box::pin(handshake)).await;
    handshaken();
    let (mut conn, peer) =
        handshake.map_err(|_| ConnectError::Timeout(settings.handshake_timeout))??;
    let ping = conn.ping_pong();
    let serve = async {
        tokio::pin!(shutdown);
        let mut draining = false;
        loop {
            let accepted = tokio::select! {
                accepted = conn.accept() => accepted,
                () = &mut shutdown, if !draining => {
                    draining = true;
                    conn.graceful_shutdown();
                    continue;
                }
            };
            let Some(accepted) = accepted else { break };
            match accepted {
                Ok((request, respond)) => {
                    let (parts, body) = request.into_parts();
                    tokio::spawn(handler(InboundStream {
                        request: Request::from_parts(parts, TunnelRecv::H2(body)),
                        respond: Responder::H2(respond),
                        peer: peer.clone(),
                        peer_addr,
                    }));
                }
                Err(e) => {
                    debug!(%peer_addr, error = %e, "HBONE connection failed");
                    return Err(e.into());
                }
            }
        }
        // No more streams will be accepted; let the open ones finish.
        poll_fn(|cx| conn.poll_closed(cx)).await?;
        Ok(())
    };
    tokio::select! {
        result = serve => result,
        () = keepalive(ping, settings.keepalive_interval, settings.keepalive_timeout) => {
            debug!(%peer_addr, "HBONE client unresponsive to pings; closing");
            Err(ConnectError::Timeout(settings.keepalive_timeout))
        }
    }
}
