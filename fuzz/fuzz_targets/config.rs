//! Fuzz target: see `switchyard::fuzzing::config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::config(data));
