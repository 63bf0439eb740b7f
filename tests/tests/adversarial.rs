//! Adversarial end-to-end cases (issue 10): each tries an attack on the real binaries in network
//! namespaces, asserts the safe outcome and that the proxy is still ready afterwards. One module
//! per area, under `adversarial/` (a test crate root resolves `mod x;` next to itself, hence the
//! paths).

#[path = "adversarial/live.rs"]
mod live;
