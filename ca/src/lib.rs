//! veil-ca: the in-cluster certificate authority. It serves Istio's certificate-signing API, so
//! veil's and Istio's node agents can both use it, and issues short-lived SPIFFE certificates to
//! callers for their own identity, or to node agents for the workloads on their node.

pub mod audit;
pub mod authn;
pub mod authority;
pub mod authz;
pub mod csr;
pub mod kubernetes;
pub mod server;
pub mod service;
