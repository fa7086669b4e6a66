//! Fuzz harness for the price-file import: the body of the `price_import` target in the
//! repository's `fuzz/` crate, with the invariants it checks.
//!
//! It lives in the library so that the stable replay test (`tests/fuzz_corpus.rs`) runs literally
//! the code the fuzzer ran. The harness panics (an `assert!`) when an invariant breaks.
//!
//! Not part of the control plane's API: hidden from the docs and used only by the fuzz target
//! and that test.

// A harness exists to panic when an invariant breaks: that is how libFuzzer and the replay test
// see a failure. Nothing in the server calls these functions.
#![allow(clippy::panic)]

use crate::price_import::{self, Parsed};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

const TODAY: &str = "2026-01-02";

/// Whether `s` is `YYYY-MM-DD` in digits.
fn is_date(s: &str) -> bool {
    s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// Every entry of a parse that succeeded is a price the catalog can take.
fn check_entries(parsed: &Parsed, provider: &str) {
    assert!(is_date(&parsed.as_of), "as_of {:?}", parsed.as_of);
    for e in &parsed.entries {
        assert!(!e.model.is_empty(), "an entry without a model");
        assert!(
            !e.model.contains(char::is_whitespace),
            "model {:?} is not an id",
            e.model
        );
        assert!(!e.provider.is_empty(), "an entry without a provider");
        if !provider.is_empty() {
            assert_eq!(
                e.provider, provider,
                "--provider names every entry's provider"
            );
        }
        let c = &e.price.currency;
        assert!(
            c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()),
            "currency {c:?}"
        );
        assert!(
            e.price
                .tiers
                .windows(2)
                .all(|w| w[0].min_prompt_tokens <= w[1].min_prompt_tokens),
            "tiers must be sorted by prompt size"
        );
    }
}

/// A price file's bytes: [`price_import::parse`], with and without `--provider`.
///
/// - All or nothing: an error, or every entry of the file accounted for and valid. A
///   Keyplane-format file yields exactly one entry per element of `prices`; a LiteLLM file's
///   entries plus its skipped ones (and `sample_spec`) are exactly its top-level keys. Every entry
///   has a model id (not empty, no whitespace), a provider, a 3-letter currency and tiers sorted
///   by prompt size.
/// - An error says that nothing was imported, or where the JSON broke.
pub fn price_import(input: &[u8]) {
    let Ok(content) = std::str::from_utf8(input) else {
        return;
    };
    for provider in ["", "fuzz-provider"] {
        match price_import::parse(content, "fuzz.json", provider, TODAY) {
            Err(e) => assert!(!e.is_empty(), "an error must say something"),
            Ok(parsed) => {
                check_entries(&parsed, provider);
                // Values kept raw, as the import reads them: a value it skips (`sample_spec`)
                // need not be one `serde_json::Value` can hold (a number beyond f64).
                let root: BTreeMap<String, &RawValue> = match serde_json::from_str(content) {
                    Ok(r) => r,
                    Err(e) => panic!("an accepted price file is not a JSON object: {e}"),
                };
                match parsed.format {
                    "keyplane" => {
                        let rows = root
                            .get("prices")
                            .and_then(|p| serde_json::from_str::<Vec<&RawValue>>(p.get()).ok())
                            .map(|p| p.len());
                        assert_eq!(
                            Some(parsed.entries.len()),
                            rows,
                            "a row was dropped without an error"
                        );
                        assert_eq!(parsed.skipped, 0);
                    }
                    "litellm" => {
                        let sample = usize::from(root.contains_key("sample_spec"));
                        let skipped = usize::try_from(parsed.skipped).unwrap_or(usize::MAX);
                        assert_eq!(
                            parsed.entries.len() + skipped + sample,
                            root.len(),
                            "every key is imported or counted as skipped"
                        );
                    }
                    other => panic!("unknown format {other:?}"),
                }
            }
        }
    }
}

/// A harness: arbitrary bytes in, a panic when an invariant breaks.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target (and of its seed and corpus directories).
pub const TARGETS: &[(&str, Harness)] = &[("price_import", price_import)];
