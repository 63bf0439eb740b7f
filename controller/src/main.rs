//! `veil-controller`: see the crate documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use http::StatusCode;
use rustls::server::ResolvesServerCert;
use tokio::net::TcpListener;
use tracing::{info, warn};
use veil_ca::authn::{Authenticator, StaticTokens};
use veil_ca::kubernetes::TokenReviewer;
use veil_controller::auth::{ReviewBudget, SubscriberAuth};
use veil_controller::lease::LeaseConfig;
use veil_controller::metrics::Metrics;
use veil_controller::server::{ServerLimits, fixed, load_serving_cert, serve};
use veil_controller::service::Discovery;
use veil_controller::{status, translate};
use veil_mesh::discovery::{self, MeshSettings, kubernetes};
use veil_mesh::identity::{
    CertManager, GrpcCaClient, Identity, ManagerConfig, TokenSource, TrustBundle,
    parse_trust_domain,
};
use veil_mesh::serve::shutdown_signal;
use veil_mesh::telemetry::http::{Handler, document, openmetrics, text};
use veil_mesh::telemetry::{LogFormat, init_logging};
use veil_mesh::xds::dump;

/// veil's control plane: serves the mesh to ztunnels over Istio's workload discovery (delta xDS).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where discovery is served (TLS, HTTP/2, gRPC).
    #[arg(long, env = "VEIL_CONTROLLER_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Where /metrics and /ready are served (plain HTTP).
    #[arg(long, env = "VEIL_CONTROLLER_METRICS", default_value = "0.0.0.0:15014")]
    metrics_listen: SocketAddr,
    /// Where the admin endpoint is served (plain HTTP, loopback by default: reach it with a
    /// port-forward): `/debug/resources`, every resource the controller serves, for
    /// `veil explain --live`.
    #[arg(long, env = "VEIL_CONTROLLER_ADMIN", default_value = "127.0.0.1:15000")]
    admin_listen: SocketAddr,
    /// The trust domain of mesh identities.
    #[arg(long, env = "VEIL_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The namespace whose policies apply mesh-wide.
    #[arg(long, env = "VEIL_ROOT_NAMESPACE", default_value = "veil-system")]
    root_namespace: String,
    /// A serving certificate chain (PEM) whose DNS names match what subscribers dial (for clients
    /// that verify a DNS name, such as Istio's ztunnel); read once. Without it the controller serves
    /// with its mesh certificate, from the CA (`--ca-address`).
    #[arg(long, env = "VEIL_CONTROLLER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The serving certificate's private key (PEM).
    #[arg(long, env = "VEIL_CONTROLLER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA to get the controller's mesh certificate from (`host:port`), when it serves with it:
    /// veil's ztunnel verifies the controller's SPIFFE identity (`--xds-identity`).
    #[arg(long, env = "VEIL_CA_ADDRESS", conflicts_with = "tls_cert")]
    ca_address: Option<String>,
    /// The name the CA's serving certificate must be valid for.
    #[arg(
        long,
        env = "VEIL_CA_SERVER_NAME",
        default_value = "veil-ca.veil-system.svc"
    )]
    ca_server_name: String,
    /// File holding the controller's bearer token for the CA (re-read for every request).
    #[arg(long, env = "VEIL_CA_TOKEN_FILE", requires = "ca_address")]
    ca_token_file: Option<PathBuf>,
    /// The mesh identity the controller serves with; by default
    /// `spiffe://<trust domain>/ns/<root namespace>/sa/veil-controller`.
    #[arg(long, env = "VEIL_CONTROLLER_IDENTITY")]
    identity: Option<Identity>,
    /// In Kubernetes, the audience subscribers' tokens must be issued for (repeat for several).
    /// Not the CA's: a token the controller is sent must not be good for a certificate.
    #[arg(
        long = "token-audience",
        env = "VEIL_CONTROLLER_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "veil-controller"
    )]
    token_audiences: Vec<String>,
    /// The mesh's root certificates (PEM), to verify subscribers' client certificates.
    #[arg(long, env = "VEIL_TRUST_BUNDLE")]
    trust_bundle: PathBuf,
    /// Local mode: the mesh file to serve (instead of the Kubernetes API).
    #[arg(long, env = "VEIL_MESH_CONFIG")]
    mesh_config: Option<PathBuf>,
    /// How often the mesh file is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Local mode: file mapping bearer tokens to identities (subscribers without a client
    /// certificate, such as Istio's ztunnel). In Kubernetes, tokens are checked by TokenReview.
    #[arg(long, env = "VEIL_CONTROLLER_TOKENS")]
    tokens: Option<PathBuf>,
    /// An identity allowed to subscribe (repeat); by default veil's ztunnel.
    #[arg(long = "subscriber")]
    subscribers: Vec<Identity>,
    /// Serve the mesh's waypoints: an identity the mesh gives one of its waypoints may subscribe
    /// and is sent the resources of its own namespace and the policies of the root namespace
    /// (policies as written, for it to enforce), nothing else.
    #[arg(long, env = "VEIL_CONTROLLER_WAYPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    waypoints: bool,
    /// How many subscribers may be in their initial sync at once (a client sent whole responses,
    /// such as Istio's ztunnel, holds a copy of the whole mesh until it acknowledges; veil's hold
    /// one 128 KiB part at a time); the others wait their turn.
    #[arg(long, env = "VEIL_CONTROLLER_CONCURRENT_SYNCS", default_value_t = veil_controller::service::CONCURRENT_SYNCS as u16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrent_syncs: u16,
    /// In Kubernetes: write each policy's status (its Accepted and Enforced conditions). Only the
    /// replica holding the status lease writes.
    #[arg(long, env = "VEIL_CONTROLLER_WRITE_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    write_status: bool,
    /// The Lease (in `--namespace`) whose holder writes policy status.
    #[arg(
        long,
        env = "VEIL_CONTROLLER_STATUS_LEASE",
        default_value = "veil-controller-status"
    )]
    status_lease: String,
    /// How long the status lease holds without being renewed: how long status goes unwritten after
    /// its holder dies without releasing it.
    #[arg(long, env = "VEIL_CONTROLLER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The controller's own namespace (where the status lease is).
    #[arg(long, env = "POD_NAMESPACE", default_value = "veil-system")]
    namespace: String,
    /// This replica's name as the lease's holder; by default `$HOSTNAME` (a pod's name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "VEIL_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, "info");
    let trust_domain = parse_trust_domain(&args.trust_domain)?;
    let settings = MeshSettings {
        trust_domain: trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
    };
    let admin_settings = settings.clone();
    let subscribers = if args.subscribers.is_empty() {
        vec![Identity::new(&trust_domain, "veil-system", "ztunnel")?]
    } else {
        args.subscribers.clone()
    };
    if let Some(foreign) = subscribers
        .iter()
        .find(|id| id.trust_domain() != trust_domain)
    {
        bail!("subscriber {foreign} is not in trust domain {trust_domain}");
    }
    let bundle = Arc::new(
        TrustBundle::from_pem_file(&trust_domain, &args.trust_bundle)
            .with_context(|| format!("reading {}", args.trust_bundle.display()))?,
    );
    // Kept for the life of the process: it renews the mesh certificate served.
    let (serving, _certs) = serving_cert(&args, &trust_domain, &bundle).await?;
    let lease = lease_config(&args)?;
    // Without the mesh file, the Kubernetes API: the mesh, token reviews and policy status.
    let kube = match &args.mesh_config {
        Some(_) => None,
        None => Some(
            kube::Client::try_default()
                .await
                .context("no --mesh-config, and no Kubernetes API to watch instead")?,
        ),
    };
    let tokens: Option<Arc<dyn Authenticator>> = match (&kube, &args.tokens) {
        (_, Some(path)) => Some(Arc::new(StaticTokens::from_file(path)?)),
        (None, None) => None,
        (Some(client), None) => Some(Arc::new(ReviewBudget::new(Arc::new(
            TokenReviewer::new(client.clone(), trust_domain.clone())
                .with_audiences(args.token_audiences.clone()),
        )))),
    };
    let metrics = Arc::new(Metrics::new());
    let on_reject = |e: &discovery::ConfigError| warn!(error = %e, "configuration refused");
    let (states, status) = match (&kube, &args.mesh_config) {
        (Some(client), _) => {
            info!("watching the Kubernetes API");
            let snapshots = kubernetes::start(client.clone(), settings.clone(), on_reject).await;
            let status = lease.map(|lease| {
                let (leading, competing) = veil_controller::lease::compete(client.clone(), lease);
                let writing = tokio::spawn(status::write_while_leading(
                    client.clone(),
                    leading.clone(),
                    snapshots.clone(),
                    status::RETRY,
                ));
                (leading, competing, writing)
            });
            (discovery::states_of(snapshots), status)
        }
        (None, Some(path)) => (discovery::open(path, args.poll, settings, on_reject)?, None),
        (None, None) => unreachable!("a client is made when there is no mesh file"),
    };
    let (hub, translated) = translate::first(&states, &metrics);
    tokio::spawn(translate::follow(
        states,
        hub.clone(),
        metrics.clone(),
        translated,
    ));

    let ops = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let handler_metrics = metrics.clone();
    let handler: Handler = Arc::new(move |parts| match parts.uri.path() {
        "/metrics" => openmetrics(handler_metrics.encode()),
        "/ready" => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    });
    tokio::spawn(veil_mesh::telemetry::http::serve(ops, handler));
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    tokio::spawn(veil_mesh::telemetry::http::serve(
        admin,
        admin_handler(hub.clone(), admin_settings),
    ));

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(
        listen = %listener.local_addr()?,
        subscribers = ?subscribers.iter().map(Identity::as_str).collect::<Vec<_>>(),
        resources = hub.current().resources.len(),
        "veil-controller serving"
    );
    let auth = SubscriberAuth::new(tokens, subscribers);
    let auth = if args.waypoints {
        auth.with_waypoints(&args.root_namespace)
    } else {
        auth
    };
    let discovery = Discovery::new(hub, auth, metrics)
        .with_concurrent_syncs(usize::from(args.concurrent_syncs));
    serve(
        listener,
        discovery,
        serving,
        bundle,
        ServerLimits::default(),
        shutdown_signal(),
    )
    .await;
    // Hand the status lease on now rather than when it runs out.
    if let Some((leading, competing, writing)) = status {
        writing.abort();
        let _ = writing.await;
        drop(leading);
        let _ = tokio::time::timeout(Duration::from_secs(5), competing).await;
    }
    Ok(())
}

/// The status lease this replica competes for; `None` where no status is written (the mesh file,
/// or `--write-status=false`).
fn lease_config(args: &Args) -> anyhow::Result<Option<LeaseConfig>> {
    if args.mesh_config.is_some() || !args.write_status {
        return Ok(None);
    }
    let holder = match &args.pod_name {
        Some(name) => name.clone(),
        None => std::env::var("HOSTNAME").context(
            "the status lease needs this replica's name: set --pod-name (POD_NAME), or --write-status=false",
        )?,
    };
    let config = LeaseConfig {
        name: args.status_lease.clone(),
        namespace: args.namespace.clone(),
        holder,
        duration: args.lease_duration,
    };
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(config))
}

/// The certificate the controller serves with: from files, or its mesh certificate from the CA
/// (renewed by the manager returned, which must be kept). Returns once there is one.
async fn serving_cert(
    args: &Args,
    trust_domain: &str,
    bundle: &Arc<TrustBundle>,
) -> anyhow::Result<(Arc<dyn ResolvesServerCert>, Option<CertManager>)> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return Ok((fixed(load_serving_cert(cert, key)?), None));
    }
    let (Some(address), Some(token)) = (&args.ca_address, &args.ca_token_file) else {
        bail!(
            "no serving certificate: give --tls-cert and --tls-key, or --ca-address and --ca-token-file to serve with the controller's mesh certificate"
        );
    };
    let identity = match &args.identity {
        Some(identity) => identity.clone(),
        None => Identity::new(trust_domain, &args.root_namespace, "veil-controller")?,
    };
    if identity.trust_domain() != trust_domain {
        bail!("identity {identity} is not in trust domain {trust_domain}");
    }
    let ca = GrpcCaClient::new(
        address,
        &args.ca_server_name,
        bundle,
        TokenSource::File(token.clone()),
        Duration::from_secs(10),
    )
    .context("the CA client")?;
    let certs = CertManager::new(Arc::new(ca), bundle.clone(), ManagerConfig::default());
    let handle = certs.track(identity.clone());
    info!(%identity, ca = %address, "getting the serving certificate from the CA");
    let cert = handle
        .ready()
        .await
        .context("the certificate manager stopped before a certificate was issued")?;
    info!(%identity, not_after = ?cert.not_after(), "serving with the mesh certificate");
    Ok((Arc::new(handle), Some(certs)))
}

/// The admin endpoint: `/debug/resources`, every resource of the newest translation as one
/// document ([`dump`]), with the settings it was made with.
fn admin_handler(hub: Arc<veil_controller::hub::Hub>, settings: MeshSettings) -> Handler {
    Arc::new(move |parts| match parts.uri.path() {
        "/debug/resources" => {
            let mut response = document(dump::CONTENT_TYPE, dump::encode(&hub.current().resources));
            for (name, value) in [
                (dump::TRUST_DOMAIN_HEADER, &settings.trust_domain),
                (dump::ROOT_NAMESPACE_HEADER, &settings.root_namespace),
            ] {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}
