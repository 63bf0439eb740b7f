//! Long-lived connections for the tests of live re-checks: a streaming echo server (each chunk
//! echoed as it arrives) and a client that sends a numbered tick at a steady pace, printing each
//! echo and, at the end, how the connection ended. Also a CA caller that sends an oversized CSR.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use veil_mesh::identity::{
    CaClient as _, CaClientError, GrpcCaClient, Identity, TokenSource, TrustBundle,
};

/// The port of the streaming echo server.
pub(crate) const STREAM_PORT: u16 = 7070;

/// Echoes every connection on `listener` chunk by chunk until the client goes.
pub(crate) async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut tcp, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            println!("stream from {peer}");
            let (mut rd, mut wr) = tcp.split();
            let result = tokio::io::copy(&mut rd, &mut wr).await;
            println!("stream from {peer} ended: {result:?}");
        });
    }
}

/// Sends `tick N` every `interval` to `addr`, waiting for each echo; prints `echoed N` per tick
/// and `closed after N ticks: …` when the connection ends (never on its own: it ticks forever).
pub(crate) async fn client(addr: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let (rd, mut wr) = tcp.into_split();
    let mut lines = BufReader::new(rd).lines();
    let mut n: u64 = 0;
    let reason = loop {
        n += 1;
        if let Err(e) = wr.write_all(format!("tick {n}\n").as_bytes()).await {
            break format!("write: {e}");
        }
        match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
            Ok(Ok(Some(line))) if line == format!("tick {n}") => println!("echoed {n}"),
            Ok(Ok(Some(line))) => break format!("unexpected echo {line:?}"),
            Ok(Ok(None)) => break "end of stream".to_owned(),
            Ok(Err(e)) => break format!("read: {e}"),
            Err(_) => break "no echo within 5s".to_owned(),
        }
        tokio::time::sleep(interval).await;
    };
    println!("closed after {} ticks: {reason}", n - 1);
    Ok(())
}

/// Asks the CA at `ca` to sign `bytes` bytes of garbage as a CSR for `identity` (with `token`);
/// prints the gRPC code of the answer (`OK` if it signed).
pub(crate) async fn oversized_csr(
    ca: &str,
    root: &Path,
    token: &str,
    identity: &str,
    bytes: usize,
) -> anyhow::Result<()> {
    let bundle = TrustBundle::from_pem_file("cluster.local", root)?;
    let client = GrpcCaClient::new(
        ca,
        "veil-ca.veil-system.svc",
        &bundle,
        TokenSource::Static(token.to_owned()),
        Duration::from_secs(10),
    )?;
    let csr = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "A".repeat(bytes)
    );
    let id = Identity::parse(identity)?;
    match client.sign(&id, &csr, Duration::from_secs(3600)).await {
        Ok(_) => println!("OK"),
        Err(CaClientError::Refused { code, .. }) => println!("{code:?}"),
        // The client counts codes other than the four refusals as "unavailable": say which.
        Err(CaClientError::Unavailable(message)) => println!("{message}"),
        Err(e) => anyhow::bail!("CA call failed: {e}"),
    }
    Ok(())
}
