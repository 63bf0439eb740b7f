//! Where the end-to-end tests find veil's binaries, and whether they can run here at all.

use std::path::PathBuf;

/// Where binaries are taken from, when not next to the running program (see [`use_binaries_from`]).
static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Takes the workspace's binaries from `dir` (the benchmarks run release builds).
pub fn use_binaries_from(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// Where the workspace's binaries are: next to this test binary's `deps/` folder (or this binary),
/// unless [`use_binaries_from`] said otherwise.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = match BIN_DIR.get() {
        Some(dir) => dir.clone(),
        None => exe.parent().expect("executable has a folder").to_path_buf(),
    };
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo xtask test` (or `cargo build --workspace --bins`) first",
        path.display()
    );
    path
}

/// True (after a loud message) when end-to-end tests cannot run here: they need root.
pub fn skip_unless_root(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!(
            "\n*** SKIPPED {test}: end-to-end tests need root (network namespaces, iptables). Run the suite as root. ***\n"
        );
    }
    !root
}
