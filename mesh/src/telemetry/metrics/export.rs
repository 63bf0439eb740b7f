//! OTLP export of the metrics (`--otlp-metrics`): every `--otlp-metrics-interval`, what `/metrics`
//! shows is converted to OTLP and sent to the traces' endpoint (and its TLS).
//!
//! The conversion: a counter becomes a monotonic cumulative sum named without Prometheus' `_total`
//! suffix (a collector's Prometheus exporter adds it back: `istio_tcp_connections_opened_total`), a
//! gauge a gauge, a histogram an explicit-bucket cumulative histogram with the same bounds; labels
//! become attributes, unchanged (bounded as the metrics' labels are, see `super::traffic`). Every
//! point starts at the process's start. The resource is the one of spans (`service.name`,
//! `service.instance.id`).
//!
//! Costs and bounds: the registry is read and converted on a blocking thread, not on the data
//! path's workers; a request holds at most [`REQUEST_LIMIT`] bytes of metrics (more are sent in
//! several requests, far under a collector's 4 MiB default); an export that fails or outlasts its
//! timeout is dropped with the rest of its round — the next one carries the cumulative values
//! again — so a slow or absent collector costs a warning a minute, never memory or traffic.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as otlp;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pm;
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Metrics;
use crate::identity::CertManager;
use crate::telemetry::LogLimiter;
use crate::telemetry::trace::{TraceError, TraceFlags};

/// At most this many bytes of metrics in one export request.
pub const REQUEST_LIMIT: usize = 1 << 20;

/// How long one export request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The periodic export; stopped (after a last export) by [`MetricsExport::shutdown`].
#[derive(Debug)]
pub struct MetricsExport {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl MetricsExport {
    /// Starts exporting `metrics` when `--otlp-metrics` is set (with an endpoint), as `service`,
    /// instance `instance`; `certs` refreshes the certificate expiry gauges as `/metrics` does.
    /// Must be called inside the Tokio runtime the export runs on.
    pub fn start(
        flags: &TraceFlags,
        service: &'static str,
        instance: &str,
        metrics: std::sync::Arc<Metrics>,
        certs: Option<CertManager>,
    ) -> Result<Option<Self>, TraceError> {
        let (true, Some(endpoint)) = (flags.otlp_metrics, &flags.otlp_endpoint) else {
            return Ok(None);
        };
        let channel = match crate::telemetry::otlp::tls_channel(flags)? {
            Some(channel) => channel,
            None => tonic::transport::Endpoint::from(endpoint.clone())
                .connect_timeout(TIMEOUT)
                .connect_lazy(),
        };
        let client = MetricsServiceClient::new(channel);
        let source = Source {
            metrics,
            certs,
            resource: resource(service, instance),
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(client, source, flags.otlp_metrics_interval, stopped));
        Ok(Some(Self { stop, task }))
    }

    /// Sends the metrics once more and stops: within the export timeout and a second, whatever
    /// the collector does (a round stops at its first failure; what is left is abandoned).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(TIMEOUT + Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// What an export reads.
#[derive(Clone)]
struct Source {
    metrics: std::sync::Arc<Metrics>,
    certs: Option<CertManager>,
    resource: Resource,
}

type Client = MetricsServiceClient<tonic::transport::Channel>;

async fn run(
    mut client: Client,
    source: Source,
    interval: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let warnings = LogLimiter::new(Duration::from_secs(60));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut stopped => true,
        };
        let read = source.clone();
        let requests = match tokio::task::spawn_blocking(move || read.requests()).await {
            Ok(requests) => requests,
            Err(e) => {
                tracing::warn!(error = %e, "reading the metrics for OTLP failed");
                Vec::new()
            }
        };
        for request in requests {
            // A collector that failed one request is not asked for the rest of the round.
            if let Err(reason) = export(&mut client, request).await {
                if let Some(suppressed) = warnings.admit("export") {
                    tracing::warn!(%reason, suppressed, "OTLP metrics export failed; the next one sends them again");
                }
                break;
            }
        }
        if last {
            return;
        }
    }
}

async fn export(client: &mut Client, request: ExportMetricsServiceRequest) -> Result<(), String> {
    let response = tokio::time::timeout(TIMEOUT, client.export(request))
        .await
        .map_err(|_| format!("no answer in {TIMEOUT:?}"))?
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    match response.into_inner().partial_success {
        Some(partial) if partial.rejected_data_points > 0 => Err(format!(
            "the collector rejected {} data points: {}",
            partial.rejected_data_points, partial.error_message
        )),
        _ => Ok(()),
    }
}

impl Source {
    /// The metrics now, as export requests of at most [`REQUEST_LIMIT`] bytes each.
    fn requests(&self) -> Vec<ExportMetricsServiceRequest> {
        let set = self.metrics.snapshot(self.certs.as_ref());
        let now = nanos(SystemTime::now());
        let metrics = convert(set, nanos(self.metrics.started), now);
        batches(metrics, REQUEST_LIMIT)
            .into_iter()
            .map(|metrics| ExportMetricsServiceRequest {
                resource_metrics: vec![otlp::ResourceMetrics {
                    resource: Some(self.resource.clone()),
                    scope_metrics: vec![otlp::ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "veil".into(),
                            ..InstrumentationScope::default()
                        }),
                        metrics,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            })
            .collect()
    }
}

fn resource(service: &'static str, instance: &str) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service),
            string("service.instance.id", instance),
        ],
        ..Resource::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn attributes(labels: &[pm::LabelPair]) -> Vec<KeyValue> {
    labels.iter().map(|l| string(&l.name, &l.value)).collect()
}

/// Prometheus' metric families as OTLP metrics (points from `start` to `now`, in Unix
/// nanoseconds). Summaries and gauge histograms (which the registry cannot hold), histograms
/// whose buckets do not add up, and families with no series are left out.
pub(crate) fn convert(families: Vec<pm::MetricFamily>, start: u64, now: u64) -> Vec<otlp::Metric> {
    use otlp::number_data_point::Value as N;
    let number = |labels: &[pm::LabelPair], value| otlp::NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(N::AsDouble(value)),
        ..otlp::NumberDataPoint::default()
    };
    let mut out = Vec::with_capacity(families.len());
    for family in families {
        let kind = pm::MetricType::try_from(family.r#type).unwrap_or(pm::MetricType::Untyped);
        let mut name = family.name;
        let points = family.metric.into_iter();
        let data = match kind {
            pm::MetricType::Counter => {
                // OTLP names a sum without the suffix Prometheus adds to counters.
                if let Some(base) = name.strip_suffix("_total") {
                    name.truncate(base.len());
                }
                otlp::metric::Data::Sum(otlp::Sum {
                    data_points: points
                        .filter_map(|m| Some(number(&m.label, m.counter?.value)))
                        .collect(),
                    aggregation_temporality: otlp::AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            }
            pm::MetricType::Gauge | pm::MetricType::Untyped => {
                otlp::metric::Data::Gauge(otlp::Gauge {
                    data_points: points
                        .filter_map(|m| {
                            let value = match (&m.gauge, &m.untyped) {
                                (Some(g), _) => g.value,
                                (None, Some(u)) => u.value,
                                (None, None) => return None,
                            };
                            Some(number(&m.label, value))
                        })
                        .collect(),
                })
            }
            pm::MetricType::Histogram => otlp::metric::Data::Histogram(otlp::Histogram {
                data_points: points
                    .filter_map(|m| histogram(attributes(&m.label), m.histogram?, start, now))
                    .collect(),
                aggregation_temporality: otlp::AggregationTemporality::Cumulative as i32,
            }),
            pm::MetricType::Summary | pm::MetricType::GaugeHistogram => continue,
        };
        let points = match &data {
            otlp::metric::Data::Sum(s) => s.data_points.len(),
            otlp::metric::Data::Gauge(g) => g.data_points.len(),
            otlp::metric::Data::Histogram(h) => h.data_points.len(),
            _ => 0,
        };
        // A family with no series yet (or none left) is not sent.
        if points == 0 {
            continue;
        }
        out.push(otlp::Metric {
            name,
            description: family.help,
            unit: family.unit,
            metadata: Vec::new(),
            data: Some(data),
        });
    }
    out
}

/// An explicit-bucket point from Prometheus' cumulative buckets: increasing finite bounds, an
/// optional `+Inf` bucket, counts that never decrease and stay within the total. Anything else
/// (and a native-only or float-count histogram, which the registry does not make) is left out.
fn histogram(
    attributes: Vec<KeyValue>,
    h: pm::Histogram,
    start: u64,
    now: u64,
) -> Option<otlp::HistogramDataPoint> {
    if h.sample_count_float > 0.0 || h.bucket.iter().any(|b| b.cumulative_count_float > 0.0) {
        return None;
    }
    let mut buckets = h.bucket.as_slice();
    if let Some((last, finite)) = buckets.split_last()
        && last.upper_bound == f64::INFINITY
    {
        if last.cumulative_count != h.sample_count {
            return None;
        }
        buckets = finite;
    }
    if buckets.is_empty() {
        return None;
    }
    let explicit_bounds: Vec<f64> = buckets.iter().map(|b| b.upper_bound).collect();
    let increasing = explicit_bounds.windows(2).all(|w| w[0] < w[1])
        && explicit_bounds.iter().all(|b| b.is_finite());
    let mut bucket_counts = Vec::with_capacity(buckets.len() + 1);
    let mut before = 0;
    for b in buckets
        .iter()
        .map(|b| b.cumulative_count)
        .chain([h.sample_count])
    {
        bucket_counts.push(b.checked_sub(before)?);
        before = b;
    }
    if !increasing {
        return None;
    }
    Some(otlp::HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: h.sample_count,
        sum: Some(h.sample_sum),
        bucket_counts,
        explicit_bounds,
        ..otlp::HistogramDataPoint::default()
    })
}

/// `metrics` in groups of at most `limit` encoded bytes each; a metric too large for one group is
/// split by its points (a single point larger than `limit` travels alone).
pub(crate) fn batches(metrics: Vec<otlp::Metric>, limit: usize) -> Vec<Vec<otlp::Metric>> {
    let mut out: Vec<Vec<otlp::Metric>> = Vec::new();
    let mut size = 0;
    for part in metrics.into_iter().flat_map(|m| split(m, limit)) {
        let len = part.encoded_len();
        match out.last_mut() {
            Some(group) if size + len <= limit => group.push(part),
            _ => {
                out.push(vec![part]);
                size = 0;
            }
        }
        size += len;
    }
    out
}

/// `metric` as parts of at most `limit` encoded bytes (one point at least each).
fn split(metric: otlp::Metric, limit: usize) -> Vec<otlp::Metric> {
    if metric.encoded_len() <= limit {
        return vec![metric];
    }
    let otlp::Metric {
        name,
        description,
        unit,
        metadata,
        data,
    } = metric;
    // What a part holds besides its points.
    let head = otlp::Metric {
        name: name.clone(),
        description: description.clone(),
        unit: unit.clone(),
        metadata: metadata.clone(),
        data: None,
    }
    .encoded_len()
        + 32;
    let points_limit = limit.saturating_sub(head);
    let part = |data| otlp::Metric {
        name: name.clone(),
        description: description.clone(),
        unit: unit.clone(),
        metadata: metadata.clone(),
        data: Some(data),
    };
    use otlp::metric::Data;
    match data {
        Some(Data::Sum(s)) => chunks(s.data_points, points_limit, |points| {
            part(Data::Sum(otlp::Sum {
                data_points: points,
                ..s
            }))
        }),
        Some(Data::Gauge(g)) => chunks(g.data_points, points_limit, |points| {
            part(Data::Gauge(otlp::Gauge {
                data_points: points,
            }))
        }),
        Some(Data::Histogram(h)) => chunks(h.data_points, points_limit, |points| {
            part(Data::Histogram(otlp::Histogram {
                data_points: points,
                ..h
            }))
        }),
        // `convert` makes no other kind.
        data => vec![otlp::Metric {
            name,
            description,
            unit,
            metadata,
            data,
        }],
    }
}

/// `points` grouped so that each group's points add up to at most `limit` encoded bytes (one
/// point at least), each group made into a metric by `make`.
fn chunks<P: prost::Message>(
    points: Vec<P>,
    limit: usize,
    make: impl Fn(Vec<P>) -> otlp::Metric,
) -> Vec<otlp::Metric> {
    let mut out = Vec::new();
    let mut group = Vec::new();
    let mut size = 0;
    for point in points {
        // A point's tag and length prefix: at most 1 + 10 bytes.
        let len = point.encoded_len() + 11;
        if !group.is_empty() && size + len > limit {
            out.push(make(std::mem::take(&mut group)));
            size = 0;
        }
        size += len;
        group.push(point);
    }
    if !group.is_empty() {
        out.push(make(group));
    }
    out
}

#[cfg(test)]
mod tests;
