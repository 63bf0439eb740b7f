use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::*;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// A CA, a client certificate it signed (PEM), its key, and an unrelated key.
fn pki() -> (String, String, String, String) {
    let (ca, leaf, key) = leaf_pki("ztunnel");
    (ca, leaf, key, KeyPair::generate().unwrap().serialize_pem())
}

fn flags(endpoint: &str) -> TraceFlags {
    TraceFlags {
        otlp_endpoint: Some(endpoint.parse().unwrap()),
        ..TraceFlags::default()
    }
}

fn refused(flags: &TraceFlags) -> String {
    client_config(flags).unwrap_err().to_string()
}

#[test]
fn plain_endpoints_take_no_tls_files() {
    assert!(client_config(&TraceFlags::default()).unwrap().is_none());
    assert!(client_config(&flags("http://c:4317")).unwrap().is_none());
    let files = Files::new();
    let (ca, ..) = pki();
    let mut f = flags("http://c:4317");
    f.otlp_ca_file = Some(files.write("ca.pem", &ca));
    assert!(refused(&f).contains("https://"), "{}", refused(&f));
}

#[test]
fn https_needs_a_ca_file_that_holds_certificates() {
    let files = Files::new();
    let mut f = flags("https://c:4317");
    assert!(refused(&f).contains("needs --otlp-ca-file"));
    f.otlp_ca_file = Some(files.dir.path().join("missing.pem"));
    assert!(refused(&f).contains("missing.pem"), "{}", refused(&f));
    f.otlp_ca_file = Some(files.write("empty.pem", "no PEM here\n"));
    assert!(
        refused(&f).contains("holds no certificate"),
        "{}",
        refused(&f)
    );
    f.otlp_ca_file = Some(files.write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ));
    assert!(refused(&f).contains("bad.pem"), "{}", refused(&f));
    let (ca, ..) = pki();
    f.otlp_ca_file = Some(files.write("ca.pem", &ca));
    assert!(client_config(&f).unwrap().is_some());
}

#[test]
fn a_client_certificate_needs_its_own_key() {
    let files = Files::new();
    let (ca, leaf, key, other) = pki();
    let mut f = flags("https://c:4317");
    f.otlp_ca_file = Some(files.write("ca.pem", &ca));
    f.otlp_client_cert = Some(files.write("leaf.pem", &leaf));
    assert!(refused(&f).contains("go together"), "{}", refused(&f));
    f.otlp_client_key = Some(files.write("other.pem", &other));
    assert!(
        refused(&f).contains("not a certificate and its key"),
        "{}",
        refused(&f)
    );
    f.otlp_client_key = Some(files.write("leaf.pem", &leaf));
    assert!(refused(&f).contains("no private key"), "{}", refused(&f));
    f.otlp_client_key = Some(files.write("key.pem", &key));
    let config = client_config(&f).unwrap().unwrap();
    assert!(config.client_auth_cert_resolver.has_certs());
    assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
}

/// A CA and a certificate for `san` it signed (PEM: CA, certificate, key).
fn leaf_pki(san: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![san.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Whether a TLS server on loopback with `cert`/`key` completes a handshake with the exporters'
/// channel trusting `ca`.
async fn handshake_completes(ca: &str, cert: &str, key: &str) -> bool {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;

    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.is_ok()
    });
    let files = Files::new();
    let mut f = flags(&format!("https://127.0.0.1:{port}"));
    f.otlp_ca_file = Some(files.write("ca.pem", ca));
    let channel = tls_channel(&f).unwrap().unwrap();
    let mut client = MetricsServiceClient::new(channel);
    // The call fails either way (nothing serves gRPC); the server saw the handshake or not.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        client.export(ExportMetricsServiceRequest::default()),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server answered")
        .unwrap()
}

/// The collector is verified: by the CA file, and for the endpoint's address.
#[tokio::test]
async fn the_collector_must_prove_itself_to_the_ca_file_for_its_address() {
    let (ca, cert, key) = leaf_pki("127.0.0.1");
    assert!(
        handshake_completes(&ca, &cert, &key).await,
        "the control case"
    );
    let (other_ca, ..) = leaf_pki("127.0.0.1");
    assert!(
        !handshake_completes(&other_ca, &cert, &key).await,
        "another CA"
    );
    let (ca, cert, key) = leaf_pki("10.9.9.9");
    assert!(
        !handshake_completes(&ca, &cert, &key).await,
        "another address"
    );
}
