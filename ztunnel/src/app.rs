//! Assembly: from the configuration to a running ztunnel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};
use veil_mesh::discovery::{self, MeshSettings, MeshState, NodeAddresses};
use veil_mesh::hbone::H2Settings;
use veil_mesh::identity::{
    CertManager, GrpcCaClient, ManagerConfig, TokenSource, TrustBundle, parse_trust_domain,
};
use veil_mesh::pool::{Pool, PoolSettings};
use veil_mesh::telemetry::metrics::Metrics;
use veil_mesh::telemetry::metrics::export::MetricsExport;
use veil_mesh::telemetry::trace::Tracing;
use veil_mesh::xds;

use crate::cni::cleanup::Cleanup;
use crate::config::Config;
use crate::context::{Context, DataPathSettings};
use crate::enrol::{self, StatusMap};
use crate::registry::Registry;
use crate::{budget, cni, conntrack, handover, lifecycle, netns, ops};

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
/// The set is computed over every workload, on a blocking thread: off the data path's workers, and
/// at most once per [`L7_REPORT_INTERVAL`] (changes in between are taken together), so that a
/// cluster's pod churn does not cost a scan of the whole mesh per change.
async fn report_l7_at_l4(mut rx: watch::Receiver<Arc<MeshState>>) {
    let mut reported = Vec::new();
    loop {
        let mesh = rx.borrow_and_update().clone();
        let current = match tokio::task::spawn_blocking(move || mesh.l7_policies_enforced_at_l4())
            .await
        {
            Ok(current) => current,
            Err(e) => {
                return error!(error = %e, "listing the policies enforced at L4 failed; no longer reported");
            }
        };
        if current != reported {
            for policy in current.iter().filter(|p| !reported.contains(*p)) {
                warn!(%policy, "policy uses HTTP attributes but applies to workloads without a waypoint: ztunnel cannot check them and DENIES what the policy could match (attach it to a waypoint with targetRefs)");
            }
            reported = current;
        }
        tokio::time::sleep(L7_REPORT_INTERVAL).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// How often, at most, [`report_l7_at_l4`] scans the mesh.
const L7_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the `control_plane_connected` gauge at what `connected` says.
async fn report_connected(mut connected: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    loop {
        let up = *connected.borrow_and_update();
        metrics.control_plane_connected.set(i64::from(up));
        if connected.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps `path` listing the namespaces whose pods must be captured, for the `veil-cni` plugin.
/// Each version replaces the file whole, so the plugin never reads half of one.
async fn keep_ambient_file(path: PathBuf, mut rx: watch::Receiver<Arc<MeshState>>) {
    let mut written = None;
    loop {
        let current = rx.borrow_and_update().ambient_namespaces().clone();
        if written.as_ref() != Some(&current) {
            match write_atomically(&path, &current) {
                Ok(()) => {
                    info!(file = %path.display(), namespaces = ?current, "ambient namespaces written for the CNI plugin");
                    written = Some(current);
                }
                Err(e) => {
                    error!(file = %path.display(), error = %e, "could not write the ambient namespaces: new pods may be captured by stale rules or refused; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn write_atomically(path: &Path, namespaces: &BTreeSet<String>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(namespaces)?)?;
    std::fs::rename(&tmp, path)
}

/// Runs ztunnel until the first of `stops`, then drains (until the next, at most).
pub async fn run(config: Config, mut stops: lifecycle::Stops) -> Result<(), StartError> {
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
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::default());
    let rejected = metrics.clone();
    let (rx, control_plane) = match &config.xds.address {
        Some(address) => {
            let known = registry.clone();
            // Pods the CNI plugin handed over get their addresses before the controller lists them.
            let node = NodeAddresses {
                changed: registry.subscribe(),
                lookup: Box::new(move |namespace, name| {
                    known.get(&cni::pod_key(namespace, name)).map(|p| p.ips)
                }),
            };
            let xds = config
                .xds
                .client(
                    address,
                    xds::Subscriber {
                        trust_domain: &settings.trust_domain,
                        mesh_roots: certs.bundle(),
                        ca_token_file: &config.ca_token_file,
                        node: config.node.clone(),
                        ambient_namespaces: config.xds_ambient_namespaces,
                        waypoint: false,
                    },
                )
                .map_err(StartError::Config)?;
            info!(%address, "receiving the mesh from the control plane");
            let subscription = xds::subscribe(
                xds,
                settings,
                move |e| {
                    warn!(error = %e, "refused by this ztunnel (what it would decide is denied)");
                    rejected.config_rejected.inc();
                },
                Some(node),
            )
            .await;
            (subscription.state, Some(subscription.connected))
        }
        None => {
            // The command line requires one of the two.
            let Some(path) = &config.mesh_config else {
                return Err(StartError::Config(
                    "no mesh source: --xds-address or --mesh-config".into(),
                ));
            };
            let rx = discovery::open(path, config.config_poll_interval, settings, move |_| {
                rejected.config_rejected.inc();
            })
            .map_err(|e| StartError::Config(e.to_string()))?;
            (rx, None)
        }
    };
    tokio::spawn(report_l7_at_l4(rx.clone()));
    if let Some(path) = &config.ambient_file {
        tokio::spawn(keep_ambient_file(path.clone(), rx.clone()));
    }

    let nofile = budget::raise_nofile();
    let limits = config.limits(nofile);
    if !limits.fit(nofile) {
        warn!(
            nofile,
            descriptors = limits.descriptors(),
            ?limits,
            "the connection limits could hold more descriptors than the process may open: under load, accepts will fail (EMFILE) before the limits refuse"
        );
    }
    info!(node = ?limits.node, per_pod = ?limits.pod, splice_pipes = limits.pipes, order = "hbone_connections, tls_handshakes, inbound_tunnels, outbound_connections, plaintext_connections", "connection budgets");
    let ctx = Context::new(
        config.node.clone(),
        rx,
        certs,
        Pool::new(PoolSettings {
            max_connections_per_key: config.connections_per_peer(),
            ..PoolSettings::default()
        }),
        metrics,
        DataPathSettings {
            unknown_destination: config.unknown_destination,
            send_forwarded: config.send_forwarded,
            send_baggage: config.send_baggage,
            recheck_grace: config.policy_recheck_grace,
            h2: H2Settings {
                stream_window: config.hbone_stream_window,
                connection_window: config.hbone_connection_window,
                max_frame_size: config.hbone_max_frame_size,
                max_concurrent_streams: config.hbone_max_streams,
                handshake_timeout: config.hbone_handshake_timeout,
                ..H2Settings::default()
            },
            quic: crate::quic::QuicSettings {
                enabled: config.hbone_quic,
                head_start: config.hbone_quic_head_start,
                connect_timeout: config.hbone_quic_connect_timeout,
                fallback_ttl: config.hbone_quic_fallback_ttl,
            },
            early_data: config.hbone_early_data,
            same_node: config.same_node_fast_path,
            limits,
            udp: config.udp_allowance(),
            udp_idle_timeout: config.udp_idle_timeout,
            kubelet_probes: config.kubelet_probes,
            ..DataPathSettings::default()
        },
    );
    let tracing = Tracing::start(&config.trace, "veil-ztunnel", &config.node)
        .map_err(|e| StartError::Config(e.to_string()))?
        .map(Arc::new);
    let ctx = ctx.with_tracing(tracing.clone());
    let metrics_export = MetricsExport::start(
        &config.trace,
        "veil-ztunnel",
        &config.node,
        ctx.metrics.clone(),
        Some(ctx.certs.clone()),
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    let ctx = Arc::new(match control_plane {
        Some(connected) => {
            tokio::spawn(report_connected(connected.clone(), ctx.metrics.clone()));
            ctx.with_control_plane(connected)
        }
        None => ctx,
    });
    tokio::spawn(conntrack::run(
        ctx.live.clone(),
        ctx.state.clone(),
        config.policy_recheck_grace,
    ));
    let status = StatusMap::default();
    // Checked before taking the pods over: from then on the predecessor no longer enrols.
    let (own_cgroup, pods_can_mark) = tokio::task::spawn_blocking(own_cgroup)
        .await
        .unwrap_or((None, true));
    // A ztunnel already running on the node hands its pods over before anything is bound: the
    // admin ports and the CNI socket are let go of for this one.
    let (inherited, predecessors) = match &config.handover_dir {
        Some(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || handover::take_over(&dir))
                .await
                .map_err(|e| StartError::Config(format!("taking over from a predecessor: {e}")))?
        }
        None => (handover::Inherited::default(), handover::no_predecessors()),
    };
    let endpoints = vec![
        (config.metrics_addr, ops::metrics(ctx.clone())),
        (
            config.readiness_addr,
            ops::readiness(ctx.clone(), status.clone()),
        ),
        (config.admin_addr, ops::admin(ctx.clone(), status.clone())),
    ];
    let ops = lifecycle::serve_ops(endpoints)
        .await
        .map_err(|(addr, source)| StartError::Bind { addr, source })?;
    let cni = match &config.cni_socket {
        Some(path) => {
            let listener = cni::server::bind(path).map_err(|e| {
                StartError::Config(format!("binding the CNI socket {}: {e}", path.display()))
            })?;
            info!(socket = %path.display(), "serving the veil-cni plugin");
            Some(tokio::spawn(cni::server::run(
                ctx.clone(),
                registry.clone(),
                status.clone(),
                listener,
            )))
        }
        None => None,
    };
    let repair_stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let repair = keep_cni_chain(&config, &repair_stopped);
    let handover = match &config.handover_dir {
        Some(dir) => Some(handover::Server::start(dir).map_err(|e| {
            StartError::Config(format!("the handover socket in {}: {e}", dir.display()))
        })?),
        None => None,
    };
    let enrolment = enrol::Enrolment {
        ctx,
        registry,
        status,
        pinned_dir: config.netns_dir.clone(),
        held: handover::Held::default(),
        inherited,
        own_cgroup,
        pods_can_mark,
        predecessors,
    };
    let mut owner = lifecycle::Owner::start(enrolment, ops, cni, handover);
    info!(node = %config.node, "veil-ztunnel running");
    owner.run_until_stopped(&mut stops).await;
    // Capture rules stay in place: while no ztunnel serves a pod, its traffic fails closed.
    // No repair after this point: an uninstall's cleanup below must not be undone.
    repair_stopped.store(true, std::sync::atomic::Ordering::Release);
    if let Some(repair) = repair {
        repair.abort();
    }
    if let (None, Some(bin_dir), Some(conf_dir), Some(daemonset)) = (
        &config.mesh_config,
        &config.cni_bin_dir,
        &config.cni_conf_dir,
        &config.daemonset,
    ) {
        let cleanup = Cleanup {
            bin_dir: bin_dir.clone(),
            conf_dir: conf_dir.clone(),
            namespace: config.namespace.clone(),
            daemonset: daemonset.clone(),
            ambient_file: config.ambient_file.clone(),
        };
        // veil-cni-cleanup, beside this binary, asks the API server (ztunnel holds no Kubernetes
        // client).
        match std::env::current_exe() {
            Ok(exe) => {
                cleanup
                    .on_shutdown(&exe.with_file_name(cni::cleanup::BINARY))
                    .await;
            }
            Err(e) => {
                error!(error = %e, "cannot tell where veil-cni-cleanup is: keeping veil-cni installed (run `veil-cni uninstall` on the node if veil is being uninstalled)");
            }
        }
    }
    owner.drain(config.drain_period, &mut stops).await;
    if let Some(export) = metrics_export {
        export.shutdown().await;
    }
    if let Some(tracing) = tracing {
        // Flushing blocks until the exporter, which runs on this runtime, is done.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    info!("veil-ztunnel stopped");
    Ok(())
}

/// In Kubernetes, with the node's CNI directories: keeps veil-cni in the node's plugin chain, with
/// the entry the init container chained (the binary copied from beside ztunnel's own when missing).
fn keep_cni_chain(
    config: &Config,
    stopped: &Arc<std::sync::atomic::AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let (None, Some(bin_dir), Some(conf_dir)) = (
        &config.mesh_config,
        &config.cni_bin_dir,
        &config.cni_conf_dir,
    ) else {
        return None;
    };
    let saved = config
        .ambient_file
        .as_deref()
        .and_then(std::path::Path::parent)
        .and_then(cni::repair::saved_entry);
    let entry = match (saved, cni::repair::current_entry(conf_dir)) {
        (Some(entry), _) | (None, Ok(Some(entry))) => entry,
        (None, Ok(None)) => {
            error!(conf_dir = %conf_dir.display(), "veil-cni is not in the node's CNI chain at start and its installer saved no entry (did the install-cni init container run?): the chain is not kept");
            return None;
        }
        (None, Err(e)) => {
            error!(error = %e, "cannot read the node's CNI chain at start: the chain is not kept");
            return None;
        }
    };
    let binary = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(cni::install::PLUGIN_TYPE),
        Err(e) => {
            error!(error = %e, "cannot tell where veil-cni is: the chain is not kept");
            return None;
        }
    };
    info!(conf_dir = %conf_dir.display(), "keeping veil-cni in the node's CNI chain");
    let chain = cni::repair::Chain {
        bin_dir: bin_dir.clone(),
        conf_dir: conf_dir.clone(),
        entry,
        binary,
        stopped: stopped.clone(),
    };
    Some(tokio::spawn(chain.keep(std::time::Duration::from_secs(1))))
}

/// ztunnel's cgroup for the pods' capture rules, or `None` (and a warning) where it cannot tell
/// ztunnel's sockets from a pod's; and whether a pod can set ztunnel's mark (the kernel lets
/// `CAP_NET_RAW` do it).
fn own_cgroup() -> (Option<String>, bool) {
    match crate::cgroup::own() {
        Ok(Some(path)) => {
            info!(cgroup = %path, "the pods' capture rules let out marked sockets from this cgroup only");
            (Some(path), true)
        }
        Ok(None) => {
            info!(
                "kernel before 5.17: setting ztunnel's socket mark needs CAP_NET_ADMIN, which would let a pod remove its rules anyway; the rules match the mark alone"
            );
            (None, false)
        }
        Err(reason) => {
            warn!(%reason, "ztunnel's cgroup cannot tell its sockets from the pods': the capture rules let out every socket with ztunnel's mark, which a pod keeping CAP_NET_RAW can set on its own (Linux 5.17 and later; veil_capture_mark_only_pods counts the pods exposed)");
            (None, true)
        }
    }
}
