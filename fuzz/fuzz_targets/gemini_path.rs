//! See `keyplane_dataplane::fuzzing::gemini_path` for the input and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyplane_dataplane::fuzzing::gemini_path(data));
