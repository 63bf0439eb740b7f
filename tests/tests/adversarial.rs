//! Adversarial end-to-end tests: veil attacked as an attacker would, on the network-namespace
//! harness. Every case asserts the safe outcome and that the proxy is still ready afterwards.

// The crate root is tests/adversarial.rs, so its modules are found by explicit path.
#[path = "adversarial/budgets.rs"]
mod budgets;
