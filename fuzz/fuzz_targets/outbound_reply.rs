//! Fuzz target: see `switchyard::fuzzing::outbound_reply` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzzing::outbound_reply(data));
