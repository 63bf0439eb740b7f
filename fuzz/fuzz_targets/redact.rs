//! The waypoint access log's query redaction (`AccessLog::redact_query`): never panics, keeps every
//! separator where it was, and never lets through the value of a parameter whose name, decoded as an
//! application decodes it (`form_urlencoded`, an implementation independent of the waypoint's),
//! is a redacted one — whatever the spelling of the name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_waypoint::access_log::{AccessLog, DEFAULT_REDACTED_PARAMS, Level};

/// A configured parameter on top of the defaults.
const CONFIGURED: &str = "session";

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let log = AccessLog::new(Level::Full, Vec::new(), &[], vec![CONFIGURED.to_owned()]);
    let redacted = log.redact_query(query);
    let is_separator = |c: char| c == '&' || c == ';';
    let separators = |s: &str| s.chars().filter(|&c| is_separator(c)).collect::<String>();
    assert_eq!(separators(query), separators(&redacted), "separators moved");
    for (pair, out) in query.split(is_separator).zip(redacted.split(is_separator)) {
        if out == "REDACTED" {
            continue;
        }
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (pair, None),
        };
        let decoded: String = form_urlencoded::parse(name.as_bytes())
            .map(|(k, _)| k.into_owned())
            .collect();
        let secret = DEFAULT_REDACTED_PARAMS
            .iter()
            .chain(&[CONFIGURED])
            .any(|p| p.eq_ignore_ascii_case(&decoded.to_lowercase()));
        match value {
            Some(_) if secret => assert_eq!(out, format!("{name}=REDACTED"), "{pair:?} leaked"),
            _ => assert_eq!(out, pair, "{pair:?} changed though it holds no secret"),
        }
    }
});
