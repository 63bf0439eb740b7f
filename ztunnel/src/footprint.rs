//! The memory a connection costs ztunnel, bounded at compile time: every proxied connection is one
//! task per side whose future is allocated whole when the task is spawned, so its size is paid by
//! every open connection, idle or not. Buffers are not in these futures (they are taken only while
//! data flows); an `async fn` that grows past these bounds has started keeping something large
//! across an `.await`.

use std::future::Future;
use std::mem::size_of;

/// The size of the future `f` returns, without calling it.
fn future_size<A, B, C, F: Future>(_f: impl Fn(A, B, C) -> F) -> usize {
    size_of::<F>()
}

/// [`future_size`] of a four-argument `f`.
fn future_size4<A, B, C, D, F: Future>(_f: impl Fn(A, B, C, D) -> F) -> usize {
    size_of::<F>()
}

/// Bytes of one tunnel's task future (out of the 8 KiB per connection the whole of ztunnel may spend
/// on it, kernel socket buffers aside). 2 KiB until every tunnel also carried its connection-budget
/// permit and its live re-check registration (the wait for a close); those cost ≈50 bytes, and the
/// budget grew by 128 to hold them, not more. Another 128 since reads wait for the kernel's next
/// event after a short read, with a timer for bytes behind TCP urgent data (`veil_mesh`'s reader:
/// the inbound tunnel's future went from 2,136 bytes to 2,280, the outbound's from 2,048 to 2,128,
/// a plaintext connection's from 1,408 to 1,632).
const TUNNEL_BUDGET: usize = 2048 + 128 + 128;

/// Bytes of one carried UDP flow's task future (either side): a tunnel's before the reader's timer
/// (UDP flows read no application socket that way) and 128 more for the flow's idle clock and its
/// two directions' counters (2,216 bytes at the destination when set).
const UDP_FLOW_BUDGET: usize = 2048 + 128 + 128;

/// Bytes of one HBONE connection's task future, shared by all the tunnels it carries.
const HBONE_CONNECTION_BUDGET: usize = 4096;

/// [`future_size`] of a six-argument `f`.
fn future_size6<A, B, C, D, E, G, F: Future>(_f: impl Fn(A, B, C, D, E, G) -> F) -> usize {
    size_of::<F>()
}

#[test]
fn the_per_connection_futures_fit_their_budgets() {
    let tasks = [
        (
            "outbound tunnel (source side)",
            future_size4(crate::outbound::handle),
            TUNNEL_BUDGET,
        ),
        (
            "inbound tunnel (destination side)",
            future_size(crate::inbound::tunnel),
            TUNNEL_BUDGET,
        ),
        (
            "plaintext connection",
            future_size4(crate::plaintext::handle),
            TUNNEL_BUDGET,
        ),
        (
            "UDP flow (destination side)",
            future_size(crate::udp::inbound),
            UDP_FLOW_BUDGET,
        ),
        (
            "UDP flow (source side)",
            future_size6(crate::udp::outbound_flow),
            UDP_FLOW_BUDGET,
        ),
        (
            "inbound HBONE connection",
            future_size4(crate::inbound::connection),
            HBONE_CONNECTION_BUDGET,
        ),
    ];
    let over: Vec<String> = tasks
        .iter()
        .filter(|(_, size, budget)| size > budget)
        .map(|(what, size, budget)| format!("the {what} future is {size} bytes, over its {budget}"))
        .collect();
    assert!(over.is_empty(), "{over:#?}");
}
