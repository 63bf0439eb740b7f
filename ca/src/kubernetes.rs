//! The CA in a cluster: callers authenticated by TokenReview, impersonation checked against the pods
//! the API server says run on the caller's node, the root kept in a Secret, and the root certificate
//! published to every namespace as a ConfigMap.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};
use veil_mesh::identity::{BoxFuture, Identity};

use crate::authn::{Authenticator, AuthnError, Caller};
use crate::authority::{Authority, AuthorityError, CaPem, Named, new_root};
use crate::authz::Placement;

/// The audience CA tokens must be issued for.
pub const AUDIENCE: &str = "veil-ca";
/// The ConfigMap, in every namespace, holding the mesh root certificate.
pub const ROOT_CONFIGMAP: &str = "veil-root-cert";
/// Its key.
pub const ROOT_CONFIGMAP_KEY: &str = "root-cert.pem";
/// The Secret holding a generated root (certificate and key).
pub const ROOT_SECRET: &str = "veil-ca-root";

/// TokenReview `status.user.extra` key with the node a bound service-account token belongs to.
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// …and the pod, from which the node can be read on clusters that do not add the node.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// Authenticates bearer tokens with the API server's TokenReview, for audience [`AUDIENCE`] (or
/// those of [`TokenReviewer::with_audiences`]).
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    trust_domain: String,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking `client`'s API server; identities are minted in `trust_domain`.
    pub fn new(client: Client, trust_domain: String) -> Self {
        Self {
            client,
            trust_domain,
            audiences: vec![AUDIENCE.to_owned()],
        }
    }

    /// Accepts tokens issued for any of `audiences` instead (at least one): a service other than
    /// the CA takes tokens minted for itself, which the CA would refuse, so that a token it is sent
    /// cannot be replayed to the CA.
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        if !audiences.is_empty() {
            self.audiences = audiences;
        }
        self
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthnError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthnError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if !status.authenticated.unwrap_or(false) {
            let reason = status
                .error
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthnError::Invalid(reason));
        }
        // An authenticator that ignored the requested audience must not pass a token minted for
        // another service.
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| self.audiences.contains(a))
        {
            return Err(AuthnError::Invalid(format!(
                "token is not for audience {}",
                self.audiences.join(" or ")
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, sa)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(AuthnError::Invalid(format!(
                "{username:?} is not a service account"
            )));
        };
        let identity = Identity::new(&self.trust_domain, namespace, sa)
            .map_err(|e| AuthnError::Invalid(e.to_string()))?;
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let node = match (first(NODE_NAME), first(POD_NAME)) {
            (Some(node), _) => Some(node),
            (None, Some(pod)) => self.node_of_pod(namespace, &pod).await?,
            (None, None) => None,
        };
        Ok(Caller { identity, node })
    }

    async fn node_of_pod(&self, namespace: &str, pod: &str) -> Result<Option<String>, AuthnError> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(pod)
            .await
            .map_err(|e| AuthnError::Unavailable(format!("reading the caller's pod: {e}")))?;
        Ok(pod.and_then(|p| p.spec?.node_name))
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthnError>> {
        Box::pin(self.review(token))
    }
}

/// Placement from the API server: does a pod with this service account run on this node?
#[derive(Clone)]
pub struct KubePlacement {
    client: Client,
}

impl std::fmt::Debug for KubePlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePlacement").finish_non_exhaustive()
    }
}

impl KubePlacement {
    /// Placement read through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Placement for KubePlacement {
    fn runs_on<'a>(
        &'a self,
        identity: &'a Identity,
        node: &'a str,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let pods = Api::<Pod>::namespaced(self.client.clone(), identity.namespace())
                .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                .await
                .map_err(|e| format!("listing pods on {node}: {e}"))?;
            Ok(pods.items.iter().any(|pod| {
                let spec = pod.spec.as_ref();
                let sa = spec
                    .and_then(|s| s.service_account_name.as_deref())
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default");
                let on_node = spec.and_then(|s| s.node_name.as_deref()) == Some(node);
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                on_node
                    && sa == identity.service_account()
                    && !matches!(phase, Some("Succeeded" | "Failed"))
            }))
        })
    }
}

/// Why the root could not be read from or stored in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The API failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// A key is missing or not text.
    #[error("secret {namespace}/{name}: key {key} is missing or not UTF-8")]
    Key {
        namespace: String,
        name: String,
        key: String,
    },
    /// The material does not make a CA.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

fn key_of(secret: &Secret, key: &str) -> Result<Named, SecretError> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| SecretError::Key {
            namespace: namespace.clone(),
            name: name.clone(),
            key: key.to_owned(),
        })?;
    Ok(Named {
        origin: format!("secret {namespace}/{name} key {key}"),
        text,
    })
}

/// A self-signed root kept in Secret [`ROOT_SECRET`] of `namespace`: read if present, otherwise
/// generated and stored (if another replica stored one first, that one is used).
pub async fn root_from_secret(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<Authority, SecretError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    if let Some(secret) = secrets.get_opt(ROOT_SECRET).await? {
        return root_of(&secret);
    }
    let (cert, key) = new_root(trust_domain)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(ROOT_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "veil".to_owned(),
            )])),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            ("root-cert.pem".to_owned(), ByteString(cert.into_bytes())),
            ("root-key.pem".to_owned(), ByteString(key.into_bytes())),
        ])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            info!(secret = %format!("{namespace}/{ROOT_SECRET}"), "generated a new self-signed root");
            root_of(&created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Another replica was first: use its root.
            let existing = secrets.get(ROOT_SECRET).await?;
            root_of(&existing)
        }
        Err(e) => Err(e.into()),
    }
}

fn root_of(secret: &Secret) -> Result<Authority, SecretError> {
    let cert = key_of(secret, "root-cert.pem")?;
    Ok(Authority::from_pem(&CaPem {
        key: key_of(secret, "root-key.pem")?,
        intermediates: None,
        root: cert.clone(),
        cert,
    })?)
}

/// A plugged-in CA from a Secret with Istio's key names: `ca-cert.pem`, `ca-key.pem`,
/// `root-cert.pem`, and optionally `cert-chain.pem` (intermediates up to the root).
pub async fn plugged_from_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Authority, SecretError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(Authority::from_pem(&CaPem {
        cert: key_of(&secret, "ca-cert.pem")?,
        key: key_of(&secret, "ca-key.pem")?,
        intermediates: key_of(&secret, "cert-chain.pem").ok(),
        root: key_of(&secret, "root-cert.pem")?,
    })?)
}

/// The root ConfigMap for `namespace`.
pub fn root_configmap(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(ROOT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "veil".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CONFIGMAP_KEY.to_owned(),
            root_pem.to_owned(),
        )])),
        ..Default::default()
    }
}

/// Publishes `root_pem` into every namespace, as namespaces appear, and again every `resync` (which
/// repairs ConfigMaps that were deleted or edited).
pub async fn publish_root(client: Client, root_pem: String, resync: Duration) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let apply = |ns: String| {
        let client = client.clone();
        let cm = root_configmap(&ns, &root_pem);
        async move {
            let params = PatchParams::apply("veil-ca").force();
            let result = Api::<ConfigMap>::namespaced(client, &ns)
                .patch(ROOT_CONFIGMAP, &params, &Patch::Apply(&cm))
                .await;
            if let Err(e) = result {
                warn!(namespace = %ns, error = %e, "could not publish the root certificate");
            }
        }
    };
    let watch = watcher(namespaces.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut watch = std::pin::pin!(watch);
    let mut tick = tokio::time::interval(resync);
    loop {
        tokio::select! {
            event = watch.next() => match event {
                Some(Ok(ns)) if ns.metadata.deletion_timestamp.is_none() => apply(ns.name_any()).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => warn!(error = %e, "namespace watch failed; retrying"),
                None => return,
            },
            _ = tick.tick() => {
                if let Ok(list) = namespaces.list(&ListParams::default()).await {
                    for ns in list.items.into_iter().filter(|n| n.metadata.deletion_timestamp.is_none()) {
                        apply(ns.name_any()).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
