//! The Istio messages of the mesh's workloads, waypoints and services.

use super::*;

pub(super) fn gateway(state: &MeshState, reference: &WaypointRef) -> wl::GatewayAddress {
    let destination = match state.waypoint(reference).and_then(|w| w.ips.first()) {
        Some(ip) => wl::gateway_address::Destination::Address(network_address(*ip)),
        // A waypoint that does not exist: a hostname nothing resolves, so traffic fails closed.
        None => wl::gateway_address::Destination::Hostname(wl::NamespacedHostname {
            namespace: reference.namespace.clone(),
            hostname: hostname(&reference.namespace, &reference.name),
        }),
    };
    wl::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: HBONE_PORT,
    }
}

pub(super) fn network_address(ip: IpAddr) -> wl::NetworkAddress {
    wl::NetworkAddress {
        network: String::new(),
        address: ip_bytes(ip),
        length: None,
    }
}

pub(super) fn ports(service: &Service) -> Vec<wl::Port> {
    port_list(&service.ports)
}

fn port_list(ports: &[ServicePort]) -> Vec<wl::Port> {
    ports
        .iter()
        .map(|p| wl::Port {
            service_port: u32::from(p.port),
            target_port: u32::from(p.target_port),
            app_protocol: wl::AppProtocol::Unknown as i32,
        })
        .collect()
}

pub(super) fn workload_message(
    state: &MeshState,
    w: &Workload,
    policies: Vec<String>,
) -> wl::Workload {
    wl::Workload {
        uid: workload_name(&w.namespace, &w.name),
        name: w.name.to_string(),
        namespace: w.namespace.to_string(),
        addresses: w.ips.iter().map(|ip| ip_bytes(*ip)).collect(),
        tunnel_protocol: if w.enrolled {
            wl::TunnelProtocol::Hbone
        } else {
            wl::TunnelProtocol::None
        } as i32,
        trust_domain: w.identity.trust_domain().into(),
        service_account: w.service_account.to_string(),
        waypoint: w
            .waypoint
            .as_ref()
            .filter(|_| w.enrolled)
            .map(|r| gateway(state, r)),
        node: w.node.to_string(),
        canonical_name: w.naming.app.clone(),
        canonical_revision: w.naming.version.clone(),
        workload_name: w.naming.workload.clone(),
        workload_type: wl::WorkloadType::Pod as i32,
        authorization_policies: policies,
        // Without an address (a pod being set up) it can be no endpoint yet; nor when it is not
        // ready, or being deleted (draining: see `extensions`).
        status: if w.ips.is_empty() || w.serving != Serving::Ready {
            wl::WorkloadStatus::Unhealthy
        } else {
            wl::WorkloadStatus::Healthy
        } as i32,
        extensions: extensions(state, w),
        cluster_id: CLUSTER_ID.into(),
        // A pod without an address is no endpoint yet (the services it will back still judge it:
        // their waypoint and policies are in the fields above).
        services: (if w.ips.is_empty() {
            Vec::new()
        } else {
            state.services_of(w)
        })
        .iter()
        .map(|s| {
            let key = service_name(&s.namespace, &s.name);
            (key, wl::PortList { ports: ports(s) })
        })
        .collect(),
        ..Default::default()
    }
}

/// veil's extensions of a workload: draining, and the Telemetry that applies to it.
fn extensions(state: &MeshState, w: &Workload) -> Vec<wl::Extension> {
    let mut extensions = Vec::new();
    if w.serving == Serving::Terminating && !w.ips.is_empty() {
        extensions.push(wl::Extension {
            name: crate::xds::SERVING_WHILE_TERMINATING.into(),
            config: None,
        });
    }
    let telemetry = state.telemetry_for(w);
    if !telemetry.is_empty() {
        let json = serde_json::to_string(&telemetry).expect("settings serialize");
        extensions.push(wl::Extension {
            name: crate::xds::TELEMETRY_EXTENSION.into(),
            config: Some(prost_types::Any {
                type_url: crate::xds::STRING_VALUE_TYPE.into(),
                value: prost::Message::encode_to_vec(&crate::xds::StringValue { value: json }),
            }),
        });
    }
    extensions
}

/// The instances of a waypoint, as one workload with all their addresses: what a ztunnel needs to
/// verify the waypoint's identity when it tunnels to it.
pub(super) fn waypoint_message(w: &Waypoint) -> wl::Workload {
    wl::Workload {
        uid: waypoint_workload_name(&w.reference()),
        name: w.name.clone(),
        // The namespace of its identity: a ztunnel verifies the waypoint as this workload.
        namespace: w.identity.namespace().into(),
        addresses: w.ips.iter().map(|ip| ip_bytes(*ip)).collect(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        trust_domain: w.identity.trust_domain().into(),
        service_account: w.identity.service_account().into(),
        canonical_name: w.name.clone(),
        workload_name: w.name.clone(),
        workload_type: wl::WorkloadType::Deployment as i32,
        status: wl::WorkloadStatus::Healthy as i32,
        cluster_id: CLUSTER_ID.into(),
        ..Default::default()
    }
}

pub(super) fn service_message(state: &MeshState, s: &Service) -> wl::Service {
    wl::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: hostname(&s.namespace, &s.name),
        addresses: s.vips.iter().map(|ip| network_address(*ip)).collect(),
        ports: ports(s),
        waypoint: s.waypoint.as_ref().map(|r| gateway(state, r)),
        extensions: udp_ports(s).into_iter().collect(),
        ..Default::default()
    }
}

/// veil's extension of a service: its UDP ports, if it has any.
fn udp_ports(s: &Service) -> Option<wl::Extension> {
    (!s.udp_ports.is_empty()).then(|| wl::Extension {
        name: crate::xds::UDP_PORTS_EXTENSION.into(),
        config: Some(prost_types::Any {
            type_url: crate::xds::PORT_LIST_TYPE.into(),
            value: prost::Message::encode_to_vec(&wl::PortList {
                ports: port_list(&s.udp_ports),
            }),
        }),
    })
}
