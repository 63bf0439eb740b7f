//! veil's command line: `veil explain`, `veil check`, `veil config`, `veil policy convert` (see
//! docs/cli.md).

pub mod check;
pub mod config;
pub mod convert;
pub mod explain;
pub mod live;
pub mod mesh_file;

use std::fmt::Write as _;

use explain::Answer;

/// The answer as people read it: one block per endpoint, one line per hop, the verdict last.
pub fn table(answer: &Answer) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "source:      {}", answer.source);
    let _ = writeln!(out, "destination: {}", answer.destination);
    for path in &answer.paths {
        let _ = writeln!(
            out,
            "\nendpoint {}:",
            path.endpoint.as_deref().unwrap_or("(none chosen)")
        );
        for hop in &path.hops {
            let decided = match (&hop.policy, hop.rule) {
                (Some(p), Some(r)) => format!(" [{p}, rule {r}]"),
                (Some(p), None) => format!(" [{p}]"),
                _ => String::new(),
            };
            let verdict = if hop.allowed { "ALLOW" } else { "DENY " };
            let _ = writeln!(out, "  {verdict} at {}{decided}: {}", hop.at, hop.reason);
        }
    }
    let verdict = if answer.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(out, "\n{verdict}");
    out
}
