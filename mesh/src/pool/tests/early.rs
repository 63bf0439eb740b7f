//! Early data through the pool: the first bytes go with the CONNECT, are retried with the stream
//! when the server refused it unprocessed, and are never replayed after a connection failure.

use std::sync::Mutex as StdMutex;

use bytes::Bytes;
use h2::server::SendResponse;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::identity::{FixedCert, server_config};

/// What the scripted server does with the n-th stream it receives (counted over all connections).
#[derive(Clone, Copy, Debug)]
enum Step {
    /// RST_STREAM(REFUSED_STREAM) at once: not processed.
    Refuse,
    /// Waits for the stream's first DATA *before* answering, then answers 200 and echoes.
    AnswerAfterData,
    /// Waits for the stream's first DATA, then drops the whole connection without answering.
    DropAfterData,
    /// Drops the whole connection without answering.
    DropAtOnce,
    /// Answers 200 at once and ends the stream when the client does.
    Answer,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    /// The first DATA of each stream that sent some before its answer.
    early: Vec<Bytes>,
}

async fn scripted_server(pki: &TestPki, script: Vec<Step>) -> (SocketAddr, Arc<StdMutex<Seen>>) {
    let cert = pki.issue(&id("server"));
    let tls = server_config(
        pki.bundle(),
        Arc::new(FixedCert(cert.certified_key().clone())),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(StdMutex::new(Seen::default()));
    let script = Arc::new(StdMutex::new(script.into_iter()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            record.lock().unwrap().connections += 1;
            let tls = TlsAcceptor::from(tls.clone()).accept(tcp).await.unwrap();
            let mut conn = h2::server::handshake(tls).await.unwrap();
            let (script, record) = (script.clone(), record.clone());
            tokio::spawn(async move {
                while let Some(Ok((request, respond))) = conn.accept().await {
                    let step = script
                        .lock()
                        .unwrap()
                        .next()
                        .expect("more streams than scripted");
                    let body = request.into_body();
                    match step {
                        Step::Refuse => {
                            let mut respond = respond;
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                        Step::AnswerAfterData => {
                            tokio::spawn(answer_after_data(body, respond, record.clone()));
                        }
                        Step::DropAfterData => {
                            let mut body = body;
                            let data = body.data().await.unwrap().unwrap();
                            record.lock().unwrap().early.push(data);
                            // The connection (and every stream on it) goes away unanswered.
                            return;
                        }
                        Step::DropAtOnce => return,
                        Step::Answer => {
                            let mut respond = respond;
                            let _ = respond.send_response(http::Response::new(()), false);
                            drop(body);
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn answer_after_data(
    mut body: h2::RecvStream,
    mut respond: SendResponse<Bytes>,
    record: Arc<StdMutex<Seen>>,
) {
    let Some(Ok(first)) = body.data().await else {
        return;
    };
    let _ = body.flow_control().release_capacity(first.len());
    record.lock().unwrap().early.push(first.clone());
    let mut send = respond
        .send_response(http::Response::new(()), false)
        .unwrap();
    send.send_data(first, false).unwrap();
    while let Some(Ok(more)) = body.data().await {
        let _ = body.flow_control().release_capacity(more.len());
        send.send_data(more, false).unwrap();
    }
    let _ = send.send_data(Bytes::new(), true);
}

/// An application connection whose first bytes are already written, and ztunnel's end of it.
async fn app_that_spoke_first(first: &[u8]) -> (TcpStream, TcpStream) {
    let (mut app, proxied) = socket_pair().await;
    app.write_all(first).await.unwrap();
    // Until the bytes are readable on the other end, so that the test does not race the kernel.
    proxied.readable().await.unwrap();
    (app, proxied)
}

/// A pool that reaches `server`, as ztunnel's would.
struct Client {
    pool: Pool,
    dialer: TestDialer,
    key: PoolKey,
}

impl Client {
    fn new(pki: Arc<TestPki>, server: SocketAddr) -> Self {
        Self {
            pool: Pool::new(PoolSettings::default()),
            dialer: TestDialer { pki },
            key: client_key(server),
        }
    }

    /// Opens a tunnel with early data; panics if it is not decided within 10 s.
    async fn open(&self, early: &mut EarlyData<'_>) -> Result<PooledStream, ConnectError> {
        let meta = TunnelMeta::default();
        let opening = self
            .pool
            .open(&self.key, target(), &meta, &self.dialer, Some(early));
        tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .expect("the CONNECT was not decided within 10 s")
    }
}

fn target() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

#[tokio::test]
async fn the_first_bytes_travel_before_the_answer_and_the_rest_follows_in_order() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let (server, seen) = scripted_server(&pki, vec![Step::AnswerAfterData]).await;
    let client = Client::new(pki, server);
    let (mut app, mut proxied) = app_that_spoke_first(b"hello ").await;

    // The server answers only after it has the stream's data: without early data this would wait
    // for ever.
    let mut early = EarlyData::new(&mut proxied);
    let opened = client.open(&mut early).await.unwrap();
    assert_eq!(early.len(), 6);
    let last = early.last_read();
    assert_eq!(last, LastRead::Short);
    let (send, recv, _guard) = opened;
    let tunnel = tokio::spawn(async move {
        splice(&mut proxied, last, send, recv, |_| {}, |_| {})
            .await
            .unwrap()
    });
    app.write_all(b"world").await.unwrap();
    app.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    app.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"hello world");
    // The splice counts only what it moved itself; the first bytes went with the CONNECT.
    assert_eq!(tunnel.await.unwrap().to_stream, 5);
    assert_eq!(
        seen.lock().unwrap().early,
        vec![Bytes::from_static(b"hello ")]
    );
}

/// Bytes already in the socket when the tunnel is opened, on a connection already in the pool, but
/// of which tokio has had no event yet (the socket is registered with it only then, not accepted
/// by it): they are read when the event comes, while the answer is awaited, and still travel
/// before it (the server answers only once it has them).
#[tokio::test]
async fn first_bytes_not_yet_seen_by_the_runtime_still_travel_before_the_answer() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let (server, seen) = scripted_server(&pki, vec![Step::Answer, Step::AnswerAfterData]).await;
    let client = Client::new(pki, server);
    // A first tunnel puts a connection in the pool.
    let (_first_app, mut first) = socket_pair().await;
    let (_send, _recv, _guard) = client.open(&mut EarlyData::new(&mut first)).await.unwrap();
    // Connected, written and accepted without the runtime, then handed to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut app = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    std::io::Write::write_all(&mut app, b"hello").unwrap();
    let (proxied, _) = listener.accept().unwrap();
    proxied.set_nonblocking(true).unwrap();
    let mut proxied = TcpStream::from_std(proxied).unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        proxied.poll_read_ready(&mut cx).is_pending(),
        "tokio cannot have had an event yet"
    );
    let mut early = EarlyData::new(&mut proxied);
    let opened = client.open(&mut early).await;
    assert!(opened.is_ok());
    assert_eq!(early.len(), 5);
    assert_eq!(
        seen.lock().unwrap().early,
        vec![Bytes::from_static(b"hello")]
    );
}

/// The first read stops short at TCP urgent data (which tokio takes for a drained socket) and the
/// bytes queued behind the mark get no event of their own: the splice is told the read was short,
/// and reads them after its quiet-time check instead of waiting for an event that never comes.
#[tokio::test]
async fn bytes_behind_urgent_data_in_the_first_read_follow_it() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let (server, _seen) = scripted_server(&pki, vec![Step::AnswerAfterData]).await;
    let client = Client::new(pki, server);
    let (mut app, mut proxied) = socket_pair().await;
    app.write_all(b"before").await.unwrap();
    rustix::net::send(&app, b"!", rustix::net::SendFlags::OOB).unwrap();
    app.write_all(b" after").await.unwrap();
    proxied.readable().await.unwrap();
    // Until the bytes before the mark are there (a peek stops at the mark too; on loopback the
    // bytes behind it were queued by the write that returned).
    let mut peek = [0u8; 32];
    while proxied.peek(&mut peek).await.unwrap() < b"before".len() {}
    let mut early = EarlyData::new(&mut proxied);
    let (send, recv, _guard) = client.open(&mut early).await.unwrap();
    assert_eq!(early.len(), b"before".len(), "the read stops at the mark");
    let last = early.last_read();
    assert_eq!(last, LastRead::Short);
    tokio::spawn(async move {
        let _ = splice(&mut proxied, last, send, recv, |_| {}, |_| {}).await;
    });
    let mut echoed = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), app.read_exact(&mut echoed))
        .await
        .expect("the bytes behind the mark were not carried")
        .unwrap();
    assert_eq!(&echoed, b"before after");
}

#[tokio::test]
async fn a_stream_refused_unprocessed_is_retried_with_the_same_first_bytes() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let (server, seen) = scripted_server(&pki, vec![Step::Refuse, Step::AnswerAfterData]).await;
    let client = Client::new(pki, server);
    let (_app, mut proxied) = app_that_spoke_first(b"GET / HTTP/1.1\r\n").await;
    let mut early = EarlyData::new(&mut proxied);
    let opened = client.open(&mut early).await;
    assert!(opened.is_ok());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.early, vec![Bytes::from_static(b"GET / HTTP/1.1\r\n")]);
    assert_eq!(seen.connections, 1);
}

#[tokio::test]
async fn first_bytes_sent_on_a_connection_that_failed_are_not_replayed_elsewhere() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let (server, seen) =
        scripted_server(&pki, vec![Step::DropAfterData, Step::AnswerAfterData]).await;
    let client = Client::new(pki, server);
    let (_app, mut proxied) = app_that_spoke_first(b"POST /pay").await;
    let mut early = EarlyData::new(&mut proxied);
    let opened = client.open(&mut early).await;
    let err = opened.expect_err("the tunnel failed");
    assert!(matches!(err, ConnectError::H2(_)), "{err}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.early, vec![Bytes::from_static(b"POST /pay")]);
    assert_eq!(
        seen.connections, 1,
        "the bytes were sent once, on one connection"
    );
}

#[tokio::test]
async fn a_tunnel_that_sent_nothing_yet_is_still_redialled_once_after_a_failure() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let (server, seen) = scripted_server(&pki, vec![Step::DropAtOnce, Step::Answer]).await;
    let client = Client::new(pki, server);
    // A server-speaks-first protocol: the client has written nothing.
    let (_app, mut proxied) = socket_pair().await;
    let mut early = EarlyData::new(&mut proxied);
    let opened = client.open(&mut early).await;
    assert!(opened.is_ok());
    assert!(early.is_empty());
    assert_eq!(seen.lock().unwrap().connections, 2);
}
