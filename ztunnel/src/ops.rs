//! Operational endpoints: Prometheus metrics (15020), readiness (15021), and the admin config dump
//! (15000, loopback only). The dump shows certificates by identity and expiry, never key material.

use std::sync::Arc;

use http::StatusCode;
use veil_mesh::admin::{ConfigDump, InboundConnection, ProxyInfo};
use veil_mesh::telemetry::http::{Handler, json, openmetrics, text};

use crate::conntrack::Denial;
use crate::context::Context;
use crate::enrol::{CaptureStatus, StatusMap};

/// `/metrics`.
pub fn metrics(ctx: Arc<Context>) -> Handler {
    Arc::new(move |req| match req.uri.path() {
        "/metrics" | "/stats/prometheus" => openmetrics(ctx.metrics.encode(Some(&ctx.certs))),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// `/healthz/ready`: 200 once every pod of this node is captured and has a valid certificate.
pub fn readiness(ctx: Arc<Context>, status: StatusMap) -> Handler {
    Arc::new(move |req| {
        if req.uri.path() != "/healthz/ready" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let problems = not_ready(&ctx, &status);
        if problems.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{}\n", problems.join("\n")),
            )
        }
    })
}

fn not_ready(ctx: &Context, status: &StatusMap) -> Vec<String> {
    let state = ctx.state();
    let statuses = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let expiries = ctx.certs.expiries();
    let mut problems = Vec::new();
    if let Some(e) = ctx
        .probe_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        problems.push(format!(
            "kubelet probe rules could not be set on the node (probes of enrolled pods fail under STRICT): {e}"
        ));
    }
    for workload in state
        .workloads_on_node(&ctx.node)
        .iter()
        .filter(|w| w.enrolled)
    {
        match statuses.get(&*workload.uid) {
            Some(CaptureStatus::Captured { .. }) => {}
            Some(CaptureStatus::Released) => continue,
            Some(CaptureStatus::Failed { reason }) => {
                problems.push(format!("{}: capture failed: {reason}", workload.key()));
            }
            None => problems.push(format!("{}: not captured yet", workload.key())),
        }
        let has_cert = expiries
            .iter()
            .any(|(id, exp)| id == &workload.identity && exp.is_some());
        if !has_cert {
            problems.push(format!(
                "{}: no certificate for {}",
                workload.key(),
                workload.identity
            ));
        }
    }
    problems
}

/// `/config_dump`.
pub fn admin(ctx: Arc<Context>, status: StatusMap) -> Handler {
    Arc::new(move |req| {
        if req.uri.path() != "/config_dump" {
            return text(StatusCode::NOT_FOUND, "not found (try /config_dump)\n");
        }
        json(&config_dump(&ctx, &status))
    })
}

/// What this ztunnel holds, in the schema `veil config` reads.
pub fn config_dump(ctx: &Context, status: &StatusMap) -> ConfigDump {
    let state = ctx.state();
    let mut dump = ConfigDump::from_state(
        ProxyInfo {
            kind: "ztunnel".to_owned(),
            name: ctx.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        &state,
    )
    .with_certificates_and_pool(&ctx.certs, &ctx.pool);
    dump.captured = status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(uid, s)| {
            let value = serde_json::to_value(s).unwrap_or_else(|e| e.to_string().into());
            (uid.clone(), value)
        })
        .collect();
    let now = tokio::time::Instant::now();
    dump.connections.inbound = ctx
        .live
        .snapshot()
        .into_iter()
        .map(|(conn, closing)| {
            let workload = state.workload(&conn.workload_uid);
            InboundConnection {
                source_identity: conn.source.as_ref().map(ToString::to_string),
                source_ip: conn.source_ip,
                destination: conn.destination,
                workload: workload.map_or_else(|| conn.workload_uid.to_string(), |w| w.key()),
                closing: closing.map(|c| {
                    let reason = match (&c.denial, workload) {
                        (Denial::Denied(admission), Some(w)) => admission.reason(w),
                        (Denial::Denied(_), None) | (Denial::Gone, _) => {
                            "the workload is no longer in the mesh".to_owned()
                        }
                    };
                    let left = c.at.saturating_duration_since(now);
                    format!("in {} s: {reason}", left.as_secs())
                }),
            }
        })
        .collect();
    dump.connections.inbound.sort_by(|a, b| {
        (&a.workload, a.destination, a.source_ip).cmp(&(&b.workload, b.destination, b.source_ip))
    });
    dump
}
