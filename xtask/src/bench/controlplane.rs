//! The `controlplane` section: veil-controller serving a generated mesh of N pods from the local
//! file, measured with the same release binaries as the rest of the run — the controller's start,
//! memory and peak memory; one veil subscriber (the code a ztunnel runs: validation, the store, the
//! mesh) and what it costs per workload and per change; and many subscribers at once (initial sync,
//! propagation of one pod change to all of them, bytes per change).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::time::Instant;
use veil_e2e::controlplane::write_serving_pki;
use veil_e2e::mesh::bin;
use veil_e2e::process::Proc;

/// Mesh sizes, in pods.
const SIZES: [usize; 2] = [1_000, 10_000];
/// Subscribers at once.
pub(super) const SUBSCRIBERS: usize = 1_000;
const TOKEN: &str = "bench-token-0123456789abcdef";
const LISTEN: &str = "127.0.0.1:25012";
const METRICS: &str = "127.0.0.1:25014";

/// A mesh of `pods` pods in 100 namespaces, a tenth as many Services and AuthorizationPolicies.
/// Pod 1's address is the one changes toggle.
fn mesh(pods: usize) -> String {
    let groups = (pods / 10).max(1);
    let mut out = String::from("namespaces:\n");
    for ns in 0..100 {
        let _ = writeln!(out, "  - {{name: ns{ns}, dataplaneMode: ambient}}");
    }
    out.push_str("workloads:\n");
    for i in 0..pods {
        let g = i % groups;
        let _ = writeln!(
            out,
            "  - {{name: pod-{i}, namespace: ns{}, serviceAccount: sa{g}, node: node-{}, ips: [10.{}.{}.{}], labels: {{app: app{g}}}}}",
            g % 100,
            i % 500,
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
    }
    out.push_str("services:\n");
    for g in 0..groups {
        let _ = writeln!(
            out,
            "  - {{name: svc{g}, namespace: ns{}, vips: [172.16.{}.{}], ports: [{{port: 80, targetPort: 8080}}], selector: {{app: app{g}}}}}",
            g % 100,
            g >> 8,
            g & 255
        );
    }
    out.push_str("policies:\n");
    for g in 0..groups {
        let _ = write!(
            out,
            "  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {{name: p{g}, namespace: ns{}}}\n    spec:\n      selector: {{matchLabels: {{app: app{g}}}}}\n      rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns{}/sa/sa{g}]}}}}], to: [{{operation: {{ports: [\"8080\"]}}}}]}}]\n",
            g % 100,
            (g + 1) % 100
        );
    }
    out
}

fn tool(args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(bin("veil-bench"))
        .args(args)
        .output()?;
    super::report_of(args, &out)
}

fn one_size(dir: &Path, pods: usize) -> anyhow::Result<Value> {
    let file = dir.join(format!("mesh-{pods}.yaml"));
    std::fs::write(&file, mesh(pods))?;
    measure(dir, pods, &Source::File(&file), (LISTEN, METRICS))
}

/// Where the controller under test reads the mesh, and how a change is made there.
pub(super) enum Source<'a> {
    /// The local file: pod 1's address is swapped in it.
    File(&'a Path),
    /// A stand-in API server (`veil-bench api`, `host:port`) and a kubeconfig for it: it moves pod 1.
    Api(&'a str, &'a Path),
}

/// Starts the controller on `source` (serving on `ports`: discovery, metrics), then measures it with
/// one veil subscriber and with [`SUBSCRIBERS`] at once, `pods` pods in the mesh.
pub(super) fn measure(
    dir: &Path,
    pods: usize,
    source: &Source<'_>,
    (listen, metrics): (&str, &str),
) -> anyhow::Result<Value> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut argv = vec![
        bin("veil-controller").to_string_lossy().into_owned(),
        "--listen".into(),
        listen.into(),
        "--metrics-listen".into(),
        metrics.into(),
        // Not read here: any free port, so that runs side by side do not collide.
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        path("cert.pem"),
        "--tls-key".into(),
        path("key.pem"),
        "--trust-bundle".into(),
        path("root.pem"),
        "--tokens".into(),
        path("tokens.yaml"),
        "--log-format".into(),
        "json".into(),
    ];
    let mut env = vec![(
        "RUST_LOG".to_owned(),
        "warn,veil_controller=info".to_owned(),
    )];
    // What the load tools do for a change (10.250.x.x is no pod's address: valid either way).
    let change: Vec<String> = match source {
        Source::File(file) => {
            let file = file.to_string_lossy().into_owned();
            argv.extend([
                "--mesh-config".into(),
                file.clone(),
                "--poll".into(),
                "100ms".into(),
            ]);
            [
                "--mesh-file",
                &file,
                "--from",
                "ips: [10.0.0.1]",
                "--to",
                "ips: [10.250.0.1]",
            ]
            .map(str::to_owned)
            .into()
        }
        Source::Api(api, kubeconfig) => {
            env.push((
                "KUBECONFIG".into(),
                kubeconfig.to_string_lossy().into_owned(),
            ));
            // What is measured is serving the mesh; writing the status of a tenth as many policies
            // as pods (once, the first time a cluster's policies are seen) is left out.
            argv.push("--write-status=false".into());
            vec!["--change-api".into(), (*api).to_owned()]
        }
    };
    let started = Instant::now();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut controller = Proc::spawn(
        "veil-controller",
        None,
        &argv,
        &env,
        &dir.join(format!("controller-{pods}.log")),
    )?;
    controller.wait_for("veil-controller serving", Duration::from_secs(600))?;
    let serving_s = started.elapsed().as_secs_f64();
    let rss = |p: &Proc| p.rss_bytes().context("the controller's memory");
    let idle = rss(&controller)?;
    let common = |mode: &str| {
        let mut args: Vec<String> = vec![
            mode.to_owned(),
            "--target".into(),
            listen.into(),
            "--server-name".into(),
            "veil-controller".into(),
            "--root".into(),
            path("root.pem"),
            "--token".into(),
            path("token"),
        ];
        args.extend(change.iter().cloned());
        args
    };
    let mut args = common("xds-client");
    args.extend(["--changes".into(), "6".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let subscriber = tool(&args)?;
    let mut args = common("xds-load");
    args.extend([
        "--watch".into(),
        "Kubernetes//Pod/ns1/pod-1".into(),
        "--subscribers".into(),
        SUBSCRIBERS.to_string(),
        "--changes".into(),
        "4".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let load = tool(&args)?;
    let after = rss(&controller)?;
    // On the API: what a change of a Service's ports, of an AuthorizationPolicy's rules and of a
    // PeerAuthentication's mode (each patched) costs end to end; after the RSS above, which they
    // would change.
    let mut others = serde_json::Map::new();
    if matches!(source, Source::Api(..)) {
        for kind in [
            "service",
            "service-new",
            "service-waypoint",
            "policy",
            "peer",
            "namespace-new",
            "namespace-enrol",
            "namespace-waypoint",
        ] {
            let mut args = common("xds-client");
            args.extend([
                "--change-kind".into(),
                kind.into(),
                "--changes".into(),
                "2".into(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let report = tool(&args)?;
            println!(
                "    one {kind} change: reaches the subscriber in {:.2} s (p50), {:.1} ms of its CPU",
                report["change_latency_ns"]["p50_us"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1e6,
                report["cpu_per_change_ns"]["p50_us"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1e3,
            );
            others.insert(
                kind.into(),
                json!({
                    "change_latency_ns": report["change_latency_ns"],
                    "cpu_per_change_ns": report["cpu_per_change_ns"],
                }),
            );
        }
    }
    let peak = controller
        .peak_rss_bytes()
        .context("the controller's peak memory")?;
    controller.kill();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "  {pods} pods: controller serving in {serving_s:.2} s, {:.0} MB idle, {:.0} MB peak with {SUBSCRIBERS} subscribers",
        mb(idle),
        mb(peak)
    );
    println!(
        "    one subscriber: {} B per workload (heap {:.0} MB in use, {:.0} MB free), {:.1} ms CPU per change (p50); {SUBSCRIBERS} subscribers: sync {:.1} s, change p99 {:.0} ms, {} B per change each",
        subscriber["bytes_per_workload"],
        subscriber["heap"]["in_use_mb"].as_f64().unwrap_or(0.0),
        subscriber["heap"]["free_mb"].as_f64().unwrap_or(0.0),
        subscriber["cpu_per_change_ns"]["p50_us"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e3,
        load["initial_sync_s"].as_f64().unwrap_or(0.0),
        load["propagation"]["p99_us"].as_f64().unwrap_or(0.0) / 1e3,
        load["bytes_per_change_per_subscriber"]
    );
    Ok(json!({
        "pods": pods,
        "controller": {
            "start_to_serving_s": serving_s,
            "rss_idle_mb": mb(idle),
            "rss_after_mb": mb(after),
            "rss_peak_mb": mb(peak),
        },
        "subscriber": subscriber,
        "subscribers": load,
        "other_changes": others,
    }))
}

/// The serving certificate, the subscribers' token and the tokens file, in `dir`.
pub(super) fn credentials(dir: &Path) -> anyhow::Result<()> {
    write_serving_pki(dir, &["veil-controller", "127.0.0.1"])?;
    std::fs::write(dir.join("token"), TOKEN)?;
    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n  - token: {TOKEN}\n    identity: spiffe://cluster.local/ns/veil-system/sa/ztunnel\n"
        ),
    )?;
    Ok(())
}

/// The section: every size in [`SIZES`].
pub(crate) fn controlplane() -> anyhow::Result<Value> {
    println!("Benchmarking the control plane ({SUBSCRIBERS} subscribers on loopback)…");
    let dir = std::env::temp_dir().join(format!("veil-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    credentials(&dir)?;
    let mut out = Vec::new();
    for pods in SIZES {
        out.push(one_size(&dir, pods)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Value::Array(out))
}
