//! The cluster around veil: whether the API server answers, whether veil's namespace and custom
//! resource definitions are there, and which namespaces are in the mesh.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::api::{Reader, decode};
use super::{Check, Outcome, bounded};

/// The check of the API server.
pub(crate) const API_SERVER: &str = "kubernetes-api";

/// The custom resource definitions the chart installs (charts/veil/crds/), with the version veil
/// reads.
pub(crate) const CRDS: [&str; 3] = [
    "authorizationpolicies.security.veil.dev",
    "peerauthentications.security.veil.dev",
    "telemetries.security.veil.dev",
];
/// The version of them veil serves and reads.
pub(crate) const CRD_VERSION: &str = "v1";

/// The label that puts a namespace in the mesh.
pub(crate) const DATAPLANE_MODE: &str = "veil.dev/dataplane-mode";

const UNREACHABLE_HINT: &str = "check the kubeconfig (KUBECONFIG, current context: `kubectl config current-context`), the API server's address and your credentials; `kubectl version` should answer";

/// The failed API check for `reason`: the cluster could not be asked.
pub(crate) fn unreachable(reason: &str) -> Check {
    Check::failed(
        API_SERVER,
        format!("the Kubernetes API could not be asked: {reason}"),
        UNREACHABLE_HINT,
    )
}

/// Whether the API server answers (`GET /version`, which every client may read). Any HTTP answer but
/// 401 counts as an answer: 401 means these credentials are refused everywhere.
pub(crate) async fn api_server(api: &Reader) -> Check {
    let answer = match api.raw("/version").await {
        Ok(answer) => answer,
        Err(e) => return unreachable(&e.to_string()),
    };
    if answer.status == http::StatusCode::UNAUTHORIZED {
        return unreachable("the API server refused these credentials (401 Unauthorized)");
    }
    let version = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| {
            v.get("gitVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    match version {
        Some(v) if answer.status.is_success() => {
            Check::ok(API_SERVER, format!("reachable, Kubernetes {v}"))
        }
        _ => Check::ok(
            API_SERVER,
            format!("reachable (version not readable: HTTP {})", answer.status),
        ),
    }
}

/// Whether `namespace` exists; `None` when it does (or when it may not be read).
pub(crate) async fn namespace(api: &Reader, namespace: &str) -> Option<Check> {
    match api.object(&format!("/api/v1/namespaces/{namespace}")).await {
        Ok(Some(_)) => None,
        Ok(None) => Some(Check::failed(
            "namespace",
            format!("namespace {namespace} does not exist: veil is not installed there"),
            "pass --namespace the namespace veil is installed in, or install it: helm install veil charts/veil -n veil-system --create-namespace",
        )),
        // Reading namespaces may not be allowed; the checks in it say what they can read.
        Err(e) if e.forbidden() => None,
        Err(e) => Some(Check::failed(
            "namespace",
            format!("namespace {namespace} could not be read: {e}"),
            "see the error; `kubectl get namespace` should answer",
        )),
    }
}

/// Whether veil's CRDs are installed, established and serve the version veil reads.
pub(crate) async fn crds(api: &Reader) -> Check {
    let mut read = Vec::new();
    for name in CRDS {
        let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
        let found = match api.object(&path).await {
            Ok(Some(v)) => {
                decode::<CustomResourceDefinition>("CustomResourceDefinition", &v).map(Some)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{name}: {e}")),
        };
        read.push((name, found));
    }
    judge_crds(&read)
}

/// The verdict on veil's CRDs: each read (`Some`), missing (`None`) or unreadable (the reason).
pub(crate) fn judge_crds(
    read: &[(&str, Result<Option<CustomResourceDefinition>, String>)],
) -> Check {
    let mut problems = Vec::new();
    let mut result = Outcome::Ok;
    for (name, found) in read {
        let problem = match found {
            Err(e) => Some(e.clone()),
            Ok(None) => Some(format!("{name} is not installed")),
            Ok(Some(crd)) => crd_problem(crd).map(|p| format!("{name}: {p}")),
        };
        if let Some(p) = problem {
            result = Outcome::Failed;
            problems.push(p);
        }
    }
    if problems.is_empty() {
        return Check::ok("crds", format!("{} installed and established", read.len()));
    }
    Check::judged(
        "crds",
        result,
        format!("{} of {} not usable", problems.len(), read.len()),
        "install the chart's CRDs: kubectl apply -f charts/veil/crds/ (helm installs them on first install only, never on upgrade)".into(),
    )
    .with_details(problems)
}

/// What is wrong with an installed CRD, if anything.
fn crd_problem(crd: &CustomResourceDefinition) -> Option<String> {
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    let established = conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Established");
    match established {
        Some(c) if c.status == "True" => {}
        Some(c) => {
            return Some(
                format!(
                    "not established: {} {}",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                )
                .trim_end()
                .to_owned(),
            );
        }
        None => return Some("not established yet".into()),
    }
    let served = crd
        .spec
        .versions
        .iter()
        .any(|v| v.name == CRD_VERSION && v.served);
    (!served).then(|| format!("does not serve version {CRD_VERSION}"))
}

/// The namespaces in the mesh (label `veil.dev/dataplane-mode=ambient`), for information.
pub(crate) async fn enrolled_namespaces(api: &Reader) -> Check {
    let selector = format!("{DATAPLANE_MODE}=ambient");
    match api
        .list("/api/v1/namespaces", &[("labelSelector", &selector)])
        .await
    {
        Ok(items) => judge_namespaces(&items),
        Err(e) => Check::warning(
            "enrolled-namespaces",
            format!("namespaces could not be listed: {e}"),
            "reading namespaces needs `list` on namespaces",
        ),
    }
}

/// The enrolled namespaces among `items` (checked again here: the label decides, whatever the
/// server did with the selector).
pub(crate) fn judge_namespaces(items: &[Value]) -> Check {
    let mut enrolled = Vec::new();
    let mut unreadable = Vec::new();
    for item in items {
        match decode::<Namespace>("Namespace", item) {
            Ok(ns) => {
                let ambient = ns
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(DATAPLANE_MODE))
                    .is_some_and(|v| v == "ambient");
                if ambient && let Some(name) = ns.metadata.name {
                    let terminating = ns.metadata.deletion_timestamp.is_some();
                    enrolled.push(if terminating {
                        format!("{name} (terminating)")
                    } else {
                        name
                    });
                }
            }
            Err(e) => unreadable.push(e),
        }
    }
    enrolled.sort();
    if !unreadable.is_empty() {
        return Check::warning(
            "enrolled-namespaces",
            format!(
                "{} enrolled; {} namespaces could not be read",
                enrolled.len(),
                unreadable.len()
            ),
            "see the details",
        )
        .with_details(bounded(unreadable, 10));
    }
    if enrolled.is_empty() {
        return Check::ok(
            "enrolled-namespaces",
            format!("none yet (kubectl label namespace <namespace> {DATAPLANE_MODE}=ambient)"),
        );
    }
    Check::ok(
        "enrolled-namespaces",
        format!("{}: {}", enrolled.len(), enrolled.join(", ")),
    )
}
