//! `/v1/messages` end to end: Anthropic clients served by Anthropic upstreams untouched, and by
//! OpenAI upstreams through translation; OpenAI clients served by Anthropic upstreams. Usage is
//! billed once either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::Behavior;
use keyplane_testkit::http::HttpRequest;
use serde_json::json;
use support::*;

#[test]
fn anthropic_client_anthropic_upstream_passes_through() {
    let offers = [anthropic_offer("claude-direct", "3", "15")];
    let c = Cluster::start(&offers, &[]);
    // Claude Code: Bearer auth, a query string, betas and unknown fields.
    let body = json!({
        "model": MODEL,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": []},
        "stream": true,
    });
    let resp = HttpRequest::post_json("/v1/messages?beta=true", &body)
        .bearer(&c.key)
        .header("anthropic-version", "2026-10-21")
        .header("anthropic-beta", "a-beta,b-beta")
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    let events = anthropic_events(&resp.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let seen = &c.fake("claude-direct").requests()[0];
    assert_eq!(
        seen.path, "/v1/messages?beta=true",
        "the query string is kept"
    );
    assert_eq!(
        seen.header("anthropic-version"),
        Some("2026-10-21"),
        "the client's version is forwarded"
    );
    assert_eq!(seen.header("anthropic-beta"), Some("a-beta,b-beta"));
    assert_eq!(seen.header("x-api-key"), Some("sk-claude-direct"));
    let sent = seen.json.clone().unwrap();
    assert_eq!(sent["model"], "claude-direct-model");
    assert_eq!(
        sent["thinking"], body["thinking"],
        "unknown fields pass through"
    );
    assert_eq!(sent["context_management"], body["context_management"]);

    let non = c.messages(&messages_body(false));
    assert_eq!(non.status, 200, "{}", non.text());
    assert_eq!(non.json()["type"], "message");
    let rows = c.wait_usage(2);
    assert_eq!(total(&rows, "output_tokens"), 40);
    assert!(total(&rows, "input_tokens") > 0);
}

#[test]
fn anthropic_client_openai_upstream_is_translated() {
    let offers = [
        offer("gpt-cheap", "0.1", "0.2"),
        anthropic_offer("claude-pricey", "3", "15"),
    ];
    let c = Cluster::start(&offers, &[]);
    let non = c.messages(&messages_body(false));
    assert_eq!(non.status, 200, "{}", non.text());
    let msg = non.json();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["model"], MODEL);
    assert!(
        msg["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("word0 word1")
    );
    assert_eq!(msg["stop_reason"], "end_turn");
    assert_eq!(msg["usage"]["output_tokens"], 20);
    let sent = c.fake("gpt-cheap").requests()[0].json.clone().unwrap();
    assert_eq!(
        sent["messages"][0]["role"], "system",
        "system hoisted into a message"
    );
    assert_eq!(c.fake("claude-pricey").request_count(), 0);

    let stream = c.messages(&messages_body(true));
    assert_eq!(stream.status, 200);
    let events = anthropic_events(&stream.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert!(names.contains(&"content_block_start") && names.contains(&"content_block_delta"));
    assert_eq!(
        &names[names.len() - 2..],
        &["message_delta", "message_stop"]
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(text.starts_with("word0 word1 "), "{text}");
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 20);

    let rows = c.wait_usage(2);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["provider"], "gpt-cheap");
    assert_eq!(total(&rows, "output_tokens"), 40);
}

#[test]
fn openai_client_anthropic_upstream_is_translated() {
    let offers = [
        anthropic_offer("claude-cheap", "0.1", "0.2"),
        offer("gpt-pricey", "3", "15"),
    ];
    let c = Cluster::start(&offers, &[]);
    let non = c.chat(&chat_body(false));
    assert_eq!(non.status, 200, "{}", non.text());
    let body = non.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("word0")
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 20);
    let sent = c.fake("claude-cheap").requests()[0].json.clone().unwrap();
    assert!(
        sent["max_tokens"].as_u64().unwrap() > 0,
        "max_tokens is required upstream"
    );

    let mut with_usage = chat_body(true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let stream = c.chat(&with_usage);
    assert_eq!(stream.status, 200);
    let data = stream.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(text.starts_with("word0 word1 "), "{text}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = chunks
        .iter()
        .find(|c| c["choices"] == json!([]))
        .expect("usage chunk asked for");
    assert_eq!(usage["usage"]["completion_tokens"], 20);

    let rows = c.wait_usage(2);
    assert_eq!(rows[0]["provider"], "claude-cheap");
    assert_eq!(total(&rows, "output_tokens"), 40);
}

#[test]
fn anthropic_shaped_errors_on_v1_messages() {
    let offers = [anthropic_offer("claude-direct", "3", "15")];
    let c = Cluster::start(&offers, &[]);
    let addr = c.dp.addr;
    let cases: Vec<(HttpRequest<'_>, u16, &str)> = vec![
        (
            HttpRequest::post_json("/v1/messages", &messages_body(false))
                .raw_body(b"{nope".to_vec())
                .header("x-api-key", &c.key),
            400,
            "invalid_request_error",
        ),
        (
            HttpRequest::post_json("/v1/messages", &json!({"model": MODEL, "messages": []}))
                .header("x-api-key", &c.key),
            400,
            "invalid_request_error",
        ),
        (
            HttpRequest::post_json("/v1/messages", &messages_body(false)),
            401,
            "authentication_error",
        ),
        (
            HttpRequest::post_json("/v1/messages", &messages_body(false))
                .header("x-api-key", "kp_wrong"),
            401,
            "authentication_error",
        ),
        (
            HttpRequest::post_json(
                "/v1/messages",
                &json!({"model": "nope/nope", "max_tokens": 5, "messages": []}),
            )
            .header("x-api-key", &c.key),
            404,
            "not_found_error",
        ),
    ];
    for (req, status, kind) in cases {
        let resp = req.send(addr, TIMEOUT).unwrap();
        assert_eq!(resp.status, status, "{}", resp.text());
        let body = resp.json();
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(body["error"]["message"].is_string());
    }
    assert_eq!(c.fake("claude-direct").request_count(), 0);

    // Upstream overloaded (529) everywhere: an Anthropic client hears overloaded_error.
    c.fake("claude-direct").set_behavior(Behavior::status(529));
    let resp = c.messages(&messages_body(false));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"]["type"], "overloaded_error");
}

#[test]
fn count_tokens_is_forwarded_to_anthropic_upstreams() {
    let offers = [anthropic_offer("claude-direct", "3", "15")];
    let c = Cluster::start(&offers, &[]);
    let resp = HttpRequest::post_json(
        "/v1/messages/count_tokens",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .bearer(&c.key)
    .header("anthropic-version", "2023-06-01")
    .send(c.dp.addr, TIMEOUT)
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.json()["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        c.fake("claude-direct").requests()[0].path,
        "/v1/messages/count_tokens"
    );
}

#[test]
fn errors_after_content_reach_the_client_in_its_own_shape_across_protocols() {
    // Anthropic client, OpenAI upstream that fails after 3 content events.
    let c = Cluster::start(&[offer("gpt-cheap", "0.1", "0.2")], &[]);
    c.fake("gpt-cheap")
        .set_behavior(Behavior::ErrorAfterContent(3));
    let resp = c.messages(&messages_body(true));
    assert_eq!(resp.status, 200);
    let events = anthropic_events(&resp.text());
    assert!(
        events
            .iter()
            .any(|(n, d)| n == "content_block_delta" && d["delta"]["text"] == "word2 "),
        "{events:?}"
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["type"], "error");
    c.wait_usage(1);

    // OpenAI client, Anthropic upstream that fails after 3 content events.
    let c = Cluster::start(&[anthropic_offer("claude-cheap", "0.1", "0.2")], &[]);
    c.fake("claude-cheap")
        .set_behavior(Behavior::ErrorAfterContent(3));
    let resp = c.chat(&chat_body(true));
    assert_eq!(resp.status, 200);
    let data = resp.sse_data();
    assert!(resp.text().contains("word2"), "{data:?}");
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{data:?}");
    c.wait_usage(1);
}
