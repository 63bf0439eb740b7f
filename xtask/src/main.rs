//! `cargo xtask`: the project's developer commands, so that no Makefile or shell script has to be
//! kept in step with the code.

#![allow(
    clippy::print_stdout,
    reason = "xtask is a command-line tool that reports to its user"
)]

mod bench;
mod charts;
mod crds;
mod demo;
mod fuzz;
mod image;
mod layout;
mod proto;
mod setup;
mod test;

use clap::{Parser, Subcommand};

/// Bytes in MiB, as the reports print memory.
fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

#[derive(Parser)]
#[command(about = "veil developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the checked-in Rust code of the CA's gRPC API from mesh/proto (pure
    /// Rust: no protoc needed).
    GenProto {
        /// Fail instead of writing when the checked-in code differs from what protoc generates.
        #[arg(long)]
        check: bool,
    },
    /// Write the CustomResourceDefinitions generated from crd/src into charts/veil/crds.
    GenCrds,
    /// Set up and run the local demo mesh in network namespaces (needs root; installs missing tools
    /// with apt-get).
    Demo {
        /// Keep the mesh running after the scenario until Enter is pressed.
        #[arg(long)]
        hold: bool,
    },
    /// Lint and render the Helm charts (Helm v4 SDK), validate the manifests for Kubernetes 1.33,
    /// check that broken values are refused, validate the example custom resources (needs python3
    /// with venv; installs pinned tools from PyPI into target/chart-tools).
    CheckCharts {
        /// Also render CHART with this values file (CHART=FILE, e.g. veil=my-values.yaml).
        #[arg(long = "values", value_name = "CHART=FILE")]
        values: Vec<String>,
    },
    /// Measure the data path against the bare wire (release build, needs root): throughput,
    /// latency, connection rate, CPU, memory, the waypoint, a policy decision; writes
    /// docs/benchmarks.json and the results section of docs/benchmarks.md.
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value = "5")]
        seconds: f64,
        /// Rounds of every comparison (medians are reported).
        #[arg(long, default_value = "3")]
        rounds: usize,
        /// Run only these sections (for tuning; nothing is written): throughput, latency,
        /// connections, waypoint, memory, policy.
        #[arg(long, value_delimiter = ',', value_parser = bench::SECTIONS)]
        only: Vec<String>,
        /// Istio's ztunnel binary: every data-path comparison also runs through it, in the same
        /// round (default: $VEIL_UPSTREAM_ZTUNNEL, else ../shared/upstream/ztunnel when there).
        #[arg(long, value_name = "PATH")]
        upstream_ztunnel: Option<std::path::PathBuf>,
        /// Measure ztunnel as linked by default, without laying its code out from a profile
        /// (the layout needs valgrind and adds a profiled run and a relink to the build).
        #[arg(long)]
        no_layout: bool,
        /// Worker threads of every ztunnel, veil's and Istio's alike (default: veil's own, half
        /// the cores and at most 2, and 1 for Istio's). A run with it writes nothing.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        worker_threads: Option<u16>,
    },
    /// Build the fuzz targets in fuzz/ (cargo-fuzz, installed when missing) and run each from its
    /// seed corpus; fails on any crash, panic or hang.
    Fuzz {
        /// Targets to run (all when none is given); `cargo fuzz list` names them.
        targets: Vec<String>,
        /// Seconds per target (default 30 when --runs is not given).
        #[arg(long)]
        seconds: Option<u64>,
        /// Executions per target.
        #[arg(long)]
        runs: Option<u64>,
    },
    /// Build the OCI image of every binary (static release build, FROM scratch with buildah, no
    /// registry), smoke-test it, and write target/image/veil-TAG.oci.tar (needs root and buildah).
    Image {
        /// The image's tag.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        /// Use the static binaries already built (target/<host>/release) instead of building.
        #[arg(long)]
        no_build: bool,
        /// Where e2e-app and veil-bench are (any build of them), for the profiled run that lays
        /// ztunnel's code out; built (debug) when absent.
        #[arg(long, value_name = "DIR", default_value = "target/debug")]
        profile_tools: std::path::PathBuf,
    },
    /// Build every binary and run the whole test suite, end-to-end tests included (those need root),
    /// then the chart checks and a short smoke run of every fuzz target (without a filter).
    Test {
        /// Extra arguments for the test runner (e.g. a test-name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::GenProto { check } => proto::generate(check),
        Task::GenCrds => crds::generate(),
        Task::CheckCharts { values } => charts::check(&values),
        Task::Bench {
            seconds,
            rounds,
            only,
            upstream_ztunnel,
            no_layout,
            worker_threads,
        } => bench::run(bench::Options {
            seconds,
            rounds: rounds.max(1),
            only,
            upstream_ztunnel,
            layout: !no_layout,
            worker_threads,
        }),
        Task::Demo { hold } => demo::run(hold),
        Task::Fuzz {
            targets,
            seconds,
            runs,
        } => fuzz::run(
            &targets,
            fuzz::Budget {
                runs,
                seconds: seconds.or(runs.is_none().then_some(30)),
            },
        ),
        Task::Image {
            tag,
            no_build,
            profile_tools,
        } => image::run(&tag, (!no_build).then_some(profile_tools.as_path())).map(drop),
        Task::Test { args } => test::run(&args),
    }
}
