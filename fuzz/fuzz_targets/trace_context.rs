//! Fuzz target `trace_context`: the check lives in the library (`dataloy_gateway::fuzzing::trace_context`) so that
//! `cargo test` replays it over the corpus and the regressions (tests/api/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dataloy_gateway::fuzzing::trace_context(data));
