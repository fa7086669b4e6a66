//! Test support for Keyplane: start the real binaries on loopback with fresh directories, drive
//! `keyplanectl`, stop processes by pid, and wait on conditions instead of sleeping.
//!
//! This crate is only used by tests, benchmarks and the demo, so it may panic: a panic here is a
//! failed test with a message, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod process;

pub use process::{ControlPlane, CtlOutput, bin_path, wait_until};
