//! The memory section: ztunnel's RSS idle and while connections are held, and where a process's
//! resident memory is.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use veil_e2e::mesh::bin;

use super::Bench;

/// Each ztunnel's RSS while `count` idle connections are held open through the mesh.
fn held(b: &mut Bench, count: usize) -> anyhow::Result<[u64; 2]> {
    let tool = bin("veil-bench").to_string_lossy().into_owned();
    let target = format!("{}:9001", b.ip("server"));
    let name = format!("hold-{count}");
    let count_arg = count.to_string();
    let proc = b.mesh.spawn_in_pod(
        "client",
        &name,
        &[&tool, "hold", &target, "--conns", &count_arg],
    )?;
    proc.wait_for("holding", Duration::from_secs(120))
        .with_context(|| format!("holding {count} connections through the mesh"))?;
    std::thread::sleep(Duration::from_secs(2));
    let rss = b.ztunnel_rss();
    if let Some(mut p) = b.mesh.apps.remove(&name) {
        p.kill();
    }
    std::thread::sleep(Duration::from_secs(3));
    Ok(rss)
}

pub(super) fn memory(
    b: &mut Bench,
    (idle_start, idle_anon): ([u64; 2], [u64; 2]),
) -> anyhow::Result<Value> {
    let before = b.ztunnel_rss();
    let k1 = held(b, 1_000)?;
    let k10 = held(b, 10_000)?;
    let per_conn: Vec<f64> = (0..2)
        .map(|i| (k10[i] as f64 - before[i] as f64) / 10_000.0)
        .collect();
    let mib = |v: u64| crate::mib(v as f64);
    println!(
        "  ztunnel RSS (node-a, node-b): idle {:.1}/{:.1} MiB (anonymous {:.1}/{:.1}), 1k conns {:.1}/{:.1}, 10k conns {:.1}/{:.1} → {:.1}/{:.1} KiB per connection",
        mib(idle_start[0]),
        mib(idle_start[1]),
        mib(idle_anon[0]),
        mib(idle_anon[1]),
        mib(k1[0]),
        mib(k1[1]),
        mib(k10[0]),
        mib(k10[1]),
        per_conn[0] / 1024.0,
        per_conn[1] / 1024.0
    );
    Ok(json!({
        "idle_start_bytes": idle_start,
        "idle_start_anon_bytes": idle_anon,
        "before_hold_bytes": before,
        "conns_1000_bytes": k1,
        "conns_10000_bytes": k10,
        "per_connection_bytes": per_conn,
    }))
}

/// Where a process's resident memory is, in KB, from `/proc/<pid>/smaps`: its executable's code,
/// read-only data and data, the shared libraries, and anonymous memory (heap, stacks).
pub(crate) fn resident_by_mapping(pid: u32) -> Value {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Value::Null;
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let (mut kind, mut kb) = ("anonymous", std::collections::BTreeMap::<&str, u64>::new());
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            let (perms, path) = (fields.get(1).copied().unwrap_or(""), fields.get(5).copied());
            kind = match path {
                Some(p) if p == exe => match perms {
                    "r-xp" => "code",
                    "rw-p" => "data",
                    _ => "rodata",
                },
                Some(p) if p.starts_with('/') => "libraries",
                _ => "anonymous",
            };
        } else if fields.first() == Some(&"Rss:") {
            *kb.entry(kind).or_default() += fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let get = |k: &str| kb.get(k).copied().unwrap_or(0);
    json!({
        "code": get("code"), "rodata": get("rodata"), "data": get("data"),
        "libraries": get("libraries"), "anonymous": get("anonymous"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_split_by_mapping() {
        // This test process: its code ran, its heap and stacks are anonymous, libc is shared.
        let kb = resident_by_mapping(std::process::id());
        for kind in ["code", "anonymous", "libraries"] {
            assert!(kb[kind].as_u64().is_some_and(|v| v > 0), "{kind}: {kb}");
        }
        assert!(resident_by_mapping(u32::MAX).is_null());
    }
}
