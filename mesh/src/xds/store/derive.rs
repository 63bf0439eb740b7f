//! What the store derives the mesh with: the addresses a node fills in, and the helpers of a build.

use super::*;

impl Store {
    /// The addresses this node's network plugin gave its workloads that arrived without one.
    pub(super) fn node_addresses<'a>(
        &self,
        claims: &[(u64, Named<'a>)],
    ) -> HashMap<&'a str, Vec<IpAddr>> {
        claims
            .iter()
            .filter(|(_, w)| w.ips.is_empty())
            .filter_map(|(_, w)| Some((&**w.uid, self.filled_in(w)?)))
            .collect()
    }

    /// The addresses of `w`, received without any, that this node's network plugin gave it.
    pub(super) fn filled_in(&self, w: &WorkloadEntry) -> Option<Vec<IpAddr>> {
        let (node, lookup) = self.node.as_ref()?;
        if !w.ips.is_empty() || *w.node != **node {
            return None;
        }
        lookup(&w.namespace, &w.name).filter(|ips| !ips.is_empty())
    }

    /// The addresses of `w`: as received, or as this node filled them in.
    pub(super) fn addresses_of(&self, w: &WorkloadEntry) -> Vec<IpAddr> {
        if w.ips.is_empty() {
            self.filled_in(w).unwrap_or_default()
        } else {
            w.ips.to_vec()
        }
    }
}

/// Whether a workload naming `names` is one veil's controller put behind a waypoint: it has a
/// waypoint and names the Authorization veil generates, in the root namespace `root`, to admit that
/// waypoint alone (no Kubernetes name has a `:`, so no policy of istiod's can be taken for it). The waypoint enforces every other
/// policy (namespace-wide and mesh-wide ones included) with the client's identity, so they do not
/// apply to its tunnels here: applied to them, with the waypoint as the peer, a namespace-wide
/// ALLOW of a client would refuse the waypoint, and one with HTTP conditions everything. From
/// istiod, which names no such policy, they apply, as in Istio's ztunnel.
pub(super) fn left_to_its_waypoint(
    root: &str,
    behind_a_waypoint: bool,
    names: &[Arc<str>],
) -> bool {
    behind_a_waypoint
        && names.iter().any(|n| {
            n.split_once('/').is_some_and(|(ns, local)| {
                ns == root && local.starts_with(crate::xds::WAYPOINT_ONLY_PREFIX)
            })
        })
}

/// A workload's policies in a stable order, each once.
pub(super) fn gather(mut policies: Vec<Arc<AuthzPolicy>>) -> Arc<[Arc<AuthzPolicy>]> {
    policies.sort_by(|a, b| a.id.cmp(&b.id));
    policies.dedup_by(|a, b| Arc::ptr_eq(a, b));
    policies.into()
}

/// A workload's addresses: as received, or, when it arrived without any, as its node filled in.
pub(super) fn ips_of<'a>(w: Named<'a>, filled: &'a HashMap<&str, Vec<IpAddr>>) -> &'a [IpAddr] {
    if w.ips.is_empty() {
        filled.get(&**w.uid).map_or(&[], Vec::as_slice)
    } else {
        &w.w.ips
    }
}

/// The waypoint `reference` whose instances are `found`, when they share one identity.
/// Its addresses are theirs as received or, where this node filled them in, as filled in.
pub(super) fn waypoint(
    reference: &WaypointRef,
    found: &[Named<'_>],
    filled: &HashMap<&str, Vec<IpAddr>>,
) -> Result<Waypoint, String> {
    let Some(first) = found.first() else {
        return Err("no instance of it is known: traffic bound to it fails".into());
    };
    if let Some(other) = found.iter().find(|w| w.identity != first.identity) {
        return Err(format!(
            "its instances have different identities ({} and {}): it is not used, and traffic bound to it fails",
            first.identity, other.identity
        ));
    }
    Ok(Waypoint {
        name: reference.name.clone(),
        namespace: reference.namespace.clone(),
        identity: first.identity.clone(),
        ips: found
            .iter()
            .flat_map(|w| ips_of(*w, filled).iter().copied())
            .collect(),
    })
}

/// The target port of service port `port`: the service's own, else the one its endpoints agree on.
pub(super) fn target_port(port: u16, target: u16, backing: &[Named<'_>], key: &str) -> Option<u16> {
    if target != 0 {
        return Some(target);
    }
    let mut found = None;
    for w in backing {
        let Some(ports) = w.services.get(key) else {
            continue;
        };
        for (p, t) in ports {
            if *p == port && *t != 0 {
                match found {
                    None => found = Some(*t),
                    Some(f) if f == *t => {}
                    Some(_) => return None,
                }
            }
        }
    }
    found
}

/// A policy that denies everything in the scope `name` (and, when decoded, `policy`) declares.
pub(super) fn placeholder(
    name: &str,
    policy: Option<&sec::Authorization>,
    settings: &MeshSettings,
) -> AuthzPolicy {
    // What it declares, when it could be decoded (the scope it meant to apply in); else its name.
    let (namespace, policy_name) = match policy {
        Some(p) if !p.namespace.is_empty() => (p.namespace.as_str(), p.name.as_str()),
        _ => name.split_once('/').unwrap_or((name, "")),
    };
    let id = PolicyId::new(namespace, policy_name);
    let scope = match policy.map(|p| sec::Scope::try_from(p.scope)) {
        Some(Ok(sec::Scope::WorkloadSelector)) => Scope::Named,
        Some(Ok(sec::Scope::Namespace)) => Scope::Namespace,
        Some(Ok(sec::Scope::Global)) => Scope::Mesh,
        _ if namespace == settings.root_namespace => Scope::Mesh,
        _ => Scope::Namespace,
    };
    deny_everything(id, scope)
}
