//! Kubernetes mode of the test mesh: the fake API server and its objects (veil's CRDs installed,
//! the spec's policies and Telemetries among them), pods pinned where ztunnel scans for them, and
//! `veil-cni` invoked as a container runtime does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Mesh, PodSpec, bin};
use crate::kube::{self, ApiObjects};
use crate::process::Proc;

impl Mesh {
    /// Kubernetes mode: starts the fake API server with the spec's objects, pins the pods'
    /// namespaces where ztunnel scans for them, and writes the controller's kubeconfig.
    pub(super) fn start_api(&mut self) -> anyhow::Result<()> {
        let objects = ApiObjects::new(self.dir.join("api"))?;
        for resource in ["telemetries", "customresourcedefinitions"] {
            std::fs::create_dir_all(objects.dir().join(resource))?;
        }
        // Installed as the chart's first install does; a test may delete one, as `helm upgrade`
        // leaves a CRD the chart gained since uninstalled.
        for crd in crate::install::crds() {
            let name = crd["metadata"]["name"].as_str().context("a CRD's name")?;
            objects.put("customresourcedefinitions", name, &crd)?;
        }
        for (resource, key, object) in api_policies(&self.spec.policies)? {
            objects.put(resource, &key, &object)?;
        }
        std::fs::create_dir_all(self.dir.join("netns"))?;
        let namespaces = kube::namespaces(&self.spec.pods, &self.spec.ambient_namespaces);
        for (name, ambient) in &namespaces {
            objects.put("namespaces", name, &kube::namespace(name, *ambient))?;
        }
        for pod in &self.spec.pods {
            let ambient = namespaces.iter().any(|(n, a)| *n == pod.namespace && *a);
            let ip = self.cluster.pod(&pod.name).ip;
            objects.put(
                "pods",
                &pod.name,
                &kube::pod(pod, ambient && !pod.enrolled, Some(ip)),
            )?;
            self.pin(&pod.name)?;
        }
        for service in &self.spec.services {
            objects.put("services", &service.name, &kube::service(service))?;
        }
        // Waypoints as the waypoint chart makes them, their namespace labelled to use them.
        for (i, w) in self.spec.waypoints.iter().enumerate() {
            let ip = self.cluster.pod(&w.name).ip;
            let vip = format!("10.96.250.{}", i + 1);
            let [pod, service] = kube::waypoint(&w.name, &w.namespace, &w.node, ip, &vip);
            objects.put("pods", &w.name, &pod)?;
            objects.put("services", &format!("waypoint-{}", w.name), &service)?;
            let ambient = namespaces.iter().any(|(n, a)| *n == w.namespace && *a);
            let mut namespace = kube::namespace(&w.namespace, ambient);
            namespace["metadata"]["labels"]["veil.dev/use-waypoint"] = w.name.clone().into();
            objects.put("namespaces", &w.namespace, &namespace)?;
        }
        let listen = format!("{}:{}", self.cluster.control_plane_ip, kube::API_PORT);
        std::fs::write(
            self.dir.join("kubeconfig"),
            kube::kubeconfig(&format!("http://{listen}")),
        )?;
        let app = bin("e2e-app").to_string_lossy().into_owned();
        let dir = objects.dir().to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            "fake API server",
            Some(&self.cluster.control_plane),
            &[&app, "fake-api", "--listen", &listen, "--dir", &dir],
            &[],
            &self.dir.join("fake-api.log"),
        )?;
        proc.wait_for("fake API server listening", Duration::from_secs(10))?;
        self.api = Some((objects, proc));
        Ok(())
    }

    /// Kubernetes mode: what the fake API server logged (among it, each status written).
    pub fn api_log(&self) -> String {
        self.api
            .as_ref()
            .expect("a Kubernetes-mode mesh")
            .1
            .output()
    }

    /// Kubernetes mode: the API objects.
    pub fn api(&self) -> &ApiObjects {
        &self.api.as_ref().expect("a Kubernetes-mode mesh").0
    }

    /// Pins pod `name`'s namespace where ztunnel looks for pods' namespaces, as containerd does.
    pub(super) fn pin(&self, name: &str) -> anyhow::Result<()> {
        let pod = self.cluster.pod(name);
        let pinned = self.dir.join("netns").join(&pod.netns);
        std::fs::write(&pinned, "")?;
        let out = std::process::Command::new("mount")
            .args(["--bind", &pod.netns_path()])
            .arg(&pinned)
            .output()?;
        if !out.status.success() {
            bail!("pinning {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Kubernetes mode: a new pod, as the kubelet sees it before the CNI ADD: scheduled on its node,
    /// its network namespace set up by the network plugin (the harness), its address not yet in the
    /// API, nothing running in it.
    pub fn add_pending_pod(&mut self, spec: PodSpec) -> anyhow::Result<()> {
        self.cluster.add_pod(&spec.name, &spec.node)?;
        self.pin(&spec.name)?;
        let ambient = self.ambient_in_api(&spec.namespace);
        self.api().put(
            "pods",
            &spec.name,
            &kube::pod(&spec, ambient && !spec.enrolled, None),
        )?;
        self.spec.pods.push(spec);
        // The CA places service accounts on nodes from the mesh file.
        self.set_policies(&self.spec.policies.clone())
    }

    /// Kubernetes mode: records that pod `name` is running with its address (the kubelet's status
    /// update after the CNI ADD) and starts its application.
    pub fn pod_started(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self.pod(name).clone();
        let ambient = self.ambient_in_api(&spec.namespace);
        let ip = self.cluster.pod(name).ip;
        self.api().put(
            "pods",
            name,
            &kube::pod(&spec, ambient && !spec.enrolled, Some(ip)),
        )?;
        self.start_app(name)
    }

    /// Kubernetes mode: labels namespace `name` ambient, or removes the label. Its pods follow
    /// (none of them is opted out) in the mesh file too, which the CA places identities by.
    pub fn label_namespace(&mut self, name: &str, ambient: bool) -> anyhow::Result<()> {
        for pod in self.spec.pods.iter_mut().filter(|p| p.namespace == name) {
            pod.enrolled = ambient;
        }
        self.set_policies(&self.spec.policies.clone())?;
        self.api()
            .put("namespaces", name, &kube::namespace(name, ambient))?;
        Ok(())
    }

    fn ambient_in_api(&self, namespace: &str) -> bool {
        let path = self
            .api()
            .dir()
            .join("namespaces")
            .join(format!("{namespace}.json"));
        std::fs::read_to_string(path)
            .is_ok_and(|t| t.contains(r#""veil.dev/dataplane-mode":"ambient""#))
    }

    /// The CNI socket of `node`'s ztunnel (Kubernetes mode).
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("cni-{node}.sock"))
    }

    /// The ambient-namespaces file of `node`'s ztunnel (Kubernetes mode).
    pub fn ambient_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("ambient-{node}.json"))
    }

    /// Invokes `veil-cni` for pod `name` exactly as a container runtime does after the network
    /// plugin: `CNI_*` in the environment, the chained configuration with the previous result on
    /// stdin. Returns the exit status success, and stdout parsed as JSON.
    pub fn cni(&self, command: &str, name: &str) -> anyhow::Result<(bool, serde_json::Value)> {
        let spec = self.pod(name);
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "e2e-net",
            "type": "veil-cni",
            "ztunnelSocket": self.cni_socket(&spec.node),
            "ambientFile": self.ambient_file(&spec.node),
            "excludeNamespaces": ["kube-system", "veil-system"],
            "timeoutSeconds": 10,
        });
        self.run_plugin(&bin("veil-cni"), conf, command, name)
    }

    /// Kubernetes mode: the CNI bin and configuration directories of `node`.
    pub fn cni_dirs(&self, node: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(format!("cni-{node}"));
        (dir.join("bin"), dir.join("net.d"))
    }

    /// Kubernetes mode, one node: gives `node` a network plugin's configuration `primary`, installs
    /// veil-cni there as the ztunnel DaemonSet's init container does, and restarts the node's
    /// ztunnel with the directories (as the chart mounts them).
    pub fn install_cni(&mut self, node: &str, primary: &serde_json::Value) -> anyhow::Result<()> {
        let (bin_dir, conf_dir) = self.cni_dirs(node);
        std::fs::create_dir_all(&bin_dir)?;
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::write(conf_dir.join("10-e2e.conflist"), primary.to_string())?;
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let out = std::process::Command::new(bin("veil-cni"))
            .args([
                "install",
                "--bin-dir",
                &path(&bin_dir),
                "--conf-dir",
                &path(&conf_dir),
            ])
            .args(["--socket", &path(&self.cni_socket(node))])
            .args(["--ambient-file", &path(&self.ambient_file(node))])
            .args(["--exclude-namespaces", "kube-system,veil-system"])
            .output()?;
        if !out.status.success() {
            bail!("veil-cni install: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.spec.ztunnel_args.extend([
            "--cni-bin-dir".into(),
            path(&bin_dir),
            "--cni-conf-dir".into(),
            path(&conf_dir),
            "--daemonset=veil-ztunnel".into(),
        ]);
        self.start_ztunnel(node)
    }

    /// Kubernetes mode: what a container runtime does for pod `name` with the chain its node has
    /// now (the first configuration of the node's directory, by name): `None` when veil-cni is not
    /// in it (the runtime would not call it), else veil-cni's answer as [`Self::cni`] gives it,
    /// from the binary installed on the node.
    pub fn cni_from_chain(
        &self,
        command: &str,
        name: &str,
    ) -> anyhow::Result<Option<(bool, serde_json::Value)>> {
        let (bin_dir, conf_dir) = self.cni_dirs(&self.pod(name).node);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&conf_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf")
            })
            .collect();
        files.sort();
        let Some(first) = files.first() else {
            return Ok(None);
        };
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(first)?)?;
        let entry = config["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"] == "veil-cni");
        match entry {
            None => Ok(None),
            Some(entry) => {
                let mut conf = entry.clone();
                conf["cniVersion"] = config["cniVersion"].clone();
                conf["name"] = config["name"].clone();
                self.run_plugin(&bin_dir.join("veil-cni"), conf, command, name)
                    .map(Some)
            }
        }
    }

    /// Runs the CNI plugin `binary` for pod `name` with `conf` (the previous plugin's result added).
    fn run_plugin(
        &self,
        binary: &std::path::Path,
        mut conf: serde_json::Value,
        command: &str,
        name: &str,
    ) -> anyhow::Result<(bool, serde_json::Value)> {
        let spec = self.pod(name);
        let pod = self.cluster.pod(name);
        conf["prevResult"] = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": pod.netns_path()}],
            "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}],
        });
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID=sandbox-{name};K8S_POD_UID=uid-{name}",
            spec.namespace
        );
        let mut plugin = std::process::Command::new(binary);
        plugin
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{name}"))
            .env("CNI_NETNS", pod.netns_path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", args);
        let out = crate::cluster::output_with_input(&mut plugin, conf.to_string().as_bytes())
            .context("running veil-cni")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(&stdout).with_context(|| {
            format!(
                "veil-cni printed no JSON: {stdout:?} (stderr {:?})",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.success(), json))
    }
}

/// The objects of a spec's `policies` as the API server holds them (a uid, a generation and a
/// creation time added): (resource, file name, object). The harness reads no YAML, so in
/// Kubernetes mode each entry is one line, `- {…}` with the object in JSON (YAML too, for the mesh
/// file); anything else is refused rather than left out of the API.
pub(super) fn api_policies(policies: &str) -> anyhow::Result<Vec<(&'static str, String, Value)>> {
    let mut out = Vec::new();
    let lines = policies.lines().map(str::trim);
    for (i, line) in lines
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
    {
        let entry = line.strip_prefix("- ").with_context(|| {
            format!("policies[{i}]: in Kubernetes mode each policy is one line, `- {{…}}` in JSON: {line:?}")
        })?;
        let mut object: Value = serde_json::from_str(entry).with_context(|| {
            format!("policies[{i}]: in Kubernetes mode each policy is one line of JSON: {entry:?}")
        })?;
        let field = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("policies[{i}]: no {pointer}"))
        };
        let (kind, namespace, name) = (
            field("/kind")?,
            field("/metadata/namespace")?,
            field("/metadata/name")?,
        );
        let resource = match kind.as_str() {
            "AuthorizationPolicy" => "authorizationpolicies",
            "PeerAuthentication" => "peerauthentications",
            "Telemetry" => "telemetries",
            other => bail!("policies[{i}]: {other} is not a kind of veil's API"),
        };
        let metadata = object["metadata"]
            .as_object_mut()
            .with_context(|| format!("policies[{i}]: metadata is no object"))?;
        for (key, value) in [
            ("uid", json!(format!("uid-{resource}-{namespace}-{name}"))),
            ("generation", json!(1)),
            ("creationTimestamp", json!("2026-12-01T09:00:00Z")),
        ] {
            metadata.entry(key).or_insert(value);
        }
        out.push((resource, format!("{namespace}.{name}"), object));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_become_api_objects_and_entries_the_harness_cannot_read_are_refused() {
        let policies = r#"
  - {"apiVersion": "security.veil.dev/v1", "kind": "Telemetry", "metadata": {"name": "quiet", "namespace": "user-data"}, "spec": {"accessLog": {"level": "off"}}}
  # a comment
  - {"apiVersion": "security.veil.dev/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny", "namespace": "shop", "uid": "ap-1"}, "spec": {"action": "DENY"}}
"#;
        let objects = api_policies(policies).unwrap();
        assert_eq!(objects.len(), 2);
        let (resource, key, telemetry) = &objects[0];
        assert_eq!(
            (*resource, key.as_str()),
            ("telemetries", "user-data.quiet")
        );
        assert_eq!(telemetry["spec"]["accessLog"]["level"], "off");
        assert_eq!(
            telemetry["metadata"]["uid"],
            "uid-telemetries-user-data-quiet"
        );
        assert_eq!(telemetry["metadata"]["generation"], 1);
        assert_eq!(objects[1].0, "authorizationpolicies");
        assert_eq!(objects[1].2["metadata"]["uid"], "ap-1", "kept");
        assert!(api_policies("").unwrap().is_empty());

        let block = "  - apiVersion: security.veil.dev/v1\n    kind: Telemetry\n";
        let e = api_policies(block).unwrap_err().to_string();
        assert!(e.contains("one line of JSON"), "{e}");
        let unknown = r#"  - {"kind": "Sidecar", "metadata": {"name": "s", "namespace": "n"}}"#;
        let e = api_policies(unknown).unwrap_err().to_string();
        assert!(e.contains("not a kind of veil's API"), "{e}");
        let nameless = r#"  - {"kind": "Telemetry", "metadata": {"namespace": "n"}}"#;
        let e = api_policies(nameless).unwrap_err().to_string();
        assert!(e.contains("no /metadata/name"), "{e}");
    }
}
