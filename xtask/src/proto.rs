//! `cargo xtask gen-proto`: generates the Rust code of the CA API. The output is checked in so that
//! building veil needs no proto compiler; `--check` lets CI notice a stale copy. The .proto files are
//! compiled by `protox` (pure Rust, Google's well-known types built in), so neither `protoc` nor the
//! well-known `.proto` files of a system package are needed on any machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the generated module lives inside `veil-mesh`.
const GENERATED: &str = "mesh/src/identity/proto/istio.v1.auth.rs";

pub(crate) fn generate(check: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let out = tempdir(&root)?;
    let descriptors = protox::compile(
        [root.join("mesh/proto/ca.proto")],
        [root.join("mesh/proto")],
    )
    .context("compiling mesh/proto/ca.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Generated code is not held to the workspace's lints (protoc-based generation adds this
        // itself; the descriptor path does not).
        .type_attribute(".", "#[allow(clippy::all)]")
        .out_dir(&out)
        .compile_fds(descriptors)
        .context("generating Rust code from the compiled protos")?;
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
