//! `veil check --pre`: can veil be installed in this cluster, by these credentials? Asked before
//! `helm install`, of the Kubernetes API only: the version, the permissions the chart's objects
//! need (`SelfSubjectAccessReview`, nothing is created), what is already there (an install, objects
//! an earlier one left that would make `helm install` fail, another ambient mesh), the install
//! namespace's Pod Security level, the nodes ztunnel can run on, and the network plugin.
//!
//! What the API cannot tell — the nodes' kernels, their CNI directories — is not judged here
//! (docs/cli.md says so); `veil check` after the install sees ztunnel's own answer.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use serde_json::{Value, json};

use super::api::{ReadError, Reader, decode};
use super::cluster::{CRDS, DATAPLANE_MODE};
use super::{Check, Outcome, bounded};

impl Check {
    /// The same check, told that `unasked` things (each said why) could not be read: at least a
    /// warning then, never ok.
    fn with_unasked(self, unasked: Vec<String>) -> Self {
        self.with_unjudged(
            unasked,
            "things could not be read",
            "see the details: what could not be read was not judged",
        )
    }
}

/// The oldest Kubernetes the chart installs on (charts/veil/Chart.yaml `kubeVersion`).
pub(crate) const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// The architectures veil's image is built for (`cargo xtask image`), as nodes name them.
pub(crate) const ARCHITECTURES: [&str; 1] = ["amd64"];

/// What the chart creates with its default values: (API group, resource, in the install
/// namespace). Kept to the chart's templates by a test.
pub(crate) const CREATES: [(&str, &str, bool); 11] = [
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    ("rbac.authorization.k8s.io", "roles", true),
    ("rbac.authorization.k8s.io", "rolebindings", true),
    ("", "serviceaccounts", true),
    ("", "services", true),
    ("", "configmaps", true),
    ("apps", "deployments", true),
    ("apps", "daemonsets", true),
    ("policy", "poddisruptionbudgets", true),
];

/// The cluster-wide objects an install renders, named after its namespace: left behind by an
/// earlier install (Helm keeps nothing, but a failed or manual removal may), they make
/// `helm install` fail ("exists and cannot be imported"). (ztunnel's ClusterRole and the
/// waypoints' `veil-waypoint` are rendered only with `ztunnel.apiAccess`, an upgrade setting: a
/// leftover of them does not stand in an install's way.)
fn cluster_objects(ns: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for component in ["veil-ca", "veil-controller"] {
        out.push(("clusterroles", format!("{component}-{ns}")));
        out.push(("clusterrolebindings", format!("{component}-{ns}")));
    }
    out
}

/// Network plugins by the DaemonSet that runs them (kube-system), and what veil needs of them.
const NETWORK_PLUGINS: [(&str, &str); 9] = [
    ("calico-node", "Calico"),
    ("canal", "Canal"),
    ("kube-flannel-ds", "flannel"),
    ("kindnet", "kindnet"),
    ("cilium", "Cilium"),
    ("anetd", "GKE Dataplane V2 (Cilium)"),
    ("aws-node", "Amazon VPC CNI"),
    ("weave-net", "Weave Net"),
    ("antrea-agent", "Antrea"),
];

/// Runs every preflight check against the cluster (the API server answered already).
pub(crate) async fn checks(api: &Reader, ns: &str) -> Vec<Check> {
    let mut checks = vec![kubernetes_version(api).await];
    let namespace = match api.object(&format!("/api/v1/namespaces/{ns}")).await {
        Ok(found) => Ok(found),
        Err(e) => Err(e.to_string()),
    };
    checks.push(permissions(api, ns, matches!(namespace, Ok(None))).await);
    checks.push(existing(api, ns, &namespace).await);
    checks.push(pod_security(ns, &namespace));
    checks.push(nodes(api).await);
    let daemonsets = api.list("/apis/apps/v1/daemonsets", &[]).await;
    checks.push(network_plugin(api, &daemonsets).await);
    let namespaces = api.list("/api/v1/namespaces", &[]).await;
    checks.push(other_meshes(ns, &daemonsets, &namespaces));
    checks
}

/// `GET /version`, judged against [`MIN_KUBERNETES`].
async fn kubernetes_version(api: &Reader) -> Check {
    match api.json("/version").await {
        Ok(v) => judge_version(v.get("gitVersion").and_then(Value::as_str)),
        Err(e) => judge_version(None).with_details(vec![format!("GET /version: {e}")]),
    }
}

/// The `(major, minor)` of a `gitVersion` such as `v1.33.2`, `v1.30.4-eks-a737599` or
/// `v1.31.1+k3s1`.
pub(crate) fn parse_version(git_version: &str) -> Option<(u32, u32)> {
    let rest = git_version.strip_prefix('v').unwrap_or(git_version);
    let mut parts = rest.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// The version check for the server's `gitVersion` (`None`: not readable).
pub(crate) fn judge_version(git_version: Option<&str>) -> Check {
    const NAME: &str = "kubernetes-version";
    let (major, minor) = MIN_KUBERNETES;
    match git_version.map(|v| (v, parse_version(v))) {
        Some((v, Some(found))) if found >= MIN_KUBERNETES => {
            Check::ok(NAME, format!("{v} (veil needs {major}.{minor} or newer)"))
        }
        Some((v, Some(_))) => Check::failed(
            NAME,
            format!("{v} is older than {major}.{minor}, the oldest veil's chart installs on"),
            format!("upgrade the cluster to Kubernetes {major}.{minor} or newer"),
        ),
        Some((v, None)) => Check::warning(
            NAME,
            format!("{v:?} is not a version veil can read"),
            format!("make sure the cluster runs Kubernetes {major}.{minor} or newer"),
        ),
        None => Check::warning(
            NAME,
            "the API server did not say its version",
            format!("make sure the cluster runs Kubernetes {major}.{minor} or newer"),
        ),
    }
}

/// What one `SelfSubjectAccessReview` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    Allowed,
    Denied(String),
    /// The review itself failed.
    Unknown(String),
}

/// Asks the API server whether these credentials may `create` each of [`CREATES`] (and the
/// namespace, when `create_namespace`).
async fn permissions(api: &Reader, ns: &str, create_namespace: bool) -> Check {
    let mut asked = Vec::new();
    if create_namespace {
        asked.push(("", "namespaces", false));
    }
    asked.extend(CREATES);
    let mut answers = Vec::new();
    for (group, resource, namespaced) in asked {
        let mut attributes = json!({"verb": "create", "group": group, "resource": resource});
        if namespaced {
            attributes["namespace"] = json!(ns);
        }
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        });
        let access = match api
            .post(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                &review,
            )
            .await
        {
            Ok(answer) => access_of(&answer),
            Err(e) => Access::Unknown(e.to_string()),
        };
        let what = match (group, namespaced) {
            ("", true) => format!("{resource} in {ns}"),
            ("", false) => resource.to_owned(),
            (g, true) => format!("{resource}.{g} in {ns}"),
            (g, false) => format!("{resource}.{g}"),
        };
        answers.push((what, access));
    }
    judge_permissions(&answers)
}

/// What a `SelfSubjectAccessReview` answer says.
pub(crate) fn access_of(answer: &Value) -> Access {
    let status = answer.get("status");
    match status
        .and_then(|s| s.get("allowed"))
        .and_then(Value::as_bool)
    {
        Some(true) => Access::Allowed,
        Some(false) => {
            let field = |f: &str| {
                status
                    .and_then(|s| s.get(f))
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
            };
            let why = field("evaluationError")
                .or_else(|| field("reason"))
                .unwrap_or("no rule allows it");
            Access::Denied(why.to_owned())
        }
        None => Access::Unknown("the review has no status.allowed".into()),
    }
}

/// The permissions check from each object's answer.
pub(crate) fn judge_permissions(answers: &[(String, Access)]) -> Check {
    const NAME: &str = "install-permissions";
    let mut denied = Vec::new();
    let mut unknown = Vec::new();
    for (what, access) in answers {
        match access {
            Access::Allowed => {}
            Access::Denied(why) => denied.push(format!("may not create {what}: {why}")),
            Access::Unknown(why) => unknown.push(format!("could not ask about {what}: {why}")),
        }
    }
    let total = answers.len();
    if !denied.is_empty() {
        let n = denied.len();
        denied.extend(unknown);
        return Check::failed(
            NAME,
            format!("{n} of the {total} kinds of object the chart creates may not be created by you"),
            "install as a cluster administrator (the chart creates CRDs, ClusterRoles and their bindings); `kubectl auth can-i create <resource>` shows each",
        )
        .with_details(bounded(denied, 20));
    }
    if !unknown.is_empty() {
        return Check::warning(
            NAME,
            format!("{} of {total} could not be asked", unknown.len()),
            "`kubectl auth can-i create <resource>` answers the same question",
        )
        .with_details(bounded(unknown, 20));
    }
    Check::ok(
        NAME,
        format!("you may create all {total} kinds of object the chart creates"),
    )
}

/// What is already there: an install in `ns`, veil's CRDs, cluster-wide objects of an earlier
/// install.
async fn existing(api: &Reader, ns: &str, namespace: &Result<Option<Value>, String>) -> Check {
    let mut components = Vec::new();
    let mut unreadable = Vec::new();
    if let Err(e) = namespace {
        unreadable.push(format!("namespace {ns}: {e}"));
    }
    if matches!(namespace, Ok(Some(_))) {
        for (kind, path) in [
            (
                "daemonset/ztunnel",
                "apis/apps/v1/namespaces/{ns}/daemonsets/ztunnel",
            ),
            (
                "deployment/veil-ca",
                "apis/apps/v1/namespaces/{ns}/deployments/veil-ca",
            ),
            (
                "deployment/veil-controller",
                "apis/apps/v1/namespaces/{ns}/deployments/veil-controller",
            ),
        ] {
            match api.object(&format!("/{}", path.replace("{ns}", ns))).await {
                Ok(Some(_)) => components.push(kind.to_owned()),
                Ok(None) => {}
                Err(e) => unreadable.push(format!("{kind}: {e}")),
            }
        }
    }
    let mut leftovers = Vec::new();
    for (resource, name) in cluster_objects(ns) {
        let path = format!("/apis/rbac.authorization.k8s.io/v1/{resource}/{name}");
        match api.object(&path).await {
            Ok(Some(_)) => leftovers.push(format!("{resource}/{name}")),
            Ok(None) => {}
            Err(e) => unreadable.push(format!("{resource}/{name}: {e}")),
        }
    }
    let mut crds = Vec::new();
    for crd in CRDS {
        let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}");
        match api.object(&path).await {
            Ok(Some(_)) => crds.push(crd.to_owned()),
            Ok(None) => {}
            Err(e) => unreadable.push(format!("{crd}: {e}")),
        }
    }
    judge_existing(ns, &components, &leftovers, &crds, unreadable)
}

/// The check of what is already there.
pub(crate) fn judge_existing(
    ns: &str,
    components: &[String],
    leftovers: &[String],
    crds: &[String],
    unreadable: Vec<String>,
) -> Check {
    const NAME: &str = "existing-install";
    if !components.is_empty() {
        return Check::failed(
            NAME,
            format!(
                "veil is already installed in {ns}: {}",
                components.join(", ")
            ),
            format!("`veil check -n {ns}` judges that install; `helm upgrade` changes it"),
        )
        .with_unasked(unreadable);
    }
    if !leftovers.is_empty() {
        return Check::failed(
            NAME,
            format!(
                "an earlier install in {ns} left cluster-wide objects behind ({}): `helm install` would refuse to take them over",
                leftovers.len()
            ),
            format!(
                "delete them (`kubectl delete {}`), or install into another namespace",
                leftovers.join(" ")
            ),
        )
        .with_details(leftovers.to_vec())
        .with_unasked(unreadable);
    }
    if !crds.is_empty() {
        return Check::warning(
            NAME,
            format!(
                "veil's CRDs are already installed ({} of {}; Helm keeps CRDs when a release is removed)",
                crds.len(),
                CRDS.len()
            ),
            "Helm neither checks nor updates CRDs that exist: if they are from an older veil, `kubectl apply -f charts/veil/crds/` first",
        )
        .with_details(crds.to_vec())
        .with_unasked(unreadable);
    }
    Check::ok(
        NAME,
        format!("no install in {ns}, no objects of an earlier one"),
    )
    .with_unasked(unreadable)
}

/// The Pod Security level of the install namespace: ztunnel needs `privileged` (it enters pods'
/// network namespaces with NET_ADMIN and writes the node's CNI configuration).
pub(crate) fn pod_security(ns: &str, namespace: &Result<Option<Value>, String>) -> Check {
    const NAME: &str = "pod-security";
    const LABEL: &str = "pod-security.kubernetes.io/enforce";
    let object = match namespace {
        Err(e) => {
            return Check::warning(
                NAME,
                format!("namespace {ns} could not be read: {e}"),
                format!("its `{LABEL}` label must be absent or `privileged`"),
            );
        }
        Ok(None) => {
            return Check::ok(
                NAME,
                format!(
                    "namespace {ns} does not exist yet (`helm install --create-namespace` creates it unlabelled)"
                ),
            );
        }
        Ok(Some(object)) => object,
    };
    let level = match decode::<Namespace>("Namespace", object) {
        Ok(n) => n.metadata.labels.and_then(|mut l| l.remove(LABEL)),
        Err(e) => {
            return Check::warning(
                NAME,
                e,
                format!("its `{LABEL}` label must be absent or `privileged`"),
            );
        }
    };
    match level.as_deref() {
        None | Some("privileged") => Check::ok(
            NAME,
            format!(
                "namespace {ns} admits privileged pods ({LABEL}: {})",
                level.as_deref().unwrap_or("not set")
            ),
        ),
        Some(other) => Check::failed(
            NAME,
            format!(
                "namespace {ns} enforces Pod Security level {other:?}: ztunnel (NET_ADMIN, host paths) would be refused"
            ),
            format!("kubectl label namespace {ns} {LABEL}=privileged --overwrite"),
        ),
    }
}

/// The nodes: which of them ztunnel can serve.
async fn nodes(api: &Reader) -> Check {
    match api.list("/api/v1/nodes", &[]).await {
        Ok(items) => judge_nodes(&items),
        Err(e) => Check::warning(
            "nodes",
            format!("nodes could not be listed: {e}"),
            "reading nodes needs `list` on nodes; veil needs Linux nodes of an architecture its image is built for (amd64)",
        ),
    }
}

/// The nodes check for the Node objects `items`.
pub(crate) fn judge_nodes(items: &[Value]) -> Check {
    const NAME: &str = "nodes";
    let mut served = 0;
    let mut unserved = Vec::new();
    let mut notes = Vec::new();
    let mut unreadable = Vec::new();
    for item in items {
        let node = match decode::<Node>("Node", item) {
            Ok(n) => n,
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        let os = info
            .map(|i| i.operating_system.clone())
            .or_else(|| labels.get("kubernetes.io/os").cloned())
            .unwrap_or_default();
        let arch = info
            .map(|i| i.architecture.clone())
            .or_else(|| labels.get("kubernetes.io/arch").cloned())
            .unwrap_or_default();
        if os != "linux" {
            unserved.push(format!(
                "{name}: {os:?} — ztunnel runs on Linux nodes only (its DaemonSet skips this one)"
            ));
            continue;
        }
        if !ARCHITECTURES.contains(&arch.as_str()) {
            unserved.push(format!(
                "{name}: {arch:?} — veil's image is built for {} only: ztunnel cannot start there, and without it the node's pods start outside the mesh",
                ARCHITECTURES.join(", ")
            ));
            continue;
        }
        served += 1;
        if let Some(runtime) = info.map(|i| i.container_runtime_version.as_str()) {
            let kind = runtime.split("://").next().unwrap_or_default();
            if !matches!(kind, "containerd" | "cri-o") {
                notes.push(format!(
                    "{name}: runtime {runtime:?} — veil is tested with containerd and CRI-O, which pin pods' network namespaces where ztunnel finds them"
                ));
            }
        }
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready {
            notes.push(format!("{name}: not Ready"));
        }
    }
    let total = items.len();
    let mut details = unserved.clone();
    details.extend(notes.iter().cloned());
    let (result, hint) = if served == 0 {
        (
            Outcome::Failed,
            "veil needs Linux nodes of an architecture its image is built for (amd64)",
        )
    } else if !unserved.is_empty() {
        (
            Outcome::Warning,
            "keep enrolled namespaces' pods off the nodes ztunnel cannot serve (a nodeSelector or taint): their pods would not be in the mesh",
        )
    } else if !notes.is_empty() {
        (
            Outcome::Warning,
            "see the details (docs/install.md, Requirements)",
        )
    } else {
        (Outcome::Ok, "")
    };
    Check::judged(
        NAME,
        result,
        format!("ztunnel can serve {served} of {total} nodes"),
        hint.to_owned(),
    )
    .with_details(bounded(details, 20))
    .with_unasked(unreadable)
}

/// The network plugin, known by its DaemonSet: it must let other plugins chain after it.
async fn network_plugin(api: &Reader, daemonsets: &Result<Vec<Value>, ReadError>) -> Check {
    let items = match daemonsets {
        Ok(items) => items,
        Err(e) => {
            return Check::warning(
                "network-plugin",
                format!("DaemonSets could not be listed: {e}"),
                "veil chains its CNI plugin after the cluster's: see docs/install.md, Requirements",
            );
        }
    };
    let found = plugins(items);
    let cilium = if found
        .iter()
        .any(|(ds, _)| *ds == "cilium" || *ds == "anetd")
    {
        match api
            .object("/api/v1/namespaces/kube-system/configmaps/cilium-config")
            .await
        {
            Ok(Some(cm)) => match decode::<ConfigMap>("ConfigMap", &cm) {
                Ok(c) => c.data.and_then(|mut d| d.remove("cni-exclusive")),
                Err(e) => return unread_cilium(&found, &e),
            },
            Ok(None) => None,
            Err(e) => return unread_cilium(&found, &e.to_string()),
        }
    } else {
        None
    };
    judge_network_plugin(&found, cilium.as_deref())
}

/// Cilium runs, but whether it is exclusive could not be read: not judged, never ok.
fn unread_cilium(found: &[(&'static str, &'static str)], why: &str) -> Check {
    let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
    Check::warning(
        "network-plugin",
        format!(
            "{}: Cilium's cni-exclusive could not be read from kube-system/cilium-config: {why}",
            names.join(", ")
        ),
        "make sure Cilium runs with `cni.exclusive=false`: otherwise it deletes veil's CNI configuration",
    )
}

/// The known network plugins among the DaemonSets `items`: (DaemonSet, plugin).
pub(crate) fn plugins(items: &[Value]) -> Vec<(&'static str, &'static str)> {
    let mut found = Vec::new();
    for item in items {
        let Ok(ds) = decode::<DaemonSet>("DaemonSet", item) else {
            continue;
        };
        let name = ds.metadata.name.unwrap_or_default();
        if let Some(&(d, p)) = NETWORK_PLUGINS.iter().find(|(d, _)| *d == name) {
            found.push((d, p));
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// The network plugin check: `found` plugins, and Cilium's `cni-exclusive` when it runs.
pub(crate) fn judge_network_plugin(
    found: &[(&'static str, &'static str)],
    cilium_exclusive: Option<&str>,
) -> Check {
    const NAME: &str = "network-plugin";
    if found.is_empty() {
        return Check::warning(
            NAME,
            "no network plugin veil knows was found among the DaemonSets",
            "veil chains its CNI plugin into the first configuration in the node's CNI directory: the cluster's plugin must let others chain after it (docs/install.md, Requirements)",
        );
    }
    let names: Vec<&str> = found.iter().map(|(_, p)| *p).collect();
    let is_cilium = found.iter().any(|(d, _)| *d == "cilium" || *d == "anetd");
    if is_cilium && cilium_exclusive != Some("false") {
        return Check::failed(
            NAME,
            format!(
                "{}: Cilium's cni-exclusive is {} — it removes other plugins' configuration, veil's included",
                names.join(", "),
                cilium_exclusive.map_or("not set (true)".to_owned(), |v| format!("{v:?}"))
            ),
            "set Cilium's `cni.exclusive=false` (Helm value), or `cni-exclusive: \"false\"` in kube-system/cilium-config",
        );
    }
    Check::ok(
        NAME,
        format!("{} (lets veil's plugin chain after it)", names.join(", ")),
    )
}

/// Another ambient mesh or sidecars: Istio's ztunnel or CNI, namespaces in Istio's mesh or
/// Linkerd's.
pub(crate) fn other_meshes(
    ns: &str,
    daemonsets: &Result<Vec<Value>, ReadError>,
    namespaces: &Result<Vec<Value>, ReadError>,
) -> Check {
    const NAME: &str = "other-meshes";
    let mut found = Vec::new();
    let mut conflicts = Vec::new();
    let mut unreadable = Vec::new();
    match daemonsets {
        Ok(items) => {
            for item in items {
                let ds = match decode::<DaemonSet>("DaemonSet", item) {
                    Ok(ds) => ds,
                    Err(e) => {
                        unreadable.push(e);
                        continue;
                    }
                };
                let name = ds.metadata.name.unwrap_or_default();
                let namespace = ds.metadata.namespace.unwrap_or_default();
                if namespace != ns && matches!(name.as_str(), "ztunnel" | "istio-cni-node") {
                    found.push(format!(
                        "daemonset {namespace}/{name}: Istio's ambient mode (or its CNI)"
                    ));
                }
            }
        }
        Err(e) => unreadable.push(format!("DaemonSets: {e}")),
    }
    match namespaces {
        Ok(items) => {
            for item in items {
                let n = match decode::<Namespace>("Namespace", item) {
                    Ok(n) => n,
                    Err(e) => {
                        unreadable.push(e);
                        continue;
                    }
                };
                let name = n.metadata.name.unwrap_or_default();
                let labels = n.metadata.labels.unwrap_or_default();
                let annotations = n.metadata.annotations.unwrap_or_default();
                let label = |k: &str| labels.get(k).map(String::as_str);
                let mut theirs = Vec::new();
                if label("istio.io/dataplane-mode") == Some("ambient") {
                    theirs.push("Istio ambient");
                }
                if label("istio-injection") == Some("enabled")
                    || labels.contains_key("istio.io/rev")
                {
                    theirs.push("Istio sidecars");
                }
                if annotations.get("linkerd.io/inject").map(String::as_str) == Some("enabled") {
                    theirs.push("Linkerd");
                }
                if theirs.is_empty() {
                    continue;
                }
                let line = format!("namespace {name}: {}", theirs.join(", "));
                if label(DATAPLANE_MODE) == Some("ambient") {
                    conflicts.push(format!("{line} and veil ({DATAPLANE_MODE}=ambient)"));
                } else {
                    found.push(line);
                }
            }
        }
        Err(e) => unreadable.push(format!("namespaces: {e}")),
    }
    if !conflicts.is_empty() {
        let n = conflicts.len();
        conflicts.extend(found);
        return Check::failed(
            NAME,
            format!("namespaces labelled for veil and for another mesh: {n}"),
            "enrol each namespace in one mesh: two meshes capturing one pod break its traffic",
        )
        .with_details(bounded(conflicts, 20))
        .with_unasked(unreadable);
    }
    if !found.is_empty() {
        return Check::warning(
            NAME,
            "another mesh is present: see the details",
            format!("veil can run beside it, but enrol each namespace in one mesh only (`{DATAPLANE_MODE}=ambient` on namespaces the other does not serve)"),
        )
        .with_details(bounded(found, 20))
        .with_unasked(unreadable);
    }
    Check::ok(NAME, "no Istio or Linkerd found").with_unasked(unreadable)
}
