//! A translation into xDS resources that reuses the previous one's (`Resources::from_state_after`)
//! against a whole translation, over random changes of the test cluster.

use prost::Message;
use serde::Serialize;
use serde_json::{Value, json};

use super::*;
use crate::xds::{Kind, Resources};

/// `object` changed through its JSON form (a copy: the previous snapshot keeps the original).
pub(crate) fn edit<K: Serialize + DeserializeOwned + Clone>(
    object: &mut Arc<K>,
    change: impl FnOnce(&mut Value),
) {
    let mut value = serde_json::to_value(&**object).unwrap();
    change(&mut value);
    *object = Arc::new(serde_json::from_value(value).unwrap());
}

fn pick<'a, T>(rng: &mut fastrand::Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

/// Sets `labels[key]` to `value`, or removes it for `None`.
pub(crate) fn set_label(labels: &mut Value, key: &str, value: Option<&str>) {
    if !labels.is_object() {
        *labels = json!({});
    }
    let labels = labels.as_object_mut().unwrap();
    match value {
        Some(v) => labels.insert(key.into(), v.into()),
        None => labels.remove(key),
    };
}

const APPS: [&str; 9] = [
    "account-service",
    "user-profile-service",
    "cart",
    "ledger",
    "stock",
    "wp",
    "shop-wp",
    "tenant-app",
    "other",
];
const WAYPOINTS: [Option<&str>; 4] = [None, Some("none"), Some("shop-wp"), Some("waypoint")];

/// One random change of any kind the watches can deliver (or none); says which.
pub(crate) fn change(
    rng: &mut fastrand::Rng,
    objects: &mut Objects,
    added: &mut usize,
) -> &'static str {
    // Mostly a few addresses pods contend for; now and then a service's or a waypoint's.
    let ip = match rng.u8(..12) {
        0 => "10.96.0.30".to_string(),
        1 => "10.244.2.11".to_string(),
        n => format!("10.244.9.{}", n % 6),
    };
    let i = rng.usize(..objects.pods.len());
    let pod = |objects: &mut Objects, change: &mut dyn FnMut(&mut Value)| {
        edit(&mut objects.pods[i], |p| change(p))
    };
    match rng.u8(..19) {
        0 => {
            let app = *pick(rng, &APPS);
            pod(objects, &mut |p| {
                set_label(&mut p["metadata"]["labels"], "app", Some(app))
            });
            "a pod's app label"
        }
        1 => {
            pod(objects, &mut |p| {
                p["status"]["podIP"] = ip.clone().into();
                p["status"]["podIPs"] = json!([{ "ip": ip }]);
            });
            "a pod's address"
        }
        2 if objects.pods.len() > 2 => {
            objects.pods.remove(i);
            "a pod removed"
        }
        3 => {
            *added += 1;
            let mut copy = objects.pods[i].clone();
            let n = *added;
            edit(&mut copy, |p| {
                p["metadata"]["name"] = format!("added-{n}").into();
                p["metadata"]["uid"] = format!("00000000-0000-0000-0000-{n:012}").into();
                p["status"]["podIP"] = ip.clone().into();
                p["status"]["podIPs"] = json!([{ "ip": ip }]);
            });
            objects.pods.push(copy);
            "a pod added"
        }
        4 => {
            let account = *pick(rng, &["a", "b", "default"]);
            pod(objects, &mut |p| {
                p["spec"]["serviceAccountName"] = account.into()
            });
            "a pod's service account"
        }
        5 => {
            let waypoint = *pick(rng, &WAYPOINTS);
            pod(objects, &mut |p| {
                set_label(&mut p["metadata"]["labels"], USE_WAYPOINT, waypoint)
            });
            "a pod's waypoint"
        }
        6 => {
            let n = rng.usize(..objects.namespaces.len());
            let waypoint = *pick(rng, &WAYPOINTS);
            edit(&mut objects.namespaces[n], |ns| {
                set_label(&mut ns["metadata"]["labels"], USE_WAYPOINT, waypoint)
            });
            "a namespace's waypoint"
        }
        7 => {
            let n = rng.usize(..objects.namespaces.len());
            let mode = *pick(rng, &[None, Some("ambient")]);
            edit(&mut objects.namespaces[n], |ns| {
                set_label(&mut ns["metadata"]["labels"], DATAPLANE_MODE, mode)
            });
            "a namespace enrolled or not"
        }
        8 => {
            let n = rng.usize(..objects.authorization_policies.len());
            let app = *pick(rng, &APPS);
            edit(&mut objects.authorization_policies[n], |p| {
                p["spec"]["selector"] = json!({"matchLabels": {"app": app}})
            });
            "a policy's selector"
        }
        9 => {
            let n = rng.usize(..objects.authorization_policies.len());
            let ns = *pick(rng, &["production", "shop", "user-data"]);
            edit(&mut objects.authorization_policies[n], |p| {
                p["spec"]["rules"] = json!([{"from": [{"source": {"namespaces": [ns]}}]}])
            });
            "a policy's rules"
        }
        10 => {
            let n = rng.usize(..objects.services.len());
            let app = *pick(rng, &APPS);
            edit(&mut objects.services[n], |s| {
                s["spec"]["selector"] = json!({ "app": app })
            });
            "a service's selector"
        }
        11 => {
            let n = rng.usize(..objects.services.len());
            let target = rng.u16(8000..8003);
            edit(
                &mut objects.services[n],
                |s| {
                    s["spec"]["ports"] =
                        json!([{"port": 80, "targetPort": target, "protocol": "TCP"}])
                },
            );
            "a service's port"
        }
        12 => peer_shape(rng, objects, added),
        13 => {
            let phase = *pick(rng, &["Running", "Succeeded"]);
            pod(objects, &mut |p| p["status"]["phase"] = phase.into());
            "a pod's phase"
        }
        14 => {
            pod(objects, &mut |p| {
                p["spec"]["nodeName"] = "node-c".into();
                p["status"]["podIP"] = Value::Null;
                p["status"]["podIPs"] = Value::Null;
            });
            "a pod scheduled, its network not set up yet"
        }
        15 => {
            let node = *pick(rng, &[None, Some("node-a"), Some("node-b")]);
            pod(objects, &mut |p| p["spec"]["nodeName"] = node.into());
            "a pod's node"
        }
        16 => policy_shape(rng, objects, added),
        17 => {
            let n = rng.usize(..objects.services.len());
            let waypoint = *pick(rng, &WAYPOINTS);
            edit(&mut objects.services[n], |s| {
                set_label(&mut s["metadata"]["labels"], USE_WAYPOINT, waypoint)
            });
            "a service's waypoint"
        }
        _ => "nothing",
    }
}

/// A PeerAuthentication given another mode, selector or port-level mode (with or without a
/// selector: invalid without), added (in the root namespace too) or removed.
fn peer_shape(rng: &mut fastrand::Rng, objects: &mut Objects, added: &mut usize) -> &'static str {
    let mode = *pick(rng, &["STRICT", "PERMISSIVE"]);
    let app = *pick(rng, &APPS);
    if objects.peer_authentications.is_empty() || rng.u8(..4) == 0 {
        *added += 1;
        let namespace = *pick(rng, &["production", "user-data", "default", "veil-system"]);
        let spec = match rng.u8(..3) {
            0 => json!({"mtls": {"mode": mode}}),
            1 => json!({"selector": {"matchLabels": {"app": app}}, "mtls": {"mode": mode}}),
            _ => json!({"mtls": {"mode": mode}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
        };
        let peer: PeerAuthentication = serde_json::from_value(json!({
            "apiVersion": "security.veil.dev/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": format!("added-{added}"), "namespace": namespace,
                         "uid": format!("pa-added-{added}")},
            "spec": spec,
        }))
        .unwrap();
        objects.peer_authentications.push(Arc::new(peer));
        return "a PeerAuthentication added";
    }
    let n = rng.usize(..objects.peer_authentications.len());
    match rng.u8(..4) {
        0 => {
            objects.peer_authentications.remove(n);
            "a PeerAuthentication removed"
        }
        1 => {
            let port = *pick(rng, &["8080", "9090"]);
            let with_selector = rng.bool();
            edit(&mut objects.peer_authentications[n], |p| {
                p["spec"]["portLevelMtls"] = json!({ port: {"mode": "PERMISSIVE"} });
                if with_selector {
                    p["spec"]["selector"] = json!({"matchLabels": {"app": app}});
                }
            });
            "a PeerAuthentication's port-level mode"
        }
        _ => {
            edit(&mut objects.peer_authentications[n], |p| {
                p["spec"]["mtls"] = json!({ "mode": mode });
                p["spec"]["selector"] = json!({"matchLabels": {"app": app}});
            });
            "a PeerAuthentication"
        }
    }
}

/// A policy given another scope or action, made invalid, added (in the root namespace too) or
/// removed.
fn policy_shape(rng: &mut fastrand::Rng, objects: &mut Objects, added: &mut usize) -> &'static str {
    let n = rng.usize(..objects.authorization_policies.len());
    let policy = &mut objects.authorization_policies[n];
    match rng.u8(..7) {
        0 => {
            edit(policy, |p| {
                drop(p["spec"].as_object_mut().unwrap().remove("selector"))
            });
            "a policy made namespace-wide"
        }
        1 => {
            let service = *pick(rng, &["account-service", "user-profile-service", "cart"]);
            let target = match rng.u8(..3) {
                0 => {
                    json!({"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"})
                }
                _ => json!({"kind": "Service", "group": "", "name": service}),
            };
            edit(policy, |p| {
                p["spec"].as_object_mut().unwrap().remove("selector");
                p["spec"]["targetRefs"] = json!([target]);
            });
            "a policy made to target a Service or a waypoint"
        }
        2 => {
            let action = *pick(rng, &["ALLOW", "DENY", "AUDIT"]);
            edit(policy, |p| p["spec"]["action"] = action.into());
            "a policy's action"
        }
        3 => {
            edit(policy, |p| {
                p["spec"]["rules"] = json!([{"from": [{"source": {"ipBlocks": ["not-an-ip"]}}]}])
            });
            "a policy made invalid"
        }
        4 if objects.authorization_policies.len() > 1 => {
            objects.authorization_policies.remove(n);
            "a policy removed"
        }
        _ => {
            *added += 1;
            let namespace = *pick(rng, &["production", "shop", "user-data", "veil-system"]);
            let app = *pick(rng, &APPS);
            let mut copy = objects.authorization_policies[n].clone();
            let count = *added;
            edit(&mut copy, |p| {
                p["metadata"]["name"] = format!("added-{count}").into();
                p["metadata"]["namespace"] = namespace.into();
                p["metadata"]["uid"] = format!("p-added-{count}").into();
                p["spec"].as_object_mut().unwrap().remove("targetRefs");
                p["spec"]["selector"] = json!({"matchLabels": {"app": app}});
            });
            objects.authorization_policies.push(copy);
            "a policy added"
        }
    }
}

/// What differs between two translations, by kind and name.
fn differences(a: &Resources, b: &Resources) -> String {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let (x, y) = (a.of(kind), b.of(kind));
        for name in x.keys().chain(y.keys()) {
            if x.get(name).map(|e| &e.version) != y.get(name).map(|e| &e.version) {
                out.push(format!("{kind:?} {name}"));
            }
        }
    }
    out.dedup();
    format!("{out:?}")
}

/// How many addresses `b` sends with the very bytes `a` held (reused, not encoded again).
/// How many address entries of `b` share their bytes with `a`'s.
pub(super) fn shared(a: &Resources, b: &Resources) -> usize {
    b.of(Kind::Address)
        .iter()
        .filter(|(name, e)| {
            a.of(Kind::Address)
                .get(*name)
                .is_some_and(|p| p.body.as_ptr() == e.body.as_ptr())
        })
        .count()
}

#[test]
fn a_translation_reusing_the_previous_one_is_the_whole_translation() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut objects = with_conflicts();
    let mut previous = translated(&objects).state;
    let mut previous_resources = Resources::from_state(&previous);
    let (mut added, mut reused_somewhere) = (0, 0);
    for step in 0..1500 {
        let what = change(&mut rng, &mut objects, &mut added);
        let state = translated(&objects).state;
        let whole = Resources::from_state(&state);
        let reused = Resources::from_state_after(&state, &previous, &previous_resources);
        assert!(
            reused == whole,
            "step {step} ({what}): {}",
            differences(&reused, &whole)
        );
        if what == "nothing" {
            // Nothing changed: every address is the previous one's.
            assert_eq!(
                shared(&previous_resources, &reused),
                reused.of(Kind::Address).len()
            );
        }
        if shared(&previous_resources, &reused) > 0 {
            reused_somewhere += 1;
        }
        (previous, previous_resources) = (state, reused);
    }
    assert!(reused_somewhere > 100, "reused in {reused_somewhere} steps");
}

/// The cluster with conflicts translated, then again after `change` edited the object `name` of
/// the list `list` picks: the resources before, and those the controller derives from them after
/// (checked equal to a whole translation).
fn around_one_edit<K>(
    list: fn(&mut Objects) -> &mut Vec<Arc<K>>,
    name: &str,
    change: impl FnOnce(&mut Value),
) -> (Resources, Resources)
where
    K: Serialize + DeserializeOwned + Clone + kube::Resource,
{
    let mut objects = with_conflicts();
    let before = translated(&objects).state;
    let before_resources = Resources::from_state(&before);
    let changed = list(&mut objects);
    let i = changed.iter().position(|o| o.name_any() == name).unwrap();
    edit(&mut changed[i], change);
    let after = translated(&objects).state;
    let reused = Resources::from_state_after(&after, &before, &before_resources);
    let whole = Resources::from_state(&after);
    assert!(reused == whole, "{}", differences(&reused, &whole));
    (before_resources, reused)
}

#[test]
fn one_changed_pod_is_the_only_workload_encoded_again() {
    let (before, reused) = around_one_edit(
        |o| &mut o.pods,
        "stock-0",
        |p| p["spec"]["serviceAccountName"] = "stock-v2".into(),
    );
    let fresh: Vec<&str> = reused
        .of(Kind::Address)
        .iter()
        .filter(|(name, e)| before.of(Kind::Address)[*name].body.as_ptr() != e.body.as_ptr())
        .map(|(name, _)| &**name)
        .collect();
    assert_eq!(fresh, ["Kubernetes//Pod/shop/stock-0"]);
}

/// A resource's version is a hash of its bytes: the same workload must encode to the same bytes
/// every time, also one backing several services (a map in Istio's message), or every
/// translation would resend it, and replicas would disagree on its version.
#[test]
fn a_workload_backing_several_services_encodes_the_same_every_time() {
    let state = translated(&objects()).state;
    let name = "Kubernetes//Pod/user-data/user-profile-service-6f5e4d3c2-abcde";
    let first = Resources::from_state(&state);
    assert!(!first.of(Kind::Address)[name].body.is_empty());
    let backs = state.service_keys_of(state.workload_by_ip(ip("10.244.2.10")).unwrap());
    assert_eq!(backs.len(), 2, "{backs:?}");
    for _ in 0..20 {
        let again = Resources::from_state(&state);
        assert_eq!(
            again.of(Kind::Address)[name].version,
            first.of(Kind::Address)[name].version
        );
    }
}

/// A policy that comes to select a workload, the workload unchanged: its resource names the policy
/// (a reused one would not, and the workload would go unprotected by it).
#[test]
fn a_workload_a_policy_comes_to_select_is_encoded_again() {
    let (before_resources, reused) = around_one_edit(
        |o| &mut o.authorization_policies,
        "deny-legacy",
        |p| p["spec"]["selector"] = json!({"matchLabels": {"app": "account-service"}}),
    );
    let name = "Kubernetes//Pod/production/account-service-7d9f8c6b5-x2k4p";
    let entry = |r: &Resources| r.of(Kind::Address)[name].clone();
    assert_ne!(entry(&reused).version, entry(&before_resources).version);
    let message = crate::xds::proto::istio::workload::Address::decode(entry(&reused).body).unwrap();
    let Some(crate::xds::proto::istio::workload::address::Type::Workload(w)) = message.r#type
    else {
        panic!("not a workload: {message:?}")
    };
    assert!(
        w.authorization_policies
            .contains(&"production/deny-legacy".to_string()),
        "{w:?}"
    );
}
