//! A stand-in for the kubelet's prober, run in a node's network namespace: probes each target at a
//! steady period the way the kubelet does, and reports every failure and a running count.
//!
//! - `http://IP:PORT/PATH`: a new TCP connection per probe, `GET` with the kubelet's
//!   `User-Agent: kube-probe/1.33`, `Accept: */*` and `Connection: close`; a status from 200 to 399
//!   passes (the kubelet's rule); anything else, or no answer within the timeout, fails.
//! - `tcp://IP:PORT`: the connection is opened and closed; opened within the timeout passes.
//! - `grpc://IP:PORT[/SERVICE]`: a new plaintext HTTP/2 connection per probe, `grpc.health.v1.Health/
//!   Check` for SERVICE (the whole server when absent) with the kubelet's user agent; `SERVING`
//!   passes, any other answer or none within the timeout fails.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The kubelet's default probe timeout.
const TIMEOUT: Duration = Duration::from_secs(1);

/// One probe target.
#[derive(Clone, Debug)]
enum Target {
    Http { addr: SocketAddr, path: String },
    Tcp { addr: SocketAddr },
    Grpc { addr: SocketAddr, service: String },
}

fn parse(target: &str) -> anyhow::Result<Target> {
    if let Some(rest) = target.strip_prefix("http://") {
        let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok(Target::Http {
            addr: addr.parse()?,
            path: format!("/{path}"),
        });
    }
    if let Some(addr) = target.strip_prefix("tcp://") {
        return Ok(Target::Tcp {
            addr: addr.parse()?,
        });
    }
    if let Some(rest) = target.strip_prefix("grpc://") {
        let (addr, service) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok(Target::Grpc {
            addr: addr.parse()?,
            service: service.to_owned(),
        });
    }
    anyhow::bail!(
        "a probe target is http://IP:PORT/PATH, tcp://IP:PORT or grpc://IP:PORT[/SERVICE], not {target:?}"
    )
}

async fn probe(target: &Target) -> anyhow::Result<()> {
    match target {
        Target::Grpc { addr, service } => {
            use tonic_health::pb::health_check_response::ServingStatus;
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(TIMEOUT)
                .timeout(TIMEOUT)
                .user_agent("kube-probe/1.33")?
                .connect()
                .await?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest {
                service: service.clone(),
            };
            let answer = tokio::time::timeout(TIMEOUT, client.check(request)).await??;
            let status = answer.into_inner().status();
            anyhow::ensure!(status == ServingStatus::Serving, "status {status:?}");
            Ok(())
        }
        Target::Tcp { addr } => {
            tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
            Ok(())
        }
        Target::Http { addr, path } => {
            let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let request = http::Request::get(path.as_str())
                .header(http::header::HOST, addr.to_string())
                .header(http::header::USER_AGENT, "kube-probe/1.33")
                .header(http::header::ACCEPT, "*/*")
                .header(http::header::CONNECTION, "close")
                .body(Empty::<bytes::Bytes>::new())?;
            let response = tokio::time::timeout(TIMEOUT, send.send_request(request)).await??;
            let status = response.status().as_u16();
            anyhow::ensure!((200..400).contains(&status), "status {status}");
            Ok(())
        }
    }
}

/// Probes `targets` every `period` until killed; prints `FAIL <target> <why>` for each failure and
/// `probes ok=N failed=M` after each round.
pub(crate) async fn run(targets: Vec<String>, period: Duration) -> anyhow::Result<()> {
    let parsed: Vec<(String, Target)> = targets
        .into_iter()
        .map(|t| parse(&t).map(|p| (t, p)))
        .collect::<Result<_, _>>()?;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        for (name, target) in &parsed {
            match probe(target).await {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    println!("FAIL {name} {e}");
                }
            }
        }
        println!("probes ok={ok} failed={failed}");
    }
}

/// Probes `target` once, as the kubelet would; an error says why it failed.
pub(crate) async fn once(target: &str) -> anyhow::Result<()> {
    probe(&parse(target)?).await
}
