//! AuthorizationPolicy specs compiled into matchers, once per change. Everything that cannot be
//! enforced as written is a validation error naming the policy and the field, never a silent no-op.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;
use veil_crd::authorization::{
    Action, AuthorizationPolicySpec, Condition as ConditionSpec, Operation, Source,
};
use veil_crd::selector::PolicyTargetReference;

use super::matcher::{AnyOf, parse_cidr, parse_port};

/// `namespace/name` of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl PolicyId {
    /// An id.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A policy that cannot be enforced as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {policy}: {field}: {reason}")]
pub struct PolicyError {
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: &'static str,
    /// The policy.
    pub policy: PolicyId,
    /// The offending field, e.g. `spec.rules[0].from[1].source.ipBlocks[2]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// What a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every workload of its namespace (of the mesh, in the root namespace).
    Namespace,
    /// Workloads whose labels include these (in every namespace, in the root namespace).
    Selector(BTreeMap<String, String>),
    /// Services or waypoints, enforced by the waypoint.
    Targets(Vec<Target>),
    /// Every workload of the mesh, whatever the policy's namespace (Istio's `GLOBAL`, as received
    /// over xDS).
    Mesh,
    /// The workloads that name it (Istio's `WORKLOAD_SELECTOR`, as received over xDS: the selection
    /// was made by the control plane).
    Named,
}

/// A `targetRefs` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Service of the policy's namespace.
    Service(String),
    /// A waypoint (Gateway) of the policy's namespace.
    Gateway(String),
}

/// A compiled AuthorizationPolicy.
#[derive(Debug)]
pub struct AuthzPolicy {
    /// Which policy.
    pub id: PolicyId,
    /// ALLOW, DENY or AUDIT.
    pub action: Action,
    /// What it applies to.
    pub scope: Scope,
    pub(crate) rules: Rules,
    /// Whether any rule needs HTTP attributes (so only a waypoint can enforce it fully).
    pub uses_l7: bool,
    /// The AuthorizationPolicy's spec it was compiled from (a control plane sends it to waypoints
    /// as written); none for Istio's L4 form received over xDS.
    pub spec: Option<Arc<AuthorizationPolicySpec>>,
}

/// A policy's rules, in the form it was written in.
#[derive(Debug)]
pub(crate) enum Rules {
    /// From an AuthorizationPolicy (`from`, `to`, `when`).
    Veil(Vec<Rule>),
    /// From Istio's L4 `Authorization`, received over xDS.
    Istio(Vec<super::istio::IstioRule>),
}

#[derive(Debug, Default)]
pub(crate) struct Rule {
    pub(crate) from: Vec<SourceClause>,
    pub(crate) to: Vec<OperationClause>,
    pub(crate) when: Vec<Condition>,
}

/// A field and its `not*` twin; `None` means "not constrained".
#[derive(Debug, Default)]
pub(crate) struct Pair<T> {
    pub(crate) is: Option<T>,
    pub(crate) not: Option<T>,
}

/// `(namespace, service account)` of a `serviceAccounts` entry.
pub(crate) type ServiceAccount = (Box<str>, Box<str>);

#[derive(Debug, Default)]
pub(crate) struct SourceClause {
    pub(crate) principals: Pair<AnyOf>,
    pub(crate) namespaces: Pair<AnyOf>,
    pub(crate) service_accounts: Pair<Vec<ServiceAccount>>,
    pub(crate) ip_blocks: Pair<Vec<IpNet>>,
}

#[derive(Debug, Default)]
pub(crate) struct OperationClause {
    pub(crate) hosts: Pair<AnyOf>,
    pub(crate) ports: Pair<Vec<u16>>,
    pub(crate) methods: Pair<AnyOf>,
    pub(crate) paths: Pair<AnyOf>,
}

#[derive(Debug)]
pub(crate) enum Condition {
    SourceIp(Pair<Vec<IpNet>>),
    SourceNamespace(Pair<AnyOf>),
    SourcePrincipal(Pair<AnyOf>),
    DestinationIp(Pair<Vec<IpNet>>),
    DestinationPort(Pair<Vec<u16>>),
    RequestHeader(HeaderName, Pair<AnyOf>),
}

/// The `when` keys veil enforces.
pub const SUPPORTED_WHEN_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "request.headers[<name>]",
];

struct Ctx<'a> {
    id: &'a PolicyId,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            kind: "AuthorizationPolicy",
            policy: self.id.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn any_of(&self, field: &str, values: &[String]) -> Result<Option<AnyOf>, PolicyError> {
        if values.is_empty() {
            return Ok(None);
        }
        // An empty pattern matches nothing here, but an absent value elsewhere (Istio's ztunnel
        // reads a plaintext peer's namespace as ""): refused rather than read two ways.
        if let Some(i) = values.iter().position(String::is_empty) {
            return Err(self.err(format!("{field}[{i}]"), "an empty pattern matches nothing"));
        }
        AnyOf::parse(values)
            .map(Some)
            .map_err(|reason| self.err(field, reason))
    }

    fn cidrs(&self, field: &str, values: &[String]) -> Result<Option<Vec<IpNet>>, PolicyError> {
        if values.is_empty() {
            return Ok(None);
        }
        values
            .iter()
            .enumerate()
            .map(|(i, v)| parse_cidr(v).map_err(|r| self.err(format!("{field}[{i}]"), r)))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    fn ports(&self, field: &str, values: &[String]) -> Result<Option<Vec<u16>>, PolicyError> {
        if values.is_empty() {
            return Ok(None);
        }
        values
            .iter()
            .enumerate()
            .map(|(i, v)| parse_port(v).map_err(|r| self.err(format!("{field}[{i}]"), r)))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    fn service_accounts(
        &self,
        field: &str,
        values: &[String],
    ) -> Result<Option<Vec<ServiceAccount>>, PolicyError> {
        if values.is_empty() {
            return Ok(None);
        }
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match v.split_once('/') {
                Some((ns, sa))
                    if !ns.is_empty()
                        && !sa.is_empty()
                        && !sa.contains('/')
                        && !v.contains('*') =>
                {
                    Ok((ns.into(), sa.into()))
                }
                _ => Err(self.err(
                    format!("{field}[{i}]"),
                    format!("{v:?} must be <namespace>/<service-account>, without wildcards"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// Compiles one AuthorizationPolicy.
pub fn compile_authz(
    namespace: &str,
    name: &str,
    spec: &AuthorizationPolicySpec,
) -> Result<AuthzPolicy, PolicyError> {
    let id = PolicyId::new(namespace, name);
    let cx = Ctx { id: &id };
    if spec.action == Action::Custom || spec.provider.is_some() {
        return Err(cx.err(
            "spec.action",
            "CUSTOM (external authorization) is not supported by veil",
        ));
    }
    let scope = scope(&cx, namespace, spec)?;
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| compile_rule(&cx, &format!("spec.rules[{i}]"), rule))
        .collect::<Result<Vec<_>, _>>()?;
    let uses_l7 = rules.iter().any(Rule::uses_l7);
    Ok(AuthzPolicy {
        id,
        action: spec.action,
        scope,
        rules: Rules::Veil(rules),
        uses_l7,
        spec: Some(Arc::new(spec.clone())),
    })
}

fn scope(
    cx: &Ctx<'_>,
    namespace: &str,
    spec: &AuthorizationPolicySpec,
) -> Result<Scope, PolicyError> {
    let refs: Vec<&PolicyTargetReference> = match (&spec.target_ref, spec.target_refs.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(cx.err(
                "spec.targetRef",
                "use either targetRef or targetRefs, not both",
            ));
        }
        (Some(one), []) => vec![one],
        (None, many) => many.iter().collect(),
    };
    if !refs.is_empty() {
        if spec.selector.is_some() {
            return Err(cx.err(
                "spec.selector",
                "selector and targetRefs are mutually exclusive",
            ));
        }
        let targets = refs
            .iter()
            .enumerate()
            .map(|(i, r)| target(cx, namespace, i, r))
            .collect::<Result<_, _>>()?;
        return Ok(Scope::Targets(targets));
    }
    Ok(match &spec.selector {
        Some(sel) if !sel.match_labels.is_empty() => Scope::Selector(sel.match_labels.clone()),
        _ => Scope::Namespace,
    })
}

fn target(
    cx: &Ctx<'_>,
    namespace: &str,
    i: usize,
    r: &PolicyTargetReference,
) -> Result<Target, PolicyError> {
    let field = format!("spec.targetRefs[{i}]");
    if r.namespace.as_deref().is_some_and(|ns| ns != namespace) {
        return Err(cx.err(field, "a target must be in the policy's own namespace"));
    }
    match (r.group.as_str(), r.kind.as_str()) {
        ("", "Service") => Ok(Target::Service(r.name.clone())),
        ("gateway.networking.k8s.io", "Gateway") => Ok(Target::Gateway(r.name.clone())),
        (group, kind) => Err(cx.err(
            field,
            format!("unsupported target {group:?}/{kind:?} (Service, or gateway.networking.k8s.io Gateway)"),
        )),
    }
}

fn compile_rule(
    cx: &Ctx<'_>,
    field: &str,
    rule: &veil_crd::authorization::Rule,
) -> Result<Rule, PolicyError> {
    let from = rule
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| compile_source(cx, &format!("{field}.from[{i}].source"), &f.source))
        .collect::<Result<_, _>>()?;
    let to = rule
        .to
        .iter()
        .enumerate()
        .map(|(i, t)| compile_operation(cx, &format!("{field}.to[{i}].operation"), &t.operation))
        .collect::<Result<_, _>>()?;
    let when = rule
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| compile_condition(cx, &format!("{field}.when[{i}]"), c))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

fn compile_source(cx: &Ctx<'_>, field: &str, s: &Source) -> Result<SourceClause, PolicyError> {
    let f = |name: &str| format!("{field}.{name}");
    if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
        return Err(cx.err(
            f("requestPrincipals"),
            "JWT authentication is not supported by veil",
        ));
    }
    if !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty() {
        return Err(cx.err(f("remoteIpBlocks"), "not supported by veil; use ipBlocks"));
    }
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_identity {
        return Err(cx.err(
            f("serviceAccounts"),
            "cannot be combined with principals or namespaces",
        ));
    }
    Ok(SourceClause {
        principals: Pair {
            is: cx.any_of(&f("principals"), &s.principals)?,
            not: cx.any_of(&f("notPrincipals"), &s.not_principals)?,
        },
        namespaces: Pair {
            is: cx.any_of(&f("namespaces"), &s.namespaces)?,
            not: cx.any_of(&f("notNamespaces"), &s.not_namespaces)?,
        },
        service_accounts: Pair {
            is: cx.service_accounts(&f("serviceAccounts"), &s.service_accounts)?,
            not: cx.service_accounts(&f("notServiceAccounts"), &s.not_service_accounts)?,
        },
        ip_blocks: Pair {
            is: cx.cidrs(&f("ipBlocks"), &s.ip_blocks)?,
            not: cx.cidrs(&f("notIpBlocks"), &s.not_ip_blocks)?,
        },
    })
}

fn compile_operation(
    cx: &Ctx<'_>,
    field: &str,
    o: &Operation,
) -> Result<OperationClause, PolicyError> {
    let f = |name: &str| format!("{field}.{name}");
    Ok(OperationClause {
        hosts: Pair {
            is: cx.any_of(&f("hosts"), &o.hosts)?,
            not: cx.any_of(&f("notHosts"), &o.not_hosts)?,
        },
        ports: Pair {
            is: cx.ports(&f("ports"), &o.ports)?,
            not: cx.ports(&f("notPorts"), &o.not_ports)?,
        },
        methods: Pair {
            is: cx.any_of(&f("methods"), &o.methods)?,
            not: cx.any_of(&f("notMethods"), &o.not_methods)?,
        },
        paths: Pair {
            is: cx.any_of(&f("paths"), &o.paths)?,
            not: cx.any_of(&f("notPaths"), &o.not_paths)?,
        },
    })
}

fn compile_condition(
    cx: &Ctx<'_>,
    field: &str,
    c: &ConditionSpec,
) -> Result<Condition, PolicyError> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(cx.err(field, "a condition needs values or notValues"));
    }
    let values = format!("{field}.values");
    let not_values = format!("{field}.notValues");
    let strings = || -> Result<Pair<AnyOf>, PolicyError> {
        Ok(Pair {
            is: cx.any_of(&values, &c.values)?,
            not: cx.any_of(&not_values, &c.not_values)?,
        })
    };
    let cidrs = || -> Result<Pair<Vec<IpNet>>, PolicyError> {
        Ok(Pair {
            is: cx.cidrs(&values, &c.values)?,
            not: cx.cidrs(&not_values, &c.not_values)?,
        })
    };
    Ok(match c.key.as_str() {
        "source.ip" => Condition::SourceIp(cidrs()?),
        "destination.ip" => Condition::DestinationIp(cidrs()?),
        "source.namespace" => Condition::SourceNamespace(strings()?),
        "source.principal" => Condition::SourcePrincipal(strings()?),
        "destination.port" => Condition::DestinationPort(Pair {
            is: cx.ports(&values, &c.values)?,
            not: cx.ports(&not_values, &c.not_values)?,
        }),
        key => {
            if let Some(name) = key
                .strip_prefix("request.headers[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    cx.err(
                        format!("{field}.key"),
                        format!("{name:?} is not a header name"),
                    )
                })?;
                Condition::RequestHeader(header, strings()?)
            } else if key.starts_with("request.auth.") {
                return Err(cx.err(
                    format!("{field}.key"),
                    format!("{key:?}: JWT authentication is not supported by veil"),
                ));
            } else {
                return Err(cx.err(
                    format!("{field}.key"),
                    format!(
                        "unknown condition key {key:?}; supported: {}",
                        SUPPORTED_WHEN_KEYS.join(", ")
                    ),
                ));
            }
        }
    })
}

impl Rule {
    fn uses_l7(&self) -> bool {
        let op_l7 = |o: &OperationClause| {
            o.hosts.is.is_some()
                || o.hosts.not.is_some()
                || o.methods.is.is_some()
                || o.methods.not.is_some()
                || o.paths.is.is_some()
                || o.paths.not.is_some()
        };
        self.to.iter().any(op_l7)
            || self
                .when
                .iter()
                .any(|c| matches!(c, Condition::RequestHeader(..)))
    }
}
