//! What a ztunnel or a waypoint receives from a control plane (`veil_mesh::xds::Store`): any
//! sequence of resources (Istio's `Address` and `Authorization` messages and veil's
//! `AmbientNamespace`; for a waypoint, `Address` and veil's `AuthorizationPolicy` and
//! `PolicyBinding`; valid or not) and removals, then the mesh they make — with the addresses this node's CNI plugin gave
//! pods that arrive without one — and a decision for every workload in it. Nothing a control plane
//! sends may crash or stall a subscriber.
//!
//! A subscriber patches the last mesh for changed workloads instead of building it whole: every
//! mesh it publishes (after records with bit 3 set) must be the mesh a whole build gives.
//!
//! Input: a first byte whose bit 0 makes the subscriber a waypoint, then records of
//! `[flags][length: u16 LE][body]`; flags bits 0-1 pick the type (Address, Authorization,
//! AmbientNamespace, Address; for a waypoint Address, AuthorizationPolicy, PolicyBinding, Address),
//! bit 2 makes the record a removal, bit 3 publishes the mesh after it. A body that decodes is sent
//! under its own name (its uid, `namespace/hostname`, `namespace/name` or the namespace; a binding
//! under a pod's name), so validation goes past the name check.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use veil_mesh::discovery::MeshSettings;
use veil_mesh::identity::Identity;
use veil_mesh::policy::{Attributes, HttpAttributes, evaluate};
use veil_mesh::testing::{mesh_fingerprint, policies_fingerprint};
use veil_mesh::xds::proto::discovery::Resource;
use veil_mesh::xds::proto::istio::security::Authorization;
use veil_mesh::xds::proto::istio::workload::{Address, address};
use veil_mesh::xds::proto::veil::{AmbientNamespace, AuthorizationPolicy};
use veil_mesh::xds::{Kind, Store};

fn natural_name(kind: Kind, body: &[u8]) -> Option<String> {
    match kind {
        Kind::Address => match Address::decode(body).ok()?.r#type? {
            address::Type::Workload(w) => Some(w.uid),
            address::Type::Service(s) => Some(format!("{}/{}", s.namespace, s.hostname)),
        },
        Kind::Authorization => {
            let a = Authorization::decode(body).ok()?;
            Some(format!("{}/{}", a.namespace, a.name))
        }
        Kind::Namespace => Some(AmbientNamespace::decode(body).ok()?.name),
        Kind::Policy => {
            let p = AuthorizationPolicy::decode(body).ok()?;
            Some(format!("{}/{}", p.namespace, p.name))
        }
        Kind::Binding => None,
    }
}

fuzz_target!(|data: &[u8]| {
    // This node's CNI plugin gave addresses to every pod whose name starts with `a`.
    let lookup = |_: &str, name: &str| {
        name.starts_with('a').then(|| vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()])
    };
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let waypoint = first & 1 != 0;
    let mut store =
        Store::new(MeshSettings::default()).with_node_addresses("node-a".into(), std::sync::Arc::new(lookup));
    if waypoint {
        store = store.for_waypoint();
    }
    let mut version = 0u32;
    while rest.len() >= 3 && version < 64 {
        let flags = rest[0];
        let kind = match (flags & 3, waypoint) {
            (1, false) => Kind::Authorization,
            (2, false) => Kind::Namespace,
            (1, true) => Kind::Policy,
            (2, true) => Kind::Binding,
            _ => Kind::Address,
        };
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let lossy = String::from_utf8_lossy(&body[..body.len().min(24)]).into_owned();
        let name = natural_name(kind, body).unwrap_or_else(|| match kind {
            Kind::Binding => format!("Kubernetes//Pod/ns/{}", lossy.len()),
            _ => lossy,
        });
        version += 1;
        if flags & 4 != 0 {
            let _ = store.apply(kind, &[], &[name]);
        } else {
            let resource = Resource {
                name,
                version: version.to_string(),
                resource: Some(prost_types::Any {
                    type_url: kind.type_url().into(),
                    value: body.to_vec(),
                }),
                ..Default::default()
            };
            let _ = store.apply(kind, &[resource], &[]);
        }
        if flags & 8 != 0 {
            let published = match store.patch() {
                Some(mesh) => mesh,
                None => store.build_whole(),
            };
            let addresses = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
            let whole_mesh = store.to_state();
            let whole = mesh_fingerprint(&whole_mesh, &addresses);
            assert_eq!(mesh_fingerprint(&published, &addresses), whole, "a patched mesh differs from a whole build");
            assert_eq!(
                policies_fingerprint(&published),
                policies_fingerprint(&whole_mesh),
                "a patched mesh judges a workload otherwise than a whole build"
            );
        }
    }
    let state = store.to_state();
    let peer = Identity::new("cluster.local", "ns", "sa").expect("a valid identity");
    for workload in state.workloads() {
        for source in [Some(&peer), None] {
            let Some(ip) = workload.ips.first() else {
                continue;
            };
            let headers = http::HeaderMap::new();
            let attrs = Attributes {
                source,
                source_ip: *ip,
                destination_ip: *ip,
                destination_port: 8080,
                http: waypoint.then_some(HttpAttributes {
                    method: "GET",
                    path: "/",
                    host: "x.ns.svc.cluster.local",
                    headers: &headers,
                }),
            };
            let _ = evaluate(&state.authz_for(&workload), &attrs);
        }
    }
    let _ = state.summary();
    let _ = state.ambient_namespaces();
});
