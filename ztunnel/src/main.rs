//! The `veil-ztunnel` binary.

use clap::Parser;
use veil_mesh::serve::shutdown_signal;
use veil_mesh::telemetry::init_logging;
use veil_ztunnel::app;
use veil_ztunnel::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format, "info");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            config
                .worker_threads
                .map_or_else(default_workers, usize::from),
        )
        .enable_all()
        .build()?
        .block_on(async {
            app::run(config, shutdown_signal()).await?;
            Ok(())
        })
}

/// Half the node's cores, at most 2: ztunnel shares the node with the workloads it serves, and on
/// a 2-core node one thread measured faster than two (docs/benchmarks.md).
fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / 2).clamp(1, 2)
}
