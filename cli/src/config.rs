//! `veil config`: what one ztunnel or waypoint holds — workloads, services, policies, certificates
//! and connections — read from its admin endpoint's `/config_dump` (or a saved copy of it).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use veil_mesh::admin::{ConfigDump, DUMP_SCHEMA};

/// The largest dump read (a ztunnel of a 10,000-pod cluster dumps a few megabytes).
const MAX_DUMP: usize = 256 << 20;
/// How long the admin endpoint may take to connect and to answer.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A part of the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Everything below.
    All,
    /// Workloads (pods) it knows.
    Workloads,
    /// Services it knows.
    Services,
    /// AuthorizationPolicies and PeerAuthentications it holds.
    Policies,
    /// Its certificates and their expiry.
    Certificates,
    /// Its inbound connections and pooled HBONE connections.
    Connections,
}

/// Reads a dump from `admin`: `http://host:port` (or `host:port`), the proxy's admin address.
pub async fn fetch(admin: &str) -> anyhow::Result<ConfigDump> {
    let (_, body) = get(
        admin,
        "/config_dump",
        MAX_DUMP,
        "a ztunnel's or waypoint's admin port: `kubectl port-forward -n veil-system pod/<the node's ztunnel> 15000` first?",
    )
    .await?;
    let text = std::str::from_utf8(&body).context("the dump is not UTF-8")?;
    read(text).with_context(|| format!("the dump from {admin}"))
}

/// `GET path` from an admin endpoint `admin` (`http://host:port` or `host:port`): the answer's
/// headers and body (at most `max` bytes); any status but 2xx is an error. `hint` says what to
/// check when nothing answers.
pub async fn get(
    admin: &str,
    path: &str,
    max: usize,
    hint: &str,
) -> anyhow::Result<(http::HeaderMap, Bytes)> {
    let with_scheme = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .with_context(|| format!("{admin:?} is not an address (http://host:port)"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{admin:?}: the admin endpoint speaks plain http (it listens on loopback only)");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("{admin:?} has no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    tokio::time::timeout(TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {authority} ({hint})"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), max)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            bail!(
                "{authority} answered {status} to {path}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            );
        }
        anyhow::Ok((headers, body))
    })
    .await
    .with_context(|| format!("{authority} did not answer within {} s", TIMEOUT.as_secs()))?
}

/// Reads a dump from its JSON, refusing one of another schema.
pub fn read(text: &str) -> anyhow::Result<ConfigDump> {
    let value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    match value.get("schema").and_then(|s| s.as_str()) {
        Some(DUMP_SCHEMA) => {}
        Some(other) => bail!("schema {other:?}: this veil reads {DUMP_SCHEMA:?}"),
        None => bail!("no schema: not a veil proxy's /config_dump of {DUMP_SCHEMA:?}"),
    }
    serde_json::from_value(value).context("not a config dump")
}

/// Keeps what concerns `namespace`: its workloads, services, policies, and the connections of its
/// workloads.
pub fn only_namespace(dump: &mut ConfigDump, namespace: &str) {
    dump.workloads.retain(|w| w.namespace == namespace);
    dump.services.retain(|s| s.namespace == namespace);
    dump.policies.retain(|p| p.namespace == namespace);
    let prefix = format!("{namespace}/");
    dump.connections
        .inbound
        .retain(|c| c.workload.starts_with(&prefix));
    let identity_part = format!("/ns/{namespace}/sa/");
    dump.certificates
        .retain(|c| c.identity.contains(&identity_part));
    dump.connections
        .outbound
        .retain(|c| c.source_identity.contains(&identity_part));
}

/// What `-o json|yaml` prints of a section.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Selected<'a> {
    /// The whole dump.
    All(&'a ConfigDump),
    /// One section's entries.
    Part(serde_json::Value),
}

/// The section as data.
pub fn select(dump: &ConfigDump, section: Section) -> anyhow::Result<Selected<'_>> {
    Ok(match section {
        Section::All => Selected::All(dump),
        Section::Workloads => Selected::Part(serde_json::to_value(&dump.workloads)?),
        Section::Services => Selected::Part(serde_json::to_value(&dump.services)?),
        Section::Policies => Selected::Part(serde_json::to_value(&dump.policies)?),
        Section::Certificates => Selected::Part(serde_json::to_value(&dump.certificates)?),
        Section::Connections => Selected::Part(serde_json::to_value(&dump.connections)?),
    })
}

/// The section as people read it: aligned columns, one row per entry.
pub fn table(dump: &ConfigDump, section: Section, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (veil {}): {} workloads, {} services, {} waypoints, {} authorization policies, {} peer authentications",
        dump.proxy.kind,
        dump.proxy.name,
        dump.proxy.version,
        dump.summary.workloads,
        dump.summary.services,
        dump.summary.waypoints,
        dump.summary.authorization_policies,
        dump.summary.peer_authentications,
    );
    for rejected in &dump.rejected {
        let _ = writeln!(out, "REFUSED: {rejected}");
    }
    let all = section == Section::All;
    if all || section == Section::Workloads {
        heading(&mut out, all, "WORKLOADS");
        out += &columns(
            &[
                "NAMESPACE",
                "POD",
                "WORKLOAD",
                "ADDRESS",
                "NODE",
                "WAYPOINT",
                "PROTOCOL",
                "SERVING",
            ],
            dump.workloads.iter().map(|w| {
                let waypoint = match (&w.waypoint, w.waypoint_conflict.is_empty()) {
                    (_, false) => format!("CONFLICT: {}", w.waypoint_conflict.join(",")),
                    (Some(wp), true) => wp.clone(),
                    (None, true) => "None".to_owned(),
                };
                vec![
                    w.namespace.clone(),
                    w.name.clone(),
                    w.workload_name.clone(),
                    join(&w.ips),
                    w.node.clone(),
                    waypoint,
                    w.protocol.clone(),
                    w.serving.clone(),
                ]
            }),
        );
    }
    if all || section == Section::Services {
        heading(&mut out, all, "SERVICES");
        out += &columns(
            &[
                "NAMESPACE",
                "SERVICE",
                "ADDRESSES",
                "PORTS",
                "ENDPOINTS",
                "WAYPOINT",
            ],
            dump.services.iter().map(|s| {
                vec![
                    s.namespace.clone(),
                    s.name.clone(),
                    join(&s.vips),
                    s.ports
                        .iter()
                        .map(|(p, t)| format!("{p}->{t}"))
                        .chain(s.udp_ports.iter().map(|(p, t)| format!("{p}->{t}/udp")))
                        .collect::<Vec<_>>()
                        .join(","),
                    s.endpoints.len().to_string(),
                    s.waypoint.clone().unwrap_or_else(|| "None".to_owned()),
                ]
            }),
        );
    }
    if all || section == Section::Policies {
        heading(&mut out, all, "POLICIES");
        out += &columns(
            &["NAMESPACE", "NAME", "KIND", "ACTION", "APPLIES TO", "NOTE"],
            dump.policies.iter().map(|p| {
                let mut note = p.note.clone().unwrap_or_default();
                if p.uses_l7 && note.is_empty() {
                    note = "HTTP conditions".to_owned();
                }
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    p.kind.clone(),
                    p.action.clone(),
                    p.applies_to.clone(),
                    note,
                ]
            }),
        );
    }
    if all || section == Section::Certificates {
        heading(&mut out, all, "CERTIFICATES");
        out += &columns(
            &["IDENTITY", "STATE", "EXPIRES", "LEFT"],
            dump.certificates.iter().map(|c| {
                let (state, left) = certificate_state(c.not_after.as_deref(), now);
                vec![
                    c.identity.clone(),
                    state.to_owned(),
                    c.not_after.clone().unwrap_or_else(|| "-".to_owned()),
                    left,
                ]
            }),
        );
    }
    if all || section == Section::Connections {
        heading(&mut out, all, "INBOUND CONNECTIONS");
        out += &columns(
            &[
                "WORKLOAD",
                "DESTINATION",
                "SOURCE",
                "SOURCE IDENTITY",
                "CLOSING",
            ],
            dump.connections.inbound.iter().map(|c| {
                vec![
                    c.workload.clone(),
                    c.destination.to_string(),
                    c.source_ip.to_string(),
                    c.source_identity
                        .clone()
                        .unwrap_or_else(|| "(plaintext)".to_owned()),
                    c.closing.clone().unwrap_or_default(),
                ]
            }),
        );
        heading(&mut out, true, "POOLED HBONE CONNECTIONS");
        out += &columns(
            &[
                "SOURCE IDENTITY",
                "DESTINATION IDENTITY",
                "DESTINATION",
                "CONNECTIONS",
            ],
            dump.connections.outbound.iter().map(|c| {
                vec![
                    c.source_identity.clone(),
                    c.destination_identity.clone(),
                    c.destination.to_string(),
                    c.connections.to_string(),
                ]
            }),
        );
    }
    out
}

/// A certificate's state at `now` from its expiry: `VALID`, `EXPIRED` or `PENDING` (being
/// requested), and the time left.
pub fn certificate_state(not_after: Option<&str>, now: SystemTime) -> (&'static str, String) {
    let Some(text) = not_after else {
        return ("PENDING", "-".to_owned());
    };
    match humantime::parse_rfc3339(text) {
        Ok(at) => match at.duration_since(now) {
            Ok(left) => (
                "VALID",
                humantime::format_duration(Duration::from_secs(left.as_secs())).to_string(),
            ),
            Err(_) => ("EXPIRED", "0s".to_owned()),
        },
        Err(_) => ("UNREADABLE", "-".to_owned()),
    }
}

fn heading(out: &mut String, show: bool, title: &str) {
    if show {
        let _ = writeln!(out, "\n{title}");
    } else {
        out.push('\n');
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Rows under a header, each column as wide as its widest cell.
fn columns(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

#[cfg(test)]
mod tests;
