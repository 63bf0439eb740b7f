//! veil-ztunnel's code laid out from a profile of the very build it is applied to.
//!
//! An idle ztunnel runs little of its code, but that little is spread over the whole executable,
//! and the kernel maps 64 KiB of a file around every page fault (fault-around): before this, an
//! idle ztunnel held about 9.4 of its 11.7 MB of code resident for about 2.7 MB it had run. Here
//! the release build is profiled on the benchmark cluster under callgrind — first from start to
//! serving with the pods enrolled (certificates, the controller's mesh, capture rules, a metrics
//! scrape), then under every kind of traffic the benchmark sends — and relinked with the functions
//! that ran first, in that order (lld's `--symbol-ordering-file`, passed by ztunnel's build script
//! when `VEIL_ZTUNNEL_LAYOUT` names the file).
//!
//! The profile names symbols exactly, and symbol names depend on the build (target, flags, the
//! packages built together, ThinLTO's module hashes), so the order is never kept in the
//! repository: each build that ships or is measured (`cargo xtask image`, `cargo xtask bench`) is
//! profiled itself, and relinked. The relink is the same cargo command with the variable set,
//! which reaches ztunnel's build script alone: the ztunnel package (and veil-cli, which uses its
//! library) is recompiled with the same inputs, so the symbols keep their names. That is checked,
//! and the build fails if too few of the idle functions are found in it, or if they are not packed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use veil_e2e::mesh::{Mesh, use_binaries_from};

use crate::bench;
use crate::setup::install_tools;

/// What the profile runs on.
const TOOLS: &[(&str, &str)] = &[
    ("valgrind", "valgrind"),
    ("callgrind_control", "valgrind"),
    ("nm", "binutils"),
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
];

/// Whether a build for `target` can be laid out: lld, whose option the build script passes, is
/// Rust's default linker there.
pub(crate) fn supported(target: &str) -> bool {
    target == "x86_64-unknown-linux-gnu"
}

/// [`supported`] for the host's target (what a build without `--target` is for).
pub(crate) fn supported_on_this_host() -> bool {
    cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    ))
}

/// The environment variable ztunnel's build script reads.
pub(crate) const LAYOUT_VAR: &str = "VEIL_ZTUNNEL_LAYOUT";

/// Below this share of the profile's functions found in the relinked binary, the relink did not
/// keep the names the profile saw: the layout is not applied and the build is failed.
const MIN_FOUND: f64 = 0.9;

/// Profiles `ztunnel` (a release build) and writes its symbol order to `order`. `harness` is a
/// folder holding the other binaries the benchmark cluster runs (CA, controller, waypoint,
/// e2e-app, veil-bench).
pub(crate) fn profile(ztunnel: &Path, harness: &Path, order: &Path) -> anyhow::Result<Profile> {
    install_tools(TOOLS)?;
    let work = order.with_extension("callgrind");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    use_binaries_from(harness.to_path_buf());
    veil_e2e::cluster::remove_stale();
    // Both ways ztunnel is run: Kubernetes mode (the CNI plugin's socket, the controller watching
    // an API server), as the chart runs it, and local mode through the controller, as the
    // benchmarks and the demo run it.
    for kubernetes in [true, false] {
        let mode = if kubernetes { "Kubernetes" } else { "local" };
        println!(
            "Profiling {} under callgrind ({mode} mode)…",
            ztunnel.display()
        );
        let mut spec = bench::spec(false);
        spec.kubernetes = kubernetes;
        spec.ztunnel_binary = Some(ztunnel.to_path_buf());
        // Stopped at the end with the waypoint's pooled connections still open: drained briefly.
        spec.ztunnel_args.push("--drain-period=3s".into());
        spec.ztunnel_wrapper = vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}/{mode}.%p", work.display()),
            "--dump-instr=no".into(),
            "--compress-strings=no".into(),
            "--compress-pos=no".into(),
            "--demangle=no".into(),
        ];
        let mut mesh = Mesh::start(spec)
            .with_context(|| format!("starting the profiling cluster ({mode} mode)"))?;
        let pids: Vec<u32> = mesh.ztunnels.values().map(|z| z.pid()).collect();
        let mut result = run(&mut mesh, &work, mode);
        // Stopped gracefully, so that callgrind writes what ran since the first dump.
        for z in mesh.ztunnels.values_mut() {
            z.terminate();
            if !z.wait_exit(Duration::from_secs(60)) && result.is_ok() {
                result = Err(anyhow::anyhow!(
                    "a profiled ztunnel did not stop within 60 s"
                ));
            }
        }
        // Each ztunnel's two profiles, whole: one that crashed or was never dumped leaves an
        // empty or partial file, which would read as code that never ran.
        if result.is_ok() {
            result = pids
                .iter()
                .try_for_each(|pid| complete(&work.join(format!("{mode}.{pid}"))));
        }
        if result.is_err() {
            mesh.keep_logs = true;
        }
        result.with_context(|| format!("the profiled run ({mode} mode)"))?;
    }
    let binary = ztunnel
        .file_name()
        .context("the ztunnel path names no file")?
        .to_string_lossy()
        .into_owned();
    let (mut idle, mut load) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(&work)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let phase = if name.ends_with(".1") {
            &mut idle
        } else {
            &mut load
        };
        phase.extend(functions(&path, &binary)?);
    }
    ensure!(
        !idle.is_empty() && !load.is_empty(),
        "callgrind recorded no function of {binary} (files in {})",
        work.display()
    );
    let load: Vec<&String> = load.iter().filter(|f| !idle.contains(*f)).collect();
    // Then the code that is not Rust's (ring's assembly; with a static build, the C library):
    // both choose implementations by CPU features at run time, and valgrind's CPU lacks some
    // (AVX-512, VAES), so the variants the node runs may not be the ones profiled. Kept together,
    // right after, they cost a few fault-around windows instead of one per variant.
    let native: Vec<String> = symbols(ztunnel)?
        .into_iter()
        .filter(|s| s.text && !s.name.starts_with("_ZN") && !s.name.starts_with("_R"))
        .map(|s| s.name)
        .filter(|n| !idle.contains(n) && !load.contains(&n))
        .collect();
    let mut text = String::new();
    for f in idle.iter().chain(load.iter().copied()).chain(&native) {
        text.push_str(f);
        text.push('\n');
    }
    std::fs::write(order, text).with_context(|| format!("writing {}", order.display()))?;
    // Kept to measure against the relinked one.
    let unordered = order.with_extension("unordered");
    std::fs::copy(ztunnel, &unordered)
        .with_context(|| format!("copying {} aside", ztunnel.display()))?;
    let idle: Vec<String> = idle.into_iter().collect();
    let profile = Profile {
        order: order.to_path_buf(),
        unordered,
        functions: idle.len() + load.len(),
        spread: Placement::of(ztunnel, &idle)?,
        idle,
    };
    println!(
        "  {} functions ran ({} of them by the time it was serving, idle: {} KB of code spread over {} KB); then {} native functions",
        profile.functions,
        profile.idle.len(),
        profile.spread.bytes / 1000,
        profile.spread.span / 1000,
        native.len()
    );
    Ok(profile)
}

/// Brings the benchmark cluster's ztunnels to idle as the benchmark reads them: started, pods
/// enrolled, servers up in three pods, a pause, metrics scraped.
fn to_idle(mesh: &mut Mesh) -> anyhow::Result<()> {
    let tool = veil_e2e::mesh::bin("veil-bench")
        .to_string_lossy()
        .into_owned();
    for pod in ["server", "lserver", "wserver"] {
        mesh.spawn_in_pod(pod, &format!("bench-server-{pod}"), &[&tool, "serve"])?
            .wait_for("bench server ready", Duration::from_secs(30))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    for node in ["node-a", "node-b"] {
        let metrics = mesh.metrics(node);
        ensure!(
            metrics.contains("veil_"),
            "{node}'s ztunnel served no metrics"
        );
    }
    Ok(())
}

/// The profiled run: idle ([`to_idle`]), a dump, then traffic.
fn run(mesh: &mut Mesh, work: &Path, mode: &str) -> anyhow::Result<()> {
    to_idle(mesh)?;
    for z in mesh.ztunnels.values() {
        // callgrind_control exits 0 whatever happened: the dump is checked by its file.
        let out = Command::new("timeout")
            .args(["30", "callgrind_control", "-d", &z.pid().to_string()])
            .output()
            .context("running callgrind_control")?;
        let dump = work.join(format!("{mode}.{}.1", z.pid()));
        complete(&dump).with_context(|| {
            format!(
                "callgrind_control -d {}: {}",
                z.pid(),
                String::from_utf8_lossy(&out.stdout).trim()
            )
        })?;
    }
    let ip = |pod: &str| mesh.cluster.pod(pod).ip.to_string();
    let (server, lserver) = (ip("server"), ip("lserver"));
    let waypoint = format!("http://{}/bench/item", bench::WAYPOINT_VIP);
    let runs: Vec<Vec<String>> = vec![
        vec![
            "throughput".into(),
            format!("{server}:9001"),
            "--streams".into(),
            "4".into(),
        ],
        vec![
            "throughput".into(),
            format!("{lserver}:9001"),
            "--streams".into(),
            "1".into(),
        ],
        vec![
            "rr".into(),
            format!("{server}:9002"),
            "--conns".into(),
            "16".into(),
        ],
        vec!["connrate".into(), format!("{server}:9003")],
        vec![
            "udp-rr".into(),
            format!("{server}:9004"),
            "--flows".into(),
            "4".into(),
        ],
        vec![
            "http".into(),
            waypoint.clone(),
            "--concurrency".into(),
            "4".into(),
        ],
        vec![
            "http".into(),
            waypoint,
            "--concurrency".into(),
            "4".into(),
            "--h2".into(),
        ],
    ];
    let mut passed = 0;
    for mut args in runs {
        args.extend(["--seconds".into(), "2".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Under callgrind ztunnel is some fifty times slower: what matters is the code that
        // ran, not whether the run met the tool's expectations; but traffic must have flowed.
        match bench::tool_in(mesh, "client", &args) {
            Ok(_) => passed += 1,
            Err(e) => println!("  (profile run {args:?}: {e:#})"),
        }
    }
    ensure!(
        passed > 0,
        "no traffic went through the profiled ztunnels: their load profile would be empty"
    );
    for node in ["node-a", "node-b"] {
        let _ = mesh.metrics(node);
    }
    Ok(())
}

/// Checks that callgrind wrote `path` whole (it ends with its `totals:` line), waiting up to 10 s.
fn complete(path: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("totals:")) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("callgrind did not write {} whole", path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The functions of `binary` a callgrind output file lists.
fn functions(path: &Path, binary: &str) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut object_is_ours = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(object) = line.strip_prefix("ob=") {
            object_is_ours =
                Path::new(object.trim()).file_name() == Some(std::ffi::OsStr::new(binary));
        } else if let Some(name) = line.strip_prefix("fn=")
            && object_is_ours
        {
            // Callgrind marks recursion depths (`f'2`); addresses without a symbol are skipped.
            let name = name.trim().split('\'').next().unwrap_or_default();
            if !name.is_empty() && !name.starts_with("0x") && !name.starts_with('(') {
                out.push(name.to_owned());
            }
        }
    }
    Ok(out)
}

/// A profile: the order file and what it holds.
pub(crate) struct Profile {
    pub(crate) order: PathBuf,
    /// A copy of the binary profiled, as linked by default.
    unordered: PathBuf,
    /// Functions listed.
    pub(crate) functions: usize,
    /// Those that ran by the time ztunnel was serving, idle (listed first).
    idle: Vec<String>,
    /// Where the idle functions were in the profiled binary.
    spread: Placement,
}

impl Profile {
    /// Checks that `relinked` (the build relinked with this profile's order) has the profile's
    /// functions and that its idle code is packed; prints how.
    pub(crate) fn check(&self, relinked: &Path) -> anyhow::Result<Placement> {
        let now = Placement::of(relinked, &self.idle)?;
        let found = now.found as f64 / self.idle.len().max(1) as f64;
        ensure!(
            found >= MIN_FOUND,
            "only {:.0}% of the profile's functions are in {} after the relink (its symbols were renamed?): the layout did not apply",
            found * 100.0,
            relinked.display()
        );
        // Laid out, the idle functions follow one another (alignment padding aside); spread as
        // widely as in the default link, the order did not reach the linker.
        ensure!(
            now.span <= now.bytes + now.bytes / 2,
            "the idle code of {} spans {} KB for {} KB of functions: the order was not applied",
            relinked.display(),
            now.span / 1000,
            now.bytes / 1000
        );
        println!(
            "  laid out: the idle code ({} KB, {:.0}% of its functions found) now spans {} KB of {} (was {} KB)",
            now.bytes / 1000,
            found * 100.0,
            now.span / 1000,
            relinked.display(),
            self.spread.span / 1000
        );
        let before = idle_resident(&self.unordered)?;
        let after = idle_resident(relinked)?;
        println!(
            "  idle ztunnel on the benchmark cluster (node-a, node-b): RSS {:.1}/{:.1} MiB as linked by default, {:.1}/{:.1} MiB laid out (its code resident: {} → {} KB on node-a)",
            crate::mib(before.rss[0] as f64),
            crate::mib(before.rss[1] as f64),
            crate::mib(after.rss[0] as f64),
            crate::mib(after.rss[1] as f64),
            before.code_kb,
            after.code_kb
        );
        Ok(now)
    }
}

/// An idle ztunnel's memory.
struct Idle {
    /// RSS of both nodes' ztunnels, bytes.
    rss: [u64; 2],
    /// Of node-a's, its executable's code resident, KB.
    code_kb: u64,
}

/// `binary` run natively on the benchmark cluster (local mode), brought to idle.
fn idle_resident(binary: &Path) -> anyhow::Result<Idle> {
    let mut spec = bench::spec(false);
    spec.ztunnel_binary = Some(binary.to_path_buf());
    let mut mesh = Mesh::start(spec).context("starting the benchmark cluster")?;
    if let Err(e) = to_idle(&mut mesh) {
        mesh.keep_logs = true;
        return Err(e);
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss = ["node-a", "node-b"].map(|n| mesh.ztunnels[n].rss_bytes().unwrap_or(0));
    let code_kb = bench::resident_by_mapping(mesh.ztunnels["node-a"].pid())["code"]
        .as_u64()
        .unwrap_or(0);
    Ok(Idle { rss, code_kb })
}

/// Where a set of functions lies in a binary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    /// How many were found.
    found: usize,
    /// Their code's size.
    bytes: u64,
    /// From the lowest start to the highest end.
    span: u64,
}

impl Placement {
    fn of(binary: &Path, names: &[String]) -> anyhow::Result<Self> {
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let (mut found, mut bytes, mut low, mut high) = (0, 0, u64::MAX, 0);
        let mut seen = BTreeSet::new();
        for s in symbols(binary)? {
            if !wanted.contains(s.name.as_str()) || !seen.insert(s.name) {
                continue;
            }
            found += 1;
            bytes += s.size;
            low = low.min(s.address);
            high = high.max(s.address + s.size);
        }
        Ok(Self {
            found,
            bytes,
            span: high.saturating_sub(low),
        })
    }
}

/// A symbol of a binary, as `nm` lists it.
struct Symbol {
    name: String,
    address: u64,
    size: u64,
    /// In the code (`t`, `T`, `w`, `W`).
    text: bool,
}

/// The defined symbols of `binary` that have a size.
fn symbols(binary: &Path) -> anyhow::Result<Vec<Symbol>> {
    let out = Command::new("nm")
        .args(["--defined-only", "-S"])
        .arg(binary)
        .output()
        .context("running nm")?;
    ensure!(out.status.success(), "nm {} failed", binary.display());
    let mut symbols = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(size), Some(kind), Some(name)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(address), Ok(size)) = (
            u64::from_str_radix(address, 16),
            u64::from_str_radix(size, 16),
        ) else {
            continue;
        };
        symbols.push(Symbol {
            name: name.to_owned(),
            address,
            size,
            text: matches!(kind, "t" | "T" | "w" | "W"),
        });
    }
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_output_gives_the_functions_of_one_binary() {
        let path = std::env::temp_dir().join(format!("veil-layout-test-{}", std::process::id()));
        std::fs::write(
            &path,
            "version: 1\n\
             ob=/usr/lib/x86_64-linux-gnu/libc.so.6\n\
             fn=memcpy\n\
             0 12\n\
             ob=/work/target/release/veil-ztunnel\n\
             fn=_ZN4main17h0123456789abcdefE\n\
             0 3\n\
             cob=/usr/lib/x86_64-linux-gnu/libc.so.6\n\
             cfn=free\n\
             fn=_RNvCs1_4core3fmt5write'2\n\
             fn=0x0000000000391d30\n\
             fn=(below main)\n\
             fn=ring_core_0_17_14__gcm_ghash_avx\n\
             ob=/work/target/release/veil-ztunnel-old\n\
             fn=_ZN3old17h0123456789abcdefE\n",
        )
        .expect("writing the sample");
        let functions = functions(&path, "veil-ztunnel").expect("parsed");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            functions,
            [
                "_ZN4main17h0123456789abcdefE",
                "_RNvCs1_4core3fmt5write",
                "ring_core_0_17_14__gcm_ghash_avx",
            ]
        );
    }

    #[test]
    fn symbols_and_placement_read_a_real_binary() {
        // This test program itself: its `main` is code with a size.
        let exe = std::env::current_exe().expect("current executable");
        let all = symbols(&exe).expect("nm runs");
        let main = all
            .iter()
            .find(|s| s.name == "main")
            .expect("a main symbol");
        assert!(main.text && main.size > 0);
        let placement =
            Placement::of(&exe, &["main".to_owned(), "no such symbol".to_owned()]).expect("read");
        assert_eq!(placement.found, 1);
        assert_eq!((placement.bytes, placement.span), (main.size, main.size));
    }
}
