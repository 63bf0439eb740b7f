//! Certificates: the workload certificates each ztunnel holds (its `veil_certificate_expiry_seconds`
//! metric, read through the API server's pod proxy) and the mesh root the CA publishes (ConfigMap
//! `veil-root-cert`, which every ztunnel mounts).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use veil_ca::kubernetes::{ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::api::{Reader, decode, status_error};
use super::ztunnel::Running;
use super::{Check, Outcome, bounded, human};

/// ztunnel's metrics port and path (ztunnel/src/ops.rs).
pub(crate) const METRICS: (u16, &str) = (15020, "metrics");
/// The gauge of each workload certificate's expiry, in Unix seconds, labelled `identity`
/// (mesh/src/telemetry/metrics.rs).
pub(crate) const EXPIRY_METRIC: &str = "veil_certificate_expiry_seconds";

/// ztunnels asked at once.
const CONCURRENCY: usize = 8;

const WORKLOADS: &str = "workload-certificates";
const ROOT: &str = "root-certificate";

/// The warning threshold for certificates of lifetime `ttl`: ztunnel renews when about half is
/// left (45–55%), so less than 40% left means a renewal is overdue.
pub(crate) fn default_threshold(ttl: Duration) -> Duration {
    ttl.mul_f64(0.4)
}

/// One certificate a ztunnel holds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Held {
    pub(crate) identity: String,
    pub(crate) expiry: SystemTime,
}

/// What one ztunnel's metrics said: its certificates, or why they could not be read.
pub(crate) type Read = (Running, Result<Vec<Held>, String>);

/// Reads every running ztunnel's certificates and judges them.
pub(crate) async fn workloads(
    api: &Reader,
    ns: &str,
    running: &[Running],
    threshold: Duration,
    now: SystemTime,
) -> Check {
    let (port, path) = METRICS;
    let reads: Vec<Read> = futures_util::stream::iter(running.iter().cloned())
        .map(|z| async move {
            let held = match api.proxy(ns, &z.pod, port, path).await {
                Ok(a) if a.status.is_success() => held_certificates(&a.text()),
                Ok(a) => Err(status_error(&a).to_string()),
                Err(e) => Err(e.to_string()),
            };
            (z, held)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    judge_workloads(&reads, threshold, now)
}

/// The verdict on the certificates ztunnels hold: failed when one has expired, a warning when one has
/// less than `threshold` left or a ztunnel's could not be read.
pub(crate) fn judge_workloads(reads: &[Read], threshold: Duration, now: SystemTime) -> Check {
    if reads.is_empty() {
        return Check::warning(
            WORKLOADS,
            "no running ztunnel to ask",
            "see the ztunnel check",
        );
    }
    let mut expired = Vec::new();
    let mut expiring = Vec::new();
    let mut unreadable = Vec::new();
    let mut count = 0;
    let mut soonest: Option<Duration> = None;
    for (z, held) in reads {
        let held = match held {
            Ok(h) => h,
            Err(e) => {
                unreadable.push(format!(
                    "{} ({}): metrics could not be read: {e}",
                    z.node, z.pod
                ));
                continue;
            }
        };
        for cert in held {
            count += 1;
            match cert.expiry.duration_since(now) {
                Err(past) => expired.push(format!(
                    "{}: {} expired {} ago",
                    z.node,
                    cert.identity,
                    human(past.duration())
                )),
                Ok(left) => {
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                    if left < threshold {
                        expiring.push(format!(
                            "{}: {} expires in {}",
                            z.node,
                            cert.identity,
                            human(left)
                        ));
                    }
                }
            }
        }
    }
    let asked = reads.len() - unreadable.len();
    let soonest = soonest.map_or(String::new(), |s| {
        format!("; the soonest expires in {}", human(s))
    });
    let limit = format!("(warning below {})", human(threshold));
    let hint = "ztunnel renews at about half-life: if its renewals fail, see the ca checks and `kubectl -n <namespace> logs <ztunnel pod>` (\"certificate renewal failed\")";
    let (result, message) = if !expired.is_empty() {
        (
            Outcome::Failed,
            format!(
                "{} of {count} certificates expired: connections of those workloads fail",
                expired.len()
            ),
        )
    } else if !expiring.is_empty() {
        (
            Outcome::Warning,
            format!(
                "{} of {count} certificates expire soon {limit}: renewals are overdue",
                expiring.len()
            ),
        )
    } else if !unreadable.is_empty() {
        (
            Outcome::Warning,
            format!(
                "{count} certificates valid on {asked} ztunnels{soonest}; {} ztunnels could not be asked",
                unreadable.len()
            ),
        )
    } else {
        (
            Outcome::Ok,
            format!("{count} certificates valid on {asked} ztunnels{soonest} {limit}"),
        )
    };
    let unreadable_hint = "reading a ztunnel's metrics needs `get` on pods/proxy in veil's namespace (kubectl get --raw /api/v1/namespaces/<namespace>/pods/<pod>:15020/proxy/metrics)";
    let hint = if expired.is_empty() && expiring.is_empty() {
        unreadable_hint
    } else {
        hint
    };
    let mut details = bounded(expired, 20);
    details.extend(bounded(expiring, 20));
    details.extend(bounded(unreadable, 10));
    Check::judged(WORKLOADS, result, message, hint.to_owned()).with_details(details)
}

/// The certificates in a ztunnel's metrics (Prometheus text or OpenMetrics): each sample of
/// [`EXPIRY_METRIC`]. A family without samples is not written at all (a node without enrolled pods),
/// so an answer is taken as a ztunnel's when it has any `veil_` metric.
pub(crate) fn held_certificates(text: &str) -> Result<Vec<Held>, String> {
    let mut held = Vec::new();
    let mut veil = false;
    for line in text.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if matches!(words.next(), Some("TYPE" | "HELP"))
                && words.next().is_some_and(|name| name.starts_with("veil_"))
            {
                veil = true;
            }
            continue;
        }
        veil |= line.starts_with("veil_");
        let Some(rest) = line.strip_prefix(EXPIRY_METRIC) else {
            continue;
        };
        // Another metric whose name starts with this one's.
        if !rest.starts_with('{') && !rest.starts_with(' ') {
            continue;
        }
        let sample = sample(rest).ok_or_else(|| format!("unreadable sample: {line}"))?;
        let identity = sample
            .labels
            .iter()
            .find(|(k, _)| k == "identity")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("sample without an identity: {line}"))?;
        let expiry = unix(sample.value).ok_or_else(|| format!("not a time: {line}"))?;
        held.push(Held { identity, expiry });
    }
    if !veil {
        return Err("the answer has no veil_ metric: not a veil ztunnel's metrics".into());
    }
    Ok(held)
}

/// A sample's labels and value, from what follows the metric name.
#[derive(Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

/// Parses `{k="v",…} value [timestamp]` (the braces optional), label values unescaped.
pub(crate) fn sample(rest: &str) -> Option<Sample> {
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    let mut end = 0;
    if rest.starts_with('{') {
        chars.next();
        loop {
            while chars.next_if(|(_, c)| *c == ' ' || *c == ',').is_some() {}
            match chars.peek() {
                Some((i, '}')) => {
                    end = i + 1;
                    break;
                }
                None => return None,
                _ => {}
            }
            let mut name = String::new();
            while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=') {
                name.push(c);
            }
            chars.next()?; // '='
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => value.push(match chars.next()?.1 {
                        'n' => '\n',
                        other => other,
                    }),
                    c => value.push(c),
                }
            }
            labels.push((name.trim().to_owned(), value));
        }
    }
    let value = rest
        .get(end..)?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(Sample { labels, value })
}

/// Unix seconds as a time, if they are one.
fn unix(seconds: f64) -> Option<SystemTime> {
    (seconds.is_finite() && (0.0..1e12).contains(&seconds))
        .then(|| UNIX_EPOCH + Duration::from_secs_f64(seconds))
}

/// Reads and judges the mesh root in ConfigMap `veil-root-cert` of `ns`.
pub(crate) async fn root(api: &Reader, ns: &str, threshold: Duration, now: SystemTime) -> Check {
    let path = format!("/api/v1/namespaces/{ns}/configmaps/{ROOT_CONFIGMAP}");
    let hint = format!(
        "the CA publishes it when it starts and every few minutes: see the ca check and `kubectl -n {ns} logs deployment/veil-ca`"
    );
    match api.object(&path).await {
        Ok(Some(v)) => match decode::<ConfigMap>("ConfigMap", &v) {
            Ok(cm) => match cm.data.as_ref().and_then(|d| d.get(ROOT_CONFIGMAP_KEY)) {
                Some(pem) => judge_root(pem, threshold, now),
                None => Check::failed(
                    ROOT,
                    format!("ConfigMap {ns}/{ROOT_CONFIGMAP} has no {ROOT_CONFIGMAP_KEY}"),
                    hint,
                ),
            },
            Err(e) => Check::failed(ROOT, e, hint),
        },
        Ok(None) => Check::failed(
            ROOT,
            format!(
                "ConfigMap {ns}/{ROOT_CONFIGMAP} not found: ztunnels cannot start without the root"
            ),
            hint,
        ),
        Err(e) => Check::failed(
            ROOT,
            format!("ConfigMap {ns}/{ROOT_CONFIGMAP} could not be read: {e}"),
            hint,
        ),
    }
}

/// The verdict on the root bundle `pem`: failed when none of its roots is valid now, a warning when
/// the one valid longest has less than `threshold` left or an expired root lingers beside it.
pub(crate) fn judge_root(pem: &str, threshold: Duration, now: SystemTime) -> Check {
    let hint = "rotate the root before it expires (docs/ca.md: a plugged-in CA in ca.caSecret, or a new veil-ca-root), keeping the old one trusted through the overlap";
    let ders = match CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>() {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            return Check::failed(
                ROOT,
                format!("{ROOT_CONFIGMAP_KEY} holds no certificate"),
                hint,
            );
        }
        Err(e) => {
            return Check::failed(
                ROOT,
                format!("{ROOT_CONFIGMAP_KEY} could not be read: {e}"),
                hint,
            );
        }
    };
    let mut valid: Vec<(SystemTime, String)> = Vec::new();
    let mut problems = Vec::new();
    for (i, der) in ders.iter().enumerate() {
        let cert = match X509Certificate::from_der(der) {
            Ok(([], cert)) => cert,
            Ok(_) => {
                problems.push(format!("root {i}: trailing data after the certificate"));
                continue;
            }
            Err(e) => {
                problems.push(format!("root {i}: not a certificate: {e}"));
                continue;
            }
        };
        let subject = cert.subject().to_string();
        let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let (not_before, not_after) = (
            time(cert.validity().not_before.timestamp()),
            time(cert.validity().not_after.timestamp()),
        );
        if now < not_before {
            problems.push(format!(
                "root {i} ({subject}) is not valid before {} from now",
                human(not_before.duration_since(now).unwrap_or_default())
            ));
        } else if now >= not_after {
            problems.push(format!(
                "root {i} ({subject}) expired {} ago",
                human(now.duration_since(not_after).unwrap_or_default())
            ));
        } else {
            valid.push((not_after, subject));
        }
    }
    let Some((not_after, subject)) = valid.iter().max_by_key(|(t, _)| *t).cloned() else {
        return Check::failed(
            ROOT,
            "no valid root: every mesh connection fails its handshake",
            hint,
        )
        .with_details(problems);
    };
    let left = not_after.duration_since(now).unwrap_or_default();
    let message = format!(
        "{} valid root{}, {subject}, expires in {}",
        valid.len(),
        if valid.len() == 1 { "" } else { "s" },
        human(left)
    );
    let result = if left < threshold || !problems.is_empty() {
        Outcome::Warning
    } else {
        Outcome::Ok
    };
    let message = if left < threshold {
        format!("{message} (warning below {})", human(threshold))
    } else {
        message
    };
    Check::judged(ROOT, result, message, hint.to_owned()).with_details(problems)
}
