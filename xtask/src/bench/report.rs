//! The results of a run as a Markdown table against veil's targets, and its place in
//! docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// A result against its target, as a table row.
struct Row {
    what: &'static str,
    measured: String,
    target: &'static str,
    met: Option<bool>,
}

impl Row {
    /// A figure with a target.
    fn goal(what: &'static str, measured: String, target: &'static str, met: bool) -> Self {
        Self {
            what,
            measured,
            target,
            met: Some(met),
        }
    }

    /// A figure without a target (a comparison given for context).
    fn info(what: &'static str, measured: String) -> Self {
        Self {
            what,
            measured,
            target: "—",
            met: None,
        }
    }
}

pub(super) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The results table, in Markdown.
pub(super) fn report(r: &Value) -> String {
    let t = &r["throughput"];
    let one = f(&t["1"]["mesh_gbit_per_s"]) / f(&t["1"]["direct_gbit_per_s"]);
    let one_tls = f(&t["1"]["mesh_gbit_per_s"]) / f(&t["1"]["tls_gbit_per_s"]);
    let four = f(&t["4"]["mesh_gbit_per_s"]) / f(&t["1"]["mesh_gbit_per_s"]);
    let four_direct = f(&t["4"]["mesh_gbit_per_s"]) / f(&t["4"]["direct_gbit_per_s"]);
    let l = &r["latency"];
    let p50 = f(&l["1"]["mesh"]["p50_us"]) / f(&l["1"]["direct"]["p50_us"]);
    let p99 = f(&l["1"]["mesh"]["p99_us"]) / f(&l["1"]["direct"]["p99_us"]);
    let rps16 = f(&l["16"]["mesh"]["requests_per_s"]) / f(&l["16"]["direct"]["requests_per_s"]);
    let p99_16 = f(&l["16"]["mesh"]["p99_us"]) / f(&l["16"]["direct"]["p99_us"]);
    let c = &r["connections"];
    let cps = f(&c["mesh"]["connections_per_s"]) / f(&c["direct"]["connections_per_s"]);
    let m = &r["memory"];
    let mib = |v: &Value| crate::mib(f(v));
    let idle = mib(&m["idle_start_bytes"][0]).max(mib(&m["idle_start_bytes"][1]));
    let idle_anon = mib(&m["idle_start_anon_bytes"][0]).max(mib(&m["idle_start_anon_bytes"][1]));
    let per_conn = f(&m["per_connection_bytes"][0]).max(f(&m["per_connection_bytes"][1])) / 1024.0;
    let w = &r["waypoint"];
    let wp = |p: &str, k: &str| f(&w[p]["waypoint"][k]) / f(&w[p]["direct"][k]);
    let paced = &w["paced_1000"];
    let per_1k = f(&paced["run"]["requests_per_s"]) / 1000.0;
    let vcpu = f(&paced["vcpu"]) / per_1k;
    let wp_mib = mib(&paced["rss_bytes"]) / per_1k;
    let p = &r["policy"];
    let pct = |x: f64| format!("{:.0}%", 100.0 * x);
    let times = |x: f64| format!("{x:.2}×");
    let rows = vec![
        Row::goal(
            "throughput, 1 stream, vs direct",
            pct(one),
            "≥ 45%",
            one >= 0.45,
        ),
        Row::info("throughput, 1 stream, vs plain TLS 1.3", pct(one_tls)),
        Row::goal(
            "throughput, 4 streams, vs 1 stream (mesh)",
            times(four),
            "≥ 1.5×",
            four >= 1.5,
        ),
        Row::info("throughput, 4 streams, vs direct", pct(four_direct)),
        Row::info(
            "same-node throughput, 1 stream, vs direct on the node",
            pct(f(&t["1"]["same_node"]["mesh_gbit_per_s"])
                / f(&t["1"]["same_node"]["direct_gbit_per_s"])),
        ),
        Row::info(
            "same-node throughput, 4 streams, vs direct on the node",
            pct(f(&t["4"]["same_node"]["mesh_gbit_per_s"])
                / f(&t["4"]["same_node"]["direct_gbit_per_s"])),
        ),
        Row::info(
            "ztunnel CPU per GiB moved on the same-node path",
            format!("{:.2} s", f(&t["same_node"]["ztunnel_seconds_per_gib"])),
        ),
        Row::goal(
            "1 KiB req/resp p50, 1 connection, vs direct",
            times(p50),
            "≤ 1.4×",
            p50 <= 1.4,
        ),
        Row::goal(
            "1 KiB req/resp p99, 1 connection, vs direct",
            times(p99),
            "≤ 1.6×",
            p99 <= 1.6,
        ),
        Row::goal(
            "1 KiB req/resp, 16 connections, requests/s vs direct",
            pct(rps16),
            "≥ 35%",
            rps16 >= 0.35,
        ),
        Row::info(
            "1 KiB req/resp p99, 16 connections, vs direct",
            times(p99_16),
        ),
        Row::goal(
            "new connections/s vs direct",
            pct(cps),
            "≥ 35%",
            cps >= 0.35,
        ),
        Row::info(
            "new connection, connect to close p50, vs direct",
            times(f(&c["mesh"]["p50_us"]) / f(&c["direct"]["p50_us"])),
        ),
        Row::goal(
            "policy decision, 10,000 policies (lookup + evaluate)",
            format!("{:.2} µs", f(&p["lookup_and_evaluate_ns"]) / 1000.0),
            "≤ 10 µs",
            f(&p["lookup_and_evaluate_ns"]) <= 10_000.0,
        ),
        Row::goal(
            "subscriber: one pod change applied and patched, 100,000 workloads (median)",
            format!(
                "{:.1} µs",
                f(&r["subscriber"]["100000"]["change_ns"]) / 1000.0
            ),
            "≤ 50 µs",
            f(&r["subscriber"]["100000"]["change_ns"]) <= 50_000.0,
        ),
        Row::goal(
            "subscriber: heap held per workload (malloc's chunks), 100,000 workloads",
            format!(
                "{:.2} KB",
                f(&r["subscriber"]["100000"]["heap_bytes_per_workload"]["malloc_chunks"]) / 1000.0
            ),
            "≤ 1.5 KB",
            f(&r["subscriber"]["100000"]["heap_bytes_per_workload"]["malloc_chunks"]) <= 1500.0,
        ),
        Row::goal(
            "ztunnel RSS, idle (larger of the two)",
            format!("{idle:.1} MiB"),
            "≤ 8 MiB",
            idle <= 8.0,
        ),
        Row::info(
            "ztunnel anonymous RSS, idle (heap and stacks: RSS without the executable's pages)",
            format!("{idle_anon:.1} MiB"),
        ),
        Row::goal(
            "ztunnel memory per idle open connection",
            format!("{per_conn:.1} KiB"),
            "≤ 8 KiB",
            per_conn <= 8.0,
        ),
        Row::info(
            "ztunnel CPU per GiB moved (both ends)",
            format!("{:.2} s", f(&r["cpu"]["ztunnel_seconds_per_gib"])),
        ),
        Row::info(
            "ztunnel CPU per 10k requests (both ends)",
            format!("{:.3} s", f(&r["cpu"]["ztunnel_seconds_per_10k_requests"])),
        ),
        Row::info(
            "waypoint HTTP/1.1 requests/s vs direct",
            pct(wp("http1", "requests_per_s")),
        ),
        Row::info(
            "waypoint HTTP/1.1 p99 vs direct",
            times(wp("http1", "p99_us")),
        ),
        Row::info(
            "waypoint HTTP/2 requests/s vs direct",
            pct(wp("http2", "requests_per_s")),
        ),
        Row::info(
            "waypoint HTTP/2 p99 vs direct",
            times(wp("http2", "p99_us")),
        ),
        Row::goal(
            "waypoint CPU per 1k req/s",
            format!("{vcpu:.3} vCPU"),
            "≤ 0.05 vCPU",
            vcpu <= 0.05,
        ),
        Row::goal(
            "waypoint RSS per 1k req/s",
            format!("{wp_mib:.1} MiB"),
            "≤ 20 MiB",
            wp_mib <= 20.0,
        ),
    ];
    let mut rows = rows;
    rows.extend(quic_rows(&r["quic"]));
    rows.extend(upstream_rows(r));
    let mut out = format!(
        "Run: {} CPUs, {} round(s) of {} s per comparison (medians). Raw figures: docs/benchmarks.json.\n\n| measure | veil | target | |\n|---|---|---|---|\n",
        r["settings"]["cpus"], r["settings"]["rounds"], r["settings"]["seconds"]
    );
    for row in rows {
        let mark = match row.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {mark} |",
            row.what, row.measured, row.target
        );
    }
    let _ = write!(
        out,
        "\nBaselines of this run: direct {:.2} Gbit/s (1 stream), {:.2} (4 streams); plain TLS 1.3 {:.2} (1 stream); 1 KiB round trip p50 {} µs / p99 {} µs; {:.0} new connections/s; iperf3 direct {:.2} Gbit/s vs mesh {:.2}.\n",
        f(&t["1"]["direct_gbit_per_s"]),
        f(&t["4"]["direct_gbit_per_s"]),
        f(&t["1"]["tls_gbit_per_s"]),
        l["1"]["direct"]["p50_us"],
        l["1"]["direct"]["p99_us"],
        f(&c["direct"]["connections_per_s"]),
        f(&r["iperf3"]["direct_gbit_per_s"]),
        f(&r["iperf3"]["mesh_gbit_per_s"])
    );
    out
}

/// HBONE over QUIC against HBONE over HTTP/2, measured in the same rounds (issue 15).
fn quic_rows(q: &Value) -> Vec<Row> {
    if q.is_null() {
        return Vec::new();
    }
    let ratio = |h3: &Value, h2: &Value| format!("{:.2}×", f(h3) / f(h2));
    vec![
        Row::info(
            "HBONE over QUIC vs HTTP/2: throughput, 1 stream",
            ratio(
                &q["throughput_1"]["h3_gbit_per_s"],
                &q["throughput_1"]["h2_gbit_per_s"],
            ),
        ),
        Row::info(
            "HBONE over QUIC vs HTTP/2: ztunnel CPU per GiB (both ends)",
            ratio(
                &q["ztunnel_seconds_per_gib"]["h3"],
                &q["ztunnel_seconds_per_gib"]["h2"],
            ),
        ),
        Row::info(
            "HBONE over QUIC vs HTTP/2: 1 KiB req/resp, 16 connections, p50",
            ratio(&q["rr_16"]["h3"]["p50_us"], &q["rr_16"]["h2"]["p50_us"]),
        ),
        Row::info(
            "HBONE over QUIC vs HTTP/2: 1 KiB req/resp, 16 connections, requests/s",
            ratio(
                &q["rr_16"]["h3"]["requests_per_s"],
                &q["rr_16"]["h2"]["requests_per_s"],
            ),
        ),
        Row::info(
            "carried UDP over QUIC vs HTTP/2: datagrams echoed/s, 16 flows",
            ratio(
                &q["udp_16"]["h3"]["requests_per_s"],
                &q["udp_16"]["h2"]["requests_per_s"],
            ),
        ),
    ]
}

/// veil against Istio's ztunnel, measured in the same rounds (issue 14's targets); none when it was
/// not measured.
fn upstream_rows(r: &Value) -> Vec<Row> {
    let u = &r["upstream"];
    if !u.is_object() {
        return Vec::new();
    }
    let (t, l, c) = (&r["throughput"], &r["latency"], &r["connections"]);
    let ratio = |veil: f64, istio: f64| veil / istio;
    let x = |v: f64| format!("{v:.2}×");
    let one = ratio(f(&t["1"]["mesh_gbit_per_s"]), f(&u["throughput"]["1"]));
    let four = ratio(f(&t["4"]["mesh_gbit_per_s"]), f(&u["throughput"]["4"]));
    let rps16 = ratio(
        f(&l["16"]["mesh"]["requests_per_s"]),
        f(&u["latency"]["16"]["requests_per_s"]),
    );
    let p99_16 = ratio(
        f(&l["16"]["mesh"]["p99_us"]),
        f(&u["latency"]["16"]["p99_us"]),
    );
    let p50_1 = ratio(
        f(&l["1"]["mesh"]["p50_us"]),
        f(&u["latency"]["1"]["p50_us"]),
    );
    let cps = ratio(
        f(&c["mesh"]["connections_per_s"]),
        f(&u["connections"]["connections_per_s"]),
    );
    let conn_p50 = ratio(f(&c["mesh"]["p50_us"]), f(&u["connections"]["p50_us"]));
    // Istio's ztunnel takes no shortcut between pods of one node: its same-node traffic is an HBONE
    // tunnel like any other (here through two ztunnels, one per pod: a thread each, where one
    // node's ztunnel would share its threads between both ends).
    let local = |streams: &str| {
        ratio(
            f(&t[streams]["same_node"]["mesh_gbit_per_s"]),
            f(&u["throughput"][streams]),
        )
    };
    let (local_one, local_four) = (local("1"), local("4"));
    let gib = ratio(
        f(&r["cpu"]["ztunnel_seconds_per_gib"]),
        f(&u["cpu"]["ztunnel_seconds_per_gib"]),
    );
    let per_10k = ratio(
        f(&r["cpu"]["ztunnel_seconds_per_10k_requests"]),
        f(&u["cpu"]["ztunnel_seconds_per_10k_requests"]),
    );
    let peak = ratio(f(&u["veil_rss_peak_bytes"]), f(&u["rss_peak_bytes"]));
    let after = ratio(f(&u["veil_rss_after_bytes"]), f(&u["rss_after_bytes"]));
    let idle = ratio(
        f(&r["memory"]["idle_start_bytes"][0]).max(f(&r["memory"]["idle_start_bytes"][1])),
        f(&u["rss_idle_bytes"]),
    );
    vec![
        Row::goal(
            "throughput, 1 stream, vs Istio's ztunnel",
            x(one),
            "≥ 1.3×",
            one >= 1.3,
        ),
        Row::goal(
            "throughput, 4 streams, vs Istio's ztunnel",
            x(four),
            "≥ 1.5×",
            four >= 1.5,
        ),
        Row::goal(
            "same-node throughput, 1 stream, vs Istio's ztunnel",
            x(local_one),
            "≥ 2×",
            local_one >= 2.0,
        ),
        Row::goal(
            "same-node throughput, 4 streams, vs Istio's ztunnel",
            x(local_four),
            "≥ 2×",
            local_four >= 2.0,
        ),
        Row::goal(
            "1 KiB req/resp, 16 connections, requests/s vs Istio's ztunnel",
            x(rps16),
            "≥ 1.3×",
            rps16 >= 1.3,
        ),
        Row::goal(
            "1 KiB req/resp p99, 16 connections, vs Istio's ztunnel",
            x(p99_16),
            "≤ 0.8×",
            p99_16 <= 0.8,
        ),
        Row::info(
            "1 KiB req/resp p50, 1 connection, vs Istio's ztunnel",
            x(p50_1),
        ),
        Row::goal(
            "new connections/s vs Istio's ztunnel",
            x(cps),
            "≥ 2×",
            cps >= 2.0,
        ),
        Row::info(
            "new connection, connect to close (5 bytes out, 2 back) p50, vs Istio's ztunnel",
            x(conn_p50),
        ),
        Row::goal(
            "CPU per GiB moved vs Istio's ztunnel",
            x(gib),
            "≤ 0.8×",
            gib <= 0.8,
        ),
        Row::info("CPU per 10k requests vs Istio's ztunnel", x(per_10k)),
        Row::goal(
            "ztunnel RSS under load (peak during the compared runs, larger of the two) vs Istio's ztunnel",
            x(peak),
            "≤ 0.6×",
            peak <= 0.6,
        ),
        Row::info(
            "ztunnel RSS right after the compared runs (largest) vs Istio's ztunnel",
            x(after),
        ),
        Row::info("ztunnel RSS idle vs Istio's ztunnel", x(idle)),
    ]
}

const BEGIN: &str = "<!-- results:begin (written by cargo xtask bench) -->";
const END: &str = "<!-- results:end -->";

/// Replaces the text between the markers of `path` with `results`.
pub(super) fn write_results_section(path: &Path, results: &str) -> anyhow::Result<()> {
    let doc =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{} lacks the results markers", path.display());
    };
    let updated = format!("{}{BEGIN}\n{results}{}", &doc[..start], &doc[end..]);
    std::fs::write(path, updated)?;
    Ok(())
}
