//! `veil explain`: would a source reach a destination, and which proxy, policy and rule decide.
//!
//! Nothing here decides on its own: the route is ztunnel's (`veil_ztunnel::outbound::route`), the
//! waypoint's decision is the waypoint's (`veil_waypoint::target`, with its path canonicalization),
//! the destination's admission is ztunnel's (`veil_ztunnel::admission::decide`). This module only
//! walks the hops a connection takes and reports each decision.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use veil_mesh::discovery::{MeshState, Workload};
use veil_mesh::identity::Identity;
use veil_mesh::policy::{Decision, DenyReason, HttpAttributes, Verdict};
use veil_waypoint::canon::{self, Normalization};
use veil_waypoint::target::{self, Destination};
use veil_ztunnel::admission::{Admission, Admitted, decide};
use veil_ztunnel::capture::PROXY_PORTS;
use veil_ztunnel::context::UnknownDestination;
use veil_ztunnel::outbound::{Route, Transport, route};

/// Who connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// A workload, by namespace and name.
    Workload { namespace: String, name: String },
    /// Any workload running as a service account.
    ServiceAccount { namespace: String, name: String },
}

/// What it connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum To {
    /// A service, by namespace and name.
    Service { namespace: String, name: String },
    /// A workload, by namespace and name.
    Workload { namespace: String, name: String },
    /// An address.
    Address(IpAddr),
}

/// An HTTP request sent over the connection.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Host (default: the destination as the client named it).
    pub host: Option<String>,
    /// Further headers.
    pub headers: Vec<(String, String)>,
}

/// The question.
#[derive(Clone, Debug)]
pub struct Question {
    /// Who connects.
    pub from: From,
    /// To what.
    pub to: To,
    /// On which port (the service port for a service).
    pub port: u16,
    /// The HTTP request, or `None` for a connection that is not HTTP.
    pub http: Option<Request>,
    /// The waypoints' path normalization (their `--path-normalization`).
    pub normalization: Normalization,
    /// What the client's ztunnel does with destinations outside the mesh (its
    /// `--unknown-destination`; UDP is always refused there).
    pub unknown: UnknownDestination,
    /// A TCP connection, or a UDP flow (as ztunnels carrying UDP, `--carry-udp`, decide it).
    pub transport: Transport,
}

/// The answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Answer {
    /// Whether every endpoint the connection may go to admits it.
    pub allowed: bool,
    /// The source, as the destination sees it (a SPIFFE ID, or `plaintext`).
    pub source: String,
    /// The address connected to.
    pub destination: String,
    /// One path per endpoint the connection may be sent to.
    pub paths: Vec<Path>,
}

/// The hops to one endpoint.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Path {
    /// `namespace/name` of the endpoint, if the connection got as far as choosing one.
    pub endpoint: Option<String>,
    /// Whether every hop let it through.
    pub allowed: bool,
    /// The decisions on the way, in order.
    pub hops: Vec<Hop>,
}

/// One proxy's decision.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Hop {
    /// The proxy (`ztunnel on node-a (outbound)`, `waypoint user-data/waypoint`…).
    pub at: String,
    /// Let through.
    pub allowed: bool,
    /// The policy that decided, `namespace/name`.
    pub policy: Option<String>,
    /// The index of the rule of that policy that matched.
    pub rule: Option<usize>,
    /// Why, in words.
    pub reason: String,
}

/// The source as resolved in the mesh.
struct Source {
    identity: Identity,
    ip: Option<IpAddr>,
    captured: bool,
}

/// Answers `q` against `state`.
pub fn explain(state: &MeshState, q: &Question) -> Result<Answer, String> {
    explain_in(Views::one(state), q)
}

/// The mesh as each kind of proxy holds it. From a mesh file both are the same; from a control
/// plane, ztunnels hold Istio's form (L4 Authorizations chosen per workload, PeerAuthentication as
/// Authorizations) and waypoints the policies as written.
#[derive(Clone, Copy, Debug)]
pub struct Views<'a> {
    /// What ztunnels route and admit with.
    pub ztunnel: &'a MeshState,
    /// What waypoints decide with.
    pub waypoint: &'a MeshState,
}

impl<'a> Views<'a> {
    /// One mesh for every proxy.
    pub fn one(state: &'a MeshState) -> Self {
        Self {
            ztunnel: state,
            waypoint: state,
        }
    }
}

/// [`explain`], each hop decided with the mesh as that kind of proxy holds it.
pub fn explain_in(views: Views<'_>, q: &Question) -> Result<Answer, String> {
    let state = views.ztunnel;
    let source = resolve_source(state, &q.from)?;
    let dst = SocketAddr::new(resolve_destination(state, &q.to, source.ip)?, q.port);
    let source_ip = source.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let paths = match (source.captured, q.transport) {
        (true, _) => captured(views, q, &source.identity, source_ip, dst),
        (false, Transport::Tcp) => plaintext(state, source_ip, dst),
        (false, Transport::Udp) => plaintext_udp(state, dst),
    };
    Ok(Answer {
        allowed: !paths.is_empty() && paths.iter().all(|p| p.allowed),
        source: if source.captured {
            source.identity.to_string()
        } else {
            "plaintext".into()
        },
        destination: dst.to_string(),
        paths,
    })
}

fn resolve_source(state: &MeshState, from: &From) -> Result<Source, String> {
    match from {
        From::Workload { namespace, name } => {
            let w = find_workload(state, namespace, name)?;
            Ok(Source {
                identity: w.identity.clone(),
                ip: w.ips.first().copied(),
                captured: w.enrolled,
            })
        }
        From::ServiceAccount { namespace, name } => {
            let trust_domain = state
                .workloads()
                .first()
                .map(|w| w.identity.trust_domain().to_owned())
                .unwrap_or_else(|| "cluster.local".into());
            let identity = Identity::new(&trust_domain, namespace, name)
                .map_err(|e| format!("service account {namespace}/{name}: {e}"))?;
            // Its address matters only to policies on source addresses: that of a workload running
            // as it, if there is one.
            let running = state
                .workloads()
                .into_iter()
                .find(|w| w.identity == identity);
            Ok(Source {
                ip: running.as_ref().and_then(|w| w.ips.first().copied()),
                captured: running.as_ref().is_none_or(|w| w.enrolled),
                identity,
            })
        }
    }
}

fn find_workload(
    state: &MeshState,
    namespace: &str,
    name: &str,
) -> Result<std::sync::Arc<Workload>, String> {
    state
        .workloads()
        .into_iter()
        .find(|w| *w.namespace == *namespace && *w.name == *name)
        .ok_or_else(|| format!("no workload {namespace}/{name} in the mesh"))
}

/// The address the client dials: the service's of the client's family, the workload's, or as given.
fn resolve_destination(
    state: &MeshState,
    to: &To,
    family: Option<IpAddr>,
) -> Result<IpAddr, String> {
    let same_family = |ips: &[IpAddr]| {
        ips.iter()
            .copied()
            .find(|ip| family.is_none_or(|f| f.is_ipv4() == ip.is_ipv4()))
            .or_else(|| ips.first().copied())
    };
    match to {
        To::Service { namespace, name } => {
            let service = state
                .service(namespace, name)
                .ok_or_else(|| format!("no service {namespace}/{name} in the mesh"))?;
            same_family(&service.vips)
                .ok_or_else(|| format!("service {namespace}/{name} has no address"))
        }
        To::Workload { namespace, name } => {
            let w = find_workload(state, namespace, name)?;
            same_family(&w.ips).ok_or_else(|| format!("workload {namespace}/{name} has no address"))
        }
        To::Address(ip) => Ok(*ip),
    }
}

/// A client in the mesh: its ztunnel routes the connection (to each endpoint it may choose), then
/// the waypoint (if any) and the destination's ztunnel decide.
fn captured(
    views: Views<'_>,
    q: &Question,
    identity: &Identity,
    source_ip: IpAddr,
    dst: SocketAddr,
) -> Vec<Path> {
    let state = views.ztunnel;
    let held = views.waypoint;
    let mut paths: Vec<Path> = Vec::new();
    // UDP leaves the mesh only where it is allowed out in clear, which is never captured: a
    // captured flow to a destination outside the mesh is refused whatever the setting for TCP.
    let unknown = match q.transport {
        Transport::Tcp => q.unknown,
        Transport::Udp => UnknownDestination::Deny,
    };
    for pick in 0..choices(state, dst) {
        let path = match route(state, dst, q.transport, unknown, pick) {
            Route::Hbone { endpoint, target } => {
                let hop = admission(state, &endpoint, Some(identity.clone()), source_ip, target);
                Path::of(Some(endpoint.key()), vec![hop])
            }
            Route::Waypoint { waypoint, .. } if q.transport == Transport::Udp => Path::of(
                None,
                vec![refused(
                    "ztunnel of the source (outbound)",
                    format!(
                        "behind waypoint {}, which carries no UDP: the flow is refused",
                        waypoint.reference()
                    ),
                )],
            ),
            Route::Waypoint {
                waypoint, target, ..
            } => {
                let me = waypoint.reference();
                let at = format!("waypoint {me}");
                let dest = match target::resolve(held, &me, target) {
                    Ok(dest) => dest,
                    Err(e) => {
                        paths.push(Path::of(None, vec![refused(&at, e.to_string())]));
                        continue;
                    }
                };
                let waypoint_ip = waypoint
                    .ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == target.is_ipv4());
                for j in 0..endpoints_behind(held, &dest) {
                    let Some((endpoint, addr)) = dest.endpoint(held, target, j) else {
                        paths.push(Path::of(None, vec![refused(&at, "no endpoint".into())]));
                        break;
                    };
                    let mut hops = vec![at_waypoint(
                        held, q, &me, &dest, &endpoint, addr, identity, source_ip, &at,
                    )];
                    if hops[0].allowed && !endpoint.enrolled {
                        // It forwards over HBONE only (`veil_waypoint::upstream`).
                        hops.push(refused(
                            &at,
                            format!(
                                "503: {} is not in the mesh; a waypoint forwards only to mesh workloads",
                                endpoint.key()
                            ),
                        ));
                    } else if hops[0].allowed {
                        // The destination's ztunnel judges the workload as it holds it.
                        hops.push(match state.workload_by_ip(addr.ip()) {
                            Some(at_ztunnel) => admission(
                                state,
                                at_ztunnel,
                                Some(waypoint.identity.clone()),
                                waypoint_ip.unwrap_or(source_ip),
                                addr,
                            ),
                            None => refused(
                                &format!("ztunnel on {}", endpoint.node),
                                format!(
                                    "{} ({addr}) is not in the mesh ztunnels hold",
                                    endpoint.key()
                                ),
                            ),
                        });
                    }
                    let path = Path::of(Some(endpoint.key()), hops);
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                }
                continue;
            }
            Route::Passthrough(target) => Path::of(
                state.workload_by_ip(target.ip()).map(|w| w.key()),
                vec![Hop {
                    at: "ztunnel of the source (outbound)".into(),
                    allowed: true,
                    policy: None,
                    rule: None,
                    reason: format!("{target} is not in the mesh: passed through in plaintext"),
                }],
            ),
            Route::Refuse(reason) => Path::of(
                None,
                vec![refused("ztunnel of the source (outbound)", reason)],
            ),
            Route::Forbidden(target, why) => Path::of(
                None,
                vec![refused(
                    "ztunnel of the source (outbound)",
                    format!("{target}: {why:?}"),
                )],
            ),
        };
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// How many ways ztunnel's route can go for `dst`: one per ready endpoint of a service without a
/// waypoint, else one (a waypoint chooses among endpoints itself).
fn choices(state: &MeshState, dst: SocketAddr) -> usize {
    match state.service_by_vip(dst.ip()) {
        Some(service) if service.waypoint.is_none() => {
            state.serving_endpoints(service).len().max(1)
        }
        _ => 1,
    }
}

fn endpoints_behind(state: &MeshState, dest: &Destination) -> usize {
    match dest {
        Destination::Service { service, .. } => state.serving_endpoints(service).len().max(1),
        Destination::Workload { .. } => 1,
    }
}

#[allow(clippy::too_many_arguments)]
fn at_waypoint(
    state: &MeshState,
    q: &Question,
    me: &veil_mesh::discovery::WaypointRef,
    dest: &Destination,
    endpoint: &Workload,
    addr: SocketAddr,
    identity: &Identity,
    source_ip: IpAddr,
    at: &str,
) -> Hop {
    let Some(request) = &q.http else {
        // Not HTTP: the waypoint applies L4 policy only (rules that need HTTP cannot match).
        let decision = target::decide(state, me, dest, endpoint, addr, identity, source_ip, None);
        return Hop::of(at, &decision);
    };
    let req = match http_request(request, dest, q.port) {
        Ok(req) => req,
        Err(e) => return refused(at, format!("400: {e}")),
    };
    let canonical = match canon::request(&req, q.normalization) {
        Ok(c) => c,
        Err(refusal) => return refused(at, format!("400: {refusal}")),
    };
    let decision = target::decide(
        state,
        me,
        dest,
        endpoint,
        addr,
        identity,
        source_ip,
        Some(HttpAttributes {
            method: req.method().as_str(),
            path: &canonical.path,
            host: &canonical.host,
            headers: req.headers(),
        }),
    );
    let mut hop = Hop::of(at, &decision);
    hop.reason = format!("{} {}: {}", req.method(), canonical.path, hop.reason);
    hop
}

/// The request as a client sends it: the host defaults to the service's cluster name.
fn http_request(r: &Request, dest: &Destination, port: u16) -> Result<http::Request<()>, String> {
    let host = r.host.clone().unwrap_or_else(|| match dest {
        Destination::Service { service, .. } => {
            let name = format!("{}.{}.svc.cluster.local", service.name, service.namespace);
            if port == 80 {
                name
            } else {
                format!("{name}:{port}")
            }
        }
        Destination::Workload { workload, .. } => workload.name.to_string(),
    });
    let mut builder = http::Request::builder()
        .method(r.method.as_str())
        .uri(r.path.as_str())
        .header(http::header::HOST, host);
    for (name, value) in &r.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder.body(()).map_err(|e| e.to_string())
}

/// The destination's ztunnel.
fn admission(
    state: &MeshState,
    endpoint: &Workload,
    source: Option<Identity>,
    source_ip: IpAddr,
    target: SocketAddr,
) -> Hop {
    let at = format!(
        "ztunnel on {} (inbound to {})",
        endpoint.node,
        endpoint.key()
    );
    if PROXY_PORTS.contains(&target.port()) {
        return refused(
            &at,
            format!("port {} is one of ztunnel's own", target.port()),
        );
    }
    if !endpoint.enrolled {
        return Hop {
            at,
            allowed: true,
            policy: None,
            rule: None,
            reason: "not in the mesh: no policy applies".into(),
        };
    }
    let admitted = Admitted {
        workload_uid: endpoint.uid.clone(),
        source,
        source_ip,
        destination: target,
    };
    match decide(state, endpoint, &admitted) {
        Admission::Policy(decision) => {
            let mut hop = Hop::of(&at, &decision);
            match (&decision.verdict, &endpoint.waypoint) {
                (Verdict::Deny(DenyReason::NotFromWaypoint(_)), _) => {
                    hop.reason = Admission::Policy(decision).reason(endpoint);
                }
                (Verdict::Allow(None), Some(waypoint)) => {
                    hop.reason = format!(
                        "allowed: the tunnel comes from its waypoint {waypoint}, which applied its policies"
                    );
                }
                _ => {}
            }
            hop
        }
        other => refused(&at, other.reason(endpoint)),
    }
}

/// Where a client outside the mesh lands: a service's address is translated by kube-proxy, by its
/// ports of `transport`, to any of its ready endpoints; an address in the mesh is its workload.
/// `Err`: the answer already (a service without that port).
fn plaintext_targets(
    state: &MeshState,
    dst: SocketAddr,
    transport: Transport,
) -> Result<Vec<(std::sync::Arc<Workload>, SocketAddr)>, Vec<Path>> {
    match state.service_by_vip(dst.ip()) {
        Some(service) => match transport.target_port(service, dst.port()) {
            Ok(port) => Ok(state.serving_addresses(service, dst.ip(), port)),
            Err(why) => Err(vec![Path::of(None, vec![refused("the network", why)])]),
        },
        None => Ok(state
            .workload_by_ip(dst.ip())
            .map(|w| vec![(w.clone(), dst)])
            .unwrap_or_default()),
    }
}

/// A client outside the mesh: its connection reaches an endpoint in plaintext.
fn plaintext(state: &MeshState, source_ip: IpAddr, dst: SocketAddr) -> Vec<Path> {
    let targets = match plaintext_targets(state, dst, Transport::Tcp) {
        Ok(targets) => targets,
        Err(answer) => return answer,
    };
    if targets.is_empty() {
        return vec![Path::of(
            None,
            vec![Hop {
                at: "the network".into(),
                allowed: true,
                policy: None,
                rule: None,
                reason: format!("{dst} is not in the mesh: no proxy is involved"),
            }],
        )];
    }
    targets
        .into_iter()
        .map(|(w, addr)| {
            Path::of(
                Some(w.key()),
                vec![admission(state, &w, None, source_ip, addr)],
            )
        })
        .collect()
}

/// A client outside the mesh sending UDP: an enrolled pod takes no plaintext UDP (its capture
/// drops it, whatever PeerAuthentication says: only carried flows reach it); anything else is not
/// the mesh's to decide.
fn plaintext_udp(state: &MeshState, dst: SocketAddr) -> Vec<Path> {
    let targets = match plaintext_targets(state, dst, Transport::Udp) {
        Ok(targets) => targets,
        Err(answer) => return answer,
    };
    if targets.is_empty() {
        if let Some(service) = state.service_by_vip(dst.ip()) {
            return vec![Path::of(
                None,
                vec![refused(
                    "the network",
                    format!("service {} has no ready endpoints", service.key()),
                )],
            )];
        }
        return plaintext(state, IpAddr::V4(Ipv4Addr::UNSPECIFIED), dst);
    }
    targets
        .into_iter()
        .map(|(w, _)| {
            let at = format!("ztunnel on {} (inbound to {})", w.node, w.key());
            let hop = if w.enrolled {
                refused(
                    &at,
                    "plaintext UDP into an enrolled pod is dropped: only carried flows reach it"
                        .into(),
                )
            } else {
                Hop {
                    at,
                    allowed: true,
                    policy: None,
                    rule: None,
                    reason: "not in the mesh: no policy applies".into(),
                }
            };
            Path::of(Some(w.key()), vec![hop])
        })
        .collect()
}

fn refused(at: &str, reason: String) -> Hop {
    Hop {
        at: at.to_owned(),
        allowed: false,
        policy: None,
        rule: None,
        reason,
    }
}

impl Hop {
    fn of(at: &str, decision: &Decision) -> Self {
        Self {
            at: at.to_owned(),
            allowed: decision.allowed(),
            policy: decision.policy().map(ToString::to_string),
            rule: decision.rule,
            reason: decision.explanation(),
        }
    }
}

impl Path {
    fn of(endpoint: Option<String>, hops: Vec<Hop>) -> Self {
        Self {
            endpoint,
            allowed: hops.iter().all(|h| h.allowed),
            hops,
        }
    }
}

#[cfg(test)]
mod tests;
