//! The waypoint's protocol sniffing (`veil_waypoint::sniff::classify`) on the first bytes of a
//! tunnel: never panics, and never asks for more than `MAX_SNIFF` bytes (a classifier that kept
//! asking would stall the connection and hold its buffer).

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_waypoint::sniff::{MAX_SNIFF, Protocol, classify};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let verdict = classify(data);
    if verdict == Some(Protocol::Http2) {
        assert!(data.starts_with(H2_PREFACE));
    }
    if data.len() >= MAX_SNIFF {
        assert!(verdict.is_some(), "undecided after {} bytes", data.len());
    }
    // An undecided start followed by filler up to the limit must be decided: the waypoint reads at
    // most MAX_SNIFF bytes before it has to choose.
    if verdict.is_none() {
        let mut padded = data.to_vec();
        padded.resize(MAX_SNIFF, data.last().copied().unwrap_or(b' '));
        assert!(classify(&padded).is_some(), "undecided at the limit");
    }
});
