//! Relaying bytes between two TCP sockets (plaintext paths: passthrough, PERMISSIVE inbound, the
//! same-node path), both ways, a FIN from one side becoming a shutdown of the other and an abort
//! (reset, or any error) of either side an abort of both.
//!
//! Unlike `tokio::io::copy_bidirectional`, which keeps two buffers for a connection's whole life, a
//! direction takes a buffer only while its socket has data to read and drops it once drained: an
//! idle connection holds none.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use crate::hbone::{CHUNK, abort_socket};

/// Relays until both directions have ended; returns the bytes moved from `a` to `b` and from `b`
/// to `a`. The first I/O error ends the relay.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    relay_counted(a, b, |_| {}, |_| {}).await
}

/// [`relay`], telling `a_to_b` and `b_to_a` of each chunk as it is written (live byte counters).
pub async fn relay_counted(
    a: &mut TcpStream,
    b: &mut TcpStream,
    a_to_b: impl FnMut(usize),
    b_to_a: impl FnMut(usize),
) -> io::Result<(u64, u64)> {
    let relayed = {
        let (a_rd, mut a_wr) = a.split();
        let (b_rd, mut b_wr) = b.split();
        tokio::try_join!(
            one_way(&a_rd, &mut b_wr, a_to_b),
            one_way(&b_rd, &mut a_wr, b_to_a)
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

async fn one_way(
    rd: &ReadHalf<'_>,
    wr: &mut WriteHalf<'_>,
    mut written: impl FnMut(usize),
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf = Vec::new();
    loop {
        rd.readable().await?;
        if buf.is_empty() {
            buf = vec![0u8; CHUNK];
        }
        match rd.try_read(&mut buf) {
            Ok(0) => {
                wr.shutdown().await?;
                return Ok(total);
            }
            Ok(n) => {
                wr.write_all(&buf[..n]).await?;
                written(n);
                total += n as u64;
            }
            // Drained: wait for more without a buffer.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_reset_on_one_side_reaches_the_other_as_a_reset_not_an_end() {
        for server_resets in [true, false] {
            let (mut client, mut a) = pair().await;
            let (mut b, mut server) = pair().await;
            let relayed = tokio::spawn(async move { relay(&mut a, &mut b).await });
            client.write_all(b"part of a request").await.unwrap();
            let mut got = [0u8; 17];
            server.read_exact(&mut got).await.unwrap();
            let (aborting, mut other) = if server_resets {
                (server, client)
            } else {
                (client, server)
            };
            abort_socket(&aborting);
            drop(aborting);
            assert!(relayed.await.unwrap().is_err(), "the relay saw the reset");
            let mut buf = [0u8; 16];
            let read = other.read(&mut buf).await;
            assert_eq!(
                read.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionReset),
                "server reset: {server_resets}"
            );
        }
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts_bytes() {
        let (mut client, mut a) = pair().await;
        let (mut b, mut server) = pair().await;
        // Live counts, chunk by chunk, as the same-node path's metrics take them.
        let (up_live, down_live) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up_count, down_count) = (up_live.clone(), down_live.clone());
        let relayed = tokio::spawn(async move {
            relay_counted(
                &mut a,
                &mut b,
                move |n| {
                    up_count.fetch_add(n as u64, Ordering::Relaxed);
                },
                move |n| {
                    down_count.fetch_add(n as u64, Ordering::Relaxed);
                },
            )
            .await
        });

        // More than one chunk from the client, then its FIN; the server still answers after it.
        let request = vec![7u8; 3 * CHUNK + 5];
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request, "the server reads everything, then EOF");
        server
            .write_all(b"answer after the client's FIN")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer after the client's FIN");

        let (up, down) = relayed.await.unwrap().unwrap();
        assert_eq!((up, down), (request.len() as u64, answer.len() as u64));
        assert_eq!(
            (
                up_live.load(Ordering::Relaxed),
                down_live.load(Ordering::Relaxed)
            ),
            (up, down)
        );
    }
}
