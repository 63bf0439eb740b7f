//! Who may subscribe. A subscriber proves an identity either with a mesh certificate (veil's
//! proxies, mutual TLS) or with a bearer token (Istio's ztunnel, which presents no client
//! certificate to its control plane and sends its service-account token instead, as it does to
//! istiod). Only identities on the allow list are served; everything else is refused before any
//! resource is sent.

use std::sync::Arc;

use tonic::{Request, Status};
use veil_ca::authn::{Authenticator, AuthnError, bearer};
use veil_mesh::identity::Identity;

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
}

/// Authenticates and authorizes subscribers.
#[derive(Debug, Clone)]
pub struct SubscriberAuth {
    tokens: Option<Arc<dyn Authenticator>>,
    allowed: Arc<[Identity]>,
}

impl SubscriberAuth {
    /// Accepts mesh certificates and, when `tokens` is set, bearer tokens; serves only `allowed`.
    pub fn new(tokens: Option<Arc<dyn Authenticator>>, allowed: Vec<Identity>) -> Self {
        Self {
            tokens,
            allowed: allowed.into(),
        }
    }

    /// The subscriber behind `request`, or the status refusing it: `Unauthenticated` without a
    /// valid credential, `PermissionDenied` for an identity not on the list, `Unavailable` when
    /// the token could not be checked (never let through).
    pub async fn check<T>(&self, request: &Request<T>) -> Result<Subscriber, Status> {
        let subscriber = match request.extensions().get::<PeerIdentity>() {
            Some(PeerIdentity(identity)) => Subscriber {
                identity: identity.clone(),
                node: None,
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
                }
            }
        };
        if !self.allowed.contains(&subscriber.identity) {
            return Err(Status::permission_denied(format!(
                "{} may not subscribe to the mesh",
                subscriber.identity
            )));
        }
        Ok(subscriber)
    }
}

fn refusal(e: AuthnError) -> Status {
    match e {
        AuthnError::Unavailable(_) => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}
