//! `veil policy convert`: Istio's AuthorizationPolicy and PeerAuthentication (`security.istio.io`
//! `v1` and `v1beta1`) to veil's (`security.veil.dev/v1`), with a finding for everything that does
//! not carry over unchanged.
//!
//! One rule throughout: the output never admits more than the Istio input did. What veil cannot
//! enforce is left out only where leaving it out narrows access (an ALLOW rule); otherwise the whole
//! object is not converted and reported (a DENY policy with such a rule, a CUSTOM policy), and an
//! AuthorizationPolicy that is not converted is replaced by a fail-closed stand-in
//! (`convert/stand_in.rs`), since leaving it out would widen access.
//! Every emitted object is written out, read back as veil's type and compiled by
//! `veil_mesh::policy::compile_authz` / `compile_peer_auth`, with which ztunnel, the waypoint and the
//! controller accept policies: what this module emits, veil accepts.

mod authz;
mod cross;
mod input;
mod peer_auth;
mod schema;
mod stand_in;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use veil_crd::authorization::AuthorizationPolicySpec;
use veil_crd::peer_authentication::PeerAuthenticationSpec;
use veil_mesh::policy::PolicyError;

pub use stand_in::ANNOTATION as STAND_IN_ANNOTATION;

/// How to convert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Istio's root namespace: policies there without a selector (and AuthorizationPolicies with
    /// one) apply to the whole mesh.
    pub root_namespace_from: String,
    /// veil's root namespace, where such policies move.
    pub root_namespace_to: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            root_namespace_from: "istio-system".to_owned(),
            root_namespace_to: "veil-system".to_owned(),
        }
    }
}

/// The result: veil's objects, in input order, and what did not carry over unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Conversion {
    /// The converted objects and the stand-ins for those that were not, each accepted by veil's
    /// validation.
    pub objects: Vec<VeilPolicy>,
    /// Findings, in input order.
    pub findings: Vec<Finding>,
}

impl Conversion {
    /// The converted objects as one YAML stream, `---` between documents; empty without objects.
    pub fn objects_yaml(&self) -> String {
        let documents: Vec<String> = self.objects.iter().map(render).collect();
        documents.join("---\n")
    }

    /// Whether everything carried over unchanged (no finding at all).
    pub fn is_lossless(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A veil object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VeilPolicy {
    /// Always `security.veil.dev/v1`.
    pub api_version: &'static str,
    /// `AuthorizationPolicy` or `PeerAuthentication`, as the spec.
    pub kind: &'static str,
    /// Name, namespace, labels and annotations of the Istio object (the namespace mapped).
    pub metadata: Metadata,
    /// The spec.
    pub spec: VeilSpec,
    /// Whether this is a fail-closed stand-in for an AuthorizationPolicy that was not converted
    /// (not written out: the annotation [`STAND_IN_ANNOTATION`] says so on the object).
    #[serde(skip)]
    pub stand_in: bool,
}

impl VeilPolicy {
    fn new(metadata: Metadata, spec: VeilSpec) -> Self {
        let kind = match spec {
            VeilSpec::AuthorizationPolicy(_) => "AuthorizationPolicy",
            VeilSpec::PeerAuthentication(_) => "PeerAuthentication",
        };
        Self {
            api_version: veil_crd::API_VERSION,
            kind,
            metadata,
            spec,
            stand_in: false,
        }
    }
}

/// The spec of a [`VeilPolicy`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VeilSpec {
    /// An AuthorizationPolicy's.
    AuthorizationPolicy(AuthorizationPolicySpec),
    /// A PeerAuthentication's.
    PeerAuthentication(PeerAuthenticationSpec),
}

/// The metadata carried over; what the API server sets (uid, resourceVersion, managedFields, ...) is
/// not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// Name, unchanged.
    pub name: String,
    /// Namespace; Istio's root namespace becomes veil's where the object applies mesh-wide. Absent
    /// when the input had none (`kubectl apply -n` decides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels, unchanged.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations, without `kubectl.kubernetes.io/last-applied-configuration` (and
    /// `istio.io/dry-run` where it was honoured).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Something that did not carry over unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which input object.
    pub object: ObjectRef,
    /// How much it matters.
    pub severity: Severity,
    /// The field of the input object, e.g. `spec.rules[1].when[0].key`; empty for the whole object.
    pub field: String,
    /// Why, in a sentence.
    pub reason: String,
}

/// How much a finding matters. Each is a reason for a non-zero exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Carried over, but written differently or with a meaning that differs from Istio's.
    Changed,
    /// A part was left out; leaving it out never widens access (an ALLOW rule, metadata).
    Dropped,
    /// The object was not converted and a fail-closed stand-in takes its place: a policy that admits
    /// no more than the original did (it allows nothing, or denies everything).
    StandIn,
    /// Converted as written, but veil enforces it in a way that can admit what Istio refused (veil's
    /// semantics, not the conversion, differ): review it before applying.
    Widens,
    /// The whole object was not converted: converting it would widen access, or veil refuses it.
    /// Without a [`Severity::StandIn`] finding next to it, nothing takes its place.
    NotConverted,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Changed => "changed",
            Self::Dropped => "dropped",
            Self::StandIn => "stand_in",
            Self::Widens => "widens",
            Self::NotConverted => "not_converted",
        })
    }
}

/// An object of the input: where it is, and what it says it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// The YAML document, from 1.
    pub document: usize,
    /// The position in the document's `items`, from 0, for a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// `kind`, as written.
    pub kind: Option<String>,
    /// `metadata.namespace`, as written (before any mapping).
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(kind) = &self.kind {
            let name = self.name.as_deref().unwrap_or("(no name)");
            match &self.namespace {
                Some(ns) => write!(f, "{kind} {ns}/{name} (")?,
                None => write!(f, "{kind} {name} (")?,
            }
        }
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        if self.kind.is_some() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The input is not YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertError {
    /// Line of the fault, from 1, when known.
    pub line: Option<usize>,
    /// Column of the fault, from 1, when known.
    pub column: Option<usize>,
    /// The parser's message, with the position and an excerpt of the input.
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the input is not readable YAML: {}", self.message)
    }
}

impl std::error::Error for ConvertError {}

/// Converts a YAML stream of Istio objects. Only unreadable YAML is an error: an object that cannot
/// be converted is a finding, and an AuthorizationPolicy that cannot be converted is replaced by a
/// fail-closed stand-in where one can be written.
pub fn convert(input: &str, options: &Options) -> Result<Conversion, ConvertError> {
    let mut findings = Vec::new();
    let mut converted = Vec::new();
    for item in input::items(input)? {
        let mut notes = Notes::new(item.at.clone());
        let original = item.value.clone();
        let outcome = match convert_one(item.value, options, &mut notes) {
            Some(policy) => Some((policy, None)),
            None if notes.left_out() => stand_in::replace(&original, options, &mut notes)
                .map(|(policy, reason)| (policy, Some(reason))),
            None => None,
        };
        if let Some((policy, stand_in)) = outcome {
            converted.push(cross::Converted {
                policy,
                at: item.at,
                created: notes.created.take(),
                stand_in,
            });
        }
        findings.append(&mut notes.findings);
    }
    let objects = cross::check(converted, options, &mut findings);
    // Stable: each object's findings stay in the order they were made.
    findings.sort_by_key(|f| (f.object.document, f.object.item));
    Ok(Conversion { objects, findings })
}

fn convert_one(value: Value, options: &Options, notes: &mut Notes) -> Option<VeilPolicy> {
    let kind = match classify(&value) {
        Ok(kind) => kind,
        Err(problem) => return notes.refuse(problem),
    };
    let Value::Object(mut object) = value else {
        unreachable!("classify accepts mappings only")
    };
    if let Some(key) = object.keys().find(|k| !OBJECT_FIELDS.contains(&k.as_str())) {
        let problem = Problem::new(key.clone(), "not a field of a Kubernetes object");
        return notes.refuse(problem);
    }
    let metadata = metadata(object.remove("metadata"), notes)?;
    // `spec: {}`, `spec:` and no spec at all are the same empty spec, to Istio and to veil.
    let spec = match object.remove("spec") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(spec) => spec,
    };
    match kind {
        Kind::AuthorizationPolicy => authz::convert(metadata, spec, options, notes),
        Kind::PeerAuthentication => peer_auth::convert(metadata, spec, options, notes),
    }
}

/// The fields of a Kubernetes object.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AuthorizationPolicy,
    PeerAuthentication,
}

/// Whether the object is one of Istio's two kinds this converts, and if not, why.
fn classify(value: &Value) -> Result<Kind, Problem> {
    let text = |key| value.get(key).and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        return Err(Problem::new(
            "",
            "not a Kubernetes object (a mapping with apiVersion and kind)",
        ));
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let known = match kind {
        "AuthorizationPolicy" => Some(Kind::AuthorizationPolicy),
        "PeerAuthentication" => Some(Kind::PeerAuthentication),
        _ => None,
    };
    match (group, known) {
        ("security.istio.io", Some(kind)) if ["v1", "v1beta1"].contains(&version) => Ok(kind),
        ("security.istio.io", Some(_)) => Err(Problem::new(
            "apiVersion",
            format!("{api_version:?}: Istio serves {kind} as security.istio.io/v1 and v1beta1"),
        )),
        ("security.istio.io", None) if kind == "RequestAuthentication" => Err(Problem::new(
            "kind",
            "JWT authentication (RequestAuthentication) is not supported by veil",
        )),
        ("security.veil.dev", _) => Err(Problem::new(
            "apiVersion",
            "already a veil object: apply it as it is",
        )),
        _ => Err(Problem::new(
            "kind",
            format!(
                "{api_version} {kind} is not an Istio AuthorizationPolicy or PeerAuthentication"
            ),
        )),
    }
}

/// Metadata the API server sets: not carried over, and not worth a finding.
const SERVER_SET: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Metadata about the Istio object's life in its cluster: not carried over, with a finding.
const NOT_CARRIED: &[(&str, &str)] = &[
    (
        "ownerReferences",
        "names the Istio object's owners by uid, which the veil object does not have",
    ),
    (
        "finalizers",
        "belongs to a controller of the Istio object; on the veil object nothing would remove it",
    ),
    ("generateName", "the object has a name"),
];

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn metadata(value: Option<Value>, notes: &mut Notes) -> Option<Metadata> {
    let Some(Value::Object(mut map)) = value else {
        return notes.refuse(Problem::new("metadata", "missing, or not a mapping"));
    };
    map.retain(|_, v| !v.is_null());
    let mut out = Metadata::default();
    for (key, mut value) in map {
        let field = format!("metadata.{key}");
        match key.as_str() {
            "name" | "namespace" => {
                let Value::String(text) = value else {
                    return notes.refuse(Problem::new(field, "expected a string"));
                };
                if key == "name" {
                    out.name = text;
                } else {
                    out.namespace = Some(text);
                }
            }
            "labels" | "annotations" => {
                if let Err(problem) = schema::check(&mut value, &schema::Shape::StrMap, &field) {
                    return notes.refuse(problem);
                }
                let map = serde_json::from_value(value).unwrap_or_default();
                if key == "labels" {
                    out.labels = map;
                } else {
                    out.annotations = map;
                }
            }
            "creationTimestamp" => notes.created = value.as_str().map(str::to_owned),
            k if SERVER_SET.contains(&k) => {}
            k => match NOT_CARRIED.iter().find(|(name, _)| *name == k) {
                Some((_, why)) => {
                    notes.note(
                        Severity::Dropped,
                        field,
                        format!("not carried over: it {why}"),
                    );
                }
                None => {
                    return notes.refuse(Problem::new(field, "not a field of object metadata"));
                }
            },
        }
    }
    out.annotations.remove(LAST_APPLIED);
    if out.name.is_empty() {
        return notes.refuse(Problem::new("metadata.name", "missing: veil needs a name"));
    }
    Some(out)
}

/// Moves an object that applies to the whole mesh from Istio's root namespace to veil's. Refuses one
/// that sits in veil's root namespace without being in Istio's: in veil it would apply to the whole
/// mesh instead of one namespace.
fn map_root_namespace(metadata: &mut Metadata, options: &Options, notes: &mut Notes) -> Option<()> {
    let (from, to) = (&options.root_namespace_from, &options.root_namespace_to);
    if from == to {
        return Some(());
    }
    let Some(namespace) = metadata.namespace.as_mut() else {
        return Some(());
    };
    if namespace == from {
        *namespace = to.clone();
        let reason = format!(
            "{from} is Istio's root namespace: the object applies to the whole mesh, so it moves to veil's, {to}"
        );
        notes.note(Severity::Changed, "metadata.namespace", reason);
    } else if namespace == to {
        let reason = format!(
            "{to} is veil's root namespace: there the object would apply to the whole mesh, not to one namespace as in Istio"
        );
        return notes.refuse(Problem::new("metadata.namespace", reason));
    }
    Some(())
}

/// The YAML document of a policy.
fn render(policy: &VeilPolicy) -> String {
    serde_saphyr::to_string(policy).expect("a policy of strings, lists and maps serializes")
}

/// Writes `policy` out and reads it back as veil's type `T`, as `kubectl apply` and the controller
/// would.
fn read_back<T: DeserializeOwned>(policy: &VeilPolicy) -> Result<T, Problem> {
    serde_saphyr::from_str(&render(policy)).map_err(|e| {
        Problem::new(
            "",
            format!("veil cannot read the converted object back: {e}"),
        )
    })
}

/// veil's validation refused the converted object.
fn refused(e: PolicyError) -> Problem {
    Problem::new(e.field, format!("veil refuses it: {}", e.reason))
}

/// A problem at a field of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Problem {
    field: String,
    reason: String,
}

impl Problem {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The findings about one object, while it is converted.
#[derive(Debug)]
struct Notes {
    at: ObjectRef,
    findings: Vec<Finding>,
    /// `metadata.creationTimestamp`, which decides between PeerAuthentications in Istio.
    created: Option<String>,
}

impl Notes {
    fn new(at: ObjectRef) -> Self {
        Self {
            at,
            findings: Vec::new(),
            created: None,
        }
    }

    fn note(&mut self, severity: Severity, field: impl Into<String>, reason: impl Into<String>) {
        self.findings.push(Finding {
            object: self.at.clone(),
            severity,
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Leaves the whole object out, for `problem`.
    fn refuse<T>(&mut self, problem: Problem) -> Option<T> {
        self.note(Severity::NotConverted, problem.field, problem.reason);
        None
    }

    fn left_out(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::NotConverted)
    }
}

/// The findings as people read them: one block per object, one line per finding, a summary last.
pub fn report_table(conversion: &Conversion) -> String {
    let mut out = String::new();
    let width = conversion
        .findings
        .iter()
        .map(|f| f.field.len())
        .max()
        .unwrap_or(0)
        .clamp(1, 48);
    let mut current = None;
    // Writing to a String cannot fail.
    for f in &conversion.findings {
        if current != Some(&f.object) {
            let gap = if current.is_some() { "\n" } else { "" };
            let _ = writeln!(out, "{gap}{}:", f.object);
            current = Some(&f.object);
        }
        let field = if f.field.is_empty() { "-" } else { &f.field };
        let _ = writeln!(
            out,
            "  {:<13}  {field:<width$}  {}",
            f.severity.to_string(),
            f.reason
        );
    }
    let objects_with = |severity| {
        let mut objects: Vec<&ObjectRef> = conversion
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .map(|f| &f.object)
            .collect();
        objects.dedup();
        objects
    };
    let replaced = objects_with(Severity::StandIn);
    let left_out = objects_with(Severity::NotConverted)
        .into_iter()
        .filter(|o| !replaced.contains(o))
        .count();
    let converted = conversion.objects.iter().filter(|o| !o.stand_in).count();
    let gap = if conversion.findings.is_empty() {
        ""
    } else {
        "\n"
    };
    let _ = write!(
        out,
        "{gap}{converted} converted, {} replaced by fail-closed stand-ins, {left_out} left out",
        replaced.len()
    );
    let _ = writeln!(
        out,
        "{}",
        if conversion.is_lossless() {
            "; nothing lost."
        } else {
            "; see the findings above."
        }
    );
    let widens = objects_with(Severity::Widens).len();
    if widens > 0 {
        let _ = writeln!(
            out,
            "WARNING: {widens} converted object(s) may admit traffic Istio refused (severity \
             widens): review them before applying."
        );
    }
    out
}
