//! `veil check`: is veil installed and healthy? Asks the Kubernetes API only (and, through the API
//! server's pod proxy, each ztunnel's metrics and readiness), so it runs from a laptop with a
//! kubeconfig. Each check says ok, warning or failed, in one line, with a hint when not ok; what
//! cannot be read is never taken as fine.
//!
//! The judgements are pure functions of the objects read (unit-tested in `check/tests.rs`); the
//! reading is in [`api`] and at the top of each area's module.

mod api;
mod certificates;
mod cluster;
mod components;
mod policies;
mod preflight;
mod ztunnel;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use api::Reader;

/// The namespace the chart is installed in by default (docs/install.md).
pub const DEFAULT_NAMESPACE: &str = "veil-system";

/// What to check and how strictly.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The namespace veil is installed in.
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Warn when a workload certificate has less than this left. Default: 40% of the lifetime
    /// the ztunnels ask for (their --cert-ttl, 24h if unset): ztunnel renews at about half-life, so
    /// less left means its renewals are failing.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cert_expiry_warning: Option<Duration>,
    /// Warn when the mesh root certificate has less than this left.
    #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
    pub root_expiry_warning: Duration,
    /// How long each request to the API server may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Before installing: can veil be installed in this cluster, into --namespace, by these
    /// credentials (nothing is created)?
    #[arg(long)]
    pub pre: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            cert_expiry_warning: None,
            root_expiry_warning: Duration::from_secs(30 * 24 * 3600),
            request_timeout: Duration::from_secs(10),
            pre: false,
        }
    }
}

/// A check's verdict. Ordered: the worst is the greatest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// As it should be.
    Ok,
    /// Works, but needs attention (or could not be fully verified).
    Warning,
    /// Broken, or could not be read.
    Failed,
}

/// One check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`ca`, `ztunnel`, `workload-certificates`, …).
    pub name: String,
    /// The verdict.
    pub result: Outcome,
    /// What was found, in one line.
    pub message: String,
    /// What was found, item by item (the pods not ready, the policies rejected, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// What to do, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    /// A check that passed.
    pub fn ok(name: &str, message: impl Into<String>) -> Self {
        Self::new(name, Outcome::Ok, message.into(), None)
    }

    /// A check that needs attention.
    pub fn warning(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(name, Outcome::Warning, message.into(), Some(hint.into()))
    }

    /// A check that failed.
    pub fn failed(name: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(name, Outcome::Failed, message.into(), Some(hint.into()))
    }

    /// The verdict `result`, with `hint` kept only when it is not ok.
    pub fn judged(name: &str, result: Outcome, message: String, hint: String) -> Self {
        let hint = (result != Outcome::Ok).then_some(hint);
        Self::new(name, result, message, hint)
    }

    fn new(name: &str, result: Outcome, message: String, hint: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            result,
            message,
            details: Vec::new(),
            hint,
        }
    }

    /// The same check with `details`.
    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }

    /// The same check, told that `unreadable` objects (each said why) could not be judged: at least
    /// a warning then, never ok.
    pub(crate) fn with_unreadable(self, unreadable: Vec<String>) -> Self {
        self.with_unjudged(
            unreadable,
            "objects could not be read",
            "see the details: an object the API serves does not have the shape Kubernetes gives it",
        )
    }

    /// The same check, told that `unjudged` things (each said why) were not judged: at least a
    /// warning then (its message saying how many `what`, its hint `hint`), never ok.
    pub(crate) fn with_unjudged(mut self, unjudged: Vec<String>, what: &str, hint: &str) -> Self {
        if !unjudged.is_empty() && self.result == Outcome::Ok {
            self.result = Outcome::Warning;
            self.message
                .push_str(&format!("; {} {what}", unjudged.len()));
            self.hint = Some(hint.into());
        }
        self.details.extend(bounded(unjudged, 10));
        self
    }
}

/// What `veil check` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The namespace checked.
    pub namespace: String,
    /// Whether this is the preflight (`--pre`): can veil be installed there?
    pub preflight: bool,
    /// Whether the API server answered at all.
    pub api_reachable: bool,
    /// The worst verdict.
    pub result: Outcome,
    /// Every check, in the order run.
    pub checks: Vec<Check>,
}

impl Report {
    fn new(namespace: &str, api_reachable: bool, checks: Vec<Check>) -> Self {
        let result = checks.iter().map(|c| c.result).max().unwrap_or(Outcome::Ok);
        Self {
            namespace: namespace.to_owned(),
            preflight: false,
            api_reachable,
            result,
            checks,
        }
    }

    /// The report when there is nothing to ask with (no kubeconfig, a broken one, no in-cluster
    /// configuration): `error` says why.
    pub fn unreachable(namespace: &str, error: &dyn std::error::Error) -> Self {
        let check = cluster::unreachable(&api::chain(error));
        Self::new(namespace, false, vec![check])
    }

    /// The exit status: 0 when nothing failed (warnings allowed), 1 when a check failed, 2 when the
    /// cluster could not be asked at all.
    pub fn exit_code(&self) -> u8 {
        match (self.api_reachable, self.result) {
            (false, _) => 2,
            (true, Outcome::Failed) => 1,
            (true, _) => 0,
        }
    }
}

/// Runs every check against the cluster of `config` (`kube::Config::infer()`: KUBECONFIG,
/// `~/.kube/config`, in-cluster, as kubectl finds it).
pub async fn check(config: kube::Config, options: &Options) -> Report {
    let ns = options.namespace.as_str();
    let api = match Reader::new(config, options.request_timeout) {
        Ok(api) => api,
        Err(e) => return Report::unreachable(ns, &e),
    };
    let now = SystemTime::now();
    let reachable = cluster::api_server(&api).await;
    if reachable.result == Outcome::Failed {
        return Report::new(ns, false, vec![reachable]);
    }
    let mut checks = vec![reachable];
    if !api::safe_name(ns) {
        checks.push(Check::failed(
            "namespace",
            format!("{ns:?} is not a namespace name"),
            "pass --namespace the namespace veil is installed in",
        ));
        return Report::new(ns, true, checks);
    }
    if options.pre {
        checks.extend(preflight::checks(&api, ns).await);
        return Report {
            preflight: true,
            ..Report::new(ns, true, checks)
        };
    }
    if let Some(missing) = cluster::namespace(&api, ns).await {
        checks.push(missing);
        return Report::new(ns, true, checks);
    }
    checks.push(cluster::crds(&api).await);
    checks.push(
        components::deployment(&api, ns, &components::CA)
            .await
            .check,
    );
    let controller = components::deployment(&api, ns, &components::CONTROLLER).await;
    checks.push(controller.check);
    let ztunnels = ztunnel::ztunnels(&api, ns).await;
    checks.push(ztunnels.check);
    checks.push(components::endpoints(&api, ns, &components::CA).await);
    if controller.installed {
        checks.push(components::endpoints(&api, ns, &components::CONTROLLER).await);
    }
    let threshold = options
        .cert_expiry_warning
        .unwrap_or_else(|| certificates::default_threshold(ztunnels.cert_ttl));
    checks.push(certificates::workloads(&api, ns, &ztunnels.running, threshold, now).await);
    checks.push(certificates::root(&api, ns, options.root_expiry_warning, now).await);
    checks.extend(policies::check(&api, ns, controller.installed, now).await);
    checks.push(cluster::enrolled_namespaces(&api).await);
    Report::new(ns, true, checks)
}

/// The report as people read it: one line per check, its details indented below, the hint after.
pub fn table(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    // Writing to a String cannot fail.
    for check in &report.checks {
        let mark = match check.result {
            Outcome::Ok => "ok  ",
            Outcome::Warning => "WARN",
            Outcome::Failed => "FAIL",
        };
        let _ = writeln!(out, "{mark}  {:width$}  {}", check.name, check.message);
        let indent = " ".repeat(width + 8);
        for detail in &check.details {
            let _ = writeln!(out, "{indent}- {detail}");
        }
        if let Some(hint) = &check.hint {
            let _ = writeln!(out, "{indent}hint: {hint}");
        }
    }
    let verdict = match (report.api_reachable, report.result) {
        (false, _) => "the cluster could not be asked",
        (true, Outcome::Ok) => "all checks passed",
        (true, Outcome::Warning) => "passed with warnings",
        (true, Outcome::Failed) => "some checks failed",
    };
    let subject = if report.preflight {
        "installing veil into namespace"
    } else {
        "veil in namespace"
    };
    let _ = writeln!(out, "\n{subject} {}: {verdict}", report.namespace);
    out
}

/// A duration as people read it: `3d 4h`, `5h 12m`, `7m 30s`, `12s`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// At most `max` of `items`, and a last line saying how many more there are.
pub(crate) fn bounded(mut items: Vec<String>, max: usize) -> Vec<String> {
    if items.len() > max {
        let more = items.len() - max;
        items.truncate(max);
        items.push(format!("… and {more} more"));
    }
    items
}
