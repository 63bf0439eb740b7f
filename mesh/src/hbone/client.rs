//! The client side of an HBONE connection: TLS 1.3 with the source workload's certificate, HTTP/2,
//! and a driver task that keeps the connection alive with pings and notices when it dies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::future::Future;

use bytes::Bytes;
use futures_util::future::Either;
use h2::client::SendRequest;
use http::{Request, StatusCode};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::early::EarlyData;
use super::quic::H3Client;
use super::stream::{StreamError, TunnelRecv, TunnelSend};
use crate::identity::{ALPN_H2, Identity, peer_identity};

/// HTTP/2 and liveness settings of HBONE connections (both sides).
#[derive(Clone, Debug)]
pub struct H2Settings {
    /// Initial flow-control window of each stream.
    pub stream_window: u32,
    /// Flow-control window of the whole connection.
    pub connection_window: u32,
    /// Largest frame payload.
    pub max_frame_size: u32,
    /// Streams a server accepts at once on one connection.
    pub max_concurrent_streams: u32,
    /// Time allowed for TCP connect + TLS + HTTP/2 handshakes.
    pub handshake_timeout: Duration,
    /// Interval of liveness pings.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            // Chosen with `cargo xtask bench` (docs/benchmarks.md): with the protocol's 64 KiB
            // windows a bulk tunnel stalls on window updates and reaches half the throughput.
            // A window is a limit, not an allocation: memory is held only for data a receiver has
            // not yet written on.
            stream_window: 1 << 20,
            connection_window: 4 << 20,
            // A tunnel's read (64 KiB less a frame header) travels as one DATA frame: one write
            // and four full TLS records instead of four writes and eight records (a 16 KiB
            // frame's 9-byte header pushes each over one record). The receiver buffers at most one
            // frame per connection while decoding it.
            max_frame_size: 65_536,
            max_concurrent_streams: 100,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection or a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("TCP connect: {0}")]
    Tcp(#[source] std::io::Error),
    /// The TLS handshake failed (certificate rejected, wrong identity…).
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// The peer did not negotiate `h2`.
    #[error("peer did not negotiate ALPN h2")]
    Alpn,
    /// HTTP/2 failed.
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// An HTTP/3 stream failed.
    #[error("HTTP/3: {0}")]
    H3(#[from] h3::error::StreamError),
    /// An HTTP/3 connection failed.
    #[error("HTTP/3 connection: {0}")]
    H3Connection(#[from] h3::error::ConnectionError),
    /// The QUIC connection could not be made (the handshake, TLS included, failed or was refused).
    /// Boxed: the error of every tunnel's open is not made larger for it.
    #[error("QUIC: {0}")]
    Quic(Box<quinn::ConnectionError>),
    /// The stream could not be used (answered already, or reset after a cancelled send).
    #[error("stream: {0}")]
    Stream(StreamError),
    /// A QUIC connection could not be started (a bad address or configuration).
    #[error("QUIC connect: {0}")]
    QuicConnect(#[from] quinn::ConnectError),
    /// A handshake took too long.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer answered the CONNECT with an error status.
    #[error("peer answered {0}")]
    Status(StatusCode),
    /// No certificate is available for the source identity.
    #[error("no valid certificate for {0}")]
    NoCertificate(Identity),
    /// The client's own socket failed (reset) while its first bytes were read for the tunnel.
    #[error("source socket: {0}")]
    Source(#[source] std::io::Error),
}

impl From<quinn::ConnectionError> for ConnectError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Quic(Box::new(e))
    }
}

impl From<StreamError> for ConnectError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::H2(e) => Self::H2(e),
            StreamError::H3(e) => Self::H3(e),
            e @ (StreamError::Answered | StreamError::Cancelled) => Self::Stream(e),
        }
    }
}

/// An established HBONE connection, over either transport.
#[derive(Debug)]
pub enum HboneClient {
    /// HTTP/2 over TLS over TCP.
    H2(H2Client),
    /// HTTP/3 over QUIC.
    H3(H3Client),
}

impl From<H2Client> for HboneClient {
    fn from(client: H2Client) -> Self {
        Self::H2(client)
    }
}

impl From<H3Client> for HboneClient {
    fn from(client: H3Client) -> Self {
        Self::H3(client)
    }
}

impl HboneClient {
    /// The verified identity of the server.
    pub fn peer(&self) -> &Identity {
        match self {
            Self::H2(c) => c.peer(),
            Self::H3(c) => c.peer(),
        }
    }

    /// How many streams the server accepts at once on this connection.
    pub fn max_streams(&self) -> usize {
        match self {
            Self::H2(c) => c.max_streams(),
            Self::H3(c) => c.max_streams(),
        }
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::H2(c) => c.is_closed(),
            Self::H3(c) => c.is_closed(),
        }
    }

    /// Which transport carries it: `"h2"` or `"h3"`.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::H2(_) => "h2",
            Self::H3(_) => "h3",
        }
    }

    /// Opens a tunnel stream with `request` and waits for a 200 ([`H2Client::open`]). Not an
    /// `async fn`: one would keep its own copy of the request in every tunnel's future.
    pub fn open<'a>(
        &'a self,
        request: Request<()>,
        early: Option<&'a mut EarlyData<'_>>,
    ) -> impl Future<Output = Result<(TunnelSend, TunnelRecv), ConnectError>> + Send + 'a {
        match self {
            Self::H2(c) => Either::Left(c.open(request, early)),
            // Boxed: HTTP/2's tunnels do not carry h3's futures in theirs.
            Self::H3(c) => Either::Right(Box::pin(c.open(request, early))),
        }
    }
}

/// An established HBONE connection, ready to carry streams.
#[derive(Debug)]
pub struct H2Client {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    peer: Identity,
}

impl H2Client {
    /// Runs TLS and HTTP/2 over `tcp` (already connected), verifying the server with `tls`.
    pub async fn handshake(
        tcp: TcpStream,
        tls: Arc<ClientConfig>,
        settings: &H2Settings,
    ) -> Result<Self, ConnectError> {
        let timeout = settings.handshake_timeout;
        tokio::time::timeout(timeout, Self::handshake_inner(tcp, tls, settings))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    async fn handshake_inner(
        tcp: TcpStream,
        tls: Arc<ClientConfig>,
        settings: &H2Settings,
    ) -> Result<Self, ConnectError> {
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let peer_ip = tcp.peer_addr().map_err(ConnectError::Tcp)?.ip();
        let tls = TlsConnector::from(tls)
            .connect(ServerName::IpAddress(peer_ip.into()), tcp)
            .await
            .map_err(ConnectError::Tls)?;
        let session = tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(ConnectError::Alpn);
        }
        let peer = peer_identity(session)
            .map_err(|e| ConnectError::Tls(std::io::Error::other(e.to_string())))?;
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = conn.ping_pong();
        let flag = closed.clone();
        let (interval, timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
        tokio::spawn(async move {
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        debug!(error = %e, "HBONE connection ended");
                    }
                }
                () = keepalive(ping, interval, timeout) => {
                    debug!("HBONE connection unresponsive to pings; closing");
                }
            }
            flag.store(true, Ordering::Release);
        });
        Ok(Self { send, closed, peer })
    }

    /// The verified identity of the server.
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// How many streams the server accepts at once on this connection (as its settings say).
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Opens a tunnel stream with `request` (a `CONNECT`) and waits for a 200; with `early`, the
    /// socket's first bytes follow the `CONNECT` without waiting for it.
    pub async fn open(
        &self,
        request: Request<()>,
        early: Option<&mut EarlyData<'_>>,
    ) -> Result<(TunnelSend, TunnelRecv), ConnectError> {
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(request, false)?;
        let mut stream = TunnelSend::H2(stream);
        let response = match early {
            Some(early) => early.send_until_answered(&mut stream, response).await?,
            None => response.await?,
        };
        if response.status() != StatusCode::OK {
            return Err(ConnectError::Status(response.status()));
        }
        Ok((stream, TunnelRecv::H2(response.into_body())))
    }
}

/// Pings every `interval`; returns when a ping goes unanswered for `timeout` (or pings fail).
pub(crate) async fn keepalive(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}
