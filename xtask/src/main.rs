//! `cargo xtask`: the project's developer commands, so that no Makefile or shell script has to be
//! kept in step with the code.

#![allow(
    clippy::print_stdout,
    reason = "xtask is a command-line tool that reports to its user"
)]

mod crds;
mod demo;
mod proto;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "veil developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate the checked-in Rust code of the CA's gRPC API from mesh/proto (needs protoc).
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
    /// Build every binary and run the whole test suite, end-to-end tests included (those need root).
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
        Task::Demo { hold } => demo::run(hold),
        Task::Test { args } => test::run(&args),
    }
}
