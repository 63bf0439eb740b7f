//! The application the end-to-end tests run in pods: an HTTP server (HTTP/1.1 and h2c) and a TCP
//! echo server that log every request they see, and a TCP client.

#![allow(clippy::print_stdout, reason = "the tests read this program's output")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve HTTP on `--http` and TCP echo on `--echo`.
    Serve {
        /// Name reported in responses.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "8080")]
        http: u16,
        #[arg(long, default_value = "9090")]
        echo: u16,
    },
    /// A rogue HBONE client: connects to `addr` (a port 15008) presenting a certificate for
    /// `identity` from its own, untrusted root, and asks for a tunnel to `target`.
    HboneForeignRoot {
        addr: SocketAddr,
        target: SocketAddr,
        #[command(flatten)]
        peer: probe::Foreign,
    },
    /// A flood of HBONE over QUIC handshakes at `addr` (a pod's UDP 15008) for `--seconds`, from
    /// `--concurrency` dials at once, each presenting a certificate for `identity` from a root of
    /// its own (the server is verified against the mesh's `root` as `expect`) and asking for a
    /// tunnel to `target`; prints `ATTEMPTS n ACCEPTED m` (m: tunnels the server opened).
    QuicForeignFlood {
        addr: SocketAddr,
        target: SocketAddr,
        #[command(flatten)]
        peer: probe::Foreign,
        #[arg(long, default_value = "5")]
        seconds: u64,
        #[arg(long, default_value = "32")]
        concurrency: usize,
    },
    /// An HBONE client with a genuine certificate that dials `addr` (a pod's 15008) directly and
    /// asks for `target`; prints the answer.
    HboneDirect {
        addr: SocketAddr,
        target: SocketAddr,
        #[command(flatten)]
        peer: probe::Genuine,
    },
    /// An HBONE client with a genuine certificate that dials `addr` (a pod's 15008) directly and
    /// sends, on that one connection, each of `requests` (`METHOD URI [NAME=VALUE]...`, e.g.
    /// `CONNECT 127.0.0.1:8080` or `CONNECT 10.0.0.1:8080 forwarded=for=10.0.0.2`); prints
    /// `URI STATUS` per request, `URI RESET …` for a refused stream, `URI INVALID` when the request
    /// cannot be built.
    HboneRaw {
        addr: SocketAddr,
        #[command(flatten)]
        peer: probe::Genuine,
        requests: Vec<String>,
    },
    /// An impostor HBONE server on 0.0.0.0:15008 with a genuine certificate for `identity`
    /// obtained from the CA with `token`.
    HboneServe {
        #[command(flatten)]
        creds: probe::Creds,
    },
    /// Send requests (`METHOD:/path`) one after the other on a single connection to `addr`, HTTP/1.1
    /// keep-alive or HTTP/2 with prior knowledge; print `STATUS METHOD PATH` for each.
    Http {
        addr: SocketAddr,
        #[arg(long)]
        h2: bool,
        requests: Vec<String>,
    },
    /// Call the gRPC method `istio.v1.auth.IstioCertificateService/CreateCertificate` at `addr`
    /// (plaintext h2c); print `OK` or the gRPC status code.
    Grpc { addr: SocketAddr },
    /// Stand in for the Kubernetes API server: list and watch the objects in `dir`.
    FakeApi {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Keep one connection to `addr` (a streaming echo server) ticking every `--interval-ms`;
    /// print each echo, then how the connection ended.
    Stream {
        addr: SocketAddr,
        #[arg(long, default_value = "100")]
        interval_ms: u64,
    },
    /// Ask the CA at `ca` to sign a CSR of `--bytes` bytes for `identity`; print the answer's code.
    OversizedCsr {
        #[command(flatten)]
        creds: probe::Creds,
        #[arg(long)]
        bytes: usize,
    },
    /// Probe `targets` (`http://IP:PORT/PATH`, `tcp://IP:PORT`) every `--period-ms` as the kubelet
    /// does, from where it runs (a node's namespace); print failures and running counts.
    Kubelet {
        targets: Vec<String>,
        #[arg(long, default_value = "200")]
        period_ms: u64,
    },
    /// Probe `target` once as the kubelet would (see `kubelet`); exit 0 passed, 1 failed (why on
    /// stderr).
    Probe { target: String },
    /// Connect to `addr`, send `message`, half-close, print what comes back.
    Tcp {
        addr: SocketAddr,
        message: String,
        /// Repeat this many times, sequentially.
        #[arg(long, default_value = "1")]
        count: u32,
        /// Send the message this many times over in each connection; above 1, the echo is checked
        /// byte for byte and only its size is printed.
        #[arg(long, default_value = "1")]
        repeat: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Serve { name, http, echo } => {
            let http_listener = TcpListener::bind(("0.0.0.0", http)).await?;
            let echo_listener = TcpListener::bind(("0.0.0.0", echo)).await?;
            let grpc_listener = TcpListener::bind(("0.0.0.0", GRPC_PORT)).await?;
            let stream_listener = TcpListener::bind(("0.0.0.0", stream::STREAM_PORT)).await?;
            println!("serving {name}: http {http}, echo {echo}, grpc {GRPC_PORT}");
            tokio::spawn(serve_echo(echo_listener));
            tokio::spawn(stream::serve(stream_listener));
            tokio::spawn(grpc::serve(grpc_listener));
            serve_http(http_listener, name).await
        }
        Mode::Http { addr, h2, requests } => one_connection(addr, h2, &requests).await,
        Mode::Grpc { addr } => grpc::call(addr).await,
        Mode::Kubelet { targets, period_ms } => {
            kubelet::run(targets, Duration::from_millis(period_ms)).await
        }
        Mode::Probe { target } => kubelet::once(&target).await,
        Mode::FakeApi { listen, dir } => fake_api::serve(listen, dir).await,
        Mode::HboneForeignRoot { addr, target, peer } => {
            probe::foreign_root(addr, target, &peer).await
        }
        Mode::QuicForeignFlood {
            addr,
            target,
            peer,
            seconds,
            concurrency,
        } => {
            let flood = Duration::from_secs(seconds);
            probe::quic_foreign_flood(addr, target, &peer, flood, concurrency).await
        }
        Mode::HboneDirect { addr, target, peer } => probe::direct(addr, target, &peer).await,
        Mode::HboneRaw {
            addr,
            peer,
            requests,
        } => probe::raw(addr, &peer, &requests).await,
        Mode::HboneServe { creds } => probe::serve(&creds).await,
        Mode::Stream { addr, interval_ms } => {
            stream::client(addr, Duration::from_millis(interval_ms)).await
        }
        Mode::OversizedCsr { creds, bytes } => {
            stream::oversized_csr(&creds.ca, &creds.root, &creds.token, &creds.identity, bytes)
                .await
        }
        Mode::Tcp {
            addr,
            message,
            count,
            repeat,
        } => {
            let message = message.repeat(repeat);
            for _ in 0..count {
                let reply =
                    tokio::time::timeout(Duration::from_secs(10), round_trip(addr, &message))
                        .await??;
                if repeat == 1 {
                    println!("{reply}");
                } else if reply == message {
                    println!("echoed {} bytes intact", reply.len());
                } else {
                    anyhow::bail!(
                        "echo of {} bytes came back as {} others",
                        message.len(),
                        reply.len()
                    );
                }
            }
            Ok(())
        }
    }
}

#[path = "e2e-app/fake_api.rs"]
mod fake_api;
#[path = "e2e-app/kubelet.rs"]
mod kubelet;
#[path = "e2e-app/stream.rs"]
mod stream;

/// Rogue HBONE peers, built from veil's own library.
mod probe {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use anyhow::Context as _;
    use veil_e2e::certs::genuine;
    use veil_mesh::hbone::{
        ConnectError, H2Client, H2Settings, TunnelMeta, connect_request, serve_connection,
    };
    use veil_mesh::identity::{Identity, TrustBundle, client_config, server_config};
    use veil_mesh::testing::TestPki;

    /// A client with a certificate from a root of its own.
    #[derive(clap::Args)]
    pub(crate) struct Foreign {
        /// The identity its certificate names.
        #[arg(long)]
        identity: String,
        /// The mesh root, to verify the server (so any refusal is the server's).
        #[arg(long)]
        root: std::path::PathBuf,
        /// The identity the server must prove.
        #[arg(long)]
        expect: String,
    }

    impl Foreign {
        /// Its TLS configuration: a certificate for `identity` from a new root.
        fn tls(&self) -> anyhow::Result<Arc<tokio_rustls::rustls::ClientConfig>> {
            let mesh_roots = Arc::new(TrustBundle::from_pem_file("cluster.local", &self.root)?);
            let foreign = TestPki::new("cluster.local");
            let cert = foreign.issue(&Identity::parse(&self.identity)?);
            Ok(client_config(
                mesh_roots,
                &cert,
                vec![Identity::parse(&self.expect)?],
            ))
        }
    }

    pub(crate) async fn foreign_root(
        addr: SocketAddr,
        target: SocketAddr,
        peer: &Foreign,
    ) -> anyhow::Result<()> {
        let tls = peer.tls()?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let client = H2Client::handshake(tcp, tls, &H2Settings::default()).await?;
        let stream = client
            .open(connect_request(target, &TunnelMeta::default()), None)
            .await;
        match stream {
            Ok(_) => {
                println!("ACCEPTED");
                Ok(())
            }
            Err(e) => anyhow::bail!("REFUSED: {e}"),
        }
    }

    /// A flood of QUIC handshakes from `peer` for `duration`, `concurrency` at once (see
    /// `Mode::QuicForeignFlood`).
    pub(crate) async fn quic_foreign_flood(
        addr: SocketAddr,
        target: SocketAddr,
        peer: &Foreign,
        duration: std::time::Duration,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        use veil_mesh::hbone::H3Client;
        use veil_mesh::hbone::quic::{client_config as quic_config, endpoint};

        let tls = peer.tls()?;
        let settings = H2Settings::default();
        let config = quic_config(&tls, &settings).map_err(anyhow::Error::msg)?;
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let endpoint = endpoint(std::net::UdpSocket::bind(any)?, None)?;
        let (attempts, accepted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let until = tokio::time::Instant::now() + duration;
        let dials = (0..concurrency).map(|_| {
            let (endpoint, config, settings) = (endpoint.clone(), config.clone(), settings.clone());
            let (attempts, accepted) = (attempts.clone(), accepted.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    // The client's side of a TLS 1.3 handshake ends before the server has judged
                    // the client's certificate: only a tunnel the server opens is an acceptance.
                    let tunnel = async {
                        let client =
                            H3Client::connect(&endpoint, config.clone(), addr, &settings).await?;
                        client
                            .open(connect_request(target, &TunnelMeta::default()), None)
                            .await
                    };
                    let limit = std::time::Duration::from_secs(2);
                    if let Ok(Ok(_)) = tokio::time::timeout(limit, tunnel).await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        for dial in dials.collect::<Vec<_>>() {
            dial.await?;
        }
        println!(
            "ATTEMPTS {} ACCEPTED {}",
            attempts.load(Ordering::Relaxed),
            accepted.load(Ordering::Relaxed)
        );
        Ok(())
    }

    /// A workload's standing at the CA: a genuine certificate for `identity` is asked of the CA at
    /// `ca` with `token`; `root` is the mesh root.
    #[derive(clap::Args)]
    pub(crate) struct Creds {
        #[arg(long)]
        pub(crate) identity: String,
        #[arg(long)]
        pub(crate) ca: String,
        #[arg(long)]
        pub(crate) root: std::path::PathBuf,
        #[arg(long)]
        pub(crate) token: String,
    }

    /// A client with a genuine mesh certificate that expects the server to be `expect`.
    #[derive(clap::Args)]
    pub(crate) struct Genuine {
        #[command(flatten)]
        creds: Creds,
        /// The identity the server must prove.
        #[arg(long)]
        expect: String,
    }

    impl Genuine {
        async fn dial(&self, addr: SocketAddr) -> anyhow::Result<H2Client> {
            let c = &self.creds;
            let (bundle, cert) = genuine(&c.identity, &c.ca, &c.root, &c.token).await?;
            let tls = client_config(bundle, &cert, vec![Identity::parse(&self.expect)?]);
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            Ok(H2Client::handshake(tcp, tls, &H2Settings::default()).await?)
        }
    }

    pub(crate) async fn direct(
        addr: SocketAddr,
        target: SocketAddr,
        peer: &Genuine,
    ) -> anyhow::Result<()> {
        let client = peer.dial(addr).await?;
        match client
            .open(connect_request(target, &TunnelMeta::default()), None)
            .await
        {
            Ok(_) => {
                println!("ACCEPTED");
                Ok(())
            }
            Err(e) => anyhow::bail!("REFUSED: {e}"),
        }
    }

    pub(crate) async fn raw(
        addr: SocketAddr,
        peer: &Genuine,
        requests: &[String],
    ) -> anyhow::Result<()> {
        let client = peer.dial(addr).await?;
        for spec in requests {
            let mut words = spec.split_whitespace();
            let (Some(method), Some(uri)) = (words.next(), words.next()) else {
                anyhow::bail!("request {spec:?} is not `METHOD URI [NAME=VALUE]...`");
            };
            let mut builder = http::Request::builder().method(method).uri(uri);
            for header in words {
                let (name, value) = header
                    .split_once('=')
                    .with_context(|| format!("header {header:?} is not NAME=VALUE"))?;
                builder = builder.header(name, value);
            }
            let Ok(request) = builder.body(()) else {
                println!("{uri} INVALID");
                continue;
            };
            match client.open(request, None).await {
                Ok(_) => println!("{uri} 200"),
                Err(ConnectError::Status(status)) => println!("{uri} {}", status.as_u16()),
                Err(e) => println!("{uri} RESET {e}"),
            }
        }
        Ok(())
    }

    pub(crate) async fn serve(creds: &Creds) -> anyhow::Result<()> {
        let identity = &creds.identity;
        let (bundle, cert) = genuine(identity, &creds.ca, &creds.root, &creds.token).await?;
        let tls = server_config(
            bundle,
            Arc::new(veil_mesh::identity::FixedCert(cert.certified_key().clone())),
        );
        let listener = tokio::net::TcpListener::bind("0.0.0.0:15008").await?;
        println!("serving HBONE as {identity}");
        loop {
            let (tcp, _) = listener.accept().await?;
            let tls = tls.clone();
            tokio::spawn(async move {
                let result = serve_connection(
                    tcp,
                    tls,
                    &H2Settings::default(),
                    |mut stream| async move {
                        println!("impostor got a tunnel request from {}", stream.peer);
                        stream.respond.send_final(http::Response::new(()));
                    },
                    std::future::pending(),
                )
                .await;
                if let Err(e) = result {
                    println!("impostor connection failed: {e}");
                }
            });
        }
    }
}

/// The port of the gRPC server.
const GRPC_PORT: u16 = 50051;

async fn one_connection(addr: SocketAddr, h2: bool, requests: &[String]) -> anyhow::Result<()> {
    let tcp = TokioIo::new(TcpStream::connect(addr).await?);
    let send = |method: &str, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
    };
    let mut statuses = Vec::new();
    if h2 {
        let (mut client, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), tcp).await?;
        tokio::spawn(conn);
        for r in requests {
            let (method, path) = r.split_once(':').unwrap_or(("GET", r));
            let response = client.send_request(send(method, path)?).await?;
            statuses.push(format!("{} {method} {path}", response.status().as_u16()));
        }
    } else {
        let (mut client, conn) = hyper::client::conn::http1::handshake(tcp).await?;
        tokio::spawn(conn);
        for r in requests {
            let (method, path) = r.split_once(':').unwrap_or(("GET", r));
            client.ready().await?;
            let response = client.send_request(send(method, path)?).await?;
            let status = response.status().as_u16();
            // Read the body so the connection can carry the next request.
            response.into_body().collect().await?;
            statuses.push(format!("{status} {method} {path}"));
        }
    }
    for line in statuses {
        println!("{line}");
    }
    Ok(())
}

/// A real gRPC service and client: the CA API's `CreateCertificate`, answering a fixed chain.
mod grpc {
    use std::net::SocketAddr;

    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;
    use tower::Service as _;
    use veil_mesh::identity::proto::istio_certificate_service_client::IstioCertificateServiceClient;
    use veil_mesh::identity::proto::istio_certificate_service_server::{
        IstioCertificateService, IstioCertificateServiceServer,
    };
    use veil_mesh::identity::proto::{IstioCertificateRequest, IstioCertificateResponse};

    struct Fake;

    #[tonic::async_trait]
    impl IstioCertificateService for Fake {
        async fn create_certificate(
            &self,
            request: tonic::Request<IstioCertificateRequest>,
        ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
            println!("grpc CreateCertificate csr={}", request.get_ref().csr);
            Ok(tonic::Response::new(IstioCertificateResponse {
                cert_chain: vec!["fake-chain".into()],
            }))
        }
    }

    /// Serves the CA API and, on the same port as applications do, `grpc.health.v1.Health` (the
    /// whole server `SERVING`): what a kubelet gRPC probe asks.
    pub(crate) async fn serve(listener: TcpListener) {
        let service = IstioCertificateServiceServer::new(Fake);
        let (_reporter, health) = tonic_health::server::health_reporter();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (service, health) = (service.clone(), health.clone());
            let both = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let (mut service, mut health) = (service.clone(), health.clone());
                async move {
                    if request.uri().path().starts_with("/grpc.health.v1.Health/") {
                        health.call(request).await
                    } else {
                        service.call(request).await
                    }
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tcp), both)
                    .await;
            });
        }
    }

    pub(crate) async fn call(addr: SocketAddr) -> anyhow::Result<()> {
        let mut client = IstioCertificateServiceClient::connect(format!("http://{addr}")).await?;
        let result = client
            .create_certificate(IstioCertificateRequest {
                csr: "hello".into(),
                validity_duration: 60,
                metadata: None,
            })
            .await;
        match result {
            Ok(response) => println!("OK {}", response.into_inner().cert_chain.join(",")),
            Err(status) => println!("{:?}", status.code()),
        }
        Ok(())
    }
}

async fn round_trip(addr: SocketAddr, message: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(message.as_bytes()).await?;
    tcp.shutdown().await?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await?;
    Ok(reply)
}

async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((mut tcp, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if tcp.read_to_end(&mut buf).await.is_ok() {
                println!("echo from {peer}: {}", String::from_utf8_lossy(&buf));
                let _ = tcp.write_all(&buf).await;
                let _ = tcp.shutdown().await;
            }
        });
    }
}

async fn serve_http(listener: TcpListener, name: String) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    println!(
                        "http from {peer}: {} {} {:?} body={}",
                        parts.method,
                        parts.uri,
                        parts.version,
                        String::from_utf8_lossy(&body)
                    );
                    let reply =
                        format!("hello from {name}: {} {}\n", parts.method, parts.uri.path());
                    let mut response = http::Response::new(Full::new(Bytes::from(reply)));
                    // What a trace reached the application with (the tracing e2e reads it).
                    if let Some(tp) = parts.headers.get("traceparent") {
                        response
                            .headers_mut()
                            .insert("x-seen-traceparent", tp.clone());
                    }
                    // Asked to: end the connection after this answer (a proxy's pooled upstream
                    // connection, and so its tunnel, ends with it).
                    if parts.headers.contains_key("x-close") {
                        response
                            .headers_mut()
                            .insert("connection", http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
