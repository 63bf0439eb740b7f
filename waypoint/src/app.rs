//! Assembly: from the configuration to a running waypoint, and its clean drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tokio::net::TcpListener;
use tracing::{info, warn};
use veil_mesh::admin::{ConfigDump, ProxyInfo};
use veil_mesh::discovery::{self, ConfigError, MeshSettings, WaypointRef};
use veil_mesh::hbone::H2Settings;
use veil_mesh::identity::{
    CertManager, GrpcCaClient, Identity, ManagerConfig, TokenSource, TrustBundle,
    parse_trust_domain, server_config,
};
use veil_mesh::pool::{Pool, PoolSettings};
use veil_mesh::telemetry::http::{Handler, json, openmetrics, serve, text};
use veil_mesh::telemetry::metrics::Metrics;
use veil_mesh::telemetry::metrics::export::MetricsExport;
use veil_mesh::telemetry::trace::Tracing;
use veil_mesh::xds;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::context::{Context, Settings};
use crate::drain::Drain;
use crate::inbound;
use crate::upstream::Upstreams;

/// Why the waypoint could not start.
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

fn config_err(e: impl ToString) -> StartError {
    StartError::Config(e.to_string())
}

/// Runs the waypoint until `shutdown`, then drains in-flight requests.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let trust_domain = parse_trust_domain(&config.trust_domain).map_err(config_err)?;
    let identity = Identity::new(&trust_domain, &config.namespace, &config.service_account)
        .map_err(config_err)?;
    let bundle =
        Arc::new(TrustBundle::from_pem_file(&trust_domain, &config.root_cert).map_err(config_err)?);
    let ca = GrpcCaClient::new(
        &config.ca_address,
        &config.ca_server_name,
        &bundle,
        TokenSource::File(config.ca_token_file.clone()),
        Duration::from_secs(10),
    )
    .map_err(config_err)?;
    let certs = CertManager::new(
        Arc::new(ca),
        bundle.clone(),
        ManagerConfig {
            ttl: config.cert_ttl,
            ..ManagerConfig::default()
        },
    );
    let cert = certs.track(identity.clone());
    let settings = MeshSettings {
        trust_domain,
        root_namespace: config.root_namespace.clone(),
    };
    let metrics = Arc::new(Metrics::new());
    let rejected = metrics.clone();
    let on_reject = move |e: &ConfigError| {
        warn!(error = %e, "refused by this waypoint (what it would decide is denied)");
        rejected.config_rejected.inc();
    };
    let me = WaypointRef {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
    };
    let rx = match &config.xds.address {
        Some(address) => {
            let subscriber = xds::Subscriber {
                trust_domain: &settings.trust_domain,
                mesh_roots: &bundle,
                ca_token_file: &config.ca_token_file,
                // Not a node: no node's pods being set up are for it (no node name has a '/').
                node: me.to_string(),
                ambient_namespaces: false,
                waypoint: true,
            };
            let xds = config.xds.client(address, subscriber).map_err(config_err)?;
            info!(%address, "receiving this waypoint's namespace from the control plane");
            xds::subscribe(xds, settings, on_reject, None).await.state
        }
        None => {
            // The command line requires one of the two.
            let Some(path) = &config.mesh_config else {
                return Err(config_err("no mesh source: --xds-address or --mesh-config"));
            };
            discovery::open(path, config.config_poll_interval, settings, on_reject)
                .map_err(config_err)?
        }
    };
    let state = rx.borrow().clone();
    match state.waypoint(&me) {
        Some(w) if w.identity != identity => {
            warn!(configured = %w.identity, %identity, "the mesh expects another identity for this waypoint: its tunnels will be refused")
        }
        None => warn!(waypoint = %me, "the mesh does not define this waypoint (yet)"),
        Some(_) => {}
    }

    let headers = |names: &[String]| -> Result<Vec<HeaderName>, StartError> {
        names
            .iter()
            .map(|n| HeaderName::from_bytes(n.trim().as_bytes()).map_err(config_err))
            .collect()
    };
    let access_log = AccessLog::new(
        config.access_log,
        headers(&config.log_headers)?,
        &headers(&config.redact_headers)?,
        config.redact_query_params.clone(),
    );
    let upstreams = Arc::new(Upstreams {
        me: me.clone(),
        identity: identity.clone(),
        cert: cert.clone(),
        bundle: bundle.clone(),
        state: rx,
        pool: Pool::new(PoolSettings::default()),
        h2: H2Settings::default(),
        metrics: metrics.clone(),
    });
    let instance = format!("{}/{}", config.namespace, config.name);
    let tracing = Tracing::start(&config.trace, "veil-waypoint", &instance)
        .map_err(|e| StartError::Config(e.to_string()))?
        .map(Arc::new);
    let metrics_export = MetricsExport::start(
        &config.trace,
        "veil-waypoint",
        &instance,
        metrics.clone(),
        Some(certs.clone()),
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    let ctx = Arc::new(
        Context::new(
            upstreams.clone(),
            access_log,
            Settings {
                request_timeout: config.request_timeout,
                sniff_timeout: config.sniff_timeout,
                path_normalization: config.path_normalization,
            },
        )
        .with_tracing(tracing.clone()),
    );
    if !config.admin_addr.ip().is_loopback() {
        warn!(admin = %config.admin_addr, "the admin endpoint (/config_dump: every workload and policy this waypoint knows) listens beyond loopback");
    }
    let endpoints: [(std::net::SocketAddr, Handler); 3] = [
        (config.metrics_addr, {
            let (metrics, certs) = (metrics.clone(), certs.clone());
            Arc::new(move |req| match req.uri.path() {
                "/metrics" => openmetrics(metrics.encode(Some(&certs))),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            })
        }),
        (config.readiness_addr, {
            let cert = cert.clone();
            Arc::new(move |req| match (req.uri.path(), cert.current()) {
                ("/healthz/ready", Some(_)) => text(StatusCode::OK, "ready\n"),
                ("/healthz/ready", None) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no certificate yet\n",
                ),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            })
        }),
        (config.admin_addr, {
            let (upstreams, certs) = (upstreams.clone(), certs.clone());
            Arc::new(move |req| match req.uri.path() {
                "/config_dump" => json(&config_dump(&upstreams, &certs)),
                _ => text(StatusCode::NOT_FOUND, "not found (try /config_dump)\n"),
            })
        }),
    ];
    for (addr, handler) in endpoints {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        tokio::spawn(serve(listener, handler));
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let tls = server_config(bundle, Arc::new(cert));
    info!(waypoint = %me, %identity, listen = %config.listen, "veil-waypoint running");
    let drain = Drain::default();
    inbound::run(ctx, listener, tls, &drain, shutdown).await;
    info!("draining in-flight requests");
    if tokio::time::timeout(config.drain_timeout, drain.drain())
        .await
        .is_err()
    {
        warn!("requests still in flight after the drain timeout; closing them");
    }
    if let Some(export) = metrics_export {
        export.shutdown().await;
    }
    if let Some(tracing) = tracing {
        // Flushing blocks until the exporter, which runs on this runtime, is done.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    info!("veil-waypoint stopped");
    Ok(())
}

/// What this waypoint holds, in the schema `veil config` reads: its namespace's part of the mesh, its
/// certificate and its pooled tunnels.
fn config_dump(upstreams: &Upstreams, certs: &CertManager) -> ConfigDump {
    let state = upstreams.state.borrow().clone();
    ConfigDump::from_state(
        ProxyInfo {
            kind: "waypoint".to_owned(),
            name: upstreams.me.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        &state,
    )
    .with_certificates_and_pool(certs, &upstreams.pool)
}
