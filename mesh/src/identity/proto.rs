//! The CA's gRPC API (`istio.v1.auth.IstioCertificateService`), generated from `mesh/proto/ca.proto`
//! by `cargo xtask gen-proto` and checked in.

#![allow(missing_docs, unreachable_pub, clippy::all, reason = "generated code")]

include!("proto/istio.v1.auth.rs");

/// The metadata key under which a node agent names the workload identity it asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
