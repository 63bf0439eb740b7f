//! Workload certificates: what a certificate says (identity, validity, serial) and a workload's own
//! certificate and key, ready to hand to rustls.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::bundle::TrustBundle;
use super::id::{Identity, IdentityError};
use super::tls::provider;
use super::verify::{Usage, VerifyError, verify_identity};

/// What veil reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The identity in the certificate's single SPIFFE URI SAN.
    pub identity: Identity,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The serial number, lower-case hex.
    pub serial: String,
}

/// Why a certificate is not an acceptable workload certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The DER could not be parsed as an X.509 certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The certificate does not hold exactly one URI SAN.
    #[error("certificate has {0} URI SANs; a workload certificate must have exactly one")]
    UriSanCount(usize),
    /// The single URI SAN is not a workload SPIFFE ID.
    #[error("certificate URI SAN: {0}")]
    NotWorkloadIdentity(#[source] IdentityError),
    /// The certificate failed verification against the trust bundle.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The certificate is for another identity than the one it was requested for.
    #[error("certificate is for {got}, expected {expected}")]
    WrongIdentity { expected: Identity, got: Identity },
    /// The private key cannot be used, or does not belong to the certificate.
    #[error("private key: {0}")]
    Key(String),
    /// The chain is empty.
    #[error("empty certificate chain")]
    EmptyChain,
}

/// Reads identity, validity and serial from a DER certificate, insisting on exactly one URI SAN that
/// is a workload identity (other SAN types are allowed, as in the X509-SVID specification).
pub fn inspect(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = parse(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Malformed(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(CertError::UriSanCount(uris.len()));
    };
    let identity = Identity::parse(uri).map_err(CertError::NotWorkloadIdentity)?;
    let validity = cert.validity();
    Ok(CertInfo {
        identity,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        serial: hex(cert.raw_serial()),
    })
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::Malformed(
            "trailing data after certificate".into(),
        )),
        Err(e) => Err(CertError::Malformed(e.to_string())),
    }
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

/// `t` as an RFC 3339 UTC timestamp (`2026-11-22T20:49:00Z`), for logs.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A workload's verified certificate chain and private key.
pub struct WorkloadCert {
    info: CertInfo,
    certified: Arc<CertifiedKey>,
}

impl WorkloadCert {
    /// Accepts a chain (leaf first, then intermediates; the root may be omitted) and its key after
    /// checking that the leaf verifies against `bundle` for both client and server use at `now`, is
    /// for `expected`, and matches the key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: &TrustBundle,
        expected: &Identity,
        now: SystemTime,
    ) -> Result<Self, CertError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CertError::EmptyChain)?;
        for usage in [Usage::Client, Usage::Server] {
            let got = verify_identity(leaf, intermediates, bundle, now, usage)?;
            if &got != expected {
                return Err(CertError::WrongIdentity {
                    expected: expected.clone(),
                    got,
                });
            }
        }
        let info = inspect(leaf)?;
        let signer = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signer);
        certified
            .keys_match()
            .map_err(|e| CertError::Key(e.to_string()))?;
        Ok(Self {
            info,
            certified: Arc::new(certified),
        })
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &Identity {
        &self.info.identity
    }

    /// What the leaf says.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    /// Whether the certificate is inside its validity period at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.info.not_before <= now && now < self.info.not_after
    }

    /// The chain and signing key, as rustls uses them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The chain presented to peers (leaf first).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

impl fmt::Debug for WorkloadCert {
    // Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.info.identity)
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}
