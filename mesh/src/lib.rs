//! veil-mesh: the common language of veil's components — SPIFFE identity and mesh mTLS, the CA
//! client and the certificate manager, and authorization policy.

pub mod admin;
pub mod discovery;
pub mod hbone;
pub mod identity;
pub mod policy;
pub mod pool;
mod reader;
pub mod relay;
pub mod serve;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod xds;
