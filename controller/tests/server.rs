//! The controller's endpoint over real TLS and gRPC: who is served, who is refused and how, and a
//! client that stops acknowledging.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::{Code, Request, Status, Streaming};
use veil_ca::authn::StaticTokens;
use veil_controller::auth::SubscriberAuth;
use veil_controller::hub::Hub;
use veil_controller::metrics::Metrics;
use veil_controller::server::{ServerLimits, fixed, load_serving_cert, serve};
use veil_controller::service::Discovery;
use veil_mesh::discovery::{MeshSettings, local};
use veil_mesh::identity::{
    Identity, ca_client_config, control_client_config, provider, tls_channel,
};
use veil_mesh::testing::TestPki;
use veil_mesh::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use veil_mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use veil_mesh::xds::{Kind, Resources};

const MESH: &str =
    "workloads:\n  - {name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1]}\n";
const GOOD_TOKEN: &str = "good-token-0123456789abcdef";
const OTHER_TOKEN: &str = "other-token-0123456789abcdef";

fn ztunnel() -> Identity {
    Identity::new("cluster.local", "veil-system", "ztunnel").unwrap()
}

struct Server {
    address: String,
    pki: Arc<TestPki>,
    hub: Arc<Hub>,
}

async fn start(ack_timeout: Duration) -> Server {
    start_with(
        ack_timeout,
        veil_controller::service::CONCURRENT_SYNCS,
        veil_controller::ads::RESPONSE_BUDGET,
    )
    .await
}

async fn start_with(ack_timeout: Duration, syncs: usize, budget: usize) -> Server {
    start_serving(ack_timeout, syncs, budget, |pki| {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = pki.server_pem(&["veil-controller.test"]);
        std::fs::write(dir.path().join("cert.pem"), chain).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        fixed(load_serving_cert(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap())
    })
    .await
}

async fn start_serving(
    ack_timeout: Duration,
    syncs: usize,
    budget: usize,
    serving: impl FnOnce(&TestPki) -> Arc<dyn rustls::server::ResolvesServerCert>,
) -> Server {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let serving = serving(&pki);
    let tokens = StaticTokens::from_yaml(&format!(
        "tokens:\n  - token: {GOOD_TOKEN}\n    identity: {}\n  - token: {OTHER_TOKEN}\n    identity: spiffe://cluster.local/ns/shop/sa/web\n",
        ztunnel()
    ))
    .unwrap();
    let auth =
        SubscriberAuth::new(Some(Arc::new(tokens)), vec![ztunnel()]).with_waypoints("veil-system");
    let state = local::parse(MESH, &MeshSettings::default()).unwrap();
    let hub = Hub::new(Resources::from_state(&state));
    let discovery = Discovery::new(hub.clone(), auth, Arc::new(Metrics::new()))
        .with_ack_timeout(ack_timeout)
        .with_concurrent_syncs(syncs)
        .with_response_budget(budget);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(
        listener,
        discovery,
        serving,
        pki.bundle(),
        ServerLimits {
            auth_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        },
        std::future::pending(),
    ));
    Server { address, pki, hub }
}

/// TLS trusting `server.pki`, optionally presenting a mesh certificate issued by `client_pki`.
fn client(
    server: &Server,
    cert: Option<(&TestPki, &Identity)>,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let config = match cert {
        None => ca_client_config(&server.pki.bundle()).unwrap(),
        Some((pki, identity)) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(server.pki.root_der().clone()).unwrap();
            let workload = pki.issue(identity);
            let mut config = rustls::ClientConfig::builder_with_provider(provider().clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                    workload.certified_key().clone(),
                )));
            config.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(config)
        }
    };
    let channel = tls_channel(
        &server.address,
        "veil-controller.test",
        config,
        Duration::from_secs(5),
    )
    .unwrap();
    AggregatedDiscoveryServiceClient::new(channel)
}

type Open = (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Result<Streaming<DeltaDiscoveryResponse>, Status>,
);

async fn open(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    token: Option<&str>,
) -> Open {
    // Istio's two types, as Istio's ztunnel asks for them.
    open_kinds(client, token, &[Kind::Address, Kind::Authorization]).await
}

async fn open_kinds(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    token: Option<&str>,
    kinds: &[Kind],
) -> Open {
    let (tx, rx) = mpsc::channel(8);
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = Request::new(requests);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    for kind in kinds.iter().copied() {
        tx.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let result = client
        .delta_aggregated_resources(request)
        .await
        .map(|r| r.into_inner());
    (tx, result)
}

async fn next(
    stream: &mut Streaming<DeltaDiscoveryResponse>,
) -> Result<DeltaDiscoveryResponse, Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer within 10s")
        .and_then(|m| m.ok_or_else(|| Status::unknown("stream ended")))
}

/// The first responses of both types, with the Address one first. Authorizations come first and
/// must be acknowledged before the Addresses that may name them are sent (make before break).
async fn initial(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    stream: &mut Streaming<DeltaDiscoveryResponse>,
) -> Vec<DeltaDiscoveryResponse> {
    let authorizations = next(stream).await.unwrap();
    assert_eq!(authorizations.type_url, Kind::Authorization.type_url());
    acknowledge(tx, std::slice::from_ref(&authorizations)).await;
    let addresses = next(stream).await.unwrap();
    assert_eq!(addresses.type_url, Kind::Address.type_url());
    vec![addresses, authorizations]
}

async fn acknowledge(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    responses: &[DeltaDiscoveryResponse],
) {
    for response in responses {
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn refused(result: Result<Streaming<DeltaDiscoveryResponse>, Status>) -> Code {
    match result {
        Err(status) => status.code(),
        Ok(mut stream) => next(&mut stream)
            .await
            .map(|_| Code::Ok)
            .unwrap_or_else(|s| s.code()),
    }
}

#[tokio::test]
async fn a_token_or_a_mesh_certificate_of_an_allowed_identity_is_served() {
    let server = start(Duration::from_secs(60)).await;
    let (tx, result) = open(&mut client(&server, None), Some(GOOD_TOKEN)).await;
    let responses = initial(&tx, &mut result.unwrap()).await;
    assert_eq!(responses[0].resources[0].name, "Kubernetes//Pod/n/a");
    assert_eq!(responses[1].type_url, Kind::Authorization.type_url());

    let (tx, result) = open(&mut client(&server, Some((&server.pki, &ztunnel()))), None).await;
    let responses = initial(&tx, &mut result.unwrap()).await;
    assert_eq!(responses[0].resources.len(), 1);
}

#[tokio::test]
async fn everyone_else_is_refused_before_anything_is_sent() {
    let server = start(Duration::from_secs(60)).await;
    let cases: Vec<(&str, Option<&str>, Option<Identity>, Code)> = vec![
        ("no credential", None, None, Code::Unauthenticated),
        (
            "unknown token",
            Some("not-a-token-0123456789"),
            None,
            Code::Unauthenticated,
        ),
        (
            "token of an identity not allowed",
            Some(OTHER_TOKEN),
            None,
            Code::PermissionDenied,
        ),
        (
            "mesh certificate of an identity not allowed",
            None,
            Some(Identity::new("cluster.local", "shop", "web").unwrap()),
            Code::PermissionDenied,
        ),
    ];
    for (name, token, cert, want) in cases {
        let mut c = match &cert {
            Some(identity) => client(&server, Some((&server.pki, identity))),
            None => client(&server, None),
        };
        let (_tx, result) = open(&mut c, token).await;
        assert_eq!(refused(result).await, want, "{name}");
    }
    // A certificate of another root does not get past the handshake.
    let foreign = TestPki::new("cluster.local");
    let (_tx, result) = open(&mut client(&server, Some((&foreign, &ztunnel()))), None).await;
    assert_ne!(refused(result).await, Code::Ok);
}

#[tokio::test]
async fn changes_follow_acknowledgements_and_a_silent_client_is_cut_off() {
    let server = start(Duration::from_millis(500)).await;
    let (tx, result) = open(&mut client(&server, None), Some(GOOD_TOKEN)).await;
    let mut stream = result.unwrap();
    acknowledge(&tx, &initial(&tx, &mut stream).await).await;
    let state = local::parse(
        &MESH.replace("10.0.0.1", "10.0.0.2"),
        &MeshSettings::default(),
    )
    .unwrap();
    server.hub.publish(Resources::from_state(&state));
    let update = next(&mut stream).await.unwrap();
    assert_eq!(update.type_url, Kind::Address.type_url());
    assert_eq!(update.resources[0].name, "Kubernetes//Pod/n/a");
    // Never acknowledged: after the timeout the stream ends, telling it to reconnect.
    let end = next(&mut stream).await.unwrap_err();
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
}

#[tokio::test]
async fn a_connection_that_authenticates_nothing_is_closed() {
    use tokio::io::AsyncReadExt;
    let server = start(Duration::from_secs(60)).await;
    let config = ca_client_config(&server.pki.bundle()).unwrap();
    let tcp = tokio::net::TcpStream::connect(&server.address)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("veil-controller.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("the handshake itself succeeds");
    // Idle after the handshake: the server closes it once the authentication time is up.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the idle connection was not closed");
    // An authenticated subscriber on its own connection is not affected by the limit.
    let (tx, result) = open(&mut client(&server, None), Some(GOOD_TOKEN)).await;
    let mut stream = result.unwrap();
    acknowledge(&tx, &initial(&tx, &mut stream).await).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.hub.publish(Resources::default());
    let update = next(&mut stream)
        .await
        .expect("still served after the limit");
    assert_eq!(update.removed_resources, ["Kubernetes//Pod/n/a"]);
}

#[tokio::test]
async fn initial_syncs_take_turns_and_a_turn_ends_with_the_acknowledgement() {
    let server = start_with(
        Duration::from_secs(30),
        1,
        veil_controller::ads::RESPONSE_BUDGET,
    )
    .await;
    let (tx_a, a) = open(&mut client(&server, None), Some(GOOD_TOKEN)).await;
    let mut a = a.unwrap();
    let first = next(&mut a).await.unwrap();
    assert_eq!(first.type_url, Kind::Authorization.type_url());
    // A second subscriber waits while the first one's sync is unacknowledged.
    let (tx_b, b) = open(&mut client(&server, None), Some(GOOD_TOKEN)).await;
    let mut b = b.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(1500), b.message()).await;
    assert!(waited.is_err(), "the second sync did not wait: {waited:?}");
    // The first acknowledges its initial responses: the turn passes.
    acknowledge(&tx_a, std::slice::from_ref(&first)).await;
    let addresses = next(&mut a).await.unwrap();
    acknowledge(&tx_a, std::slice::from_ref(&addresses)).await;
    let responses = initial(&tx_b, &mut b).await;
    assert!(!responses[0].resources.is_empty());
    acknowledge(&tx_b, &responses).await;
    // Syncing was a turn, not a cap on subscribers: both still get changes.
    let state = local::parse(
        &MESH.replace("10.0.0.1", "10.0.0.2"),
        &MeshSettings::default(),
    )
    .unwrap();
    server.hub.publish(Resources::from_state(&state));
    for stream in [&mut a, &mut b] {
        assert_eq!(
            next(stream).await.unwrap().type_url,
            Kind::Address.type_url()
        );
    }
}

fn pods(n: usize) -> Resources {
    let mut yaml = String::from("workloads:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{name: p{i}, namespace: n, serviceAccount: a, node: x, ips: [10.1.{}.{}]}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    Resources::from_state(&local::parse(&yaml, &MeshSettings::default()).unwrap())
}

/// A server of 300 pods whose responses are split at 1 KiB: a few resources per part, hundreds of
/// parts.
async fn split_server() -> Server {
    let server = start_with(
        Duration::from_secs(30),
        veil_controller::service::CONCURRENT_SYNCS,
        1024,
    )
    .await;
    server.hub.publish(pods(300));
    server
}

/// veil's subscriber on `server`, dialling `address`, once synced.
async fn subscribe(server: &Server, address: String) -> veil_mesh::xds::Subscription {
    let tls = ca_client_config(&server.pki.bundle()).unwrap();
    subscribe_with(tls, address, Duration::from_secs(20))
        .await
        .expect("synced")
}

/// veil's subscriber dialling `address` with `tls`, once synced; `None` if not within `wait`.
async fn subscribe_with(
    tls: Arc<rustls::ClientConfig>,
    address: String,
    wait: Duration,
) -> Option<veil_mesh::xds::Subscription> {
    let config = veil_mesh::xds::XdsConfig {
        address,
        server_name: "veil-controller.test".into(),
        tls,
        token: Some(veil_mesh::identity::TokenSource::Static(GOOD_TOKEN.into())),
        node: "x".into(),
        connect_timeout: Duration::from_secs(5),
        ambient_namespaces: true,
        waypoint: false,
    };
    tokio::time::timeout(
        wait,
        veil_mesh::xds::subscribe(
            config,
            MeshSettings::default(),
            |e| panic!("refused: {e}"),
            None,
        ),
    )
    .await
    .ok()
}

#[tokio::test]
async fn serving_with_its_mesh_certificate_the_controller_is_verified_by_identity() {
    let controller = Identity::new("cluster.local", "veil-system", "veil-controller").unwrap();
    let issued = controller.clone();
    let server = start_serving(
        Duration::from_secs(30),
        veil_controller::service::CONCURRENT_SYNCS,
        veil_controller::ads::RESPONSE_BUDGET,
        move |pki| fixed(pki.issue(&issued).certified_key().clone()),
    )
    .await;
    let bundle = server.pki.bundle();
    let by_identity = control_client_config(bundle.clone(), controller);
    let sub = subscribe_with(by_identity, server.address.clone(), Duration::from_secs(20))
        .await
        .expect("the controller's identity is accepted");
    assert_eq!(sub.state.borrow().workloads().len(), 1);
    // Expecting another identity (a workload posing as the control plane would prove its own): no
    // stream, nothing received.
    let impostor_check = control_client_config(bundle.clone(), ztunnel());
    let wait = Duration::from_secs(3);
    assert!(
        subscribe_with(impostor_check, server.address.clone(), wait)
            .await
            .is_none()
    );
    // A client verifying a DNS name finds none in a mesh certificate.
    let by_name = ca_client_config(&bundle).unwrap();
    assert!(
        subscribe_with(by_name, server.address.clone(), wait)
            .await
            .is_none()
    );
    // And a client expecting the controller's identity refuses a server with only DNS names.
    let dns_server = start(Duration::from_secs(30)).await;
    let controller = Identity::new("cluster.local", "veil-system", "veil-controller").unwrap();
    let by_identity = control_client_config(dns_server.pki.bundle(), controller);
    assert!(
        subscribe_with(by_identity, dns_server.address.clone(), wait)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn veils_subscriber_takes_a_split_mesh_as_current_only_once_it_is_whole() {
    let server = split_server().await;
    let subscription = subscribe(&server, server.address.clone()).await;
    let mut state = subscription.state;
    assert_eq!(state.borrow_and_update().workloads().len(), 300);
    // 500 more pods: every mesh published on the way has all of them or none.
    server.hub.publish(pods(800));
    loop {
        tokio::time::timeout(Duration::from_secs(20), state.changed())
            .await
            .expect("the change arrives")
            .unwrap();
        let n = state.borrow_and_update().workloads().len();
        assert!(n == 300 || n == 800, "a partial mesh was published: {n}");
        if n == 800 {
            break;
        }
    }
    assert!(*subscription.connected.borrow());
}

/// A TCP relay to `to` that, once armed, cuts every connection after `after` more bytes from the
/// server.
async fn relay(to: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // usize::MAX: not armed; otherwise bytes left before the cut.
    let budget = Arc::new(AtomicUsize::new(usize::MAX));
    let left = budget.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = tokio::net::TcpStream::connect(&to).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let left = left.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let l = left.load(Ordering::SeqCst);
                    if l != usize::MAX {
                        if l < n {
                            left.store(usize::MAX, Ordering::SeqCst);
                            break;
                        }
                        left.store(l - n, Ordering::SeqCst);
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
                // Dropping both halves closes the connection.
            });
        }
    });
    (address, budget)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_response_cut_off_midway_is_published_and_trusted_only_once_completed() {
    let server = split_server().await;
    let (address, cut) = relay(server.address.clone()).await;
    let subscription = subscribe(&server, address).await;
    let mut state = subscription.state;
    let mut connected = subscription.connected;
    assert_eq!(state.borrow_and_update().workloads().len(), 300);
    // The connection breaks about 30 KB into the 500 new pods (about 100 parts of 1 KiB); the
    // subscriber reconnects and resumes from the part it holds.
    cut.store(30_000, std::sync::atomic::Ordering::SeqCst);
    server.hub.publish(pods(800));
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| !*c))
        .await
        .expect("the stream breaks")
        .unwrap();
    // Every mesh published on the way, recorded as it comes.
    let mut watcher = state.clone();
    let seen = tokio::spawn(async move {
        let mut seen = vec![];
        loop {
            watcher.changed().await.unwrap();
            let n = watcher.borrow_and_update().workloads().len();
            seen.push(n);
            if n == 800 {
                return seen;
            }
        }
    });
    // Connected again (trusted to know every destination) only with the whole mesh published.
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c))
        .await
        .expect("reconnected")
        .unwrap();
    assert_eq!(state.borrow().workloads().len(), 800);
    let seen = tokio::time::timeout(Duration::from_secs(20), seen)
        .await
        .expect("the mesh is completed")
        .unwrap();
    assert!(
        seen.iter().all(|n| *n == 300 || *n == 800),
        "a partial mesh was published: {seen:?}"
    );
}

const WAYPOINTS: &str = r#"
namespaces:
  - {name: shop, dataplaneMode: ambient, useWaypoint: wp}
  - {name: bank, dataplaneMode: ambient, useWaypoint: vault}
waypoints:
  - {name: wp, namespace: shop, serviceAccount: wp, ips: [10.9.0.1]}
  - {name: vault, namespace: bank, serviceAccount: vault, ips: [10.9.1.1]}
workloads:
  - {name: web, namespace: shop, serviceAccount: web, node: x, ips: [10.1.0.1], labels: {app: web}}
  - {name: ledger, namespace: bank, serviceAccount: ledger, node: x, ips: [10.2.0.1], labels: {app: ledger}}
services:
  - {name: web, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: web}}
  - {name: ledger, namespace: bank, vips: [10.96.1.1], ports: [{port: 80}], selector: {app: ledger}}
policies:
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: web-gets, namespace: shop}
    spec:
      selector: {matchLabels: {app: web}}
      rules: [{to: [{operation: {methods: [GET]}}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: tellers, namespace: bank}
    spec:
      rules: [{from: [{source: {principals: [cluster.local/ns/bank/sa/teller]}}]}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-telnet, namespace: veil-system}
    spec: {action: DENY, rules: [{to: [{operation: {ports: ["23"]}}]}]}
"#;

#[tokio::test]
async fn a_waypoint_is_served_its_own_namespace_and_nothing_else() {
    let server = start(Duration::from_secs(60)).await;
    server.hub.publish(Resources::from_state(
        &local::parse(WAYPOINTS, &MeshSettings::default()).unwrap(),
    ));
    let kinds = [Kind::Policy, Kind::Binding, Kind::Address];
    let wp = Identity::new("cluster.local", "shop", "wp").unwrap();
    let mut c = client(&server, Some((&server.pki, &wp)));
    let (tx, result) = open_kinds(&mut c, None, &kinds).await;
    let mut stream = result.unwrap();
    // Policies and their bindings first, each acknowledged before the workloads that need them.
    let mut received: Vec<(Kind, String)> = Vec::new();
    for kind in kinds {
        let response = next(&mut stream).await.unwrap();
        assert_eq!(response.type_url, kind.type_url());
        received.extend(response.resources.iter().map(|r| (kind, r.name.clone())));
        acknowledge(&tx, std::slice::from_ref(&response)).await;
    }
    let names = |kind: Kind| -> Vec<&str> {
        received
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect()
    };
    assert_eq!(
        names(Kind::Policy),
        ["shop/web-gets", "veil-system/no-telnet"]
    );
    assert_eq!(names(Kind::Binding), ["Kubernetes//Pod/shop/web"]);
    assert_eq!(
        names(Kind::Address),
        [
            "Kubernetes//Pod/shop/web",
            "Kubernetes//Waypoint/shop/wp",
            "shop/web.shop.svc.cluster.local"
        ]
    );
    // Asking for another namespace's workload by name gets it reported absent, not sent.
    tx.send(DeltaDiscoveryRequest {
        type_url: Kind::Address.type_url().into(),
        resource_names_subscribe: vec!["Kubernetes//Pod/bank/ledger".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let answer = next(&mut stream).await.unwrap();
    assert!(answer.resources.is_empty(), "{:?}", answer.resources);
    assert_eq!(answer.removed_resources, ["Kubernetes//Pod/bank/ledger"]);

    // A waypoint is not served Istio's Authorizations (the root namespace's name every waypoint of
    // the mesh) nor enrolled namespaces.
    for kind in [Kind::Authorization, Kind::Namespace] {
        let (_tx, result) = open_kinds(
            &mut client(&server, Some((&server.pki, &wp))),
            None,
            &[kind],
        )
        .await;
        assert_eq!(refused(result).await, Code::PermissionDenied, "{kind:?}");
    }
    // An identity of the namespace that is no waypoint's is refused, with a token or a certificate.
    let teller = Identity::new("cluster.local", "bank", "teller").unwrap();
    let (_tx, result) = open_kinds(
        &mut client(&server, Some((&server.pki, &teller))),
        None,
        &kinds,
    )
    .await;
    assert_eq!(refused(result).await, Code::PermissionDenied);
    let (_tx, result) = open_kinds(&mut client(&server, None), Some(OTHER_TOKEN), &kinds).await;
    assert_eq!(refused(result).await, Code::PermissionDenied);

    // The waypoint now runs as another account: the old identity's open stream ends, refused.
    let without_wp = WAYPOINTS.replace(
        "{name: wp, namespace: shop, serviceAccount: wp,",
        "{name: wp, namespace: shop, serviceAccount: wp-v2,",
    );
    assert_ne!(without_wp, WAYPOINTS);
    server.hub.publish(Resources::from_state(
        &local::parse(&without_wp, &MeshSettings::default()).unwrap(),
    ));
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends");
    assert_eq!(
        end.expect_err("refused").code(),
        Code::PermissionDenied,
        "a waypoint that is no longer one was kept"
    );
}
