//! The `scale` section: veil-controller in Kubernetes mode, watching a stand-in API server
//! (`veil-bench api`: a generated cluster of N pods served as the real API server serves them,
//! lists paginated, watches from a resourceVersion), at 1,000, 10,000 and 100,000 pods — the
//! controller's start and memory, one veil subscriber's memory and CPU per change, and 1,000
//! subscribers at once (initial sync, one pod change reaching all of them, bytes per change).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::time::Instant;
use veil_e2e::controlplane::write_serving_pki;
use veil_e2e::kube::kubeconfig;
use veil_e2e::mesh::bin;
use veil_e2e::process::Proc;

/// Cluster sizes, in pods.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Subscribers at once.
const SUBSCRIBERS: usize = 1_000;
const TOKEN: &str = "bench-token-0123456789abcdef";
const LISTEN: &str = "127.0.0.1:25022";
const METRICS: &str = "127.0.0.1:25024";
const API: &str = "127.0.0.1:25026";

fn tool(args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(bin("veil-bench"))
        .args(args)
        .output()?;
    super::report_of(args, &out)
}

fn one_size(dir: &Path, pods: usize) -> anyhow::Result<Value> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut api = Proc::spawn(
        "stand-in API server",
        None,
        &[
            &bin("veil-bench").to_string_lossy(),
            "api",
            "--listen",
            API,
            "--pods",
            &pods.to_string(),
        ],
        &[],
        &dir.join(format!("api-{pods}.log")),
    )?;
    api.wait_for("listening", Duration::from_secs(300))
        .context("generating the cluster")?;
    let kubeconfig_path = dir.join("kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig(&format!("http://{API}")))?;
    let started = Instant::now();
    let mut controller = Proc::spawn(
        "veil-controller",
        None,
        &[
            &bin("veil-controller").to_string_lossy(),
            "--listen",
            LISTEN,
            "--metrics-listen",
            METRICS,
            "--tls-cert",
            &path("cert.pem"),
            "--tls-key",
            &path("key.pem"),
            "--trust-bundle",
            &path("root.pem"),
            "--tokens",
            &path("tokens.yaml"),
            "--log-format",
            "json",
        ],
        &[
            ("RUST_LOG", "warn,veil_controller=info"),
            ("KUBECONFIG", &kubeconfig_path.to_string_lossy()),
        ],
        &dir.join(format!("controller-{pods}.log")),
    )?;
    controller.wait_for("veil-controller serving", Duration::from_secs(600))?;
    let serving_s = started.elapsed().as_secs_f64();
    let rss = |p: &Proc, what: &str| p.rss_bytes().with_context(|| format!("{what}'s memory"));
    let idle = rss(&controller, "the controller")?;
    let common = |mode: &str| {
        vec![
            mode.to_owned(),
            "--target".into(),
            LISTEN.into(),
            "--server-name".into(),
            "veil-controller".into(),
            "--root".into(),
            path("root.pem"),
            "--token".into(),
            path("token"),
            "--change-api".into(),
            API.into(),
        ]
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
    let after = rss(&controller, "the controller")?;
    let peak = controller
        .peak_rss_bytes()
        .context("the controller's peak memory")?;
    let api_rss = rss(&api, "the stand-in API server")?;
    controller.kill();
    api.kill();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "  {pods} pods (Kubernetes API): controller serving in {serving_s:.2} s, {:.0} MB idle, {:.0} MB peak with {SUBSCRIBERS} subscribers",
        mb(idle),
        mb(peak)
    );
    println!(
        "    one subscriber: {} B per workload, {:.1} ms CPU per change (p50); {SUBSCRIBERS} subscribers: sync {:.1} s, change p99 {:.0} ms, {} B per change each",
        subscriber["bytes_per_workload"],
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
        "api_server_rss_mb": mb(api_rss),
        "controller": {
            "start_to_serving_s": serving_s,
            "rss_idle_mb": mb(idle),
            "rss_after_mb": mb(after),
            "rss_peak_mb": mb(peak),
        },
        "subscriber": subscriber,
        "subscribers": load,
    }))
}

/// The section: every size in [`SIZES`].
pub(crate) fn scale() -> anyhow::Result<Value> {
    println!(
        "Benchmarking the control plane on the Kubernetes API ({SUBSCRIBERS} subscribers on loopback)…"
    );
    let dir = std::env::temp_dir().join(format!("veil-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_serving_pki(&dir, &["veil-controller", "127.0.0.1"])?;
    std::fs::write(dir.join("token"), TOKEN)?;
    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n  - token: {TOKEN}\n    identity: spiffe://cluster.local/ns/veil-system/sa/ztunnel\n"
        ),
    )?;
    let mut out = Vec::new();
    for pods in SIZES {
        match one_size(&dir, pods) {
            Ok(result) => out.push(result),
            Err(e) => {
                // A size that cannot be served is a result too: reported, and larger ones skipped.
                println!("  {pods} pods: FAILED: {e:#}");
                out.push(json!({"pods": pods, "failed": format!("{e:#}")}));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Value::Array(out))
}
