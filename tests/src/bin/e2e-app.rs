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
        #[arg(long)]
        identity: String,
        /// The mesh root, to verify the server (so any refusal is the server's).
        #[arg(long)]
        root: std::path::PathBuf,
        /// The identity the server must prove.
        #[arg(long)]
        expect: String,
    },
    /// An impostor HBONE server on 0.0.0.0:15008 with a genuine certificate for `identity`
    /// obtained from the CA with `token`.
    HboneServe {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        ca: String,
        #[arg(long)]
        root: std::path::PathBuf,
        #[arg(long)]
        token: String,
    },
    /// Connect to `addr`, send `message`, half-close, print what comes back.
    Tcp {
        addr: SocketAddr,
        message: String,
        /// Repeat this many times, sequentially.
        #[arg(long, default_value = "1")]
        count: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Serve { name, http, echo } => {
            let http_listener = TcpListener::bind(("0.0.0.0", http)).await?;
            let echo_listener = TcpListener::bind(("0.0.0.0", echo)).await?;
            println!("serving {name}: http {http}, echo {echo}");
            tokio::spawn(serve_echo(echo_listener));
            serve_http(http_listener, name).await
        }
        Mode::HboneForeignRoot {
            addr,
            target,
            identity,
            root,
            expect,
        } => probe::foreign_root(addr, target, &identity, &root, &expect).await,
        Mode::HboneServe {
            identity,
            ca,
            root,
            token,
        } => probe::serve(&identity, &ca, &root, &token).await,
        Mode::Tcp {
            addr,
            message,
            count,
        } => {
            for _ in 0..count {
                let reply =
                    tokio::time::timeout(Duration::from_secs(10), round_trip(addr, &message))
                        .await??;
                println!("{reply}");
            }
            Ok(())
        }
    }
}

/// Rogue HBONE peers, built from veil's own library.
mod probe {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Context as _;
    use veil_mesh::hbone::{H2Client, H2Settings, TunnelMeta, connect_request, serve_connection};
    use veil_mesh::identity::{
        GrpcCaClient, Identity, TokenSource, TrustBundle, client_config, fetch, server_config,
    };
    use veil_mesh::testing::TestPki;

    pub(crate) async fn foreign_root(
        addr: SocketAddr,
        target: SocketAddr,
        identity: &str,
        root: &Path,
        expect: &str,
    ) -> anyhow::Result<()> {
        let mesh_roots = Arc::new(TrustBundle::from_pem_file("cluster.local", root)?);
        let foreign = TestPki::new("cluster.local");
        let cert = foreign.issue(&Identity::parse(identity)?);
        let tls = client_config(mesh_roots, &cert, vec![Identity::parse(expect)?]);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let client = H2Client::handshake(tcp, tls, &H2Settings::default()).await?;
        let stream = client
            .open(connect_request(target, &TunnelMeta::default()))
            .await;
        match stream {
            Ok(_) => {
                println!("ACCEPTED");
                Ok(())
            }
            Err(e) => anyhow::bail!("REFUSED: {e}"),
        }
    }

    pub(crate) async fn serve(
        identity: &str,
        ca: &str,
        root: &Path,
        token: &str,
    ) -> anyhow::Result<()> {
        let bundle = Arc::new(TrustBundle::from_pem_file("cluster.local", root)?);
        let client = GrpcCaClient::new(
            ca,
            "veil-ca.veil-system.svc",
            &bundle,
            TokenSource::Static(token.to_owned()),
            Duration::from_secs(10),
        )?;
        let id = Identity::parse(identity)?;
        let cert = fetch(&id, &client, &bundle, Duration::from_secs(3600))
            .await
            .context("getting the impostor's certificate")?;
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
                let result =
                    serve_connection(tcp, tls, &H2Settings::default(), |mut stream| async move {
                        println!("impostor got a tunnel request from {}", stream.peer);
                        let _ = stream.respond.send_response(http::Response::new(()), true);
                    })
                    .await;
                if let Err(e) = result {
                    println!("impostor connection failed: {e}");
                }
            });
        }
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
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(reply))))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
