//! One delta ADS stream: the subscription state of a client, and the responses it is owed.
//!
//! The rules are Envoy's incremental xDS, read the way Istio's ztunnel relies on them:
//! - every first request of a type is answered, even with nothing (ztunnel is not ready until it is);
//! - a type subscribed without names, or with `*`, is a wildcard: everything is sent;
//! - a new stream's `initial_resource_versions` say what the client already holds: only what differs
//!   is sent, what it holds that no longer exists is listed in `removed_resources` (clients keep
//!   their state across streams and rely on that), and what it holds stays subscribed;
//! - a name subscribed explicitly is always answered, as a resource or as removed when it does not
//!   exist;
//! - at most one response per type is unacknowledged: the next one is computed from the newest
//!   snapshot when the client has acknowledged (or refused) the last, so a slow client makes the
//!   controller hold nothing but a reference to the snapshot it last received;
//! - a refusal (NACK) is logged and counted; the refused resources are not sent again until they
//!   change;
//! - to a client that accepts split responses (veil's extension, [`veil_mesh::xds::SPLIT_RESPONSES`]),
//!   a response larger than [`RESPONSE_BUDGET`] is sent in parts, each acknowledged before the
//!   next: the transport's buffers, which keep the size of the largest message a stream has sent,
//!   stay that small for every stream. All parts are made from one snapshot (the rest is kept as
//!   names), so the last part leaves the client holding a whole snapshot however fast the mesh
//!   changes; what changed meanwhile follows.
//!
//! **Per node.** A resource that is of use to one node only (a pod being set up: [`Entry::node`]) is
//! sent only to subscribers of that node: the one its credential names (a bound token), else the
//! one it declares (`node.id`). It is not secret — the pod's workload goes to everyone once it has
//! an address — so a declared node is enough; what is saved is every other node's bytes and work.
//!
//! **Make before break.** A workload names the Authorizations that apply to it, and a ztunnel skips
//! a name it does not hold: a workload that arrived before its policies would be admitted without
//! them. So Authorizations of a snapshot are sent, and acknowledged, before the Addresses of that
//! snapshot; and an Authorization is removed only once the client holds Addresses of a snapshot
//! that no longer names it. Enrolled namespaces of a snapshot follow its Addresses: a node takes a
//! namespace as enrolled when its workloads are already marked so.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use prost_types::Any;
use tokio::time::Instant;
use tonic::Status;
use veil_mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use veil_mesh::xds::{Audience, Entry, Kind};

use crate::hub::{Hub, Snapshot};

/// How long Addresses wait at the start of a stream for the client to subscribe to Authorizations.
pub const AUTHORIZATION_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest number of names one stream may subscribe to explicitly, per type.
pub const MAX_NAMES: usize = 1 << 20;
/// Longest resource name accepted (Kubernetes names are far shorter).
pub const MAX_NAME_BYTES: usize = 1024;
/// The size a response is split at, for a client that accepts split responses (one resource larger
/// than this is still sent, alone).
pub const RESPONSE_BUDGET: usize = 128 << 10;

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
    requested: BTreeSet<String>,
    /// Send everything wanted next time (the subscription widened to `*`).
    resync: bool,
    /// Answer the next time, even with nothing.
    must_answer: bool,
    /// The nonce of the response not yet acknowledged, and since when.
    pending: Option<(String, Instant)>,
    /// Removals held back until the client's Addresses no longer need them (Authorizations).
    deferred: BTreeSet<String>,
    /// The names a split response has still to send, from the snapshot in `held`: each part is
    /// made from that snapshot, and only once it is all sent is the next one considered, so every
    /// last part leaves the client holding a whole snapshot.
    rest: Option<VecDeque<Arc<str>>>,
    /// The client's node, if known: resources for another node are not for it.
    node: Option<Arc<str>>,
    /// The type.
    kind: Kind,
    /// Who the client is: a waypoint is sent its namespace's resources only.
    audience: Audience,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Whether `entry`, named `name`, is to be sent to this client at all.
    fn shows(&self, name: &str, entry: &Entry) -> bool {
        entry.is_for(self.node.as_deref()) && self.audience.admits(self.kind, name)
    }

    /// Holds all of `seq` and has acknowledged it.
    fn settled_at(&self, seq: u64) -> bool {
        self.pending.is_none()
            && self.rest.is_none()
            && self.held.as_ref().is_some_and(|h| h.seq == seq)
    }
}

/// The protocol state of one stream.
#[derive(Debug)]
pub struct Stream {
    hub: Arc<Hub>,
    types: HashMap<Kind, TypeState>,
    sent: u64,
    opened: Instant,
    grace: std::time::Duration,
    /// The client accepts split responses.
    split: bool,
    budget: usize,
    /// The client's node: from its credential, else as it declares it.
    node: Option<Arc<str>>,
    /// `node` comes from the credential: what the client declares does not change it.
    node_authenticated: bool,
    /// Who the client is.
    audience: Audience,
}

impl Stream {
    /// A new stream fed by `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            types: HashMap::new(),
            sent: 0,
            opened: Instant::now(),
            grace: AUTHORIZATION_GRACE,
            split: false,
            budget: RESPONSE_BUDGET,
            node: None,
            node_authenticated: false,
            audience: Audience::Mesh,
        }
    }

    /// Serves `audience` only what is for it (a waypoint, its namespace).
    pub fn with_audience(mut self, audience: Audience) -> Self {
        self.audience = audience;
        self
    }

    /// The node the client's credential names, if any: it overrides what the client declares.
    pub fn with_node(mut self, node: Option<&str>) -> Self {
        if let Some(node) = node {
            self.node = Some(node.into());
            self.node_authenticated = true;
        }
        self
    }

    /// Overrides [`RESPONSE_BUDGET`] (tests).
    pub fn with_response_budget(mut self, budget: usize) -> Self {
        self.budget = budget.max(1);
        self
    }

    /// Overrides [`AUTHORIZATION_GRACE`].
    pub fn with_authorization_grace(mut self, grace: std::time::Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Takes in one request. Returns the refusal it carried, if any.
    pub fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<Option<Nack>, Status> {
        let Some(kind) = Kind::from_type_url(&request.type_url) else {
            let served: Vec<&str> = Kind::ALL.iter().map(|k| k.type_url()).collect();
            return Err(Status::invalid_argument(format!(
                "type {:?} is not served (only {})",
                request.type_url,
                served.join(", ")
            )));
        };
        if !self.audience.serves(kind) {
            return Err(Status::permission_denied(format!(
                "type {:?} is not served to a waypoint",
                request.type_url
            )));
        }
        let too_long = request
            .resource_names_subscribe
            .iter()
            .chain(&request.resource_names_unsubscribe)
            .chain(request.initial_resource_versions.keys())
            .any(|name| name.len() > MAX_NAME_BYTES);
        if too_long {
            return Err(Status::invalid_argument(format!(
                "resource names are at most {MAX_NAME_BYTES} bytes"
            )));
        }
        if veil_mesh::xds::accepts_split(request.node.as_ref()) {
            self.split = true;
        }
        if let Some(declared) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
            // Declared once, in the first request that carries it (a change later would leave
            // what was sent for the old node with the client).
            if self.node.is_none() && !self.node_authenticated {
                self.node = Some(declared.id.as_str().into());
            }
        }
        let node = self.node.clone();
        let audience = self.audience.clone();
        let state = self.types.entry(kind).or_insert_with(|| TypeState {
            // A first request without names is a (legacy) wildcard subscription.
            wildcard: request.resource_names_subscribe.is_empty(),
            names: BTreeSet::new(),
            initial: Some(HashMap::new()),
            held: None,
            requested: BTreeSet::new(),
            resync: false,
            must_answer: true,
            pending: None,
            deferred: BTreeSet::new(),
            rest: None,
            node,
            kind,
            audience,
        });
        let mut nack = None;
        if !request.response_nonce.is_empty() {
            // A reply to a response of an earlier nonce is stale: its subscription changes count,
            // its acknowledgement does not.
            if state.pending.as_ref().map(|(n, _)| n.as_str()) == Some(&*request.response_nonce) {
                state.pending = None;
                if let Some(error) = request.error_detail {
                    nack = Some(Nack {
                        kind,
                        message: error.message,
                    });
                }
            }
        }
        if !request.initial_resource_versions.is_empty() {
            let Some(initial) = &mut state.initial else {
                return Err(Status::invalid_argument(
                    "initial_resource_versions after the first response of the stream",
                ));
            };
            // What a client holds stays subscribed, as if it had asked for it again.
            if !state.wildcard {
                state
                    .names
                    .extend(request.initial_resource_versions.keys().cloned());
            }
            initial.extend(request.initial_resource_versions);
        }
        for name in request.resource_names_subscribe {
            if name == "*" {
                if !state.wildcard && state.held.is_some() {
                    state.resync = true;
                }
                state.wildcard = true;
            } else {
                // Asked again for a name it has: answered anyway, as the protocol requires.
                state.names.insert(name.clone());
                state.requested.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(&name);
                state.requested.remove(&name);
            }
        }
        if state.names.len() > MAX_NAMES {
            return Err(Status::resource_exhausted(format!(
                "more than {MAX_NAMES} names subscribed"
            )));
        }
        Ok(nack)
    }

    /// Whether the initial sync is over: every type subscribed to has had its first response,
    /// and none is awaiting acknowledgement.
    pub fn synced(&self) -> bool {
        !self.types.is_empty()
            && self.types.values().all(|t| {
                t.initial.is_none() && t.pending.is_none() && t.rest.is_none() && t.held.is_some()
            })
    }

    /// Every response owed now, in [`ORDER`]. Asking for Addresses can settle them without a
    /// response (nothing a client holds changed), which is what releases the Authorization
    /// removals deferred until then: those are asked for once more.
    pub fn due(&mut self) -> Vec<DeltaDiscoveryResponse> {
        let mut out: Vec<DeltaDiscoveryResponse> = ORDER
            .iter()
            .filter_map(|kind| self.next_response(*kind))
            .collect();
        for kind in ORDER.into_iter().filter(|k| k.is_policy()) {
            if !out.iter().any(|r| r.type_url == kind.type_url()) {
                out.extend(self.next_response(kind));
            }
        }
        out
    }

    /// The response owed for `kind` given the newest snapshot, if one is owed and none is awaiting
    /// its acknowledgement. Call for [`Kind::Authorization`] before [`Kind::Address`].
    pub fn next_response(&mut self, kind: Kind) -> Option<DeltaDiscoveryResponse> {
        let current = self.hub.current();
        // Make before break: Addresses of a snapshot only once its Authorizations are held. A
        // client subscribes to both types at the start of a stream; until it has, or until
        // [`AUTHORIZATION_GRACE`] has passed (a client that wants no Authorizations), Addresses wait.
        if kind == Kind::Address {
            let mut policies = self
                .types
                .values()
                .filter(|t| t.kind.is_policy())
                .peekable();
            if policies.peek().is_none() {
                if Instant::now() < self.opened + self.grace {
                    return None;
                }
            } else if policies.any(|p| !p.settled_at(current.seq)) {
                return None;
            }
        }
        // A waypoint's bindings of a snapshot only once its policies are held: each binding says
        // which policies it was made with, and until the waypoint holds those it admits nothing
        // for the workload (better briefly than from a binding that raced ahead).
        if kind == Kind::Binding
            && let Some(policies) = self.types.get(&Kind::Policy)
            && !policies.settled_at(current.seq)
        {
            return None;
        }
        // And enrolled namespaces only once the Addresses of their snapshot are held: a node that
        // took a namespace as enrolled while its pods being set up still said otherwise would let
        // a new pod start uncaptured.
        if kind == Kind::Namespace {
            match self.types.get(&Kind::Address) {
                Some(a) if !a.settled_at(current.seq) => return None,
                None if Instant::now() < self.opened + self.grace => return None,
                _ => {}
            }
        }
        // A client that has not subscribed to Addresses on this stream may still hold Addresses
        // from an earlier one (veil's subscriber resumes Authorizations first): until they are
        // brought up to date, or the wait for an Address subscription is over, they may name
        // policies that are gone.
        let addresses_settled = match self.types.get(&Kind::Address) {
            Some(a) => a.settled_at(current.seq),
            None => Instant::now() >= self.opened + self.grace,
        };
        let hub = self.hub.clone();
        let budget = if self.split { self.budget } else { usize::MAX };
        let state = self.types.get_mut(&kind)?;
        if state.pending.is_some() {
            return None;
        }
        if let Some(rest) = state.rest.take() {
            let snapshot = state.held.clone()?;
            return Some(part(state, kind, &snapshot, rest, budget, &mut self.sent));
        }
        let outdated = state.held.as_ref().is_none_or(|h| h.seq != current.seq);
        let release = addresses_settled && !state.deferred.is_empty();
        if !state.must_answer
            && !outdated
            && state.requested.is_empty()
            && !state.resync
            && !release
        {
            return None;
        }
        let entries = current.resources.of(kind);
        let mut updated: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut removed: BTreeSet<String> = BTreeSet::new();
        if std::mem::take(&mut state.resync) {
            updated.extend(
                entries
                    .iter()
                    .filter(|(n, e)| state.wants(n) && state.shows(n, e))
                    .map(|(n, _)| n.clone()),
            );
        }
        match (state.initial.take(), &state.held) {
            // First response: everything wanted that the client does not already hold as it is.
            (Some(initial), _) => {
                for (name, entry) in entries {
                    let held = initial.get(&**name).map(String::as_str);
                    if state.wants(name)
                        && state.shows(name, entry)
                        && held != Some(&*entry.version)
                    {
                        updated.insert(name.clone());
                    }
                }
                removed.extend(initial.into_keys().filter(|name| {
                    !entries
                        .get(name.as_str())
                        .is_some_and(|e| state.shows(name, e))
                }));
            }
            (None, Some(held)) if held.seq != current.seq => {
                let changes = hub.changes(kind, held, &current);
                let before = held.resources.of(kind);
                let was_shown = |n: &str| before.get(n).is_some_and(|e| state.shows(n, e));
                for name in changes.updated.iter().filter(|n| state.wants(n)) {
                    if entries.get(name).is_some_and(|e| state.shows(name, e)) {
                        updated.insert(name.clone());
                    } else if was_shown(name) {
                        removed.insert(name.to_string());
                    }
                }
                removed.extend(
                    changes
                        .removed
                        .iter()
                        .filter(|n| state.wants(n) && was_shown(n))
                        .map(|n| n.to_string()),
                );
            }
            _ => {}
        }
        for name in std::mem::take(&mut state.requested) {
            match entries.get_key_value(name.as_str()) {
                Some((key, _)) => {
                    updated.insert(key.clone());
                }
                None => {
                    removed.insert(name);
                }
            }
        }
        if kind.is_policy() {
            // A policy leaves only after the workloads that name it have been updated.
            state.deferred.append(&mut removed);
            state
                .deferred
                .retain(|name| !entries.contains_key(name.as_str()));
            if addresses_settled {
                removed = std::mem::take(&mut state.deferred);
            }
        }
        let must_answer = std::mem::take(&mut state.must_answer);
        state.held = Some(current.clone());
        if updated.is_empty() && removed.is_empty() && !must_answer {
            return None;
        }
        let names = updated
            .into_iter()
            .chain(removed.into_iter().map(Arc::from))
            .collect();
        Some(part(state, kind, &current, names, budget, &mut self.sent))
    }

    /// When the stream must be looked at again even if nothing arrives: the end of the wait for the
    /// other type's subscription, while Addresses wait for Authorizations or Authorization removals
    /// wait for Addresses.
    pub fn wake_at(&self) -> Option<Instant> {
        let addresses = self.types.contains_key(&Kind::Address);
        let mut policies = self.types.values().filter(|t| t.kind.is_policy());
        let namespaces = self.types.contains_key(&Kind::Namespace);
        // Addresses waiting for policies, policy removals or namespaces for Addresses.
        let waiting = if addresses {
            policies.next().is_none()
        } else {
            namespaces || policies.any(|p| !p.deferred.is_empty())
        };
        let at = self.opened + self.grace;
        (waiting && Instant::now() < at).then_some(at)
    }

    /// When the oldest unacknowledged response was sent, if any is.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.types
            .values()
            .filter_map(|s| s.pending.as_ref().map(|(_, at)| *at))
            .min()
    }
}

/// The next response of `kind`: as many of `names` as `budget` bytes take, each as it is in
/// `snapshot` (sent if it is there and wanted, removed if not). What is left, if anything, is kept
/// for the next part, and the response is marked as a part.
fn part(
    state: &mut TypeState,
    kind: Kind,
    snapshot: &Snapshot,
    mut names: VecDeque<Arc<str>>,
    budget: usize,
    sent: &mut u64,
) -> DeltaDiscoveryResponse {
    let entries = snapshot.resources.of(kind);
    let type_url = kind.type_url();
    let mut budget = Budget {
        left: budget,
        first: true,
    };
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    while let Some(name) = names.front() {
        let entry = entries
            .get(name)
            .filter(|e| state.wants(name) && state.shows(name, e));
        let cost = entry.map_or(0, |e| e.version.len() + e.body.len() + type_url.len())
            + name.len()
            + FRAMING;
        if !budget.take(cost) {
            break;
        }
        match entry {
            Some(entry) => resources.push(Resource {
                name: name.to_string(),
                version: entry.version.to_string(),
                resource: Some(Any {
                    type_url: type_url.to_owned(),
                    value: entry.body.to_vec(),
                }),
                ..Default::default()
            }),
            None => removed.push(name.to_string()),
        }
        names.pop_front();
    }
    let mut version = snapshot.seq.to_string();
    if !names.is_empty() {
        version.push_str(veil_mesh::xds::PARTIAL_MARK);
        state.rest = Some(names);
    }
    *sent += 1;
    let nonce = format!("{}-{}", snapshot.seq, sent);
    state.pending = Some((nonce.clone(), Instant::now()));
    DeltaDiscoveryResponse {
        system_version_info: version,
        type_url: type_url.to_owned(),
        nonce,
        resources,
        removed_resources: removed,
    }
}

/// The bytes a response part may still take: the first name always fits.
struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    /// Takes `cost` if it fits; once one does not, nothing more does.
    fn take(&mut self, cost: usize) -> bool {
        let fits = std::mem::take(&mut self.first) || cost <= self.left;
        self.left = if fits {
            self.left.saturating_sub(cost)
        } else {
            0
        };
        fits
    }
}

/// Framing of a resource or a removed name in a response: tags and lengths, a generous bound.
const FRAMING: usize = 32;

/// The order responses are computed in: policies (Authorizations; for waypoints, policies as
/// written and their bindings) before the Addresses that name them, and those before the enrolled
/// namespaces (make before break).
pub const ORDER: [Kind; 5] = [
    Kind::Authorization,
    Kind::Policy,
    Kind::Binding,
    Kind::Address,
    Kind::Namespace,
];

#[cfg(test)]
mod tests;
