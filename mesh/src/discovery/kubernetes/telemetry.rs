//! Telemetry objects from the API: stored with their `spec` as the API served it, and read in
//! translation, one object at a time.
//!
//! The watch does not deserialize `spec` into [`TelemetrySpec`]: a list is one document, and a
//! single object this version cannot read (a field a newer CRD added, a value of the wrong type)
//! would otherwise fail the whole list, and every namespace's Telemetry with it. Read here, such an
//! object is reported like any invalid one, and — privacy failing closed — stands for recording
//! nothing in its scope.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;
use veil_crd::selector::WorkloadSelector;
use veil_crd::telemetry::{Telemetry, TelemetrySpec};

use crate::policy::{
    PolicyError, PolicyId, TelemetryPolicy, compile_telemetry, telemetry_fail_closed,
};

/// A `security.veil.dev/v1` Telemetry as the API serves it: its metadata, and its `spec` unread.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct TelemetryObject {
    /// Its metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its `spec`, as served (`Null` when it has none).
    #[serde(default)]
    pub spec: Value,
}

impl Resource for TelemetryObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Telemetry::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        Telemetry::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        Telemetry::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Telemetry::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every object of `objects` compiled; one that cannot be read or compiled is added to `invalid`
/// (with a warning) and replaced by one recording nothing in its scope.
pub(crate) fn telemetry_policies(
    objects: &[Arc<TelemetryObject>],
    invalid: &mut Vec<PolicyError>,
) -> Vec<TelemetryPolicy> {
    objects.iter().map(|o| compile(o, invalid)).collect()
}

fn compile(object: &TelemetryObject, invalid: &mut Vec<PolicyError>) -> TelemetryPolicy {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let (error, selector) = match read(&object.spec) {
        Ok(spec) => match compile_telemetry(&namespace, &name, &spec) {
            Ok(policy) => return policy,
            Err(e) => (e, spec.selector.map(|s| s.match_labels)),
        },
        Err(reason) => {
            let error = PolicyError {
                kind: "Telemetry",
                policy: PolicyId::new(&namespace, &name),
                field: "spec".into(),
                reason,
            };
            (error, readable_selector(&object.spec))
        }
    };
    warn!(error = %error, "invalid Telemetry: recording nothing about the workloads it applies to (no access log, no spans) until it is fixed");
    invalid.push(error);
    telemetry_fail_closed(&namespace, &name, selector)
}

/// The spec, read; else why it cannot be.
fn read(spec: &Value) -> Result<TelemetrySpec, String> {
    if spec.is_null() {
        return Err("missing".into());
    }
    serde_json::from_value(spec.clone()).map_err(|e| format!("cannot be read: {e}"))
}

/// The `spec.selector` of a spec that cannot be read as a whole, if that much can be; else the
/// object fails closed for its whole namespace, which holds every workload it could select.
fn readable_selector(spec: &Value) -> Option<BTreeMap<String, String>> {
    let selector = spec.get("selector")?;
    serde_json::from_value::<WorkloadSelector>(selector.clone())
        .ok()
        .map(|s| s.match_labels)
}
