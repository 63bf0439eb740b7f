//! Authorization: AuthorizationPolicy and PeerAuthentication with Istio's semantics (and the
//! Telemetry resource, resolved per workload the same way), compiled once
//! per change and evaluated without allocation. ztunnel evaluates the L4 part, the waypoint L4 + L7,
//! with this one implementation.

pub(crate) mod compile;
mod eval;
mod index;
mod istio;
pub(crate) mod matcher;
mod peer_auth;
mod telemetry;

pub use compile::{
    AuthzPolicy, PolicyError, PolicyId, SUPPORTED_WHEN_KEYS, Scope, Target, compile_authz,
};
pub use eval::{Attributes, Decision, DenyReason, HttpAttributes, Verdict, evaluate};
pub use index::PolicyIndex;
pub use istio::{compile_istio, deny_everything, istio_policy_name};
pub use matcher::Truth;
pub use peer_auth::{
    PeerAuthPolicy, PeerMode, PeerProfile, compile_peer_auth, peer_profile, resolve_peer_mode,
};
pub use telemetry::{
    TelemetryPolicy, TelemetrySettings, compile_telemetry, resolve_telemetry, telemetry_fail_closed,
};
pub use veil_crd::telemetry::AccessLogLevel;

#[cfg(test)]
mod tests;
