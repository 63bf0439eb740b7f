//! Pods this node knows from the node itself rather than from the mesh source: what the CNI plugin
//! handed over (network namespace, addresses) and namespaces found by scanning for pods that were
//! already running. Changes wake the enrolment loop.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::watch;

/// A pod as the CNI plugin described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniPod {
    /// Its network namespace.
    pub netns: PathBuf,
    /// Its addresses (known to the CNI before the API has them).
    pub ips: Vec<IpAddr>,
}

/// The registry, keyed by `namespace/name`.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<String, CniPod>,
    /// Pods whose CNI DEL ran: going away, never to be captured again under this name until the
    /// next ADD (a scan might still find their namespace while it is torn down).
    released: HashSet<String>,
    /// Pods the enrolment loop holds captured right now.
    captured: HashSet<String>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a pod handed over by the CNI plugin (ADD).
    pub fn insert(&self, key: String, pod: CniPod) {
        let mut inner = self.lock();
        inner.released.remove(&key);
        inner.pods.insert(key, pod);
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Forgets a pod whose network the CNI plugin tore down (DEL).
    pub fn remove(&self, key: &str) {
        let mut inner = self.lock();
        inner.pods.remove(key);
        inner.released.insert(key.to_owned());
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the pod's CNI DEL has run (and no ADD since).
    pub fn released(&self, key: &str) -> bool {
        self.lock().released.contains(key)
    }

    /// Records which pods are captured (by the enrolment loop, after each pass; not a change).
    pub fn set_captured(&self, keys: HashSet<String>) {
        self.lock().captured = keys;
    }

    /// Whether the pod under `key` is captured.
    pub fn is_captured(&self, key: &str) -> bool {
        self.lock().captured.contains(key)
    }

    /// The pod under `key`.
    pub fn get(&self, key: &str) -> Option<CniPod> {
        self.lock().pods.get(key).cloned()
    }

    /// Every pod.
    pub fn all(&self) -> HashMap<String, CniPod> {
        self.lock().pods.clone()
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
