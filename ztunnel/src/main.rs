//! The `veil-ztunnel` binary.

use clap::Parser;
use veil_mesh::telemetry::{LogExport, init_logging_exporting};
use veil_ztunnel::app;
use veil_ztunnel::config::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers())
        .enable_all()
        .build()?
        .block_on(async {
            // The OTLP exporter's connection runs on this runtime: logging starts inside it.
            let export = LogExport::start(&config.trace, "veil-ztunnel", &config.node)?;
            init_logging_exporting(config.log_format, "info", export.as_ref());
            let result = app::run(config, stop_requests()?).await;
            if let Some(export) = export {
                let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
            }
            result?;
            Ok(())
        })
}

/// SIGTERM and SIGINT, each one a stop request: the first drains, the next stops at once.
fn stop_requests() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let mut signals = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}
