//! Lists many workloads hold alike — the services they back, their policies (a Deployment's
//! replicas, a namespace's pods): one copy of each. A mesh built whole interns them as it is
//! built; a control plane's subscriber keeps one [`Lists`] from its last whole build, so that a
//! workload patched in (a restarted replica) takes the list the others hold and churn does not
//! unshare them. A list no workload holds any more lives until the next whole build at most.

use std::collections::HashSet;
use std::sync::Arc;

use super::{MeshState, ServiceKey};
use crate::policy::AuthzPolicy;

/// One copy of each list.
#[derive(Debug, Default)]
pub(crate) struct Lists {
    services: HashSet<Arc<[ServiceKey]>>,
    policies: HashSet<SamePolicies>,
}

/// A list of policies, equal to another holding the same policy objects (not equal ones: a
/// policy received anew is another policy). The list holds them, so their addresses, hashed,
/// stay theirs while it is held.
#[derive(Debug)]
struct SamePolicies(Arc<[Arc<AuthzPolicy>]>);

impl PartialEq for SamePolicies {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for SamePolicies {}

impl std::hash::Hash for SamePolicies {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for p in self.0.iter() {
            Arc::as_ptr(p).hash(state);
        }
    }
}

impl Lists {
    /// The lists `state`'s workloads hold.
    pub(crate) fn of(state: &MeshState) -> Self {
        let mut lists = Self::default();
        for services in state.service_lists() {
            lists.services.insert(services.clone());
        }
        for policies in state.policy_lists() {
            lists.policies(policies.clone());
        }
        lists
    }

    /// `keys` as the list held, if one is.
    pub(crate) fn services(&mut self, keys: Vec<ServiceKey>) -> Arc<[ServiceKey]> {
        if let Some(held) = self.services.get(keys.as_slice()) {
            return held.clone();
        }
        let list: Arc<[ServiceKey]> = keys.into();
        self.services.insert(list.clone());
        list
    }

    /// `list` as the list of the same policies held, if one is.
    pub(crate) fn policies(&mut self, list: Arc<[Arc<AuthzPolicy>]>) -> Arc<[Arc<AuthzPolicy>]> {
        let list = SamePolicies(list);
        if let Some(held) = self.policies.get(&list) {
            return held.0.clone();
        }
        let held = list.0.clone();
        self.policies.insert(list);
        held
    }
}
