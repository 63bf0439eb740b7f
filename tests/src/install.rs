//! A veil install as the API server serves it, for `veil check`: the chart's objects in
//! `veil-system` with the status the cluster's controllers give them (`install/install.json`, as
//! `kubectl get -o json` shows them), completed for a running test mesh — a ztunnel pod per node at
//! the node's address (ztunnel runs in the host network), the CA's real root certificate — and served
//! by the stand-in API server from the cluster's network, so that its pod proxy reaches the real
//! ztunnels' metrics and readiness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use http::Method;
use serde_json::{Value, json};

use crate::apiserver::{Api, ApiStore, Write, spawn_in_netns};
use crate::mesh::{Mesh, bin};

/// The namespace of the install.
pub const NAMESPACE: &str = "veil-system";

const TEMPLATE: &str = include_str!("install/install.json");

/// The objects of the template, by kind.
fn template(kind: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(TEMPLATE).expect("install.json is JSON");
    list["items"]
        .as_array()
        .expect("a List")
        .iter()
        .filter(|o| o["kind"] == kind)
        .cloned()
        .collect()
}

/// The install's objects of `kind` (`Namespace`, `Deployment`, `DaemonSet`, …), as the API serves
/// them.
pub fn objects(kind: &str) -> Vec<Value> {
    template(kind)
}

fn one(kind: &str) -> Value {
    template(kind).remove(0)
}

/// The resource (URL name) objects of `kind` are served under.
fn resource(kind: &str) -> &'static str {
    match kind {
        "CustomResourceDefinition" => "customresourcedefinitions",
        "Namespace" => "namespaces",
        "Deployment" => "deployments",
        "DaemonSet" => "daemonsets",
        "Pod" => "pods",
        "Event" => "events",
        "EndpointSlice" => "endpointslices",
        "ConfigMap" => "configmaps",
        "AuthorizationPolicy" => "authorizationpolicies",
        "PeerAuthentication" => "peerauthentications",
        "Telemetry" => "telemetries",
        "Node" => "nodes",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        other => panic!("{other} is not served"),
    }
}

/// Puts `object` where the API serves it (replacing one of the same kind, namespace and name).
pub fn put(store: &mut ApiStore, object: Value) {
    let kind = object["kind"].as_str().expect("a kind").to_owned();
    let key = format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().expect("a name")
    );
    store.put(resource(&kind), &key, object, true);
}

/// The ztunnel pod of `node` (host network: its address is the node's), ready or not.
pub fn ztunnel_pod(node: &str, ip: &str, ready: bool) -> Value {
    let mut pod = one("Pod");
    let name = format!("ztunnel-{}", node.trim_start_matches("node-"));
    let text = pod
        .to_string()
        .replace("ztunnel-NAME", &name)
        .replace("\"UID\"", &format!("\"uid-{name}\""))
        .replace("\"NODE\"", &format!("\"{node}\""))
        .replace("\"IP\"", &format!("\"{ip}\""));
    pod = serde_json::from_str(&text).expect("still JSON");
    if !ready {
        let status = &mut pod["status"];
        for condition in status["conditions"].as_array_mut().expect("conditions") {
            if condition["type"] == "Ready" || condition["type"] == "ContainersReady" {
                condition["status"] = json!("False");
                condition["reason"] = json!("ContainersNotReady");
                condition["message"] = json!("containers with unready status: [ztunnel]");
            }
        }
        status["containerStatuses"][0]["ready"] = json!(false);
    }
    pod
}

/// The kubelet's event that the readiness probe of `node`'s ztunnel pod fails (what a real
/// kubelet writes: the status code, never the answer's body).
pub fn probe_failed_event(node: &str) -> Value {
    let name = format!("ztunnel-{}", node.trim_start_matches("node-"));
    let text = one("Event")
        .to_string()
        .replace("ztunnel-NAME", &name)
        .replace("\"UID\"", &format!("\"uid-{name}\""))
        .replace("\"NODE\"", &format!("\"{node}\""));
    serde_json::from_str(&text).expect("still JSON")
}

/// The ztunnel DaemonSet, scheduled to `desired` nodes, `ready` of them ready.
pub fn daemonset(desired: i64, ready: i64) -> Value {
    let mut ds = one("DaemonSet");
    let status = &mut ds["status"];
    status["currentNumberScheduled"] = json!(desired);
    status["desiredNumberScheduled"] = json!(desired);
    status["updatedNumberScheduled"] = json!(desired);
    status["numberReady"] = json!(ready);
    status["numberAvailable"] = json!(ready);
    if ready < desired {
        status["numberUnavailable"] = json!(desired - ready);
    }
    ds
}

/// A Deployment of the install (`veil-ca` or `veil-controller`).
pub fn deployment(name: &str) -> Value {
    template("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

/// The CustomResourceDefinitions of veil's kinds as the chart installs them (their schemas
/// abridged), established.
pub fn crds() -> Vec<Value> {
    template("CustomResourceDefinition")
}

/// An AuthorizationPolicy of the install, with its status as the controller writes it.
pub fn authorization_policy() -> Value {
    one("AuthorizationPolicy")
}

/// The install for `mesh`: a healthy one, with a ready ztunnel on each of `nodes` (which must run
/// one), served from the control plane's network. Returns the store and the server's address (on
/// loopback, where `veil check` runs).
pub fn serve(mesh: &Mesh, nodes: &[&str]) -> anyhow::Result<(Api, SocketAddr)> {
    let api = Api::default();
    let root = std::fs::read_to_string(mesh.root_cert())?;
    let control_plane = mesh.cluster.control_plane_ip.to_string();
    api.change(|s| -> anyhow::Result<()> {
        for kind in [
            "CustomResourceDefinition",
            "Namespace",
            "Deployment",
            "AuthorizationPolicy",
            "PeerAuthentication",
        ] {
            for object in template(kind) {
                put(s, object);
            }
        }
        put(
            s,
            daemonset(i64::try_from(nodes.len())?, i64::try_from(nodes.len())?),
        );
        for node in nodes {
            put(
                s,
                ztunnel_pod(node, &mesh.cluster.node(node).ip.to_string(), true),
            );
        }
        for slice in template("EndpointSlice") {
            let text = slice
                .to_string()
                .replace("\"IP\"", &format!("\"{control_plane}\""));
            put(s, serde_json::from_str(&text)?);
        }
        let mut root_cm = one("ConfigMap");
        root_cm["data"]["root-cert.pem"] = json!(root);
        put(s, root_cm);
        create_lease(s)?;
        Ok(())
    })?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    spawn_in_netns(listener, api.clone(), &mesh.cluster.control_plane)?;
    Ok((api, addr))
}

/// The status Lease, as the controller creates and renews it (renewed now).
fn create_lease(s: &mut ApiStore) -> anyhow::Result<()> {
    let mut lease = one("Lease");
    // A MicroTime, as the API writes it.
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    lease["spec"]["renewTime"] = json!(now.to_string());
    let body = lease.to_string();
    let query = [("fieldManager", "veil-controller")].into_iter().collect();
    let created = s.write(&Write {
        method: &Method::POST,
        path: &format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"),
        query: &query,
        content_type: "application/json",
        body: body.as_bytes(),
    });
    anyhow::ensure!(
        created.is_some_and(|r| r.status() == 201),
        "the Lease was not created"
    );
    Ok(())
}

/// A kubeconfig for `veil check` pointing at `server`, written under the mesh's directory.
pub fn kubeconfig(mesh: &Mesh, server: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = mesh.dir.join("check-kubeconfig");
    std::fs::write(&path, crate::kube::kubeconfig(&format!("http://{server}")))?;
    Ok(path)
}

/// What one `veil check` said: its exit status, its report (JSON runs), its stdout and stderr.
#[derive(Debug)]
pub struct CheckRun {
    /// The exit status.
    pub code: i32,
    /// The JSON report (`Null` for a table).
    pub report: Value,
    /// What it printed.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl CheckRun {
    /// The check called `name`.
    pub fn check(&self, name: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no check {name} in {:#}", self.report))
    }

    /// The checks that are not ok, by name.
    pub fn not_ok(&self) -> Vec<String> {
        self.report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["result"] != "ok")
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The names of the checks, in the order run.
    pub fn names(&self) -> Vec<&str> {
        self.report["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect()
    }

    /// The details of check `name`, as JSON text.
    pub fn details(&self, name: &str) -> String {
        self.check(name)["details"].to_string()
    }
}

/// `veil check --namespace ns args…` with only `kubeconfig`; `-o json` in `args` gets the report
/// parsed.
pub fn veil_check(ns: &str, kubeconfig: &Path, args: &[&str]) -> CheckRun {
    let out = Command::new(bin("veil"))
        .args(["check", "--namespace", ns])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        // Only the kubeconfig: never the cluster this test may itself run in.
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running veil");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = if args.windows(2).any(|w| w == ["-o", "json"]) {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\nstderr: {stderr}"))
    } else {
        Value::Null
    };
    CheckRun {
        code: out.status.code().unwrap_or(-1),
        report,
        stdout,
        stderr,
    }
}
