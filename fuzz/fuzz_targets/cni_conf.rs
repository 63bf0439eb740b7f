//! The CNI plugin (`veil_ztunnel::cni::plugin`): the network configuration and its prevResult as
//! the container runtime passes them on stdin, with `CNI_COMMAND` and `CNI_ARGS`.
//!
//! Input: the first line chooses the command (its first byte) and is `CNI_ARGS` (the rest); the
//! remaining bytes are stdin. The configuration's `ambientFile` and `ztunnelSocket` are pointed at
//! a list this target writes and at a socket path that does not exist, so ADD and DEL run their
//! whole decision without reading arbitrary files or reaching a real ztunnel.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use veil_ztunnel::cni::plugin::{NetConf, parse_cni_args, result_ips, run};

const COMMANDS: &[&str] = &[
    "ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "BOGUS", "",
];

/// A per-process directory with an ambient list naming the namespaces the seeds use.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("veil-fuzz-cni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("ambient.json"),
        r#"["default","production","user-data"]"#,
    )
    .expect("ambient list");
    dir
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (head, stdin) = text.split_once('\n').unwrap_or((text, ""));
    let command = COMMANDS[head.bytes().next().unwrap_or(0) as usize % COMMANDS.len()];
    let cni_args = head.get(1..).unwrap_or_default();
    let _ = parse_cni_args(cni_args);
    // The configuration as the plugin parses it, and the addresses of any prevResult.
    if let Ok(conf) = serde_json::from_str::<NetConf>(stdin) {
        if let Some(prev) = &conf.prev_result {
            let _ = result_ips(prev);
        }
    }
    let stdin = confined(stdin);
    let env = BTreeMap::from([
        ("CNI_COMMAND".to_owned(), command.to_owned()),
        ("CNI_ARGS".to_owned(), cni_args.to_owned()),
        ("CNI_NETNS".to_owned(), "/var/run/netns/fuzz".to_owned()),
    ]);
    match run(&env, &stdin) {
        Ok(_) => {}
        // Every refusal carries a CNI error code the runtime understands.
        Err((_, e)) => assert!(e.code > 0, "error without a code: {e:?}"),
    }
});

/// `stdin` with the file and socket the plugin would touch replaced (text that is not a JSON object
/// is passed unchanged: it fails to parse before any I/O).
fn confined(stdin: &str) -> String {
    let Ok(Value::Object(mut conf)) = serde_json::from_str::<Value>(stdin) else {
        return stdin.to_owned();
    };
    let dir = &*DIR;
    conf.insert(
        "ambientFile".into(),
        dir.join("ambient.json").display().to_string().into(),
    );
    conf.insert(
        "ztunnelSocket".into(),
        dir.join("absent.sock").display().to_string().into(),
    );
    conf.insert("timeoutSeconds".into(), 1.into());
    Value::Object(conf).to_string()
}
