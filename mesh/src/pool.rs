//! The HBONE connection pool: TLS connections kept open and shared by tunnels between the same
//! source workload and destination, so most tunnels cost one HTTP/2 stream instead of a handshake.
//!
//! Keys are (source identity, source address, expected destination identity, destination address).
//! The source address is part of the key because in-pod capture dials from the source pod's own
//! address: two pods with one service account must not borrow each other's connections, or policies
//! on source addresses would see the wrong one.
//!
//! One HTTP/2 connection is served by one task, which is one core. So a new tunnel prefers an idle
//! connection, and when every connection of a key is busy a new one is opened (up to a limit) rather
//! than queueing the flow behind the others: parallel flows between one pair use parallel cores.
//! Beyond that limit tunnels share connections, up to the number of streams each server accepts at
//! once; when every connection is full another is opened, whatever the limit: a tunnel never waits
//! for another to end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use h2::Reason;
use tokio::time::Instant;
use tracing::debug;

use crate::hbone::{
    ConnectError, EarlyData, HboneClient, TunnelMeta, TunnelRecv, TunnelSend, connect_request,
};
use crate::identity::{BoxFuture, Identity};

/// Which connections a tunnel may share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the client presents.
    pub src: Identity,
    /// The address the client dials from.
    pub src_ip: IpAddr,
    /// The identity the server must prove.
    pub dst: Identity,
    /// The server's HBONE address.
    pub dst_addr: SocketAddr,
}

/// Opens new connections for the pool (TCP from the right place, TLS with the right certificate).
pub trait Dialer: Send + Sync {
    /// Establishes a connection for `key`.
    fn dial<'a>(&'a self, key: &'a PoolKey) -> BoxFuture<'a, Result<HboneClient, ConnectError>>;
}

/// Limits of the pool.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// A connection with at least this many open tunnels counts as busy.
    pub busy_streams: usize,
    /// Busy connections are added up to this many per key; beyond, tunnels share them (and more
    /// are opened only when every connection has as many streams as its server accepts).
    pub max_connections_per_key: usize,
    /// Connections without tunnels for this long are closed.
    pub idle_timeout: Duration,
}

/// Times a tunnel moves on from a QUIC connection that said GOAWAY before its stream opened.
const MAX_CLOSINGS: usize = 8;

/// Times a tunnel is retried after the server refused its stream (REFUSED_STREAM: not processed,
/// safe to retry) before the refusal is reported.
const MAX_REFUSALS: usize = 3;

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            busy_streams: 1,
            max_connections_per_key: 4,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

struct Conn {
    client: HboneClient,
    active: AtomicUsize,
    last_used: Mutex<Instant>,
}

impl Conn {
    fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct Slot {
    conns: Vec<Arc<Conn>>,
    /// Serialises dialing for one key, so a burst of tunnels does not open a burst of connections.
    dialing: Arc<tokio::sync::Mutex<()>>,
}

/// The pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: PoolSettings,
    slots: Mutex<HashMap<PoolKey, Slot>>,
    opened: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

/// A tunnel's claim on its connection; dropping it frees the slot.
pub struct StreamGuard {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard").finish_non_exhaustive()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let conn = &self.conn;
        *conn.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tunnel stream and its claim on the connection.
pub type PooledStream = (TunnelSend, TunnelRecv, StreamGuard);

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        let pool = Self {
            inner: Arc::new(Inner {
                settings,
                slots: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
            }),
        };
        pool.spawn_reaper();
        pool
    }

    /// Opens a tunnel to `target` for `key`, on a pooled connection or a new one from `dialer`.
    /// With `early`, the client's first bytes are sent right behind the `CONNECT`
    /// ([`EarlyData`]); a tunnel whose bytes went out is retried elsewhere only when its server
    /// refused the stream unprocessed.
    pub async fn open(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        meta: &TunnelMeta,
        dialer: &dyn Dialer,
        early: Option<&mut EarlyData<'_>>,
    ) -> Result<PooledStream, ConnectError> {
        self.open_with(key, &|| connect_request(target, meta), dialer, early)
            .await
    }

    /// [`Pool::open`] with the stream's request made by `request` (once per attempt), e.g. a
    /// `CONNECT-UDP` ([`crate::hbone::udp`]).
    pub async fn open_with(
        &self,
        key: &PoolKey,
        request: &(dyn Fn() -> http::Request<()> + Sync),
        dialer: &dyn Dialer,
        mut early: Option<&mut EarlyData<'_>>,
    ) -> Result<PooledStream, ConnectError> {
        let mut retried = false;
        let mut refusals = 0;
        let mut closings = 0;
        loop {
            // The claim gives the stream's place back whenever it is dropped: also when this
            // future is (a flow ended while its tunnel opens), not only on the errors below.
            let claim = self.checkout(key, dialer).await?;
            let opened = claim
                .conn
                .client
                .open(request(), early.as_deref_mut())
                .await;
            match opened {
                Ok((send, recv)) => return Ok((send, recv, claim)),
                Err(ConnectError::H2(e))
                    if refusals < MAX_REFUSALS && e.reason() == Some(Reason::REFUSED_STREAM) =>
                {
                    // Over the server's stream limit (a fresh connection learns it from the
                    // server's SETTINGS, which may arrive after the first streams were sent). The
                    // server did nothing with the stream: try again, elsewhere if this one is full.
                    debug!("stream refused; retrying");
                    refusals += 1;
                }
                Err(ConnectError::H2(e))
                    if !retried
                        && early.as_ref().is_none_or(|early| early.is_empty())
                        && (e.is_go_away() || e.is_io() || claim.conn.client.is_closed()) =>
                {
                    // Dropped by the peer between uses: forget it and dial again, once.
                    debug!(error = %e, "pooled connection is gone; redialing");
                    self.remove(key, &claim.conn);
                    retried = true;
                }
                Err(ConnectError::H3(h3::error::StreamError::RemoteTerminate { code, .. }))
                    if refusals < MAX_REFUSALS && code == h3::error::Code::H3_REQUEST_REJECTED =>
                {
                    // HTTP/3's REFUSED_STREAM: the server did nothing with it.
                    debug!("stream rejected; retrying");
                    refusals += 1;
                }
                Err(ConnectError::H3(e @ h3::error::StreamError::RemoteClosing { .. }))
                    if closings < MAX_CLOSINGS =>
                {
                    // The peer said GOAWAY before this stream opened: nothing of it (early data
                    // included) was sent. Another connection, whatever was read; each closing
                    // one is removed, so this is bounded by the connections there are.
                    debug!(error = %e, "pooled QUIC connection is closing; redialing");
                    self.remove(key, &claim.conn);
                    closings += 1;
                }
                Err(ConnectError::H3(e))
                    if !retried
                        && early.as_ref().is_none_or(|early| early.is_empty())
                        && (matches!(e, h3::error::StreamError::ConnectionError { .. })
                            || claim.conn.client.is_closed()) =>
                {
                    debug!(error = %e, "pooled QUIC connection is gone; redialing");
                    self.remove(key, &claim.conn);
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A claim on a connection for `key` (its active count incremented until the claim is
    /// dropped).
    async fn checkout(
        &self,
        key: &PoolKey,
        dialer: &dyn Dialer,
    ) -> Result<StreamGuard, ConnectError> {
        if let Some(conn) = self.pick(key, false) {
            return Ok(StreamGuard { conn });
        }
        let dialing = self.lock().entry(key.clone()).or_default().dialing.clone();
        let _turn = dialing.lock().await;
        // Someone else may have dialed while we waited.
        if let Some(conn) = self.pick(key, false) {
            return Ok(StreamGuard { conn });
        }
        let conn = match dialer.dial(key).await {
            Ok(client) => {
                let conn = Arc::new(Conn {
                    client,
                    active: AtomicUsize::new(1),
                    last_used: Mutex::new(Instant::now()),
                });
                self.inner.opened.fetch_add(1, Ordering::Relaxed);
                self.lock()
                    .entry(key.clone())
                    .or_default()
                    .conns
                    .push(conn.clone());
                conn
            }
            // At the connection limit, or the dial failed while others exist: share a busy one.
            Err(e) => self.pick(key, true).ok_or(e)?,
        };
        Ok(StreamGuard { conn })
    }

    /// The least-loaded live connection of `key` with room for another stream, if it is not busy
    /// (or `any` is set, or no more connections may be opened for parallelism). Increments its
    /// active count.
    fn pick(&self, key: &PoolKey, any: bool) -> Option<Arc<Conn>> {
        let mut slots = self.lock();
        let slot = slots.get_mut(key)?;
        slot.conns.retain(|c| !c.client.is_closed());
        let enough = slot.conns.len() >= self.inner.settings.max_connections_per_key;
        let best = slot
            .conns
            .iter()
            .filter(|c| c.active() < c.client.max_streams())
            .min_by_key(|c| c.active())?;
        if any || enough || best.active() < self.inner.settings.busy_streams {
            best.active.fetch_add(1, Ordering::AcqRel);
            return Some(best.clone());
        }
        None
    }

    fn remove(&self, key: &PoolKey, conn: &Arc<Conn>) {
        if let Some(slot) = self.lock().get_mut(key) {
            slot.conns.retain(|c| !Arc::ptr_eq(c, conn));
        }
    }

    /// Connections currently pooled.
    pub fn connections(&self) -> usize {
        self.lock().values().map(|s| s.conns.len()).sum()
    }

    /// Open connections per peer, by key.
    pub fn connections_by_peer(&self) -> Vec<(PoolKey, usize)> {
        let mut out: Vec<(PoolKey, usize)> = self
            .lock()
            .iter()
            .filter(|(_, s)| !s.conns.is_empty())
            .map(|(k, s)| (k.clone(), s.conns.len()))
            .collect();
        out.sort_by(|a, b| {
            (&a.0.src, &a.0.dst, a.0.dst_addr).cmp(&(&b.0.src, &b.0.dst, b.0.dst_addr))
        });
        out
    }

    /// Connections opened since the pool was created.
    pub fn opened_total(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Slot>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes idle and dead connections periodically, for as long as the pool exists.
    fn spawn_reaper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let period = (self.inner.settings.idle_timeout / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                let idle = inner.settings.idle_timeout;
                let now = Instant::now();
                let mut slots = inner.slots.lock().unwrap_or_else(|e| e.into_inner());
                for slot in slots.values_mut() {
                    slot.conns.retain(|c| {
                        let last = *c.last_used.lock().unwrap_or_else(|e| e.into_inner());
                        !c.client.is_closed() && (c.active() > 0 || now - last < idle)
                    });
                }
                slots.retain(|_, slot| {
                    !slot.conns.is_empty() || Arc::strong_count(&slot.dialing) > 1
                });
            }
        });
    }
}

#[cfg(test)]
mod tests;
