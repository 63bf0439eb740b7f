//! veil's API types, in group `security.veil.dev/v1`. Their `spec`s have the schema and semantics of
//! Istio's `security.istio.io/v1` resources of the same names, so a policy moves over by changing its
//! `apiVersion`.
//!
//! Types only: the meaning of a policy (compilation, validation, evaluation) lives in `veil-mesh`.

pub mod authorization;
pub mod peer_authentication;
pub mod selector;

/// The API group.
pub const GROUP: &str = "security.veil.dev";
/// The API version.
pub const VERSION: &str = "v1";
/// `apiVersion` of veil's resources.
pub const API_VERSION: &str = "security.veil.dev/v1";
