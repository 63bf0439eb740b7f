//! The controller's metrics (Prometheus text on the metrics port).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of the control plane.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open discovery streams.
    pub streams: Gauge,
    /// Streams waiting for their turn to sync.
    pub waiting_syncs: Gauge,
    /// Subscriptions refused (no credential, unknown or unauthorized identity).
    pub refused: Counter,
    /// Responses sent.
    pub responses: Counter,
    /// Resources sent, summed over responses.
    pub resources_sent: Counter,
    /// Responses refused by a subscriber (NACKs).
    pub nacks: Counter,
    /// Streams ended because a response went unacknowledged.
    pub ack_timeouts: Counter,
    /// Snapshots published.
    pub snapshots: Counter,
    /// Resources in the newest snapshot.
    pub resources: Gauge,
    /// Objects left out of the newest snapshot (invalid or conflicting).
    pub rejected_objects: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("veil_controller");
        let streams = Gauge::default();
        let waiting_syncs = Gauge::default();
        let refused = Counter::default();
        let responses = Counter::default();
        let resources_sent = Counter::default();
        let nacks = Counter::default();
        let ack_timeouts = Counter::default();
        let snapshots = Counter::default();
        let resources = Gauge::default();
        let rejected_objects = Gauge::default();
        registry.register("streams", "Open discovery streams", streams.clone());
        registry.register(
            "waiting_syncs",
            "Streams waiting for their turn to sync (a bounded number sync at once)",
            waiting_syncs.clone(),
        );
        registry.register(
            "subscriptions_refused",
            "Subscriptions refused: no valid credential, or an identity not allowed",
            refused.clone(),
        );
        registry.register("responses", "Discovery responses sent", responses.clone());
        registry.register(
            "resources_sent",
            "Resources sent, summed over responses",
            resources_sent.clone(),
        );
        registry.register("nacks", "Responses a subscriber refused", nacks.clone());
        registry.register(
            "ack_timeouts",
            "Streams ended because a response went unacknowledged",
            ack_timeouts.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots of the mesh published",
            snapshots.clone(),
        );
        registry.register(
            "resources",
            "Resources in the newest snapshot",
            resources.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects left out of the newest snapshot because they are invalid or conflict",
            rejected_objects.clone(),
        );
        Self {
            registry,
            streams,
            waiting_syncs,
            refused,
            responses,
            resources_sent,
            nacks,
            ack_timeouts,
            snapshots,
            resources,
            rejected_objects,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
