//! What the controller's patches of a mesh (`kubernetes::patch`) change in place: services taken
//! out and put back, pods being set up added and taken out, workloads judged anew,
//! PeerAuthentications replaced.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ByUid, MeshState, ServiceKey};
use crate::discovery::model::{Service, Workload};
use crate::policy::PeerAuthPolicy;

impl MeshState {
    /// Adds `service` (its key and addresses free), its key to the lists of the services its
    /// endpoints back (ordered by key, as a patch for a pod lists them).
    pub(crate) fn add_service(&mut self, service: Arc<Service>) {
        let key = (service.namespace.clone(), service.name.clone());
        for uid in &service.endpoints {
            let Some(workload) = self.workloads.get(&**uid).cloned() else {
                continue;
            };
            let mut keys: Vec<ServiceKey> = self
                .services_of
                .get(&**uid)
                .map(|k| k.to_vec())
                .unwrap_or_default();
            if !keys.contains(&key) {
                keys.push(key.clone());
                keys.sort();
            }
            self.services_of.insert(workload, keys.into());
        }
        self.put_service(service);
    }

    /// Lists the pods being set up in `namespace` as backing the services that select them now
    /// (as [`Self::with_pending`] lists them; their waypoint is left as it is), each put back as
    /// a copy whose policies are judged anew (see [`Workload::unjudged`]).
    pub(crate) fn relist_pending(&mut self, namespace: &str) {
        let mut pending = self.pending.to_vec();
        for workload in pending.iter_mut().filter(|w| *w.namespace == *namespace) {
            self.services_of.remove(&*workload.uid);
            *workload = Arc::new(workload.unjudged());
            let keys: Vec<ServiceKey> = self
                .services_selecting(namespace, &workload.labels)
                .iter()
                .map(|s| (s.namespace.clone(), s.name.clone()))
                .collect();
            if !keys.is_empty() {
                self.services_of
                    .insert(ByUid(workload.clone()), keys.into());
            }
        }
        self.pending = pending.into();
    }

    /// Puts the workload `uid` back as a copy whose policies are judged anew (see
    /// [`Workload::unjudged`]), backing the services it backs.
    pub(crate) fn rejudge(&mut self, uid: &str) {
        let keys = self.services_of.get(uid).cloned();
        let Some(old) = self.remove_workload(uid) else {
            return;
        };
        let copy = Arc::new(old.unjudged());
        match keys {
            Some(keys) => self.insert_workload(copy, keys),
            None => self.insert_workload(copy, Vec::new()),
        }
    }

    /// Replaces the PeerAuthentications: those `keep` refuses are taken out, `new` put in. Nothing
    /// in the mesh holds what they decide: each workload's is resolved when read.
    pub(crate) fn replace_peer_auth(
        &mut self,
        keep: impl Fn(&PeerAuthPolicy) -> bool,
        new: impl IntoIterator<Item = PeerAuthPolicy>,
    ) {
        let all: Vec<PeerAuthPolicy> = self
            .peer_auth
            .iter()
            .filter(|p| keep(p))
            .cloned()
            .chain(new)
            .collect();
        self.peer_auth = all.into();
    }

    /// Judges anew (see [`Self::rejudge`]) the workloads of `namespace` for which `maybe` holds.
    pub(crate) fn rejudge_in(&mut self, namespace: &str, maybe: impl Fn(&Workload) -> bool) {
        let uids: Vec<Arc<str>> = self
            .workloads
            .iter()
            .filter(|ByUid(w)| *w.namespace == *namespace && maybe(w))
            .map(|ByUid(w)| w.uid.clone())
            .collect();
        for uid in uids {
            self.rejudge(&uid);
        }
    }

    /// The workloads of each of `namespaces`, in the order of their uids: one pass over the mesh,
    /// for the Services of those namespaces to select from ([`selected`]).
    pub(crate) fn workloads_in(
        &self,
        namespaces: &std::collections::BTreeSet<String>,
    ) -> HashMap<String, Vec<Arc<Workload>>> {
        let mut out: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
        for ByUid(w) in &self.workloads {
            if namespaces.contains(&*w.namespace) {
                out.entry(w.namespace.to_string())
                    .or_default()
                    .push(w.clone());
            }
        }
        out
    }

    /// Adds `workload` to the pods being set up (see [`Self::with_pending`]).
    pub(crate) fn add_pending(&mut self, workload: Workload) {
        let workload = self.judge_pending(workload);
        let mut pending = self.pending.to_vec();
        let at = pending.partition_point(|w| w.uid < workload.uid);
        pending.insert(at, workload);
        self.pending = pending.into();
    }

    /// Takes the pod being set up `uid` out of the list; returns it.
    pub(crate) fn remove_pending(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let at = self.pending.iter().position(|w| &*w.uid == uid)?;
        let mut pending = self.pending.to_vec();
        let workload = pending.remove(at);
        self.pending = pending.into();
        self.services_of.remove(uid);
        Some(workload)
    }
}

/// Of `workloads` (one namespace's, [`MeshState::workloads_in`]), the uids of those `selector`
/// selects (none for an empty one), in the order given.
pub(crate) fn selected(
    workloads: Option<&Vec<Arc<Workload>>>,
    selector: &std::collections::BTreeMap<String, String>,
) -> Vec<Arc<str>> {
    if selector.is_empty() {
        return Vec::new();
    }
    workloads
        .into_iter()
        .flatten()
        .filter(|w| crate::discovery::model::selects(selector, &w.labels))
        .map(|w| w.uid.clone())
        .collect()
}
