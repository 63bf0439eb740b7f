use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::hbone::{H2Client, H2Settings, LastRead, splice};
use crate::identity::client_config;
use crate::testing::{TestPki, socket_pair, spawn_hbone_server, spawn_hbone_server_with};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

struct TestDialer {
    pki: Arc<TestPki>,
}

impl Dialer for TestDialer {
    fn dial<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<HboneClient, ConnectError>> {
        Box::pin(async move {
            let cert = self.pki.issue(&key.src);
            let tls = client_config(self.pki.bundle(), &cert, vec![key.dst.clone()]);
            let tcp = TcpStream::connect(key.dst_addr)
                .await
                .map_err(ConnectError::Tcp)?;
            Ok(H2Client::handshake(tcp, tls, &H2Settings::default())
                .await?
                .into())
        })
    }
}

struct Setup {
    pool: Pool,
    dialer: TestDialer,
    key: PoolKey,
    echo: SocketAddr,
}

async fn setup(settings: PoolSettings) -> Setup {
    setup_with(settings, None).await
}

/// With `max_streams`, the server accepts only that many streams at once per connection.
async fn setup_with(settings: PoolSettings, max_streams: Option<u32>) -> Setup {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let server = match max_streams {
        None => spawn_hbone_server(&pki, &id("server"), Some(&id("client"))).await,
        Some(n) => {
            let h2 = H2Settings {
                max_concurrent_streams: n,
                ..H2Settings::default()
            };
            spawn_hbone_server_with(&pki, &id("server"), Some(&id("client")), h2).await
        }
    };
    let echo_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = echo_listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    Setup {
        pool: Pool::new(settings),
        dialer: TestDialer { pki },
        key: client_key(server),
        echo,
    }
}

/// The key of the test client's tunnels to `server`.
fn client_key(server: SocketAddr) -> PoolKey {
    PoolKey {
        src: id("client"),
        src_ip: "127.0.0.1".parse().unwrap(),
        dst: id("server"),
        dst_addr: server,
    }
}

/// One round trip through a pooled tunnel; returns the guard to keep the tunnel counted.
async fn round_trip(s: &Setup) -> StreamGuard {
    let (send, recv, guard) = s
        .pool
        .open(&s.key, s.echo, &TunnelMeta::default(), &s.dialer, None)
        .await
        .unwrap();
    let (mut app, mut proxied) = socket_pair().await;
    let task = tokio::spawn(async move {
        splice(&mut proxied, LastRead::Tracked, send, recv, |_| {}, |_| {}).await
    });
    app.write_all(b"ping").await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");
    task.await.unwrap().unwrap();
    guard
}

#[tokio::test]
async fn sequential_tunnels_share_one_connection() {
    let s = setup(PoolSettings::default()).await;
    for _ in 0..5 {
        drop(round_trip(&s).await);
    }
    assert_eq!(s.pool.opened_total(), 1);
    assert_eq!(s.pool.connections(), 1);
}

#[tokio::test]
async fn concurrent_tunnels_spread_over_connections_up_to_the_limit() {
    let s = setup(PoolSettings {
        max_connections_per_key: 3,
        ..PoolSettings::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(round_trip(&s).await);
    }
    assert_eq!(
        s.pool.opened_total(),
        3,
        "busy connections are not queued behind"
    );
    for _ in 0..3 {
        held.push(round_trip(&s).await);
    }
    assert_eq!(
        s.pool.opened_total(),
        3,
        "at the limit, connections are shared"
    );
    drop(held);
    drop(round_trip(&s).await);
    assert_eq!(s.pool.opened_total(), 3);
}

#[tokio::test]
async fn idle_connections_expire() {
    let s = setup(PoolSettings {
        idle_timeout: Duration::from_millis(200),
        ..PoolSettings::default()
    })
    .await;
    drop(round_trip(&s).await);
    assert_eq!(s.pool.connections(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.pool.connections(), 0);
    drop(round_trip(&s).await);
    assert_eq!(s.pool.opened_total(), 2);
}

#[tokio::test]
async fn when_every_connection_is_full_another_is_opened_beyond_the_limit() {
    let s = setup_with(
        PoolSettings {
            max_connections_per_key: 1,
            ..PoolSettings::default()
        },
        Some(2),
    )
    .await;
    // Learn the server's limit (its SETTINGS arrive with the first exchange).
    drop(round_trip(&s).await);
    let mut open = Vec::new();
    for i in 0..5 {
        let tunnel = tokio::time::timeout(
            Duration::from_secs(5),
            s.pool
                .open(&s.key, s.echo, &TunnelMeta::default(), &s.dialer, None),
        )
        .await
        .unwrap_or_else(|_| panic!("tunnel {i} waited for a stream slot"))
        .unwrap();
        open.push(tunnel);
    }
    assert_eq!(
        s.pool.opened_total(),
        3,
        "2 streams per connection: 5 tunnels need 3"
    );
}

#[tokio::test]
async fn a_burst_on_a_fresh_connection_beyond_the_server_limit_is_retried_not_refused() {
    let s = setup_with(
        PoolSettings {
            max_connections_per_key: 1,
            ..PoolSettings::default()
        },
        Some(4),
    )
    .await;
    // All at once, before the server's SETTINGS (and its limit of 4) can have arrived.
    let meta = TunnelMeta::default();
    let opens = (0..12).map(|_| s.pool.open(&s.key, s.echo, &meta, &s.dialer, None));
    let tunnels = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(opens),
    )
    .await
    .expect("tunnels waited");
    for (i, tunnel) in tunnels.iter().enumerate() {
        assert!(tunnel.is_ok(), "tunnel {i}: {:?}", tunnel.as_ref().err());
    }
    assert!(
        s.pool.opened_total() >= 3,
        "4 streams per connection: 12 tunnels need at least 3 connections"
    );
}

mod early;

/// A tunnel given up while it opens (its flow ended, a timeout) gives its place on the connection
/// back: the connection is not left counting a stream that never was.
#[tokio::test]
async fn a_tunnel_given_up_while_it_opens_gives_its_place_back() {
    let s = setup(PoolSettings::default()).await;
    drop(round_trip(&s).await);
    let active = |s: &Setup| -> Vec<usize> {
        s.pool
            .lock()
            .values()
            .flat_map(|slot| slot.conns.iter().map(|c| c.active()))
            .collect()
    };
    assert_eq!(active(&s), [0]);
    let meta = TunnelMeta::default();
    let mut opening = Box::pin(s.pool.open(&s.key, s.echo, &meta, &s.dialer, None));
    // Polled once: the pooled connection is claimed and the CONNECT awaits its answer.
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(opening.as_mut().poll(cx))).await;
    assert!(polled.is_pending(), "the answer cannot be there yet");
    assert_eq!(active(&s), [1]);
    drop(opening);
    assert_eq!(active(&s), [0]);
}
