//! Who may get a certificate for which identity.
//!
//! A caller may always get its own identity. A trusted node agent (ztunnel) may also get the identity
//! of a workload, but only of one that runs on the agent's own node: a compromised node can then
//! impersonate only the workloads it already hosts. Where placement cannot be determined the request
//! is refused.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local;
use veil_mesh::identity::{BoxFuture, Identity};

use crate::authn::Caller;

/// Where workloads run: the fact impersonation is checked against.
pub trait Placement: Send + Sync + std::fmt::Debug + 'static {
    /// Whether a workload with `identity` runs on `node`.
    fn runs_on<'a>(
        &'a self,
        identity: &'a Identity,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// Why a request was not authorized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// The identity is in another trust domain than the CA's.
    #[error("{identity} is not in this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: Identity,
        trust_domain: String,
    },
    /// The caller asked for someone else's identity without being a trusted node agent.
    #[error("{caller} may only request its own identity, not {requested}")]
    NotNodeAgent {
        caller: Identity,
        requested: Identity,
    },
    /// A node agent's credentials carry no node.
    #[error("node agent {caller} has no node bound to its credentials")]
    NoNode { caller: Identity },
    /// No workload with that identity runs on the agent's node.
    #[error("no workload with identity {requested} runs on node {node}")]
    NotOnNode { requested: Identity, node: String },
    /// Placement could not be determined; refused rather than guessed.
    #[error("cannot determine placement: {0}")]
    PlacementUnavailable(String),
    /// The identity is one of the control plane's, which no node agent may act for.
    #[error(
        "{requested} belongs to the control plane's namespace: only its own pods may request it"
    )]
    ControlPlane { requested: Identity },
}

/// The authorization rules.
#[derive(Debug)]
pub struct Authorizer {
    trust_domain: String,
    node_agents: HashSet<Identity>,
    placement: Arc<dyn Placement>,
    /// Namespaces no node agent may act for.
    protected: HashSet<String>,
}

impl Authorizer {
    /// Rules for a CA of `trust_domain` trusting `node_agents` to act for workloads on their node.
    pub fn new(
        trust_domain: String,
        node_agents: impl IntoIterator<Item = Identity>,
        placement: Arc<dyn Placement>,
    ) -> Self {
        Self {
            trust_domain,
            node_agents: node_agents.into_iter().collect(),
            placement,
            protected: HashSet::new(),
        }
    }

    /// Refuses node agents every identity of `namespaces` (the control plane's): a node that runs
    /// a control-plane pod must not get its identity — veil's ztunnels trust the controller's to
    /// tell them the mesh. Only the pod itself may request it.
    pub fn with_protected_namespaces(
        mut self,
        namespaces: impl IntoIterator<Item = String>,
    ) -> Self {
        self.protected.extend(namespaces);
        self
    }

    /// Decides whether `caller` may get a certificate for `requested`.
    pub async fn authorize(&self, caller: &Caller, requested: &Identity) -> Result<(), AuthzError> {
        if requested.trust_domain() != self.trust_domain {
            return Err(AuthzError::ForeignTrustDomain {
                identity: requested.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if *requested == caller.identity {
            return Ok(());
        }
        if !self.node_agents.contains(&caller.identity) {
            return Err(AuthzError::NotNodeAgent {
                caller: caller.identity.clone(),
                requested: requested.clone(),
            });
        }
        if self.protected.contains(requested.namespace()) {
            return Err(AuthzError::ControlPlane {
                requested: requested.clone(),
            });
        }
        let node = caller.node.as_deref().ok_or_else(|| AuthzError::NoNode {
            caller: caller.identity.clone(),
        })?;
        match self.placement.runs_on(requested, node).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthzError::NotOnNode {
                requested: requested.clone(),
                node: node.to_owned(),
            }),
            Err(reason) => Err(AuthzError::PlacementUnavailable(reason)),
        }
    }
}

/// Local mode: a fixed map of node → identities of the workloads on it.
///
/// ```yaml
/// nodes:
///   node-a:
///     - spiffe://cluster.local/ns/production/sa/account-service
/// ```
#[derive(Debug, Default)]
pub struct StaticPlacement {
    nodes: HashMap<String, HashSet<Identity>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementFile {
    nodes: HashMap<String, Vec<Identity>>,
}

impl StaticPlacement {
    /// Builds a placement from (node, identity) pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, Identity)>) -> Self {
        let mut nodes: HashMap<String, HashSet<Identity>> = HashMap::new();
        for (node, identity) in pairs {
            nodes.entry(node).or_default().insert(identity);
        }
        Self { nodes }
    }

    /// Reads a placement file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file: PlacementFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::new(file.nodes.into_iter().flat_map(|(node, ids)| {
            ids.into_iter().map(move |id| (node.clone(), id))
        })))
    }
}

impl Placement for StaticPlacement {
    fn runs_on<'a>(
        &'a self,
        identity: &'a Identity,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        let found = self
            .nodes
            .get(node)
            .is_some_and(|ids| ids.contains(identity));
        Box::pin(async move { Ok(found) })
    }
}

/// Local mode: placement taken from the mesh description ztunnel reads (each enrolled workload's
/// node and identity), re-read when the file changes. A file that stops parsing leaves the last good
/// placement in force; with none ever read, requests are refused.
#[derive(Debug)]
pub struct MeshFilePlacement {
    path: PathBuf,
    settings: MeshSettings,
    cache: Mutex<Option<(Vec<u8>, Arc<StaticPlacement>)>>,
}

impl MeshFilePlacement {
    /// Placement from the mesh file at `path`.
    pub fn new(path: PathBuf, settings: MeshSettings) -> Self {
        Self {
            path,
            settings,
            cache: Mutex::new(None),
        }
    }

    fn current(&self) -> Result<Arc<StaticPlacement>, String> {
        let bytes =
            std::fs::read(&self.path).map_err(|e| format!("reading {}: {e}", self.path.display()));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match (bytes, cache.as_ref()) {
            (Ok(bytes), Some((seen, placement))) if *seen == bytes => Ok(placement.clone()),
            (Ok(bytes), last) => {
                match local::parse(&String::from_utf8_lossy(&bytes), &self.settings) {
                    Ok(state) => {
                        let placement = Arc::new(StaticPlacement::new(
                            state
                                .workloads()
                                .into_iter()
                                .filter(|w| w.enrolled)
                                .map(|w| (w.node.to_string(), w.identity.clone())),
                        ));
                        *cache = Some((bytes, placement.clone()));
                        Ok(placement)
                    }
                    Err(e) => last.map(|(_, p)| p.clone()).ok_or_else(|| e.to_string()),
                }
            }
            (Err(_), Some((_, placement))) => Ok(placement.clone()),
            (Err(e), None) => Err(e),
        }
    }
}

impl Placement for MeshFilePlacement {
    fn runs_on<'a>(
        &'a self,
        identity: &'a Identity,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        let result = self.current();
        Box::pin(async move { result?.runs_on(identity, node).await })
    }
}

#[cfg(test)]
mod tests;
