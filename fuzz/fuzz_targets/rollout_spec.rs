#![no_main]
//! Fuzz target `rollout_spec`: the invariants are in `canary_fuzz_checks::check_rollout_spec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| canary_fuzz_checks::check_rollout_spec(data));
