//! Trust bundles: the root certificates a trust domain's workloads are verified against.
//!
//! A bundle holds every root that is currently trusted, so that during a root rotation certificates
//! from the old and the new root both verify.

use std::fmt;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::id::{IdentityError, parse_trust_domain};

/// The roots of one trust domain.
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

/// Why a trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The trust domain name is invalid.
    #[error(transparent)]
    TrustDomain(#[from] IdentityError),
    /// The PEM input could not be read.
    #[error("reading root certificates: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// The input held no certificate.
    #[error("no root certificate found")]
    Empty,
    /// A certificate could not be used as a trust anchor.
    #[error("root certificate {index} is not a usable trust anchor: {source}")]
    BadRoot {
        index: usize,
        #[source]
        source: webpki::Error,
    },
    /// The bundle file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl TrustBundle {
    /// Builds a bundle from DER roots.
    pub fn new(
        trust_domain: &str,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        let trust_domain = parse_trust_domain(trust_domain)?;
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|source| BundleError::BadRoot { index, source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// Builds a bundle from PEM text holding one or more root certificates.
    pub fn from_pem(trust_domain: &str, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BundleError::Pem)?;
        Self::new(trust_domain, roots)
    }

    /// Reads a bundle from a PEM file.
    pub fn from_pem_file(trust_domain: &str, path: &Path) -> Result<Self, BundleError> {
        let pem = std::fs::read(path).map_err(|source| BundleError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(trust_domain, &pem)
    }

    /// The trust domain whose roots these are.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots, DER-encoded.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Whether `der` is one of this bundle's roots.
    pub fn contains(&self, der: &[u8]) -> bool {
        self.roots.iter().any(|root| root.as_ref() == der)
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}
