//! Resource budgets: how many connections of each kind may be open at once, on the whole node and
//! for one pod.
//!
//! Every accepted connection holds descriptors (its own, and usually one to the application or the
//! destination) until it ends; a TLS handshake may hold one for the whole handshake timeout. A busy
//! or hostile pod must not be able to spend the node's descriptor budget on them, or every other
//! pod's traffic fails with it. So each connection takes a [`Permit`] from its pod's budget and the
//! node's before it is handled; when either is spent the connection is refused at once (reset, or
//! 503 for a tunnel) — never queued — and counted in `veil_connections_refused_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::{info, warn};

use veil_mesh::relay::Pipes;
use veil_mesh::telemetry::metrics::{
    Gauge, Metrics, RefusalLabels, RefusalReason, Resource, ResourceLabels,
};

/// Limits of each [`Resource`], indexed by [`Resource::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// For the whole node.
    pub node: [usize; 6],
    /// For one pod.
    pub pod: [usize; 6],
    /// Pipes the plaintext relays (the same-node path, passthrough, PERMISSIVE) may splice
    /// through at once, for the whole node; two descriptors each. With none left a relay copies
    /// through a buffer instead: a pod using them all slows others' relays, never refuses them.
    pub pipes: usize,
    /// Bytes each pipe is asked to hold (0: the kernel's default, 64 KiB).
    pub pipe_capacity: usize,
}

/// Descriptors kept aside from the budgets for everything else: listeners, pooled HBONE client
/// connections, namespaces, the API and CA clients, metrics scrapes.
fn reserve(nofile: usize) -> usize {
    (nofile / 16).max(256)
}

/// The most pipes by default. A pipe holds up to its capacity of a connection's bytes that no
/// socket's buffer accounting covers any more (a destination that does not read keeps them there):
/// together at most `MOST_PIPES × PIPE_CAPACITY` (64 MiB) of kernel memory.
const MOST_PIPES: usize = 64;

/// What each pipe is asked to hold by default: with the kernel's 64 KiB, the same-node path moved
/// less on one stream than copying did; with 1 MiB, as much at half the CPU (docs/benchmarks.md).
pub const PIPE_CAPACITY: usize = 1 << 20;

/// Descriptors one unit of `resource` holds (a handshake's is counted by its HBONE connection).
pub fn descriptors(resource: Resource) -> usize {
    match resource {
        Resource::TlsHandshakes => 0,
        // A UDP flow's own socket (its stream shares a pooled HBONE connection).
        Resource::HboneConnections | Resource::InboundTunnels | Resource::UdpFlows => 1,
        Resource::OutboundConnections | Resource::PlaintextConnections => 2,
    }
}

impl Limits {
    /// Defaults for a process allowed `nofile` descriptors: at full use they hold at most twelve
    /// sixteenths of what is left after the reserve (HBONE connections 1/8, tunnels 1/4, outbound
    /// and plaintext 1/16 each at two descriptors apiece, UDP flows 1/16 at one, pipes 1/32 at two
    /// apiece, and no more than [`MOST_PIPES`]); a pod may take at most a quarter of each kind.
    pub fn for_nofile(nofile: usize) -> Self {
        let usable = nofile.saturating_sub(reserve(nofile));
        let hbone = usable / 8;
        let node = [
            hbone,
            // Handshakes are the cheapest to hold open for an attacker (no certificate needed).
            hbone / 4,
            usable / 4,
            usable / 16,
            usable / 16,
            usable / 16,
        ];
        Self {
            node: node.map(|n| n.max(1)),
            pod: node.map(|n| (n / 4).max(1)),
            pipes: (usable / 32).min(MOST_PIPES),
            pipe_capacity: PIPE_CAPACITY,
        }
    }

    /// The descriptors the node-wide limits may hold at once.
    pub fn descriptors(&self) -> usize {
        Resource::ALL
            .iter()
            .map(|r| self.node[r.index()] * descriptors(*r))
            .sum::<usize>()
            + self.pipes * 2
    }

    /// Whether the node-wide limits fit in `nofile` descriptors with the reserve kept aside.
    pub fn fit(&self, nofile: usize) -> bool {
        self.descriptors() <= nofile.saturating_sub(reserve(nofile))
    }
}

/// A pod's share: what its connections hold now.
#[derive(Debug, Default)]
pub struct PodBudget {
    in_use: [Arc<AtomicUsize>; 6],
}

/// The node's budgets.
#[derive(Debug)]
pub struct Budgets {
    /// The pipes relays splice through, within [`Limits::pipes`].
    pub pipes: Pipes,
    limits: Limits,
    in_use: [Arc<AtomicUsize>; 6],
    gauges: [Gauge; 6],
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The node-wide limit is reached.
    #[error("node-wide limit of {limit} {} reached", resource.as_str())]
    Node {
        /// The resource.
        resource: Resource,
        /// Its limit.
        limit: usize,
    },
    /// The pod's limit is reached.
    #[error("per-pod limit of {limit} {} reached", resource.as_str())]
    Pod {
        /// The resource.
        resource: Resource,
        /// Its limit.
        limit: usize,
    },
}

impl Refused {
    /// The metric's reason label.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Self::Node { .. } => RefusalReason::NodeLimit,
            Self::Pod { .. } => RefusalReason::PodLimit,
        }
    }

    /// The exhausted resource.
    pub fn resource(&self) -> Resource {
        match self {
            Self::Node { resource, .. } | Self::Pod { resource, .. } => *resource,
        }
    }
}

/// One unit of a resource, held from a pod's budget and the node's; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    node: Arc<AtomicUsize>,
    pod: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.node.fetch_sub(1, Ordering::AcqRel);
        self.pod.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Takes one unit of `counter` if it holds fewer than `limit`.
fn take(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl Budgets {
    /// Budgets with `limits`, reporting their use in `metrics`.
    pub fn new(limits: Limits, metrics: &Metrics) -> Self {
        let gauges = Resource::ALL.map(|resource| {
            metrics
                .resource_in_use
                .get_or_create_owned(&ResourceLabels { resource })
        });
        Self {
            pipes: Pipes::new(limits.pipes).with_capacity(limits.pipe_capacity),
            limits,
            in_use: Default::default(),
            gauges,
        }
    }

    /// Connections open now on the whole node (HBONE, outbound and plaintext inbound): what a
    /// draining ztunnel waits for.
    pub fn connections(&self) -> usize {
        [
            Resource::HboneConnections,
            Resource::OutboundConnections,
            Resource::PlaintextConnections,
        ]
        .iter()
        .map(|r| self.in_use[r.index()].load(Ordering::Acquire))
        .sum()
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One unit of `resource` for `pod`, unless its limit or the node's is reached.
    pub fn acquire(&self, pod: &PodBudget, resource: Resource) -> Result<Permit, Refused> {
        let i = resource.index();
        // The pod's own limit first: a pod at its limit must not hold node units even briefly.
        if !take(&pod.in_use[i], self.limits.pod[i]) {
            let limit = self.limits.pod[i];
            return Err(Refused::Pod { resource, limit });
        }
        if !take(&self.in_use[i], self.limits.node[i]) {
            pod.in_use[i].fetch_sub(1, Ordering::AcqRel);
            let limit = self.limits.node[i];
            return Err(Refused::Node { resource, limit });
        }
        self.gauges[i].inc();
        Ok(Permit {
            node: self.in_use[i].clone(),
            pod: pod.in_use[i].clone(),
            gauge: self.gauges[i].clone(),
        })
    }

    /// Counts a refusal of `refused` for `workload` (`namespace/name`).
    pub fn count(&self, metrics: &Metrics, refused: &Refused, workload: String) {
        let resource = refused.resource();
        metrics
            .connections_refused
            .get_or_create(&RefusalLabels {
                direction: resource.direction(),
                resource,
                reason: refused.reason(),
                workload,
            })
            .inc();
    }
}

/// Raises the soft limit of open descriptors to the hard limit (the most the process may ask for
/// without privilege) and returns the limit in force, logging both.
pub fn raise_nofile() -> usize {
    use nix::sys::resource::{Resource as Rlimit, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Rlimit::RLIMIT_NOFILE) else {
        warn!("cannot read RLIMIT_NOFILE; assuming 1024 descriptors");
        return 1024;
    };
    let effective = match setrlimit(Rlimit::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            warn!(soft, hard, error = %e, "cannot raise the soft descriptor limit to the hard one");
            soft
        }
    };
    info!(soft, hard, effective, "descriptor limit (RLIMIT_NOFILE)");
    usize::try_from(effective).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
