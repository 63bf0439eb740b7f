//! The control plane in a test mesh: the real `veil-controller` in the control-plane namespace,
//! serving the mesh file; and Istio's ztunnel (from `../shared/upstream/`, when present) subscribed
//! to it, the way it subscribes to istiod.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use veil_mesh::testing::TestPki;

use crate::cluster::exec;
use crate::mesh::{Mesh, bin};
use crate::process::Proc;

/// The port the controller serves discovery on in tests (the CA has 15012).
pub const XDS_PORT: u16 = 15010;
/// Its metrics port.
pub const METRICS_PORT: u16 = 15014;
/// Its admin port (on the control plane's loopback).
pub const ADMIN_PORT: u16 = 15000;
/// The DNS name in the controller's serving certificate.
pub const SERVER_NAME: &str = "veil-controller.veil-system.svc";

/// The controller's mesh identity.
pub const CONTROLLER_IDENTITY: &str = "spiffe://cluster.local/ns/veil-system/sa/veil-controller";
/// Its token for the CA (in the tokens file).
pub const CONTROLLER_TOKEN: &str = "token-of-veil-controller-0123456789";

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    /// The process.
    pub proc: Proc,
    /// The root of its serving certificate (what subscribers trust for it); `None` when it serves
    /// with its mesh certificate (Kubernetes mode), which subscribers verify by identity.
    pub serving_root: Option<PathBuf>,
    /// `https://<ip>:<port>`.
    pub url: String,
    /// `<ip>:<metrics port>`.
    pub metrics: String,
    /// `http://127.0.0.1:<admin port>`, in the control plane's network namespace.
    pub admin: String,
}

/// Starts `veil-controller` on the mesh's file (or, for a Kubernetes-mode mesh, its API server),
/// accepting the CA's tokens and mesh certificates of `subscribers`; returns once it serves. It
/// serves with its mesh certificate from the CA when `mesh_identity` (as the chart runs it: veil's
/// ztunnels verify it by identity), else with a DNS certificate of its own PKI (which Istio's
/// ztunnel needs).
pub fn start_controller(
    mesh: &Mesh,
    subscribers: &[String],
    mesh_identity: bool,
) -> anyhow::Result<Controller> {
    start_replica(mesh, subscribers, mesh_identity, 0)
}

/// Starts replica `replica` of `veil-controller` as [`start_controller`] starts the first (0):
/// replica `n` serves on [`XDS_PORT`]` + 100 n` and [`METRICS_PORT`]` + 100 n`, beside the others,
/// and logs to `controller-<n>.log` (the first, `controller.log`).
pub fn start_replica(
    mesh: &Mesh,
    subscribers: &[String],
    mesh_identity: bool,
    replica: u16,
) -> anyhow::Result<Controller> {
    let dir = mesh.dir.join("controller");
    std::fs::create_dir_all(&dir)?;
    // Its serving certificate comes from a PKI of its own, as from cert-manager in a cluster; a
    // restarted controller keeps it.
    let ip = mesh.cluster.control_plane_ip.to_string();
    if !dir.join("root.pem").exists() {
        write_serving_pki(&dir, &[SERVER_NAME, &ip])?;
    }
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let listen = format!("{ip}:{}", XDS_PORT + 100 * replica);
    let metrics = format!("{ip}:{}", METRICS_PORT + 100 * replica);
    let admin = format!("127.0.0.1:{}", ADMIN_PORT + 100 * replica);
    let mut argv = vec![
        bin("veil-controller").to_string_lossy().into_owned(),
        "--listen".into(),
        listen.clone(),
        "--metrics-listen".into(),
        metrics.clone(),
        "--admin-listen".into(),
        admin.clone(),
    ];
    let serving_root = if mesh_identity {
        argv.extend([
            "--ca-address".into(),
            format!("{ip}:15012"),
            "--ca-token-file".into(),
            mesh.dir
                .join("token-veil-controller")
                .to_string_lossy()
                .into_owned(),
        ]);
        None
    } else {
        argv.extend([
            "--tls-cert".into(),
            path("cert.pem"),
            "--tls-key".into(),
            path("key.pem"),
        ]);
        Some(dir.join("root.pem"))
    };
    argv.extend([
        "--trust-bundle".into(),
        mesh.root_cert().to_string_lossy().into_owned(),
        "--tokens".into(),
        mesh.dir.join("tokens.yaml").to_string_lossy().into_owned(),
        "--log-format".into(),
        "json".into(),
    ]);
    for subscriber in subscribers {
        argv.extend(["--subscriber".into(), subscriber.clone()]);
    }
    // Kubernetes mode: the fake API server; otherwise the mesh file.
    let kubeconfig = mesh.dir.join("kubeconfig").to_string_lossy().into_owned();
    let mut env = vec![("RUST_LOG", "info")];
    if mesh.spec.kubernetes {
        env.push(("KUBECONFIG", &kubeconfig));
        // Its name as the status lease's holder, as the chart passes the pod's; a lease that a
        // killed replica's successor takes over within seconds.
        argv.extend([
            "--pod-name".into(),
            format!("veil-controller-{replica}"),
            "--lease-duration".into(),
            "4s".into(),
        ]);
    } else {
        argv.extend([
            "--mesh-config".into(),
            mesh.mesh_config().to_string_lossy().into_owned(),
            "--poll".into(),
            "200ms".into(),
        ]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(
        "veil-controller",
        Some(&mesh.cluster.control_plane),
        &argv,
        &env,
        &mesh.dir.join(match replica {
            0 => "controller.log".to_owned(),
            n => format!("controller-{n}.log"),
        }),
    )?;
    proc.wait_for("veil-controller serving", Duration::from_secs(20))
        .context("starting veil-controller")?;
    Ok(Controller {
        proc,
        serving_root,
        url: format!("https://{listen}"),
        metrics,
        admin: format!("http://{admin}"),
    })
}

/// Writes a serving certificate valid for `names` into `dir` (`cert.pem`, `key.pem`), issued by a
/// root of its own (`root.pem`), as cert-manager would provide one.
pub fn write_serving_pki(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    let pki = TestPki::new("cluster.local");
    let (chain, key) = pki.server_pem(names);
    std::fs::write(dir.join("cert.pem"), chain)?;
    std::fs::write(dir.join("key.pem"), key)?;
    std::fs::write(dir.join("root.pem"), pki.root_pem())?;
    Ok(())
}

impl Controller {
    /// Its metrics text, fetched from the control-plane namespace.
    pub fn metrics_text(&self, mesh: &Mesh) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        exec(
            &mesh.cluster.control_plane,
            &["curl", "-s", "-m", "2", &url],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }
}

/// Istio's ztunnel binary: `$VEIL_UPSTREAM_ZTUNNEL`, else `../shared/upstream/ztunnel` next to
/// the workspace. `None` (and the caller skips loudly) when it is not there.
pub fn upstream_ztunnel() -> Option<PathBuf> {
    let candidate = match std::env::var_os("VEIL_UPSTREAM_ZTUNNEL") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream/ztunnel"),
    };
    candidate.is_file().then_some(candidate)
}

/// Applies `rules` (`iptables-restore` input) in namespace `netns`, keeping the rules there.
fn restore_in(netns: &str, rules: &str) -> anyhow::Result<()> {
    let out = crate::cluster::output_with_input(
        std::process::Command::new("ip").args([
            "netns",
            "exec",
            netns,
            "iptables-restore",
            "--noflush",
        ]),
        rules.as_bytes(),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "iptables-restore failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Starts Istio's ztunnel in dedicated mode inside `pod`'s namespace (it serves that one pod, whose
/// TCP it captures with the rules of Istio's CNI agent), taking its configuration from
/// `controller` and its certificate from veil's CA, both with `token` (a file of the tokens file
/// the CA and controller read), on `worker_threads` threads. Returns once it is ready — which it
/// is only after its first Address and Authorization responses.
pub fn start_upstream(
    mesh: &Mesh,
    binary: &Path,
    pod: &str,
    controller: &Controller,
    token: &Path,
    worker_threads: u16,
) -> anyhow::Result<Proc> {
    let spec = mesh.pod(pod).clone();
    let netns = mesh.cluster.pod(pod).netns.clone();
    let ip = mesh.cluster.pod(pod).ip.to_string();
    let cp = mesh.cluster.control_plane_ip.to_string();
    // Capture as Istio's CNI agent does in a pod of its ambient mode (its rules for a pod without
    // DNS capture: istio/istio cni/pkg/iptables, testdata/dns_pod_disabled_and_on_globally.golden),
    // so that Istio's ztunnel pays per packet what it pays in a cluster, as veil's does for its own
    // rules. One line more, first, as the upstream README has it: in dedicated mode ztunnel's
    // connections to the control plane leave from the pod, unmarked, and must not be captured.
    let rules = format!(
        "*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -d {cp}/32 -p tcp -j RETURN
-A OUTPUT -j ISTIO_OUTPUT
-A PREROUTING -j ISTIO_PRERT
-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_OUTPUT -d 169.254.7.127/32 -p tcp -m tcp -j ACCEPT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
"
    );
    restore_in(&netns, &rules).with_context(|| format!("Istio's capture rules in {pod}"))?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let env = [
        "RUST_LOG=info".to_owned(),
        "PROXY_MODE=dedicated".to_owned(),
        format!(
            "PROXY_WORKLOAD_INFO={}/{}/{}",
            spec.namespace, spec.name, spec.service_account
        ),
        format!("XDS_ADDRESS={}", controller.url),
        format!(
            "XDS_ROOT_CA={}",
            s(controller.serving_root.as_deref().context(
                "Istio's ztunnel verifies the controller's DNS name: a local-mode mesh"
            )?)
        ),
        format!("CA_ADDRESS=https://{cp}:15012"),
        format!("CA_ROOT_CA={}", s(&mesh.root_cert())),
        "ALT_CA_HOSTNAME=veil-ca".to_owned(),
        format!("AUTH_TOKEN={}", s(token)),
        format!("POD_NAME={}", spec.name),
        format!("POD_NAMESPACE={}", spec.namespace),
        format!("INSTANCE_IP={ip}"),
        format!("NODE_NAME={}", spec.node),
        "PACKET_MARK=1337".to_owned(),
        "ENABLE_ORIG_SRC=false".to_owned(),
        format!("ZTUNNEL_WORKER_THREADS={worker_threads}"),
        format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
    ];
    let mut argv = vec!["env".to_owned(), "-i".to_owned()];
    argv.extend(env);
    argv.push(s(binary));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut proc = Proc::spawn(
        &format!("istio ztunnel {pod}"),
        Some(&netns),
        &argv,
        &[],
        &mesh.dir.join(format!("upstream-{pod}.log")),
    )?;
    let ready = mesh.eventually(Duration::from_secs(30), || {
        exec(
            &netns,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "1",
                "http://127.0.0.1:15021/healthz/ready",
            ],
        )
        .is_ok_and(|o| o.stdout == b"200")
    });
    if !ready {
        proc.kill();
        anyhow::bail!(
            "Istio's ztunnel in {pod} did not become ready:\n{}",
            proc.output()
        );
    }
    Ok(proc)
}

/// Istio's ztunnel's configuration dump (admin port, loopback of the pod).
pub fn upstream_config_dump(mesh: &Mesh, pod: &str) -> String {
    let netns = &mesh.cluster.pod(pod).netns;
    exec(
        netns,
        &[
            "curl",
            "-s",
            "-m",
            "2",
            "http://127.0.0.1:15000/config_dump",
        ],
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_default()
}
