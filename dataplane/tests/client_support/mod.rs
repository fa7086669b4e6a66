//! Running the real clients `clients/install` pins (Codex CLI, Gemini CLI, the OpenAI,
//! google-genai and Anthropic Python SDKs) as bounded subprocesses, for the client tests.
//!
//! Missing clients fail the test with the command that installs them. Every run has a deadline
//! ([`CLIENT_TIMEOUT`]) after which the client is killed and the test fails.
#![allow(dead_code)]

use keyplane_testkit::wait_until;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long one client run may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// `clients/` at the repository's root.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("clients")
}

/// `clients/<relative>`, which `clients/install` puts there; fails the test when it is missing.
pub fn installed(relative: &str) -> PathBuf {
    let path = clients_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `clients/install` (it installs the pinned Codex and Gemini CLIs and \
         the OpenAI, google-genai and Anthropic SDKs the client tests drive)",
        path.display()
    );
    path
}

/// A finished client run.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with its output in files under `dir`, killing it after [`CLIENT_TIMEOUT`].
pub fn run_bounded(mut cmd: Command, dir: &Path) -> Finished {
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("spawn the client");
    let mut status = None;
    let exited = wait_until(CLIENT_TIMEOUT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    let finished = Finished {
        status: status.unwrap_or_else(|| child.wait().unwrap()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(
        exited,
        "the client ran past {CLIENT_TIMEOUT:?} and was killed; {}",
        finished.describe()
    );
    finished
}

/// Runs `clients/<script>` with the virtualenv's Python and `args`, in a fresh `HOME`, and
/// returns the JSON report it prints on stdout; fails the test when it exits non-zero.
pub fn python_report(script: &str, args: &[&str]) -> serde_json::Value {
    let python = installed(".venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(clients_dir().join(script))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path());
    let finished = run_bounded(cmd, dir.path());
    assert!(
        finished.status.success(),
        "{script} failed; {}",
        finished.describe()
    );
    serde_json::from_str(finished.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{script}'s report is not JSON ({e}); {}",
            finished.describe()
        )
    })
}
