//! The mesh a question is asked about: a local mesh file, with further policies added.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;
use veil_mesh::discovery::local::parse;
use veil_mesh::discovery::{MeshSettings, MeshState};

/// Reads the mesh file `path` and adds the policies of `extra` (each a YAML stream of policy objects
/// or of lists of them). Refuses a mesh that would not load in ztunnel: a rejected object is an
/// error here, not a silent gap in the answer.
pub fn load(path: &Path, extra: &[PathBuf], settings: &MeshSettings) -> anyhow::Result<MeshState> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = if extra.is_empty() {
        text
    } else {
        let mut mesh: Value =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if mesh.is_null() {
            mesh = Value::Object(Default::default());
        }
        let object = mesh
            .as_object_mut()
            .with_context(|| format!("{} is not a mesh file (a mapping)", path.display()))?;
        let policies = object
            .entry("policies")
            .or_insert_with(|| Value::Array(Vec::new()));
        if policies.is_null() {
            *policies = Value::Array(Vec::new());
        }
        let list = policies
            .as_array_mut()
            .context("`policies` of the mesh file is not a list")?;
        for file in extra {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            for document in documents {
                match document {
                    Value::Array(items) => list.extend(items),
                    Value::Null => {}
                    object => list.push(object),
                }
            }
        }
        serde_json::to_string(&mesh)?
    };
    let state = parse(&text, settings).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(first) = state.rejected().first() {
        anyhow::bail!(
            "the mesh has objects ztunnel would refuse ({} in all), first: {first}",
            state.rejected().len()
        );
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_added_from_files_count_as_the_meshs_own() {
        let dir = std::env::temp_dir().join(format!("veil-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(
            &mesh,
            "workloads:\n  - {name: a, namespace: shop, serviceAccount: a, node: n, ips: [10.1.0.1]}\n",
        )
        .unwrap();
        // Two documents, the second a list.
        let policies = dir.join("policies.yaml");
        std::fs::write(
            &policies,
            "apiVersion: security.veil.dev/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: one, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n---\n\
             - apiVersion: security.veil.dev/v1\n  kind: PeerAuthentication\n\
             \x20 metadata: {name: two, namespace: shop}\n  spec: {mtls: {mode: STRICT}}\n",
        )
        .unwrap();
        let settings = MeshSettings::default();
        assert!(
            load(&mesh, &[], &settings)
                .unwrap()
                .authz_policies()
                .is_empty()
        );
        let state = load(&mesh, std::slice::from_ref(&policies), &settings).unwrap();
        let ids: Vec<String> = state
            .authz_policies()
            .iter()
            .map(|p| p.id.to_string())
            .collect();
        assert!(ids.contains(&"shop/one".to_owned()), "{ids:?}");
        // A policy ztunnel would refuse makes the question unanswerable, not silently different.
        std::fs::write(
            &policies,
            "[{apiVersion: v9, kind: Nope, metadata: {name: x, namespace: shop}}]\n",
        )
        .unwrap();
        assert!(load(&mesh, &[policies], &settings).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
