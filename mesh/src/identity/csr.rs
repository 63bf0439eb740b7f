//! A fresh key pair and a CSR for one workload identity: what a node agent sends to the CA.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::id::Identity;

/// A new private key and the PEM CSR that asks for `identity` with it.
pub struct KeyAndCsr {
    /// The private key (PKCS#8); it never leaves the process.
    pub key: PrivateKeyDer<'static>,
    /// The certificate signing request, PEM.
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Generates an ECDSA P-256 key and a CSR whose only subject alternative name is `identity`'s URI.
/// The subject is empty, as in Istio's workload certificates: the identity lives in the SAN.
pub fn generate(identity: &Identity) -> Result<KeyAndCsr, rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(KeyAndCsr { key, csr_pem })
}
