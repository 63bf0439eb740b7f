//! Which policies apply to a workload, found through indexes rather than a scan, so that the set a
//! connection is checked against costs the same with 10 or 10,000 policies in the mesh.
//!
//! Istio's scoping: a policy without selector applies to its namespace (to the whole mesh in the root
//! namespace); a selector picks workloads of its namespace (of every namespace in the root namespace);
//! `targetRefs` policies apply to services and waypoints and are enforced by the waypoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::compile::{AuthzPolicy, Scope, Target};

/// Compiled policies, indexed by what they select.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    root_namespace: String,
    namespace_wide: HashMap<String, Vec<Arc<AuthzPolicy>>>,
    /// Selector policies under their first label pair, keyed `(namespace, key, value)`.
    by_label: HashMap<(String, String, String), Vec<Arc<AuthzPolicy>>>,
    by_target: HashMap<(String, Target), Vec<Arc<AuthzPolicy>>>,
    all: Vec<Arc<AuthzPolicy>>,
}

impl PolicyIndex {
    /// Indexes `policies`; `root_namespace` holds the mesh-wide ones.
    pub fn new(root_namespace: &str, mut policies: Vec<Arc<AuthzPolicy>>) -> Self {
        // A stable order: decisions and the policy they name do not depend on input order.
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        let mut index = Self {
            root_namespace: root_namespace.to_owned(),
            ..Self::default()
        };
        for policy in &policies {
            let ns = policy.id.namespace.to_string();
            match &policy.scope {
                Scope::Namespace => index
                    .namespace_wide
                    .entry(ns)
                    .or_default()
                    .push(policy.clone()),
                Scope::Mesh => index
                    .namespace_wide
                    .entry(root_namespace.to_owned())
                    .or_default()
                    .push(policy.clone()),
                // Named by the workloads it applies to: nothing to index.
                Scope::Named => {}
                Scope::Selector(labels) => {
                    if let Some((k, v)) = labels.iter().next() {
                        let key = (ns, k.clone(), v.clone());
                        index.by_label.entry(key).or_default().push(policy.clone());
                    }
                }
                Scope::Targets(targets) => {
                    for target in targets {
                        let key = (ns.clone(), target.clone());
                        index.by_target.entry(key).or_default().push(policy.clone());
                    }
                }
            }
        }
        index.all = policies;
        index
    }

    /// The policies that apply to a workload of `namespace` carrying `labels`.
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<Arc<AuthzPolicy>> {
        let mut out: Vec<Arc<AuthzPolicy>> = Vec::new();
        let mut push = |p: &Arc<AuthzPolicy>| {
            if !out.iter().any(|q| Arc::ptr_eq(p, q)) {
                out.push(p.clone());
            }
        };
        for ns in self.scopes(namespace) {
            self.namespace_wide
                .get(ns)
                .into_iter()
                .flatten()
                .for_each(&mut push);
            for (k, v) in labels {
                let key = (ns.to_owned(), k.clone(), v.clone());
                for policy in self.by_label.get(&key).into_iter().flatten() {
                    if let Scope::Selector(selector) = &policy.scope
                        && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    {
                        push(policy);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The policies attached through `targetRefs` to `target` in `namespace`.
    pub fn for_target(&self, namespace: &str, target: &Target) -> Vec<Arc<AuthzPolicy>> {
        self.by_target
            .get(&(namespace.to_owned(), target.clone()))
            .cloned()
            .unwrap_or_default()
    }

    /// Every policy, in a stable order.
    pub fn all(&self) -> &[Arc<AuthzPolicy>] {
        &self.all
    }

    /// The namespace's own scope, then the root namespace's (once, if they are the same).
    fn scopes<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a str> {
        let root = (namespace != self.root_namespace).then_some(self.root_namespace.as_str());
        std::iter::once(namespace).chain(root)
    }
}
