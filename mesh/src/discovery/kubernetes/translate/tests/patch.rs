//! The last mesh patched for changed pods (`kubernetes::patch`) against a whole translation, over
//! random changes of the test cluster.

use std::collections::{HashMap, HashSet};

use super::reuse::change;
use super::*;
use crate::discovery::kubernetes::patch::{PodChange, Whole, contested, patch};
use crate::testing::mesh_fingerprint;
use crate::xds::Resources;

/// The pods that differ between `before` and `after` (as the watches' events would name them), or
/// `None` when anything but pods changed.
fn pod_changes(before: &Objects, after: &Objects) -> Option<Vec<PodChange>> {
    fn same<K>(a: &[Arc<K>], b: &[Arc<K>]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
    }
    let others_same = same(&before.namespaces, &after.namespaces)
        && same(&before.services, &after.services)
        && same(
            &before.authorization_policies,
            &after.authorization_policies,
        )
        && same(&before.peer_authentications, &after.peer_authentications)
        && same(&before.telemetries, &after.telemetries);
    if !others_same {
        return None;
    }
    let old: HashMap<_, _> = before.pods.iter().map(|p| (p.key(), p.clone())).collect();
    let new: HashMap<_, _> = after.pods.iter().map(|p| (p.key(), p.clone())).collect();
    let mut out = Vec::new();
    for (k, p) in &new {
        match old.get(k) {
            Some(o) if Arc::ptr_eq(o, p) => {}
            o => out.push((o.cloned(), Some(p.clone()))),
        }
    }
    for (k, o) in &old {
        if !new.contains_key(k) {
            out.push((Some(o.clone()), None));
        }
    }
    Some(out)
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
    let (mut added, mut patched) = (0, 0);
    let mut whole_because: HashMap<&'static str, usize> = HashMap::new();
    for step in 0..2000 {
        let before = objects.clone();
        let what = change(&mut rng, &mut objects, &mut added);
        let whole = translated(&objects).state;
        let result = match pod_changes(&before, &objects) {
            None => Err(Whole("not only pods changed")),
            Some(changes) => patch(&previous, &objects, &settings, &reserved, &changes),
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
}
