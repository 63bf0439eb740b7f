//! HBONE over HTTP/3 in one process over loopback, as `super::super::tests` does it over HTTP/2:
//! what the application and the target observe through a tunnel is the same (bytes both ways,
//! half-close, resets both ways, refusals as statuses), and the identities are verified alike.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::hbone::{EarlyData, LastRead, TunnelMeta, connect_request, parse_connect, splice};
use crate::identity::{Identity, client_config as tls_client};
use crate::testing::{
    REFUSED_PORT, TestPki, end_observer, socket_pair, spawn_draining_hbone_quic_server,
    spawn_hbone_quic_server, splice_to_app, target, with_timeout,
};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

fn client_endpoint() -> quinn::Endpoint {
    endpoint(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), None).unwrap()
}

/// A client of `proxy` with `as_id`'s certificate from `pki`, expecting `expected`.
async fn connect(
    pki: &TestPki,
    proxy: SocketAddr,
    as_id: &str,
    expected: &str,
) -> Result<H3Client, ConnectError> {
    let cert = pki.issue(&id(as_id));
    let tls = tls_client(pki.bundle(), &cert, vec![id(expected)]);
    let settings = H2Settings::default();
    let config = client_config(&tls, &settings).unwrap();
    H3Client::connect(&client_endpoint(), config, proxy, &settings).await
}

/// Opens a tunnel to `target` and returns the application's end of it.
async fn tunnel(client: &H3Client, target: SocketAddr) -> TcpStream {
    let (send, recv) = client
        .open(connect_request(target, &TunnelMeta::default()), None)
        .await
        .unwrap();
    splice_to_app(send, recv).await
}

async fn server(pki: &TestPki) -> SocketAddr {
    spawn_hbone_quic_server(pki, &id("server"), Some(&id("client"))).await
}

#[tokio::test]
async fn bytes_flow_both_ways_and_a_half_close_crosses_over_http3() {
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    let echo = target(|mut tcp| async move {
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.unwrap();
        tcp.write_all(&buf).await.unwrap();
    })
    .await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    assert_eq!(client.peer(), &id("server"));
    let mut app = tunnel(&client, echo).await;
    // Past the stream's 1 MiB window: flow control, not buffering, carries it.
    let payload: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = app.split();
    let write = async {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let (_, read) = with_timeout(async { tokio::join!(write, rd.read_to_end(&mut back)) }).await;
    read.unwrap();
    assert!(back == payload, "all bytes echoed after the half-close");
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_draining_server_serves_its_open_tunnel_to_the_end_then_closes_the_connection() {
    let pki = TestPki::new("cluster.local");
    let (drain, draining) = tokio::sync::watch::channel(false);
    let (proxy, mut ends) = spawn_draining_hbone_quic_server(&pki, &id("server"), draining).await;
    let echo = target(|tcp| async move {
        let (mut rd, mut wr) = tcp.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    })
    .await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let mut app = tunnel(&client, echo).await;
    drain.send_replace(true);
    // Its GOAWAY reaches the client: no new tunnel on this connection, which the pool then
    // leaves for a new one.
    with_timeout(async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Opened (before the GOAWAY came) or refused: either way, then dropped.
            let _ = client
                .open(connect_request(echo, &TunnelMeta::default()), None)
                .await;
        }
    })
    .await;
    // The tunnel open before goes on.
    app.write_all(b"still here").await.unwrap();
    let mut back = [0; 10];
    with_timeout(app.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"still here");
    assert!(
        ends.try_recv().is_err(),
        "the connection ended under its tunnel"
    );
    // Once it ends, so does the connection (long before QUIC's idle timeout): the draining
    // ztunnel holding it may exit.
    drop(app);
    let served = with_timeout(ends.recv())
        .await
        .expect("the connection's end");
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test]
async fn a_target_reset_reaches_the_client_as_a_reset_and_a_client_reset_the_target() {
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    let resetter = target(|mut tcp| async move {
        let mut buf = [0u8; 1];
        tcp.read_exact(&mut buf).await.unwrap();
        tcp.set_zero_linger().unwrap();
        drop(tcp);
    })
    .await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let mut app = tunnel(&client, resetter).await;
    app.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 16];
    let err = with_timeout(app.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);

    let (observer, rx) = end_observer().await;
    let mut app = tunnel(&client, observer).await;
    app.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.set_zero_linger().unwrap();
    drop(app);
    assert_eq!(
        with_timeout(rx).await.unwrap(),
        ErrorKind::ConnectionReset,
        "an abort is not passed on as a clean end"
    );
}

#[tokio::test]
async fn a_tunnel_dropped_half_way_is_reset_at_the_target_not_finished() {
    // Dropping the client's halves (a task cancelled, a pod released) must not look like a FIN:
    // QUIC would finish a dropped stream; veil resets it.
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    let (observer, rx) = end_observer().await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let (mut send, recv) = client
        .open(connect_request(observer, &TunnelMeta::default()), None)
        .await
        .unwrap();
    send.send(bytes::Bytes::from_static(b"partial"), 1024)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop((send, recv));
    assert_eq!(with_timeout(rx).await.unwrap(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn refusals_come_back_as_statuses_and_early_data_goes_with_the_request() {
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let refused: SocketAddr = format!("127.0.0.1:{REFUSED_PORT}").parse().unwrap();
    let err = client
        .open(connect_request(refused, &TunnelMeta::default()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Status(StatusCode::UNAUTHORIZED)),
        "{err}"
    );
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
    // The client's first bytes, read from its socket while the CONNECT is answered.
    let echo = target(|tcp| async move {
        let (mut rd, mut wr) = tcp.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    })
    .await;
    let (mut app, mut proxied) = socket_pair().await;
    app.write_all(b"first bytes").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut early = EarlyData::new(&mut proxied);
    let (send, recv) = client
        .open(
            connect_request(echo, &TunnelMeta::default()),
            Some(&mut early),
        )
        .await
        .unwrap();
    assert_eq!(early.len(), b"first bytes".len(), "sent with the request");
    let last = early.last_read();
    tokio::spawn(async move {
        let _ = splice(&mut proxied, last, send, recv, |_| {}, |_| {}).await;
    });
    let mut back = [0u8; 11];
    with_timeout(app.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"first bytes");
}

#[tokio::test]
async fn identities_are_verified_as_over_http2() {
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    // The server is not who the client expects: the handshake fails.
    let err = connect(&pki, proxy, "client", "someone-else")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Quic(_)), "{err}");
    // A client whose certificate the server's roots do not sign: refused.
    let stranger = TestPki::new("cluster.local");
    let cert = stranger.issue(&id("client"));
    let tls = tls_client(pki.bundle(), &cert, vec![id("server")]);
    let settings = H2Settings::default();
    let config = client_config(&tls, &settings).unwrap();
    let refused = async {
        let client = H3Client::connect(&client_endpoint(), config, proxy, &settings).await?;
        // TLS 1.3: a client certificate is judged after the client's handshake ends; the
        // server's refusal arrives with the first stream at the latest.
        client
            .open(connect_request(proxy, &TunnelMeta::default()), None)
            .await
    };
    assert!(with_timeout(refused).await.is_err());
}

#[test]
fn h3s_plain_connect_is_read_as_the_plain_connect_it_is_and_nothing_else_is() {
    let request = |uri: &str| {
        Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .body(())
            .unwrap()
    };
    // h3 0.0.8's plain CONNECT: `:scheme https`, `:path /`.
    let plain = from_h3(request("https://10.0.0.1:8080/"));
    assert_eq!(
        parse_connect(&plain).unwrap().target,
        "10.0.0.1:8080".parse().unwrap()
    );
    // Anything else stays as sent, for parse_connect to refuse.
    assert!(parse_connect(&from_h3(request("https://10.0.0.1:8080/x"))).is_err());
    assert!(parse_connect(&from_h3(request("http://10.0.0.1:8080/"))).is_err());
    // `:protocol` comes across in HTTP/2's form: connect-udp as such, anything else refused.
    let udp = crate::hbone::udp::connect_udp_request(
        "10.0.0.1:53".parse().unwrap(),
        &TunnelMeta::default(),
    );
    let udp = from_h3(to_h3(udp));
    assert!(crate::hbone::udp::is_connect_udp(&udp));
    assert!(crate::hbone::udp::parse_connect_udp(&udp).is_ok());
    let mut web = request("https://10.0.0.1:8080/");
    web.extensions_mut()
        .insert(h3::ext::Protocol::WEB_TRANSPORT);
    let web = from_h3(web);
    assert!(parse_connect(&web).is_err());
    assert!(!crate::hbone::udp::is_connect_udp(&web));
    // And the client's side: connect-udp leaves as h3's own `:protocol`.
    let out = to_h3(crate::hbone::udp::connect_udp_request(
        "10.0.0.1:53".parse().unwrap(),
        &TunnelMeta::default(),
    ));
    assert_eq!(
        out.extensions().get::<h3::ext::Protocol>(),
        Some(&h3::ext::Protocol::CONNECT_UDP)
    );
    assert!(out.extensions().get::<h2::ext::Protocol>().is_none());
}

#[tokio::test]
async fn an_application_reset_while_the_tunnel_waits_for_the_peer_ends_the_splice_cleanly() {
    // The receiving half is mid-read when the socket fails: stopping it then would find h3-quinn's
    // stream taken by the read (a panic, which skipped the access log and metrics).
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    let silent = target(|mut tcp| async move {
        let mut buf = [0u8; 64];
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let (send, recv) = client
        .open(connect_request(silent, &TunnelMeta::default()), None)
        .await
        .unwrap();
    let (mut app, mut proxied) = socket_pair().await;
    tokio::spawn(async move {
        app.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.set_zero_linger().unwrap();
    });
    let spliced = with_timeout(splice(
        &mut proxied,
        LastRead::Tracked,
        send,
        recv,
        |_| {},
        |_| {},
    ))
    .await;
    assert!(
        matches!(spliced, Err(crate::hbone::TunnelError::Socket(_))),
        "{spliced:?}"
    );
}

#[tokio::test]
async fn a_send_cancelled_half_way_resets_its_stream_and_spares_the_connection() {
    let pki = TestPki::new("cluster.local");
    let proxy = server(&pki).await;
    // Never reads: the stream's window closes behind a large send.
    let (hold, held) = tokio::sync::mpsc::channel::<TcpStream>(4);
    let stuck = target(move |tcp| {
        let hold = hold.clone();
        async move {
            let _ = hold.send(tcp).await;
        }
    })
    .await;
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let (mut send, _recv) = client
        .open(connect_request(stuck, &TunnelMeta::default()), None)
        .await
        .unwrap();
    let big = bytes::Bytes::from(vec![7u8; 64 << 20]);
    let cancelled =
        tokio::time::timeout(Duration::from_millis(500), send.send(big, 64 << 20)).await;
    assert!(cancelled.is_err(), "the send should have been stuck");
    // Finishing now would close a half-written frame: a connection error for every stream on it.
    let finished = send.finish().await;
    assert!(
        matches!(finished, Err(crate::hbone::StreamError::Cancelled)),
        "{finished:?}"
    );
    drop(held);
    // The connection still carries tunnels.
    let echo = target(|tcp| async move {
        let (mut rd, mut wr) = tcp.into_split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    })
    .await;
    let mut app = tunnel(&client, echo).await;
    app.write_all(b"still up").await.unwrap();
    let mut back = [0u8; 8];
    with_timeout(app.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"still up");
    assert!(!client.is_closed());
}

/// A QUIC server relaying each `CONNECT-UDP` flow to its target, and the address it serves on.
async fn udp_relay_server(pki: &TestPki) -> SocketAddr {
    use crate::hbone::InboundStream;
    use crate::hbone::udp::{CAPSULE_PROTOCOL, DatagramStream, parse_connect_udp, relay_datagrams};
    use crate::identity::{FixedCert, server_config as tls_config};

    let cert = pki.issue(&id("server"));
    let tls = tls_config(
        pki.bundle(),
        std::sync::Arc::new(FixedCert(cert.certified_key().clone())),
    );
    let settings = H2Settings::default();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let endpoint = endpoint(socket, Some(server_config(&tls, &settings).unwrap())).unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let settings = settings.clone();
            tokio::spawn(async move {
                let handler = |mut stream: InboundStream| async move {
                    let target = parse_connect_udp(&stream.request).unwrap().target;
                    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    socket.connect(target).await.unwrap();
                    let mut response = http::Response::new(());
                    response.headers_mut().insert(
                        CAPSULE_PROTOCOL.clone(),
                        http::HeaderValue::from_static("?1"),
                    );
                    let send = stream.respond.send_response(response).await.unwrap();
                    let mut flow = DatagramStream::new(send, stream.request.into_body());
                    let idle = Duration::from_secs(30);
                    let _ = relay_datagrams(&socket, &mut flow, None, idle, |_| {}, |_| {}).await;
                };
                let _ =
                    serve_connection(incoming, &settings, handler, std::future::pending(), || {})
                        .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_udp_flow_over_http3_sends_datagrams_as_quic_datagrams_and_large_ones_as_capsules() {
    use crate::hbone::udp::{DatagramStream, connect_udp_request};
    let pki = TestPki::new("cluster.local");
    let proxy = udp_relay_server(&pki).await;
    let app = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = connect(&pki, proxy, "client", "server").await.unwrap();
    let (send, recv) = client
        .open(
            connect_udp_request(app.local_addr().unwrap(), &TunnelMeta::default()),
            None,
        )
        .await
        .unwrap();
    let mut flow = DatagramStream::new(send, recv);
    let sent_before = client.conn.stats().frame_tx.datagram;
    flow.send(b"small").await.unwrap();
    let mut buf = vec![0; 65_536];
    let (n, relay) = with_timeout(app.recv_from(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"small");
    assert_eq!(
        client.conn.stats().frame_tx.datagram,
        sent_before + 1,
        "a small payload goes as a QUIC datagram"
    );
    // Larger than any QUIC datagram on this path: a capsule on the stream, delivered whole.
    let large = vec![9u8; 8_000];
    flow.send(&large).await.unwrap();
    let (n, _) = with_timeout(app.recv_from(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], &large[..]);
    assert_eq!(client.conn.stats().frame_tx.datagram, sent_before + 1);
    // The way back: datagrams from the application arrive both ways too.
    app.send_to(b"answer", relay).await.unwrap();
    assert_eq!(
        with_timeout(flow.recv()).await.unwrap().as_deref(),
        Some(&b"answer"[..])
    );
    app.send_to(&large, relay).await.unwrap();
    assert_eq!(
        with_timeout(flow.recv()).await.unwrap().as_deref(),
        Some(&large[..])
    );
    assert!(
        client.conn.stats().frame_rx.datagram >= 1,
        "answers came as datagrams"
    );
}
