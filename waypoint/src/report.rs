//! Istio's standard metrics as a waypoint reports them (`reporter="waypoint"`): one series per
//! source workload, destination workload, service and status, never per path or client address.

use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::telemetry::metrics::{
    Metrics, Party, Protocol, Reporter, RequestLabels, Security, ServiceLabel, TrafficLabels,
};

use crate::target::Destination;

/// The labels of the traffic of one tunnel (or of one request on it): its authenticated client,
/// the service or workload it was sent to, and the endpoint once one is chosen.
#[derive(Clone, Debug)]
pub struct Report {
    labels: TrafficLabels,
}

impl Report {
    /// For a tunnel from `source` for `dest` at `target`.
    pub fn new(
        state: &MeshState,
        source: &Party,
        dest: &Destination,
        target: std::net::SocketAddr,
        protocol: Protocol,
    ) -> Self {
        let service = match dest {
            Destination::Service { service, .. } => ServiceLabel::of(service),
            Destination::Workload { workload, .. } => {
                ServiceLabel::for_destination(state, target, Some(workload))
            }
        };
        Self {
            labels: TrafficLabels {
                reporter: Reporter::Waypoint,
                source: source.clone(),
                destination: Party::unknown(),
                service,
                protocol,
                security: Security::MutualTls,
            },
        }
    }

    /// The endpoint the traffic goes to.
    pub fn to_endpoint(&mut self, endpoint: &Workload) {
        self.labels.destination = Party::of(endpoint);
    }

    /// The labels of its TCP metrics.
    pub fn labels(&self) -> &TrafficLabels {
        &self.labels
    }

    /// Counts one answered request: what went to the client on the wire (the HTTP status, and a
    /// gRPC answer's code), its body sizes and duration.
    pub fn request(
        &self,
        metrics: &Metrics,
        (status, grpc_status): (u16, Option<u16>),
        request_bytes: u64,
        response_bytes: u64,
        duration: std::time::Duration,
    ) {
        let labels = RequestLabels {
            traffic: self.labels.clone(),
            response_code: status,
            grpc_response_status: grpc_status,
        };
        metrics.requests.get_or_create(&labels).inc();
        metrics
            .request_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64() * 1000.0);
        metrics
            .request_bytes
            .get_or_create(&labels)
            .observe(request_bytes as f64);
        metrics
            .response_bytes
            .get_or_create(&labels)
            .observe(response_bytes as f64);
    }
}
