//! Relaying bytes between two TCP sockets (plaintext paths: passthrough, PERMISSIVE inbound, the
//! same-node path), both ways, a FIN from one side becoming a shutdown of the other and an abort
//! (reset, or any error) of either side an abort of both.
//!
//! Bulk goes through a pipe with `splice(2)` when one can be had ([`Pipes`]): the kernel moves the
//! bytes from socket to socket and ztunnel never touches them. A direction splices once a read has
//! filled a whole buffer, and keeps splicing while its bursts are that large; everything else goes
//! through a buffer which, unlike `tokio::io::copy_bidirectional`'s two kept for a connection's
//! whole life, a direction takes only while its socket has data to read and drops once drained: an
//! idle connection holds neither buffer nor pipe.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::WriteHalf;

use crate::hbone::{CHUNK, abort_socket};
use crate::reader::{LastRead, Reader};

mod splice;

pub use splice::Pipes;

/// Relays until both directions have ended; returns the bytes moved from `a` to `b` and from `b`
/// to `a`. The first I/O error ends the relay.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream, pipes: &Pipes) -> io::Result<(u64, u64)> {
    relay_counted(a, b, pipes, |_| {}, |_| {}).await
}

/// [`relay`], telling `a_to_b` and `b_to_a` of each chunk as it is written (live byte counters).
pub async fn relay_counted(
    a: &mut TcpStream,
    b: &mut TcpStream,
    pipes: &Pipes,
    a_to_b: impl FnMut(usize),
    b_to_a: impl FnMut(usize),
) -> io::Result<(u64, u64)> {
    relay_from(a, b, pipes, Mode::Copy, a_to_b, b_to_a).await
}

/// [`relay_counted`], both directions reading their first burst as `first` says.
async fn relay_from(
    a: &mut TcpStream,
    b: &mut TcpStream,
    pipes: &Pipes,
    first: Mode,
    a_to_b: impl FnMut(usize),
    b_to_a: impl FnMut(usize),
) -> io::Result<(u64, u64)> {
    let relayed = {
        let (mut a_rd, mut a_wr) = a.split();
        let (mut b_rd, mut b_wr) = b.split();
        tokio::try_join!(
            one_way(
                Reader::new(&mut a_rd, LastRead::Tracked),
                &mut b_wr,
                pipes,
                first,
                a_to_b
            ),
            one_way(
                Reader::new(&mut b_rd, LastRead::Tracked),
                &mut a_wr,
                pipes,
                first,
                b_to_a
            )
        )
    };
    if relayed.is_err() {
        // An abort on either side reaches the other as one (when the caller closes them), as
        // through a tunnel: neither application takes a cut-off transfer for a complete one.
        abort_socket(a);
        abort_socket(b);
    }
    relayed
}

/// How a direction reads its next burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Through a buffer: small bursts (a request, an answer) cost neither a pipe nor a call more.
    Copy,
    /// Through a pipe: after a burst of a buffer's worth or more.
    Splice,
}

async fn one_way(
    mut rd: Reader<'_, '_>,
    wr: &mut WriteHalf<'_>,
    pipes: &Pipes,
    mut mode: Mode,
    mut written: impl FnMut(usize),
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = Vec::new();
    let mut pipe = None;
    // Bytes moved since the socket was last found drained.
    let mut burst = 0usize;
    loop {
        rd.readable().await?;
        if mode == Mode::Splice && pipe.is_none() {
            pipe = pipes.take();
        }
        if let Some(held) = &mut pipe {
            match held.fill(rd.socket()) {
                Ok(n) if n > 0 => {
                    held.drain(wr.as_ref(), &mut written).await?;
                    total += n as u64;
                    burst += n;
                    // Readiness waits and `try_io` spend none of the task's budget (a copy's
                    // writes do): without this, a busy pair of sockets would keep the worker
                    // thread from every other task, this relay's re-check included.
                    tokio::task::coop::consume_budget().await;
                    continue;
                }
                // Nothing spliced: the socket is drained, at its end, or stopped at TCP urgent
                // data, which splice never steps over (and then reports nothing, or an end if a
                // FIN is queued behind it) while `recv` does. The read below tells which.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if splice::unsupported(&e) => pipes.disable(),
                Err(e) => return Err(e),
            }
            pipe = None;
        }
        if buf.capacity() == 0 {
            buf = Vec::with_capacity(CHUNK);
        }
        buf.clear();
        match rd.read(&mut buf).await {
            Some(Ok(0)) => {
                wr.shutdown().await?;
                return Ok(total);
            }
            Some(Ok(n)) => {
                wr.write_all(&buf).await?;
                written(n);
                total += n as u64;
                burst += n;
                if n == buf.capacity() {
                    // A full buffer: more is likely behind it.
                    mode = Mode::Splice;
                } else {
                    // A short read drained the socket (the reader waits for the next event).
                    drained(&mut mode, &mut burst, &mut buf);
                }
            }
            None => drained(&mut mode, &mut burst, &mut buf),
            Some(Err(e)) => return Err(e),
        }
    }
}

/// A direction found its socket drained: the next burst is read as this one ended, and it waits
/// holding neither buffer nor pipe.
fn drained(mode: &mut Mode, burst: &mut usize, buf: &mut Vec<u8>) {
    *mode = if *burst >= CHUNK {
        Mode::Splice
    } else {
        Mode::Copy
    };
    *burst = 0;
    *buf = Vec::new();
}

#[cfg(test)]
mod tests;
