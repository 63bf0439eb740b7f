//! Value matchers and the three-valued logic of evaluation.
//!
//! An L4 proxy cannot see HTTP attributes. A clause that needs one evaluates to [`Truth::Unknown`];
//! ALLOW rules then count as not matched and DENY rules as matched, so that what cannot be checked
//! is denied in both cases.

use std::net::IpAddr;

use ipnet::IpNet;

/// A match result that may be undecidable at this layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    /// The clause matches.
    Yes,
    /// The clause does not match.
    No,
    /// The clause depends on attributes this proxy cannot see.
    Unknown,
}

impl Truth {
    /// From a definite answer.
    pub fn from_bool(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }

    /// Conjunction: No wins, then Unknown.
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::No, _) | (_, Self::No) => Self::No,
            (Self::Unknown, _) | (_, Self::Unknown) => Self::Unknown,
            _ => Self::Yes,
        }
    }

    /// Disjunction: Yes wins, then Unknown.
    pub fn or(self, other: Self) -> Self {
        match (self, other) {
            (Self::Yes, _) | (_, Self::Yes) => Self::Yes,
            (Self::Unknown, _) | (_, Self::Unknown) => Self::Unknown,
            _ => Self::No,
        }
    }

    /// Negation; Unknown stays Unknown.
    pub fn negate(self) -> Self {
        match self {
            Self::Yes => Self::No,
            Self::No => Self::Yes,
            Self::Unknown => Self::Unknown,
        }
    }
}

/// Istio's string forms: exact, `prefix*`, `*suffix`, and `*` (present, any value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StringMatch {
    /// Equal to.
    Exact(Box<str>),
    /// Starts with.
    Prefix(Box<str>),
    /// Ends with.
    Suffix(Box<str>),
    /// Any value, as long as there is one.
    Present,
}

impl StringMatch {
    /// Parses one pattern. A `*` anywhere but at one end is not a pattern Istio defines.
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Present);
        }
        let inner_star = |s: &str| s.contains('*');
        if let Some(prefix) = pattern.strip_suffix('*') {
            if inner_star(prefix) {
                return Err(format!(
                    "{pattern:?}: `*` is only allowed at the start or the end"
                ));
            }
            return Ok(Self::Prefix(prefix.into()));
        }
        if let Some(suffix) = pattern.strip_prefix('*') {
            if inner_star(suffix) {
                return Err(format!(
                    "{pattern:?}: `*` is only allowed at the start or the end"
                ));
            }
            return Ok(Self::Suffix(suffix.into()));
        }
        if inner_star(pattern) {
            return Err(format!(
                "{pattern:?}: `*` is only allowed at the start or the end"
            ));
        }
        Ok(Self::Exact(pattern.into()))
    }

    /// Whether `value` matches.
    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == &**s,
            Self::Prefix(s) => value.starts_with(&**s),
            Self::Suffix(s) => value.ends_with(&**s),
            Self::Present => true,
        }
    }

    /// Whether `value` matches, ignoring ASCII case (hosts).
    pub(crate) fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            Self::Exact(s) => value.eq_ignore_ascii_case(s),
            Self::Prefix(s) => {
                v.len() >= s.len() && v[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            }
            Self::Suffix(s) => {
                v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
            Self::Present => true,
        }
    }
}

/// Patterns, ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AnyOf(pub(crate) Vec<StringMatch>);

impl AnyOf {
    /// Parses each pattern.
    pub(crate) fn parse(patterns: &[String]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| StringMatch::parse(p))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether any pattern matches `value`; an absent value matches nothing.
    pub(crate) fn matches(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.0.iter().any(|m| m.matches(v)))
    }
}

/// Parses an address or CIDR (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))
}

/// Whether `ip` is inside any of `nets`. IPv4-mapped IPv6 addresses match IPv4 blocks.
pub(crate) fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|net| net.contains(&ip))
}

/// Parses a port number (Istio writes ports as strings).
pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc*", "abcd", true),
            ("abc*", "xabc", false),
            ("*abc", "xabc", true),
            ("*abc", "abcx", false),
            ("*", "anything", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, value, want) in cases {
            let m = StringMatch::parse(pattern).unwrap();
            assert_eq!(m.matches(value), want, "{pattern:?} vs {value:?}");
        }
        for bad in ["a*b", "**a", "a**", "*a*"] {
            assert!(StringMatch::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            StringMatch::parse("*.Example.com")
                .unwrap()
                .matches_ignore_case("api.example.COM")
        );
        assert!(
            StringMatch::parse("API.*")
                .unwrap()
                .matches_ignore_case("api.example.com")
        );
        assert!(
            !AnyOf::parse(&["*".into()]).unwrap().matches(None),
            "presence needs a value"
        );
    }

    #[test]
    fn three_valued_logic() {
        use Truth::*;
        assert_eq!(Yes.and(Unknown), Unknown);
        assert_eq!(No.and(Unknown), No);
        assert_eq!(Yes.or(Unknown), Yes);
        assert_eq!(No.or(Unknown), Unknown);
        assert_eq!(Unknown.negate(), Unknown);
        assert_eq!(Yes.negate(), No);
    }

    #[test]
    fn cidrs_and_ports() {
        let nets = [
            parse_cidr("10.1.0.0/16").unwrap(),
            parse_cidr("fd00::1").unwrap(),
        ];
        assert!(in_any(&nets, "10.1.2.3".parse().unwrap()));
        assert!(in_any(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(in_any(&nets, "fd00::1".parse().unwrap()));
        assert!(!in_any(&nets, "10.2.0.1".parse().unwrap()));
        for bad in ["10.1.2.3/16", "10.0.0.0/33", "nope", ""] {
            assert!(parse_cidr(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_port("8080").unwrap(), 8080);
        for bad in ["0", "65536", "-1", "http", ""] {
            assert!(parse_port(bad).is_err(), "{bad:?} accepted");
        }
    }
}
