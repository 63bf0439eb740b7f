//! A throw-away PKI and a fake CA client, for tests of this crate and of the crates built on it.
//! Compiled only for tests (feature `testing`).

#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    reason = "test helpers"
)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::identity::{
    BoxFuture, CaClient, CaClientError, Identity, TrustBundle, WorkloadCert, provider,
};

/// A root CA for one trust domain.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
    bundle: Arc<TrustBundle>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("bundle", &self.bundle)
            .finish()
    }
}

impl TestPki {
    /// A fresh self-signed P-256 root for `trust_domain`.
    pub fn new(trust_domain: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("test root {trust_domain} {}", next_serial()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.self_signed(&key).unwrap();
        let root = cert.der().clone();
        let bundle = Arc::new(TrustBundle::new(trust_domain, vec![root.clone()]).unwrap());
        Self {
            issuer: Issuer::new(params, key),
            root,
            root_pem: cert.pem(),
            bundle,
        }
    }

    /// The bundle holding this root.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.clone()
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// A verified workload certificate for `identity`, valid from a minute ago for an hour.
    pub fn issue(&self, identity: &Identity) -> WorkloadCert {
        let now = SystemTime::now();
        let (chain, key) = self.issue_raw(
            &[identity.as_str()],
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        WorkloadCert::new(chain, key, &self.bundle, identity, now).unwrap()
    }

    /// An unverified leaf with the given URI SANs and validity, for negative tests.
    pub fn issue_raw(
        &self,
        uris: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = leaf_params(uris, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key)
    }

    /// A server certificate for DNS names and IP addresses (PEM chain with the root last, PEM
    /// PKCS#8 key), valid for a day: the serving certificate of a component dialled by name.
    pub fn server_pem(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let now = SystemTime::now();
        let mut params = leaf_params(
            &[],
            now - Duration::from_secs(60),
            now + Duration::from_secs(86_400),
        );
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().unwrap()),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.root_pem),
            key.serialize_pem(),
        )
    }

    /// Signs `csr_pem` for the given URI SAN (by default the CSR's own public key), answering as the
    /// CA does: leaf PEM first, root PEM last.
    pub fn sign_csr(&self, csr_pem: &str, uri: &str, ttl: Duration) -> Vec<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let now = SystemTime::now();
        let params = leaf_params(&[uri], now - Duration::from_secs(1), now + ttl);
        let cert = params.signed_by(&csr.public_key, &self.issuer).unwrap();
        vec![cert.pem(), self.root_pem.clone()]
    }

    /// Like [`Self::sign_csr`], but certifies a different key than the CSR's.
    pub fn sign_other_key(&self, uri: &str, ttl: Duration) -> Vec<String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let now = SystemTime::now();
        let params = leaf_params(&[uri], now - Duration::from_secs(1), now + ttl);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        vec![cert.pem(), self.root_pem.clone()]
    }
}

/// Distinct root names, so that roots are told apart by name as real ones are.
fn next_serial() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn leaf_params(uris: &[&str], not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|uri| SanType::URI((*uri).try_into().unwrap()))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

/// A rustls certified key from an unverified chain and key (to present invalid certificates).
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<CertifiedKey> {
    let signer = provider().key_provider.load_private_key(key).unwrap();
    Arc::new(CertifiedKey::new(chain, signer))
}

/// How the fake CA answers.
#[derive(Clone, Debug)]
pub enum FakeCaMode {
    /// Signs the CSR for the identity asked.
    Honest,
    /// Fails as an unreachable CA does.
    Down,
    /// Signs the CSR, but for another identity.
    WrongIdentity(Identity),
    /// Certifies a key other than the CSR's.
    OtherKey,
    /// Signs with another root than the one the client trusts.
    OtherRoot(Arc<TestPki>),
}

/// An in-process CA client backed by a [`TestPki`].
#[derive(Debug)]
pub struct FakeCa {
    pki: Arc<TestPki>,
    mode: Mutex<FakeCaMode>,
    /// How many requests it received.
    pub calls: AtomicUsize,
    /// The lifetime it grants, at most.
    pub max_ttl: Mutex<Duration>,
    /// Set once any request was refused or failed.
    pub failed: AtomicBool,
}

impl FakeCa {
    /// An honest fake CA signing with `pki`, granting at most `max_ttl`.
    pub fn new(pki: Arc<TestPki>, max_ttl: Duration) -> Self {
        Self {
            pki,
            mode: Mutex::new(FakeCaMode::Honest),
            calls: AtomicUsize::new(0),
            max_ttl: Mutex::new(max_ttl),
            failed: AtomicBool::new(false),
        }
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: FakeCaMode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl CaClient for FakeCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, CaClientError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let ttl = ttl.min(*self.max_ttl.lock().unwrap());
        let mode = self.mode.lock().unwrap().clone();
        let answer = match mode {
            FakeCaMode::Honest => Ok(self.pki.sign_csr(csr_pem, identity.as_str(), ttl)),
            FakeCaMode::Down => Err(CaClientError::Unavailable("fake CA is down".into())),
            FakeCaMode::WrongIdentity(other) => Ok(self.pki.sign_csr(csr_pem, other.as_str(), ttl)),
            FakeCaMode::OtherKey => Ok(self.pki.sign_other_key(identity.as_str(), ttl)),
            FakeCaMode::OtherRoot(pki) => Ok(pki.sign_csr(csr_pem, identity.as_str(), ttl)),
        };
        if answer.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        Box::pin(async move { answer })
    }
}

/// A connected pair of loopback TCP sockets: the connecting end (an application's) and the
/// accepted end (what a proxy would hold).
pub async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connect, listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// The application's end of a tunnel: a loopback connection whose other end is spliced into
/// `send`/`recv` (by a task of its own).
pub async fn splice_to_app(
    send: crate::hbone::TunnelSend,
    recv: crate::hbone::TunnelRecv,
) -> tokio::net::TcpStream {
    let (app, mut proxied) = socket_pair().await;
    tokio::spawn(async move {
        let _ = crate::hbone::splice(
            &mut proxied,
            crate::hbone::LastRead::Tracked,
            send,
            recv,
            |_| {},
            |_| {},
        )
        .await;
    });
    app
}

/// A target server on loopback; each accepted connection is handed to `behaviour`.
pub async fn target<F, Fut>(behaviour: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(behaviour(tcp));
        }
    });
    addr
}

/// A target that reports how the first connection's data ended: `UnexpectedEof` for a clean end,
/// else the error's kind (`ConnectionReset` for a reset).
pub async fn end_observer() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<std::io::ErrorKind>,
) {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::oneshot::channel::<std::io::ErrorKind>();
    let tx = Mutex::new(Some(tx));
    let addr = target(move |mut tcp| {
        let tx = tx.lock().unwrap().take();
        async move {
            let mut buf = [0u8; 16];
            let kind = loop {
                match tcp.read(&mut buf).await {
                    Ok(0) => break std::io::ErrorKind::UnexpectedEof,
                    Ok(_) => continue,
                    Err(e) => break e.kind(),
                }
            };
            if let Some(tx) = tx {
                let _ = tx.send(kind);
            }
        }
    })
    .await;
    (addr, rx)
}

/// `f`, or a panic after 10 s.
pub async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// What the test HBONE servers do with a stream (see [`spawn_hbone_server`]).
async fn serve_test_stream(mut stream: crate::hbone::InboundStream, expect_peer: Option<Identity>) {
    use crate::hbone::{parse_connect, refuse, splice};
    use http::StatusCode;

    if let Some(peer) = expect_peer {
        assert_eq!(stream.peer, peer);
    }
    let target = parse_connect(&stream.request).unwrap().target;
    if target.port() == REFUSED_PORT {
        return refuse(&mut stream.respond, StatusCode::UNAUTHORIZED);
    }
    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
        return refuse(&mut stream.respond, StatusCode::SERVICE_UNAVAILABLE);
    };
    let send = stream
        .respond
        .send_response(http::Response::new(()))
        .await
        .unwrap();
    let recv = stream.request.into_body();
    let _ = splice(
        &mut upstream,
        crate::hbone::LastRead::Tracked,
        send,
        recv,
        |_| {},
        |_| {},
    )
    .await;
}

/// [`spawn_hbone_server`] over QUIC (HBONE over HTTP/3), on a UDP port of loopback.
pub async fn spawn_hbone_quic_server(
    pki: &TestPki,
    identity: &Identity,
    expect_peer: Option<&Identity>,
) -> std::net::SocketAddr {
    let (_, never) = tokio::sync::watch::channel(false);
    quic_server(pki, identity, expect_peer, never).await.0
}

/// As [`spawn_hbone_quic_server`] (expecting any client), with every connection told to drain
/// (GOAWAY, then its end once its streams have ended) when `drain` turns true; each connection's
/// end comes out of the returned channel.
pub async fn spawn_draining_hbone_quic_server(
    pki: &TestPki,
    identity: &Identity,
    drain: tokio::sync::watch::Receiver<bool>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), crate::hbone::ConnectError>>,
) {
    quic_server(pki, identity, None, drain).await
}

async fn quic_server(
    pki: &TestPki,
    identity: &Identity,
    expect_peer: Option<&Identity>,
    drain: tokio::sync::watch::Receiver<bool>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), crate::hbone::ConnectError>>,
) {
    use crate::hbone::H2Settings;
    use crate::hbone::quic::{endpoint, serve_connection, server_config};
    use crate::identity::{FixedCert, server_config as tls_config};

    let cert = pki.issue(identity);
    let tls = tls_config(
        pki.bundle(),
        Arc::new(FixedCert(cert.certified_key().clone())),
    );
    let settings = H2Settings::default();
    let config = server_config(&tls, &settings).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let endpoint = endpoint(socket, Some(config)).unwrap();
    let expect_peer = expect_peer.cloned();
    let (ended, ends) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let expect_peer = expect_peer.clone();
            let settings = settings.clone();
            let (mut drain, ended) = (drain.clone(), ended.clone());
            tokio::spawn(async move {
                let handler = move |stream| serve_test_stream(stream, expect_peer.clone());
                let shutdown = async move {
                    if drain.wait_for(|drain| *drain).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                let served = serve_connection(incoming, &settings, handler, shutdown, || {}).await;
                let _ = ended.send(served);
            });
        }
    });
    (addr, ends)
}

/// CONNECTs to this port are refused with 401 by [`spawn_hbone_server`].
pub const REFUSED_PORT: u16 = 1;

/// An HBONE server on loopback with `identity`'s certificate. CONNECTs to [`REFUSED_PORT`] get 401,
/// unreachable targets 503, others are spliced to their target. When `expect_peer` is set, a client
/// with another identity makes the handler panic (the test then times out).
pub async fn spawn_hbone_server(
    pki: &TestPki,
    identity: &Identity,
    expect_peer: Option<&Identity>,
) -> std::net::SocketAddr {
    spawn_hbone_server_with(
        pki,
        identity,
        expect_peer,
        crate::hbone::H2Settings::default(),
    )
    .await
}

/// [`spawn_hbone_server`] with HTTP/2 `settings` of its own.
pub async fn spawn_hbone_server_with(
    pki: &TestPki,
    identity: &Identity,
    expect_peer: Option<&Identity>,
    settings: crate::hbone::H2Settings,
) -> std::net::SocketAddr {
    use crate::hbone::serve_connection;
    use crate::identity::{FixedCert, server_config};

    let cert = pki.issue(identity);
    let tls = server_config(
        pki.bundle(),
        Arc::new(FixedCert(cert.certified_key().clone())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expect_peer = expect_peer.cloned();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            let expect_peer = expect_peer.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let _ = serve_connection(
                    tcp,
                    tls,
                    &settings,
                    move |stream| serve_test_stream(stream, expect_peer.clone()),
                    std::future::pending(),
                )
                .await;
            });
        }
    });
    addr
}

#[cfg(any(feature = "testing", feature = "kubernetes"))]
/// A fake Kubernetes API server: kube's real client over a mock transport, each request answered by
/// `handler(method, path and query, body)` with `Some((status, JSON))`, or left unanswered with
/// `None` (how watches stay open).
pub fn fake_kube<F>(handler: F) -> kube::Client
where
    F: Fn(&http::Method, &str, &[u8]) -> Option<(u16, String)> + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    use kube::client::Body;

    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            // kube writes an empty query as a bare `?`.
            let target = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .trim_end_matches('?')
                .to_owned();
            match handler(&parts.method, &target, &body) {
                Some((status, json)) => respond.send_response(
                    http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(json.into_bytes()))
                        .unwrap(),
                ),
                None => pending.push(respond),
            }
        }
    });
    kube::Client::new(service, "default")
}

/// A pod scheduled to `node` whose network is not set up yet (no address), enrolled, running as
/// service account `name`, with `labels`: what
/// [`MeshState::with_pending`](crate::discovery::MeshState::with_pending) takes.
pub fn pending_workload(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
) -> crate::discovery::Workload {
    crate::discovery::Workload {
        uid: format!("{namespace}/{name}").into(),
        name: name.into(),
        namespace: namespace.into(),
        service_account: name.into(),
        node: node.into(),
        ips: Vec::new(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        naming: Arc::new(crate::discovery::Naming::new(
            name.into(),
            &Default::default(),
        )),
        netns: None,
        enrolled: true,
        serving: crate::discovery::Serving::Ready,
        identity: Identity::new("cluster.local", namespace, name).unwrap(),
        waypoint: None,
        waypoint_conflict: Vec::new(),
        telemetry: None,
        policies: Default::default(),
    }
}

/// Every workload's policies in full (rules and all, not only the names [`mesh_fingerprint`]
/// lists), and the mesh's, as text in a stable order: two meshes whose workloads are judged alike
/// have the same. (Policies sharing an id are listed by their text: which of them a decision
/// names is not compared.)
pub fn policies_fingerprint(mesh: &crate::discovery::MeshState) -> String {
    let mut out = String::new();
    for w in mesh.workloads() {
        let mut policies: Vec<String> = mesh
            .authz_for(&w)
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        policies.sort();
        out += &format!("judged {} {policies:?}\n", w.uid);
    }
    let mut all: Vec<String> = mesh
        .authz_policies()
        .iter()
        .map(|p| format!("{p:?}"))
        .collect();
    all.sort();
    out + &all.join("\n")
}

/// Everything a proxy can read of a mesh, in a stable order, as text: two meshes a proxy cannot
/// tell apart have the same. `addresses` are looked up too (who has each).
pub fn mesh_fingerprint(s: &crate::discovery::MeshState, addresses: &[std::net::IpAddr]) -> String {
    let mut out = format!("{:?}\n", s.summary());
    for w in s.workloads() {
        let policies: Vec<String> = s.authz_for(&w).iter().map(|p| p.id.to_string()).collect();
        let mut services: Vec<String> = s.services_of(&w).iter().map(|s| s.key()).collect();
        services.sort();
        out += &format!(
            "workload {} {}/{} node={} ips={:?} enrolled={} id={} wp={:?} conflict={:?} policies={policies:?} services={services:?}\n",
            w.uid,
            w.namespace,
            w.name,
            w.node,
            w.ips,
            w.enrolled,
            w.identity,
            w.waypoint,
            w.waypoint_conflict(),
        );
    }
    for svc in s.services() {
        out += &format!(
            "service {} vips={:?} ports={:?} udp={:?} endpoints={:?} wp={:?}\n",
            svc.key(),
            svc.vips,
            svc.ports,
            svc.udp_ports,
            svc.endpoints,
            svc.waypoint
        );
    }
    for wp in s.waypoints() {
        out += &format!("waypoint {} {} {:?}\n", wp.reference(), wp.identity, wp.ips);
    }
    for node in ["node-a", "node-b"] {
        let uids: Vec<String> = s
            .workloads_on_node(node)
            .iter()
            .map(|w| w.uid.to_string())
            .collect();
        out += &format!("on {node}: {uids:?}\n");
    }
    for ip in addresses {
        let owner = s.workload_by_ip(*ip).map(|w| w.uid.clone());
        let service = s.service_by_vip(*ip).map(|s| s.key());
        out += &format!("{ip}: {owner:?} {service:?}\n");
    }
    for w in s.pending() {
        let mut services: Vec<String> = s.services_of(w).iter().map(|s| s.key()).collect();
        services.sort();
        out += &format!(
            "pending {} {}/{} node={} enrolled={} id={} wp={:?} services={services:?}\n",
            w.uid, w.namespace, w.name, w.node, w.enrolled, w.identity, w.waypoint
        );
    }
    out += &format!("ambient {:?}\n", s.ambient_namespaces());
    let mut rejected: Vec<String> = s.rejected().iter().map(ToString::to_string).collect();
    rejected.sort();
    out += &format!("rejected {rejected:#?}\n");
    out
}
