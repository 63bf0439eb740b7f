//! API objects as `kubectl get -o json` shows them for a veil install (the chart's names, labels and
//! arguments; the fields the API server and controllers fill in), varied by the tests.

use serde_json::{Value, json};

/// The uid of the ztunnel pod the events are about.
pub(super) const POD_UID: &str = "3f1c9a52-8d2e-4b7a-9c61-2e5d7f0a4b18";
const DS_UID: &str = "b7e2d4c1-5a3f-4e8b-8d9c-1f2a3b4c5d6e";

fn chart_labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/instance": "veil",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "veil",
        "app.kubernetes.io/version": "0.1.0",
        "helm.sh/chart": "veil-0.1.0"
    })
}

/// A Deployment of the chart with `replicas` wanted and the counts in its status.
pub(super) fn deployment(
    name: &str,
    replicas: i32,
    available: i32,
    ready: i32,
    updated: i32,
) -> Value {
    let available_condition = if available >= replicas {
        json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability.", "lastUpdateTime": "2026-12-01T09:58:12Z", "lastTransitionTime": "2026-12-01T09:58:12Z"})
    } else {
        json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability.", "lastUpdateTime": "2026-12-01T10:02:40Z", "lastTransitionTime": "2026-12-01T10:02:40Z"})
    };
    let mut status = json!({
        "observedGeneration": 3,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": [
            available_condition,
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": format!("ReplicaSet \"{name}-6d4b9c7f5d\" has successfully progressed."), "lastUpdateTime": "2026-12-01T09:58:12Z", "lastTransitionTime": "2026-11-28T14:03:51Z"}
        ]
    });
    if available < replicas {
        status["unavailableReplicas"] = json!(replicas - available);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "veil-system",
            "uid": "0c5a7e2f-1b3d-4c6e-9f8a-7d6c5b4a3928",
            "resourceVersion": "4823917",
            "generation": 3,
            "creationTimestamp": "2026-11-28T14:03:51Z",
            "labels": chart_labels(name),
            "annotations": {"deployment.kubernetes.io/revision": "3", "meta.helm.sh/release-name": "veil", "meta.helm.sh/release-namespace": "veil-system"}
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "veil", "app.kubernetes.io/name": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"creationTimestamp": null, "labels": chart_labels(name)},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{"name": "ca", "image": "veil:0.1.0", "imagePullPolicy": "IfNotPresent", "args": ["--kubernetes", "--trust-domain=cluster.local"], "ports": [{"name": "grpc-ca", "containerPort": 15012, "protocol": "TCP"}], "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst",
                    "schedulerName": "default-scheduler",
                    "terminationGracePeriodSeconds": 30
                }
            }
        },
        "status": status
    })
}

/// The ztunnel DaemonSet with `desired` nodes, `ready` of them ready, `updated` up to date.
pub(super) fn daemonset(desired: i32, ready: i32, updated: i32) -> Value {
    let mut status = json!({
        "currentNumberScheduled": desired,
        "desiredNumberScheduled": desired,
        "numberAvailable": ready,
        "numberMisscheduled": 0,
        "numberReady": ready,
        "observedGeneration": 2,
        "updatedNumberScheduled": updated
    });
    if ready < desired {
        status["numberUnavailable"] = json!(desired - ready);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": "ztunnel",
            "namespace": "veil-system",
            "uid": DS_UID,
            "resourceVersion": "4824410",
            "generation": 2,
            "creationTimestamp": "2026-11-28T14:03:51Z",
            "labels": chart_labels("ztunnel"),
            "annotations": {"deprecated.daemonset.template.generation": "2", "meta.helm.sh/release-name": "veil", "meta.helm.sh/release-namespace": "veil-system"}
        },
        "spec": {
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "veil", "app.kubernetes.io/name": "ztunnel"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"creationTimestamp": null, "labels": chart_labels("ztunnel"), "annotations": {"prometheus.io/port": "15020", "prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"}},
                "spec": {
                    "hostNetwork": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "serviceAccountName": "ztunnel",
                    "priorityClassName": "system-node-critical",
                    "containers": [{
                        "name": "ztunnel",
                        "image": "veil:0.1.0",
                        "command": ["/usr/local/bin/veil-ztunnel"],
                        "args": ["--node=$(NODE_NAME)", "--trust-domain=cluster.local", "--root-cert=/var/run/secrets/veil/root/root-cert.pem", "--cert-ttl=24h", "--kubelet-probes=true"],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "imagePullPolicy": "IfNotPresent"
                    }],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"operator": "Exists"}],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 3630
                }
            }
        },
        "status": status
    })
}

/// A ztunnel pod on `node` (host network: the pod's address is the node's), its container in
/// `state`, restarted `restarts` times.
pub(super) fn ztunnel_pod(
    name: &str,
    node: &str,
    ip: &str,
    ready: bool,
    state: Value,
    restarts: i32,
) -> Value {
    let flag = if ready { "True" } else { "False" };
    let mut container = json!({
        "name": "ztunnel",
        "image": "docker.io/library/veil:0.1.0",
        "imageID": "docker.io/library/veil@sha256:5e8a1c0b7f3d2a9e6c4b1d8f0a7e3c5b9d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c",
        "containerID": "containerd://9b1d3f5a7c9e1b3d5f7a9c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d",
        "ready": ready,
        "started": true,
        "restartCount": restarts,
        "state": state
    });
    if restarts > 0 {
        container["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T10:00:04Z", "containerID": "containerd://1c3e5a7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c"}});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": "ztunnel-",
            "namespace": "veil-system",
            "uid": POD_UID,
            "resourceVersion": "4824388",
            "creationTimestamp": "2026-12-01T09:59:58Z",
            "labels": {"app.kubernetes.io/instance": "veil", "app.kubernetes.io/name": "ztunnel", "controller-revision-hash": "6b8f9d7c5d", "pod-template-generation": "2", "veil.dev/dataplane-mode": "none"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ztunnel", "uid": DS_UID, "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "serviceAccountName": "ztunnel",
            "containers": [{"name": "ztunnel", "image": "veil:0.1.0", "args": ["--node=$(NODE_NAME)"]}],
            "initContainers": [{"name": "install-cni", "image": "veil:0.1.0", "command": ["/usr/local/bin/veil-cni"]}]
        },
        "status": {
            "phase": "Running",
            "hostIP": ip,
            "hostIPs": [{"ip": ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "qosClass": "Burstable",
            "startTime": "2026-12-01T09:59:58Z",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-01T09:59:59Z"},
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-01T10:00:00Z"},
                {"type": "Ready", "status": flag, "lastProbeTime": null, "lastTransitionTime": "2026-12-01T10:00:05Z"},
                {"type": "ContainersReady", "status": flag, "lastProbeTime": null, "lastTransitionTime": "2026-12-01T10:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-12-01T09:59:58Z"}
            ],
            "initContainerStatuses": [{
                "name": "install-cni",
                "image": "docker.io/library/veil:0.1.0",
                "imageID": "docker.io/library/veil@sha256:5e8a1c0b7f3d2a9e6c4b1d8f0a7e3c5b9d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c",
                "containerID": "containerd://2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f",
                "ready": true,
                "started": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-12-01T09:59:59Z", "finishedAt": "2026-12-01T10:00:00Z", "containerID": "containerd://2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f"}}
            }],
            "containerStatuses": [container]
        }
    })
}

/// A core/v1 Event from the kubelet about pod `pod`, last seen `last`, `count` times.
pub(super) fn event(
    pod: &str,
    uid: &str,
    reason: &str,
    message: &str,
    last: &str,
    count: i32,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{pod}.187d2b3c4e5f6a7b"), "namespace": "veil-system", "uid": "6e8a0c2e-4b6d-4f8a-8c2e-4b6d8f0a2c4e", "resourceVersion": "4824512", "creationTimestamp": "2026-12-01T10:00:10Z"},
        "involvedObject": {"kind": "Pod", "namespace": "veil-system", "name": pod, "uid": uid, "apiVersion": "v1", "resourceVersion": "4824388", "fieldPath": "spec.containers{ztunnel}"},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "node-b"},
        "firstTimestamp": "2026-12-01T10:00:10Z",
        "lastTimestamp": last,
        "count": count,
        "type": "Warning",
        "eventTime": null,
        "reportingComponent": "kubelet",
        "reportingInstance": "node-b"
    })
}

/// An AuthorizationPolicy at generation 1 whose status (as the controller writes it) has
/// `Accepted` = `accepted` (status, reason, message), observed at `observed`; `None`: no status yet.
pub(super) fn policy(
    ns: &str,
    name: &str,
    accepted: Option<(&str, &str, &str)>,
    observed: i64,
) -> Value {
    let mut p = json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "4821001", "generation": 1, "creationTimestamp": "2026-12-01T08:00:00Z"},
        "spec": {"action": "ALLOW", "selector": {"matchLabels": {"app": "web"}}, "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]}
    });
    if let Some((status, reason, message)) = accepted {
        p["status"] = json!({"conditions": [
            {"type": "Accepted", "status": status, "reason": reason, "message": message, "observedGeneration": observed, "lastTransitionTime": "2026-12-01T08:00:01Z"},
            {"type": "Enforced", "status": "True", "reason": "Ztunnel", "message": "enforced by the ztunnels of 2 workloads", "observedGeneration": observed, "lastTransitionTime": "2026-12-01T08:00:01Z"}
        ]});
    }
    p
}

/// A CRD as installed from the chart, `established` or not, serving `version`.
pub(super) fn crd(name: &str, established: bool, version: &str) -> Value {
    let (plural, group) = name.split_once('.').unwrap_or((name, ""));
    let status = if established { "True" } else { "False" };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "uid": "9d1f3a5c-7e9b-4d1f-8a5c-7e9b1d3f5a7c", "resourceVersion": "4810022", "generation": 1, "creationTimestamp": "2026-11-28T14:03:50Z"},
        "spec": {
            "group": group,
            "names": {"kind": "AuthorizationPolicy", "listKind": "AuthorizationPolicyList", "plural": plural, "singular": plural.trim_end_matches('s'), "categories": ["veil"]},
            "scope": "Namespaced",
            "conversion": {"strategy": "None"},
            "versions": [{"name": version, "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}, "status": {"type": "object", "nullable": true}}}}, "subresources": {"status": {}}}]
        },
        "status": {
            "acceptedNames": {"kind": "AuthorizationPolicy", "listKind": "AuthorizationPolicyList", "plural": plural, "singular": plural.trim_end_matches('s'), "categories": ["veil"]},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": "2026-11-28T14:03:50Z"},
                {"type": "Established", "status": status, "reason": if established { "InitialNamesAccepted" } else { "Installing" }, "message": if established { "the initial names have been accepted" } else { "the resource is being installed" }, "lastTransitionTime": "2026-11-28T14:03:50Z"}
            ],
            "storedVersions": [version]
        }
    })
}

/// The EndpointSlice of Service `service` with a port `port_name`: `port` and these endpoints.
pub(super) fn endpoint_slice(
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[(&str, Option<bool>)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, ready))| {
            let mut conditions = json!({"serving": ready.unwrap_or(true), "terminating": false});
            if let Some(ready) = ready {
                conditions["ready"] = json!(ready);
            }
            json!({"addresses": [ip], "conditions": conditions, "nodeName": format!("node-{i}"), "targetRef": {"kind": "Pod", "namespace": "veil-system", "name": format!("{service}-6d4b9c7f5d-{i}x2k4"), "uid": format!("pod-uid-{i}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-7xq2m"),
            "generateName": format!("{service}-"),
            "namespace": "veil-system",
            "uid": "4b6d8f0a-2c4e-4b6d-8f0a-2c4e6b8d0f2a",
            "resourceVersion": "4824001",
            "generation": 5,
            "creationTimestamp": "2026-11-28T14:03:52Z",
            "labels": {"app.kubernetes.io/instance": "veil", "app.kubernetes.io/name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io", "kubernetes.io/service-name": service},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]
    })
}

/// A self-signed CA certificate valid from `from_days` to `to_days` (relative to now), as PEM.
pub(super) fn root_pem(from_days: i64, to_days: i64) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "veil test root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
    params.self_signed(&key).unwrap().pem()
}
