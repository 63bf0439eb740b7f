//! Installing `veil-cni` on a node: the binary into the CNI bin directory, and an entry at the end of
//! the plugin chain of the network configuration the runtime uses (the first, by name, of the
//! configuration directory). Both steps are idempotent and atomic (write aside, then rename), so a
//! runtime never reads a half-written file. Uninstalling removes exactly what installing added.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The plugin's `type` in a chain (and the file name of its binary).
pub const PLUGIN_TYPE: &str = "veil-cni";

/// Why an install could not be done.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The network configuration is not one veil can chain onto.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_file_name(format!(
        ".{}.veil-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The network configuration the runtime uses: the first file of `conf_dir`, by name, that libcni
/// would load (`.conf`, `.conflist`, `.json`). `None` when the network plugin has not written one
/// yet.
pub fn primary_config(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let mut files: Vec<PathBuf> = fs::read_dir(conf_dir)
        .map_err(io_err(conf_dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// `config` with `entry` as the last plugin of its chain (replacing an earlier veil entry). A
/// single-plugin configuration (`.conf`) becomes a list.
pub fn chain(config: &Value, entry: &Value) -> Result<Value, String> {
    let Some(object) = config.as_object() else {
        return Err("not a JSON object".into());
    };
    let mut list = if object.contains_key("plugins") {
        object.clone()
    } else {
        if !object.contains_key("type") {
            return Err("neither a plugin list (`plugins`) nor a plugin (`type`)".into());
        }
        let mut single = object.clone();
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = single.remove(key) {
                list.insert(key.into(), v);
            }
        }
        list.insert("plugins".into(), json!([Value::Object(single)]));
        list
    };
    let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
        return Err("`plugins` is not a list".into());
    };
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    if plugins.is_empty() {
        return Err("no network plugin to chain after".into());
    }
    plugins.push(entry.clone());
    Ok(Value::Object(list))
}

/// `config` without veil's entry; `None` when it had none.
pub fn unchain(config: &Value) -> Option<Value> {
    let mut config = config.clone();
    let plugins = config.get_mut("plugins")?.as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    (plugins.len() != before).then_some(config)
}

/// Copies the plugin binary `binary` into `bin_dir` and chains `entry` into the primary network
/// configuration of `conf_dir`. Returns the configuration file written, or `None` when there is
/// no network configuration yet (the caller waits for the network plugin and tries again).
pub fn install(
    binary: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    entry: &Value,
) -> Result<Option<PathBuf>, InstallError> {
    let Some(primary) = primary_config(conf_dir)? else {
        return Ok(None);
    };
    let bytes = fs::read(binary).map_err(io_err(binary))?;
    write_atomically(&bin_dir.join(PLUGIN_TYPE), &bytes, 0o755)?;
    let text = fs::read_to_string(&primary).map_err(io_err(&primary))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| InstallError::Config {
        path: primary.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    let chained = chain(&config, entry).map_err(|reason| InstallError::Config {
        path: primary.clone(),
        reason,
    })?;
    let target = if primary.extension().is_some_and(|e| e == "conflist") {
        primary.clone()
    } else {
        // A converted single-plugin file keeps its name, as a list.
        primary.with_extension("conflist")
    };
    let pretty = serde_json::to_vec_pretty(&chained).map_err(|e| InstallError::Config {
        path: target.clone(),
        reason: e.to_string(),
    })?;
    write_atomically(&target, &pretty, 0o644)?;
    if target != primary {
        fs::remove_file(&primary).map_err(io_err(&primary))?;
    }
    Ok(Some(target))
}

/// Removes veil's entry from every network configuration of `conf_dir`, and the binary from
/// `bin_dir`. Returns the configuration files changed.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for entry in fs::read_dir(conf_dir).map_err(io_err(conf_dir))?.flatten() {
        let path = entry.path();
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Some(unchained) = serde_json::from_str(&text).ok().as_ref().and_then(unchain) else {
            continue;
        };
        let pretty = serde_json::to_vec_pretty(&unchained).map_err(|e| InstallError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&path, &pretty, 0o644)?;
        changed.push(path);
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&binary) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&binary)(e)),
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        json!({"type": PLUGIN_TYPE, "ztunnelSocket": "/var/run/veil/cni.sock"})
    }

    const FLANNEL: &str = r#"{
      "name": "cbr0", "cniVersion": "0.3.1",
      "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
      ]
    }"#;

    #[test]
    fn chains_last_once_and_unchains_to_the_original() {
        let original: Value = serde_json::from_str(FLANNEL).unwrap();
        let once = chain(&original, &entry()).unwrap();
        let types: Vec<&str> = once["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["flannel", "portmap", PLUGIN_TYPE]);
        let mut newer = entry();
        newer["timeoutSeconds"] = json!(5);
        let twice = chain(&once, &newer).unwrap();
        assert_eq!(twice["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(
            twice["plugins"][2]["timeoutSeconds"], 5,
            "re-install updates"
        );
        assert_eq!(unchain(&twice).unwrap(), original);
        assert!(unchain(&original).is_none());
    }

    #[test]
    fn a_single_plugin_configuration_becomes_a_list() {
        let bridge =
            json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge", "bridge": "cni0"});
        let chained = chain(&bridge, &entry()).unwrap();
        assert_eq!(chained["name"], "net");
        assert_eq!(chained["cniVersion"], "1.0.0");
        assert_eq!(
            chained["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(chained["plugins"][1]["type"], PLUGIN_TYPE);
    }

    #[test]
    fn refuses_what_it_cannot_chain_onto() {
        for bad in [
            json!([]),
            json!({"name": "x"}),
            json!({"plugins": {}}),
            json!({"plugins": [{"type": PLUGIN_TYPE}]}),
        ] {
            assert!(chain(&bad, &entry()).is_err(), "{bad}");
        }
    }

    #[test]
    fn installs_into_the_first_configuration_and_uninstalls() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let binary = dir.path().join("veil-cni-build");
        fs::write(&binary, b"\x7fELF plugin").unwrap();
        assert!(
            install(&binary, &bin, &conf, &entry()).unwrap().is_none(),
            "no network yet"
        );

        fs::write(conf.join("10-flannel.conflist"), FLANNEL).unwrap();
        fs::write(
            conf.join("99-loopback.conf"),
            r#"{"cniVersion":"0.3.1","name":"lo","type":"loopback"}"#,
        )
        .unwrap();
        fs::write(conf.join("README"), "not a config").unwrap();
        let written = install(&binary, &bin, &conf, &entry()).unwrap().unwrap();
        assert_eq!(written, conf.join("10-flannel.conflist"));
        assert_eq!(fs::read(bin.join(PLUGIN_TYPE)).unwrap(), b"\x7fELF plugin");
        let chained: Value = serde_json::from_slice(&fs::read(&written).unwrap()).unwrap();
        assert_eq!(chained["plugins"][2]["type"], PLUGIN_TYPE);
        let other = fs::read_to_string(conf.join("99-loopback.conf")).unwrap();
        assert!(
            !other.contains(PLUGIN_TYPE),
            "only the primary configuration is chained"
        );

        assert_eq!(uninstall(&bin, &conf).unwrap(), vec![written.clone()]);
        assert!(!bin.join(PLUGIN_TYPE).exists());
        let back: Value = serde_json::from_slice(&fs::read(&written).unwrap()).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(FLANNEL).unwrap());
        assert!(uninstall(&bin, &conf).unwrap().is_empty(), "idempotent");
    }

    #[test]
    fn a_primary_conf_file_is_replaced_by_a_list_and_broken_json_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("b");
        fs::write(&binary, b"x").unwrap();
        fs::write(
            dir.path().join("10-bridge.conf"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
        )
        .unwrap();
        let written = install(&binary, dir.path(), dir.path(), &entry())
            .unwrap()
            .unwrap();
        assert_eq!(written, dir.path().join("10-bridge.conflist"));
        assert!(!dir.path().join("10-bridge.conf").exists());

        fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        let err = install(&binary, dir.path(), dir.path(), &entry()).unwrap_err();
        assert!(
            err.to_string().contains("05-broken.conflist: not JSON"),
            "{err}"
        );
    }
}
