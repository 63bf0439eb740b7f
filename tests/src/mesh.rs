//! A running mesh on a [`Cluster`]: the real `veil-ca` in the control-plane namespace, one real
//! `veil-ztunnel` per node, an application in every pod, and the configuration files they share.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};

use crate::cluster::{Cluster, exec};
use crate::controlplane::{
    CONTROLLER_IDENTITY, CONTROLLER_TOKEN, Controller, SERVER_NAME, XDS_PORT, start_controller,
};
use crate::kube::ApiObjects;
use crate::process::Proc;

mod binaries;
mod kubernetes;
mod spec;

pub use binaries::{bin, skip_unless_root, use_binaries_from};
use spec::render;
pub use spec::{ACCOUNT_READS, MeshSpec, PodSpec, ServiceSpec, WaypointSpec};

/// Trust domain of test meshes.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The running mesh.
#[derive(Debug)]
pub struct Mesh {
    /// The namespaces.
    pub cluster: Cluster,
    /// Config files and logs.
    pub dir: PathBuf,
    /// The CA.
    pub ca: Proc,
    /// ztunnels by node.
    pub ztunnels: BTreeMap<String, Proc>,
    /// Applications by pod.
    pub apps: BTreeMap<String, Proc>,
    /// Waypoints by name.
    pub waypoints: BTreeMap<String, Proc>,
    /// The spec it was started from.
    pub spec: MeshSpec,
    /// Kubernetes mode: the API objects, and the fake API server serving them.
    pub api: Option<(ApiObjects, Proc)>,
    /// The controller the ztunnels subscribe to ([`MeshSpec::uses_controller`]).
    pub controller: Option<Controller>,
    mesh_config: PathBuf,
    /// Keep the logs and configuration when dropped (they are kept anyway after a panic).
    pub keep_logs: bool,
}

impl Mesh {
    /// Builds the cluster and starts everything; returns once every ztunnel is ready.
    pub fn start(spec: MeshSpec) -> anyhow::Result<Self> {
        if spec.dual_stack && spec.kubernetes {
            anyhow::bail!(
                "a dual-stack mesh is local mode only: Kubernetes mode's pods have one address"
            );
        }
        let nodes: Vec<&str> = spec.nodes.iter().map(String::as_str).collect();
        let mut cluster = Cluster::with_families(&nodes, spec.dual_stack)?;
        for pod in &spec.pods {
            cluster.add_pod(&pod.name, &pod.node)?;
        }
        for waypoint in &spec.waypoints {
            cluster.add_pod(&waypoint.name, &waypoint.node)?;
        }
        let dir = std::env::temp_dir().join(&cluster.id);
        std::fs::create_dir_all(&dir)?;
        let mesh_config = dir.join("mesh.yaml");
        write_atomically(&mesh_config, &render(&spec, &cluster, &spec.policies))?;

        let mut tokens = String::from("tokens:\n");
        for node in &spec.nodes {
            let token = format!("token-of-{node}-0123456789");
            std::fs::write(dir.join(format!("token-{node}")), &token)?;
            writeln!(
                tokens,
                "  - token: {token}\n    identity: spiffe://{TRUST_DOMAIN}/ns/veil-system/sa/ztunnel\n    node: {node}"
            )?;
        }
        for waypoint in &spec.waypoints {
            let token = format!("token-of-{}-0123456789", waypoint.name);
            std::fs::write(dir.join(format!("token-{}", waypoint.name)), &token)?;
            writeln!(
                tokens,
                "  - token: {token}\n    identity: {}",
                waypoint.identity()
            )?;
        }
        // The controller's, for its own mesh certificate (Kubernetes mode, as the chart runs it).
        std::fs::write(dir.join("token-veil-controller"), CONTROLLER_TOKEN)?;
        writeln!(
            tokens,
            "  - token: {CONTROLLER_TOKEN}\n    identity: {CONTROLLER_IDENTITY}"
        )?;
        for (token, identity) in &spec.extra_tokens {
            writeln!(tokens, "  - token: {token}\n    identity: {identity}")?;
        }
        std::fs::write(dir.join("tokens.yaml"), tokens)?;

        let ca = start_ca(&cluster, &dir, &mesh_config, spec.max_cert_ttl.as_deref())?;
        let mut mesh = Self {
            cluster,
            dir,
            ca,
            ztunnels: BTreeMap::new(),
            apps: BTreeMap::new(),
            waypoints: BTreeMap::new(),
            spec,
            api: None,
            controller: None,
            mesh_config,
            keep_logs: false,
        };
        if mesh.spec.kubernetes {
            mesh.start_api()?;
        }
        if mesh.spec.uses_controller() {
            if !mesh.spec.kubernetes {
                // Pinned where ztunnel scans for running pods, as in Kubernetes mode (above).
                std::fs::create_dir_all(mesh.dir.join("netns"))?;
                for pod in mesh.spec.pods.clone() {
                    mesh.pin(&pod.name)?;
                }
            }
            // In Kubernetes mode as the chart runs it: serving with its mesh certificate.
            let mesh_identity = mesh.spec.kubernetes;
            mesh.controller = Some(start_controller(&mesh, &[], mesh_identity)?);
        }
        for pod in mesh.spec.pods.clone() {
            mesh.start_app(&pod.name)?;
        }
        for waypoint in mesh.spec.waypoints.clone() {
            mesh.start_waypoint(&waypoint.name)?;
        }
        for node in mesh.spec.nodes.clone() {
            if !mesh.spec.without_ztunnel.contains(&node) {
                let haunted = mesh.spec.ghost_pods.iter().any(|g| g.node == node);
                mesh.start_ztunnel_with(&node, !haunted)?;
            }
        }
        Ok(mesh)
    }

    /// Starts (or restarts) the ztunnel of `node` and waits until it is ready.
    pub fn start_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        self.start_ztunnel_with(node, true)
    }

    fn start_ztunnel_with(&mut self, node: &str, wait_ready: bool) -> anyhow::Result<()> {
        if let Some(mut old) = self.ztunnels.remove(node) {
            old.kill();
        }
        self.spawn_ztunnel(node)?;
        if wait_ready {
            self.wait_ready(node, Duration::from_secs(30))
        } else {
            let z = self.ztunnels.get_mut(node).expect("just inserted");
            z.wait_for("veil-ztunnel running", Duration::from_secs(30))
        }
    }

    /// Upgrades `node`'s ztunnel as a DaemonSet rollout with `maxSurge` does: a new one starts
    /// beside the running one (taking its pods over through the handover directory) and is waited
    /// for until ready. The old one is returned still running, for the caller to stop — or, with
    /// `stop_old_first`, already told to stop (SIGTERM) before the new one starts, as when the
    /// kubelet took the old one's readiness answer for the new one's.
    pub fn upgrade_ztunnel(&mut self, node: &str, stop_old_first: bool) -> anyhow::Result<Proc> {
        let old = self
            .ztunnels
            .remove(node)
            .ok_or_else(|| anyhow::anyhow!("no ztunnel runs on {node}"))?;
        let generation = self.dir.join(format!("ztunnel-{node}.log"));
        let n = (1..)
            .find(|n| !generation.with_extension(format!("log.{n}")).exists())
            .expect("a free log name");
        // The old one's log keeps its name; the new one writes beside it.
        std::fs::rename(&generation, generation.with_extension(format!("log.{n}")))?;
        if stop_old_first {
            old.terminate();
            std::thread::sleep(Duration::from_millis(500));
        }
        self.spawn_ztunnel(node)?;
        self.wait_ready(node, Duration::from_secs(30))?;
        Ok(old)
    }

    /// Plays a successor that reads everything `node`'s running ztunnels offer on their handover
    /// sockets and vanishes without saying what it took.
    pub fn vanishing_successor(&self, node: &str) -> anyhow::Result<()> {
        const VANISH: &str = "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\ns.connect(sys.argv[1])\nwhile b'done' not in s.recvmsg(65536, 4096)[0]: pass\n";
        for entry in std::fs::read_dir(self.dir.join(format!("handover-{node}")))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "sock") {
                let out = std::process::Command::new("python3")
                    .args(["-c", VANISH])
                    .arg(&path)
                    .output()?;
                anyhow::ensure!(out.status.success(), "{out:?}");
            }
        }
        Ok(())
    }

    /// Starts a stand-in for `node`'s kubelet probing `targets` every 100 ms (`e2e-app kubelet`).
    pub fn start_kubelet(&self, node: &str, targets: &[String]) -> anyhow::Result<Proc> {
        let app = bin("e2e-app").to_string_lossy().into_owned();
        let mut argv = vec![app.as_str(), "kubelet", "--period-ms", "100"];
        argv.extend(targets.iter().map(String::as_str));
        let log = self.dir.join(format!("kubelet-{node}.log"));
        Proc::spawn(
            &format!("kubelet {node}"),
            Some(&self.cluster.node(node).netns),
            &argv,
            &[],
            &log,
        )
    }

    fn spawn_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        let netns = self.cluster.node(node).netns.clone();
        let ca_address = format!("{}:15012", self.cluster.control_plane_ip);
        let binary = match &self.spec.ztunnel_binary {
            Some(path) => path.clone(),
            None => bin("veil-ztunnel"),
        };
        let mut argv = self.spec.ztunnel_wrapper.clone();
        argv.extend([
            binary.to_string_lossy().into_owned(),
            "--node".into(),
            node.into(),
        ]);
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let mut env = vec![("RUST_LOG", "info")];
        // ztunnel does not watch the API: a Kubernetes-mode mesh always has a controller.
        if self.spec.kubernetes {
            argv.extend([
                "--cni-socket".into(),
                path(self.cni_socket(node)),
                "--ambient-file".into(),
                path(self.ambient_file(node)),
            ]);
        }
        if let Some(controller) = &self.controller {
            argv.extend([
                "--xds-address".into(),
                format!("{}:{XDS_PORT}", self.cluster.control_plane_ip),
                "--xds-server-name".into(),
                SERVER_NAME.into(),
                "--netns-dir".into(),
                path(self.dir.join("netns")),
            ]);
            // In Kubernetes mode the controller serves with its mesh certificate, as the chart
            // runs it; otherwise with a DNS certificate of its own PKI (which Istio's ztunnel needs).
            match &controller.serving_root {
                Some(root) => argv.extend(["--xds-root-cert".into(), path(root.clone())]),
                None => argv.extend(["--xds-identity".into(), CONTROLLER_IDENTITY.into()]),
            }
        } else {
            argv.extend([
                "--mesh-config".into(),
                path(self.mesh_config.clone()),
                "--config-poll-interval".into(),
                "200ms".into(),
            ]);
        }
        argv.extend([
            "--root-cert".into(),
            self.dir
                .join("ca/root-cert.pem")
                .to_string_lossy()
                .into_owned(),
            "--ca-address".into(),
            ca_address,
            "--ca-token-file".into(),
            self.dir
                .join(format!("token-{node}"))
                .to_string_lossy()
                .into_owned(),
            "--log-format".into(),
            "json".into(),
            "--handover-dir".into(),
            path(self.dir.join(format!("handover-{node}"))),
        ]);
        argv.extend(self.spec.ztunnel_args.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        env.extend(
            self.spec
                .ztunnel_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        // A cgroup of its own, as a DaemonSet's container has: the pods' capture rules let out
        // only its sockets (the pods' processes are in the harness's). As in a container, it
        // runs in a cgroup namespace of its own with the hierarchy mounted from there (inside
        // the mount namespace `ip netns exec` makes; its /sys is a fresh one).
        let cgroup = crate::process::new_cgroup(&format!("ztunnel-{node}"))?;
        let container = [
            "unshare",
            "--cgroup",
            "sh",
            "-c",
            r#"mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@""#,
            "sh",
        ];
        let argv: Vec<&str> = container.iter().copied().chain(argv).collect();
        let proc = Proc::spawn_in(
            &format!("ztunnel {node}"),
            Some(&netns),
            &argv,
            &env,
            &self.dir.join(format!("ztunnel-{node}.log")),
            Some(cgroup),
        )?;
        self.ztunnels.insert(node.to_owned(), proc);
        Ok(())
    }

    /// The mesh file the ztunnels, the CA and the controller read (local mode).
    pub fn mesh_config(&self) -> &Path {
        &self.mesh_config
    }

    /// The `nat` rules in pod `pod`'s namespace.
    pub fn nat_rules(&self, pod: &str) -> String {
        self.run_in_pod(pod, &["iptables", "-t", "nat", "-S"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Stops `node`'s ztunnel.
    pub fn stop_ztunnel(&mut self, node: &str) {
        if let Some(mut z) = self.ztunnels.remove(node) {
            z.kill();
        }
    }

    /// Starts the application of pod `name`.
    pub fn start_app(&mut self, name: &str) -> anyhow::Result<()> {
        let netns = self.cluster.pod(name).netns.clone();
        let app = bin("e2e-app").to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            name,
            Some(&netns),
            &[&app, "serve", "--name", name],
            &[],
            &self.dir.join(format!("app-{name}.log")),
        )?;
        proc.wait_for("serving", Duration::from_secs(10))?;
        self.apps.insert(name.to_owned(), proc);
        Ok(())
    }

    /// Starts (or restarts) waypoint `name` and waits until it has its certificate.
    pub fn start_waypoint(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self
            .spec
            .waypoints
            .iter()
            .find(|w| w.name == name)
            .with_context(|| format!("no waypoint {name}"))?
            .clone();
        if let Some(mut old) = self.waypoints.remove(name) {
            old.kill();
        }
        let netns = self.cluster.pod(name).netns.clone();
        let mut argv = vec![
            bin("veil-waypoint").to_string_lossy().into_owned(),
            "--name".into(),
            spec.name.clone(),
            "--namespace".into(),
            spec.namespace.clone(),
        ];
        // Through the controller when there is one (its namespace only, no API access), as the
        // chart runs it; else the mesh file.
        match &self.controller {
            Some(controller) => {
                argv.extend([
                    "--xds-address".into(),
                    format!("{}:{XDS_PORT}", self.cluster.control_plane_ip),
                    "--xds-server-name".into(),
                    SERVER_NAME.into(),
                ]);
                match &controller.serving_root {
                    Some(root) => argv.extend([
                        "--xds-root-cert".into(),
                        root.to_string_lossy().into_owned(),
                    ]),
                    None => argv.extend(["--xds-identity".into(), CONTROLLER_IDENTITY.into()]),
                }
            }
            None => argv.extend([
                "--mesh-config".into(),
                self.mesh_config.to_string_lossy().into_owned(),
                "--config-poll-interval".into(),
                "200ms".into(),
            ]),
        }
        argv.extend([
            "--root-cert".into(),
            self.root_cert().to_string_lossy().into_owned(),
            "--ca-address".into(),
            self.ca_address(),
            "--ca-token-file".into(),
            self.dir
                .join(format!("token-{name}"))
                .to_string_lossy()
                .into_owned(),
            "--log-format".into(),
            "json".into(),
        ]);
        argv.extend(spec.args.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let proc = Proc::spawn(
            &format!("waypoint {name}"),
            Some(&netns),
            &argv,
            &[("RUST_LOG", "info")],
            &self.dir.join(format!("waypoint-{name}.log")),
        )?;
        self.waypoints.insert(name.to_owned(), proc);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = exec(
                &netns,
                &[
                    "curl",
                    "-s",
                    "-m",
                    "2",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            )?;
            if String::from_utf8_lossy(&out.stdout).starts_with("ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("waypoint {name} not ready:\n{}", self.waypoint_log(name))
    }

    /// The running waypoint `name`.
    pub fn waypoint(&mut self, name: &str) -> Option<&mut Proc> {
        self.waypoints.get_mut(name)
    }

    /// Stops waypoint `name`.
    pub fn stop_waypoint(&mut self, name: &str) {
        if let Some(mut w) = self.waypoints.remove(name) {
            w.kill();
        }
    }

    /// The log of waypoint `name`.
    pub fn waypoint_log(&self, name: &str) -> String {
        self.waypoints
            .get(name)
            .map(Proc::output)
            .unwrap_or_else(|| {
                std::fs::read_to_string(self.dir.join(format!("waypoint-{name}.log")))
                    .unwrap_or_default()
            })
    }

    /// The readiness answer of `node`'s ztunnel.
    pub fn readiness(&self, node: &str) -> String {
        ready_answer(&self.cluster.node(node).netns)
    }

    /// The readiness answer of the waypoint called `name`.
    pub fn waypoint_readiness(&self, name: &str) -> String {
        ready_answer(&self.cluster.pod(name).netns)
    }

    /// Takes pod `pod` out of the mesh (or puts it back) in the configuration.
    pub fn set_enrolled(&mut self, pod: &str, enrolled: bool) -> anyhow::Result<()> {
        for p in self.spec.pods.iter_mut().filter(|p| p.name == pod) {
            p.enrolled = enrolled;
        }
        self.set_policies(&self.spec.policies.clone())
    }

    /// Waits until the readiness endpoint of `node`'s ztunnel answers 200.
    pub fn wait_ready(&mut self, node: &str, timeout: Duration) -> anyhow::Result<()> {
        let netns = self.cluster.node(node).netns.clone();
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = exec(
                &netns,
                &[
                    "curl",
                    "-s",
                    "-m",
                    "2",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            )?;
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if last.starts_with("ready") {
                return Ok(());
            }
            if let Some(z) = self.ztunnels.get_mut(node)
                && !z.running()
            {
                bail!("ztunnel {node} exited:\n{}", z.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self
            .ztunnels
            .get(node)
            .map(Proc::output)
            .unwrap_or_default();
        bail!("ztunnel {node} not ready within {timeout:?}: {last}\n{log}")
    }

    /// Replaces the policies in the mesh configuration (ztunnels pick it up within a poll interval).
    pub fn set_policies(&mut self, policies: &str) -> anyhow::Result<()> {
        self.spec.policies = policies.to_owned();
        write_atomically(
            &self.mesh_config,
            &render(&self.spec, &self.cluster, policies),
        )
    }

    /// `curl` from pod `from` to `url`: the HTTP status, or the curl error.
    pub fn curl(&self, from: &str, url: &str) -> Result<(u16, String), String> {
        self.curl_with(from, &[], url)
    }

    /// `curl` with extra arguments (`-X PUT`, `-H …`).
    pub fn curl_with(&self, from: &str, args: &[&str], url: &str) -> Result<(u16, String), String> {
        let netns = &self.cluster.pod(from).netns;
        let mut argv = vec!["curl", "-s", "-m", "5", "-w", "\n%{http_code}"];
        argv.extend_from_slice(args);
        argv.push(url);
        let out = exec(netns, &argv).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!("curl exit {:?}: {text}", out.status.code()));
        }
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((code.parse().unwrap_or(0), body.to_owned()))
    }

    /// The Rust TCP client from pod `from`: sends `message` `count` times to `addr`, returns replies.
    pub fn tcp(&self, from: &str, addr: &str, message: &str, count: u32) -> Result<String, String> {
        let netns = &self.cluster.pod(from).netns;
        let app = bin("e2e-app").to_string_lossy().into_owned();
        let count = count.to_string();
        let out = exec(netns, &[&app, "tcp", addr, message, "--count", &count])
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts `argv` in pod `pod` (kept running until the mesh is dropped).
    pub fn spawn_in_pod(
        &mut self,
        pod: &str,
        name: &str,
        argv: &[&str],
    ) -> anyhow::Result<&mut Proc> {
        let netns = self.cluster.pod(pod).netns.clone();
        let proc = Proc::spawn(
            name,
            Some(&netns),
            argv,
            &[],
            &self.dir.join(format!("{name}.log")),
        )?;
        self.apps.insert(name.to_owned(), proc);
        Ok(self.apps.get_mut(name).expect("just inserted"))
    }

    /// Runs `argv` in pod `pod` to completion.
    pub fn run_in_pod(&self, pod: &str, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        exec(&self.cluster.pod(pod).netns, argv)
    }

    /// The address of the CA.
    pub fn ca_address(&self) -> String {
        format!("{}:15012", self.cluster.control_plane_ip)
    }

    /// The mesh root certificate file.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("ca/root-cert.pem")
    }

    /// The Prometheus metrics of `node`'s ztunnel.
    pub fn metrics(&self, node: &str) -> String {
        let netns = &self.cluster.node(node).netns;
        exec(
            netns,
            &["curl", "-s", "-m", "2", "http://127.0.0.1:15020/metrics"],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }

    /// The sum of metric `name` over the series whose labels contain every `labels` pair.
    pub fn metric(&self, node: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_metric(&self.metrics(node), name, labels)
    }

    /// The log of `node`'s ztunnel.
    pub fn ztunnel_log(&self, node: &str) -> String {
        self.ztunnels
            .get(node)
            .map(Proc::output)
            .unwrap_or_default()
    }

    /// Whether the first change of the mesh file has reached `node`'s ztunnel: it applied it (read
    /// from the file), or, through a controller, the controller published it (the ztunnel is sent
    /// only what changed for it, possibly nothing, so its own log may never say).
    pub fn first_change_applied(&self, node: &str) -> bool {
        match &self.controller {
            // The controller logs every snapshot after its first.
            Some(controller) => controller.proc.output().contains("published a snapshot"),
            None => self
                .ztunnel_log(node)
                .contains("applied new mesh configuration"),
        }
    }

    /// The log of the application in `pod`.
    pub fn app_log(&self, pod: &str) -> String {
        self.apps.get(pod).map(Proc::output).unwrap_or_default()
    }

    /// Waits until `f` holds, polling.
    pub fn eventually(&self, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f()
    }

    /// The pod spec called `name`.
    pub fn pod(&self, name: &str) -> &PodSpec {
        self.spec
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for proc in self
            .ztunnels
            .values_mut()
            .chain(self.apps.values_mut())
            .chain(self.waypoints.values_mut())
        {
            proc.kill();
        }
        self.ca.kill();
        if let Some(controller) = &mut self.controller {
            controller.proc.kill();
        }
        if let Some((_, api)) = &mut self.api {
            api.kill();
        }
        unpin_all(&self.dir.join("netns"));
        if std::thread::panicking() || self.keep_logs {
            eprintln!("logs and configuration kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn start_ca(
    cluster: &Cluster,
    dir: &Path,
    mesh_config: &Path,
    max_ttl: Option<&str>,
) -> anyhow::Result<Proc> {
    let listen = format!("{}:15012", cluster.control_plane_ip);
    let argv = [
        bin("veil-ca").to_string_lossy().into_owned(),
        "--listen".into(),
        listen,
        "--root-dir".into(),
        dir.join("ca").to_string_lossy().into_owned(),
        "--tokens".into(),
        dir.join("tokens.yaml").to_string_lossy().into_owned(),
        "--mesh-config".into(),
        mesh_config.to_string_lossy().into_owned(),
        "--max-ttl".into(),
        max_ttl.unwrap_or("1h").into(),
        "--log-format".into(),
        "json".into(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut ca = Proc::spawn(
        "veil-ca",
        Some(&cluster.control_plane),
        &argv,
        &[],
        &dir.join("ca.log"),
    )?;
    ca.wait_for("veil-ca serving", Duration::from_secs(20))
        .context("starting veil-ca")?;
    Ok(ca)
}

/// What the readiness endpoint (15021) in namespace `netns` answers; empty if it does not.
fn ready_answer(netns: &str) -> String {
    let url = "http://127.0.0.1:15021/healthz/ready";
    exec(netns, &["curl", "-s", "-m", "2", url])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Unmounts the pinned namespaces under `dir` (they would otherwise outlive the cluster).
pub fn unpin_all(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::process::Command::new("umount")
            .arg(entry.path())
            .output();
    }
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The sum of metric `name` over series whose labels contain every pair of `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A kubelet stand-in's last count: (probes passed, probes failed).
pub fn kubelet_counts(output: &str) -> (u64, u64) {
    let last = output
        .lines()
        .rev()
        .find(|l| l.starts_with("probes "))
        .unwrap_or_default();
    let count = |key: &str| {
        last.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (count("ok="), count("failed="))
}
