//! veil's Deployments — the CA and the controller — and their Services: are replicas available and
//! up to date, and does each Service have ready endpoints for clients to reach?

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::api::{Reader, decode, key_of};
use super::{Check, Outcome, bounded};

/// One of veil's Deployments with its Service, as the chart names them (charts/veil/templates).
#[derive(Debug)]
pub(crate) struct Component {
    /// The name of its checks.
    pub(crate) check: &'static str,
    /// Its Deployment and its Service.
    pub(crate) name: &'static str,
    /// The Service port its clients use.
    pub(crate) port: &'static str,
    /// What depends on it, for messages.
    pub(crate) role: &'static str,
}

/// The certificate authority.
pub(crate) const CA: Component = Component {
    check: "ca",
    name: "veil-ca",
    port: "grpc-ca",
    role: "ztunnels cannot get or renew workload certificates",
};

/// The control plane.
pub(crate) const CONTROLLER: Component = Component {
    check: "controller",
    name: "veil-controller",
    port: "grpc-xds",
    role: "ztunnels keep the last mesh they received and get no changes; policy status is not written",
};

/// A Deployment's check, and whether the Deployment exists.
#[derive(Debug)]
pub(crate) struct Deployed {
    pub(crate) check: Check,
    pub(crate) installed: bool,
}

/// Reads and judges `component`'s Deployment in `ns`.
pub(crate) async fn deployment(api: &Reader, ns: &str, component: &Component) -> Deployed {
    let path = format!(
        "/apis/apps/v1/namespaces/{ns}/deployments/{}",
        component.name
    );
    let describe = format!(
        "kubectl -n {ns} describe deployment/{0}; kubectl -n {ns} logs deployment/{0}",
        component.name
    );
    match api.object(&path).await {
        Ok(Some(v)) => {
            let check = match decode::<Deployment>("Deployment", &v) {
                Ok(d) => judge_deployment(component, &d, &describe),
                Err(e) => Check::failed(component.check, e, describe),
            };
            Deployed {
                check,
                installed: true,
            }
        }
        Ok(None) => Deployed {
            check: Check::failed(
                component.check,
                format!("Deployment {ns}/{} not found", component.name),
                format!("install or repair veil: helm upgrade --install veil charts/veil -n {ns}"),
            ),
            installed: false,
        },
        Err(e) => Deployed {
            check: Check::failed(
                component.check,
                format!("Deployment {ns}/{} could not be read: {e}", component.name),
                "see the error; `kubectl get deployment` in the namespace should answer",
            ),
            installed: true,
        },
    }
}

/// The verdict on a Deployment: failed with no replica available (or a rollout past its deadline),
/// a warning while some replicas are unavailable or not yet updated.
pub(crate) fn judge_deployment(component: &Component, d: &Deployment, hint: &str) -> Check {
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let stuck = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing" && c.status == "False");
    let counts =
        format!("{available} of {wanted} replicas available, {ready} ready, {updated} up to date");
    let name = component.check;
    if wanted == 0 {
        return Check::failed(
            name,
            format!("scaled to 0 replicas: {}", component.role),
            hint,
        );
    }
    if available == 0 {
        return Check::failed(
            name,
            format!("no replica available ({counts}): {}", component.role),
            hint,
        );
    }
    if let Some(c) = stuck {
        let why = c
            .message
            .as_deref()
            .or(c.reason.as_deref())
            .unwrap_or("no reason given");
        return Check::failed(
            name,
            format!("rollout stopped progressing: {why} ({counts})"),
            hint,
        );
    }
    let observed = status.observed_generation.unwrap_or(0);
    let generation = d.metadata.generation.unwrap_or(0);
    if available < wanted || ready < wanted || updated < wanted || observed < generation {
        let seen = if observed < generation {
            "; the latest change is not rolled out yet"
        } else {
            ""
        };
        return Check::warning(name, format!("{counts}{seen}"), hint);
    }
    Check::ok(name, counts)
}

/// Reads and judges the endpoints of `component`'s Service.
pub(crate) async fn endpoints(api: &Reader, ns: &str, component: &Component) -> Check {
    let check = format!("{}-service", component.check);
    let selector = format!("kubernetes.io/service-name={}", component.name);
    let path = format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices");
    match api.list(&path, &[("labelSelector", &selector)]).await {
        Ok(items) => judge_endpoints(component, &items),
        Err(e) => Check::failed(
            &check,
            format!(
                "the endpoints of Service {} could not be read: {e}",
                component.name
            ),
            "reading them needs `list` on endpointslices (discovery.k8s.io)",
        ),
    }
}

/// The verdict on a Service's EndpointSlices: failed with no ready endpoint serving its port.
pub(crate) fn judge_endpoints(component: &Component, items: &[Value]) -> Check {
    let check = format!("{}-service", component.check);
    let mut ready = Vec::new();
    let mut not_ready = 0;
    let mut unreadable = Vec::new();
    for item in items {
        // The server filtered by this label; a slice of another Service is not counted.
        let owner = item.pointer("/metadata/labels/kubernetes.io~1service-name");
        if owner.and_then(Value::as_str) != Some(component.name) {
            continue;
        }
        let slice = match decode::<EndpointSlice>("EndpointSlice", item) {
            Ok(s) => s,
            Err(e) => {
                unreadable.push(e);
                continue;
            }
        };
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(component.port))
            .and_then(|p| p.port);
        let Some(port) = port else {
            unreadable.push(format!(
                "EndpointSlice {} has no port {}",
                key_of(item),
                component.port
            ));
            continue;
        };
        for endpoint in &slice.endpoints {
            // An unset `ready` means unknown, which clients take as ready (the API's rule).
            let is_ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            for address in &endpoint.addresses {
                if is_ready {
                    let host = if address.contains(':') {
                        format!("[{address}]")
                    } else {
                        address.clone()
                    };
                    ready.push(format!("{host}:{port}"));
                } else {
                    not_ready += 1;
                }
            }
        }
    }
    ready.sort();
    let hint = format!(
        "the Service selects the pods of Deployment {0}: see `kubectl describe endpointslices -l kubernetes.io/service-name={0}` and the ca/controller check above",
        component.name
    );
    let unready_note = if not_ready > 0 {
        format!(", {not_ready} not ready")
    } else {
        String::new()
    };
    if ready.is_empty() {
        let found = if items.is_empty() {
            "no EndpointSlice".to_owned()
        } else {
            format!("no ready endpoint{unready_note}")
        };
        return Check::failed(
            &check,
            format!("Service {}: {found}: {}", component.name, component.role),
            hint,
        )
        .with_details(bounded(unreadable, 10));
    }
    let result = if unreadable.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Warning
    };
    let shown = bounded(ready.clone(), 5).join(", ");
    Check::judged(
        &check,
        result,
        format!(
            "Service {}: {} ready endpoint{} ({shown}){unready_note}",
            component.name,
            ready.len(),
            if ready.len() == 1 { "" } else { "s" }
        ),
        hint,
    )
    .with_details(bounded(unreadable, 10))
}
