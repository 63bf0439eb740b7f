//! HBONE: TCP tunnelled through HTTP/2 `CONNECT` streams over mutual TLS 1.3 on port 15008,
//! wire-compatible with Istio's ztunnel; and UDP flows as `CONNECT-UDP` streams on the same
//! connections ([`udp`], veil's own: Istio's ztunnel carries no UDP).

mod client;
mod early;
mod io;
mod request;
mod server;
mod tunnel;
pub mod udp;

pub use client::{ConnectError, H2Client, H2Settings};
pub use early::EarlyData;
pub use io::H2Io;
pub use request::{
    BAGGAGE, BadRequest, ConnectTarget, FORWARDED, HBONE_PORT, TRACEPARENT, TunnelMeta,
    connect_request, parse_connect,
};
pub use server::{InboundStream, refuse, serve_connection, serve_connection_with};
pub use tunnel::{CHUNK, Transferred, TunnelError, abort_socket, splice};

#[cfg(test)]
mod tests;
