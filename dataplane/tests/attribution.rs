//! One client cannot take a shared credential away from everyone: what it sends stays out of the
//! upstream's headers, what its requests cause stays out of the credential's health, and a key
//! whose requests keep failing upstream is refused before it can open a circuit breaker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::{Behavior, FakeConfig, FakeUpstream, wait_until};
use serde_json::json;
use support::*;

/// OpenRouter's moderation 403 (message and metadata as OpenRouter sends them).
const MODERATION_403: &str = r#"{"error":{"message":"openai/gpt-4o requires moderation on OpenAI. Your input was flagged for \"violence\". No credits were charged.","code":403,"metadata":{"reasons":["violence"],"flagged_input":"FLAGGED tell me how to hurt...","provider_name":"OpenAI","model_slug":"openai/gpt-4o"}}}"#;
/// OpenAI's answer to an `OpenAI-Organization` header the key does not belong to.
const ORG_MISMATCH_401: &str = r#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
/// OpenRouter's answer to a key it does not know.
const OPENROUTER_NO_USER_401: &str = r#"{"error":{"message":"User not found.","code":401}}"#;

fn answer(code: u16, body: &str) -> Behavior {
    Behavior::Status {
        code,
        retry_after: None,
        body: Some(body.to_string()),
    }
}

/// Creates another client key and waits until the data plane accepts it.
fn second_key(c: &Cluster, name: &str) -> String {
    let key = c.cp.ctl(&["--json", "key", "create", name]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        wait_until(TIMEOUT, || {
            HttpRequest::get("/v1/models")
                .bearer(&key)
                .send(c.dp.addr, TIMEOUT)
                .is_ok_and(|r| r.status == 200)
        }),
        "key {name} never accepted"
    );
    key
}

fn chat_as(c: &Cluster, key: &str, content: &str) -> HttpResponse {
    HttpRequest::post_json(
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": content}]}),
    )
    .bearer(key)
    .send(c.dp.addr, TIMEOUT)
    .unwrap()
}

fn metrics(c: &Cluster) -> String {
    HttpRequest::get("/metrics")
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
        .text()
}

/// The value of the metric line starting with `prefix`, if present.
fn metric(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

fn credential_state(c: &Cluster, provider: &str) -> String {
    let list =
        c.cp.ctl(&["--json", "credential", "list", "--provider", provider])
            .ok()
            .json();
    list[0]["state"].as_str().unwrap_or("").to_string()
}

/// Whether this node's `keyplane_credential_state` shows `provider`'s credential in `state`.
fn node_shows(text: &str, provider: &str, state: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("keyplane_credential_state{")
            && l.contains(&format!("provider=\"{provider}\""))
            && l.contains(&format!("state=\"{state}\""))
            && l.ends_with(" 1")
    })
}

/// Statuses the fake named `name` answered, in order.
fn answered(c: &Cluster, name: &str) -> Vec<Option<u16>> {
    c.fake(name).requests().iter().map(|r| r.status).collect()
}

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

#[test]
fn a_moderation_403_and_an_org_mismatch_401_leave_the_credential_healthy() {
    let c = Cluster::start(
        &[offer("b-other", "2", "4"), offer("c-cheap", "1", "2")],
        &[],
    );
    let other = second_key(&c, "bystander");
    c.fake("c-cheap")
        .when_body_contains("FLAGGED", answer(403, MODERATION_403));
    c.fake("c-cheap")
        .when_body_contains("ORG-SCOPED", answer(401, ORG_MISMATCH_401));

    // Moderation: the client hears the provider's verdict, and the flagged prompt goes nowhere
    // else.
    let r = chat_as(&c, &c.key, "FLAGGED tell me how to hurt someone");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("requires moderation"), "{}", r.text());
    assert_eq!(c.fake("b-other").request_count(), 0, "not tried elsewhere");
    // Another key, right after: served by the same credential.
    let r = chat_as(&c, &other, "Say hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answered(&c, "c-cheap"), [Some(403), Some(200)]);

    // An organisation mismatch says nothing about the key: the request fails over, and the
    // credential keeps serving.
    let r = chat_as(&c, &c.key, "ORG-SCOPED hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answered(&c, "b-other"), [Some(200)], "it failed over");
    let r = chat_as(&c, &other, "Say hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        answered(&c, "c-cheap"),
        [Some(403), Some(200), Some(401), Some(200)],
        "the cheapest credential served the other key again"
    );

    let text = metrics(&c);
    assert!(!node_shows(&text, "c-cheap", "invalid"), "{text}");
    for provider in ["c-cheap", "b-other"] {
        assert_eq!(credential_state(&c, provider), "active");
    }
    let listed = c.cp.ctl(&["credential", "list"]).ok().stdout;
    assert!(!listed.contains("invalid"), "{listed}");
}

#[test]
fn a_refused_key_still_marks_the_credential_invalid() {
    let c = Cluster::start(
        &[offer("b-other", "2", "4"), offer("c-cheap", "1", "2")],
        &[],
    );
    c.fake("c-cheap")
        .set_behavior(answer(401, OPENROUTER_NO_USER_401));
    let r = c.chat(&chat_body(false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        wait_until(TIMEOUT, || credential_state(&c, "c-cheap") == "invalid"),
        "{}",
        c.dp.logs()
    );
    assert!(node_shows(&metrics(&c), "c-cheap", "invalid"));
    for _ in 0..3 {
        assert_eq!(c.chat(&chat_body(false)).status, 200);
    }
    assert_eq!(c.fake("c-cheap").request_count(), 1, "skipped from then on");
}

#[test]
fn a_key_whose_requests_keep_failing_is_refused_and_others_keep_being_served() {
    // Default budget: 10 failed requests a minute.
    let c = Cluster::start(&[offer("solo", "1", "2")], &[]);
    let other = second_key(&c, "bystander");
    c.fake("solo")
        .when_body_contains("POISON", Behavior::status(500));

    // Interleaved: the bystander is served each time; the poisoned requests fail (after trying
    // the one credential) until the key's budget is spent.
    for i in 0..10 {
        let r = chat_as(&c, &other, "Say hello");
        assert_eq!(r.status, 200, "bystander request {i}: {}", r.text());
        let r = chat_as(&c, &c.key, "POISON");
        assert_eq!(r.status, 503, "poisoned request {i}: {}", r.text());
    }
    let reached = c.fake("solo").request_count();
    assert_eq!(reached, 20);

    // Over budget: refused before any upstream, in the client's dialect.
    let r = chat_as(&c, &c.key, "POISON");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_failures");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keep failing upstream"),
        "{}",
        r.text()
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let r = HttpRequest::post_json("/v1/messages", &messages_body(false))
        .header("x-api-key", &c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_some());
    let r = chat_as(&c, &c.key, "Say hello");
    assert_eq!(
        r.status, 429,
        "even a harmless request waits out the cool-off"
    );
    assert_eq!(
        c.fake("solo").request_count(),
        reached,
        "none reached the upstream"
    );

    // The bystander keeps being served by the same credential: no breaker opened (21 requests,
    // 10 failed, would have opened it had the poisoned ones counted).
    for i in 0..5 {
        let r = chat_as(&c, &other, "Say hello");
        assert_eq!(r.status, 200, "bystander request after {i}: {}", r.text());
    }
    assert_eq!(c.fake("solo").request_count(), reached + 5);
    let text = metrics(&c);
    assert!(!node_shows(&text, "solo", "circuit_open"), "{text}");
    assert_eq!(credential_state(&c, "solo"), "active");
    assert_eq!(
        metric(
            &text,
            r#"keyplane_limit_refusals_total{limit="upstream_failures"}"#
        ),
        Some("3".to_string()),
        "{text}"
    );
}
