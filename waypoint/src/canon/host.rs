//! Host canonicalization: `Host` header values and URI authorities to one form, `name[:port]`.
//!
//! Names are lower-cased and lose one trailing dot (`Admin.Internal.` is `admin.internal`), IPv6
//! literals are written in their canonical text form inside brackets, a port is written in decimal.
//! The port is kept: Istio matches `hosts` against the authority as sent, so `hosts: [a.b]` does not
//! match `a.b:8000` and `a.b:8000` (or `a.b:*`) does. Anything else is refused: an empty port
//! (`a.b:`), characters outside `a-z 0-9 - . _`, empty labels, percent-encodings, user information.

use std::net::Ipv6Addr;

/// The longest host name accepted (RFC 1035: 253 characters, plus a trailing dot).
const MAX_NAME: usize = 254;

/// Why a host is refused.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// Nothing before the port.
    #[error("empty host")]
    Empty,
    /// `name:` with nothing after the colon.
    #[error("empty port")]
    EmptyPort,
    /// A port that is not a number from 1 to 65535.
    #[error("invalid port")]
    InvalidPort,
    /// A character that no host name has, or an empty label.
    #[error("invalid host name")]
    InvalidName,
    /// `[…]` that is not an IPv6 address.
    #[error("invalid IPv6 literal")]
    InvalidIpv6,
}

/// The canonical form of a `Host` value or authority.
pub fn canonicalize(raw: &[u8]) -> Result<String, HostError> {
    let raw = std::str::from_utf8(raw).map_err(|_| HostError::InvalidName)?;
    let (name, port) = split_port(raw)?;
    let mut out = if let Some(literal) = name.strip_prefix('[') {
        let inner = literal.strip_suffix(']').ok_or(HostError::InvalidIpv6)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| HostError::InvalidIpv6)?;
        format!("[{ip}]")
    } else {
        reg_name(name)?
    };
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    Ok(out)
}

/// `name:port` → (`name`, port); `[v6]:port` keeps the brackets on the name.
fn split_port(raw: &str) -> Result<(&str, Option<u16>), HostError> {
    let colon = if raw.starts_with('[') {
        let close = raw.find(']').ok_or(HostError::InvalidIpv6)?;
        match raw.as_bytes().get(close + 1) {
            None => None,
            Some(b':') => Some(close + 1),
            Some(_) => return Err(HostError::InvalidIpv6),
        }
    } else {
        raw.find(':')
    };
    let Some(colon) = colon else {
        return Ok((raw, None));
    };
    let (name, port) = (&raw[..colon], &raw[colon + 1..]);
    if port.is_empty() {
        return Err(HostError::EmptyPort);
    }
    // Digits only (no sign, no spaces) and at most five of them before parsing.
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::InvalidPort),
        Ok(p) => Ok((name, Some(p))),
    }
}

/// A registered name (or IPv4 address): lower-cased, one trailing dot dropped, validated.
fn reg_name(name: &str) -> Result<String, HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(HostError::InvalidName);
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(valid_label) {
        return Err(HostError::InvalidName);
    }
    Ok(name.to_ascii_lowercase())
}
