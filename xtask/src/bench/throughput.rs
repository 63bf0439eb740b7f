//! Bulk throughput: direct, plain TLS 1.3, through the mesh across nodes and on the same-node
//! path, and through Istio's ztunnel; iperf3 as a cross-check.

use anyhow::Context as _;
use serde_json::{Value, json};
use veil_e2e::cluster::exec;

use super::runs::{median, per_gib, with_carrying_connections};
use super::{Bench, f, upstream};

pub(super) fn throughput(b: &Bench, cpu: &mut (f64, f64)) -> anyhow::Result<Value> {
    let mut out = json!({});
    // ztunnel CPU and bytes of the same-node path.
    let mut local_cpu = (0.0, 0.0);
    for streams in ["1", "4"] {
        let mut runs: [Vec<f64>; 5] = Default::default();
        let mut upstream = Vec::new();
        // veil's and Istio's ztunnel's runs: the HBONE connections carrying each (halfway
        // through) and the cores their ztunnels used (both ends).
        let mut spread: [Vec<(usize, f64)>; 2] = Default::default();
        let bulk = |from: &str, to: &str| {
            b.tool(
                from,
                &[
                    "throughput",
                    &format!("{}:9001", b.ip(to)),
                    "--streams",
                    streams,
                    "--seconds",
                    &b.seconds(),
                ],
            )
        };
        for _ in 0..b.opts.rounds {
            let direct = bulk("dclient", "dserver")?;
            let tls = b.tool(
                "dclient",
                &[
                    "throughput",
                    "127.0.0.1:7001",
                    "--streams",
                    streams,
                    "--seconds",
                    &b.seconds(),
                ],
            )?;
            let before = b.ztunnel_cpu();
            // Compared with Istio's ztunnel: its memory too, and how its flows spread.
            let (mesh, carrying) = with_carrying_connections(
                &b.mesh.cluster.pod("client").netns,
                b.opts.seconds,
                || b.memory.measure(&b.ztunnels(), || bulk("client", "server")),
            );
            let mesh = mesh?;
            let used = b.ztunnel_cpu() - before;
            spread[0].push((carrying?, used / f(&mesh["seconds"])));
            cpu.0 += used;
            cpu.1 += mesh["bytes"].as_f64().unwrap_or(0.0);
            let direct_local = bulk("dclient", "dlserver")?;
            let before = b.ztunnel_cpu();
            let local = bulk("client", "lserver")?;
            local_cpu.0 += b.ztunnel_cpu() - before;
            local_cpu.1 += local["bytes"].as_f64().unwrap_or(0.0);
            for (i, run) in [direct, tls, mesh, direct_local, local].iter().enumerate() {
                runs[i].push(run["gbit_per_s"].as_f64().unwrap_or(f64::NAN));
            }
            let args = ["--streams", streams, "--seconds", &b.seconds()];
            if let Some(u) = &b.upstream {
                let (run, carrying) = with_carrying_connections(
                    &b.mesh.cluster.pod(upstream::CLIENT).netns,
                    b.opts.seconds,
                    || u.tool(&b.mesh, "throughput", 9001, &args, upstream::Count::Bytes),
                );
                let run = run?;
                upstream.push(f(&run["gbit_per_s"]));
                let cores = f(&run["ztunnel_cpu_seconds"]) / f(&run["seconds"]);
                spread[1].push((carrying?, cores));
            }
        }
        let [veil_spread, upstream_spread] = spread.map(|runs| {
            let connections = runs.iter().map(|r| r.0).max().unwrap_or(0);
            let cores = median(runs.iter().map(|r| r.1).collect());
            (connections, cores)
        });
        println!(
            "  throughput, {streams} stream(s): HBONE connections carrying it (the most in a round) veil {}, ztunnel cores used (both ends, median) {:.2}",
            veil_spread.0, veil_spread.1
        );
        if let Some(u) = &b.upstream {
            let gbit = median(upstream);
            println!(
                "  throughput, {streams} stream(s): Istio's ztunnel {gbit:.2} Gbit/s, HBONE connections carrying it {}, cores {:.2}",
                upstream_spread.0, upstream_spread.1
            );
            u.record(&["throughput", streams], json!(gbit));
            u.record(
                &["throughput_spread", streams],
                json!({"hbone_connections": upstream_spread.0, "ztunnel_cores": upstream_spread.1}),
            );
        }
        let [direct, tls, mesh, direct_local, local] = runs.map(median);
        println!(
            "  throughput, {streams} stream(s): direct {direct:.2} Gbit/s, plain TLS {tls:.2}, mesh {mesh:.2} ({:.0}% of direct)",
            100.0 * mesh / direct
        );
        println!(
            "  throughput, {streams} stream(s), same node: direct {direct_local:.2} Gbit/s, mesh (same-node path) {local:.2} ({:.0}% of direct)",
            100.0 * local / direct_local
        );
        out[streams] = json!({
            "direct_gbit_per_s": direct,
            "tls_gbit_per_s": tls,
            "mesh_gbit_per_s": mesh,
            "same_node": {"direct_gbit_per_s": direct_local, "mesh_gbit_per_s": local},
            "hbone_connections": veil_spread.0,
            "ztunnel_cores": veil_spread.1,
        });
    }
    let local_per_gib = per_gib(local_cpu);
    println!("  same-node path: node-a's ztunnel CPU {local_per_gib:.2} s per GiB");
    out["same_node"]["ztunnel_seconds_per_gib"] = json!(local_per_gib);
    Ok(out)
}

pub(super) fn iperf(b: &Bench) -> anyhow::Result<Value> {
    let run = |from: &str, to: &str| -> anyhow::Result<f64> {
        let out = exec(
            &b.mesh.cluster.pod(from).netns,
            &["iperf3", "-c", &b.ip(to), "-t", &b.seconds(), "-J"],
        )?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 printed {}", String::from_utf8_lossy(&out.stdout)))?;
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|bps| bps / 1e9)
            .with_context(|| format!("iperf3 failed: {}", report["error"]))
    };
    let direct = run("dclient", "dserver")?;
    let mesh = run("client", "server")?;
    println!(
        "  iperf3, 1 stream: direct {direct:.2} Gbit/s, mesh {mesh:.2} ({:.0}%)",
        100.0 * mesh / direct
    );
    Ok(json!({"direct_gbit_per_s": direct, "mesh_gbit_per_s": mesh}))
}
