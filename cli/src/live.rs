//! The live mesh for `veil explain --live`: every resource the controller serves, read from its
//! admin endpoint (`/debug/resources`) and decoded by the code ztunnels and waypoints decode them
//! with (`veil_mesh::xds::dump`), into the mesh as each kind of proxy holds it.

use anyhow::{Context as _, bail};
use veil_mesh::discovery::MeshSettings;
use veil_mesh::xds::dump::{self, Decoded};

/// Reads and decodes the controller's resources from `admin` (`http://host:port`).
pub async fn fetch(admin: &str) -> anyhow::Result<Decoded> {
    let (headers, body) = crate::config::get(
        admin,
        "/debug/resources",
        dump::MAX_DOCUMENT,
        "the controller's admin port: `kubectl port-forward -n veil-system deployment/veil-controller 15000` first?",
    )
    .await?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != dump::CONTENT_TYPE {
        bail!(
            "{admin} answered {content_type:?}, not veil's resources ({}): is it veil's controller?",
            dump::CONTENT_TYPE
        );
    }
    let header = |name: &str| -> anyhow::Result<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .with_context(|| format!("{admin} did not say the mesh's {name}"))
    };
    let settings = MeshSettings {
        trust_domain: header(dump::TRUST_DOMAIN_HEADER)?,
        root_namespace: header(dump::ROOT_NAMESPACE_HEADER)?,
    };
    dump::decode(&body, &settings)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("the resources from {admin}"))
}
