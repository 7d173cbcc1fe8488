//! The invariants the fuzz targets in `fuzz/` check, kept in the library so that a plain
//! `cargo test` replays exactly the same checks over the committed seed corpus and every crash
//! the fuzzer found (`tests/api/fuzz_regressions.rs`). Each check takes the fuzzer's raw bytes
//! and panics when an invariant breaks: the panic is the finding. Not an API (hidden from the
//! docs); see docs/fuzzing.md for how to run the fuzzer.
//!
//! The invariants, across targets: nothing panics on any input; a body the envelope accepts is
//! one `serde_json::Value` reads too (what consumers use), and it round-trips through the spool
//! record and segment code byte for byte; encoders refuse what they cannot represent; damage in
//! a spool directory is reported or quarantined, never a panic; a configuration error names its
//! key (or its place in the TOML); trace context headers keep only what the spool and the
//! queues can carry.

mod config;
mod envelope;
mod spool;
mod trace;

pub use config::config_load;
pub use envelope::{accepted, envelope_parse, envelope_structured};
pub use spool::{record_decode, segment_scan, spool_recovery, trace_for};
pub use trace::trace_context;

/// A fuzz target's check, by the name of its target (and of its corpus directories).
pub type Check = fn(&[u8]);

/// Every fuzz target and the check it runs.
pub const TARGETS: &[(&str, Check)] = &[
    ("envelope_parse", envelope_parse),
    ("envelope_structured", envelope_structured),
    ("record_decode", record_decode),
    ("segment_scan", segment_scan),
    ("spool_recovery", spool_recovery),
    ("config_load", config_load),
    ("trace_context", trace_context),
];

/// The check of the target named `name`.
pub fn check(name: &str) -> Option<Check> {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, check)| *check)
}
