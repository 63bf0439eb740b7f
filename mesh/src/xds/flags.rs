//! The command-line flags of a subscriber of the control plane (veil's ztunnel and waypoint), and
//! the client configuration they make.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::XdsConfig;
use crate::identity::{
    Identity, TokenSource, TrustBundle, ca_client_config, control_client_config,
};

/// Where the control plane is and how to trust it and authenticate to it.
#[derive(clap::Args, Debug, Clone)]
pub struct XdsFlags {
    /// The control plane (`host:port` of veil-controller; for a ztunnel, also istiod): the mesh is
    /// received from it over delta xDS instead of read from `--mesh-config` (a waypoint is sent
    /// its own namespace only). While it is unreachable the last mesh received
    /// stays in force (and a ztunnel refuses unknown destinations).
    #[arg(
        id = "xds_address",
        value_name = "HOST:PORT",
        long = "xds-address",
        env = "VEIL_XDS_ADDRESS",
        conflicts_with = "mesh_config"
    )]
    pub address: Option<String>,
    /// The name the control plane's serving certificate must be valid for.
    #[arg(
        id = "xds_server_name",
        value_name = "NAME",
        long = "xds-server-name",
        env = "VEIL_XDS_SERVER_NAME",
        default_value = "veil-controller.veil-system.svc"
    )]
    pub server_name: String,
    /// The control plane's mesh identity (e.g. `spiffe://cluster.local/ns/veil-system/sa/veil-controller`):
    /// its serving certificate must prove this SPIFFE identity, under the mesh roots; its DNS names
    /// are not looked at. Without it, the certificate must be valid for `--xds-server-name` under
    /// `--xds-root-cert`.
    #[arg(
        id = "xds_identity",
        value_name = "SPIFFE_ID",
        long = "xds-identity",
        env = "VEIL_XDS_IDENTITY",
        conflicts_with = "xds_root_cert"
    )]
    pub identity: Option<Identity>,
    /// PEM file of the root(s) the control plane's serving certificate chains to; defaults to
    /// `--root-cert` (istiod serves with a mesh certificate).
    #[arg(
        id = "xds_root_cert",
        value_name = "PEM_FILE",
        long = "xds-root-cert",
        env = "VEIL_XDS_ROOT_CERT"
    )]
    pub root_cert: Option<PathBuf>,
    /// File holding the bearer token sent to the control plane (re-read on every reconnection);
    /// defaults to `--ca-token-file`.
    #[arg(
        id = "xds_token_file",
        value_name = "FILE",
        long = "xds-token-file",
        env = "VEIL_XDS_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,
}

/// Who subscribes, besides where the control plane is.
#[derive(Debug, Clone)]
pub struct Subscriber<'a> {
    /// The mesh's trust domain.
    pub trust_domain: &'a str,
    /// The mesh roots (`--root-cert`), trusted for the control plane unless `--xds-root-cert`.
    pub mesh_roots: &'a Arc<TrustBundle>,
    /// The token for the CA, sent unless `--xds-token-file`.
    pub ca_token_file: &'a Path,
    /// The node id it declares.
    pub node: String,
    /// Subscribe to the enrolled namespaces (a ztunnel on veil's controller).
    pub ambient_namespaces: bool,
    /// Subscribe as a waypoint.
    pub waypoint: bool,
}

impl XdsFlags {
    /// How `subscriber` reaches the control plane at `address` (that of `--xds-address`).
    pub fn client(&self, address: &str, subscriber: Subscriber<'_>) -> Result<XdsConfig, String> {
        let roots = match &self.root_cert {
            Some(path) => Arc::new(
                TrustBundle::from_pem_file(subscriber.trust_domain, path)
                    .map_err(|e| e.to_string())?,
            ),
            None => subscriber.mesh_roots.clone(),
        };
        let tls = match &self.identity {
            Some(identity) => control_client_config(roots, identity.clone()),
            None => {
                ca_client_config(&roots).map_err(|e| format!("TLS to the control plane: {e}"))?
            }
        };
        let token = self
            .token_file
            .clone()
            .unwrap_or_else(|| subscriber.ca_token_file.to_owned());
        Ok(XdsConfig {
            address: address.to_owned(),
            server_name: self.server_name.clone(),
            tls,
            token: Some(TokenSource::File(token)),
            node: subscriber.node,
            connect_timeout: Duration::from_secs(10),
            ambient_namespaces: subscriber.ambient_namespaces,
            waypoint: subscriber.waypoint,
        })
    }
}
