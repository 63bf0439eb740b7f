//! The `veil-cni` chained CNI plugin: hands new pods of ambient namespaces to the node's ztunnel and
//! returns once they are captured. Invoked by the container runtime with CNI_* variables and the
//! network configuration on stdin; answers on stdout.
//!
//! `veil-cni install` / `veil-cni uninstall` put it on a node and take it off again (the ztunnel
//! DaemonSet's init container runs `install`).

#![allow(clippy::print_stdout, reason = "CNI plugins answer on stdout")]
#![allow(clippy::print_stderr, reason = "the installer reports on stderr")]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use veil_ztunnel::cni::install::{self, PLUGIN_TYPE};
use veil_ztunnel::cni::repair;
use veil_ztunnel::cni::{DEFAULT_AMBIENT_FILE, DEFAULT_SOCKET, plugin};

/// Installs or removes veil's CNI plugin on this node.
#[derive(Parser, Debug)]
#[command(name = "veil-cni", version)]
enum Admin {
    /// Copy this binary into the CNI bin directory and chain it into the node's network
    /// configuration (waits for the network plugin to write one).
    Install {
        #[command(flatten)]
        dirs: Dirs,
        /// ztunnel's socket, as the plugin will see it.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// ztunnel's list of ambient namespaces, as the plugin will see it.
        #[arg(long, default_value = DEFAULT_AMBIENT_FILE)]
        ambient_file: PathBuf,
        /// Namespaces whose pods never wait for ztunnel (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "kube-system,veil-system")]
        exclude_namespaces: Vec<String>,
        /// Seconds the plugin waits for ztunnel to capture a pod.
        #[arg(long, default_value_t = 10)]
        timeout_seconds: u64,
    },
    /// Remove the plugin from every network configuration and the CNI bin directory.
    Uninstall {
        #[command(flatten)]
        dirs: Dirs,
    },
}

#[derive(clap::Args, Debug)]
struct Dirs {
    /// The node's CNI bin directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The node's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
}

fn main() {
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("install" | "uninstall" | "help" | "--help" | "-h" | "--version" | "-V")
    ) {
        if let Err(e) = admin(Admin::parse()) {
            eprintln!("veil-cni: {e}");
            std::process::exit(1);
        }
        return;
    }
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    match plugin::run(&env, &stdin) {
        Ok(result) => println!("{result}"),
        Err((version, error)) => {
            println!("{}", error.to_json(&version));
            std::process::exit(1);
        }
    }
}

fn admin(command: Admin) -> Result<(), install::InstallError> {
    match command {
        Admin::Install {
            dirs,
            socket,
            ambient_file,
            exclude_namespaces,
            timeout_seconds,
        } => {
            let entry = json!({
                "type": PLUGIN_TYPE,
                "ztunnelSocket": socket,
                "ambientFile": ambient_file,
                "excludeNamespaces": exclude_namespaces,
                "timeoutSeconds": timeout_seconds,
            });
            let binary = std::env::current_exe().map_err(|source| install::InstallError::Io {
                path: "/proc/self/exe".into(),
                source,
            })?;
            // Kept beside ztunnel's list, for ztunnel to put the entry back even if the network
            // plugin rewrites its configuration before ztunnel starts.
            if let Some(dir) = ambient_file.parent()
                && let Err(e) = repair::save_entry(dir, &entry)
            {
                eprintln!(
                    "veil-cni: warning: could not save the entry in {}: {e} (ztunnel repairs the chain only with the entry it finds chained)",
                    dir.display()
                );
            }
            loop {
                match install::install(&binary, &dirs.bin_dir, &dirs.conf_dir, &entry)? {
                    Some(conf) => {
                        eprintln!(
                            "veil-cni: installed into {} and chained into {}",
                            dirs.bin_dir.display(),
                            conf.display()
                        );
                        return Ok(());
                    }
                    None => {
                        eprintln!(
                            "veil-cni: no network configuration in {} yet; waiting for the network plugin",
                            dirs.conf_dir.display()
                        );
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
            }
        }
        Admin::Uninstall { dirs } => {
            let changed = install::uninstall(&dirs.bin_dir, &dirs.conf_dir)?;
            eprintln!(
                "veil-cni: removed from {changed:?} and {}",
                dirs.bin_dir.display()
            );
            Ok(())
        }
    }
}
