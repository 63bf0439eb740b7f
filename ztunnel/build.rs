//! How veil-ztunnel is linked.
//!
//! - Relative relocations packed in release builds (`-z pack-relative-relocs`, DT_RELR:
//!   glibc ≥ 2.36): a position-independent executable otherwise carries one 24-byte relocation
//!   per pointer in its read-only data (≈0.7 MB for ztunnel), all of it read by the loader at
//!   start and resident from then on.
//! - With `VEIL_ZTUNNEL_LAYOUT` naming a file of symbol names (one per line, written by
//!   `cargo xtask image` and `cargo xtask bench`: see xtask's `layout` module), its code is laid
//!   out in that order: the code a running ztunnel executes packed into adjacent pages keeps the
//!   kernel from mapping in the cold code around it (fault-around maps 64 KiB about each page
//!   fault), which is otherwise most of an idle ztunnel's resident memory.
//!
//! Both are options of lld, Rust's default linker on x86_64-unknown-linux-gnu.

fn main() {
    println!("cargo:rerun-if-env-changed=VEIL_ZTUNNEL_LAYOUT");
    let lld = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    // Release builds only: a test build runs where it is built, whose C library may predate
    // DT_RELR (glibc < 2.36 refuses such a binary).
    if lld && std::env::var("PROFILE").is_ok_and(|p| p == "release") {
        println!("cargo:rustc-link-arg-bin=veil-ztunnel=-Wl,-z,pack-relative-relocs");
    }
    let Some(order) = std::env::var_os("VEIL_ZTUNNEL_LAYOUT") else {
        return;
    };
    assert!(
        lld,
        "VEIL_ZTUNNEL_LAYOUT needs lld, Rust's default linker on x86_64-unknown-linux-gnu only"
    );
    let order = order
        .into_string()
        .expect("VEIL_ZTUNNEL_LAYOUT is not a UTF-8 path");
    println!("cargo:rerun-if-changed={order}");
    println!("cargo:rustc-link-arg-bin=veil-ztunnel=-Wl,--symbol-ordering-file={order}");
    // Symbols of the profile the build no longer has (a function inlined away) are skipped.
    println!("cargo:rustc-link-arg-bin=veil-ztunnel=-Wl,--no-warn-symbol-ordering");
}
