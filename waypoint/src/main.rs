//! The `veil-waypoint` binary.

use clap::Parser;
use veil_mesh::serve::shutdown_signal;
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
