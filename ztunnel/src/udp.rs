//! Carried UDP (`--carry-udp`): UDP between enrolled pods, encrypted, as CONNECT-UDP flows over
//! HBONE (`veil_mesh::hbone::udp`).
//!
//! Outbound: capture (`crate::capture`, mangle table) hands the pod's UDP to a transparent socket
//! on 15001 inside its namespace, with each datagram's original destination. A flow is one
//! (source, original destination) pair. Its first datagram decides its route: a mesh workload is
//! reached over HBONE with the pod's certificate, and so is a Service's address with one of its
//! UDP ports (one endpoint, picked on the flow's first datagram). Anything else — a destination
//! outside the mesh, behind a waypoint (an L7 proxy carries no UDP), a Service port that is not
//! UDP, or forbidden — is refused: the refusal is audited and the flow's datagrams are dropped for
//! a second. The flow's answers come back from a
//! transparent socket bound to the original destination and connected to the application, which
//! also receives the flow's later datagrams (the kernel prefers it to the shared socket). A flow
//! holds a permit of the pod's UDP-flow budget and ends after the idle timeout, or earlier to make
//! room for a new flow once it has been idle a second and the budget is full.
//!
//! Inbound: a `CONNECT-UDP` stream on the pod's HBONE listener is admitted like a TCP tunnel (the
//! pod's address, L4 policy with the destination port, the tunnel budget, live re-checks) and
//! relayed to the application from a marked socket inside the pod.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};
use veil_mesh::hbone::udp::{
    CAPSULE_PROTOCOL, DatagramStream, FlowEnd, MAX_PAYLOAD, connect_udp_request, parse_connect_udp,
    relay_datagrams,
};
use veil_mesh::hbone::{HBONE_PORT, InboundStream, TunnelMeta, refuse};
use veil_mesh::pool::PoolKey;
use veil_mesh::telemetry::audit::{AUDIT, SCHEMA};
use veil_mesh::telemetry::metrics::{
    Party, Protocol, Reporter, Resource, Security, ServiceLabel, TrafficLabels, WorkloadLabels,
};
use veil_mesh::telemetry::trace::Span;

use crate::accept;
use crate::admission::Admitted;
use crate::budget::Permit;
use crate::capture::{Family, OUTBOUND_PORT};
use crate::context::{Context, LocalWorkload, UnknownDestination};
use crate::inbound::{admit, destination_meter, log_finished};
use crate::outbound::{PodDialer, Route, Transport, route};

/// Datagrams of one flow queued on the shared socket before its own exists (or while its tunnel
/// opens); beyond, they are dropped, as a full socket buffer would.
const FLOW_QUEUE: usize = 64;

/// How long a refused flow's datagrams are dropped before its next datagram is decided again.
const REFUSAL_HOLD: Duration = Duration::from_secs(1);

/// How long a flow must have delivered nothing before a new flow of its pod may take its permit
/// when the pod's budget is full.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// A flow: the application's address and the original destination.
type FlowKey = (SocketAddr, SocketAddr);

/// A flow of the pod's, as its UDP task holds it.
struct Flow {
    /// Its datagrams not yet taken by its own socket.
    queue: mpsc::Sender<Bytes>,
    /// When it last delivered a datagram.
    activity: Arc<Activity>,
    /// Its task.
    task: AbortHandle,
    /// Its permit of the pod's UDP flows: held here, not in the task, so that ending the flow to
    /// make room frees the permit at once.
    _permit: Permit,
}

/// When a flow last delivered a datagram either way (or began).
#[derive(Debug)]
pub(crate) struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long it has been idle at `now`.
    fn idle(&self, now: Instant) -> Duration {
        let last = self.since + Duration::from_millis(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// Ends the pod's least recently active flow when its budget is full, if that flow has been idle
/// for [`EVICTABLE_AFTER`], so that a new flow can have its permit (as conntrack drops its oldest
/// entries when full): a client with a port per query (a DNS resolver library) would otherwise
/// hold its budget with finished queries until they time out.
#[derive(Debug, Default)]
struct Eviction {
    /// No flow can be evictable before then (the last scan found none idle long enough): a pod
    /// whose flows are all active, or a spray of new ones, costs no scan per refused datagram.
    not_before: Option<Instant>,
}

impl Eviction {
    /// Ends one of `flows` to make room; whether one was ended.
    fn make_room(&mut self, flows: &mut HashMap<FlowKey, Flow>) -> bool {
        let now = Instant::now();
        if self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        let idlest = flows
            .iter()
            .map(|(key, flow)| (flow.activity.idle(now), *key))
            .max();
        match idlest {
            Some((idle, key)) if idle >= EVICTABLE_AFTER => {
                if let Some(flow) = flows.remove(&key) {
                    flow.task.abort();
                    debug!(source = %key.0, destination = %key.1, ?idle, "idle UDP flow ended to make room");
                }
                self.not_before = None;
                true
            }
            // Idle times grow together, and activity and new flows only make them shorter.
            idlest => {
                let idle = idlest.map_or(Duration::ZERO, |(idle, _)| idle);
                self.not_before = Some(now + (EVICTABLE_AFTER - idle));
                false
            }
        }
    }
}

/// The transparent socket that receives the pod's captured UDP of `family`.
pub(crate) fn bind(local: &LocalWorkload, family: Family) -> io::Result<UdpSocket> {
    let any: IpAddr = match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    };
    local
        .netns
        .udp(SocketAddr::new(any, OUTBOUND_PORT), None, true)
}

/// Receives the pod's captured UDP until the task is aborted, one task per flow. The flows' tasks
/// belong to this one: when the pod is released (this task aborted), they end with it.
pub async fn run(ctx: Arc<Context>, local: Arc<LocalWorkload>, socket: UdpSocket) {
    let mut flows: HashMap<FlowKey, Flow> = HashMap::new();
    let mut tasks: JoinSet<FlowKey> = JoinSet::new();
    let mut eviction = Eviction::default();
    loop {
        let (payload, src, dst) = tokio::select! {
            Some(ended) = tasks.join_next() => {
                // Only the flow that ended: a new one may already have taken its key.
                if let Ok(key) = ended
                    && flows.get(&key).is_some_and(|flow| flow.queue.is_closed())
                {
                    flows.remove(&key);
                }
                continue;
            }
            received = recv_with_destination(&socket) => match received {
                Ok(received) => received,
                Err(e) => {
                    debug!(workload = %local.workload.key(), error = %e, "captured UDP without its original destination");
                    continue;
                }
            },
        };
        let payload = match flows.entry((src, dst)) {
            Entry::Occupied(flow) => match flow.get().queue.try_send(payload) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                Err(mpsc::error::TrySendError::Closed(payload)) => {
                    flow.remove();
                    payload
                }
            },
            Entry::Vacant(_) => payload,
        };
        let acquire = || ctx.budgets.acquire(&local.budget, Resource::UdpFlows);
        let permit = match acquire() {
            Ok(permit) => permit,
            Err(_) if eviction.make_room(&mut flows) => {
                ctx.metrics
                    .udp_flows_evicted
                    .get_or_create(&WorkloadLabels {
                        workload: local.workload.key(),
                    })
                    .inc();
                // The permit freed is the pod's and the node's (a flow holds one of each).
                match acquire() {
                    Ok(permit) => permit,
                    Err(refused) => {
                        accept::count_refusal(&ctx, &local, &refused);
                        continue;
                    }
                }
            }
            Err(refused) => {
                accept::count_refusal(&ctx, &local, &refused);
                continue;
            }
        };
        let (queue, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = queue.try_send(payload);
        let activity = Arc::new(Activity::new());
        let task = {
            let (ctx, local, activity) = (ctx.clone(), local.clone(), activity.clone());
            tasks.spawn(async move {
                outbound_flow(&ctx, &local, src, dst, rx, &activity).await;
                (src, dst)
            })
        };
        let flow = Flow {
            queue,
            activity,
            task,
            _permit: permit,
        };
        flows.insert((src, dst), flow);
    }
}

/// One datagram from the shared socket: its payload, its source and its original destination.
async fn recv_with_destination(socket: &UdpSocket) -> io::Result<(Bytes, SocketAddr, SocketAddr)> {
    socket
        .async_io(Interest::READABLE, || {
            // A buffer of the datagram's size, only while it is read: an idle pod holds none.
            let size = rustix::io::ioctl_fionread(socket)?;
            let mut buf = vec![0u8; (size as usize).min(MAX_PAYLOAD)];
            let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in6);
            let (n, src, dst) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<SockaddrStorage>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                let src = msg.address.as_ref().and_then(socket_addr);
                let dst = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
                    ControlMessageOwned::Ipv4OrigDstAddr(a) => Some(SocketAddr::new(
                        Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                        u16::from_be(a.sin_port),
                    )),
                    ControlMessageOwned::Ipv6OrigDstAddr(a) => Some(SocketAddr::new(
                        Ipv6Addr::from(a.sin6_addr.s6_addr).into(),
                        u16::from_be(a.sin6_port),
                    )),
                    _ => None,
                });
                (msg.bytes, src, dst)
            };
            match (src, dst) {
                (Some(src), Some(dst)) => Ok((Bytes::copy_from_slice(&buf[..n]), src, dst)),
                _ => Err(io::Error::other("no source or original destination")),
            }
        })
        .await
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::new(v4.ip().into(), v4.port()));
    }
    let v6 = addr.as_sockaddr_in6()?;
    (addr.family().is_some()).then(|| SocketAddr::new(v6.ip().into(), v6.port()))
}

/// A flow from `src` to `dst` (its first datagrams on `queued`): routed, then relayed until idle.
pub(crate) async fn outbound_flow(
    ctx: &Arc<Context>,
    local: &Arc<LocalWorkload>,
    src: SocketAddr,
    dst: SocketAddr,
    mut queued: mpsc::Receiver<Bytes>,
    activity: &Activity,
) {
    let state = ctx.state();
    // UDP leaves the mesh only where it is allowed out in clear (never captured): whatever the
    // setting for TCP, a destination outside the mesh is refused. A Service's address leads to one
    // of its endpoints by its UDP port, chosen on the flow's first datagram for the flow's life.
    let routed = route(
        &state,
        dst,
        Transport::Udp,
        UnknownDestination::Deny,
        ctx.next_endpoint(),
    );
    let (endpoint, target) = match routed {
        Route::Hbone { endpoint, target } => (endpoint, target),
        refused => {
            let reason = match refused {
                Route::Waypoint { .. } => {
                    "the destination is behind a waypoint, which carries no UDP".to_owned()
                }
                Route::Passthrough(_) => "the destination is not an enrolled workload".to_owned(),
                Route::Forbidden(_, why) => {
                    ctx.metrics
                        .forbidden_destinations
                        .get_or_create(&WorkloadLabels {
                            workload: local.workload.key(),
                        })
                        .inc();
                    why.to_string()
                }
                Route::Refuse(reason) => reason,
                Route::Hbone { .. } => unreachable!("matched above"),
            };
            warn!(target: AUDIT, audit = SCHEMA, event = "connection_refused", component = "ztunnel", protocol = "udp", source = %local.workload.key(), destination = %dst, %reason, "outbound UDP flow refused");
            return hold_refused(queued).await;
        }
    };
    let labels = TrafficLabels {
        reporter: Reporter::Source,
        source: local.party.clone(),
        destination: Party::of(&endpoint),
        service: ServiceLabel::for_udp_destination(&state, dst, Some(&endpoint)),
        protocol: Protocol::Udp,
        security: Security::MutualTls,
    };
    drop(state);
    let Some(src_ip) = local.address_for(target.ip()) else {
        warn!(source = %local.workload.key(), %target, "no source address of the destination's family");
        return hold_refused(queued).await;
    };
    // Answers leave from the original destination; the flow's next datagrams arrive here too.
    let reply = match local.netns.udp(dst, Some(src), true) {
        Ok(reply) => reply,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // The application holds the destination's port itself on every address (a
            // peer-to-peer protocol sending from port P to port P): answers cannot come from it.
            warn!(target: AUDIT, audit = SCHEMA, event = "connection_refused", component = "ztunnel", protocol = "udp", source = %local.workload.key(), destination = %dst, reason = "the application holds the destination's port itself: answers cannot be sent as the destination", "outbound UDP flow refused");
            return hold_refused(queued).await;
        }
        Err(e) => {
            warn!(source = %local.workload.key(), destination = %dst, error = %e, "cannot open the UDP flow's socket");
            return hold_refused(queued).await;
        }
    };
    let key = PoolKey {
        src: local.workload.identity.clone(),
        src_ip,
        dst: endpoint.identity.clone(),
        dst_addr: SocketAddr::new(target.ip(), HBONE_PORT),
    };
    let meta = TunnelMeta {
        forwarded_for: ctx.settings.send_forwarded.then_some(src_ip),
        traceparent: None,
        baggage: local.baggage.clone(),
    };
    let dialer = PodDialer {
        ctx,
        local,
        quic: true,
    };
    let request = || connect_udp_request(target, &meta);
    // Bounded: a destination that never answers must not hold the flow (and its permit) forever.
    let limit = ctx.settings.h2.handshake_timeout;
    let opened = tokio::time::timeout(limit, ctx.pool.open_with(&key, &request, &dialer, None));
    let (send, recv, _guard) = match opened.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            warn!(source = %key.src, destination = %key.dst, %target, error = %e, "UDP flow's tunnel failed");
            return hold_refused(queued).await;
        }
        Err(_) => {
            warn!(source = %key.src, destination = %key.dst, %target, "UDP flow's tunnel timed out");
            return hold_refused(queued).await;
        }
    };
    let mut stream = DatagramStream::new(send, recv);
    let meter = ctx.track_connection(labels);
    let relayed = relay_datagrams(
        &reply,
        &mut stream,
        Some(&mut queued),
        ctx.settings.udp_idle_timeout,
        |n| {
            activity.touch();
            meter.to_destination.inc_by(n as u64);
        },
        |n| {
            activity.touch();
            meter.to_source.inc_by(n as u64);
        },
    )
    .await;
    match relayed {
        Ok((moved, end)) => {
            if end == FlowEnd::Idle {
                stream.finish().await;
            }
            debug!(source = %key.src, destination = %key.dst, %target, sent = moved.to_stream, received = moved.to_socket, ?end, "outbound UDP flow complete");
        }
        Err(e) => {
            stream.abort();
            debug!(source = %key.src, destination = %key.dst, %target, error = %e, "outbound UDP flow aborted");
        }
    }
}

/// Drops a refused (or failed) flow's further datagrams for [`REFUSAL_HOLD`]: one decision, one
/// audit line and at most one tunnel attempt per flow and second, not per datagram. Not reset by
/// new datagrams, so a flow that keeps sending is decided again each time.
async fn hold_refused(mut queued: mpsc::Receiver<Bytes>) {
    let _ = tokio::time::timeout(REFUSAL_HOLD, async {
        while queued.recv().await.is_some() {}
    })
    .await;
}

/// A `CONNECT-UDP` stream to `local`: admitted like a TCP tunnel, then relayed to the application.
pub(crate) async fn inbound(
    ctx: Arc<Context>,
    local: Arc<LocalWorkload>,
    mut stream: InboundStream,
) {
    if !ctx.settings.udp.carry {
        // This node does not carry UDP: its pods receive none.
        return refuse(&mut stream.respond, StatusCode::NOT_IMPLEMENTED);
    }
    let target = match parse_connect_udp(&stream.request) {
        Ok(t) => t.target,
        Err(e) => {
            warn!(source = %stream.peer, workload = %local.workload.key(), error = %e, "malformed CONNECT-UDP request");
            return refuse(&mut stream.respond, StatusCode::BAD_REQUEST);
        }
    };
    if let Some(misdirected) = local.misdirected(target) {
        warn!(source = %stream.peer, workload = %local.workload.key(), %target, reason = misdirected, "CONNECT-UDP request for another destination");
        return refuse(&mut stream.respond, StatusCode::BAD_REQUEST);
    }
    let mut tracked = ctx.live.track(Admitted {
        workload_uid: local.workload.uid.clone(),
        source: Some(stream.peer.clone()),
        source_ip: stream.peer_addr.ip(),
        destination: target,
    });
    let (workload, policy) = match admit(&ctx, &local, &stream.peer, &tracked, &mut Span::none()) {
        Ok(admitted) => admitted,
        Err(status) => return refuse(&mut stream.respond, status),
    };
    let any: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let app = match local
        .netns
        .udp(SocketAddr::new(any, 0), Some(target), false)
    {
        Ok(app) => app,
        Err(e) => {
            warn!(source = %stream.peer, destination = %workload.key(), %target, error = %e, "cannot open a UDP socket to the application");
            return refuse(&mut stream.respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert(CAPSULE_PROTOCOL.clone(), HeaderValue::from_static("?1"));
    let Ok(send) = stream.respond.send_response(response).await else {
        return;
    };
    let meter = destination_meter(&ctx, &stream, &workload, target, Protocol::Udp);
    let mut flow = DatagramStream::new(send, stream.request.into_body());
    let started = tokio::time::Instant::now();
    let relayed = tokio::select! {
        relayed = relay_datagrams(
            &app,
            &mut flow,
            None,
            ctx.settings.udp_idle_timeout,
            |n| {
            meter.to_source.inc_by(n as u64);
        },
            |n| {
            meter.to_destination.inc_by(n as u64);
        },
        ) => relayed,
        closing = tracked.closed() => {
            flow.abort();
            return crate::conntrack::report_closed(&ctx.metrics, &tracked, &closing, &workload);
        }
    };
    let moved = match relayed {
        Ok((moved, end)) => {
            if end == FlowEnd::Idle {
                flow.finish().await;
            }
            Ok((moved.to_socket, moved.to_stream))
        }
        Err(e) => {
            flow.abort();
            Err(e.to_string())
        }
    };
    log_finished(
        &ctx,
        tracked.admitted(),
        &stream.peer,
        &workload,
        policy.as_ref(),
        moved,
        started.elapsed().as_millis() as u64,
        "udp",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Budgets, Limits, PodBudget};
    use veil_mesh::telemetry::metrics::Metrics;

    /// A full pod gives a newcomer the permit of its flow idle the longest, only once that flow
    /// has been idle for [`EVICTABLE_AFTER`]; the permit is back at once, and the flow's task ends.
    /// Until a flow can have become evictable, the flows are not scanned again.
    #[tokio::test(start_paused = true)]
    async fn the_flow_idle_longest_makes_room_once_idle_a_second() {
        let limits = Limits {
            node: [10; 6],
            pod: [3; 6],
            pipes: 0,
            pipe_capacity: 0,
        };
        let budgets = Budgets::new(limits, &Metrics::new());
        let pod = PodBudget::default();
        let mut tasks = JoinSet::new();
        let mut flows = HashMap::new();
        let mut activities = Vec::new();
        for (i, after) in [0, 500, 700].into_iter().enumerate() {
            tokio::time::advance(Duration::from_millis(after)).await;
            let activity = Arc::new(Activity::new());
            activities.push(activity.clone());
            let key: FlowKey = (
                SocketAddr::from(([10, 0, 0, 1], 40_000 + i as u16)),
                SocketAddr::from(([10, 0, 0, 2], 53)),
            );
            let (queue, _) = mpsc::channel(1);
            flows.insert(
                key,
                Flow {
                    queue,
                    activity,
                    task: tasks.spawn(std::future::pending::<()>()),
                    _permit: budgets.acquire(&pod, Resource::UdpFlows).unwrap(),
                },
            );
        }
        // The first flow delivers a datagram: the second is now the idlest.
        activities[0].touch();
        assert!(budgets.acquire(&pod, Resource::UdpFlows).is_err());
        let mut eviction = Eviction::default();
        // Idle 700 ms at most: none is ended, and none can be for 300 ms.
        let scanned = Instant::now();
        assert!(!eviction.make_room(&mut flows));
        assert_eq!(
            eviction.not_before,
            Some(scanned + Duration::from_millis(300))
        );
        tokio::time::advance(Duration::from_millis(299)).await;
        assert!(!eviction.make_room(&mut flows));
        assert_eq!(
            eviction.not_before,
            Some(scanned + Duration::from_millis(300)),
            "not scanned again"
        );
        tokio::time::advance(Duration::from_millis(101)).await;
        // The second, idle 1.1 s, goes (the first and third: 0.4 s and 0.4 s).
        assert!(eviction.make_room(&mut flows));
        assert_eq!(flows.len(), 2);
        assert!(
            !flows.keys().any(|(src, _)| src.port() == 40_001),
            "the idlest flow ended"
        );
        let permit = budgets.acquire(&pod, Resource::UdpFlows);
        assert!(permit.is_ok(), "its permit is back at once");
        assert!(tasks.join_next().await.unwrap().unwrap_err().is_cancelled());
        assert!(
            !eviction.make_room(&mut flows),
            "the others are not idle long enough"
        );
    }

    /// The transparent socket of either family reports each datagram's source and destination
    /// (here the socket's own address: without TPROXY the original destination is the real one).
    #[tokio::test]
    async fn the_transparent_socket_reads_source_and_destination_in_both_families() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: transparent sockets need root (CAP_NET_ADMIN)");
            return;
        }
        crate::netns::init().unwrap();
        let here = crate::netns::NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        for loopback in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let socket = here.udp(SocketAddr::new(loopback, 0), None, true).unwrap();
            let addr = socket.local_addr().unwrap();
            let client = UdpSocket::bind(SocketAddr::new(loopback, 0)).await.unwrap();
            client.send_to(b"datagram", addr).await.unwrap();
            let (payload, src, dst) =
                tokio::time::timeout(Duration::from_secs(5), recv_with_destination(&socket))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(&payload[..], b"datagram");
            assert_eq!(src, client.local_addr().unwrap());
            assert_eq!(dst, addr);
            // A second socket may bind the same address (one per flow to a destination), and
            // answers from it.
            let reply = here.udp(addr, Some(src), true).unwrap();
            reply.send(b"answer").await.unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&b"answer"[..], addr));
        }
    }
}
