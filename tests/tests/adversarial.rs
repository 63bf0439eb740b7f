//! Adversarial end-to-end suite (issue 10): each case tries an attack on the real mesh in network
//! namespaces and asserts the safe outcome and that the proxy is still ready afterwards.

#[path = "adversarial/waypoint.rs"]
mod waypoint;
