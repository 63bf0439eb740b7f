//! The gRPC service: `DeltaAggregatedResources` streams, each driven by its own task.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream as FutureStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};
use veil_mesh::identity::Identity;
use veil_mesh::telemetry::LogLimiter;
use veil_mesh::xds::proto::discovery::aggregated_discovery_service_server::AggregatedDiscoveryService;
use veil_mesh::xds::proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use veil_mesh::xds::{Audience, Kind};

use crate::ads::Stream;
use crate::auth::{ConnectionAuth, Subscriber, SubscriberAuth};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How long a client may leave a response unacknowledged before its stream is ended (it reconnects
/// and resumes from what it holds); until then it holds one snapshot reference, never a queue.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// How many streams may be in their initial sync at once. A sync sent whole (to a client that does
/// not accept split responses, such as Istio's ztunnel) is the whole mesh, copied and encoded per
/// subscriber (about 3 MB at 10,000 pods); one sent in parts holds at most one part
/// ([`RESPONSE_BUDGET`](crate::ads::RESPONSE_BUDGET)) at a time but takes a round trip per part.
/// A thousand ztunnels reconnecting together take turns: at 10,000 pods, 1,000 veil subscribers
/// synced in 38 s 16 at a time, 17 s 64 at a time, 16 s 256 at a time (docs/controller.md). The
/// others wait their turn (their ztunnels are not ready yet, or keep serving their last state).
pub const CONCURRENT_SYNCS: usize = 64;

/// The discovery service.
#[derive(Debug, Clone)]
pub struct Discovery {
    hub: Arc<Hub>,
    auth: SubscriberAuth,
    metrics: Arc<Metrics>,
    ack_timeout: Duration,
    nack_log: Arc<LogLimiter<String>>,
    syncs: Arc<Semaphore>,
    response_budget: usize,
}

impl Discovery {
    /// Serves `hub` to the subscribers `auth` admits.
    pub fn new(hub: Arc<Hub>, auth: SubscriberAuth, metrics: Arc<Metrics>) -> Self {
        Self {
            hub,
            auth,
            metrics,
            ack_timeout: ACK_TIMEOUT,
            nack_log: Arc::new(LogLimiter::new(Duration::from_secs(10))),
            syncs: Arc::new(Semaphore::new(CONCURRENT_SYNCS)),
            response_budget: crate::ads::RESPONSE_BUDGET,
        }
    }

    /// Overrides [`RESPONSE_BUDGET`](crate::ads::RESPONSE_BUDGET).
    pub fn with_response_budget(mut self, budget: usize) -> Self {
        self.response_budget = budget;
        self
    }

    /// Overrides [`CONCURRENT_SYNCS`].
    pub fn with_concurrent_syncs(mut self, syncs: usize) -> Self {
        self.syncs = Arc::new(Semaphore::new(syncs.max(1)));
        self
    }

    /// Overrides [`ACK_TIMEOUT`] (tests).
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }
}

type Responses = Pin<Box<dyn FutureStream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Discovery {
    type DeltaAggregatedResourcesStream = Responses;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let hub = self.hub.clone();
        let is_waypoint = move |id: &Identity| hub.current().resources.is_waypoint(id);
        let subscriber = match self.auth.check(&request, is_waypoint).await {
            Ok(s) => s,
            Err(status) => {
                self.metrics.refused.inc();
                warn!(code = ?status.code(), reason = status.message(), "subscription refused");
                return Err(status);
            }
        };
        if let Some(ConnectionAuth(flag)) = request.extensions().get::<ConnectionAuth>() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        info!(identity = %subscriber.identity, node = ?subscriber.node, audience = ?subscriber.audience, "subscriber connected");
        // Two types, at most one unacknowledged response each: the channel never holds more.
        let (tx, rx) = mpsc::channel(Kind::ALL.len());
        tokio::spawn(drive(self.clone(), subscriber, request.into_inner(), tx));
        let responses = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

async fn drive(
    service: Discovery,
    subscriber: Subscriber,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let metrics = &service.metrics;
    // The initial sync waits for its turn; the turn is held until the first responses are
    // acknowledged (or the stream ends).
    metrics.waiting_syncs.inc();
    let permit = tokio::select! {
        permit = service.syncs.clone().acquire_owned() => permit.ok(),
        () = tx.closed() => None,
    };
    metrics.waiting_syncs.dec();
    let Some(permit) = permit else {
        info!(identity = %subscriber.identity, "subscriber left before its initial sync");
        return;
    };
    let mut sync_turn = Some(permit);
    metrics.streams.inc();
    let mut stream = Stream::new(service.hub.clone())
        .with_response_budget(service.response_budget)
        .with_node(subscriber.node.as_deref())
        .with_audience(subscriber.audience.clone());
    let mut snapshots = service.hub.subscribe();
    // A waypoint demoted while it waited for its turn: checked against the mesh it would be sent.
    snapshots.mark_changed();
    let end = 'stream: loop {
        // The oldest unacknowledged response, of whichever type, sets the deadline: a client
        // that acknowledges one type but not the other is cut off all the same.
        let deadline = stream.oldest_pending().map(|t| t + service.ack_timeout);
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => match stream.on_request(request) {
                    Ok(Some(nack)) => {
                        metrics.nacks.inc();
                        let key = format!("{}", subscriber.identity);
                        if let Some(held) = service.nack_log.admit(key) {
                            warn!(identity = %subscriber.identity, kind = ?nack.kind, reason = %nack.message, held_back = held, "subscriber refused resources");
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        // Never wait on a client that does not read: the error is best effort.
                        let _ = tx.try_send(Err(status.clone()));
                        break format!("refused a request: {}", status.message());
                    }
                },
                Ok(None) => break "the client closed the stream".to_owned(),
                Err(status) => break format!("stream error: {}", status.message()),
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break "the controller is shutting down".to_owned();
                }
                // A waypoint is served for as long as the mesh has it as one: its Service
                // relabelled, or its pods running as another account, ends the stream.
                if matches!(subscriber.audience, Audience::Waypoint { .. })
                    && !service.hub.current().resources.is_waypoint(&subscriber.identity)
                {
                    let status = Status::permission_denied(format!(
                        "{} is no longer a waypoint of the mesh",
                        subscriber.identity
                    ));
                    let _ = tx.try_send(Err(status));
                    metrics.refused.inc();
                    break "no longer a waypoint of the mesh".to_owned();
                }
            },
            () = sleep_until(deadline) => {
                let status = Status::deadline_exceeded(format!(
                    "no acknowledgement within {}s: reconnect and resume",
                    service.ack_timeout.as_secs()
                ));
                let _ = tx.try_send(Err(status));
                metrics.ack_timeouts.inc();
                break "no acknowledgement in time".to_owned();
            },
            () = tx.closed() => break "the client went away".to_owned(),
            () = sleep_until(stream.wake_at()) => {}
        }
        if sync_turn.is_some() && stream.synced() {
            sync_turn = None;
        }
        for response in stream.due() {
            {
                metrics.responses.inc();
                metrics
                    .resources_sent
                    .inc_by(response.resources.len() as u64);
                // Room is guaranteed: one unacknowledged response per type, and an acknowledged
                // one has left the channel. A full channel means a broken client.
                if tx.try_send(Ok(response)).is_err() {
                    break 'stream "the client does not read its responses".to_owned();
                }
            }
        }
    };
    metrics.streams.dec();
    info!(identity = %subscriber.identity, reason = %end, "subscriber disconnected");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
