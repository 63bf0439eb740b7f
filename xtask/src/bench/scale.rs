//! The `scale` section: veil-controller in Kubernetes mode, watching a stand-in API server
//! (`veil-bench api`: a generated cluster of N pods served as the real API server serves them,
//! lists paginated, watches from a resourceVersion), at 1,000, 10,000 and 100,000 pods, measured as
//! the `controlplane` section measures the controller on the local file.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use veil_e2e::kube::kubeconfig;
use veil_e2e::mesh::bin;
use veil_e2e::process::Proc;

use super::controlplane::{SUBSCRIBERS, Source, credentials, measure};

/// Cluster sizes, in pods.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const LISTEN: &str = "127.0.0.1:25022";
const METRICS: &str = "127.0.0.1:25024";
const API: &str = "127.0.0.1:25026";

fn one_size(dir: &Path, pods: usize) -> anyhow::Result<Value> {
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
    let config = dir.join("kubeconfig");
    std::fs::write(&config, kubeconfig(&format!("http://{API}")))?;
    let mut result = measure(dir, pods, &Source::Api(API, &config), (LISTEN, METRICS))?;
    let api_rss = api
        .rss_bytes()
        .context("the stand-in API server's memory")?;
    result["api_server_rss_mb"] = json!(api_rss as f64 / 1e6);
    Ok(result)
}

/// The section: every size in [`SIZES`]; a size that fails is reported, and larger ones skipped.
pub(crate) fn scale() -> anyhow::Result<Value> {
    println!(
        "Benchmarking the control plane on a stand-in Kubernetes API ({SUBSCRIBERS} subscribers on loopback)…"
    );
    let dir = std::env::temp_dir().join(format!("veil-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    credentials(&dir)?;
    let mut out = Vec::new();
    for pods in SIZES {
        match one_size(&dir, pods) {
            Ok(result) => out.push(result),
            Err(e) => {
                println!("  {pods} pods: FAILED: {e:#}");
                out.push(json!({"pods": pods, "failed": format!("{e:#}")}));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Value::Array(out))
}
