//! What a test mesh is made of (pods, services, waypoints, policies), and the mesh configuration
//! file ztunnels, waypoints and the CA read for it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::TRUST_DOMAIN;
use crate::cluster::Cluster;

/// A pod to create.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Pod name (also the app's name).
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Node.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// In the mesh (captured) or not.
    pub enrolled: bool,
}

impl PodSpec {
    /// An enrolled pod whose service account and `app` label are its name.
    pub fn new(name: &str, namespace: &str, node: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: name.to_owned(),
            node: node.to_owned(),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            enrolled: true,
        }
    }

    /// The same pod, outside the mesh.
    pub fn not_enrolled(mut self) -> Self {
        self.enrolled = false;
        self
    }

    /// Its SPIFFE identity.
    pub fn identity(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// The demo's L7 policy: the account service may GET `/api/*` of the user profile service (through
/// its waypoint), nothing else may.
pub const ACCOUNT_READS: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: account-reads, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: user-profile-service}]
      rules:
        - from: [{source: {principals: [cluster.local/ns/production/sa/account-service]}}]
          to: [{operation: {methods: [GET], paths: [/api/*]}}]
"#;

/// A service in front of the pods whose `app` label is `selects`.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Virtual address.
    pub vip: String,
    /// `app` label selected.
    pub selects: String,
    /// (service port, target port), TCP.
    pub ports: Vec<(u16, u16)>,
    /// (service port, target port), UDP.
    pub udp_ports: Vec<(u16, u16)>,
}

impl ServiceSpec {
    /// Service `namespace/name` at `vip`, in front of the pods whose `app` label is its name.
    pub fn new(namespace: &str, name: &str, vip: &str, ports: &[(u16, u16)]) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            vip: vip.into(),
            selects: name.into(),
            ports: ports.to_vec(),
            udp_ports: Vec::new(),
        }
    }

    /// This service with UDP ports `ports` (service port, target port) too.
    pub fn with_udp(mut self, ports: &[(u16, u16)]) -> Self {
        self.udp_ports = ports.to_vec();
        self
    }

    /// The demo's two services on node-b: `user-data/user-profile-service` (80 → 8080, at
    /// `profile_vip`) and `finance/ledger` (9090, at `ledger_vip`).
    pub fn demo(profile_vip: &str, ledger_vip: &str) -> Vec<Self> {
        vec![
            Self::new(
                "user-data",
                "user-profile-service",
                profile_vip,
                &[(80, 8080)],
            ),
            Self::new("finance", "ledger", ledger_vip, &[(9090, 9090)]),
        ]
    }
}

/// A waypoint to run (in a pod of its own, outside capture, like a waypoint Deployment).
#[derive(Clone, Debug)]
pub struct WaypointSpec {
    /// Its name (and its pod's).
    pub name: String,
    /// Its namespace; the namespace's traffic uses it.
    pub namespace: String,
    /// The node its pod runs on.
    pub node: String,
    /// Extra flags.
    pub args: Vec<String>,
}

impl WaypointSpec {
    /// The demo's waypoint: `user-data/waypoint` on node-b, with `args`.
    pub fn demo(args: Vec<String>) -> Self {
        Self {
            name: "waypoint".into(),
            namespace: "user-data".into(),
            node: "node-b".into(),
            args,
        }
    }

    /// The identity of its service account (`waypoint`).
    pub fn identity(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/waypoint", self.namespace)
    }
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct MeshSpec {
    /// Waypoints; each namespace listed here uses its waypoint.
    pub waypoints: Vec<WaypointSpec>,
    /// Node names.
    pub nodes: Vec<String>,
    /// Pods.
    pub pods: Vec<PodSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// `policies:` entries (a YAML sequence, without the key).
    pub policies: String,
    /// Longest certificate lifetime the CA grants.
    pub max_cert_ttl: Option<String>,
    /// Nodes that get no ztunnel (their pods are on their own).
    pub without_ztunnel: Vec<String>,
    /// Extra CA tokens: (token, identity), for workloads that ask for their own certificate.
    pub extra_tokens: Vec<(String, String)>,
    /// Enrolled workloads whose network namespace does not exist (capture must fail loudly).
    pub ghost_pods: Vec<PodSpec>,
    /// The controller watches the Kubernetes API (a fake API server serving the spec as API
    /// objects) instead of reading the mesh file; ztunnels subscribe to it, serve the CNI plugin,
    /// and find pods' network namespaces by scanning (the pods' entries carry no path). The CA
    /// keeps reading the mesh file.
    pub kubernetes: bool,
    /// Kubernetes mode: namespaces labelled ambient besides those with an enrolled pod.
    pub ambient_namespaces: Vec<String>,
    /// Extra flags for every ztunnel (e.g. lower limits).
    pub ztunnel_args: Vec<String>,
    /// Extra environment of every ztunnel (`VEIL_…` settings).
    pub ztunnel_env: Vec<(String, String)>,
    /// A command every ztunnel runs under (a profiler: `valgrind --tool=callgrind …`), its
    /// binary and arguments after it. Empty: ztunnel runs on its own.
    pub ztunnel_wrapper: Vec<String>,
    /// The ztunnel binary to run instead of the workspace's (`bin("veil-ztunnel")`): another
    /// build of it, e.g. the static release build the image ships.
    pub ztunnel_binary: Option<std::path::PathBuf>,
    /// Local mode: ztunnels receive the mesh over xDS from a `veil-controller` that reads the mesh
    /// file, as in production, and find pods' network namespaces by scanning; `false`: they read
    /// the file themselves. `None`: yes, unless `VEIL_E2E_THROUGH_CONTROLLER=0`. Kubernetes mode
    /// always has a controller (ztunnel does not watch the API itself).
    pub through_controller: Option<bool>,
    /// Every host has an IPv6 address too (unique local, `fd10::/16`), and the pods' workloads
    /// list both (local mode only: the Kubernetes mode's pods keep one address).
    pub dual_stack: bool,
}

impl MeshSpec {
    /// Whether the ztunnels of this mesh subscribe to a controller.
    pub fn uses_controller(&self) -> bool {
        self.kubernetes
            || self.through_controller.unwrap_or_else(|| {
                std::env::var("VEIL_E2E_THROUGH_CONTROLLER").map_or(true, |v| v != "0")
            })
    }
}

/// The mesh configuration for `spec` on `cluster`, with `policies`.
pub(super) fn render(spec: &MeshSpec, cluster: &Cluster, policies: &str) -> String {
    let mut out = String::from("workloads:\n");
    for pod in &spec.pods {
        let p = cluster.pod(&pod.name);
        let labels: Vec<String> = pod
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "  - {{name: {}, namespace: {}, serviceAccount: {}, node: {}, ips: [{}{}], netns: {}, enrolled: {}, labels: {{{}}}}}",
            pod.name,
            pod.namespace,
            pod.service_account,
            pod.node,
            p.ip,
            p.ip6.map(|ip6| format!(", '{ip6}'")).unwrap_or_default(),
            p.netns_path(),
            pod.enrolled,
            labels.join(", ")
        );
    }
    for (i, ghost) in spec.ghost_pods.iter().enumerate() {
        let node = cluster.node(&ghost.node);
        let _ = writeln!(
            out,
            "  - {{name: {}, namespace: {}, serviceAccount: {}, node: {}, ips: [10.99.{}.{}], netns: /var/run/netns/{}-missing-{}}}",
            ghost.name,
            ghost.namespace,
            ghost.service_account,
            ghost.node,
            node.ip.octets()[3],
            10 + i,
            cluster.id,
            ghost.name
        );
    }
    out.push_str("waypoints:\n");
    for w in &spec.waypoints {
        let _ = writeln!(
            out,
            "  - {{name: {}, namespace: {}, serviceAccount: waypoint, ips: [{}]}}",
            w.name,
            w.namespace,
            cluster.pod(&w.name).ip
        );
    }
    out.push_str("namespaces:\n");
    for w in &spec.waypoints {
        let _ = writeln!(
            out,
            "  - {{name: {}, useWaypoint: {}}}",
            w.namespace, w.name
        );
    }
    out.push_str("services:\n");
    for s in &spec.services {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|(port, target)| format!("{{port: {port}, targetPort: {target}}}"))
            .chain(s.udp_ports.iter().map(|(port, target)| {
                format!("{{port: {port}, targetPort: {target}, protocol: UDP}}")
            }))
            .collect();
        let _ = writeln!(
            out,
            "  - {{name: {}, namespace: {}, vips: [{}], ports: [{}], selector: {{app: {}}}}}",
            s.name,
            s.namespace,
            s.vip,
            ports.join(", "),
            s.selects
        );
    }
    out.push_str("policies:\n");
    out.push_str(policies);
    if !policies.ends_with('\n') {
        out.push('\n');
    }
    out
}
