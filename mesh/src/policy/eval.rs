//! Evaluation of compiled AuthorizationPolicies against one connection or request. Allocates
//! nothing: it runs for every connection (ztunnel) and every request (waypoint).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use ipnet::IpNet;
use veil_crd::authorization::Action;

use super::compile::{
    AuthzPolicy, Condition, OperationClause, Pair, PolicyId, Rule, Rules, ServiceAccount,
    SourceClause,
};
use super::matcher::{AnyOf, Truth, in_any};
use crate::identity::Identity;

/// What is known about a connection or request.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// The peer's verified identity; `None` for plaintext.
    pub source: Option<&'a Identity>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The destination address.
    pub destination_ip: IpAddr,
    /// The destination port.
    pub destination_port: u16,
    /// HTTP attributes, where the proxy parses HTTP (waypoint); `None` at L4 (ztunnel).
    pub http: Option<HttpAttributes<'a>>,
}

/// What an L7 proxy knows of an HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The `Host` / `:authority`, without the port.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// The outcome of an evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or denied, and why.
    pub verdict: Verdict,
    /// The first AUDIT policy that matched, if any.
    pub audit: Option<PolicyId>,
    /// Index (in `spec.rules`) of the rule of the deciding policy that matched, if one did.
    pub rule: Option<usize>,
}

/// Allowed or denied, and by what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by this ALLOW policy, or `None`: no ALLOW policy applies.
    Allow(Option<PolicyId>),
    /// Denied.
    Deny(DenyReason),
}

/// Why a request was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched.
    DenyPolicy(PolicyId),
    /// A DENY policy may match, but its HTTP conditions cannot be checked here.
    DenyPolicyUndecidable(PolicyId),
    /// ALLOW policies apply and none matched; the one named is the first of them.
    NoAllowMatched(PolicyId),
    /// The only ALLOW rules that could match need HTTP attributes this proxy cannot see.
    AllowUndecidable(PolicyId),
    /// The workload is reachable only through this waypoint, and the peer is not it.
    NotFromWaypoint(String),
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow(_))
    }

    /// The policy that decided, when one did.
    pub fn policy(&self) -> Option<&PolicyId> {
        match &self.verdict {
            Verdict::Allow(p) => p.as_ref(),
            Verdict::Deny(
                DenyReason::DenyPolicy(p)
                | DenyReason::DenyPolicyUndecidable(p)
                | DenyReason::NoAllowMatched(p)
                | DenyReason::AllowUndecidable(p),
            ) => Some(p),
            Verdict::Deny(DenyReason::NotFromWaypoint(_)) => None,
        }
    }

    /// Why, in words (the policy that decided is [`Decision::policy`]).
    pub fn explanation(&self) -> String {
        match &self.verdict {
            Verdict::Allow(Some(_)) => "allowed by a rule of this ALLOW policy".into(),
            Verdict::Allow(None) => "allowed: no ALLOW policy applies".into(),
            Verdict::Deny(DenyReason::DenyPolicy(_)) => "denied by a rule of this DENY policy".into(),
            Verdict::Deny(DenyReason::DenyPolicyUndecidable(_)) => {
                "denied: this DENY policy has HTTP conditions this proxy cannot check".into()
            }
            Verdict::Deny(DenyReason::NoAllowMatched(_)) => {
                "denied: ALLOW policies apply and no rule of theirs matched".into()
            }
            Verdict::Deny(DenyReason::AllowUndecidable(_)) => {
                "denied: the only ALLOW rules that could match need HTTP, which this proxy cannot see"
                    .into()
            }
            Verdict::Deny(DenyReason::NotFromWaypoint(w)) => {
                format!("denied: reachable only through waypoint {w}")
            }
        }
    }
}

/// Evaluates `policies` (those that apply to the destination) in Istio's order: DENY, then ALLOW.
pub fn evaluate(policies: &[Arc<AuthzPolicy>], attrs: &Attributes<'_>) -> Decision {
    let mut audit = None;
    let mut first_allow: Option<&PolicyId> = None;
    let mut undecidable_allow: Option<&PolicyId> = None;
    let mut allowed_by: Option<(&PolicyId, Option<usize>)> = None;
    for policy in policies {
        let (truth, rule) = policy.matching_rule(attrs);
        match policy.action {
            Action::Deny => match truth {
                Truth::Yes => return deny(DenyReason::DenyPolicy(policy.id.clone()), audit, rule),
                Truth::Unknown => {
                    let reason = DenyReason::DenyPolicyUndecidable(policy.id.clone());
                    return deny(reason, audit, rule);
                }
                Truth::No => {}
            },
            Action::Audit => {
                if truth == Truth::Yes && audit.is_none() {
                    audit = Some(policy.id.clone());
                }
            }
            // CUSTOM never compiles; counted as ALLOW so that it could only ever deny.
            Action::Allow | Action::Custom => {
                first_allow.get_or_insert(&policy.id);
                match truth {
                    Truth::Yes => {
                        allowed_by.get_or_insert((&policy.id, rule));
                    }
                    Truth::Unknown => {
                        undecidable_allow.get_or_insert(&policy.id);
                    }
                    Truth::No => {}
                }
            }
        }
    }
    let (verdict, rule) = match (allowed_by, undecidable_allow, first_allow) {
        (Some((p, rule)), _, _) => (Verdict::Allow(Some(p.clone())), rule),
        (None, _, None) => (Verdict::Allow(None), None),
        (None, Some(p), _) => (Verdict::Deny(DenyReason::AllowUndecidable(p.clone())), None),
        (None, None, Some(p)) => (Verdict::Deny(DenyReason::NoAllowMatched(p.clone())), None),
    };
    Decision {
        verdict,
        audit,
        rule,
    }
}

fn deny(reason: DenyReason, audit: Option<PolicyId>, rule: Option<usize>) -> Decision {
    Decision {
        verdict: Verdict::Deny(reason),
        audit,
        rule,
    }
}

impl AuthzPolicy {
    /// Whether any rule matches. A policy without rules matches nothing.
    pub fn matches(&self, attrs: &Attributes<'_>) -> Truth {
        self.matching_rule(attrs).0
    }

    /// Whether any rule matches, and the first that does (definitely, else possibly).
    fn matching_rule(&self, attrs: &Attributes<'_>) -> (Truth, Option<usize>) {
        match &self.rules {
            Rules::Veil(rules) => first_match(rules.iter().map(|r| r.matches(attrs))),
            Rules::Istio(rules) => first_match(rules.iter().map(|r| r.matches(attrs))),
        }
    }
}

/// The first rule that definitely matches, else the first that possibly does.
fn first_match(truths: impl Iterator<Item = Truth>) -> (Truth, Option<usize>) {
    let mut possible = None;
    for (i, truth) in truths.enumerate() {
        match truth {
            Truth::Yes => return (Truth::Yes, Some(i)),
            Truth::Unknown => {
                possible.get_or_insert(i);
            }
            Truth::No => {}
        }
    }
    match possible {
        Some(i) => (Truth::Unknown, Some(i)),
        None => (Truth::No, None),
    }
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> Truth {
        let from = any_or_yes(&self.from, |s| s.matches(a));
        let to = any_or_yes(&self.to, |o| o.matches(a));
        let when = self
            .when
            .iter()
            .fold(Truth::Yes, |acc, c| acc.and(c.matches(a)));
        from.and(to).and(when)
    }
}

/// OR over clauses; an empty list constrains nothing.
fn any_or_yes<T>(clauses: &[T], f: impl Fn(&T) -> Truth) -> Truth {
    if clauses.is_empty() {
        return Truth::Yes;
    }
    clauses.iter().fold(Truth::No, |acc, c| acc.or(f(c)))
}

/// A field and its `not*` twin over one attribute.
fn pair<T>(p: &Pair<T>, matches: impl Fn(&T) -> Truth) -> Truth {
    let is = p.is.as_ref().map_or(Truth::Yes, &matches);
    let not = p.not.as_ref().map_or(Truth::Yes, |v| matches(v).negate());
    is.and(not)
}

fn strings(p: &Pair<AnyOf>, value: Option<&str>) -> Truth {
    pair(p, |any| Truth::from_bool(any.matches(value)))
}

fn ips(p: &Pair<Vec<IpNet>>, ip: IpAddr) -> Truth {
    pair(p, |nets| Truth::from_bool(in_any(nets, ip)))
}

fn ports(p: &Pair<Vec<u16>>, port: u16) -> Truth {
    pair(p, |list| Truth::from_bool(list.contains(&port)))
}

/// An HTTP attribute: unknown at L4.
fn http_strings(p: &Pair<AnyOf>, value: Option<&str>, ignore_case: bool) -> Truth {
    if p.is.is_none() && p.not.is_none() {
        return Truth::Yes;
    }
    let Some(value) = value else {
        return Truth::Unknown;
    };
    pair(p, |any| {
        Truth::from_bool(any.0.iter().any(|m| {
            if ignore_case {
                m.matches_ignore_case(value)
            } else {
                m.matches(value)
            }
        }))
    })
}

impl SourceClause {
    fn matches(&self, a: &Attributes<'_>) -> Truth {
        let principal = a.source.map(Identity::principal);
        let namespace = a.source.map(Identity::namespace);
        let sa = |list: &Vec<ServiceAccount>| {
            Truth::from_bool(a.source.is_some_and(|id| {
                list.iter()
                    .any(|(ns, sa)| id.namespace() == &**ns && id.service_account() == &**sa)
            }))
        };
        strings(&self.principals, principal)
            .and(strings(&self.namespaces, namespace))
            .and(pair(&self.service_accounts, sa))
            .and(ips(&self.ip_blocks, a.source_ip))
    }
}

impl OperationClause {
    fn matches(&self, a: &Attributes<'_>) -> Truth {
        let http = a.http.as_ref();
        ports(&self.ports, a.destination_port)
            .and(http_strings(&self.hosts, http.map(|h| h.host), true))
            .and(http_strings(&self.methods, http.map(|h| h.method), false))
            .and(http_strings(&self.paths, http.map(|h| h.path), false))
    }
}

impl Condition {
    fn matches(&self, a: &Attributes<'_>) -> Truth {
        match self {
            Self::SourceIp(p) => ips(p, a.source_ip),
            Self::DestinationIp(p) => ips(p, a.destination_ip),
            Self::DestinationPort(p) => ports(p, a.destination_port),
            Self::SourceNamespace(p) => strings(p, a.source.map(Identity::namespace)),
            Self::SourcePrincipal(p) => strings(p, a.source.map(Identity::principal)),
            Self::RequestHeader(name, p) => match &a.http {
                None => Truth::Unknown,
                Some(http) => {
                    // A header may repeat: `values` needs one line to match, `notValues` needs
                    // none to — otherwise a second line could smuggle a forbidden value past it.
                    let lines = || {
                        http.headers
                            .get_all(name)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                    };
                    let any_line = |any: &AnyOf| lines().any(|v| any.matches(Some(v)));
                    let is = p.is.as_ref().is_none_or(any_line);
                    let not = p.not.as_ref().is_none_or(|any| !any_line(any));
                    Truth::from_bool(is && not)
                }
            },
        }
    }
}
