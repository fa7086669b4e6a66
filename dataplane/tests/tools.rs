//! Tool calls through the data plane, across protocols: an Anthropic client served by an OpenAI
//! upstream and an OpenAI client served by an Anthropic upstream, each streamed and not. The
//! upstream (the fake's `Behavior::ToolCall`) answers with one call; the client must see it in
//! its own protocol, the upstream must have received the tools in its protocol, a follow-up turn
//! carrying the tool's result must reach the upstream with matching ids, and each request is
//! billed once.
//!
//! Tool schemas and inputs are opaque JSON the translation promises to copy byte for byte (key
//! order included), so the request bodies are written with [`SCHEMA`] and [`ARGS`] spliced in as
//! text (a `serde_json::Value` would sort their keys), and the tests compare those bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::Behavior;
use keyplane_testkit::fake_upstream::{
    ANTHROPIC_TOOL_USE_ID, OPENAI_TOOL_CALL_ID, prompt_tokens_for,
};
use keyplane_testkit::http::{HttpRequest, HttpResponse};
use serde_json::{Value, json};
use support::*;

/// The call the upstream makes: keys not in sorted order, and a non-ASCII character.
const ARGS: &str = r#"{"city":"Zürich","unit":"celsius","days":[1,2]}"#;
/// The tool's input schema, compact and with keys not in sorted order.
const SCHEMA: &str = concat!(
    r#"{"type":"object","properties":{"city":{"type":"string"},"#,
    r#""unit":{"type":"string","enum":["celsius","fahrenheit"]},"#,
    r#""days":{"type":"array","items":{"type":"integer"}}},"required":["city"]}"#
);
/// Stands for [`SCHEMA`] in a request body until [`encode`] splices it in.
const SCHEMA_HERE: &str = "__SCHEMA__";
/// Stands for [`ARGS`] (as a JSON object) in a request body until [`encode`] splices it in.
const ARGS_HERE: &str = "__ARGS__";
const TOOL: &str = "get_weather";
const DESCRIPTION: &str = "Current weather for a city";
/// Output tokens the fake reports for a call of [`ARGS`]: one per argument fragment.
const TOOL_OUTPUT_TOKENS: u64 = 4;
/// Output tokens the fake reports for a normal text answer (its default 20 words).
const TEXT_OUTPUT_TOKENS: u64 = 20;

fn args() -> Value {
    serde_json::from_str(ARGS).unwrap()
}

fn schema() -> Value {
    serde_json::from_str(SCHEMA).unwrap()
}

/// The OpenAI `tools` an OpenAI upstream must receive (compared as values).
fn openai_tools() -> Value {
    json!([{
        "type": "function",
        "function": {"name": TOOL, "description": DESCRIPTION, "parameters": schema()},
    }])
}

/// A request body as text: `body` with every `"__SCHEMA__"` / `"__ARGS__"` string replaced by
/// [`SCHEMA`] / [`ARGS`], keeping their key order.
fn encode(body: &Value) -> Vec<u8> {
    let text = body
        .to_string()
        .replace(&format!("\"{SCHEMA_HERE}\""), SCHEMA)
        .replace(&format!("\"{ARGS_HERE}\""), ARGS);
    serde_json::from_str::<Value>(&text).expect("still JSON");
    text.into_bytes()
}

/// POST /v1/messages with `x-api-key`, the body [`encode`]d.
fn post_messages(c: &Cluster, body: &Value) -> HttpResponse {
    HttpRequest::post_json("/v1/messages", &Value::Null)
        .raw_body(encode(body))
        .header("x-api-key", &c.key)
        .header("anthropic-version", "2023-06-01")
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

/// POST /v1/chat/completions with a Bearer key, the body [`encode`]d.
fn post_chat(c: &Cluster, body: &Value) -> HttpResponse {
    HttpRequest::post_json("/v1/chat/completions", &Value::Null)
        .raw_body(encode(body))
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

/// The raw body of the `i`-th request the fake received.
fn received_text(c: &Cluster, fake: &str, i: usize) -> String {
    String::from_utf8(c.fake(fake).requests()[i].body.to_vec()).unwrap()
}

/// Asserts the upstream got the client's schema byte for byte (in its own protocol's field).
fn assert_schema_kept(c: &Cluster, fake: &str, i: usize) {
    let text = received_text(c, fake, i);
    assert!(
        text.contains(SCHEMA),
        "the schema's bytes (key order) are kept: {text}"
    );
}

/// An Anthropic request offering the tool.
fn anthropic_request(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 256,
        "system": "Use tools.",
        "messages": [{"role": "user", "content": "Weather in Zürich?"}],
        "tools": [{"name": TOOL, "description": DESCRIPTION, "input_schema": SCHEMA_HERE}],
        "stream": stream,
    })
}

/// An OpenAI request offering the tool.
fn openai_request(stream: bool) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Zürich?"},
        ],
        "tools": [{
            "type": "function",
            "function": {"name": TOOL, "description": DESCRIPTION, "parameters": SCHEMA_HERE},
        }],
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The JSON body of the `i`-th request the fake received.
fn received(c: &Cluster, fake: &str, i: usize) -> Value {
    let requests = c.fake(fake).requests();
    assert!(
        requests.len() > i,
        "{fake} got {} requests; log:\n{}",
        requests.len(),
        c.dp.logs()
    );
    requests[i].json.clone().expect("a JSON body")
}

/// Asserts the ledger bills exactly the requests `fake` served: `requests` of them, with the
/// input tokens the fake reported for their bodies and `output_tokens` in all; and that nothing
/// is billed a second time shortly after.
fn assert_billed_once(c: &Cluster, fake: &str, requests: u64, output_tokens: u64) {
    let rows = c.wait_usage(requests);
    assert!(rows.iter().all(|r| r["provider"] == fake), "{rows:?}");
    let input: u64 = c
        .fake(fake)
        .requests()
        .iter()
        .map(|r| prompt_tokens_for(&r.body))
        .sum();
    assert_eq!(total(&rows, "input_tokens"), input, "{rows:?}");
    assert_eq!(total(&rows, "output_tokens"), output_tokens, "{rows:?}");
    // Once the spool has nothing left to report, the count is final: each record counted once.
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), requests);
}

/// The request the OpenAI upstream got for an Anthropic client offering the tool.
fn assert_openai_upstream_got_the_tool(sent: &Value) {
    assert_eq!(sent["model"], "gpt-tools-model");
    assert_eq!(sent["tools"], openai_tools(), "{sent}");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Zürich?"},
        ])
    );
}

/// The request the Anthropic upstream got for an OpenAI client offering the tool.
fn assert_anthropic_upstream_got_the_tool(sent: &Value) {
    assert_eq!(sent["model"], "claude-tools-model");
    assert_eq!(
        sent["tools"],
        json!([{"name": TOOL, "description": DESCRIPTION, "input_schema": schema()}]),
        "{sent}"
    );
    assert_eq!(sent["system"], "Use tools.");
    assert!(sent["max_tokens"].as_u64().unwrap() > 0);
}

/// An Anthropic stream's events in order; checks the one `tool_use` block (index 0, started with
/// an empty input, then `input_json_delta`s, then stopped), the stop reason and the usage, and
/// returns the block (its input rebuilt from the fragments) and the input's text.
fn tool_use_from_anthropic_stream(text: &str) -> (Value, String) {
    let events = anthropic_events(text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "{data}");
    }
    let blocks: Vec<&str> = names.iter().copied().filter(|n| *n != "ping").collect();
    assert_eq!(blocks.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(blocks[1], "content_block_start", "{names:?}");
    let deltas = blocks[2..]
        .iter()
        .take_while(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 1, "{names:?}");
    assert_eq!(
        &blocks[2 + deltas..],
        &["content_block_stop", "message_delta", "message_stop"],
        "one block, then the end: {names:?}"
    );

    let mut block = Value::Null;
    let mut input = String::new();
    for (name, data) in &events {
        match name.as_str() {
            "content_block_start" => {
                assert_eq!(data["index"], 0, "{data}");
                block = data["content_block"].clone();
                assert_eq!(block["type"], "tool_use", "{data}");
                assert_eq!(block["input"], json!({}), "{data}");
            }
            "content_block_delta" => {
                assert_eq!(data["index"], 0, "{data}");
                assert_eq!(data["delta"]["type"], "input_json_delta", "{data}");
                input.push_str(data["delta"]["partial_json"].as_str().unwrap());
            }
            "content_block_stop" => assert_eq!(data["index"], 0, "{data}"),
            "message_delta" => {
                assert_eq!(data["delta"]["stop_reason"], "tool_use", "{data}");
                assert_eq!(data["usage"]["output_tokens"], TOOL_OUTPUT_TOKENS, "{data}");
            }
            _ => {}
        }
    }
    block["input"] = serde_json::from_str(&input)
        .unwrap_or_else(|e| panic!("input fragments {input:?} are not JSON: {e}"));
    (block, input)
}

/// An OpenAI stream's chunks; checks the one tool call (index 0; id, type and name in its first
/// fragment only), the finish reason and the usage chunk, and returns the call as a non-stream
/// `tool_calls` entry (its arguments rebuilt from the fragments).
fn tool_call_from_openai_stream(data: &[String]) -> Value {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut call = Value::Null;
    let mut arguments = String::new();
    let mut finish = Vec::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["model"], MODEL, "{c}");
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish.push(reason.to_string());
        }
        let delta = &choice["delta"];
        assert!(
            delta["content"].as_str().is_none_or(str::is_empty),
            "no text: {c}"
        );
        for fragment in delta["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(fragment["index"], 0, "{c}");
            if call.is_null() {
                call = fragment.clone();
                assert!(
                    fragment["id"].is_string(),
                    "the first fragment names the call: {c}"
                );
                assert_eq!(fragment["type"], "function", "{c}");
            } else {
                assert!(fragment.get("id").is_none(), "{c}");
                assert!(fragment["function"].get("name").is_none(), "{c}");
            }
            arguments.push_str(fragment["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(finish, ["tool_calls"], "{data:?}");
    let usage: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"] == json!([]))
        .collect();
    assert_eq!(usage.len(), 1, "the usage chunk asked for: {data:?}");
    assert_eq!(usage[0]["usage"]["completion_tokens"], TOOL_OUTPUT_TOKENS);
    assert!(!call.is_null(), "no tool call in {data:?}");
    call.as_object_mut().unwrap().remove("index");
    call["function"]["arguments"] = Value::String(arguments);
    call
}

/// Parses a call's `arguments` string.
fn arguments_of(call: &Value) -> Value {
    let text = call["function"]["arguments"].as_str().unwrap();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("arguments {text:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// (a) Anthropic client, OpenAI upstream

#[test]
fn anthropic_client_gets_tool_use_from_an_openai_upstream() {
    let c = Cluster::start(&[offer("gpt-tools", "1", "2")], &[]);
    c.fake("gpt-tools")
        .set_behavior(Behavior::tool_call(TOOL, ARGS));
    let resp = post_messages(&c, &anthropic_request(false));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    assert!(
        resp.text().contains(&format!(r#""input":{ARGS}"#)),
        "the arguments' bytes become the input: {}",
        resp.text()
    );
    let msg = resp.json();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["model"], MODEL);
    assert_eq!(
        msg["content"],
        json!([{"type": "tool_use", "id": OPENAI_TOOL_CALL_ID, "name": TOOL, "input": args()}]),
        "{msg}"
    );
    assert_eq!(msg["stop_reason"], "tool_use");
    assert_eq!(msg["usage"]["output_tokens"], TOOL_OUTPUT_TOKENS);

    let sent = received(&c, "gpt-tools", 0);
    assert_openai_upstream_got_the_tool(&sent);
    assert_schema_kept(&c, "gpt-tools", 0);
    assert_billed_once(&c, "gpt-tools", 1, TOOL_OUTPUT_TOKENS);
}

#[test]
fn anthropic_client_streams_tool_use_from_an_openai_upstream() {
    let c = Cluster::start(&[offer("gpt-tools", "1", "2")], &[]);
    c.fake("gpt-tools")
        .set_behavior(Behavior::tool_call(TOOL, ARGS));
    let resp = post_messages(&c, &anthropic_request(true));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    let (block, input) = tool_use_from_anthropic_stream(&resp.text());
    assert_eq!(input, ARGS, "the fragments are relayed as they are");
    assert_eq!(
        block,
        json!({"type": "tool_use", "id": OPENAI_TOOL_CALL_ID, "name": TOOL, "input": args()})
    );

    let sent = received(&c, "gpt-tools", 0);
    assert_openai_upstream_got_the_tool(&sent);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_schema_kept(&c, "gpt-tools", 0);
    assert_billed_once(&c, "gpt-tools", 1, TOOL_OUTPUT_TOKENS);
}

// ---------------------------------------------------------------------------------------------
// (b) OpenAI client, Anthropic upstream

#[test]
fn openai_client_gets_tool_calls_from_an_anthropic_upstream() {
    let c = Cluster::start(&[anthropic_offer("claude-tools", "1", "2")], &[]);
    c.fake("claude-tools")
        .set_behavior(Behavior::tool_call(TOOL, ARGS));
    let resp = post_chat(&c, &openai_request(false));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    let body = resp.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let message = &choice["message"];
    assert_eq!(message["role"], "assistant");
    assert!(
        message["content"].as_str().is_none_or(str::is_empty),
        "no text: {body}"
    );
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0]["id"], ANTHROPIC_TOOL_USE_ID);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], TOOL);
    assert_eq!(
        calls[0]["function"]["arguments"], ARGS,
        "the input's bytes become the arguments"
    );
    assert_eq!(body["usage"]["completion_tokens"], TOOL_OUTPUT_TOKENS);

    let sent = received(&c, "claude-tools", 0);
    assert_anthropic_upstream_got_the_tool(&sent);
    assert_schema_kept(&c, "claude-tools", 0);
    assert_billed_once(&c, "claude-tools", 1, TOOL_OUTPUT_TOKENS);
}

#[test]
fn openai_client_streams_tool_calls_from_an_anthropic_upstream() {
    let c = Cluster::start(&[anthropic_offer("claude-tools", "1", "2")], &[]);
    c.fake("claude-tools")
        .set_behavior(Behavior::tool_call(TOOL, ARGS));
    let resp = post_chat(&c, &openai_request(true));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    let call = tool_call_from_openai_stream(&resp.sse_data());
    assert_eq!(call["id"], ANTHROPIC_TOOL_USE_ID);
    assert_eq!(call["function"]["name"], TOOL);
    assert_eq!(arguments_of(&call), args());
    assert_eq!(
        call["function"]["arguments"], ARGS,
        "fragments relayed as they are"
    );

    let sent = received(&c, "claude-tools", 0);
    assert_anthropic_upstream_got_the_tool(&sent);
    assert_eq!(sent["stream"], true);
    assert_schema_kept(&c, "claude-tools", 0);
    assert_billed_once(&c, "claude-tools", 1, TOOL_OUTPUT_TOKENS);
}

// ---------------------------------------------------------------------------------------------
// (c) The follow-up turn with the tool's result

/// Turn 1 from an Anthropic client gets a `tool_use` block from the OpenAI upstream; turn 2
/// sends it back with the result; checks what the upstream got for turn 2.
fn anthropic_follow_up(stream: bool) {
    let c = Cluster::start(&[offer("gpt-tools", "1", "2")], &[]);
    let fake = c.fake("gpt-tools");
    fake.push_once(Behavior::tool_call(TOOL, ARGS));
    let first = post_messages(&c, &anthropic_request(stream));
    assert_eq!(first.status, 200, "{}\n{}", first.text(), c.dp.logs());
    let mut tool_use = if stream {
        tool_use_from_anthropic_stream(&first.text()).0
    } else {
        first.json()["content"][0].clone()
    };
    let id = tool_use["id"].as_str().unwrap().to_string();
    assert_eq!(tool_use["input"], args());
    // Sent back with the input's key order as the client received it.
    tool_use["input"] = json!(ARGS_HERE);

    // The result as a string for one, as text blocks for the other.
    let result = if stream {
        json!([{"type": "text", "text": "18°C, sunny"}])
    } else {
        json!("18°C, sunny")
    };
    let mut second = anthropic_request(stream);
    let messages = second["messages"].as_array_mut().unwrap();
    messages.push(json!({
        "role": "assistant",
        "content": [{"type": "text", "text": "Let me check."}, tool_use],
    }));
    messages.push(json!({
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": id, "content": result},
            {"type": "text", "text": "And tomorrow?"},
        ],
    }));
    let resp = post_messages(&c, &second);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    if stream {
        let events = anthropic_events(&resp.text());
        let last = &events[events.len() - 2].1;
        assert_eq!(last["delta"]["stop_reason"], "end_turn", "{}", resp.text());
    } else {
        assert_eq!(resp.json()["stop_reason"], "end_turn");
        assert_eq!(resp.json()["content"][0]["type"], "text");
    }

    let sent = received(&c, "gpt-tools", 1);
    assert_eq!(sent["tools"], openai_tools());
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "{sent}");
    let assistant = &messages[2];
    assert_eq!(assistant["role"], "assistant", "{sent}");
    assert_eq!(assistant["content"], "Let me check.");
    let calls = assistant["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{sent}");
    assert_eq!(calls[0]["id"], id.as_str());
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], TOOL);
    assert_eq!(
        calls[0]["function"]["arguments"], ARGS,
        "the input's bytes become the arguments"
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": id, "content": "18°C, sunny"}),
        "the result comes first, as a tool message: {sent}"
    );
    assert_eq!(
        messages[4],
        json!({"role": "user", "content": "And tomorrow?"})
    );
    assert_schema_kept(&c, "gpt-tools", 1);
    assert_billed_once(&c, "gpt-tools", 2, TOOL_OUTPUT_TOKENS + TEXT_OUTPUT_TOKENS);
}

#[test]
fn anthropic_client_sends_the_tool_result_to_an_openai_upstream() {
    anthropic_follow_up(false);
}

#[test]
fn anthropic_client_streams_with_the_tool_result_to_an_openai_upstream() {
    anthropic_follow_up(true);
}

/// Turn 1 from an OpenAI client gets a tool call from the Anthropic upstream; turn 2 sends it
/// back with the result; checks what the upstream got for turn 2.
fn openai_follow_up(stream: bool) {
    let c = Cluster::start(&[anthropic_offer("claude-tools", "1", "2")], &[]);
    let fake = c.fake("claude-tools");
    fake.push_once(Behavior::tool_call(TOOL, ARGS));
    let first = post_chat(&c, &openai_request(stream));
    assert_eq!(first.status, 200, "{}\n{}", first.text(), c.dp.logs());
    let call = if stream {
        tool_call_from_openai_stream(&first.sse_data())
    } else {
        first.json()["choices"][0]["message"]["tool_calls"][0].clone()
    };
    let id = call["id"].as_str().unwrap().to_string();
    assert_eq!(call["function"]["arguments"], ARGS);

    let mut second = openai_request(stream);
    let messages = second["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    let result = if stream {
        json!([{"type": "text", "text": "18°C, sunny"}])
    } else {
        json!("18°C, sunny")
    };
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": result}));
    let resp = post_chat(&c, &second);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    if stream {
        let data = resp.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        assert!(
            data.iter().any(|d| d.contains(r#""finish_reason":"stop""#)),
            "{data:?}"
        );
    } else {
        assert_eq!(resp.json()["choices"][0]["finish_reason"], "stop");
    }

    let sent = received(&c, "claude-tools", 1);
    assert_eq!(sent["tools"][0]["name"], TOOL);
    assert_eq!(sent["tools"][0]["input_schema"], schema());
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "user, assistant, user: {sent}");
    assert_eq!(turns[0]["role"], "user");
    assert_eq!(turns[1]["role"], "assistant");
    assert_eq!(
        turns[1]["content"],
        json!([{"type": "tool_use", "id": id, "name": TOOL, "input": args()}]),
        "{sent}"
    );
    assert_eq!(turns[2]["role"], "user");
    let blocks = turns[2]["content"].as_array().unwrap();
    assert_eq!(blocks.len(), 1, "{sent}");
    assert_eq!(blocks[0]["type"], "tool_result");
    assert_eq!(
        blocks[0]["tool_use_id"],
        id.as_str(),
        "matches the tool_use id"
    );
    let content = &blocks[0]["content"];
    let text = content.as_str().map(str::to_string).unwrap_or_else(|| {
        content
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["text"].as_str().unwrap().to_string())
            .collect()
    });
    assert_eq!(text, "18°C, sunny", "{sent}");
    let raw = received_text(&c, "claude-tools", 1);
    assert!(
        raw.contains(&format!(r#""input":{ARGS}"#)),
        "the arguments' bytes become the input: {raw}"
    );
    assert_schema_kept(&c, "claude-tools", 1);
    assert_billed_once(
        &c,
        "claude-tools",
        2,
        TOOL_OUTPUT_TOKENS + TEXT_OUTPUT_TOKENS,
    );
}

#[test]
fn openai_client_sends_the_tool_result_to_an_anthropic_upstream() {
    openai_follow_up(false);
}

#[test]
fn openai_client_streams_with_the_tool_result_to_an_anthropic_upstream() {
    openai_follow_up(true);
}
