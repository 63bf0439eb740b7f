//! An HTTP/2 stream as a byte stream (`AsyncRead + AsyncWrite`), for protocols spoken *inside* a
//! tunnel: the waypoint parses HTTP from a client's tunnel and speaks HTTP to endpoints over tunnels.
//!
//! Flow control follows the peer: a write takes only the window the peer granted; received data is
//! acknowledged as it is handed to the reader. Shutting down writes sends END_STREAM; dropping the
//! stream before that resets it (RST_STREAM), like dropping a TCP socket without a FIN.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::{TunnelRecv, TunnelSend};
use super::tunnel::CHUNK;

/// A tunnel stream as an I/O object.
#[derive(Debug)]
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    unread: Bytes,
    write_closed: bool,
}

impl H2Io {
    /// Wraps a stream's two halves.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            write_closed: false,
        }
    }

    /// Wraps a tunnel stream carried by HTTP/2; `None` for one carried by HTTP/3 (waypoints serve
    /// and dial HBONE over HTTP/2 only, so they never hold one).
    pub fn from_tunnel(send: TunnelSend, recv: TunnelRecv) -> Option<Self> {
        Some(Self::new(send.into_h2()?, recv.into_h2()?))
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_reset() {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(data)) => {
                    self.recv
                        .flow_control()
                        .release_capacity(data.len())
                        .map_err(to_io)?;
                    self.unread = data;
                }
            }
        }
        let n = buf.remaining().min(self.unread.len());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len().min(CHUNK));
        // `poll_capacity` reports changes only: read what is already granted first.
        let granted = loop {
            let granted = self.send.capacity();
            if granted > 0 {
                break granted;
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        let n = granted.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
