//! `veil-bench xds-load`: many subscribers on a controller at once, and how long a change takes to
//! reach all of them. Each subscriber has its own TLS connection and delta ADS stream, subscribes
//! to both types by wildcard, accepts split responses as veil's ztunnel does, and acknowledges every
//! response; a change has arrived once the last part carrying it has. The change is made by rewriting the
//! mesh file the controller reads (one pod's address, back and forth), so the figures include the
//! controller's file polling; or, in Kubernetes mode, by the stand-in API server (`veil-bench api`)
//! moving that pod, so they include the controller's watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use veil_mesh::identity::{TrustBundle, ca_client_config, tls_channel};
use veil_mesh::xds::Kind;
use veil_mesh::xds::proto::discovery::DeltaDiscoveryRequest;
use veil_mesh::xds::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

/// The controller under test, and the change made to the mesh file it reads.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The controller, `host:port`.
    #[arg(long)]
    target: String,
    /// The name in its serving certificate.
    #[arg(long)]
    server_name: String,
    /// The root of its serving certificate (PEM).
    #[arg(long)]
    root: PathBuf,
    /// A file holding the bearer token subscribers send.
    #[arg(long)]
    token: PathBuf,
    /// The mesh file the controller reads (local mode).
    #[arg(long, required_unless_present = "change_api", requires_all = ["from", "to"])]
    mesh_file: Option<PathBuf>,
    /// Text in the mesh file swapped with `--to` and back, once per change.
    #[arg(long)]
    from: Option<String>,
    /// The replacement.
    #[arg(long)]
    to: Option<String>,
    /// Kubernetes mode: the stand-in API server (`veil-bench api`, `host:port`) the controller
    /// watches; each change is asked of it.
    #[arg(long, conflicts_with = "mesh_file")]
    change_api: Option<String>,
    /// With `--change-api`: what each change changes (`pod`, `service`, `service-new`,
    /// `service-waypoint`, `policy`, `peer`, `namespace`, `namespace-new`, `namespace-enrol`,
    /// `namespace-waypoint`: see `veil-bench api`).
    #[arg(long, default_value = "pod")]
    change_kind: String,
}

impl Target {
    /// Change number `change`: there and back.
    fn swap(&self, change: usize) -> anyhow::Result<()> {
        if let Some(api) = &self.change_api {
            return post_change(api, &self.change_kind);
        }
        let (Some(file), Some(a), Some(b)) = (&self.mesh_file, &self.from, &self.to) else {
            anyhow::bail!("--mesh-file, --from and --to, or --change-api");
        };
        let (from, to) = if change.is_multiple_of(2) {
            (a, b)
        } else {
            (b, a)
        };
        rewrite(file, from, to)
    }
}

/// Asks the stand-in API server for the next change.
fn post_change(api: &str, kind: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut tcp =
        std::net::TcpStream::connect(api).with_context(|| format!("connecting to {api}"))?;
    write!(
        tcp,
        "POST /bench/change?kind={kind} HTTP/1.1\r\nHost: {api}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "the change was refused: {answer}"
    );
    Ok(())
}

/// What the load is.
#[derive(Debug, clap::Args)]
pub(crate) struct Load {
    #[command(flatten)]
    at: Target,
    /// How many subscribers.
    #[arg(long, default_value = "1000")]
    subscribers: usize,
    /// The resource whose new version marks a change as arrived.
    #[arg(long)]
    watch: String,
    /// How many changes.
    #[arg(long, default_value = "5")]
    changes: usize,
}

/// One subscriber's report: a response arrived, of this size, completing the arrival of the
/// watched resource (the last part of the response that carried it) or not.
struct Arrival {
    at: Instant,
    bytes: usize,
    watched: bool,
}

pub(crate) async fn run(load: Load) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&load.at.token)?.trim().to_owned();
    let bundle = TrustBundle::from_pem_file("cluster.local", &load.at.root)?;
    let config = ca_client_config(&bundle)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Arrival>();
    let started = Instant::now();
    for _ in 0..load.subscribers {
        let channel = tls_channel(
            &load.at.target,
            &load.at.server_name,
            config.clone(),
            Duration::from_secs(30),
        )
        .map_err(anyhow::Error::msg)?;
        tokio::spawn(subscriber(
            channel,
            token.clone(),
            load.watch.clone(),
            tx.clone(),
        ));
    }
    drop(tx);
    // Initial sync: every subscriber has the watched resource.
    let mut synced = 0;
    let mut initial_bytes = 0;
    while synced < load.subscribers {
        let arrival = tokio::time::timeout(Duration::from_secs(900), rx.recv())
            .await
            .context("initial sync did not finish in 900 s")?
            .context("subscribers ended")?;
        initial_bytes += arrival.bytes;
        synced += usize::from(arrival.watched);
    }
    let sync = started.elapsed();
    let mut latencies = Vec::new();
    let mut change_bytes = 0;
    for change in 0..load.changes {
        let t0 = Instant::now();
        load.at.swap(change)?;
        let mut arrived = 0;
        while arrived < load.subscribers {
            let arrival = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .context("a change did not reach every subscriber in 60 s")?
                .context("subscribers ended")?;
            change_bytes += arrival.bytes;
            if arrival.watched {
                arrived += 1;
                latencies.push(arrival.at.duration_since(t0).as_nanos() as u64);
            }
        }
        // Let the acknowledgements settle before the next change.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = json!({
        "subscribers": load.subscribers,
        "initial_sync_s": sync.as_secs_f64(),
        "initial_bytes_per_subscriber": initial_bytes / load.subscribers.max(1),
        "changes": load.changes,
        "propagation": crate::percentiles(latencies),
        "bytes_per_change_per_subscriber": change_bytes / (load.subscribers * load.changes).max(1),
    });
    println!("{report}");
    Ok(())
}

fn rewrite(path: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    anyhow::ensure!(text.contains(from), "{from:?} is not in {}", path.display());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replacen(from, to, 1))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn subscriber(
    channel: tonic::transport::Channel,
    token: String,
    watch: String,
    report: mpsc::UnboundedSender<Arrival>,
) {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    // What a ztunnel subscribes to.
    for kind in [Kind::Authorization, Kind::Address, Kind::Namespace] {
        let _ = tx.send(DeltaDiscoveryRequest {
            node: Some(veil_mesh::xds::proto::discovery::Node {
                id: "bench".into(),
                metadata: Some(veil_mesh::xds::split_metadata()),
                ..Default::default()
            }),
            type_url: kind.type_url().into(),
            ..Default::default()
        });
    }
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = tonic::Request::new(requests);
    let Ok(value) = format!("Bearer {token}").parse() else {
        return;
    };
    request.metadata_mut().insert("authorization", value);
    let Ok(response) = client.delta_aggregated_resources(request).await else {
        return;
    };
    let mut stream = response.into_inner();
    let tx = Arc::new(tx);
    let mut seen = false;
    while let Ok(Some(response)) = stream.message().await {
        if std::env::var_os("XDS_DEBUG").is_some() {
            eprintln!(
                "{} {} resources, {} removed, first {:?}",
                response.type_url,
                response.resources.len(),
                response.removed_resources.len(),
                response
                    .resources
                    .iter()
                    .take(3)
                    .map(|r| r.name.clone())
                    .collect::<Vec<_>>()
            );
        }
        // The watched resource is an Address: parts of the Authorizations do not complete it.
        let addresses = response.type_url == Kind::Address.type_url();
        seen |= response.resources.iter().any(|r| r.name == watch);
        let complete = seen && addresses && !veil_mesh::xds::is_partial(&response);
        if complete {
            seen = false;
        }
        let arrival = Arrival {
            at: Instant::now(),
            bytes: response.encoded_len(),
            watched: complete,
        };
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        });
        if report.send(arrival).is_err() {
            return;
        }
    }
}

/// What one full subscriber is pointed at.
#[derive(Debug, clap::Args)]
pub(crate) struct Client {
    #[command(flatten)]
    at: Target,
    /// How many changes.
    #[arg(long, default_value = "10")]
    changes: usize,
}

/// `veil-bench xds-client`: veil's own subscriber (what a ztunnel runs: validation, the store, the
/// mesh rebuilt per change) in this process; its memory per workload received and its CPU per
/// change.
pub(crate) async fn client(c: Client) -> anyhow::Result<()> {
    let bundle = TrustBundle::from_pem_file("cluster.local", &c.at.root)?;
    let config = veil_mesh::xds::XdsConfig {
        address: c.at.target.clone(),
        server_name: c.at.server_name.clone(),
        tls: ca_client_config(&bundle)?,
        token: Some(veil_mesh::identity::TokenSource::File(c.at.token.clone())),
        node: "bench".into(),
        connect_timeout: Duration::from_secs(10),
        ambient_namespaces: true,
        waypoint: false,
    };
    let rss_before = rss_bytes()?;
    let (cpu_before, started) = (cpu_seconds()?, Instant::now());
    let sub = veil_mesh::xds::subscribe(
        config,
        veil_mesh::discovery::MeshSettings::default(),
        |_| {},
        None,
    )
    .await;
    let sync = started.elapsed();
    let sync_cpu = cpu_seconds()? - cpu_before;
    let mut state = sub.state.clone();
    let summary = state.borrow_and_update().summary();
    // Let the allocator settle (the decoded response is gone once the mesh is built).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_synced = rss_bytes()?;
    let mut cpu = Vec::new();
    let mut latency = Vec::new();
    for change in 0..c.changes {
        let t0 = Instant::now();
        c.at.swap(change)?;
        // The change is made by this process too (rewriting the mesh file): not the subscriber's.
        let c0 = cpu_seconds()?;
        tokio::time::timeout(Duration::from_secs(60), state.changed())
            .await
            .context("a change did not arrive in 60 s")??;
        state.borrow_and_update();
        let mut arrived = t0.elapsed();
        // A change may arrive in several responses (one per type: a namespace's enrolment and its
        // workloads), each published: it has arrived with the last of them.
        while let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_millis(250), state.changed()).await
        {
            state.borrow_and_update();
            arrived = t0.elapsed();
        }
        cpu.push(((cpu_seconds()? - c0) * 1e9) as u64);
        latency.push(arrived.as_nanos() as u64);
        // Let the controller's polling go quiet before the next change.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // What the last change left to free (an old mesh dropped, the heap trimmed, off the caller)
    // is freed before the heap and RSS are read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = json!({
        "workloads": summary.workloads,
        "services": summary.services,
        "authorization_policies": summary.authorization_policies,
        "initial_sync_s": sync.as_secs_f64(),
        "initial_sync_cpu_s": sync_cpu,
        "rss_before_mb": rss_before as f64 / 1e6,
        "rss_synced_mb": rss_synced as f64 / 1e6,
        "bytes_per_workload": (rss_synced.saturating_sub(rss_before)) / summary.workloads.max(1) as u64,
        "cpu_per_change_ns": crate::percentiles(cpu),
        "change_latency_ns": crate::percentiles(latency),
        "rss_after_changes_mb": rss_bytes()? as f64 / 1e6,
        "heap": heap(),
    });
    println!("{report}");
    Ok(())
}

fn proc_self(file: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/self/{file}"))?)
}

/// glibc's own count of the heap (`mallinfo2`, glibc ≥ 2.33): what is allocated and what it counts
/// free (in MB), after the changes — to tell the subscriber's data from the allocator's leftovers
/// in its RSS.
fn heap() -> serde_json::Value {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` has no preconditions; it only reads the allocator's counters.
        #[allow(
            unsafe_code,
            reason = "glibc's mallinfo2, which no safe wrapper offers"
        )]
        let info = unsafe { libc::mallinfo2() };
        json!({
            "in_use_mb": (info.uordblks + info.hblkhd) as f64 / 1e6,
            // Counted free, whether its pages are still resident or were handed back.
            "free_mb": info.fordblks as f64 / 1e6,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    serde_json::Value::Null
}

fn rss_bytes() -> anyhow::Result<u64> {
    let status = proc_self("status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// User and system CPU of this process (all threads), at microsecond resolution.
fn cpu_seconds() -> anyhow::Result<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(usage.user_time()) + secs(usage.system_time()))
}
