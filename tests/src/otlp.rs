//! The OTLP receiver of the tracing and telemetry tests (`otlp-receiver`, in the control plane's
//! namespace), the flags that point the proxies at it, and the demo mesh they trace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio::time::Instant;

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

/// One TCP connection from the account service to the ledger (no waypoint on the way), which
/// echoes a line; panics if it fails.
pub fn ledger_line(m: &Mesh) {
    let app = bin("e2e-app").to_string_lossy().into_owned();
    let out = crate::cluster::exec(
        &m.cluster.pod("account-service").netns,
        &[&app, "tcp", &format!("{LEDGER_VIP}:9090"), "ledger-line"],
    )
    .expect("tcp client");
    assert!(out.status.success(), "{out:?}");
}

/// A running receiver and the files it writes (one JSON object per line).
#[derive(Debug)]
pub struct Receiver {
    _proc: Proc,
    /// The spans received.
    pub spans: PathBuf,
    /// The log records received.
    pub logs: PathBuf,
    /// The metric data points received.
    pub metrics: PathBuf,
}

/// Starts the receiver for mesh `m`.
pub fn start(m: &Mesh) -> anyhow::Result<Receiver> {
    start_with(m, None)
}

/// Starts the receiver for mesh `m`, serving TLS with `tls`'s server certificate and requiring
/// client certificates from its CA when given.
pub fn start_with(m: &Mesh, tls: Option<&TlsFiles>) -> anyhow::Result<Receiver> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (spans, logs, metrics) = (
        m.dir.join("spans.jsonl"),
        m.dir.join("logs.jsonl"),
        m.dir.join("metrics.jsonl"),
    );
    let mut argv = vec![
        path(&bin("otlp-receiver")),
        "--listen".into(),
        RECEIVER.into(),
        "--out".into(),
        path(&spans),
        "--logs-out".into(),
        path(&logs),
        "--metrics-out".into(),
        path(&metrics),
    ];
    if let Some(tls) = tls {
        for (flag, file) in [
            ("--tls-cert", &tls.server_cert),
            ("--tls-key", &tls.server_key),
            ("--tls-client-ca", &tls.ca),
        ] {
            argv.extend([flag.to_owned(), path(file)]);
        }
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let proc = Proc::spawn(
        "otlp-receiver",
        Some(&m.cluster.control_plane),
        &argv,
        &[],
        &m.dir.join("otlp-receiver.log"),
    )?;
    Ok(Receiver {
        _proc: proc,
        spans,
        logs,
        metrics,
    })
}

/// PEM files for OTLP over TLS: a CA of the collector's own (not the mesh's), the receiver's
/// certificate for its address, and a client certificate for the proxies.
#[derive(Debug)]
pub struct TlsFiles {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The receiver's certificate (IP SAN: the receiver's address).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The proxies' client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Writes [`TlsFiles`] into `dir`.
pub fn tls_files(dir: &Path) -> anyhow::Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key)?;
    let issuer = Issuer::new(params, ca_key);
    let (receiver_ip, _) = RECEIVER.split_once(':').expect("host:port");
    let write = |name: &str, pem: String| -> anyhow::Result<PathBuf> {
        let file = dir.join(name);
        std::fs::write(&file, pem)?;
        Ok(file)
    };
    let leaf = |name: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(receiver_ip)?;
    let (client_cert, client_key) = leaf("veil-proxy")?;
    Ok(TlsFiles {
        ca: write("otlp-ca.pem", ca.pem())?,
        server_cert: write("otlp-server.pem", server_cert)?,
        server_key: write("otlp-server-key.pem", server_key)?,
        client_cert: write("otlp-client.pem", client_cert)?,
        client_key: write("otlp-client-key.pem", client_key)?,
    })
}

/// Flags of a proxy that exports traces, logs and metrics (every second) to the receiver over
/// TLS with `tls`.
pub fn tls_proxy_args(tls: &TlsFiles) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    vec![
        "--otlp-endpoint".into(),
        format!("https://{RECEIVER}"),
        "--otlp-ca-file".into(),
        path(&tls.ca),
        "--otlp-client-cert".into(),
        path(&tls.client_cert),
        "--otlp-client-key".into(),
        path(&tls.client_key),
        "--trace-sampling".into(),
        "1".into(),
        "--otlp-logs".into(),
        "--otlp-metrics".into(),
        "--otlp-metrics-interval".into(),
        "1s".into(),
    ]
}

/// What the receiver wrote to `file` so far: one JSON object per line.
pub fn received(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Waits (30 s at most, else panics naming `what`) until a line satisfying `pred` is in `file`;
/// returns the latest such line (a metric's newest value).
pub fn wait_for(file: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = received(file);
        if let Some(line) = all.iter().rev().find(|l| pred(l)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "nothing received: {what}\nreceived {} lines in {}, the last:\n{}",
            all.len(),
            file.display(),
            all.iter()
                .rev()
                .take(40)
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
