//! What operators see: `/metrics` parsed by a Prometheus parser, counters that move as requests
//! are served, and JSON log lines with the request's fields and no secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::wait_until;
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use support::{Cluster, MODEL, TIMEOUT, chat_body, offer};

fn scrape(cluster: &Cluster) -> Scrape {
    let resp = HttpRequest::get("/metrics")
        .send(cluster.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200);
    let text = resp.text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => f64::NAN,
    }
}

/// The sum of `metric`'s samples whose labels include every pair of `labels`.
fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| number(&x.value))
        .sum()
}

fn has(s: &Scrape, metric: &str) -> bool {
    s.samples.iter().any(|x| x.metric == metric)
}

#[test]
fn metrics_parse_as_prometheus_text_and_counters_move() {
    let cluster = Cluster::start(&[offer("cheap", "1", "2"), offer("dear", "5", "10")], &[]);
    let before = scrape(&cluster);
    let served = [("model", MODEL), ("provider", "cheap"), ("status", "200")];
    assert_eq!(sum(&before, "keyplane_requests_total", &served), 0.0);
    assert!(sum(&before, "keyplane_route_version", &[]) >= 1.0);
    assert!(has(&before, "keyplane_usage_spool_depth"));
    assert!(has(&before, "keyplane_route_table_age_seconds"));

    for stream in [false, true, false] {
        assert_eq!(cluster.chat(&chat_body(stream)).status, 200);
    }
    // The cheap upstream fails once: the request fails over to the dear one.
    cluster
        .fake("cheap")
        .push_once(keyplane_testkit::Behavior::status(503));
    assert_eq!(cluster.chat(&chat_body(false)).status, 200);
    // Refused before any upstream: a bad key.
    let bad = HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
        .bearer("kp_wrong")
        .send(cluster.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(bad.status, 401);

    let mut after = scrape(&cluster);
    assert!(
        wait_until(TIMEOUT, || {
            after = scrape(&cluster);
            sum(&after, "keyplane_requests_total", &served) == 3.0
        }),
        "requests never counted: {:?}",
        after.samples
    );
    let dear = [("provider", "dear")];
    assert_eq!(sum(&after, "keyplane_requests_total", &dear), 1.0);
    assert_eq!(sum(&after, "keyplane_failovers_total", &dear), 1.0);
    assert_eq!(
        sum(
            &after,
            "keyplane_upstream_attempts_total",
            &[("provider", "cheap"), ("outcome", "server_error")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &after,
            "keyplane_refused_requests_total",
            &[("reason", "unauthenticated")]
        ),
        1.0
    );
    assert!(
        sum(
            &after,
            "keyplane_output_tokens_total",
            &[("provider", "cheap")]
        ) > 0.0
    );
    assert!(
        sum(
            &after,
            "keyplane_cost_nano_usd_total",
            &[("provider", "cheap")]
        ) > 0.0
    );
    // Histograms: every served request observed once (the +Inf bucket counts them all).
    assert_eq!(
        sum(
            &after,
            "keyplane_request_duration_seconds",
            &[("provider", "cheap")]
        ),
        3.0
    );
    assert_eq!(
        sum(
            &after,
            "keyplane_upstream_time_to_first_byte_seconds",
            &[("provider", "cheap")]
        ),
        3.0
    );
    cluster.wait_spool_settled();
    let settled = scrape(&cluster);
    assert_eq!(sum(&settled, "keyplane_usage_spool_depth", &[]), 0.0);
    assert_eq!(
        sum(&settled, "keyplane_usage_spool_oldest_age_seconds", &[]),
        0.0
    );
}

#[test]
fn a_json_log_line_has_the_request_fields_and_no_secret() {
    let cluster = Cluster::start(&[offer("cheap", "1", "2")], &["--log-format", "json"]);
    let prompt = "my very private prompt 7f3a";
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "stream": false,
    });
    let resp = cluster.chat(&body);
    assert_eq!(resp.status, 200);
    let request_id = resp.header("x-request-id").unwrap().to_string();
    let bad = HttpRequest::post_json("/v1/chat/completions", &body)
        .bearer("kp_not_a_real_key_123")
        .send(cluster.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(bad.status, 401);
    let bad_id = bad.header("x-request-id").unwrap().to_string();

    let find = |id: &str| {
        cluster.dp.logs().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["request_id"] == id).then_some(v)
        })
    };
    let mut line = None;
    assert!(
        wait_until(TIMEOUT, || {
            line = find(&request_id);
            line.is_some() && find(&bad_id).is_some()
        }),
        "no JSON line for the requests; log:\n{}",
        cluster.dp.logs()
    );
    let line = line.unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["message"], "request served");
    assert_eq!(line["model"], MODEL);
    assert_eq!(line["provider"], "cheap");
    assert_eq!(line["status"], 200);
    for field in [
        "client_key_id",
        "credential_id",
        "latency_ms",
        "input_tokens",
        "output_tokens",
        "cost_nano_usd",
    ] {
        assert!(!line[field].is_null(), "{field} missing: {line}");
    }
    let refused = find(&bad_id).unwrap();
    assert_eq!(refused["status"], 401);

    // Every line is JSON, and none holds a secret, a client key or the prompt.
    let logs = cluster.dp.logs();
    for l in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
    for secret in [
        cluster.key.as_str(),
        "kp_not_a_real_key_123",
        "sk-cheap",
        cluster.cp.node_token.as_str(),
        prompt,
    ] {
        assert!(!logs.contains(secret), "{secret:?} is in the log");
    }
}

#[test]
fn with_json_logs_every_line_the_data_plane_prints_is_json() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(keyplane_testkit::process::bin_path("keyplane-dataplane"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--control",
        ])
        .arg(&control)
        .arg("--state-dir")
        .arg(state.path())
        .env("KEYPLANE_NODE_TOKEN", "node-token-for-tests-0123")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut announcement = String::new();
    stdout.read_line(&mut announcement).unwrap();
    let announced: serde_json::Value = serde_json::from_str(&announcement)
        .unwrap_or_else(|e| panic!("the announcement is not JSON ({e}): {announcement:?}"));
    let addr: std::net::SocketAddr = announced["listen"].as_str().unwrap().parse().unwrap();
    assert!(
        announced["message"]
            .as_str()
            .unwrap()
            .starts_with("keyplane-dataplane listening on ")
    );
    assert_eq!(announced["level"], "INFO");
    assert!(announced["timestamp"].is_string());
    // Some traffic, refused and served, then a clean stop: more lines of every kind.
    assert_eq!(
        HttpRequest::get("/healthz")
            .send(addr, TIMEOUT)
            .unwrap()
            .status,
        200
    );
    let refused = HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
        .bearer("kp_nope")
        .send(addr, TIMEOUT)
        .unwrap();
    assert_eq!(refused.status, 503);
    keyplane_testkit::process::send_signal(child.id(), libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.lines().count() >= 3, "{stderr}");
    keyplane_testkit::process::assert_json_lines("stdout", &rest);
    keyplane_testkit::process::assert_json_lines("stderr", &stderr);
}
