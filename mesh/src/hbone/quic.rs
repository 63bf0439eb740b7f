//! HBONE over HTTP/3: the same tunnels (`CONNECT` to `ip:port`, the same headers and statuses, the
//! same mutual TLS 1.3 with SPIFFE identities) on QUIC, UDP port 15008. veil's own: Istio's ztunnel
//! speaks HBONE over HTTP/2 only, so a peer is tried on QUIC only where the caller says it may
//! answer, with HTTP/2 as the fallback (ztunnel's dialer).
//!
//! What differs on the wire and is made equal here:
//! - h3 0.0.8 sends a plain `CONNECT` with `:scheme https` and `:path /` (RFC 9114 §4.4 says
//!   neither); the server reads such a request as the plain `CONNECT` it is ([`from_h3`]).
//! - `:protocol` is h3's own extension type; requests are turned to and from the HTTP/2 form at
//!   this boundary, so that [`super::parse_connect`] and [`super::udp`] judge both alike.
//! - Dropping a QUIC stream finishes it; [`super::stream::H3Send`] resets instead.
//!
//! UDP flows' payloads travel as HTTP/3 datagrams (QUIC DATAGRAM frames, `datagram`) when they fit
//! one, else as capsules on their request stream as over HTTP/2.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;
use tracing::debug;

use super::client::{ConnectError, H2Settings};
use super::early::EarlyData;
use super::server::InboundStream;
use super::stream::{H3Recv, H3Send, Responder, TunnelRecv, TunnelSend};
use super::udp::CONNECT_UDP;
use crate::identity::{Identity, inspect};

/// The ALPN protocol of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";

/// The largest header section accepted (HBONE's requests are a few hundred bytes).
const MAX_FIELD_SECTION: u64 = 64 * 1024;

/// Bytes of QUIC datagrams a connection queues before its flows take them (beyond, the oldest are
/// dropped, as a full socket buffer would).
const DATAGRAM_BUFFER: usize = 256 * 1024;

/// The longest interval between keep-alive packets: well inside conntrack's UDP timeouts (30 s
/// unreplied, 120 s assured), so no stateful middle-box forgets an idle connection.
const MAX_KEEPALIVE: Duration = Duration::from_secs(15);

/// QUIC transport settings equivalent to the HTTP/2 ones: the same stream and connection windows,
/// the same stream limit, and liveness from keep-alives (an unanswered connection is closed after
/// the keep-alive interval and timeout).
fn transport(settings: &H2Settings) -> Result<TransportConfig, String> {
    let mut transport = TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(settings.stream_window))
        .receive_window(VarInt::from_u32(settings.connection_window))
        .send_window(u64::from(settings.connection_window))
        .max_concurrent_bidi_streams(VarInt::from_u32(settings.max_concurrent_streams))
        // h3's control stream and QPACK's two (no grease streams: see the builders).
        .max_concurrent_uni_streams(VarInt::from_u32(3))
        // Inside a cluster: the first loss is detected in a fraction of the default's second.
        .initial_rtt(Duration::from_millis(50))
        // HTTP/3 datagrams (UDP flows' payloads), up to this much queued per connection.
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    let interval = settings.keepalive_interval.min(MAX_KEEPALIVE);
    let idle = IdleTimeout::try_from(interval + settings.keepalive_timeout)
        .map_err(|e| format!("keep-alive interval and timeout: {e}"))?;
    transport
        .keep_alive_interval(Some(interval))
        .max_idle_timeout(Some(idle));
    Ok(transport)
}

/// A QUIC client configuration from an HBONE client's TLS one (same certificate, same SPIFFE
/// verification of the server), with ALPN `h3`.
pub fn client_config(
    tls: &rustls::ClientConfig,
    settings: &H2Settings,
) -> Result<quinn::ClientConfig, String> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(settings)?));
    Ok(config)
}

/// A QUIC server configuration from an HBONE server's TLS one (same certificates, rotated by the
/// same resolver; same verification of clients), with ALPN `h3`.
pub fn server_config(
    tls: &rustls::ServerConfig,
    settings: &H2Settings,
) -> Result<quinn::ServerConfig, String> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(settings)?));
    // A pod's address does not move; a connection whose client seems to has been spoofed.
    config.migration(false);
    Ok(config)
}

/// A QUIC endpoint on `socket` (already bound, marked and in its namespace): a server when given
/// `server`, and a client for the tunnels it dials.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// The identity in the verified certificate chain of a QUIC connection's peer.
fn peer_identity(conn: &quinn::Connection) -> Result<Identity, ConnectError> {
    let tls = |msg: String| ConnectError::Tls(std::io::Error::other(msg));
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| tls("no peer certificate".into()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| tls("empty certificate chain".into()))?;
    Ok(inspect(leaf).map_err(|e| tls(e.to_string()))?.identity)
}

/// Whether the handshake settled on HTTP/3.
fn negotiated_h3(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|p| p == ALPN_H3)
}

/// How long a server that has finished its requests after a GOAWAY waits for the client to close the
/// connection before it closes it itself (time for the last acknowledgements).
const LINGER: Duration = Duration::from_secs(1);

/// How long a client that said GOAWAY waits for the server to close before it closes itself.
const CLOSE_CAP: Duration = Duration::from_secs(60);

/// A use of a client connection (the client's own, or an open stream's); the last one dropped
/// tells the connection's driver.
pub(crate) struct Lease(Option<tokio::sync::oneshot::Sender<()>>);

impl Lease {
    fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(Some(tx)), rx)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// An established HBONE connection over QUIC.
pub struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    closed: Arc<AtomicBool>,
    /// Held by the client and each of its streams: the connection closes once all are gone.
    lease: Arc<Lease>,
    /// Its UDP flows' datagrams.
    datagrams: Datagrams,
    peer: Identity,
    max_streams: usize,
    /// How long opening a stream may wait for the server's stream limit.
    open_timeout: Duration,
}

impl std::fmt::Debug for H3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Client")
            .field("peer", &self.peer)
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl H3Client {
    /// Connects to `addr` from `endpoint` with `config` (its TLS verifies the server), within the
    /// handshake timeout.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        settings: &H2Settings,
    ) -> Result<Self, ConnectError> {
        let timeout = settings.handshake_timeout;
        // The server is named by its address, as over HTTP/2 (identities are SPIFFE URIs).
        let connecting = endpoint.connect_with(config, addr, &addr.ip().to_string())?;
        let handshake = async {
            let conn = connecting.await?;
            if !negotiated_h3(&conn) {
                return Err(ConnectError::Alpn);
            }
            let peer = peer_identity(&conn)?;
            let (driver, send) = h3::client::builder()
                .max_field_section_size(MAX_FIELD_SECTION)
                .send_grease(false)
                .enable_datagram(true)
                .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
                .await?;
            Ok((conn, driver, send, peer))
        };
        let (conn, mut driver, send, peer) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let (lease, unused) = Lease::new();
        // h3 closes the connection as its last request handle drops, abandoning what QUIC has not
        // delivered yet (a last tunnel's final bytes and FIN). The driver keeps a handle; once
        // neither the pool nor any stream uses the connection it says GOAWAY, and the server
        // closes when it has finished every request.
        let (keep, quic) = (send.clone(), conn.clone());
        tokio::spawn(async move {
            let mut keep = Some(keep);
            let mut unused = std::pin::pin!(unused);
            let mut shut = false;
            let cap = tokio::time::sleep(Duration::MAX);
            tokio::pin!(cap);
            let e = loop {
                tokio::select! {
                    e = poll_fn(|cx| driver.poll_close(cx)) => break e,
                    // Unused: GOAWAY. The server closes once it has finished every request, so
                    // nothing either way is cut off.
                    _ = &mut unused, if !shut => {
                        shut = true;
                        let _ = driver.shutdown(0).await;
                        cap.as_mut().reset(tokio::time::Instant::now() + CLOSE_CAP);
                    }
                    // A server that never closes: this side does.
                    () = &mut cap, if keep.is_some() => {
                        keep = None;
                        quic.close(H3_NO_ERROR, b"");
                    }
                }
            };
            if !e.is_h3_no_error() {
                debug!(error = %e, "HBONE connection over QUIC ended");
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Self {
            send,
            datagrams: Datagrams::start(conn.clone()),
            conn,
            closed,
            lease: Arc::new(lease),
            peer,
            max_streams: settings.max_concurrent_streams as usize,
            open_timeout: settings.handshake_timeout,
        })
    }

    /// The verified identity of the server.
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// How many streams the server accepts at once (the limit both ends configure alike: QUIC
    /// does not tell the client the server's).
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.conn.close_reason().is_some()
    }

    /// Opens a tunnel stream with `request` and waits for a 200; with `early`, the socket's first
    /// bytes follow the request without waiting for it.
    pub async fn open(
        &self,
        request: Request<()>,
        early: Option<&mut EarlyData<'_>>,
    ) -> Result<(TunnelSend, TunnelRecv), ConnectError> {
        // At the server's stream limit h3 waits for a free stream instead of being refused (as
        // HTTP/2's REFUSED_STREAM would): bounded, as a handshake is.
        let udp = crate::hbone::udp::is_connect_udp(&request);
        // In a task of its own: h3 writes the request's headers as QUIC's windows allow, and a
        // write cancelled half-way would leave a truncated frame that fails the whole connection.
        // Abandoned (a timeout, the tunnel gone), the request is reset once it is out.
        let mut send = self.send.clone();
        let request = to_h3(request);
        let (opened, wanted) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let stream = send.send_request(request).await;
            if let Err(Ok(mut stream)) = opened.send(stream) {
                stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            }
        });
        let stream = match tokio::time::timeout(self.open_timeout, wanted).await {
            Ok(Ok(Ok(stream))) => stream,
            Ok(Err(_)) => return Err(ConnectError::Timeout(self.open_timeout)),
            Ok(Ok(Err(e))) => {
                if matches!(e, h3::error::StreamError::RemoteClosing { .. }) {
                    // GOAWAY: no more streams here; the pool dials another connection.
                    self.closed.store(true, Ordering::Release);
                }
                return Err(e.into());
            }
            Err(_) => return Err(ConnectError::Timeout(self.open_timeout)),
        };
        // A UDP flow's datagrams are routed to it from before the server can send any.
        let datagrams = udp.then(|| self.datagrams.flow(stream.id().into_inner()));
        let (send, recv) = stream.split();
        let mut send = H3Send::client(send, self.lease.clone());
        send.datagrams = datagrams;
        let mut send = TunnelSend::H3(Box::new(send));
        let mut recv = Box::new(H3Recv::client(recv));
        let answer = recv.as_client().expect("a client's stream").recv_response();
        let response = match early {
            Some(early) => early.send_until_answered(&mut send, answer).await?,
            None => answer.await?,
        };
        if response.status() != StatusCode::OK {
            return Err(ConnectError::Status(response.status()));
        }
        Ok((send, TunnelRecv::H3(recv)))
    }
}

/// Waits up to [`LINGER`] for the client to close a connection whose requests have all ended,
/// still reading it meanwhile: a request the client sent before this side's GOAWAY reached it is
/// rejected by h3 (`H3_REQUEST_REJECTED`, which the client retries on another connection) rather
/// than cut off by the close.
async fn linger(
    conn: &mut h3::server::Connection<h3_quinn::Connection, Bytes>,
    quic: &quinn::Connection,
) {
    let reading = async {
        loop {
            match conn.accept().await {
                // Not after GOAWAY: h3 rejects what comes past it.
                Ok(Some(_)) => {}
                // A late request rejected, or nothing more can come: h3 answers at once from
                // then on, so the next look is a moment later.
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => return std::future::pending().await,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, async {
        tokio::select! {
            _ = quic.closed() => {}
            () = reading => {}
        }
    })
    .await;
}

/// HTTP/3's "no error" (RFC 9114 §8.1): a connection closed once its work is done.
pub const H3_NO_ERROR: VarInt = VarInt::from_u32(0x100);

/// The requests a server connection is serving.
#[derive(Default)]
struct Requests(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

/// One request being served; dropped when it ends.
struct OpenRequest(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

impl Requests {
    fn open(&self) -> OpenRequest {
        self.0.0.fetch_add(1, Ordering::AcqRel);
        OpenRequest(self.0.clone())
    }

    /// Completes once no request is open.
    async fn none_open(&self) {
        loop {
            let ended = self.0.1.notified();
            if self.0.0.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

/// A request in HTTP/2's form (`h2::ext::Protocol`) as h3 sends it.
fn to_h3(mut request: Request<()>) -> Request<()> {
    let udp = request
        .extensions_mut()
        .remove::<h2::ext::Protocol>()
        .is_some_and(|p| p.as_str() == CONNECT_UDP);
    if udp {
        request
            .extensions_mut()
            .insert(h3::ext::Protocol::CONNECT_UDP);
    }
    request
}

/// A request as h3 received it, in HTTP/2's form: `:protocol` as `h2::ext::Protocol`, and a plain
/// `CONNECT` with h3 0.0.8's `:scheme https` and `:path /` as the plain `CONNECT` it is. Anything
/// else is left for [`super::parse_connect`] to refuse.
pub(crate) fn from_h3(mut request: Request<()>) -> Request<()> {
    match request.extensions_mut().remove::<h3::ext::Protocol>() {
        Some(protocol) => {
            let protocol = if protocol == h3::ext::Protocol::CONNECT_UDP {
                h2::ext::Protocol::from_static(CONNECT_UDP)
            } else {
                h2::ext::Protocol::from_static("webtransport")
            };
            request.extensions_mut().insert(protocol);
        }
        None if request.method() == http::Method::CONNECT => {
            let uri = request.uri();
            let h3_default = uri.scheme_str() == Some("https")
                && uri.path_and_query().is_some_and(|p| p.as_str() == "/");
            if h3_default && let Some(authority) = uri.authority().cloned() {
                *request.uri_mut() = Uri::from(authority);
            }
        }
        None => {}
    }
    request
}

/// Serves one incoming QUIC connection: the handshake (its TLS verifies the client) within the
/// handshake timeout, then HTTP/3; each stream goes to `handler` in its own task. When `shutdown`
/// completes, GOAWAY tells the client to open no more streams here; the connection ends once its
/// open streams have. `handshaken` is called once the handshakes are over.
pub async fn serve_connection<F, Fut>(
    incoming: quinn::Incoming,
    settings: &H2Settings,
    handler: F,
    shutdown: impl Future<Output = ()>,
    handshaken: impl FnOnce(),
) -> Result<(), ConnectError>
where
    F: Fn(InboundStream) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let peer_addr = incoming.remote_address();
    let handshake = async {
        let conn = incoming.accept()?.await?;
        if !negotiated_h3(&conn) {
            return Err(ConnectError::Alpn);
        }
        let peer = peer_identity(&conn)?;
        let h3 = h3::server::builder()
            .max_field_section_size(MAX_FIELD_SECTION)
            .send_grease(false)
            // Extended CONNECT, for UDP flows; whether one is allowed is the handler's business.
            .enable_extended_connect(true)
            .enable_datagram(true)
            .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await?;
        Ok((h3, conn, peer))
    };
    let timeout = settings.handshake_timeout;
    let handshake = tokio::time::timeout(timeout, Box::pin(handshake)).await;
    handshaken();
    let (mut conn, quic, peer) = handshake.map_err(|_| ConnectError::Timeout(timeout))??;
    let datagrams = Datagrams::start(quic.clone());
    tokio::pin!(shutdown);
    let mut draining = false;
    let requests = Requests::default();
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept() => accepted,
            () = &mut shutdown, if !draining => {
                draining = true;
                conn.shutdown(0).await?;
                continue;
            }
            // After this side's GOAWAY h3 waits for streams that cannot come (it ends on the
            // client's GOAWAY only): the connection ends with its last request.
            () = requests.none_open(), if draining => Ok(None),
        };
        let resolver = match accepted {
            Ok(Some(resolver)) => resolver,
            // No more streams, and the open ones have ended: the client closes the connection,
            // or, after a moment for its last acknowledgements, this side does.
            Ok(None) => {
                linger(&mut conn, &quic).await;
                quic.close(H3_NO_ERROR, b"");
                return Ok(());
            }
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => {
                debug!(%peer_addr, error = %e, "HBONE connection over QUIC failed");
                return Err(e.into());
            }
        };
        let (handler, peer, datagrams) = (handler.clone(), peer.clone(), datagrams.clone());
        let open = requests.open();
        tokio::spawn(async move {
            let _open = open;
            // A client that opens a stream and never sends its headers holds it no longer than a
            // handshake may take.
            let resolved = tokio::time::timeout(timeout, resolver.resolve_request()).await;
            let (request, stream) = match resolved {
                Ok(Ok(resolved)) => resolved,
                Ok(Err(e)) => return debug!(%peer_addr, error = %e, "unreadable HTTP/3 request"),
                Err(_) => return debug!(%peer_addr, "HTTP/3 request headers never came"),
            };
            let request = from_h3(request);
            // A UDP flow's datagrams are routed to it before it is answered.
            let datagrams = crate::hbone::udp::is_connect_udp(&request)
                .then(|| Box::new(datagrams.flow(stream.id().into_inner())));
            let (send, recv) = stream.split();
            let (parts, ()) = request.into_parts();
            handler(InboundStream {
                request: Request::from_parts(parts, TunnelRecv::H3(Box::new(H3Recv::server(recv)))),
                respond: Responder::H3(Some(Box::new(send)), datagrams),
                peer,
                peer_addr,
            })
            .await;
        });
    }
}

mod datagram;
#[cfg(test)]
mod tests;

use datagram::Datagrams;
pub use datagram::{DatagramReceiver, DatagramSender};
