//! [`Reads`]: what it says translation does not read changes no mesh, and what translation reads
//! is told apart.

use serde_json::{Value, json};

use super::reuse::edit;
use super::*;
use crate::testing::mesh_fingerprint;
use crate::xds::Resources;

/// Every address the test cluster's pods and services have.
fn addresses(objects: &Objects) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = objects.pods.iter().flat_map(|p| pod_ips(p)).collect();
    for svc in &objects.services {
        let spec = svc.spec.as_ref();
        out.extend(
            spec.and_then(|s| s.cluster_ip.as_deref())
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    out
}

/// The mesh, as the model and as what the controller sends, and the policies refused.
fn outcome(objects: &Objects) -> (String, Resources, Vec<PolicyError>) {
    let t = translated(objects);
    (
        mesh_fingerprint(&t.state, &addresses(objects)),
        Resources::from_state(&t.state),
        t.invalid,
    )
}

/// Edits of what no translation reads: annotations, a label nothing reads, status, bookkeeping.
fn unread(object: &mut Value) {
    let meta = &mut object["metadata"];
    meta["annotations"] = json!({"example.com/owner": "team-blue"});
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"]["team"] = json!("blue");
    meta["resourceVersion"] = json!("99999");
    meta["generation"] = json!(7);
    object["status"] = json!({"conditions": [{
        "type": "Accepted",
        "status": "True",
        "lastTransitionTime": "2026-12-05T09:00:00Z",
        "reason": "Accepted",
        "message": "written by the controller",
        "observedGeneration": 7,
    }]});
}

/// Applies `change` to object `i` of the list `list` picks; says whether the new version reads
/// as the old one.
fn changed<K: Reads + serde::Serialize + DeserializeOwned + Clone>(
    objects: &mut Objects,
    list: fn(&mut Objects) -> &mut Vec<Arc<K>>,
    i: usize,
    change: impl FnOnce(&mut Value),
) -> bool {
    let object = &mut list(objects)[i];
    let before = object.clone();
    edit(object, change);
    before.reads_as(object)
}

fn namespaces(o: &mut Objects) -> &mut Vec<Arc<Namespace>> {
    &mut o.namespaces
}
fn services(o: &mut Objects) -> &mut Vec<Arc<KubeService>> {
    &mut o.services
}
fn authorization_policies(o: &mut Objects) -> &mut Vec<Arc<AuthorizationPolicy>> {
    &mut o.authorization_policies
}
fn peer_authentications(o: &mut Objects) -> &mut Vec<Arc<PeerAuthentication>> {
    &mut o.peer_authentications
}
fn telemetries(o: &mut Objects) -> &mut Vec<Arc<TelemetryObject>> {
    &mut o.telemetries
}

#[test]
fn a_change_translation_does_not_read_reads_alike_and_changes_no_mesh() {
    let original = objects();
    let want = outcome(&original);
    let mut objects = original.clone();
    let mut edited = 0;
    for i in 0..objects.namespaces.len() {
        assert!(changed(&mut objects, namespaces, i, unread));
        edited += 1;
    }
    for i in 0..objects.services.len() {
        assert!(changed(&mut objects, services, i, |s| {
            unread(s);
            s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        }));
        edited += 1;
    }
    for i in 0..objects.authorization_policies.len() {
        assert!(changed(&mut objects, authorization_policies, i, unread));
        edited += 1;
    }
    for i in 0..objects.peer_authentications.len() {
        assert!(changed(&mut objects, peer_authentications, i, unread));
        edited += 1;
    }
    for i in 0..objects.telemetries.len() {
        assert!(changed(&mut objects, telemetries, i, unread));
        edited += 1;
    }
    assert!(
        edited >= 12,
        "the test cluster has {edited} objects besides pods"
    );
    let got = outcome(&objects);
    assert_eq!(got.0, want.0);
    assert!(got.1 == want.1, "the resources sent differ");
    assert_eq!(got.2, want.2);
}

#[test]
fn a_change_translation_reads_is_told_apart() {
    let mut o = objects();
    let label = |key: &'static str, value: &'static str| {
        move |object: &mut Value| {
            if !object["metadata"]["labels"].is_object() {
                object["metadata"]["labels"] = json!({});
            }
            object["metadata"]["labels"][key] = json!(value);
        }
    };
    assert!(!changed(
        &mut o,
        namespaces,
        0,
        label(DATAPLANE_MODE, "none")
    ));
    assert!(!changed(
        &mut o,
        namespaces,
        2,
        label(DATAPLANE_MODE, "ambient")
    ));
    assert!(!changed(&mut o, namespaces, 0, label(USE_WAYPOINT, "w")));
    assert!(!changed(&mut o, services, 0, label(WAYPOINT, "w")));
    assert!(!changed(&mut o, services, 0, label(USE_WAYPOINT, "none")));
    assert!(!changed(&mut o, services, 1, |s| {
        s["spec"]["ports"][0]["port"] = json!(8443)
    }));
    assert!(!changed(&mut o, services, 1, |s| {
        s["spec"]["selector"] = json!({"app": "other"})
    }));
    assert!(!changed(&mut o, services, 1, |s| {
        s["spec"]["clusterIP"] = json!("10.96.7.7")
    }));
    assert!(!changed(&mut o, authorization_policies, 0, |p| {
        p["spec"]["action"] = json!("DENY")
    }));
    assert!(!changed(&mut o, peer_authentications, 0, |p| {
        p["spec"]["mtls"] = json!({"mode": "STRICT"})
    }));
    assert!(!changed(&mut o, telemetries, 0, |t| {
        t["spec"]["accessLog"] = json!({"level": "full"})
    }));
}
