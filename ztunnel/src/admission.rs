//! The inbound admission decision: whether a connection to a local workload may flow, given the
//! mesh state. One function serves the check when a connection arrives and every re-check while it
//! lives (`conntrack`), so the two can never disagree about what the policies say.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use veil_mesh::discovery::{MeshState, WaypointRef, Workload};
use veil_mesh::identity::Identity;
use veil_mesh::policy::{Attributes, Decision, DenyReason, PeerMode, Verdict, evaluate};

/// What a connection was admitted with: what every later decision about it is based on.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The local workload's uid (its current version is looked up in each state).
    pub workload_uid: Arc<str>,
    /// The peer's verified identity (HBONE), or `None` for PERMISSIVE plaintext.
    pub source: Option<Identity>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The destination the client asked for (the pod's address and port).
    pub destination: SocketAddr,
}

/// The outcome of an admission check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Decided by AuthorizationPolicy (or the waypoint rule): allowed or denied.
    Policy(Decision),
    /// Plaintext, but the port's PeerAuthentication mode is STRICT.
    Strict,
    /// Plaintext to a workload behind a waypoint: only the waypoint may reach it, whatever the mode.
    PlaintextBehindWaypoint(WaypointRef),
}

impl Admission {
    /// Whether the connection may flow.
    pub fn allowed(&self) -> bool {
        match self {
            Self::Policy(decision) => decision.allowed(),
            Self::Strict | Self::PlaintextBehindWaypoint(_) => false,
        }
    }

    /// The authorization decision, when policy decided.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Self::Policy(decision) => Some(decision),
            Self::Strict | Self::PlaintextBehindWaypoint(_) => None,
        }
    }

    /// Why it is denied, for the access and audit logs.
    pub fn reason(&self, workload: &Workload) -> String {
        match self {
            Self::Policy(Decision {
                verdict: Verdict::Deny(DenyReason::NotFromWaypoint(_)),
                ..
            }) if !workload.waypoint_conflict().is_empty() => format!(
                "{} is claimed by several waypoints and admits no traffic until that is fixed",
                workload.key()
            ),
            Self::Policy(Decision {
                verdict: Verdict::Deny(DenyReason::NotFromWaypoint(w)),
                ..
            }) => format!("{} is reachable only through waypoint {w}", workload.key()),
            Self::Policy(decision) => decision.explanation(),
            Self::Strict => "plaintext refused: mutual TLS is STRICT".to_owned(),
            Self::PlaintextBehindWaypoint(w) => format!(
                "plaintext refused: {} is reachable only through waypoint {w}",
                workload.key()
            ),
        }
    }
}

/// Decides `conn` to `workload` (its version in `state`).
pub fn decide(state: &MeshState, workload: &Workload, conn: &Admitted) -> Admission {
    let port = conn.destination.port();
    let Some(peer) = &conn.source else {
        // Plaintext would step around the waypoint's L7 policy: refused whatever the mode.
        if let Some(reference) = &workload.waypoint {
            return Admission::PlaintextBehindWaypoint(reference.clone());
        }
        if state.peer_mode(workload, port) == PeerMode::Strict {
            return Admission::Strict;
        }
        let policies = state.authz_for(workload);
        let decision = evaluate(&policies, &attributes(conn, None));
        // In Istio's form STRICT is a policy that denies what has no identity: reported as such.
        if let Verdict::Deny(DenyReason::DenyPolicy(id)) = &decision.verdict
            && policies
                .iter()
                .any(|p| &p.id == id && p.only_refuses_plaintext())
        {
            return Admission::Strict;
        }
        return Admission::Policy(decision);
    };
    Admission::Policy(match &workload.waypoint {
        // Behind a waypoint: only the waypoint may reach the workload, and it enforced the
        // workload's policies already, with the client's identity and at L7.
        Some(reference) => match from_waypoint(state, workload, reference, peer) {
            // Received in Istio's form, the workload's Authorizations apply to its waypoint's
            // tunnels too (they name the waypoint's identity where they mean to admit it).
            decision if decision.allowed() && state.istio_semantics() => {
                evaluate(&state.authz_for(workload), &attributes(conn, Some(peer)))
            }
            decision => decision,
        },
        None => evaluate(&state.authz_for(workload), &attributes(conn, Some(peer))),
    })
}

fn attributes<'a>(conn: &Admitted, source: Option<&'a Identity>) -> Attributes<'a> {
    Attributes {
        source,
        source_ip: conn.source_ip,
        destination_ip: conn.destination.ip(),
        destination_port: conn.destination.port(),
        http: None,
    }
}

/// The decision for a tunnel to a workload behind `reference`: allowed only from that waypoint, and
/// from none while other waypoints claim the workload too (which one fronts it is ambiguous).
fn from_waypoint(
    state: &MeshState,
    workload: &Workload,
    reference: &WaypointRef,
    peer: &Identity,
) -> Decision {
    let allowed = workload.waypoint_conflict().is_empty()
        && state
            .waypoint(reference)
            .is_some_and(|waypoint| &waypoint.identity == peer);
    Decision {
        verdict: if allowed {
            Verdict::Allow(None)
        } else {
            Verdict::Deny(DenyReason::NotFromWaypoint(reference.to_string()))
        },
        audit: None,
        rule: None,
    }
}
