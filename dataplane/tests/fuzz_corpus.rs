//! The fuzz targets' inputs replayed on stable: every seed and corpus file of `fuzz/`, then a few
//! thousand seeded mutations of them, through the very harnesses the fuzzer runs
//! (`keyplane_dataplane::fuzzing`). A change that breaks a parser's invariant fails here, in
//! `cargo test`, without nightly.

use keyplane_dataplane::fuzzing;
use keyplane_testkit::fuzz_replay::{fuzz_dir, replay, targets_calling};

/// Mutated inputs per target: enough to leave the corpus, little enough for a debug build
/// (about a second per target).
const RANDOM_CASES: usize = 2000;

#[test]
fn sse_splitter() {
    replay("sse_splitter", fuzzing::sse_splitter, RANDOM_CASES);
}

#[test]
fn openai_request() {
    replay("openai_request", fuzzing::openai_request, RANDOM_CASES);
}

#[test]
fn anthropic_request() {
    replay(
        "anthropic_request",
        fuzzing::anthropic_request,
        RANDOM_CASES,
    );
}

#[test]
fn upstream_body() {
    replay("upstream_body", fuzzing::upstream_body, RANDOM_CASES);
}

#[test]
fn openai_stream() {
    replay("openai_stream", fuzzing::openai_stream, RANDOM_CASES);
}

#[test]
fn anthropic_stream() {
    replay("anthropic_stream", fuzzing::anthropic_stream, RANDOM_CASES);
}

#[test]
fn responses_request() {
    replay(
        "responses_request",
        fuzzing::responses_request,
        RANDOM_CASES,
    );
}

#[test]
fn responses_stream() {
    replay("responses_stream", fuzzing::responses_stream, RANDOM_CASES);
}

#[test]
fn gemini_request() {
    replay("gemini_request", fuzzing::gemini_request, RANDOM_CASES);
}

#[test]
fn gemini_stream() {
    replay("gemini_stream", fuzzing::gemini_stream, RANDOM_CASES);
}

#[test]
fn embeddings_request() {
    replay(
        "embeddings_request",
        fuzzing::embeddings_request,
        RANDOM_CASES,
    );
}

#[test]
fn embeddings_answer() {
    replay(
        "embeddings_answer",
        fuzzing::embeddings_answer,
        RANDOM_CASES,
    );
}

#[test]
fn spool_segment() {
    replay("spool_segment", fuzzing::spool_segment, RANDOM_CASES);
}

#[test]
fn gemini_path() {
    replay("gemini_path", fuzzing::gemini_path, RANDOM_CASES);
}

/// Every fuzz target that calls into this crate is replayed above (by its harness table), so a
/// new target cannot go without its stable replay.
#[test]
fn every_dataplane_fuzz_target_is_replayed() {
    let mut known: Vec<String> = fuzzing::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    known.sort();
    assert_eq!(
        targets_calling("keyplane_dataplane::fuzzing::"),
        known,
        "fuzz targets in {}",
        fuzz_dir().join("fuzz_targets").display()
    );
}
