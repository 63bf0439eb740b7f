//! The `veil-waypoint` binary.

use clap::Parser;
use veil_mesh::telemetry::init_logging;
use veil_waypoint::app;
use veil_waypoint::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format, "info");
    app::run(config, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
