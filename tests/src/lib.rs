//! veil's end-to-end harness: builds a small cluster of nodes and pods in Linux network
//! namespaces, runs the real `veil-ca` and `veil-ztunnel` binaries and real applications in it,
//! captures the wire, and tears everything down afterwards. Used by the tests in `tests/` and by
//! `cargo xtask demo`.

#![allow(
    clippy::print_stderr,
    reason = "the harness reports skipped tests and kept logs"
)]

pub mod apiserver;
pub mod certs;
pub mod cluster;
pub mod controlplane;
pub mod install;
pub mod kube;
pub mod mesh;
pub mod otlp;
pub mod process;
pub mod wire;
