//! The data plane end to end over loopback: routing by cost, failover, streaming, errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::Behavior;
use keyplane_testkit::http::HttpRequest;
use serde_json::json;
use std::time::Duration;
use support::*;

/// Declared expensive first, and the cheapest is neither first declared nor first by name.
const THREE: [Offer<'static>; 3] = [
    offer("a-expensive", "3", "15"),
    offer("b-mid", "2", "4"),
    offer("c-cheap", "1", "2"),
];

#[test]
fn the_cheapest_upstream_serves_with_its_model_id() {
    let c = Cluster::start(&THREE, &[]);
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.header("x-request-id").is_some_and(|id| id.len() == 36));
    let body = resp.json();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("word0")
    );
    assert_eq!(served_by(&c), "c-cheap");
    let seen = &c.fake("c-cheap").requests()[0];
    assert_eq!(
        seen.json.as_ref().unwrap()["model"],
        "c-cheap-model",
        "model rewritten to the upstream id"
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-c-cheap"),
        "the upstream's key, not the client's"
    );
    assert_eq!(
        c.fake("a-expensive").request_count() + c.fake("b-mid").request_count(),
        0
    );
}

#[test]
fn a_multiplier_changes_the_choice() {
    let offers = [
        offer("a-expensive", "3", "15"),
        offer("b-mid", "2", "4"),
        Offer {
            multiplier: "3",
            ..offer("c-cheap", "1", "2")
        },
    ];
    let c = Cluster::start(&offers, &[]);
    assert_eq!(c.chat(&chat_body(false)).status, 200);
    assert_eq!(served_by(&c), "b-mid");
}

#[test]
fn unknown_fields_reach_the_upstream_untouched() {
    let c = Cluster::start(&THREE, &[]);
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "x_custom": {"nested": [1, 2, 3]},
        "temperature": 0,
    });
    assert_eq!(c.chat(&body).status, 200);
    let seen = c.fake("c-cheap").requests()[0].json.clone().unwrap();
    for field in [
        "tools",
        "response_format",
        "x_custom",
        "temperature",
        "messages",
    ] {
        assert_eq!(seen[field], body[field], "{field}");
    }
}

fn failover_case(behavior: Behavior, stream: bool) {
    let c = Cluster::start(&THREE, &[]);
    c.fake("c-cheap").set_behavior(behavior.clone());
    let resp = c.chat(&chat_body(stream));
    assert_eq!(
        resp.status,
        200,
        "{behavior:?} stream={stream}: {}",
        resp.text()
    );
    if stream {
        let data = resp.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        assert!(resp.text().contains("word0"));
        assert!(!resp.text().contains("\"error\""), "{}", resp.text());
    }
    assert_eq!(
        c.fake("c-cheap").request_count(),
        1,
        "the cheapest was tried first"
    );
    assert_eq!(
        c.fake("b-mid").request_count(),
        1,
        "then the next cheapest served"
    );
    assert_eq!(c.fake("a-expensive").request_count(), 0);
    let rows = c.wait_usage(1);
    assert_eq!(
        rows[0]["provider"], "b-mid",
        "billed to the one that answered"
    );
}

#[test]
fn failover_on_429() {
    failover_case(Behavior::status_retry_after(429, "30"), false);
    failover_case(Behavior::status(429), true);
}

#[test]
fn failover_on_500() {
    failover_case(Behavior::status(500), false);
    failover_case(Behavior::status(500), true);
}

#[test]
fn failover_on_an_error_before_content() {
    // OpenRouter style: 200, comments and an empty role chunk, then an error chunk.
    failover_case(Behavior::MidStreamError, true);
    // Cut before any content.
    failover_case(Behavior::CutAfter(0), true);
}

#[test]
fn failover_on_a_closed_port_and_a_first_byte_timeout() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    for stream in [false, true] {
        let c = Cluster::start(&THREE, &["--first-byte-timeout-ms", "1500"]);
        add_offer(&c.cp, &offer("0-dead", "0.5", "1"), &dead_url);
        // Wait for the new table: the dead provider is cheapest, so it is tried first.
        c.fake("c-cheap").set_behavior(Behavior::Hang);
        keyplane_testkit::wait_until(TIMEOUT, || {
            c.dp.logs().matches("route table installed").count() >= 2
        });
        let started = std::time::Instant::now();
        let resp = c.chat(&chat_body(stream));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            served_by(&c),
            "b-mid",
            "dead port, then a hanging upstream, then b-mid"
        );
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

#[test]
fn every_upstream_failing_gives_an_openai_error() {
    let c = Cluster::start(&THREE, &[]);
    for f in &c.fakes {
        f.set_behavior(Behavior::status_retry_after(429, "7"));
    }
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(resp.json()["error"]["code"], "rate_limit_exceeded");
    // Every credential now cools down for 7 s: the next request touches none of them.
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 429);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(c.fake("c-cheap").request_count(), 1);
    // An operator clears the cooldowns.
    let creds = c.cp.ctl(&["--json", "credential", "list"]).ok().json();
    for cred in creds.as_array().unwrap() {
        c.cp.ctl(&["credential", "enable", cred["id"].as_str().unwrap()])
            .ok();
    }
    for f in &c.fakes {
        f.set_behavior(Behavior::status(503));
    }
    // Each enable is its own route table push: wait for the one that brings the cheapest back
    // (the first candidate tried), or the 400 below could go to another while it still cools.
    let cheap_cooling = c.fake("c-cheap").request_count();
    let mut resp = None;
    assert!(keyplane_testkit::wait_until(TIMEOUT, || {
        let r = c.chat(&chat_body(true));
        let done = r.status == 503 && c.fake("c-cheap").request_count() > cheap_cooling;
        resp = Some(r);
        done
    }));
    assert!(resp.unwrap().json()["error"]["message"].is_string());
    for f in &c.fakes {
        f.set_behavior(Behavior::status(400));
    }
    let (cheap, mid) = (
        c.fake("c-cheap").request_count(),
        c.fake("b-mid").request_count(),
    );
    let resp = c.chat(&chat_body(false));
    assert_eq!(
        resp.status, 400,
        "the client's own fault is passed through, not retried"
    );
    assert_eq!(c.fake("c-cheap").request_count(), cheap + 1);
    assert_eq!(c.fake("b-mid").request_count(), mid);
}

#[test]
fn bad_input_gets_openai_errors_and_reaches_no_upstream() {
    let c = Cluster::start(&THREE, &["--max-body-bytes", "2000"]);
    let addr = c.dp.addr;
    let t = TIMEOUT;
    let cases: Vec<(HttpRequest<'_>, u16, &str)> = vec![
        (
            HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
                .raw_body(b"{not json".to_vec())
                .bearer(&c.key),
            400,
            "invalid_request_error",
        ),
        (
            HttpRequest::post_json("/v1/chat/completions", &chat_body(false)),
            401,
            "invalid_api_key",
        ),
        (
            HttpRequest::post_json("/v1/chat/completions", &chat_body(false)).bearer("kp_wrong"),
            401,
            "invalid_api_key",
        ),
        (
            HttpRequest::post_json(
                "/v1/chat/completions",
                &json!({"model": "nope/nope", "messages": []}),
            )
            .bearer(&c.key),
            404,
            "model_not_found",
        ),
        (
            HttpRequest::post_json("/v1/chat/completions", &json!({"messages": []})).bearer(&c.key),
            400,
            "invalid_request_error",
        ),
        (
            HttpRequest::post_json(
                "/v1/chat/completions",
                &json!({"model": MODEL, "messages": [], "pad": "x".repeat(5000)}),
            )
            .bearer(&c.key),
            413,
            "request_too_large",
        ),
        (HttpRequest::get("/v1/models"), 401, "invalid_api_key"),
        (
            HttpRequest::get("/v1/nothing").bearer(&c.key),
            404,
            "invalid_request_error",
        ),
    ];
    for (req, status, word) in cases {
        let resp = req.send(addr, t).unwrap();
        assert_eq!(resp.status, status, "{}", resp.text());
        let body = resp.json();
        assert!(body["error"]["message"].is_string(), "{body}");
        assert!(body.to_string().contains(word), "{status}: {body}");
        assert!(resp.header("x-request-id").is_some());
    }
    for f in &c.fakes {
        assert_eq!(f.request_count(), 0, "{} was called", f.name());
    }
    assert_eq!(c.dp.get_status("/healthz"), Some(200));
}

#[test]
fn models_lists_what_the_key_may_use() {
    let c = Cluster::start(&THREE, &[]);
    let resp = HttpRequest::get("/v1/models")
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200);
    let body = resp.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL);
    assert_eq!(body["data"][0]["object"], "model");
}

#[test]
fn a_revoked_key_is_refused_within_a_second() {
    let c = Cluster::start(&THREE, &[]);
    assert_eq!(c.chat(&chat_body(false)).status, 200);
    c.cp.ctl(&["key", "revoke", "tester"]).ok();
    let revoked_at = std::time::Instant::now();
    assert!(keyplane_testkit::wait_until(Duration::from_secs(5), || c
        .chat(&chat_body(false))
        .status
        == 401));
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        revoked_at.elapsed()
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::{Read, Write};
    let c = Cluster::start(&THREE, &["--header-read-timeout-ms", "300"]);
    let mut slow = std::net::TcpStream::connect(c.dp.addr).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server answers 408 or simply closes; either way the read ends well before 10 s.
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connection held for {:?}",
        started.elapsed()
    );
    // And everyone else is still served.
    assert_eq!(c.chat(&chat_body(false)).status, 200);
}
