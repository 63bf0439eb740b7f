//! Taking `veil-cni` off the node when veil is uninstalled — and only then.
//!
//! A ztunnel that stops for an upgrade must leave the plugin chained: pods of ambient namespaces
//! then fail to start until the new ztunnel is up, instead of starting uncaptured. A ztunnel that
//! stops because veil is being uninstalled must remove it, or every such pod would keep failing.
//! The difference is whether ztunnel's DaemonSet still exists: on `helm uninstall` it is deleted
//! first, and the service account and RBAC with it (so the question is refused). When the API
//! cannot be asked at all, the plugin stays: stuck pods are recoverable, plaintext is not.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{Api, Client};
use tracing::{error, info, warn};

use super::install;

/// What a stopping ztunnel learns about its DaemonSet.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// The DaemonSet is there: ztunnel is being restarted or upgraded.
    Staying,
    /// The DaemonSet is gone or being deleted, or ztunnel's credentials already are.
    Uninstalled,
    /// The API could not tell.
    Unknown(String),
}

/// Asks the API about DaemonSet `name` in `namespace`.
pub async fn fate(client: Client, namespace: &str, name: &str) -> Fate {
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    match api.get_opt(name).await {
        Ok(Some(ds)) if ds.metadata.deletion_timestamp.is_none() => Fate::Staying,
        Ok(_) => Fate::Uninstalled,
        Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403) => Fate::Uninstalled,
        Err(e) => Fate::Unknown(e.to_string()),
    }
}

/// Where the plugin was installed, and what identifies the DaemonSet.
#[derive(Clone, Debug)]
pub struct Cleanup {
    /// The node's CNI bin directory, as mounted.
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory, as mounted.
    pub conf_dir: PathBuf,
    /// ztunnel's namespace.
    pub namespace: String,
    /// ztunnel's DaemonSet.
    pub daemonset: String,
    /// The ambient-namespaces file, removed with the plugin.
    pub ambient_file: Option<PathBuf>,
}

impl Cleanup {
    /// Removes the plugin if veil is being uninstalled.
    pub async fn on_shutdown(&self) {
        let fate = match Client::try_default().await {
            Ok(client) => fate(client, &self.namespace, &self.daemonset).await,
            Err(e) => Fate::Unknown(e.to_string()),
        };
        match fate {
            Fate::Staying => {
                info!(daemonset = %self.daemonset, "DaemonSet remains: keeping veil-cni installed");
            }
            Fate::Unknown(reason) => {
                warn!(%reason, "cannot tell whether veil is being uninstalled: keeping veil-cni installed (run `veil-cni uninstall` on the node if it is)");
            }
            Fate::Uninstalled => match install::uninstall(&self.bin_dir, &self.conf_dir) {
                Ok(changed) => {
                    if let Some(file) = &self.ambient_file {
                        let _ = std::fs::remove_file(file);
                    }
                    info!(
                        ?changed,
                        "veil is being uninstalled: veil-cni removed from the node"
                    );
                }
                Err(e) => error!(error = %e, "could not remove veil-cni from the node"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_mesh::testing::fake_kube;

    const PATH: &str = "/apis/apps/v1/namespaces/veil-system/daemonsets/veil-ztunnel";

    fn answering(status: u16, body: impl Into<String>) -> Client {
        let body = body.into();
        fake_kube(move |method, path, _| {
            assert_eq!((method.as_str(), path), ("GET", PATH));
            Some((status, body.clone()))
        })
    }

    fn status(code: u16, reason: &str) -> String {
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{reason}","reason":"{reason}","code":{code}}}"#
        )
    }

    #[tokio::test]
    async fn stays_while_the_daemonset_exists_and_goes_when_it_is_deleted() {
        let live = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"veil-ztunnel","namespace":"veil-system"}}"#;
        let deleting = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"veil-ztunnel","namespace":"veil-system","deletionTimestamp":"2026-11-22T10:00:00Z"}}"#;
        let fate_of = |c| fate(c, "veil-system", "veil-ztunnel");
        assert_eq!(fate_of(answering(200, live)).await, Fate::Staying);
        assert_eq!(fate_of(answering(200, deleting)).await, Fate::Uninstalled);
        assert_eq!(
            fate_of(answering(404, status(404, "NotFound"))).await,
            Fate::Uninstalled
        );
        assert_eq!(
            fate_of(answering(403, status(403, "Forbidden"))).await,
            Fate::Uninstalled
        );
        assert!(matches!(
            fate_of(answering(500, status(500, "InternalError"))).await,
            Fate::Unknown(_)
        ));
    }
}
