//! The waypoint's request canonicalizer (`veil_waypoint::canon`): paths at every normalization level
//! and hosts. Never panics, and what it accepts is canonical: a fixed point of itself, with no dot
//! segment, backslash or (when slashes are merged) empty segment left for a backend to resolve
//! differently from the policy that judged it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_waypoint::canon::host;
use veil_waypoint::canon::path::{self, Normalization};

const LEVELS: [Normalization; 4] = [
    Normalization::None,
    Normalization::Base,
    Normalization::MergeSlashes,
    Normalization::DecodeAndMergeSlashes,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, raw)) = data.split_first() else {
        return;
    };
    let level = LEVELS[usize::from(selector) % LEVELS.len()];
    if let Ok(canonical) = path::canonicalize(raw, level) {
        check_path(&canonical, level);
    }
    if let Ok(canonical) = host::canonicalize(raw) {
        let again = host::canonicalize(canonical.as_bytes());
        assert_eq!(
            again.as_deref().ok(),
            Some(canonical.as_str()),
            "host not a fixed point"
        );
        assert_eq!(
            canonical,
            canonical.to_ascii_lowercase(),
            "host not lower-case"
        );
    }
});

fn check_path(canonical: &str, level: Normalization) {
    if level == Normalization::None {
        return;
    }
    let again = path::canonicalize(canonical.as_bytes(), level);
    assert_eq!(
        again.as_deref().ok(),
        Some(canonical),
        "path not a fixed point at {level:?}"
    );
    assert!(
        !canonical.split('/').any(|s| s == "." || s == ".."),
        "dot segment left in {canonical:?} at {level:?}"
    );
    assert!(!canonical.contains('\\'), "backslash left in {canonical:?}");
    if level != Normalization::Base {
        assert!(
            !canonical.contains("//"),
            "empty segment left in {canonical:?}"
        );
    }
}
