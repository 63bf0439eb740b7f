//! The watch's own round (`patched`: the objects it saw, the namespace → pods expansion, the
//! patches in order) against a whole translation of its stores, over random rounds of several
//! changes each, delivered through kube's reflector stores as watch events are. Suggested by a
//! review: the patch tests of `translate` model the watch's expansion themselves, so a mistake in
//! the watch's would pass them.

use std::collections::HashMap;

use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use serde_json::json;

use super::*;
use crate::discovery::kubernetes::telemetry::TelemetryObject;
use crate::discovery::kubernetes::translate::DATAPLANE_MODE;
use crate::discovery::kubernetes::translate::tests::reuse::{change, edit};
use crate::discovery::kubernetes::translate::tests::{addresses, judged, objects};
use crate::testing::mesh_fingerprint;
use crate::xds::Resources;

struct Writers {
    namespaces: Writer<Namespace>,
    pods: Writer<SlimPod>,
    services: Writer<Service>,
    authorization_policies: Writer<AuthorizationPolicy>,
    peer_authentications: Writer<PeerAuthentication>,
}

/// Applies to `writer` the events that take `before` to `after`; `note` is shown each object
/// an event names.
fn sync<K>(writer: &mut Writer<K>, before: &[Arc<K>], after: &[Arc<K>], mut note: impl FnMut(&K))
where
    K: Resource<DynamicType = ()> + Clone,
{
    let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
    let old: HashMap<_, _> = before.iter().map(|o| (key(o), o.clone())).collect();
    let new: HashMap<_, _> = after.iter().map(|o| (key(o), o.clone())).collect();
    for (k, o) in &new {
        if old.get(k).is_none_or(|p| !Arc::ptr_eq(o, p)) {
            writer.apply_watcher_event(&watcher::Event::Apply((**o).clone()));
            note(o);
        }
    }
    for (k, p) in &old {
        if !new.contains_key(k) {
            writer.apply_watcher_event(&watcher::Event::Delete((**p).clone()));
            note(p);
        }
    }
}

/// Every kind's events from `before` to `after`, noted in `pending` as the watch notes them.
fn sync_all(w: &mut Writers, before: &Objects, after: &Objects, pending: &mut Pending) {
    let mut other = |kind: Kind, key: Key| {
        pending.others.insert((kind, key));
    };
    sync(
        &mut w.namespaces,
        &before.namespaces,
        &after.namespaces,
        |o| {
            other(Kind::Namespace, key_of(o));
        },
    );
    sync(&mut w.services, &before.services, &after.services, |o| {
        other(Kind::Service, key_of(o));
    });
    sync(
        &mut w.authorization_policies,
        &before.authorization_policies,
        &after.authorization_policies,
        |o| other(Kind::AuthorizationPolicy, key_of(o)),
    );
    sync(
        &mut w.peer_authentications,
        &before.peer_authentications,
        &after.peer_authentications,
        |o| other(Kind::PeerAuthentication, key_of(o)),
    );
    sync(&mut w.pods, &before.pods, &after.pods, |o| {
        pending.pods.insert(o.key());
    });
}

/// A namespace change: `default` created or deleted, or a namespace enrolled or released.
fn namespace_change(rng: &mut fastrand::Rng, model: &mut Objects) -> &'static str {
    if rng.u8(..3) == 0 {
        if let Some(at) = model
            .namespaces
            .iter()
            .position(|n| n.name_any() == "default")
        {
            model.namespaces.remove(at);
            return "namespace default deleted";
        }
        let labels = if rng.bool() {
            json!({ DATAPLANE_MODE: "ambient" })
        } else {
            json!({})
        };
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": labels}});
        model
            .namespaces
            .push(Arc::new(serde_json::from_value(ns).unwrap()));
        return "namespace default created";
    }
    let n = rng.usize(..model.namespaces.len());
    let ambient = rng.bool();
    edit(&mut model.namespaces[n], |ns| {
        let labels = &mut ns["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        let labels = labels.as_object_mut().unwrap();
        if ambient {
            labels.insert(DATAPLANE_MODE.into(), "ambient".into());
        } else {
            labels.remove(DATAPLANE_MODE);
        }
    });
    "a namespace enrolled or released"
}

#[test]
fn each_round_the_watch_patches_is_the_mesh_a_whole_translation_gives() {
    let settings = MeshSettings::default();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for seed in 0..60 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut model = objects();
        let (namespaces, ns_w) = reflector::store::<Namespace>();
        let (pods, pod_w) = reflector::store::<SlimPod>();
        let (services, svc_w) = reflector::store::<Service>();
        let (authorization_policies, ap_w) = reflector::store::<AuthorizationPolicy>();
        let (peer_authentications, pa_w) = reflector::store::<PeerAuthentication>();
        let (telemetries, mut tm_w) = reflector::store::<TelemetryObject>();
        let mut writers = Writers {
            namespaces: ns_w,
            pods: pod_w,
            services: svc_w,
            authorization_policies: ap_w,
            peer_authentications: pa_w,
        };
        let stores = Stores {
            namespaces,
            pods,
            services,
            authorization_policies,
            peer_authentications,
            telemetries: optional::Optional::answered_with(telemetries),
        };
        sync_all(
            &mut writers,
            &Objects::default(),
            &model,
            &mut Pending::default(),
        );
        sync(&mut tm_w, &[], &model.telemetries, |_| {});
        let (mut snapshot, mut last) = build(&stores, &settings);
        let mut resources = Resources::from_state(&snapshot.state);
        let mut added = 0;
        for step in 0..100 {
            let before = model.clone();
            let mut what = Vec::new();
            for _ in 0..rng.usize(1..=3) {
                what.push(match rng.u8(..8) {
                    0..=2 => namespace_change(&mut rng, &mut model),
                    _ => change(&mut rng, &mut model, &mut added),
                });
            }
            let mut pending = Pending::default();
            sync_all(&mut writers, &before, &model, &mut pending);
            let namespace_noted = pending.others.iter().any(|(k, _)| *k == Kind::Namespace);
            let whole = translate(&stores.objects(), &settings);
            let ips = addresses(&model);
            let next = match patched(&stores, &settings, &snapshot, &mut last, pending) {
                Ok(Some(next)) => next,
                Ok(None) => {
                    // Nothing translation reads changed: the mesh is the one published.
                    assert_eq!(
                        mesh_fingerprint(&snapshot.state, &ips),
                        mesh_fingerprint(&whole.state, &ips),
                        "seed {seed}, step {step} {what:?}: nothing published"
                    );
                    *counts.entry("nothing published").or_default() += 1;
                    continue;
                }
                Err(Whole(why)) => {
                    *counts.entry(why).or_default() += 1;
                    let (next, now) = build(&stores, &settings);
                    resources =
                        Resources::from_state_after(&next.state, &snapshot.state, &resources);
                    (snapshot, last) = (next, now);
                    continue;
                }
            };
            assert_eq!(
                mesh_fingerprint(&next.state, &ips),
                mesh_fingerprint(&whole.state, &ips),
                "seed {seed}, step {step} {what:?}"
            );
            assert_eq!(
                judged(&next.state, &next.invalid),
                judged(&whole.state, &whole.invalid),
                "seed {seed}, step {step} {what:?}"
            );
            let after = Resources::from_state_after(&next.state, &snapshot.state, &resources);
            assert!(
                after == Resources::from_state(&whole.state),
                "seed {seed}, step {step} {what:?}: resources"
            );
            let enrolment = next.state.ambient_namespaces() != snapshot.state.ambient_namespaces();
            *counts.entry("patched").or_default() += 1;
            if namespace_noted && enrolment {
                *counts.entry("patched, enrolment changed").or_default() += 1;
            }
            snapshot = next;
            resources = after;
        }
    }
    let count = |what: &str| counts.get(what).copied().unwrap_or_default();
    assert!(count("patched") > 1_500, "{counts:#?}");
    assert!(count("patched, enrolment changed") > 300, "{counts:#?}");
}
