//! `veil check --pre`: each judgement on the JSON a real API server returns, and the lists it
//! checks kept to the chart.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::super::api::ReadError;
use super::super::preflight::{
    Access, CREATES, MIN_KUBERNETES, access_of, judge_existing, judge_network_plugin, judge_nodes,
    judge_permissions, judge_version, other_meshes, parse_version, plugins, pod_security,
};
use super::super::{Check, Outcome};

fn charts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts")
}

#[test]
fn versions_are_read_as_distributions_write_them() {
    assert_eq!(parse_version("v1.33.2"), Some((1, 33)));
    assert_eq!(parse_version("v1.30.4-eks-a737599"), Some((1, 30)));
    assert_eq!(parse_version("v1.31.1+k3s1"), Some((1, 31)));
    assert_eq!(parse_version("v1.29.10-gke.1227000"), Some((1, 29)));
    assert_eq!(parse_version("v1"), None);
    assert_eq!(parse_version("vX.Y"), None);
    assert_eq!(judge_version(Some("v1.29.0")).result, Outcome::Ok);
    assert_eq!(judge_version(Some("v1.33.2")).result, Outcome::Ok);
    let old = judge_version(Some("v1.28.15"));
    assert_eq!(old.result, Outcome::Failed, "{old:?}");
    assert!(old.message.contains("older than 1.29"), "{}", old.message);
    assert_eq!(judge_version(Some("banana")).result, Outcome::Warning);
    assert_eq!(judge_version(None).result, Outcome::Warning);
}

#[test]
fn the_oldest_kubernetes_is_the_charts() {
    let (major, minor) = MIN_KUBERNETES;
    for chart in ["veil", "waypoint"] {
        let text = std::fs::read_to_string(charts().join(chart).join("Chart.yaml")).unwrap();
        assert!(
            text.contains(&format!("kubeVersion: \">={major}.{minor}.0-0\"")),
            "charts/{chart}/Chart.yaml names another oldest Kubernetes than veil check --pre"
        );
    }
}

/// Templates that create nothing with the chart's default values (each starts with a condition
/// or a loop over a list that is empty by default).
const OPTIONAL: [&str; 3] = [
    "networkpolicy.yaml",
    "podmonitor.yaml",
    "resourcequota.yaml",
];

/// The resource of a kind (the chart's kinds are regular plurals, but for `Policy` ones).
fn resource_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with("policy") {
        format!("{}ies", lower.trim_end_matches('y'))
    } else {
        format!("{lower}s")
    }
}

#[test]
fn what_the_preflight_asks_about_is_what_the_chart_creates() {
    let mut created = BTreeSet::new();
    let dir = charts().join("veil/templates");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if !file.ends_with(".yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if OPTIONAL.contains(&file.as_str()) {
            let first = text.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("{{- if") || first.starts_with("{{- range"),
                "{file} is taken as optional but creates objects unconditionally"
            );
            continue;
        }
        let mut api_version = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("apiVersion: ") {
                api_version = Some(v.trim().to_owned());
            }
            if let Some(kind) = line.strip_prefix("kind: ") {
                let version = api_version.clone().expect("apiVersion before kind");
                let group = version.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
                created.insert((group, resource_of(kind.trim())));
            }
        }
    }
    let crds = std::fs::read_dir(charts().join("veil/crds"))
        .unwrap()
        .count();
    assert!(crds > 0);
    created.insert((
        "apiextensions.k8s.io".to_owned(),
        "customresourcedefinitions".to_owned(),
    ));
    let asked: BTreeSet<(String, String)> = CREATES
        .iter()
        .map(|(g, r, _)| ((*g).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(
        asked, created,
        "veil check --pre asks about what the chart creates"
    );
}

#[test]
fn access_reviews_are_read_as_the_api_server_answers_them() {
    let allowed = json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {"creationTimestamp": null},
        "spec": {"resourceAttributes": {"namespace": "veil-system", "verb": "create", "group": "apps", "resource": "daemonsets"}},
        "status": {"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"cluster-admin\" of ClusterRole \"cluster-admin\" to Group \"system:masters\""}});
    assert_eq!(access_of(&allowed), Access::Allowed);
    let denied = json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {"creationTimestamp": null},
        "spec": {"resourceAttributes": {"verb": "create", "group": "rbac.authorization.k8s.io", "resource": "clusterroles"}},
        "status": {"allowed": false}});
    assert_eq!(
        access_of(&denied),
        Access::Denied("no rule allows it".into())
    );
    let failed =
        json!({"status": {"allowed": false, "reason": "", "evaluationError": "webhook timed out"}});
    assert_eq!(
        access_of(&failed),
        Access::Denied("webhook timed out".into())
    );
    assert!(matches!(
        access_of(&json!({"kind": "Status"})),
        Access::Unknown(_)
    ));
    // A string where a boolean belongs decides nothing.
    assert!(matches!(
        access_of(&json!({"status": {"allowed": "true"}})),
        Access::Unknown(_)
    ));

    let all = vec![
        ("daemonsets.apps in veil-system".to_owned(), Access::Allowed),
        (
            "clusterroles.rbac.authorization.k8s.io".to_owned(),
            Access::Allowed,
        ),
    ];
    assert_eq!(judge_permissions(&all).result, Outcome::Ok);
    let mut some = all.clone();
    some.push((
        "customresourcedefinitions.apiextensions.k8s.io".into(),
        Access::Denied("no rule allows it".into()),
    ));
    some.push((
        "services in veil-system".into(),
        Access::Unknown("HTTP 500: etcd".into()),
    ));
    let check = judge_permissions(&some);
    assert_eq!(check.result, Outcome::Failed);
    assert!(check.message.starts_with("1 of the 4"), "{}", check.message);
    assert!(
        check.details[0].contains("may not create customresourcedefinitions"),
        "{:?}",
        check.details
    );
    assert!(
        check.details[1].contains("could not ask about services"),
        "{:?}",
        check.details
    );
    let unknown = judge_permissions(&[("services in x".into(), Access::Unknown("timeout".into()))]);
    assert_eq!(unknown.result, Outcome::Warning, "not asked is never fine");
}

#[test]
fn an_install_or_its_leftovers_are_found() {
    let none: Vec<String> = Vec::new();
    assert_eq!(
        judge_existing("veil-system", &none, &none, &none, Vec::new()).result,
        Outcome::Ok
    );
    let installed = judge_existing(
        "veil-system",
        &["daemonset/ztunnel".into()],
        &none,
        &none,
        Vec::new(),
    );
    assert_eq!(installed.result, Outcome::Failed);
    assert!(
        installed
            .message
            .contains("already installed in veil-system"),
        "{}",
        installed.message
    );
    let leftover = judge_existing(
        "veil-system",
        &none,
        &["clusterroles/veil-ca-veil-system".into()],
        &none,
        Vec::new(),
    );
    assert_eq!(leftover.result, Outcome::Failed);
    assert!(
        leftover
            .hint
            .as_deref()
            .unwrap()
            .contains("kubectl delete clusterroles/veil-ca-veil-system")
    );
    let crds = judge_existing(
        "veil-system",
        &none,
        &none,
        &["telemetries.security.veil.dev".into()],
        Vec::new(),
    );
    assert_eq!(crds.result, Outcome::Warning);
    let unread = judge_existing(
        "veil-system",
        &none,
        &none,
        &none,
        vec!["clusterroles/x: HTTP 403: forbidden".into()],
    );
    assert_eq!(
        unread.result,
        Outcome::Warning,
        "what could not be read is not taken as absent"
    );
    assert!(unread.details[0].contains("403"));
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": name, "uid": "4f6b1c9e-0d0a-4d7e-9a53-1f2d9c1a7b10", "resourceVersion": "12", "creationTimestamp": "2026-11-02T10:00:00Z", "labels": labels},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

#[test]
fn ztunnel_needs_a_namespace_that_admits_privileged_pods() {
    assert_eq!(pod_security("veil-system", &Ok(None)).result, Outcome::Ok);
    let plain = namespace(
        "veil-system",
        json!({"kubernetes.io/metadata.name": "veil-system"}),
    );
    assert_eq!(
        pod_security("veil-system", &Ok(Some(plain))).result,
        Outcome::Ok
    );
    let privileged = namespace(
        "veil-system",
        json!({"pod-security.kubernetes.io/enforce": "privileged"}),
    );
    assert_eq!(
        pod_security("veil-system", &Ok(Some(privileged))).result,
        Outcome::Ok
    );
    for level in ["baseline", "restricted"] {
        let strict = namespace(
            "veil-system",
            json!({"pod-security.kubernetes.io/enforce": level}),
        );
        let check = pod_security("veil-system", &Ok(Some(strict)));
        assert_eq!(check.result, Outcome::Failed, "{level}");
        assert!(check.hint.unwrap().contains("=privileged"));
    }
    let unread = pod_security("veil-system", &Err("HTTP 403: forbidden".into()));
    assert_eq!(unread.result, Outcome::Warning);
}

/// A Node as `kubectl get node -o json` shows one (trimmed of images and addresses).
fn node(name: &str, os: &str, arch: &str, runtime: &str, ready: &str) -> Value {
    json!({"kind": "Node", "apiVersion": "v1",
    "metadata": {"name": name, "uid": "0d3c6a52-7b8e-4b8f-a1a7-3c1b9a3e2f10", "resourceVersion": "1830", "creationTimestamp": "2026-11-02T10:00:00Z",
        "labels": {"beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": os, "kubernetes.io/arch": arch, "kubernetes.io/hostname": name, "kubernetes.io/os": os},
        "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
    "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": format!("kind://docker/kind/{name}")},
    "status": {
        "capacity": {"cpu": "2", "memory": "24564164Ki", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "24564164Ki", "pods": "110"},
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-12-04T08:00:00Z", "lastTransitionTime": "2026-11-02T10:00:00Z", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
            {"type": "Ready", "status": ready, "lastHeartbeatTime": "2026-12-04T08:00:00Z", "lastTransitionTime": "2026-11-02T10:00:30Z", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
        ],
        "addresses": [{"type": "InternalIP", "address": "172.18.0.3"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "6e1f4d3c9b2a4e8f8a7b6c5d4e3f2a1b", "systemUUID": "6e1f4d3c-9b2a-4e8f-8a7b-6c5d4e3f2a1b", "bootID": "2b7c9d1e-3f4a-4b5c-8d6e-7f8091a2b3c4",
            "kernelVersion": "6.1.0-27-cloud-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": runtime,
            "kubeletVersion": "v1.33.2", "kubeProxyVersion": "", "operatingSystem": os, "architecture": arch}
    }})
}

#[test]
fn nodes_ztunnel_cannot_serve_are_named() {
    let good = || node("node-a", "linux", "amd64", "containerd://2.1.1", "True");
    let ok = judge_nodes(&[
        good(),
        node("node-b", "linux", "amd64", "cri-o://1.33.0", "True"),
    ]);
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");
    assert_eq!(ok.message, "ztunnel can serve 2 of 2 nodes");

    let mixed = judge_nodes(&[
        good(),
        node("arm-1", "linux", "arm64", "containerd://2.1.1", "True"),
        node("win-1", "windows", "amd64", "containerd://1.7.22", "True"),
    ]);
    assert_eq!(mixed.result, Outcome::Warning, "{mixed:?}");
    assert_eq!(mixed.message, "ztunnel can serve 1 of 3 nodes");
    assert!(
        mixed
            .details
            .iter()
            .any(|d| d.starts_with("arm-1: \"arm64\"") && d.contains("outside the mesh")),
        "{:?}",
        mixed.details
    );
    assert!(
        mixed
            .details
            .iter()
            .any(|d| d.starts_with("win-1: \"windows\"")),
        "{:?}",
        mixed.details
    );

    let none = judge_nodes(&[node(
        "arm-1",
        "linux",
        "arm64",
        "containerd://2.1.1",
        "True",
    )]);
    assert_eq!(none.result, Outcome::Failed);
    assert_eq!(
        judge_nodes(&[]).result,
        Outcome::Failed,
        "no node: nothing to run on"
    );

    let docker = judge_nodes(&[node("old", "linux", "amd64", "docker://24.0.7", "True")]);
    assert_eq!(docker.result, Outcome::Warning);
    assert!(docker.details[0].contains("docker://24.0.7"));
    let not_ready = judge_nodes(&[node(
        "node-a",
        "linux",
        "amd64",
        "containerd://2.1.1",
        "False",
    )]);
    assert_eq!(not_ready.result, Outcome::Warning);
    assert_eq!(not_ready.details, ["node-a: not Ready"]);

    let mut malformed = good();
    malformed["status"]["nodeInfo"]["architecture"] = json!(64);
    let check = judge_nodes(&[good(), malformed]);
    assert_eq!(
        check.result,
        Outcome::Warning,
        "an unreadable node is not counted as fine"
    );
    assert_eq!(
        check.message.split(';').next(),
        Some("ztunnel can serve 1 of 2 nodes")
    );
}

fn daemonset(namespace: &str, name: &str) -> Value {
    json!({"kind": "DaemonSet", "apiVersion": "apps/v1",
        "metadata": {"name": name, "namespace": namespace, "uid": "8b1d7c2e-5f3a-4c6b-9d8e-0a1b2c3d4e5f", "resourceVersion": "901", "generation": 1, "creationTimestamp": "2026-11-02T10:00:00Z"},
        "spec": {"selector": {"matchLabels": {"k8s-app": name}}, "template": {"metadata": {"labels": {"k8s-app": name}}, "spec": {"containers": [{"name": name, "image": format!("example/{name}:1")}]}}},
        "status": {"currentNumberScheduled": 3, "numberMisscheduled": 0, "desiredNumberScheduled": 3, "numberReady": 3, "observedGeneration": 1, "updatedNumberScheduled": 3, "numberAvailable": 3}})
}

#[test]
fn the_network_plugin_must_let_veils_chain_after_it() {
    let calico = plugins(&[
        daemonset("kube-system", "kube-proxy"),
        daemonset("calico-system", "calico-node"),
    ]);
    assert_eq!(calico, [("calico-node", "Calico")]);
    assert_eq!(judge_network_plugin(&calico, None).result, Outcome::Ok);
    let cilium = plugins(&[daemonset("kube-system", "cilium")]);
    let exclusive = judge_network_plugin(&cilium, None);
    assert_eq!(
        exclusive.result,
        Outcome::Failed,
        "Cilium's default is exclusive"
    );
    assert!(exclusive.hint.unwrap().contains("cni.exclusive=false"));
    assert_eq!(
        judge_network_plugin(&cilium, Some("true")).result,
        Outcome::Failed
    );
    assert_eq!(
        judge_network_plugin(&cilium, Some("false")).result,
        Outcome::Ok
    );
    assert_eq!(judge_network_plugin(&[], None).result, Outcome::Warning);
}

#[test]
fn another_mesh_is_found_and_a_namespace_in_two_fails() {
    let ours = daemonset("veil-system", "ztunnel");
    let clean: Result<Vec<Value>, ReadError> = Ok(vec![ours.clone()]);
    let plain = Ok(vec![namespace("shop", json!({}))]);
    assert_eq!(
        other_meshes("veil-system", &clean, &plain).result,
        Outcome::Ok,
        "veil's own ztunnel is not another mesh"
    );

    let istio: Result<Vec<Value>, ReadError> = Ok(vec![ours, daemonset("istio-system", "ztunnel")]);
    let labelled = Ok(vec![
        namespace("legacy", json!({"istio-injection": "enabled"})),
        namespace("shop", json!({})),
    ]);
    let check = other_meshes("veil-system", &istio, &labelled);
    assert_eq!(check.result, Outcome::Warning, "{check:?}");
    assert_eq!(
        check.details,
        [
            "daemonset istio-system/ztunnel: Istio's ambient mode (or its CNI)",
            "namespace legacy: Istio sidecars"
        ]
    );

    let mut both = namespace(
        "shop",
        json!({"istio.io/dataplane-mode": "ambient", "veil.dev/dataplane-mode": "ambient"}),
    );
    let mut linkerd = namespace("emojivoto", json!({}));
    linkerd["metadata"]["annotations"] = json!({"linkerd.io/inject": "enabled"});
    let conflict = other_meshes("veil-system", &clean, &Ok(vec![both.clone(), linkerd]));
    assert_eq!(conflict.result, Outcome::Failed);
    assert!(
        conflict.details[0].starts_with("namespace shop: Istio ambient and veil"),
        "{:?}",
        conflict.details
    );
    assert_eq!(conflict.details[1], "namespace emojivoto: Linkerd");

    both["metadata"]["labels"] = json!({"veil.dev/dataplane-mode": "ambient"});
    let unread: Result<Vec<Value>, ReadError> = Err(ReadError::Status {
        code: 403,
        message: "forbidden".into(),
    });
    let check: Check = other_meshes("veil-system", &unread, &Ok(vec![both]));
    assert_eq!(
        check.result,
        Outcome::Warning,
        "DaemonSets not read: not judged fine"
    );
    let mut malformed = namespace("shop", json!({}));
    malformed["metadata"]["labels"] = json!("istio-injection=enabled");
    let check = other_meshes("veil-system", &Ok(Vec::new()), &Ok(vec![malformed]));
    assert_eq!(
        check.result,
        Outcome::Warning,
        "a namespace not read is not judged fine"
    );
}
