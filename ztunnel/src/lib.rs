//! veil-ztunnel: the per-node L4 tunnel. It captures the traffic of the enrolled pods on its node
//! inside their network namespaces, carries it over HBONE (HTTP/2 CONNECT over mutual TLS 1.3) with
//! each pod's own SPIFFE identity, and enforces L4 authorization at the destination.
//!
//! A connection's path: `outbound` (15001 in the source pod) → `veil_mesh::pool` → HBONE →
//! `inbound` (15008 in the destination pod) → the application. Plaintext reaching a pod lands in
//! `plaintext` (15006). `enrol` keeps the captured pods in step with the mesh; `capture` and
//! `netns` do the namespace work.

pub mod accept;
pub mod admission;
pub mod app;
pub mod budget;
pub mod capture;
pub mod cgroup;
pub mod cni;
pub mod config;
pub mod conntrack;
pub mod context;
pub mod enrol;
pub mod handover;
pub mod inbound;
pub mod lifecycle;
pub mod local;
pub mod netns;
pub mod ops;
pub mod outbound;
pub mod plaintext;
pub mod probes;
pub mod quic;
pub mod registry;
pub mod udp;

#[cfg(test)]
mod footprint;
