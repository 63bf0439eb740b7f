//! The `veil-ca` binary: reads its configuration and runs the CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tracing::info;
use veil_ca::authn::{Authenticator, StaticTokens};
use veil_ca::authority::{Authority, PluggedFiles};
use veil_ca::authz::{Authorizer, MeshFilePlacement, Placement, StaticPlacement};
use veil_ca::kubernetes::{
    KubePlacement, TokenReviewer, plugged_from_secret, publish_root, root_from_secret,
};
use veil_ca::server::{ServerLimits, ServingCert, serve};
use veil_ca::service::{CaService, IssuePolicy};
use veil_mesh::discovery::MeshSettings;
use veil_mesh::identity::{Identity, parse_trust_domain};
use veil_mesh::serve::shutdown_signal;
use veil_mesh::telemetry::{LogFormat, init_logging};

/// veil's certificate authority.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the gRPC/TLS endpoint.
    #[arg(long, env = "VEIL_CA_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// The trust domain certificates are issued in.
    #[arg(long, env = "VEIL_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Directory of the self-signed root (generated on first start, kept across restarts).
    #[arg(long, env = "VEIL_CA_ROOT_DIR", default_value = "/var/lib/veil-ca")]
    root_dir: PathBuf,
    /// Plugged-in CA: the signing certificate (instead of a self-signed root).
    #[arg(long, requires_all = ["signing_key", "root_cert"])]
    signing_cert: Option<PathBuf>,
    /// Plugged-in CA: the signing certificate's PKCS#8 key.
    #[arg(long, requires = "signing_cert")]
    signing_key: Option<PathBuf>,
    /// Plugged-in CA: the root certificate.
    #[arg(long, requires = "signing_cert")]
    root_cert: Option<PathBuf>,
    /// Plugged-in CA: certificates between the signing certificate and the root.
    #[arg(long, requires = "signing_cert")]
    intermediates: Option<PathBuf>,
    /// Kubernetes mode: callers by TokenReview (audience veil-ca), placement from the API, the root
    /// in a Secret, the root certificate published to every namespace (policy status is the controller's).
    #[arg(long, env = "VEIL_CA_KUBERNETES", conflicts_with_all = ["tokens", "placement", "mesh_config"])]
    kubernetes: bool,
    /// Kubernetes mode: the CA's own namespace (where its root Secret lives).
    #[arg(long, env = "POD_NAMESPACE", default_value = "veil-system")]
    namespace: String,
    /// Kubernetes mode: a Secret of a plugged-in CA (keys ca-cert.pem, ca-key.pem, root-cert.pem,
    /// optionally cert-chain.pem) instead of a generated root.
    #[arg(long, requires = "kubernetes")]
    ca_secret: Option<String>,
    /// Local mode: file mapping bearer tokens to callers.
    #[arg(long, env = "VEIL_CA_TOKENS", required_unless_present = "kubernetes")]
    tokens: Option<PathBuf>,
    /// Local mode: file mapping nodes to the identities of their workloads.
    #[arg(long, env = "VEIL_CA_PLACEMENT", conflicts_with = "mesh_config")]
    placement: Option<PathBuf>,
    /// Local mode: take placement from the mesh description ztunnel reads (re-read on change).
    /// Without this or --placement, impersonation is refused.
    #[arg(long, env = "VEIL_MESH_CONFIG")]
    mesh_config: Option<PathBuf>,
    /// The namespace whose policies apply mesh-wide (to read the mesh description).
    #[arg(long, default_value = "veil-system")]
    root_namespace: String,
    /// Identity of a node agent trusted to request certificates for workloads on its node. Defaults
    /// to ztunnel's: spiffe://<trust domain>/ns/veil-system/sa/ztunnel.
    #[arg(long = "node-agent")]
    node_agents: Vec<Identity>,
    /// Longest certificate lifetime granted.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    max_ttl: Duration,
    /// Names in the CA's serving certificate (DNS names or IP addresses).
    #[arg(
        long = "server-name",
        default_values = ["veil-ca", "veil-ca.veil-system.svc", "localhost", "127.0.0.1", "::1"]
    )]
    server_names: Vec<String>,
    /// Log format: text or json.
    #[arg(long, env = "VEIL_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, "info");
    let trust_domain = parse_trust_domain(&args.trust_domain)?;

    let kube = if args.kubernetes {
        Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?,
        )
    } else {
        None
    };
    let authority = Arc::new(match (&kube, &args.signing_cert, &args.ca_secret) {
        (_, Some(cert), _) => Authority::plugged(&PluggedFiles {
            cert: cert.clone(),
            key: args.signing_key.clone().context("--signing-key")?,
            intermediates: args.intermediates.clone(),
            root: args.root_cert.clone().context("--root-cert")?,
        })?,
        (Some(client), None, Some(secret)) => {
            plugged_from_secret(client, &args.namespace, secret).await?
        }
        (Some(client), None, None) => {
            root_from_secret(client, &args.namespace, &trust_domain).await?
        }
        (None, None, _) => Authority::self_signed(&args.root_dir, &trust_domain)?,
    });
    let (authn, placement): (Arc<dyn Authenticator>, Arc<dyn Placement>) =
        match (&kube, &args.tokens) {
            (Some(client), _) => (
                Arc::new(TokenReviewer::new(client.clone(), trust_domain.clone())),
                Arc::new(KubePlacement::new(client.clone())),
            ),
            (None, Some(tokens)) => (
                Arc::new(StaticTokens::from_file(tokens)?),
                local_placement(&args, &trust_domain)?,
            ),
            (None, None) => bail!("--tokens is required outside Kubernetes"),
        };
    let node_agents = if args.node_agents.is_empty() {
        vec![Identity::new(&trust_domain, "veil-system", "ztunnel")?]
    } else {
        args.node_agents.clone()
    };
    if let Some(foreign) = node_agents
        .iter()
        .find(|id| id.trust_domain() != trust_domain)
    {
        bail!("node agent {foreign} is not in trust domain {trust_domain}");
    }
    // The control plane's namespace: a node running one of its pods gets none of its identities.
    let authz = Authorizer::new(trust_domain.clone(), node_agents, placement)
        .with_protected_namespaces([args.namespace.clone(), args.root_namespace.clone()]);
    let policy = IssuePolicy {
        max_ttl: args.max_ttl,
        ..IssuePolicy::default()
    };
    let service = CaService::new(authority.clone(), authn, authz, policy);

    if let Some(client) = &kube {
        let root = authority.root_pem().to_owned();
        tokio::spawn(publish_root(client.clone(), root, Duration::from_secs(300)));
    }
    let serving = ServingCert::new(
        &authority,
        args.server_names.clone(),
        Duration::from_secs(7 * 24 * 3600),
    )?;
    tokio::spawn(serving.clone().renew_forever(authority.clone()));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(
        listen = %listener.local_addr()?,
        trust_domain = %trust_domain,
        max_ttl = %humantime::format_duration(args.max_ttl),
        "veil-ca serving"
    );
    serve(
        listener,
        service,
        serving,
        ServerLimits::default(),
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// Local mode's placement: a node map, the mesh description ztunnel reads, or none (impersonation
/// refused).
fn local_placement(args: &Args, trust_domain: &str) -> anyhow::Result<Arc<dyn Placement>> {
    Ok(match (&args.placement, &args.mesh_config) {
        (Some(path), _) => Arc::new(StaticPlacement::from_file(path).map_err(anyhow::Error::msg)?),
        (None, Some(path)) => Arc::new(MeshFilePlacement::new(
            path.clone(),
            MeshSettings {
                trust_domain: trust_domain.to_owned(),
                root_namespace: args.root_namespace.clone(),
            },
        )),
        (None, None) => Arc::new(StaticPlacement::default()),
    })
}
