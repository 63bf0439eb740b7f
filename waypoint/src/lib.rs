//! veil-waypoint: the optional per-namespace L7 proxy. Source ztunnels send the traffic of the
//! services and workloads that use it here over HBONE; it parses HTTP/1.1, HTTP/2 and gRPC,
//! authorizes every request with the client's verified identity, and forwards allowed requests to an
//! endpoint over HBONE with its own identity. Non-HTTP traffic gets L4 policy only.
//!
//! A tunnel's path: `inbound` (target, L4 gate, sniffing) → `l7` (per request: `canon` for the one
//! path and host judged and forwarded, `target` for the endpoint and policies, `veil_mesh::policy::evaluate`, `upstream` to forward) or opaque TCP.

pub mod access_log;
pub mod app;
pub mod canon;
pub mod config;
pub mod context;
pub mod drain;
pub mod inbound;
pub mod io;
pub mod l7;
pub mod report;
pub mod sniff;
pub mod target;
pub mod upstream;
