//! Fuzz target `envelope_structured`: the check lives in the library (`dataloy_gateway::fuzzing::envelope_structured`) so that
//! `cargo test` replays it over the corpus and the regressions (tests/api/fuzz_regressions.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dataloy_gateway::fuzzing::envelope_structured(data));
