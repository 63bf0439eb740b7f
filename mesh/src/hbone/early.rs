//! Early data: a tunnel's first bytes travel with its `CONNECT` instead of after its `200`.
//!
//! A client that speaks first (HTTP, TLS, most protocols) has usually written its first bytes by
//! the time ztunnel opens the tunnel for it. Sending them right behind the `CONNECT` saves a round
//! trip between the two ends on every new connection. Nothing about admission changes: the
//! destination buffers the bytes in the stream (its flow-control window bounds them) and writes
//! them to the application only once it has authorized the tunnel and connected; a refused tunnel's
//! bytes are dropped with its stream, and the client's connection is reset as before.
//!
//! Reads. The socket is read through tokio's `poll_read`, which takes a read that stops short as
//! draining the socket; the splice is told ([`EarlyData::last_read`]) and waits for the kernel's
//! next event instead of reading again to be told there is nothing ([`crate::hbone::LastRead`]).
//! (`try_read` left tokio's readiness set after a short read: the splice's first read found
//! nothing on nearly every new connection.)
//!
//! Bounds and replay. While the answer is awaited at most one read (16 KiB) is taken from
//! the socket and kept, so that a stream the server refused unprocessed (`REFUSED_STREAM`) can be
//! retried with the same bytes. Bytes that went out on a connection that then failed are never
//! replayed on another one: the server may already have delivered them, and an application behind
//! a direct TCP connection never sees its bytes twice either.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Response;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::client::ConnectError;
use super::stream::TunnelSend;
use crate::reader::LastRead;

/// The most read from the socket before the answer: a request's head, a TLS ClientHello.
const EARLY: usize = 16 * 1024;

/// The first bytes of a tunnel, read from its socket while the `CONNECT` is answered.
#[derive(Debug)]
pub struct EarlyData<'a> {
    socket: &'a mut TcpStream,
    /// What was read (at most [`EARLY`] bytes), kept for a retry.
    read: Bytes,
    /// No more is read before the answer: a read is in hand, or the socket said end of stream
    /// (which the tunnel reads again, and carries, once it is open).
    done: bool,
    /// What the read left known of the socket.
    last: LastRead,
}

impl<'a> EarlyData<'a> {
    /// Nothing read yet from `socket`.
    pub fn new(socket: &'a mut TcpStream) -> Self {
        Self {
            socket,
            read: Bytes::new(),
            done: false,
            last: LastRead::Tracked,
        }
    }

    /// What the read left known of the socket, for the splice that reads it next.
    pub fn last_read(&self) -> LastRead {
        self.last
    }

    /// The bytes taken from the socket (and sent on the tunnel once it is open).
    pub fn len(&self) -> usize {
        self.read.len()
    }

    /// Whether no byte was taken from the socket. Bytes are sent on the stream as soon as they are
    /// read: when this is false, some went out, and a failure of their connection must not be
    /// retried elsewhere.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty()
    }

    /// Sends what the socket has (now and until `response` arrives, one read at most) on `stream`,
    /// and returns the response.
    pub(crate) async fn send_until_answered<B, E>(
        &mut self,
        stream: &mut TunnelSend,
        response: impl Future<Output = Result<Response<B>, E>>,
    ) -> Result<Response<B>, ConnectError>
    where
        ConnectError: From<E>,
    {
        // Bytes already read (for a stream the server refused) go first, in the same flight as
        // the CONNECT's headers; so do bytes already in the socket, if tokio takes it for readable
        // (it does a socket it has just accepted). Others go as soon as their event comes, still
        // before the answer.
        if self.read.is_empty() && !self.done {
            self.try_read()?;
        }
        self.send(stream).await?;
        tokio::pin!(response);
        while !self.done {
            tokio::select! {
                biased;
                answered = &mut response => return Ok(answered?),
                readable = self.socket.readable() => {
                    readable.map_err(ConnectError::Source)?;
                    self.try_read()?;
                    self.send(stream).await?;
                }
            }
        }
        Ok(response.await?)
    }

    async fn send(&mut self, stream: &mut TunnelSend) -> Result<(), ConnectError> {
        if self.read.is_empty() {
            return Ok(());
        }
        match stream {
            // Queued without reserved capacity: h2 sends it as the window allows (16 KiB is well
            // inside every HBONE peer's initial window, and inside HTTP/2's default one).
            TunnelSend::H2(send) => Ok(send.send_data(self.read.clone(), false)?),
            // Inside QUIC's initial window too: this does not wait for the answer. Boxed: HTTP/2's
            // tunnels do not carry h3's future in theirs.
            h3 => {
                Box::pin(h3.send(self.read.clone(), EARLY)).await?;
                Ok(())
            }
        }
    }

    /// Reads what the socket has, if tokio takes it for readable (else nothing, and no system
    /// call), into a buffer of its size (a read that finds nothing allocates nothing).
    fn try_read(&mut self) -> Result<(), ConnectError> {
        let mut first = [0u8; EARLY];
        let mut buf = ReadBuf::new(&mut first);
        // Polled once, not awaited: the caller waits for readiness with the answer.
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut *self.socket).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n > 0 {
                    self.read = Bytes::copy_from_slice(buf.filled());
                }
                if n > 0 && n < EARLY {
                    self.last = LastRead::Short;
                }
                self.done = true;
            }
            Poll::Ready(Err(e)) => return Err(ConnectError::Source(e)),
            Poll::Pending => {}
        }
        Ok(())
    }
}
