//! `veil-cni-cleanup`: removes the `veil-cni` plugin from this node if veil is being uninstalled —
//! and only then. ztunnel runs it as it stops (from beside its own binary, with its own
//! credentials): the Kubernetes client it needs lives here, not in ztunnel's binary nor in the
//! plugin's, which every pod's network setup runs.
//!
//! Exit status: 0 when it removed the plugin or the DaemonSet remains (a restart or an upgrade);
//! 3 when the API could not tell (the plugin is kept); 1 on an error. What it did is said on
//! stderr.

#![allow(clippy::print_stderr, reason = "reports on stderr, read by ztunnel")]

use std::path::PathBuf;

use clap::Parser;
use veil_ztunnel::cni::cleanup::{Cleanup, EXIT_UNKNOWN, Outcome};

/// Removes veil-cni from this node if the API server says veil's ztunnel DaemonSet is gone or being
/// deleted; any other answer, or none within 10 s, keeps it. In-cluster or kubeconfig credentials.
#[derive(Parser, Debug)]
#[command(name = "veil-cni-cleanup", version)]
struct Args {
    /// ztunnel's DaemonSet, `NAMESPACE/NAME`.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_daemonset)]
    daemonset: (String, String),
    /// The node's CNI bin directory, as mounted.
    #[arg(long)]
    bin_dir: PathBuf,
    /// The node's CNI configuration directory, as mounted.
    #[arg(long)]
    conf_dir: PathBuf,
    /// ztunnel's ambient-namespaces file, removed with the plugin.
    #[arg(long)]
    ambient_file: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let (namespace, daemonset) = args.daemonset;
    let cleanup = Cleanup {
        bin_dir: args.bin_dir,
        conf_dir: args.conf_dir,
        namespace,
        daemonset,
        ambient_file: args.ambient_file,
    };
    let name = format!("{}/{}", cleanup.namespace, cleanup.daemonset);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("veil-cni-cleanup: no runtime ({e}): veil-cni kept installed");
            std::process::exit(1);
        }
    };
    match runtime.block_on(cleanup.remove_if_uninstalled()) {
        Ok(Outcome::Removed(changed)) => eprintln!(
            "veil is being uninstalled (DaemonSet {name} is gone or being deleted): veil-cni removed from {changed:?} and {}",
            cleanup.bin_dir.display()
        ),
        Ok(Outcome::Staying) => {
            eprintln!(
                "DaemonSet {name} remains (a restart or an upgrade): veil-cni kept installed"
            );
        }
        Ok(Outcome::Unknown(reason)) => {
            eprintln!(
                "cannot tell whether veil is being uninstalled ({reason}): veil-cni kept installed (run `veil-cni uninstall` on the node if it is)"
            );
            std::process::exit(EXIT_UNKNOWN);
        }
        Err(e) => {
            eprintln!("veil is being uninstalled, but veil-cni could not be removed: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_daemonset(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}
