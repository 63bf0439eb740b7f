//! Workload discovery over xDS: Istio's resources (`istio.workload.Address`,
//! `istio.security.Authorization`) carried by Envoy's delta ADS, and the translation of a
//! [`MeshState`](crate::discovery::MeshState) into them. veil's controller serves these resources to
//! veil's and Istio's ztunnels alike, so the schema, names and numbers are Istio's; what veil needs
//! beyond Istio's schema is expressed in it (generated Authorizations) rather than beside it, with
//! exceptions, types of veil's own that only veil's proxies subscribe to: the namespaces enrolled
//! in the mesh ([`NAMESPACE_TYPE`], for ztunnels) and AuthorizationPolicies as written
//! ([`POLICY_TYPE`] and [`BINDING_TYPE`], for waypoints, which enforce what Istio's L4 form cannot
//! carry).

mod authorization;
mod client;
pub mod dump;
mod flags;
mod resources;
mod store;
mod waypoint;

pub use authorization::authorization;
pub(crate) use authorization::ip_from_bytes;
pub use client::{Subscription, XdsConfig, subscribe};
pub use flags::{Subscriber, XdsFlags};
pub(crate) use resources::service_name_of;
pub use resources::{
    ByName, CLUSTER_DOMAIN, CLUSTER_ID, Entry, Kind, Resources, WAYPOINT_ONLY_PREFIX, service_name,
    workload_name,
};
pub use store::{Refusal, Store};
pub use waypoint::{Audience, namespace_of};

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
    /// veil's own resources (`veil.discovery`).
    pub mod veil {
        include!("xds/proto/veil.discovery.rs");
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
/// The type URL of the namespaces enrolled in the mesh (veil's extension; Istio's schema has no
/// namespace resource, and Istio's ztunnel learns enrolment from istio-cni instead).
pub const NAMESPACE_TYPE: &str = "type.googleapis.com/veil.discovery.AmbientNamespace";
/// The type URL of AuthorizationPolicies as written, HTTP conditions and `targetRefs` included
/// (veil's extension, for waypoints: Istio sends its waypoints Envoy's configuration instead).
pub const POLICY_TYPE: &str = "type.googleapis.com/veil.discovery.AuthorizationPolicy";
/// The type URL of the policies a waypoint enforces for each workload behind it (veil's extension:
/// Istio's workloads carry no labels to select them by).
pub const BINDING_TYPE: &str = "type.googleapis.com/veil.discovery.PolicyBinding";

/// veil's extension of delta ADS, for large meshes: a subscriber that sets this key of its node's
/// metadata to `true` accepts a response split into parts, each acknowledged before the next is
/// sent. Every part but the last is marked ([`is_partial`]); a subscriber applies a part but takes
/// its mesh as current only with the last. A control plane that does not know the key sends whole
/// responses, and a subscriber that does not set it (Istio's ztunnel, which becomes ready on its
/// first response of each type) always receives them whole.
pub const SPLIT_RESPONSES: &str = "VEIL_SPLIT_RESPONSES";
/// What ends the `system_version_info` of every part of a split response but the last.
pub const PARTIAL_MARK: &str = "+partial";

/// veil's extension of Istio's Workload: the name of an `extensions` entry (no config) marking a
/// workload that is being deleted but still ready (draining). Its `status` is `UNHEALTHY`, so a
/// subscriber that does not know the extension (Istio's ztunnel) never sends it new connections;
/// veil's ztunnel does, to a service that has no ready endpoint left (as kube-proxy uses
/// terminating endpoints that are still serving).
pub const SERVING_WHILE_TERMINATING: &str = "veil.dev/serving-while-terminating";

/// veil's extension of Istio's Workload: the name of an `extensions` entry carrying the Telemetry
/// that applies to the workload, as the control plane resolved it from the workload's labels
/// (subscribers receive no labels). Its config is a `google.protobuf.StringValue` holding
/// [`TelemetrySettings`](crate::policy::TelemetrySettings) as JSON. Absent: none applies. A
/// subscriber that cannot read it records nothing about the workload (privacy fails closed);
/// Istio's ztunnel ignores it.
pub const TELEMETRY_EXTENSION: &str = "veil.dev/telemetry";
/// The type of [`TELEMETRY_EXTENSION`]'s config.
pub const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// veil's extension of Istio's Service: the name of an `extensions` entry carrying the service's
/// UDP ports (Istio's `ports` are its TCP ones, and its ztunnel carries no UDP), reached only by
/// carried UDP. Its config is an `istio.workload.PortList`, every target port given (a named target
/// port is resolved by the control plane). Absent: the service has no UDP port. A subscriber that
/// cannot read it refuses the service's update (it keeps the last one it could read); Istio's
/// ztunnel ignores it.
pub const UDP_PORTS_EXTENSION: &str = "veil.dev/udp-ports";
/// The type of [`UDP_PORTS_EXTENSION`]'s config.
pub const PORT_LIST_TYPE: &str = "type.googleapis.com/istio.workload.PortList";

/// `google.protobuf.StringValue`, for [`TELEMETRY_EXTENSION`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StringValue {
    /// The string.
    #[prost(string, tag = "1")]
    pub(crate) value: String,
}

/// Whether `node` accepts split responses.
pub fn accepts_split(node: Option<&proto::discovery::Node>) -> bool {
    use prost_types::value::Kind as Value;
    let value = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(SPLIT_RESPONSES))
        .and_then(|v| v.kind.as_ref());
    match value {
        Some(Value::BoolValue(b)) => *b,
        Some(Value::StringValue(s)) => s == "true",
        _ => false,
    }
}

/// The node metadata of a subscriber that accepts split responses.
pub fn split_metadata() -> prost_types::Struct {
    prost_types::Struct {
        fields: [(
            SPLIT_RESPONSES.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::BoolValue(true)),
            },
        )]
        .into(),
    }
}

/// Whether `response` is a part of a split response that more parts follow.
pub fn is_partial(response: &proto::discovery::DeltaDiscoveryResponse) -> bool {
    response.system_version_info.ends_with(PARTIAL_MARK)
}

#[cfg(test)]
mod tests;
