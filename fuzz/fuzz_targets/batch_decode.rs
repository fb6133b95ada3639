#![no_main]
//! Fuzz target `batch_decode`: the invariants are in `canary_fuzz_checks::check_batch_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| canary_fuzz_checks::check_batch_decode(data));
