//! A real `veil-ca` process on loopback, driven by real clients: veil's certificate manager, the raw
//! gRPC client, and `openssl verify`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use veil_mesh::identity::proto::IstioCertificateRequest;
use veil_mesh::identity::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use veil_mesh::identity::{
    CaClient, CaClientError, CertManager, GrpcCaClient, Identity, ManagerConfig, TokenSource,
    TrustBundle, csr, fetch, inspect,
};

const NODE_AGENT: &str = "spiffe://cluster.local/ns/veil-system/sa/ztunnel";
const ACCOUNT: &str = "spiffe://cluster.local/ns/production/sa/account-service";
const PROFILE: &str = "spiffe://cluster.local/ns/user-data/sa/user-profile-service";
const NODE_A_TOKEN: &str = "node-a-token-0123456789";
const ACCOUNT_TOKEN: &str = "account-token-0123456789";

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap()
}

/// A running `veil-ca` whose stderr is collected; killed on drop.
struct Ca {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Ca {
    /// Starts the CA with its state in `dir`, on `port` (0: any free port).
    fn start(dir: &Path, port: u16, max_ttl: &str) -> Self {
        std::fs::write(
            dir.join("tokens.yaml"),
            format!(
                "tokens:\n  - token: {NODE_A_TOKEN}\n    identity: {NODE_AGENT}\n    node: node-a\n  - token: {ACCOUNT_TOKEN}\n    identity: {ACCOUNT}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("placement.yaml"),
            format!("nodes:\n  node-a: [{ACCOUNT}]\n  node-b: [{PROFILE}]\n"),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_veil-ca"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--root-dir".as_ref(), dir.join("root").as_os_str()])
            .args(["--tokens".as_ref(), dir.join("tokens.yaml").as_os_str()])
            .args([
                "--placement".as_ref(),
                dir.join("placement.yaml").as_os_str(),
            ])
            .args(["--max-ttl", max_ttl, "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting veil-ca");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("veil-ca serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("veil-ca did not start: {:?}", log.lock().unwrap()));
        let listen = json_field(&ready, "listen");
        let port = listen.rsplit(':').next().unwrap().parse().unwrap();
        Self {
            child,
            port,
            log,
            dir: dir.to_owned(),
        }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem_file("cluster.local", &self.dir.join("root/root-cert.pem")).unwrap()
    }

    fn client(&self, token: &str) -> GrpcCaClient {
        GrpcCaClient::new(
            &format!("127.0.0.1:{}", self.port),
            "localhost",
            &self.bundle(),
            TokenSource::Static(token.to_owned()),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    /// Audit lines written so far, as (outcome, whole line).
    fn audit(&self) -> Vec<(String, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("veil::audit"))
            .map(|l| (json_field(l, "outcome"), l.clone()))
            .collect()
    }

    /// The audit lines once there are at least `n` (the log is read as the CA writes it, after it
    /// answers), or what there is after 5 s.
    async fn audit_of(&self, n: usize) -> Vec<(String, String)> {
        for _ in 0..50 {
            let audit = self.audit();
            if audit.len() >= n {
                return audit;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.audit()
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string value of `"key":"value"` in a JSON log line.
fn json_field(line: &str, key: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    value[key].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn issues_a_certificate_that_openssl_verifies_with_the_spiffe_san_and_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::start(dir.path(), 0, "1h");
    let client = ca.client(NODE_A_TOKEN);
    let bundle = ca.bundle();
    // The node agent asks for a workload on its node.
    let cert = fetch(&id(ACCOUNT), &client, &bundle, Duration::from_secs(600))
        .await
        .unwrap();
    let info = cert.info();
    assert_eq!(info.identity, id(ACCOUNT));
    let lifetime = info.not_after.duration_since(info.not_before).unwrap();
    assert_eq!(
        lifetime,
        Duration::from_secs(600 + 60),
        "TTL plus the clock-skew backdate"
    );

    let leaf = dir.path().join("leaf.pem");
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert.chain()[0].to_vec()));
    std::fs::write(&leaf, pem).unwrap();
    let root = dir.path().join("root/root-cert.pem");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .args([&root, &leaf])
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && out.contains(": OK"),
        "{out} {:?}",
        verify
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("URI:{ACCOUNT}")), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");

    let audit = ca.audit_of(1).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    let (outcome, line) = &audit[0];
    assert_eq!(outcome, "issued");
    assert_eq!(json_field(line, "identity"), ACCOUNT);
    assert_eq!(json_field(line, "caller"), NODE_AGENT);
    assert_eq!(json_field(line, "node"), "node-a");
    assert_eq!(json_field(line, "serial"), info.serial);
}

#[tokio::test]
async fn refusals_carry_clear_grpc_codes_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::start(dir.path(), 0, "1h");
    let bundle = ca.bundle();
    let ttl = Duration::from_secs(600);
    let refused = |r: Result<_, _>| match r {
        Err(veil_mesh::identity::FetchError::Ca(CaClientError::Refused { code, .. })) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Impersonating a workload on another node.
    let code = refused(fetch(&id(PROFILE), &ca.client(NODE_A_TOKEN), &bundle, ttl).await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    // A workload asking for another identity.
    let code = refused(fetch(&id(PROFILE), &ca.client(ACCOUNT_TOKEN), &bundle, ttl).await);
    assert_eq!(code, tonic::Code::PermissionDenied);
    // An unknown token.
    let code = refused(
        fetch(
            &id(ACCOUNT),
            &ca.client("not-a-known-token-000"),
            &bundle,
            ttl,
        )
        .await,
    );
    assert_eq!(code, tonic::Code::Unauthenticated);
    // A CSR for another identity than the one asked.
    let other_csr = csr::generate(&id(PROFILE)).unwrap();
    let err = ca
        .client(NODE_A_TOKEN)
        .sign(&id(ACCOUNT), &other_csr.csr_pem, ttl)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CaClientError::Refused {
                code: tonic::Code::InvalidArgument,
                ..
            }
        ),
        "{err}"
    );

    // No token at all, and garbage instead of a CSR, through the raw gRPC client.
    let mut raw = raw_client(&ca).await;
    let status = raw
        .create_certificate(IstioCertificateRequest {
            csr: "garbage".into(),
            validity_duration: 60,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: "garbage".into(),
        validity_duration: 60,
        metadata: None,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ACCOUNT_TOKEN}").parse().unwrap(),
    );
    let status = raw.create_certificate(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    let outcomes: Vec<String> = ca.audit_of(6).await.into_iter().map(|(o, _)| o).collect();
    assert_eq!(
        outcomes,
        vec!["refused"; 6],
        "every refusal is audited once"
    );
    let lines = ca.audit();
    assert!(json_field(&lines[0].1, "reason").contains("no workload with identity"));
    assert_eq!(json_field(&lines[0].1, "node"), "node-a");
}

#[tokio::test]
async fn an_oversized_request_is_refused_out_of_range_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::start(dir.path(), 0, "1h");
    let mut raw = raw_client(&ca).await;
    // Over the 64 KiB message limit: tonic refuses it before the certificate service runs.
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: "A".repeat(100 * 1024),
        validity_duration: 60,
        metadata: None,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ACCOUNT_TOKEN}").parse().unwrap(),
    );
    let status = raw.create_certificate(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    // The log is read by another thread: give it a moment.
    for _ in 0..100 {
        if !ca.audit().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = ca.audit();
    assert_eq!(audit.len(), 1, "one audit line per refusal: {audit:?}");
    let (outcome, line) = &audit[0];
    assert_eq!(outcome, "refused");
    assert_eq!(json_field(line, "code"), "OutOfRange");
    assert!(json_field(line, "reason").contains("too large"), "{line}");
    assert!(json_field(line, "peer").starts_with("127.0.0.1:"), "{line}");

    // The CA still serves: a valid request after the refusal is issued.
    let bundle = ca.bundle();
    fetch(
        &id(ACCOUNT),
        &ca.client(ACCOUNT_TOKEN),
        &bundle,
        Duration::from_secs(600),
    )
    .await
    .expect("the CA still issues after an oversized request");
}

/// A gRPC client with no bearer token, over the same TLS as veil's client.
async fn raw_client(ca: &Ca) -> IstioCertificateServiceClient<tonic::transport::Channel> {
    // GrpcCaClient always sends a token; this one speaks tonic directly over the same TLS config.
    let bundle = ca.bundle();
    let config = veil_mesh::identity::ca_client_config(&bundle).unwrap();
    let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str()).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", ca.port))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    IstioCertificateServiceClient::new(channel)
}

#[tokio::test]
async fn the_manager_rotates_short_lived_certificates_and_rides_out_a_ca_outage() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::start(dir.path(), 0, "4s");
    let client = ca.client(NODE_A_TOKEN);
    let manager = CertManager::new(
        Arc::new(client),
        Arc::new(ca.bundle()),
        ManagerConfig {
            ttl: Duration::from_secs(3600),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(500),
        },
    );
    let handle = manager.track(id(ACCOUNT));
    let first = tokio::time::timeout(Duration::from_secs(10), handle.ready())
        .await
        .unwrap()
        .unwrap();
    // Renewal at half of the ~4s lifetime, before expiry.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    let second = handle.current().expect("valid certificate");
    assert_ne!(second.info().serial, first.info().serial, "not renewed");
    assert!(SystemTime::now() < first.not_after());

    // The CA goes away: the current certificate is served until it expires, then nothing is.
    let port = ca.stop();
    let expiry = second.not_after();
    tokio::time::sleep(
        expiry
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(Duration::from_millis(700)),
    )
    .await;
    let during = handle
        .current()
        .expect("served while valid despite the outage");
    assert_eq!(during.info().serial, second.info().serial);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        handle.current().is_none(),
        "expired certificate still served"
    );

    // The CA returns on the same address with the same root: the manager recovers on its own.
    let ca = Ca::start(dir.path(), port, "4s");
    let recovered = tokio::time::timeout(Duration::from_secs(10), handle.ready())
        .await
        .expect("no recovery within 10s")
        .unwrap();
    assert_ne!(recovered.info().serial, second.info().serial);
    assert_eq!(
        inspect(&recovered.chain()[0]).unwrap().identity,
        id(ACCOUNT)
    );
    drop(ca);
}
