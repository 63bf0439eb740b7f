//! `cargo xtask bench`: veil's data path measured against the bare wire, in one run, on a cluster in
//! network namespaces like the end-to-end tests'. Every figure is paired with a baseline measured in
//! the same run (the same pods connected directly, a plain TLS 1.3 tunnel) and reported as a ratio:
//! absolute numbers on a noisy 2-core machine mean little from one run to the next.
//!
//! Writes the table to stdout, every figure to `docs/benchmarks.json`, and the results section of
//! `docs/benchmarks.md` (between its markers; the analysis around it is written by hand).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use veil_e2e::mesh::{
    Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, bin, skip_unless_root, use_binaries_from,
};
use veil_e2e::process::Proc;

use crate::proto::workspace_root;

mod controlplane;
mod memory;
mod quic;
mod report;
mod runs;
mod scale;
mod throughput;
mod upstream;

use crate::layout;
use crate::setup::{build, build_with, install_tools};
use memory::memory;
pub(crate) use memory::resident_by_mapping;
use report::{f, report, write_results_section};
pub(crate) use runs::tool_in;
use runs::{median_run, per_gib, report_of};
use throughput::{iperf, throughput};

/// Tools the benchmarks run, and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
    ("iperf3", "iperf3"),
];

/// The sections of a run, for `--only`.
pub(crate) const SECTIONS: [&str; 11] = [
    "throughput",
    "latency",
    "udp",
    "quic",
    "connections",
    "waypoint",
    "memory",
    "policy",
    "subscriber",
    "controlplane",
    "scale",
];

/// Sections that run without the benchmark cluster.
const OUTSIDE_THE_CLUSTER: [&str; 4] = ["policy", "subscriber", "controlplane", "scale"];

/// How long and how often each measurement runs.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Seconds per measurement.
    pub(crate) seconds: f64,
    /// Rounds of every comparison (the median is reported); variants alternate within a round.
    pub(crate) rounds: usize,
    /// Only these sections (all when empty); a partial run writes nothing.
    pub(crate) only: Vec<String>,
    /// Istio's ztunnel, to run every data-path comparison through as well ([`upstream`]).
    pub(crate) upstream_ztunnel: Option<PathBuf>,
    /// Lay ztunnel's code out from a profile of this build ([`crate::layout`]).
    pub(crate) layout: bool,
    /// Worker threads of every ztunnel, both sides (`None`: veil's default, 1 for Istio's); a run
    /// with it set writes nothing.
    pub(crate) worker_threads: Option<u16>,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    /// Whether the run writes its results: a full run at the default settings.
    fn writes(&self) -> bool {
        self.only.is_empty() && self.worker_threads.is_none()
    }
}

pub(crate) const WAYPOINT_VIP: &str = "10.96.0.50";

/// The waypoint's L7 policy: only the client, only GET, only /bench/*. One line of JSON, which the
/// mesh file reads as YAML and the Kubernetes mode's stand-in API server as an object (the
/// layout's profile runs this cluster in both modes).
const POLICY: &str = r#"
  - {"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "bench-l7", "namespace": "shop"}, "spec": {"targetRefs": [{"kind": "Service", "name": "wserver"}], "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/bench/sa/client"]}}], "to": [{"operation": {"methods": ["GET"], "paths": ["/bench/*"]}}]}]}}
"#;

const DCLIENT_ID: &str = "spiffe://cluster.local/ns/plain/sa/dclient";
const DSERVER_ID: &str = "spiffe://cluster.local/ns/plain/sa/dserver";

pub(crate) fn spec(upstream: bool) -> MeshSpec {
    let mut spec = MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            // The mesh pair, and the same pair outside the mesh (the baseline), on the same nodes.
            PodSpec::new("client", "bench", "node-a"),
            PodSpec::new("server", "bench", "node-b"),
            PodSpec::new("dclient", "plain", "node-a").not_enrolled(),
            PodSpec::new("dserver", "plain", "node-b").not_enrolled(),
            // Servers on the client's node: over the same-node path, and outside the mesh (its
            // baseline).
            PodSpec::new("lserver", "bench", "node-a"),
            PodSpec::new("dlserver", "plain", "node-a").not_enrolled(),
            // Behind the waypoint.
            PodSpec::new("wserver", "shop", "node-b"),
        ],
        services: vec![ServiceSpec {
            name: "wserver".into(),
            namespace: "shop".into(),
            vip: WAYPOINT_VIP.into(),
            selects: "wserver".into(),
            ports: vec![(80, 9080)],
            udp_ports: Vec::new(),
        }],
        waypoints: vec![WaypointSpec {
            name: "wp".into(),
            namespace: "shop".into(),
            node: "node-b".into(),
            args: vec!["--access-log".into(), "metadata".into()],
        }],
        policies: POLICY.into(),
        extra_tokens: vec![
            ("bench-token-dclient-0123456789".into(), DCLIENT_ID.into()),
            ("bench-token-dserver-0123456789".into(), DSERVER_ID.into()),
        ],
        // The memory section holds 10,000 connections from one pod to another: more than the
        // per-pod budgets derived from this machine's descriptor limit (20,000 → 292 outbound
        // connections per pod) let through.
        ztunnel_args: [
            "--max-outbound-connections=12000",
            "--max-outbound-connections-per-pod=12000",
            "--max-inbound-tunnels=12000",
            "--max-inbound-tunnels-per-pod=12000",
            "--max-hbone-connections=1000",
            "--max-hbone-connections-per-pod=1000",
            // The udp section; TCP crosses only the jumps of the UDP chains (`-p udp`).
            "--carry-udp",
        ]
        .map(String::from)
        .to_vec(),
        ..MeshSpec::default()
    };
    if upstream {
        for (pod, token) in upstream::pods() {
            spec.nodes.push(pod.node.clone());
            spec.without_ztunnel.push(pod.node.clone());
            spec.extra_tokens.push((token, pod.identity()));
            spec.pods.push(pod);
        }
    }
    spec
}

/// The running benchmark cluster.
struct Bench {
    mesh: Mesh,
    opts: Options,
    upstream: Option<upstream::Upstream>,
    /// veil's ztunnels' memory through the runs compared with Istio's ztunnel's.
    memory: upstream::Memory,
}

impl Bench {
    fn start(opts: Options, upstream_binary: Option<&Path>) -> anyhow::Result<Self> {
        let mut spec = spec(upstream_binary.is_some());
        if let Some(n) = opts.worker_threads {
            spec.ztunnel_args.push(format!("--worker-threads={n}"));
        }
        let mut mesh = Mesh::start(spec).context("starting the benchmark mesh")?;
        let tool = bin("veil-bench").to_string_lossy().into_owned();
        for pod in ["server", "dserver", "lserver", "dlserver", "wserver"] {
            mesh.spawn_in_pod(pod, &format!("bench-server-{pod}"), &[&tool, "serve"])?
                .wait_for("bench server ready", Duration::from_secs(10))?;
        }
        // The plain TLS 1.3 baseline: dclient 127.0.0.1:7001 → TLS → dserver:9443 → sink.
        let (ca, root) = (
            mesh.ca_address(),
            mesh.root_cert().to_string_lossy().into_owned(),
        );
        let dserver = mesh.cluster.pod("dserver").ip;
        let cert = |id: &str, token: &str| {
            vec![
                "--identity".to_owned(),
                id.to_owned(),
                "--ca".to_owned(),
                ca.clone(),
                "--root".to_owned(),
                root.clone(),
                "--token".to_owned(),
                token.to_owned(),
            ]
        };
        let mut argv = vec![
            tool.clone(),
            "tls-server".into(),
            "--listen".into(),
            "0.0.0.0:9443".into(),
            "--upstream".into(),
            "127.0.0.1:9001".into(),
        ];
        argv.extend(cert(DSERVER_ID, "bench-token-dserver-0123456789"));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        mesh.spawn_in_pod("dserver", "tls-server", &argv)?
            .wait_for("tls server ready", Duration::from_secs(10))?;
        let mut argv = vec![
            tool.clone(),
            "tls-client".into(),
            "--listen".into(),
            "127.0.0.1:7001".into(),
            "--upstream".into(),
            format!("{dserver}:9443"),
            "--expect".into(),
            DSERVER_ID.into(),
        ];
        argv.extend(cert(DCLIENT_ID, "bench-token-dclient-0123456789"));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        mesh.spawn_in_pod("dclient", "tls-client", &argv)?
            .wait_for("tls client ready", Duration::from_secs(10))?;
        for pod in ["server", "dserver"] {
            mesh.spawn_in_pod(pod, &format!("iperf3-{pod}"), &["iperf3", "-s"])?;
        }
        let upstream = match upstream_binary {
            Some(binary) => Some(upstream::Upstream::start(
                &mut mesh,
                binary,
                opts.worker_threads.unwrap_or(1),
            )?),
            None => None,
        };
        std::thread::sleep(Duration::from_secs(1));
        Ok(Self {
            mesh,
            opts,
            upstream,
            memory: upstream::Memory::default(),
        })
    }

    fn ip(&self, pod: &str) -> String {
        self.mesh.cluster.pod(pod).ip.to_string()
    }

    /// Runs the load tool in `pod`; its JSON line.
    fn tool(&self, pod: &str, args: &[&str]) -> anyhow::Result<Value> {
        tool_in(&self.mesh, pod, args)
    }

    /// Runs the load tool in `pod` through veil's mesh for a comparison that Istio's ztunnel runs
    /// too, keeping the ztunnels' memory during and after it ([`upstream::Memory`]).
    fn compared(&self, pod: &str, args: &[&str]) -> anyhow::Result<Value> {
        self.memory
            .measure(&self.ztunnels(), || self.tool(pod, args))
    }

    /// The same run through Istio's ztunnel (`uclient` → `userver:port`), when it is measured.
    fn upstream(
        &self,
        command: &str,
        port: u16,
        args: &[&str],
        count: upstream::Count,
    ) -> anyhow::Result<Option<Value>> {
        let Some(u) = &self.upstream else {
            return Ok(None);
        };
        u.tool(&self.mesh, command, port, args, count).map(Some)
    }

    fn seconds(&self) -> String {
        self.opts.seconds.to_string()
    }

    fn ztunnels(&self) -> [&Proc; 2] {
        [&self.mesh.ztunnels["node-a"], &self.mesh.ztunnels["node-b"]]
    }

    /// CPU seconds both ztunnels have used.
    fn ztunnel_cpu(&self) -> f64 {
        self.ztunnels().iter().filter_map(|z| z.cpu_seconds()).sum()
    }

    fn ztunnel_rss(&self) -> [u64; 2] {
        self.ztunnels().map(|z| z.rss_bytes().unwrap_or(0))
    }

    fn ztunnel_rss_anon(&self) -> [u64; 2] {
        self.ztunnels().map(|z| z.rss_anon_bytes().unwrap_or(0))
    }
}

fn latency(b: &Bench, cpu: &mut (f64, f64)) -> anyhow::Result<Value> {
    let mut out = json!({});
    for conns in ["1", "16"] {
        let (mut direct, mut mesh, mut upstream) = (Vec::new(), Vec::new(), Vec::new());
        let count = if conns == "16" {
            upstream::Count::Requests
        } else {
            upstream::Count::Nothing
        };
        for _ in 0..b.opts.rounds {
            direct.push(b.tool(
                "dclient",
                &[
                    "rr",
                    &format!("{}:9002", b.ip("dserver")),
                    "--conns",
                    conns,
                    "--seconds",
                    &b.seconds(),
                ],
            )?);
            let before = b.ztunnel_cpu();
            let run = b.compared(
                "client",
                &[
                    "rr",
                    &format!("{}:9002", b.ip("server")),
                    "--conns",
                    conns,
                    "--seconds",
                    &b.seconds(),
                ],
            )?;
            if conns == "16" {
                cpu.0 += b.ztunnel_cpu() - before;
                cpu.1 += run["requests"].as_f64().unwrap_or(0.0);
            }
            mesh.push(run);
            let args = ["--conns", conns, "--seconds", &b.seconds()];
            upstream.extend(b.upstream("rr", 9002, &args, count)?);
        }
        if let Some(u) = &b.upstream {
            let run = median_run(upstream, "p50_us");
            println!(
                "  1 KiB request/response, {conns} connection(s): Istio's ztunnel p50 {} p99 {} µs, {:.0}/s",
                run["p50_us"],
                run["p99_us"],
                f(&run["requests_per_s"])
            );
            u.record(&["latency", conns], run);
        }
        let (direct, mesh) = (median_run(direct, "p50_us"), median_run(mesh, "p50_us"));
        println!(
            "  1 KiB request/response, {conns} connection(s): direct p50 {} p99 {} µs, {:.0}/s; mesh p50 {} p99 {} µs, {:.0}/s",
            direct["p50_us"],
            direct["p99_us"],
            direct["requests_per_s"].as_f64().unwrap_or(0.0),
            mesh["p50_us"],
            mesh["p99_us"],
            mesh["requests_per_s"].as_f64().unwrap_or(0.0)
        );
        out[conns] = json!({"direct": direct, "mesh": mesh});
    }
    Ok(out)
}

/// Carried UDP (`--carry-udp`) against UDP between the baseline pair: 1 KiB datagrams echoed, on
/// 1 and 16 flows. Istio's ztunnel carries no UDP: nothing to compare it with.
fn udp(b: &Bench) -> anyhow::Result<Value> {
    let mut out = json!({});
    for flows in ["1", "16"] {
        let (mut direct, mut mesh) = (Vec::new(), Vec::new());
        for _ in 0..b.opts.rounds {
            let args = ["--flows", flows, "--seconds", &b.seconds()];
            let run = |pod: &str, server: &str| {
                let target = format!("{}:9004", b.ip(server));
                let mut argv = vec!["udp-rr", target.as_str()];
                argv.extend(args);
                b.tool(pod, &argv)
            };
            direct.push(run("dclient", "dserver")?);
            mesh.push(run("client", "server")?);
        }
        let (direct, mesh) = (median_run(direct, "p50_us"), median_run(mesh, "p50_us"));
        println!(
            "  UDP 1 KiB request/response, {flows} flow(s): direct p50 {} p99 {} µs, {:.0}/s, {} lost; carried p50 {} p99 {} µs, {:.0}/s, {} lost",
            direct["p50_us"],
            direct["p99_us"],
            f(&direct["requests_per_s"]),
            direct["lost"],
            mesh["p50_us"],
            mesh["p99_us"],
            f(&mesh["requests_per_s"]),
            mesh["lost"]
        );
        out[flows] = json!({"direct": direct, "mesh": mesh});
    }
    Ok(out)
}

fn connections(b: &Bench) -> anyhow::Result<Value> {
    let (mut direct, mut mesh, mut upstream) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b.opts.rounds {
        direct.push(b.tool(
            "dclient",
            &[
                "connrate",
                &format!("{}:9003", b.ip("dserver")),
                "--seconds",
                &b.seconds(),
            ],
        )?);
        mesh.push(b.compared(
            "client",
            &[
                "connrate",
                &format!("{}:9003", b.ip("server")),
                "--seconds",
                &b.seconds(),
            ],
        )?);
        let args = ["--seconds", &b.seconds()];
        upstream.extend(b.upstream("connrate", 9003, &args, upstream::Count::Nothing)?);
    }
    if let Some(u) = &b.upstream {
        let run = median_run(upstream, "connections_per_s");
        println!(
            "  new connections: Istio's ztunnel {:.0}/s, p50 {} µs ({} failed)",
            f(&run["connections_per_s"]),
            run["p50_us"],
            run["failures"]
        );
        u.record(&["connections"], run);
    }
    let (direct, mesh) = (
        median_run(direct, "connections_per_s"),
        median_run(mesh, "connections_per_s"),
    );
    println!(
        "  new connections: direct {:.0}/s, p50 {} µs; mesh {:.0}/s, p50 {} µs ({} failed)",
        direct["connections_per_s"].as_f64().unwrap_or(0.0),
        direct["p50_us"],
        mesh["connections_per_s"].as_f64().unwrap_or(0.0),
        mesh["p50_us"],
        mesh["failures"]
    );
    Ok(json!({"direct": direct, "mesh": mesh}))
}

fn waypoint(b: &Bench) -> anyhow::Result<Value> {
    let mut out = json!({});
    let direct_url = format!("http://{}:9080/bench/item", b.ip("dserver"));
    let mesh_url = format!("http://{WAYPOINT_VIP}/bench/item");
    for (label, h2) in [("http1", false), ("http2", true)] {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..b.opts.rounds {
            let mut args = vec![
                "http",
                direct_url.as_str(),
                "--concurrency",
                "16",
                "--seconds",
            ];
            let secs = b.seconds();
            args.push(&secs);
            if h2 {
                args.push("--h2");
            }
            direct.push(b.tool("dclient", &args)?);
            args[1] = mesh_url.as_str();
            through.push(b.tool("client", &args)?);
        }
        let (direct, through) = (
            median_run(direct, "requests_per_s"),
            median_run(through, "requests_per_s"),
        );
        println!(
            "  waypoint {label}, 16 concurrent: direct {:.0} req/s p99 {} µs; through the waypoint {:.0} req/s p99 {} µs ({} failed)",
            direct["requests_per_s"].as_f64().unwrap_or(0.0),
            direct["p99_us"],
            through["requests_per_s"].as_f64().unwrap_or(0.0),
            through["p99_us"],
            through["failures"]
        );
        out[label] = json!({"direct": direct, "waypoint": through});
    }
    // A steady 1,000 requests/s: the waypoint's CPU and memory at that load.
    let wp = &b.mesh.waypoints["wp"];
    let (cpu0, t0) = (wp.cpu_seconds().unwrap_or(0.0), tokio::time::Instant::now());
    let secs = b.seconds();
    let paced = b.tool(
        "client",
        &[
            "http",
            &mesh_url,
            "--concurrency",
            "16",
            "--rate",
            "1000",
            "--seconds",
            &secs,
        ],
    )?;
    let wall = (tokio::time::Instant::now() - t0).as_secs_f64();
    let vcpu = (wp.cpu_seconds().unwrap_or(0.0) - cpu0) / wall;
    let rss = wp.rss_bytes().unwrap_or(0);
    println!(
        "  waypoint at {:.0} req/s: {vcpu:.3} vCPU, RSS {:.1} MiB",
        paced["requests_per_s"].as_f64().unwrap_or(0.0),
        crate::mib(rss as f64)
    );
    out["paced_1000"] = json!({"run": paced, "vcpu": vcpu, "rss_bytes": rss});
    Ok(out)
}

/// The criterion benchmark of a policy decision among 10,000 policies; median nanoseconds.
fn policy(root: &Path) -> anyhow::Result<Value> {
    println!("Benchmarking a policy decision among 10,000 policies (criterion)…");
    criterion_run(root, "policy_decision")?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let median_ns = |name: &str| -> anyhow::Result<f64> {
        let path = target.join(format!(
            "criterion/policy_decision_10k/{name}/new/estimates.json"
        ));
        let estimates: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        estimates["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("no median in {}", path.display()))
    };
    let lookup = median_ns("lookup_and_evaluate")?;
    let cached = median_ns("evaluate_cached")?;
    println!(
        "  policy decision: {lookup:.0} ns (lookup + evaluate), {cached:.0} ns (evaluate, policies cached)"
    );
    Ok(json!({"lookup_and_evaluate_ns": lookup, "evaluate_cached_ns": cached}))
}

/// One pod change, and one Authorization change, applied and patched by a subscriber holding
/// 10,000 and 100,000 workloads (criterion), and the heap it holds per workload (counted by the
/// bench's allocator).
fn subscriber(root: &Path) -> anyhow::Result<Value> {
    println!("Benchmarking a subscriber's patch for one pod or Authorization change (criterion)…");
    criterion_run(root, "subscriber_patch")?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let dir = target.join("criterion/subscriber_patch");
    let memory: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("memory.json"))?)?;
    let median = |name: &str| -> anyhow::Result<f64> {
        let path = dir.join(name).join("new/estimates.json");
        let estimates: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        estimates["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("no median in {}", path.display()))
    };
    let mut out = json!({});
    for pods in ["10000", "100000"] {
        let change = median(pods)?;
        let authorization = median(&format!("authorization-{pods}"))?;
        let heap = &memory["heap_bytes_per_workload"][pods];
        println!(
            "  {pods} workloads: {:.1} µs per pod change, {:.2} ms per Authorization change (medians); heap per workload: {} B requested in {:.1} allocations, {} B of malloc chunks",
            change / 1000.0,
            authorization / 1e6,
            heap["requested"],
            heap["allocations"].as_f64().unwrap_or(0.0),
            heap["malloc_chunks"],
        );
        out[pods] = json!({
            "change_ns": change,
            "authorization_change_ns": authorization,
            "heap_bytes_per_workload": heap,
        });
    }
    Ok(out)
}

/// Runs the criterion benchmark `bench` of veil-mesh (short: 1 s warm-up, 3 s measurement).
fn criterion_run(root: &Path, bench: &str) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "bench",
            "--quiet",
            "-p",
            "veil-mesh",
            "--bench",
            bench,
            "--",
        ])
        .args(["--warm-up-time", "1", "--measurement-time", "3", "--noplot"])
        .current_dir(root)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("the {bench} benchmark failed");
    }
    Ok(())
}

pub(crate) fn run(opts: Options) -> anyhow::Result<()> {
    if skip_unless_root("the benchmarks") {
        bail!("the benchmarks build network namespaces and iptables rules: run them as root");
    }
    install_tools(TOOLS)?;
    build(true)?;
    let root = workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let release = target.join("release");
    let in_cluster = SECTIONS
        .iter()
        .any(|s| !OUTSIDE_THE_CLUSTER.contains(s) && opts.runs(s));
    let laid_out = opts.layout && in_cluster && layout::supported_on_this_host();
    if laid_out {
        let ztunnel = release.join("veil-ztunnel");
        let profile = layout::profile(
            &ztunnel,
            &release,
            &target.join("layout/veil-ztunnel.order"),
        )?;
        build_with(true, &[(layout::LAYOUT_VAR, &profile.order)])?;
        profile.check(&ztunnel)?;
    } else if in_cluster {
        println!(
            "ztunnel's code is not laid out from a profile (--no-layout, or not x86_64 Linux)"
        );
    }
    use_binaries_from(release);
    veil_e2e::cluster::remove_stale();
    let mut results = json!({
        "settings": {"seconds": opts.seconds, "rounds": opts.rounds, "cpus": cpus(), "ztunnel_laid_out": laid_out, "worker_threads": opts.worker_threads},
    });
    if opts.runs("policy") {
        results["policy"] = policy(&root)?;
    }
    if opts.runs("subscriber") {
        results["subscriber"] = subscriber(&root)?;
    }
    if opts.runs("controlplane") {
        results["controlplane"] = controlplane::controlplane()?;
    }
    if opts.runs("scale") {
        results["scale"] = scale::scale()?;
    }
    if !in_cluster {
        println!("Partial run (--only): nothing written.");
        return Ok(());
    }

    let upstream_binary = upstream::binary(opts.upstream_ztunnel.as_deref())?;
    match &upstream_binary {
        Some(path) => println!(
            "Istio's ztunnel: {} (every data-path comparison runs through it too)",
            path.display()
        ),
        None => println!(
            "Istio's ztunnel: none (--upstream-ztunnel PATH, $VEIL_UPSTREAM_ZTUNNEL or ../shared/upstream/ztunnel): the comparison with it is skipped"
        ),
    }
    println!("Starting the benchmark cluster…");
    let (rounds, seconds) = (opts.rounds, opts.seconds);
    let mut b = Bench::start(opts.clone(), upstream_binary.as_deref())?;
    std::thread::sleep(Duration::from_secs(2));
    println!("Measuring ({rounds} round(s) of {seconds} s per comparison)…");
    let mut bulk_cpu = (0.0, 0.0);
    let mut rr_cpu = (0.0, 0.0);
    if let Err(e) = measure(&mut b, &opts, &mut results, &mut bulk_cpu, &mut rr_cpu) {
        b.mesh.keep_logs = true;
        return Err(e);
    }
    if let Some(u) = b.upstream.take() {
        results["upstream"] = u.finish();
        if let (Value::Object(upstream), Value::Object(memory)) =
            (&mut results["upstream"], b.memory.json("veil_"))
        {
            upstream.extend(memory);
        }
        let mib = |key: &str| crate::mib(f(&results["upstream"][key]));
        println!(
            "  ztunnel RSS in the compared runs (largest): veil peak {:.1} MiB (started from {:.1}), {:.1} right after; Istio's ztunnel peak {:.1} (from {:.1}), {:.1} after",
            mib("veil_rss_peak_bytes"),
            mib("veil_rss_before_bytes"),
            mib("veil_rss_after_bytes"),
            mib("rss_peak_bytes"),
            mib("rss_before_bytes"),
            mib("rss_after_bytes"),
        );
    }
    drop(b);
    if opts.runs("throughput") || opts.runs("latency") {
        results["cpu"] = json!({
            "ztunnel_seconds_per_gib": per_gib(bulk_cpu),
            "ztunnel_seconds_per_10k_requests": rr_cpu.0 / (rr_cpu.1 / 10_000.0),
        });
        // What a partial run did not measure prints as NaN.
        let cpu = |r: &Value, key: &str| f(&r["cpu"][key]);
        println!(
            "  ztunnel CPU (both ends): {:.2} s per GiB, {:.3} s per 10k requests; Istio's ztunnel {:.2} s, {:.3} s",
            cpu(&results, "ztunnel_seconds_per_gib"),
            cpu(&results, "ztunnel_seconds_per_10k_requests"),
            cpu(&results["upstream"], "ztunnel_seconds_per_gib"),
            cpu(&results["upstream"], "ztunnel_seconds_per_10k_requests"),
        );
    }
    if !opts.writes() {
        println!("Partial run (--only or --worker-threads): nothing written.");
        return Ok(());
    }
    let report = report(&results);
    println!("\n{report}");
    std::fs::write(
        root.join("docs/benchmarks.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    write_results_section(&root.join("docs/benchmarks.md"), &report)?;
    println!("Wrote docs/benchmarks.json and the results section of docs/benchmarks.md.");
    Ok(())
}

/// Runs the sections `opts` asks for, into `results`.
fn measure(
    b: &mut Bench,
    opts: &Options,
    results: &mut Value,
    bulk_cpu: &mut (f64, f64),
    rr_cpu: &mut (f64, f64),
) -> anyhow::Result<()> {
    let idle_start = (b.ztunnel_rss(), b.ztunnel_rss_anon());
    let idle_resident = resident_by_mapping(b.ztunnels()[0].pid());
    // The comparisons with Istio's ztunnel first: veil's ztunnels keep what other runs freed
    // (glibc), and their peak during a compared run starts from it ([`upstream::Memory`]).
    if opts.runs("throughput") {
        results["throughput"] = throughput(b, bulk_cpu)?;
    }
    if opts.runs("latency") {
        results["latency"] = latency(b, rr_cpu)?;
    }
    if opts.runs("connections") {
        results["connections"] = connections(b)?;
    }
    if opts.runs("throughput") {
        results["iperf3"] = iperf(b)?;
    }
    if opts.runs("udp") {
        results["udp"] = udp(b)?;
    }
    if opts.runs("quic") {
        results["quic"] = quic::quic(b)?;
    }
    if opts.runs("waypoint") {
        results["waypoint"] = waypoint(b)?;
    }
    if opts.runs("memory") {
        results["memory"] = memory(b, idle_start)?;
        let r = &idle_resident;
        println!(
            "  node-a's ztunnel, idle: {} KB of its code resident, {} KB of its read-only data, {} KB of its data, {} KB of shared libraries, {} KB anonymous",
            r["code"], r["rodata"], r["data"], r["libraries"], r["anonymous"]
        );
        results["memory"]["idle_resident_kb"] = idle_resident;
        std::thread::sleep(Duration::from_secs(5));
        results["memory_idle_end_bytes"] = json!(b.ztunnel_rss());
    }
    Ok(())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}
