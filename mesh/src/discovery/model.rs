//! The mesh as proxies see it: workloads, services, and the policies that apply to them. Sources (the
//! local file, Kubernetes) translate their input into these types; everything downstream reads only
//! these.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::identity::Identity;
use crate::policy::{AuthzPolicy, TelemetrySettings};

/// Whether a workload takes new connections as a service's endpoint (its pod's `Ready` condition
/// and whether it is being deleted, as EndpointSlices tell them apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Serving {
    /// Ready and not terminating: an endpoint.
    #[default]
    Ready,
    /// Terminating but still ready (draining): an endpoint only while its service has no ready one.
    Terminating,
    /// Not ready (starting, failing its readiness probe, or terminating and no longer serving): no
    /// endpoint. Still in the mesh: its own traffic and the connections it has are unaffected.
    NotReady,
}

impl Serving {
    /// From a pod's readiness and whether it is being deleted.
    pub fn of(ready: bool, terminating: bool) -> Self {
        match (ready, terminating) {
            (true, false) => Self::Ready,
            (true, true) => Self::Terminating,
            (false, _) => Self::NotReady,
        }
    }
}

/// What telemetry calls a workload: names shared by every replica and kept across restarts (a
/// pod's own name is neither), so that metric series stay few.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Naming {
    /// The controller that runs it (Deployment, StatefulSet, DaemonSet, CronJob…), else its name.
    pub workload: String,
    /// The application (`service.istio.io/canonical-name`, `app.kubernetes.io/name` or `app`
    /// label), else the workload.
    pub app: String,
    /// Its version (`service.istio.io/canonical-revision`, `app.kubernetes.io/version` or
    /// `version` label), else `latest`.
    pub version: String,
}

impl Naming {
    /// A workload's names from its controller's name (or its own) and its labels, as Istio derives
    /// its canonical service and revision.
    pub fn new(workload: String, labels: &BTreeMap<String, String>) -> Self {
        let first = |keys: [&str; 3]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        Self {
            app: first([
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .unwrap_or_else(|| workload.clone()),
            version: first([
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or_else(|| "latest".to_owned()),
            workload,
        }
    }
}

/// A pod (or VM) with an address and an identity.
#[derive(Debug, Serialize)]
pub struct Workload {
    /// Unique id (`namespace/name` unless the source has a better one).
    pub uid: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Service account; with the trust domain it makes the identity.
    pub service_account: Arc<str>,
    /// The node it runs on.
    pub node: Arc<str>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Labels (policy selectors, service selectors).
    pub labels: BTreeMap<String, String>,
    /// What telemetry calls it (shared: a control plane's subscriber holds it for the workload as
    /// received and for the mesh's copy).
    pub naming: Arc<Naming>,
    /// The network namespace of a pod on this node (in-pod capture).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Whether it is in the mesh (its traffic captured, reachable over HBONE). Traffic to a workload
    /// outside the mesh is plaintext passthrough.
    pub enrolled: bool,
    /// Whether it takes new connections as a service's endpoint.
    pub serving: Serving,
    /// Its SPIFFE identity.
    pub identity: Identity,
    /// The waypoint all its traffic goes through, if any: its own (pod or namespace label), or, once
    /// the snapshot is built, that of a service it backs (a pod cannot opt out of its service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointRef>,
    /// Further waypoints that claim it (it backs services with different waypoints): ambiguous, so
    /// its ztunnel admits nothing until the conflict is fixed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) waypoint_conflict: Vec<WaypointRef>,
    #[serde(skip)]
    pub(crate) policies: OnceLock<Arc<[Arc<AuthzPolicy>]>>,
    /// The Telemetry that applies to it, as a control plane resolved it (a subscriber has no labels
    /// to resolve it by); `None`: resolved from the mesh's Telemetry objects and its labels.
    #[serde(skip)]
    pub(crate) telemetry: Option<Arc<TelemetrySettings>>,
}

impl Workload {
    /// A copy whose policies are not judged yet: they depend on the services it backs
    /// (`MeshState::authz_for` judges a workload once, and a patch that changes what it backs
    /// must put back such a copy).
    #[cfg(feature = "kubernetes")]
    pub(crate) fn unjudged(&self) -> Self {
        Self {
            uid: self.uid.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            node: self.node.clone(),
            ips: self.ips.clone(),
            labels: self.labels.clone(),
            naming: self.naming.clone(),
            netns: self.netns.clone(),
            enrolled: self.enrolled,
            serving: self.serving,
            identity: self.identity.clone(),
            waypoint: self.waypoint.clone(),
            waypoint_conflict: self.waypoint_conflict.clone(),
            policies: OnceLock::new(),
            telemetry: self.telemetry.clone(),
        }
    }

    /// `namespace/name`, for logs.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The other waypoints that claim this workload besides [`Self::waypoint`]; when there are any,
    /// no traffic may reach it.
    pub fn waypoint_conflict(&self) -> &[WaypointRef] {
        &self.waypoint_conflict
    }

    /// Whether `other` is this workload with every field equal (the cache of the policies that
    /// apply to it aside).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        let Self {
            uid,
            name,
            namespace,
            service_account,
            node,
            ips,
            labels,
            naming,
            netns,
            enrolled,
            serving,
            identity,
            waypoint,
            waypoint_conflict,
            policies: _,
            telemetry,
        } = self;
        *uid == other.uid
            && *name == other.name
            && *namespace == other.namespace
            && *service_account == other.service_account
            && *node == other.node
            && *ips == other.ips
            && *labels == other.labels
            && *naming == other.naming
            && *netns == other.netns
            && *enrolled == other.enrolled
            && *serving == other.serving
            && *identity == other.identity
            && *waypoint == other.waypoint
            && *waypoint_conflict == other.waypoint_conflict
            && *telemetry == other.telemetry
    }
}

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// The port clients connect to on the service address.
    pub port: u16,
    /// The port of the endpoints it leads to.
    pub target_port: u16,
}

/// A service: virtual addresses in front of the workloads its selector picks.
#[derive(Debug, Serialize)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Virtual addresses.
    pub vips: Vec<IpAddr>,
    /// Ports (TCP).
    pub ports: Vec<ServicePort>,
    /// UDP ports: reached only by carried UDP (ztunnel's `--carry-udp`); a port number may be in
    /// both lists (DNS's 53), each with its own target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub udp_ports: Vec<ServicePort>,
    /// Picks the endpoints among the workloads of the namespace.
    pub selector: BTreeMap<String, String>,
    /// The workloads selected, by uid.
    pub endpoints: Vec<Arc<str>>,
    /// The waypoint its traffic goes through, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointRef>,
}

impl Service {
    /// `namespace/name`, for logs.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// This service with `endpoints` instead of its own.
    pub(crate) fn with_endpoints(&self, endpoints: Vec<Arc<str>>) -> Self {
        Self {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            vips: self.vips.clone(),
            ports: self.ports.clone(),
            udp_ports: self.udp_ports.clone(),
            selector: self.selector.clone(),
            endpoints,
            waypoint: self.waypoint.clone(),
        }
    }

    /// Whether `other` defines the same service: every field equal but the endpoints.
    pub(crate) fn same_definition(&self, other: &Self) -> bool {
        let Self {
            name,
            namespace,
            vips,
            ports,
            udp_ports,
            selector,
            endpoints: _,
            waypoint,
        } = self;
        *name == other.name
            && *namespace == other.namespace
            && *vips == other.vips
            && *ports == other.ports
            && *udp_ports == other.udp_ports
            && *selector == other.selector
            && *waypoint == other.waypoint
    }

    /// The endpoint port behind service port `port` (TCP).
    pub fn target_port(&self, port: u16) -> Option<u16> {
        find_target(&self.ports, port)
    }

    /// The endpoint port behind UDP service port `port`.
    pub fn udp_target_port(&self, port: u16) -> Option<u16> {
        find_target(&self.udp_ports, port)
    }
}

fn find_target(ports: &[ServicePort], port: u16) -> Option<u16> {
    ports.iter().find(|p| p.port == port).map(|p| p.target_port)
}

/// Whether `labels` carry every pair of `selector` (an empty selector selects nothing for services).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A reference to a waypoint by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WaypointRef {
    /// Namespace of the waypoint.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A waypoint: the L7 proxy that the traffic of some services and workloads must pass.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The identity its instances prove; destination ztunnels accept only this one for the
    /// workloads behind it.
    pub identity: Identity,
    /// Addresses of its instances (HBONE on 15008).
    pub ips: Vec<IpAddr>,
}

impl Waypoint {
    /// Its reference.
    pub fn reference(&self) -> WaypointRef {
        WaypointRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}
