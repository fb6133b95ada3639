#![no_main]
//! Fuzz target `filter_config`: the invariants are in `canary_fuzz_checks::check_filter_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| canary_fuzz_checks::check_filter_config(data));
