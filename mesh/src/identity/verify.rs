//! SPIFFE peer verification: the chain is verified against the trust bundle with webpki, then the
//! leaf's single URI SAN must be a workload identity of the bundle's trust domain.
//!
//! rustls's built-in verifiers check DNS names and IP addresses, which say nothing about who a mesh
//! peer is; these verifiers check the identity instead. The server side accepts any identity of its
//! trust domain and leaves authorization to policy; the client side accepts only the identities it
//! expects for the destination it dialled.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::bundle::TrustBundle;
use super::cert::{CertError, inspect};
use super::id::Identity;
use super::tls::provider;

/// Which role the certificate is verified for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A TLS client (clientAuth).
    Client,
    /// A TLS server (serverAuth).
    Server,
}

/// Why a peer certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain does not verify against the trust bundle (untrusted issuer, expired, bad signature…).
    #[error("certificate chain rejected: {0}")]
    Chain(webpki::Error),
    /// The leaf is not a workload certificate (SAN count, SPIFFE ID form).
    #[error("{0}")]
    Leaf(Box<CertError>),
    /// The identity belongs to another trust domain than the bundle that verified it.
    #[error("{identity} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: Identity,
        trust_domain: String,
    },
    /// The identity is valid but not one this connection expects.
    #[error("peer is {got}, expected one of [{expected}]")]
    UnexpectedIdentity { got: Identity, expected: String },
}

/// Verifies `end_entity` (with `intermediates`) against `bundle` at `now` and returns its identity.
pub fn verify_identity(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    usage: Usage,
) -> Result<Identity, VerifyError> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(VerifyError::Chain)?;
    let eku = match usage {
        Usage::Client => webpki::KeyUsage::client_auth(),
        Usage::Server => webpki::KeyUsage::server_auth(),
    };
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    cert.verify_for_usage(
        algorithms().all,
        bundle.anchors(),
        intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        eku,
        None,
        None,
    )
    .map_err(VerifyError::Chain)?;
    let identity = inspect(end_entity)
        .map_err(|e| VerifyError::Leaf(Box::new(e)))?
        .identity;
    if identity.trust_domain() != bundle.trust_domain() {
        return Err(VerifyError::ForeignTrustDomain {
            identity,
            trust_domain: bundle.trust_domain().to_owned(),
        });
    }
    Ok(identity)
}

fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    &provider().signature_verification_algorithms
}

fn to_system_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs())
}

/// Maps a verification failure to the rustls error that produces the right TLS alert.
fn to_rustls(err: VerifyError) -> rustls::Error {
    let cert_err = match &err {
        VerifyError::Chain(webpki::Error::CertExpired { .. }) => CertificateError::Expired,
        VerifyError::Chain(webpki::Error::CertNotValidYet { .. }) => CertificateError::NotValidYet,
        VerifyError::Chain(webpki::Error::UnknownIssuer) => CertificateError::UnknownIssuer,
        VerifyError::Chain(webpki::Error::InvalidSignatureForPublicKey) => {
            CertificateError::BadSignature
        }
        _ => CertificateError::Other(OtherError(Arc::new(err))),
    };
    rustls::Error::InvalidCertificate(cert_err)
}

/// Client side: the server must prove one of the identities expected for the destination.
pub(crate) struct ExpectedServer {
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) expected: Vec<Identity>,
}

impl fmt::Debug for ExpectedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectedServer")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ExpectedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = verify_identity(
            end_entity,
            intermediates,
            &self.bundle,
            to_system_time(now),
            Usage::Server,
        )
        .map_err(to_rustls)?;
        if !self.expected.contains(&got) {
            let expected = self.expected.iter().map(Identity::as_str);
            return Err(to_rustls(VerifyError::UnexpectedIdentity {
                got,
                expected: expected.collect::<Vec<_>>().join(", "),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Server side: every client must present a certificate of the server's trust domain. Who may do
/// what is decided later, by policy, from the identity this verifier established.
pub(crate) struct TrustDomainClient {
    pub(crate) bundle: Arc<TrustBundle>,
    /// Whether a client without a certificate is refused in the handshake (mesh mTLS), or let
    /// through to authenticate otherwise (the control plane, where Istio's ztunnel sends a token).
    pub(crate) mandatory: bool,
}

impl fmt::Debug for TrustDomainClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustDomainClient")
            .field("trust_domain", &self.bundle.trust_domain())
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for TrustDomainClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_identity(
            end_entity,
            intermediates,
            &self.bundle,
            to_system_time(now),
            Usage::Client,
        )
        .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
