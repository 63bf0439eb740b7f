//! The Kubernetes side of a test mesh: the API objects a real cluster would hold for the spec
//! (Namespaces, Pods, Services, in the JSON the API server returns), written where the fake API
//! server (`e2e-app fake-api`) serves them from, and the kubeconfig that points the controller at
//! it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::mesh::{PodSpec, ServiceSpec};

/// The label that enrols a namespace (or, with `none`, opts a pod out).
pub const DATAPLANE_MODE: &str = "veil.dev/dataplane-mode";

/// The port the fake API server listens on, in the control-plane namespace.
pub const API_PORT: u16 = 6443;

/// The directory of served objects and the writes into it.
#[derive(Clone, Debug)]
pub struct ApiObjects {
    dir: PathBuf,
}

impl ApiObjects {
    /// Objects under `dir`.
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        for resource in [
            "namespaces",
            "pods",
            "services",
            "authorizationpolicies",
            "peerauthentications",
        ] {
            std::fs::create_dir_all(dir.join(resource))?;
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates or replaces an object (atomically: the server never reads half of one).
    pub fn put(&self, resource: &str, name: &str, object: &Value) -> std::io::Result<()> {
        let path = self.dir.join(resource).join(format!("{name}.json"));
        let tmp = self.dir.join(resource).join(format!(".{name}.tmp"));
        std::fs::create_dir_all(self.dir.join(resource))?;
        std::fs::write(&tmp, object.to_string())?;
        std::fs::rename(tmp, path)
    }

    /// Deletes an object.
    pub fn delete(&self, resource: &str, name: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.dir.join(resource).join(format!("{name}.json")))
    }
}

/// A Namespace, labelled ambient or not.
pub fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({ DATAPLANE_MODE: "ambient", "kubernetes.io/metadata.name": name })
    } else {
        json!({ "kubernetes.io/metadata.name": name })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels},
        "status": {"phase": "Active"},
    })
}

/// A scheduled Pod; `ip` is absent while the runtime is still setting up its network.
pub fn pod(spec: &PodSpec, opted_out: bool, ip: Option<Ipv4Addr>) -> Value {
    pod_value(spec, opted_out, ip)
}

fn pod_value(spec: &PodSpec, opted_out: bool, ip: Option<Ipv4Addr>) -> Value {
    let mut labels = json!(spec.labels);
    if opted_out {
        labels[DATAPLANE_MODE] = json!("none");
    }
    let status = match ip {
        Some(ip) => json!({
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }),
        None => json!({"phase": "Pending"}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "uid": format!("uid-{}", spec.name),
            "labels": labels,
        },
        "spec": {
            "nodeName": spec.node,
            "serviceAccountName": spec.service_account,
            "containers": [{"name": "app", "image": "e2e-app"}],
        },
        "status": status,
    })
}

/// The objects of a waypoint as the waypoint chart makes them: its pod (outside capture, service
/// account `waypoint`) at `ip`, and the Service labelled as the waypoint `name`, selecting it.
pub fn waypoint(name: &str, namespace: &str, node: &str, ip: Ipv4Addr, vip: &str) -> [Value; 2] {
    let app = format!("waypoint-{name}");
    let pod = PodSpec {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        service_account: "waypoint".into(),
        node: node.to_owned(),
        labels: [("app".to_owned(), app.clone())].into(),
        enrolled: false,
    };
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("svc-{namespace}-{name}"),
            "labels": {"veil.dev/waypoint": name},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": {"app": app},
            "ports": [{"name": "hbone", "port": 15008, "targetPort": 15008, "protocol": "TCP"}],
        },
    });
    // Not ready: the kubelet reports it ready only once it serves, which it does once the
    // controller has sent it its mesh; it must be a waypoint to the controller before that.
    let mut pod = pod_value(&pod, true, Some(ip));
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    [pod, service]
}

/// A ClusterIP Service.
pub fn service(spec: &ServiceSpec) -> Value {
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .map(|(port, target)| (port, target, "TCP"))
        .chain(spec.udp_ports.iter().map(|(port, target)| (port, target, "UDP")))
        .map(|(port, target, protocol)| json!({"port": port, "targetPort": target, "protocol": protocol}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "uid": format!("svc-{}", spec.name)},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": spec.vip,
            "clusterIPs": [spec.vip],
            "selector": {"app": spec.selects},
            "ports": ports,
        },
    })
}

/// The namespaces the pods of `pods` are in, with whether each is ambient: those with an enrolled
/// pod are, and so is every namespace in `extra`.
pub fn namespaces(pods: &[PodSpec], extra: &[String]) -> Vec<(String, bool)> {
    let ambient: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.enrolled)
        .map(|p| p.namespace.as_str())
        .chain(extra.iter().map(String::as_str))
        .collect();
    let all: BTreeSet<&str> = pods
        .iter()
        .map(|p| p.namespace.as_str())
        .chain(ambient.iter().copied())
        .collect();
    all.into_iter()
        .map(|ns| (ns.to_owned(), ambient.contains(ns)))
        .collect()
}

/// A kubeconfig for the fake API server at `server` (plain HTTP, no credentials).
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\nusers:\n- name: e2e\n  user: {{}}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\ncurrent-context: e2e\n"
    )
}
