//! What the demo and the benchmarks need before they start: system tools, and veil built.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::proto::workspace_root;

/// Installs, with apt-get, the packages of the `(tool, package)` pairs whose tool is missing.
pub(crate) fn install_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    println!("Installing {} with apt-get…", missing.join(", "));
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()?
        .success()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("could not install {} (apt-get failed)", missing.join(", "));
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Builds every binary of the workspace (`release`: optimised).
pub(crate) fn build(release: bool) -> anyhow::Result<()> {
    build_with(release, &[])
}

/// [`build`] with extra environment (`VEIL_ZTUNNEL_LAYOUT`: see the `layout` module).
pub(crate) fn build_with(release: bool, env: &[(&str, &Path)]) -> anyhow::Result<()> {
    println!("Building veil{}…", if release { " (release)" } else { "" });
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    // Laid out only when asked here: not from a variable the caller's environment happens to hold.
    cmd.env_remove(crate::layout::LAYOUT_VAR);
    cmd.envs(env.iter().copied());
    if !cmd.current_dir(workspace_root()).status()?.success() {
        bail!("the build failed");
    }
    Ok(())
}
