//! HBONE end to end in one process over loopback: an "application" socket on the client side, the
//! client proxy splicing it into a stream, the server proxy splicing the stream into a socket to a
//! "target" server. What the application and the target observe is what matters.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::WriteHalf;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::identity::{Identity, client_config};
use crate::testing::{
    REFUSED_PORT, TestPki, end_observer, spawn_hbone_server, spawn_hbone_server_with,
    splice_to_app, target, with_timeout,
};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

async fn server_proxy(pki: &TestPki) -> SocketAddr {
    spawn_hbone_server(pki, &id("server"), Some(&id("client"))).await
}

async fn client(pki: &TestPki, proxy: SocketAddr) -> H2Client {
    let cert = pki.issue(&id("client"));
    let tls = client_config(pki.bundle(), &cert, vec![id("server")]);
    let tcp = TcpStream::connect(proxy).await.unwrap();
    H2Client::handshake(tcp, tls, &H2Settings::default())
        .await
        .unwrap()
}

/// Opens a tunnel to `target` and returns the application's end of it.
async fn tunnel(client: &H2Client, target: SocketAddr) -> TcpStream {
    let (send, recv) = client
        .open(connect_request(target, &TunnelMeta::default()), None)
        .await
        .unwrap();
    splice_to_app(send, recv).await
}

#[tokio::test]
async fn data_flows_both_ways_and_a_client_fin_reaches_the_target() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    // Echo until EOF, then close.
    let echo = target(|mut tcp| async move {
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.unwrap();
        tcp.write_all(&buf).await.unwrap();
    })
    .await;
    let client = client(&pki, proxy).await;
    let mut app = tunnel(&client, echo).await;
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    with_timeout(app.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, payload, "all bytes echoed after the half-close");
}

#[tokio::test]
async fn a_bulk_tunnel_keeps_every_byte_in_order_and_small_writes_still_flow_after_it() {
    bulk_then_small(H2Settings::default()).await;
    // A server that takes only the smallest frames HTTP/2 allows: the client's bulk reads are
    // split further (by h2), not refused.
    bulk_then_small(H2Settings {
        max_frame_size: 16_384,
        ..H2Settings::default()
    })
    .await;
}

async fn bulk_then_small(server: H2Settings) {
    // Past a mebibyte a tunnel whose reads fill reads four chunks at once and sends them as four
    // frames: both directions at once, well past the switch, then small writes answered one by one.
    let pki = TestPki::new("cluster.local");
    let proxy = spawn_hbone_server_with(&pki, &id("server"), Some(&id("client")), server).await;
    let echo = target(|tcp| async move {
        let (mut rd, mut wr) = tcp.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    })
    .await;
    let client = client(&pki, proxy).await;
    let app = tunnel(&client, echo).await;
    let (mut rd, mut wr) = app.into_split();
    let payload: Vec<u8> = (0..6_000_011u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        // Uneven writes, so reads see every size.
        for piece in sent.chunks(100_003) {
            wr.write_all(piece).await.unwrap();
        }
        wr
    });
    let mut back = vec![0u8; payload.len()];
    with_timeout(rd.read_exact(&mut back)).await.unwrap();
    assert!(
        back == payload,
        "every byte echoed in order through a bulk tunnel"
    );
    let mut wr = writer.await.unwrap();
    for round in 0..20u8 {
        wr.write_all(&[round; 7]).await.unwrap();
        let mut answer = [0u8; 7];
        with_timeout(rd.read_exact(&mut answer)).await.unwrap();
        assert_eq!(answer, [round; 7], "a small write after bulk is answered");
    }
}

#[tokio::test]
async fn a_target_fin_reaches_the_client_which_can_still_send() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let half = target(move |mut tcp| {
        let tx = tx.lock().unwrap().take();
        async move {
            tcp.write_all(b"bye").await.unwrap();
            tcp.shutdown().await.unwrap();
            let mut rest = Vec::new();
            tcp.read_to_end(&mut rest).await.unwrap();
            let _ = tx.unwrap().send(rest);
        }
    })
    .await;
    let client = client(&pki, proxy).await;
    let mut app = tunnel(&client, half).await;
    let mut got = Vec::new();
    with_timeout(app.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"bye");
    app.write_all(b"still here").await.unwrap();
    app.shutdown().await.unwrap();
    assert_eq!(with_timeout(rx).await.unwrap(), b"still here");
}

/// Writes `data` with one byte of TCP urgent data after its first `mark` bytes.
async fn send_around_a_mark(wr: &mut WriteHalf<'_>, data: &[u8], mark: usize) {
    wr.write_all(&data[..mark]).await.unwrap();
    rustix::net::send(wr.as_ref(), b"!", rustix::net::SendFlags::OOB).unwrap();
    wr.write_all(&data[mark..]).await.unwrap();
}

#[tokio::test]
async fn bytes_behind_tcp_urgent_data_follow_it_both_ways() {
    // A read stops short at TCP urgent data, which tokio takes for a drained socket; the bytes
    // already queued behind the mark get no event of their own. The urgent byte itself is not
    // carried (HBONE has no out-of-band data); every other byte is, in order, both ways, short
    // and long (more behind the mark than one read takes).
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let client = client(&pki, proxy).await;
    for len in [12, 300_000] {
        let data: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
        let echo = target(move |mut tcp| async move {
            let (mut rd, mut wr) = tcp.split();
            let mut got = vec![0u8; len];
            if rd.read_exact(&mut got).await.is_ok() {
                send_around_a_mark(&mut wr, &got, 5).await;
                let _ = rd.read_to_end(&mut Vec::new()).await;
            }
        })
        .await;
        let mut app = tunnel(&client, echo).await;
        let (mut rd, mut wr) = app.split();
        let mut back = vec![0u8; len];
        let sent = send_around_a_mark(&mut wr, &data, 7);
        let (_, echoed) =
            with_timeout(async { tokio::join!(sent, rd.read_exact(&mut back)) }).await;
        echoed.unwrap();
        assert!(back == data, "{len} bytes with a mark: echoed otherwise");
    }
}

#[tokio::test]
async fn a_client_reset_reaches_the_target_as_a_reset() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let (observer, rx) = end_observer().await;
    let client = client(&pki, proxy).await;
    let app = tunnel(&client, observer).await;
    let mut app = app;
    app.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.set_zero_linger().unwrap();
    drop(app);
    assert_eq!(with_timeout(rx).await.unwrap(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_target_reset_reaches_the_client_as_a_reset() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let resetter = target(|mut tcp| async move {
        let mut buf = [0u8; 1];
        tcp.read_exact(&mut buf).await.unwrap();
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    })
    .await;
    let client = client(&pki, proxy).await;
    let mut app = tunnel(&client, resetter).await;
    app.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 16];
    let err = with_timeout(app.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn refusals_and_upstream_failures_come_back_as_statuses() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let client = client(&pki, proxy).await;
    let refused: SocketAddr = format!("127.0.0.1:{REFUSED_PORT}").parse().unwrap();
    let err = client
        .open(connect_request(refused, &TunnelMeta::default()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Status(StatusCode::UNAUTHORIZED)),
        "{err}"
    );
    // Nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client
        .open(connect_request(closed, &TunnelMeta::default()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Status(StatusCode::SERVICE_UNAVAILABLE)),
        "{err}"
    );
    assert_eq!(client.peer(), &id("server"));
    assert!(!client.is_closed());
}

#[tokio::test]
async fn one_connection_carries_many_concurrent_tunnels() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let echo = target(|mut tcp| async move {
        let (mut rd, mut wr) = tcp.split();
        tokio::io::copy(&mut rd, &mut wr).await.unwrap();
        wr.shutdown().await.unwrap();
    })
    .await;
    let client = Arc::new(client(&pki, proxy).await);
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut app = tunnel(&client, echo).await;
            let msg = vec![i; 10_000];
            app.write_all(&msg).await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for t in tasks {
        with_timeout(t).await.unwrap();
    }
}

/// A tunnel that has sent and now waits must not keep the connection's flow-control window: the
/// other tunnels of the connection still flow (regression: each tunnel used to reserve a whole
/// chunk of window in advance, so with the default 64 KiB connection window the first idle tunnel
/// starved all the others).
#[tokio::test]
async fn an_idle_tunnel_does_not_starve_the_others_of_window() {
    let pki = TestPki::new("cluster.local");
    let proxy = server_proxy(&pki).await;
    let echo = target(|mut tcp| async move {
        let (mut rd, mut wr) = tcp.split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    })
    .await;
    let client = client(&pki, proxy).await;
    let mut idle = Vec::new();
    for i in 0..8u8 {
        let mut app = tunnel(&client, echo).await;
        let msg = vec![i; 1024];
        with_timeout(async {
            app.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            app.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        })
        .await;
        // Kept open and idle while the next tunnels run.
        idle.push(app);
    }
}

/// A UDP echo server on loopback.
async fn udp_echo() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 65_536];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            socket.send_to(&buf[..n], from).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn udp_flows_carry_every_datagram_size_both_ways_and_end_when_idle() {
    use super::udp::{DatagramStream, FlowEnd, connect_udp_request};
    let pki = TestPki::new("cluster.local");
    let (proxy, mut ended) = udp_relay_server(&pki, Duration::from_millis(300)).await;
    let echo = udp_echo().await;
    let client = client(&pki, proxy).await;
    let (send, recv) = client
        .open(connect_udp_request(echo, &TunnelMeta::default()), None)
        .await
        .unwrap();
    let mut flow = DatagramStream::new(send, recv);
    // 65,507: the largest UDP payload over IPv4.
    let sizes = [0usize, 1, 63, 64, 1200, 16_383, 16_384, 65_000, 65_507];
    let mut total = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
        flow.send(&payload).await.unwrap();
        let back = with_timeout(flow.recv()).await.unwrap().unwrap();
        assert_eq!(back.len(), size);
        assert!(
            back[..] == payload[..],
            "datagram of {size} bytes came back changed"
        );
        total += size as u64;
    }
    // Nothing more is sent: the server's flow times out, and ends the stream.
    let (moved, end) = with_timeout(ended.recv()).await.unwrap();
    assert_eq!(end, FlowEnd::Idle);
    assert_eq!((moved.to_socket, moved.to_stream), (total, total));
    assert!(with_timeout(flow.recv()).await.unwrap().is_none());
}

/// Serves CONNECT-UDP streams on one HBONE connection: each is relayed to its target from a UDP
/// socket of its own, ending (cleanly) after `idle` without datagrams; how each flow ended comes out
/// of the receiver.
async fn udp_relay_server(
    pki: &TestPki,
    idle: Duration,
) -> (
    SocketAddr,
    tokio::sync::mpsc::Receiver<(Transferred, super::udp::FlowEnd)>,
) {
    use super::udp::{DatagramStream, FlowEnd, is_connect_udp, parse_connect_udp, relay_datagrams};
    let cert = pki.issue(&id("server"));
    let tls = crate::identity::server_config(
        pki.bundle(),
        Arc::new(crate::identity::FixedCert(cert.certified_key().clone())),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended_tx, ended) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let handler = move |mut stream: InboundStream| {
            let ended = ended_tx.clone();
            async move {
                assert!(is_connect_udp(&stream.request));
                let target = parse_connect_udp(&stream.request).unwrap().target;
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(target).await.unwrap();
                let send = stream
                    .respond
                    .send_response(http::Response::new(()))
                    .await
                    .unwrap();
                let mut flow = DatagramStream::new(send, stream.request.into_body());
                let relayed = relay_datagrams(&socket, &mut flow, None, idle, |_| {}, |_| {});
                let (moved, end) = relayed.await.unwrap();
                if end == FlowEnd::Idle {
                    flow.finish().await;
                }
                let _ = ended.send((moved, end)).await;
            }
        };
        let _ = serve_connection(
            tcp,
            tls,
            &H2Settings::default(),
            handler,
            std::future::pending(),
        )
        .await;
    });
    (addr, ended)
}

#[tokio::test]
async fn a_udp_flow_whose_peer_stops_reading_still_delivers_the_peers_datagrams() {
    use super::udp::{DatagramStream, connect_udp_request};
    let pki = TestPki::new("cluster.local");
    let (proxy, _ended) = udp_relay_server(&pki, Duration::from_secs(30)).await;
    let app = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = client(&pki, proxy).await;
    let (send, recv) = client
        .open(
            connect_udp_request(app.local_addr().unwrap(), &TunnelMeta::default()),
            None,
        )
        .await
        .unwrap();
    let mut flow = DatagramStream::new(send, recv);
    flow.send(b"hello").await.unwrap();
    let mut buf = vec![0; 65_536];
    let (_, relay) = with_timeout(app.recv_from(&mut buf)).await.unwrap();
    app.connect(relay).await.unwrap();
    // The application answers with 4 MB while the client reads nothing: the relay's way to the
    // client fills the stream's window (1 MiB) and stays full.
    let chunk = vec![7u8; 16_384];
    for _ in 0..256 {
        app.send(&chunk).await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // The other way must still flow: the relay waiting for the client's window must not stop
    // reading the client's datagrams (were both ends of a flow to wait so, neither would read).
    flow.send(b"STILL-FLOWING").await.unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = app.recv(&mut buf).await.unwrap();
            if &buf[..n] == b"STILL-FLOWING" {
                return;
            }
        }
    })
    .await;
    assert!(delivered.is_ok(), "the relay stopped reading the stream");
}
