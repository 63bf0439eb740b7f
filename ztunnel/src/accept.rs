//! The accept loop shared by a pod's listeners: admission against the budgets, back-off on accept
//! errors, rate-limited log lines.
//!
//! When descriptors run out, `accept` fails at once and keeps failing (EMFILE, ENFILE, ENOBUFS):
//! retrying immediately spins a core and, with a log line per failure, fills the disk. So a failed
//! accept waits — 5 ms, doubling to 1 s, back to 5 ms after the next success — and its log line is
//! limited to one per second per listener and error, with the count of the lines held back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;
use veil_mesh::hbone::abort_socket;
use veil_mesh::telemetry::metrics::{AcceptErrorLabels, RefusalReason, Resource};

use crate::budget::{Permit, Refused};
use crate::context::{Context, LocalWorkload};

/// The first wait after a failed accept.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait after failed accepts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a rate-limited log line is about (a bounded set: the limiter keeps one slot per key).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LogKey {
    /// Connections refused over a budget.
    Refused(Resource, RefusalReason),
    /// Failed accepts on a listener, by error.
    Accept(Resource, &'static str),
}

/// Doubling waits between failed accepts.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(BACKOFF_MAX);
        wait
    }

    /// After a success the next failure waits the least again.
    pub fn succeeded(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// [`serve`] for connections that one call of `handle` serves whole (given the socket and its
/// peer's address): the permit is held until it returns.
pub async fn serve_each<F, Fut>(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    listener: TcpListener,
    resource: Resource,
    handle: F,
) where
    F: Fn(Arc<Context>, Arc<LocalWorkload>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admit = |tcp, peer, permit: Permit| {
        let handling = handle(ctx.clone(), local.clone(), tcp, peer);
        async move {
            handling.await;
            drop(permit);
        }
    };
    serve(ctx.clone(), local.clone(), listener, resource, admit).await;
}

/// Accepts connections on `listener` for `local` until it is dropped or ztunnel drains: each takes
/// a `resource` permit and goes to `handler` (with the peer's address, as `accept` returned it) in
/// its own task, or is reset at once when over budget. Draining drops the listener; connections
/// already accepted go on in their tasks.
pub async fn serve<F, Fut>(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    listener: TcpListener,
    resource: Resource,
    handler: F,
) where
    F: Fn(TcpStream, SocketAddr, Permit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::default();
    let drain = ctx.drain_started();
    tokio::pin!(drain);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut drain => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.succeeded();
                match ctx.budgets.acquire(&local.budget, resource) {
                    Ok(permit) => {
                        tokio::spawn(handler(tcp, peer, permit));
                    }
                    Err(refused) => refuse(&ctx, &local, &tcp, &refused),
                }
            }
            Err(e) => {
                accept_failed(&ctx, &local, resource, &e);
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// Resets `tcp`, refused over budget: counted, and logged at most once a second per reason.
pub fn refuse(ctx: &Context, local: &LocalWorkload, tcp: &TcpStream, refused: &Refused) {
    abort_socket(tcp);
    count_refusal(ctx, local, refused);
}

/// Counts and (rate-limited) logs a refusal.
pub fn count_refusal(ctx: &Context, local: &LocalWorkload, refused: &Refused) {
    ctx.budgets
        .count(&ctx.metrics, refused, local.workload.key());
    let key = LogKey::Refused(refused.resource(), refused.reason());
    if let Some(suppressed) = ctx.logs.admit(key) {
        warn!(workload = %local.workload.key(), reason = %refused, suppressed, "connection refused: over budget (similar lines held back for a second)");
    }
}

fn accept_failed(ctx: &Context, local: &LocalWorkload, resource: Resource, e: &std::io::Error) {
    let error = errno_name(e);
    ctx.metrics
        .accept_errors
        .get_or_create(&AcceptErrorLabels { resource, error })
        .inc();
    if let Some(suppressed) = ctx.logs.admit(LogKey::Accept(resource, error)) {
        warn!(workload = %local.workload.key(), listener = resource.as_str(), error = %e, suppressed, "accept failed; backing off (similar lines held back for a second)");
    }
}

/// A bounded label for an accept error: the errno's name for the expected ones, else `other`.
pub fn errno_name(e: &std::io::Error) -> &'static str {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE) => "EMFILE",
        Some(Errno::ENFILE) => "ENFILE",
        Some(Errno::ENOBUFS) => "ENOBUFS",
        Some(Errno::ENOMEM) => "ENOMEM",
        Some(Errno::ECONNABORTED) => "ECONNABORTED",
        Some(Errno::EPERM) => "EPERM",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_5ms_to_1s_and_start_over_after_a_success() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), BACKOFF_MIN);
    }

    #[test]
    fn accept_errors_have_bounded_names() {
        let emfile = std::io::Error::from_raw_os_error(Errno::EMFILE as i32);
        assert_eq!(errno_name(&emfile), "EMFILE");
        assert_eq!(errno_name(&std::io::Error::other("x")), "other");
        assert_eq!(
            errno_name(&std::io::Error::from_raw_os_error(Errno::EIO as i32)),
            "other"
        );
    }
}
