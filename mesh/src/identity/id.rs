//! Workload identities: SPIFFE IDs of the Kubernetes form `spiffe://<td>/ns/<namespace>/sa/<sa>`.
//!
//! Parsing goes through the `spiffe` crate's validator and then insists on the canonical spelling, so
//! two identities are equal exactly when their URIs are byte-for-byte equal: a certificate cannot pass
//! a check by spelling the same identity differently (say, an upper-case trust domain).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use spiffe::{SpiffeId, TrustDomain};

/// A workload identity. Cheap to clone: identities key connection pools and label metrics.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The canonical URI, e.g. `spiffe://cluster.local/ns/default/sa/web`.
    uri: Arc<str>,
}

/// Why a string is not a workload identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The string is not a valid SPIFFE ID at all.
    #[error("{input:?} is not a valid SPIFFE ID: {reason}")]
    NotSpiffe { input: String, reason: String },
    /// A valid SPIFFE ID that is not spelled canonically (for example an upper-case trust domain).
    #[error("{input:?} is not in canonical form (expected {canonical:?})")]
    NotCanonical { input: String, canonical: String },
    /// A valid SPIFFE ID whose path is not `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "{input:?} is not a workload identity: the path must be /ns/<namespace>/sa/<service-account>"
    )]
    NotWorkload { input: String },
    /// A trust domain name that the SPIFFE specification does not allow.
    #[error("{input:?} is not a valid trust domain: {reason}")]
    BadTrustDomain { input: String, reason: String },
}

impl Identity {
    /// How many hold this identity (its clones share one string).
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.uri)
    }

    /// Parses and validates an identity URI.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let id = SpiffeId::new(input).map_err(|e| IdentityError::NotSpiffe {
            input: input.to_owned(),
            reason: e.to_string(),
        })?;
        let canonical = id.to_string();
        if canonical != input {
            return Err(IdentityError::NotCanonical {
                input: input.to_owned(),
                canonical,
            });
        }
        let segments: Vec<&str> = id.path().split('/').skip(1).collect();
        if !matches!(segments.as_slice(), ["ns", _, "sa", _]) {
            return Err(IdentityError::NotWorkload {
                input: input.to_owned(),
            });
        }
        Ok(Self { uri: input.into() })
    }

    /// Builds the identity of service account `sa` in namespace `ns` of trust domain `td`.
    pub fn new(td: &str, ns: &str, sa: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("spiffe://{td}/ns/{ns}/sa/{sa}"))
    }

    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        self.parts().0
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        self.parts().1
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        self.parts().2
    }

    /// The identity without its scheme (`cluster.local/ns/default/sa/web`): the form Istio's
    /// AuthorizationPolicy uses for `principals`.
    pub fn principal(&self) -> &str {
        &self.uri["spiffe://".len()..]
    }

    fn parts(&self) -> (&str, &str, &str) {
        // Validated at construction: `spiffe://td/ns/NS/sa/SA`, no empty segments.
        let mut it = self.principal().split('/');
        let td = it.next().unwrap_or_default();
        let ns = it.nth(1).unwrap_or_default();
        let sa = it.nth(1).unwrap_or_default();
        (td, ns, sa)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.uri)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Validates a trust domain name (`cluster.local`) and returns it in canonical form.
pub fn parse_trust_domain(input: &str) -> Result<String, IdentityError> {
    let td = TrustDomain::new(input).map_err(|e| IdentityError::BadTrustDomain {
        input: input.to_owned(),
        reason: e.to_string(),
    })?;
    if td.as_str() != input {
        return Err(IdentityError::BadTrustDomain {
            input: input.to_owned(),
            reason: format!("not in canonical form (expected {:?})", td.as_str()),
        });
    }
    Ok(input.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_identities() {
        let id = Identity::parse("spiffe://cluster.local/ns/prod/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "prod");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.principal(), "cluster.local/ns/prod/sa/web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/prod/sa/web");
        assert_eq!(Identity::new("cluster.local", "prod", "web").unwrap(), id);
    }

    #[test]
    fn rejects_what_is_not_a_canonical_workload_identity() {
        let cases = [
            ("empty", ""),
            ("no scheme", "cluster.local/ns/a/sa/b"),
            ("http scheme", "http://cluster.local/ns/a/sa/b"),
            (
                "upper-case trust domain",
                "spiffe://Cluster.local/ns/a/sa/b",
            ),
            ("no path", "spiffe://cluster.local"),
            ("short path", "spiffe://cluster.local/ns/a"),
            ("long path", "spiffe://cluster.local/ns/a/sa/b/c"),
            ("wrong keywords", "spiffe://cluster.local/namespace/a/sa/b"),
            ("empty segment", "spiffe://cluster.local/ns//sa/b"),
            ("dot segment", "spiffe://cluster.local/ns/../sa/b"),
            ("trailing slash", "spiffe://cluster.local/ns/a/sa/b/"),
            ("query", "spiffe://cluster.local/ns/a/sa/b?x=1"),
            ("port", "spiffe://cluster.local:80/ns/a/sa/b"),
            ("userinfo", "spiffe://u@cluster.local/ns/a/sa/b"),
        ];
        for (name, input) in cases {
            assert!(
                Identity::parse(input).is_err(),
                "{name}: {input:?} was accepted"
            );
        }
    }

    #[test]
    fn validates_trust_domains() {
        assert_eq!(
            parse_trust_domain("cluster.local").unwrap(),
            "cluster.local"
        );
        for bad in ["", "Cluster.local", "a b", "spiffe://x", "td/ns"] {
            assert!(parse_trust_domain(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
