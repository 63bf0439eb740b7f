//! From Kubernetes objects to the mesh model: pure functions, tested against API JSON.
//!
//! - A pod is **enrolled** when its namespace has `veil.dev/dataplane-mode=ambient` and the pod does
//!   not say `veil.dev/dataplane-mode=none`. Pods without an address, on the host network, or finished
//!   are not workloads; a waypoint's pods are part of the waypoint.
//! - `veil.dev/use-waypoint=<name>` on a namespace, service or pod routes through that waypoint of
//!   the same namespace (the most specific wins; `none` opts out).
//! - A waypoint is a Service labelled `veil.dev/waypoint=<name>`: its instances are the pods it
//!   selects, its identity their service account.
//! - A policy that fails validation is replaced by one that denies everything in its scope (the
//!   error is kept for its status): dropping it could open what it was meant to close. A Telemetry
//!   that fails is replaced by one that records nothing in its scope (privacy fails closed).
//! - Translation is per object: one that cannot be translated or conflicts with another (two
//!   waypoints of one name, an address claimed twice) is left out and reported, and the rest of the
//!   mesh is translated as usual (see [`MeshState::build_isolating`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service as KubeService};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use tracing::warn;
use veil_crd::authorization::{Action, AuthorizationPolicy, AuthorizationPolicySpec, Rule};
use veil_crd::peer_authentication::{
    MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec,
};

use super::pod::SlimPod;
use super::telemetry::{TelemetryObject, telemetry_policies};
use crate::discovery::model::{
    Naming, Service, ServicePort, Waypoint, WaypointRef, Workload, selects,
};
use crate::discovery::state::{MeshSettings, MeshState};
use crate::identity::Identity;
use crate::policy::{AuthzPolicy, PeerAuthPolicy, PolicyError, compile_authz, compile_peer_auth};

/// Label (namespace, pod) that enrols workloads: `ambient` on a namespace, `none` on a pod.
pub const DATAPLANE_MODE: &str = "veil.dev/dataplane-mode";
/// Label (namespace, service, pod) naming the waypoint to use, or `none`.
pub const USE_WAYPOINT: &str = "veil.dev/use-waypoint";
/// Label of a waypoint's Service: the waypoint's name.
pub const WAYPOINT: &str = "veil.dev/waypoint";

/// Everything the watches hold. The objects are shared with the watches' stores: a snapshot of
/// 100,000 pods costs a list of pointers, not a copy of every pod.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    /// Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Pods.
    pub pods: Vec<Arc<SlimPod>>,
    /// Services.
    pub services: Vec<Arc<KubeService>>,
    /// veil AuthorizationPolicies.
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    /// veil PeerAuthentications.
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// veil Telemetries (none while their CRD is not installed).
    pub telemetries: Vec<Arc<TelemetryObject>>,
}

/// A translated snapshot, with the policies that failed validation. Objects that conflict with
/// others are listed in [`MeshState::rejected`].
#[derive(Debug)]
pub struct Translation {
    /// The mesh.
    pub state: MeshState,
    /// Policies refused by validation (enforced as deny-all / STRICT, Telemetry as recording
    /// nothing, instead).
    pub invalid: Vec<PolicyError>,
}

/// Translates `objects` into a snapshot. Never fails as a whole: an object that cannot be translated
/// or conflicts with another is isolated (see [`MeshState::build_isolating`]) so that one namespace's
/// mistake, or malice, does not hold every other namespace at an old state.
pub fn translate(objects: &Objects, settings: &MeshSettings) -> Translation {
    let namespaces: HashMap<String, &Namespace> = objects
        .namespaces
        .iter()
        .map(|ns| (ns.name_any(), &**ns))
        .collect();
    let pods = PodIndex::new(&objects.pods);
    let waypoints = waypoints(objects, &pods, settings);
    let waypoint_pods: Vec<(String, IpAddr)> = waypoints
        .iter()
        .flat_map(|w| w.ips.iter().map(|ip| (w.namespace.clone(), *ip)))
        .collect();
    let (workloads, pending) = workloads(objects, &namespaces, &waypoint_pods, settings);
    let services = services(objects, &pods, &namespaces);
    let mut invalid = Vec::new();
    let authz = objects
        .authorization_policies
        .iter()
        .map(|p| authz_policy(p, &mut invalid))
        .collect();
    let peer_auth = objects
        .peer_authentications
        .iter()
        .map(|p| peer_auth_policy(p, &mut invalid))
        .collect();
    let telemetry = telemetry_policies(&objects.telemetries, &mut invalid);
    let ambient = objects
        .namespaces
        .iter()
        .filter(|ns| enrolled(ns))
        .map(|ns| ns.name_any());
    let state = MeshState::build_isolating(
        settings.clone(),
        workloads,
        services,
        waypoints,
        authz,
        peer_auth,
    )
    .with_ambient_namespaces(ambient)
    .with_pending(pending)
    .with_telemetry(telemetry);
    Translation { state, invalid }
}

/// What translation (and a patch) reads of an object besides its namespace and name: two versions
/// of an object that read the same translate the same, so a change between them (a status written,
/// an annotation, a label nothing reads) is no change of the mesh. Kept in step with the readers
/// above and below: a field read without being named here would be missed.
pub(crate) trait Reads {
    /// Whether `self` and `other` read the same.
    fn reads_as(&self, other: &Self) -> bool;
}

impl Reads for Namespace {
    fn reads_as(&self, other: &Self) -> bool {
        let (a, b) = (
            self.metadata.labels.as_ref(),
            other.metadata.labels.as_ref(),
        );
        label(a, DATAPLANE_MODE) == label(b, DATAPLANE_MODE)
            && label(a, USE_WAYPOINT) == label(b, USE_WAYPOINT)
    }
}

impl Reads for KubeService {
    fn reads_as(&self, other: &Self) -> bool {
        let (a, b) = (
            self.metadata.labels.as_ref(),
            other.metadata.labels.as_ref(),
        );
        label(a, WAYPOINT) == label(b, WAYPOINT)
            && label(a, USE_WAYPOINT) == label(b, USE_WAYPOINT)
            && self.spec == other.spec
    }
}

impl Reads for AuthorizationPolicy {
    fn reads_as(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Reads for PeerAuthentication {
    fn reads_as(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Reads for TelemetryObject {
    fn reads_as(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

pub(crate) fn label<'a>(
    labels: Option<&'a BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    labels.and_then(|l| l.get(key)).map(String::as_str)
}

pub(crate) fn pod_ips(pod: &SlimPod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    ips
}

/// Pods by (namespace, label key, label value), built once per translation: a Service's pods are
/// found among those carrying the rarest of its selector's labels, not by scanning every pod.
struct PodIndex<'p>(HashMap<(&'p str, &'p str, &'p str), Vec<&'p SlimPod>>);

impl<'p> PodIndex<'p> {
    fn new(pods: &'p [Arc<SlimPod>]) -> Self {
        let mut index: HashMap<(&str, &str, &str), Vec<&SlimPod>> = HashMap::new();
        for pod in pods.iter().map(|p| &**p) {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            for (k, v) in pod.metadata.labels.iter().flatten() {
                index
                    .entry((namespace, k.as_str(), v.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        Self(index)
    }

    /// The pods of `namespace` that `selector` selects (a Service's label selector; an empty one
    /// selects nothing).
    fn selected(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<&'p SlimPod> {
        selector
            .iter()
            .map(|(k, v)| {
                self.0
                    .get(&(namespace, k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|candidates| candidates.len())
            .unwrap_or_default()
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| selects(selector, l))
            })
            .copied()
            .collect()
    }
}

/// A pod's uid (its namespace and name where the API gave none).
pub(crate) fn pod_uid(pod: &SlimPod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| {
        let namespace = pod.namespace().unwrap_or_default();
        format!("{namespace}/{}", pod.name_any())
    })
}

pub(crate) fn live(pod: &SlimPod) -> bool {
    running_in_pod_network(pod) && !pod_ips(pod).is_empty()
}

/// Not on the host's network, and not finished.
fn running_in_pod_network(pod: &SlimPod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host_network && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Bound to a node, on the pod network, not finished and not being deleted: a pod whose network
/// its node may set up any moment.
pub(crate) fn scheduled(pod: &SlimPod) -> bool {
    node_name(pod).is_some()
        && pod.metadata.deletion_timestamp.is_none()
        && running_in_pod_network(pod)
}

/// The name of what runs the pod: its controller's, with the suffix a Deployment's ReplicaSet or a
/// CronJob's Job adds taken off; the pod's own name when nothing controls it.
fn workload_name(pod: &SlimPod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return pod.name_any();
    };
    match owner.kind.as_str() {
        // `<deployment>-<pod-template-hash>`.
        "ReplicaSet" => {
            let hash = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"));
            hash.and_then(|h| owner.name.strip_suffix(h.as_str()))
                .and_then(|n| n.strip_suffix('-'))
                .filter(|n| !n.is_empty())
                .unwrap_or(&owner.name)
                .to_owned()
        }
        // `<cronjob>-<scheduled time in minutes>`.
        "Job" => match owner.name.rsplit_once('-') {
            Some((cronjob, minutes))
                if !cronjob.is_empty()
                    && minutes.len() >= 8
                    && minutes.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cronjob.to_owned()
            }
            _ => owner.name.clone(),
        },
        // A static pod, mirrored by its node's kubelet: the pod itself.
        "Node" => pod.name_any(),
        _ => owner.name.clone(),
    }
}

fn node_name(pod: &SlimPod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn service_account(pod: &SlimPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default")
}

fn waypoints(objects: &Objects, pods: &PodIndex<'_>, settings: &MeshSettings) -> Vec<Waypoint> {
    let mut out = Vec::new();
    for svc in &objects.services {
        let Some(name) = label(svc.metadata.labels.as_ref(), WAYPOINT) else {
            continue;
        };
        let namespace = svc.namespace().unwrap_or_default();
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let instances: Vec<&SlimPod> = pods
            .selected(&namespace, &selector)
            .into_iter()
            .filter(|p| live(p))
            .collect();
        let accounts: std::collections::BTreeSet<&str> =
            instances.iter().map(|p| service_account(p)).collect();
        let identity = match accounts.iter().next() {
            Some(sa) if accounts.len() == 1 => {
                Identity::new(&settings.trust_domain, &namespace, sa)
            }
            _ => {
                if !instances.is_empty() {
                    warn!(waypoint = %format!("{namespace}/{name}"), "waypoint instances run as several service accounts; the waypoint is unusable");
                }
                continue;
            }
        };
        let Ok(identity) = identity else { continue };
        // Sorted: the stores' order differs between replicas and between translations.
        let mut ips: Vec<IpAddr> = instances.iter().flat_map(|p| pod_ips(p)).collect();
        ips.sort();
        out.push(Waypoint {
            name: name.to_owned(),
            namespace,
            identity,
            ips,
        });
    }
    out
}

/// Whether the namespace `ns` is enrolled in the mesh (labelled ambient).
pub(crate) fn enrolled(ns: &Namespace) -> bool {
    label(ns.metadata.labels.as_ref(), DATAPLANE_MODE) == Some("ambient")
}

/// The waypoint an object uses: its own label, else its namespace's; `none` opts out.
fn waypoint_ref(
    own: Option<&str>,
    namespace: &str,
    namespaces: &HashMap<String, &Namespace>,
) -> Option<WaypointRef> {
    let ns_choice = namespaces
        .get(namespace)
        .and_then(|ns| label(ns.metadata.labels.as_ref(), USE_WAYPOINT));
    match own.or(ns_choice)? {
        "none" => None,
        name => Some(WaypointRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
    }
}

/// The workloads: live pods with addresses. And the pending ones: pods scheduled to a node, not
/// finished, whose network is not set up yet (see [`MeshState::pending`]).
fn workloads(
    objects: &Objects,
    namespaces: &HashMap<String, &Namespace>,
    waypoint_pods: &[(String, IpAddr)],
    settings: &MeshSettings,
) -> (Vec<Workload>, Vec<Workload>) {
    // Newest first, so that an address reused by a new pod wins over a terminating one; of two
    // created in the same second, by namespace and name (not the stores' order, which differs
    // between replicas and between translations).
    let mut pods: Vec<&SlimPod> = objects
        .pods
        .iter()
        .map(|p| &**p)
        .filter(|p| live(p))
        .collect();
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
            .then_with(|| a.metadata.namespace.cmp(&b.metadata.namespace))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for pod in pods {
        let namespace = pod.namespace().unwrap_or_default();
        let ips: Vec<IpAddr> = pod_ips(pod)
            .into_iter()
            .filter(|ip| seen.insert(*ip))
            .collect();
        if ips.is_empty() {
            continue;
        }
        if ips
            .iter()
            .any(|ip| waypoint_pods.contains(&(namespace.clone(), *ip)))
        {
            continue; // a waypoint instance: part of the waypoint, not a workload
        }
        out.extend(workload(pod, ips, namespaces, settings));
    }
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut pending: Vec<Workload> = objects
        .pods
        .iter()
        .filter(|p| scheduled(p) && pod_ips(p).is_empty())
        .filter_map(|p| workload(p, Vec::new(), namespaces, settings))
        .collect();
    pending.sort_by(|a, b| a.uid.cmp(&b.uid));
    (out, pending)
}

/// A pod as a workload with `ips`; `None` when its service account makes no valid identity.
pub(crate) fn workload(
    pod: &SlimPod,
    ips: Vec<IpAddr>,
    namespaces: &HashMap<String, &Namespace>,
    settings: &MeshSettings,
) -> Option<Workload> {
    let namespace = pod.namespace().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let ns_ambient = namespaces.get(&namespace).is_some_and(|ns| enrolled(ns));
    let opted_out = labels.get(DATAPLANE_MODE).map(String::as_str) == Some("none");
    let enrolled = ns_ambient && !opted_out;
    let Ok(identity) = Identity::new(&settings.trust_domain, &namespace, service_account(pod))
    else {
        warn!(pod = %format!("{namespace}/{}", pod.name_any()), "service account does not make a valid identity; ignored");
        return None;
    };
    let waypoint = if enrolled {
        waypoint_ref(
            labels.get(USE_WAYPOINT).map(String::as_str),
            &namespace,
            namespaces,
        )
    } else {
        None
    };
    let naming = Arc::new(Naming::new(workload_name(pod), &labels));
    Some(Workload {
        uid: pod_uid(pod).into(),
        name: pod.name_any().into(),
        namespace: namespace.into(),
        service_account: service_account(pod).into(),
        node: node_name(pod).unwrap_or_default().into(),
        ips,
        labels,
        naming,
        netns: None,
        enrolled,
        serving: pod.serving(),
        identity,
        waypoint,
        waypoint_conflict: Vec::new(),
        telemetry: None,
        policies: Default::default(),
    })
}

fn services(
    objects: &Objects,
    pods: &PodIndex<'_>,
    namespaces: &HashMap<String, &Namespace>,
) -> Vec<Service> {
    objects
        .services
        .iter()
        .filter_map(|svc| service(svc, namespaces, |ns, selector| pods.selected(ns, selector)))
        .collect()
}

/// A Service as the mesh's (its endpoints left to the assembly); `None` for a waypoint's, or one
/// without a virtual address. `backends` gives the pods its selector selects in its namespace,
/// where a target port names a container port.
pub(crate) fn service<'p>(
    svc: &KubeService,
    namespaces: &HashMap<String, &Namespace>,
    backends: impl FnOnce(&str, &BTreeMap<String, String>) -> Vec<&'p SlimPod>,
) -> Option<Service> {
    if label(svc.metadata.labels.as_ref(), WAYPOINT).is_some() {
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if vips.is_empty() {
        return None; // headless or ExternalName: no virtual address to capture
    }
    let namespace = svc.namespace().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let named = spec
        .ports
        .iter()
        .flatten()
        .any(|p| matches!(p.target_port, Some(IntOrString::String(_))));
    let backends: Vec<&SlimPod> = if named {
        backends(&namespace, &selector)
    } else {
        Vec::new()
    };
    // SCTP's ports are left out: nothing in the mesh carries SCTP.
    let ports_of = |protocol: &str| -> Vec<ServicePort> {
        spec.ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == protocol)
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target_port = target_port(p.target_port.as_ref(), port, &backends)?;
                Some(ServicePort { port, target_port })
            })
            .collect()
    };
    Some(Service {
        name: svc.name_any(),
        namespace: namespace.clone(),
        vips,
        ports: ports_of("TCP"),
        udp_ports: ports_of("UDP"),
        selector,
        endpoints: Vec::new(),
        waypoint: waypoint_ref(
            label(svc.metadata.labels.as_ref(), USE_WAYPOINT),
            &namespace,
            namespaces,
        ),
    })
}

/// A service port's target: a number, or a container port name looked up in the backing pods.
fn target_port(target: Option<&IntOrString>, port: u16, backends: &[&SlimPod]) -> Option<u16> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => backends.iter().find_map(|pod| {
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok())
            })
        }),
    }
}

pub(crate) fn authz_policy(p: &AuthorizationPolicy, invalid: &mut Vec<PolicyError>) -> AuthzPolicy {
    let namespace = p.namespace().unwrap_or_default();
    let name = p.name_any();
    match compile_authz(&namespace, &name, &p.spec) {
        Ok(policy) => policy,
        Err(e) => {
            warn!(error = %e, "invalid policy: denying everything it applies to until it is fixed");
            invalid.push(e);
            deny_all(&namespace, &name, &p.spec)
        }
    }
}

/// A DENY-everything policy with the scope of `spec` (its namespace, if even the scope is invalid).
fn deny_all(namespace: &str, name: &str, spec: &AuthorizationPolicySpec) -> AuthzPolicy {
    let scoped = AuthorizationPolicySpec {
        selector: spec.selector.clone(),
        target_ref: spec.target_ref.clone(),
        target_refs: spec.target_refs.clone(),
        rules: vec![Rule::default()],
        action: Action::Deny,
        provider: None,
    };
    compile_authz(namespace, name, &scoped).unwrap_or_else(|_| {
        let namespace_wide = AuthorizationPolicySpec {
            rules: vec![Rule::default()],
            action: Action::Deny,
            ..AuthorizationPolicySpec::default()
        };
        compile_authz(namespace, name, &namespace_wide).expect("a namespace-wide deny-all compiles")
    })
}

pub(crate) fn peer_auth_policy(
    p: &PeerAuthentication,
    invalid: &mut Vec<PolicyError>,
) -> PeerAuthPolicy {
    let namespace = p.namespace().unwrap_or_default();
    let name = p.name_any();
    compile_peer_auth(&namespace, &name, &p.spec).unwrap_or_else(|e| {
        warn!(error = %e, "invalid PeerAuthentication: enforcing STRICT in its scope until it is fixed");
        invalid.push(e);
        let strict = PeerAuthenticationSpec {
            selector: p.spec.selector.clone(),
            mtls: Some(MutualTls { mode: MtlsMode::Strict }),
            port_level_mtls: BTreeMap::new(),
        };
        compile_peer_auth(&namespace, &name, &strict).expect("a STRICT PeerAuthentication compiles")
    })
}

#[cfg(test)]
pub(crate) mod tests;
