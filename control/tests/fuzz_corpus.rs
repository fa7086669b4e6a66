//! The price-import fuzz target's inputs replayed on stable: every seed and corpus file of
//! `fuzz/`, then a few thousand seeded mutations, through the harness the fuzzer runs
//! (`keyplane_control::fuzzing`).

use keyplane_control::fuzzing;
use keyplane_testkit::fuzz_replay::{fuzz_dir, replay, targets_calling};

#[test]
fn price_import() {
    replay("price_import", fuzzing::price_import, 2000);
}

/// Every fuzz target that calls into this crate is replayed above.
#[test]
fn every_control_fuzz_target_is_replayed() {
    let mut known: Vec<String> = fuzzing::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    known.sort();
    assert_eq!(
        targets_calling("keyplane_control::fuzzing::"),
        known,
        "fuzz targets in {}",
        fuzz_dir().join("fuzz_targets").display()
    );
}
