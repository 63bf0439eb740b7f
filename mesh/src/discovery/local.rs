//! The local source: the mesh described in one YAML file, watched and re-applied when it changes.
//! Used by the demo, the tests, and hosts without Kubernetes. A file that fails validation is
//! refused whole with an error naming the object and field; the last good state stays in force.
//!
//! ```yaml
//! workloads:
//!   - name: account-service-0
//!     namespace: production
//!     serviceAccount: account-service
//!     node: node-a
//!     ips: [10.1.0.10]
//!     netns: /var/run/netns/pod-account        # pods on this node: where to capture
//!     labels: {app: account-service}
//! services:
//!   - name: account-service
//!     namespace: production
//!     vips: [10.96.0.10]
//!     ports: [{port: 80, targetPort: 8080}]
//!     selector: {app: account-service}
//! policies:                                     # Kubernetes objects, as `kubectl apply` takes them
//!   - apiVersion: security.veil.dev/v1
//!     kind: AuthorizationPolicy
//!     metadata: {name: allow-prod, namespace: user-data}
//!     spec: {rules: [{from: [{source: {namespaces: [production]}}]}]}
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{error, info};
use veil_crd::API_VERSION;
use veil_crd::authorization::AuthorizationPolicySpec;
use veil_crd::peer_authentication::PeerAuthenticationSpec;

use super::model::{Service, ServicePort, Workload};
use super::state::{ConfigError, MeshSettings, MeshState};
use crate::identity::Identity;
use crate::policy::{compile_authz, compile_peer_auth};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LocalFile {
    // `Option`: a key with nothing under it (`services:`) reads as null, meaning none.
    #[serde(default)]
    workloads: Option<Vec<WorkloadEntry>>,
    #[serde(default)]
    services: Option<Vec<ServiceEntry>>,
    #[serde(default)]
    policies: Option<Vec<PolicyObject>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadEntry {
    #[serde(default)]
    uid: Option<String>,
    name: String,
    namespace: String,
    service_account: String,
    node: String,
    ips: Vec<IpAddr>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    netns: Option<PathBuf>,
    #[serde(default = "yes")]
    enrolled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceEntry {
    name: String,
    namespace: String,
    vips: Vec<IpAddr>,
    ports: Vec<PortEntry>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortEntry {
    port: u16,
    #[serde(default)]
    target_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyObject {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: String,
}

/// Parses and validates a local mesh description.
pub fn parse(text: &str, settings: &MeshSettings) -> Result<MeshState, ConfigError> {
    let file: LocalFile =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let workloads = file
        .workloads
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, w)| workload(i, w, settings))
        .collect::<Result<_, _>>()?;
    let services = file
        .services
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, s)| service(i, s))
        .collect::<Result<_, _>>()?;
    let mut authz = Vec::new();
    let mut peer_auth = Vec::new();
    for (i, object) in file.policies.unwrap_or_default().into_iter().enumerate() {
        let (ns, name) = (&object.metadata.namespace, &object.metadata.name);
        let at = format!("policies[{i}] ({} {ns}/{name})", object.kind);
        if object.api_version != API_VERSION {
            return Err(ConfigError::invalid(
                at,
                format!(
                    "apiVersion {:?}: expected {API_VERSION}",
                    object.api_version
                ),
            ));
        }
        match object.kind.as_str() {
            "AuthorizationPolicy" => {
                let spec: AuthorizationPolicySpec = spec_of(&object.spec, &at)?;
                authz.push(compile_authz(ns, name, &spec)?);
            }
            "PeerAuthentication" => {
                let spec: PeerAuthenticationSpec = spec_of(&object.spec, &at)?;
                peer_auth.push(compile_peer_auth(ns, name, &spec)?);
            }
            other => {
                return Err(ConfigError::invalid(
                    at,
                    format!("unknown kind {other:?} (AuthorizationPolicy or PeerAuthentication)"),
                ));
            }
        }
    }
    MeshState::build(settings.clone(), workloads, services, authz, peer_auth)
}

fn spec_of<T: serde::de::DeserializeOwned + Default>(
    spec: &serde_json::Value,
    at: &str,
) -> Result<T, ConfigError> {
    if spec.is_null() {
        return Ok(T::default());
    }
    T::deserialize(spec).map_err(|e| ConfigError::invalid(format!("{at}: spec"), e.to_string()))
}

fn workload(i: usize, w: WorkloadEntry, settings: &MeshSettings) -> Result<Workload, ConfigError> {
    let at = format!("workloads[{i}] ({}/{})", w.namespace, w.name);
    if w.name.is_empty() || w.node.is_empty() {
        return Err(ConfigError::invalid(at, "name and node must not be empty"));
    }
    if w.ips.is_empty() {
        return Err(ConfigError::invalid(
            at,
            "needs at least one address in ips",
        ));
    }
    let identity = Identity::new(&settings.trust_domain, &w.namespace, &w.service_account)
        .map_err(|e| ConfigError::invalid(&at, e.to_string()))?;
    Ok(Workload {
        uid: w
            .uid
            .unwrap_or_else(|| format!("{}/{}", w.namespace, w.name)),
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account,
        node: w.node,
        ips: w.ips,
        labels: w.labels,
        netns: w.netns,
        enrolled: w.enrolled,
        identity,
        policies: Default::default(),
    })
}

fn service(i: usize, s: ServiceEntry) -> Result<Service, ConfigError> {
    let at = format!("services[{i}] ({}/{})", s.namespace, s.name);
    if s.vips.is_empty() {
        return Err(ConfigError::invalid(
            at,
            "needs at least one address in vips",
        ));
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    for (j, p) in s.ports.iter().enumerate() {
        let target_port = p.target_port.unwrap_or(p.port);
        if p.port == 0 || target_port == 0 {
            return Err(ConfigError::invalid(format!("{at}: ports[{j}]"), "port 0"));
        }
        if ports.iter().any(|q: &ServicePort| q.port == p.port) {
            return Err(ConfigError::invalid(
                format!("{at}: ports[{j}]"),
                format!("port {} listed twice", p.port),
            ));
        }
        ports.push(ServicePort {
            port: p.port,
            target_port,
        });
    }
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        vips: s.vips,
        ports,
        selector: s.selector,
        endpoints: Vec::new(),
    })
}

/// The local file as a source: the content last applied, and the watch that re-applies changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    settings: MeshSettings,
    applied: Vec<u8>,
}

impl FileSource {
    /// Reads and validates `path`; the content read is what later changes are compared against.
    pub fn load(path: &Path, settings: MeshSettings) -> Result<(Self, MeshState), ConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::Parse(format!("reading {}: {e}", path.display())))?;
        let state = parse(&String::from_utf8_lossy(&bytes), &settings).map_err(|e| match e {
            ConfigError::Parse(reason) => {
                ConfigError::Parse(format!("{}: {reason}", path.display()))
            }
            other => other,
        })?;
        let source = Self {
            path: path.to_owned(),
            settings,
            applied: bytes,
        };
        Ok((source, state))
    }

    /// Polls the file every `interval`; each changed, valid content is published to `tx`. Invalid
    /// content is logged and reported to `on_reject`, and the last good state stays published.
    pub async fn watch(
        mut self,
        interval: Duration,
        tx: watch::Sender<Arc<MeshState>>,
        on_reject: impl Fn(&ConfigError) + Send,
    ) {
        let mut refused: Option<Vec<u8>> = None;
        loop {
            tokio::time::sleep(interval).await;
            let Ok(current) = std::fs::read(&self.path) else {
                continue;
            };
            if current == self.applied || refused.as_ref() == Some(&current) {
                continue;
            }
            match parse(&String::from_utf8_lossy(&current), &self.settings) {
                Ok(state) => {
                    info!(path = %self.path.display(), summary = ?state.summary(), "applied new mesh configuration");
                    tx.send_replace(Arc::new(state));
                    self.applied = current;
                    refused = None;
                }
                Err(e) => {
                    error!(path = %self.path.display(), error = %e, "refused mesh configuration; keeping the last good one");
                    on_reject(&e);
                    refused = Some(current);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
