//! `cargo xtask image`: the OCI image of veil, built with no container engine and no registry.
//!
//! One image holds every binary (the charts run each component from it with its own command):
//! static binaries (`-C target-feature=+crt-static`, glibc) built for the host's target, so they run
//! on any Linux whatever its C library (Amazon Linux 2, RHEL 8, the node's CNI plugin directory),
//! checked to need no program interpreter; and, for ztunnel's capture rules, Debian's `iptables`
//! (the nft backend, `xtables-nft-multi`) with exactly the shared libraries and extension modules it
//! loads, and `nsenter` and `ip` with theirs. Nothing else: no shell, no package manager. The image
//! is assembled `FROM scratch` with buildah (vfs storage under `target/image`, so nothing outside
//! the repository is touched), smoke-tested by running each binary from the image's own filesystem
//! (`buildah run --isolation chroot`, `nsenter` and `ip` included) and by having the image's
//! `iptables-restore` parse veil's capture rules, and written as an OCI archive to
//! `target/image/veil-<tag>.oci.tar` (load it with `skopeo copy` or `podman load`).

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::proto::workspace_root;

/// Every binary the charts run (`veil` for `helm test`: `veil check`; `veil-cni-cleanup` run by a
/// stopping ztunnel).
const BINARIES: [&str; 7] = [
    "veil-ca",
    "veil-controller",
    "veil-ztunnel",
    "veil-cni",
    "veil-cni-cleanup",
    "veil-waypoint",
    "veil",
];

/// The packages that hold them.
const PACKAGES: [&str; 5] = [
    "veil-ca",
    "veil-controller",
    "veil-ztunnel",
    "veil-waypoint",
    "veil-cli",
];

/// The names ztunnel runs iptables by, all one multi-call binary.
const IPTABLES_NAMES: [&str; 6] = [
    "iptables",
    "iptables-restore",
    "iptables-save",
    "ip6tables",
    "ip6tables-restore",
    "ip6tables-save",
];

/// The other programs ztunnel runs, each with its place in the image (on its `PATH`): `nsenter`
/// (util-linux) to run iptables and `ip` inside pods' namespaces, `ip` (iproute2) for the routing
/// rule of carried UDP.
const TOOLS: [(&str, &str); 2] = [
    ("/usr/bin/nsenter", "usr/sbin/nsenter"),
    ("/usr/bin/ip", "usr/sbin/ip"),
];

/// Where Debian keeps the nft backend's multi-call binary and its extension modules.
const XTABLES_MULTI: &str = "/usr/sbin/xtables-nft-multi";
const XTABLES_MODULES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// Builds (with `build`: the folder of the tools the layout's profiled run needs), checks,
/// assembles and smoke-tests the image; returns the archive's path.
pub(crate) fn run(tag: &str, build: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target = host_target()?;
    let bin_dir = root.join("target").join(&target).join("release");
    if let Some(tools) = build {
        build_static(&root, &target, None)?;
        if crate::layout::supported(&target) {
            lay_out(&root, &target, &bin_dir, &root.join(tools))?;
        } else {
            println!("ztunnel's code is not laid out: {target} does not link with lld by default");
        }
    }
    for name in BINARIES {
        let path = bin_dir.join(name);
        ensure!(
            !needs_interpreter(&path)?,
            "{} is dynamically linked (it has a program interpreter): built without +crt-static?",
            path.display()
        );
    }
    println!("all {} binaries are static", BINARIES.len());
    let work = root.join("target/image");
    let rootfs = work.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    assemble(&rootfs, &bin_dir)?;
    let buildah = Buildah::new(&work);
    let archive = work.join(format!("veil-{tag}.oci.tar"));
    let container = buildah.output(&["from", "scratch"])?;
    let result = (|| {
        buildah.run(&["copy", &container, &rootfs.to_string_lossy(), "/"])?;
        buildah.run(&[
            "config",
            "--user",
            "65532:65532",
            "--env",
            "PATH=/usr/local/bin:/usr/sbin",
            "--label",
            &format!("org.opencontainers.image.version={tag}"),
            "--label",
            "org.opencontainers.image.title=veil",
            &container,
        ])?;
        smoke(&buildah, &container)?;
        let image = format!("localhost/veil:{tag}");
        buildah.run(&["commit", "--rm", &container, &image])?;
        if archive.exists() {
            std::fs::remove_file(&archive)?;
        }
        buildah.run(&[
            "push",
            &image,
            &format!("oci-archive:{}:veil:{tag}", archive.display()),
        ])?;
        let size = buildah.output(&["images", "--format", "{{.Size}}", &image])?;
        println!(
            "image veil:{tag}: {size} (archive {}, {:.1} MB)",
            archive.display(),
            std::fs::metadata(&archive)?.len() as f64 / 1e6
        );
        anyhow::Ok(())
    })();
    if result.is_err() {
        let _ = buildah.run(&["rm", &container]);
    }
    result.map(|()| archive)
}

/// The host's target triple (the static build names it explicitly, so that build scripts and
/// proc-macros stay dynamic and only the binaries are static).
fn host_target() -> anyhow::Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

/// ztunnel's code laid out from a profile of this static build, relinked ([`crate::layout`]).
/// `tools` holds e2e-app and veil-bench (any build); they are built when it does not.
fn lay_out(root: &Path, target: &str, bin_dir: &Path, tools: &Path) -> anyhow::Result<()> {
    let mut tools = tools.to_path_buf();
    if !TOOLS_OF_THE_PROFILE.iter().all(|t| tools.join(t).is_file()) {
        println!(
            "{} has no e2e-app or veil-bench: building them for the profiled run…",
            tools.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "veil-e2e"])
            .args(TOOLS_OF_THE_PROFILE.iter().flat_map(|t| ["--bin", t]))
            .current_dir(root)
            .status()?;
        ensure!(status.success(), "building e2e-app and veil-bench failed");
        tools = root.join("target/debug");
    }
    // The profiled cluster runs the static build's binaries, and the two tools beside them.
    let layout = root.join("target/layout");
    let harness = layout.join("harness");
    if harness.exists() {
        std::fs::remove_dir_all(&harness)?;
    }
    std::fs::create_dir_all(&harness)?;
    for name in BINARIES {
        std::os::unix::fs::symlink(bin_dir.join(name), harness.join(name))?;
    }
    for name in TOOLS_OF_THE_PROFILE {
        std::os::unix::fs::symlink(std::path::absolute(tools.join(name))?, harness.join(name))?;
    }
    let ztunnel = bin_dir.join("veil-ztunnel");
    let profile = crate::layout::profile(
        &ztunnel,
        &harness,
        &layout.join("veil-ztunnel-static.order"),
    )?;
    build_static(root, target, Some(&profile.order))?;
    profile.check(&ztunnel)?;
    Ok(())
}

/// The test tools the layout's profiled run drives traffic with.
const TOOLS_OF_THE_PROFILE: [&str; 2] = ["e2e-app", "veil-bench"];

/// The static release build of [`PACKAGES`]; with `layout`, ztunnel is linked in its order.
fn build_static(root: &Path, target: &str, layout: Option<&Path>) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "--release", "--target", target])
        .current_dir(root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    match layout {
        Some(order) => cmd.env(crate::layout::LAYOUT_VAR, order),
        None => cmd.env_remove(crate::layout::LAYOUT_VAR),
    };
    for package in PACKAGES {
        cmd.args(["-p", package]);
    }
    let status = cmd.arg("--bins").status()?;
    ensure!(
        status.success(),
        "the static release build failed ({status})"
    );
    Ok(())
}

/// Whether the ELF executable at `path` names a program interpreter (`PT_INTERP`): a dynamically
/// linked program, which needs a loader and shared libraries from wherever it runs.
pub(crate) fn needs_interpreter(path: &Path) -> anyhow::Result<bool> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    interpreter_in(&elf).with_context(|| format!("{} is not a 64-bit ELF", path.display()))
}

fn interpreter_in(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (entry, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    (0..count)
        .map(|i| {
            let at = phoff.checked_add(i.checked_mul(entry)?)?;
            let header = elf.get(at..at.checked_add(entry.max(4))?)?;
            Some(u32::from_le_bytes(header.get(..4)?.try_into().ok()?))
        })
        .try_fold(false, |found, kind| Some(found || kind? == PT_INTERP))
}

/// The image's filesystem: the binaries, iptables with what it loads, the files it reads.
fn assemble(rootfs: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    let local_bin = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&local_bin)?;
    for name in BINARIES {
        // Without the line tables the release profile keeps for local backtraces: a fifth of the
        // size. Symbols stay, so a panic's backtrace still names functions.
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin_dir.join(name))
            .arg(local_bin.join(name))
            .status()
            .context("running objcopy (apt-get install binutils)")?;
        ensure!(
            status.success(),
            "objcopy --strip-debug {name} failed ({status})"
        );
    }
    ensure!(
        Path::new(XTABLES_MULTI).exists(),
        "{XTABLES_MULTI} is missing: install Debian's iptables (`apt-get install iptables`)"
    );
    let mut files: BTreeSet<PathBuf> = BTreeSet::from([PathBuf::from(XTABLES_MULTI)]);
    for module in std::fs::read_dir(XTABLES_MODULES)? {
        let path = module?.path();
        if path.extension().is_some_and(|e| e == "so") {
            files.insert(path);
        }
    }
    let mut libraries = BTreeSet::new();
    for file in &files {
        libraries.extend(shared_libraries(file)?);
    }
    for (tool, dest) in TOOLS {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: install Debian's util-linux and iproute2"
        );
        libraries.extend(shared_libraries(Path::new(tool))?);
        let dest = rootfs.join(dest);
        std::fs::create_dir_all(dest.parent().context("a file in a directory")?)?;
        std::fs::copy(tool, &dest).with_context(|| format!("copying {tool}"))?;
    }
    files.extend(libraries);
    // Protocol and service names in rules (`-p tcp`), resolved by the C library from files.
    files.extend(["/etc/protocols", "/etc/services"].map(PathBuf::from));
    for file in &files {
        let dest = rootfs.join(file.strip_prefix("/")?);
        std::fs::create_dir_all(dest.parent().context("a file in a directory")?)?;
        // The file itself, not the link to it: the loader finds libraries by their sonames.
        std::fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    }
    for name in IPTABLES_NAMES {
        std::os::unix::fs::symlink("xtables-nft-multi", rootfs.join("usr/sbin").join(name))?;
    }
    // The xtables lock and the chart's read-only root: /run and /tmp exist to mount over; /tmp
    // is writable by anyone, as everywhere.
    for dir in ["run", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    Ok(())
}

/// The shared libraries `file` loads, the dynamic loader included, as `ldd` resolves them here.
fn shared_libraries(file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(file).output()?;
    ensure!(out.status.success(), "ldd {} failed", file.display());
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Each binary runs from the image; the image's iptables parses the rules ztunnel writes.
fn smoke(buildah: &Buildah, container: &str) -> anyhow::Result<()> {
    for name in BINARIES {
        let help = buildah.output(&[
            "run",
            "--isolation",
            "chroot",
            container,
            "--",
            &format!("/usr/local/bin/{name}"),
            "--help",
        ])?;
        ensure!(help.contains("Usage"), "{name} --help: {help}");
        println!("smoke: {name} runs from the image");
    }
    for (args, expect) in [
        (["nsenter", "--version"], "util-linux"),
        (["ip", "-V"], "iproute2"),
    ] {
        let mut argv = vec!["run", "--isolation", "chroot", container, "--"];
        argv.extend(args);
        let out = buildah.output(&argv)?;
        ensure!(out.contains(expect), "{args:?}: {out}");
        println!("smoke: {} runs from the image", args[0]);
    }
    ca_answers(buildah, container)?;
    // Every match and target veil's capture and probe rules use, in both families, checked by
    // the image's own iptables-restore without touching any table (`--test`).
    let rules = "*nat\n:VEIL_TEST - [0:0]\n-A VEIL_TEST -p tcp -m mark --mark 0x539 -j RETURN\n\
        -A VEIL_TEST -p tcp -m mark --mark 0x539/0xfff -m cgroup --path / -j RETURN\n\
        -A VEIL_TEST -p tcp -m multiport --dports 15001,15006,15008 -j RETURN\n\
        -A VEIL_TEST -p tcp -m owner --socket-exists -j RETURN\n\
        -A VEIL_TEST -p tcp -j REDIRECT --to-ports 15006\nCOMMIT\n\
        *mangle\n:VEIL_TEST - [0:0]\n-A VEIL_TEST -p udp -j MARK --set-xmark 0x53a/0xfff\n\
        -A VEIL_TEST -p udp -m mark --mark 0x53a/0xfff -j TPROXY --on-port 15001 --tproxy-mark 0x53a/0xfff\n\
        -A VEIL_TEST -m mark --mark 0x53a/0xfff ! -o lo -j DROP\n\
        -A VEIL_TEST -p udp -j CONNMARK --set-xmark 0x53a/0xfff\n\
        -A VEIL_TEST -m connmark --mark 0x53a/0xfff -j DROP\nCOMMIT\n";
    for restore in ["iptables-restore", "ip6tables-restore"] {
        let out = buildah.output_with_input(
            &[
                "run",
                "--isolation",
                "chroot",
                // As ztunnel runs (root with NET_ADMIN); `--test` changes nothing.
                "--user",
                "0:0",
                "--cap-add",
                "CAP_NET_ADMIN,CAP_NET_RAW",
                container,
                "--",
                &format!("/usr/sbin/{restore}"),
                "--test",
            ],
            rules,
        )?;
        println!("smoke: {restore} in the image loads veil's rules{out}");
    }
    Ok(())
}

/// The CA, started from the image (its root generated on the spot), signs a workload certificate
/// for a node agent's token over its gRPC API, asked by veil's own CA client from outside.
fn ca_answers(buildah: &Buildah, container: &str) -> anyhow::Result<()> {
    use veil_mesh::identity::{CaClient, GrpcCaClient, Identity, TokenSource, TrustBundle, csr};
    const TOKEN: &str = "image-smoke-token-0123456789";
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let files = buildah.work.join("ca-smoke");
    std::fs::create_dir_all(&files)?;
    std::fs::write(
        files.join("tokens.yaml"),
        format!(
            "tokens:\n  - token: {TOKEN}\n    identity: spiffe://cluster.local/ns/veil-system/sa/ztunnel\n    node: node-a\n"
        ),
    )?;
    std::fs::write(
        files.join("placement.yaml"),
        "nodes:\n  node-a: [spiffe://cluster.local/ns/shop/sa/web]\n",
    )?;
    buildah.run(&[
        "copy",
        "--chmod",
        "0644",
        container,
        &files.to_string_lossy(),
        "/tmp/smoke",
    ])?;
    let listen = format!("127.0.0.1:{port}");
    let mut ca = buildah
        .command(&[
            "run",
            "--isolation",
            "chroot",
            container,
            "--",
            "/usr/local/bin/veil-ca",
            "--root-dir",
            "/tmp/ca",
            "--tokens",
            "/tmp/smoke/tokens.yaml",
            "--placement",
            "/tmp/smoke/placement.yaml",
            "--listen",
            &listen,
        ])
        // A group of its own: buildah's chroot helper and the CA under it outlive buildah killed
        // alone, still listening; the whole group is killed below.
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(files.join("ca.log"))?)
        .spawn()?;
    let result = (|| {
        // Up to 20 s for it to listen.
        let mut waited = 0;
        while std::net::TcpStream::connect(&listen).is_err() {
            ensure!(
                waited < 200,
                "the CA in the image did not listen on {listen}: {}",
                std::fs::read_to_string(files.join("ca.log")).unwrap_or_default()
            );
            waited += 1;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mount = PathBuf::from(buildah.output(&["mount", container])?);
        let root = mount.join("tmp/ca/root-cert.pem");
        let bundle = TrustBundle::from_pem_file("cluster.local", &root)?;
        let _ = buildah.run(&["umount", container]);
        let identity = Identity::parse("spiffe://cluster.local/ns/shop/sa/web")?;
        let request = csr::generate(&identity)?;
        let chain = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let ca = GrpcCaClient::new(
                    &listen,
                    "veil-ca",
                    &bundle,
                    TokenSource::Static(TOKEN.into()),
                    std::time::Duration::from_secs(10),
                )?;
                ca.sign(
                    &identity,
                    &request.csr_pem,
                    std::time::Duration::from_secs(3600),
                )
                .await
            })?;
        ensure!(!chain.is_empty(), "the CA answered an empty chain");
        println!(
            "smoke: veil-ca from the image signed a certificate for {identity} ({} certificates in the chain)",
            chain.len()
        );
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", ca.id())])
        .status();
    let _ = ca.kill();
    let _ = ca.wait();
    result
}

/// buildah with its storage kept under `target/image`.
struct Buildah {
    global: Vec<String>,
    work: PathBuf,
}

impl Buildah {
    fn new(work: &Path) -> Self {
        let dir = |d: &str| work.join(d).to_string_lossy().into_owned();
        Self {
            global: vec![
                "--storage-driver".into(),
                "vfs".into(),
                "--root".into(),
                dir("storage"),
                "--runroot".into(),
                dir("run"),
            ],
            work: work.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.args(&self.global).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        self.output(args).map(drop)
    }

    fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        self.output_with_input(args, "")
    }

    fn output_with_input(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let out = veil_e2e::cluster::output_with_input(&mut self.command(args), input.as_bytes())
            .context("running buildah (apt-get install buildah)")?;
        if !out.status.success() {
            bail!(
                "buildah {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_needs_an_interpreter_and_garbage_is_no_elf() {
        // This test program itself is dynamically linked (the workspace builds without +crt-static).
        let me = std::env::current_exe().unwrap();
        assert!(needs_interpreter(&me).unwrap());
        assert_eq!(interpreter_in(b"not an ELF file at all"), None);
        assert_eq!(interpreter_in(b"\x7fELF\x02\x01"), None, "truncated");
    }

    /// A 64-bit little-endian ELF header with one program header of type `kind`.
    fn elf_with_segment(kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&kind.to_le_bytes());
        elf
    }

    #[test]
    fn only_a_program_interpreter_segment_makes_a_program_dynamic() {
        assert_eq!(interpreter_in(&elf_with_segment(1)), Some(false), "PT_LOAD");
        assert_eq!(
            interpreter_in(&elf_with_segment(3)),
            Some(true),
            "PT_INTERP"
        );
        // Program headers said to lie past the end of the file.
        let mut short = elf_with_segment(3);
        short.truncate(80);
        assert_eq!(interpreter_in(&short), None);
    }
}
