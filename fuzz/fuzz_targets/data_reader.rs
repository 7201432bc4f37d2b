//! Fuzz target: see `switchyard::fuzzing::data_reader` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::data_reader(data));
