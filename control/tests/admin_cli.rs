//! keyplanectl against a real keyplane-control over loopback: every command of the operator
//! contract, with and without --json, and every bad input refused with the right exit code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyplane_testkit::ControlPlane;
use serde_json::Value;

fn setup_catalog(cp: &ControlPlane) -> String {
    cp.ctl(&[
        "provider",
        "add",
        "deepseek",
        "--protocol",
        "openai",
        "--base-url",
        "https://api.deepseek.com/v1",
    ])
    .ok();
    cp.ctl(&[
        "provider",
        "add",
        "anthropic",
        "--protocol",
        "anthropic",
        "--base-url",
        "https://api.anthropic.com",
    ])
    .ok();
    let cred = cp
        .ctl_with(
            &[
                "--json",
                "credential",
                "add",
                "deepseek",
                "--label",
                "main",
                "--multiplier",
                "0.8",
            ],
            Some("sk-deepseek-test\n"),
            &cp.admin_token,
        )
        .ok()
        .json();
    cred["id"].as_str().unwrap().to_string()
}

#[test]
fn every_command_with_and_without_json() {
    let cp = ControlPlane::start();

    // provider
    let added = cp
        .ctl(&[
            "--json",
            "provider",
            "add",
            "openrouter",
            "--protocol",
            "openai",
            "--base-url",
            "https://openrouter.ai/api/v1/",
        ])
        .ok()
        .json();
    assert_eq!(added["name"], "openrouter");
    assert_eq!(added["protocol"], "openai");
    assert_eq!(added["base_url"], "https://openrouter.ai/api/v1");
    let cred_id = setup_catalog(&cp);
    let table = cp.ctl(&["provider", "list"]).ok().stdout;
    assert!(
        table.contains("NAME") && table.contains("PROTOCOL"),
        "{table}"
    );
    for name in ["openrouter", "deepseek", "anthropic"] {
        assert!(table.contains(name), "{table}");
    }
    let list = cp.ctl(&["--json", "provider", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 3);

    // credential
    let creds = cp.ctl(&["--json", "credential", "list"]).ok().json();
    let creds = creds.as_array().unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["id"], cred_id.as_str());
    assert_eq!(creds[0]["provider"], "deepseek");
    assert_eq!(creds[0]["label"], "main");
    assert_eq!(creds[0]["multiplier"], 0.8);
    assert_eq!(creds[0]["state"], "active");
    let table = cp.ctl(&["credential", "list"]).ok().stdout;
    assert!(
        table.contains(&cred_id) && table.contains("0.8") && table.contains("active"),
        "{table}"
    );
    // A secret from stdin without a trailing newline works too; the default label is empty.
    cp.ctl_with(
        &["credential", "add", "openrouter"],
        Some("sk-or-no-newline"),
        &cp.admin_token,
    )
    .ok();
    let only = cp
        .ctl(&["--json", "credential", "list", "--provider", "openrouter"])
        .ok()
        .json();
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["multiplier"], 1.0);

    // model
    let set = cp
        .ctl(&[
            "--json",
            "model",
            "set",
            "deepseek/deepseek-chat",
            "--provider",
            "deepseek",
            "--upstream-model",
            "deepseek-chat",
            "--input",
            "0.28",
            "--output",
            "0.42",
        ])
        .ok()
        .json();
    assert_eq!(set["model"], "deepseek/deepseek-chat");
    assert_eq!(set["upstream_model"], "deepseek-chat");
    assert_eq!(set["input"], 0.28);
    assert_eq!(set["output"], 0.42);
    cp.ctl(&[
        "model",
        "set",
        "deepseek/deepseek-chat",
        "--provider",
        "openrouter",
        "--input",
        "0.27",
        "--output",
        "1.1",
    ])
    .ok();
    cp.ctl(&[
        "model",
        "set",
        "claude-sonnet",
        "--provider",
        "anthropic",
        "--input",
        "3",
        "--output",
        "15",
    ])
    .ok();
    let cached = cp
        .ctl(&[
            "--json",
            "model",
            "set",
            "claude-cached",
            "--provider",
            "anthropic",
            "--input",
            "3",
            "--output",
            "15",
            "--cache-read",
            "0.3",
            "--cache-write",
            "3.75",
        ])
        .ok()
        .json();
    assert_eq!(cached["cache_read"], 0.3);
    assert_eq!(cached["cache_write"], 3.75);
    assert_eq!(
        set["cache_read"],
        serde_json::Value::Null,
        "unset: priced as input"
    );
    let models = cp.ctl(&["--json", "model", "list"]).ok().json();
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 4);
    for row in models {
        for field in [
            "model",
            "provider",
            "upstream_model",
            "input",
            "output",
            "currency",
            "source",
            "synced_at",
        ] {
            assert!(row.get(field).is_some(), "model row lacks {field}: {row}");
        }
    }
    let one = cp
        .ctl(&[
            "--json",
            "model",
            "list",
            "--model",
            "deepseek/deepseek-chat",
        ])
        .ok()
        .json();
    assert_eq!(one.as_array().unwrap().len(), 2);
    assert_eq!(
        one[1]["upstream_model"], "deepseek/deepseek-chat",
        "upstream id defaults to the model"
    );
    let table = cp.ctl(&["model", "list"]).ok().stdout;
    assert!(
        table.contains("claude-sonnet") && table.contains("15"),
        "{table}"
    );

    // key
    let created = cp.ctl(&["--json", "key", "create", "alice"]).ok().json();
    assert_eq!(created["name"], "alice");
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("kp_") && key.len() == 46, "{key}");
    let plain = cp.ctl(&["key", "create", "bob"]).ok();
    assert!(plain.stdout.trim().starts_with("kp_"), "{}", plain.stdout);
    assert!(plain.stderr.contains("cannot be shown again"));
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("key").is_none())
    );
    let revoked = cp.ctl(&["--json", "key", "revoke", "bob"]).ok().json();
    assert_eq!(revoked["revoked"], true);
    let table = cp.ctl(&["key", "list"]).ok().stdout;
    assert!(
        table.contains("alice") && table.contains("revoked"),
        "{table}"
    );
    cp.ctl(&["key", "revoke", "bob"]).ok();

    // usage and nodes: empty but well-formed
    assert_eq!(
        cp.ctl(&["--json", "usage"]).ok().json(),
        Value::Array(vec![])
    );
    assert_eq!(
        cp.ctl(&["--json", "usage", "--key", "alice"]).ok().json(),
        Value::Array(vec![])
    );
    assert!(cp.ctl(&["usage"]).ok().stdout.contains("COST"));
    assert_eq!(
        cp.ctl(&["--json", "nodes"]).ok().json(),
        Value::Array(vec![])
    );
    assert!(cp.ctl(&["nodes"]).ok().stdout.contains("ROUTE VERSION"));
}

/// (args, stdin, expected exit code, a word the message must contain)
type BadCase<'a> = (&'a [&'a str], Option<&'a str>, i32, &'a str);

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_half_written() {
    let cp = ControlPlane::start();
    setup_catalog(&cp);
    cp.ctl(&["key", "create", "alice"]).ok();

    let cases: &[BadCase] = &[
        (
            &[
                "provider",
                "add",
                "deepseek",
                "--protocol",
                "openai",
                "--base-url",
                "https://x.example/v1",
            ],
            None,
            1,
            "already exists",
        ),
        (
            &[
                "provider",
                "add",
                "p2",
                "--protocol",
                "grpc",
                "--base-url",
                "https://x.example/v1",
            ],
            None,
            1,
            // The refusal names the protocols that would be accepted.
            "use one of openai, anthropic, openai-responses, gemini",
        ),
        (
            &[
                "provider",
                "add",
                "p2",
                "--protocol",
                "openai",
                "--base-url",
                "ftp://x.example/v1",
            ],
            None,
            1,
            "http",
        ),
        (
            &[
                "provider",
                "add",
                "p2",
                "--protocol",
                "openai",
                "--base-url",
                "not a url",
            ],
            None,
            1,
            "URL",
        ),
        (
            &[
                "provider",
                "add",
                "bad name",
                "--protocol",
                "openai",
                "--base-url",
                "http://x",
            ],
            None,
            1,
            "name",
        ),
        (
            &["credential", "add", "nope"],
            Some("sk-x\n"),
            1,
            "does not exist",
        ),
        (&["credential", "add", "deepseek"], Some("\n"), 1, "empty"),
        (&["credential", "add", "deepseek"], Some(""), 1, "empty"),
        (
            &["credential", "add", "deepseek", "--multiplier", "-2"],
            Some("sk-x\n"),
            1,
            "negative",
        ),
        (
            &["credential", "add", "deepseek", "--multiplier", "abc"],
            Some("sk-x\n"),
            1,
            "not a decimal",
        ),
        (
            &["credential", "add", "deepseek", "--label", "main"],
            Some("sk-x\n"),
            1,
            "already",
        ),
        (
            &[
                "model",
                "set",
                "m",
                "--provider",
                "nope",
                "--input",
                "1",
                "--output",
                "1",
            ],
            None,
            1,
            "does not exist",
        ),
        (
            &[
                "model",
                "set",
                "m",
                "--provider",
                "deepseek",
                "--input",
                "-1",
                "--output",
                "1",
            ],
            None,
            1,
            "negative",
        ),
        (
            &[
                "model",
                "set",
                "m",
                "--provider",
                "deepseek",
                "--input",
                "1",
                "--output",
                "cheap",
            ],
            None,
            1,
            "not a decimal",
        ),
        (&["key", "create", "alice"], None, 1, "already exists"),
        (&["key", "revoke", "nobody"], None, 1, "no key"),
        (&["usage", "--key", "nobody"], None, 1, "no key"),
        (
            &["model", "set", "m", "--provider", "deepseek"],
            None,
            2,
            "--input",
        ),
        (&["frobnicate"], None, 2, "frobnicate"),
    ];
    for (args, stdin, code, word) in cases {
        let out = cp.ctl_with(args, *stdin, &cp.admin_token);
        assert_eq!(out.code, *code, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(word),
            "{args:?}: stderr should mention {word:?}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("sk-x"),
            "a secret reached an error: {}",
            out.stderr
        );
    }

    // Nothing half-written: exactly what the good calls made.
    assert_eq!(
        cp.ctl(&["--json", "provider", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        cp.ctl(&["--json", "credential", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cp.ctl(&["--json", "model", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        cp.ctl(&["--json", "key", "list"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Wrong, missing and malformed admin tokens.
    let out = cp.ctl_with(&["provider", "list"], None, "wrong-token-wrong-token");
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unauthenticated"), "{}", out.stderr);
    let out = cp.ctl_with(&["provider", "list"], None, "");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("KEYPLANE_ADMIN_TOKEN"),
        "{}",
        out.stderr
    );

    // Unreachable control plane: exit 2.
    let out = keyplane_testkit::process::run_ctl(
        "http://127.0.0.1:1",
        &cp.admin_token,
        &["provider", "list"],
        None,
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);

    // And the server still serves.
    cp.ctl(&["provider", "list"]).ok();
}

#[test]
fn oversized_input_is_refused_with_what_was_wrong_not_a_transport_error() {
    let cp = ControlPlane::start();
    let huge = "a".repeat(20_000);
    let model = "m".repeat(100_000);
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "provider",
                "add",
                &huge,
                "--protocol",
                "openai",
                "--base-url",
                "https://api.example.com/v1",
            ],
            "provider name is 20000 bytes; at most 64 allowed",
        ),
        (
            &["key", "create", &huge],
            "key name is 20000 bytes; at most 64 allowed",
        ),
        // Not a name check: the refusal echoes the input, cut short with its length.
        (&["key", "revoke", &huge], "bytes)"),
        (
            &[
                "model",
                "set",
                &model,
                "--provider",
                "p",
                "--input",
                "1",
                "--output",
                "2",
            ],
            "model name is 100000 bytes; at most 256 allowed",
        ),
        (&["usage", "--key", &huge], ""),
    ];
    for (args, expected) in cases {
        let out = cp.ctl(args);
        assert_eq!(
            out.code,
            1,
            "{}: exit {} stderr {:?}",
            args[..2].join(" "),
            out.code,
            &out.stderr[..out.stderr.len().min(500)]
        );
        assert!(
            out.stderr.contains(expected),
            "{}: {:?}",
            args[..2].join(" "),
            &out.stderr[..out.stderr.len().min(500)]
        );
        assert!(
            out.stderr.len() < 2048,
            "{}: the refusal echoes the input whole ({} bytes)",
            args[..2].join(" "),
            out.stderr.len()
        );
    }
}
