//! The control plane as a process: secrets never in plaintext at rest, in logs or in JSON;
//! `--dev`; exit codes for bad secrets; graceful SIGTERM; a store written by layout version 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyplane_testkit::process::{bin_path, files_below};
use keyplane_testkit::{ControlPlane, wait_until};
use std::process::{Command, Stdio};
use std::time::Duration;

const UPSTREAM_SECRET: &str = "sk-upstream-7f3a9c1e5b2d4f6a8c0e";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_appear_nowhere_in_plaintext() {
    let mut cp = ControlPlane::start();
    let json_outputs = std::cell::RefCell::new(Vec::new());
    let run = |args: &[&str], stdin: Option<&str>| {
        let out = cp.ctl_with(args, stdin, &cp.admin_token).ok();
        json_outputs
            .borrow_mut()
            .push(out.stdout.clone() + &out.stderr);
        out
    };
    run(
        &[
            "--json",
            "provider",
            "add",
            "deepseek",
            "--protocol",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        None,
    );
    run(
        &["--json", "credential", "add", "deepseek", "--label", "main"],
        Some(&format!("{UPSTREAM_SECRET}\n")),
    );
    run(&["--json", "credential", "list"], None);
    run(&["credential", "list"], None);
    let created = run(&["--json", "key", "create", "alice"], None).json();
    let client_key = created["key"].as_str().unwrap().to_string();
    json_outputs.borrow_mut().clear(); // the one output allowed to show the client key is `key create`
    run(&["--json", "key", "list"], None);
    run(&["key", "list"], None);
    run(&["--json", "model", "list"], None);
    run(&["--json", "usage"], None);
    run(&["--json", "nodes"], None);

    let json_outputs = json_outputs.into_inner();
    // Flushed to disk by a graceful stop, so every byte sled holds is in the files.
    assert_eq!(cp.terminate(), Some(0));

    let key_body = &client_key["kp_".len()..];
    let files = files_below(&cp.data_dir);
    assert!(!files.is_empty());
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !contains(&bytes, UPSTREAM_SECRET),
            "upstream secret in plaintext in {}",
            file.display()
        );
        assert!(
            !contains(&bytes, key_body),
            "client key in plaintext in {}",
            file.display()
        );
    }
    let logs = cp.logs();
    assert!(
        logs.contains("credential added"),
        "logs are written: {logs}"
    );
    for secret in [
        UPSTREAM_SECRET,
        key_body,
        cp.admin_token.as_str(),
        cp.node_token.as_str(),
        cp.master_key.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        for out in &json_outputs {
            assert!(!out.contains(secret), "a secret reached CLI output: {out}");
        }
    }
}

#[test]
fn dev_mode_generates_secrets_and_missing_ones_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Without --dev, a missing secret is a one-line error and exit code 2.
    let out = Command::new(bin_path("keyplane-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("KEYPLANE_MASTER_KEY")
        .env_remove("KEYPLANE_ADMIN_TOKEN")
        .env_remove("KEYPLANE_NODE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KEYPLANE_MASTER_KEY is not set"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Malformed: exit 2, the value not echoed.
    let out = Command::new(bin_path("keyplane-control"))
        .args(["--listen", "127.0.0.1:0", "--dev", "--data-dir"])
        .arg(&data)
        .env("KEYPLANE_MASTER_KEY", "bm90LTMyLWJ5dGVz")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KEYPLANE_MASTER_KEY is malformed") && !stderr.contains("bm90LTMyLWJ5dGVz"),
        "{stderr}"
    );

    // --dev: generated into 0600 files, the paths printed, never the values.
    let mut child = Command::new(bin_path("keyplane-control"))
        .args(["--listen", "127.0.0.1:0", "--dev", "--data-dir"])
        .arg(&data)
        .env_remove("KEYPLANE_MASTER_KEY")
        .env_remove("KEYPLANE_ADMIN_TOKEN")
        .env_remove("KEYPLANE_NODE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().unwrap().unwrap();
    // Then where the generated TLS certificates are, then the listening line.
    let certs = lines.next().unwrap().unwrap();
    assert!(certs.starts_with("dev TLS certificates: "), "{certs}");
    let second = lines.next().unwrap().unwrap();
    keyplane_testkit::process::send_signal(child.id(), libc_sigterm());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(first.starts_with("dev secrets (mode 0600):"), "{first}");
    assert!(
        second.starts_with("keyplane-control listening on 127.0.0.1:"),
        "{second}"
    );
    for name in ["master.key", "admin.token", "node.token"] {
        let path = data.join(name);
        assert!(first.contains(&path.display().to_string()), "{first}");
        let value = std::fs::read_to_string(&path).unwrap();
        assert!(!first.contains(value.trim()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // A different master key for an existing data dir: refused, exit 2.
    let out = Command::new(bin_path("keyplane-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env(
            "KEYPLANE_MASTER_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .env("KEYPLANE_ADMIN_TOKEN", "admin-token-for-this-test")
        .env("KEYPLANE_NODE_TOKEN", "node-token-for-this-test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}

fn libc_sigterm() -> i32 {
    15
}

#[test]
fn sigterm_exits_zero_and_state_persists() {
    let mut cp = ControlPlane::start();
    cp.ctl(&[
        "provider",
        "add",
        "deepseek",
        "--protocol",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ])
    .ok();
    assert_eq!(cp.terminate(), Some(0));
    assert!(cp.logs().contains("store flushed"));
    cp.restart();
    let providers = cp.ctl(&["--json", "provider", "list"]).ok().json();
    assert_eq!(providers[0]["name"], "deepseek");
}

/// Writes a store exactly as layout version 1 lays it out (see keyplane-migrations), without
/// any of the control plane's code, then serves it: a layout change without a migration fails
/// here.
#[test]
fn a_store_written_by_layout_v1_opens() {
    let mut cp = ControlPlane::start();
    // Take the data dir's master key check from a real start, then write the rest by hand.
    assert_eq!(cp.terminate(), Some(0));
    {
        let db = sled::open(cp.data_dir.join("store")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
        db.open_tree("providers")
            .unwrap()
            .insert(
                "legacy",
                br#"{"name":"legacy","protocol":"anthropic","base_url":"http://127.0.0.1:9","created_at_ms":1700000000000}"#.as_slice(),
            )
            .unwrap();
        db.open_tree("offerings")
            .unwrap()
            .insert(
                b"old-model\0legacy".as_slice(),
                br#"{"model":"old-model","provider":"legacy","upstream_model":"claude-x","input_micro_usd_per_mtok":3000000,"output_micro_usd_per_mtok":15000000,"updated_at_ms":1700000000000}"#.as_slice(),
            )
            .unwrap();
        db.open_tree("client_keys")
            .unwrap()
            .insert(
                "key-1",
                br#"{"id":"key-1","name":"old-key","sha256":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","created_at_ms":1700000000000}"#.as_slice(),
            )
            .unwrap();
        db.open_tree("client_key_names")
            .unwrap()
            .insert("old-key", "key-1")
            .unwrap();
        let mut totals = Vec::new();
        for v in [3u64, 30, 20, 5_000, 0, 0] {
            totals.extend_from_slice(&v.to_be_bytes());
        }
        db.open_tree("usage_totals")
            .unwrap()
            .insert(b"key-1\0old-model\0legacy\0cred-9".as_slice(), totals)
            .unwrap();
        // The three records behind those totals, as version 1 wrote them (JSON).
        let usage = db.open_tree("usage").unwrap();
        for (id, input, output, cost) in [
            ("r1", 10, 5, 1_000),
            ("r2", 10, 5, 2_000),
            ("r3", 10, 10, 2_000),
        ] {
            let record = format!(
                r#"{{"request_id":"{id}","node_id":"n","key_id":"key-1","model":"old-model","provider":"legacy","credential_id":"cred-9","input_tokens":{input},"output_tokens":{output},"cost_nano_usd":{cost},"latency_ms":9,"ttfb_ms":3,"status":200,"started_at_ms":1700000000000}}"#
            );
            usage.insert(id, record.as_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    cp.restart();
    let models = cp.ctl(&["--json", "model", "list"]).ok().json();
    assert_eq!(models[0]["model"], "old-model");
    assert_eq!(
        models[0]["currency"], "USD",
        "missing optional fields take defaults"
    );
    assert_eq!(models[0]["source"], "manual");
    assert_eq!(
        cp.ctl(&["--json", "provider", "list"]).ok().json()[0]["protocol"],
        "anthropic"
    );
    assert_eq!(
        cp.ctl(&["--json", "key", "list"]).ok().json()[0]["name"],
        "old-key"
    );
    let usage = cp.ctl(&["--json", "usage", "--key", "old-key"]).ok().json();
    assert_eq!(usage[0]["requests"], 3);
    assert_eq!(usage[0]["cost_usd"], 0.000005);
    // The version 1 records are read by the scans that group records.
    let by_day = cp
        .ctl(&["--json", "usage", "--key", "old-key", "--by", "day"])
        .ok()
        .json();
    assert_eq!(by_day[0]["group"], "2023-11-14");
    assert_eq!(by_day[0]["requests"], 3);
    assert_eq!(by_day[0]["input_tokens"], 30);
    {
        assert_eq!(cp.terminate(), Some(0));
        let db = sled::open(cp.data_dir.join("store")).unwrap();
        assert_eq!(
            db.open_tree("meta")
                .unwrap()
                .get("schema_version")
                .unwrap()
                .unwrap()
                .as_ref(),
            keyplane_migrations::CURRENT.to_be_bytes(),
            "migrated on start"
        );
    }
    cp.restart();
    assert!(wait_until(Duration::from_secs(5), || cp
        .logs()
        .contains("keyplane-control serving")));
}

#[test]
fn with_json_logs_every_line_the_control_plane_prints_is_json() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin_path("keyplane-control"))
        .args(["--dev", "--log-format", "json", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("KEYPLANE_MASTER_KEY")
        .env_remove("KEYPLANE_ADMIN_TOKEN")
        .env_remove("KEYPLANE_NODE_TOKEN")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    // The `--dev` files, the metrics address, then the gRPC address last.
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "{lines:?}");
        let parsed: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a stdout line is not JSON ({e}): {line:?}"));
        lines.push(parsed.clone());
        if parsed["message"]
            .as_str()
            .unwrap()
            .starts_with("keyplane-control listening on ")
        {
            assert!(
                parsed["listen"]
                    .as_str()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .is_ok()
            );
            break;
        }
    }
    assert!(
        lines.iter().any(|l| l["metrics_listen"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))),
        "{lines:?}"
    );
    assert!(lines.len() >= 3, "the --dev lines are missing: {lines:?}");
    keyplane_testkit::process::send_signal(child.id(), libc_sigterm());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.lines().count() >= 2, "{stderr}");
    keyplane_testkit::process::assert_json_lines("stderr", &stderr);
}
