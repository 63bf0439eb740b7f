//! UDP over HBONE: a proxied UDP flow (CONNECT-UDP, RFC 9298) on an HTTP/2 stream of an HBONE
//! connection, its datagrams carried in DATAGRAM capsules (RFC 9297 §3.5) on the stream.
//!
//! The request is an extended `CONNECT` (RFC 8441) with `:protocol: connect-udp`, `:scheme: https`,
//! `:path: /.well-known/masque/udp/{ip}/{port}/` (RFC 9298's default template; an IPv6 address with
//! its colons percent-encoded) and `capsule-protocol: ?1`. As on HBONE's TCP tunnels,
//! `:authority` is the destination `ip:port` itself, so that the server checks one target: the path
//! must name the same. The same optional metadata (`forwarded`, `traceparent`, `baggage`) may follow.
//!
//! On the stream, each UDP payload travels as one capsule of type DATAGRAM (`0x00`) whose payload is
//! the context ID 0 (one byte, a QUIC variable-length integer) and the UDP payload. Capsules of other
//! types are skipped, as RFC 9297 requires; a datagram with another context ID is dropped; a
//! capsule longer than a UDP payload can be ends the stream (nothing legitimate sends one).

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use percent_encoding::percent_decode_str;

use super::quic::{DatagramReceiver, DatagramSender};
use super::request::{BadRequest, ConnectTarget, TunnelMeta, forwarded_for, meta_headers};
use super::stream::{Sent, TunnelRecv, TunnelSend};

/// The `:protocol` of a proxied UDP flow.
pub const CONNECT_UDP: &str = "connect-udp";
/// `capsule-protocol` (RFC 9297 §3.4).
pub static CAPSULE_PROTOCOL: HeaderName = HeaderName::from_static("capsule-protocol");
/// The prefix of RFC 9298's default URI template.
const PATH_PREFIX: &str = "/.well-known/masque/udp/";
/// The DATAGRAM capsule type.
const DATAGRAM: u64 = 0x00;
/// The largest UDP payload (IPv4: 65,535 less the IP and UDP headers; IPv6 jumbograms are not
/// carried).
pub const MAX_PAYLOAD: usize = 65_527;
/// The largest capsule payload accepted: a context ID and the largest UDP payload.
const MAX_CAPSULE: u64 = MAX_PAYLOAD as u64 + 8;

/// The `CONNECT-UDP` request for a flow to `target`.
pub fn connect_udp_request(target: SocketAddr, meta: &TunnelMeta) -> Request<()> {
    let host = match target.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6.to_string().replace(':', "%3A"),
    };
    let uri = Uri::builder()
        .scheme("https")
        .authority(target.to_string())
        .path_and_query(format!("{PATH_PREFIX}{host}/{}/", target.port()))
        .build()
        .expect("an address and a port make a valid URI");
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .version(Version::HTTP_2)
        .extension(h2::ext::Protocol::from_static(CONNECT_UDP))
        .header(CAPSULE_PROTOCOL.clone(), HeaderValue::from_static("?1"))
        .body(())
        .expect("a CONNECT-UDP request is valid");
    meta_headers(request.headers_mut(), meta);
    request
}

/// Whether `request` asks for a proxied UDP flow (whether or not it is a valid one).
pub fn is_connect_udp<B>(request: &Request<B>) -> bool {
    request
        .extensions()
        .get::<h2::ext::Protocol>()
        .is_some_and(|p| p.as_str() == CONNECT_UDP)
}

/// Validates an inbound `CONNECT-UDP`: the flow's target (the path's, which must be the
/// authority's) and the `forwarded` client.
pub fn parse_connect_udp<B>(request: &Request<B>) -> Result<ConnectTarget, BadRequest> {
    if request.method() != Method::CONNECT {
        return Err(BadRequest::Method(request.method().to_string()));
    }
    if !is_connect_udp(request) {
        return Err(BadRequest::NotConnectUdp(":protocol"));
    }
    let uri = request.uri();
    if uri.scheme_str() != Some("https") {
        return Err(BadRequest::NotConnectUdp(":scheme"));
    }
    if request
        .headers()
        .get(&CAPSULE_PROTOCOL)
        .map(HeaderValue::as_bytes)
        != Some(b"?1")
    {
        return Err(BadRequest::NotConnectUdp("capsule-protocol"));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let target = parse_path(uri.path()).ok_or(BadRequest::NotConnectUdp(":path"))?;
    if authority.parse::<SocketAddr>() != Ok(target) {
        return Err(BadRequest::Authority(authority.to_owned()));
    }
    Ok(ConnectTarget {
        target,
        forwarded_for: forwarded_for(request.headers()),
    })
}

/// `/.well-known/masque/udp/{ip}/{port}/` → the address (a literal address only: names are not
/// resolved by a ztunnel); port 0 is not a destination.
fn parse_path(path: &str) -> Option<SocketAddr> {
    let rest = path.strip_prefix(PATH_PREFIX)?.strip_suffix('/')?;
    let (host, port) = rest.split_once('/')?;
    let host = percent_decode_str(host).decode_utf8().ok()?;
    let ip: IpAddr = host.parse().ok()?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    // Only the decimal form: `053` or `+53` would name the same port in another spelling.
    (port.to_string() == rest.split_once('/')?.1).then_some(SocketAddr::new(ip, port))
}

/// Appends `payload` as one DATAGRAM capsule with context ID 0.
pub fn encode_datagram(payload: &[u8], out: &mut BytesMut) {
    out.reserve(payload.len() + 10);
    put_varint(out, DATAGRAM);
    put_varint(out, payload.len() as u64 + 1);
    put_varint(out, 0);
    out.put_slice(payload);
}

/// A malformed capsule stream (the flow is ended).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapsuleError {
    /// A capsule announces more than any UDP payload.
    #[error("capsule of {0} bytes is larger than any UDP payload")]
    TooLarge(u64),
    /// A DATAGRAM capsule without a context ID.
    #[error("DATAGRAM capsule without a context ID")]
    Empty,
    /// The stream ended inside a capsule.
    #[error("stream ended inside a capsule")]
    Truncated,
}

/// Reassembles capsules from a stream's DATA frames (a capsule may span frames, a frame may hold
/// several) and yields the UDP payloads of DATAGRAM capsules with context ID 0.
#[derive(Debug, Default)]
pub struct CapsuleReader {
    buf: BytesMut,
}

impl CapsuleReader {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next UDP payload, `None` when more bytes are needed.
    pub fn next_datagram(&mut self) -> Result<Option<Bytes>, CapsuleError> {
        loop {
            let mut peek = &self.buf[..];
            let (Some(kind), Some(len)) = (get_varint(&mut peek), get_varint(&mut peek)) else {
                return Ok(None);
            };
            if len > MAX_CAPSULE {
                return Err(CapsuleError::TooLarge(len));
            }
            let header = self.buf.len() - peek.len();
            let len = len as usize;
            if peek.len() < len {
                // Reserve for the rest of this capsule only: bounded by MAX_CAPSULE.
                self.buf.reserve(header + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(header);
            let mut capsule = self.buf.split_to(len).freeze();
            if kind != DATAGRAM {
                continue;
            }
            match get_varint(&mut capsule) {
                Some(0) => return Ok(Some(capsule)),
                Some(_) => continue,
                None => return Err(CapsuleError::Empty),
            }
        }
    }

    /// Checks the stream ended between capsules.
    pub fn finish(&self) -> Result<(), CapsuleError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CapsuleError::Truncated)
        }
    }
}

/// Writes `value` as a QUIC variable-length integer (RFC 9000 §16), in its shortest form.
pub(crate) fn put_varint(out: &mut BytesMut, value: u64) {
    match value {
        0..=0x3f => out.put_u8(value as u8),
        0x40..=0x3fff => out.put_u16(0x4000 | value as u16),
        0x4000..=0x3fff_ffff => out.put_u32(0x8000_0000 | value as u32),
        _ => {
            assert!(value < 1 << 62, "a variable-length integer has 62 bits");
            out.put_u64(0xc000_0000_0000_0000 | value);
        }
    }
}

/// Reads a QUIC variable-length integer, `None` (nothing consumed) when `buf` is too short.
pub(crate) fn get_varint(buf: &mut impl Buf) -> Option<u64> {
    let first = *buf.chunk().first()?;
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return None;
    }
    let mut value = u64::from(buf.get_u8() & 0x3f);
    for _ in 1..len {
        value = (value << 8) | u64::from(buf.get_u8());
    }
    Some(value)
}

/// One end of a proxied UDP flow's stream: datagrams in, datagrams out.
#[derive(Debug)]
pub struct DatagramStream {
    send: CapsuleSender,
    recv: CapsuleReceiver,
}

/// The sending half of a [`DatagramStream`].
#[derive(Debug)]
struct CapsuleSender {
    send: TunnelSend,
    out: BytesMut,
    /// Over HTTP/3: payloads that fit go as datagrams (boxed: HTTP/2's flows do not pay for it).
    datagrams: Option<Box<DatagramSender>>,
}

/// The receiving half of a [`DatagramStream`].
#[derive(Debug)]
struct CapsuleReceiver {
    recv: TunnelRecv,
    reader: CapsuleReader,
    /// Over HTTP/3: payloads that came as datagrams (boxed, as for sending).
    datagrams: Option<Box<DatagramReceiver>>,
}

impl DatagramStream {
    /// Wraps an open stream (the `CONNECT-UDP` answered 200).
    pub fn new(mut send: TunnelSend, recv: TunnelRecv) -> Self {
        let (out, inbound) = send
            .take_datagrams()
            .map(|(out, inbound)| (Box::new(out), Box::new(inbound)))
            .unzip();
        Self {
            send: CapsuleSender {
                send,
                out: BytesMut::new(),
                datagrams: out,
            },
            recv: CapsuleReceiver {
                recv,
                reader: CapsuleReader::default(),
                datagrams: inbound,
            },
        }
    }

    /// Sends one UDP payload, once the peer's flow-control window has room for all of it: a peer
    /// that does not read holds the sender back (its socket buffer then drops datagrams, as a
    /// network would) and never makes it buffer without bound.
    pub async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send.send(payload).await
    }

    /// The next UDP payload from the peer; `None` when the peer ended the flow.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        self.recv.recv().await
    }

    /// Ends the flow cleanly (END_STREAM; a QUIC FIN).
    pub async fn finish(&mut self) {
        // Fails only if the stream is already gone.
        let _ = self.send.send.finish().await;
    }

    /// Aborts the flow (a reset of the stream; on HTTP/3 the peer is also asked to stop sending
    /// once the flow is dropped).
    pub fn abort(&mut self) {
        self.send.send.reset();
    }
}

impl CapsuleSender {
    async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        if let Some(datagrams) = &self.datagrams
            && datagrams.send(payload).await
        {
            return Ok(());
        }
        encode_datagram(payload, &mut self.out);
        let capsule = self.out.split().freeze();
        match self.send.send_whole(capsule).await {
            Ok(Sent::All) => Ok(()),
            Ok(Sent::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

impl CapsuleReceiver {
    /// The next payload, from a capsule or (over HTTP/3) a datagram, whichever comes first; `None`
    /// when the peer ended the stream.
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        let Some(datagrams) = &mut self.datagrams else {
            return Self::capsule(&mut self.recv, &mut self.reader).await;
        };
        tokio::select! {
            biased;
            Some(payload) = datagrams.recv() => Ok(Some(payload)),
            // Cancel-safe: what the stream has read is kept in the reader and the stream.
            capsule = Self::capsule(&mut self.recv, &mut self.reader) => capsule,
        }
    }

    async fn capsule(
        recv: &mut TunnelRecv,
        reader: &mut CapsuleReader,
    ) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(payload) = reader.next_datagram().map_err(invalid)? {
                return Ok(Some(payload));
            }
            let Some(data) = recv.data().await else {
                reader.finish().map_err(invalid)?;
                return Ok(None);
            };
            let data = data.map_err(io::Error::other)?;
            reader.push(&data);
            recv.release(data.len()).map_err(io::Error::other)?;
        }
    }
}

/// How a relayed flow ended (without an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// No datagram either way for the idle timeout.
    Idle,
    /// The peer ended the stream.
    PeerEnded,
}

/// Relays datagrams between `socket` (connected to the flow's other end) and `stream` until the
/// flow has been idle for `idle` or the peer ends the stream; datagrams for the stream may also
/// arrive on `also` (those the flow's first socket received before `socket` existed). The two
/// directions run independently: one waiting for the peer's window never stops the other (both
/// ends waiting to send while neither reads would be a deadlock). Errors of `socket` itself (an
/// ICMP unreachable reported on the next receive) do not end the flow: UDP promises no delivery.
/// Returns the payload bytes moved each way.
pub async fn relay_datagrams(
    socket: &tokio::net::UdpSocket,
    stream: &mut DatagramStream,
    mut also: Option<&mut tokio::sync::mpsc::Receiver<Bytes>>,
    idle: std::time::Duration,
    on_to_stream: impl Fn(usize),
    on_to_socket: impl Fn(usize),
) -> io::Result<(super::Transferred, FlowEnd)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = tokio::time::Instant::now();
    // Milliseconds since `start` of the last datagram either way.
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (to_stream, to_socket) = (AtomicU64::new(0), AtomicU64::new(0));
    let DatagramStream { send, recv } = stream;
    let up = async {
        loop {
            let payload = tokio::select! {
                // The datagrams queued before the socket existed go first.
                biased;
                Some(payload) = async {
                    match also.as_deref_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => payload,
                readable = socket.readable() => {
                    if let Err(e) = readable {
                        return e;
                    }
                    // A buffer of the datagram's size, only while it is read: an idle flow
                    // holds none, a small datagram costs a small one.
                    let Ok(size) = rustix::io::ioctl_fionread(socket) else {
                        continue;
                    };
                    let mut buf = vec![0u8; (size as usize).min(MAX_PAYLOAD)];
                    match socket.try_recv(&mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            Bytes::from(buf)
                        }
                        Err(_) => continue,
                    }
                }
            };
            touch();
            if let Err(e) = send.send(&payload).await {
                return e;
            }
            to_stream.fetch_add(payload.len() as u64, Ordering::Relaxed);
            on_to_stream(payload.len());
        }
    };
    let down = async {
        while let Some(payload) = recv.recv().await? {
            // A full socket buffer drops the datagram, as a network would. Only what is delivered
            // counts, and keeps the flow alive: a peer sending into a flow whose application is
            // gone does not keep it open.
            if socket.send(&payload).await.is_ok() {
                touch();
                to_socket.fetch_add(payload.len() as u64, Ordering::Relaxed);
                on_to_socket(payload.len());
            }
        }
        Ok::<_, io::Error>(FlowEnd::PeerEnded)
    };
    let quiet = async {
        loop {
            let deadline =
                start + std::time::Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if tokio::time::Instant::now() >= deadline {
                return FlowEnd::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        failed = up => return Err(failed),
        ended = down => ended?,
        idle = quiet => idle,
    };
    let moved = super::Transferred {
        to_stream: to_stream.load(Ordering::Relaxed),
        to_socket: to_socket.load(Ordering::Relaxed),
    };
    Ok((moved, end))
}

fn invalid(e: CapsuleError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_connect_udp_for_both_families() {
        for target in ["10.2.0.10:5353", "[fd00::10]:53"] {
            let target: SocketAddr = target.parse().unwrap();
            let meta = TunnelMeta {
                forwarded_for: Some("10.1.0.9".parse().unwrap()),
                ..TunnelMeta::default()
            };
            let request = connect_udp_request(target, &meta);
            assert!(is_connect_udp(&request));
            assert_eq!(request.headers()[&CAPSULE_PROTOCOL], "?1");
            let parsed = parse_connect_udp(&request).unwrap();
            assert_eq!(parsed.target, target);
            assert_eq!(parsed.forwarded_for, meta.forwarded_for);
        }
        let v6 = connect_udp_request("[fd00::10]:53".parse().unwrap(), &TunnelMeta::default());
        assert_eq!(v6.uri().path(), "/.well-known/masque/udp/fd00%3A%3A10/53/");
        // Plain HBONE refuses it, and it is not plain HBONE.
        assert!(super::super::parse_connect(&v6).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_connect_udp_to_the_authority() {
        let build = |uri: &str, protocol: Option<&'static str>, capsules: bool| {
            let mut r = Request::builder().method(Method::CONNECT).uri(uri);
            if let Some(p) = protocol {
                r = r.extension(h2::ext::Protocol::from_static(p));
            }
            if capsules {
                r = r.header(CAPSULE_PROTOCOL.clone(), "?1");
            }
            r.body(()).unwrap()
        };
        let good = "https://10.0.0.1:53/.well-known/masque/udp/10.0.0.1/53/";
        assert!(parse_connect_udp(&build(good, Some(CONNECT_UDP), true)).is_ok());
        let cases = [
            (build(good, None, true), ":protocol"),
            (build(good, Some("websocket"), true), ":protocol"),
            (build(good, Some(CONNECT_UDP), false), "capsule-protocol"),
            (
                build(
                    "http://10.0.0.1:53/.well-known/masque/udp/10.0.0.1/53/",
                    Some(CONNECT_UDP),
                    true,
                ),
                ":scheme",
            ),
            // The path names another destination than the authority.
            (
                build(
                    "https://10.0.0.1:53/.well-known/masque/udp/10.0.0.2/53/",
                    Some(CONNECT_UDP),
                    true,
                ),
                "authority",
            ),
            (
                build(
                    "https://10.0.0.1:53/.well-known/masque/udp/10.0.0.1/053/",
                    Some(CONNECT_UDP),
                    true,
                ),
                ":path",
            ),
            (
                build(
                    "https://10.0.0.1:0/.well-known/masque/udp/10.0.0.1/0/",
                    Some(CONNECT_UDP),
                    true,
                ),
                ":path",
            ),
            (
                build(
                    "https://example.com:53/.well-known/masque/udp/example.com/53/",
                    Some(CONNECT_UDP),
                    true,
                ),
                ":path",
            ),
            (
                build(
                    "https://10.0.0.1:53/.well-known/masque/udp/10.0.0.1/53/../",
                    Some(CONNECT_UDP),
                    true,
                ),
                ":path",
            ),
        ];
        for (request, what) in cases {
            let err = parse_connect_udp(&request).unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn datagrams_survive_any_split_of_the_stream_and_other_capsules_are_skipped() {
        let payloads: Vec<Vec<u8>> = vec![
            vec![],
            b"dns".to_vec(),
            vec![7; 63],
            vec![8; 64],
            vec![9; 16_383],
            vec![1; MAX_PAYLOAD],
        ];
        let mut wire = BytesMut::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_datagram(p, &mut wire);
            if i == 2 {
                // An unknown capsule type (0x2a, 3 bytes) and a datagram of another context.
                wire.put_slice(&[0x2a, 3, 1, 2, 3]);
                wire.put_slice(&[0x00, 2, 5, 0xff]);
            }
        }
        for step in [1, 2, 7, 1000, wire.len()] {
            let mut reader = CapsuleReader::default();
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                reader.push(piece);
                while let Some(d) = reader.next_datagram().unwrap() {
                    got.push(d.to_vec());
                }
            }
            reader.finish().unwrap();
            assert_eq!(got, payloads, "split every {step} bytes");
        }
    }

    #[test]
    fn refuses_oversized_empty_and_truncated_capsules() {
        let mut reader = CapsuleReader::default();
        let mut huge = BytesMut::new();
        put_varint(&mut huge, DATAGRAM);
        put_varint(&mut huge, 1 << 40);
        reader.push(&huge);
        assert_eq!(reader.next_datagram(), Err(CapsuleError::TooLarge(1 << 40)));
        let mut reader = CapsuleReader::default();
        reader.push(&[0x00, 0x00]);
        assert_eq!(reader.next_datagram(), Err(CapsuleError::Empty));
        let mut reader = CapsuleReader::default();
        reader.push(&[0x00, 0x05, 0x00, 1]);
        assert_eq!(reader.next_datagram(), Ok(None));
        assert_eq!(reader.finish(), Err(CapsuleError::Truncated));
    }

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for value in [
            0,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            let expected_len = match value {
                0..=63 => 1,
                64..=16_383 => 2,
                16_384..=0x3fff_ffff => 4,
                _ => 8,
            };
            assert_eq!(out.len(), expected_len, "{value}");
            let mut read = &out[..];
            assert_eq!(get_varint(&mut read), Some(value));
            assert!(read.is_empty());
            let mut short = &out[..out.len() - 1];
            if !short.is_empty() {
                assert_eq!(get_varint(&mut short), None, "{value} cut short");
            }
        }
        // RFC 9000's example: 0x7bbd is 15,293 in two bytes.
        assert_eq!(get_varint(&mut &[0x7b, 0xbd][..]), Some(15_293));
    }
}
