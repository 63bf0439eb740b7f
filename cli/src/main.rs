//! `veil`: the mesh's command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use veil_cli::explain::{self, Answer, From, Question, Request, To};
use veil_cli::{check, config, convert, live, mesh_file};
use veil_mesh::discovery::MeshSettings;
use veil_waypoint::canon::Normalization;
use veil_ztunnel::context::UnknownDestination;
use veil_ztunnel::outbound::Transport;

/// veil's command line.
#[derive(Parser)]
#[command(name = "veil", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Would SOURCE reach DESTINATION on PORT (with this HTTP request)? Which proxies, policies and
    /// rules decide. Exit status: 0 allowed (on every endpoint it may reach), 1 denied (on at least
    /// one), 2 the question or the mesh could not be read.
    Explain(ExplainArgs),
    /// What one ztunnel or waypoint holds: workloads, services, policies, certificates and
    /// connections, read from its admin endpoint (or a saved /config_dump). Exit status: 0 read,
    /// 2 could not be read.
    Config(ConfigArgs),
    /// Is veil installed and healthy? The API server, veil's CRDs, the CA and the controller, a
    /// ready ztunnel on every node with valid certificates, the CA reachable, every policy
    /// accepted. With --pre, before installing: can veil be installed here, by you? Exit status:
    /// 0 healthy (warnings allowed), 1 a check failed, 2 the cluster could not be asked.
    Check(CheckArgs),
    /// Policies: `veil policy convert` (Istio's to veil's).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    options: check::Options,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Istio AuthorizationPolicy and PeerAuthentication YAML to veil's: the converted objects on
    /// stdout, a report of everything that did not carry over unchanged on stderr. Exit status: 0
    /// nothing lost, 1 something changed or was not carried over, 2 the input could not be read.
    Convert(ConvertArgs),
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// The Istio objects (YAML documents, or lists as `kubectl get -o yaml` prints them); `-` for
    /// stdin.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Istio's root namespace (its mesh-wide policies).
    #[arg(long, default_value = "istio-system")]
    root_namespace_from: String,
    /// veil's root namespace, where mesh-wide policies move.
    #[arg(long, default_value = "veil-system")]
    root_namespace: String,
    /// The report's format (the converted objects are always YAML).
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// What to show.
    #[arg(value_enum, default_value = "all")]
    section: config::Section,
    /// The proxy's admin address (`kubectl port-forward -n veil-system <ztunnel or waypoint pod>
    /// 15000` makes it reachable here).
    #[arg(
        long,
        default_value = "http://127.0.0.1:15000",
        conflicts_with = "file"
    )]
    admin: String,
    /// A saved /config_dump to read instead.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Only what concerns this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The mesh, as a local mesh file (docs/local-mesh.md).
    #[arg(long, short = 'f', required_unless_present = "live")]
    mesh: Option<PathBuf>,
    /// The live mesh instead: the controller's admin address (`http://127.0.0.1:15000` after
    /// `kubectl port-forward -n veil-system deployment/veil-controller 15000`). Its trust domain
    /// and root namespace are the controller's.
    #[arg(long, conflicts_with_all = ["mesh", "with_policies", "trust_domain", "root_namespace"])]
    live: Option<String>,
    /// Further policy files (YAML documents or lists of AuthorizationPolicy/PeerAuthentication),
    /// evaluated as if added to the mesh: try a policy before applying it.
    #[arg(long = "with-policy")]
    with_policies: Vec<PathBuf>,
    /// The client: `namespace/workload`, or `sa:namespace/service-account`.
    #[arg(long)]
    from: String,
    /// The destination: `namespace/service`, `workload:namespace/name`, or an address.
    #[arg(long)]
    to: String,
    /// The port dialled (a service's port for a service).
    #[arg(long)]
    port: u16,
    /// HTTP method: the connection carries this request (without it: a connection that is not HTTP).
    #[arg(long)]
    method: Option<String>,
    /// HTTP path and query, as the client sends them.
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP host (default: the service's cluster name).
    #[arg(long)]
    host: Option<String>,
    /// HTTP request headers, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The waypoints' path normalization (as their `--path-normalization`).
    #[arg(long, value_enum, default_value = "MERGE_SLASHES")]
    path_normalization: Normalization,
    /// What ztunnels do with destinations outside the mesh (as their `--unknown-destination`).
    #[arg(long, value_enum, default_value = "passthrough")]
    unknown_destination: UnknownDestination,
    /// A UDP flow instead of a TCP connection, as ztunnels carrying UDP (`--carry-udp`) decide
    /// it: by the service's UDP ports, never through a waypoint or out of the mesh.
    #[arg(long, conflicts_with_all = ["method", "host", "headers"])]
    udp: bool,
    /// The mesh's trust domain (as the proxies' `--trust-domain`; default `cluster.local`).
    #[arg(long)]
    trust_domain: Option<String>,
    /// The namespace whose policies apply mesh-wide (as the proxies' `--root-namespace`; default
    /// `veil-system`).
    #[arg(long)]
    root_namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(args) => match run_config(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veil config: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Check(args) => run_check(&args),
        Command::Policy(PolicyCommand::Convert(args)) => match run_convert(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("veil policy convert: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Explain(args) => match run_explain(&args) {
            Ok(answer) if answer.allowed => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("veil explain: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn run_explain(args: &ExplainArgs) -> anyhow::Result<Answer> {
    let question = question(args)?;
    let answer = match (&args.live, &args.mesh) {
        (Some(admin), _) => {
            let live = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(live::fetch(admin))?;
            if !live.refused.is_empty() {
                eprintln!(
                    "veil explain: the proxies refuse {} of the controller's resources (each fails closed there, and in this answer):",
                    live.refused.len()
                );
                for r in &live.refused {
                    eprintln!("  {}: {}", r.name, r.reason);
                }
            }
            let views = explain::Views {
                ztunnel: &live.ztunnel,
                waypoint: &live.waypoint,
            };
            explain::explain_in(views, &question)
        }
        (None, Some(mesh)) => {
            let defaults = MeshSettings::default();
            let settings = MeshSettings {
                trust_domain: args
                    .trust_domain
                    .clone()
                    .unwrap_or(defaults.trust_domain),
                root_namespace: args
                    .root_namespace
                    .clone()
                    .unwrap_or(defaults.root_namespace),
            };
            let state = mesh_file::load(mesh, &args.with_policies, &settings)?;
            explain::explain(&state, &question)
        }
        (None, None) => anyhow::bail!("give the mesh: -f FILE or --live ADMIN"),
    }
    .map_err(anyhow::Error::msg)?;
    let text = match args.output {
        Output::Table => veil_cli::table(&answer),
        Output::Json => serde_json::to_string_pretty(&answer)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&answer)?,
    };
    write_out(&text)?;
    Ok(answer)
}

/// The question the flags ask.
fn question(args: &ExplainArgs) -> anyhow::Result<Question> {
    Ok(Question {
        from: parse_from(&args.from)?,
        to: parse_to(&args.to)?,
        port: args.port,
        http: args
            .method
            .as_ref()
            .map(|method| -> anyhow::Result<Request> {
                Ok(Request {
                    method: method.clone(),
                    path: args.path.clone(),
                    host: args.host.clone(),
                    headers: args
                        .headers
                        .iter()
                        .map(|h| {
                            h.split_once(':')
                                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                                .with_context(|| format!("header {h:?} is not `name: value`"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                })
            })
            .transpose()?,
        normalization: args.path_normalization,
        unknown: args.unknown_destination,
        transport: if args.udp {
            Transport::Udp
        } else {
            Transport::Tcp
        },
    })
}

fn run_config(args: &ConfigArgs) -> anyhow::Result<()> {
    let mut dump = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            config::read(&text).with_context(|| format!("{}", path.display()))?
        }
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(config::fetch(&args.admin))?,
    };
    if let Some(namespace) = &args.namespace {
        config::only_namespace(&mut dump, namespace);
    }
    let text = match args.output {
        Output::Table => config::table(&dump, args.section, std::time::SystemTime::now()),
        Output::Json => serde_json::to_string_pretty(&config::select(&dump, args.section)?)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&config::select(&dump, args.section)?)?,
    };
    write_out(&text)
}

fn run_check(args: &CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("veil check: {e}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(async {
        match kube::Config::infer().await {
            Ok(config) => check::check(config, &args.options).await,
            Err(e) => check::Report::unreachable(&args.options.namespace, &e),
        }
    });
    let text = match args.output {
        Output::Table => Ok(check::table(&report)),
        Output::Json => serde_json::to_string_pretty(&report)
            .map(|j| j + "\n")
            .map_err(anyhow::Error::from),
        Output::Yaml => serde_saphyr::to_string(&report).map_err(anyhow::Error::from),
    };
    if let Err(e) = text.and_then(|t| write_out(&t)) {
        eprintln!("veil check: writing the report: {e:#}");
        return ExitCode::from(2);
    }
    ExitCode::from(report.exit_code())
}

/// Converts; `Ok(true)` when nothing was lost.
fn run_convert(args: &ConvertArgs) -> anyhow::Result<bool> {
    let input = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let options = convert::Options {
        root_namespace_from: args.root_namespace_from.clone(),
        root_namespace_to: args.root_namespace.clone(),
    };
    let conversion = convert::convert(&input, &options)?;
    let report = match args.output {
        Output::Table => convert::report_table(&conversion),
        Output::Json => {
            serde_json::to_string_pretty(&serde_json::json!({"findings": conversion.findings}))?
                + "\n"
        }
        Output::Yaml => {
            serde_saphyr::to_string(&serde_json::json!({"findings": conversion.findings}))?
        }
    };
    write_out(&conversion.objects_yaml())?;
    std::io::stderr()
        .write_all(report.as_bytes())
        .context("writing the report")?;
    Ok(conversion.is_lossless())
}

/// Writes the command's output to stdout; a failed write is an error.
fn write_out(text: &str) -> anyhow::Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing the answer")
}

fn namespaced(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => bail!("{what} {s:?} is not namespace/name"),
    }
}

fn parse_from(s: &str) -> anyhow::Result<From> {
    Ok(match s.strip_prefix("sa:") {
        Some(rest) => {
            let (namespace, name) = namespaced(rest, "service account")?;
            From::ServiceAccount { namespace, name }
        }
        None => {
            let (namespace, name) = namespaced(s.strip_prefix("workload:").unwrap_or(s), "source")?;
            From::Workload { namespace, name }
        }
    })
}

fn parse_to(s: &str) -> anyhow::Result<To> {
    if let Ok(ip) = s.parse() {
        return Ok(To::Address(ip));
    }
    Ok(match s.strip_prefix("workload:") {
        Some(rest) => {
            let (namespace, name) = namespaced(rest, "workload")?;
            To::Workload { namespace, name }
        }
        None => {
            let (namespace, name) = namespaced(s.strip_prefix("svc:").unwrap_or(s), "service")?;
            To::Service { namespace, name }
        }
    })
}
