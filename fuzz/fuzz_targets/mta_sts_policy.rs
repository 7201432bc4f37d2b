//! Fuzz target: see `switchyard::fuzzing::mta_sts_policy` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::mta_sts_policy(data));
