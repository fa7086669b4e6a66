//! See `keyplane_control::fuzzing::price_import` for the input and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyplane_control::fuzzing::price_import(data));
