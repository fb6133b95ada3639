#![no_main]
//! Fuzz target `report_decode`: the invariants are in `canary_fuzz_checks::check_report_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| canary_fuzz_checks::check_report_decode(data));
