//! HBONE requests: an HTTP/2 `CONNECT` whose `:authority` is the destination `ip:port`, optionally
//! with `forwarded` (the original client address) and `traceparent`. Building and validating them
//! are pure functions.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// `forwarded` (RFC 7239).
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `traceparent` (W3C Trace Context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `baggage` (W3C): the names of the client's workload (namespace, controller, application,
/// version), which the server's ztunnel or waypoint puts in its metrics. Inside the tunnel's TLS;
/// read only by the proxy that terminates it, never passed to an application.
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Optional metadata of a tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelMeta {
    /// The address of the original client, sent as `forwarded: for=…`.
    pub forwarded_for: Option<IpAddr>,
    /// A W3C `traceparent` to propagate.
    pub traceparent: Option<HeaderValue>,
    /// The client's names, as `baggage` (see [`BAGGAGE`]).
    pub baggage: Option<HeaderValue>,
}

/// The `CONNECT` request for a tunnel to `target`.
pub fn connect_request(target: SocketAddr, meta: &TunnelMeta) -> Request<()> {
    let uri = Uri::builder()
        .authority(target.to_string())
        .build()
        .expect("a socket address is a valid authority");
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .version(Version::HTTP_2)
        .body(())
        .expect("a CONNECT request is valid");
    meta_headers(request.headers_mut(), meta);
    request
}

/// Adds `meta`'s headers to a tunnel request.
pub(super) fn meta_headers(headers: &mut http::HeaderMap, meta: &TunnelMeta) {
    if let Some(ip) = meta.forwarded_for {
        let value = match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        headers.insert(
            FORWARDED.clone(),
            HeaderValue::from_str(&value).expect("an address is a valid header value"),
        );
    }
    if let Some(tp) = &meta.traceparent {
        headers.insert(TRACEPARENT.clone(), tp.clone());
    }
    if let Some(baggage) = &meta.baggage {
        headers.insert(BAGGAGE.clone(), baggage.clone());
    }
}

/// A request that is not a valid HBONE `CONNECT` (answered 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    /// Not `CONNECT`.
    #[error("method {0} is not CONNECT")]
    Method(String),
    /// Extended CONNECT (`:protocol`), or a path or scheme on a plain CONNECT.
    #[error("not a plain CONNECT: {0}")]
    NotPlainConnect(&'static str),
    /// Not a valid `CONNECT-UDP` ([`super::udp`]): the part that is wrong.
    #[error("not a valid CONNECT-UDP: {0}")]
    NotConnectUdp(&'static str),
    /// No `:authority`, or one that is not `ip:port`.
    #[error("authority {0:?} is not ip:port")]
    Authority(String),
}

/// What an inbound proxy learns from a valid `CONNECT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTarget {
    /// Where the tunnel should lead.
    pub target: SocketAddr,
    /// The original client address from `forwarded`, if present and parseable.
    pub forwarded_for: Option<IpAddr>,
}

/// Validates an inbound `CONNECT`.
pub fn parse_connect<B>(request: &Request<B>) -> Result<ConnectTarget, BadRequest> {
    if request.method() != Method::CONNECT {
        return Err(BadRequest::Method(request.method().to_string()));
    }
    if request.extensions().get::<h2::ext::Protocol>().is_some() {
        return Err(BadRequest::NotPlainConnect(":protocol"));
    }
    let uri = request.uri();
    if uri.scheme().is_some() {
        return Err(BadRequest::NotPlainConnect(":scheme"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| !p.as_str().is_empty() && p.as_str() != "/")
    {
        return Err(BadRequest::NotPlainConnect(":path"));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let target: SocketAddr = authority
        .parse()
        .map_err(|_| BadRequest::Authority(authority.to_owned()))?;
    if target.port() == 0 {
        return Err(BadRequest::Authority(authority.to_owned()));
    }
    Ok(ConnectTarget {
        target,
        forwarded_for: forwarded_for(request.headers()),
    })
}

/// The original client address a tunnel request's `forwarded` names, if any.
pub(super) fn forwarded_for(headers: &http::HeaderMap) -> Option<IpAddr> {
    headers
        .get(&FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for)
}

/// The first `for=` address of a `forwarded` value (`for=10.0.0.1`, `for="[fd00::1]:80"`).
fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    let element = value.split(',').next()?;
    let for_value = element
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("for"))?
        .1
        .trim_matches('"');
    if let Some(rest) = for_value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let host = match for_value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => for_value,
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_plain_connect_with_the_target_as_authority() {
        let target: SocketAddr = "10.2.0.10:8080".parse().unwrap();
        let req = connect_request(target, &TunnelMeta::default());
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().to_string(), "10.2.0.10:8080");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().is_empty(), "no metadata unless asked");
        let v6: SocketAddr = "[fd00::10]:443".parse().unwrap();
        let meta = TunnelMeta {
            forwarded_for: Some("fd00::5".parse().unwrap()),
            traceparent: Some(HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
            baggage: Some(HeaderValue::from_static("k8s.namespace.name=shop")),
        };
        let req = connect_request(v6, &meta);
        assert_eq!(req.uri().to_string(), "[fd00::10]:443");
        assert_eq!(req.headers()[&FORWARDED], "for=\"[fd00::5]\"");
        assert!(req.headers().contains_key(&TRACEPARENT));
        assert_eq!(req.headers()[&BAGGAGE], "k8s.namespace.name=shop");
        assert_eq!(parse_connect(&req).unwrap().target, v6);
    }

    #[test]
    fn round_trips_and_reads_forwarded() {
        let target: SocketAddr = "10.2.0.10:8080".parse().unwrap();
        let meta = TunnelMeta {
            forwarded_for: Some("10.1.0.10".parse().unwrap()),
            ..TunnelMeta::default()
        };
        let parsed = parse_connect(&connect_request(target, &meta)).unwrap();
        assert_eq!(parsed.target, target);
        assert_eq!(parsed.forwarded_for, meta.forwarded_for);
        for (value, want) in [
            ("for=10.0.0.1", Some("10.0.0.1")),
            ("For=\"10.0.0.1:4711\"", Some("10.0.0.1")),
            (
                "for=\"[fd00::1]:80\";proto=https, for=10.9.9.9",
                Some("fd00::1"),
            ),
            ("by=10.0.0.1", None),
            ("for=unknown", None),
            ("for=_hidden", None),
        ] {
            assert_eq!(
                parse_forwarded_for(value),
                want.map(|s| s.parse().unwrap()),
                "{value}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_plain_connect_to_ip_port() {
        let req = |method: Method, uri: &str| {
            Request::builder().method(method).uri(uri).body(()).unwrap()
        };
        let cases = [
            (req(Method::GET, "http://10.0.0.1:80/"), "method"),
            (req(Method::CONNECT, "example.com:80"), "authority"),
            (req(Method::CONNECT, "10.0.0.1"), "authority"),
            (req(Method::CONNECT, "10.0.0.1:0"), "authority"),
            (req(Method::CONNECT, "10.0.0.1:99999"), "authority"),
            (req(Method::CONNECT, "https://10.0.0.1:443/"), "scheme"),
        ];
        for (request, what) in cases {
            let err = parse_connect(&request).unwrap_err().to_string();
            assert!(
                err.contains(what) || err.contains("CONNECT"),
                "{what}: {err}"
            );
        }
        let mut extended = req(Method::CONNECT, "10.0.0.1:80");
        extended
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        assert_eq!(
            parse_connect(&extended).unwrap_err(),
            BadRequest::NotPlainConnect(":protocol")
        );
    }
}
