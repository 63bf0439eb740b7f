//! The CA's root of trust: the signing certificate and key, the chain from it up to the root, and
//! the signing of workload and serving certificates.
//!
//! Two ways to get one: a self-signed root that is generated on first start and kept in a directory
//! (so restarts keep the same root), or a plugged-in CA — typically an intermediate issued by an
//! organisation's own PKI — read from files.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::SectionKind;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use veil_mesh::identity::{Identity, PemError, hex, single_section};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How far back a leaf's validity starts, so that peers whose clocks lag a little accept it.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(60);

/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// File names of a self-signed root inside its directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// See [`ROOT_CERT_FILE`]; written with mode 0600.
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// Why the root of trust could not be loaded, generated or used.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or Secret key does not hold what it should.
    #[error("{origin}: {source}")]
    Pem {
        origin: String,
        #[source]
        source: PemError,
    },
    /// A certificate or key cannot be used.
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
    /// Only one of the root's two files exists: refusing to overwrite or guess.
    #[error(
        "{present} exists but {missing} does not; restore it or remove both to generate a new root"
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    /// Generating a key or signing failed.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    /// The signing certificate has expired.
    #[error("the CA certificate expired at {0}")]
    Expired(String),
}

/// Files of a plugged-in CA.
#[derive(Clone, Debug)]
pub struct PluggedFiles {
    /// The signing certificate (an intermediate, or a root).
    pub cert: PathBuf,
    /// Its PKCS#8 private key.
    pub key: PathBuf,
    /// Certificates between the signing certificate and the root, issuer order (optional).
    pub intermediates: Option<PathBuf>,
    /// The root. When the signing certificate is itself the root, the same file as `cert`.
    pub root: PathBuf,
}

/// A piece of PEM text and where it came from (for errors).
#[derive(Clone, Debug)]
pub struct Named {
    /// A file path, or `secret <ns>/<name> key <key>`.
    pub origin: String,
    /// The PEM.
    pub text: String,
}

/// The PEM material of a CA.
#[derive(Clone, Debug)]
pub struct CaPem {
    /// The signing certificate (an intermediate, or a root).
    pub cert: Named,
    /// Its PKCS#8 key.
    pub key: Named,
    /// Certificates between the signing certificate and the root, issuer order.
    pub intermediates: Option<Named>,
    /// The root (the same text as `cert` for a root CA).
    pub root: Named,
}

/// A certificate the CA issued.
#[derive(Debug)]
pub struct Issued {
    /// DER.
    pub der: CertificateDer<'static>,
    /// PEM.
    pub pem: String,
    /// Serial number, hex.
    pub serial: String,
    /// End of validity.
    pub not_after: SystemTime,
}

/// The signing certificate and key, and the chain above them.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate, then each issuer up to and including the root; PEM.
    chain: Vec<String>,
    root: CertificateDer<'static>,
    not_after: SystemTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A self-signed root kept in `dir`: loaded when both files exist, generated (ECDSA P-256) and
    /// persisted — the key with mode 0600 — when neither does.
    pub fn self_signed(dir: &Path, trust_domain: &str) -> Result<Self, AuthorityError> {
        let cert = dir.join(ROOT_CERT_FILE);
        let key = dir.join(ROOT_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => {}
            (false, false) => generate_root(dir, &cert, &key, trust_domain)?,
            (true, false) => return Err(incomplete(cert, key)),
            (false, true) => return Err(incomplete(key, cert)),
        }
        Self::plugged(&PluggedFiles {
            cert: cert.clone(),
            key,
            intermediates: None,
            root: cert,
        })
    }

    /// A CA from files: the signing certificate must be a CA certificate that matches its key, is
    /// valid now, and chains through the intermediates to the root.
    pub fn plugged(files: &PluggedFiles) -> Result<Self, AuthorityError> {
        let named = |path: &Path| -> Result<Named, AuthorityError> {
            Ok(Named {
                origin: path.display().to_string(),
                text: read_text(path)?,
            })
        };
        Self::from_pem(&CaPem {
            cert: named(&files.cert)?,
            key: named(&files.key)?,
            intermediates: files.intermediates.as_deref().map(named).transpose()?,
            root: named(&files.root)?,
        })
    }

    /// A CA from PEM text (files, or a Kubernetes Secret), checked as [`Self::plugged`] says.
    pub fn from_pem(pem: &CaPem) -> Result<Self, AuthorityError> {
        let single = |n: &Named| {
            single_section(n.text.as_bytes(), SectionKind::Certificate).map_err(|source| {
                AuthorityError::Pem {
                    origin: n.origin.clone(),
                    source,
                }
            })
        };
        let signing = single(&pem.cert)?;
        let root = single(&pem.root)?;
        let intermediates = match &pem.intermediates {
            Some(n) => certs(n)?,
            None => Vec::new(),
        };
        let key = KeyPair::from_pem(&pem.key.text).map_err(|e| AuthorityError::Invalid {
            origin: pem.key.origin.clone(),
            reason: format!("{e} (the key must be PKCS#8 PEM: `openssl pkcs8 -topk8 -nocrypt`)"),
        })?;

        let mut chain_der = vec![signing.clone()];
        chain_der.extend(intermediates);
        if signing != root {
            chain_der.push(root.clone());
        }
        let not_after = check_chain(&chain_der, &pem.cert.origin)?;
        let cert = parse(&signing, &pem.cert.origin)?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(AuthorityError::Invalid {
                origin: pem.key.origin.clone(),
                reason: format!("does not match the certificate in {}", pem.cert.origin),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(signing.clone()), key)?;
        Ok(Self {
            issuer,
            chain: chain_der
                .iter()
                .map(|der| to_pem("CERTIFICATE", der))
                .collect(),
            root: CertificateDer::from(root),
            not_after,
        })
    }

    /// The root certificate, DER.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        self.chain.last().map_or("", String::as_str)
    }

    /// The chain returned with a leaf, as the API prescribes: the leaf first, then the signing
    /// certificate and every issuer up to the root, the root last.
    pub fn response_chain(&self, leaf: &Issued) -> Vec<String> {
        let mut out = Vec::with_capacity(self.chain.len() + 1);
        out.push(leaf.pem.clone());
        out.extend(self.chain.iter().cloned());
        out
    }

    /// Signs a workload certificate for `identity` over `key`: lifetime `ttl` from `now` (cut at the
    /// CA certificate's own expiry), backdated by [`CLOCK_SKEW_BACKDATE`], usable as TLS client and
    /// server, with the identity as its only (critical) SAN and an empty subject.
    pub fn sign_workload(
        &self,
        key: &impl PublicKeyData,
        identity: &Identity,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, AuthorityError> {
        let mut params = self.leaf_params(ttl, now)?;
        params.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(&params, key)
    }

    /// A serving certificate and fresh key for the CA's own TLS endpoint.
    pub fn sign_server(
        &self,
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = self.leaf_params(ttl, now)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "veil-ca");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(name.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issued = self.sign(&params, &key)?;
        let mut chain = vec![issued.der];
        // Intermediates (not the root) so that clients holding only the root can build the path.
        for pem in &self.chain[..self.chain.len().saturating_sub(1)] {
            if let Ok(der) = single_section(pem.as_bytes(), SectionKind::Certificate) {
                chain.push(CertificateDer::from(der));
            }
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }

    fn leaf_params(
        &self,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<CertificateParams, AuthorityError> {
        if now >= self.not_after {
            return Err(AuthorityError::Expired(veil_mesh::identity::rfc3339(
                self.not_after,
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - CLOCK_SKEW_BACKDATE).into();
        params.not_after = (now + ttl).min(self.not_after).into();
        Ok(params)
    }

    fn sign(
        &self,
        params: &CertificateParams,
        key: &impl PublicKeyData,
    ) -> Result<Issued, AuthorityError> {
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            serial: hex(&params
                .serial_number
                .as_ref()
                .map(SerialNumber::to_bytes)
                .unwrap_or_default()),
            not_after: params.not_after.into(),
            pem: cert.pem(),
            der: cert.der().clone(),
        })
    }
}

/// 16 random bytes, positive and without a leading zero byte (RFC 5280: at most 20 octets, positive).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn generate_root(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    trust_domain: &str,
) -> Result<(), AuthorityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AuthorityError::Io {
            path: dir.to_owned(),
            source,
        })?;
    let (cert_pem, key_pem) = new_root(trust_domain)?;
    // Key first: a crash between the two writes leaves a key without a certificate, which the next
    // start reports instead of silently generating a second root.
    write_atomically(key_path, key_pem.as_bytes(), 0o600)?;
    write_atomically(cert_path, cert_pem.as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "generated a new self-signed root");
    Ok(())
}

/// A new self-signed ECDSA P-256 root for `trust_domain`, valid for ten years: (certificate, key) PEM.
pub fn new_root(trust_domain: &str) -> Result<(String, String), AuthorityError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, "veil root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes through a temporary file in the same directory and renames it into place, so that a crash
/// never leaves a truncated file behind.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let io = |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Checks each certificate is a currently valid CA signed by the next, and the last is self-signed.
/// Returns the earliest expiry along the chain.
fn check_chain(chain: &[Vec<u8>], origin: &str) -> Result<SystemTime, AuthorityError> {
    let invalid = |reason: String| AuthorityError::Invalid {
        origin: origin.to_owned(),
        reason,
    };
    let certs = chain
        .iter()
        .map(|der| parse(der, origin))
        .collect::<Result<Vec<_>, _>>()?;
    let now = SystemTime::now();
    let mut earliest = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX >> 2);
    for (i, cert) in certs.iter().enumerate() {
        let subject = cert.subject().to_string();
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(format!("{subject:?} is not a CA certificate")));
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(invalid(format!("{subject:?} may not sign certificates")));
        }
        let validity = cert.validity();
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(validity.not_after.timestamp()).unwrap_or(0));
        let not_before = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(validity.not_before.timestamp()).unwrap_or(0));
        if now >= not_after || now < not_before {
            return Err(invalid(format!("{subject:?} is not valid now")));
        }
        earliest = earliest.min(not_after);
        let issuer = certs.get(i + 1).unwrap_or(cert);
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|_| {
                invalid(format!(
                    "{subject:?} is not signed by the next certificate of the chain"
                ))
            })?;
    }
    Ok(earliest)
}

fn parse<'a>(der: &'a [u8], origin: &str) -> Result<X509Certificate<'a>, AuthorityError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(AuthorityError::Invalid {
            origin: origin.to_owned(),
            reason: "malformed certificate".into(),
        }),
    }
}

fn read_text(path: &Path) -> Result<String, AuthorityError> {
    fs::read_to_string(path).map_err(|source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certs(n: &Named) -> Result<Vec<Vec<u8>>, AuthorityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(n.text.as_bytes())
        .map(|c| c.map(|der| der.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| AuthorityError::Pem {
            origin: n.origin.clone(),
            source: PemError::Malformed(e.to_string()),
        })
}

fn incomplete(present: PathBuf, missing: PathBuf) -> AuthorityError {
    AuthorityError::Incomplete { present, missing }
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

#[cfg(test)]
mod tests;
