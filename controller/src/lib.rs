//! veil-controller: veil's control plane. It reads the mesh once (the Kubernetes API, or the local
//! mesh file), translates every change into Istio's workload discovery resources, and serves them
//! over delta xDS to the ztunnels that subscribe — veil's, and Istio's.

pub mod ads;
pub mod auth;
pub mod hub;
pub mod lease;
pub mod metrics;
pub mod server;
pub mod service;
pub mod status;
pub mod translate;
