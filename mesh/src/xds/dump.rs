//! A control plane's resources, whole, as one document — what `veil explain --live` reads from the
//! controller's admin endpoint and decodes with the very code ztunnels and waypoints decode them
//! with ([`Store`]), into the mesh as each kind of proxy holds it.
//!
//! The document is a sequence of length-delimited `DeltaDiscoveryResponse` messages, one per kind
//! (its `type_url`, every resource of that kind with its name and version), served as
//! [`CONTENT_TYPE`]; the mesh's settings travel in headers. Resources meant for one node only (pods
//! being set up, which have no address yet) are left out: they decide nothing.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use super::proto::discovery::DeltaDiscoveryResponse;
use super::{Kind, Refusal, Resources, Store};
use crate::discovery::{MeshSettings, MeshState};

/// The document's content type.
pub const CONTENT_TYPE: &str = "application/vnd.veil.xds-resources.v1+protobuf";
/// The header carrying the mesh's trust domain.
pub const TRUST_DOMAIN_HEADER: &str = "veil-trust-domain";
/// The header carrying the mesh's root namespace.
pub const ROOT_NAMESPACE_HEADER: &str = "veil-root-namespace";

/// The largest document decoded (a 100,000-pod mesh is about 40 MB).
pub const MAX_DOCUMENT: usize = 512 * 1024 * 1024;

/// The most resources decoded (each becomes a decoded entry far larger than its smallest
/// encoding): ten times a 100,000-pod mesh's.
pub const MAX_RESOURCES: usize = 2_000_000;

/// `resources` as one document.
pub fn encode(resources: &Resources) -> Bytes {
    let mut out = BytesMut::new();
    for kind in Kind::ALL {
        let message = DeltaDiscoveryResponse {
            type_url: kind.type_url().into(),
            resources: resources
                .of(kind)
                .iter()
                .filter(|(_, entry)| entry.is_for(None))
                .map(|(name, entry)| kind.resource(name, &entry.version, entry.body.to_vec()))
                .collect(),
            ..Default::default()
        };
        // Encoding into a growable buffer cannot fail.
        let _ = message.encode_length_delimited(&mut out);
    }
    out.freeze()
}

/// The mesh as each kind of proxy holds it, decoded from a document.
#[derive(Debug)]
pub struct Decoded {
    /// As ztunnels hold it (Istio's form).
    pub ztunnel: MeshState,
    /// As waypoints hold it (policies as written).
    pub waypoint: MeshState,
    /// What the proxies would refuse, and why (it fails closed there, and here).
    pub refused: Vec<Refusal>,
}

/// Decodes a document: each kind applied to a ztunnel's store and to a waypoint's, in the order
/// they subscribe (policies before the workloads that name them).
pub fn decode(mut body: &[u8], settings: &MeshSettings) -> Result<Decoded, String> {
    if body.len() > MAX_DOCUMENT {
        return Err(format!(
            "a document of {} bytes is over the {MAX_DOCUMENT} read",
            body.len()
        ));
    }
    let mut by_kind: Vec<(Kind, DeltaDiscoveryResponse)> = Vec::new();
    while body.has_remaining() {
        let message = DeltaDiscoveryResponse::decode_length_delimited(&mut body)
            .map_err(|e| format!("not a resources document: {e}"))?;
        let kind = Kind::from_type_url(&message.type_url)
            .ok_or_else(|| format!("resources of an unknown type {:?}", message.type_url))?;
        let held: usize = by_kind.iter().map(|(_, m)| m.resources.len()).sum();
        if held + message.resources.len() > MAX_RESOURCES {
            return Err(format!("more than {MAX_RESOURCES} resources"));
        }
        if by_kind.iter().any(|(k, _)| *k == kind) {
            return Err(format!("{} appears twice", message.type_url));
        }
        by_kind.push((kind, message));
    }
    let missing: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !by_kind.iter().any(|(b, _)| b == *k))
        .map(|k| k.type_url())
        .collect();
    if !missing.is_empty() {
        return Err(format!("the document has no {}", missing.join(", ")));
    }
    let of = |kind: Kind| {
        by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| m.resources.as_slice())
            .unwrap_or_default()
    };
    let mut refused = Vec::new();
    let mut ztunnel = Store::new(settings.clone());
    for kind in [Kind::Authorization, Kind::Address, Kind::Namespace] {
        refused.extend(ztunnel.apply(kind, of(kind), &[]));
    }
    let mut waypoint = Store::new(settings.clone()).for_waypoint();
    for kind in [Kind::Policy, Kind::Binding, Kind::Address] {
        // The waypoint's refusals of addresses are the ztunnel's, already listed.
        let more = waypoint.apply(kind, of(kind), &[]);
        if kind != Kind::Address {
            refused.extend(more);
        }
    }
    Ok(Decoded {
        ztunnel: ztunnel.build_whole(),
        waypoint: waypoint.build_whole(),
        refused,
    })
}
