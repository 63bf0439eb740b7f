//! Istio's ztunnel in the same run (`--upstream-ztunnel PATH`, else `$VEIL_UPSTREAM_ZTUNNEL` or
//! `../shared/upstream/ztunnel`; skipped with a note when there is none): a second pair of pods,
//! `uclient` on node-c and `userver` on node-d — nodes without veil's ztunnel, joined to the same
//! bridge — each served by Istio's ztunnel in dedicated mode inside the pod (its tunnel endpoints in
//! the pod's namespace, so packets take the path veil's take), subscribed to veil's controller and
//! holding certificates from veil's CA. Every data-path comparison runs through it in the same
//! round as veil's, with the same load tool, worker threads (1 each, or `--worker-threads`) and log setting
//! (`RUST_LOG=info` on both: veil writes one access line per connection at its destination,
//! Istio's ztunnel one at each end).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{Value, json};
use veil_e2e::controlplane::{Controller, start_replica, start_upstream, upstream_ztunnel};
use veil_e2e::mesh::{Mesh, PodSpec, bin};
use veil_e2e::process::Proc;

use super::report::f;

/// The client and server pods Istio's ztunnel serves, and the tokens their identities are issued
/// certificates with.
/// The pod the load tool runs in, through Istio's ztunnel.
pub(super) const CLIENT: &str = "uclient";

const PODS: [(&str, &str, &str); 2] = [
    ("uclient", "node-c", "bench-token-uclient-0123456789"),
    ("userver", "node-d", "bench-token-userver-0123456789"),
];

/// Which binary, if any: the flag's, else the one the end-to-end tests find.
pub(super) fn binary(flag: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match flag {
        Some(path) if path.is_file() => Ok(Some(path.to_owned())),
        Some(path) => anyhow::bail!("--upstream-ztunnel {}: no such file", path.display()),
        None => Ok(upstream_ztunnel()),
    }
}

/// The pods, nodes (without veil's ztunnel) and tokens the comparison adds to the benchmark mesh.
pub(super) fn pods() -> Vec<(PodSpec, String)> {
    PODS.iter()
        .map(|(name, node, token)| (PodSpec::new(name, "bench", node), (*token).to_owned()))
        .collect()
}

/// The resident memory of a set of ztunnels through the compared runs: the peak while each run
/// went on (the processes' high-water mark, started over just before it) and what they held right
/// after it, the largest of either over the runs and the ztunnels. glibc's malloc (veil's) keeps
/// much of what load freed, jemalloc (Istio's ztunnel's) hands it back within seconds: the peak
/// is what a node must have for them, what remains after is what it keeps paying. A peak starts
/// from what the process holds when it is started over (the kernel sets it to the current RSS),
/// so what earlier runs left counts in it: the largest of those starting points is kept too.
#[derive(Default)]
pub(super) struct Memory {
    peak: Cell<u64>,
    after: Cell<u64>,
    before: Cell<u64>,
}

impl Memory {
    /// Runs `run` and keeps `procs`' peak resident memory during it and their memory after it.
    pub(super) fn measure<T>(
        &self,
        procs: &[&Proc],
        run: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let largest = |read: fn(&Proc) -> Option<u64>| {
            procs.iter().filter_map(|p| read(p)).max().unwrap_or(0)
        };
        for proc in procs {
            proc.reset_peak_rss()
                .context("starting a ztunnel's peak resident memory over (/proc/<pid>/clear_refs: Linux 4.0 or later, as root)")?;
        }
        let before = largest(Proc::peak_rss_bytes);
        let out = run()?;
        self.before.set(self.before.get().max(before));
        self.peak
            .set(self.peak.get().max(largest(Proc::peak_rss_bytes)));
        self.after
            .set(self.after.get().max(largest(Proc::rss_bytes)));
        Ok(out)
    }

    /// The largest figures, in bytes: `rss_peak_bytes` during a run, `rss_after_bytes` right
    /// after one, `rss_before_bytes` where a run's peak was started from; each key after `prefix`.
    pub(super) fn json(&self, prefix: &str) -> Value {
        json!({
            format!("{prefix}rss_peak_bytes"): self.peak.get(),
            format!("{prefix}rss_after_bytes"): self.after.get(),
            format!("{prefix}rss_before_bytes"): self.before.get(),
        })
    }
}

/// Istio's ztunnels and what they measured.
pub(super) struct Upstream {
    /// The controller replica they subscribe to (its serving certificate has a DNS name, which
    /// Istio's ztunnel checks).
    _controller: Controller,
    procs: Vec<Proc>,
    /// Figures, filled in as the comparisons run.
    results: RefCell<Value>,
    /// CPU seconds and bytes (bulk), CPU seconds and requests (request/response).
    cpu: RefCell<[(f64, f64); 2]>,
    memory: Memory,
}

/// What a run's CPU is counted against.
#[derive(Clone, Copy, Debug)]
pub(super) enum Count {
    Bytes,
    Requests,
    Nothing,
}

impl Upstream {
    /// Starts a controller replica and Istio's ztunnel in each pod, then the load tool's servers.
    /// Each ztunnel runs `worker_threads` threads.
    pub(super) fn start(
        mesh: &mut Mesh,
        binary: &Path,
        worker_threads: u16,
    ) -> anyhow::Result<Self> {
        let identities: Vec<String> = pods().iter().map(|(p, _)| p.identity()).collect();
        let controller = start_replica(mesh, &identities, false, 1)
            .context("a controller replica for Istio's ztunnel")?;
        let mut procs = Vec::new();
        for ((spec, token), (name, ..)) in pods().iter().zip(PODS) {
            let file = mesh.dir.join(format!("token-{name}"));
            std::fs::write(&file, token)?;
            debug_assert_eq!(spec.name, name);
            procs.push(start_upstream(
                mesh,
                binary,
                name,
                &controller,
                &file,
                worker_threads,
            )?);
        }
        let tool = bin("veil-bench").to_string_lossy().into_owned();
        mesh.spawn_in_pod("userver", "bench-server-userver", &[&tool, "serve"])?
            .wait_for("bench server ready", std::time::Duration::from_secs(10))?;
        let idle = procs.iter().filter_map(Proc::rss_bytes).max().unwrap_or(0);
        let results = json!({
            "binary": binary.display().to_string(),
            "worker_threads": worker_threads,
            "log": "RUST_LOG=info",
            "rss_idle_bytes": idle,
        });
        Ok(Self {
            _controller: controller,
            procs,
            results: RefCell::new(results),
            cpu: RefCell::new([(0.0, 0.0); 2]),
            memory: Memory::default(),
        })
    }

    fn cpu_seconds(&self) -> f64 {
        self.procs.iter().filter_map(Proc::cpu_seconds).sum()
    }

    /// Runs the load tool in `uclient` against `userver`'s `port` (`args` follow the target),
    /// counting the ztunnels' CPU against what the run moved.
    pub(super) fn tool(
        &self,
        mesh: &Mesh,
        command: &str,
        port: u16,
        args: &[&str],
        count: Count,
    ) -> anyhow::Result<Value> {
        let target = format!("{}:{port}", mesh.cluster.pod("userver").ip);
        let mut argv = vec![command, target.as_str()];
        argv.extend_from_slice(args);
        let before = self.cpu_seconds();
        let procs: Vec<&Proc> = self.procs.iter().collect();
        let mut run = self
            .memory
            .measure(&procs, || super::runs::tool_in(mesh, CLIENT, &argv))?;
        let used = self.cpu_seconds() - before;
        run["ztunnel_cpu_seconds"] = json!(used);
        let mut cpu = self.cpu.borrow_mut();
        match count {
            Count::Bytes => {
                cpu[0].0 += used;
                cpu[0].1 += f(&run["bytes"]);
            }
            Count::Requests => {
                cpu[1].0 += used;
                cpu[1].1 += f(&run["requests"]);
            }
            Count::Nothing => {}
        }
        Ok(run)
    }

    /// Records `value` under `key` (a JSON pointer's parts).
    pub(super) fn record(&self, keys: &[&str], value: Value) {
        let mut results = self.results.borrow_mut();
        let mut at = &mut *results;
        for key in keys {
            at = &mut at[*key];
        }
        *at = value;
    }

    /// Everything measured, with CPU per GiB and per 10,000 requests.
    pub(super) fn finish(self) -> Value {
        let [bulk, rr] = *self.cpu.borrow();
        let mut results = self.results.into_inner();
        if let (Value::Object(results), Value::Object(memory)) =
            (&mut results, self.memory.json(""))
        {
            results.extend(memory);
        }
        results["cpu"] = json!({
            "ztunnel_seconds_per_gib": super::runs::per_gib(bulk),
            "ztunnel_seconds_per_10k_requests": rr.0 / (rr.1 / 10_000.0),
        });
        results
    }
}
