//! `veil-bench api`: the stand-in API server ([`veil_e2e::apiserver`]) holding a generated cluster,
//! for the scale benchmark: `--pods` pods as a real API server serves them (a Deployment's pod, with
//! field managers, annotations, environment, volumes and conditions: about 6.5 KB of JSON each) in 100
//! enrolled namespaces on 500 nodes, a tenth as many Services and AuthorizationPolicies. Lists are
//! paginated as kube-rs asks; `POST /bench/change` makes the change `xds-load` and `xds-client`
//! time, one event each, there and back on every other call: by default (`?kind=pod`) pod-1 moves
//! between two addresses (a pod replaced at another address); `?kind=service`: svc1 gains and
//! loses a second port; `?kind=service-new`: a Service extra1 in front of svc1's pods is created
//! and deleted; `?kind=policy`: p1 allows port 8081 rather than 8080; `?kind=peer`: legacy1, a
//! PeerAuthentication of app1's pods, turns PERMISSIVE and back; `?kind=namespace`: ns1 has its
//! `team` label set to one value or another; `?kind=namespace-enrol`: ns1 loses and regains its
//! enrolment label (its every pod leaves and rejoins the mesh); `?kind=namespace-new`: a namespace
//! fresh1, labelled ambient, is created and deleted.

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

/// ns1's waypoint: its Service, its one instance, and a Service behind it.
fn waypoint(template: &Value) -> (Value, Value, Value) {
    let selector = json!({"gateway.networking.k8s.io/gateway-name": "waypoint"});
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "waypoint",
            "namespace": "ns1",
            "uid": "00000000-0000-4000-9200-000000000001",
            "labels": {"veil.dev/waypoint": "waypoint"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "172.18.0.1",
            "clusterIPs": ["172.18.0.1"],
            "selector": selector,
            "ports": [{"name": "mesh", "port": 15008, "protocol": "TCP"}],
        },
    });
    let mut pod = template.clone();
    let meta = &mut pod["metadata"];
    meta["name"] = json!("waypoint-0");
    meta["generateName"] = json!("waypoint-");
    meta["namespace"] = json!("ns1");
    meta["uid"] = json!("00000000-0000-4000-8200-000000000001");
    meta["labels"] = selector;
    pod["spec"]["nodeName"] = json!("node-1");
    pod["spec"]["serviceAccountName"] = json!("waypoint");
    pod["spec"]["serviceAccount"] = json!("waypoint");
    pod["status"]["podIP"] = json!("10.251.0.1");
    pod["status"]["podIPs"] = json!([{ "ip": "10.251.0.1" }]);
    let mut user = service.clone();
    user["metadata"]["name"] = json!("front1");
    user["metadata"]["uid"] = json!("00000000-0000-4000-9200-000000000002");
    user["metadata"]["labels"] = json!({"veil.dev/use-waypoint": "waypoint"});
    user["spec"]["clusterIP"] = json!("172.18.0.2");
    user["spec"]["clusterIPs"] = json!(["172.18.0.2"]);
    user["spec"]["selector"] = json!({"app": "front1"});
    user["spec"]["ports"] =
        json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]);
    (service, pod, user)
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
            s.put(
                "namespaces",
                &format!("ns{ns}"),
                namespace_object(ns),
                false,
            );
        }
        for i in 0..c.pods {
            let pod = pod(&template, i, groups, &pod_ip(i));
            s.put(
                "pods",
                &format!("ns{}/pod-{i}", (i % groups) % 100),
                pod,
                false,
            );
        }
        // A waypoint in ns1, for `service-waypoint`: its Service, one instance, and a Service
        // behind it (selecting no pod) so that svc1 is neither its first user nor its last.
        let (front, instance, user) = waypoint(&template);
        s.put("services", "ns1/waypoint", front, false);
        s.put("pods", "ns1/waypoint-0", instance, false);
        s.put("services", "ns1/front1", user, false);
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
    // Each kind of change toggles: there on odd calls, back on even ones.
    let counts: std::sync::Arc<[std::sync::atomic::AtomicUsize; KINDS.len()]> =
        std::sync::Arc::default();
    let (api_for_changes, groups_for_changes) = (api.clone(), groups);
    serve(listener, api, move |req| {
        if req.method != http::Method::POST || req.uri.path() != "/bench/change" {
            return not_found();
        }
        let kind = req
            .uri
            .query()
            .and_then(|q| q.strip_prefix("kind="))
            .unwrap_or("pod");
        let Some(index) = KINDS.iter().position(|k| *k == kind) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                format!("{{\"error\":\"no kind of change {kind:?}: one of {KINDS:?}\"}}").into(),
            );
        };
        let there = counts[index]
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .is_multiple_of(2);
        let made = change(&api_for_changes, &template, groups_for_changes, kind, there);
        json_response(StatusCode::OK, made.to_string().into())
    })
    .await?;
    Ok(())
}

/// The kinds of change `POST /bench/change?kind=` makes.
const KINDS: [&str; 10] = [
    "pod",
    "service",
    "service-new",
    "service-waypoint",
    "policy",
    "peer",
    "namespace",
    "namespace-new",
    "namespace-enrol",
    "namespace-waypoint",
];

/// Makes change `kind` (`there`, or back); says what it made.
fn change(api: &Api, template: &Value, groups: usize, kind: &str, there: bool) -> Value {
    let namespace = format!("ns{}", 1 % groups % 100);
    match kind {
        "pod" => {
            // pod-1 between its own address and one no pod has.
            let ip = if there {
                "10.250.0.1".to_owned()
            } else {
                pod_ip(1)
            };
            let pod = pod(template, 1, groups, &ip);
            api.change(|s| s.put("pods", &format!("{namespace}/pod-1"), pod, true));
            json!({"pod-1": ip})
        }
        "service" => {
            let mut svc = service(1 % groups);
            if there && let Some(ports) = svc["spec"]["ports"].as_array_mut() {
                ports.push(
                    json!({"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}),
                );
            }
            let ports = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
            let key = format!("{namespace}/svc{}", 1 % groups);
            api.change(|s| s.put("services", &key, svc, true));
            json!({"svc1": {"ports": ports}})
        }
        "service-new" => {
            // A Service of its own in front of app 1's pods: created, then deleted.
            let g = 1 % groups;
            let key = format!("{namespace}/extra{g}");
            if !there {
                api.change(|s| s.delete("services", &key));
                return json!({format!("extra{g}"): "deleted"});
            }
            let mut svc = service(g);
            svc["metadata"]["name"] = json!(format!("extra{g}"));
            svc["metadata"]["uid"] = json!(format!("00000000-0000-4000-9100-{g:012}"));
            let ip = format!("172.17.{}.{}", g >> 8, g & 255);
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
            api.change(|s| s.put("services", &key, svc, true));
            json!({format!("extra{g}"): ip})
        }
        "service-waypoint" => {
            // svc1 put behind ns1's waypoint (its ten pods with it), then taken out again.
            let mut svc = service(1 % groups);
            if there {
                svc["metadata"]["labels"]["veil.dev/use-waypoint"] = json!("waypoint");
            }
            let key = format!("{namespace}/svc{}", 1 % groups);
            api.change(|s| s.put("services", &key, svc, true));
            json!({"svc1": {"waypoint": there}})
        }
        "policy" => {
            let mut p = policy(1 % groups);
            let port = if there { "8081" } else { "8080" };
            p["spec"]["rules"][0]["to"][0]["operation"]["ports"] = json!([port]);
            let key = format!("{namespace}/p{}", 1 % groups);
            api.change(|s| s.put("authorizationpolicies", &key, p, true));
            json!({"p1": {"port": port}})
        }
        "peer" => {
            // A PeerAuthentication selecting app 1's pods: PERMISSIVE, then STRICT (the default).
            let mode = if there { "PERMISSIVE" } else { "STRICT" };
            let g = 1 % groups;
            let peer = json!({
                "apiVersion": "security.veil.dev/v1",
                "kind": "PeerAuthentication",
                "metadata": {
                    "name": format!("legacy{g}"),
                    "namespace": namespace,
                    "uid": format!("00000000-0000-4000-c000-{g:012}"),
                    "generation": 1,
                },
                "spec": {
                    "selector": {"matchLabels": {"app": format!("app{g}")}},
                    "mtls": {"mode": mode},
                },
            });
            let key = format!("{namespace}/legacy{g}");
            api.change(|s| s.put("peerauthentications", &key, peer, true));
            json!({"legacy1": {"mode": mode}})
        }
        "namespace-enrol" => {
            // ns1 (a hundredth of the pods) leaves the mesh, then enrols again.
            let mut ns = namespace_object(1 % groups % 100);
            if there && let Some(labels) = ns["metadata"]["labels"].as_object_mut() {
                labels.remove("veil.dev/dataplane-mode");
            }
            api.change(|s| s.put("namespaces", &namespace, ns, true));
            json!({"ns1": {"enrolled": !there}})
        }
        "namespace-waypoint" => {
            // ns1 (a hundredth of the pods and Services) names its waypoint for its objects, then
            // no longer.
            let mut ns = namespace_object(1 % groups % 100);
            if there {
                ns["metadata"]["labels"]["veil.dev/use-waypoint"] = json!("waypoint");
            }
            api.change(|s| s.put("namespaces", &namespace, ns, true));
            json!({"ns1": {"waypoint": there}})
        }
        "namespace-new" => {
            // A namespace enrolled before its first pod: created, then deleted.
            if !there {
                api.change(|s| s.delete("namespaces", "fresh1"));
                return json!({"fresh1": "deleted"});
            }
            let mut ns = namespace_object(1);
            ns["metadata"]["name"] = json!("fresh1");
            ns["metadata"]["uid"] = json!("00000000-0000-4000-b100-000000000001");
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!("fresh1");
            api.change(|s| s.put("namespaces", "fresh1", ns, true));
            json!({"fresh1": "ambient"})
        }
        _ => {
            let team = if there { "blue" } else { "green" };
            let mut ns = namespace_object(1 % groups % 100);
            ns["metadata"]["labels"]["team"] = json!(team);
            api.change(|s| s.put("namespaces", &namespace, ns, true));
            json!({"ns1": {"team": team}})
        }
    }
}

fn namespace_object(ns: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": format!("ns{ns}"),
            "uid": format!("00000000-0000-4000-b000-{ns:012}"),
            "labels": {"kubernetes.io/metadata.name": format!("ns{ns}"), "veil.dev/dataplane-mode": "ambient"},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}
