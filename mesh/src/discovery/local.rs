//! The local source: the mesh described in one YAML file, watched and re-applied when it changes.
//! Used by the demo, the tests, and hosts without Kubernetes. A file that fails validation is
//! refused whole with an error naming the object and field; the last good state stays in force.
//!
//! ```yaml
//! workloads:
//!   - name: account-service-0
//!     namespace: production
//!     serviceAccount: account-service
//!     node: node-a
//!     ips: [10.1.0.10]
//!     netns: /var/run/netns/pod-account        # pods on this node: where to capture
//!     labels: {app: account-service}
//! services:
//!   - name: account-service
//!     namespace: production
//!     vips: [10.96.0.10]
//!     ports: [{port: 80, targetPort: 8080}]
//!     selector: {app: account-service}
//! policies:                                     # Kubernetes objects, as `kubectl apply` takes them
//!   - apiVersion: security.veil.dev/v1
//!     kind: AuthorizationPolicy
//!     metadata: {name: allow-prod, namespace: user-data}
//!     spec: {rules: [{from: [{source: {namespaces: [production]}}]}]}
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{error, info};
use veil_crd::API_VERSION;
use veil_crd::authorization::AuthorizationPolicySpec;
use veil_crd::peer_authentication::PeerAuthenticationSpec;
use veil_crd::telemetry::TelemetrySpec;

use super::model::{Naming, Service, ServicePort, Serving, Waypoint, WaypointRef, Workload};
use super::state::{ConfigError, MeshSettings, MeshState};
use crate::identity::Identity;
use crate::policy::{compile_authz, compile_peer_auth, compile_telemetry};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LocalFile {
    // `Option`: a key with nothing under it (`services:`) reads as null, meaning none.
    #[serde(default)]
    workloads: Option<Vec<WorkloadEntry>>,
    #[serde(default)]
    services: Option<Vec<ServiceEntry>>,
    #[serde(default)]
    policies: Option<Vec<PolicyObject>>,
    #[serde(default)]
    namespaces: Option<Vec<NamespaceEntry>>,
    #[serde(default)]
    waypoints: Option<Vec<WaypointEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceEntry {
    name: String,
    #[serde(default)]
    use_waypoint: Option<String>,
    /// `ambient`: the namespace is in the mesh even before it has pods.
    #[serde(default)]
    dataplane_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaypointEntry {
    name: String,
    namespace: String,
    service_account: String,
    ips: Vec<IpAddr>,
}

/// `useWaypoint: none` opts a workload or service out of its namespace's waypoint.
const NO_WAYPOINT: &str = "none";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadEntry {
    #[serde(default)]
    uid: Option<String>,
    name: String,
    namespace: String,
    service_account: String,
    node: String,
    ips: Vec<IpAddr>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// What telemetry calls it, shared by its replicas (default: its name).
    #[serde(default)]
    workload_name: Option<String>,
    #[serde(default)]
    netns: Option<PathBuf>,
    #[serde(default = "yes")]
    enrolled: bool,
    #[serde(default)]
    use_waypoint: Option<String>,
    /// Its readiness (default ready).
    #[serde(default = "yes")]
    ready: bool,
    /// Being deleted (default not).
    #[serde(default)]
    terminating: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceEntry {
    name: String,
    namespace: String,
    vips: Vec<IpAddr>,
    ports: Vec<PortEntry>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    use_waypoint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortEntry {
    port: u16,
    #[serde(default)]
    target_port: Option<u16>,
    /// As a Kubernetes Service port's: the ports of a UDP service are reached only by carried UDP.
    #[serde(default)]
    protocol: PortProtocol,
}

/// A service port's protocol, spelled as Kubernetes spells it. SCTP is not accepted: nothing in
/// the mesh carries it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
enum PortProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyObject {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    namespace: String,
}

/// Parses and validates a local mesh description.
pub fn parse(text: &str, settings: &MeshSettings) -> Result<MeshState, ConfigError> {
    let file: LocalFile =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let waypoints: Vec<Waypoint> = file
        .waypoints
        .unwrap_or_default()
        .into_iter()
        .map(|w| waypoint(w, settings))
        .collect::<Result<_, _>>()?;
    let namespaces = file.namespaces.unwrap_or_default();
    let mut ambient: std::collections::BTreeSet<String> = namespaces
        .iter()
        .filter(|ns| ns.dataplane_mode.as_deref() == Some("ambient"))
        .map(|ns| ns.name.clone())
        .collect();
    let bindings = Bindings::new(namespaces, &waypoints)?;
    let workloads: Vec<Workload> = file
        .workloads
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, w)| workload(i, w, settings, &bindings))
        .collect::<Result<_, _>>()?;
    ambient.extend(
        workloads
            .iter()
            .filter(|w| w.enrolled)
            .map(|w| w.namespace.to_string()),
    );
    let services = file
        .services
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, s)| service(i, s, &bindings))
        .collect::<Result<_, _>>()?;
    let mut authz = Vec::new();
    let mut peer_auth = Vec::new();
    let mut telemetry = Vec::new();
    for (i, object) in file.policies.unwrap_or_default().into_iter().enumerate() {
        let (ns, name) = (&object.metadata.namespace, &object.metadata.name);
        let at = format!("policies[{i}] ({} {ns}/{name})", object.kind);
        if object.api_version != API_VERSION {
            return Err(ConfigError::invalid(
                at,
                format!(
                    "apiVersion {:?}: expected {API_VERSION}",
                    object.api_version
                ),
            ));
        }
        match object.kind.as_str() {
            "AuthorizationPolicy" => {
                let spec: AuthorizationPolicySpec = spec_of(&object.spec, &at)?;
                authz.push(compile_authz(ns, name, &spec)?);
            }
            "PeerAuthentication" => {
                let spec: PeerAuthenticationSpec = spec_of(&object.spec, &at)?;
                peer_auth.push(compile_peer_auth(ns, name, &spec)?);
            }
            "Telemetry" => {
                let spec: TelemetrySpec = spec_of(&object.spec, &at)?;
                telemetry.push(compile_telemetry(ns, name, &spec)?);
            }
            other => {
                return Err(ConfigError::invalid(
                    at,
                    format!(
                        "unknown kind {other:?} (AuthorizationPolicy, PeerAuthentication or Telemetry)"
                    ),
                ));
            }
        }
    }
    let state = MeshState::build(
        settings.clone(),
        workloads,
        services,
        waypoints,
        authz,
        peer_auth,
    )?
    .with_telemetry(telemetry);
    // Validated whole: a second Telemetry of one name is an error, as for the other kinds.
    if let Some(e) = state.rejected().first() {
        return Err(e.clone());
    }
    Ok(state.with_ambient_namespaces(ambient))
}

/// Which waypoint each namespace uses by default, and which waypoints exist.
struct Bindings {
    defaults: BTreeMap<String, String>,
    known: std::collections::BTreeSet<WaypointRef>,
}

impl Bindings {
    fn new(namespaces: Vec<NamespaceEntry>, waypoints: &[Waypoint]) -> Result<Self, ConfigError> {
        let known = waypoints.iter().map(Waypoint::reference).collect();
        let mut defaults = BTreeMap::new();
        for ns in namespaces {
            if let Some(name) = ns.use_waypoint.filter(|n| n != NO_WAYPOINT) {
                defaults.insert(ns.name, name);
            }
        }
        let bindings = Self { defaults, known };
        for (ns, name) in &bindings.defaults {
            bindings.check(&format!("namespaces ({ns})"), ns, name)?;
        }
        Ok(bindings)
    }

    /// The waypoint of an object in `namespace` with its own `explicit` choice.
    fn resolve(
        &self,
        at: &str,
        namespace: &str,
        explicit: Option<&str>,
    ) -> Result<Option<WaypointRef>, ConfigError> {
        let name = match explicit {
            Some(NO_WAYPOINT) => return Ok(None),
            Some(name) => name,
            None => match self.defaults.get(namespace) {
                Some(name) => name,
                None => return Ok(None),
            },
        };
        self.check(at, namespace, name).map(Some)
    }

    fn check(&self, at: &str, namespace: &str, name: &str) -> Result<WaypointRef, ConfigError> {
        let reference = WaypointRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if self.known.contains(&reference) {
            Ok(reference)
        } else {
            Err(ConfigError::invalid(
                at,
                format!("useWaypoint: no waypoint {reference} is defined"),
            ))
        }
    }
}

fn waypoint(w: WaypointEntry, settings: &MeshSettings) -> Result<Waypoint, ConfigError> {
    let at = format!("waypoints ({}/{})", w.namespace, w.name);
    if w.ips.is_empty() {
        return Err(ConfigError::invalid(
            at,
            "needs at least one address in ips",
        ));
    }
    let identity = Identity::new(&settings.trust_domain, &w.namespace, &w.service_account)
        .map_err(|e| ConfigError::invalid(&at, e.to_string()))?;
    Ok(Waypoint {
        name: w.name,
        namespace: w.namespace,
        identity,
        ips: w.ips,
    })
}

fn spec_of<T: serde::de::DeserializeOwned + Default>(
    spec: &serde_json::Value,
    at: &str,
) -> Result<T, ConfigError> {
    if spec.is_null() {
        return Ok(T::default());
    }
    T::deserialize(spec).map_err(|e| ConfigError::invalid(format!("{at}: spec"), e.to_string()))
}

fn workload(
    i: usize,
    w: WorkloadEntry,
    settings: &MeshSettings,
    bindings: &Bindings,
) -> Result<Workload, ConfigError> {
    let at = format!("workloads[{i}] ({}/{})", w.namespace, w.name);
    if w.name.is_empty() || w.node.is_empty() {
        return Err(ConfigError::invalid(at, "name and node must not be empty"));
    }
    if w.ips.is_empty() {
        return Err(ConfigError::invalid(
            at,
            "needs at least one address in ips",
        ));
    }
    let identity = Identity::new(&settings.trust_domain, &w.namespace, &w.service_account)
        .map_err(|e| ConfigError::invalid(&at, e.to_string()))?;
    let waypoint = bindings.resolve(&at, &w.namespace, w.use_waypoint.as_deref())?;
    let naming = Arc::new(Naming::new(
        w.workload_name.unwrap_or_else(|| w.name.clone()),
        &w.labels,
    ));
    Ok(Workload {
        uid: w
            .uid
            .unwrap_or_else(|| format!("{}/{}", w.namespace, w.name))
            .into(),
        name: w.name.into(),
        namespace: w.namespace.into(),
        service_account: w.service_account.into(),
        node: w.node.into(),
        ips: w.ips,
        labels: w.labels,
        naming,
        netns: w.netns,
        enrolled: w.enrolled,
        serving: Serving::of(w.ready, w.terminating),
        identity,
        waypoint,
        waypoint_conflict: Vec::new(),
        telemetry: None,
        policies: Default::default(),
    })
}

fn service(i: usize, s: ServiceEntry, bindings: &Bindings) -> Result<Service, ConfigError> {
    let at = format!("services[{i}] ({}/{})", s.namespace, s.name);
    let waypoint = bindings.resolve(&at, &s.namespace, s.use_waypoint.as_deref())?;
    if s.vips.is_empty() {
        return Err(ConfigError::invalid(
            at,
            "needs at least one address in vips",
        ));
    }
    let (mut ports, mut udp_ports) = (Vec::new(), Vec::new());
    // A set, not a scan per port: a list of thousands must not cost a square of them.
    let mut seen = std::collections::HashSet::new();
    for (j, p) in s.ports.iter().enumerate() {
        let target_port = p.target_port.unwrap_or(p.port);
        if p.port == 0 || target_port == 0 {
            return Err(ConfigError::invalid(format!("{at}: ports[{j}]"), "port 0"));
        }
        let (list, protocol): (&mut Vec<ServicePort>, _) = match p.protocol {
            PortProtocol::Tcp => (&mut ports, "TCP"),
            PortProtocol::Udp => (&mut udp_ports, "UDP"),
        };
        if !seen.insert((p.port, p.protocol)) {
            return Err(ConfigError::invalid(
                format!("{at}: ports[{j}]"),
                format!("{protocol} port {} listed twice", p.port),
            ));
        }
        list.push(ServicePort {
            port: p.port,
            target_port,
        });
    }
    Ok(Service {
        name: s.name,
        namespace: s.namespace,
        vips: s.vips,
        ports,
        udp_ports,
        selector: s.selector,
        endpoints: Vec::new(),
        waypoint,
    })
}

/// The local file as a source: the content last applied, and the watch that re-applies changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    settings: MeshSettings,
    applied: Vec<u8>,
}

impl FileSource {
    /// Reads and validates `path`; the content read is what later changes are compared against.
    pub fn load(path: &Path, settings: MeshSettings) -> Result<(Self, MeshState), ConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::Parse(format!("reading {}: {e}", path.display())))?;
        let state = parse(&String::from_utf8_lossy(&bytes), &settings).map_err(|e| match e {
            ConfigError::Parse(reason) => {
                ConfigError::Parse(format!("{}: {reason}", path.display()))
            }
            other => other,
        })?;
        let source = Self {
            path: path.to_owned(),
            settings,
            applied: bytes,
        };
        Ok((source, state))
    }

    /// Polls the file every `interval`; each changed, valid content is published to `tx`. Invalid
    /// content is logged and reported to `on_reject`, and the last good state stays published.
    pub async fn watch(
        mut self,
        interval: Duration,
        tx: watch::Sender<Arc<MeshState>>,
        on_reject: impl Fn(&ConfigError) + Send,
    ) {
        let mut refused: Option<Vec<u8>> = None;
        loop {
            tokio::time::sleep(interval).await;
            let Ok(current) = std::fs::read(&self.path) else {
                continue;
            };
            if current == self.applied || refused.as_ref() == Some(&current) {
                continue;
            }
            match parse(&String::from_utf8_lossy(&current), &self.settings) {
                Ok(state) => {
                    info!(path = %self.path.display(), summary = ?state.summary(), "applied new mesh configuration");
                    tx.send_replace(Arc::new(state));
                    self.applied = current;
                    refused = None;
                }
                Err(e) => {
                    error!(path = %self.path.display(), error = %e, "refused mesh configuration; keeping the last good one");
                    on_reject(&e);
                    refused = Some(current);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
