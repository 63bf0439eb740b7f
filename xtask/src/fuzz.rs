//! `cargo xtask fuzz`: build the coverage-guided fuzz targets in `fuzz/` with cargo-fuzz (libFuzzer,
//! no sanitizer, so the stable toolchain builds them), run each one from its checked-in seed corpus,
//! and fail on any crash, panic, timeout or out-of-memory. `cargo xtask test` runs a short smoke of
//! every target through [`smoke`].
//!
//! The seeds in `fuzz/corpus/<target>/` are only read: what a run discovers goes to
//! `target/fuzz/corpus/<target>/` (kept between runs, so later runs start where earlier ones
//! stopped), the run's log to `target/fuzz/logs/<target>.log`, a crashing input to
//! `fuzz/artifacts/<target>/`.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use tokio::time::Instant;

use anyhow::{Context as _, bail};

use crate::proto::workspace_root;

/// How long each target runs: a number of executions, a number of seconds, or whichever comes first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Stop after this many executions.
    pub(crate) runs: Option<u64>,
    /// Stop after this many seconds.
    pub(crate) seconds: Option<u64>,
}

/// The smoke run inside `cargo xtask test`: enough to load every seed and mutate a little, a few
/// seconds per target.
const SMOKE: Budget = Budget {
    runs: Some(20_000),
    seconds: Some(10),
};

/// An input that takes longer than this is reported as a hang (a stalled proxy).
const TIMEOUT_SECS: u32 = 10;

/// What a finished run reports (from libFuzzer's final statistics).
#[derive(Debug, Default)]
struct Stats {
    runs: u64,
    exec_per_sec: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    seconds: f64,
}

/// A `cargo` command without the package variables `cargo run` gave xtask: ring's build script
/// declares it depends on `CARGO_PKG_NAME` and friends, so leaving xtask's values in would rebuild
/// ring and everything above it whenever the targets are built from a shell instead, and back.
fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        let leaked = name.to_str().is_some_and(|n| {
            n.starts_with("CARGO_PKG_")
                || n.starts_with("CARGO_MANIFEST_")
                || n.starts_with("CARGO_CFG_")
                || matches!(
                    n,
                    "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                )
        });
        if leaked {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// `cargo xtask fuzz [TARGET…]`: every target when none is named.
pub(crate) fn run(targets: &[String], budget: Budget) -> anyhow::Result<()> {
    let root = workspace_root();
    ensure_cargo_fuzz()?;
    let all = list(&root)?;
    let chosen: Vec<String> = if targets.is_empty() {
        all
    } else {
        for t in targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        targets.to_vec()
    };
    build(&root)?;
    let mut failed = Vec::new();
    let mut table = Vec::new();
    for target in &chosen {
        match fuzz_one(&root, target, budget) {
            Ok(stats) => table.push((target.clone(), stats)),
            Err(e) => {
                println!("{e:#}");
                failed.push(target.clone());
            }
        }
    }
    print_table(&table);
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The smoke run of every target, for `cargo xtask test`.
pub(crate) fn smoke() -> anyhow::Result<()> {
    run(&[], SMOKE)
}

/// cargo-fuzz, installed (pinned by its lock file) when it is missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        return Ok(());
    }
    println!(
        "cargo-fuzz not found: installing it with `cargo install cargo-fuzz --locked` \
         (once, a few minutes)"
    );
    let status = cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed ({status}); install it by hand and retry");
    }
    Ok(())
}

/// The targets `fuzz/Cargo.toml` declares.
fn list(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = cargo()
        .args(["fuzz", "list"])
        .current_dir(root)
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// One build of every target. `--sanitizer none`: AddressSanitizer needs a nightly compiler, and
/// safe Rust gets bounds and overflow checks (debug assertions are on) without it.
fn build(root: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let status = cargo()
        .args(["fuzz", "build", "--sanitizer", "none"])
        .current_dir(root)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    println!(
        "fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `target` within `budget`; an error names the crashing input and how to replay it.
fn fuzz_one(root: &Path, target: &str, budget: Budget) -> anyhow::Result<Stats> {
    let work = root.join("target/fuzz");
    let corpus = work.join("corpus").join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    let log_path = work.join("logs").join(format!("{target}.log"));
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    std::fs::create_dir_all(log_path.parent().expect("a log directory"))?;
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo();
    // The first corpus directory receives new inputs; the seeds stay as checked in.
    cmd.args(["fuzz", "run", "--sanitizer", "none", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .args(libfuzzer_flags(budget))
        .current_dir(root)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    println!("fuzzing {target} (log: {})", log_path.display());
    let started = Instant::now();
    let status = cmd.status().context("running cargo fuzz run")?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({status}):\n{}\nreplay the input named above with \
             `cargo fuzz run --sanitizer none {target} <artifact>`; full log: {}",
            tail.join("\n"),
            log_path.display()
        );
    }
    let mut stats = parse_stats(&text);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

fn libfuzzer_flags(budget: Budget) -> Vec<String> {
    let mut flags = vec![
        format!("-timeout={TIMEOUT_SECS}"),
        "-print_final_stats=1".to_owned(),
    ];
    if let Some(runs) = budget.runs {
        flags.push(format!("-runs={runs}"));
    }
    if let Some(seconds) = budget.seconds {
        flags.push(format!("-max_total_time={seconds}"));
    }
    flags
}

/// The figures of libFuzzer's last status line (`#N DONE cov: C ft: F corp: K/…`) and final stats.
fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    let field = |line: &str, key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        let word = rest.split_whitespace().next()?;
        word.split('/').next()?.parse().ok()
    };
    for line in log.lines() {
        if line.starts_with('#') && line.contains(" cov: ") {
            stats.cov = field(line, " cov: ").unwrap_or(stats.cov);
            stats.ft = field(line, " ft: ").unwrap_or(stats.ft);
            stats.corpus = field(line, " corp: ").unwrap_or(stats.corpus);
        } else if let Some(v) = field(line, "stat::number_of_executed_units:") {
            stats.runs = v;
        } else if let Some(v) = field(line, "stat::average_exec_per_sec:") {
            stats.exec_per_sec = v;
        }
    }
    stats
}

fn print_table(rows: &[(String, Stats)]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "{:<16} {:>12} {:>8} {:>8} {:>7} {:>7} {:>7}",
        "target", "executions", "exec/s", "seconds", "cov", "ft", "corpus"
    );
    for (target, s) in rows {
        // libFuzzer divides by whole seconds: a run shorter than one second reports 0, shown as `-`.
        let rate = if s.exec_per_sec == 0 && s.runs > 0 {
            "-".to_owned()
        } else {
            s.exec_per_sec.to_string()
        };
        println!(
            "{:<16} {:>12} {:>8} {:>8.0} {:>7} {:>7} {:>7}",
            target, s.runs, rate, s.seconds, s.cov, s.ft, s.corpus
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_figures() {
        let log = "\
#2	INITED cov: 10 ft: 11 corp: 1/4b exec/s: 0 rss: 30Mb
#20000	DONE   cov: 321 ft: 987 corp: 45/2113b lim: 4096 exec/s: 6666 rss: 45Mb
Done 20000 runs in 3 second(s)
stat::number_of_executed_units: 20000
stat::average_exec_per_sec:     6666
stat::new_units_added:          44
";
        let s = parse_stats(log);
        assert_eq!(
            (s.runs, s.exec_per_sec, s.cov, s.ft, s.corpus),
            (20000, 6666, 321, 987, 45)
        );
    }

    #[test]
    fn budget_becomes_libfuzzer_flags() {
        let flags = libfuzzer_flags(SMOKE);
        assert!(flags.contains(&"-runs=20000".to_owned()));
        assert!(flags.contains(&"-max_total_time=10".to_owned()));
        assert!(flags.contains(&format!("-timeout={TIMEOUT_SECS}")));
    }
}
