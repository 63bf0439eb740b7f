//! veil-mesh: the common language of veil's components — SPIFFE identity and mesh mTLS, the CA
//! client and the certificate manager.

pub mod identity;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
