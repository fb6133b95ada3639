#![no_main]
//! Fuzz target `histogram`: the invariants are in `canary_fuzz_checks::check_histogram`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| canary_fuzz_checks::check_histogram(data));
