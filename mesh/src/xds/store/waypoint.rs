//! What a waypoint's store holds besides Istio's resources: AuthorizationPolicies as written
//! ([`Kind::Policy`]) and which of them each workload behind a waypoint is subject to
//! ([`Kind::Binding`]). A waypoint's mesh is checked against those, never against Istio's L4
//! Authorizations (it does not subscribe to them). Everything fails closed:
//!
//! - a policy that cannot be decoded or compiled denies everything in its namespace (the whole
//!   mesh, in the root namespace) until a valid version arrives;
//! - a policy a binding or a workload names that is not here admits nothing for that workload;
//! - a workload behind a waypoint whose binding has not arrived, or was refused, admits nothing;
//! - so does one whose binding was made with other policies than those held (a policy and its
//!   binding travel apart: applying one's rules with the other's selection could admit what
//!   neither moment does), until the two agree.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use veil_crd::authorization::AuthorizationPolicySpec;

use super::super::Kind;
use super::super::proto::discovery::Resource;
use super::super::proto::veil::{AuthorizationPolicy, PolicyBinding};
use super::super::resources::{DENY_ALL, WAYPOINT_ONLY_PREFIX, workload_name_namespace};
use super::super::waypoint::policies_digest;
use super::Policy;
use super::entries::decode;
use crate::discovery::{ConfigError, MeshSettings, Workload};
use crate::policy::{AuthzPolicy, PolicyId, PolicyIndex, Scope, compile_authz, deny_everything};

/// A binding as received: its version and the policies it names with the digest of those it was
/// made with, or why it was refused.
#[derive(Debug)]
struct Binding {
    version: String,
    policies: Result<(Vec<String>, String), String>,
}

/// Policies as written and bindings, by name.
#[derive(Debug, Default)]
pub(super) struct Held {
    policies: HashMap<String, Policy>,
    bindings: HashMap<String, Binding>,
}

impl Held {
    /// The versions held of `kind` (one of the two kinds held here).
    pub(super) fn versions(&self, kind: Kind) -> HashMap<String, String> {
        match kind {
            Kind::Policy => self
                .policies
                .iter()
                .map(|(name, p)| (name.clone(), p.version.clone()))
                .collect(),
            _ => self
                .bindings
                .iter()
                .map(|(name, b)| (name.clone(), b.version.clone()))
                .collect(),
        }
    }

    pub(super) fn remove(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Policy => drop(self.policies.remove(name)),
            _ => drop(self.bindings.remove(name)),
        }
    }

    /// Applies one resource of `kind`; the reason it was refused, if it was.
    pub(super) fn apply(
        &mut self,
        kind: Kind,
        resource: &Resource,
        settings: &MeshSettings,
    ) -> Option<String> {
        let name = &resource.name;
        let version = resource.version.clone();
        match kind {
            Kind::Policy => {
                let (policy, refused) = match decode::<AuthorizationPolicy>(kind, resource)
                    .and_then(|p| compile(name, &p))
                {
                    Ok(policy) => (policy, None),
                    Err(reason) => (refused_policy(name, settings), Some(reason)),
                };
                let policy = Arc::new(policy);
                let held = Policy {
                    version,
                    policy,
                    refused: refused.clone(),
                };
                self.policies.insert(name.clone(), held);
                refused
            }
            _ => {
                let policies = decode::<PolicyBinding>(kind, resource)
                    .and_then(|b| check_binding(name, b, settings));
                let refused = policies.as_ref().err().cloned();
                self.bindings
                    .insert(name.clone(), Binding { version, policies });
                refused
            }
        }
    }

    /// Reports what was refused.
    pub(super) fn rejected(&self, out: &mut Vec<ConfigError>) {
        for (name, p) in &self.policies {
            if let Some(reason) = &p.refused {
                out.push(ConfigError::invalid(
                    format!("policy {name}"),
                    format!("{reason}; everything in its namespace is denied until a valid version arrives"),
                ));
            }
        }
        for (name, b) in &self.bindings {
            if let Err(reason) = &b.policies {
                out.push(ConfigError::invalid(
                    format!("binding {name}"),
                    format!("{reason}; its workload admits nothing until a valid version arrives"),
                ));
            }
        }
    }

    /// The policies, and which apply to whom.
    pub(super) fn view(&self, settings: &MeshSettings) -> View<'_> {
        let all: Vec<Arc<AuthzPolicy>> = self.policies.values().map(|p| p.policy.clone()).collect();
        // What the policies held of each namespace a binding is for give (one or two).
        let mut digests: HashMap<&str, String> = HashMap::new();
        for name in self.bindings.keys() {
            if let Some(namespace) = workload_name_namespace(name) {
                digests.entry(namespace).or_insert_with(|| {
                    let held = self.policies.iter();
                    let held = held.map(|(n, p)| (n.as_str(), p.version.as_str()));
                    policies_digest(namespace, &settings.root_namespace, held)
                });
            }
        }
        View {
            held: self,
            digests,
            index: PolicyIndex::new(&settings.root_namespace, all.clone()),
            all,
            deny: Arc::new(deny_everything(
                PolicyId::new("veil", "unknown-policies"),
                Scope::Named,
            )),
        }
    }
}

/// The policies a waypoint's mesh is built with.
pub(super) struct View<'a> {
    held: &'a Held,
    /// The digest of the policies held, per namespace of a binding.
    digests: HashMap<&'a str, String>,
    index: PolicyIndex,
    /// Every policy held.
    pub(super) all: Vec<Arc<AuthzPolicy>>,
    /// What stands in for policies that are not known.
    deny: Arc<AuthzPolicy>,
}

impl View<'_> {
    /// The policies that apply to `workload`, which names `named` (its Istio Authorizations): the
    /// namespace-wide and mesh-wide ones, and those its binding names (those it names itself when
    /// it is behind no waypoint).
    pub(super) fn applicable(
        &self,
        workload: &Workload,
        named: &[Arc<str>],
    ) -> Vec<Arc<AuthzPolicy>> {
        let mut out = self
            .index
            .for_workload(&workload.namespace, &BTreeMap::new());
        let by_name =
            |name: &str, out: &mut Vec<Arc<AuthzPolicy>>| match self.held.policies.get(name) {
                Some(p) => out.push(p.policy.clone()),
                None => out.push(self.deny.clone()),
            };
        match self.held.bindings.get(&*workload.uid) {
            Some(Binding {
                policies: Ok((names, digest)),
                ..
            }) if self.digests.get(&*workload.namespace) == Some(digest) => {
                names.iter().for_each(|n| by_name(n, &mut out))
            }
            // Refused, or made with other policies than those held: not current.
            Some(_) => out.push(self.deny.clone()),
            None => {
                for name in named {
                    let local = name.split_once('/').map_or(&**name, |(_, n)| n);
                    if local == DENY_ALL || local.starts_with(WAYPOINT_ONLY_PREFIX) {
                        // Admits nothing, or behind a waypoint and its binding not here yet.
                        out.push(self.deny.clone());
                    } else if !local.contains(':') {
                        by_name(name, &mut out);
                    }
                    // Other generated names are PeerAuthentication's: every peer of a waypoint
                    // has an identity.
                }
            }
        }
        out
    }
}

fn compile(name: &str, p: &AuthorizationPolicy) -> Result<AuthzPolicy, String> {
    if *name != format!("{}/{}", p.namespace, p.name) {
        return Err(format!(
            "named {name:?} but it is {}/{}",
            p.namespace, p.name
        ));
    }
    let spec: AuthorizationPolicySpec =
        serde_json::from_str(&p.spec).map_err(|e| format!("spec: {e}"))?;
    compile_authz(&p.namespace, &p.name, &spec).map_err(|e| e.to_string())
}

/// What stands in for a policy that was refused: everything in the namespace its name gives (the
/// whole mesh, in the root namespace) is denied.
fn refused_policy(name: &str, settings: &MeshSettings) -> AuthzPolicy {
    let (namespace, policy) = name.split_once('/').unwrap_or((name, ""));
    let scope = if namespace == settings.root_namespace {
        Scope::Mesh
    } else {
        Scope::Namespace
    };
    deny_everything(PolicyId::new(namespace, policy), scope)
}

/// The names a binding gives, when they can apply to its workload: policies of its namespace or
/// of the root namespace.
fn check_binding(
    name: &str,
    binding: PolicyBinding,
    settings: &MeshSettings,
) -> Result<(Vec<String>, String), String> {
    let namespace = workload_name_namespace(name)
        .ok_or_else(|| format!("{name:?} is not a workload's name"))?;
    for policy in &binding.policies {
        match policy.split_once('/') {
            Some((ns, n))
                if !n.is_empty() && (ns == namespace || ns == settings.root_namespace) => {}
            _ => {
                return Err(format!(
                    "names {policy:?}, not a policy of {namespace} or of the root namespace"
                ));
            }
        }
    }
    Ok((binding.policies, binding.policies_digest))
}
