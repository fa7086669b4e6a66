//! The request log end to end: every request a data plane answers or refuses is in
//! `keyplanectl requests` once, with its attempts, and a refusal bills nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{Behavior, ControlPlane, wait_until};
use serde_json::{Value, json};
use support::*;

const TWO: [Offer<'static>; 2] = [offer("b-mid", "2", "4"), offer("c-cheap", "1", "2")];

/// `requests --json` with `args`.
fn requests(c: &Cluster, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "requests"];
    all.extend_from_slice(args);
    c.cp.ctl(&all).ok().json().as_array().unwrap().clone()
}

/// Waits until the log holds `n` entries; returns them (newest first).
fn wait_logged(c: &Cluster, n: usize) -> Vec<Value> {
    let mut list = Vec::new();
    let ok = wait_until(TIMEOUT, || {
        list = requests(c, &["--limit", "1000"]);
        list.len() >= n
    });
    assert!(
        ok,
        "the log never held {n} entries: {list:?}\ndata plane log:\n{}",
        c.dp.logs()
    );
    list
}

fn entry<'a>(list: &'a [Value], request_id: &str) -> &'a Value {
    list.iter()
        .find(|e| e["request_id"] == request_id)
        .unwrap_or_else(|| panic!("{request_id} not in the log: {list:?}"))
}

fn id_of(resp: &keyplane_testkit::http::HttpResponse) -> String {
    resp.header("x-request-id").unwrap().to_string()
}

fn attempts(e: &Value) -> Vec<(String, String)> {
    e["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert!(a["credential"].as_str().is_some_and(|c| !c.is_empty()));
            (
                a["provider"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn served_failed_over_and_refused_requests_are_each_logged_and_refusals_bill_nothing() {
    let c = Cluster::start(&TWO, &[]);
    let plain = c.chat(&chat_body(false));
    assert_eq!(plain.status, 200, "{}", plain.text());
    let streamed = c.chat(&chat_body(true));
    assert_eq!(streamed.status, 200);
    c.fake("c-cheap").push_once(Behavior::status(500));
    let failover = c.chat(&chat_body(false));
    assert_eq!(failover.status, 200, "{}", failover.text());
    let unknown =
        c.chat(&json!({"model": "no/such-model", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(unknown.status, 404);
    let bad_body = HttpRequest::post_json("/v1/chat/completions", &json!({"messages": 3}))
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(bad_body.status, 400);
    let anthropic = c.messages(&messages_body(false));
    assert_eq!(anthropic.status, 200, "{}", anthropic.text());
    // No key: nobody to log it under.
    let anonymous = HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(anonymous.status, 401);

    let list = wait_logged(&c, 6);
    c.wait_spool_settled();
    let list_after = requests(&c, &["--limit", "1000"]);
    assert_eq!(list_after.len(), 6, "{list_after:?}");
    assert_eq!(list.len(), 6);

    let e = entry(&list, &id_of(&plain));
    assert_eq!(e["key"], "tester");
    assert_eq!(e["dialect"], "openai-chat");
    assert_eq!(e["model"], MODEL);
    assert_eq!(e["provider"], "c-cheap");
    assert!(e["credential"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(e["status"], 200);
    assert_eq!(e["error"], Value::Null);
    assert_eq!(e["output_tokens"], 20);
    assert!(e["input_tokens"].as_u64().unwrap() > 0);
    assert!(e["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(e["ttft_ms"], Value::Null, "not streamed");
    assert!(e["latency_ms"].is_u64());
    assert_eq!(e["node_id"], "edge-1");
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(attempts(e), pairs(&[("c-cheap", "ok")]));

    let e = entry(&list, &id_of(&streamed));
    assert!(e["ttft_ms"].is_u64(), "streamed: {e}");
    assert_eq!(e["status"], 200);

    let e = entry(&list, &id_of(&failover));
    assert_eq!(e["provider"], "b-mid");
    assert_eq!(
        attempts(e),
        pairs(&[("c-cheap", "server_error"), ("b-mid", "ok")])
    );

    let e = entry(&list, &id_of(&unknown));
    assert_eq!(e["status"], 404);
    assert_eq!(e["error"], "model_not_found");
    assert_eq!(e["model"], "no/such-model");
    assert_eq!(e["provider"], "");
    assert_eq!(e["cost_usd"], 0.0);
    assert_eq!(e["billed"], false);
    assert!(attempts(e).is_empty());

    let e = entry(&list, &id_of(&bad_body));
    assert_eq!(e["status"], 400);
    assert_eq!(e["error"], "invalid_request");

    let e = entry(&list, &id_of(&anthropic));
    assert_eq!(e["dialect"], "anthropic");

    // Billing is as if the refusals never happened: four served requests.
    let rows = c.usage();
    assert_eq!(total(&rows, "requests"), 4, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["model"] == MODEL),
        "a refusal made a usage row: {rows:?}"
    );

    // Newest first, filters, limit.
    let ids: Vec<&str> = list
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    let times: Vec<&str> = list.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let two = requests(&c, &["--limit", "2"]);
    assert_eq!(two.len(), 2);
    assert_eq!(two[0]["request_id"], ids[0]);
    let not_found = requests(&c, &["--status", "404"]);
    assert_eq!(not_found.len(), 1);
    assert_eq!(not_found[0]["request_id"], id_of(&unknown).as_str());
    assert_eq!(requests(&c, &["--status", "200"]).len(), 4);
    assert_eq!(requests(&c, &["--model", "no/such-model"]).len(), 1);
    assert_eq!(requests(&c, &["--model", MODEL]).len(), 4);
    assert_eq!(
        requests(&c, &["--key", "tester", "--model", MODEL, "--limit", "3"]).len(),
        3
    );
    assert!(requests(&c, &["--since", "2999-01-01"]).is_empty());
    assert_eq!(requests(&c, &["--until", "2999-01-01"]).len(), 6);
    assert!(requests(&c, &["--until", "2000-01-01"]).is_empty());
    assert_eq!(c.cp.ctl(&["requests", "--key", "nobody"]).code, 1);
    let table = c.cp.ctl(&["requests"]).ok();
    assert!(table.stdout.contains(&id_of(&failover)), "{}", table.stdout);
    assert!(table.stdout.contains("model_not_found"), "{}", table.stdout);

    // Neither the client key nor an upstream secret is ever shown.
    let text =
        c.cp.ctl(&["--json", "requests", "--limit", "1000"])
            .ok()
            .stdout;
    for secret in [c.key.as_str(), "sk-c-cheap", "sk-b-mid"] {
        assert!(!text.contains(secret), "{secret} in requests --json");
    }
}

#[test]
fn a_limit_refusal_is_logged_under_its_key_and_billed_nowhere() {
    let c = Cluster::start(&TWO, &[]);
    let key =
        c.cp.ctl(&["--json", "key", "create", "slow", "--rpm", "1"])
            .ok()
            .json()["key"]
            .as_str()
            .unwrap()
            .to_string();
    let send = || {
        HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
            .bearer(&key)
            .send(c.dp.addr, TIMEOUT)
            .unwrap()
    };
    assert!(wait_until(TIMEOUT, || send().status == 200));
    let refused = send();
    assert_eq!(refused.status, 429, "{}", refused.text());
    let mut list = Vec::new();
    assert!(wait_until(TIMEOUT, || {
        list = requests(&c, &["--key", "slow", "--status", "429"]);
        !list.is_empty()
    }));
    assert_eq!(list.len(), 1);
    let e = &list[0];
    assert_eq!(e["request_id"], id_of(&refused).as_str());
    assert_eq!(e["key"], "slow");
    assert_eq!(e["error"], "rate_limit_exceeded");
    assert_eq!(e["cost_usd"], 0.0);
    assert!(attempts(e).is_empty());
    c.wait_spool_settled();
    let rows = c.cp.ctl(&["--json", "usage", "--key", "slow"]).ok().json();
    assert_eq!(total(rows.as_array().unwrap(), "requests"), 1, "{rows}");
    let logged = requests(&c, &["--key", "slow"]);
    assert_eq!(logged.len(), 1 + 1, "the served one and the refusal");
}

#[test]
fn the_log_holds_each_request_once_after_a_data_plane_sigkill() {
    let mut c = Cluster::start(&TWO, &[]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = c.chat(&chat_body(i == 1));
        assert_eq!(r.status, 200);
        ids.push(id_of(&r));
    }
    let r = c.chat(&json!({"model": "missing", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status, 404);
    ids.push(id_of(&r));
    // Reported and acked, but their spool segment is not deleted yet (it is still open): the
    // restarted process sends them all again.
    wait_logged(&c, 4);
    c.dp.kill9();
    c.cp.kill9();
    c.dp.restart();
    assert!(c.dp.wait_ready(TIMEOUT), "{}", c.dp.logs());
    // Served from the snapshot while the control plane is away: these wait in the spool.
    for i in 0..2 {
        let r = c.chat(&chat_body(i == 0));
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(id_of(&r));
    }
    let r = c.chat(&json!({"model": "missing", "messages": [{"role": "user", "content": "hi"}]}));
    ids.push(id_of(&r));
    c.dp.kill9();
    c.dp.restart();
    c.cp.restart();
    assert!(c.dp.wait_ready(TIMEOUT), "{}", c.dp.logs());
    let list = wait_logged(&c, ids.len());
    c.wait_spool_settled();
    let list = {
        let again = requests(&c, &["--limit", "1000"]);
        assert_eq!(again.len(), list.len());
        again
    };
    let mut logged: Vec<&str> = list
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    logged.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(logged, expected, "each request exactly once");
    assert_eq!(total(&c.usage(), "requests"), 5);
}

#[test]
fn entries_past_the_retention_are_pruned_and_billing_stays() {
    let cp = ControlPlane::start_with_args(&["--request-log-retention", "2s"]);
    let c = Cluster::start_on(cp, &TWO, &[], |_| {});
    assert_eq!(c.chat(&chat_body(false)).status, 200);
    wait_logged(&c, 1);
    assert!(
        wait_until(TIMEOUT, || requests(&c, &[]).is_empty()),
        "the entry outlived its retention"
    );
    assert_eq!(total(&c.usage(), "requests"), 1);
}

#[test]
fn a_retention_of_zero_keeps_no_log_and_bills_as_always() {
    let cp = ControlPlane::start_with_args(&["--request-log-retention", "0"]);
    let c = Cluster::start_on(cp, &TWO, &[], |_| {});
    assert_eq!(c.chat(&chat_body(false)).status, 200);
    let unknown =
        c.chat(&json!({"model": "missing", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(unknown.status, 404);
    c.wait_usage(1);
    c.wait_spool_settled();
    assert!(requests(&c, &[]).is_empty());
    assert_eq!(total(&c.usage(), "requests"), 1);
}
