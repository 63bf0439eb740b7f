//! Draining on shutdown: every tunnel holds a [`DrainWatch`]; [`Drain::drain`] tells them all to
//! finish (HTTP connections complete their in-flight requests and close) and waits until every
//! watch is gone.

use tokio::sync::{mpsc, watch};

/// The drain signal and the count of live watches.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    live: mpsc::Sender<()>,
    gone: mpsc::Receiver<()>,
}

/// Held by each tunnel while it lives.
#[derive(Clone, Debug)]
pub struct DrainWatch {
    signal: watch::Receiver<bool>,
    _live: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (signal, _) = watch::channel(false);
        let (live, gone) = mpsc::channel(1);
        Self { signal, live, gone }
    }
}

impl Drain {
    /// A watch for one more tunnel.
    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            signal: self.signal.subscribe(),
            _live: self.live.clone(),
        }
    }

    /// Signals every watch and waits until all are dropped.
    pub async fn drain(mut self) {
        self.signal.send_replace(true);
        drop(self.live);
        // `None` once every sender (watch) is gone.
        while self.gone.recv().await.is_some() {}
    }
}

impl DrainWatch {
    /// Completes when draining starts.
    pub async fn signaled(&mut self) {
        // An error means the `Drain` is gone, which also means stop.
        let _ = self.signal.wait_for(|draining| *draining).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drain_signals_every_watch_and_waits_for_them() {
        let drain = Drain::default();
        let mut a = drain.watch();
        let b = drain.watch();
        let finished = tokio::spawn(async move {
            a.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let waiting = tokio::spawn(drain.drain());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "b still lives");
        drop(b);
        finished.await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
