//! A small OTLP/gRPC receiver for the end-to-end tests, built from the published
//! `opentelemetry-proto` definitions: every span exported to it is appended to a file as one JSON
//! line (service, IDs in hex, parent, name, kind, attributes, links, status), and every log record
//! to another (service, scope, severity, body, attributes), which the tests read.

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
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
        out: open(args.logs_out.unwrap_or(args.out)).await?,
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let (spans, logs) = (spans.clone(), logs.clone());
        // One connection carries either service: route by the gRPC path.
        let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (mut spans, mut logs) = (spans.clone(), logs.clone());
            async move {
                if request
                    .uri()
                    .path()
                    .starts_with("/opentelemetry.proto.collector.logs.")
                {
                    logs.call(request).await
                } else {
                    spans.call(request).await
                }
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .await;
        });
    }
}
