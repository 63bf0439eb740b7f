//! A small cluster in Linux network namespaces: a fabric (one bridge) joining a control-plane
//! namespace and the nodes; each node a router with a bridge for its pods; each pod a namespace with
//! one interface. Everything is torn down on drop, and namespaces left by a crashed earlier run are
//! removed on start.
//!
//! Addresses (only inside these namespaces): fabric 10.10.0.0/24 (control plane .2, node i .10+i),
//! pods of node i 10.(20+i).0.0/24 with the node's bridge at .1. A dual-stack cluster also has
//! IPv6 (unique local): fabric fd10:10::/64, pods of node i fd10:(20+i)::/64, each host at the same
//! number as in IPv4.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

/// Prefix of every namespace the harness creates.
pub const PREFIX: &str = "ve2e";

/// A node.
#[derive(Clone, Debug)]
pub struct Node {
    /// Name (`node-a`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address on the fabric.
    pub ip: Ipv4Addr,
    index: u8,
    pods: u8,
}

/// A pod.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack cluster.
    pub ip6: Option<Ipv6Addr>,
}

impl Pod {
    /// The path of its namespace, as ztunnel opens it.
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns)
    }
}

/// The cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Prefix of its namespaces.
    pub id: String,
    /// The fabric namespace (the inter-node "wire").
    pub fabric: String,
    /// The control-plane namespace (the CA).
    pub control_plane: String,
    /// Its address.
    pub control_plane_ip: Ipv4Addr,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Whether hosts have IPv6 addresses too.
    pub dual_stack: bool,
    created: Vec<String>,
}

/// The IPv6 address of host `host` in network `net` (as IPv4's `10.net.0.host`).
fn v6(net: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, u16::from(net), 0, 0, 0, 0, 0, u16::from(host))
}

/// Runs `ip` with `args`; fails with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command inside namespace `netns`.
pub fn exec(netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
        .with_context(|| format!("running {argv:?} in {netns}"))
}

/// Runs `command` with `input` on its standard input; returns its status and output.
pub fn output_with_input(command: &mut Command, input: &[u8]) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    child
        .stdin
        .take()
        .context("the child's standard input")?
        .write_all(input)
        .with_context(|| format!("writing to {:?}", command.get_program()))?;
    Ok(child.wait_with_output()?)
}

fn sysctl(netns: &str, setting: &str) -> anyhow::Result<()> {
    let out = exec(netns, &["sysctl", "-q", "-w", setting])?;
    if !out.status.success() {
        bail!(
            "sysctl {setting} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    /// Creates the fabric, the control plane and `nodes`.
    pub fn new(nodes: &[&str]) -> anyhow::Result<Self> {
        Self::with_families(nodes, false)
    }

    /// [`Cluster::new`]; with `dual_stack`, every host has an IPv6 address too.
    pub fn with_families(nodes: &[&str], dual_stack: bool) -> anyhow::Result<Self> {
        remove_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = Self {
            fabric: format!("{id}-fab"),
            control_plane: format!("{id}-cp"),
            control_plane_ip: Ipv4Addr::new(10, 10, 0, 2),
            id,
            nodes: Vec::new(),
            pods: Vec::new(),
            dual_stack,
            created: Vec::new(),
        };
        let fabric = cluster.fabric.clone();
        cluster.add_netns(&fabric)?;
        ip(&["-n", &fabric, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &fabric, "link", "set", "br0", "up"])?;
        let cp = cluster.control_plane.clone();
        cluster.add_netns(&cp)?;
        cluster.attach_to_fabric(&cp, "vcp", cluster.control_plane_ip)?;
        for (i, name) in nodes.iter().enumerate() {
            cluster.add_node(name, u8::try_from(i)?)?;
        }
        // Each node and the control plane route the other nodes' pod networks through the fabric.
        for b in &cluster.nodes {
            let cidr = format!("10.{}.0.0/24", 20 + b.index);
            let via = b.ip.to_string();
            for a in cluster.nodes.iter().filter(|a| a.index != b.index) {
                ip(&["-n", &a.netns, "route", "add", &cidr, "via", &via])?;
            }
            ip(&[
                "-n",
                &cluster.control_plane,
                "route",
                "add",
                &cidr,
                "via",
                &via,
            ])?;
            if dual_stack {
                let cidr = format!("{}/64", v6(20 + b.index, 0));
                let via = v6(10, 10 + b.index).to_string();
                for a in cluster.nodes.iter().filter(|a| a.index != b.index) {
                    ip(&["-n", &a.netns, "-6", "route", "add", &cidr, "via", &via])?;
                }
            }
        }
        Ok(cluster)
    }

    /// Gives `dev` in `netns` the IPv6 address `addr/64`, usable at once (no duplicate address
    /// detection: the harness hands out each address once).
    fn add_v6(netns: &str, dev: &str, addr: Ipv6Addr) -> anyhow::Result<()> {
        ip(&[
            "-n",
            netns,
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ])
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        // Interfaces made here from now on skip duplicate address detection for their link-local
        // addresses too: neighbour discovery waits on it (a second or two), so a node's first
        // IPv6 packets would otherwise sit queued, long enough to fail a QUIC dial's 1 s timeout.
        sysctl(name, "net.ipv6.conf.default.accept_dad=0")?;
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    fn attach_to_fabric(&self, netns: &str, port: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        ip(&[
            "-n",
            netns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.fabric,
        ])?;
        ip(&[
            "-n",
            &self.fabric,
            "link",
            "set",
            port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        if self.dual_stack {
            Self::add_v6(netns, "eth0", v6(10, addr.octets()[3]))?;
        }
        ip(&["-n", netns, "link", "set", "eth0", "up"])
    }

    fn add_node(&mut self, name: &str, index: u8) -> anyhow::Result<()> {
        let netns = format!("{}-{name}", self.id);
        self.add_netns(&netns)?;
        let node_ip = Ipv4Addr::new(10, 10, 0, 10 + index);
        self.attach_to_fabric(&netns, &format!("vn{index}"), node_ip)?;
        sysctl(&netns, "net.ipv4.ip_forward=1")?;
        ip(&["-n", &netns, "link", "add", "cbr0", "type", "bridge"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("10.{}.0.1/24", 20 + index),
            "dev",
            "cbr0",
        ])?;
        if self.dual_stack {
            sysctl(&netns, "net.ipv6.conf.all.forwarding=1")?;
            Self::add_v6(&netns, "cbr0", v6(20 + index, 1))?;
        }
        ip(&["-n", &netns, "link", "set", "cbr0", "up"])?;
        self.nodes.push(Node {
            name: name.to_owned(),
            netns,
            ip: node_ip,
            index,
            pods: 0,
        });
        Ok(())
    }

    /// Adds pod `name` on `node`.
    pub fn add_pod(&mut self, name: &str, node: &str) -> anyhow::Result<Pod> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node}"))?;
        n.pods += 1;
        let (index, k, node_ns) = (n.index, n.pods, n.netns.clone());
        let netns = format!("{}-{name}", self.id);
        self.add_netns(&netns)?;
        let pod_ip = Ipv4Addr::new(10, 20 + index, 0, 10 + k);
        let port = format!("vp{k}");
        ip(&[
            "-n", &netns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
            &node_ns,
        ])?;
        ip(&["-n", &node_ns, "link", "set", &port, "master", "cbr0", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{}.0.1", 20 + index),
        ])?;
        let ip6 = if self.dual_stack {
            let pod_ip6 = v6(20 + index, 10 + k);
            Self::add_v6(&netns, "eth0", pod_ip6)?;
            let gateway = v6(20 + index, 1).to_string();
            ip(&[
                "-n", &netns, "-6", "route", "add", "default", "via", &gateway,
            ])?;
            Some(pod_ip6)
        } else {
            None
        };
        let pod = Pod {
            name: name.to_owned(),
            node: node.to_owned(),
            netns,
            ip: pod_ip,
            ip6,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for netns in self.created.iter().rev() {
            let _ = ip(&["netns", "del", netns]);
        }
    }
}

/// Cleans up after earlier runs whose process is gone (a crash or a killed test): kills the processes
/// they started, deletes their namespaces and their files.
pub fn remove_stale() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let owner = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
    };
    if let Ok(dirs) = std::fs::read_dir(std::env::temp_dir()) {
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            if owner(&name).is_none_or(alive) {
                continue;
            }
            let pids = std::fs::read_to_string(dir.path().join(crate::process::PID_FILE))
                .unwrap_or_default();
            for pid in pids
                .lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .filter(|p| alive(*p))
            {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            crate::mesh::unpin_all(&dir.path().join("netns"));
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner(&name).is_some_and(|pid| !alive(pid)) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
