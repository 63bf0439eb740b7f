//! A subscriber of a control plane (veil's controller, or istiod): one delta ADS stream carrying
//! Istio's two resource types by wildcard (and, from veil's controller, the enrolled namespaces),
//! every response validated, applied and acknowledged (or NACKed, naming what was refused and
//! why), the resulting mesh published whole.
//!
//! A pod whose network is being set up arrives without an address; the subscriber of its node
//! gives it the address its CNI plugin handed over ([`crate::discovery::NodeAddresses`]) and
//! publishes the mesh again whenever those change.
//!
//! A large response may arrive split into parts (veil's extension, [`super::SPLIT_RESPONSES`]):
//! each part is applied and acknowledged, and the mesh is rebuilt and published only with the last.
//!
//! When the stream breaks, the last mesh stays published and the subscriber reconnects with
//! backoff, resuming from the versions it holds (`initial_resource_versions`), so the control plane
//! sends only what changed and what was removed meanwhile. Whether the stream is up is published
//! too: while it is down, the mesh may be stale, and the data path refuses destinations it does not
//! know rather than guessing they are outside the mesh.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::Kind;
use super::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use super::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use super::store::{Refusal, Store};
use crate::discovery::{ConfigError, MeshSettings, MeshState, NodeAddresses};
use crate::identity::{TokenSource, tls_channel};

/// Where the control plane is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct XdsConfig {
    /// `host:port`.
    pub address: String,
    /// The name its serving certificate must be valid for.
    pub server_name: String,
    /// TLS settings (the mesh roots; a client certificate when one is used).
    pub tls: Arc<rustls::ClientConfig>,
    /// The bearer token sent on every stream (re-read for each).
    pub token: Option<TokenSource>,
    /// This subscriber's node id (the node a ztunnel serves).
    pub node: String,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// Also subscribe to the namespaces enrolled in the mesh, veil's own resource type: veil's
    /// controller serves it. A control plane that ends the stream naming the type (an older veil
    /// controller, istiod) is asked again without it, for good; one that never answers it keeps
    /// the subscriber from becoming ready: turn this off for istiod.
    pub ambient_namespaces: bool,
    /// A waypoint's subscription: AuthorizationPolicies as written and which apply to whom
    /// (veil's own types), then workloads and services; no Authorizations (Istio's L4 form) and
    /// no enrolled namespaces. veil's controller sends a waypoint its own namespace only.
    pub waypoint: bool,
}

impl XdsConfig {
    /// The types subscribed to, in the order they are asked for: policies before the workloads
    /// that name them, so that a control plane that keeps Istio's order sends workloads only with
    /// their policies.
    fn kinds(&self) -> Vec<Kind> {
        if self.waypoint {
            return vec![Kind::Policy, Kind::Binding, Kind::Address];
        }
        let mut kinds = vec![Kind::Authorization, Kind::Address];
        if self.ambient_namespaces {
            kinds.push(Kind::Namespace);
        }
        kinds
    }
}

/// A running subscription.
#[derive(Debug)]
pub struct Subscription {
    /// The mesh as last received.
    pub state: watch::Receiver<Arc<MeshState>>,
    /// Whether the stream to the control plane is up.
    pub connected: watch::Receiver<bool>,
}

/// gRPC's INVALID_ARGUMENT, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;
/// The largest response accepted: a whole mesh of about 1,000,000 pods. A larger one ends the
/// stream (and the last mesh stays) rather than the memory.
const MAX_RESPONSE_BYTES: usize = 512 << 20;
/// How many refusals a NACK names (then how many more there are).
const NACK_NAMES: usize = 20;
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Connects and returns once the first version of every type subscribed to has arrived (retrying
/// until then); keeps the subscription going in the background. `on_reject` is told about every
/// object the mesh leaves out or makes deny. `node`, on a node with a CNI plugin, gives the
/// addresses of its pods that the control plane does not know yet.
pub async fn subscribe(
    config: XdsConfig,
    settings: MeshSettings,
    on_reject: impl Fn(&ConfigError) + Send + Sync + 'static,
    node: Option<NodeAddresses>,
) -> Subscription {
    let (state_tx, state) = watch::channel(Arc::new(MeshState::default()));
    let (connected_tx, connected) = watch::channel(false);
    let (synced_tx, mut synced) = watch::channel(false);
    let (store, refresh) = match node {
        Some(NodeAddresses { changed, lookup }) => (
            Store::new(settings).with_node_addresses(config.node.clone(), Arc::from(lookup)),
            Some(changed),
        ),
        None => (Store::new(settings), None),
    };
    let store = if config.waypoint {
        store.for_waypoint()
    } else {
        store
    };
    let out = Outputs {
        state: state_tx,
        connected: connected_tx,
        synced: synced_tx,
    };
    tokio::spawn(run(config, store, refresh, out, on_reject));
    let _ = synced.wait_for(|s| *s).await;
    Subscription { state, connected }
}

/// What a subscription publishes.
#[derive(Debug)]
struct Outputs {
    /// The mesh.
    state: watch::Sender<Arc<MeshState>>,
    /// Whether the stream is up and what it brought is published.
    connected: watch::Sender<bool>,
    /// Whether a first whole mesh was published.
    synced: watch::Sender<bool>,
}

async fn run(
    mut config: XdsConfig,
    mut store: Store,
    mut refresh: Option<watch::Receiver<u64>>,
    out: Outputs,
    on_reject: impl Fn(&ConfigError) + Send + Sync,
) {
    let mut backoff = Duration::from_millis(100);
    let mut reported: Vec<ConfigError> = Vec::new();
    // Kept across streams: a split response cut off by a broken stream leaves the store holding
    // part of it until a later stream completes it.
    let mut unpublished = Unpublished::default();
    loop {
        let outcome = stream(
            &config,
            &mut store,
            &mut refresh,
            &mut unpublished,
            &out,
            &mut |s| {
                for e in s.rejected() {
                    if !reported.contains(e) {
                        on_reject(e);
                    }
                }
                reported = s.rejected().to_vec();
            },
        )
        .await;
        out.connected.send_replace(false);
        if let Err(e) = &outcome
            && config.ambient_namespaces
            && e.contains(super::NAMESPACE_TYPE)
        {
            warn!(address = %config.address, error = %e, "the control plane does not serve veil's enrolled namespaces: enrolment is known from workloads only, and a namespace enrolled before its first pod lets that pod start uncaptured");
            config.ambient_namespaces = false;
        }
        match outcome {
            Ok(()) => {
                warn!(address = %config.address, "the control plane ended the stream; keeping the last mesh and reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                warn!(address = %config.address, error = %e, retry_in = ?backoff, "no stream to the control plane; keeping the last mesh, refusing unknown destinations");
            }
        }
        let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What the store holds that the published mesh does not.
#[derive(Debug, Default)]
struct Unpublished {
    /// Types whose last response was a part of a split response: the store is not whole.
    parts: HashSet<Kind>,
    /// The store changed since the mesh was last published.
    changed: bool,
}

/// One stream, until it ends.
async fn stream(
    config: &XdsConfig,
    store: &mut Store,
    refresh: &mut Option<watch::Receiver<u64>>,
    unpublished: &mut Unpublished,
    out: &Outputs,
    report: &mut impl FnMut(&MeshState),
) -> Result<(), String> {
    let Outputs {
        state,
        connected,
        synced,
    } = out;
    let channel = tls_channel(
        &config.address,
        &config.server_name,
        config.tls.clone(),
        config.connect_timeout,
    )?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let node = Node {
        id: config.node.clone(),
        metadata: Some(super::split_metadata()),
        ..Default::default()
    };
    let kinds = config.kinds();
    for kind in kinds.iter().copied() {
        let _ = tx.send(DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: kind.type_url().into(),
            initial_resource_versions: store.versions(kind),
            ..Default::default()
        });
    }
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = tonic::Request::new(requests);
    if let Some(token) = &config.token {
        let token = token.read().map_err(|e| e.to_string())?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut responses = client
        .delta_aggregated_resources(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    // The types that have answered whole on this stream.
    let mut received: HashSet<Kind> = HashSet::new();
    let Unpublished { parts, changed } = unpublished;
    loop {
        // The next response, or new addresses from this node's CNI plugin.
        let mut next = tokio::select! {
            message = responses.message() => Some(message),
            open = node_changed(refresh) => {
                if !open {
                    *refresh = None;
                }
                store.node_addresses_changed();
                *changed = true;
                None
            }
        };
        let mut end = None;
        while let Some(message) = next.take() {
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    end = Some(Ok(()));
                    break;
                }
                Err(s) => {
                    end = Some(Err(format!("{}: {}", s.code(), s.message())));
                    break;
                }
            };
            let (ack, kind) = handle(store, &response);
            let _ = tx.send(ack);
            if let Some(kind) = kind {
                *changed = true;
                // A part of a split response is applied, but the mesh is whole only with the last.
                if super::is_partial(&response) {
                    parts.insert(kind);
                } else {
                    parts.remove(&kind);
                    received.insert(kind);
                }
            }
            // What has already arrived is taken in before the mesh is rebuilt: one rebuild for a
            // burst of responses, however long the burst.
            next = responses.message().now_or_never();
        }
        let both = kinds.iter().all(|k| received.contains(k));
        // The first time, the mesh is published once every type is here; after that (resumed
        // streams included), whenever what arrived is whole.
        if *changed && parts.is_empty() && (*synced.borrow() || both) {
            let (mesh, whole) = rebuild(store).await?;
            *changed = false;
            report(&mesh);
            if *synced.borrow() {
                info!(summary = ?mesh.summary(), "applied new mesh configuration");
            } else {
                info!(summary = ?mesh.summary(), "first mesh received from the control plane");
            }
            let old = state.send_replace(Arc::new(mesh));
            synced.send_replace(true);
            // The last reference to a large mesh is freed off the data path too, and after a whole
            // build what it and the build freed goes back to the kernel.
            tokio::task::spawn_blocking(move || {
                drop(old);
                if whole {
                    let started = tokio::time::Instant::now();
                    return_freed_memory();
                    debug!(took = ?started.elapsed(), "freed memory handed back to the kernel");
                }
            });
        }
        // Up to date only once every type has answered on this stream (a control plane answers
        // every first subscription, even with nothing) and what they brought is published: until
        // then, pods created during an outage may still be unknown.
        if !*connected.borrow() && both && !*changed && end.is_none() {
            connected.send_replace(true);
            info!(address = %config.address, "streaming from the control plane");
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Resolves when this node's pod addresses change: `false` when they never will again.
async fn node_changed(refresh: &mut Option<watch::Receiver<u64>>) -> bool {
    match refresh {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// The mesh `store` makes, and whether it was built whole: the last one patched where it can be,
/// else built whole. A few changed workloads backing small services are patched here (well under
/// a millisecond, whatever the mesh's size: [`Store::patches_in_place`]); a larger patch, and a
/// whole build, run on a blocking thread: they take milliseconds to seconds the data path's
/// workers must not lose.
async fn rebuild(store: &mut Store) -> Result<(MeshState, bool), String> {
    if store.patches_in_place()
        && let Some(mesh) = store.patch()
    {
        return Ok((mesh, false));
    }
    let taken = std::mem::replace(store, store.empty_like());
    let (taken, mesh, whole) = tokio::task::spawn_blocking(move || {
        let mut taken = taken;
        match taken.patch() {
            Some(mesh) => (taken, mesh, false),
            None => {
                let mesh = taken.build_whole();
                (taken, mesh, true)
            }
        }
    })
    .await
    .map_err(|e| format!("building the mesh failed ({e}); starting over from nothing"))?;
    *store = taken;
    Ok((mesh, whole))
}

/// Hands the allocator's free memory back to the kernel. glibc returns only the top of each heap on
/// `free`; what a whole build (or decoding the initial sync) freed below live data stays mapped, for
/// reuse that a subscriber patching its mesh never makes (docs/controller.md has the figures).
/// `malloc_trim` releases the whole free pages inside every arena's free chunks (and the main
/// heap's top); it holds each arena's lock while it walks it, which a whole build's rarity and the
/// milliseconds it takes make acceptable (not measured under data-path load).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` has no preconditions and is thread-safe (it locks each arena).
    #[allow(
        unsafe_code,
        reason = "glibc's malloc_trim, which no safe wrapper offers"
    )]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Applies one response; returns its acknowledgement (a NACK naming what was refused) and its kind.
fn handle(
    store: &mut Store,
    response: &DeltaDiscoveryResponse,
) -> (DeltaDiscoveryRequest, Option<Kind>) {
    let mut ack = DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    };
    let Some(kind) = Kind::from_type_url(&response.type_url) else {
        warn!(type_url = %response.type_url, "a response of a type never subscribed to");
        ack.error_detail = Some(nack(format!("unknown type {}", response.type_url)));
        return (ack, None);
    };
    let refused = store.apply(kind, &response.resources, &response.removed_resources);
    if !refused.is_empty() {
        for Refusal { name, reason } in refused.iter().take(10) {
            warn!(%name, %reason, "resource refused; what it would decide is denied");
        }
        let mut message = refused
            .iter()
            .take(NACK_NAMES)
            .map(|r| format!("{}: {}", r.name, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if refused.len() > NACK_NAMES {
            message.push_str(&format!("; and {} more", refused.len() - NACK_NAMES));
        }
        ack.error_detail = Some(nack(message));
    }
    (ack, Some(kind))
}

fn nack(message: String) -> Status {
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::proto::discovery::Resource;

    fn response(type_url: &str, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: "n1".into(),
            resources,
            ..Default::default()
        }
    }

    fn garbage(kind: Kind, name: &str) -> Resource {
        kind.resource(name, "v1", vec![0xff; 3])
    }

    #[test]
    fn a_response_is_acknowledged_or_nacked_naming_what_was_refused() {
        let mut store = Store::new(MeshSettings::default());
        let (ack, kind) = handle(&mut store, &response(Kind::Address.type_url(), vec![]));
        assert_eq!(kind, Some(Kind::Address));
        assert_eq!(
            (ack.response_nonce.as_str(), ack.error_detail),
            ("n1", None)
        );

        let bad: Vec<Resource> = (0..25)
            .map(|i| garbage(Kind::Authorization, &format!("ns/p{i:02}")))
            .collect();
        let (nack, kind) = handle(&mut store, &response(Kind::Authorization.type_url(), bad));
        assert_eq!(kind, Some(Kind::Authorization));
        let detail = nack.error_detail.expect("a NACK");
        assert_eq!(detail.code, INVALID_ARGUMENT);
        assert!(detail.message.contains("ns/p00"), "{}", detail.message);
        assert!(detail.message.ends_with("and 5 more"), "{}", detail.message);
        // What was refused is held (denying), so a resumed stream does not get it again.
        assert_eq!(store.versions(Kind::Authorization).len(), 25);

        let (nack, kind) = handle(&mut store, &response("type.googleapis.com/other", vec![]));
        assert_eq!(kind, None);
        assert!(nack.error_detail.is_some());
    }
}
