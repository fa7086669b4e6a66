//! See `keyplane_dataplane::fuzzing::gemini_stream` for the input and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyplane_dataplane::fuzzing::gemini_stream(data));
