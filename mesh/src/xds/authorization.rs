//! A compiled AuthorizationPolicy as Istio's L4 `Authorization`: what a ztunnel, which sees no HTTP,
//! can enforce of it — with veil's fail-closed reading of what it cannot see.
//!
//! At L4 an HTTP field (hosts, methods, paths, request headers) is unknown. An ALLOW rule only
//! counts when everything in it is known to match, so an operation or condition with HTTP fields
//! can never make it match: such operations are left out of the rule, and a rule left with nothing
//! that could match is dropped (an ALLOW policy without rules admits nothing, in Istio's evaluation
//! as in veil's). A DENY rule counts unless something in it is known not to match, so the HTTP
//! fields are read as matching: they are left out and the rest of the rule decides.

use std::net::IpAddr;

use ipnet::IpNet;
use veil_crd::authorization::Action;

use super::proto::istio::security as pb;
use crate::policy::AuthzPolicy;
use crate::policy::Scope;
use crate::policy::compile::{Condition, OperationClause, Pair, Rule, Rules, SourceClause};
use crate::policy::matcher::{AnyOf, StringMatch};

/// `policy` as an Istio Authorization named by its namespace and name. Policies that apply by
/// selector or through a Service are sent as `WORKLOAD_SELECTOR` (the workloads they apply to list
/// them by name); namespace-wide ones as `NAMESPACE`, or `GLOBAL` in `root_namespace`. AUDIT
/// policies decide nothing and have no Istio form: `None`; neither do policies that were received
/// in Istio's form (a subscriber's, never re-sent).
pub fn authorization(policy: &AuthzPolicy, root_namespace: &str) -> Option<pb::Authorization> {
    let action = istio_action(policy)?;
    let Rules::Veil(rules) = &policy.rules else {
        return None;
    };
    let scope = match &policy.scope {
        Scope::Namespace if &*policy.id.namespace == root_namespace => pb::Scope::Global,
        Scope::Mesh => pb::Scope::Global,
        Scope::Namespace => pb::Scope::Namespace,
        Scope::Selector(_) | Scope::Targets(_) | Scope::Named => pb::Scope::WorkloadSelector,
    };
    let deny = action == pb::Action::Deny;
    Some(pb::Authorization {
        name: policy.id.name.to_string(),
        namespace: policy.id.namespace.to_string(),
        scope: scope as i32,
        action: action as i32,
        rules: rules
            .iter()
            .filter_map(|rule| translate_rule(rule, deny))
            .collect(),
        dry_run: false,
        extensions: Vec::new(),
    })
}

/// The Istio action of `policy`, or `None` for a policy that decides nothing (AUDIT) and so has no
/// Istio form.
pub(crate) fn istio_action(policy: &AuthzPolicy) -> Option<pb::Action> {
    match policy.action {
        Action::Allow => Some(pb::Action::Allow),
        Action::Deny => Some(pb::Action::Deny),
        Action::Audit | Action::Custom => None,
    }
}

/// One rule, or `None` when it can never match at L4 (an ALLOW rule that needs HTTP).
fn translate_rule(rule: &Rule, deny: bool) -> Option<pb::Rule> {
    let mut clauses = Vec::new();
    // `from`: any source; a source that constrains nothing matches everyone, and so does the clause.
    if !rule.from.is_empty() {
        let matches: Vec<pb::Match> = rule.from.iter().map(source).collect();
        if !matches.iter().any(is_empty) {
            clauses.push(pb::Clause { matches });
        }
    }
    // `to`: any operation. An operation with HTTP fields cannot match for ALLOW (left out) and
    // matches on its ports alone for DENY.
    if !rule.to.is_empty() {
        let matches: Vec<pb::Match> = rule
            .to
            .iter()
            .filter(|op| deny || !uses_http(op))
            .map(operation)
            .collect();
        if matches.is_empty() {
            return None;
        }
        if !matches.iter().any(is_empty) {
            clauses.push(pb::Clause { matches });
        }
    }
    // `when`: every condition; each is a clause of its own.
    for condition in &rule.when {
        match condition_match(condition) {
            Some(m) if !is_empty(&m) => clauses.push(pb::Clause { matches: vec![m] }),
            Some(_) => {}
            // A request header: unknown at L4.
            None if deny => {}
            None => return None,
        }
    }
    Some(pb::Rule { clauses })
}

fn uses_http(op: &OperationClause) -> bool {
    [&op.hosts, &op.methods, &op.paths]
        .iter()
        .any(|p| p.is.is_some() || p.not.is_some())
}

fn source(s: &SourceClause) -> pb::Match {
    let (principals, not_principals) = strings(&s.principals);
    let (namespaces, not_namespaces) = strings(&s.namespaces);
    let (source_ips, not_source_ips) = nets(&s.ip_blocks);
    let accounts = |list: &Option<Vec<(Box<str>, Box<str>)>>| {
        list.iter()
            .flatten()
            .map(|(ns, sa)| pb::ServiceAccountMatch {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            })
            .collect()
    };
    pb::Match {
        principals,
        not_principals,
        namespaces,
        not_namespaces,
        source_ips,
        not_source_ips,
        service_accounts: accounts(&s.service_accounts.is),
        not_service_accounts: accounts(&s.service_accounts.not),
        ..Default::default()
    }
}

fn operation(op: &OperationClause) -> pb::Match {
    let (destination_ports, not_destination_ports) = ports(&op.ports);
    pb::Match {
        destination_ports,
        not_destination_ports,
        ..Default::default()
    }
}

/// A `when` condition as a match, or `None` for one that needs HTTP.
fn condition_match(condition: &Condition) -> Option<pb::Match> {
    let mut m = pb::Match::default();
    match condition {
        Condition::SourceIp(p) => (m.source_ips, m.not_source_ips) = nets(p),
        Condition::DestinationIp(p) => (m.destination_ips, m.not_destination_ips) = nets(p),
        Condition::DestinationPort(p) => {
            (m.destination_ports, m.not_destination_ports) = ports(p);
        }
        Condition::SourceNamespace(p) => (m.namespaces, m.not_namespaces) = strings(p),
        Condition::SourcePrincipal(p) => (m.principals, m.not_principals) = strings(p),
        Condition::RequestHeader(..) => return None,
    }
    Some(m)
}

/// Whether a match constrains nothing (Istio's ztunnel skips such a match: it never matches).
fn is_empty(m: &pb::Match) -> bool {
    m == &pb::Match::default()
}

fn strings(p: &Pair<AnyOf>) -> (Vec<pb::StringMatch>, Vec<pb::StringMatch>) {
    let list = |any: &Option<AnyOf>| {
        any.iter()
            .flat_map(|a| a.0.iter())
            .map(|m| pb::StringMatch {
                match_type: Some(match m {
                    StringMatch::Exact(s) => pb::string_match::MatchType::Exact(s.to_string()),
                    StringMatch::Prefix(s) => pb::string_match::MatchType::Prefix(s.to_string()),
                    StringMatch::Suffix(s) => pb::string_match::MatchType::Suffix(s.to_string()),
                    StringMatch::Present => pb::string_match::MatchType::Presence(()),
                }),
            })
            .collect()
    };
    (list(&p.is), list(&p.not))
}

fn nets(p: &Pair<Vec<IpNet>>) -> (Vec<pb::Address>, Vec<pb::Address>) {
    let list = |nets: &Option<Vec<IpNet>>| {
        nets.iter()
            .flatten()
            .map(|net| pb::Address {
                address: ip_bytes(net.addr()),
                length: u32::from(net.prefix_len()),
            })
            .collect()
    };
    (list(&p.is), list(&p.not))
}

fn ports(p: &Pair<Vec<u16>>) -> (Vec<u32>, Vec<u32>) {
    let list = |ports: &Option<Vec<u16>>| ports.iter().flatten().map(|p| u32::from(*p)).collect();
    (list(&p.is), list(&p.not))
}

/// An address as Istio's messages carry it: 4 bytes for IPv4, 16 for IPv6.
pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default());
            // Connections are matched with IPv4 addresses as IPv4: a mapped form would never
            // match, and silently.
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!("{v6}: an IPv4 address must be sent as 4 bytes"));
            }
            Ok(IpAddr::V6(v6))
        }
        n => Err(format!("an address of {n} bytes (4 or 16 expected)")),
    }
}

pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
