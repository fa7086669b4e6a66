//! Test support for Keyplane: start the real binaries on loopback with fresh directories, drive
//! `keyplanectl`, stop processes by pid, and wait on conditions instead of sleeping; and a fake
//! upstream LLM provider ([`FakeUpstream`]) speaking the OpenAI and Anthropic wire formats, with
//! fault injection, also runnable as the `keyplane-fake-upstream` binary. [`samples`] holds
//! the recorded provider responses the tests parse.
//!
//! This crate is only used by tests, benchmarks and the demo, so it may panic: a panic here is a
//! failed test with a message, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod fake_upstream;
pub mod fuzz_replay;
pub mod http;
pub mod process;
pub mod samples;

pub use fake_upstream::{Behavior, FakeConfig, FakeUpstream, RecordedRequest};
pub use process::{
    ControlOptions, ControlPlane, CtlOutput, DataPlane, TlsFiles, bin_path, wait_until,
};
