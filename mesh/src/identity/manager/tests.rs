use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::testing::{FakeCa, FakeCaMode, TestPki};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

fn fast_config() -> ManagerConfig {
    ManagerConfig {
        ttl: Duration::from_secs(3600),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

fn setup(max_ttl: Duration) -> (Arc<TestPki>, Arc<FakeCa>, CertManager) {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let ca = Arc::new(FakeCa::new(pki.clone(), max_ttl));
    let manager = CertManager::new(ca.clone(), pki.bundle(), fast_config());
    (pki, ca, manager)
}

async fn ready(handle: &CertHandle) -> Arc<WorkloadCert> {
    tokio::time::timeout(Duration::from_secs(10), handle.ready())
        .await
        .expect("no certificate within 10s")
        .expect("manager gone")
}

/// Polls `probe` every 20ms until it yields a value or `limit` passes.
async fn until<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fetches_a_verified_certificate_for_the_identity() {
    let (_pki, ca, manager) = setup(Duration::from_secs(3600));
    let handle = manager.track(id("web"));
    let cert = ready(&handle).await;
    assert_eq!(cert.identity(), &id("web"));
    // The root the CA sends last is not presented to peers.
    assert_eq!(cert.chain().len(), 1);
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
    let expiries = manager.expiries();
    assert_eq!(expiries, vec![(id("web"), Some(cert.not_after()))]);
}

#[tokio::test]
async fn handles_of_one_identity_share_one_certificate() {
    let (_pki, ca, manager) = setup(Duration::from_secs(3600));
    let a = manager.track(id("web"));
    let b = manager.track(id("web"));
    let c = a.clone();
    let cert = ready(&a).await;
    assert_eq!(ready(&b).await.info().serial, cert.info().serial);
    assert_eq!(ready(&c).await.info().serial, cert.info().serial);
    assert_eq!(ca.calls.load(Ordering::SeqCst), 1);
    drop(a);
    drop(b);
    assert_eq!(manager.expiries().len(), 1, "one handle is still alive");
    drop(c);
    assert!(
        manager.expiries().is_empty(),
        "last handle gone, identity forgotten"
    );
}

#[tokio::test]
async fn renews_at_half_life_before_expiry() {
    let (_pki, ca, manager) = setup(Duration::from_secs(6));
    let handle = manager.track(id("web"));
    let first = ready(&handle).await;
    // X.509 times have whole seconds, so the certificate lives 5–6s; renewal is due after 45–55% of
    // that. Watch for the new serial rather than sleeping a guessed time.
    let second = until(Duration::from_secs(10), || {
        handle
            .current()
            .filter(|cert| cert.info().serial != first.info().serial)
    })
    .await
    .expect("not renewed within 10s");
    assert!(
        SystemTime::now() < first.not_after(),
        "renewed only after expiry"
    );
    assert!(second.not_after() > first.not_after());
    assert!(ca.calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn serves_the_current_certificate_until_expiry_while_the_ca_is_down_then_recovers() {
    let (_pki, ca, manager) = setup(Duration::from_secs(6));
    let handle = manager.track(id("web"));
    let first = ready(&handle).await;
    ca.set_mode(FakeCaMode::Down);
    // Renewal fails from about half-life on (the certificate lives 5–6s, X.509 times having whole
    // seconds); once it has failed, the certificate keeps being served while valid.
    until(Duration::from_secs(10), || {
        ca.failed.load(Ordering::SeqCst).then_some(())
    })
    .await
    .expect("renewal was not attempted within 10s");
    let still = handle.current().expect("still served while valid");
    assert_eq!(still.info().serial, first.info().serial);
    assert!(
        SystemTime::now() < first.not_after(),
        "renewal was first attempted only after expiry"
    );
    // After expiry nothing is served.
    let until_expiry = first
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(until_expiry + Duration::from_millis(300)).await;
    assert!(
        handle.current().is_none(),
        "an expired certificate was served"
    );
    assert_eq!(manager.expiries(), vec![(id("web"), None)]);
    // The CA returns: a new certificate arrives within the capped backoff.
    ca.set_mode(FakeCaMode::Honest);
    let renewed = ready(&handle).await;
    assert_ne!(renewed.info().serial, first.info().serial);
}

#[tokio::test]
async fn refuses_answers_that_are_not_the_asked_identitys_certificate() {
    let pki = Arc::new(TestPki::new("cluster.local"));
    let other_root = Arc::new(TestPki::new("cluster.local"));
    let ca = FakeCa::new(pki.clone(), Duration::from_secs(3600));
    let bundle = pki.bundle();
    let ttl = Duration::from_secs(3600);
    let cases = [
        ("wrong identity", FakeCaMode::WrongIdentity(id("other"))),
        ("other key", FakeCaMode::OtherKey),
        ("other root", FakeCaMode::OtherRoot(other_root)),
        ("down", FakeCaMode::Down),
    ];
    for (name, mode) in cases {
        ca.set_mode(mode);
        let result = fetch(&id("web"), &ca, &bundle, ttl).await;
        match (name, result) {
            ("wrong identity", Err(FetchError::Rejected(CertError::WrongIdentity { .. }))) => {}
            ("other key", Err(FetchError::Rejected(CertError::Key(_)))) => {}
            ("other root", Err(FetchError::Rejected(CertError::Verify(_)))) => {}
            ("down", Err(FetchError::Ca(CaClientError::Unavailable(_)))) => {}
            (name, other) => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn parses_only_chains_of_single_pem_certificates() {
    let pki = TestPki::new("cluster.local");
    let root = pki.root_pem().to_owned();
    assert_eq!(parse_chain(std::slice::from_ref(&root)).unwrap().len(), 1);
    assert!(matches!(parse_chain(&[]), Err(FetchError::BadChain(_))));
    let two_in_one = format!("{root}{root}");
    assert!(matches!(
        parse_chain(&[two_in_one]),
        Err(FetchError::BadChain(_))
    ));
    assert!(matches!(
        parse_chain(&["garbage".into()]),
        Err(FetchError::BadChain(_))
    ));
}

#[test]
fn renewal_is_due_at_half_the_remaining_life_with_bounded_jitter() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let not_after = now + Duration::from_secs(1000);
    assert_eq!(renewal_delay(now, not_after, 0.0), Duration::from_secs(450));
    assert_eq!(renewal_delay(now, not_after, 0.5), Duration::from_secs(500));
    assert!(renewal_delay(now, not_after, 0.999_999) < Duration::from_secs(550));
    assert_eq!(renewal_delay(not_after, now, 0.5), Duration::ZERO);
    assert_eq!(
        jittered(Duration::from_secs(10), 0.0),
        Duration::from_secs(8)
    );
    assert!(jittered(Duration::from_secs(10), 0.999_999) < Duration::from_secs(12));
}
