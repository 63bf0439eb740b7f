use std::collections::BTreeMap;

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pm;
use prometheus_client::metrics::family::Family;

use super::*;
use crate::telemetry::metrics::{
    AcceptErrorLabels, Counter, Gauge, Histogram, Resource as Res, ResourceLabels,
};

fn named<'a>(metrics: &'a [otlp::Metric], name: &str) -> &'a otlp::Metric {
    metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", names(metrics)))
}

fn names(metrics: &[otlp::Metric]) -> Vec<&str> {
    metrics.iter().map(|m| m.name.as_str()).collect()
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("not a string: {other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A proxy's registry as the export sends it: names without `_total`, labels as attributes,
/// counters as monotonic cumulative sums, gauges as gauges, every point from the start.
#[test]
fn the_registry_converts_kind_by_kind() {
    let mut m = Metrics::new();
    m.accept_errors
        .get_or_create(&AcceptErrorLabels {
            resource: Res::InboundTunnels,
            error: "EMFILE",
        })
        .inc_by(3);
    m.resource_in_use
        .get_or_create(&ResourceLabels {
            resource: Res::HboneConnections,
        })
        .set(-7);
    m.config_rejected.inc();
    let durations = Family::<Vec<(String, String)>, Histogram>::new_with_constructor(|| {
        Histogram::new([1.0, 10.0, 100.0])
    });
    m.registry
        .register("probe_duration", "a histogram", durations.clone());
    let h = durations.get_or_create(&vec![("route".into(), "a".into())]);
    for v in [0.5, 5.0, 5.0, 50.0, 500.0, 1000.0] {
        h.observe(v);
    }
    let (start, now) = (nanos(m.started), nanos(SystemTime::now()));
    let metrics = convert(m.snapshot(None), start, now);

    let accept = named(&metrics, "veil_accept_errors");
    let Some(Data::Sum(sum)) = &accept.data else {
        panic!("{accept:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        otlp::AggregationTemporality::Cumulative as i32
    );
    let [point] = sum.data_points.as_slice() else {
        panic!("{sum:?}")
    };
    assert_eq!(point.value, Some(Value::AsDouble(3.0)));
    assert_eq!(
        (point.start_time_unix_nano, point.time_unix_nano),
        (start, now)
    );
    assert_eq!(
        attrs(&point.attributes),
        BTreeMap::from([
            ("resource".into(), "inbound_tunnels".into()),
            ("error".into(), "EMFILE".into())
        ])
    );
    assert!(!accept.description.is_empty());

    let in_use = named(&metrics, "veil_resource_in_use");
    let Some(Data::Gauge(gauge)) = &in_use.data else {
        panic!("{in_use:?}")
    };
    assert_eq!(gauge.data_points[0].value, Some(Value::AsDouble(-7.0)));

    let rejected = named(&metrics, "veil_config_rejected");
    let Some(Data::Sum(sum)) = &rejected.data else {
        panic!("{rejected:?}")
    };
    assert_eq!(sum.data_points[0].value, Some(Value::AsDouble(1.0)));
    assert!(sum.data_points[0].attributes.is_empty());

    // A histogram: per-bucket counts (OTLP's), bounds without +Inf, the text exposition's
    // cumulative counts agree.
    let probe = named(&metrics, "probe_duration");
    let Some(Data::Histogram(hist)) = &probe.data else {
        panic!("{probe:?}")
    };
    let [point] = hist.data_points.as_slice() else {
        panic!("{hist:?}")
    };
    assert_eq!(point.explicit_bounds, vec![1.0, 10.0, 100.0]);
    assert_eq!(point.bucket_counts, vec![1, 2, 1, 2]);
    assert_eq!(point.count, 6);
    assert_eq!(point.sum, Some(1560.5));
    let text = m.encode(None);
    for (le, cumulative) in [("1.0", 1), ("10.0", 3), ("100.0", 4), ("+Inf", 6)] {
        let line = format!("probe_duration_bucket{{le=\"{le}\",route=\"a\"}} {cumulative}");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    // Every family of the text exposition with a series is exported, the others are not.
    let with_series: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .filter(|family| {
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(family))
        })
        .collect();
    let mut exported = names(&metrics);
    exported.sort_unstable();
    let mut expected: Vec<String> = with_series
        .iter()
        .map(|f| match f.strip_suffix("_total") {
            Some(base) if text.contains(&format!("# TYPE {f} counter")) => base.to_owned(),
            _ => (*f).to_owned(),
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(exported, expected);
    assert!(
        !exported.contains(&"veil_policy_decisions"),
        "no series yet"
    );
}

fn bucket(upper_bound: f64, cumulative_count: u64) -> pm::Bucket {
    pm::Bucket {
        upper_bound,
        cumulative_count,
        ..pm::Bucket::default()
    }
}

#[test]
fn histogram_buckets_are_checked_or_left_out() {
    let convert = |bucket, sample_count| {
        let h = pm::Histogram {
            sample_count,
            sample_sum: 1.0,
            bucket,
            ..pm::Histogram::default()
        };
        histogram(Vec::new(), h, 0, 1)
    };
    let inf = f64::INFINITY;
    // Cumulative → per bucket, with the +Inf bucket as OTLP's overflow.
    let point = convert(vec![bucket(1.0, 2), bucket(2.0, 5), bucket(inf, 9)], 9).unwrap();
    assert_eq!(point.bucket_counts, vec![2, 3, 4]);
    assert_eq!(point.explicit_bounds, vec![1.0, 2.0]);
    // Without a +Inf bucket, the overflow is what the total says.
    let point = convert(vec![bucket(1.0, 2), bucket(2.0, 5)], 9).unwrap();
    assert_eq!(point.bucket_counts, vec![2, 3, 4]);
    // Counts that decrease, exceed the total or disagree with +Inf; bounds out of order or not
    // numbers; no finite bucket: left out.
    assert!(convert(vec![bucket(1.0, 5), bucket(2.0, 2), bucket(inf, 9)], 9).is_none());
    assert!(convert(vec![bucket(1.0, 2), bucket(2.0, 10)], 9).is_none());
    assert!(convert(vec![bucket(1.0, 2), bucket(inf, 8)], 9).is_none());
    assert!(convert(vec![bucket(2.0, 1), bucket(1.0, 1), bucket(inf, 3)], 3).is_none());
    assert!(convert(vec![bucket(f64::NAN, 1), bucket(inf, 2)], 2).is_none());
    assert!(convert(vec![bucket(inf, 2)], 2).is_none());
    assert!(convert(Vec::new(), 0).is_none());
}

/// A point without the value of its family's kind is left out, not mislabelled.
#[test]
fn points_of_another_kind_are_left_out() {
    let families = vec![pm::MetricFamily {
        name: "c_total".into(),
        r#type: pm::MetricType::Counter as i32,
        metric: vec![
            pm::Metric {
                gauge: Some(pm::Gauge { value: 1.0 }),
                ..pm::Metric::default()
            },
            pm::Metric {
                counter: Some(pm::Counter {
                    value: 2.0,
                    ..pm::Counter::default()
                }),
                ..pm::Metric::default()
            },
        ],
        ..pm::MetricFamily::default()
    }];
    let metrics = convert(families, 0, 1);
    assert_eq!(metrics[0].name, "c");
    let Some(Data::Sum(sum)) = &metrics[0].data else {
        panic!("{metrics:?}")
    };
    assert_eq!(sum.data_points.len(), 1);
    assert_eq!(sum.data_points[0].value, Some(Value::AsDouble(2.0)));
}

/// Thousands of series are sent in requests under the limit, every point once.
#[test]
fn large_registries_are_split_under_the_limit() {
    let family = Family::<Vec<(String, String)>, Counter>::default();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("series", "many series", family.clone());
    let gauges = Family::<Vec<(String, String)>, Gauge>::default();
    registry.register("gauges", "a few", gauges.clone());
    for i in 0..5000 {
        family
            .get_or_create(&vec![
                ("workload".into(), format!("workload-{i:05}")),
                (
                    "principal".into(),
                    format!("spiffe://cluster.local/ns/n/sa/s{i}"),
                ),
            ])
            .inc_by(i);
    }
    gauges.get_or_create(&vec![]).set(1);
    let set = prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap();
    let metrics = convert(set, 0, 1);
    let total: usize = metrics.iter().map(|m| m.encoded_len()).sum();
    let limit = 64 * 1024;
    assert!(
        total > 4 * limit,
        "the test needs several requests: {total}"
    );
    let groups = batches(metrics, limit);
    assert!(groups.len() >= 4, "{} groups", groups.len());
    let mut values = Vec::new();
    for group in &groups {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::ResourceMetrics {
                scope_metrics: vec![otlp::ScopeMetrics {
                    metrics: group.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // The envelope adds a few bytes to the metrics' own.
        assert!(
            request.encoded_len() <= limit + 64,
            "{}",
            request.encoded_len()
        );
        for metric in group {
            if let Some(Data::Sum(s)) = &metric.data {
                assert_eq!(metric.name, "series");
                values.extend(s.data_points.iter().map(|p| p.value));
            }
        }
    }
    let mut expected: Vec<_> = (0..5000).map(|i| Some(Value::AsDouble(i as f64))).collect();
    let key = |v: &Option<Value>| match v {
        Some(Value::AsDouble(d)) => *d as i64,
        _ => -1,
    };
    values.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(values, expected);
    assert!(groups.iter().flatten().any(|m| m.name == "gauges"));

    // One point larger than the limit travels alone.
    let big = otlp::Metric {
        name: "big".into(),
        data: Some(Data::Gauge(otlp::Gauge {
            data_points: vec![
                otlp::NumberDataPoint {
                    attributes: vec![string("k", &"v".repeat(2000))],
                    ..Default::default()
                },
                otlp::NumberDataPoint::default(),
            ],
        })),
        ..Default::default()
    };
    let groups = batches(vec![big], 1000);
    assert_eq!(groups.len(), 2, "{groups:?}");
}
