//! `cargo xtask gen-crds`: writes the CRDs the API types generate into the veil chart.

use crate::proto::workspace_root;

pub(crate) fn generate() -> anyhow::Result<()> {
    let dir = workspace_root().join(veil_crd::CRD_DIR);
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in veil_crd::crd_yaml() {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
