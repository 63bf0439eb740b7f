//! Adversarial end-to-end suite (issue 10): veil attacked as a hostile tenant would, on the real mesh
//! in network namespaces. Every case asserts the safe outcome and that the proxy is still ready
//! afterwards. One module per area of attack.

mod budgets;
mod bypass;
mod capture;
mod hbone;
mod ipv6;
mod live;
mod quic;
mod udp;
mod waypoint;

use std::time::Duration;

use veil_e2e::mesh::Mesh;

/// How long a change may take to settle (a new state applied, a flood let go).
const SETTLE: Duration = Duration::from_secs(10);

/// Applies `policies` and waits until node-b's ztunnel has applied them (a new state published).
fn apply(m: &mut Mesh, policies: &str) {
    let applied = |m: &Mesh| {
        m.ztunnel_log("node-b")
            .matches("applied new mesh configuration")
            .count()
    };
    let before = applied(m);
    m.set_policies(policies).unwrap();
    assert!(
        m.eventually(SETTLE, || applied(m) > before),
        "node-b never applied the new policies:\n{}",
        m.ztunnel_log("node-b")
    );
}
