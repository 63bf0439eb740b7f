//! End-to-end: `veil check --pre`, the real binary with only a kubeconfig, against the stand-in API
//! server serving a cluster before veil is installed — nodes, the network plugin's DaemonSet,
//! namespaces as a real API server returns them, and the answers to access reviews. Each case
//! changes what a cluster would (a permission taken away, an earlier install's leftovers, the
//! install itself, another mesh, a node ztunnel cannot serve) and checks that exactly the checks
//! concerned change, with the exit status. Loopback only: needs no root.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use veil_e2e::apiserver::{Api, spawn};
use veil_e2e::install::{self, CheckRun, NAMESPACE};

fn preflight(kubeconfig: &Path, output: &[&str]) -> CheckRun {
    let args: Vec<&str> = ["--pre"].iter().chain(output).copied().collect();
    install::veil_check(NAMESPACE, kubeconfig, &args)
}

fn json_run(kubeconfig: &Path) -> CheckRun {
    preflight(kubeconfig, &["-o", "json"])
}

/// A Node as `kubectl get node -o json` shows a kind worker (images and most conditions trimmed).
fn node(name: &str, arch: &str) -> Value {
    json!({"kind": "Node", "apiVersion": "v1",
    "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1830", "creationTimestamp": "2026-11-02T10:00:00Z",
        "labels": {"beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": arch, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        "annotations": {"kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock", "node.alpha.kubernetes.io/ttl": "0"}},
    "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": format!("kind://docker/kind/{name}")},
    "status": {
        "capacity": {"cpu": "2", "ephemeral-storage": "263174212Ki", "memory": "24564164Ki", "pods": "110"},
        "allocatable": {"cpu": "2", "ephemeral-storage": "263174212Ki", "memory": "24564164Ki", "pods": "110"},
        "conditions": [
            {"type": "DiskPressure", "status": "False", "lastHeartbeatTime": "2026-12-04T08:00:00Z", "lastTransitionTime": "2026-11-02T10:00:00Z", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure"},
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-04T08:00:00Z", "lastTransitionTime": "2026-11-02T10:00:30Z", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
        ],
        "addresses": [{"type": "InternalIP", "address": "172.18.0.3"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "6e1f4d3c9b2a4e8f8a7b6c5d4e3f2a1b", "systemUUID": "6e1f4d3c-9b2a-4e8f-8a7b-6c5d4e3f2a1b", "bootID": "2b7c9d1e-3f4a-4b5c-8d6e-7f8091a2b3c4",
            "kernelVersion": "6.1.0-27-cloud-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://2.1.1",
            "kubeletVersion": "v1.33.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": arch}
    }})
}

/// A kube-system DaemonSet such as kind's network plugin.
fn daemonset(namespace: &str, name: &str) -> Value {
    json!({"kind": "DaemonSet", "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "resourceVersion": "901", "generation": 1, "creationTimestamp": "2026-11-02T10:00:00Z", "labels": {"app": name}},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": format!("docker.io/kindest/{name}:v20250512")}]}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}, "revisionHistoryLimit": 10},
        "status": {"currentNumberScheduled": 2, "numberMisscheduled": 0, "desiredNumberScheduled": 2, "numberReady": 2, "observedGeneration": 1, "updatedNumberScheduled": 2, "numberAvailable": 2}})
}

/// A cluster before veil: two amd64 nodes, kindnet, kube-proxy, the usual namespaces.
fn cluster() -> (Api, PathBuf, tempfile::TempDir) {
    let api = Api::default();
    api.change(|s| {
        install::put(s, node("node-a", "amd64"));
        install::put(s, node("node-b", "amd64"));
        install::put(s, daemonset("kube-system", "kindnet"));
        install::put(s, daemonset("kube-system", "kube-proxy"));
        for ns in install::objects("Namespace") {
            if ns["metadata"]["name"] != NAMESPACE {
                install::put(s, ns);
            }
        }
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let server = listener.local_addr().unwrap();
    spawn(listener, api.clone()).expect("serving");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        veil_e2e::kube::kubeconfig(&format!("http://{server}")),
    )
    .unwrap();
    (api, kubeconfig, dir)
}

#[test]
fn preflight_judges_a_cluster_before_veil_is_installed() {
    let (api, kubeconfig, _dir) = cluster();

    // Ready: every check ok, the namespace to be created asked about too.
    let ready = json_run(&kubeconfig);
    assert_eq!(ready.not_ok(), Vec::<String>::new(), "{:#}", ready.report);
    assert_eq!(ready.code, 0);
    assert_eq!(ready.report["preflight"], true);
    assert_eq!(
        ready.names(),
        [
            "kubernetes-api",
            "kubernetes-version",
            "install-permissions",
            "existing-install",
            "pod-security",
            "nodes",
            "network-plugin",
            "other-meshes",
        ]
    );
    assert_eq!(
        ready.check("install-permissions")["message"],
        "you may create all 12 kinds of object the chart creates"
    );
    assert_eq!(
        ready.check("nodes")["message"],
        "ztunnel can serve 2 of 2 nodes"
    );
    assert_eq!(
        ready.check("network-plugin")["message"],
        "kindnet (lets veil's plugin chain after it)"
    );
    let table = preflight(&kubeconfig, &[]);
    assert_eq!(table.code, 0);
    assert!(
        table
            .stdout
            .contains("installing veil into namespace veil-system: all checks passed"),
        "{}",
        table.stdout
    );

    // Credentials that may not create ClusterRoles: the install would fail half-way.
    api.change(|s| s.deny("rbac.authorization.k8s.io", "clusterroles"));
    let denied = json_run(&kubeconfig);
    assert_eq!(denied.not_ok(), ["install-permissions"]);
    assert_eq!(denied.code, 1);
    let details = denied.check("install-permissions")["details"].to_string();
    assert!(
        details.contains("may not create clusterroles.rbac.authorization.k8s.io"),
        "{details}"
    );

    // Another mesh's ambient ztunnel, and an arm64 node ztunnel's image cannot run on.
    let (api, kubeconfig, _dir) = cluster();
    api.change(|s| {
        install::put(s, daemonset("istio-system", "ztunnel"));
        install::put(s, node("node-arm", "arm64"));
    });
    let mixed = json_run(&kubeconfig);
    assert_eq!(
        mixed.not_ok(),
        ["nodes", "other-meshes"],
        "{:#}",
        mixed.report
    );
    assert_eq!(mixed.code, 0, "warnings only");
    assert_eq!(
        mixed.check("nodes")["message"],
        "ztunnel can serve 2 of 3 nodes"
    );

    // An earlier install's ClusterRole left behind: `helm install` would refuse it.
    api.change(|s| {
        install::put(
            s,
            json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
                "metadata": {"name": "veil-ca-veil-system", "uid": "uid-cr", "resourceVersion": "77", "creationTimestamp": "2026-11-02T10:00:00Z",
                    "labels": {"app.kubernetes.io/managed-by": "Helm"}, "annotations": {"meta.helm.sh/release-name": "veil", "meta.helm.sh/release-namespace": "veil-system"}},
                "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]}),
        );
    });
    let leftover = json_run(&kubeconfig);
    assert_eq!(leftover.check("existing-install")["result"], "failed");
    assert!(
        leftover.check("existing-install")["hint"]
            .to_string()
            .contains("kubectl delete clusterroles/veil-ca-veil-system"),
        "{:#}",
        leftover.report
    );
    assert_eq!(leftover.code, 1);

    // veil installed already (its namespace, Deployments, DaemonSet and CRDs).
    let (api, kubeconfig, _dir) = cluster();
    api.change(|s| {
        for kind in [
            "Namespace",
            "Deployment",
            "DaemonSet",
            "CustomResourceDefinition",
        ] {
            for object in install::objects(kind) {
                install::put(s, object);
            }
        }
    });
    let installed = json_run(&kubeconfig);
    assert_eq!(
        installed.not_ok(),
        ["existing-install"],
        "{:#}",
        installed.report
    );
    assert!(
        installed.check("existing-install")["message"]
            .to_string()
            .contains("veil is already installed in veil-system: daemonset/ztunnel, deployment/veil-ca, deployment/veil-controller"),
        "{:#}",
        installed.report
    );
    assert_eq!(
        installed.check("install-permissions")["message"],
        "you may create all 11 kinds of object the chart creates",
        "the namespace exists: creating it is not asked about"
    );
    assert_eq!(installed.code, 1);
}

#[test]
fn preflight_without_an_api_server_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        veil_e2e::kube::kubeconfig(&format!("http://{addr}")),
    )
    .unwrap();
    let run = json_run(&kubeconfig);
    assert_eq!(run.code, 2, "{:#}", run.report);
    assert_eq!(run.check("kubernetes-api")["result"], "failed");
}
