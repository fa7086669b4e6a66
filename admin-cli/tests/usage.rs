//! keyplanectl on its own: usage errors and an unreachable control plane exit 2 with a message.
//! (Everything that needs a control plane is tested in control/tests/admin_cli.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyplanectl"))
        .args(args)
        .env_remove("KEYPLANE_CONTROL")
        .env_remove("KEYPLANE_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command() {
    let (code, stdout, _) = ctl(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["provider", "credential", "model", "key", "usage", "nodes"] {
        assert!(stdout.contains(cmd), "{cmd} missing from --help:\n{stdout}");
    }
}

#[test]
fn provider_add_and_set_help_list_every_upstream_protocol() {
    for command in ["add", "set"] {
        let (code, stdout, _) = ctl(&["provider", command, "--help"]);
        assert_eq!(code, 0);
        help_lists_protocols(&stdout);
    }
}

fn help_lists_protocols(stdout: &str) {
    // clap wraps help text, so look for each protocol as a word of the unwrapped text.
    let words: Vec<&str> = stdout
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .collect();
    for protocol in ["openai", "anthropic", "openai-responses", "gemini"] {
        assert!(
            words.contains(&protocol),
            "{protocol} missing from provider help:\n{stdout}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["provider", "add", "x"],
        &["model", "set", "m", "--provider", "p"],
        &["nope"],
    ] {
        let (code, _, stderr) = ctl(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(!stderr.is_empty());
    }
}

#[test]
fn no_token_or_no_server_exit_2() {
    let (code, _, stderr) = ctl(&["provider", "list"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("KEYPLANE_ADMIN_TOKEN"), "{stderr}");
    let (code, _, stderr) = ctl(&[
        "--control",
        "http://127.0.0.1:1",
        "--token",
        "t",
        "provider",
        "list",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot reach the control plane"),
        "{stderr}"
    );
    let (code, _, stderr) = ctl(&["--control", "not a url", "--token", "t", "nodes"]);
    assert_eq!(code, 2, "{stderr}");
}
