//! Running the control plane for real: master-key rotation that survives a kill -9, backup and
//! restore, the metrics listener, `--dev` certificates, and the plain-text guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{
    ControlOptions, ControlPlane, DataPlane, FakeConfig, FakeUpstream, TlsFiles, bin_path,
    wait_until,
};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// `n` providers, each with a fake upstream that accepts only its own secret, its own
/// credential and its own model `m{i}`; returns the fakes and a client key.
fn catalog(cp: &ControlPlane, n: usize) -> (Vec<FakeUpstream>, String) {
    let mut fakes = Vec::new();
    for i in 0..n {
        let name = format!("p{i}");
        let fake = FakeUpstream::start(FakeConfig {
            name: name.clone(),
            api_key: Some(format!("sk-secret-{i}")),
            ..FakeConfig::default()
        });
        let base = fake.openai_base_url();
        cp.ctl(&[
            "provider",
            "add",
            &name,
            "--protocol",
            "openai",
            "--base-url",
            &base,
        ])
        .ok();
        cp.ctl_with(
            &["credential", "add", &name, "--label", "main"],
            Some(&format!("sk-secret-{i}\n")),
            &cp.admin_token,
        )
        .ok();
        let model = format!("m{i}");
        cp.ctl(&[
            "model",
            "set",
            &model,
            "--provider",
            &name,
            "--input",
            "1",
            "--output",
            "2",
        ])
        .ok();
        fakes.push(fake);
    }
    let key = cp.ctl(&["--json", "key", "create", "ops"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    (fakes, key)
}

fn chat(dp: &DataPlane, key: &str, model: &str) -> u16 {
    HttpRequest::post_json(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .bearer(key)
    .send(dp.addr, TIMEOUT)
    .map(|r| r.status)
    .unwrap_or(0)
}

/// Every model answers 200 through a fresh data plane: every secret opened and reached its
/// upstream.
fn every_secret_serves(cp: &ControlPlane, key: &str, n: usize) {
    let dp = DataPlane::start(cp, "check", &[]);
    assert!(dp.wait_ready(TIMEOUT), "{}", dp.logs());
    for i in 0..n {
        let model = format!("m{i}");
        assert!(
            wait_until(TIMEOUT, || chat(&dp, key, &model) == 200),
            "{model} is not served; data plane log:\n{}",
            dp.logs()
        );
    }
}

/// Starts `keyplane-control` on the data dir with `master_key` and returns (exit code, stderr):
/// for starts that must be refused.
fn refused_start(cp: &ControlPlane, master_key: &str) -> (Option<i32>, String) {
    let mut child = Command::new(bin_path("keyplane-control"))
        .arg("--data-dir")
        .arg(&cp.data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("KEYPLANE_MASTER_KEY", master_key)
        .env("KEYPLANE_ADMIN_TOKEN", &cp.admin_token)
        .env("KEYPLANE_NODE_TOKEN", &cp.node_token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ok = wait_until(TIMEOUT, || child.try_wait().unwrap().is_some());
    if !ok {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn new_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn master_key_rotation_survives_a_kill_9_in_the_middle() {
    const N: usize = 5;
    let mut cp = ControlPlane::start();
    let (_fakes, key) = catalog(&cp, N);
    assert_eq!(cp.terminate(), Some(0));
    let old = cp.master_key.clone();
    let new = new_key();

    // A rotation that stops after 2 of 5 records, killed -9 there.
    let mut child = Command::new(bin_path("keyplane-control"))
        .arg("rotate-master-key")
        .arg("--data-dir")
        .arg(&cp.data_dir)
        .env("KEYPLANE_MASTER_KEY", &old)
        .env("KEYPLANE_NEW_MASTER_KEY", &new)
        .env("KEYPLANE_TEST_ROTATE_PAUSE_AFTER", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("paused after 2"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Half rotated: the store refuses to be served with either key, and says why.
    for k in [&old, &new] {
        let (code, stderr) = refused_start(&cp, k);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("rotation"), "{stderr}");
    }
    // A rerun with another new key is refused; with the same keys it finishes.
    let other = cp.offline(
        &[
            "rotate-master-key",
            "--data-dir",
            cp.data_dir.to_str().unwrap(),
        ],
        &[("KEYPLANE_NEW_MASTER_KEY", &new_key())],
    );
    assert_eq!(other.code, 2, "{other:?}");
    let done = cp.offline(
        &[
            "rotate-master-key",
            "--data-dir",
            cp.data_dir.to_str().unwrap(),
        ],
        &[("KEYPLANE_NEW_MASTER_KEY", &new)],
    );
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stdout.contains("3 secrets re-encrypted, 2 already"),
        "{done:?}"
    );

    // The old key no longer opens the store; the new one serves every secret.
    let (code, stderr) = refused_start(&cp, &old);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("KEYPLANE_MASTER_KEY does not match"),
        "{stderr}"
    );
    cp.master_key = new;
    cp.restart();
    every_secret_serves(&cp, &key, N);
    // Listing credentials never shows a secret, after rotation too.
    let creds = cp.ctl(&["--json", "credential", "list"]).ok().stdout;
    assert!(!creds.contains("sk-secret"), "{creds}");
}

#[test]
fn backup_then_restore_serves_the_same_data_and_metrics_move() {
    let cp = ControlPlane::start_with(ControlOptions {
        metrics: true,
        ..ControlOptions::default()
    });
    let (_fakes, key) = catalog(&cp, 2);
    let dp = DataPlane::start(&cp, "edge", &[]);
    assert!(dp.wait_ready(TIMEOUT));
    assert!(wait_until(TIMEOUT, || chat(&dp, &key, "m0") == 200));
    let usage = |cp: &ControlPlane| cp.ctl(&["--json", "usage"]).ok().json();
    assert!(wait_until(TIMEOUT, || usage(&cp)
        .as_array()
        .is_some_and(|r| !r.is_empty())));

    // The control plane's metrics listener: Prometheus text with its own figures.
    let metrics_addr = cp.metrics_addr.unwrap();
    let scrape = || {
        let text = HttpRequest::get("/metrics")
            .send(metrics_addr, TIMEOUT)
            .unwrap()
            .text();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    let value = |s: &prometheus_parse::Scrape, name: &str| {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum::<f64>()
    };
    // The ingest counter moves once the batch is flushed to disk, after the ledger already
    // answers with it: wait for it rather than read it once.
    assert!(wait_until(TIMEOUT, || value(
        &scrape(),
        "keyplane_control_usage_records_ingested_total"
    ) >= 1.0));
    let s = scrape();
    assert_eq!(value(&s, "keyplane_control_nodes_connected"), 1.0);
    assert_eq!(value(&s, "keyplane_control_providers"), 2.0);
    assert_eq!(value(&s, "keyplane_control_credentials"), 2.0);
    assert_eq!(value(&s, "keyplane_control_client_keys"), 1.0);
    assert!(value(&s, "keyplane_control_route_version") >= 1.0);
    assert!(value(&s, "keyplane_control_route_tables_sent_total") >= 1.0);

    // Backup over gRPC: a 0600 file with no secret in the clear.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("keyplane.backup");
    let out = cp
        .ctl(&["--json", "backup", file.to_str().unwrap()])
        .ok()
        .json();
    assert!(out["bytes"].as_u64().unwrap() > 0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("sk-secret"), "a secret is in the backup");

    // Restore into a new data dir with the same master key and tokens.
    let mut restored = ControlPlane::unstarted(ControlOptions::default());
    restored.master_key = cp.master_key.clone();
    restored.admin_token = cp.admin_token.clone();
    restored.node_token = cp.node_token.clone();
    let data = restored.data_dir.to_str().unwrap().to_string();
    let wrong = restored.offline(
        &["restore", "--data-dir", &data, file.to_str().unwrap()],
        &[("KEYPLANE_MASTER_KEY", &new_key())],
    );
    assert_eq!(wrong.code, 2, "{wrong:?}");
    let ok = restored.offline(
        &["restore", "--data-dir", &data, file.to_str().unwrap()],
        &[],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    let again = restored.offline(
        &["restore", "--data-dir", &data, file.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        again.code, 2,
        "a non-empty data dir must be refused: {again:?}"
    );
    restored.restart();

    for what in [
        &["--json", "provider", "list"][..],
        &["--json", "credential", "list"],
        &["--json", "model", "list"],
        &["--json", "key", "list"],
        &["--json", "usage"],
    ] {
        assert_eq!(
            cp.ctl(what).ok().json(),
            restored.ctl(what).ok().json(),
            "{what:?} differs after restore"
        );
    }
    // The restored control plane serves the same secrets and client key.
    every_secret_serves(&restored, &key, 2);
}

#[test]
fn dev_generates_certificates_and_serves_tls_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tls = data.join("tls");
    let mut child = Command::new(bin_path("keyplane-control"))
        .arg("--dev")
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(tls.join("control.pem"))
        .arg("--tls-key")
        .arg(tls.join("control-key.pem"))
        .env_remove("KEYPLANE_MASTER_KEY")
        .env_remove("KEYPLANE_ADMIN_TOKEN")
        .env_remove("KEYPLANE_NODE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut saw_certs = false;
    let mut addr = None;
    for line in lines.by_ref().take(5) {
        let line = line.unwrap();
        saw_certs |= line.starts_with("dev TLS certificates:") && line.contains("ca.pem");
        if let Some(a) = line.strip_prefix("keyplane-control listening on ") {
            addr = Some(a.trim().to_string());
            break;
        }
    }
    let addr = addr.expect("no listening line");
    assert!(saw_certs);
    let files = TlsFiles::in_dir(&tls);
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let out = keyplane_testkit::process::run_ctl_ca(
        &format!("https://{addr}"),
        token.trim(),
        &["provider", "list"],
        None,
        Some(&files.ca),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn plain_text_on_a_non_loopback_address_needs_insecure() {
    let out = Command::new(bin_path("keyplane-control"))
        .args(["--listen", "0.0.0.0:0", "--dev", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn gen_certs_keeps_a_complete_set_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let run = |extra: &[&str]| {
        let out = Command::new(bin_path("keyplane-control"))
            .arg("gen-certs")
            .arg("--out")
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    run(&[]);
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    // A rerun (`docker compose up` again) keeps the CA the running nodes trust.
    let said = run(&["--hosts", "extra.example"]);
    assert!(said.contains("kept"), "{said}");
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
    run(&["--force"]);
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
}
