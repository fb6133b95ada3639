#![no_main]
//! Fuzz target `weights_decode`: the invariants are in `canary_fuzz_checks::check_weights_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| canary_fuzz_checks::check_weights_decode(data));
