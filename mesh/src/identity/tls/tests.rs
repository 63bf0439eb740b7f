//! Handshakes between configurations built by this module, over an in-memory pipe.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::testing::{TestPki, certified_key};

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// What each side concluded: the peer identity it saw, or its error.
struct Outcome {
    server: Result<Identity, String>,
    client: Result<Identity, String>,
}

/// Runs one handshake plus a one-byte exchange (in TLS 1.3 a client learns that the server refused
/// its certificate only when it next reads).
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server)
            .accept(a)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok(peer)
    };
    let client_side = async move {
        let name = ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, 1).into());
        let mut tls = TlsConnector::from(client)
            .connect(name, b)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok(peer)
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("handshake hung");
    Outcome { server, client }
}

fn server_with(pki: &TestPki, cert: &WorkloadCert) -> Arc<ServerConfig> {
    server_config(
        pki.bundle(),
        Arc::new(FixedCert(cert.certified_key().clone())),
    )
}

#[tokio::test]
async fn mutual_tls_succeeds_and_each_side_learns_the_verified_peer_identity() {
    let pki = TestPki::new("cluster.local");
    let (client_id, server_id) = (id("prod", "account"), id("user-data", "profile"));
    let client_cert = pki.issue(&client_id);
    let server_cert = pki.issue(&server_id);
    let client = client_config(pki.bundle(), &client_cert, vec![server_id.clone()]);
    let out = handshake(server_with(&pki, &server_cert), client).await;
    assert_eq!(out.server.unwrap(), client_id);
    assert_eq!(out.client.unwrap(), server_id);
}

#[tokio::test]
async fn client_accepts_any_of_several_expected_identities() {
    let pki = TestPki::new("cluster.local");
    let server_id = id("user-data", "profile");
    let expected = vec![id("user-data", "waypoint"), server_id.clone()];
    let client = client_config(pki.bundle(), &pki.issue(&id("a", "b")), expected);
    let out = handshake(server_with(&pki, &pki.issue(&server_id)), client).await;
    assert_eq!(out.client.unwrap(), server_id);
}

#[tokio::test]
async fn client_refuses_a_server_with_an_unexpected_identity() {
    let pki = TestPki::new("cluster.local");
    let client = client_config(
        pki.bundle(),
        &pki.issue(&id("prod", "account")),
        vec![id("user-data", "profile")],
    );
    let impostor = pki.issue(&id("user-data", "rogue"));
    let out = handshake(server_with(&pki, &impostor), client).await;
    let err = out.client.unwrap_err();
    assert!(err.contains("UnexpectedIdentity"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn both_sides_refuse_certificates_from_another_root() {
    let pki = TestPki::new("cluster.local");
    let foreign = TestPki::new("cluster.local");
    let server_id = id("user-data", "profile");

    // A server whose certificate comes from another root.
    let client = client_config(
        pki.bundle(),
        &pki.issue(&id("prod", "account")),
        vec![server_id.clone()],
    );
    let foreign_server = foreign.issue(&server_id);
    let out = handshake(
        server_config(
            pki.bundle(),
            Arc::new(FixedCert(foreign_server.certified_key().clone())),
        ),
        client,
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A client whose certificate comes from another root.
    let client = client_config(
        pki.bundle(),
        &foreign.issue(&id("prod", "account")),
        vec![server_id.clone()],
    );
    let out = handshake(server_with(&pki, &pki.issue(&server_id)), client).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain_even_under_the_same_root() {
    let pki = TestPki::new("cluster.local");
    let now = SystemTime::now();
    let (chain, key) = pki.issue_raw(
        &["spiffe://evil.local/ns/prod/sa/account"],
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    );
    let server_id = id("user-data", "profile");
    let client = client_config_with_key(&pki, certified_key(chain, key), vec![server_id.clone()]);
    let out = handshake(server_with(&pki, &pki.issue(&server_id)), client).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("ForeignTrustDomain"), "{err}");
}

#[tokio::test]
async fn both_sides_refuse_expired_certificates() {
    let pki = TestPki::new("cluster.local");
    let now = SystemTime::now();
    let server_id = id("user-data", "profile");
    let expired = |uri: &str| {
        let (chain, key) = pki.issue_raw(
            &[uri],
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        );
        certified_key(chain, key)
    };

    let client = client_config(
        pki.bundle(),
        &pki.issue(&id("prod", "account")),
        vec![server_id.clone()],
    );
    let server = server_config(
        pki.bundle(),
        Arc::new(FixedCert(expired(server_id.as_str()))),
    );
    let out = handshake(server, client).await;
    let err = out.client.unwrap_err();
    assert!(err.contains("Expired"), "{err}");

    let client = client_config_with_key(
        &pki,
        expired("spiffe://cluster.local/ns/prod/sa/account"),
        vec![server_id.clone()],
    );
    let out = handshake(server_with(&pki, &pki.issue(&server_id)), client).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("Expired"), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let pki = TestPki::new("cluster.local");
    let server_id = id("user-data", "profile");
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::identity::verify::ExpectedServer {
            bundle: pki.bundle(),
            expected: vec![server_id.clone()],
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let out = handshake(server_with(&pki, &pki.issue(&server_id)), Arc::new(config)).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn certificates_without_exactly_one_spiffe_uri_san_are_refused() {
    let pki = TestPki::new("cluster.local");
    let server_id = id("user-data", "profile");
    let now = SystemTime::now();
    let cases: [(&str, &[&str], &str); 3] = [
        (
            "two URI SANs",
            &[
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/c",
            ],
            "UriSanCount(2)",
        ),
        ("no URI SAN", &[], "UriSanCount(0)"),
        (
            "not a SPIFFE URI",
            &["https://cluster.local/ns/a/sa/b"],
            "NotWorkloadIdentity",
        ),
    ];
    for (name, uris, want) in cases {
        let (chain, key) = pki.issue_raw(
            uris,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        let client =
            client_config_with_key(&pki, certified_key(chain, key), vec![server_id.clone()]);
        let out = handshake(server_with(&pki, &pki.issue(&server_id)), client).await;
        let err = out.server.unwrap_err();
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn only_tls13_with_h2_is_offered_and_resumption_is_off() {
    let pki = TestPki::new("cluster.local");
    let cert = pki.issue(&id("a", "b"));
    let client = client_config(pki.bundle(), &cert, vec![id("c", "d")]);
    assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
    assert!(
        client
            .crypto_provider()
            .cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS13)
    );
    let server = server_with(&pki, &cert);
    assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
    assert_eq!(server.send_tls13_tickets, 0);
    let verifier = ExpectedServer {
        bundle: pki.bundle(),
        expected: vec![],
    };
    assert!(!verifier.supported_verify_schemes().is_empty());
}

/// A client config presenting an arbitrary (possibly invalid) certificate.
fn client_config_with_key(
    pki: &TestPki,
    key: Arc<rustls::sign::CertifiedKey>,
    expected: Vec<Identity>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer {
            bundle: pki.bundle(),
            expected,
        }))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}
