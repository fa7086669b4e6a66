//! One client cannot take a shared credential away from everyone: what it sends stays out of the
//! upstream's headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{FakeConfig, FakeUpstream, wait_until};
use serde_json::json;
use support::*;

#[test]
fn a_clients_scope_and_software_headers_never_reach_a_pooled_credential() {
    let c = Cluster::start(&[anthropic_offer("claude", "1", "2")], &[]);
    // A second model on an OpenAI-protocol upstream.
    let oai = FakeUpstream::start(FakeConfig {
        name: "oai".into(),
        api_key: Some("sk-oai".into()),
        ..FakeConfig::default()
    });
    c.cp.ctl(&[
        "provider",
        "add",
        "oai",
        "--protocol",
        "openai",
        "--base-url",
        &oai.openai_base_url(),
    ])
    .ok();
    c.cp.ctl_with(
        &["credential", "add", "oai"],
        Some("sk-oai\n"),
        &c.cp.admin_token,
    )
    .ok();
    c.cp.ctl(&[
        "model",
        "set",
        "oai/model",
        "--provider",
        "oai",
        "--input",
        "1",
        "--output",
        "1",
    ])
    .ok();
    assert!(wait_until(TIMEOUT, || {
        HttpRequest::get("/v1/models")
            .bearer(&c.key)
            .send(c.dp.addr, TIMEOUT)
            .unwrap()
            .text()
            .contains("oai/model")
    }));

    let client_headers = [
        ("OpenAI-Organization", "org-attacker"),
        ("OpenAI-Project", "proj_attacker"),
        ("x-goog-user-project", "attacker-project"),
        ("HTTP-Referer", "https://attacker.example"),
        ("X-Title", "attacker"),
        ("x-stainless-os", "Linux"),
        ("x-request-id", "client-trace-1"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("user-agent", "OpenAI/Python 1.99"),
        ("accept", "text/html"),
        ("anthropic-beta", "a-beta"),
    ];
    let never = |seen: &keyplane_testkit::fake_upstream::RecordedRequest, allowed: &[&str]| {
        for (name, value) in client_headers {
            if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                continue;
            }
            assert!(
                !seen
                    .headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value),
                "{name} reached the upstream: {:?}",
                seen.headers
            );
        }
        let ua = seen.header("user-agent").unwrap_or("");
        assert!(
            ua.starts_with("keyplane/"),
            "the gateway's own user agent: {ua}"
        );
        assert_eq!(seen.header("accept-encoding"), Some("identity"));
    };

    // OpenAI client to an OpenAI upstream: nothing of the client's.
    let mut req = HttpRequest::post_json(
        "/v1/chat/completions",
        &json!({"model": "oai/model", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .bearer(&c.key);
    for (n, v) in client_headers {
        req = req.header(n, v);
    }
    let r = req.send(c.dp.addr, TIMEOUT).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &oai.requests()[0];
    never(seen, &[]);
    assert_eq!(seen.header("authorization"), Some("Bearer sk-oai"));

    // Anthropic client to an Anthropic upstream: its version and betas, nothing else.
    let mut req = HttpRequest::post_json("/v1/messages", &messages_body(false))
        .header("x-api-key", &c.key)
        .header("anthropic-version", "2026-10-21");
    for (n, v) in client_headers {
        req = req.header(n, v);
    }
    let r = req.send(c.dp.addr, TIMEOUT).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &c.fake("claude").requests()[0];
    never(seen, &["anthropic-beta"]);
    assert_eq!(seen.header("anthropic-beta"), Some("a-beta"));
    assert_eq!(seen.header("anthropic-version"), Some("2026-10-21"));

    // OpenAI client translated to the Anthropic upstream: no betas it did not speak for.
    let mut req = HttpRequest::post_json(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .bearer(&c.key);
    for (n, v) in client_headers {
        req = req.header(n, v);
    }
    let r = req.send(c.dp.addr, TIMEOUT).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &c.fake("claude").requests()[1];
    never(seen, &[]);
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
}
