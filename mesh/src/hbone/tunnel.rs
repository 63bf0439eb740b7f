//! Splicing a TCP socket with a tunnel stream (HTTP/2 or HTTP/3), both ways, with TCP's semantics
//! carried over:
//!
//! - a FIN from the socket becomes END_STREAM (a QUIC FIN), and END_STREAM becomes a FIN
//!   (half-close: the other direction keeps flowing);
//! - a reset of the socket becomes a reset of the stream, and a reset of the stream (or the loss of
//!   its whole connection) becomes a TCP reset, so neither application mistakes an abort for a
//!   clean end.
//!
//! Memory: a chunk read from the socket is sent as the peer's window allows before the next read
//! (backpressure end to end); window is reserved only for data in hand, and a buffer exists only
//! while data is in flight: an idle tunnel holds neither.

use std::io;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{Sent, StreamError, TunnelRecv, TunnelSend};
use crate::reader::{LastRead, Reader};

/// The largest chunk read from the socket at once.
pub const CHUNK: usize = 64 * 1024;

/// What a tunnel reads from its socket at once: a chunk less an HTTP/2 frame header (9 bytes), so
/// that a read sent as one DATA frame fills exactly four TLS records of 16 KiB instead of four and
/// a fifth of 9 bytes (rustls cuts the frame's header and payload, written together, into records
/// of 16 KiB of plaintext).
const READ: usize = CHUNK - 9;

/// What a bulk tunnel reads at once: once it has moved [`BULK_AFTER`] bytes one way and its last
/// read filled its buffer, four reads' worth, sent as four DATA frames of one [`READ`] each (each
/// still four full records). Fewer, larger reads from the application's socket mean fewer window
/// updates sent back to it, each a trip through its TCP stack on this thread (`cargo xtask bench`,
/// docs/benchmarks.md). Frames keep the 64 KiB limit: a receiver's frame buffer, which h2 takes
/// before any flow-control check and keeps for the connection's life, is not made larger. After a
/// short read the tunnel reads [`READ`] again.
const BULK_READ: usize = 4 * READ;

/// Bytes a tunnel moves one way before it may read [`BULK_READ`] at once.
const BULK_AFTER: u64 = 1 << 20;

/// Bytes moved by a finished tunnel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the socket into the stream.
    pub to_stream: u64,
    /// From the stream into the socket.
    pub to_socket: u64,
}

/// How a tunnel ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The stream was reset by the peer, or its connection failed; the socket was reset.
    #[error("stream aborted: {0}")]
    Stream(#[source] StreamError),
    /// The socket failed or was reset; the stream was reset.
    #[error("socket aborted: {0}")]
    Socket(#[source] io::Error),
}

/// Runs the tunnel until both directions have ended, calling `on_to_stream` / `on_to_socket` with
/// each chunk's size as it passes (for live byte counters). `last`: what a read of `socket` made
/// before (early data's, [`super::EarlyData::last_read`]) left known of it.
pub async fn splice(
    socket: &mut TcpStream,
    last: LastRead,
    mut send: TunnelSend,
    mut recv: TunnelRecv,
    on_to_stream: impl Fn(usize),
    on_to_socket: impl Fn(usize),
) -> Result<Transferred, TunnelError> {
    let result = {
        let (mut rd, mut wr) = socket.split();
        tokio::try_join!(
            socket_to_stream(Reader::new(&mut rd, last), &mut send, &on_to_stream),
            stream_to_socket(&mut recv, &mut wr, &on_to_socket),
        )
    };
    match result {
        Ok((to_stream, to_socket)) => Ok(Transferred {
            to_stream,
            to_socket,
        }),
        Err(TunnelError::Socket(e)) => {
            // The receiving half is dropped on return: on HTTP/3 that asks the peer to stop sending.
            send.reset();
            Err(TunnelError::Socket(e))
        }
        Err(TunnelError::Stream(e)) => {
            abort_socket(socket);
            if !e.is_reset() {
                // Our side of the stream may still be open (connection lost): close it too.
                send.reset();
            }
            Err(TunnelError::Stream(e))
        }
    }
}

/// Makes the next close of `socket` a reset (RST) instead of a FIN.
pub fn abort_socket(socket: &TcpStream) {
    // Fails only on a socket that is already gone, which is as good as reset.
    let _ = socket.set_zero_linger();
}

/// A read buffer with less room than this is replaced by a fresh one of [`CHUNK`] bytes.
const MIN_READ: usize = 4 * 1024;

async fn socket_to_stream(
    mut rd: Reader<'_, '_>,
    send: &mut TunnelSend,
    on_chunk: &impl Fn(usize),
) -> Result<u64, TunnelError> {
    let mut total = 0u64;
    let mut buf = BytesMut::new();
    let mut read = READ;
    loop {
        if buf.capacity() < MIN_READ {
            buf.reserve(if read == READ { CHUNK } else { 4 * CHUNK });
        }
        let n = match rd.read(&mut (&mut buf).limit(read)).await {
            Some(Ok(n)) => n,
            None => {
                // Nothing to send: wait without a buffer, so an idle tunnel holds none.
                buf = BytesMut::new();
                rd.readable().await.map_err(TunnelError::Socket)?;
                continue;
            }
            Some(Err(e)) => return Err(TunnelError::Socket(e)),
        };
        if n == 0 {
            send.finish().await.map_err(TunnelError::Stream)?;
            return Ok(total);
        }
        total += n as u64;
        on_chunk(n);
        read = if n == read && total >= BULK_AFTER {
            BULK_READ
        } else {
            READ
        };
        let data = buf.split().freeze();
        if send.send(data, READ).await.map_err(TunnelError::Stream)? == Sent::Closed {
            // The peer reset the stream; its error surfaces on receive.
            return Ok(total);
        }
    }
}

async fn stream_to_socket(
    recv: &mut TunnelRecv,
    wr: &mut (impl AsyncWrite + Unpin),
    on_chunk: &impl Fn(usize),
) -> Result<u64, TunnelError> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(TunnelError::Stream)?;
        let n = chunk.len();
        wr.write_all(&chunk).await.map_err(TunnelError::Socket)?;
        recv.release(n).map_err(TunnelError::Stream)?;
        total += n as u64;
        on_chunk(n);
    }
    // END_STREAM, or a reset that arrives as trailers' error: check before closing cleanly.
    recv.end().await.map_err(TunnelError::Stream)?;
    wr.shutdown().await.map_err(TunnelError::Socket)?;
    Ok(total)
}
