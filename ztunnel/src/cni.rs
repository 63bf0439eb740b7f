//! CNI enrolment: the `veil-cni` plugin (chained after the cluster's network plugin) hands each new
//! pod of an ambient namespace to the node's ztunnel and returns only once ztunnel has captured it,
//! so no packet of an enrolled pod leaves uncaptured. When ztunnel cannot be reached the ADD fails
//! and the kubelet retries it. Pods of other namespaces never wait for ztunnel.
//!
//! The plugin and ztunnel speak one JSON line each way over a unix socket.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod cleanup;
pub mod install;
pub mod plugin;
pub mod repair;
pub mod server;

/// Where ztunnel listens for the plugin.
pub const DEFAULT_SOCKET: &str = "/var/run/veil/cni.sock";
/// Where ztunnel lists the namespaces whose pods must be captured.
/// It is kept across reboots: after one, pods of ambient namespaces must keep failing to start
/// until ztunnel is back, not start uncaptured because the list is gone.
pub const DEFAULT_AMBIENT_FILE: &str = "/var/lib/veil/ambient-namespaces.json";

/// What the plugin asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `ADD` or `DEL`.
    pub command: Command,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid, when the runtime passes it.
    #[serde(default)]
    pub uid: Option<String>,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The addresses the network plugin gave the pod.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// A CNI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// A pod's network is being set up.
    Add,
    /// A pod's network is being torn down.
    Del,
}

/// ztunnel's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// Whether the pod is now captured (ADD) or released (DEL).
    pub captured: bool,
    /// Why not, when it should have been.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `namespace/name`, how CNI requests and workloads meet.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}
