//! The last mesh patched for changed pods and Services (`kubernetes::patch`) against a whole
//! translation, over random changes of the test cluster.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::reuse::{change, shared};
use super::*;
use crate::discovery::kubernetes::patch::{
    PodChange, ServiceChange, Whole, contested, patch, patch_services,
};
use crate::testing::mesh_fingerprint;
use crate::xds::Resources;

/// The objects (of one kind) that differ between `before` and `after`, as the watches' events
/// would name them.
#[allow(clippy::type_complexity, reason = "pairs of versions, as `PodChange`")]
fn differing<K: kube::Resource>(
    before: &[Arc<K>],
    after: &[Arc<K>],
) -> Vec<(Option<Arc<K>>, Option<Arc<K>>)> {
    let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
    let old: HashMap<_, _> = before.iter().map(|o| (key(o), o.clone())).collect();
    let new: HashMap<_, _> = after.iter().map(|o| (key(o), o.clone())).collect();
    let mut out = Vec::new();
    for (k, o) in &new {
        match old.get(k) {
            Some(p) if Arc::ptr_eq(o, p) => {}
            p => out.push((p.cloned(), Some(o.clone()))),
        }
    }
    for (k, p) in &old {
        if !new.contains_key(k) {
            out.push((Some(p.clone()), None));
        }
    }
    out
}

/// The Services and pods that differ between `before` and `after`, or `None` when anything else
/// changed.
fn pod_changes(before: &Objects, after: &Objects) -> Option<(Vec<ServiceChange>, Vec<PodChange>)> {
    fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
    }
    let others_same = same(&before.namespaces, &after.namespaces)
        && same(
            &before.authorization_policies,
            &after.authorization_policies,
        )
        && same(&before.peer_authentications, &after.peer_authentications)
        && same(&before.telemetries, &after.telemetries);
    if !others_same {
        return None;
    }
    Some((
        differing(&before.services, &after.services),
        differing(&before.pods, &after.pods),
    ))
}

fn addresses(objects: &Objects) -> Vec<IpAddr> {
    let mut out: HashSet<IpAddr> = (0..8).map(|i| ip(&format!("10.244.9.{i}"))).collect();
    out.extend([ip("10.96.0.30"), ip("10.244.2.11")]);
    for pod in &objects.pods {
        out.extend(pod_ips(pod));
    }
    out.into_iter().collect()
}

#[test]
fn a_patched_mesh_is_the_mesh_a_whole_translation_gives() {
    let settings = MeshSettings::default();
    let mut rng = fastrand::Rng::with_seed(23);
    let mut objects = objects();
    let mut previous = translated(&objects).state;
    assert!(previous.rejected().is_empty(), "{:?}", previous.rejected());
    let mut reserved = contested(&objects, &previous);
    // The controller's translation follows the patched meshes as it does in production.
    let mut resources = Resources::from_state(&previous);
    let (mut added, mut patched, mut services_patched) = (0, 0, 0);
    // Services defined otherwise whose resources were patched too (entries of the previous ones
    // kept, not all encoded anew).
    let mut services_encoded_alone = 0;
    let mut whole_because: HashMap<&'static str, usize> = HashMap::new();
    for step in 0..2000 {
        let before = objects.clone();
        let what = change(&mut rng, &mut objects, &mut added);
        let whole = translated(&objects).state;
        let result = match pod_changes(&before, &objects) {
            None => Err(Whole("not only pods changed")),
            Some((services, pods)) if services.is_empty() => {
                patch(&previous, &objects, &settings, &reserved, &pods)
            }
            Some((services, pods)) => patch_services(&previous, &objects, &reserved, &services)
                .and_then(|state| {
                    services_patched += 1;
                    if pods.is_empty() {
                        Ok(state)
                    } else {
                        patch(&state, &objects, &settings, &reserved, &pods)
                    }
                }),
        };
        match result {
            Ok(state) => {
                let ips = addresses(&objects);
                assert_eq!(
                    mesh_fingerprint(&state, &ips),
                    mesh_fingerprint(&whole, &ips),
                    "step {step} ({what})"
                );
                let after = Resources::from_state_after(&state, &previous, &resources);
                assert!(
                    after == Resources::from_state(&whole),
                    "step {step} ({what})"
                );
                if !state.services_defined_otherwise(&previous).is_empty()
                    && shared(&resources, &after) > 0
                {
                    services_encoded_alone += 1;
                }
                patched += 1;
                previous = state;
                resources = after;
            }
            Err(Whole(why)) => {
                *whole_because.entry(why).or_default() += 1;
                reserved = contested(&objects, &whole);
                resources = Resources::from_state_after(&whole, &previous, &resources);
                previous = whole;
            }
        }
    }
    assert!(patched > 400, "patched {patched}; whole: {whole_because:?}");
    assert!(
        services_patched > 50,
        "services patched {services_patched}; whole: {whole_because:?}"
    );
    assert!(
        services_encoded_alone > 40,
        "of {services_patched} services patched, {services_encoded_alone} encoded alone"
    );
}

/// A policy may target a Service: a workload's policies depend on the services it backs, and a
/// Service patched in (or out) must have them judged anew, even where the last mesh had judged
/// them already (the status writer and the translation into resources judge every workload).
#[test]
fn a_service_patched_in_or_out_brings_the_policies_that_target_it() {
    let mut objects = objects();
    let policy: AuthorizationPolicy = serde_json::from_value(json!({
        "apiVersion": "security.veil.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-legacy", "namespace": "production", "uid": "p-deny-legacy"},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "account-v2"}],
            "action": "DENY",
            "rules": [{"from": [{"source": {"namespaces": ["default"]}}]}],
        },
    }))
    .unwrap();
    objects.authorization_policies.push(Arc::new(policy));
    let service: Arc<KubeService> = Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "account-v2", "namespace": "production", "uid": "s-account-v2"},
            "spec": {
                "selector": {"app": "account-service"},
                "clusterIP": "10.96.0.40",
                "clusterIPs": ["10.96.0.40"],
                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }))
        .unwrap(),
    );
    let account = ip("10.244.1.10");
    let names = |state: &MeshState| -> Vec<String> {
        let workload = state.workload_by_ip(account).unwrap();
        state
            .authz_for(workload)
            .iter()
            .map(|p| p.id.to_string())
            .collect()
    };
    let before = translated(&objects).state;
    assert!(before.rejected().is_empty(), "{:?}", before.rejected());
    // Judged, as in production, before the patch.
    let resources = Resources::from_state(&before);
    assert!(!names(&before).contains(&"production/deny-legacy".to_owned()));
    let reserved = contested(&objects, &before);
    let ips = addresses(&objects);

    let mut with_service = objects.clone();
    with_service.services.push(service.clone());
    let whole = translated(&with_service).state;
    let patched = patch_services(
        &before,
        &with_service,
        &reserved,
        &[(None, Some(service.clone()))],
    )
    .expect("a Service with a numeric port in a namespace without a waypoint: patched");
    assert!(names(&patched).contains(&"production/deny-legacy".to_owned()));
    assert_eq!(
        mesh_fingerprint(&patched, &ips),
        mesh_fingerprint(&whole, &ips)
    );
    let after = Resources::from_state_after(&patched, &before, &resources);
    assert!(
        after == Resources::from_state(&whole),
        "the resources differ"
    );

    // And out again.
    let gone = patch_services(&patched, &objects, &reserved, &[(Some(service), None)]).unwrap();
    assert!(!names(&gone).contains(&"production/deny-legacy".to_owned()));
    assert_eq!(
        mesh_fingerprint(&gone, &ips),
        mesh_fingerprint(&before, &ips)
    );
    let back = Resources::from_state_after(&gone, &patched, &after);
    assert!(
        back == Resources::from_state(&before),
        "the resources differ"
    );
}
