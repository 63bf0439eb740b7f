//! HBONE `CONNECT` validation (`veil_mesh::hbone::parse_connect`, and `parse_connect_udp` for UDP
//! flows), the first thing an inbound ztunnel or waypoint does with a stream a peer opened.
//!
//! Input: HTTP/2-style lines, `name: value` or `name value`, one per line. The pseudo-headers
//! `:method`, `:scheme`, `:authority`, `:path` and `:protocol` are assembled as h2 assembles them
//! (a URI from its parts, `:protocol` as the extended-CONNECT extension); every other line is a
//! header. Values http itself refuses are dropped, as h2 would refuse the stream before veil sees it.

#![no_main]

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;

use veil_mesh::hbone::udp::parse_connect_udp;
use veil_mesh::hbone::{BadRequest, parse_connect};

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    match parse_connect(&request) {
        // A validated target is a concrete, non-zero port: what the proxy will dial.
        Ok(target) => assert_ne!(target.target.port(), 0),
        Err(BadRequest::Method(_) | BadRequest::NotPlainConnect(_) | BadRequest::Authority(_)) => {}
        Err(BadRequest::NotConnectUdp(what)) => {
            panic!("a plain CONNECT was judged as a CONNECT-UDP ({what})")
        }
    }
    // The same stream read as a UDP flow: a validated target is the authority's own address, with
    // a non-zero port, and the request is never also a valid plain CONNECT.
    if let Ok(target) = parse_connect_udp(&request) {
        assert_ne!(target.target.port(), 0);
        let authority = request.uri().authority().map(|a| a.as_str().parse::<SocketAddr>());
        assert_eq!(authority.and_then(Result::ok), Some(target.target));
        assert!(parse_connect(&request).is_err());
    }
});

fn request(data: &[u8]) -> Option<Request<()>> {
    let mut method = Method::CONNECT;
    let mut parts = http::uri::Parts::default();
    let mut protocol = None;
    let mut headers = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Lines without a name (blank, or no separator) carry nothing, as in an HPACK block.
        let Some((name, value)) = split(line) else {
            continue;
        };
        match name {
            b":method" => method = Method::from_bytes(value).ok()?,
            b":scheme" => parts.scheme = Some(Scheme::try_from(value).ok()?),
            b":authority" => parts.authority = Some(Authority::try_from(value).ok()?),
            b":path" => parts.path_and_query = Some(PathAndQuery::try_from(value).ok()?),
            b":protocol" => {
                protocol = Some(h2::ext::Protocol::from(std::str::from_utf8(value).ok()?))
            }
            _ => headers.push((
                HeaderName::from_bytes(name).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            )),
        }
    }
    let uri = Uri::from_parts(parts).ok()?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .version(Version::HTTP_2)
        .body(())
        .ok()?;
    if let Some(protocol) = protocol {
        request.extensions_mut().insert(protocol);
    }
    for (name, value) in headers {
        request.headers_mut().append(name, value);
    }
    Some(request)
}

/// `name: value` (a pseudo-header's name starts with `:`, so the separator is the first `:` after
/// the first byte), or `name value`.
fn split(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line
        .iter()
        .skip(1)
        .position(|b| *b == b':' || *b == b' ')
        .map(|i| i + 1)?;
    let value = &line[at + 1..];
    Some((&line[..at], value.strip_prefix(b" ").unwrap_or(value)))
}
