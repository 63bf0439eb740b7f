//! The OTLP receiver of the tracing and telemetry tests (`otlp-receiver`, in the control plane's
//! namespace), the flags that point the proxies at it, and the demo mesh they trace.

use std::path::PathBuf;

use crate::mesh::{ACCOUNT_READS, Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, bin};
use crate::process::Proc;

/// Where the receiver listens: the control plane's address on the fabric.
pub const RECEIVER: &str = "10.10.0.2:4317";
/// The demo's service addresses.
pub const PROFILE_VIP: &str = "10.96.0.20";
/// The ledger's service address.
pub const LEDGER_VIP: &str = "10.96.0.30";

/// Flags of a proxy that exports every trace it starts (and, with `logs`, its audit and access
/// lines) to the receiver.
pub fn proxy_args(logs: bool) -> Vec<String> {
    let mut args = vec![
        "--otlp-endpoint".to_owned(),
        format!("http://{RECEIVER}"),
        "--trace-sampling".to_owned(),
        "1".to_owned(),
    ];
    if logs {
        args.push("--otlp-logs".to_owned());
    }
    args
}

/// The demo mesh (account-service on node-a; user-profile-service behind the user-data waypoint
/// and the ledger on node-b; the account-reads policy), every proxy started with `args`.
pub fn demo(args: &[String]) -> MeshSpec {
    MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("account-service", "production", "node-a"),
            PodSpec::new("user-profile-service", "user-data", "node-b"),
            PodSpec::new("ledger", "finance", "node-b"),
        ],
        services: ServiceSpec::demo(PROFILE_VIP, LEDGER_VIP),
        waypoints: vec![WaypointSpec::demo(args.to_vec())],
        policies: ACCOUNT_READS.into(),
        ztunnel_args: args.to_vec(),
        ..MeshSpec::default()
    }
}

/// A running receiver and the files it writes (one JSON object per line).
#[derive(Debug)]
pub struct Receiver {
    _proc: Proc,
    /// The spans received.
    pub spans: PathBuf,
    /// The log records received.
    pub logs: PathBuf,
}

/// Starts the receiver for mesh `m`.
pub fn start(m: &Mesh) -> anyhow::Result<Receiver> {
    let spans = m.dir.join("spans.jsonl");
    let logs = m.dir.join("logs.jsonl");
    let receiver = bin("otlp-receiver").to_string_lossy().into_owned();
    let (spans_arg, logs_arg) = (
        spans.to_string_lossy().into_owned(),
        logs.to_string_lossy().into_owned(),
    );
    let proc = Proc::spawn(
        "otlp-receiver",
        Some(&m.cluster.control_plane),
        &[
            &receiver,
            "--listen",
            RECEIVER,
            "--out",
            &spans_arg,
            "--logs-out",
            &logs_arg,
        ],
        &[],
        &m.dir.join("otlp-receiver.log"),
    )?;
    Ok(Receiver {
        _proc: proc,
        spans,
        logs,
    })
}
