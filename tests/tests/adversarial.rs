//! Adversarial end-to-end suite: attacks on veil's promise (no plaintext, no bypass, fail closed)
//! run on the network-namespace harness; every case asserts the safe outcome and that the proxies
//! stay ready. One module per class of attack.

#[path = "adversarial/bypass.rs"]
mod bypass;
