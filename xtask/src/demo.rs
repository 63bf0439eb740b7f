//! `cargo xtask demo`: the local demo mesh. On a fresh Debian machine, as root, it installs what it
//! needs, builds veil, creates a small cluster in network namespaces, runs the real CA and ztunnels,
//! plays a scenario around a service holding personal data, and prints who reached whom, what
//! decided, what the wire showed, and which identities were verified. Everything it creates is
//! removed at the end; what a crashed earlier run left behind is removed at the start.

use anyhow::{Context as _, bail};
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, skip_unless_root};
use veil_e2e::wire::Capture;

use crate::setup::{build, install_tools};

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

/// The service holding personal data, behind the `user-data` waypoint.
const VIP: &str = "10.96.0.20";

const POLICY: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: user-profile-access, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: user-profile-service}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
          to: [{operation: {methods: [GET], paths: [/api/v1/profiles/*]}}]
        - from: [{source: {principals: [cluster.local/ns/production/sa/admin-service]}}]
          to: [{operation: {methods: [GET, PUT], paths: [/api/v1/profiles/*]}}]
"#;

/// One call of the scenario.
struct Call {
    from: &'static str,
    method: &'static str,
    /// Through the service (and so the waypoint), or to the pod's own address.
    via_service: bool,
}

const CALLS: &[Call] = &[
    Call {
        from: "account-service",
        method: "GET",
        via_service: true,
    },
    Call {
        from: "account-service",
        method: "PUT",
        via_service: true,
    },
    Call {
        from: "admin-service",
        method: "PUT",
        via_service: true,
    },
    Call {
        from: "reporting",
        method: "GET",
        via_service: true,
    },
    Call {
        from: "reporting",
        method: "GET",
        via_service: false,
    },
    Call {
        from: "rogue",
        method: "GET",
        via_service: false,
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
    install_tools(TOOLS)?;
    build(false)?;
    let mesh = Mesh::start(spec()).context("starting the demo mesh")?;
    print_topology(&mesh);
    let mut rows = CALLS
        .iter()
        .enumerate()
        .map(|(i, call)| play(&mesh, i + 1, call))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The waypoint goes away: traffic bound to it fails closed; nothing goes around it.
    let mut mesh = mesh;
    mesh.stop_waypoint("waypoint");
    let served_before = mesh
        .app_log("user-profile-service")
        .matches("http from")
        .count();
    let call = Call {
        from: "admin-service",
        method: "GET",
        via_service: true,
    };
    let mut row = play(&mesh, rows.len() + 1, &call)?;
    let served_after = mesh
        .app_log("user-profile-service")
        .matches("http from")
        .count();
    row.call.push_str(" [waypoint stopped]");
    row.decided_by = format!(
        "no waypoint: fails closed, {} request(s) reached the service",
        served_after - served_before
    );
    rows.push(row);
    print_table(&rows);
    if hold {
        println!(
            "\nThe mesh keeps running. Try, for example:\n  ip netns exec {} curl -s http://{}/api/v1/profiles/1\nLogs and configuration: {}\nPress Enter to tear it down.",
            mesh.cluster.pod("account-service").netns,
            VIP,
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
        services: vec![ServiceSpec {
            name: "user-profile-service".into(),
            namespace: "user-data".into(),
            vip: VIP.into(),
            selects: "user-profile-service".into(),
            ports: vec![(80, 8080)],
            udp_ports: Vec::new(),
        }],
        waypoints: vec![WaypointSpec {
            name: "waypoint".into(),
            namespace: "user-data".into(),
            node: "node-b".into(),
            args: vec![],
        }],
        policies: POLICY.into(),
        ..MeshSpec::default()
    }
}

fn print_topology(mesh: &Mesh) {
    let control = if mesh.controller.is_some() {
        "a CA, a controller serving the mesh over xDS, two nodes each running veil-ztunnel on it, and a waypoint on it for user-data"
    } else {
        "a CA, two nodes each running veil-ztunnel, and a waypoint for user-data"
    };
    println!("\nA cluster in network namespaces: {control}, and pods:");
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
        "Namespace user-data is behind waypoint user-data/waypoint. Policy on user-profile-service ({VIP}):"
    );
    println!(
        "  account-service may GET /api/v1/profiles/*; admin-service may GET and PUT it; nothing else is allowed."
    );
}

fn play(mesh: &Mesh, n: usize, call: &Call) -> anyhow::Result<Row> {
    let profile = mesh.cluster.pod("user-profile-service");
    let (target, to) = if call.via_service {
        (format!("{VIP}:80"), "user-profile-service")
    } else {
        (
            format!("{}:8080", profile.ip),
            "user-profile-service's pod address",
        )
    };
    let ztunnel_before = mesh.ztunnel_log("node-b").len();
    let waypoint_before = mesh.waypoint_log("waypoint").len();
    let marker = format!("personal-record-{n}-{}", std::process::id());
    let capture = Capture::start(
        &mesh.cluster.fabric,
        "br0",
        &mesh.dir.join(format!("call-{n}.pcap")),
        &mesh.dir.join(format!("tcpdump-{n}.log")),
    )?;
    let url = format!("http://{target}/api/v1/profiles/{marker}");
    let outcome = mesh.curl_with(call.from, &["-X", call.method], &url);
    let wire = capture.finish()?;
    let result = match &outcome {
        Ok((status, _)) if *status < 400 => format!("ALLOWED (HTTP {status})"),
        Ok((status, _)) => format!("DENIED (HTTP {status})"),
        Err(_) => "DENIED (connection refused)".to_owned(),
    };
    let plaintext_packets = wire.packets_on_port(8080) + wire.packets_on_port(80);
    let wire_text = if wire.contains(marker.as_bytes()) {
        "PLAINTEXT: the request is readable".to_owned()
    } else if plaintext_packets > 0 {
        format!("plaintext TCP, {plaintext_packets} packets, reset before any data")
    } else if wire.packets_on_port(15008) > 0 {
        "only TLS 1.3 (HBONE :15008)".to_owned()
    } else {
        "nothing".to_owned()
    };
    // The decision is in the waypoint's access log (L7), or else the destination ztunnel's.
    let events = |log: &str, from: usize| -> Option<serde_json::Value> {
        log.get(from..)?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "veil::access")
    };
    let event = events(&mesh.waypoint_log("waypoint"), waypoint_before)
        .or_else(|| events(&mesh.ztunnel_log("node-b"), ztunnel_before));
    let field = |key: &str| {
        event
            .as_ref()
            .and_then(|v| {
                v[key]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| v.get(key).map(|x| x.to_string()))
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let decided_by = match (field("policy").as_str(), field("rule").as_str()) {
        ("-", _) if field("reason").contains("STRICT") => {
            "ztunnel: STRICT mTLS refuses plaintext".to_owned()
        }
        ("-", _) => "-".to_owned(),
        (policy, "-") => format!("waypoint: {policy}, no rule matches"),
        (policy, rule) => format!("waypoint: {policy}, rule {rule}"),
    };
    let identities = match (event.is_some(), field("source").as_str()) {
        (false, _) => "-".to_owned(),
        (true, "-") => format!("none: plaintext from {}", field("source_ip")),
        (true, source) => format!("{} -> {}", short(source), field("destination")),
    };
    Ok(Row {
        call: format!("{n}. {} {} {to}", call.from, call.method),
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
