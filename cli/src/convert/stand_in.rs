//! Fail-closed stand-ins. An AuthorizationPolicy that is not converted cannot simply be left out:
//! without an ALLOW policy its workloads may admit everything, without a DENY or CUSTOM policy
//! nothing it denied is denied. In its place goes a stand-in of the same kind, name and namespace
//! that admits no more than the original: an ALLOW policy without rules (it allows nothing; other
//! ALLOW policies still allow what they match) for an ALLOW policy, a DENY policy with one empty
//! rule (it denies every request) for a DENY or CUSTOM policy or one whose action cannot be read.
//!
//! A stand-in applies where the original did when veil can read and accepts that scope, and to the
//! whole namespace otherwise, which is wider and so still fails closed; but never to the whole mesh
//! where the original did not: then there is no stand-in, and the finding says so.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use veil_crd::authorization::{Action, AuthorizationPolicySpec, Rule};
use veil_crd::selector::{PolicyTargetReference, WorkloadSelector};

use super::{
    Kind, Metadata, Notes, OBJECT_FIELDS, Options, Problem, Severity, VeilPolicy, VeilSpec, authz,
    classify, peer_auth, schema,
};

/// The annotation that marks a stand-in; its value says, in a sentence, why it is there.
pub const ANNOTATION: &str = "veil.dev/conversion-stand-in";

/// In place of `value`, an object that was not converted: a stand-in and the reason of the finding
/// that reports it. Without one, a finding says why (for a PeerAuthentication: what leaving it out
/// does).
pub(super) fn replace(
    value: &Value,
    options: &Options,
    notes: &mut Notes,
) -> Option<(VeilPolicy, String)> {
    let why_none = match classify(value) {
        Ok(Kind::AuthorizationPolicy) => match authorization(value, options) {
            Ok(stand_in) => return Some(stand_in),
            Err(why) => format!("no stand-in: {why}"),
        },
        Ok(Kind::PeerAuthentication) => peer_auth::left_out(value, options),
        // Not one of Istio's policies as Istio serves them: nothing of it was in effect.
        Err(_) => return None,
    };
    notes.note(Severity::NotConverted, "", why_none);
    None
}

/// One stand-in for objects that become the same veil object but differ (`members`, the documents
/// `documents`), and the reason of the finding that reports it; `Err` says why there is none.
pub(super) fn merge(
    members: &[&VeilPolicy],
    documents: &str,
    options: &Options,
) -> Result<(VeilPolicy, String), String> {
    let deciding: Vec<(Effect, Scope)> = members
        .iter()
        .filter_map(|p| match &p.spec {
            VeilSpec::AuthorizationPolicy(spec) => {
                Effect::of(spec.action).map(|e| (e, Scope::of(spec)))
            }
            VeilSpec::PeerAuthentication(_) => None,
        })
        .collect();
    let Some(effect) = deciding.iter().map(|(e, _)| *e).max() else {
        return Err(
            "none of them decides anything (AUDIT), so leaving them out admits nothing more: no \
             stand-in is needed"
                .to_owned(),
        );
    };
    let first = &members[0].metadata;
    let namespace = first.namespace.as_deref();
    let (scope, place) = if deciding.iter().all(|(_, s)| *s == deciding[0].1) {
        let scope = deciding[0].1.clone();
        let place = where_exact(&scope, namespace, options, "they");
        (scope, place)
    } else {
        // One object has one scope: the whole namespace covers them all, unless it is the mesh.
        let mesh = namespace == Some(options.root_namespace_to.as_str());
        if mesh && !deciding.iter().any(|(_, s)| s.is_namespace_wide()) {
            return Err(format!(
                "their scopes differ, and a stand-in for the whole of {}, veil's root namespace, \
                 would apply to the whole mesh, which none of them did; nothing takes their place, \
                 so write veil policies for them by hand",
                options.root_namespace_to
            ));
        }
        let place = format!("{}, since their scopes differ", in_namespace(namespace));
        (Scope::default(), place)
    };
    let annotation = format!(
        "Istio policies that become this one veil object but differ (documents {documents} of the \
         converted input) could not be converted, so this stand-in {} {place}.",
        effect.describe()
    );
    let metadata = stand_in_metadata(
        first.name.clone(),
        first.namespace.clone(),
        &first.labels,
        annotation,
    );
    let policy = checked(assemble(metadata, effect, scope))?;
    let reason = format!(
        "documents {documents} are replaced by one fail-closed stand-in that {} {place}; it is \
         annotated {ANNOTATION}: replace it with veil policies written by hand",
        effect.describe()
    );
    Ok((policy, reason))
}

/// What a stand-in does; the stricter is the greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Effect {
    /// An ALLOW policy without rules: allows nothing, so only other ALLOW policies admit requests.
    AllowNothing,
    /// A DENY policy with one empty rule: denies every request.
    DenyAll,
}

impl Effect {
    /// The stand-in for a policy with `action`; none for AUDIT, which decides nothing.
    fn of(action: Action) -> Option<Self> {
        match action {
            Action::Allow => Some(Self::AllowNothing),
            Action::Deny | Action::Custom => Some(Self::DenyAll),
            Action::Audit => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::AllowNothing => "allows no request",
            Self::DenyAll => "denies every request",
        }
    }
}

/// Where a stand-in applies: the original's selector or targets; all empty, the whole namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Scope {
    selector: Option<WorkloadSelector>,
    target_ref: Option<PolicyTargetReference>,
    target_refs: Vec<PolicyTargetReference>,
}

impl Scope {
    fn of(spec: &AuthorizationPolicySpec) -> Self {
        Self {
            selector: spec.selector.clone(),
            target_ref: spec.target_ref.clone(),
            target_refs: spec.target_refs.clone(),
        }
    }

    fn has_targets(&self) -> bool {
        self.target_ref.is_some() || !self.target_refs.is_empty()
    }

    fn is_namespace_wide(&self) -> bool {
        !self.has_targets()
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
    }
}

/// What the original was, as far as its stand-in goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Was {
    Allow,
    Deny,
    Custom,
    /// The action is not one of Istio's, or may be misspelt.
    Unreadable,
}

impl Was {
    fn effect(self) -> Effect {
        match self {
            Self::Allow => Effect::AllowNothing,
            Self::Deny | Self::Custom | Self::Unreadable => Effect::DenyAll,
        }
    }

    /// The original, as the subject of a sentence.
    fn subject(self) -> &'static str {
        match self {
            Self::Allow => "Istio's ALLOW policy",
            Self::Deny => "Istio's DENY policy",
            Self::Custom => "Istio's CUSTOM policy",
            Self::Unreadable => "An Istio AuthorizationPolicy whose action cannot be read",
        }
    }

    /// Why the stand-in does what it does.
    fn why(self) -> &'static str {
        match self {
            Self::Allow => {
                "stricter than the policy: other ALLOW policies still allow what they match"
            }
            Self::Deny => "veil cannot enforce which requests the policy denied",
            Self::Custom => "the external authorizer could deny any request",
            Self::Unreadable => "the policy's action cannot be read",
        }
    }
}

/// What can be read of an AuthorizationPolicy that was not converted.
#[derive(Debug)]
struct Original {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    /// `istio.io/dry-run` with a value Istio reads as true.
    dry_run: bool,
    /// The spec; `None` when it is not a mapping.
    spec: Option<Map<String, Value>>,
    /// The first field, of the object or its spec, that Istio does not know: a misspelt one may
    /// have been the action or the selector.
    unknown: Option<String>,
}

const UNNAMED: &str = "without a readable metadata.name and metadata.namespace there is no object to \
                       put a stand-in in place of: write a veil policy for what it was meant to do \
                       by hand";

impl Original {
    fn read(value: &Value) -> Result<Self, String> {
        let Some(object) = value.as_object() else {
            unreachable!("classify accepts mappings only")
        };
        let metadata = object.get("metadata").and_then(Value::as_object);
        let metadata = metadata.ok_or(UNNAMED)?;
        let name = metadata.get("name").and_then(Value::as_str);
        let name = name.filter(|n| !n.is_empty()).ok_or(UNNAMED)?;
        let namespace = match metadata.get("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(namespace)) => Some(namespace.clone()),
            Some(_) => return Err(UNNAMED.to_owned()),
        };
        if let Some(key) = metadata
            .keys()
            .find(|k| *k != "namespace" && schema::distance(k, "namespace") <= 2)
        {
            return Err(format!(
                "metadata.{key} may be a misspelt namespace, so where a stand-in belongs cannot be \
                 read; write a veil policy for it by hand"
            ));
        }
        let annotation = |key| metadata.get("annotations")?.get(key)?.as_str();
        let spec = match object.get("spec") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(spec)) => Some(spec.clone()),
            Some(_) => None,
        };
        let unknown_in_spec = spec.iter().flat_map(Map::keys).find_map(|k| {
            (!schema::AUTHORIZATION_POLICY.has_field(k)).then(|| format!("spec.{k}"))
        });
        let unknown = object
            .keys()
            .find(|k| !OBJECT_FIELDS.contains(&k.as_str()))
            .cloned()
            .or(unknown_in_spec);
        Ok(Self {
            name: name.to_owned(),
            namespace,
            labels: read(metadata.get("labels")).unwrap_or_default(),
            dry_run: annotation(authz::DRY_RUN).and_then(authz::parse_dry_run) == Some(true),
            spec,
            unknown,
        })
    }

    /// What the original was; `Err` says why it needs no stand-in.
    fn was(&self) -> Result<Was, &'static str> {
        let action = self
            .spec
            .as_ref()
            .map(|s| s.get("action").filter(|v| !v.is_null()));
        let was = match action {
            Some(Some(Value::String(action))) => match action.as_str() {
                "ALLOW" => Was::Allow,
                "DENY" => Was::Deny,
                "CUSTOM" => Was::Custom,
                "AUDIT" => {
                    return Err(
                        "an AUDIT policy decides nothing, so leaving it out admits nothing \
                                more: it needs no stand-in",
                    );
                }
                _ => Was::Unreadable,
            },
            Some(None) if self.unknown.is_none() => Was::Allow,
            _ => Was::Unreadable,
        };
        if self.dry_run && matches!(was, Was::Allow | Was::Deny) {
            return Err(
                "with istio.io/dry-run Istio enforces nothing of it, so leaving it out \
                        admits nothing more: it needs no stand-in",
            );
        }
        Ok(was)
    }

    /// The original's selector and targets, read as veil's types.
    fn scope(&self) -> Result<Scope, Problem> {
        let Some(spec) = &self.spec else {
            return Err(Problem::new("spec", "not a mapping"));
        };
        if let Some(field) = &self.unknown {
            return Err(Problem::new(
                field,
                "Istio has no such field, and it may be a misspelt one that set the scope",
            ));
        }
        let targets = schema::Shape::List(&schema::TARGET_REF);
        let mut scope = Scope {
            selector: field(spec, "selector", &schema::SELECTOR)?,
            target_ref: field(spec, "targetRef", &schema::TARGET_REF)?,
            target_refs: field(spec, "targetRefs", &targets)?.unwrap_or_default(),
        };
        // Istio takes `core` for the core group, veil only "" (as the converter writes it).
        for target in scope.target_refs.iter_mut().chain(&mut scope.target_ref) {
            if target.group == "core" {
                target.group.clear();
            }
        }
        Ok(scope)
    }
}

/// The stand-in for the AuthorizationPolicy `value`, and the reason of its finding; `Err` says why
/// there is none.
fn authorization(value: &Value, options: &Options) -> Result<(VeilPolicy, String), String> {
    let original = Original::read(value)?;
    let was = original.was()?;
    let effect = was.effect();
    let namespace = original.namespace.as_deref();
    // Where the original applied, if veil can read that and accepts the stand-in there.
    let widened_for = match original.scope() {
        Ok(scope) => {
            let placed = place(namespace, &scope, options)?;
            let place = where_exact(&scope, placed.as_deref(), options, "the policy");
            let annotation = format!("{} {place}.", original_said(was, effect));
            let metadata =
                stand_in_metadata(original.name.clone(), placed, &original.labels, annotation);
            let policy = assemble(metadata, effect, scope);
            match authz::validate(&policy) {
                Ok(_) => return Ok((policy, finding(was, effect, &place, None))),
                Err(problem) => problem,
            }
        }
        Err(problem) => problem,
    };
    // The whole namespace: wider than the original, so still failing closed.
    let placed = place_widened(namespace, &widened_for, options)?;
    let place = format!("{}, wider than the policy", in_namespace(placed.as_deref()));
    let annotation = format!(
        "{} {place}, whose {} veil cannot carry over.",
        original_said(was, effect),
        widened_for.field
    );
    let metadata = stand_in_metadata(original.name.clone(), placed, &original.labels, annotation);
    let policy = checked(assemble(metadata, effect, Scope::default()))?;
    Ok((policy, finding(was, effect, &place, Some(&widened_for))))
}

/// The start of a stand-in's annotation: what the original was and what the stand-in does.
fn original_said(was: Was, effect: Effect) -> String {
    format!(
        "{} could not be converted to veil, so this stand-in {}",
        was.subject(),
        effect.describe()
    )
}

/// The reason of the finding that reports a stand-in, which does `effect` at `place`; `widened_for`
/// is why that is the whole namespace rather than where the original applied.
fn finding(was: Was, effect: Effect, place: &str, widened_for: Option<&Problem>) -> String {
    let widened = widened_for.map_or(String::new(), |p| {
        format!(
            "; its scope is widened to the whole namespace because its {} cannot be carried over \
             ({})",
            p.field, p.reason
        )
    });
    format!(
        "replaced by a fail-closed stand-in that {} {place} ({}){widened}; the stand-in is \
         annotated {ANNOTATION}: replace it with a veil policy written by hand",
        effect.describe(),
        was.why()
    )
}

/// The namespace of a stand-in with `scope` for an object in `namespace`, mapped as the converter
/// maps the root namespace; `Err` when the stand-in would apply to the whole mesh instead of one
/// namespace.
fn place(
    namespace: Option<&str>,
    scope: &Scope,
    options: &Options,
) -> Result<Option<String>, String> {
    let (from, to) = (&options.root_namespace_from, &options.root_namespace_to);
    // A policy with targets applies to them, wherever it is.
    if scope.has_targets() {
        return Ok(namespace.map(str::to_owned));
    }
    match namespace {
        Some(ns) if ns == from => Ok(Some(to.clone())),
        Some(ns) if ns == to => Err(format!(
            "in {to}, veil's root namespace, a stand-in would apply to the whole mesh, not to one \
             namespace as the policy did in Istio; nothing takes its place, so write a veil policy \
             for it by hand"
        )),
        _ => Ok(namespace.map(str::to_owned)),
    }
}

/// The namespace of a stand-in for the whole namespace, for an object in `namespace` whose scope
/// cannot be carried over (`problem`); `Err` in a root namespace, where that stand-in would apply to
/// the whole mesh, or miss what the original applied to in other namespaces.
fn place_widened(
    namespace: Option<&str>,
    problem: &Problem,
    options: &Options,
) -> Result<Option<String>, String> {
    let (from, to) = (&options.root_namespace_from, &options.root_namespace_to);
    let cannot = format!(
        "its {} cannot be carried over ({})",
        problem.field, problem.reason
    );
    let nothing = "nothing takes its place, so write a veil policy for it by hand";
    match namespace {
        Some(ns) if ns == from && from != to => Err(format!(
            "{cannot}, and in {from}, Istio's root namespace, a stand-in for the whole namespace \
             would either apply to the whole mesh (moved to {to}) or miss what the policy applied \
             to in other namespaces (kept in {from}); {nothing}"
        )),
        Some(ns) if ns == to => Err(format!(
            "{cannot}, and in {to}, veil's root namespace, a stand-in for the whole namespace would \
             apply to the whole mesh, where the policy did not; {nothing}"
        )),
        _ => Ok(namespace.map(str::to_owned)),
    }
}

/// Where a stand-in with the original's `scope` applies, in words; `whose` names the original(s).
fn where_exact(scope: &Scope, namespace: Option<&str>, options: &Options, whose: &str) -> String {
    if !scope.is_namespace_wide() {
        return format!("to what {whose} applied to");
    }
    if namespace == Some(options.root_namespace_to.as_str()) {
        // Only a mesh-wide original is placed namespace-wide in veil's root namespace.
        format!("in the whole mesh, as {whose} did")
    } else {
        format!("{}, as {whose} did", in_namespace(namespace))
    }
}

fn in_namespace(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("in the whole namespace {ns}"),
        None => "in the whole namespace it is applied to".to_owned(),
    }
}

fn stand_in_metadata(
    name: String,
    namespace: Option<String>,
    labels: &BTreeMap<String, String>,
    annotation: String,
) -> Metadata {
    Metadata {
        name,
        namespace,
        labels: labels.clone(),
        annotations: BTreeMap::from([(ANNOTATION.to_owned(), annotation)]),
    }
}

/// The stand-in with `effect` and `scope`.
fn assemble(metadata: Metadata, effect: Effect, scope: Scope) -> VeilPolicy {
    let (action, rules) = match effect {
        Effect::AllowNothing => (Action::Allow, Vec::new()),
        Effect::DenyAll => (Action::Deny, vec![Rule::default()]),
    };
    let spec = AuthorizationPolicySpec {
        selector: scope.selector,
        target_ref: scope.target_ref,
        target_refs: scope.target_refs,
        rules,
        action,
        provider: None,
    };
    let mut policy = VeilPolicy::new(metadata, VeilSpec::AuthorizationPolicy(spec));
    policy.stand_in = true;
    policy
}

/// A stand-in that veil's validation accepts; one it refuses is a bug of this module, reported rather
/// than written out.
pub(super) fn checked(policy: VeilPolicy) -> Result<VeilPolicy, String> {
    match authz::validate(&policy) {
        Ok(_) => Ok(policy),
        Err(problem) => Err(format!(
            "veil refuses the stand-in itself ({}: {}), which is a bug of the converter; write a \
             veil policy for it by hand",
            problem.field, problem.reason
        )),
    }
}

/// The field `key` of `spec`, checked against Istio's `shape` and read as veil's `T`.
fn field<T: DeserializeOwned>(
    spec: &Map<String, Value>,
    key: &str,
    shape: &schema::Shape,
) -> Result<Option<T>, Problem> {
    let Some(mut value) = spec.get(key).filter(|v| !v.is_null()).cloned() else {
        return Ok(None);
    };
    let path = format!("spec.{key}");
    schema::check(&mut value, shape, &path)?;
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| Problem::new(path, e.to_string()))
}

/// `value` as `T`, if it reads as one.
fn read<T: DeserializeOwned>(value: Option<&Value>) -> Option<T> {
    serde_json::from_value(value?.clone()).ok()
}
