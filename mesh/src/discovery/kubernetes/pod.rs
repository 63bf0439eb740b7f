//! A Pod as the mesh reads it. The watches deserialize the API's Pods into this type directly: the
//! fields translation reads (names, labels, node, service account, host networking, container
//! ports, phase, addresses, whether it is ready) and nothing else — a pod's environment, volumes,
//! images, probes and other conditions are skipped as the JSON is read, never allocated. A store of every pod in a cluster
//! then costs what the mesh needs: `k8s_openapi`'s Pod, even cut down to these fields, is a
//! 2,176-byte struct with two containers of about as much each (≈8.7 KB per pod at 100,000 pods).

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ContainerPort, PodIP};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A Pod: `v1/pods`, as much of it as translation reads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct SlimPod {
    /// Its metadata (what `slim_meta` leaves of it: not the field managers' bookkeeping, owner
    /// references or annotations).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SlimPodSpec>,
    /// Its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SlimPodStatus>,
}

/// `spec`: where the pod runs, as whom, on which network, and its containers' ports.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    /// Its containers (for their named ports).
    #[serde(default)]
    pub containers: Vec<SlimContainer>,
    /// Whether it shares its node's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// The node it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The service account it runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// A container: its name and ports.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct SlimContainer {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The ports it declares (a Service's named target port is looked up here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
}

/// `status`: its phase and addresses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Its first address.
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// All its addresses (one per family).
    #[serde(rename = "podIPs", default, skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
    /// Whether its `Ready` condition is `True`; `None` without one. The other conditions are
    /// skipped as they are read.
    #[serde(
        rename = "conditions",
        default,
        deserialize_with = "ready_condition",
        serialize_with = "as_conditions",
        skip_serializing_if = "Option::is_none"
    )]
    pub ready: Option<bool>,
}

/// A pod condition as read: its type and status (time stamps, reasons and messages skipped).
#[derive(Deserialize)]
struct Condition<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

fn ready_condition<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let conditions: Option<Vec<Condition<'de>>> = Option::deserialize(d)?;
    Ok(conditions
        .unwrap_or_default()
        .iter()
        .find(|c| c.kind == "Ready")
        .map(|c| c.status == "True"))
}

fn as_conditions<S: serde::Serializer>(ready: &Option<bool>, s: S) -> Result<S::Ok, S::Error> {
    let conditions: Vec<serde_json::Value> = ready
        .iter()
        .map(|r| serde_json::json!({"type": "Ready", "status": if *r { "True" } else { "False" }}))
        .collect();
    conditions.serialize(s)
}

impl SlimPod {
    /// Whether it takes new connections as a service's endpoint: its `Ready` condition (ready
    /// without one, as a pod read from a source that does not say), and whether it is being
    /// deleted.
    pub fn serving(&self) -> crate::discovery::Serving {
        let ready = self.status.as_ref().and_then(|s| s.ready).unwrap_or(true);
        crate::discovery::Serving::of(ready, self.metadata.deletion_timestamp.is_some())
    }

    /// Its namespace and name: what identifies it in the watches' stores and events.
    pub fn key(&self) -> (String, String) {
        use kube::ResourceExt;
        (self.namespace().unwrap_or_default(), self.name_any())
    }
}

impl kube::Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
