//! Istio's L4 `Authorization` (as istiod, or veil's controller, sends it over xDS) compiled into an
//! [`AuthzPolicy`] that veil's evaluator runs with Istio's matching rules, so that a ztunnel fed
//! over xDS decides exactly as the policy's author saw it.
//!
//! Istio's structure differs from the CRD's: a policy is an OR of rules, a rule an AND of clauses, a
//! clause an OR of matches, and a match an AND of fields, each field an OR of values with its `not_`
//! twin excluding. A match with no field set matches nothing; a clause without matches constrains
//! nothing; a policy without rules matches nothing. A plaintext peer has no principal (no principal
//! pattern, not even presence, matches it) and the namespace `""`.
//!
//! Where Istio's ztunnel drops what it cannot read (an address of the wrong length, a string match
//! without a pattern) and so widens the policy, veil refuses the whole policy with a clear error:
//! the caller then denies everything the policy could apply to (see `xds::store`). Extensions, which
//! carry semantics veil does not know, are refused the same way. `dry_run` policies decide nothing
//! and are evaluated like AUDIT ones (a match is recorded, never enforced).

use std::net::IpAddr;

use ipnet::IpNet;
use veil_crd::authorization::Action;

use super::compile::{AuthzPolicy, PolicyError, PolicyId, Rules, Scope, ServiceAccount};
use super::eval::Attributes;
use super::matcher::{StringMatch, Truth, in_any};
use crate::identity::Identity;
use crate::xds::proto::istio::security as pb;

/// One rule: every clause must match.
#[derive(Debug)]
pub(crate) struct IstioRule {
    clauses: Vec<Vec<IstioMatch>>,
}

/// One match: every field must match; within a field any value, and none of the `not` values.
#[derive(Debug, Default)]
struct IstioMatch {
    namespaces: Field<IstioString>,
    principals: Field<IstioString>,
    service_accounts: Field<ServiceAccount>,
    source_ips: Field<IpNet>,
    destination_ips: Field<IpNet>,
    destination_ports: Field<u16>,
}

#[derive(Debug)]
struct Field<T> {
    is: Vec<T>,
    not: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self {
            is: Vec::new(),
            not: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    fn is_empty(&self) -> bool {
        self.is.is_empty() && self.not.is_empty()
    }

    fn matches(&self, pred: impl Fn(&T) -> bool) -> bool {
        (self.is.is_empty() || self.is.iter().any(&pred)) && !self.not.iter().any(&pred)
    }
}

/// Istio's string match: like the CRD's patterns, except that presence needs a non-empty value.
#[derive(Debug)]
struct IstioString(StringMatch);

impl IstioString {
    fn matches(&self, value: &str) -> bool {
        match &self.0 {
            StringMatch::Present => !value.is_empty(),
            other => other.matches(value),
        }
    }
}

/// The xDS name of an Authorization: `namespace/name`.
pub fn istio_policy_name(policy: &pb::Authorization) -> String {
    format!("{}/{}", policy.namespace, policy.name)
}

/// Compiles an Authorization received as `name` (which must be its `namespace/name`).
pub fn compile_istio(name: &str, policy: &pb::Authorization) -> Result<AuthzPolicy, PolicyError> {
    let id = PolicyId::new(&policy.namespace, &policy.name);
    let err = |field: String, reason: String| PolicyError {
        kind: "Authorization",
        policy: id.clone(),
        field,
        reason,
    };
    if policy.name.is_empty() || policy.namespace.is_empty() {
        return Err(err(
            "name".into(),
            "a policy needs a name and a namespace".into(),
        ));
    }
    if name != istio_policy_name(policy) {
        return Err(err(
            "name".into(),
            format!("sent under the name {name:?}, which is not its namespace/name"),
        ));
    }
    if !policy.extensions.is_empty() {
        return Err(err(
            "extensions".into(),
            "extensions carry semantics veil does not know".into(),
        ));
    }
    let action = match pb::Action::try_from(policy.action) {
        Ok(_) if policy.dry_run => Action::Audit,
        Ok(pb::Action::Allow) => Action::Allow,
        Ok(pb::Action::Deny) => Action::Deny,
        Err(_) => {
            return Err(err(
                "action".into(),
                format!("unknown action {}", policy.action),
            ));
        }
    };
    let scope = match pb::Scope::try_from(policy.scope) {
        Ok(pb::Scope::Global) => Scope::Mesh,
        Ok(pb::Scope::Namespace) => Scope::Namespace,
        Ok(pb::Scope::WorkloadSelector) => Scope::Named,
        Err(_) => {
            return Err(err(
                "scope".into(),
                format!("unknown scope {}", policy.scope),
            ));
        }
    };
    let mut rules = Vec::with_capacity(policy.rules.len());
    for (r, rule) in policy.rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.iter().enumerate() {
            let mut matches = Vec::with_capacity(clause.matches.len());
            for (m, one) in clause.matches.iter().enumerate() {
                let at = format!("rules[{r}].clauses[{c}].matches[{m}]");
                matches.push(
                    compile_match(one).map_err(|(f, reason)| err(format!("{at}.{f}"), reason))?,
                );
            }
            clauses.push(matches);
        }
        rules.push(IstioRule { clauses });
    }
    Ok(AuthzPolicy {
        id,
        action,
        scope,
        rules: Rules::Istio(rules),
        uses_l7: false,
        spec: None,
    })
}

type FieldError = (String, String);

fn compile_match(m: &pb::Match) -> Result<IstioMatch, FieldError> {
    if !m.extensions.is_empty() {
        return Err((
            "extensions".into(),
            "extensions carry semantics veil does not know".into(),
        ));
    }
    Ok(IstioMatch {
        namespaces: field("namespaces", &m.namespaces, &m.not_namespaces, string)?,
        principals: field("principals", &m.principals, &m.not_principals, string)?,
        service_accounts: field(
            "service_accounts",
            &m.service_accounts,
            &m.not_service_accounts,
            service_account,
        )?,
        source_ips: field("source_ips", &m.source_ips, &m.not_source_ips, address)?,
        destination_ips: field(
            "destination_ips",
            &m.destination_ips,
            &m.not_destination_ips,
            address,
        )?,
        destination_ports: field(
            "destination_ports",
            &m.destination_ports,
            &m.not_destination_ports,
            |p: &u32| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{p} is not a port (1-65535)"))
            },
        )?,
    })
}

fn field<P, T>(
    name: &str,
    is: &[P],
    not: &[P],
    parse: impl Fn(&P) -> Result<T, String>,
) -> Result<Field<T>, FieldError> {
    let all = |prefix: &str, values: &[P]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| parse(v).map_err(|reason| (format!("{prefix}{name}[{i}]"), reason)))
            .collect::<Result<Vec<T>, _>>()
    };
    Ok(Field {
        is: all("", is)?,
        not: all("not_", not)?,
    })
}

fn string(m: &pb::StringMatch) -> Result<IstioString, String> {
    use pb::string_match::MatchType;
    Ok(IstioString(match &m.match_type {
        Some(MatchType::Exact(s)) => StringMatch::Exact(s.as_str().into()),
        Some(MatchType::Prefix(s)) => StringMatch::Prefix(s.as_str().into()),
        Some(MatchType::Suffix(s)) => StringMatch::Suffix(s.as_str().into()),
        Some(MatchType::Presence(())) => StringMatch::Present,
        None => return Err("a string match without a pattern".into()),
    }))
}

fn service_account(m: &pb::ServiceAccountMatch) -> Result<ServiceAccount, String> {
    if m.namespace.is_empty() || m.service_account.is_empty() {
        return Err("a service account match needs a namespace and a name".into());
    }
    Ok((
        m.namespace.as_str().into(),
        m.service_account.as_str().into(),
    ))
}

fn address(a: &pb::Address) -> Result<IpNet, String> {
    let ip = crate::xds::ip_from_bytes(&a.address)?;
    let length = u8::try_from(a.length).map_err(|_| format!("prefix length {}", a.length))?;
    IpNet::new(ip, length).map_err(|_| format!("prefix length {length} for {ip}"))
}

impl IstioRule {
    pub(crate) fn matches(&self, a: &Attributes<'_>) -> Truth {
        Truth::from_bool(
            self.clauses
                .iter()
                .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(a))),
        )
    }
}

impl IstioMatch {
    fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.principals.is_empty()
            && self.service_accounts.is_empty()
            && self.source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.destination_ports.is_empty()
    }

    fn matches(&self, a: &Attributes<'_>) -> bool {
        if self.is_empty() {
            return false;
        }
        let namespace = a.source.map_or("", Identity::namespace);
        let in_net = |ip: IpAddr| move |net: &IpNet| in_any(std::slice::from_ref(net), ip);
        self.destination_ips.matches(in_net(a.destination_ip))
            && self.source_ips.matches(in_net(a.source_ip))
            && self.destination_ports.matches(|p| *p == a.destination_port)
            && self.service_accounts.matches(|(ns, sa)| {
                a.source
                    .is_some_and(|id| id.namespace() == &**ns && id.service_account() == &**sa)
            })
            && self
                .principals
                .matches(|p| a.source.is_some_and(|id| p.matches(id.principal())))
            && self.namespaces.matches(|p| p.matches(namespace))
    }
}

/// A policy that denies everything where `scope` applies: what stands in for a policy that was
/// refused or is missing, since what it would decide is unknown.
pub fn deny_everything(id: PolicyId, scope: Scope) -> AuthzPolicy {
    AuthzPolicy {
        id,
        action: Action::Deny,
        scope,
        rules: Rules::Istio(vec![IstioRule {
            clauses: Vec::new(),
        }]),
        uses_l7: false,
        spec: None,
    }
}

impl AuthzPolicy {
    /// Whether this policy can only ever deny peers without an identity: how PeerAuthentication
    /// STRICT arrives in Istio's form (a DENY whose every rule needs "no principal"). Such a
    /// denial is reported as STRICT refusing plaintext.
    pub fn only_refuses_plaintext(&self) -> bool {
        let Rules::Istio(rules) = &self.rules else {
            return false;
        };
        self.action == Action::Deny
            && !rules.is_empty()
            && rules.iter().all(|rule| {
                rule.clauses.iter().any(|clause| {
                    !clause.is_empty()
                        && clause.iter().all(|m| {
                            m.principals
                                .not
                                .iter()
                                .any(|p| matches!(p.0, StringMatch::Present))
                        })
                })
            })
    }
}
