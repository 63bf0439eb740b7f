//! Operational endpoints: Prometheus metrics (15020), readiness (15021), and the admin config dump
//! (15000, loopback only). The dump shows certificates by serial and expiry, never key material.

use std::sync::Arc;

use http::StatusCode;
use serde::Serialize;
use veil_mesh::identity::rfc3339;
use veil_mesh::telemetry::http::{Handler, json, openmetrics, text};

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
        match statuses.get(&workload.uid) {
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

#[derive(Serialize)]
struct Dump {
    node: String,
    summary: veil_mesh::discovery::Summary,
    captured: std::collections::BTreeMap<String, CaptureStatus>,
    certificates: Vec<CertDump>,
    workloads: Vec<Arc<veil_mesh::discovery::Workload>>,
    services: Vec<Arc<veil_mesh::discovery::Service>>,
    authorization_policies: Vec<PolicyDump>,
    l7_policies_failing_closed_at_l4: Vec<String>,
    hbone_connections: usize,
}

#[derive(Serialize)]
struct CertDump {
    identity: String,
    not_after: Option<String>,
}

#[derive(Serialize)]
struct PolicyDump {
    id: String,
    action: String,
    uses_l7: bool,
}

/// `/config_dump`.
pub fn admin(ctx: Arc<Context>, status: StatusMap) -> Handler {
    Arc::new(move |req| {
        if req.uri.path() != "/config_dump" {
            return text(StatusCode::NOT_FOUND, "not found (try /config_dump)\n");
        }
        let state = ctx.state();
        json(&Dump {
            node: ctx.node.clone(),
            summary: state.summary(),
            captured: status.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            certificates: ctx
                .certs
                .expiries()
                .into_iter()
                .map(|(id, exp)| CertDump {
                    identity: id.to_string(),
                    not_after: exp.map(rfc3339),
                })
                .collect(),
            workloads: state.workloads(),
            services: state.services().cloned().collect::<Vec<_>>(),
            authorization_policies: state
                .authz_policies()
                .iter()
                .map(|p| PolicyDump {
                    id: p.id.to_string(),
                    action: format!("{:?}", p.action).to_uppercase(),
                    uses_l7: p.uses_l7,
                })
                .collect(),
            l7_policies_failing_closed_at_l4: state
                .l7_policies_enforced_at_l4()
                .iter()
                .map(ToString::to_string)
                .collect(),
            hbone_connections: ctx.pool.connections(),
        })
    })
}
