//! PeerAuthentication: whether a workload port accepts plaintext (PERMISSIVE) or only mutual TLS
//! (STRICT, veil's default).
//!
//! The most specific setting wins: a selector policy's port-level mode, then its mode, then the
//! namespace-wide policy, then the mesh-wide one in the root namespace. UNSET defers to the next.

use std::collections::BTreeMap;

use veil_crd::peer_authentication::{MtlsMode, PeerAuthenticationSpec};

use super::compile::{PolicyError, PolicyId};

/// What a workload port accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum PeerMode {
    /// Only mutual TLS (HBONE).
    Strict,
    /// Mutual TLS, and plaintext subject to authorization policy.
    Permissive,
}

/// A compiled PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthPolicy {
    /// Which policy.
    pub id: PolicyId,
    selector: Option<BTreeMap<String, String>>,
    mode: MtlsMode,
    ports: BTreeMap<u16, MtlsMode>,
}

/// Compiles one PeerAuthentication.
pub fn compile_peer_auth(
    namespace: &str,
    name: &str,
    spec: &PeerAuthenticationSpec,
) -> Result<PeerAuthPolicy, PolicyError> {
    let id = PolicyId::new(namespace, name);
    let selector = selector_labels(spec.selector.as_ref());
    if selector.is_none() && !spec.port_level_mtls.is_empty() {
        return Err(PolicyError {
            kind: "PeerAuthentication",
            policy: id,
            field: "spec.portLevelMtls".into(),
            reason: "port-level settings need a workload selector".into(),
        });
    }
    let ports = spec
        .port_level_mtls
        .iter()
        .map(|(port, m)| match u16::try_from(*port) {
            Ok(p) if p != 0 => Ok((p, m.mode)),
            _ => Err(PolicyError {
                kind: "PeerAuthentication",
                policy: id.clone(),
                field: format!("spec.portLevelMtls[{port}]"),
                reason: "not a port number (1-65535)".into(),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(PeerAuthPolicy {
        id,
        selector,
        mode: spec.mtls.as_ref().map_or(MtlsMode::Unset, |m| m.mode),
        ports,
    })
}

/// The labels a selector selects by; none when it is absent or empty (the whole namespace).
pub(super) fn selector_labels(
    selector: Option<&veil_crd::selector::WorkloadSelector>,
) -> Option<BTreeMap<String, String>> {
    selector
        .filter(|s| !s.match_labels.is_empty())
        .map(|s| s.match_labels.clone())
}

impl PeerAuthPolicy {
    /// The workload labels it selects by; none when it applies to its whole namespace.
    pub fn selector(&self) -> Option<&BTreeMap<String, String>> {
        self.selector.as_ref()
    }

    /// Its modes in words: `STRICT`, or e.g. `UNSET (port 8080: PERMISSIVE)`.
    pub fn describe_mode(&self) -> String {
        let name = |m: MtlsMode| match m {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        };
        if self.ports.is_empty() {
            return name(self.mode).to_owned();
        }
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(port, mode)| format!("port {port}: {}", name(*mode)))
            .collect();
        format!("{} ({})", name(self.mode), ports.join(", "))
    }
}

/// Resolves the mode of `port` on a workload of `namespace` with `labels`.
pub fn resolve_peer_mode(
    policies: &[PeerAuthPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> PeerMode {
    let selects = |p: &PeerAuthPolicy| {
        p.selector
            .as_ref()
            .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    // Among several matching selector policies the first by name decides, for determinism.
    let mut workload: Vec<&PeerAuthPolicy> = policies
        .iter()
        .filter(|p| &*p.id.namespace == namespace && selects(p))
        .collect();
    workload.sort_by(|a, b| a.id.cmp(&b.id));
    let scope = |ns: &str| {
        policies
            .iter()
            .filter(|p| &*p.id.namespace == ns && p.selector.is_none())
            .min_by(|a, b| a.id.cmp(&b.id))
    };
    let candidates = workload
        .first()
        .map(|p| p.ports.get(&port).copied().unwrap_or(MtlsMode::Unset))
        .into_iter()
        .chain(workload.first().map(|p| p.mode))
        .chain(scope(namespace).map(|p| p.mode))
        .chain(scope(root_namespace).map(|p| p.mode));
    for mode in candidates {
        match mode {
            MtlsMode::Strict => return PeerMode::Strict,
            MtlsMode::Permissive | MtlsMode::Disable => return PeerMode::Permissive,
            MtlsMode::Unset => {}
        }
    }
    PeerMode::Strict
}

/// What every port of one workload accepts: a mode for all ports, and the ports that differ.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerProfile {
    /// The mode of any port not listed in `exceptions`.
    pub default: PeerMode,
    /// Ports whose mode is not `default` (the other mode), sorted.
    pub exceptions: Vec<u16>,
}

/// The [`PeerProfile`] of a workload of `namespace` with `labels`: [`resolve_peer_mode`] for every
/// port at once.
pub fn peer_profile(
    policies: &[PeerAuthPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> PeerProfile {
    let mode = |port| resolve_peer_mode(policies, root_namespace, namespace, labels, port);
    // Port 0 is never a port-level entry (compilation refuses it): it resolves as any unlisted port.
    let default = mode(0);
    let listed: std::collections::BTreeSet<u16> = policies
        .iter()
        .filter(|p| &*p.id.namespace == namespace)
        .flat_map(|p| p.ports.keys().copied())
        .collect();
    let exceptions = listed.into_iter().filter(|p| mode(*p) != default).collect();
    PeerProfile {
        default,
        exceptions,
    }
}
