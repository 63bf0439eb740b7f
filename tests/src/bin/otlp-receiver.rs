//! A small OTLP/gRPC trace receiver for the end-to-end tests, built from the published
//! `opentelemetry-proto` definitions: every span exported to it is appended to a file as one JSON
//! line (service, IDs in hex, parent, name, kind, attributes, links, status), which the tests read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
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

#[derive(Parser)]
struct Args {
    /// Where to accept OTLP/gRPC.
    #[arg(long)]
    listen: SocketAddr,
    /// The file spans are appended to, one JSON object per line.
    #[arg(long)]
    out: PathBuf,
}

struct Receiver {
    out: Arc<Mutex<tokio::fs::File>>,
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
        let mut out = self.out.lock().await;
        out.write_all(lines.as_bytes())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        out.flush()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .await?;
    let service = TraceServiceServer::new(Receiver {
        out: Arc::new(Mutex::new(file)),
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .await;
        });
    }
}
