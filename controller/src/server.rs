//! The endpoint: TLS 1.3 with the controller's serving certificate — one from files (a DNS name,
//! for clients such as Istio's ztunnel) or its mesh certificate, renewed (veil's ztunnel verifies its
//! SPIFFE identity) — client certificates optional: verified when presented, HTTP/2, the discovery service behind it. Handshakes are bounded in time
//! and connections in number, so a slow or hostile client holds neither the accept loop nor memory.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::debug;
use veil_mesh::identity::{FixedCert, TrustBundle, control_server_config, peer_identity, provider};
use veil_mesh::serve::{AcceptLimits, serve_tls};
use veil_mesh::xds::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

use std::sync::atomic::Ordering;

use crate::auth::{ConnectionAuth, PeerIdentity};
use crate::service::Discovery;

/// Limits of the endpoint.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections, handshakes and draining.
    pub accept: AcceptLimits,
    /// Largest request accepted: a reconnecting client lists every resource it holds.
    pub max_message_bytes: usize,
    /// Time a connection has, from its handshake, to authenticate a request; then it is closed.
    pub auth_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            accept: AcceptLimits {
                handshake_timeout: Duration::from_secs(10),
                max_connections: 16_384,
                drain_timeout: Duration::from_secs(5),
            },
            max_message_bytes: 32 * 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

/// Loads a PEM certificate chain and its PEM private key.
pub fn load_serving_cert(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = pem::parse_many(&chain_pem)
        .with_context(|| format!("{} is not PEM", cert.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key_pem = pem::parse(&key_pem).with_context(|| format!("{} is not PEM", key.display()))?;
    let der = match key_pem.tag() {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(key_pem.into_contents().into()),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(key_pem.into_contents().into()),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(key_pem.into_contents().into()),
        other => anyhow::bail!("{}: unsupported key type {other:?}", key.display()),
    };
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("{}: unusable private key", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// A serving certificate that never changes.
pub fn fixed(key: Arc<CertifiedKey>) -> Arc<dyn ResolvesServerCert> {
    Arc::new(FixedCert(key))
}

/// Serves `discovery` on `listener` with the certificate `serving` resolves to, until `shutdown`
/// completes, then drains.
pub async fn serve(
    listener: TcpListener,
    discovery: Discovery,
    serving: Arc<dyn ResolvesServerCert>,
    bundle: Arc<TrustBundle>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(control_server_config(bundle, serving));
    let grpc = AggregatedDiscoveryServiceServer::new(discovery)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let auth_timeout = limits.auth_timeout;
    serve_tls(
        listener,
        acceptor,
        &limits.accept,
        shutdown,
        move |tls, peer, watcher| {
            let grpc = grpc.clone();
            async move {
                // A certificate was verified in the handshake if one was presented.
                let identity = peer_identity(tls.get_ref().1).ok().map(PeerIdentity);
                let authenticated = ConnectionAuth::default();
                let flag = authenticated.clone();
                let service = tower::service_fn(move |mut req: http::Request<Incoming>| {
                    if let Some(identity) = &identity {
                        req.extensions_mut().insert(identity.clone());
                    }
                    req.extensions_mut().insert(flag.clone());
                    grpc.clone().oneshot(req)
                });
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(16)
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
                let conn = watcher.watch(conn);
                tokio::pin!(conn);
                let ended = tokio::select! {
                    ended = &mut conn => Some(ended),
                    () = tokio::time::sleep(auth_timeout) => None,
                };
                let ended = match ended {
                    Some(ended) => ended,
                    None if !authenticated.0.load(Ordering::Relaxed) => {
                        return debug!(%peer, "closed: no authenticated request in time");
                    }
                    None => conn.await,
                };
                if let Err(e) = ended {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
}
