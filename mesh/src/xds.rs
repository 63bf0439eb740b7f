//! Workload discovery over xDS: Istio's resources (`istio.workload.Address`,
//! `istio.security.Authorization`) carried by Envoy's delta ADS, and the translation of a
//! [`MeshState`](crate::discovery::MeshState) into them. veil's controller serves these resources to
//! veil's and Istio's ztunnels alike, so the schema, names and numbers are Istio's; what veil needs
//! beyond Istio's schema is expressed in it (generated Authorizations) rather than beside it.

mod authorization;
mod client;
mod resources;
mod store;

pub use authorization::authorization;
pub(crate) use authorization::ip_from_bytes;
pub use client::{Subscription, XdsConfig, subscribe};
pub(crate) use resources::service_name_of;
pub use resources::{
    CLUSTER_DOMAIN, CLUSTER_ID, Entry, Kind, Resources, WAYPOINT_ONLY_PREFIX, service_name,
    workload_name,
};
pub use store::{Refusal, Store};

/// Generated from `mesh/proto` by `cargo xtask gen-proto`, checked in.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::large_futures,
    rust_2018_idioms,
    reason = "generated code"
)]
pub mod proto {
    /// Istio's resources.
    pub mod istio {
        /// Workloads and services (`istio.workload`).
        pub mod workload {
            include!("xds/proto/istio.workload.rs");
        }
        /// L4 authorization (`istio.security`).
        pub mod security {
            include!("xds/proto/istio.security.rs");
        }
    }
    /// Envoy's discovery service, the delta ADS part.
    pub mod discovery {
        include!("xds/proto/envoy.service.discovery.v3.rs");
    }
}

/// The type URL of workload and service resources.
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// The type URL of authorization resources.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

#[cfg(test)]
mod tests;
