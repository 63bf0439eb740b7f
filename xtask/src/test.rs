//! `cargo xtask test`: the one command that runs veil's whole test suite.
//!
//! The end-to-end tests start the real binaries of several packages, so every binary is built first;
//! then the suite runs under cargo-nextest when it is installed (parallel, one process per test) and
//! under `cargo test` otherwise; then the chart checks (`check-charts`). With a test filter, only the
//! matching tests run. Without a filter, a short smoke run of every fuzz target follows (`fuzz`).

use std::process::Command;

use anyhow::{Context, bail};

use crate::proto::workspace_root;

pub(crate) fn run(extra: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    cargo(&root, &["build", "--workspace", "--bins"])?;
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    let mut args: Vec<&str> = if nextest {
        vec!["nextest", "run", "--workspace", "--no-fail-fast"]
    } else {
        println!("cargo-nextest not found: running the suite with `cargo test`");
        vec!["test", "--workspace", "--no-fail-fast"]
    };
    args.extend(extra.iter().map(String::as_str));
    let suite = cargo(&root, &args);
    if !extra.is_empty() {
        return suite;
    }
    // The whole suite includes the charts and the fuzz smoke; every part runs, all failures count.
    let failures: Vec<String> = [suite, crate::charts::check(&[]), crate::fuzz::smoke()]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("; and "));
    }
    Ok(())
}

fn cargo(root: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
