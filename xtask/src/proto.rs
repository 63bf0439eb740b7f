//! `cargo xtask gen-proto`: generates the Rust code of the CA API and of workload discovery (xDS). The output is checked in so that
//! building veil needs no proto compiler; `--check` lets CI notice a stale copy. The .proto files are
//! compiled by `protox` (pure Rust, Google's well-known types built in), so neither `protoc` nor the
//! well-known `.proto` files of a system package are needed on any machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// One generation: the .proto files compiled together, and where each generated package goes.
struct Generation {
    protos: &'static [&'static str],
    /// `(package file written by prost, checked-in path)`.
    outputs: &'static [(&'static str, &'static str)],
}

const GENERATIONS: &[Generation] = &[
    // The CA API (Istio's IstioCertificateService).
    Generation {
        protos: &["ca.proto"],
        outputs: &[(
            "istio.v1.auth.rs",
            "mesh/src/identity/proto/istio.v1.auth.rs",
        )],
    },
    // Workload discovery: Istio's workload and authorization resources over Envoy's delta ADS.
    Generation {
        protos: &[
            "envoy/discovery.proto",
            "istio/workload.proto",
            "istio/authorization.proto",
            "veil/discovery.proto",
        ],
        outputs: &[
            (
                "envoy.service.discovery.v3.rs",
                "mesh/src/xds/proto/envoy.service.discovery.v3.rs",
            ),
            ("istio.workload.rs", "mesh/src/xds/proto/istio.workload.rs"),
            ("istio.security.rs", "mesh/src/xds/proto/istio.security.rs"),
            ("veil.discovery.rs", "mesh/src/xds/proto/veil.discovery.rs"),
        ],
    },
];

pub(crate) fn generate(check: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let proto_dir = root.join("mesh/proto");
    let mut stale = Vec::new();
    for generation in GENERATIONS {
        let out = tempdir(&root)?;
        let files: Vec<PathBuf> = generation
            .protos
            .iter()
            .map(|p| proto_dir.join(p))
            .collect();
        let descriptors = protox::compile(&files, [&proto_dir])
            .with_context(|| format!("compiling {}", generation.protos.join(", ")))?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            // Generated code is not held to the workspace's lints (protoc-based generation adds
            // this itself; the descriptor path does not).
            .type_attribute(".", "#[allow(clippy::all)]")
            // Maps in the resources the controller encodes are ordered: a resource's version is a
            // hash of its bytes, and a hash map would encode the same workload differently from
            // one translation (or replica) to the next.
            .btree_map(".istio.workload")
            .out_dir(&out)
            .compile_fds(descriptors)
            .context("generating Rust code from the compiled protos")?;
        for (generated, checked_in) in generation.outputs {
            let fresh = std::fs::read_to_string(out.join(generated))
                .with_context(|| format!("prost wrote no {generated}"))?;
            let target = root.join(checked_in);
            if check {
                let current = std::fs::read_to_string(&target).unwrap_or_default();
                if current != fresh {
                    stale.push(*checked_in);
                } else {
                    println!("{checked_in} is up to date");
                }
            } else {
                if let Some(dir) = target.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&target, fresh)?;
                println!("wrote {checked_in}");
            }
        }
        std::fs::remove_dir_all(&out)?;
    }
    if !stale.is_empty() {
        bail!("stale: {}; run `cargo xtask gen-proto`", stale.join(", "));
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
