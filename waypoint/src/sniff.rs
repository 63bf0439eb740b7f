//! Protocol detection on a fresh tunnel: HTTP/2 (its connection preface), HTTP/1.x (a request line),
//! or anything else, handled as opaque TCP with L4 policy only.

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods that start an HTTP/1.x request.
const METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// The longest request line looked at before deciding.
pub const MAX_SNIFF: usize = 8 * 1024;

/// What the first bytes of a tunnel say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or 1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), which gRPC uses.
    Http2,
    /// Not HTTP.
    Opaque,
}

/// Classifies `bytes`; `None` means more bytes are needed to tell.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // `METHOD SP request-target SP HTTP/1.x CRLF`
    let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        // No full line yet: wait for more only while it still looks like a request line.
        let could_be_request = match bytes.iter().position(|b| *b == b' ') {
            Some(end) => METHODS.contains(&&bytes[..end]),
            None => METHODS.iter().any(|m| m.starts_with(bytes)),
        };
        return (!could_be_request || bytes.len() >= MAX_SNIFF).then_some(Protocol::Opaque);
    };
    let mut parts = bytes[..line_end].split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    let http1 = METHODS.contains(&method)
        && !target.is_empty()
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
        && parts.next().is_none();
    Some(if http1 {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http1_http2_and_the_rest() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"", None),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(Protocol::Http1)),
            (
                b"PUT /api/v1/profiles/1 HTTP/1.0\r\n",
                Some(Protocol::Http1),
            ),
            (b"GE", None),
            (b"GET /very/long/path", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::Http2)),
            (b"PRI * HTTP/2.0\r\n", None),
            (b"\x16\x03\x01\x02\x00", Some(Protocol::Opaque)),
            (b"SSH-2.0-OpenSSH\r\n", Some(Protocol::Opaque)),
            (b"GET / SMTP\r\n", Some(Protocol::Opaque)),
            (b"get / HTTP/1.1\r\n", Some(Protocol::Opaque)),
            (b"PING\r\n", Some(Protocol::Opaque)),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                classify(bytes),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long = [b"GET /".as_slice(), &[b'a'; MAX_SNIFF]].concat();
        assert_eq!(classify(&long), Some(Protocol::Opaque));
    }
}
