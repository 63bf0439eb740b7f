//! The `veil-cni` plugin's logic: read what the container runtime passes (CNI_* environment and the
//! network configuration on stdin), decide, and talk to ztunnel. Blocking std I/O: the plugin runs
//! once per pod and exits.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Command, DEFAULT_AMBIENT_FILE, DEFAULT_SOCKET, Reply, Request};

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The plugin's part of the network configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// CNI version of the configuration.
    pub cni_version: String,
    /// Result of the previous plugin in the chain, passed on unchanged.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// ztunnel's socket.
    #[serde(default = "default_socket")]
    pub ztunnel_socket: PathBuf,
    /// ztunnel's list of ambient namespaces.
    #[serde(default = "default_ambient_file")]
    pub ambient_file: PathBuf,
    /// How long to wait for ztunnel's answer.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Namespaces whose pods never involve ztunnel, whatever the list says: the one ztunnel itself
    /// runs in (its pods must start for anything else to) and the cluster's own.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}

fn default_ambient_file() -> PathBuf {
    DEFAULT_AMBIENT_FILE.into()
}

fn default_timeout() -> u64 {
    10
}

/// A CNI error result (printed on stdout, with a non-zero exit).
#[derive(Debug, PartialEq, Eq)]
pub struct CniError {
    /// CNI error code: 11+ are plugin-specific; 4 is invalid configuration, 7 invalid environment.
    pub code: u32,
    /// What went wrong.
    pub msg: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// The JSON the runtime expects.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg})
    }
}

/// `K8S_POD_NAMESPACE=…;K8S_POD_NAME=…` → a map.
pub fn parse_cni_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The pod addresses in a CNI result (both the 0.4 and 1.0 layouts list `ips[].address` as CIDRs).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect()
}

/// The namespaces whose pods must be captured, as ztunnel last wrote them.
pub fn ambient_namespaces(file: &std::path::Path) -> std::io::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(file)?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Runs one invocation: `env` as the CNI_* variables, `stdin` the configuration. Returns what to
/// print on success.
pub fn run(env: &BTreeMap<String, String>, stdin: &str) -> Result<Value, (String, CniError)> {
    let var = |k: &str| env.get(k).map(String::as_str).unwrap_or_default();
    let command = var("CNI_COMMAND");
    if command == "VERSION" {
        return Ok(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        (
            "1.0.0".to_owned(),
            CniError::new(4, format!("invalid network configuration: {e}")),
        )
    })?;
    let version = conf.cni_version.clone();
    let fail = |e: CniError| (version.clone(), e);
    let passthrough = || {
        conf.prev_result
            .clone()
            .unwrap_or_else(|| json!({"cniVersion": version}))
    };
    let args = parse_cni_args(var("CNI_ARGS"));
    let (Some(namespace), Some(name)) = (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME"))
    else {
        // Not a Kubernetes pod: nothing for a mesh to do.
        return Ok(passthrough());
    };
    if conf.exclude_namespaces.contains(namespace) {
        return Ok(passthrough());
    }
    match command {
        "ADD" => {
            let Some(prev) = &conf.prev_result else {
                return Err(fail(CniError::new(
                    4,
                    "veil-cni must be chained after the network plugin (no prevResult)",
                )));
            };
            // A namespace ztunnel has not listed is not ambient: such pods never wait for ztunnel.
            // No list at all means ztunnel never ran here: enrolment cannot be decided, fail.
            let ambient = ambient_namespaces(&conf.ambient_file).map_err(|e| {
                fail(CniError::new(
                    11,
                    format!(
                        "cannot read {}: {e} (is veil-ztunnel running on this node?)",
                        conf.ambient_file.display()
                    ),
                ))
            })?;
            if !ambient.contains(namespace) {
                return Ok(passthrough());
            }
            let request = Request {
                command: Command::Add,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: args.get("K8S_POD_UID").cloned(),
                netns: PathBuf::from(var("CNI_NETNS")),
                ips: result_ips(prev),
            };
            let reply = ask(&conf, &request).map_err(|e| fail(CniError::new(11, e)))?;
            match reply.error {
                Some(error) => Err(fail(CniError::new(
                    12,
                    format!("ztunnel could not capture {namespace}/{name}: {error}"),
                ))),
                None => Ok(passthrough()),
            }
        }
        "DEL" => {
            // DEL must succeed even when ztunnel is away: a gone ztunnel holds nothing to release.
            let request = Request {
                command: Command::Del,
                namespace: namespace.clone(),
                name: name.clone(),
                uid: args.get("K8S_POD_UID").cloned(),
                netns: PathBuf::from(var("CNI_NETNS")),
                ips: Vec::new(),
            };
            let _ = ask(&conf, &request);
            Ok(json!({"cniVersion": version}))
        }
        "CHECK" | "GC" | "STATUS" => Ok(json!({"cniVersion": version})),
        other => Err(fail(CniError::new(
            7,
            format!("unknown CNI_COMMAND {other:?}"),
        ))),
    }
}

/// One request, one reply, within the configured timeout.
fn ask(conf: &NetConf, request: &Request) -> Result<Reply, String> {
    let timeout = Duration::from_secs(conf.timeout_seconds.max(1));
    let socket = &conf.ztunnel_socket;
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach veil-ztunnel at {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("writing to veil-ztunnel: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from veil-ztunnel within {timeout:?}: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer from veil-ztunnel: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_runtime_passes() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=user-data;K8S_POD_NAME=profile-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234",
        );
        assert_eq!(args["K8S_POD_NAMESPACE"], "user-data");
        assert_eq!(args["K8S_POD_UID"], "1234");
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}, {"address": "fd00::5/64"}]});
        assert_eq!(
            result_ips(&prev),
            vec![
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn version_and_non_pod_and_configuration_errors() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let version = run(&env(&[("CNI_COMMAND", "VERSION")]), "").unwrap();
        assert!(
            version["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "1.0.0")
        );
        let conf = r#"{"cniVersion":"1.0.0","name":"k8s","type":"veil-cni","prevResult":{"cniVersion":"1.0.0","ips":[]}}"#;
        let out = run(
            &env(&[("CNI_COMMAND", "ADD"), ("CNI_ARGS", "IgnoreUnknown=1")]),
            conf,
        )
        .unwrap();
        assert_eq!(out["cniVersion"], "1.0.0", "not a pod: passed through");
        let (_, err) = run(&env(&[("CNI_COMMAND", "ADD")]), "{").unwrap_err();
        assert_eq!(err.code, 4);
        let unchained = r#"{"cniVersion":"1.0.0","name":"k8s","type":"veil-cni"}"#;
        let (_, err) = run(
            &env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"),
            ]),
            unchained,
        )
        .unwrap_err();
        assert!(err.msg.contains("chained"), "{}", err.msg);
    }
}
