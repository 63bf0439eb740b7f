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

/// How many of the HBONE connections leaving `netns` carry `run`: those to port 15008 whose
/// acknowledged bytes grow over half a second in its middle (`run_seconds` long), next to what
/// `run` returns. Pooled connections that sit idle through it are not counted.
pub(super) fn with_carrying_connections<T>(
    netns: &str,
    run_seconds: f64,
    run: impl FnOnce() -> T,
) -> (T, anyhow::Result<usize>) {
    std::thread::scope(|scope| {
        let counting = scope.spawn(|| {
            let start = (run_seconds / 2.0 - 0.25).max(0.1);
            std::thread::sleep(std::time::Duration::from_secs_f64(start));
            let before = acked_by_connection(netns)?;
            std::thread::sleep(std::time::Duration::from_millis(500));
            let after = acked_by_connection(netns)?;
            Ok(after
                .iter()
                .filter(|(conn, acked)| before.get(*conn).is_some_and(|b| *acked > b))
                .count())
        });
        let out = run();
        let count = counting
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("counting connections panicked")));
        (out, count)
    })
}

/// Bytes acknowledged on each established TCP connection from `netns` to port 15008, by its
/// addresses (`ss -tni`: a line with the addresses, then one with the connection's figures).
fn acked_by_connection(netns: &str) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let argv = ["ss", "-Htni", "state", "established", "( dport = :15008 )"];
    let out = exec(netns, &argv)?;
    anyhow::ensure!(out.status.success(), "ss failed: {out:?}");
    Ok(parse_acked(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_acked(ss: &str) -> std::collections::HashMap<String, u64> {
    let mut acked = std::collections::HashMap::new();
    let mut conn = None;
    for line in ss.lines() {
        if !line.starts_with(char::is_whitespace) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            conn = cols.get(2..4).map(|c| c.join(" "));
        } else if let Some(c) = &conn {
            let bytes = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix("bytes_acked:"))
                .and_then(|n| n.parse().ok());
            if let Some(bytes) = bytes {
                acked.insert(c.clone(), bytes);
            }
        }
    }
    acked
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_acknowledged_bytes_of_each_connection() {
        let ss = "0      0      10.99.0.1:35402 10.99.0.2:15008\n\t bbr wscale:10,10 bytes_sent:1292749992 bytes_acked:1258769705 segs_out:894387\n0      0      10.99.0.1:35410 10.99.0.2:15008\n\t bbr wscale:10,10 rto:204\n";
        let acked = super::parse_acked(ss);
        assert_eq!(
            acked.get("10.99.0.1:35402 10.99.0.2:15008"),
            Some(&1_258_769_705)
        );
        // No bytes acknowledged yet: the connection is not listed.
        assert_eq!(acked.len(), 1);
    }
}
