//! rustls configurations for mesh mTLS: TLS 1.3 only, ALPN `h2`, SPIFFE verification both ways.
//!
//! Session resumption is off on both sides: a resumed session would skip certificate verification and
//! could outlive the certificate it was established with. Pooled HBONE connections make full
//! handshakes rare enough that resumption is not worth that.

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};

use super::bundle::TrustBundle;
use super::cert::{CertError, WorkloadCert, inspect};
use super::id::Identity;
use super::verify::{ExpectedServer, TrustDomainClient};

/// ALPN of HBONE (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The single crypto provider of the whole tree (ring).
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Server side of mesh mTLS: presents the certificate `certs` resolves, and requires a client
/// certificate of the bundle's trust domain.
pub fn server_config(
    bundle: Arc<TrustBundle>,
    certs: Arc<dyn ResolvesServerCert>,
) -> Arc<ServerConfig> {
    tls13_server(bundle, certs, true)
}

/// The control plane's TLS 1.3 server side: presents `certs`; a client certificate is optional,
/// but one that is presented must be a valid certificate of the bundle's trust domain (clients
/// without one authenticate by bearer token, as Istio's ztunnel does).
pub fn control_server_config(
    bundle: Arc<TrustBundle>,
    certs: Arc<dyn ResolvesServerCert>,
) -> Arc<ServerConfig> {
    tls13_server(bundle, certs, false)
}

/// TLS 1.3, ALPN h2, client certificates of the bundle's trust domain (`mandatory` or not), and no
/// resumption: every connection's client certificate is verified afresh.
fn tls13_server(
    bundle: Arc<TrustBundle>,
    certs: Arc<dyn ResolvesServerCert>,
    mandatory: bool,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(TrustDomainClient { bundle, mandatory }))
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Client side of mesh mTLS: presents `cert` and accepts only a server that proves one of
/// `expected`.
pub fn client_config(
    bundle: Arc<TrustBundle>,
    cert: &WorkloadCert,
    expected: Vec<Identity>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer { bundle, expected }))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            cert.certified_key().clone(),
        )));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// TLS 1.3 to a control plane that serves with its mesh identity: the server must prove `expected`
/// with a certificate of the bundle's trust domain (its DNS names are not looked at); no client
/// certificate (the subscriber authenticates by token).
pub fn control_client_config(bundle: Arc<TrustBundle>, expected: Identity) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer {
            bundle,
            expected: vec![expected],
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// Plain server-authenticated TLS 1.3 (no client certificate) against the mesh roots: how components
/// reach the CA, which authenticates callers by token instead.
pub fn ca_client_config(bundle: &TrustBundle) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for root in bundle.roots() {
        roots.add(root.clone())?;
    }
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The identity the peer proved during the handshake. The verifiers above have already checked the
/// chain; this reads the identity back from the verified leaf.
pub fn peer_identity(conn: &CommonState) -> Result<Identity, CertError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(CertError::EmptyChain)?;
    Ok(inspect(leaf)?.identity)
}

/// A server certificate that never changes (tests, and servers whose owner replaces the config).
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests;
