//! ztunnel's command line (every flag also readable from the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use veil_mesh::telemetry::LogFormat;

use crate::context::UnknownDestination;

/// veil's per-node tunnel.
#[derive(Parser, Debug, Clone)]
#[command(name = "veil-ztunnel", version, about)]
pub struct Config {
    /// The node this ztunnel serves: it captures the enrolled pods placed on it.
    #[arg(long, env = "VEIL_NODE_NAME")]
    pub node: String,
    /// The mesh description (local mode): workloads, services and policies, re-read on change.
    /// Without it, ztunnel watches the Kubernetes API (in-cluster or kubeconfig credentials).
    #[arg(long = "mesh-config", env = "VEIL_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// Serve the `veil-cni` plugin on this unix socket (the Helm chart sets it).
    #[arg(long, env = "VEIL_CNI_SOCKET")]
    pub cni_socket: Option<PathBuf>,
    /// Keep this file listing the namespaces whose pods must be captured, for the `veil-cni`
    /// plugin (the Helm chart sets it).
    #[arg(long, env = "VEIL_AMBIENT_FILE")]
    pub ambient_file: Option<PathBuf>,
    /// The node's CNI bin directory as mounted: with `--cni-conf-dir`, ztunnel removes `veil-cni`
    /// from the node when it stops because veil is uninstalled (its DaemonSet is gone).
    #[arg(long, requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
    /// The node's CNI configuration directory as mounted (see `--cni-bin-dir`).
    #[arg(long, requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// ztunnel's namespace (Kubernetes mode).
    #[arg(long, env = "POD_NAMESPACE", default_value = "veil-system")]
    pub namespace: String,
    /// ztunnel's DaemonSet (Kubernetes mode).
    #[arg(long, default_value = "veil-ztunnel")]
    pub daemonset: String,
    /// Where the container runtime pins pods' network namespaces: searched for pods that were
    /// running before their namespace joined the mesh.
    #[arg(long, default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,
    /// How often the mesh description is checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub config_poll_interval: Duration,
    /// The trust domain.
    #[arg(long, env = "VEIL_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The namespace whose policies apply mesh-wide.
    #[arg(long, default_value = "veil-system")]
    pub root_namespace: String,
    /// PEM file of the mesh root certificate(s).
    #[arg(long, env = "VEIL_ROOT_CERT")]
    pub root_cert: PathBuf,
    /// The CA's address.
    #[arg(
        long,
        env = "VEIL_CA_ADDRESS",
        default_value = "veil-ca.veil-system.svc:15012"
    )]
    pub ca_address: String,
    /// The name the CA's serving certificate must be valid for.
    #[arg(
        long,
        env = "VEIL_CA_SERVER_NAME",
        default_value = "veil-ca.veil-system.svc"
    )]
    pub ca_server_name: String,
    /// File holding ztunnel's bearer token for the CA (re-read for every request).
    #[arg(long, env = "VEIL_CA_TOKEN_FILE")]
    pub ca_token_file: PathBuf,
    /// Lifetime asked for workload certificates (the CA may shorten it).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// What to do with outbound traffic to destinations outside the mesh.
    #[arg(long, value_enum, default_value = "passthrough")]
    pub unknown_destination: UnknownDestination,
    /// How long a live inbound connection that a policy change now denies may go on before it is
    /// closed (0: at once, as the policy says). Every mesh change re-checks every live connection.
    #[arg(long, env = "VEIL_POLICY_RECHECK_GRACE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub policy_recheck_grace: Duration,
    /// Send the client address to the destination in the HBONE `forwarded` header.
    #[arg(long)]
    pub send_forwarded: bool,
    /// Prometheus metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint.
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Admin endpoint (config dump); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "VEIL_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// HTTP/2 flow-control window of each HBONE tunnel, in bytes: how much may be in flight
    /// unacknowledged per tunnel (memory is taken only when a receiver falls behind).
    #[arg(long, env = "VEIL_HBONE_STREAM_WINDOW", default_value_t = veil_mesh::hbone::H2Settings::default().stream_window, value_parser = clap::value_parser!(u32).range(65_535..=(1 << 30)))]
    pub hbone_stream_window: u32,
    /// HTTP/2 flow-control window of each HBONE connection (all its tunnels), in bytes.
    #[arg(long, env = "VEIL_HBONE_CONNECTION_WINDOW", default_value_t = veil_mesh::hbone::H2Settings::default().connection_window, value_parser = clap::value_parser!(u32).range(65_535..=(1 << 30)))]
    pub hbone_connection_window: u32,
    /// HTTP/2 frame size HBONE peers may send us, in bytes (16 KiB to 16 MiB).
    #[arg(long, env = "VEIL_HBONE_MAX_FRAME_SIZE", default_value_t = veil_mesh::hbone::H2Settings::default().max_frame_size, value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub hbone_max_frame_size: u32,
    /// Threads that carry traffic, the node agent's CPU ceiling [default: half the node's cores,
    /// at most 2].
    #[arg(long, env = "VEIL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: Option<u16>,
}
