//! The CA's CSR validation (`veil_ca::csr::validate`): a client-supplied PEM carrying DER that
//! x509-parser decodes and ring verifies.
//!
//! Input: first byte even → the rest is the PEM text as the client sends it; odd → the rest is
//! DER, wrapped in a `CERTIFICATE REQUEST` PEM section so the DER decoder sees arbitrary bytes.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use veil_ca::csr::{MAX_CSR_BYTES, validate};
use veil_mesh::identity::Identity;

static IDENTITY: LazyLock<Identity> =
    LazyLock::new(|| Identity::new("cluster.local", "default", "fuzz").expect("a valid identity"));

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let pem = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", rest.to_vec()))
    };
    if validate(&pem, &IDENTITY).is_ok() {
        // Accepted only within the size limit.
        assert!(pem.len() <= MAX_CSR_BYTES);
    }
});
