//! PeerAuthentication. The schema is the same; what differs is where a policy applies (Istio
//! ignores one with a selector in its root namespace) and DISABLE, which veil treats as PERMISSIVE
//! and is written so.

use serde_json::Value;
use veil_crd::peer_authentication::{
    MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec,
};
use veil_mesh::policy::compile_peer_auth;

use super::{
    Metadata, Notes, Options, Problem, Severity, VeilPolicy, VeilSpec, map_root_namespace,
    read_back, refused, schema,
};

/// Converts the object with `metadata` and `spec` (as written); `None` when it is left out.
pub(super) fn convert(
    mut metadata: Metadata,
    mut spec: Value,
    options: &Options,
    notes: &mut Notes,
) -> Option<VeilPolicy> {
    if let Err(problem) = schema::check(&mut spec, &schema::PEER_AUTHENTICATION, "spec") {
        return notes.refuse(problem);
    }
    let mut out: PeerAuthenticationSpec = match serde_json::from_value(spec) {
        Ok(out) => out,
        Err(e) => return notes.refuse(Problem::new("spec", e.to_string())),
    };
    let selects = out
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    let in_root = metadata.namespace.as_ref() == Some(&options.root_namespace_from);
    if selects && in_root {
        let reason = format!(
            "Istio ignores a PeerAuthentication with a selector in its root namespace ({}); veil \
             would apply it to the selected workloads there",
            options.root_namespace_from
        );
        return notes.refuse(Problem::new("spec.selector", reason));
    }
    if !selects {
        map_root_namespace(&mut metadata, options, notes)?;
        let unset = out.mtls.as_ref().is_none_or(|m| m.mode == MtlsMode::Unset);
        if in_root && unset {
            notes.note(
                Severity::Changed,
                "spec.mtls.mode",
                "the mesh-wide mode is UNSET: Istio then uses PERMISSIVE, veil STRICT, so \
                 plaintext is refused wherever no namespace or workload policy admits it",
            );
        }
    }
    if let Some(mtls) = &mut out.mtls {
        disable(mtls, "spec.mtls.mode", notes);
    }
    for (port, mtls) in &mut out.port_level_mtls {
        disable(mtls, &format!("spec.portLevelMtls[{port}].mode"), notes);
    }
    let policy = VeilPolicy::new(metadata, VeilSpec::PeerAuthentication(out));
    match validate(&policy) {
        Ok(()) => Some(policy),
        Err(problem) => notes.refuse(problem),
    }
}

/// DISABLE is written PERMISSIVE, which is what veil makes of it.
fn disable(mtls: &mut MutualTls, field: &str, notes: &mut Notes) {
    if mtls.mode == MtlsMode::Disable {
        mtls.mode = MtlsMode::Permissive;
        notes.note(
            Severity::Changed,
            field,
            "DISABLE is written PERMISSIVE, which is how veil treats it: plaintext is admitted, \
             and so is mutual TLS (HBONE) as in Istio's ambient mode; Istio's sidecars do not \
             terminate mutual TLS under DISABLE",
        );
    }
}

/// Writes the policy out, reads it back as veil's PeerAuthentication and compiles it.
fn validate(policy: &VeilPolicy) -> Result<(), Problem> {
    let back: PeerAuthentication = read_back(policy)?;
    if VeilSpec::PeerAuthentication(back.spec.clone()) != policy.spec {
        return Err(Problem::new(
            "spec",
            "reads back differently from what was written",
        ));
    }
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    compile_peer_auth(namespace, &policy.metadata.name, &back.spec)
        .map(drop)
        .map_err(refused)
}

/// Where a PeerAuthentication applies, as far as leaving it out goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reach {
    /// The whole mesh: it is Istio's root namespace's, without a selector.
    Mesh,
    /// A namespace.
    Namespace,
    /// Workloads of a namespace, by a selector.
    Workloads,
    /// Nothing: Istio ignores it.
    IgnoredByIstio,
}

impl Reach {
    /// The reach of a PeerAuthentication in `namespace` (as written) with a selector or not.
    pub(super) fn of(namespace: Option<&str>, selects: bool, options: &Options) -> Self {
        let in_root = namespace == Some(options.root_namespace_from.as_str());
        match (selects, in_root) {
            (true, true) => Self::IgnoredByIstio,
            (true, false) => Self::Workloads,
            (false, true) => Self::Mesh,
            (false, false) => Self::Namespace,
        }
    }
}

/// What leaving out the PeerAuthentication `value` (as written) does, in a sentence. veil needs no
/// stand-in for one: without any, veil's mode is STRICT.
pub(super) fn left_out(value: &Value, options: &Options) -> String {
    let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str);
    let spec = value.get("spec");
    // A selector that cannot be read counts as one: a narrower reach makes the weaker claim.
    let selects = spec
        .and_then(|s| s.get("selector"))
        .filter(|s| !s.is_null())
        .is_some_and(|s| {
            s.get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|labels| !labels.is_empty())
        });
    left_out_reason(Reach::of(namespace, selects, options), spec)
}

/// What leaving out a PeerAuthentication of `reach` with `spec` (Istio's or veil's: the same
/// fields) does, in a sentence.
pub(super) fn left_out_reason(reach: Reach, spec: Option<&Value>) -> String {
    let modes = Modes::read(spec);
    let fallback = match reach {
        Reach::IgnoredByIstio => {
            return "Istio ignores this PeerAuthentication, so leaving it out changes nothing"
                .to_owned();
        }
        Reach::Mesh => {
            return if modes.plaintext || modes.unreadable {
                "leaving it out never widens access: without a mesh-wide PeerAuthentication \
                 veil's mode is STRICT, so plaintext it admitted is refused (write a veil \
                 PeerAuthentication by hand if plaintext must stay admitted)"
                    .to_owned()
            } else {
                "leaving it out never widens access: without a mesh-wide PeerAuthentication \
                 veil's mode is STRICT"
                    .to_owned()
            };
        }
        Reach::Namespace => {
            "the mesh-wide PeerAuthentication (veil's default, STRICT, without one)"
        }
        Reach::Workloads => {
            "the namespace's or the mesh-wide PeerAuthentication (veil's default, STRICT, without \
             either)"
        }
    };
    if modes.strict || modes.unreadable {
        let start = if modes.unreadable {
            "its modes cannot be read; where it required mutual TLS (STRICT)"
        } else {
            "where it required mutual TLS (STRICT)"
        };
        format!(
            "{start}, {fallback} decides instead: leaving it out widens nothing if that is STRICT \
             or absent, but admits plaintext if it is PERMISSIVE; check, or write this \
             PeerAuthentication in veil by hand"
        )
    } else if modes.plaintext {
        format!(
            "leaving it out never widens access: where it admitted plaintext, {fallback} decides \
             instead, which admits no more than it did"
        )
    } else {
        format!(
            "its modes are UNSET and defer to {fallback}, as its absence does: leaving it out \
             changes nothing"
        )
    }
}

/// The modes a PeerAuthentication sets, for all ports and per port.
#[derive(Debug, Default)]
struct Modes {
    strict: bool,
    /// PERMISSIVE or DISABLE.
    plaintext: bool,
    unreadable: bool,
}

impl Modes {
    fn read(spec: Option<&Value>) -> Self {
        let mut modes = Self::default();
        let spec = match spec {
            None | Some(Value::Null) => return modes,
            Some(Value::Object(spec)) => spec,
            Some(_) => {
                modes.unreadable = true;
                return modes;
            }
        };
        let mut settings: Vec<&Value> = spec.get("mtls").into_iter().collect();
        match spec.get("portLevelMtls") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ports)) => settings.extend(ports.values()),
            Some(_) => modes.unreadable = true,
        }
        for setting in settings {
            match setting {
                Value::Null => {}
                Value::Object(m) => match m.get("mode") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(mode)) => match mode.as_str() {
                        "STRICT" => modes.strict = true,
                        "PERMISSIVE" | "DISABLE" => modes.plaintext = true,
                        "UNSET" => {}
                        _ => modes.unreadable = true,
                    },
                    Some(_) => modes.unreadable = true,
                },
                _ => modes.unreadable = true,
            }
        }
        modes
    }
}
