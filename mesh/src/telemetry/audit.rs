//! The audit stream: one tracing target for every decision an operator must be able to account
//! for — connections and requests denied, certificates issued or refused, policies accepted,
//! rejected or removed, pods enrolled or released — whichever component took it. Every line carries
//! `audit` (the schema version) and `event`; the fields of each event are listed in
//! docs/observability.md and only ever added to within a version.

/// The tracing target of audit lines.
pub const AUDIT: &str = "veil::audit";

/// The schema version every audit line carries in its `audit` field.
pub const SCHEMA: &str = "v1";
