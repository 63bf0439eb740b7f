//! What a tunnel to the waypoint is for: a service or a workload that uses this waypoint, the
//! endpoints behind it, and the policies that apply — all pure functions of the mesh state.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use veil_mesh::discovery::{MeshState, Service, WaypointRef, Workload};
use veil_mesh::identity::Identity;
use veil_mesh::policy::{Attributes, AuthzPolicy, Decision, HttpAttributes, Target, evaluate};

/// A destination this waypoint serves.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A service, on one of its ports.
    Service {
        /// The service.
        service: Arc<Service>,
        /// The service port asked for.
        port: u16,
        /// The endpoints' port behind it.
        target_port: u16,
    },
    /// A workload, on a port.
    Workload {
        /// The workload.
        workload: Arc<Workload>,
        /// The port asked for.
        port: u16,
    },
}

/// Why a tunnel's target is not this waypoint's to serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotServed {
    /// Nothing in the mesh has this address.
    #[error("{0} is not a service or workload of the mesh")]
    Unknown(SocketAddr),
    /// It exists but does not use this waypoint.
    #[error("{0} does not use this waypoint")]
    OtherWaypoint(SocketAddr),
    /// The service has no such port.
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
}

/// Resolves the authority of a tunnel sent to waypoint `me`.
pub fn resolve(
    state: &MeshState,
    me: &WaypointRef,
    target: SocketAddr,
) -> Result<Destination, NotServed> {
    if let Some(service) = state.service_by_vip(target.ip()) {
        if service.waypoint.as_ref() != Some(me) {
            return Err(NotServed::OtherWaypoint(target));
        }
        let target_port = service
            .target_port(target.port())
            .ok_or_else(|| NotServed::NoPort {
                service: service.key(),
                port: target.port(),
            })?;
        return Ok(Destination::Service {
            service: service.clone(),
            port: target.port(),
            target_port,
        });
    }
    if let Some(workload) = state.workload_by_ip(target.ip()) {
        if workload.waypoint.as_ref() != Some(me) {
            return Err(NotServed::OtherWaypoint(target));
        }
        return Ok(Destination::Workload {
            workload: workload.clone(),
            port: target.port(),
        });
    }
    Err(NotServed::Unknown(target))
}

/// The decision of waypoint `me` on traffic for `dest` from `source` (verified identity, address),
/// sent to `endpoint` at `addr`: a request with its HTTP attributes, or opaque TCP with `None`.
/// The one decision the waypoint takes (and `veil explain` reproduces).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    state: &MeshState,
    me: &WaypointRef,
    dest: &Destination,
    endpoint: &Workload,
    addr: SocketAddr,
    source: &Identity,
    source_ip: IpAddr,
    http: Option<HttpAttributes<'_>>,
) -> Decision {
    let policies = dest.policies(state, me, Some(endpoint));
    evaluate(
        &policies,
        &Attributes {
            source: Some(source),
            source_ip,
            destination_ip: addr.ip(),
            destination_port: addr.port(),
            http,
        },
    )
}

impl Destination {
    /// `namespace/name` of the service or workload, for logs.
    pub fn key(&self) -> String {
        match self {
            Self::Service { service, .. } => service.key(),
            Self::Workload { workload, .. } => workload.key(),
        }
    }

    /// An endpoint and its address: round robin (by `pick`) over a service's endpoints of the right
    /// family, or the workload itself.
    pub fn endpoint(
        &self,
        state: &MeshState,
        family_of: SocketAddr,
        pick: usize,
    ) -> Option<(Arc<Workload>, SocketAddr)> {
        match self {
            Self::Workload { workload, port } => {
                let ip = workload
                    .ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == family_of.is_ipv4())?;
                Some((workload.clone(), SocketAddr::new(ip, *port)))
            }
            Self::Service {
                service,
                target_port,
                ..
            } => {
                let candidates = state.serving_addresses(service, family_of.ip(), *target_port);
                if candidates.is_empty() {
                    return None;
                }
                Some(candidates[pick % candidates.len()].clone())
            }
        }
    }

    /// The policies that apply to a request to this destination handled by waypoint `me`: those
    /// attached to the waypoint, to the service addressed, and the endpoint's own (which its ztunnel
    /// leaves to the waypoint). A workload addressed directly is subject to the policies of every
    /// service it backs: otherwise calling the pod's address would step around them.
    pub fn policies(
        &self,
        state: &MeshState,
        me: &WaypointRef,
        endpoint: Option<&Workload>,
    ) -> Vec<Arc<AuthzPolicy>> {
        let mut out = state.authz_for_target(&me.namespace, &Target::Gateway(me.name.clone()));
        let service_policies = |service: &Service| {
            state.authz_for_target(&service.namespace, &Target::Service(service.name.clone()))
        };
        let endpoint = match self {
            Self::Service { service, .. } => {
                out.extend(service_policies(service));
                endpoint
            }
            Self::Workload { workload, .. } => {
                for service in state.services_of(workload) {
                    out.extend(service_policies(&service));
                }
                Some(endpoint.unwrap_or(workload))
            }
        };
        if let Some(workload) = endpoint {
            out.extend(state.authz_for(workload).iter().cloned());
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        out
    }
}

#[cfg(test)]
mod tests;
