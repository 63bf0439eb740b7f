//! ztunnel's command line (every flag also readable from the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use veil_mesh::telemetry::LogFormat;

use crate::budget::Limits;
use crate::capture::UdpAllowance;
use crate::context::UnknownDestination;

/// veil's per-node tunnel.
#[derive(Parser, Debug, Clone)]
#[command(name = "veil-ztunnel", version, about)]
// The mesh comes from the controller or from a local file: ztunnel does not watch the Kubernetes
// API itself (its binary holds no Kubernetes client).
#[command(group(clap::ArgGroup::new("mesh_source").required(true).args(["mesh_config", "xds_address"])))]
pub struct Config {
    /// The node this ztunnel serves: it captures the enrolled pods placed on it.
    #[arg(long, env = "VEIL_NODE_NAME")]
    pub node: String,
    /// The mesh description (local mode): workloads, services and policies, re-read on change.
    /// One of it or `--xds-address` is needed.
    #[arg(long = "mesh-config", env = "VEIL_MESH_CONFIG")]
    pub mesh_config: Option<PathBuf>,
    /// The control plane (`--xds-address` and how to trust and authenticate to it).
    #[command(flatten)]
    pub xds: veil_mesh::xds::XdsFlags,
    #[command(flatten)]
    pub trace: veil_mesh::telemetry::trace::TraceFlags,
    /// Also receive the namespaces enrolled in the mesh from the control plane (veil's own
    /// resource type; veil's controller serves it). Set to `false` on istiod, which refuses or
    /// ignores it: enrolment is then known only from the enrolled workloads, and a namespace
    /// enrolled before its first pod has that pod start uncaptured.
    #[arg(long, env = "VEIL_XDS_AMBIENT_NAMESPACES", default_value_t = true, action = clap::ArgAction::Set)]
    pub xds_ambient_namespaces: bool,
    /// Serve the `veil-cni` plugin on this unix socket (the Helm chart sets it).
    #[arg(long, env = "VEIL_CNI_SOCKET")]
    pub cni_socket: Option<PathBuf>,
    /// Keep this file listing the namespaces whose pods must be captured, for the `veil-cni`
    /// plugin (the Helm chart sets it).
    #[arg(long, env = "VEIL_AMBIENT_FILE")]
    pub ambient_file: Option<PathBuf>,
    /// The node's CNI bin directory as mounted: with `--cni-conf-dir` and `--daemonset`, ztunnel
    /// removes `veil-cni` from the node when it stops because veil is uninstalled (its DaemonSet is
    /// gone).
    #[arg(long, requires_all = ["cni_conf_dir", "daemonset"])]
    pub cni_bin_dir: Option<PathBuf>,
    /// The node's CNI configuration directory as mounted (see `--cni-bin-dir`).
    #[arg(long, requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,
    /// ztunnel's namespace (Kubernetes: where its DaemonSet is).
    #[arg(long, env = "POD_NAMESPACE", default_value = "veil-system")]
    pub namespace: String,
    /// ztunnel's DaemonSet (Kubernetes: when it is gone at stop, veil is being uninstalled). No
    /// default: a wrong name would read as "gone" and take the plugin off the node at every restart.
    #[arg(long)]
    pub daemonset: Option<String>,
    /// Hand this node's pods over between ztunnels through sockets in this directory: a ztunnel
    /// starting takes over the listening sockets of the one running (an upgrade refuses and cuts
    /// no connection), and offers its own to the next (the Helm chart sets it; see
    /// docs/ztunnel.md, "Upgrades").
    #[arg(long, env = "VEIL_HANDOVER_DIR")]
    pub handover_dir: Option<PathBuf>,
    /// On SIGTERM, how long connections already open are served before ztunnel exits (it exits as
    /// soon as the last one ends; a second SIGTERM or SIGINT exits at once).
    #[arg(long, env = "VEIL_DRAIN_PERIOD", default_value = "1h", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,
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
    /// UDP destination ports enrolled pods may send to in clear, comma-separated (all other UDP
    /// leaving an enrolled pod is refused at the source, or carried with `--carry-udp`). The flag
    /// with no value allows none.
    #[arg(long, env = "VEIL_UDP_ALLOWED_PORTS", value_delimiter = ',', num_args = 0.., default_value = "53")]
    pub udp_allowed_ports: Vec<u16>,
    /// Networks (CIDRs or addresses) enrolled pods may send UDP to in clear on any port,
    /// comma-separated.
    #[arg(long, env = "VEIL_UDP_ALLOWED_CIDRS", value_delimiter = ',', value_parser = parse_net)]
    pub udp_allowed_cidrs: Vec<IpNet>,
    /// Carry UDP between enrolled pods, encrypted (CONNECT-UDP over HBONE), instead of refusing it:
    /// outbound UDP not allowed out in clear is captured, sent to a mesh workload as a flow over
    /// HBONE and checked against its L4 policies there; UDP to anything else is still refused.
    #[arg(long, env = "VEIL_CARRY_UDP")]
    pub carry_udp: bool,
    /// How long a carried UDP flow lives without a datagram either way.
    #[arg(long, env = "VEIL_UDP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_udp_idle)]
    pub udp_idle_timeout: Duration,
    /// Admit the kubelet's probes to enrolled pods under STRICT: this node's own connections to the
    /// pods it captured leave with a reserved source (169.254.7.127, fd16:9254:7127:1337:ffff:ffff:ffff:ffff)
    /// that each pod lets through in plaintext and the node drops from anywhere else. Anything in
    /// the node's network namespace (hostNetwork pods too) then reaches them in plaintext.
    /// Off by default: only where ztunnel runs in the node's network namespace (the chart's
    /// `hostNetwork`), where its guard protects the pods.
    #[arg(long, env = "VEIL_KUBELET_PROBES", default_value_t = false, action = clap::ArgAction::Set)]
    pub kubelet_probes: bool,
    /// How long a live inbound connection that a policy change now denies may go on before it is
    /// closed (0: at once, as the policy says). Every mesh change re-checks every live connection.
    #[arg(long, env = "VEIL_POLICY_RECHECK_GRACE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub policy_recheck_grace: Duration,
    /// Send the client address to the destination in the HBONE `forwarded` header.
    #[arg(long)]
    pub send_forwarded: bool,
    /// Send each pod's workload names (namespace, controller, app, version) in `baggage` on its
    /// HBONE requests, so that the server's ztunnel or waypoint names it in metrics even when it
    /// does not list it; `--send-baggage=false` to keep them to the pod's own node.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub send_baggage: bool,
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
    /// Send a connection's first bytes right behind its HBONE CONNECT instead of waiting for the
    /// 200 (one round trip less per new connection; the destination still admits the tunnel
    /// before any byte reaches the application). `false` for peers that refuse data before the 200.
    #[arg(long, env = "VEIL_HBONE_EARLY_DATA", default_value_t = true, action = clap::ArgAction::Set)]
    pub hbone_early_data: bool,
    /// HBONE over QUIC as well (UDP 15008, HTTP/3, the same mutual TLS and identities): each
    /// enrolled pod serves it, and its tunnels to mesh workloads try it first, falling back to
    /// HTTP/2 for a peer that does not answer in time (Istio's ztunnel, a node without it).
    #[arg(long, env = "VEIL_HBONE_QUIC")]
    pub hbone_quic: bool,
    /// How long a QUIC dial goes alone before HTTP/2 is dialled too (whichever connects first
    /// carries the tunnel).
    #[arg(long, env = "VEIL_HBONE_QUIC_HEAD_START", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub hbone_quic_head_start: Duration,
    /// How long a QUIC dial may take at all.
    #[arg(long, env = "VEIL_HBONE_QUIC_CONNECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub hbone_quic_connect_timeout: Duration,
    /// How long a peer that ended on HTTP/2 is dialled on HTTP/2 alone before QUIC is tried again.
    #[arg(long, env = "VEIL_HBONE_QUIC_FALLBACK_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub hbone_quic_fallback_ttl: Duration,
    /// Connections between two pods of this node skip HBONE: ztunnel, which holds both pods'
    /// identities, admits them with the destination's policies and joins the two sockets (no TLS;
    /// no byte leaves the node). `false` sends them through HBONE like any other.
    #[arg(long, env = "VEIL_SAME_NODE_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub same_node_fast_path: bool,
    /// Most HBONE (mTLS) connections open at once on the node; more are refused [default: derived from the descriptor limit].
    #[arg(long, env = "VEIL_MAX_HBONE_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hbone_connections: Option<u32>,
    /// Most HBONE (mTLS) connections open at once for one pod [default: a quarter of the node's].
    #[arg(long, env = "VEIL_MAX_HBONE_CONNECTIONS_PER_POD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_hbone_connections_per_pod: Option<u32>,
    /// Most inbound TLS handshakes in progress at once on the node; more are refused [default: derived from the descriptor limit].
    #[arg(long, env = "VEIL_MAX_TLS_HANDSHAKES", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tls_handshakes: Option<u32>,
    /// Most inbound TLS handshakes in progress at once for one pod [default: a quarter of the node's].
    #[arg(long, env = "VEIL_MAX_TLS_HANDSHAKES_PER_POD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tls_handshakes_per_pod: Option<u32>,
    /// Most inbound HBONE tunnels (CONNECT streams, each with a connection to the application) open at once on the node; more are refused [default: derived from the descriptor limit].
    #[arg(long, env = "VEIL_MAX_INBOUND_TUNNELS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inbound_tunnels: Option<u32>,
    /// Most inbound HBONE tunnels (CONNECT streams, each with a connection to the application) open at once for one pod [default: a quarter of the node's].
    #[arg(long, env = "VEIL_MAX_INBOUND_TUNNELS_PER_POD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inbound_tunnels_per_pod: Option<u32>,
    /// Most captured outbound connections open at once on the node; more are refused [default: derived from the descriptor limit].
    #[arg(long, env = "VEIL_MAX_OUTBOUND_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_outbound_connections: Option<u32>,
    /// Most captured outbound connections open at once for one pod [default: a quarter of the node's].
    #[arg(long, env = "VEIL_MAX_OUTBOUND_CONNECTIONS_PER_POD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_outbound_connections_per_pod: Option<u32>,
    /// Most captured plaintext inbound connections open at once on the node; more are refused [default: derived from the descriptor limit].
    #[arg(long, env = "VEIL_MAX_PLAINTEXT_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_plaintext_connections: Option<u32>,
    /// Most captured plaintext inbound connections open at once for one pod [default: a quarter of the node's].
    #[arg(long, env = "VEIL_MAX_PLAINTEXT_CONNECTIONS_PER_POD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_plaintext_connections_per_pod: Option<u32>,
    /// Most carried UDP flows open at once on the node (`--carry-udp`); a pod's flow idle for a second makes room for its next, else more are refused [default: derived from the descriptor limit].
    #[arg(long, env = "VEIL_MAX_UDP_FLOWS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_udp_flows: Option<u32>,
    /// Most carried UDP flows open at once for one pod [default: a quarter of the node's].
    #[arg(long, env = "VEIL_MAX_UDP_FLOWS_PER_POD", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_udp_flows_per_pod: Option<u32>,
    /// Most pipes the plaintext relays (same-node path, passthrough, PERMISSIVE) splice through at
    /// once, two descriptors each; 0 copies through buffers instead [default: 1/32 of the
    /// descriptors left after the reserve, at most 64].
    #[arg(long, env = "VEIL_MAX_SPLICE_PIPES")]
    pub max_splice_pipes: Option<u32>,
    /// Bytes each splice pipe is asked to hold (the kernel rounds up to a power of two pages and
    /// keeps its default, 64 KiB, where it refuses); 0: the kernel's default.
    #[arg(long, env = "VEIL_SPLICE_PIPE_SIZE", default_value_t = crate::budget::PIPE_CAPACITY)]
    pub splice_pipe_size: usize,
    /// Time an HBONE peer has for the TCP, TLS and HTTP/2 handshakes.
    #[arg(long, env = "VEIL_HBONE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub hbone_handshake_timeout: Duration,
    /// HBONE tunnels (streams) a client may have open at once on one connection; more are
    /// refused with REFUSED_STREAM.
    #[arg(long, env = "VEIL_HBONE_MAX_STREAMS", default_value_t = veil_mesh::hbone::H2Settings::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub hbone_max_streams: u32,
    /// Threads that carry traffic, the node agent's CPU ceiling [default: half the node's cores,
    /// at most 2].
    #[arg(long, env = "VEIL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: Option<u16>,
    /// HBONE connections to one peer (per source pod) among which busy tunnels are spread before
    /// they share them [default: the worker threads]. One connection is one core's work: more
    /// connections than threads buy no parallelism and lose HTTP/2's batching of several
    /// tunnels' frames into one TLS write.
    #[arg(long, env = "VEIL_HBONE_CONNECTIONS_PER_PEER", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub hbone_connections_per_peer: Option<u16>,
}

impl Config {
    /// The threads that carry traffic: `--worker-threads`, else half the node's cores, at most 2
    /// (ztunnel shares the node with the workloads it serves, and on a 2-core node one thread
    /// measured faster than two: docs/benchmarks.md).
    pub fn workers(&self) -> usize {
        self.worker_threads.map_or_else(
            || {
                let cores = std::thread::available_parallelism().map_or(1, usize::from);
                (cores / 2).clamp(1, 2)
            },
            usize::from,
        )
    }

    /// Connections per HBONE peer the pool spreads busy tunnels over.
    pub fn connections_per_peer(&self) -> usize {
        self.hbone_connections_per_peer
            .map_or_else(|| self.workers(), usize::from)
    }

    /// The connection budgets: the flags given, the defaults for `nofile` descriptors for the rest.
    pub fn limits(&self, nofile: usize) -> Limits {
        let mut limits = Limits::for_nofile(nofile);
        let given = [
            (
                self.max_hbone_connections,
                self.max_hbone_connections_per_pod,
            ),
            (self.max_tls_handshakes, self.max_tls_handshakes_per_pod),
            (self.max_inbound_tunnels, self.max_inbound_tunnels_per_pod),
            (
                self.max_outbound_connections,
                self.max_outbound_connections_per_pod,
            ),
            (
                self.max_plaintext_connections,
                self.max_plaintext_connections_per_pod,
            ),
            (self.max_udp_flows, self.max_udp_flows_per_pod),
        ];
        for (i, (node, pod)) in given.into_iter().enumerate() {
            if let Some(node) = node {
                limits.node[i] = node as usize;
                limits.pod[i] = (node as usize / 4).max(1);
            }
            if let Some(pod) = pod {
                limits.pod[i] = pod as usize;
            }
            // A pod's share can never exceed the node's whole.
            limits.pod[i] = limits.pod[i].min(limits.node[i]);
        }
        if let Some(pipes) = self.max_splice_pipes {
            limits.pipes = pipes as usize;
        }
        limits.pipe_capacity = self.splice_pipe_size;
        limits
    }

    /// The UDP destinations allowed out of enrolled pods.
    pub fn udp_allowance(&self) -> UdpAllowance {
        UdpAllowance {
            ports: self.udp_allowed_ports.clone(),
            cidrs: self.udp_allowed_cidrs.clone(),
            carry: self.carry_udp,
            quic: self.hbone_quic,
        }
    }
}

/// A UDP flow's idle timeout: 1 s to 1 h (0 would end every flow at once).
fn parse_udp_idle(s: &str) -> Result<Duration, String> {
    let idle = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&idle) {
        Ok(idle)
    } else {
        Err(format!("{s} is not between 1s and 1h"))
    }
}

/// A network (`10.96.0.0/12`) or one address (`10.96.0.10`); host bits must be clear, so that a
/// typo does not silently allow a wider or different network.
fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return if net.trunc() == net {
            Ok(net)
        } else {
            Err(format!(
                "{s:?} has host bits set (did you mean {}?)",
                net.trunc()
            ))
        };
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with_source(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec![
            "veil-ztunnel",
            "--node=a",
            "--root-cert=/r",
            "--ca-token-file=/t",
        ];
        argv.extend_from_slice(extra);
        Config::try_parse_from(argv)
    }

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        parse_with_source(&[&["--mesh-config=/m"], extra].concat())
    }

    #[test]
    fn udp_flows_have_a_budget_of_their_own() {
        let udp = veil_mesh::telemetry::metrics::Resource::UdpFlows.index();
        let tcp = veil_mesh::telemetry::metrics::Resource::OutboundConnections.index();
        let defaults = parse(&[]).unwrap().limits(4096);
        let given = parse(&["--max-udp-flows=100"]).unwrap().limits(4096);
        assert_eq!((given.node[udp], given.pod[udp]), (100, 25));
        assert_eq!(given.node[tcp], defaults.node[tcp], "TCP's budget is apart");
        let per_pod = parse(&["--max-udp-flows=100", "--max-udp-flows-per-pod=7"]).unwrap();
        assert_eq!(per_pod.limits(4096).pod[udp], 7);
        assert!(parse(&["--max-udp-flows-per-pod=0"]).is_err());
    }

    #[test]
    fn the_mesh_comes_from_the_controller_or_a_file_and_nowhere_else() {
        // No Kubernetes API watch to fall back on: neither source is a usage error naming both.
        let e = parse_with_source(&[]).unwrap_err().to_string();
        assert!(
            e.contains("--mesh-config") && e.contains("--xds-address"),
            "{e}"
        );
        assert!(parse_with_source(&["--xds-address=c:15012"]).is_ok());
        assert!(parse_with_source(&["--mesh-config=/m"]).is_ok());
        assert!(parse_with_source(&["--mesh-config=/m", "--xds-address=c:15012"]).is_err());
    }

    #[test]
    fn removing_the_plugin_at_uninstall_needs_the_daemonset_named() {
        // No default name: a wrong one would read as "gone" and remove the plugin at every stop.
        let dirs = ["--cni-bin-dir=/b", "--cni-conf-dir=/c"];
        let e = parse(&dirs).unwrap_err().to_string();
        assert!(e.contains("--daemonset"), "{e}");
        let c = parse(&[&dirs[..], &["--daemonset=ztunnel"]].concat()).unwrap();
        assert_eq!(c.daemonset.as_deref(), Some("ztunnel"));
    }

    #[test]
    fn udp_allowance_defaults_to_dns_and_takes_ports_and_networks() {
        assert_eq!(parse(&[]).unwrap().udp_allowance(), UdpAllowance::default());
        let c = parse(&[
            "--udp-allowed-ports=53,123",
            "--udp-allowed-cidrs=10.96.0.10,fd00::/8",
        ])
        .unwrap();
        let udp = c.udp_allowance();
        assert_eq!(udp.ports, vec![53, 123]);
        assert_eq!(
            udp.cidrs,
            vec![
                "10.96.0.10/32".parse::<IpNet>().unwrap(),
                "fd00::/8".parse().unwrap()
            ]
        );
        assert!(
            parse(&["--udp-allowed-ports"])
                .unwrap()
                .udp_allowed_ports
                .is_empty()
        );
        assert!(parse(&["--udp-allowed-cidrs=10.96.0.1/12"]).is_err());
        assert!(parse(&["--udp-allowed-ports=99999"]).is_err());
        assert!(!parse(&[]).unwrap().carry_udp);
        let carried = parse(&["--carry-udp", "--udp-idle-timeout=15s"]).unwrap();
        assert!(carried.udp_allowance().carry);
        assert_eq!(carried.udp_idle_timeout, Duration::from_secs(15));
        for bad in ["0s", "500ms", "2h", "soon"] {
            assert!(
                parse(&[&format!("--udp-idle-timeout={bad}")]).is_err(),
                "{bad}"
            );
        }
    }
}
