//! `cargo xtask gen-proto`: generates the Rust code of the CA API. The output is checked in so that a
//! fresh machine builds veil without protoc; `--check` lets CI notice a stale copy.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the generated module lives inside `veil-mesh`.
const GENERATED: &str = "mesh/src/identity/proto/istio.v1.auth.rs";

pub(crate) fn generate(check: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let out = tempdir(&root)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_protos(
            &[root.join("mesh/proto/ca.proto")],
            &[root.join("mesh/proto")],
        )
        .context("running protoc (install it with `apt-get install protobuf-compiler`)")?;
    let fresh = std::fs::read_to_string(out.join("istio.v1.auth.rs"))?;
    std::fs::remove_dir_all(&out)?;
    let target = root.join(GENERATED);
    if check {
        let current = std::fs::read_to_string(&target).unwrap_or_default();
        if current != fresh {
            bail!("{GENERATED} is stale: run `cargo xtask gen-proto`");
        }
        println!("{GENERATED} is up to date");
    } else {
        std::fs::write(&target, fresh)?;
        println!("wrote {GENERATED}");
    }
    Ok(())
}

fn tempdir(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/xtask-proto");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The workspace root: xtask's manifest sits one folder below it.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}
