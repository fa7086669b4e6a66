//! The price-import fuzz target's inputs replayed on stable: every seed and corpus file of
//! `fuzz/`, then a few thousand seeded mutations, through the harness the fuzzer runs
//! (`keyplane_control::fuzzing`).

use keyplane_control::fuzzing;
use keyplane_testkit::fuzz_replay::{fuzz_dir, replay};

#[test]
fn price_import() {
    replay("price_import", fuzzing::price_import, 2000);
}

/// Every fuzz target that calls into this crate is replayed above.
#[test]
fn every_control_fuzz_target_is_replayed() {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        if source.contains("keyplane_control::fuzzing::") {
            found.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    let known: Vec<String> = fuzzing::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(found, known, "fuzz targets in {}", dir.display());
}
