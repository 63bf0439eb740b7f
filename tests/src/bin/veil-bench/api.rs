//! `veil-bench api`: the stand-in API server ([`veil_e2e::apiserver`]) holding a generated cluster,
//! for the scale benchmark: `--pods` pods as a real API server serves them (a Deployment's pod, with
//! field managers, annotations, environment, volumes and conditions: about 6.5 KB of JSON each) in 100
//! enrolled namespaces on 500 nodes, a tenth as many Services and AuthorizationPolicies. Lists are
//! paginated as kube-rs asks; `POST /bench/change` moves pod-1 between two addresses (one MODIFIED
//! event, as a pod replaced at another address), the change `xds-load` and `xds-client` time.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use veil_e2e::apiserver::{Api, json_response, not_found, serve};

/// A pod as served, the template of every generated one.
const POD: &str =
    include_str!("../../../../mesh/src/discovery/kubernetes/testdata/pod-as-served.json");

/// The stand-in's settings.
#[derive(Debug, clap::Args)]
pub(crate) struct Cluster {
    /// Where to listen (plain HTTP).
    #[arg(long)]
    listen: SocketAddr,
    /// How many pods.
    #[arg(long)]
    pods: usize,
}

/// Pod `i`'s address (the scheme of the local-file benchmark).
fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
}

fn pod(template: &Value, i: usize, groups: usize, ip: &str) -> Value {
    let g = i % groups;
    let mut pod = template.clone();
    let meta = &mut pod["metadata"];
    meta["name"] = json!(format!("pod-{i}"));
    meta["generateName"] = json!(format!("app{g}-7d9f8c6b5d-"));
    meta["namespace"] = json!(format!("ns{}", g % 100));
    meta["uid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
    meta["labels"]["app"] = json!(format!("app{g}"));
    meta["labels"]["app.kubernetes.io/name"] = json!(format!("app{g}"));
    let spec = &mut pod["spec"];
    spec["nodeName"] = json!(format!("node-{}", i % 500));
    spec["serviceAccountName"] = json!(format!("sa{g}"));
    spec["serviceAccount"] = json!(format!("sa{g}"));
    pod["status"]["podIP"] = json!(ip);
    pod["status"]["podIPs"] = json!([{ "ip": ip }]);
    pod
}

fn service(g: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": format!("svc{g}"),
            "namespace": format!("ns{}", g % 100),
            "uid": format!("00000000-0000-4000-9000-{g:012}"),
            "creationTimestamp": "2026-11-30T09:00:00Z",
            "labels": {"app": format!("app{g}")},
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1", "time": "2026-11-30T09:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}, "f:selector": {}, "f:type": {}}}}],
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": format!("172.16.{}.{}", g >> 8, g & 255),
            "clusterIPs": [format!("172.16.{}.{}", g >> 8, g & 255)],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": {"app": format!("app{g}")},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    })
}

fn policy(g: usize) -> Value {
    json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": format!("p{g}"),
            "namespace": format!("ns{}", g % 100),
            "uid": format!("00000000-0000-4000-a000-{g:012}"),
            "generation": 1,
        },
        "spec": {
            "selector": {"matchLabels": {"app": format!("app{g}")}},
            "rules": [{
                "from": [{"source": {"principals": [format!("cluster.local/ns/ns{}/sa/sa{g}", (g + 1) % 100)]}}],
                "to": [{"operation": {"ports": ["8080"]}}],
            }],
        },
    })
}

/// Serves the generated cluster until killed.
pub(crate) async fn run(c: Cluster) -> anyhow::Result<()> {
    let template: Value = serde_json::from_str::<Value>(POD)?["items"][0].clone();
    let groups = (c.pods / 10).max(1);
    let api = Api::default();
    api.change(|s| {
        for ns in 0..100 {
            let namespace = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": format!("ns{ns}"),
                    "uid": format!("00000000-0000-4000-b000-{ns:012}"),
                    "labels": {"kubernetes.io/metadata.name": format!("ns{ns}"), "veil.dev/dataplane-mode": "ambient"},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            s.put("namespaces", &format!("ns{ns}"), namespace, false);
        }
        for i in 0..c.pods {
            let pod = pod(&template, i, groups, &pod_ip(i));
            s.put("pods", &format!("ns{}/pod-{i}", (i % groups) % 100), pod, false);
        }
        for g in 0..groups {
            let key = format!("ns{}/svc{g}", g % 100);
            s.put("services", &key, service(g), false);
            let key = format!("ns{}/p{g}", g % 100);
            s.put("authorizationpolicies", &key, policy(g), false);
        }
    });
    let listener = TcpListener::bind(c.listen).await?;
    println!(
        "{}",
        json!({"listening": c.listen.to_string(), "pods": c.pods, "services": groups, "policies": groups})
    );
    // pod-1 toggles between its own address and one no pod has.
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (api_for_changes, groups_for_changes) = (api.clone(), groups);
    serve(listener, api, move |req| {
        if req.method != http::Method::POST || req.uri.path() != "/bench/change" {
            return not_found();
        }
        let away = !moved.fetch_xor(true, std::sync::atomic::Ordering::SeqCst);
        let ip = if away {
            "10.250.0.1".to_owned()
        } else {
            pod_ip(1)
        };
        let pod = pod(&template, 1, groups_for_changes, &ip);
        let key = format!("ns{}/pod-1", 1 % groups_for_changes % 100);
        api_for_changes.change(|s| s.put("pods", &key, pod, true));
        json_response(StatusCode::OK, format!("{{\"pod-1\":\"{ip}\"}}").into())
    })
    .await?;
    Ok(())
}
