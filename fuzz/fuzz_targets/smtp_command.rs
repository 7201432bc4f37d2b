//! Fuzz target: see `switchyard::fuzzing::smtp_command` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::smtp_command(data));
