//! Stable replay of the fuzz corpora: every file of `fuzz/corpus/<target>/` through the target's
//! harness, then a bounded number of seeded mutations of them, so that `cargo test` on stable
//! catches a regression the nightly fuzzer would have caught. The harnesses themselves live in
//! the libraries (`keyplane_dataplane::fuzzing`, `keyplane_control::fuzzing`), so the fuzzer and
//! this replay run the same code.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The directories a target's inputs live in: `fuzz/seeds/<target>` (named, hand-made or copied
/// samples; see `fuzz/seeds/PROVENANCE.md`) and `fuzz/corpus/<target>` (what the fuzzer found,
/// minimized).
pub fn input_dirs(target: &str) -> [PathBuf; 2] {
    let fuzz = fuzz_dir();
    [
        fuzz.join("seeds").join(target),
        fuzz.join("corpus").join(target),
    ]
}

/// The repository's `fuzz/` directory (the cargo-fuzz crate).
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The fuzz targets whose source calls into `module` (e.g. `"keyplane_dataplane::fuzzing::"`),
/// by name, sorted: what a crate's replay test compares its harness table with, so that a new
/// target cannot go without its stable replay.
pub fn targets_calling(module: &str) -> Vec<String> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        if source.contains(module) {
            found.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

/// Every input file of a target, sorted by path. Panics if there are none: a replay over an
/// empty corpus would prove nothing.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (kind, dir) in ["seeds", "corpus"].into_iter().zip(input_dirs(target)) {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.filter_map(Result::ok) {
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = format!("{kind}/{}", entry.file_name().to_string_lossy());
            if let Ok(bytes) = std::fs::read(entry.path()) {
                files.push((name, bytes));
            }
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no input for fuzz target {target} in {:?}",
        input_dirs(target)
    );
    files
}

/// The longest mutated input: the corpus files are a few KiB, and a debug build must get
/// through thousands of cases in seconds.
const MAX_LEN: usize = 8 * 1024;

/// xorshift64*: a small, seeded, reproducible generator (no dependency, same stream everywhere).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Fragments that move the parsers' state: JSON and SSE syntax, the field names they look for,
/// and numbers at the edges of `u64`.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"event: ",
    b"event: error\n",
    b"data: [DONE]\n\n",
    b": ping\n\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\\",
    b"\\u0000",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e308",
    b"0.5",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":1}",
    b"\"usage\":{\"input_tokens\":18446744073709551615,\"output_tokens\":1}",
    b"\"error\":{\"message\":\"x\"}",
    b"\"model\":\"m\"",
    b"\"messages\":[]",
    b"\"stream\":true",
    b"\"max_tokens\":1",
    b"\"type\":\"message_stop\"",
    b"\"type\":\"content_block_delta\"",
    b"\"choices\":[]",
    b"\"prices\":[]",
    b"\"input_cost_per_token\":1",
    b"\xff",
    b"\xc3\xa9",
];

/// One random change to `input`: a byte changed, bytes inserted or removed, a run repeated, a
/// token inserted, or a splice with another corpus file.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[(String, Vec<u8>)]) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] = rng.next() as u8;
        }
        1 => {
            let at = rng.below(len + 1);
            input.insert(at, rng.next() as u8);
        }
        2 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(16));
            input.drain(at..at + n);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            let run = input[at..at + n].to_vec();
            for _ in 0..1 + rng.below(3) {
                input.splice(at..at, run.iter().copied());
            }
        }
        4 | 5 => {
            let at = rng.below(len + 1);
            let token = TOKENS[rng.below(TOKENS.len())];
            input.splice(at..at, token.iter().copied());
        }
        _ => {
            let other = &corpus[rng.below(corpus.len())].1;
            let from = rng.below(other.len() + 1);
            let to = from + rng.below(other.len() - from + 1);
            let at = rng.below(len + 1);
            input.splice(at..at, other[from..to].iter().copied());
        }
    }
}

/// Runs `harness` on `input`; on a panic, saves the input (to reproduce it with
/// `cargo fuzz run <target> <file>`) and fails with where it is.
fn run_one(target: &str, what: &str, harness: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| harness(input))).is_ok() {
        return;
    }
    let saved = std::env::temp_dir().join(format!(
        "fuzz-replay-{target}-{}",
        what.replace(['/', ' '], "_")
    ));
    let note = match std::fs::write(&saved, input) {
        Ok(()) => format!("input saved to {}", saved.display()),
        Err(e) => format!("could not save the input: {e}"),
    };
    panic!("fuzz harness {target} failed on {what} ({note})");
}

/// Replays every corpus file of `target`, then `random_cases` mutated inputs from a generator
/// seeded by the target's name (the same inputs on every run).
pub fn replay(target: &str, harness: fn(&[u8]), random_cases: usize) {
    let corpus = corpus(target);
    for (name, bytes) in &corpus {
        run_one(target, &format!("corpus file {name}"), harness, bytes);
    }
    let seed = target
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        .max(1);
    let mut rng = Rng(seed);
    for case in 0..random_cases {
        let mut input = corpus[rng.below(corpus.len())].1.clone();
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, &corpus);
        }
        input.truncate(MAX_LEN);
        run_one(target, &format!("random case {case}"), harness, &input);
    }
}
