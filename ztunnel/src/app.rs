//! Assembly: from the configuration to a running ztunnel.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::FileSource;
use veil_mesh::identity::{
    CertManager, GrpcCaClient, ManagerConfig, TokenSource, TrustBundle, parse_trust_domain,
};
use veil_mesh::pool::{Pool, PoolSettings};
use veil_mesh::telemetry::http::serve;
use veil_mesh::telemetry::metrics::Metrics;

use crate::config::Config;
use crate::context::{Context, DataPathSettings};
use crate::enrol::{self, StatusMap};
use crate::{netns, ops};

/// Why ztunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Warns, at start and whenever the set changes, about policies with HTTP attributes that apply to
/// workloads without a waypoint: ztunnel cannot check those attributes and denies what they match.
async fn report_l7_at_l4(mut rx: watch::Receiver<Arc<veil_mesh::discovery::MeshState>>) {
    let mut reported = Vec::new();
    loop {
        let current = rx.borrow_and_update().l7_policies_enforced_at_l4();
        if current != reported {
            for policy in current.iter().filter(|p| !reported.contains(*p)) {
                warn!(%policy, "policy uses HTTP attributes but applies to workloads without a waypoint: ztunnel cannot check them and DENIES what the policy could match (attach it to a waypoint with targetRefs)");
            }
            reported = current;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs ztunnel until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    netns::init().map_err(|e| StartError::Config(format!("reading own network namespace: {e}")))?;
    let trust_domain =
        parse_trust_domain(&config.trust_domain).map_err(|e| StartError::Config(e.to_string()))?;
    let bundle = Arc::new(
        TrustBundle::from_pem_file(&trust_domain, &config.root_cert)
            .map_err(|e| StartError::Config(e.to_string()))?,
    );
    let ca = GrpcCaClient::new(
        &config.ca_address,
        &config.ca_server_name,
        &bundle,
        TokenSource::File(config.ca_token_file.clone()),
        Duration::from_secs(10),
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    let certs = CertManager::new(
        Arc::new(ca),
        bundle,
        ManagerConfig {
            ttl: config.cert_ttl,
            ..ManagerConfig::default()
        },
    );
    let settings = MeshSettings {
        trust_domain,
        root_namespace: config.root_namespace.clone(),
    };
    let (source, state) = FileSource::load(&config.mesh_config, settings)
        .map_err(|e| StartError::Config(e.to_string()))?;
    info!(node = %config.node, summary = ?state.summary(), "loaded mesh configuration");
    let (tx, rx) = watch::channel(Arc::new(state));
    tokio::spawn(report_l7_at_l4(rx.clone()));
    let metrics = Arc::new(Metrics::new());
    let rejected = metrics.clone();
    tokio::spawn(source.watch(config.config_poll_interval, tx, move |_| {
        rejected.config_rejected.inc();
    }));

    let ctx = Arc::new(Context::new(
        config.node.clone(),
        rx,
        certs,
        Pool::new(PoolSettings::default()),
        metrics,
        DataPathSettings {
            unknown_destination: config.unknown_destination,
            send_forwarded: config.send_forwarded,
            ..DataPathSettings::default()
        },
    ));
    let status = StatusMap::default();
    let endpoints = [
        (config.metrics_addr, ops::metrics(ctx.clone())),
        (
            config.readiness_addr,
            ops::readiness(ctx.clone(), status.clone()),
        ),
        (config.admin_addr, ops::admin(ctx.clone(), status.clone())),
    ];
    for (addr, handler) in endpoints {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        tokio::spawn(serve(listener, handler));
    }
    let reconciler = tokio::spawn(enrol::run(ctx, status));
    info!(node = %config.node, "veil-ztunnel running");
    shutdown.await;
    // Capture rules stay in place: while ztunnel is away, pods' traffic fails closed.
    reconciler.abort();
    info!("veil-ztunnel stopped");
    Ok(())
}
