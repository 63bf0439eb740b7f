//! HBONE: TCP tunnelled through HTTP/2 `CONNECT` streams over mutual TLS 1.3 on port 15008,
//! wire-compatible with Istio's ztunnel, or through HTTP/3 ones over QUIC on UDP 15008 ([`quic`],
//! veil's own); and UDP flows as `CONNECT-UDP` streams on the same
//! connections ([`udp`], veil's own: Istio's ztunnel carries no UDP).

mod client;
mod early;
mod io;
pub mod quic;
mod request;
mod server;
mod stream;
mod tunnel;
pub mod udp;

pub use client::{ConnectError, H2Client, H2Settings, HboneClient};
pub use early::EarlyData;
pub use io::H2Io;
pub use quic::H3Client;
pub use request::{
    BAGGAGE, BadRequest, ConnectTarget, FORWARDED, HBONE_PORT, TRACEPARENT, TunnelMeta,
    connect_request, parse_connect,
};
pub use server::{InboundStream, serve_connection, serve_connection_with};
pub use stream::{Responder, Sent, StreamError, TunnelRecv, TunnelSend, refuse};
pub use tunnel::{CHUNK, Transferred, TunnelError, abort_socket, splice};

pub use crate::reader::LastRead;

#[cfg(test)]
mod tests;
