//! Adversarial end-to-end cases (issue 10): each tries one attack on the real mesh in network
//! namespaces, asserts the safe outcome, and that the proxies are still ready afterwards.

#[path = "adversarial/capture.rs"]
mod capture;
