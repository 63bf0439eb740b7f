//! The `veil-waypoint` binary.

use clap::Parser;
use veil_mesh::serve::shutdown_signal;
use veil_mesh::telemetry::{LogExport, init_logging_exporting};
use veil_waypoint::app;
use veil_waypoint::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let instance = format!("{}/{}", config.namespace, config.name);
    let export = LogExport::start(&config.trace, "veil-waypoint", &instance)?;
    init_logging_exporting(config.log_format, "info", export.as_ref());
    let result = app::run(config, shutdown_signal()).await;
    if let Some(export) = export {
        let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
    }
    result?;
    Ok(())
}
