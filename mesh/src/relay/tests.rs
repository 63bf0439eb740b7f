use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::*;
use crate::testing::socket_pair;

#[tokio::test]
async fn a_reset_on_one_side_reaches_the_other_as_a_reset_not_an_end() {
    for (server_resets, pipes) in [(true, 0), (false, 0), (true, 4), (false, 4)] {
        let limit = pipes;
        let pipes = Pipes::new(limit);
        let (mut client, mut a) = socket_pair().await;
        let (mut b, mut server) = socket_pair().await;
        let relayed = tokio::spawn(async move { relay(&mut a, &mut b, &pipes).await });
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
            "server reset: {server_resets}, pipes: {limit}"
        );
    }
}

/// Bytes no two chunks of which are alike, so that a reordered or repeated part shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

#[tokio::test]
async fn relays_both_ways_with_half_close_and_counts_bytes() {
    // No pipes (copied), one (one direction spliced, the other copied), enough for both, of the
    // kernel's size and of 1 MiB.
    for (limit, capacity) in [(0, 0), (1, 0), (4, 0), (4, 1 << 20)] {
        let pipes = Arc::new(Pipes::new(limit).with_capacity(capacity));
        let (mut client, mut a) = socket_pair().await;
        let (mut b, mut server) = socket_pair().await;
        // Live counts, chunk by chunk, as the same-node path's metrics take them.
        let (up_live, down_live) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up_count, down_count) = (up_live.clone(), down_live.clone());
        let relaying = pipes.clone();
        let relayed = tokio::spawn(async move {
            relay_counted(
                &mut a,
                &mut b,
                &relaying,
                move |n| {
                    up_count.fetch_add(n as u64, Ordering::Relaxed);
                },
                move |n| {
                    down_count.fetch_add(n as u64, Ordering::Relaxed);
                },
            )
            .await
        });

        // Many pipes' and buffers' worth from the client, then its FIN; the server reads it in small
        // parts (the relay's writes block on a full socket) and still answers after the FIN.
        let request = pattern(64 * CHUNK + 5);
        let sent = request.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        let mut part = vec![0u8; 4096];
        loop {
            let n = server.read(&mut part).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&part[..n]);
        }
        assert!(
            got == request,
            "the server reads everything in order, then EOF ({limit} pipes)"
        );
        let mut client = writer.await.unwrap();
        let answer = pattern(3 * CHUNK + 17);
        server.write_all(&answer).await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(
            got == answer,
            "the answer after the client's FIN ({limit} pipes)"
        );

        let (up, down) = relayed.await.unwrap().unwrap();
        assert_eq!((up, down), (request.len() as u64, answer.len() as u64));
        assert_eq!(
            (
                up_live.load(Ordering::Relaxed),
                down_live.load(Ordering::Relaxed)
            ),
            (up, down)
        );
        // The pipes used are kept, empty, for the next relay: never more than the limit.
        assert!(pipes.live() <= limit, "{} pipes of {limit}", pipes.live());
        if limit > 0 {
            assert!(pipes.spliced() > 0, "the relay spliced ({limit} pipes)");
        } else {
            assert_eq!(pipes.spliced(), 0);
        }
    }
}

#[tokio::test]
async fn small_bursts_are_copied_without_a_pipe() {
    let pipes = Pipes::new(8);
    let (mut client, mut a) = socket_pair().await;
    let (mut b, mut server) = socket_pair().await;
    client.write_all(b"a request").await.unwrap();
    client.shutdown().await.unwrap();
    server.write_all(b"an answer").await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(relay(&mut a, &mut b, &pipes).await.unwrap(), (9, 9));
    assert_eq!(pipes.live(), 0);
}

#[tokio::test]
async fn pipes_are_reused_not_made_per_connection() {
    let pipes = Pipes::new(8);
    for round in 0..20 {
        let (mut client, mut a) = socket_pair().await;
        let (mut b, mut server) = socket_pair().await;
        // More than a buffer's worth: spliced.
        let message = pattern(2 * CHUNK + round);
        let sent = message.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        server.shutdown().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        relay(&mut a, &mut b, &pipes).await.unwrap();
        writer.await.unwrap();
        assert!(reader.await.unwrap() == message);
    }
    assert!(
        (1..=2).contains(&pipes.live()),
        "one relay at a time needs at most two pipes: {}",
        pipes.live()
    );
}

#[tokio::test]
async fn urgent_data_is_stepped_over_not_taken_for_a_stall_or_an_end() {
    // splice(2) stops at TCP urgent data; recv steps over the urgent byte (as the copy path always
    // did). With a FIN queued behind the mark, a splice reports an end; without, nothing at all.
    // A recv stops short at the mark, which tokio takes for a drained socket (it then waits for
    // the next event, and none comes for the bytes already queued behind the mark).
    for (mode, fin) in [
        (Mode::Splice, true),
        (Mode::Splice, false),
        (Mode::Copy, true),
        (Mode::Copy, false),
    ] {
        let pipes = Arc::new(Pipes::new(4));
        let (mut client, mut a) = socket_pair().await;
        let (mut b, mut server) = socket_pair().await;
        // All of it queued before the relay's first read, which splices.
        client.write_all(b"before the mark ").await.unwrap();
        rustix::net::send(&client, b"!", rustix::net::SendFlags::OOB).unwrap();
        client.write_all(b"after the mark").await.unwrap();
        if fin {
            client.shutdown().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let relaying = pipes.clone();
        let relayed = tokio::spawn(async move {
            relay_from(&mut a, &mut b, &relaying, mode, |_| {}, |_| {}).await
        });
        let mut got = [0u8; 30];
        let read = tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got)).await;
        assert!(
            read.is_ok(),
            "the bytes past the mark never came ({mode:?}, FIN: {fin})"
        );
        read.unwrap()
            .unwrap_or_else(|e| panic!("{e}: {mode:?}, FIN: {fin}"));
        assert_eq!(
            &got, b"before the mark after the mark",
            "{mode:?}, FIN: {fin}"
        );
        if mode == Mode::Splice {
            assert_eq!(pipes.spliced(), 16, "what preceded the mark was spliced");
        }
        if !fin {
            client.shutdown().await.unwrap();
        }
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{mode:?}, FIN: {fin}");
        server.shutdown().await.unwrap();
        relayed.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_relay_cut_with_bytes_in_its_pipe_closes_the_pipe() {
    let pipes = Arc::new(Pipes::new(4).with_capacity(1 << 20));
    let (mut client, mut a) = socket_pair().await;
    let (mut b, _server) = socket_pair().await;
    let relaying = pipes.clone();
    let relayed = tokio::spawn(async move {
        relay_from(&mut a, &mut b, &relaying, Mode::Splice, |_| {}, |_| {}).await
    });
    // The server never reads: once every buffer on the way is full, the relay waits to write
    // what its pipe holds.
    let writer = tokio::spawn(async move {
        let _ = client.write_all(&pattern(64 << 20)).await;
        client
    });
    let stalled = async {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if pipes.spliced() == last && last > 0 {
                break;
            }
            last = pipes.spliced();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("the relay spliced and then stalled");
    assert_eq!(pipes.live(), 1, "one direction holds a pipe");
    relayed.abort();
    assert!(relayed.await.unwrap_err().is_cancelled());
    assert_eq!(
        pipes.live(),
        0,
        "the pipe with bytes in it was closed, not kept"
    );
    writer.abort();
}
