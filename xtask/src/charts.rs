//! `cargo xtask check-charts`: lint and render both Helm charts with the real Helm v4 SDK, validate
//! every rendered manifest for the target Kubernetes version, show that broken values are refused,
//! and validate the example custom resources against the generated CRDs. The Python tools live in a
//! virtualenv under `target/`, created on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::proto::workspace_root;

/// The tools, pinned.
const REQUIREMENTS: &str = "\
helm-python-sdk==0.2.2
kubernetes-validate==1.37.0
jsonschema==4.26.0
PyYAML==6.0.3
";

/// The checks themselves.
const CHECK_PY: &str = include_str!("charts/check.py");

/// The Kubernetes version manifests are validated for.
pub(crate) const KUBE_VERSION: &str = "1.33.0";

/// The charts, in install order.
const CHARTS: [&str; 2] = ["charts/veil", "charts/waypoint"];

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The virtualenv with the pinned tools, created or brought up to date.
fn tools(root: &Path) -> anyhow::Result<PathBuf> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let venv = target.join("chart-tools");
    let marker = venv.join("requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(REQUIREMENTS) {
        return Ok(venv);
    }
    println!(
        "preparing the chart tools in {} (Helm v4 SDK, kubernetes-validate)",
        venv.display()
    );
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))
    .context("creating a Python virtualenv (on Debian: apt-get install python3-venv)")?;
    let pending = venv.join("requirements.pending");
    std::fs::write(&pending, REQUIREMENTS)?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&pending))
    .context("installing the chart tools from PyPI")?;
    std::fs::rename(&pending, &marker)?;
    Ok(venv)
}

/// Runs every check; `extra` are `CHART=FILE` values files rendered as well (and so expected to
/// pass).
pub(crate) fn check(extra: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    let venv = tools(&root)?;
    let script = venv.join("check.py");
    std::fs::write(&script, CHECK_PY)?;
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.current_dir(&root)
        .arg(&script)
        .args(["--kube-version", KUBE_VERSION, "--namespace", "veil-system"])
        .arg("--validator")
        .arg(venv.join("bin/kubernetes-validate"))
        .args(["--crds", veil_crd::CRD_DIR, "--examples", "docs/examples"])
        .args(["--foreign-crds", "xtask/src/charts/foreign-crds"]);
    for values in extra {
        cmd.arg("--values").arg(values);
    }
    cmd.args(CHARTS);
    run(&mut cmd).context("chart checks failed")
}
