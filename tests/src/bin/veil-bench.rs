//! The benchmarks' load tool, run inside pods by `cargo xtask bench`: servers (sink, fixed-size
//! request/response, one-exchange connections, HTTP) and the clients that drive them. Every client
//! prints one JSON line with what it measured. A plain TLS 1.3 tunnel, built from veil's own TLS
//! configuration and certificates from the mesh CA, gives the "same crypto without the mesh" baseline.

#![allow(
    clippy::print_stdout,
    reason = "the harness reads this program's output"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve: a sink (reads to EOF, then closes), fixed-size request/response, one exchange per
    /// connection, and HTTP/1.1 + h2c answering every request with a small body.
    Serve {
        #[arg(long, default_value = "9001")]
        sink: u16,
        #[arg(long, default_value = "9002")]
        rr: u16,
        #[arg(long, default_value = "9003")]
        conn: u16,
        #[arg(long, default_value = "9080")]
        http: u16,
        /// Request and response size of the request/response port.
        #[arg(long, default_value = "1024")]
        size: usize,
        /// UDP echo port (every datagram answered with itself).
        #[arg(long, default_value = "9004")]
        udp: u16,
    },
    /// Bulk transfer to a sink on `streams` connections for `seconds`; counts what the sink
    /// received (the time runs until the sink has read everything and closed).
    Throughput {
        target: SocketAddr,
        #[arg(long, default_value = "1")]
        streams: usize,
        #[arg(long, default_value = "5")]
        seconds: f64,
    },
    /// Request/response round trips of `size` bytes each way, on `conns` connections in parallel.
    Rr {
        target: SocketAddr,
        #[arg(long, default_value = "1")]
        conns: usize,
        #[arg(long, default_value = "5")]
        seconds: f64,
        #[arg(long, default_value = "1024")]
        size: usize,
    },
    /// UDP request/response: `size`-byte datagrams echoed, on `flows` sockets in parallel, each
    /// in a closed loop; a datagram unanswered for 200 ms counts as lost and is sent again.
    UdpRr {
        target: SocketAddr,
        #[arg(long, default_value = "1")]
        flows: usize,
        #[arg(long, default_value = "5")]
        seconds: f64,
        #[arg(long, default_value = "1024")]
        size: usize,
    },
    /// New connections: connect, one small exchange, close; `concurrency` at a time.
    Connrate {
        target: SocketAddr,
        #[arg(long, default_value = "4")]
        concurrency: usize,
        #[arg(long, default_value = "5")]
        seconds: f64,
    },
    /// Opens `conns` connections and keeps them open and idle until killed.
    Hold {
        target: SocketAddr,
        #[arg(long)]
        conns: usize,
    },
    /// HTTP GET `url` in a closed loop: HTTP/1.1 on `concurrency` keep-alive connections, or with
    /// `--h2` `concurrency` streams on one connection (prior knowledge). `--rate` paces the total.
    Http {
        url: http::Uri,
        #[arg(long)]
        h2: bool,
        #[arg(long, default_value = "16")]
        concurrency: usize,
        #[arg(long, default_value = "5")]
        seconds: f64,
        /// Requests per second in total (0: as fast as possible).
        #[arg(long, default_value = "0")]
        rate: u64,
    },
    /// A plain TLS 1.3 tunnel, client end: accepts plaintext on `listen` and carries each connection
    /// over its own mutual-TLS connection to `upstream` (a `tls-server`).
    TlsClient {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[command(flatten)]
        cert: CertArgs,
        /// The identity the server must prove.
        #[arg(long)]
        expect: String,
    },
    /// A plain TLS 1.3 tunnel, server end: accepts mutual TLS on `listen` and forwards the plaintext
    /// to `upstream`.
    /// Many subscribers on veil-controller; how long a change takes to reach them all.
    XdsLoad(xds::Load),
    /// veil's own xDS subscriber (what a ztunnel runs) on veil-controller: its memory per workload
    /// and CPU per change.
    XdsClient(xds::Client),
    /// A stand-in Kubernetes API server holding a generated cluster (the scale benchmark).
    Api(api::Cluster),
    TlsServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[command(flatten)]
        cert: CertArgs,
    },
}

/// Where the tunnel's certificate comes from: the mesh CA.
#[derive(clap::Args)]
struct CertArgs {
    #[arg(long)]
    identity: String,
    #[arg(long)]
    ca: String,
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    token: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Serve {
            sink,
            rr,
            conn,
            http,
            size,
            udp,
        } => serve(sink, rr, conn, http, size, udp).await,
        Mode::Throughput {
            target,
            streams,
            seconds,
        } => throughput(target, streams, secs(seconds)).await,
        Mode::Rr {
            target,
            conns,
            seconds,
            size,
        } => round_trips(target, conns, secs(seconds), size).await,
        Mode::UdpRr {
            target,
            flows,
            seconds,
            size,
        } => udp_round_trips(target, flows, secs(seconds), size).await,
        Mode::Connrate {
            target,
            concurrency,
            seconds,
        } => connection_rate(target, concurrency, secs(seconds)).await,
        Mode::Hold { target, conns } => hold(target, conns).await,
        Mode::Http {
            url,
            h2,
            concurrency,
            seconds,
            rate,
        } => http_load(url, h2, concurrency, secs(seconds), rate).await,
        Mode::TlsClient {
            listen,
            upstream,
            cert,
            expect,
        } => tls::client(listen, upstream, &cert, &expect).await,
        Mode::TlsServer {
            listen,
            upstream,
            cert,
        } => tls::server(listen, upstream, &cert).await,
        Mode::XdsLoad(load) => xds::run(load).await,
        Mode::Api(cluster) => api::run(cluster).await,
        Mode::XdsClient(c) => xds::client(c).await,
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Large enough that a bulk sender or sink makes few system calls.
const BULK: usize = 256 * 1024;

async fn serve(
    sink: u16,
    rr: u16,
    conn: u16,
    http: u16,
    size: usize,
    udp: u16,
) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::bind(("0.0.0.0", udp)).await?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        }
    });
    let sink = TcpListener::bind(("0.0.0.0", sink)).await?;
    let rr = TcpListener::bind(("0.0.0.0", rr)).await?;
    let conn = TcpListener::bind(("0.0.0.0", conn)).await?;
    let http = TcpListener::bind(("0.0.0.0", http)).await?;
    println!("bench server ready");
    tokio::spawn(accept_loop(sink, serve_sink));
    tokio::spawn(accept_loop(rr, move |s| serve_rr(s, size)));
    tokio::spawn(accept_loop(conn, serve_one_exchange));
    serve_http(http).await
}

async fn accept_loop<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handler(stream));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Reads to EOF, then closes. The buffer is taken only once data arrives: thousands of idle
/// connections cost no buffers.
async fn serve_sink(stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        if buf.is_empty() {
            buf = vec![0u8; BULK];
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn serve_rr(mut stream: TcpStream, size: usize) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; size];
    while stream.read_exact(&mut buf).await.is_ok() {
        if stream.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn serve_one_exchange(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
        let _ = stream.write_all(b"ok").await;
    }
}

async fn serve_http(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                    b"bench response body\n",
                ))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn throughput(target: SocketAddr, streams: usize, duration: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(target).await?;
            let buf = vec![0x5au8; BULK];
            let mut sent = 0u64;
            let run = async {
                while Instant::now() < deadline {
                    stream.write_all(&buf).await?;
                    sent += BULK as u64;
                }
                stream.shutdown().await?;
                // The sink closes once it has read everything: the bytes were delivered.
                let mut rest = [0u8; 16];
                while stream.read(&mut rest).await? > 0 {}
                Ok::<_, std::io::Error>((sent, Instant::now()))
            };
            tokio::time::timeout(duration + STALL, run)
                .await
                .map_err(|_| std::io::Error::other("the transfer stalled"))?
        }));
    }
    let mut bytes = 0;
    let mut end = start;
    for task in tasks {
        let (sent, done) = task.await??;
        bytes += sent;
        end = end.max(done);
    }
    let seconds = (end - start).as_secs_f64();
    println!(
        "{}",
        json!({"bytes": bytes, "seconds": seconds, "gbit_per_s": bytes as f64 * 8.0 / seconds / 1e9})
    );
    Ok(())
}

/// Percentiles of latencies in nanoseconds, as microseconds.
fn percentiles(mut samples: Vec<u64>) -> serde_json::Value {
    samples.sort_unstable();
    let at = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    if samples.is_empty() {
        return json!({"p50_us": null, "p90_us": null, "p99_us": null});
    }
    json!({"p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99)})
}

/// What a run of requests measured: latency percentiles of `samples` (nanoseconds), how many, and
/// their rate over `duration`.
fn summary(samples: Vec<u64>, duration: Duration) -> serde_json::Value {
    let requests = samples.len();
    let mut out = percentiles(samples);
    out["requests"] = json!(requests);
    out["requests_per_s"] = json!(requests as f64 / duration.as_secs_f64());
    out
}

/// An exchange or transfer making no progress for this long fails the run instead of hanging it.
const STALL: Duration = Duration::from_secs(10);

/// Samples from the first `WARMUP` of a run are not counted (connections and pools being set up).
const WARMUP: Duration = Duration::from_millis(500);

async fn round_trips(
    target: SocketAddr,
    conns: usize,
    duration: Duration,
    size: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let (measure_from, deadline) = (start + WARMUP, start + WARMUP + duration);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            let request = vec![0x42u8; size];
            let mut response = vec![0u8; size];
            let mut samples = Vec::with_capacity(200_000);
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let exchange = async {
                    stream.write_all(&request).await?;
                    stream.read_exact(&mut response).await
                };
                tokio::time::timeout(STALL, exchange)
                    .await
                    .map_err(|_| std::io::Error::other("a round trip stalled"))??;
                if t0 >= measure_from {
                    samples.push((Instant::now() - t0).as_nanos() as u64);
                }
            }
            Ok::<_, std::io::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    println!("{}", summary(all, duration));
    Ok(())
}

async fn udp_round_trips(
    target: SocketAddr,
    flows: usize,
    duration: Duration,
    size: usize,
) -> anyhow::Result<()> {
    const LOST_AFTER: Duration = Duration::from_millis(200);
    let start = Instant::now();
    let (measure_from, deadline) = (start + WARMUP, start + WARMUP + duration);
    let mut tasks = Vec::new();
    for _ in 0..flows {
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await?;
            socket.connect(target).await?;
            let request = vec![0x42u8; size];
            let mut response = vec![0u8; size + 1];
            let (mut samples, mut lost) = (Vec::with_capacity(200_000), 0u64);
            let mut last_answer = Instant::now();
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                socket.send(&request).await?;
                let answered = tokio::time::timeout(LOST_AFTER, socket.recv(&mut response)).await;
                match answered.map(|n| n.ok()) {
                    Ok(Some(n)) if n == size => {
                        last_answer = Instant::now();
                        if t0 >= measure_from {
                            samples.push((last_answer - t0).as_nanos() as u64);
                        }
                    }
                    _ if last_answer.elapsed() > STALL => {
                        return Err(std::io::Error::other("no answer for 10 s"));
                    }
                    _ => lost += u64::from(t0 >= measure_from),
                }
            }
            Ok::<_, std::io::Error>((samples, lost))
        }));
    }
    let (mut all, mut lost) = (Vec::new(), 0);
    for task in tasks {
        let (samples, l) = task.await??;
        all.extend(samples);
        lost += l;
    }
    let mut out = summary(all, duration);
    out["lost"] = json!(lost);
    println!("{out}");
    Ok(())
}

async fn connection_rate(
    target: SocketAddr,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + duration;
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            // Each exchange's time, connect to close (nanoseconds).
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let began = Instant::now();
                let exchange = async {
                    let mut stream = TcpStream::connect(target).await?;
                    stream.set_nodelay(true)?;
                    stream.write_all(b"hello").await?;
                    let mut reply = Vec::with_capacity(8);
                    stream.read_to_end(&mut reply).await?;
                    if reply == b"ok" {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("bad reply"))
                    }
                };
                match tokio::time::timeout(Duration::from_secs(5), exchange).await {
                    Ok(Ok(())) => times.push(began.elapsed().as_nanos() as u64),
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            times
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await?);
    }
    let connections = times.len();
    let seconds = (Instant::now() - start).as_secs_f64();
    let mut out = percentiles(times);
    out["connections"] = json!(connections);
    out["failures"] = json!(failures.load(Ordering::Relaxed));
    out["seconds"] = json!(seconds);
    out["connections_per_s"] = json!(connections as f64 / seconds);
    println!("{out}");
    Ok(())
}

async fn hold(target: SocketAddr, conns: usize) -> anyhow::Result<()> {
    let limit = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _turn = limit.acquire().await;
            TcpStream::connect(target).await
        }));
    }
    let mut held = Vec::with_capacity(conns);
    for task in tasks {
        held.push(task.await??);
    }
    println!("{}", json!({"holding": held.len()}));
    // Until the harness, done measuring, kills this process.
    std::future::pending::<()>().await;
    drop(held);
    Ok(())
}

async fn http_load(
    url: http::Uri,
    h2: bool,
    concurrency: usize,
    duration: Duration,
    rate: u64,
) -> anyhow::Result<()> {
    use hyper::client::conn::{http1, http2};
    let authority = url
        .authority()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no authority"))?;
    let ip: std::net::IpAddr = authority
        .host()
        .parse()
        .with_context(|| format!("{url}: the host must be an IP address"))?;
    let addr = SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
    let start = Instant::now();
    let (measure_from, deadline) = (start + WARMUP, start + WARMUP + duration);
    let pace = (rate > 0).then(|| Duration::from_secs_f64(concurrency as f64 / rate as f64));
    let h2_sender = if h2 {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Some(sender)
    } else {
        None
    };
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, failures, h2_sender) = (url.clone(), failures.clone(), h2_sender.clone());
        tasks.push(tokio::spawn(async move {
            enum Sender {
                H1(http1::SendRequest<Empty<Bytes>>),
                H2(http2::SendRequest<Empty<Bytes>>),
            }
            let mut sender = match h2_sender {
                Some(s) => Sender::H2(s),
                None => {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let (s, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                    tokio::spawn(conn);
                    Sender::H1(s)
                }
            };
            let mut ticker = pace.map(tokio::time::interval);
            let mut samples = Vec::with_capacity(100_000);
            loop {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let request = http::Request::get(url.clone())
                    .header(
                        http::header::HOST,
                        url.authority().map_or("", |a| a.as_str()),
                    )
                    .body(Empty::<Bytes>::new())?;
                let response = match &mut sender {
                    Sender::H1(s) => {
                        s.ready().await?;
                        s.send_request(request).await
                    }
                    Sender::H2(s) => {
                        let mut request = request;
                        request.headers_mut().remove(http::header::HOST);
                        s.send_request(request).await
                    }
                };
                let ok = match response {
                    Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                    if matches!(sender, Sender::H1(_)) {
                        anyhow::bail!("request failed");
                    }
                } else if t0 >= measure_from {
                    samples.push((Instant::now() - t0).as_nanos() as u64);
                }
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let mut out = summary(all, duration);
    out["failures"] = json!(failures.load(Ordering::Relaxed));
    println!("{out}");
    Ok(())
}

#[path = "veil-bench/api.rs"]
mod api;
#[path = "veil-bench/xds.rs"]
mod xds;

/// The plain TLS 1.3 baseline: veil's own TLS configurations, one TLS connection per TCP
/// connection, no HTTP/2.
mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rustls_pki_types::ServerName;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};
    use veil_e2e::certs::genuine;
    use veil_mesh::identity::{
        FixedCert, Identity, TrustBundle, WorkloadCert, client_config, server_config,
    };

    use super::CertArgs;

    /// Copy buffers as large as the chunks ztunnel reads, so the baseline is not slowed by small
    /// copies (tokio's default is 8 KiB).
    const COPY: usize = 64 * 1024;

    async fn certificate(args: &CertArgs) -> anyhow::Result<(Arc<TrustBundle>, WorkloadCert)> {
        genuine(&args.identity, &args.ca, &args.root, &args.token).await
    }

    pub(crate) async fn client(
        listen: SocketAddr,
        upstream: SocketAddr,
        args: &CertArgs,
        expect: &str,
    ) -> anyhow::Result<()> {
        let (bundle, cert) = certificate(args).await?;
        let config = client_config(bundle, &cert, vec![Identity::parse(expect)?]);
        let connector = TlsConnector::from(config);
        let listener = TcpListener::bind(listen).await?;
        println!("tls client ready");
        loop {
            let (mut plain, _) = listener.accept().await?;
            let connector = connector.clone();
            tokio::spawn(async move {
                let _ = plain.set_nodelay(true);
                let Ok(tcp) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let name = ServerName::IpAddress(upstream.ip().into());
                if let Ok(mut tls) = connector.connect(name, tcp).await {
                    let _ =
                        tokio::io::copy_bidirectional_with_sizes(&mut plain, &mut tls, COPY, COPY)
                            .await;
                }
            });
        }
    }

    pub(crate) async fn server(
        listen: SocketAddr,
        upstream: SocketAddr,
        args: &CertArgs,
    ) -> anyhow::Result<()> {
        let (bundle, cert) = certificate(args).await?;
        let config = server_config(bundle, Arc::new(FixedCert(cert.certified_key().clone())));
        let acceptor = TlsAcceptor::from(config);
        let listener = TcpListener::bind(listen).await?;
        println!("tls server ready");
        loop {
            let (tcp, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = plain.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut plain, COPY, COPY)
                    .await;
            });
        }
    }
}
