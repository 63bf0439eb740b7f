//! Table tests of CSR validation. RSA and P-521 requests are fixtures made with
//! `openssl req -new -newkey … -subj / -addext subjectAltName=URI:spiffe://cluster.local/ns/default/sa/web`
//! (ring cannot generate RSA keys); the rest are built here with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, SanType,
    SignatureAlgorithm,
};

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

fn web() -> Identity {
    Identity::parse(WEB).unwrap()
}

/// A CSR signed with a fresh key of `alg`, with the given SANs, optionally asking to be a CA.
fn csr_with(alg: &'static SignatureAlgorithm, sans: Vec<SanType>, ca: bool) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn p256(sans: Vec<SanType>) -> String {
    csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, sans, false)
}

/// `pem` with one byte of its signature flipped.
fn tampered(pem: &str) -> String {
    let parsed = pem::parse(pem).unwrap();
    let mut der = parsed.contents().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

#[test]
fn accepts_well_formed_requests_for_the_identity() {
    let cases = [
        ("P-256", p256(vec![uri(WEB)]), "ECDSA P-256"),
        (
            "P-384",
            csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, vec![uri(WEB)], false),
            "ECDSA P-384",
        ),
        (
            "RSA 2048",
            include_str!("testdata/rsa2048.csr").to_owned(),
            "RSA 2048",
        ),
    ];
    for (name, pem, description) in cases {
        let key = validate(&pem, &web()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(key.description, description, "{name}");
    }
}

/// Checks the refusal is the expected one.
type Expect = fn(&CsrError) -> bool;

#[test]
fn refuses_what_it_must_not_sign() {
    let other = "spiffe://cluster.local/ns/default/sa/admin";
    let dns = SanType::DnsName("web.default.svc".try_into().unwrap());
    let cases: Vec<(&str, String, Expect)> = vec![
        ("wrong SAN", p256(vec![uri(other)]), |e| {
            matches!(e, CsrError::WrongIdentity { .. })
        }),
        ("two SANs", p256(vec![uri(WEB), uri(other)]), |e| {
            *e == CsrError::SanCount(2)
        }),
        ("URI and DNS SANs", p256(vec![uri(WEB), dns.clone()]), |e| {
            *e == CsrError::SanCount(2)
        }),
        (
            "DNS SAN only",
            p256(vec![dns]),
            |e| matches!(e, CsrError::NotUriSan(kind) if kind == "DNS name"),
        ),
        ("no SAN", p256(vec![]), |e| *e == CsrError::SanCount(0)),
        (
            "CA:true",
            csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(WEB)], true),
            |e| *e == CsrError::RequestsCa,
        ),
        (
            "RSA-1024",
            include_str!("testdata/rsa1024.csr").to_owned(),
            |e| *e == CsrError::RsaKeySize { bits: 1024 },
        ),
        ("P-521", include_str!("testdata/p521.csr").to_owned(), |e| {
            matches!(e, CsrError::UnsupportedKey(_))
        }),
        (
            "Ed25519",
            csr_with(&rcgen::PKCS_ED25519, vec![uri(WEB)], false),
            |e| matches!(e, CsrError::UnsupportedKey(_)),
        ),
        ("bad signature", tampered(&p256(vec![uri(WEB)])), |e| {
            *e == CsrError::BadSignature
        }),
        (
            "malformed PEM",
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n".into(),
            |e| matches!(e, CsrError::Pem(_)),
        ),
        ("not PEM", "hello".into(), |e| matches!(e, CsrError::Pem(_))),
        ("empty", String::new(), |e| matches!(e, CsrError::Pem(_))),
        (
            "PEM of garbage DER",
            pem::encode(&pem::Pem::new(
                "CERTIFICATE REQUEST",
                vec![0x30, 0x03, 1, 2, 3],
            )),
            |e| matches!(e, CsrError::Malformed(_)),
        ),
        (
            "a certificate, not a CSR",
            pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x00])),
            |e| matches!(e, CsrError::Pem(_)),
        ),
        (
            "two CSRs",
            format!("{}{}", p256(vec![uri(WEB)]), p256(vec![uri(WEB)])),
            |e| matches!(e, CsrError::Pem(_)),
        ),
        ("oversized", "A".repeat(MAX_CSR_BYTES + 1), |e| {
            matches!(e, CsrError::TooLarge { .. })
        }),
    ];
    for (name, pem, expected) in cases {
        match validate(&pem, &web()) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => assert!(expected(&e), "{name}: unexpected error {e:?}"),
        }
    }
}

#[test]
fn an_oversized_but_valid_request_is_refused_before_parsing() {
    let mut pem = p256(vec![uri(WEB)]);
    pem.push_str(&"\n".repeat(MAX_CSR_BYTES));
    assert!(matches!(
        validate(&pem, &web()),
        Err(CsrError::TooLarge { .. })
    ));
}
