//! One delta ADS stream: the subscription state of a client, and the responses it is owed.
//!
//! The rules are Envoy's incremental xDS, read the way Istio's ztunnel relies on them:
//! - every first request of a type is answered, even with nothing (ztunnel is not ready until it is);
//! - a type subscribed without names, or with `*`, is a wildcard: everything is sent;
//! - a new stream's `initial_resource_versions` say what the client already holds: only what differs
//!   is sent, and what it holds that no longer exists is listed in `removed_resources` (clients
//!   keep their state across streams and rely on that);
//! - a name subscribed explicitly is always answered, as a resource or as removed when it does not
//!   exist;
//! - at most one response per type is unacknowledged: the next one is computed from the newest
//!   snapshot when the client has acknowledged (or refused) the last, so a slow client makes the
//!   controller hold nothing but a reference to the snapshot it last received;
//! - a refusal (NACK) is logged and counted; the refused resources are not sent again until they
//!   change.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use prost_types::Any;
use tonic::Status;
use veil_mesh::xds::Kind;
use veil_mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use crate::hub::{Hub, Snapshot};

/// Largest number of names one stream may subscribe to explicitly, per type.
pub const MAX_NAMES: usize = 1 << 20;

/// A refusal the client sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The type refused.
    pub kind: Kind,
    /// The client's reason.
    pub message: String,
}

/// The state of one type on one stream.
#[derive(Debug)]
struct TypeState {
    /// Subscribed to everything.
    wildcard: bool,
    /// Names subscribed explicitly.
    names: BTreeSet<String>,
    /// What the client said it held when the stream opened; consumed by the first response.
    initial: Option<HashMap<String, String>>,
    /// The snapshot the client was last brought up to.
    held: Option<Arc<Snapshot>>,
    /// Explicitly subscribed names to answer whatever the client holds.
    requested: Vec<String>,
    /// Answer the next time, even with nothing.
    must_answer: bool,
    /// The nonce of the response not yet acknowledged.
    pending: Option<String>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The protocol state of one stream.
#[derive(Debug)]
pub struct Stream {
    hub: Arc<Hub>,
    types: HashMap<Kind, TypeState>,
    sent: u64,
    acks: u64,
}

impl Stream {
    /// A new stream fed by `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            types: HashMap::new(),
            sent: 0,
            acks: 0,
        }
    }

    /// Takes in one request. Returns the refusal it carried, if any.
    pub fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<Option<Nack>, Status> {
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            return Err(Status::invalid_argument(format!(
                "type {:?} is not served (only {} and {})",
                request.type_url,
                Kind::Address.type_url(),
                Kind::Authorization.type_url()
            )));
        };
        let state = self.types.entry(kind).or_insert_with(|| TypeState {
            // A first request without names is a (legacy) wildcard subscription.
            wildcard: request.resource_names_subscribe.is_empty(),
            names: BTreeSet::new(),
            initial: Some(HashMap::new()),
            held: None,
            requested: Vec::new(),
            must_answer: true,
            pending: None,
        });
        let mut nack = None;
        if !request.response_nonce.is_empty() {
            // A reply to a response of an earlier nonce is stale: its subscription changes count,
            // its acknowledgement does not.
            if state.pending.as_deref() == Some(request.response_nonce.as_str()) {
                state.pending = None;
                self.acks += 1;
                if let Some(error) = request.error_detail {
                    nack = Some(Nack {
                        kind,
                        message: error.message,
                    });
                }
            }
        }
        if !request.initial_resource_versions.is_empty() {
            match &mut state.initial {
                Some(initial) => initial.extend(request.initial_resource_versions),
                None => {
                    return Err(Status::invalid_argument(
                        "initial_resource_versions after the first response of the stream",
                    ));
                }
            }
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else if state.names.insert(name.clone()) {
                state.requested.push(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(&name);
            }
        }
        if state.names.len() > MAX_NAMES {
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_NAMES} names subscribed"
            )));
        }
        Ok(nack)
    }

    /// The response owed for `kind` given the newest snapshot, if one is owed and none is awaiting
    /// its acknowledgement.
    pub fn next_response(&mut self, kind: Kind) -> Option<DeltaDiscoveryResponse> {
        let hub = self.hub.clone();
        let current = hub.current();
        let state = self.types.get_mut(&kind)?;
        if state.pending.is_some() {
            return None;
        }
        let outdated = state.held.as_ref().is_none_or(|h| h.seq != current.seq);
        if !state.must_answer && !outdated && state.requested.is_empty() {
            return None;
        }
        let entries = current.resources.of(kind);
        let mut updated: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut removed: BTreeSet<String> = BTreeSet::new();
        match (state.initial.take(), &state.held) {
            // First response: everything wanted that the client does not already hold as it is.
            (Some(initial), _) => {
                for (name, entry) in entries {
                    if state.wants(name)
                        && initial.get(&**name).map(String::as_str) != Some(&*entry.version)
                    {
                        updated.insert(name.clone());
                    }
                }
                removed.extend(
                    initial
                        .into_keys()
                        .filter(|name| !entries.contains_key(name.as_str())),
                );
            }
            (None, Some(held)) if held.seq != current.seq => {
                let changes = hub.changes(kind, held, &current);
                updated.extend(changes.updated.iter().filter(|n| state.wants(n)).cloned());
                removed.extend(
                    changes
                        .removed
                        .iter()
                        .filter(|n| state.wants(n))
                        .map(|n| n.to_string()),
                );
            }
            _ => {}
        }
        for name in state.requested.drain(..) {
            match entries.get_key_value(name.as_str()) {
                Some((key, _)) => {
                    updated.insert(key.clone());
                }
                None => {
                    removed.insert(name);
                }
            }
        }
        let must_answer = std::mem::take(&mut state.must_answer);
        state.held = Some(current.clone());
        if updated.is_empty() && removed.is_empty() && !must_answer {
            return None;
        }
        self.sent += 1;
        let nonce = format!("{}-{}", current.seq, self.sent);
        state.pending = Some(nonce.clone());
        Some(DeltaDiscoveryResponse {
            system_version_info: current.seq.to_string(),
            type_url: kind.type_url().to_owned(),
            nonce,
            resources: updated
                .into_iter()
                .map(|name| {
                    let entry = &entries[&name];
                    Resource {
                        name: name.to_string(),
                        version: entry.version.to_string(),
                        resource: Some(Any {
                            type_url: kind.type_url().to_owned(),
                            value: entry.body.to_vec(),
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
            removed_resources: removed.into_iter().collect(),
        })
    }

    /// How many responses were acknowledged or refused so far.
    pub fn acks(&self) -> u64 {
        self.acks
    }

    /// Whether a response of any type awaits its acknowledgement.
    pub fn awaiting_ack(&self) -> bool {
        self.types.values().any(|s| s.pending.is_some())
    }
}

#[cfg(test)]
mod tests;
