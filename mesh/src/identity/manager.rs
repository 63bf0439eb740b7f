//! The certificate manager: one certificate per workload identity a proxy serves, fetched from the
//! CA, renewed at half-life, and kept in service until it expires when the CA is away.
//!
//! Each tracked identity has one task that owns its lifecycle and publishes the current certificate
//! on a watch channel; handles read it without locks on the handshake path. A handle never returns an
//! expired certificate, even if the task is late: a proxy then fails its handshakes (closed) rather
//! than presenting a certificate peers would reject anyway.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::SectionKind;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{error, info, warn};

use super::bundle::TrustBundle;
use super::ca_client::{CaClient, CaClientError};
use super::cert::{CertError, WorkloadCert, rfc3339};
use super::csr;
use super::id::Identity;
use super::pem::single_section;

/// How certificates are requested and retried.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The lifetime asked of the CA (which may shorten it).
    pub ttl: Duration,
    /// The first retry delay after a failed request.
    pub initial_backoff: Duration,
    /// The cap of the exponential retry delay.
    pub max_backoff: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Why one certificate request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The key or CSR could not be generated.
    #[error("generating key and CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The CA did not sign.
    #[error(transparent)]
    Ca(#[from] CaClientError),
    /// The CA's answer is not a chain of single PEM certificates.
    #[error("malformed certificate chain from the CA: {0}")]
    BadChain(String),
    /// The chain does not verify, is for another identity, or does not match the key.
    #[error("certificate from the CA rejected: {0}")]
    Rejected(#[from] CertError),
}

type Slot = Option<Arc<WorkloadCert>>;

struct Entry {
    refs: usize,
    rx: watch::Receiver<Slot>,
    task: AbortHandle,
}

struct Inner {
    ca: Arc<dyn CaClient>,
    bundle: Arc<TrustBundle>,
    config: ManagerConfig,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for entry in entries.values() {
            entry.task.abort();
        }
    }
}

/// Keeps a certificate for every identity some part of the proxy holds a [`CertHandle`] for.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManager")
            .field("tracked", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager that requests certificates from `ca` and accepts only chains to `bundle`'s roots.
    pub fn new(ca: Arc<dyn CaClient>, bundle: Arc<TrustBundle>, config: ManagerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                ca,
                bundle,
                config,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The trust bundle certificates are verified against.
    pub fn bundle(&self) -> &Arc<TrustBundle> {
        &self.inner.bundle
    }

    /// Starts keeping a certificate for `identity` (if not already) and returns a handle to it. The
    /// certificate is kept while any handle for the identity lives. Must run inside a tokio runtime.
    pub fn track(&self, identity: Identity) -> CertHandle {
        let mut entries = self.lock();
        let entry = entries.entry(identity.clone()).or_insert_with(|| {
            let (tx, rx) = watch::channel(None);
            let task = tokio::spawn(renew(
                identity.clone(),
                self.inner.ca.clone(),
                self.inner.bundle.clone(),
                self.inner.config.clone(),
                tx,
            ));
            Entry {
                refs: 0,
                rx,
                task: task.abort_handle(),
            }
        });
        entry.refs += 1;
        CertHandle {
            identity,
            rx: entry.rx.clone(),
            manager: Arc::downgrade(&self.inner),
        }
    }

    /// Every tracked identity with the expiry of its current certificate (`None` while it has none).
    pub fn expiries(&self) -> Vec<(Identity, Option<SystemTime>)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, entry)| {
                (
                    id.clone(),
                    entry.rx.borrow().as_ref().map(|c| c.not_after()),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        lock(&self.inner)
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
    // The map stays consistent even if a holder panicked: every update is a single insert/remove.
    inner.entries.lock().unwrap_or_else(|e| e.into_inner())
}

/// A claim on one identity's certificate. Cloning keeps the claim; dropping the last handle of an
/// identity stops its renewal.
pub struct CertHandle {
    identity: Identity,
    rx: watch::Receiver<Slot>,
    manager: Weak<Inner>,
}

impl CertHandle {
    /// The identity this handle is for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The current certificate, if there is one and it is inside its validity period.
    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        let now = SystemTime::now();
        self.rx
            .borrow()
            .as_ref()
            .filter(|cert| cert.is_valid_at(now))
            .cloned()
    }

    /// Waits until a valid certificate is available. Callers bound the wait with a timeout.
    pub async fn ready(&self) -> Option<Arc<WorkloadCert>> {
        let mut rx = self.rx.clone();
        loop {
            if let Some(cert) = self.current() {
                return Some(cert);
            }
            // Err: the manager is gone, no certificate will come.
            rx.changed().await.ok()?;
        }
    }
}

impl Clone for CertHandle {
    fn clone(&self) -> Self {
        if let Some(inner) = self.manager.upgrade()
            && let Some(entry) = lock(&inner).get_mut(&self.identity)
        {
            entry.refs += 1;
        }
        Self {
            identity: self.identity.clone(),
            rx: self.rx.clone(),
            manager: self.manager.clone(),
        }
    }
}

impl Drop for CertHandle {
    fn drop(&mut self) {
        let Some(inner) = self.manager.upgrade() else {
            return;
        };
        let mut entries = lock(&inner);
        if let Some(entry) = entries.get_mut(&self.identity) {
            entry.refs -= 1;
            if entry.refs == 0 {
                entry.task.abort();
                entries.remove(&self.identity);
                info!(identity = %self.identity, "stopped keeping a certificate");
            }
        }
    }
}

impl fmt::Debug for CertHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertHandle")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A handle serves its current certificate to TLS clients; with none, the handshake fails.
impl ResolvesServerCert for CertHandle {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|cert| cert.certified_key().clone())
    }
}

/// The lifecycle of one identity's certificate.
async fn renew(
    identity: Identity,
    ca: Arc<dyn CaClient>,
    bundle: Arc<TrustBundle>,
    config: ManagerConfig,
    tx: watch::Sender<Slot>,
) {
    let mut backoff = config.initial_backoff;
    loop {
        match fetch(&identity, ca.as_ref(), &bundle, config.ttl).await {
            Ok(cert) => {
                let delay = renewal_delay(SystemTime::now(), cert.not_after(), fastrand::f64());
                info!(
                    identity = %identity,
                    serial = %cert.info().serial,
                    not_after = %rfc3339(cert.not_after()),
                    renew_in_secs = delay.as_secs_f64(),
                    "certificate issued"
                );
                tx.send_replace(Some(Arc::new(cert)));
                backoff = config.initial_backoff;
                tokio::time::sleep(delay).await;
            }
            Err(err) => {
                let now = SystemTime::now();
                let until_expiry = tx
                    .borrow()
                    .as_ref()
                    .map(|cert| cert.not_after().duration_since(now).unwrap_or_default());
                let retry_in = jittered(backoff, fastrand::f64());
                match until_expiry {
                    Some(left) if left.is_zero() => {
                        error!(identity = %identity, error = %err, "certificate expired and could not be renewed; handshakes for this identity now fail");
                        tx.send_replace(None);
                    }
                    Some(left) => {
                        warn!(identity = %identity, error = %err, retry_in_secs = retry_in.as_secs_f64(), expires_in_secs = left.as_secs(), "certificate renewal failed; still serving the current certificate")
                    }
                    None => {
                        warn!(identity = %identity, error = %err, retry_in_secs = retry_in.as_secs_f64(), "certificate request failed")
                    }
                }
                // Wake at expiry at the latest, so an expired certificate is withdrawn on time.
                let wait = until_expiry
                    .filter(|left| !left.is_zero())
                    .map_or(retry_in, |left| retry_in.min(left));
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

/// One request: a fresh key and CSR, the CA's answer, and its verification.
pub async fn fetch(
    identity: &Identity,
    ca: &dyn CaClient,
    bundle: &TrustBundle,
    ttl: Duration,
) -> Result<WorkloadCert, FetchError> {
    let request = csr::generate(identity)?;
    let pems = ca.sign(identity, &request.csr_pem, ttl).await?;
    let mut chain = parse_chain(&pems)?;
    // The CA sends the root last; peers already hold it, so it is not presented.
    if chain.len() > 1 && chain.last().is_some_and(|root| bundle.contains(root)) {
        chain.pop();
    }
    Ok(WorkloadCert::new(
        chain,
        request.key,
        bundle,
        identity,
        SystemTime::now(),
    )?)
}

/// Each entry of the CA's answer must be exactly one PEM certificate.
fn parse_chain(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, FetchError> {
    if pems.is_empty() {
        return Err(FetchError::BadChain("no certificate".into()));
    }
    pems.iter()
        .enumerate()
        .map(|(i, pem)| {
            single_section(pem.as_bytes(), SectionKind::Certificate)
                .map(CertificateDer::from)
                .map_err(|e| FetchError::BadChain(format!("entry {i}: {e}")))
        })
        .collect()
}

/// When to renew a certificate obtained at `now`: at half of its remaining life, spread ±10% by
/// `unit` (uniform in [0, 1)) so that the certificates of a whole node do not renew in one burst.
fn renewal_delay(now: SystemTime, not_after: SystemTime, unit: f64) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    left.mul_f64(0.45 + 0.1 * unit)
}

/// A retry delay spread ±20% by `unit` (uniform in [0, 1)).
fn jittered(delay: Duration, unit: f64) -> Duration {
    delay.mul_f64(0.8 + 0.4 * unit)
}

#[cfg(test)]
mod tests;
