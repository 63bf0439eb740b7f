use std::os::unix::fs::PermissionsExt;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use veil_mesh::identity::{TrustBundle, Usage, WorkloadCert, inspect, verify_identity};

use super::*;

fn web() -> Identity {
    Identity::parse("spiffe://cluster.local/ns/default/sa/web").unwrap()
}

#[test]
fn a_self_signed_root_is_generated_once_persisted_privately_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("ca");
    let first = Authority::self_signed(&root_dir, "cluster.local").unwrap();
    let mode = |name: &str| {
        fs::metadata(root_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(ROOT_KEY_FILE), 0o600);
    assert_eq!(mode(ROOT_CERT_FILE), 0o644);
    assert_eq!(
        fs::metadata(&root_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let second = Authority::self_signed(&root_dir, "cluster.local").unwrap();
    assert_eq!(first.root(), second.root(), "a restart must keep the root");
    assert_eq!(first.root_pem(), second.root_pem());
}

#[test]
fn a_half_present_root_is_reported_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    Authority::self_signed(dir.path(), "cluster.local").unwrap();
    let key = fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap();
    fs::remove_file(dir.path().join(ROOT_CERT_FILE)).unwrap();
    let err = Authority::self_signed(dir.path(), "cluster.local").unwrap_err();
    assert!(matches!(err, AuthorityError::Incomplete { .. }), "{err}");
    assert_eq!(
        fs::read(dir.path().join(ROOT_KEY_FILE)).unwrap(),
        key,
        "key untouched"
    );
}

#[test]
fn workload_certificates_carry_the_identity_usages_and_bounded_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::self_signed(dir.path(), "cluster.local").unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = SystemTime::now();
    let ttl = Duration::from_secs(3600);
    let issued = authority.sign_workload(&key, &web(), ttl, now).unwrap();

    let info = inspect(&issued.der).unwrap();
    assert_eq!(info.identity, web());
    assert_eq!(info.serial, issued.serial);
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(info.not_after), secs(now + ttl));
    assert_eq!(secs(info.not_before), secs(now - CLOCK_SKEW_BACKDATE));

    // It verifies for both TLS roles against the root, and chains as the API returns it.
    let bundle = TrustBundle::from_pem("cluster.local", authority.root_pem().as_bytes()).unwrap();
    for usage in [Usage::Client, Usage::Server] {
        assert_eq!(
            verify_identity(&issued.der, &[], &bundle, now, usage).unwrap(),
            web()
        );
    }
    let chain = authority.response_chain(&issued);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], issued.pem);
    assert_eq!(chain[1], authority.root_pem());

    let other = authority.sign_workload(&key, &web(), ttl, now).unwrap();
    assert_ne!(other.serial, issued.serial, "serials must be unique");
}

/// A root and an intermediate written as an organisation's PKI would hand them over.
struct Pki {
    dir: tempfile::TempDir,
    root_key: KeyPair,
    root_params: CertificateParams,
}

impl Pki {
    fn new() -> Self {
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root_params = ca_params("org root");
        let root = root_params.self_signed(&root_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("root.pem"), root.pem()).unwrap();
        Self {
            dir,
            root_key,
            root_params,
        }
    }

    /// Writes an intermediate signed by the root (or a leaf if `ca` is false) and its key.
    fn intermediate(&self, ca: bool) -> PluggedFiles {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params("veil intermediate");
        if !ca {
            params.is_ca = IsCa::ExplicitNoCa;
        }
        let issuer = Issuer::from_params(&self.root_params, &self.root_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let path = |name: &str| self.dir.path().join(name);
        fs::write(path("ca-cert.pem"), cert.pem()).unwrap();
        fs::write(path("ca-key.pem"), key.serialize_pem()).unwrap();
        PluggedFiles {
            cert: path("ca-cert.pem"),
            key: path("ca-key.pem"),
            intermediates: None,
            root: path("root.pem"),
        }
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    params
}

#[test]
fn a_plugged_in_intermediate_signs_chains_that_verify_to_the_organisation_root() {
    let pki = Pki::new();
    let files = pki.intermediate(true);
    let authority = Authority::plugged(&files).unwrap();
    let csr_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = authority
        .sign_workload(
            &csr_key,
            &web(),
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .unwrap();
    let chain = authority.response_chain(&issued);
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[2], fs::read_to_string(&files.root).unwrap());

    // The manager-side acceptance path: leaf + intermediate verify against the root alone.
    let bundle = TrustBundle::from_pem("cluster.local", chain[2].as_bytes()).unwrap();
    let der = |pem: &str| {
        CertificateDer::from(single_section(pem.as_bytes(), SectionKind::Certificate).unwrap())
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(csr_key.serialize_der()));
    let cert = WorkloadCert::new(
        vec![der(&chain[0]), der(&chain[1])],
        key,
        &bundle,
        &web(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(cert.identity(), &web());
}

#[test]
fn plugged_in_material_that_cannot_sign_is_refused() {
    let pki = Pki::new();

    let not_ca = pki.intermediate(false);
    let err = Authority::plugged(&not_ca).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");

    let files = pki.intermediate(true);
    let stranger = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    fs::write(&files.key, stranger.serialize_pem()).unwrap();
    let err = Authority::plugged(&files).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    let files = pki.intermediate(true);
    let other_root = Pki::new();
    let wrong_root = PluggedFiles {
        root: other_root.dir.path().join("root.pem"),
        ..files.clone()
    };
    let err = Authority::plugged(&wrong_root).unwrap_err();
    assert!(err.to_string().contains("not signed by"), "{err}");

    fs::write(
        &files.key,
        "-----BEGIN EC PRIVATE KEY-----\nAAEC\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = Authority::plugged(&files).unwrap_err();
    assert!(err.to_string().contains("PKCS#8"), "{err}");
}
