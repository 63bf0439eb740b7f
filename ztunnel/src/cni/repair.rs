//! Keeping `veil-cni` in the node's plugin chain. Network plugins rewrite their configuration (on a
//! restart, an upgrade, a node reconfiguration) without veil's entry; from then on new pods would
//! start without veil-cni, uncaptured until ztunnel found them by their address. ztunnel checks the
//! chain every second and puts its entry back, as its init container first wrote it, together with
//! the binary if that went too.
//!
//! The entry is the one this release's init container wrote beside ztunnel's list of ambient
//! namespaces ([`ENTRY_FILE`]), or else the one found in the chain when ztunnel starts, so ztunnel
//! needs none of the installer's settings. Any `veil-cni` entry counts as
//! present: two ztunnels of different releases on one node (an upgrade) never rewrite each other's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tracing::{error, info, warn};

use super::install::{self, InstallError, PLUGIN_TYPE, primary_config};

/// The file, in the directory of ztunnel's list of ambient namespaces, where the installer keeps the
/// entry it chained (for ztunnel to put back even if the chain was rewritten before it started).
pub const ENTRY_FILE: &str = "cni-entry.json";

/// Writes `entry` to `dir`/[`ENTRY_FILE`].
pub fn save_entry(dir: &Path, entry: &Value) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{ENTRY_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(entry)?)?;
    std::fs::rename(tmp, dir.join(ENTRY_FILE))
}

/// The entry saved in `dir`, if there is a valid one.
pub fn saved_entry(dir: &Path) -> Option<Value> {
    let entry: Value = serde_json::from_slice(&std::fs::read(dir.join(ENTRY_FILE)).ok()?).ok()?;
    (entry["type"] == PLUGIN_TYPE).then_some(entry)
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// veil's entry is in the chain the runtime uses and the binary is in place.
    Intact,
    /// It was not (the file named); it is now.
    Repaired(PathBuf),
    /// There is no network configuration (the network plugin has not written one): nothing to
    /// chain onto yet.
    NoConfig,
}

/// The node's chain, as ztunnel keeps it.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The node's CNI bin directory.
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory.
    pub conf_dir: PathBuf,
    /// veil's entry, as the installer wrote it.
    pub entry: Value,
    /// Where to copy the plugin binary from when it is missing.
    pub binary: PathBuf,
    /// Set when ztunnel stops: no repair may follow (it could undo an uninstall's cleanup).
    pub stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// veil's entry in the primary configuration of `conf_dir`, if it is there.
pub fn current_entry(conf_dir: &Path) -> Result<Option<Value>, InstallError> {
    let Some(primary) = primary_config(conf_dir)? else {
        return Ok(None);
    };
    Ok(plugins(&primary)?
        .into_iter()
        .find(|p| p["type"] == PLUGIN_TYPE))
}

/// The plugins of the configuration at `path` (a single plugin counts as a chain of one).
fn plugins(path: &Path) -> Result<Vec<Value>, InstallError> {
    let text = std::fs::read_to_string(path).map_err(|source| InstallError::Io {
        path: path.to_owned(),
        source,
    })?;
    let config: Value = serde_json::from_str(&text).map_err(|e| InstallError::Config {
        path: path.to_owned(),
        reason: format!("not JSON: {e}"),
    })?;
    Ok(match config.get("plugins").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![config],
    })
}

impl Chain {
    /// Checks the chain and repairs it.
    pub fn check(&self) -> Result<Checked, InstallError> {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Checked::Intact);
        }
        let Some(primary) = primary_config(&self.conf_dir)? else {
            return Ok(Checked::NoConfig);
        };
        let chained = plugins(&primary)?.iter().any(|p| p["type"] == PLUGIN_TYPE);
        if chained && self.bin_dir.join(PLUGIN_TYPE).is_file() {
            return Ok(Checked::Intact);
        }
        match install::install(&self.binary, &self.bin_dir, &self.conf_dir, &self.entry)? {
            Some(file) => Ok(Checked::Repaired(file)),
            None => Ok(Checked::NoConfig),
        }
    }

    /// Checks the chain every `period`, forever, repairing it when it is broken.
    pub async fn keep(self, period: Duration) {
        let mut failing = false;
        loop {
            let chain = self.clone();
            match tokio::task::spawn_blocking(move || chain.check()).await {
                Ok(Ok(Checked::Repaired(file))) => {
                    warn!(config = %file.display(), "veil-cni was missing from the node's CNI chain (a network plugin rewrote its configuration); put back");
                    failing = false;
                }
                Ok(Ok(Checked::Intact | Checked::NoConfig)) => {
                    if failing {
                        info!("the node's CNI chain holds veil-cni again");
                    }
                    failing = false;
                }
                Ok(Err(e)) => {
                    if !failing {
                        error!(error = %e, "cannot repair the node's CNI chain: new pods start without veil-cni and are captured only once found by their address");
                    }
                    failing = true;
                }
                Err(e) => error!(error = %e, "the CNI chain check failed"),
            }
            tokio::time::sleep(period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const BRIDGE: &str = r#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0"}]}"#;

    fn node() -> (tempfile::TempDir, Chain) {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let binary = dir.path().join("veil-cni-image");
        std::fs::write(&binary, b"#!/bin/true\n").unwrap();
        std::fs::write(conf.join("10-pods.conflist"), BRIDGE).unwrap();
        let entry = json!({"type": PLUGIN_TYPE, "ztunnelSocket": "/var/run/veil/cni.sock", "timeoutSeconds": 10});
        install::install(&binary, &bin, &conf, &entry).unwrap();
        let chain = Chain {
            bin_dir: bin,
            conf_dir: conf,
            entry: current_entry(&dir.path().join("net.d")).unwrap().unwrap(),
            binary,
            stopped: Default::default(),
        };
        (dir, chain)
    }

    fn chain_of(file: &Path) -> Vec<String> {
        plugins(file)
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_rewritten_configuration_gets_veils_entry_back_as_it_was() {
        let (_dir, chain) = node();
        let file = chain.conf_dir.join("10-pods.conflist");
        assert_eq!(chain.entry["timeoutSeconds"], 10);
        assert_eq!(chain.check().unwrap(), Checked::Intact);

        // The network plugin restarts and writes its configuration again, without veil.
        std::fs::write(&file, BRIDGE).unwrap();
        assert_eq!(chain.check().unwrap(), Checked::Repaired(file.clone()));
        assert_eq!(chain_of(&file), ["bridge", PLUGIN_TYPE]);
        assert_eq!(
            current_entry(&chain.conf_dir).unwrap().unwrap(),
            chain.entry
        );
        assert_eq!(chain.check().unwrap(), Checked::Intact);
    }

    #[test]
    fn a_new_first_configuration_and_a_removed_binary_are_repaired() {
        let (_dir, chain) = node();
        // A new configuration sorts first: the runtime uses it, so veil must be in it.
        let first = chain.conf_dir.join("05-new.conflist");
        std::fs::write(&first, BRIDGE).unwrap();
        assert_eq!(chain.check().unwrap(), Checked::Repaired(first.clone()));
        assert_eq!(chain_of(&first), ["bridge", PLUGIN_TYPE]);
        // The binary is deleted: copied back from the image.
        std::fs::remove_file(chain.bin_dir.join(PLUGIN_TYPE)).unwrap();
        assert!(matches!(chain.check().unwrap(), Checked::Repaired(_)));
        assert!(chain.bin_dir.join(PLUGIN_TYPE).is_file());
        // A single-plugin file becomes a chain with veil at its end.
        std::fs::remove_file(&first).unwrap();
        let single = chain.conf_dir.join("01-single.conf");
        std::fs::write(
            &single,
            r#"{"cniVersion": "0.4.0", "name": "pods", "type": "ptp"}"#,
        )
        .unwrap();
        assert_eq!(
            chain.check().unwrap(),
            Checked::Repaired(single.with_extension("conflist"))
        );
        assert_eq!(
            chain_of(&single.with_extension("conflist")),
            ["ptp", PLUGIN_TYPE]
        );
    }

    #[test]
    fn no_configuration_is_nothing_to_repair_and_garbage_is_an_error() {
        let (_dir, chain) = node();
        for f in std::fs::read_dir(&chain.conf_dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        assert_eq!(chain.check().unwrap(), Checked::NoConfig);
        std::fs::write(chain.conf_dir.join("00-broken.conflist"), "{not json").unwrap();
        assert!(chain.check().is_err());
    }

    #[test]
    fn the_saved_entry_is_read_back_and_a_stopped_chain_is_left_alone() {
        let (dir, chain) = node();
        save_entry(dir.path(), &chain.entry).unwrap();
        assert_eq!(saved_entry(dir.path()), Some(chain.entry.clone()));
        std::fs::write(dir.path().join(ENTRY_FILE), r#"{"type": "bridge"}"#).unwrap();
        assert_eq!(saved_entry(dir.path()), None, "not veil's");
        chain
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        let file = chain.conf_dir.join("10-pods.conflist");
        std::fs::write(&file, BRIDGE).unwrap();
        assert_eq!(chain.check().unwrap(), Checked::Intact);
        assert_eq!(chain_of(&file), ["bridge"], "repaired after stopping");
    }
}
