//! Adversarial end-to-end suite (issue 10): veil attacked as a hostile tenant would, on the real mesh
//! in network namespaces. Every case asserts the safe outcome and that the proxy is still ready
//! afterwards. One module per area of attack.

mod budgets;
mod bypass;
mod capture;
mod hbone;
mod live;
mod waypoint;
