//! Istio's schema for the two kinds, as its CRDs define it (istio/api `security/v1beta1`, the same for
//! `v1`), checked field by field so a problem is reported at its path.
//!
//! The converter reads Istio's schema, not veil's: a field Istio has and veil lacks (`trustDomains`)
//! must be recognised as Istio's and reported as unsupported, and a misspelt field must be refused,
//! never dropped (a dropped `notPrincipals` would widen the policy). Checking also removes `null`
//! values, which the API server prunes, so that what follows reads an absent field.

use serde_json::Value;

use super::Problem;

/// What a value must look like.
#[derive(Debug)]
pub(super) enum Shape {
    /// A mapping with these fields and no others.
    Fields(&'static [Field]),
    /// A list of values of one shape.
    List(&'static Shape),
    /// A string.
    Str,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// A mapping of strings to strings (labels).
    StrMap,
    /// A mapping keyed by port numbers (`portLevelMtls`).
    PortMap(&'static Shape),
}

/// A field of a [`Shape::Fields`].
#[derive(Debug)]
pub(super) struct Field {
    name: &'static str,
    shape: Shape,
    required: bool,
}

impl Shape {
    /// Whether this is a mapping with a field `name`.
    pub(super) fn has_field(&self, name: &str) -> bool {
        matches!(self, Self::Fields(fields) if fields.iter().any(|f| f.name == name))
    }
}

const fn opt(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: false,
    }
}

const fn req(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: true,
    }
}

const STRINGS: Shape = Shape::List(&Shape::Str);

/// A `selector`.
pub(super) const SELECTOR: Shape = Shape::Fields(&[opt("matchLabels", Shape::StrMap)]);

/// A `targetRef`, or an item of `targetRefs`.
pub(super) const TARGET_REF: Shape = Shape::Fields(&[
    opt("group", Shape::Str),
    req("kind", Shape::Str),
    req("name", Shape::Str),
    opt("namespace", Shape::Str),
]);

const SOURCE: Shape = Shape::Fields(&[
    opt("principals", STRINGS),
    opt("notPrincipals", STRINGS),
    opt("requestPrincipals", STRINGS),
    opt("notRequestPrincipals", STRINGS),
    opt("namespaces", STRINGS),
    opt("notNamespaces", STRINGS),
    opt("serviceAccounts", STRINGS),
    opt("notServiceAccounts", STRINGS),
    opt("ipBlocks", STRINGS),
    opt("notIpBlocks", STRINGS),
    opt("remoteIpBlocks", STRINGS),
    opt("notRemoteIpBlocks", STRINGS),
    opt("trustDomains", STRINGS),
    opt("notTrustDomains", STRINGS),
]);

const OPERATION: Shape = Shape::Fields(&[
    opt("hosts", STRINGS),
    opt("notHosts", STRINGS),
    opt("ports", STRINGS),
    opt("notPorts", STRINGS),
    opt("methods", STRINGS),
    opt("notMethods", STRINGS),
    opt("paths", STRINGS),
    opt("notPaths", STRINGS),
]);

const CONDITION: Shape = Shape::Fields(&[
    req("key", Shape::Str),
    opt("values", STRINGS),
    opt("notValues", STRINGS),
]);

const RULE: Shape = Shape::Fields(&[
    opt(
        "from",
        Shape::List(&Shape::Fields(&[opt("source", SOURCE)])),
    ),
    opt(
        "to",
        Shape::List(&Shape::Fields(&[opt("operation", OPERATION)])),
    ),
    opt("when", Shape::List(&CONDITION)),
]);

/// The `spec` of Istio's AuthorizationPolicy.
pub(super) const AUTHORIZATION_POLICY: Shape = Shape::Fields(&[
    opt("selector", SELECTOR),
    opt("targetRef", TARGET_REF),
    opt("targetRefs", Shape::List(&TARGET_REF)),
    opt("rules", Shape::List(&RULE)),
    opt("action", Shape::Enum(&["ALLOW", "DENY", "AUDIT", "CUSTOM"])),
    opt("provider", Shape::Fields(&[opt("name", Shape::Str)])),
]);

const MTLS: Shape = Shape::Fields(&[opt(
    "mode",
    Shape::Enum(&["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]),
)]);

/// The `spec` of Istio's PeerAuthentication.
pub(super) const PEER_AUTHENTICATION: Shape = Shape::Fields(&[
    opt("selector", SELECTOR),
    opt("mtls", MTLS),
    opt("portLevelMtls", Shape::PortMap(&MTLS)),
]);

/// Checks `value` (at `path`) against `shape`, removing `null` fields on the way.
pub(super) fn check(value: &mut Value, shape: &Shape, path: &str) -> Result<(), Problem> {
    match (shape, value) {
        (Shape::Fields(fields), Value::Object(map)) => {
            map.retain(|_, v| !v.is_null());
            for (key, v) in map.iter_mut() {
                let Some(field) = fields.iter().find(|f| f.name == key) else {
                    return Err(unknown_field(path, key, fields));
                };
                check(v, &field.shape, &join(path, key))?;
            }
            match fields
                .iter()
                .find(|f| f.required && !map.contains_key(f.name))
            {
                Some(missing) => Err(Problem::new(
                    join(path, missing.name),
                    "required, but missing",
                )),
                None => Ok(()),
            }
        }
        (Shape::List(item), Value::Array(items)) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, v)| check(v, item, &format!("{path}[{i}]"))),
        (Shape::Str, Value::String(_)) => Ok(()),
        (Shape::Enum(allowed), Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        (Shape::Enum(allowed), Value::String(s)) => Err(Problem::new(
            path,
            format!("{s:?} is not one of {}", allowed.join(", ")),
        )),
        (Shape::StrMap, Value::Object(map)) => match map.iter().find(|(_, v)| !v.is_string()) {
            Some((key, v)) => Err(wrong_type(&join(path, key), "a string", v)),
            None => Ok(()),
        },
        (Shape::PortMap(item), Value::Object(map)) => {
            map.retain(|_, v| !v.is_null());
            for (key, v) in map.iter_mut() {
                let at = format!("{path}[{key}]");
                if key.parse::<u32>().is_err() {
                    return Err(Problem::new(at, "the key is not a port number"));
                }
                check(v, item, &at)?;
            }
            Ok(())
        }
        (shape, v) => Err(wrong_type(path, expected(shape), v)),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn expected(shape: &Shape) -> &'static str {
    match shape {
        Shape::Fields(_) | Shape::StrMap | Shape::PortMap(_) => "a mapping",
        Shape::List(_) => "a list",
        Shape::Str | Shape::Enum(_) => "a string",
    }
}

fn wrong_type(path: &str, expected: &str, found: &Value) -> Problem {
    let found = match found {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    };
    Problem::new(path, format!("expected {expected}, found {found}"))
}

fn unknown_field(path: &str, key: &str, fields: &[Field]) -> Problem {
    let closest = fields
        .iter()
        .map(|f| (distance(key, f.name), f.name))
        .min()
        .filter(|(d, _)| *d <= 2);
    let reason = match closest {
        Some((_, name)) => format!("unknown field {key:?} (did you mean {name:?}?)"),
        None => format!("unknown field {key:?}"),
    };
    Problem::new(join(path, key), reason)
}

/// Levenshtein distance, case-insensitive: `notprincipal` is one edit from `notPrincipals`.
pub(super) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}
