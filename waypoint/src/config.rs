//! The waypoint's command line (every flag also readable from the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use veil_mesh::telemetry::LogFormat;

use crate::access_log::Level;
use crate::canon::Normalization;

/// veil's per-namespace L7 proxy.
#[derive(Parser, Debug, Clone)]
#[command(name = "veil-waypoint", version, about)]
// The mesh comes from the controller or from a local file: the waypoint does not watch the
// Kubernetes API itself (its binary holds no Kubernetes client).
#[command(group(clap::ArgGroup::new("mesh_source").required(true).args(["mesh_config", "xds_address"])))]
pub struct Config {
    /// This waypoint's name (services and workloads name it in `useWaypoint`).
    #[arg(long, env = "VEIL_WAYPOINT_NAME", default_value = "waypoint")]
    pub name: String,
    /// Its namespace.
    #[arg(long, env = "VEIL_WAYPOINT_NAMESPACE")]
    pub namespace: String,
    /// Its service account: its identity is spiffe://<trust domain>/ns/<namespace>/sa/<this>.
    #[arg(
        long,
        env = "VEIL_WAYPOINT_SERVICE_ACCOUNT",
        default_value = "waypoint"
    )]
    pub service_account: String,
    /// The mesh description (local mode), re-read on change. One of it or `--xds-address` is
    /// needed.
    #[arg(long = "mesh-config", env = "VEIL_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// The control plane (`--xds-address` and how to trust and authenticate to it).
    #[command(flatten)]
    pub xds: veil_mesh::xds::XdsFlags,
    #[command(flatten)]
    pub trace: veil_mesh::telemetry::trace::TraceFlags,
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
    /// File holding the waypoint's bearer token for the CA.
    #[arg(long, env = "VEIL_CA_TOKEN_FILE")]
    pub ca_token_file: PathBuf,
    /// Lifetime asked for the waypoint's certificate.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,
    /// Access log level.
    #[arg(long, value_enum, default_value = "metadata")]
    pub access_log: Level,
    /// Request headers written by the `full` access log (credentials never are).
    #[arg(long = "log-header", value_delimiter = ',')]
    pub log_headers: Vec<String>,
    /// Headers never written, in addition to Authorization, Cookie and Set-Cookie.
    #[arg(long = "redact-header", value_delimiter = ',')]
    pub redact_headers: Vec<String>,
    /// Query parameters whose values are never written (in addition to the built-in list).
    #[arg(long = "redact-query-param", value_delimiter = ',')]
    pub redact_query_params: Vec<String>,
    /// How request paths are canonicalized before policy and forwarding (Istio's
    /// `pathNormalization` levels). `%2F`/`%5C` are refused below DECODE_AND_MERGE_SLASHES.
    #[arg(
        long,
        env = "VEIL_WAYPOINT_PATH_NORMALIZATION",
        value_enum,
        default_value = "MERGE_SLASHES"
    )]
    pub path_normalization: Normalization,
    /// Time for an upstream response to start.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// How long to wait for a client's first bytes before treating a tunnel as opaque TCP.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sniff_timeout: Duration,
    /// Time given to in-flight requests on shutdown.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Prometheus metrics endpoint.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint.
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Admin endpoint (`/config_dump`: what this waypoint holds, as `veil config` shows it). Keep it
    /// on loopback: it names every workload and policy the waypoint knows.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "VEIL_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}
