//! `cargo xtask demo`: the local demo mesh. On a fresh Debian machine, as root, it installs what it
//! needs, builds veil, creates a small cluster in network namespaces, runs the real CA and ztunnels,
//! plays a scenario around a service holding personal data, and prints who reached whom, what
//! decided, what the wire showed, and which identities were verified. Everything it creates is
//! removed at the end; what a crashed earlier run left behind is removed at the start.

use std::process::Command;

use anyhow::{Context as _, bail};
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, skip_unless_root};
use veil_e2e::wire::Capture;

use crate::proto::workspace_root;

/// Tools the demo runs, and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("tcpdump", "tcpdump"),
    ("curl", "curl"),
];

const POLICY: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: user-profile-access, namespace: user-data}
    spec:
      selector: {matchLabels: {app: user-profile-service}}
      action: ALLOW
      rules:
        - from:
            - source:
                principals:
                  - cluster.local/ns/production/sa/account-service
                  - cluster.local/ns/production/sa/admin-service
"#;

/// One call of the scenario.
struct Call {
    from: &'static str,
    to: &'static str,
    why: &'static str,
}

const CALLS: &[Call] = &[
    Call {
        from: "account-service",
        to: "user-profile-service",
        why: "allowed by policy",
    },
    Call {
        from: "admin-service",
        to: "user-profile-service",
        why: "allowed by policy",
    },
    Call {
        from: "reporting",
        to: "user-profile-service",
        why: "not in the policy",
    },
    Call {
        from: "rogue",
        to: "user-profile-service",
        why: "not in the mesh: plaintext",
    },
];

/// A row of the result table.
struct Row {
    call: String,
    result: String,
    decided_by: String,
    wire: String,
    identities: String,
}

pub(crate) fn run(hold: bool) -> anyhow::Result<()> {
    if skip_unless_root("the demo") {
        bail!("the demo builds network namespaces and iptables rules: run it as root");
    }
    install_tools()?;
    build()?;
    let mesh = Mesh::start(spec()).context("starting the demo mesh")?;
    print_topology(&mesh);
    let rows = CALLS
        .iter()
        .enumerate()
        .map(|(i, call)| play(&mesh, i + 1, call))
        .collect::<anyhow::Result<Vec<_>>>()?;
    print_table(&rows);
    if hold {
        println!(
            "\nThe mesh keeps running. Try, for example:\n  ip netns exec {} curl -s http://{}:8080/\nLogs and configuration: {}\nPress Enter to tear it down.",
            mesh.cluster.pod("account-service").netns,
            mesh.cluster.pod("user-profile-service").ip,
            mesh.dir.display()
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    drop(mesh);
    println!("\nDemo mesh removed.");
    Ok(())
}

fn spec() -> MeshSpec {
    MeshSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("account-service", "production", "node-a"),
            PodSpec::new("admin-service", "production", "node-a"),
            PodSpec::new("reporting", "production", "node-a"),
            PodSpec::new("rogue", "default", "node-a").not_enrolled(),
            PodSpec::new("user-profile-service", "user-data", "node-b"),
        ],
        policies: POLICY.into(),
        ..MeshSpec::default()
    }
}

fn install_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("Installing {} with apt-get…", missing.join(", "));
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()?
        .success()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("could not install {} (apt-get failed)", missing.join(", "));
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn build() -> anyhow::Result<()> {
    println!("Building veil…");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--workspace", "--bins"])
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        bail!("the build failed");
    }
    Ok(())
}

fn print_topology(mesh: &Mesh) {
    println!(
        "\nA cluster in network namespaces: a CA, two nodes each running veil-ztunnel, and pods:"
    );
    for pod in &mesh.spec.pods {
        let p = mesh.cluster.pod(&pod.name);
        let state = if pod.enrolled {
            pod.identity()
        } else {
            "NOT in the mesh".to_owned()
        };
        println!(
            "  {:<22} {:<11} {:<7} {:<11} {state}",
            pod.name, pod.namespace, pod.node, p.ip
        );
    }
    println!(
        "Policy: only production/account-service and production/admin-service may reach user-data/user-profile-service."
    );
}

fn play(mesh: &Mesh, n: usize, call: &Call) -> anyhow::Result<Row> {
    let to = mesh.cluster.pod(call.to);
    let log_before = mesh.ztunnel_log(&mesh.pod(call.to).node).len();
    let marker = format!("personal-record-{n}-{}", std::process::id());
    let capture = Capture::start(
        &mesh.cluster.fabric,
        "br0",
        &mesh.dir.join(format!("call-{n}.pcap")),
        &mesh.dir.join(format!("tcpdump-{n}.log")),
    )?;
    let outcome = mesh.curl(
        call.from,
        &format!("http://{}:8080/api/v1/profiles/{marker}", to.ip),
    );
    let wire = capture.finish()?;
    let result = match &outcome {
        Ok((status, _)) => format!("ALLOWED (HTTP {status})"),
        Err(_) => "DENIED (connection refused)".to_owned(),
    };
    let plaintext_packets = wire.packets_on_port(8080);
    let wire_text = if wire.contains(marker.as_bytes()) {
        "PLAINTEXT: the request is readable".to_owned()
    } else if plaintext_packets > 0 {
        format!("plaintext TCP, {plaintext_packets} packets, reset before any data")
    } else if wire.packets_on_port(15008) > 0 {
        "only TLS 1.3 (HBONE :15008)".to_owned()
    } else {
        "nothing".to_owned()
    };
    let log = mesh.ztunnel_log(&mesh.pod(call.to).node);
    let event = log[log_before..]
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "veil::access");
    let field = |key: &str| {
        event
            .as_ref()
            .and_then(|v| v[key].as_str())
            .unwrap_or("-")
            .to_owned()
    };
    let decided_by = match field("policy").as_str() {
        "-" if field("reason").contains("STRICT") => "STRICT mTLS".to_owned(),
        "-" => format!("no policy ({})", call.why),
        policy => format!("{policy} ({})", call.why),
    };
    let identities = match field("source").as_str() {
        "-" => format!("none: plaintext from {}", field("source_ip")),
        source => format!("{} -> {}", short(source), short(&field("destination"))),
    };
    Ok(Row {
        call: format!("{n}. {} -> {}", call.from, call.to),
        result,
        decided_by,
        wire: wire_text,
        identities,
    })
}

/// `spiffe://cluster.local/ns/x/sa/y` → `ns/x/sa/y`, to keep the table narrow.
fn short(id: &str) -> &str {
    id.strip_prefix("spiffe://cluster.local/").unwrap_or(id)
}

fn print_table(rows: &[Row]) {
    let headers = [
        "call",
        "result",
        "decided by",
        "on the wire",
        "verified identities (source -> destination)",
    ];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.call.as_str(),
                &r.result,
                &r.decided_by,
                &r.wire,
                &r.identities,
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: [&str; 5]| {
        let parts: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        println!("  {}", parts.join("  ").trim_end());
    };
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!();
    line(headers);
    line([&dashes[0], &dashes[1], &dashes[2], &dashes[3], &dashes[4]].map(String::as_str));
    for c in cells {
        line(c);
    }
}
