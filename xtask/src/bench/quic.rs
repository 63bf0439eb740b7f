//! HBONE over QUIC against HBONE over HTTP/2 (issue 15): a second cluster of the same shape whose
//! ztunnels run with `--hbone-quic`, measured in the same rounds as the main cluster (HTTP/2),
//! alternating: bulk throughput on 1 stream and the ztunnels' CPU per GiB, 1 KiB request/response
//! on 16 connections, and carried UDP (1 KiB datagrams echoed on 16 flows).

use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, bin};

use super::runs::{median, median_run, per_gib, tool_in};
use super::{Bench, f};

/// The QUIC cluster: one client and one server on two nodes, ztunnels speaking QUIC and carrying
/// UDP.
fn spec() -> MeshSpec {
    MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("client", "bench", "node-a"),
            PodSpec::new("server", "bench", "node-b"),
        ],
        ztunnel_args: vec!["--hbone-quic".into(), "--carry-udp".into()],
        ..MeshSpec::default()
    }
}

/// CPU seconds both ztunnels of `mesh` have used.
fn ztunnel_cpu(mesh: &Mesh) -> f64 {
    ["node-a", "node-b"]
        .iter()
        .filter_map(|n| mesh.ztunnels[*n].cpu_seconds())
        .sum()
}

pub(super) fn quic(b: &Bench) -> anyhow::Result<Value> {
    let mut q = Mesh::start(spec()).context("starting the QUIC cluster")?;
    let tool = bin("veil-bench").to_string_lossy().into_owned();
    q.spawn_in_pod("server", "bench-server-quic", &[&tool, "serve"])?
        .wait_for("bench server ready", Duration::from_secs(10))?;
    let server = q.cluster.pod("server").ip.to_string();
    let seconds = b.seconds();
    let run = |quic: bool, args: &[&str]| -> anyhow::Result<Value> {
        if quic {
            tool_in(&q, "client", args)
        } else {
            b.tool("client", args)
        }
    };
    let target = |quic: bool, port: u16| {
        let ip = if quic { server.clone() } else { b.ip("server") };
        format!("{ip}:{port}")
    };
    // Warm up: the first tunnel of each opens the connection (and QUIC's path MTU grows).
    for quic in [false, true] {
        run(
            quic,
            &["rr", &target(quic, 9002), "--conns", "1", "--seconds", "1"],
        )?;
    }
    let (mut bulk, mut cpu) = ([Vec::new(), Vec::new()], [(0.0, 0.0), (0.0, 0.0)]);
    let (mut rr, mut udp) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..b.opts.rounds {
        for (i, quic) in [false, true].into_iter().enumerate() {
            let before = if quic {
                ztunnel_cpu(&q)
            } else {
                b.ztunnel_cpu()
            };
            let moved = run(
                quic,
                &[
                    "throughput",
                    &target(quic, 9001),
                    "--streams",
                    "1",
                    "--seconds",
                    &seconds,
                ],
            )?;
            let after = if quic {
                ztunnel_cpu(&q)
            } else {
                b.ztunnel_cpu()
            };
            cpu[i].0 += after - before;
            cpu[i].1 += f(&moved["bytes"]);
            bulk[i].push(f(&moved["gbit_per_s"]));
            rr[i].push(run(
                quic,
                &[
                    "rr",
                    &target(quic, 9002),
                    "--conns",
                    "16",
                    "--seconds",
                    &seconds,
                ],
            )?);
            udp[i].push(run(
                quic,
                &[
                    "udp-rr",
                    &target(quic, 9004),
                    "--flows",
                    "16",
                    "--seconds",
                    &seconds,
                ],
            )?);
        }
    }
    let [h2_gbit, h3_gbit] = bulk.map(median);
    let [h2_cpu, h3_cpu] = cpu.map(per_gib);
    let [h2_rr, h3_rr] = rr.map(|runs| median_run(runs, "p50_us"));
    let [h2_udp, h3_udp] = udp.map(|runs| median_run(runs, "requests_per_s"));
    println!(
        "  HBONE over QUIC vs HTTP/2, 1 stream: {h3_gbit:.2} vs {h2_gbit:.2} Gbit/s ({:.2}×); ztunnel CPU {h3_cpu:.2} vs {h2_cpu:.2} s per GiB ({:.2}×)",
        h3_gbit / h2_gbit,
        h3_cpu / h2_cpu
    );
    println!(
        "  HBONE over QUIC vs HTTP/2, 1 KiB request/response, 16 connections: p50 {} vs {} µs, p99 {} vs {} µs, {:.0} vs {:.0}/s",
        h3_rr["p50_us"],
        h2_rr["p50_us"],
        h3_rr["p99_us"],
        h2_rr["p99_us"],
        f(&h3_rr["requests_per_s"]),
        f(&h2_rr["requests_per_s"])
    );
    println!(
        "  carried UDP over QUIC vs HTTP/2, 16 flows: {:.0} vs {:.0} datagrams echoed/s, {} vs {} lost",
        f(&h3_udp["requests_per_s"]),
        f(&h2_udp["requests_per_s"]),
        h3_udp["lost"],
        h2_udp["lost"]
    );
    Ok(json!({
        "throughput_1": {"h2_gbit_per_s": h2_gbit, "h3_gbit_per_s": h3_gbit},
        "ztunnel_seconds_per_gib": {"h2": h2_cpu, "h3": h3_cpu},
        "rr_16": {"h2": h2_rr, "h3": h3_rr},
        "udp_16": {"h2": h2_udp, "h3": h3_udp},
    }))
}
