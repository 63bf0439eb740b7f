//! Strict validation of certificate signing requests.
//!
//! The CA copies nothing from a CSR but its public key: the identity comes from the authorized
//! request, the lifetime and usages from the CA's own policy. Validation therefore makes sure the CSR
//! is well-formed, proves possession of an acceptable key, and asks for exactly what was authorized —
//! one URI SAN equal to the requested identity, and nothing that would make it a CA.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::pem::SectionKind;
use veil_mesh::identity::{Identity, PemError, single_section};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The largest CSR accepted, in bytes of PEM. A P-256 CSR is under 1 KiB, an RSA-4096 one under 4 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// RSA keys below this size are refused.
pub const MIN_RSA_BITS: usize = 2048;
/// RSA keys above this size are refused (verification cost, and ring's own limit).
pub const MAX_RSA_BITS: usize = 8192;

/// Why a CSR was refused. Each maps to gRPC `InvalidArgument`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CsrError {
    /// The CSR is larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    /// Not a single PEM `CERTIFICATE REQUEST`.
    #[error("CSR: {0}")]
    Pem(#[from] PemError),
    /// The DER inside is not a PKCS#10 request.
    #[error("CSR is malformed: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify: no proof of possession of the key.
    #[error("CSR signature does not verify")]
    BadSignature,
    /// The key algorithm or curve is not one the CA issues for.
    #[error("unsupported key: {0}; use ECDSA P-256/P-384 or RSA of at least 2048 bits")]
    UnsupportedKey(String),
    /// An RSA key outside [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
    #[error("RSA key of {bits} bits; between {MIN_RSA_BITS} and {MAX_RSA_BITS} bits are accepted")]
    RsaKeySize { bits: usize },
    /// The request does not hold exactly one subject alternative name.
    #[error("CSR has {0} subject alternative names; exactly one URI SAN is required")]
    SanCount(usize),
    /// The single SAN is not a URI.
    #[error("CSR SAN is a {0}, not a URI")]
    NotUriSan(String),
    /// The URI SAN is not the identity the request is authorized for.
    #[error("CSR asks for {got:?} but the request is for {expected}")]
    WrongIdentity { expected: Identity, got: String },
    /// The request asks to be a CA.
    #[error("CSR asks for a CA certificate (basicConstraints CA:TRUE)")]
    RequestsCa,
    /// An extension could not be parsed, or appears twice.
    #[error("CSR extension: {0}")]
    BadExtension(String),
}

/// A CSR's public key, ready for rcgen to put in a certificate.
#[derive(Debug, Clone)]
pub struct SubjectKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    /// A short description (`ECDSA P-256`, `RSA 2048`) for the audit log.
    pub description: String,
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Validates `pem` as a request for `identity` and returns its public key.
pub fn validate(pem: &str, identity: &Identity) -> Result<SubjectKey, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge {
            size: pem.len(),
            max: MAX_CSR_BYTES,
        });
    }
    let der = single_section(pem.as_bytes(), SectionKind::Csr)?;
    let csr = match X509CertificationRequest::from_der(&der) {
        Ok(([], csr)) => csr,
        Ok(_) => return Err(CsrError::Malformed("trailing data".into())),
        Err(e) => return Err(CsrError::Malformed(e.to_string())),
    };
    // Key first: it bounds the cost of verifying the signature.
    let key = subject_key(&csr)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    check_extensions(&csr, identity)?;
    Ok(key)
}

fn subject_key(csr: &X509CertificationRequest<'_>) -> Result<SubjectKey, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let raw = spki.subject_public_key.data.to_vec();
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        let (alg, description) = if curve == OID_EC_P256 {
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ECDSA P-256")
        } else if curve == OID_NIST_EC_P384 {
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384")
        } else {
            return Err(CsrError::UnsupportedKey(format!("EC curve {curve}")));
        };
        return Ok(SubjectKey {
            raw,
            alg,
            description: description.into(),
        });
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed("unreadable RSA public key".into())),
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::RsaKeySize { bits });
        }
        return Ok(SubjectKey {
            raw,
            alg: &rcgen::PKCS_RSA_SHA256,
            description: format!("RSA {bits}"),
        });
    }
    Err(CsrError::UnsupportedKey(format!("algorithm {algorithm}")))
}

fn check_extensions(
    csr: &X509CertificationRequest<'_>,
    identity: &Identity,
) -> Result<(), CsrError> {
    let mut names: Vec<&GeneralName<'_>> = Vec::new();
    let mut san_extensions = 0;
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                san_extensions += 1;
                names.extend(san.general_names.iter());
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::RequestsCa),
            ParsedExtension::ParseError { error } => {
                return Err(CsrError::BadExtension(error.to_string()));
            }
            // Nothing else is copied into the certificate, so other requests are harmless.
            _ => {}
        }
    }
    if san_extensions > 1 {
        return Err(CsrError::BadExtension(
            "subjectAltName requested twice".into(),
        ));
    }
    let [name] = names.as_slice() else {
        return Err(CsrError::SanCount(names.len()));
    };
    let GeneralName::URI(uri) = name else {
        return Err(CsrError::NotUriSan(general_name_kind(name).into()));
    };
    if *uri != identity.as_str() {
        return Err(CsrError::WrongIdentity {
            expected: identity.clone(),
            got: (*uri).to_owned(),
        });
    }
    Ok(())
}

fn general_name_kind(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::DNSName(_) => "DNS name",
        GeneralName::IPAddress(_) => "IP address",
        GeneralName::RFC822Name(_) => "email address",
        GeneralName::DirectoryName(_) => "directory name",
        _ => "non-URI name",
    }
}

#[cfg(test)]
mod tests;
