//! What a waypoint receives from the control plane, and no more: the resources of its own
//! namespace (workloads, services, policies) and the policies of the root namespace, which apply
//! mesh-wide. Waypoints are of their namespace (a `useWaypoint` names a waypoint of the object's own
//! namespace), and a Service selects pods of its own namespace, so that is everything a waypoint
//! serves, the policies that apply to it and the endpoints behind it.
//!
//! A waypoint enforces policies as written, HTTP conditions and `targetRefs` included, which
//! Istio's L4 `Authorization` cannot carry: they travel as veil's [`Kind::Policy`], and which of
//! them select each workload behind a waypoint as [`Kind::Binding`] (Istio's workloads carry no
//! labels, and a workload behind a waypoint names only the generated policy that admits its
//! waypoint).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::proto::veil::{AuthorizationPolicy, PolicyBinding};
use super::resources::{ByName, CLUSTER_ID, Entry, Kind};
use crate::discovery::{MeshState, Workload};
use crate::identity::Identity;
use crate::policy::{AuthzPolicy, Scope};

/// Who a stream serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// A node's ztunnel (or any subscriber on the control plane's allow list): the whole mesh.
    Mesh,
    /// A waypoint: what namespace `namespace` needs, and the policies (as written) of `root`, which
    /// may apply there. Of the resource types, only those a waypoint needs ([`Self::serves`]).
    Waypoint {
        /// The waypoint's namespace.
        namespace: Arc<str>,
        /// The mesh's root namespace.
        root: Arc<str>,
    },
}

impl Audience {
    /// Whether resources of `kind` are served to this audience at all: a waypoint is sent policies
    /// as written, their bindings and Addresses; never Istio's Authorizations (the root namespace's
    /// generated ones name every waypoint of the mesh and its identity) nor enrolled namespaces.
    pub fn serves(&self, kind: Kind) -> bool {
        match self {
            Self::Mesh => true,
            Self::Waypoint { .. } => matches!(kind, Kind::Policy | Kind::Binding | Kind::Address),
        }
    }

    /// Whether the resource `name` of `kind` is for this audience.
    pub fn admits(&self, kind: Kind, name: &str) -> bool {
        match self {
            Self::Mesh => true,
            Self::Waypoint { namespace, root } => {
                self.serves(kind)
                    && match namespace_of(kind, name) {
                        Some(ns) => ns == &**namespace || (kind == Kind::Policy && ns == &**root),
                        None => false,
                    }
            }
        }
    }
}

/// The namespace of the resource veil names `name` (workloads `Kubernetes//Pod/<ns>/<name>`,
/// waypoints `Kubernetes//Waypoint/<ns>/<name>`, enrolled namespaces by their name, everything else
/// `<ns>/<name>`). `None` for a name veil does not give.
pub fn namespace_of(kind: Kind, name: &str) -> Option<&str> {
    if kind == Kind::Namespace {
        return Some(name);
    }
    let rest = name
        .strip_prefix(CLUSTER_ID)
        .and_then(|r| r.strip_prefix("//"))
        .and_then(|r| r.split_once('/'))
        .map_or(name, |(_, r)| r);
    let (namespace, _) = rest.split_once('/')?;
    (!namespace.is_empty()).then_some(namespace)
}

/// Every AuthorizationPolicy as written, by name (`<namespace>/<name>`).
pub(super) fn policies(state: &MeshState) -> ByName {
    state
        .authz_policies()
        .iter()
        .filter_map(|policy| Some((Arc::from(policy.id.to_string()), policy_as_written(policy)?)))
        .collect()
}

/// `policy` as written, when it was (read from an object, not received over xDS).
pub(super) fn policy_as_written(policy: &AuthzPolicy) -> Option<Entry> {
    let spec = policy.spec.as_ref()?;
    let message = AuthorizationPolicy {
        namespace: policy.id.namespace.to_string(),
        name: policy.id.name.to_string(),
        // A spec that was read from JSON or YAML serializes.
        spec: serde_json::to_string(&**spec).ok()?,
    };
    Some(Entry::new(&message))
}

/// The identities of the mesh's waypoints.
pub(super) fn identities(state: &MeshState) -> BTreeSet<Identity> {
    state
        .waypoints()
        .into_iter()
        .map(|w| w.identity.clone())
        .collect()
}

/// The digest of the policies (as written) of `namespace` and of `root`, given as `(name, version)`
/// in any order (see `PolicyBinding.policies_digest`): what a binding was made with, and what a
/// waypoint holds.
pub(crate) fn policies_digest<'a>(
    namespace: &str,
    root: &str,
    policies: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut lines: Vec<(&str, &str)> = policies
        .filter(|(name, _)| {
            name.split_once('/')
                .is_some_and(|(ns, _)| ns == namespace || ns == root)
        })
        .collect();
    lines.sort_unstable();
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, version) in lines {
        for part in [name, "\t", version, "\n"] {
            context.update(part.as_bytes());
        }
    }
    let digest = context.finish();
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digests of the policies being sent, per namespace, computed once per translation (each from
/// that namespace's policies and the root namespace's, found by range).
#[derive(Debug, Default)]
pub(super) struct Digests(HashMap<String, String>);

impl Digests {
    fn of(&mut self, policies: &ByName, namespace: &str, root: &str) -> String {
        self.0
            .entry(namespace.to_owned())
            .or_insert_with(|| {
                let mut held: Vec<(&str, &str)> = Vec::new();
                let namespaces = if namespace == root {
                    &[root][..]
                } else {
                    &[namespace, root][..]
                };
                for ns in namespaces {
                    // Names are `<namespace>/<name>`: those of a namespace sort between `ns/` and
                    // `ns0` ('0' follows '/').
                    let (from, to) = (format!("{ns}/"), format!("{ns}0"));
                    let range = (Bound::Included(from.as_str()), Bound::Excluded(to.as_str()));
                    held.extend(
                        policies
                            .range::<_, str>(range)
                            .map(|(n, e)| (&**n, &*e.version)),
                    );
                }
                policies_digest(namespace, root, held.into_iter())
            })
            .clone()
    }
}

/// What the waypoint of `workload` enforces for it besides namespace-wide and mesh-wide policies,
/// made with `policies` (those being sent; `digests` remembers what they give per namespace);
/// `None` for a workload its waypoint does not serve (none, a conflict, a waypoint that does not
/// exist: the workload then admits nothing, and names only that).
pub(super) fn binding(
    state: &MeshState,
    workload: &Workload,
    policies: &ByName,
    digests: &mut Digests,
) -> Option<Entry> {
    let reference = workload.waypoint.as_ref()?;
    if !workload.enrolled
        || !workload.waypoint_conflict().is_empty()
        || state.waypoint(reference).is_none()
    {
        return None;
    }
    let names = state
        .authz_for(workload)
        .iter()
        .filter(|p| !matches!(p.scope, Scope::Namespace) && p.spec.is_some())
        .map(|p| p.id.to_string())
        .collect();
    let root = state.settings().root_namespace;
    let policies_digest = digests.of(policies, &workload.namespace, &root);
    Some(Entry::new(&PolicyBinding {
        policies: names,
        policies_digest,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_digest_found_by_range_is_the_one_a_waypoint_computes_from_all_it_holds() {
        let names = [
            "shop/a",
            "shop/b",
            "shop-2/a",
            "shop0/a",
            "shoq/a",
            "sho/a",
            "veil-system/m",
            "veil-system0/x",
            "a/shop",
        ];
        let policies: ByName = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let entry = Entry::new(&PolicyBinding {
                    policies: vec![format!("{i}")],
                    policies_digest: String::new(),
                });
                (Arc::from(*n), entry)
            })
            .collect();
        let all = || policies.iter().map(|(n, e)| (&**n, &*e.version));
        let mut digests = Digests::default();
        for ns in ["shop", "shop-2", "shop0", "sho", "veil-system", "none"] {
            assert_eq!(
                digests.of(&policies, ns, "veil-system"),
                policies_digest(ns, "veil-system", all()),
                "{ns}"
            );
        }
        // Another policy of the namespace, or of the root namespace, changes it; one elsewhere not.
        let shop = policies_digest("shop", "veil-system", all());
        let with = |extra: &'static str| {
            let more: Vec<(&str, &str)> = all().chain([(extra, "v")]).collect();
            policies_digest("shop", "veil-system", more.into_iter())
        };
        assert_ne!(with("shop/c"), shop);
        assert_ne!(with("veil-system/n"), shop);
        assert_eq!(with("shop-2/c"), shop);
    }

    #[test]
    fn names_give_their_namespace_and_waypoints_see_only_theirs() {
        let cases = [
            (Kind::Address, "Kubernetes//Pod/shop/web-1", Some("shop")),
            (Kind::Address, "Kubernetes//Waypoint/shop/wp", Some("shop")),
            (
                Kind::Address,
                "shop/web.shop.svc.cluster.local",
                Some("shop"),
            ),
            (Kind::Policy, "veil-system/allow-all", Some("veil-system")),
            (
                Kind::Authorization,
                "veil-system/veil:deny-all",
                Some("veil-system"),
            ),
            (Kind::Binding, "Kubernetes//Pod/shop/web-1", Some("shop")),
            (Kind::Namespace, "shop", Some("shop")),
            (Kind::Address, "no-namespace", None),
            (Kind::Address, "/x", None),
            (Kind::Address, "Kubernetes//Pod/", None),
        ];
        for (kind, name, namespace) in cases {
            assert_eq!(namespace_of(kind, name), namespace, "{kind:?} {name}");
        }
        let shop = Audience::Waypoint {
            namespace: "shop".into(),
            root: "veil-system".into(),
        };
        assert!(shop.admits(Kind::Address, "Kubernetes//Pod/shop/web-1"));
        assert!(!shop.admits(Kind::Address, "Kubernetes//Pod/bank/api-1"));
        assert!(!shop.admits(Kind::Address, "bank/api.bank.svc.cluster.local"));
        // The root namespace's policies apply mesh-wide; its workloads, and which policies select
        // them, are not the waypoint's.
        assert!(shop.admits(Kind::Policy, "veil-system/allow-all"));
        assert!(!shop.admits(Kind::Binding, "Kubernetes//Pod/veil-system/ca-1"));
        // Istio's Authorizations and enrolled namespaces are not served to a waypoint at all.
        assert!(!shop.admits(Kind::Authorization, "veil-system/veil:deny-all"));
        assert!(!shop.admits(Kind::Authorization, "shop/allow-all"));
        assert!(!shop.admits(Kind::Namespace, "shop"));
        assert!(!shop.serves(Kind::Authorization) && shop.serves(Kind::Binding));
        assert!(!shop.admits(Kind::Address, "Kubernetes//Pod/veil-system/ca-1"));
        assert!(!shop.admits(Kind::Policy, "bank/deny-all"));
        assert!(!shop.admits(Kind::Namespace, "bank"));
        // A name that says no namespace is nobody's.
        assert!(!shop.admits(Kind::Address, "no-namespace"));
        assert!(Audience::Mesh.admits(Kind::Address, "no-namespace"));
    }
}
