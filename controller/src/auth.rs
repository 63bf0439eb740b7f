//! Who may subscribe. A subscriber proves an identity either with a mesh certificate (veil's
//! proxies, mutual TLS) or with a bearer token (Istio's ztunnel, which presents no client
//! certificate to its control plane and sends its service-account token instead, as it does to
//! istiod). Identities on the allow list are served the whole mesh; the identity of one of the
//! mesh's waypoints, when waypoints are served, its own namespace only; everything else is refused
//! before any resource is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::digest::{SHA256, digest};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;
use tonic::{Request, Status};
use veil_ca::authn::{Authenticator, AuthnError, Caller, bearer};
use veil_mesh::identity::{BoxFuture, Identity};
use veil_mesh::xds::Audience;

/// The identity a client proved in the TLS handshake (set by the server on each request).
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub Identity);

/// Set on a connection once one of its requests was authenticated and allowed; a connection that
/// is not within [`crate::server::ServerLimits::auth_timeout`] of its handshake is closed, so that
/// clients without a credential cannot hold connection slots.
#[derive(Clone, Debug, Default)]
pub struct ConnectionAuth(pub Arc<std::sync::atomic::AtomicBool>);

/// An authenticated, allowed subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    /// Who.
    pub identity: Identity,
    /// The node it runs on, when its credential says so.
    pub node: Option<String>,
    /// What it is served.
    pub audience: Audience,
}

/// Authenticates and authorizes subscribers.
#[derive(Debug, Clone)]
pub struct SubscriberAuth {
    tokens: Option<Arc<dyn Authenticator>>,
    allowed: Arc<[Identity]>,
    /// The root namespace, when waypoints are served (their namespace and this one).
    waypoints: Option<Arc<str>>,
}

impl SubscriberAuth {
    /// Accepts mesh certificates and, when `tokens` is set, bearer tokens; serves only `allowed`.
    pub fn new(tokens: Option<Arc<dyn Authenticator>>, allowed: Vec<Identity>) -> Self {
        Self {
            tokens,
            allowed: allowed.into(),
            waypoints: None,
        }
    }

    /// Also serves the mesh's waypoints, each the resources of its own namespace and the
    /// policies of `root_namespace`.
    pub fn with_waypoints(mut self, root_namespace: &str) -> Self {
        self.waypoints = Some(root_namespace.into());
        self
    }

    /// The subscriber behind `request`, or the status refusing it: `Unauthenticated` without a
    /// valid credential, `PermissionDenied` for an identity neither on the list nor (when
    /// waypoints are served) one `is_waypoint` knows, `Unavailable` when the token could not be
    /// checked (never let through).
    pub async fn check<T>(
        &self,
        request: &Request<T>,
        is_waypoint: impl Fn(&Identity) -> bool,
    ) -> Result<Subscriber, Status> {
        let mut subscriber = match request.extensions().get::<PeerIdentity>() {
            Some(PeerIdentity(identity)) => Subscriber {
                identity: identity.clone(),
                node: None,
                audience: Audience::Mesh,
            },
            None => {
                let Some(tokens) = &self.tokens else {
                    return Err(Status::unauthenticated(
                        "a mesh client certificate is required",
                    ));
                };
                let header = request
                    .metadata()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap_or_default());
                let token = bearer(header).map_err(refusal)?;
                let caller = tokens.authenticate(token).await.map_err(refusal)?;
                Subscriber {
                    identity: caller.identity,
                    node: caller.node,
                    audience: Audience::Mesh,
                }
            }
        };
        if self.allowed.contains(&subscriber.identity) {
            return Ok(subscriber);
        }
        match &self.waypoints {
            Some(root) if is_waypoint(&subscriber.identity) => {
                subscriber.audience = Audience::Waypoint {
                    namespace: subscriber.identity.namespace().into(),
                    root: root.clone(),
                };
                Ok(subscriber)
            }
            _ => Err(Status::permission_denied(format!(
                "{} may not subscribe to the mesh (neither an allowed subscriber nor a waypoint of the mesh)",
                subscriber.identity
            ))),
        }
    }
}

fn refusal(e: AuthnError) -> Status {
    match e {
        AuthnError::Unavailable(_) => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// TokenReviews in flight at once; further subscribers wait for a slot.
const REVIEWS_IN_FLIGHT: usize = 8;
/// How long a subscriber waits for a review slot before it is told to retry.
const REVIEW_WAIT: Duration = Duration::from_secs(5);
/// How long a verdict is reused: an accepted token, a refused one.
const ACCEPTED_FOR: Duration = Duration::from_secs(60);
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Verdicts remembered at most.
const CACHED_VERDICTS: usize = 16_384;

type Verdict = Result<Caller, AuthnError>;

/// Puts an authenticator that costs an API call per token (TokenReview) behind a bound on calls in
/// flight and a short memory of verdicts (by SHA-256 of the token), so that reconnecting ztunnels
/// and a client repeating a bad token cost the API server little. The backend being unavailable is
/// never remembered.
#[derive(Debug)]
pub struct ReviewBudget {
    inner: Arc<dyn Authenticator>,
    slots: Semaphore,
    verdicts: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
    /// Reviews under way, shared by every subscriber presenting the same token meanwhile.
    in_flight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Verdict>>>>,
}

impl ReviewBudget {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Authenticator>) -> Self {
        Self {
            inner,
            slots: Semaphore::new(REVIEWS_IN_FLIGHT),
            verdicts: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, key: &[u8; 32]) -> Option<Verdict> {
        let verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        verdicts
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(verdict, _)| verdict.clone())
    }

    fn remember(&self, key: [u8; 32], verdict: &Verdict) {
        let keep = match verdict {
            Ok(_) => ACCEPTED_FOR,
            Err(AuthnError::Unavailable(_)) => return,
            Err(_) => REFUSED_FOR,
        };
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if verdicts.len() >= CACHED_VERDICTS {
            let now = Instant::now();
            verdicts.retain(|_, (_, until)| now < *until);
            if verdicts.len() >= CACHED_VERDICTS {
                verdicts.clear();
            }
        }
        verdicts.insert(key, (verdict.clone(), Instant::now() + keep));
    }

    async fn review(&self, token: &str) -> Verdict {
        let mut key = [0u8; 32];
        key.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        if let Some(verdict) = self.remembered(&key) {
            return verdict;
        }
        let cell = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let verdict = cell
            .get_or_init(|| async {
                let Ok(Ok(_slot)) = tokio::time::timeout(REVIEW_WAIT, self.slots.acquire()).await
                else {
                    return Err(AuthnError::Unavailable(
                        "too many token reviews in flight; retry".into(),
                    ));
                };
                let verdict = self.inner.authenticate(token).await;
                self.remember(key, &verdict);
                verdict
            })
            .await
            .clone();
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        verdict
    }
}

impl Authenticator for ReviewBudget {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Verdict> {
        Box::pin(self.review(token))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    impl Authenticator for Counting {
        fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Verdict> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let verdict = match token {
                "good" => Ok(Caller {
                    identity: Identity::new("cluster.local", "veil-system", "ztunnel").unwrap(),
                    node: Some("node-a".into()),
                }),
                "flaky" => Err(AuthnError::Unavailable("API server down".into())),
                _ => Err(AuthnError::Invalid("unknown".into())),
            };
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                verdict
            })
        }
    }

    #[tokio::test]
    async fn verdicts_are_reused_and_reviews_in_flight_are_bounded() {
        let inner = Arc::new(Counting::default());
        let budget = Arc::new(ReviewBudget::new(inner.clone()));
        // A thousand subscribers reconnecting with one token: one review.
        let all = (0..1000).map(|_| {
            let budget = budget.clone();
            tokio::spawn(async move { budget.authenticate("good").await })
        });
        for joined in futures_util::future::join_all(all).await {
            assert!(joined.unwrap().is_ok());
        }
        // A bad token repeated: remembered too; an unavailable backend is asked every time.
        for _ in 0..100 {
            assert!(matches!(
                budget.authenticate("bad").await,
                Err(AuthnError::Invalid(_))
            ));
        }
        for _ in 0..3 {
            assert!(matches!(
                budget.authenticate("flaky").await,
                Err(AuthnError::Unavailable(_))
            ));
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1 + 1 + 3);
        // Distinct tokens at once never have more than the bound in flight; each waits its turn.
        let started = Instant::now();
        let distinct = (0..32).map(|i| {
            let budget = budget.clone();
            tokio::spawn(async move { budget.authenticate(&format!("t{i}")).await })
        });
        futures_util::future::join_all(distinct).await;
        assert!(
            started.elapsed() >= Duration::from_millis(20 * (32 / REVIEWS_IN_FLIGHT as u64)),
            "more than {REVIEWS_IN_FLIGHT} reviews ran at once"
        );
    }
}
