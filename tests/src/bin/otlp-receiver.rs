//! A small OTLP/gRPC receiver for the end-to-end tests, built from the published
//! `opentelemetry-proto` definitions: every span exported to it is appended to a file as one JSON
//! line (service, IDs in hex, parent, name, kind, attributes, links, status), every log record
//! to another (service, scope, severity, body, attributes), and every metric data point to a third
//! (service, name, kind, temporality, attributes, value or buckets), which the tests read. With
//! `--tls-cert`, it speaks only TLS, and with `--tls-client-ca` it requires a client certificate
//! that CA signed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_rustls::rustls;
use tonic::{Request, Response, Status};
use tower::Service as _;

#[derive(Parser)]
struct Args {
    /// Where to accept OTLP/gRPC.
    #[arg(long)]
    listen: SocketAddr,
    /// The file spans are appended to, one JSON object per line.
    #[arg(long)]
    out: PathBuf,
    /// The file log records are appended to, one JSON object per line.
    #[arg(long)]
    logs_out: Option<PathBuf>,
    /// The file metric data points are appended to, one JSON object per line.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM)…
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// …and this key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

struct Receiver {
    out: Arc<Mutex<tokio::fs::File>>,
}

/// Appends `lines` to `out`.
async fn append(out: &Mutex<tokio::fs::File>, lines: &str) -> Result<(), Status> {
    let mut out = out.lock().await;
    out.write_all(lines.as_bytes())
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    out.flush()
        .await
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut lines = String::new();
        for resource_logs in &request.get_ref().resource_logs {
            let resource = resource_logs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for scope in &resource_logs.scope_logs {
                for record in &scope.log_records {
                    let line = json!({
                        "service": resource.get("service.name"),
                        "instance": resource.get("service.instance.id"),
                        "scope": scope.scope.as_ref().map(|s| s.name.clone()),
                        "event_name": record.event_name,
                        "severity": record.severity_text,
                        "body": value(record.body.as_ref()),
                        "attributes": attributes(&record.attributes),
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
            }
        }
        append(&self.out, &lines).await?;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(other) => json!(format!("{other:?}")),
        None => Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> Value {
    let map: Map<String, Value> = kvs
        .iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect();
    Value::Object(map)
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut lines = String::new();
        for resource_spans in &request.get_ref().resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    let links: Vec<Value> = span
                        .links
                        .iter()
                        .map(|l| json!({"trace_id": hex(&l.trace_id), "span_id": hex(&l.span_id)}))
                        .collect();
                    let line = json!({
                        "service": resource.get("service.name"),
                        "instance": resource.get("service.instance.id"),
                        "trace_id": hex(&span.trace_id),
                        "span_id": hex(&span.span_id),
                        "parent_span_id": hex(&span.parent_span_id),
                        "name": span.name,
                        "kind": span.kind,
                        "attributes": attributes(&span.attributes),
                        "links": links,
                        "status_code": span.status.as_ref().map_or(0, |s| s.code),
                        "status_message": span.status.as_ref().map(|s| s.message.clone()),
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
            }
        }
        append(&self.out, &lines).await?;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut lines = String::new();
        let mut push = |line: Value| {
            lines.push_str(&line.to_string());
            lines.push('\n');
        };
        for resource_metrics in &request.get_ref().resource_metrics {
            let resource = resource_metrics
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for scope in &resource_metrics.scope_metrics {
                for m in &scope.metrics {
                    let head = json!({
                        "service": resource.get("service.name"),
                        "instance": resource.get("service.instance.id"),
                        "scope": scope.scope.as_ref().map(|s| s.name.clone()),
                        "name": m.name,
                        "description": m.description,
                    });
                    let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| {
                        let value = match p.value {
                            Some(number_data_point::Value::AsDouble(d)) => json!(d),
                            Some(number_data_point::Value::AsInt(i)) => json!(i),
                            None => Value::Null,
                        };
                        (
                            value,
                            attributes(&p.attributes),
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                        )
                    };
                    let mut point = |extra: Value| {
                        let mut line = head.clone();
                        line.as_object_mut()
                            .unwrap()
                            .extend(extra.as_object().unwrap().clone());
                        push(line);
                    };
                    match &m.data {
                        Some(metric::Data::Sum(sum)) => {
                            for p in &sum.data_points {
                                let (value, attrs, start, time) = number(p);
                                point(json!({"kind": "sum", "monotonic": sum.is_monotonic,
                                    "temporality": sum.aggregation_temporality, "value": value,
                                    "attributes": attrs, "start": start, "time": time}));
                            }
                        }
                        Some(metric::Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                let (value, attrs, start, time) = number(p);
                                point(json!({"kind": "gauge", "value": value,
                                    "attributes": attrs, "start": start, "time": time}));
                            }
                        }
                        Some(metric::Data::Histogram(h)) => {
                            for p in &h.data_points {
                                point(json!({"kind": "histogram",
                                    "temporality": h.aggregation_temporality,
                                    "count": p.count, "sum": p.sum,
                                    "bucket_counts": p.bucket_counts,
                                    "explicit_bounds": p.explicit_bounds,
                                    "attributes": attributes(&p.attributes),
                                    "start": p.start_time_unix_nano, "time": p.time_unix_nano}));
                            }
                        }
                        other => point(json!({"kind": format!("{other:?}")})),
                    }
                }
            }
        }
        append(&self.out, &lines).await?;
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The TLS the receiver serves with `--tls-cert`: h2 only, client certificates from
/// `--tls-client-ca` required when given.
fn tls(args: &Args) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &args.tls_client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)? {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = tls(&args)?;
    let open = |path: PathBuf| async move {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map(|f| Arc::new(Mutex::new(f)))
    };
    let spans = TraceServiceServer::new(Receiver {
        out: open(args.out.clone()).await?,
    });
    let logs = LogsServiceServer::new(Receiver {
        out: open(args.logs_out.unwrap_or(args.out.clone())).await?,
    });
    let metrics = MetricsServiceServer::new(Receiver {
        out: open(args.metrics_out.unwrap_or(args.out)).await?,
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let (spans, logs, metrics) = (spans.clone(), logs.clone(), metrics.clone());
        // One connection carries any service: route by the gRPC path.
        let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (mut spans, mut logs, mut metrics) = (spans.clone(), logs.clone(), metrics.clone());
            async move {
                let path = request.uri().path();
                if path.starts_with("/opentelemetry.proto.collector.logs.") {
                    logs.call(request).await
                } else if path.starts_with("/opentelemetry.proto.collector.metrics.") {
                    metrics.call(request).await
                } else {
                    spans.call(request).await
                }
            }
        });
        let tls = tls.clone();
        tokio::spawn(async move {
            let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let service = TowerToHyperService::new(service);
            match tls {
                // A handshake that fails (no client certificate, an untrusted one, plaintext)
                // ends the connection: nothing is received.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(tcp).await {
                        let _ = http2.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http2.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}
