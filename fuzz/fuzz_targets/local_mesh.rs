//! The local mesh file (`veil_mesh::discovery::local::parse`): YAML parsed, validated and
//! translated into a mesh state, policies compiled.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_mesh::discovery::MeshSettings;
use veil_mesh::discovery::local::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse(text, &MeshSettings::default());
});
