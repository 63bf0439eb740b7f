//! Genuine workload certificates from the mesh CA, for test programs that act as workloads
//! themselves (rogue peers, the plain-TLS benchmark baseline).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use veil_mesh::identity::{GrpcCaClient, Identity, TokenSource, TrustBundle, WorkloadCert, fetch};

/// A certificate for `identity` from the CA at `ca` (verified with the roots in `root`), asked for
/// with `token`; and the trust bundle.
pub async fn genuine(
    identity: &str,
    ca: &str,
    root: &Path,
    token: &str,
) -> anyhow::Result<(Arc<TrustBundle>, WorkloadCert)> {
    let bundle = Arc::new(TrustBundle::from_pem_file("cluster.local", root)?);
    let client = GrpcCaClient::new(
        ca,
        "veil-ca.veil-system.svc",
        &bundle,
        TokenSource::Static(token.to_owned()),
        Duration::from_secs(10),
    )?;
    let id = Identity::parse(identity)?;
    let cert = fetch(&id, &client, &bundle, Duration::from_secs(3600))
        .await
        .context("getting a certificate")?;
    Ok((bundle, cert))
}
