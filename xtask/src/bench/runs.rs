//! One load-tool run and the medians of several.

use anyhow::{Context as _, bail};
use serde_json::Value;
use veil_e2e::cluster::exec;
use veil_e2e::mesh::{Mesh, bin};

/// The report `veil-bench args` printed (its last line, JSON), or why there is none.
pub(super) fn report_of(args: &[&str], out: &std::process::Output) -> anyhow::Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "veil-bench {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("veil-bench printed {stdout:?}"))
}

/// Runs the load tool in `pod` of `mesh`; its JSON line.
pub(crate) fn tool_in(mesh: &Mesh, pod: &str, args: &[&str]) -> anyhow::Result<Value> {
    let tool = bin("veil-bench").to_string_lossy().into_owned();
    let mut argv = vec![tool.as_str()];
    argv.extend_from_slice(args);
    let out = exec(&mesh.cluster.pod(pod).netns, &argv)?;
    report_of(args, &out).with_context(|| format!("in {pod}"))
}

/// The median of the rounds' values.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The round whose `key` is the median, whole (latency percentiles stay consistent).
pub(super) fn median_run(mut runs: Vec<Value>, key: &str) -> Value {
    runs.sort_by(|a, b| {
        a[key]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b[key].as_f64().unwrap_or(0.0))
    });
    runs.get(runs.len() / 2).cloned().unwrap_or(Value::Null)
}

/// CPU seconds per GiB moved, from (CPU seconds, bytes).
pub(super) fn per_gib((seconds, bytes): (f64, f64)) -> f64 {
    seconds / (bytes / f64::from(1u32 << 30))
}
