//! One tunnel stream, whichever HTTP version carries it: an HTTP/2 stream of an HBONE connection
//! over TLS and TCP, or an HTTP/3 request stream of one over QUIC ([`super::quic`]). Both halves
//! keep TCP's meaning in either: finishing is a clean end (END_STREAM, a QUIC FIN), resetting is
//! an abort (RST_STREAM; RESET_STREAM and STOP_SENDING with `H3_CONNECT_ERROR`, RFC 9114 §4.4).
//!
//! Dropping an HTTP/2 half that did not finish resets the stream; a QUIC stream would be finished
//! instead, so [`H3Send`] resets on drop itself: an abandoned tunnel is never mistaken for a
//! complete one at the other end. Dropping an HTTP/3 receiving half before its end asks the peer to
//! stop sending (quinn's STOP_SENDING); it is never stopped explicitly, because h3-quinn panics when
//! asked to while a cancelled read still holds the stream.
//!
//! An HTTP/3 send cancelled half-way (a flow's idle timer firing while the peer's window is shut)
//! leaves a partial frame in h3-quinn; finishing or sending after it would be a connection error
//! for every tunnel of the connection, so such a stream is reset instead ([`H3Send`]).

use std::fmt;
use std::future::poll_fn;

use bytes::{Buf, Bytes};
use h3::error::Code;
use http::Response;

/// An HTTP/3 request stream's sending half on the client side.
pub(crate) type H3ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// An HTTP/3 request stream's receiving half on the client side.
pub(crate) type H3ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
/// An HTTP/3 request stream's sending half on the server side.
pub(crate) type H3ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// An HTTP/3 request stream's receiving half on the server side.
pub(crate) type H3ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The longest an HTTP/3 server waits to send an answer's headers.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The error of a stream, from either HTTP version.
#[derive(Debug)]
pub enum StreamError {
    /// HTTP/2.
    H2(h2::Error),
    /// HTTP/3 (or its QUIC connection).
    H3(h3::error::StreamError),
    /// The stream was answered already.
    Answered,
    /// A send on the stream was cancelled half-way: it was reset.
    Cancelled,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::H2(e) => e.fmt(f),
            Self::H3(e) => write!(f, "HTTP/3: {e}"),
            Self::Answered => f.write_str("the stream was answered already"),
            Self::Cancelled => f.write_str("a send was cancelled half-way: the stream was reset"),
        }
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::H2(e) => Some(e),
            Self::H3(e) => Some(e),
            Self::Answered | Self::Cancelled => None,
        }
    }
}

impl From<h2::Error> for StreamError {
    fn from(e: h2::Error) -> Self {
        Self::H2(e)
    }
}

impl From<h3::error::StreamError> for StreamError {
    fn from(e: h3::error::StreamError) -> Self {
        Self::H3(e)
    }
}

impl StreamError {
    /// Whether the peer reset the stream (as opposed to the connection failing): then nothing of
    /// ours is left open on it.
    pub fn is_reset(&self) -> bool {
        match self {
            Self::H2(e) => e.is_reset(),
            Self::H3(e) => matches!(e, h3::error::StreamError::RemoteTerminate { .. }),
            Self::Answered | Self::Cancelled => false,
        }
    }
}

/// The sending half of a tunnel stream.
#[derive(Debug)]
pub enum TunnelSend {
    /// An HTTP/2 stream.
    H2(h2::SendStream<Bytes>),
    /// An HTTP/3 request stream (boxed: HTTP/2's tunnels do not pay for its size).
    H3(Box<H3Send>),
}

/// The sending half of an HTTP/3 tunnel stream, reset when dropped unfinished.
pub struct H3Send {
    inner: H3SendInner,
    /// A client stream's use of its connection (kept open while the stream lives).
    _lease: Option<std::sync::Arc<super::quic::Lease>>,
    /// Finished or reset: nothing to do on drop.
    done: bool,
    /// A send started and did not return: if it was cancelled, the stream holds a partial frame.
    sending: bool,
    /// A UDP flow's datagrams, until its [`super::udp::DatagramStream`] takes them.
    pub(crate) datagrams: Option<FlowDatagrams>,
}

/// A UDP flow's HTTP/3 datagrams: sending and receiving ends.
pub(crate) type FlowDatagrams = (super::quic::DatagramSender, super::quic::DatagramReceiver);

enum H3SendInner {
    Client(H3ClientSend),
    Server(H3ServerSend),
}

impl fmt::Debug for H3Send {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H3Send")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl H3Send {
    pub(crate) fn client(send: H3ClientSend, lease: std::sync::Arc<super::quic::Lease>) -> Self {
        Self {
            inner: H3SendInner::Client(send),
            _lease: Some(lease),
            done: false,
            sending: false,
            datagrams: None,
        }
    }

    pub(crate) fn server(send: H3ServerSend) -> Self {
        Self {
            inner: H3SendInner::Server(send),
            _lease: None,
            done: false,
            sending: false,
            datagrams: None,
        }
    }

    /// Sends `data` as one DATA frame; returns once QUIC took all of it (its flow control is the
    /// back-pressure). Never cancelled half-way and then reused: h3 would fail the connection.
    async fn send(&mut self, data: Bytes) -> Result<(), StreamError> {
        self.usable()?;
        self.sending = true;
        match &mut self.inner {
            H3SendInner::Client(s) => s.send_data(data).await?,
            H3SendInner::Server(s) => s.send_data(data).await?,
        }
        self.sending = false;
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), StreamError> {
        self.usable()?;
        self.done = true;
        match &mut self.inner {
            H3SendInner::Client(s) => s.finish().await?,
            H3SendInner::Server(s) => s.finish().await?,
        }
        Ok(())
    }

    /// Sends a server's answer (headers), within [`ANSWER_TIMEOUT`]: HTTP/3 flow-controls headers,
    /// and a client that grants no window must not hold the stream (or a task) for longer. Late, the
    /// stream is reset.
    async fn answer(&mut self, response: Response<()>) -> Result<(), StreamError> {
        let H3SendInner::Server(send) = &mut self.inner else {
            return Err(StreamError::Answered);
        };
        self.sending = true;
        match tokio::time::timeout(ANSWER_TIMEOUT, send.send_response(response)).await {
            Ok(answered) => answered?,
            Err(_) => {
                self.reset();
                return Err(StreamError::Cancelled);
            }
        }
        self.sending = false;
        Ok(())
    }

    /// Whether the stream may be written: not after a send was cancelled half-way (then it is
    /// reset here, and the caller told).
    fn usable(&mut self) -> Result<(), StreamError> {
        if self.sending {
            self.reset();
            return Err(StreamError::Cancelled);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.done = true;
        match &mut self.inner {
            H3SendInner::Client(s) => s.stop_stream(Code::H3_CONNECT_ERROR),
            H3SendInner::Server(s) => s.stop_stream(Code::H3_CONNECT_ERROR),
        }
    }
}

impl Drop for H3Send {
    fn drop(&mut self) {
        if !self.done {
            self.reset();
        }
    }
}

/// What one send of a [`TunnelSend`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// All of it went.
    All,
    /// The stream can no longer send (the peer reset it; its error surfaces on receive).
    Closed,
}

impl TunnelSend {
    /// Sends `data`, in pieces of at most `piece` bytes on HTTP/2 as its flow-control window
    /// allows (window is reserved only for data in hand, so a tunnel waiting for its socket holds
    /// none of the connection's window from the others).
    pub async fn send(&mut self, mut data: Bytes, piece: usize) -> Result<Sent, StreamError> {
        match self {
            Self::H2(send) => {
                while !data.is_empty() {
                    let Some(window) = h2_window(send, data.len()).await? else {
                        return Ok(Sent::Closed);
                    };
                    send.send_data(data.split_to(window.min(data.len()).min(piece)), false)?;
                }
                Ok(Sent::All)
            }
            Self::H3(send) => {
                // Boxed here and below: HTTP/2's tunnels do not carry h3's futures in theirs.
                Box::pin(send.send(data)).await?;
                Ok(Sent::All)
            }
        }
    }

    /// Sends `data` whole (one HTTP/2 DATA frame once the window has room for all of it), for
    /// messages that must not be cut (capsules).
    pub async fn send_whole(&mut self, data: Bytes) -> Result<Sent, StreamError> {
        match self {
            Self::H2(send) => {
                let wanted = data.len();
                send.reserve_capacity(wanted);
                while send.capacity() < wanted {
                    match poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => return Ok(Sent::Closed),
                    }
                }
                send.send_data(data, false)?;
                Ok(Sent::All)
            }
            Self::H3(send) => {
                // Boxed here and below: HTTP/2's tunnels do not carry h3's futures in theirs.
                Box::pin(send.send(data)).await?;
                Ok(Sent::All)
            }
        }
    }

    /// Ends the stream cleanly (END_STREAM; a QUIC FIN).
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        match self {
            Self::H2(send) => Ok(send.send_data(Bytes::new(), true)?),
            Self::H3(send) => Ok(Box::pin(send.finish()).await?),
        }
    }

    /// Aborts the stream (RST_STREAM; RESET_STREAM with `H3_CONNECT_ERROR`).
    pub fn reset(&mut self) {
        match self {
            Self::H2(send) => send.send_reset(h2::Reason::CANCEL),
            Self::H3(send) => send.reset(),
        }
    }

    /// A UDP flow's HTTP/3 datagrams, once (none over HTTP/2, or for a TCP tunnel).
    pub(crate) fn take_datagrams(&mut self) -> Option<FlowDatagrams> {
        match self {
            Self::H2(_) => None,
            Self::H3(send) => send.datagrams.take(),
        }
    }

    /// The HTTP/2 stream, if this is one (for what only HTTP/2 serves: waypoints' byte streams).
    pub fn into_h2(self) -> Option<h2::SendStream<Bytes>> {
        match self {
            Self::H2(send) => Some(send),
            Self::H3(_) => None,
        }
    }
}

/// Waits until the peer's flow-control window lets us send some of `wanted` bytes, and returns how
/// much (`None`: the stream can no longer send). `poll_capacity` only reports *changes* of
/// capacity, so capacity already granted is read with `capacity()` first.
async fn h2_window(
    send: &mut h2::SendStream<Bytes>,
    wanted: usize,
) -> Result<Option<usize>, StreamError> {
    send.reserve_capacity(wanted);
    loop {
        let granted = send.capacity();
        if granted > 0 {
            return Ok(Some(granted));
        }
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(None),
        }
    }
}

/// The receiving half of a tunnel stream.
#[derive(Debug)]
pub enum TunnelRecv {
    /// An HTTP/2 stream.
    H2(h2::RecvStream),
    /// An HTTP/3 request stream (boxed, as for sending).
    H3(Box<H3Recv>),
}

/// The receiving half of an HTTP/3 tunnel stream.
pub struct H3Recv(H3RecvInner);

enum H3RecvInner {
    Client(H3ClientRecv),
    Server(H3ServerRecv),
}

impl fmt::Debug for H3Recv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H3Recv").finish_non_exhaustive()
    }
}

impl H3Recv {
    pub(crate) fn client(recv: H3ClientRecv) -> Self {
        Self(H3RecvInner::Client(recv))
    }

    pub(crate) fn server(recv: H3ServerRecv) -> Self {
        Self(H3RecvInner::Server(recv))
    }

    /// The client's half, to read the response with.
    pub(crate) fn as_client(&mut self) -> Option<&mut H3ClientRecv> {
        match &mut self.0 {
            H3RecvInner::Client(recv) => Some(recv),
            H3RecvInner::Server(_) => None,
        }
    }
}

impl TunnelRecv {
    /// The next chunk from the peer; `None` at the end of the data (then [`TunnelRecv::end`]
    /// tells a clean end from a reset). An HTTP/2 chunk's window is given back with
    /// [`TunnelRecv::release`], once the chunk has been passed on.
    pub async fn data(&mut self) -> Option<Result<Bytes, StreamError>> {
        match self {
            Self::H2(recv) => recv.data().await.map(|r| r.map_err(StreamError::H2)),
            Self::H3(recv) => {
                let H3Recv(inner) = &mut **recv;
                let received = match inner {
                    H3RecvInner::Client(r) => {
                        Box::pin(r.recv_data()).await.map(|c| c.map(into_bytes))
                    }
                    H3RecvInner::Server(r) => {
                        Box::pin(r.recv_data()).await.map(|c| c.map(into_bytes))
                    }
                };
                received.map_err(StreamError::H3).transpose()
            }
        }
    }

    /// Gives `n` bytes of flow-control window back to the peer (HTTP/2; QUIC gives it back as
    /// data is read).
    pub fn release(&mut self, n: usize) -> Result<(), StreamError> {
        match self {
            Self::H2(recv) => Ok(recv.flow_control().release_capacity(n)?),
            Self::H3(_) => Ok(()),
        }
    }

    /// After the last chunk: `Ok` for a clean end, the error for a reset that ended the data.
    pub async fn end(&mut self) -> Result<(), StreamError> {
        match self {
            Self::H2(recv) => {
                poll_fn(|cx| recv.poll_trailers(cx)).await?;
                Ok(())
            }
            Self::H3(recv) => {
                match &mut recv.0 {
                    H3RecvInner::Client(r) => Box::pin(r.recv_trailers()).await?,
                    H3RecvInner::Server(r) => Box::pin(r.recv_trailers()).await?,
                };
                Ok(())
            }
        }
    }

    /// The HTTP/2 stream, if this is one (see [`TunnelSend::into_h2`]).
    pub fn into_h2(self) -> Option<h2::RecvStream> {
        match self {
            Self::H2(recv) => Some(recv),
            Self::H3(_) => None,
        }
    }
}

/// A received chunk as bytes (h3 hands out `Bytes` already: no copy).
fn into_bytes(mut chunk: impl Buf) -> Bytes {
    let n = chunk.remaining();
    chunk.copy_to_bytes(n)
}

/// How a server answers a tunnel's request.
pub enum Responder {
    /// On HTTP/2.
    H2(h2::server::SendResponse<Bytes>),
    /// On HTTP/3: the request stream's sending half, taken by the answer (boxed, as for tunnels),
    /// and a UDP flow's datagrams.
    H3(Option<Box<H3ServerSend>>, Option<Box<FlowDatagrams>>),
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::H2(r) => f.debug_tuple("H2").field(r).finish(),
            Self::H3(r, _) => f.debug_tuple("H3").field(&r.is_some()).finish(),
        }
    }
}

impl Responder {
    /// Sends `response` (headers only); the stream stays open for data.
    pub async fn send_response(
        &mut self,
        response: Response<()>,
    ) -> Result<TunnelSend, StreamError> {
        match self {
            Self::H2(respond) => Ok(TunnelSend::H2(respond.send_response(response, false)?)),
            Self::H3(send, datagrams) => {
                let Some(send) = send.take() else {
                    return Err(StreamError::Answered);
                };
                // Wrapped first: an answer that fails or is cancelled half-way resets the stream.
                let mut send = H3Send::server(*send);
                send.datagrams = datagrams.take().map(|d| *d);
                Box::pin(send.answer(response)).await?;
                Ok(TunnelSend::H3(Box::new(send)))
            }
        }
    }

    /// Answers with `response` and ends the stream, without waiting: on HTTP/3 the answer is
    /// sent by a task of its own (a few bytes into the stream's window, which holds them at once).
    pub fn send_final(&mut self, response: Response<()>) {
        match self {
            Self::H2(respond) => {
                // Fails only if the stream is already gone; nothing is left to tell.
                let _ = respond.send_response(response, true);
            }
            Self::H3(send, _) => {
                if let Some(send) = send.take() {
                    let mut send = H3Send::server(*send);
                    tokio::spawn(async move {
                        if send.answer(response).await.is_ok() {
                            let _ = send.finish().await;
                        }
                    });
                }
            }
        }
    }
}

/// Answers a stream with an error `status` and ends it.
pub fn refuse(respond: &mut Responder, status: http::StatusCode) {
    let response = Response::builder()
        .status(status)
        .body(())
        .expect("a status-only response is valid");
    respond.send_final(response);
}
