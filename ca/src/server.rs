//! The CA's endpoint: TLS 1.3 (a serving certificate the CA issues itself and renews at half-life),
//! HTTP/2, the gRPC service behind it. Each connection's handshake is bounded in time and the number
//! of connections is capped, so a slow or hostile client can hold neither the accept loop nor memory.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};
use veil_mesh::identity::proto::istio_certificate_service_server::IstioCertificateServiceServer;
use veil_mesh::identity::{ALPN_H2, provider};
use veil_mesh::serve::{AcceptLimits, serve_tls};

use crate::audit::{AuditSlot, audit_unrecorded};
use crate::authority::{Authority, AuthorityError};
use crate::service::{CaService, PeerAddr};

/// Limits of the endpoint.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections, handshakes and draining.
    pub accept: AcceptLimits,
    /// Largest request message accepted.
    pub max_message_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            accept: AcceptLimits {
                handshake_timeout: Duration::from_secs(10),
                max_connections: 1024,
                drain_timeout: Duration::from_secs(5),
            },
            max_message_bytes: 64 * 1024,
        }
    }
}

/// The CA's own serving certificate, reissued at half-life.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    names: Vec<String>,
    ttl: Duration,
}

impl ServingCert {
    /// Issues the first serving certificate for `names` (DNS names or IP addresses).
    pub fn new(
        authority: &Authority,
        names: Vec<String>,
        ttl: Duration,
    ) -> Result<Arc<Self>, AuthorityError> {
        let key = issue(authority, &names, ttl)?;
        Ok(Arc::new(Self {
            current: RwLock::new(key),
            names,
            ttl,
        }))
    }

    /// Reissues the certificate at half of its lifetime, forever.
    pub async fn renew_forever(self: Arc<Self>, authority: Arc<Authority>) {
        loop {
            tokio::time::sleep(self.ttl / 2).await;
            match issue(&authority, &self.names, self.ttl) {
                Ok(key) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
                    info!("renewed the CA serving certificate");
                }
                Err(e) => warn!(error = %e, "could not renew the CA serving certificate"),
            }
        }
    }
}

fn issue(
    authority: &Authority,
    names: &[String],
    ttl: Duration,
) -> Result<Arc<CertifiedKey>, AuthorityError> {
    let (chain, key) = authority.sign_server(names, ttl, SystemTime::now())?;
    let signer =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| AuthorityError::Invalid {
                origin: "serving key".into(),
                reason: e.to_string(),
            })?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn tls_config(cert: Arc<ServingCert>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// Serves `service` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    service: CaService,
    cert: Arc<ServingCert>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls_config(cert));
    let grpc = IstioCertificateServiceServer::new(service)
        .max_decoding_message_size(limits.max_message_bytes);
    serve_tls(
        listener,
        acceptor,
        &limits.accept,
        shutdown,
        move |tls, peer, watcher| {
            let grpc = grpc.clone();
            async move {
                let service = tower::service_fn(move |mut req: http::Request<Incoming>| {
                    let slot = AuditSlot::default();
                    req.extensions_mut().insert(PeerAddr(peer));
                    req.extensions_mut().insert(slot.clone());
                    let method = req.uri().path().to_owned();
                    let call = grpc.clone().oneshot(req);
                    async move {
                        let response = call.await?;
                        audit_unrecorded(&response, &slot, peer, &method);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(64)
                    .keep_alive_interval(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
                if let Err(e) = watcher.watch(conn).await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
}
