//! Checks across objects, once each is converted (or replaced by a stand-in): two objects that
//! become the same veil object (one would overwrite the other on apply), and PeerAuthentications of
//! one scope that Istio and veil would choose between differently (Istio takes the oldest, veil the
//! first by name). AuthorizationPolicies that become one veil object and differ are replaced by one
//! stand-in, the strictest of theirs.

use std::collections::BTreeMap;

use serde_json::Value;
use veil_crd::peer_authentication::{MtlsMode, PeerAuthenticationSpec};

use super::peer_auth::{self, Reach};
use super::{Finding, ObjectRef, Options, Severity, VeilPolicy, VeilSpec, stand_in};

/// A converted object, or a stand-in, and where it came from.
#[derive(Debug)]
pub(super) struct Converted {
    pub(super) policy: VeilPolicy,
    pub(super) at: ObjectRef,
    /// `metadata.creationTimestamp` of the Istio object.
    pub(super) created: Option<String>,
    /// For a stand-in, the reason of the finding that reports it, made once it is sure to be
    /// written.
    pub(super) stand_in: Option<String>,
}

/// The objects that survive both checks, in input order; findings for the others.
pub(super) fn check(
    mut converted: Vec<Converted>,
    options: &Options,
    findings: &mut Vec<Finding>,
) -> Vec<VeilPolicy> {
    let mut keep = vec![true; converted.len()];
    duplicates(&mut converted, &mut keep, options, findings);
    peer_auth_conflicts(&converted, &mut keep, options, findings);
    for c in &mut converted {
        if let Some(reason) = c.stand_in.take() {
            findings.push(finding(&c.at, Severity::StandIn, reason));
        }
    }
    converted
        .into_iter()
        .zip(keep)
        .filter_map(|(c, keep)| keep.then_some(c.policy))
        .collect()
}

fn finding(at: &ObjectRef, severity: Severity, reason: String) -> Finding {
    Finding {
        object: at.clone(),
        severity,
        field: String::new(),
        reason,
    }
}

/// Objects grouped by a key, in input order, groups of two or more only.
fn groups<K: Ord>(
    converted: &[Converted],
    keep: &[bool],
    key: impl Fn(&Converted) -> Option<K>,
) -> Vec<Vec<usize>> {
    let mut by_key: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (i, c) in converted.iter().enumerate() {
        if let Some(k) = keep[i].then(|| key(c)).flatten() {
            by_key.entry(k).or_default().push(i);
        }
    }
    by_key.into_values().filter(|g| g.len() > 1).collect()
}

fn identity(policy: &VeilPolicy) -> String {
    let namespace = policy
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("(no namespace)");
    format!("{} {namespace}/{}", policy.kind, policy.metadata.name)
}

fn duplicates(
    converted: &mut [Converted],
    keep: &mut [bool],
    options: &Options,
    findings: &mut Vec<Finding>,
) {
    let key = |c: &Converted| {
        let m = &c.policy.metadata;
        Some((c.policy.kind, m.namespace.clone(), m.name.clone()))
    };
    for group in groups(converted, keep, key) {
        let first = &converted[group[0]];
        if group.iter().all(|&i| converted[i].policy == first.policy) {
            identical(converted, &group, keep, findings);
        } else {
            conflicting(converted, &group, keep, options, findings);
        }
    }
}

/// Objects that become the same veil object, alike: kept once.
fn identical(
    converted: &mut [Converted],
    group: &[usize],
    keep: &mut [bool],
    findings: &mut Vec<Finding>,
) {
    let name = identity(&converted[group[0]].policy);
    let document = converted[group[0]].at.document;
    for &i in &group[1..] {
        keep[i] = false;
        let c = &mut converted[i];
        // A stand-in alike the one kept stands in for this object too.
        if let Some(reason) = c.stand_in.take() {
            findings.push(finding(&c.at, Severity::StandIn, reason));
        }
        let reason = format!("the same {name} as document {document}: kept once");
        findings.push(finding(&c.at, Severity::Dropped, reason));
    }
}

/// Objects that become the same veil object and differ: none is converted, since applying them
/// keeps only the last. AuthorizationPolicies get one stand-in for them all, in the first one's
/// place.
fn conflicting(
    converted: &mut [Converted],
    group: &[usize],
    keep: &mut [bool],
    options: &Options,
    findings: &mut Vec<Finding>,
) {
    let name = identity(&converted[group[0]].policy);
    for &i in group {
        keep[i] = false;
        // Its own stand-in, if any, gives way to the group's.
        converted[i].stand_in = None;
        let others: Vec<String> = group
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| converted[j].at.document.to_string())
            .collect();
        let others = match others.as_slice() {
            [one] => format!("as does document {one}"),
            many => format!("as do documents {}", many.join(", ")),
        };
        let reason = format!(
            "becomes {name}, {others}, and they differ: applying them keeps only the last, so none \
             is converted"
        );
        findings.push(finding(&converted[i].at, Severity::NotConverted, reason));
    }
    let members: Vec<&VeilPolicy> = group.iter().map(|&i| &converted[i].policy).collect();
    let outcome = match &members[0].spec {
        VeilSpec::PeerAuthentication(_) => {
            for &i in group {
                let reason = left_out_peer_auth(&converted[i].policy, options);
                findings.push(finding(&converted[i].at, Severity::NotConverted, reason));
            }
            return;
        }
        VeilSpec::AuthorizationPolicy(_) => {
            let documents: Vec<String> = group
                .iter()
                .map(|&i| converted[i].at.document.to_string())
                .collect();
            stand_in::merge(&members, &listed(&documents), options)
        }
    };
    match outcome {
        Ok((policy, reason)) => {
            for &i in group {
                findings.push(finding(&converted[i].at, Severity::StandIn, reason.clone()));
            }
            converted[group[0]].policy = policy;
            keep[group[0]] = true;
        }
        Err(why) => {
            for &i in group {
                let reason = format!("no stand-in: {why}");
                findings.push(finding(&converted[i].at, Severity::NotConverted, reason));
            }
        }
    }
}

/// `1`, `1 and 3`, `1, 3 and 5`.
fn listed(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// What leaving out the converted PeerAuthentication `policy` does, in a sentence.
fn left_out_peer_auth(policy: &VeilPolicy, options: &Options) -> String {
    let VeilSpec::PeerAuthentication(spec) = &policy.spec else {
        unreachable!("called for PeerAuthentications only")
    };
    let selects = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    // Converted, a mesh-wide policy is in veil's root namespace.
    let reach = match policy.metadata.namespace.as_deref() {
        Some(ns) if !selects && ns == options.root_namespace_to => Reach::Mesh,
        _ if selects => Reach::Workloads,
        _ => Reach::Namespace,
    };
    let spec = serde_json::to_value(spec).unwrap_or(Value::Null);
    peer_auth::left_out_reason(reach, Some(&spec))
}

/// A PeerAuthentication's modes, DISABLE already written PERMISSIVE.
fn modes(spec: &PeerAuthenticationSpec) -> (MtlsMode, BTreeMap<u32, MtlsMode>) {
    let mode = spec.mtls.as_ref().map_or(MtlsMode::Unset, |m| m.mode);
    let ports = spec
        .port_level_mtls
        .iter()
        .map(|(port, m)| (*port, m.mode))
        .collect();
    (mode, ports)
}

fn peer_auth_conflicts(
    converted: &[Converted],
    keep: &mut [bool],
    options: &Options,
    findings: &mut Vec<Finding>,
) {
    // One scope: a namespace (or the mesh), or the same selector in a namespace.
    let scope = |c: &Converted| match &c.policy.spec {
        VeilSpec::PeerAuthentication(spec) => Some((
            c.policy.metadata.namespace.clone(),
            spec.selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
        )),
        VeilSpec::AuthorizationPolicy(_) => None,
    };
    let spec = |i: usize| match &converted[i].policy.spec {
        VeilSpec::PeerAuthentication(spec) => modes(spec),
        VeilSpec::AuthorizationPolicy(_) => unreachable!("grouped by PeerAuthentication scope"),
    };
    for group in overlapping(groups_of_one(converted, keep, scope)) {
        if group.iter().all(|&i| spec(i) == spec(group[0])) {
            continue;
        }
        let documents: Vec<String> = group
            .iter()
            .map(|&i| converted[i].at.document.to_string())
            .collect();
        let oldest = oldest(converted, &group);
        for &i in &group {
            if Some(i) == oldest {
                continue;
            }
            keep[i] = false;
            let reason = match oldest {
                Some(o) => format!(
                    "Istio applies only the oldest PeerAuthentication of this scope or of \
                     selectors a pod can match together (document {}, created {}); veil would \
                     choose by name, so this one is not converted",
                    converted[o].at.document,
                    converted[o].created.as_deref().unwrap_or_default()
                ),
                None => format!(
                    "PeerAuthentications of the same scope with different modes (documents {}): \
                     Istio applies the oldest, and without creationTimestamps the input does not \
                     say which that is",
                    documents.join(", ")
                ),
            };
            findings.push(finding(&converted[i].at, Severity::NotConverted, reason));
            let left_out = match oldest {
                // What Istio does: it applies the oldest only.
                Some(_) => peer_auth::left_out_reason(Reach::IgnoredByIstio, None),
                None => left_out_peer_auth(&converted[i].policy, options),
            };
            findings.push(finding(&converted[i].at, Severity::NotConverted, left_out));
        }
    }
}

/// Every PeerAuthentication kept, with its scope: (index, namespace, selector labels; empty for a
/// namespace-wide one).
type Scoped = (usize, Option<String>, BTreeMap<String, String>);

fn groups_of_one(
    converted: &[Converted],
    keep: &[bool],
    scope: impl Fn(&Converted) -> Option<(Option<String>, BTreeMap<String, String>)>,
) -> Vec<Scoped> {
    converted
        .iter()
        .enumerate()
        .filter(|(i, _)| keep[*i])
        .filter_map(|(i, c)| scope(c).map(|(ns, labels)| (i, ns, labels)))
        .collect()
}

/// Groups of two or more PeerAuthentications Istio chooses between for some pod: namespace-wide
/// ones of one namespace, and selector ones of one namespace whose selectors a pod can match
/// together (no label required with two different values), transitively. Istio applies the oldest
/// of those matching a pod, veil the first by name: where their modes differ, only one may be
/// converted.
fn overlapping(scoped: Vec<Scoped>) -> Vec<Vec<usize>> {
    let compatible = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
    };
    // Union-find over the list positions.
    let mut parent: Vec<usize> = (0..scoped.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for a in 0..scoped.len() {
        for b in a + 1..scoped.len() {
            let (_, ns_a, sel_a) = &scoped[a];
            let (_, ns_b, sel_b) = &scoped[b];
            let together = ns_a == ns_b
                && (sel_a.is_empty() == sel_b.is_empty())
                && (sel_a.is_empty() || compatible(sel_a, sel_b));
            if together {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                parent[ra] = rb;
            }
        }
    }
    let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (position, (index, _, _)) in scoped.iter().enumerate() {
        let r = root(&mut parent, position);
        by_root.entry(r).or_default().push(*index);
    }
    by_root.into_values().filter(|g| g.len() > 1).collect()
}

/// The one object of `group` created first, if every one says when and none ties with it.
fn oldest(converted: &[Converted], group: &[usize]) -> Option<usize> {
    let mut times: Vec<(&str, usize)> = group
        .iter()
        .map(|&i| converted[i].created.as_deref().map(|t| (t, i)))
        .collect::<Option<_>>()?;
    times.sort();
    match times.as_slice() {
        [(first, i), (second, _), ..] if first != second => Some(*i),
        _ => None,
    }
}
