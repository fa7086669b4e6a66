//! Data-plane-facing behaviour over loopback: route-table subscriptions and the usage ledger,
//! across a SIGKILL of the control plane.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::{ControlPlane, wait_until};
use std::time::{Duration, Instant};
use support::{next_table, report_usage, subscribe, usage_record};

#[test]
fn subscriber_gets_each_change_within_a_second_and_nodes_shows_it() {
    let cp = ControlPlane::start();
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
    cp.ctl_with(
        &["credential", "add", "deepseek"],
        Some("sk-route-secret\n"),
        &cp.admin_token,
    )
    .ok();

    let rx = subscribe(cp.url(), cp.node_token.clone(), "edge-1");
    // The compile after `credential add` is asynchronous: wait for the table that has it.
    let mut first = next_table(&rx, 0, Duration::from_secs(10));
    while first.table.credentials.is_empty() {
        first = next_table(&rx, first.table.route_version, Duration::from_secs(10));
    }
    assert_eq!(first.table.base_version, 0, "a full table");
    assert_eq!(first.table.providers.len(), 1);
    assert_eq!(first.table.credentials[0].secret, "sk-route-secret");

    let started = Instant::now();
    cp.ctl(&[
        "model",
        "set",
        "deepseek/deepseek-chat",
        "--provider",
        "deepseek",
        "--input",
        "0.28",
        "--output",
        "0.42",
    ])
    .ok();
    let cli_done = Instant::now();
    let next = next_table(&rx, first.table.route_version, Duration::from_secs(5));
    assert!(
        next.at.duration_since(cli_done) < Duration::from_secs(1),
        "the new table arrived {:?} after `model set` returned",
        next.at.duration_since(cli_done)
    );
    eprintln!(
        "model set → new table: {:?} (CLI round trip included)",
        next.at.duration_since(started)
    );
    let model = &next.table.models[0];
    assert_eq!(model.name, "deepseek/deepseek-chat");
    assert_eq!(model.offerings[0].input_micro_usd_per_mtok, 280_000);

    // A client key shows up as its hash, and leaves the table when revoked.
    let key = cp.ctl(&["--json", "key", "create", "alice"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let with_key = next_table(&rx, next.table.route_version, Duration::from_secs(5));
    use sha2::Digest;
    let hash = sha2::Sha256::digest(key.as_bytes()).to_vec();
    assert!(with_key.table.keys.iter().any(|k| k.sha256 == hash));
    cp.ctl(&["key", "revoke", "alice"]).ok();
    let revoked = next_table(&rx, with_key.table.route_version, Duration::from_secs(5));
    assert!(revoked.table.keys.is_empty());

    let version = revoked.table.route_version;
    assert!(wait_until(Duration::from_secs(5), || {
        let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
        nodes[0]["node_id"] == "edge-1"
            && nodes[0]["route_version"] == version
            && nodes[0]["connected"] == true
    }));
    let table = cp.ctl(&["nodes"]).ok().stdout;
    assert!(table.contains("edge-1") && table.contains("yes"), "{table}");

    // When the subscriber goes away, the node shows disconnected, still with its last version.
    drop(rx);
    cp.ctl(&[
        "provider",
        "add",
        "other",
        "--protocol",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ])
    .ok();
    assert!(wait_until(Duration::from_secs(10), || {
        cp.ctl(&["--json", "nodes"]).ok().json()[0]["connected"] == false
    }));
}

#[test]
fn an_openai_responses_provider_is_listed_and_pushed_with_its_protocol_and_preset() {
    let cp = ControlPlane::start();
    let added = cp
        .ctl(&[
            "--json",
            "provider",
            "add",
            "oai-responses",
            "--preset",
            "openai",
            "--protocol",
            "openai-responses",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--catalog",
            "none",
        ])
        .ok()
        .json();
    assert_eq!(added["protocol"], "openai-responses", "{added}");
    cp.ctl(&[
        "provider",
        "add",
        "plain",
        "--protocol",
        "openai-responses",
        "--base-url",
        "http://127.0.0.1:9/v1/",
    ])
    .ok();
    cp.ctl_with(
        &["credential", "add", "oai-responses"],
        Some("sk-responses\n"),
        &cp.admin_token,
    )
    .ok();

    let list = cp.ctl(&["--json", "provider", "list"]).ok().json();
    let listed = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {list}"))
            .clone()
    };
    let with_preset = listed("oai-responses");
    assert_eq!(with_preset["protocol"], "openai-responses");
    assert_eq!(with_preset["preset"], "openai");
    assert_eq!(with_preset["base_url"], "http://127.0.0.1:9/v1");
    let plain = listed("plain");
    assert_eq!(plain["protocol"], "openai-responses");
    assert_eq!(plain["base_url"], "http://127.0.0.1:9/v1");
    let table = cp.ctl(&["provider", "list"]).ok().stdout;
    assert!(table.contains("openai-responses"), "{table}");

    let rx = subscribe(cp.url(), cp.node_token.clone(), "edge-responses");
    let mut got = next_table(&rx, 0, Duration::from_secs(10));
    while got.table.providers.len() < 2 || got.table.credentials.is_empty() {
        got = next_table(&rx, got.table.route_version, Duration::from_secs(10));
    }
    let pushed = |name: &str| {
        got.table
            .providers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not pushed"))
    };
    let responses = keyplane_proto::v1::Protocol::OpenaiResponses as i32;
    assert_eq!(pushed("oai-responses").protocol, responses);
    assert_eq!(pushed("oai-responses").preset, "openai");
    assert_eq!(pushed("oai-responses").base_url, "http://127.0.0.1:9/v1");
    assert_eq!(pushed("plain").protocol, responses);
    assert_eq!(pushed("plain").preset, "", "no preset: an empty preset");
    assert_eq!(got.table.credentials[0].secret, "sk-responses");

    // `provider set` moves a provider between protocols; the next table carries it.
    let set = cp
        .ctl(&[
            "--json",
            "provider",
            "set",
            "plain",
            "--protocol",
            "openai",
            "--base-url",
            "http://127.0.0.1:10/v1",
        ])
        .ok()
        .json();
    assert_eq!(set["protocol"], "openai", "{set}");
    let next = next_table(&rx, got.table.route_version, Duration::from_secs(10));
    let plain = next
        .table
        .providers
        .iter()
        .find(|p| p.name == "plain")
        .unwrap();
    assert_eq!(plain.protocol, keyplane_proto::v1::Protocol::Openai as i32);
    assert_eq!(plain.base_url, "http://127.0.0.1:10/v1");
    let refused = cp.ctl(&["provider", "set", "plain", "--protocol", "responses"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("openai, anthropic, openai-responses"),
        "{}",
        refused.stderr
    );
}

#[test]
fn many_subscribers_each_get_the_newest_table() {
    let cp = ControlPlane::start();
    let receivers: Vec<_> = (0..5)
        .map(|i| subscribe(cp.url(), cp.node_token.clone(), &format!("edge-{i}")))
        .collect();
    let base: Vec<u64> = receivers
        .iter()
        .map(|rx| {
            next_table(rx, 0, Duration::from_secs(10))
                .table
                .route_version
        })
        .collect();
    // A burst of changes: every subscriber ends on a table that has all of them.
    for i in 0..20 {
        cp.ctl(&[
            "provider",
            "add",
            &format!("p{i}"),
            "--protocol",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ])
        .ok();
    }
    for (rx, base) in receivers.iter().zip(base) {
        let mut version = base;
        let mut providers = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while providers < 20 && Instant::now() < deadline {
            let got = next_table(rx, version, Duration::from_secs(10));
            version = got.table.route_version;
            providers = got.table.providers.len();
        }
        assert_eq!(providers, 20);
    }
    assert!(wait_until(Duration::from_secs(5), || {
        let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
        nodes.as_array().unwrap().len() == 5
            && nodes
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["connected"] == true)
    }));
}

#[test]
fn wrong_node_token_is_refused() {
    let cp = ControlPlane::start();
    for token in ["wrong-node-token-value".to_string(), cp.admin_token.clone()] {
        let rx = subscribe(cp.url(), token.clone(), "edge-1");
        match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated),
            Ok(_) => panic!("a wrong node token got a route table"),
        }
        let err = report_usage(
            &cp.url(),
            &token,
            "edge-1",
            vec![usage_record("r1", "k", 1, 1, 1)],
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
    let rx = subscribe(cp.url(), cp.node_token.clone(), "bad node id");
    match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        Ok(_) => panic!("a malformed node id got a route table"),
    }
    // Still serving.
    cp.ctl(&["nodes"]).ok();
}

#[test]
fn usage_counts_once_and_survives_sigkill_after_ack() {
    let mut cp = ControlPlane::start();
    let key_id = cp.ctl(&["--json", "key", "create", "alice"]).ok().json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let batch: Vec<_> = (0..100)
        .map(|i| usage_record(&format!("req-{i:03}"), &key_id, 10, 5, 1_000))
        .collect();
    let ack = report_usage(&cp.url(), &cp.node_token, "edge-1", batch.clone()).unwrap();
    assert_eq!(ack.acked_ids.len(), 100);
    assert!(ack.rejected.is_empty());
    // Re-sent (the node did not see the ack): acknowledged again, counted once.
    let again = report_usage(&cp.url(), &cp.node_token, "edge-1", batch.clone()).unwrap();
    assert_eq!(again.acked_ids.len(), 100);

    // A further batch, acknowledged, then SIGKILL at once: nothing acknowledged may be lost.
    let more: Vec<_> = (100..150)
        .map(|i| usage_record(&format!("req-{i:03}"), &key_id, 10, 5, 1_000))
        .collect();
    assert_eq!(
        report_usage(&cp.url(), &cp.node_token, "edge-2", more.clone())
            .unwrap()
            .acked_ids
            .len(),
        50
    );
    cp.kill9();
    cp.restart();

    // After the restart, the same records again change nothing.
    report_usage(&cp.url(), &cp.node_token, "edge-2", more).unwrap();
    report_usage(&cp.url(), &cp.node_token, "edge-1", batch).unwrap();

    let rows = cp.ctl(&["--json", "usage"]).ok().json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["key"], "alice");
    assert_eq!(row["model"], "deepseek/deepseek-chat");
    assert_eq!(row["provider"], "deepseek");
    assert_eq!(row["credential"], "cred-1");
    assert_eq!(row["requests"], 150);
    assert_eq!(row["input_tokens"], 1500);
    assert_eq!(row["output_tokens"], 750);
    assert_eq!(row["cost_usd"], 0.00015);
    let by_key = cp.ctl(&["--json", "usage", "--key", "alice"]).ok().json();
    assert_eq!(by_key, serde_json::Value::Array(rows.clone()));
    let table = cp.ctl(&["usage"]).ok().stdout;
    assert!(
        table.contains("alice") && table.contains("150") && table.contains("$0.00015"),
        "{table}"
    );

    // Malformed records are rejected, not acknowledged, and not counted.
    let mut bad = usage_record("req-bad", &key_id, 1, 1, 1);
    bad.model = String::new();
    let out = report_usage(&cp.url(), &cp.node_token, "edge-1", vec![bad]).unwrap();
    assert!(out.acked_ids.is_empty());
    assert_eq!(out.rejected[0].request_id, "req-bad");
    assert_eq!(cp.ctl(&["--json", "usage"]).ok().json()[0]["requests"], 150);
}
