//! The OpenAI Chat ⇄ Anthropic translations, pinned end to end through the bridge: requests as
//! [`decode_request`] then [`encode_request`]; answers and errors as a client of the other
//! dialect gets them ([`ClientRequest::response`], [`upstream_error`]); streams through
//! [`Stream`], fed one upstream event at a time as the relay feeds it. Driven by the recorded
//! samples in `testkit/samples`; the field mapping follows `docs/TRANSLATION.md`.

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{
    ClientRequest, Framing, Stream, decode_request, encode_request, error_body, refusal_body,
    upstream_error,
};
use crate::protocol::shape::{StreamNote, TranslateError};
use crate::protocol::usage::Usage;
use crate::protocol::{Dialect, anthropic, openai_chat};
use crate::sse;

// ---- Adapters: each translation as the bridge composes it ----

/// A `client` request as an upstream of `upstream`'s dialect gets it: its body and the names of
/// what was dropped.
fn translate_request(
    client: Dialect,
    upstream: Dialect,
    body: &[u8],
    upstream_model: &str,
) -> Result<(Vec<u8>, Vec<String>), TranslateError> {
    let req = decode_request(client, body)?;
    let encoded = encode_request(upstream, &req, upstream_model)?;
    Ok((encoded.body, encoded.dropped))
}

/// An Anthropic client's request for an OpenAI Chat upstream.
fn a2o_bytes(body: &[u8], upstream_model: &str) -> Result<(Vec<u8>, Vec<String>), TranslateError> {
    translate_request(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        body,
        upstream_model,
    )
}

/// An OpenAI Chat client's request for an Anthropic upstream.
fn o2a_bytes(body: &[u8], upstream_model: &str) -> Result<(Vec<u8>, Vec<String>), TranslateError> {
    translate_request(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        body,
        upstream_model,
    )
}

fn a2o(body: Value) -> (Value, Vec<String>) {
    let (out, dropped) = a2o_bytes(body.to_string().as_bytes(), "up-model").unwrap();
    (parse(&out), dropped)
}

fn o2a(body: Value) -> (Value, Vec<String>) {
    let (out, dropped) = o2a_bytes(body.to_string().as_bytes(), "up-model").unwrap();
    (parse(&out), dropped)
}

fn o2a_err(body: Value) -> String {
    o2a_bytes(body.to_string().as_bytes(), "m")
        .unwrap_err()
        .message
}

/// A streamed request of `client`'s dialect for `model`, as far as the bridge reads it to answer.
fn client_request_body(client: Dialect, model: &str, include_usage: bool) -> Vec<u8> {
    let body = match client {
        Dialect::OpenAiChat => json!({"model": model, "messages": [], "stream": true,
            "stream_options": {"include_usage": include_usage}}),
        Dialect::Anthropic => {
            json!({"model": model, "max_tokens": 1, "messages": [], "stream": true})
        }
        Dialect::OpenAiResponses => json!({"model": model, "input": [], "stream": true}),
        Dialect::Gemini => json!({"contents": []}),
    };
    body.to_string().into_bytes()
}

/// A `client` request: a Gemini one with the model and framing its URL would give.
fn parse_client<'a>(
    client: Dialect,
    body: &'a [u8],
    model: &str,
    framing: Option<Framing>,
) -> ClientRequest<'a> {
    match client {
        Dialect::Gemini => ClientRequest::parse_gemini(body, model, framing).unwrap(),
        _ => ClientRequest::parse(client, body).unwrap(),
    }
}

/// An `upstream` answer as a `client` that asked for `client_model` gets it, and the counts
/// billed; `None` when the body is not an answer of the upstream's dialect.
fn answer(
    client: Dialect,
    upstream: Dialect,
    body: &[u8],
    client_model: &str,
) -> Option<(Vec<u8>, Option<Usage>)> {
    let request = client_request_body(client, client_model, false);
    let req = parse_client(client, &request, client_model, None);
    let (bytes, metering) = req.response(upstream, Bytes::copy_from_slice(body))?;
    Some((bytes.to_vec(), metering.map(|m| m.usage)))
}

/// An OpenAI Chat upstream's answer for an Anthropic client.
fn o2a_response(body: &[u8], client_model: &str) -> Option<(Vec<u8>, Option<Usage>)> {
    answer(Dialect::Anthropic, Dialect::OpenAiChat, body, client_model)
}

/// An Anthropic upstream's answer for an OpenAI Chat client.
fn a2o_response(body: &[u8], client_model: &str) -> Option<(Vec<u8>, Option<Usage>)> {
    answer(Dialect::OpenAiChat, Dialect::Anthropic, body, client_model)
}

/// An OpenAI Chat upstream's error for an Anthropic client.
fn o2a_error(status: u16, body: &[u8]) -> (u16, Bytes) {
    upstream_error(
        Dialect::Anthropic,
        Dialect::OpenAiChat,
        status,
        Bytes::copy_from_slice(body),
    )
}

/// An Anthropic upstream's error for an OpenAI Chat client.
fn a2o_error(status: u16, body: &[u8]) -> (u16, Bytes) {
    upstream_error(
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        status,
        Bytes::copy_from_slice(body),
    )
}

/// An OpenAI `finish_reason` as an Anthropic client reads it.
fn anthropic_stop_reason(openai_finish: &str) -> &'static str {
    anthropic::encode::stop_reason(openai_chat::decode::stop_reason(openai_finish))
}

/// An Anthropic `stop_reason` as an OpenAI client reads it.
fn openai_finish_reason(anthropic_stop: &str) -> &'static str {
    openai_chat::encode::finish_reason(anthropic::decode::stop_reason(anthropic_stop))
}

/// A translated [`Stream`] as the relay drives it: one whole upstream event at a time, before
/// commit (an upstream error is only reported in the note; the tests ask for the client's error
/// event themselves).
struct Translation(Stream);

impl Translation {
    /// An OpenAI Chat upstream streaming to an Anthropic client that asked for `client_model`.
    fn openai_upstream(client_model: &str, message_id: &str) -> Translation {
        let body = client_request_body(Dialect::Anthropic, client_model, true);
        let req = ClientRequest::parse(Dialect::Anthropic, &body).unwrap();
        Translation(Stream::new(&req, Dialect::OpenAiChat, message_id))
    }

    /// An Anthropic upstream streaming to an OpenAI Chat client that asked for `client_model`.
    fn anthropic_upstream(client_model: &str, include_usage: bool) -> Translation {
        let body = client_request_body(Dialect::OpenAiChat, client_model, include_usage);
        let req = ClientRequest::parse(Dialect::OpenAiChat, &body).unwrap();
        Translation(Stream::new(&req, Dialect::Anthropic, "msg_unused"))
    }

    /// One upstream event (its `event:` name, if any, and its data), appending the client's
    /// bytes to `out`.
    fn event(&mut self, name: Option<&[u8]>, data: &[u8], out: &mut Vec<u8>) -> StreamNote {
        let mut raw = Vec::new();
        if let Some(name) = name {
            raw.extend_from_slice(b"event: ");
            raw.extend_from_slice(name);
            raw.push(b'\n');
        }
        for line in data.split(|&b| b == b'\n') {
            raw.extend_from_slice(b"data: ");
            raw.extend_from_slice(line);
            raw.push(b'\n');
        }
        raw.push(b'\n');
        assert!(self.0.is_translated());
        let mut frames = Vec::new();
        let note = self.0.event(Bytes::from(raw), false, &mut frames);
        for frame in frames {
            out.extend_from_slice(&frame);
        }
        note
    }

    /// One unnamed upstream event (an OpenAI chunk, or `[DONE]`).
    fn chunk(&mut self, data: &[u8], out: &mut Vec<u8>) -> StreamNote {
        self.event(None, data, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let mut frames = Vec::new();
        self.0.finish(&mut frames);
        for frame in frames {
            out.extend_from_slice(&frame);
        }
    }

    fn error_event(&self, message: &str) -> Bytes {
        self.0.error_event(message)
    }

    /// What the stream bills.
    fn usage(&self) -> Option<Usage> {
        self.0.metering().map(|m| m.usage)
    }

    /// The provider's own charge, when its usage carried one (OpenRouter's `cost`, …).
    fn reported_cost_nano(&self) -> Option<u64> {
        self.0.metering().and_then(|m| m.reported_cost_nano)
    }
}

// ---- Samples ----

fn sample(name: &str) -> Vec<u8> {
    keyplane_testkit::samples::bytes(name).to_vec()
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// (event name, data) of every event of an SSE byte stream.
fn sse_events(raw: &[u8]) -> Vec<(Option<String>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut splitter = sse::Splitter::default();
    splitter.push(Bytes::copy_from_slice(raw), &mut out);
    assert!(splitter.pending().is_empty(), "every event is complete");
    out.iter()
        .map(|e| {
            let ev = sse::parse(e);
            (
                ev.name.map(|n| String::from_utf8_lossy(n).into_owned()),
                ev.data.map(|d| d.into_owned()),
            )
        })
        .collect()
}

#[test]
fn openai_stream_to_anthropic_keeps_the_providers_reported_cost() {
    let mut t = Translation::openai_upstream("m", "msg_1");
    let mut out = Vec::new();
    for (_, data) in sse_events(&sample("openrouter-stream-usage-cost.sse")) {
        if let Some(data) = data {
            t.chunk(&data, &mut out);
        }
    }
    let usage = t.usage().expect("usage");
    assert!(usage.input_tokens + usage.output_tokens > 0);
    assert!(
        t.reported_cost_nano().is_some_and(|c| c > 0),
        "{:?}",
        t.reported_cost_nano()
    );
}

// ---- Requests: Anthropic → OpenAI ----

#[test]
fn a2o_adapts_to_openai_model_families() {
    // Claude Code's request shape: max_tokens 32000, temperature, thinking.
    let body = json!({
        "model": "claude", "max_tokens": 32000, "temperature": 1, "top_p": 0.9,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "messages": [{"role": "user", "content": "hi"}]
    });
    let translate = |model: &str| {
        let (out, dropped) = a2o_bytes(body.to_string().as_bytes(), model).unwrap();
        (parse(&out), dropped)
    };
    // samples/openai-error.json: reasoning models refuse `max_tokens`.
    for model in [
        "o3-mini",
        "o1",
        "openai/o4-mini",
        "gpt-5",
        "gpt-5-mini-2025-08-07",
    ] {
        let (out, dropped) = translate(model);
        assert_eq!(out["max_completion_tokens"], 32000, "{model}");
        assert!(out.get("max_tokens").is_none(), "{model}");
        assert!(out.get("temperature").is_none() && out.get("top_p").is_none());
        assert_eq!(out["reasoning_effort"], "medium", "{model}");
        assert!(dropped.contains(&"temperature".to_string()), "{dropped:?}");
    }
    for model in ["gpt-4o-mini", "openai/gpt-4.1", "gpt-5-chat-latest"] {
        let (out, dropped) = translate(model);
        assert_eq!(out["max_tokens"], 32000, "{model}");
        assert!(out.get("reasoning_effort").is_none(), "{model}");
        assert!(dropped.contains(&"thinking".to_string()), "{dropped:?}");
        assert_eq!(out["temperature"], 1);
    }
    // Other OpenAI-protocol providers get the request as translated.
    for model in [
        "deepseek-reasoner",
        "o3x-custom",
        "qwen/qwen3-max",
        "omni-1",
    ] {
        let (out, _) = translate(model);
        assert_eq!(out["max_tokens"], 32000, "{model}");
        assert_eq!(out["reasoning_effort"], "medium", "{model}");
        assert_eq!(out["top_p"], 0.9);
    }
}

#[test]
fn a2o_system_string_blocks_and_system_inside_messages() {
    let (out, _) = a2o(json!({
        "model": "claude", "max_tokens": 10, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}]
    }));
    assert_eq!(out["model"], "up-model");
    assert_eq!(
        out["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    );

    // Claude Code: system as blocks with cache_control, and a system entry in messages.
    let (out, dropped) = a2o(json!({
        "model": "claude", "max_tokens": 10,
        "system": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "Mid-conversation note."}]},
            {"role": "user", "content": "again"}
        ]
    }));
    let msgs = out["messages"].as_array().unwrap();
    assert_eq!(
        msgs[0],
        json!({"role": "system", "content": "You are Claude Code.\nBe careful."})
    );
    assert_eq!(msgs[1], json!({"role": "user", "content": "hi"}));
    assert_eq!(
        msgs[2],
        json!({"role": "system", "content": "Mid-conversation note."})
    );
    assert_eq!(msgs[3], json!({"role": "user", "content": "again"}));
    assert!(
        dropped.contains(&"system.cache_control".to_string()),
        "{dropped:?}"
    );
}

#[test]
fn a2o_images_base64_and_url() {
    let (out, _) = a2o(json!({
        "model": "c", "max_tokens": 5,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
        ]}]
    }));
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
        ])
    );
}

#[test]
fn a2o_several_text_blocks_become_one_string() {
    let (out, dropped) = a2o(json!({
        "model": "c", "max_tokens": 5,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>x</system-reminder>"},
            {"type": "text", "text": "Fix the bug.", "cache_control": {"type": "ephemeral"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}
        ]}]
    }));
    assert_eq!(
        out["messages"][0]["content"],
        "<system-reminder>x</system-reminder>\nFix the bug."
    );
    assert!(dropped.contains(&"messages.content.cache_control".to_string()));
    assert!(dropped.contains(&"messages.content.document".to_string()));
}

#[test]
fn a2o_tools_and_tool_choice() {
    let tools = json!([
        {"name": "get_weather", "description": "Weather", "input_schema":
            {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "number", "maximum": 1e2}}, "required": ["zeta"]},
         "cache_control": {"type": "ephemeral"}},
        {"name": "Read", "input_schema": {"type": "object"}, "defer_loading": true},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    ]);
    let body = json!({"model": "c", "max_tokens": 5, "tools": tools,
        "messages": [{"role": "user", "content": "hi"}]});
    let (out, dropped) = a2o(body.clone());
    assert_eq!(
        out["tools"].as_array().unwrap().len(),
        2,
        "server tool dropped"
    );
    assert_eq!(
        out["tools"][0],
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": tools[0]["input_schema"]}})
    );
    assert_eq!(
        out["tools"][1]["function"],
        json!({"name": "Read", "parameters": {"type": "object"}})
    );
    for d in [
        "tools.cache_control",
        "tools.defer_loading",
        "tools.web_search_20250305",
    ] {
        assert!(dropped.contains(&d.to_string()), "{d} in {dropped:?}");
    }
    assert!(out.get("tool_choice").is_none() && out.get("parallel_tool_calls").is_none());

    // The schema's bytes (key order, number spelling) reach the upstream unchanged.
    let raw = a2o_bytes(
        br#"{"model":"c","max_tokens":5,"messages":[],"tools":[{"name":"t","input_schema":{"type":"object","properties":{"z":{"maximum":1e2},"a":{}}}}]}"#,
        "m",
    )
    .unwrap()
    .0;
    assert!(
        String::from_utf8(raw).unwrap().contains(
            r#""parameters":{"type":"object","properties":{"z":{"maximum":1e2},"a":{}}}"#
        )
    );

    for (choice, expected, parallel) in [
        (json!({"type": "auto"}), json!("auto"), None),
        (json!({"type": "any"}), json!("required"), None),
        (json!({"type": "none"}), json!("none"), None),
        (
            json!({"type": "tool", "name": "get_weather"}),
            json!({"type": "function", "function": {"name": "get_weather"}}),
            None,
        ),
        (
            json!({"type": "auto", "disable_parallel_tool_use": true}),
            json!("auto"),
            Some(false),
        ),
        (
            json!({"type": "any", "disable_parallel_tool_use": false}),
            json!("required"),
            None,
        ),
    ] {
        let mut body = body.clone();
        body["tool_choice"] = choice.clone();
        let (out, _) = a2o(body);
        assert_eq!(out["tool_choice"], expected, "{choice}");
        assert_eq!(
            out.get("parallel_tool_calls").and_then(Value::as_bool),
            parallel,
            "{choice}"
        );
    }

    // Without tools, tool_choice would be refused by OpenAI: dropped.
    let (out, dropped) = a2o(
        json!({"model": "c", "max_tokens": 5, "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert!(out.get("tool_choice").is_none());
    assert!(dropped.contains(&"tool_choice".to_string()));
}

#[test]
fn a2o_tool_use_and_tool_result() {
    let (out, dropped) = a2o(json!({
        "model": "c", "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "Weather in SF?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me check.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "San Francisco", "unit": "f"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "Also, hurry."},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "68F"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "12:00"}, {"type": "text", "text": "PST"}], "is_error": false}
            ]}
        ]
    }));
    let msgs = out["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5);
    assert_eq!(
        msgs[1],
        json!({"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco\",\"unit\":\"f\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ]})
    );
    // Tool results come before the rest of the same user turn.
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": "toolu_1", "content": "68F"})
    );
    assert_eq!(
        msgs[3],
        json!({"role": "tool", "tool_call_id": "toolu_2", "content": "12:00\nPST"})
    );
    assert_eq!(msgs[4], json!({"role": "user", "content": "Also, hurry."}));
    assert!(dropped.contains(&"messages.content.thinking".to_string()));
    assert!(dropped.contains(&"messages.content.tool_result.is_error".to_string()));

    // A tool-only assistant turn has content null.
    // Raw bytes: `json!` would already have normalised 2.50.
    let body = br#"{"model":"c","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"n","input":{ "a" : [1, 2.50] }}]}]}"#;
    let out = parse(&a2o_bytes(body, "m").unwrap().0);
    assert_eq!(out["messages"][0]["content"], Value::Null);
    assert_eq!(
        out["messages"][0]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":[1,2.50]}"
    );
}

#[test]
fn a2o_sampling_stop_user_stream_and_thinking() {
    let (out, dropped) = a2o(json!({
        "model": "c", "max_tokens": 32000, "temperature": 0.7, "top_p": 0.9, "top_k": 5,
        "stop_sequences": ["END", "\n\nHuman:"], "metadata": {"user_id": "user_abc"},
        "stream": true, "thinking": {"type": "enabled", "budget_tokens": 8000},
        "output_config": {"effort": "high"}, "context_management": {},
        "messages": [{"role": "user", "content": "hi"}]
    }));
    assert_eq!(out["max_tokens"], 32000);
    assert_eq!(out["temperature"], 0.7);
    assert_eq!(out["top_p"], 0.9);
    assert_eq!(out["stop"], json!(["END", "\n\nHuman:"]));
    assert_eq!(out["user"], "user_abc");
    assert_eq!(out["stream"], true);
    assert_eq!(out["stream_options"], json!({"include_usage": true}));
    assert_eq!(out["reasoning_effort"], "medium");
    for d in ["top_k", "output_config", "context_management"] {
        assert!(dropped.contains(&d.to_string()), "{d} in {dropped:?}");
    }

    for (thinking, effort) in [
        (
            json!({"type": "enabled", "budget_tokens": 1024}),
            Some("low"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 4095}),
            Some("low"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 4096}),
            Some("medium"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 16383}),
            Some("medium"),
        ),
        (
            json!({"type": "enabled", "budget_tokens": 16384}),
            Some("high"),
        ),
        (json!({"type": "adaptive"}), Some("medium")),
        (json!({"type": "disabled"}), None),
    ] {
        let (out, _) = a2o(json!({"model": "c", "max_tokens": 5, "thinking": thinking,
            "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            out.get("reasoning_effort").and_then(Value::as_str),
            effort,
            "{thinking}"
        );
    }

    let (out, _) = a2o(json!({"model": "c", "max_tokens": 5, "stream": false,
        "messages": [{"role": "user", "content": "hi"}]}));
    assert!(out.get("stream_options").is_none());
}

#[test]
fn a2o_bad_bodies_are_refused() {
    for body in [
        &b"not json"[..],
        b"[1]",
        br#"{"model":"c","max_tokens":5}"#,
        br#"{"model":"c","max_tokens":5,"messages":"hi"}"#,
        br#"{"model":"c","max_tokens":-1,"messages":[]}"#,
        br#"{"model":"c","max_tokens":5,"messages":[{"role":"tool","content":"x"}]}"#,
        br#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":5}]}"#,
    ] {
        assert!(
            a2o_bytes(body, "m").is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---- Requests: OpenAI → Anthropic ----

#[test]
fn o2a_system_hoisted_and_roles_merged() {
    let (out, _) = o2a(json!({
        "model": "gpt", "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "a"},
            {"role": "developer", "content": [{"type": "text", "text": "Use British spelling."}]},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": ""}
        ]
    }));
    assert_eq!(out["model"], "up-model");
    assert_eq!(out["system"], "You are helpful.\nUse British spelling.");
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]}
        ])
    );
    // No system message: no system field.
    let (out, _) = o2a(json!({"model": "g", "messages": [{"role": "user", "content": "x"}]}));
    assert!(out.get("system").is_none());
}

#[test]
fn o2a_images_data_url_and_http() {
    let (out, dropped) = o2a(
        json!({"model": "g", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}
        ]}]}),
    );
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "Describe"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        ])
    );
    assert!(dropped.contains(&"messages.content.input_audio".to_string()));
    let err = o2a_err(
        json!({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]}]}),
    );
    assert!(err.contains("data URL"), "{err}");
}

#[test]
fn o2a_tools_tool_choice_and_parallel_calls() {
    let tools = json!([
        {"type": "function", "function": {"name": "get_capital", "description": "Capital of a country",
            "parameters": {"type": "object", "properties": {"country": {"type": "string"}}}, "strict": true}},
        {"type": "function", "function": {"name": "now"}}
    ]);
    let body =
        json!({"model": "g", "tools": tools, "messages": [{"role": "user", "content": "x"}]});
    let (out, dropped) = o2a(body.clone());
    assert_eq!(
        out["tools"],
        json!([
            {"name": "get_capital", "description": "Capital of a country", "input_schema": tools[0]["function"]["parameters"]},
            {"name": "now", "input_schema": {"type": "object", "properties": {}}}
        ])
    );
    assert!(dropped.contains(&"tools.function.strict".to_string()));
    assert!(out.get("tool_choice").is_none());

    for (choice, parallel, expected) in [
        (Some(json!("auto")), None, Some(json!({"type": "auto"}))),
        (Some(json!("required")), None, Some(json!({"type": "any"}))),
        (
            Some(json!("none")),
            Some(false),
            Some(json!({"type": "none"})),
        ),
        (
            Some(json!({"type": "function", "function": {"name": "now"}})),
            None,
            Some(json!({"type": "tool", "name": "now"})),
        ),
        (
            Some(json!("auto")),
            Some(false),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        ),
        (
            Some(json!("required")),
            Some(false),
            Some(json!({"type": "any", "disable_parallel_tool_use": true})),
        ),
        (
            None,
            Some(false),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        ),
        (None, Some(true), None),
    ] {
        let mut body = body.clone();
        if let Some(c) = &choice {
            body["tool_choice"] = c.clone();
        }
        if let Some(p) = parallel {
            body["parallel_tool_calls"] = json!(p);
        }
        let (out, _) = o2a(body);
        assert_eq!(
            out.get("tool_choice").cloned(),
            expected,
            "{choice:?} {parallel:?}"
        );
    }
}

#[test]
fn o2a_tool_calls_and_tool_messages() {
    let (out, _) = o2a(json!({"model": "g", "messages": [
        {"role": "user", "content": "Capitals of UK and FR?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_capital", "arguments": "{\"country\": \"UK\", \"n\": 1.50}"}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "London"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "user", "content": "Thanks"}
    ]}));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Capitals of UK and FR?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_capital", "input": {"country": "UK", "n": 1.50}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "London"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                {"type": "text", "text": "Thanks"}
            ]}
        ])
    );
    // The arguments' bytes become the input as they were.
    let raw = o2a_bytes(
        br#"{"model":"g","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"z\":1e2,\"a\":12345678901234567890123}"}}]}]}"#,
        "m",
    )
    .unwrap()
    .0;
    assert!(
        String::from_utf8(raw)
            .unwrap()
            .contains(r#""input":{"z":1e2,"a":12345678901234567890123}"#)
    );

    // A user message before the tool results of the same merged turn: results first.
    let (out, _) = o2a(json!({"model": "g", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "note"},
        {"role": "tool", "tool_call_id": "c", "content": "r"}
    ]}));
    assert_eq!(out["messages"][1]["content"][0]["type"], "tool_result");
    assert_eq!(out["messages"][1]["content"][1]["type"], "text");

    for args in ["{\"country\": ", "[1,2]", "\"s\""] {
        let err = o2a_err(
            json!({"model": "g", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}]}),
        );
        assert!(err.contains("arguments"), "{err}");
    }
}

#[test]
fn o2a_max_tokens_stop_temperature_user_stream() {
    let (out, _) = o2a(json!({"model": "g", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(out["max_tokens"], anthropic::encode::DEFAULT_MAX_TOKENS);
    assert!(out.get("stream").is_none() && out.get("temperature").is_none());
    let (out, _) = o2a(json!({"model": "g", "max_tokens": 100, "messages": []}));
    assert_eq!(out["max_tokens"], 100);
    let (out, _) =
        o2a(json!({"model": "g", "max_tokens": 100, "max_completion_tokens": 200, "messages": []}));
    assert_eq!(out["max_tokens"], 200);

    let (out, _) = o2a(json!({"model": "g", "stop": "END", "messages": []}));
    assert_eq!(out["stop_sequences"], json!(["END"]));
    let (out, dropped) = o2a(json!({"model": "g", "stop": ["a", " ", "b"], "messages": []}));
    assert_eq!(out["stop_sequences"], json!(["a", "b"]));
    assert!(dropped.contains(&"stop".to_string()));
    let (out, _) = o2a(json!({"model": "g", "stop": null, "messages": []}));
    assert!(out.get("stop_sequences").is_none());

    let (out, _) = o2a(json!({"model": "g", "temperature": 1.7, "top_p": 0.5, "messages": []}));
    assert_eq!(out["temperature"], 1.0);
    assert_eq!(out["top_p"], 0.5);
    let (out, _) = o2a(json!({"model": "g", "temperature": 0, "messages": []}));
    assert_eq!(out["temperature"], 0);
    assert!(
        o2a_err(json!({"model": "g", "temperature": "hot", "messages": []}))
            .contains("temperature")
    );

    let (out, _) = o2a(json!({"model": "g", "user": "u-42", "messages": []}));
    assert_eq!(out["metadata"], json!({"user_id": "u-42"}));

    let (out, dropped) = o2a(
        json!({"model": "g", "stream": true, "stream_options": {"include_usage": true},
        "seed": 1, "response_format": {"type": "json_object"}, "frequency_penalty": 0.5, "messages": []}),
    );
    assert_eq!(out["stream"], true);
    assert!(out.get("stream_options").is_none());
    assert!(!dropped.contains(&"stream_options".to_string()));
    for d in ["seed", "response_format", "frequency_penalty"] {
        assert!(dropped.contains(&d.to_string()), "{d} in {dropped:?}");
    }
}

#[test]
fn o2a_n_above_one_is_refused() {
    assert_eq!(
        o2a_err(json!({"model": "g", "n": 2, "messages": []})),
        "n > 1 is not supported by the upstream serving this model"
    );
    assert!(
        o2a(json!({"model": "g", "n": 1, "messages": []}))
            .0
            .get("n")
            .is_none()
    );
    for body in [
        &b"{"[..],
        b"\"x\"",
        br#"{"model":"g"}"#,
        br#"{"model":"g","messages":[{"role":"wizard","content":"x"}]}"#,
    ] {
        assert!(o2a_bytes(body, "m").is_err());
    }
}

#[test]
fn o2a_reasoning_effort_to_thinking_budget() {
    for (effort, max, expected) in [
        ("low", None, Some(1024)),
        ("medium", None, None), // 4096 is not below the default max_tokens of 4096
        ("medium", Some(8000), Some(4096)),
        ("high", Some(20000), Some(16384)),
        ("high", Some(16384), None),
        ("minimal", Some(8000), None),
    ] {
        let mut body = json!({"model": "g", "reasoning_effort": effort, "messages": []});
        if let Some(m) = max {
            body["max_completion_tokens"] = json!(m);
        }
        let (out, _) = o2a(body);
        assert_eq!(
            out.get("thinking")
                .map(|t| t["budget_tokens"].as_u64().unwrap()),
            expected,
            "{effort} {max:?}"
        );
        if expected.is_some() {
            assert_eq!(out["thinking"]["type"], "enabled");
        }
    }
    // Anthropic refuses thinking with temperature 0: the effort is dropped.
    let (out, dropped) =
        o2a(json!({"model": "g", "reasoning_effort": "low", "temperature": 0, "messages": []}));
    assert!(out.get("thinking").is_none());
    assert!(dropped.contains(&"reasoning_effort".to_string()));
}

// ---- Round trip ----

#[test]
fn request_round_trip_anthropic_openai_anthropic_keeps_meaning() {
    let original = json!({
        "model": "claude", "max_tokens": 1000, "stop_sequences": ["STOP"],
        "system": "Be terse.",
        "tools": [{"name": "get_weather", "description": "Weather",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in SF?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "SF"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "68F"},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ]
    });
    let (openai, _) = a2o_bytes(original.to_string().as_bytes(), "gpt").unwrap();
    let (back, dropped) = o2a_bytes(&openai, "claude").unwrap();
    let back = parse(&back);
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(back["system"], "Be terse.");
    assert_eq!(back["max_tokens"], 1000);
    assert_eq!(back["stop_sequences"], original["stop_sequences"]);
    assert_eq!(back["tools"], original["tools"]);
    assert_eq!(back["tool_choice"], original["tool_choice"]);
    assert_eq!(
        back["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in SF?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "SF"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "68F"},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ])
    );
}

// ---- Responses ----

#[test]
fn finish_and_stop_reason_tables() {
    for (openai, anthropic) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("function_call", "end_turn"),
        ("sensitive", "end_turn"),
    ] {
        assert_eq!(anthropic_stop_reason(openai), anthropic, "{openai}");
    }
    for (anthropic, openai) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ] {
        assert_eq!(openai_finish_reason(anthropic), openai, "{anthropic}");
    }
}

/// A chat `usage` in billing terms, as every chat path reads it.
fn openai_usage(raw: &RawValue) -> Option<Usage> {
    openai_chat::Usage::read(raw).and_then(|u| u.billing())
}

#[test]
fn usage_mapping_with_cache_buckets() {
    let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
    assert_eq!(
        openai_usage(&raw(
            r#"{"prompt_tokens":100,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":60}}"#
        )),
        Some(Usage {
            input_tokens: 40,
            output_tokens: 7,
            cache_read_tokens: 60,
            cache_write_tokens: 0
        })
    );
    // DeepSeek's own cache field when details are absent.
    assert_eq!(
        openai_usage(&raw(
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_cache_hit_tokens":4}"#
        ))
        .unwrap()
        .cache_read_tokens,
        4
    );
    assert_eq!(openai_usage(&raw("null")), None);
    // More cached than prompted is a lie: no usage, so the request is billed an estimate.
    assert_eq!(
        openai_usage(&raw(
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":11}}"#
        )),
        None
    );

    // Anthropic → OpenAI → back: prompt_tokens holds all three input buckets.
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],
        "stop_reason":"end_turn","usage":{"input_tokens":10,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":5}}"#;
    let (out, usage) = a2o_response(body, "gpt-x").unwrap();
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 30,
            cache_write_tokens: 20
        })
    );
    let out = parse(&out);
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 60, "completion_tokens": 5, "total_tokens": 65, "prompt_tokens_details": {"cached_tokens": 30}})
    );
    let (back, usage) = o2a_response(&serde_json::to_vec(&out).unwrap(), "c").unwrap();
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 30,
            output_tokens: 5,
            cache_read_tokens: 30,
            cache_write_tokens: 0
        })
    );
    assert_eq!(
        parse(&back)["usage"],
        json!({"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 30, "output_tokens": 5})
    );
}

#[test]
fn openai_sample_responses_to_anthropic() {
    let body = sample("openai-chat-completion.json");
    let (out, usage) = o2a_response(&body, "my-alias").unwrap();
    let src = parse(&body);
    let out = parse(&out);
    assert_eq!(out["id"], "msg_chatcmpl-D8Z5f52zQqikDBEKQMQoYcWMcWPeU");
    assert_eq!(
        (&out["type"], &out["role"], &out["model"]),
        (&json!("message"), &json!("assistant"), &json!("my-alias"))
    );
    assert_eq!(
        out["content"],
        json!([{"type": "text", "text": src["choices"][0]["message"]["content"]}])
    );
    assert_eq!(out["stop_reason"], "end_turn");
    assert_eq!(out["stop_sequence"], Value::Null);
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 16,
            output_tokens: 363,
            ..Usage::default()
        })
    );
    assert_eq!(out["usage"]["input_tokens"], 16);
    assert_eq!(out["usage"]["output_tokens"], 363);

    let (out, _) = o2a_response(&sample("deepseek-chat-completion.json"), "ds").unwrap();
    assert_eq!(parse(&out)["stop_reason"], "max_tokens");

    // Reasoning (DeepSeek / OpenRouter names) becomes a leading thinking block; tool calls
    // become tool_use blocks.
    for field in ["reasoning_content", "reasoning"] {
        let body = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", field: "User wants weather.",
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]
        }}]});
        let (out, usage) = o2a_response(body.to_string().as_bytes(), "m").unwrap();
        assert_eq!(usage, None);
        assert_eq!(
            parse(&out)["content"],
            json!([
                {"type": "thinking", "thinking": "User wants weather.", "signature": ""},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Paris"}}
            ])
        );
        assert_eq!(parse(&out)["stop_reason"], "tool_use");
    }
    // Tool calls under a "stop" finish still ask the Anthropic client to run them.
    let body = br#"{"id":"x","choices":[{"finish_reason":"stop","message":{"content":null,"tool_calls":[{"id":"c","function":{"name":"f","arguments":""}}]}}]}"#;
    let out = parse(&o2a_response(body, "m").unwrap().0);
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(
        out["content"],
        json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
    );
    for (fr, sr) in [("content_filter", "refusal"), ("length", "max_tokens")] {
        let body =
            json!({"id": "x", "choices": [{"finish_reason": fr, "message": {"content": "a"}}]});
        let out = parse(&o2a_response(body.to_string().as_bytes(), "m").unwrap().0);
        assert_eq!(out["stop_reason"], sr);
    }
    assert!(o2a_response(b"{\"choices\":[]}", "m").is_none());
    assert!(o2a_response(b"nope", "m").is_none());
}

#[test]
fn anthropic_sample_response_to_openai() {
    let body = sample("anthropic-message.json");
    let (out, usage) = a2o_response(&body, "my-alias").unwrap();
    let src = parse(&body);
    let out = parse(&out);
    assert_eq!(out["id"], "chatcmpl-msg_01VdEjxAP5ahtHKrrRdNBteQ");
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["model"], "my-alias");
    assert!(out["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(out["choices"][0]["index"], 0);
    assert_eq!(out["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        src["content"][0]["text"]
    );
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 12,
            output_tokens: 29,
            ..Usage::default()
        })
    );
    assert_eq!(out["usage"]["prompt_tokens"], 12);
    assert_eq!(out["usage"]["completion_tokens"], 29);
    assert_eq!(out["usage"]["total_tokens"], 41);

    let body = json!({"id": "msg_2", "type": "message", "role": "assistant", "stop_reason": "tool_use", "content": [
        {"type": "thinking", "thinking": "Need weather.", "signature": "abc"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "now."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "SF", "unit": "f"}}
    ]});
    let out = parse(&a2o_response(body.to_string().as_bytes(), "m").unwrap().0);
    let msg = &out["choices"][0]["message"];
    assert_eq!(msg["content"], "Checking now.");
    assert_eq!(msg["reasoning_content"], "Need weather.");
    assert_eq!(
        msg["tool_calls"],
        json!([{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"SF\",\"unit\":\"f\"}"}}])
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert!(out.get("usage").is_none());

    // Only a tool call: content is null.
    let body = br#"{"id":"m","content":[{"type":"tool_use","id":"t","name":"n","input":{}}],"stop_reason":"tool_use"}"#;
    let out = parse(&a2o_response(body, "m").unwrap().0);
    assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
    for (sr, fr) in [
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
    ] {
        let body = json!({"id": "m", "content": [], "stop_reason": sr});
        let out = parse(&a2o_response(body.to_string().as_bytes(), "m").unwrap().0);
        assert_eq!(out["choices"][0]["finish_reason"], fr, "{sr}");
    }
    assert!(a2o_response(&sample("anthropic-error.json"), "m").is_none());
}

#[test]
fn response_round_trip_anthropic_openai_anthropic() {
    for body in [
        sample("anthropic-message.json"),
        json!({"id": "msg_3", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "tool_use",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"location": "SF"}},
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {"tz": "PST"}}
            ],
            "usage": {"input_tokens": 3, "output_tokens": 4}})
        .to_string()
        .into_bytes(),
    ] {
        let (openai, _) = a2o_response(&body, "gpt").unwrap();
        let (back, _) = o2a_response(&openai, "claude").unwrap();
        let (src, back) = (parse(&body), parse(&back));
        assert_eq!(back["content"], src["content"]);
        assert_eq!(back["stop_reason"], src["stop_reason"]);
    }
}

// ---- Errors ----

#[test]
fn openai_errors_to_anthropic() {
    let (status, body) = o2a_error(429, &sample("openai-error-429.json"));
    let body = parse(&body);
    assert_eq!(status, 429);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit reached for gpt-4o-mini")
    );

    let (_, body) = o2a_error(404, &sample("openai-error-404.json"));
    assert_eq!(parse(&body)["error"]["type"], "not_found_error");
    let (_, body) = o2a_error(400, &sample("openai-error.json"));
    assert_eq!(parse(&body)["error"]["type"], "invalid_request_error");
    let (_, body) = o2a_error(429, &sample("openrouter-error-429.json"));
    assert_eq!(parse(&body)["error"]["message"], "Provider returned error");

    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (529, "overloaded_error"),
    ] {
        let (s, body) = o2a_error(status, b"<html>bad gateway</html>");
        let body = parse(&body);
        assert_eq!(s, status);
        assert_eq!(body["error"]["type"], kind, "{status}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&status.to_string())
        );
    }
    let (_, body) = o2a_error(400, br#"{"error":"plain text error"}"#);
    assert_eq!(parse(&body)["error"]["message"], "plain text error");
    assert_eq!(
        parse(&anthropic::encode::error_object(
            "overloaded_error",
            "Overloaded"
        )),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[test]
fn anthropic_errors_to_openai() {
    let (status, body) = a2o_error(429, &sample("anthropic-error-429.json"));
    let body = parse(&body);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["param"], Value::Null);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("This request would exceed")
    );

    let (status, body) = a2o_error(404, &sample("anthropic-error-404.json"));
    assert_eq!(status, 404);
    assert_eq!(
        parse(&body),
        json!({"error": {"message": "model: claude-sonet-4-5", "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
    );
    let (_, body) = a2o_error(
        404,
        br#"{"type":"error","error":{"type":"not_found_error","message":"Not found"}}"#,
    );
    assert_eq!(parse(&body)["error"]["code"], "not_found");

    let (status, body) = a2o_error(400, &sample("anthropic-error.json"));
    assert_eq!(status, 400);
    assert_eq!(parse(&body)["error"]["type"], "invalid_request_error");
    assert!(
        parse(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("effort level")
    );

    let (status, body) = a2o_error(
        529,
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    assert_eq!(status, 503, "OpenAI clients do not know 529");
    assert_eq!(
        parse(&body),
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})
    );
    let (_, body) = a2o_error(401, br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#);
    assert_eq!(parse(&body)["error"]["code"], "invalid_api_key");
    let (status, body) = a2o_error(500, b"");
    assert_eq!(status, 500);
    assert_eq!(parse(&body)["error"]["type"], "server_error");
    assert!(
        parse(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500")
    );
}

// ---- Streams: OpenAI upstream → Anthropic client ----

struct AnthropicView {
    events: Vec<(String, Value)>,
    notes: Vec<StreamNote>,
}

impl AnthropicView {
    fn names(&self) -> Vec<&str> {
        self.events.iter().map(|(n, _)| n.as_str()).collect()
    }
    /// Text of the deltas of `delta_type` (text_delta / thinking_delta / input_json_delta)
    /// at block `index`.
    fn joined(&self, index: u64, field: &str) -> String {
        self.events
            .iter()
            .filter(|(n, d)| n == "content_block_delta" && d["index"] == index)
            .filter_map(|(_, d)| d["delta"][field].as_str().map(str::to_string))
            .collect()
    }
    fn last(&self, name: &str) -> &Value {
        &self.events.iter().rev().find(|(n, _)| n == name).unwrap().1
    }
}

fn read_anthropic_sse(out: &[u8]) -> Vec<(String, Value)> {
    sse_events(out)
        .into_iter()
        .map(|(name, data)| {
            let name = name.unwrap();
            let data = parse(&data.unwrap());
            assert_eq!(data["type"], name.as_str(), "event name matches data type");
            (name, data)
        })
        .collect()
}

fn openai_upstream(sample_name: &str) -> (AnthropicView, Translation) {
    let mut t = Translation::openai_upstream("my-alias", "msg_kp1");
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (_, data) in sse_events(&sample(sample_name)) {
        if let Some(data) = data {
            notes.push(t.chunk(&data, &mut out));
        }
    }
    (
        AnthropicView {
            events: read_anthropic_sse(&out),
            notes,
        },
        t,
    )
}

/// Text of the OpenAI deltas of `field` in a sample, in order.
fn openai_sample_text(sample_name: &str, pick: impl Fn(&Value) -> Option<String>) -> String {
    sse_events(&sample(sample_name))
        .into_iter()
        .filter_map(|(_, d)| d)
        .filter(|d| d != b"[DONE]")
        .filter_map(|d| {
            let v = parse(&d);
            v["choices"].get(0).and_then(|c| pick(&c["delta"]))
        })
        .collect()
}

#[test]
fn openai_text_stream_to_anthropic() {
    let (view, t) = openai_upstream("openai-chat-stream.sse");
    assert_eq!(
        view.names(),
        ["message_start", "content_block_start"]
            .into_iter()
            .chain(std::iter::repeat_n("content_block_delta", 8))
            .chain(["content_block_stop", "message_delta", "message_stop"])
            .collect::<Vec<_>>()
    );
    let start = &view.events[0].1["message"];
    assert_eq!(start["id"], "msg_kp1");
    assert_eq!(start["model"], "my-alias");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["output_tokens"], 0);
    assert_eq!(
        view.events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let expected = openai_sample_text("openai-chat-stream.sse", |d| {
        d["content"].as_str().map(str::to_string)
    });
    assert_eq!(view.joined(0, "text"), expected);
    assert_eq!(expected, "The capital of the UK is London.");
    let delta = view.last("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["input_tokens"], 78);
    assert_eq!(delta["usage"]["output_tokens"], 9);
    assert_eq!(
        t.usage(),
        Some(Usage {
            input_tokens: 78,
            output_tokens: 9,
            ..Usage::default()
        })
    );
    // The role chunk shows nothing; the first text commits; the usage chunk shows nothing.
    assert_eq!(view.notes[0], StreamNote::Nothing);
    assert_eq!(view.notes[1], StreamNote::Content);
    assert_eq!(view.notes[view.notes.len() - 2], StreamNote::Nothing);
    assert_eq!(view.notes.last(), Some(&StreamNote::Done));
}

#[test]
fn openai_tool_call_stream_to_anthropic() {
    let (view, t) = openai_upstream("openai-tool-call-stream.sse");
    assert_eq!(view.notes[0], StreamNote::Content, "a tool call commits");
    assert_eq!(
        view.events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block":
            {"type": "tool_use", "id": "call_ZR5UUuTt3pf61kjwAJIYdVMj", "name": "get_capital", "input": {}}})
    );
    let args = view.joined(0, "partial_json");
    assert_eq!(args, r#"{"country":"UK"}"#);
    assert_eq!(
        args,
        openai_sample_text("openai-tool-call-stream.sse", |d| {
            d["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_string)
        })
    );
    assert!(
        view.events
            .iter()
            .all(|(_, d)| d["delta"]["type"] != "text_delta")
    );
    assert_eq!(
        view.last("message_delta")["delta"]["stop_reason"],
        "tool_use"
    );
    assert_eq!(t.usage().unwrap().input_tokens, 53);
    assert_eq!(t.usage().unwrap().output_tokens, 15);
    assert_eq!(
        view.names()[view.events.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
}

#[test]
fn deepseek_reasoning_stream_to_anthropic_thinking() {
    let (view, t) = openai_upstream("deepseek-stream.trimmed.sse");
    assert_eq!(
        view.notes[0],
        StreamNote::Nothing,
        "empty reasoning_content shows nothing"
    );
    assert_eq!(view.notes[1], StreamNote::Content);
    assert_eq!(
        view.events[1].1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    assert_eq!(view.events[1].1["index"], 0);
    assert_eq!(view.joined(0, "thinking"), "Hmm");
    // The thinking block closes before the text block opens, at index 1.
    let stop0 = view
        .events
        .iter()
        .position(|(n, d)| n == "content_block_stop" && d["index"] == 0)
        .unwrap();
    let start1 = view
        .events
        .iter()
        .position(|(n, d)| n == "content_block_start" && d["index"] == 1)
        .unwrap();
    assert!(stop0 < start1);
    assert_eq!(view.events[start1].1["content_block"]["type"], "text");
    assert_eq!(view.joined(1, "text"), "?");
    let delta = view.last("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 212);
    assert_eq!(
        t.usage(),
        Some(Usage {
            input_tokens: 6,
            output_tokens: 212,
            ..Usage::default()
        })
    );
}

#[test]
fn openrouter_stream_usage_after_finish_and_reasoning() {
    let (view, t) = openai_upstream("openrouter-stream-usage-cost.sse");
    assert_eq!(
        view.joined(0, "thinking"),
        "This is a simple arithmetic question. 2+2 equals 4."
    );
    assert_eq!(view.joined(1, "text"), "2 + 2 = 4");
    // message_delta goes out at [DONE], so the trailing usage chunk is in it.
    let delta = view.last("message_delta");
    assert_eq!(delta["usage"]["input_tokens"], 43);
    assert_eq!(delta["usage"]["output_tokens"], 36);
    assert_eq!(t.usage().unwrap().output_tokens, 36);
    assert_eq!(
        view.names()
            .iter()
            .filter(|n| **n == "message_delta")
            .count(),
        1
    );
}

#[test]
fn openai_stream_errors_and_unclean_ends() {
    let mut t = Translation::openai_upstream("m", "msg_1");
    let mut out = Vec::new();
    let first = br#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#;
    assert_eq!(t.chunk(first, &mut out), StreamNote::Content);
    let err = br#"{"id":"x","object":"chat.completion.chunk","error":{"message":"Token limit reached","code":"x"},"usage":{"prompt_tokens":43,"completion_tokens":2}}"#;
    assert_eq!(
        t.chunk(err, &mut out),
        StreamNote::Error("Token limit reached".into())
    );
    assert_eq!(
        t.usage().unwrap().input_tokens,
        43,
        "usage on an error chunk still bills"
    );
    assert_eq!(t.chunk(b": not json", &mut out), StreamNote::Nothing);
    // The upstream was cut: finish closes the text block and the message, once.
    let before = out.len();
    t.finish(&mut out);
    t.finish(&mut out);
    assert_eq!(t.chunk(b"[DONE]", &mut out), StreamNote::Done);
    let tail = read_anthropic_sse(&out[before..]);
    let names: Vec<&str> = tail.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert_eq!(tail[1].1["delta"]["stop_reason"], "end_turn");

    // finish on a stream that sent nothing still yields a well-formed message.
    let mut t = Translation::openai_upstream("m", "msg_2");
    let mut out = Vec::new();
    t.finish(&mut out);
    let names: Vec<String> = read_anthropic_sse(&out)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);

    let ev = t.error_event("upstream reset");
    let events = read_anthropic_sse(&ev);
    assert_eq!(events[0].0, "error");
    assert_eq!(
        events[0].1["error"],
        json!({"type": "api_error", "message": "upstream reset"})
    );
}

#[test]
fn openai_parallel_tool_calls_get_their_own_blocks() {
    let mut t = Translation::openai_upstream("m", "msg_3");
    let mut out = Vec::new();
    for chunk in [
        json!({"choices": [{"index": 0, "delta": {"content": "Two calls."}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\""}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}}]}}]}),
        // No id, no index (some compatible upstreams): the latest call.
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}),
    ] {
        t.chunk(chunk.to_string().as_bytes(), &mut out);
    }
    t.chunk(b"[DONE]", &mut out);
    let view = AnthropicView {
        events: read_anthropic_sse(&out),
        notes: Vec::new(),
    };
    assert_eq!(view.joined(0, "text"), "Two calls.");
    assert_eq!(view.joined(1, "partial_json"), "{\"x\":1}");
    assert_eq!(view.joined(2, "partial_json"), "{}");
    let starts: Vec<&Value> = view
        .events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts.len(), 3);
    assert_eq!(starts[2]["content_block"]["id"], "call_b");
    // Every start has a stop, in order.
    let order: Vec<(String, u64)> = view
        .events
        .iter()
        .filter(|(n, _)| n.starts_with("content_block_s"))
        .map(|(n, d)| (n.clone(), d["index"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("content_block_start", 0),
            ("content_block_stop", 0),
            ("content_block_start", 1),
            ("content_block_stop", 1),
            ("content_block_start", 2),
            ("content_block_stop", 2)
        ]
        .map(|(n, i)| (n.to_string(), i))
    );
    assert_eq!(
        view.last("message_delta")["delta"]["stop_reason"],
        "tool_use"
    );
}

// ---- Streams: Anthropic upstream → OpenAI client ----

fn anthropic_upstream(
    sample_name: &str,
    include_usage: bool,
) -> (Vec<Value>, bool, Vec<StreamNote>, Translation) {
    let mut t = Translation::anthropic_upstream("my-alias", include_usage);
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (name, data) in sse_events(&sample(sample_name)) {
        if let Some(data) = data {
            notes.push(t.event(name.as_deref().map(str::as_bytes), &data, &mut out));
        }
    }
    let (chunks, done) = read_openai_sse(&out);
    (chunks, done, notes, t)
}

/// The chunks of an OpenAI stream, and whether it ended with exactly one `[DONE]`.
fn read_openai_sse(out: &[u8]) -> (Vec<Value>, bool) {
    let events = sse_events(out);
    let mut chunks = Vec::new();
    let mut done = false;
    for (i, (name, data)) in events.iter().enumerate() {
        assert!(name.is_none());
        let data = data.as_ref().unwrap();
        if data == b"[DONE]" {
            assert_eq!(i, events.len() - 1, "[DONE] is last");
            done = true;
        } else {
            chunks.push(parse(data));
        }
    }
    (chunks, done)
}

fn delta_text(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|c| c["delta"][field].as_str()))
        .collect()
}

#[test]
fn anthropic_text_stream_to_openai() {
    let (chunks, done, notes, t) = anthropic_upstream("anthropic-stream.sse", true);
    assert!(done);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-msg_018E1hg8GoVTGEKQY3ovMcSJ");
        assert_eq!(c["model"], "my-alias");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(delta_text(&chunks, "content"), "2");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(
        t.usage(),
        Some(Usage {
            input_tokens: 20,
            output_tokens: 5,
            ..Usage::default()
        })
    );
    // message_start, empty block start and ping show nothing; the text commits.
    assert_eq!(
        notes[..3],
        [
            StreamNote::Nothing,
            StreamNote::Nothing,
            StreamNote::Nothing
        ]
    );
    assert_eq!(notes[3], StreamNote::Content);
    assert_eq!(notes.last(), Some(&StreamNote::Done));
}

#[test]
fn anthropic_tool_use_stream_to_openai() {
    let (chunks, done, _, t) = anthropic_upstream("anthropic-tool-use-stream.sse", false);
    assert!(done);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage chunk unless asked"
    );
    assert_eq!(
        delta_text(&chunks, "content"),
        "Okay, let's check the weather for San Francisco, CA:"
    );
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .map(|tc| &tc[0])
        .collect();
    assert_eq!(
        *calls[0],
        json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}})
    );
    assert!(
        calls.iter().all(|c| c["index"] == 0),
        "OpenAI tool index counts tool calls, not blocks"
    );
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        args,
        r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#
    );
    // Equal to the source's fragments.
    let source: String = sse_events(&sample("anthropic-tool-use-stream.sse"))
        .into_iter()
        .filter_map(|(_, d)| d)
        .filter_map(|d| {
            parse(&d)["delta"]["partial_json"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(args, source);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(
        t.usage(),
        Some(Usage {
            input_tokens: 472,
            output_tokens: 89,
            ..Usage::default()
        })
    );
}

#[test]
fn anthropic_stream_thinking_errors_and_unclean_end() {
    let mut t = Translation::anthropic_upstream("m", true);
    let mut out = Vec::new();
    let events: [(&str, Value); 6] = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 7, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 3, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Ponder."}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "xyz"}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_x", "name": "now", "input": {}}}),
        ),
        ("some_future_event", json!({"type": "some_future_event"})),
    ];
    let notes: Vec<StreamNote> = events
        .iter()
        .map(|(n, d)| t.event(Some(n.as_bytes()), d.to_string().as_bytes(), &mut out))
        .collect();
    assert_eq!(
        notes,
        [
            StreamNote::Nothing,
            StreamNote::Nothing,
            StreamNote::Content,
            StreamNote::Nothing,
            StreamNote::Content,
            StreamNote::Nothing
        ]
    );
    // The tool block stops without any input: OpenAI clients get "{}".
    assert_eq!(
        t.event(
            Some(b"content_block_stop"),
            br#"{"type":"content_block_stop","index":1}"#,
            &mut out
        ),
        StreamNote::Content
    );
    let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(
        t.event(Some(b"error"), err, &mut out),
        StreamNote::Error("Overloaded".into())
    );
    assert_eq!(
        t.event(Some(b"error"), b"garbage", &mut out),
        StreamNote::Error("garbage".into())
    );
    // The upstream was cut: finish sends finish_reason, usage and [DONE], once.
    t.finish(&mut out);
    t.finish(&mut out);
    let (chunks, done) = read_openai_sse(&out);
    assert!(done);
    assert_eq!(delta_text(&chunks, "reasoning_content"), "Ponder.");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{}");
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 110, "completion_tokens": 1, "total_tokens": 111, "prompt_tokens_details": {"cached_tokens": 100}})
    );
    assert_eq!(
        t.usage(),
        Some(Usage {
            input_tokens: 7,
            output_tokens: 1,
            cache_read_tokens: 100,
            cache_write_tokens: 3
        })
    );
}

#[test]
fn stream_round_trip_anthropic_openai_anthropic() {
    // Anthropic upstream → OpenAI chunks → back through the OpenAI-upstream translator.
    let (chunks, _, _, _) = anthropic_upstream("anthropic-tool-use-stream.sse", true);
    let mut back = Translation::openai_upstream("claude", "msg_rt");
    let mut out = Vec::new();
    for c in &chunks {
        back.chunk(c.to_string().as_bytes(), &mut out);
    }
    assert_eq!(back.chunk(b"[DONE]", &mut out), StreamNote::Done);
    let view = AnthropicView {
        events: read_anthropic_sse(&out),
        notes: Vec::new(),
    };
    assert_eq!(
        view.joined(0, "text"),
        "Okay, let's check the weather for San Francisco, CA:"
    );
    assert_eq!(
        view.events
            .iter()
            .find(|(n, d)| n == "content_block_start" && d["index"] == 1)
            .unwrap()
            .1["content_block"]["name"],
        "get_weather"
    );
    assert_eq!(
        parse(view.joined(1, "partial_json").as_bytes()),
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert_eq!(
        view.last("message_delta")["delta"]["stop_reason"],
        "tool_use"
    );
    assert_eq!(
        back.usage(),
        Some(Usage {
            input_tokens: 472,
            output_tokens: 89,
            ..Usage::default()
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Gemini
// ---------------------------------------------------------------------------------------------

#[test]
fn gemini_errors_the_gateway_makes_are_in_googles_shape() {
    let body = error_body(Dialect::Gemini, 429, "slow down", Some("rate_limited"));
    assert_eq!(
        parse(&body),
        json!({"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}})
    );
    let refusal = ClientRequest::parse_gemini(b"{}", "gemini-2.5-flash", None)
        .err()
        .unwrap();
    assert_eq!(
        parse(&refusal_body(Dialect::Gemini, &refusal))["error"]["status"],
        "INVALID_ARGUMENT"
    );
    // Without the URL's model a Gemini body is no request.
    assert!(ClientRequest::parse(Dialect::Gemini, br#"{"contents":[]}"#).is_err());
}

#[test]
fn gemini_to_gemini_passes_the_body_and_errors_byte_for_byte() {
    let body = br#"{"contents": [{"parts":[{"text":"hi"}]}], "safetySettings": [], "x": 1.50}"#;
    let req = ClientRequest::parse_gemini(body, "models/gemini-2.5-pro", None).unwrap();
    assert_eq!(req.model(), "gemini-2.5-pro");
    assert_eq!(req.dialect().name(), "gemini");
    let out = req
        .upstream_body(body, Dialect::Gemini, "other-id")
        .unwrap();
    assert_eq!(&out.body[..], &body[..]);
    assert!(out.dropped.is_empty());
    let err = Bytes::from_static(include_bytes!(
        "../../../../testkit/samples/gemini-error-404.json"
    ));
    let (status, relayed) = upstream_error(Dialect::Gemini, Dialect::Gemini, 404, err.clone());
    assert_eq!((status, relayed), (404, err));
}

#[test]
fn gemini_to_gemini_answers_are_relayed_and_billed() {
    let body = include_bytes!("../../../../testkit/samples/gemini-generate-content.json");
    let req = ClientRequest::parse_gemini(br#"{"contents":[]}"#, "gemini-2.5-flash", None).unwrap();
    let (bytes, metering) = req
        .response(Dialect::Gemini, Bytes::from_static(body))
        .unwrap();
    assert_eq!(&bytes[..], &body[..]);
    let m = metering.unwrap();
    // promptTokenCount 9, candidatesTokenCount 9, thoughtsTokenCount 34.
    assert_eq!(m.usage.input_tokens, 9);
    assert_eq!(m.usage.output_tokens, 43);
    assert_eq!(m.reasoning_tokens, Some(34));
    assert!(
        req.response(Dialect::Gemini, Bytes::from_static(b"<html>"))
            .is_none()
    );
}

#[test]
fn gemini_streams_are_typed_by_their_framing() {
    let sse = ClientRequest::parse_gemini(br#"{"contents":[]}"#, "g", Some(Framing::Sse)).unwrap();
    let array =
        ClientRequest::parse_gemini(br#"{"contents":[]}"#, "g", Some(Framing::JsonArray)).unwrap();
    assert!(sse.stream() && array.stream());
    assert_eq!(sse.stream_content_type(), "text/event-stream");
    assert_eq!(array.stream_content_type(), "application/json");
    assert!(!Stream::new(&array, Dialect::Gemini, "m").is_translated());
}

/// The recorded body of a captured client request (`{method, path, query, headers, body}`).
fn recorded_body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&parse(&sample(name))["body"]).unwrap()
}

/// A `client` request body (JSON) as an upstream of `upstream`'s dialect gets it.
fn outbound(client: Dialect, body: &[u8], upstream: Dialect, model: &str) -> Value {
    let req = parse_client(client, body, model, None);
    let out = req.upstream_body(body, upstream, "up-model").unwrap();
    parse(&out.body)
}

const GEMINI_CALL_ID: &str = "run_shell_command_1796638976255_0";

#[test]
fn a_gemini_cli_tool_turn_pairs_call_and_result_for_every_upstream() {
    let body = recorded_body("gemini-cli-0.61.0-tool-result-request.json");
    let chat = outbound(
        Dialect::Gemini,
        &body,
        Dialect::OpenAiChat,
        "gemini-3.8-flash",
    );
    assert_eq!(chat["model"], "up-model");
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    let call = messages
        .iter()
        .find(|m| m["tool_calls"].is_array())
        .unwrap();
    assert_eq!(call["tool_calls"][0]["id"], GEMINI_CALL_ID);
    assert_eq!(
        call["tool_calls"][0]["function"]["name"],
        "run_shell_command"
    );
    let result = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(result["tool_call_id"], GEMINI_CALL_ID);
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("KEYPLANE-MARKER")
    );
    let read_file = chat["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "read_file")
        .unwrap();
    assert_eq!(
        read_file["function"]["parameters"]["properties"]["start_line"]["minimum"],
        1
    );

    let anthropic = outbound(
        Dialect::Gemini,
        &body,
        Dialect::Anthropic,
        "gemini-3.8-flash",
    );
    let blocks: Vec<&Value> = anthropic["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .collect();
    let tool_use = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
    let tool_result = blocks.iter().find(|b| b["type"] == "tool_result").unwrap();
    assert_eq!(tool_use["id"], GEMINI_CALL_ID);
    assert_eq!(tool_result["tool_use_id"], GEMINI_CALL_ID);
    assert!(
        anthropic["system"]
            .as_str()
            .unwrap()
            .starts_with("You are Gemini CLI")
    );

    let responses = outbound(Dialect::Gemini, &body, Dialect::OpenAiResponses, "g");
    let items = responses["input"].as_array().unwrap();
    let call = items.iter().find(|i| i["type"] == "function_call").unwrap();
    let output = items
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .unwrap();
    assert_eq!(call["call_id"], GEMINI_CALL_ID);
    assert_eq!(output["call_id"], GEMINI_CALL_ID);
}

#[test]
fn every_client_reaches_a_gemini_upstream_with_names_ids_and_signatures() {
    let chat = json!({"model": "m", "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    let out = outbound(
        Dialect::OpenAiChat,
        chat.to_string().as_bytes(),
        Dialect::Gemini,
        "m",
    );
    assert!(out.get("model").is_none());
    assert_eq!(out["systemInstruction"]["parts"][0]["text"], "sys");
    assert_eq!(
        out["contents"][1]["parts"][0],
        json!({"functionCall": {"id": "call_a", "name": "weather", "args": {"city": "Paris"}},
            "thoughtSignature": "skip_thought_signature_validator"})
    );
    assert_eq!(
        out["contents"][2]["parts"][0],
        json!({"functionResponse": {"id": "call_a", "name": "weather", "response": {"output": "sunny"}}})
    );
    assert!(
        out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"]
            .is_object()
    );

    // An Anthropic client gives back the signature a Gemini upstream put on its call.
    let anthropic = json!({"model": "m", "max_tokens": 100, "messages": [
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "", "signature": "U0lH"},
            {"type": "tool_use", "id": "call_0_0", "name": "ls", "input": {"dir": "."}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_0_0", "content": "a.txt", "is_error": true}]}]});
    let out = outbound(
        Dialect::Anthropic,
        anthropic.to_string().as_bytes(),
        Dialect::Gemini,
        "m",
    );
    assert_eq!(
        out["contents"][1]["parts"],
        json!([{"functionCall": {"id": "call_0_0", "name": "ls", "args": {"dir": "."}},
            "thoughtSignature": "U0lH"}])
    );
    assert_eq!(
        out["contents"][2]["parts"][0]["functionResponse"],
        json!({"id": "call_0_0", "name": "ls", "response": {"error": "a.txt"}})
    );
    assert_eq!(out["generationConfig"]["maxOutputTokens"], 100);

    let responses = json!({"model": "m", "instructions": "be terse", "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "fc_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "fc_1", "output": "ok"}],
        "reasoning": {"effort": "high"}});
    let out = outbound(
        Dialect::OpenAiResponses,
        responses.to_string().as_bytes(),
        Dialect::Gemini,
        "m",
    );
    assert_eq!(out["systemInstruction"]["parts"][0]["text"], "be terse");
    assert_eq!(
        out["contents"][2]["parts"][0]["functionResponse"]["name"],
        "f"
    );
}

/// A Gemini answer with a signed function call, after thoughts, with every usage count.
const GEMINI_TOOL_ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[
    {"text":"The user wants a listing.","thought":true},
    {"functionCall":{"name":"ls","args":{"dir":"."}},"thoughtSignature":"U0lH"}]},
    "finishReason":"STOP","index":0}],
  "usageMetadata":{"promptTokenCount":120,"cachedContentTokenCount":100,"toolUsePromptTokenCount":3,
    "candidatesTokenCount":7,"thoughtsTokenCount":11,"totalTokenCount":141},
  "modelVersion":"gemini-3-pro","responseId":"resp-1"}"#;

#[test]
fn a_gemini_answer_bills_exactly_and_its_signature_comes_back_through_anthropic() {
    let expected = Usage {
        input_tokens: 23,
        output_tokens: 18,
        cache_read_tokens: 100,
        cache_write_tokens: 0,
    };
    for client in [
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        Dialect::OpenAiResponses,
    ] {
        let (_, usage) =
            answer(client, Dialect::Gemini, GEMINI_TOOL_ANSWER.as_bytes(), "cm").unwrap();
        assert_eq!(usage, Some(expected), "{client:?}");
    }
    let (chat, _) = answer(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        GEMINI_TOOL_ANSWER.as_bytes(),
        "cm",
    )
    .unwrap();
    let chat = parse(&chat);
    assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chat["usage"]["prompt_tokens"], 123);
    assert_eq!(chat["usage"]["completion_tokens"], 18);
    assert_eq!(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 100);

    let (message, _) = answer(
        Dialect::Anthropic,
        Dialect::Gemini,
        GEMINI_TOOL_ANSWER.as_bytes(),
        "cm",
    )
    .unwrap();
    let message = parse(&message);
    assert_eq!(message["stop_reason"], "tool_use");
    let content = message["content"].as_array().unwrap().clone();
    let tool_use = content.iter().find(|b| b["type"] == "tool_use").unwrap();
    assert!(
        content
            .iter()
            .any(|b| b["type"] == "thinking" && b["signature"] == "U0lH")
    );
    // The client sends the turn back: the signature rides on the call again.
    let next = json!({"model": "cm", "max_tokens": 50, "messages": [
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "a.txt"}]}]});
    let out = outbound(
        Dialect::Anthropic,
        next.to_string().as_bytes(),
        Dialect::Gemini,
        "gemini-3-pro",
    );
    let parts = out["contents"][1]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(parts[0]["thoughtSignature"], "U0lH");
    assert_eq!(parts[0]["functionCall"]["name"], "ls");
    assert_eq!(
        out["contents"][2]["parts"][0]["functionResponse"]["id"],
        tool_use["id"]
    );
}

#[test]
fn anthropic_thinking_survives_a_gemini_client_that_keeps_only_signatures() {
    let upstream = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "I will list.", "signature": "EqQB+/sig=="},
            {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"dir": "."}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 3}})
    .to_string();
    let (body, usage) = answer(
        Dialect::Gemini,
        Dialect::Anthropic,
        upstream.as_bytes(),
        "gm",
    )
    .unwrap();
    assert_eq!(
        usage,
        Some(Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 2,
            cache_write_tokens: 3
        })
    );
    let v = parse(&body);
    assert_eq!(v["modelVersion"], "gm");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 15);
    assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], 2);
    let parts = v["candidates"][0]["content"]["parts"].as_array().unwrap();
    let call = parts
        .iter()
        .find(|p| p["functionCall"].is_object())
        .unwrap();
    assert_eq!(call["functionCall"]["id"], "toolu_1");
    // Gemini CLI's next request: the call part alone, with its signature, then the result.
    let next = json!({"contents": [
        {"role": "user", "parts": [{"text": "list"}]},
        {"role": "model", "parts": [call]},
        {"role": "user", "parts": [{"functionResponse": {"id": "toolu_1", "name": "ls", "response": {"output": "a.txt"}}}]}]});
    let out = outbound(
        Dialect::Gemini,
        next.to_string().as_bytes(),
        Dialect::Anthropic,
        "gm",
    );
    assert_eq!(
        out["messages"][1]["content"],
        json!([
            {"type": "thinking", "thinking": "I will list.", "signature": "EqQB+/sig=="},
            {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"dir": "."}}
        ])
    );
    assert_eq!(out["messages"][2]["content"][0]["tool_use_id"], "toolu_1");
}

#[test]
fn a_blocked_gemini_prompt_is_each_clients_own_refusal() {
    let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9}}"#;
    let (chat, usage) = answer(Dialect::OpenAiChat, Dialect::Gemini, blocked, "m").unwrap();
    assert_eq!(
        parse(&chat)["choices"][0]["finish_reason"],
        "content_filter"
    );
    assert_eq!(usage.unwrap().input_tokens, 9);
    let (message, _) = answer(Dialect::Anthropic, Dialect::Gemini, blocked, "m").unwrap();
    assert_eq!(parse(&message)["stop_reason"], "refusal");
    let (response, _) = answer(Dialect::OpenAiResponses, Dialect::Gemini, blocked, "m").unwrap();
    let response = parse(&response);
    assert_eq!(response["status"], "incomplete");
    assert_eq!(response["incomplete_details"]["reason"], "content_filter");
    let recitation = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Once upon"}]},"finishReason":"RECITATION","index":0}]}"#;
    let (message, _) = answer(Dialect::Anthropic, Dialect::Gemini, recitation, "m").unwrap();
    assert_eq!(parse(&message)["stop_reason"], "refusal");
    // And the other way: a refusal reaches a Gemini client as SAFETY.
    let refused = json!({"id": "msg", "type": "message", "role": "assistant", "model": "c",
        "content": [], "stop_reason": "refusal", "usage": {"input_tokens": 1, "output_tokens": 0}})
    .to_string();
    let (body, _) = answer(Dialect::Gemini, Dialect::Anthropic, refused.as_bytes(), "m").unwrap();
    assert_eq!(parse(&body)["candidates"][0]["finishReason"], "SAFETY");
}

#[test]
fn errors_cross_between_google_and_the_other_shapes() {
    let google_429 = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"17s"}]}}"#;
    let (status, body) = upstream_error(
        Dialect::Anthropic,
        Dialect::Gemini,
        429,
        Bytes::from_static(google_429),
    );
    assert_eq!(status, 429);
    let v = parse(&body);
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Resource has been exhausted")
    );
    let (_, body) = upstream_error(
        Dialect::OpenAiChat,
        Dialect::Gemini,
        429,
        Bytes::from_static(google_429),
    );
    assert_eq!(parse(&body)["error"]["type"], "rate_limit_error");
    let (status, body) = upstream_error(
        Dialect::Gemini,
        Dialect::Anthropic,
        529,
        Bytes::from(sample("anthropic-error.json")),
    );
    assert_eq!(status, 503);
    assert_eq!(parse(&body)["error"]["status"], "UNAVAILABLE");
    let (status, body) = upstream_error(
        Dialect::Gemini,
        Dialect::OpenAiChat,
        404,
        Bytes::from(sample("openai-error-404.json")),
    );
    assert_eq!(status, 404);
    let v = parse(&body);
    assert_eq!(v["error"]["code"], 404);
    assert_eq!(v["error"]["status"], "NOT_FOUND");
}

/// `stream` (an upstream's SSE bytes) through a [`Stream`] for `req`, as the relay feeds a
/// committed stream, then finished: the client's bytes and the counts billed.
fn run_stream(
    req: &ClientRequest<'_>,
    upstream: Dialect,
    stream: &[u8],
) -> (Vec<u8>, Option<Usage>) {
    let mut s = Stream::new(req, upstream, "msg_gem");
    let mut splitter = sse::Splitter::default();
    let mut events = Vec::new();
    splitter.push(Bytes::copy_from_slice(stream), &mut events);
    let mut frames = Vec::new();
    for raw in events {
        if s.event(raw, true, &mut frames) == StreamNote::Done {
            break;
        }
    }
    s.finish(&mut frames);
    (frames.concat(), s.metering().map(|m| m.usage))
}

#[test]
fn a_gemini_stream_reaches_every_client_billed_at_its_last_usage() {
    let stream = sample("gemini-stream.sse");
    // The recorded stream's last chunk: promptTokenCount 18, candidates 1,193 and thoughts 35
    // summed over the whole answer (each chunk repeats the total so far).
    let last: Value = parse(
        String::from_utf8_lossy(&stream)
            .rsplit("data: ")
            .next()
            .unwrap()
            .trim()
            .as_bytes(),
    );
    let meta = &last["usageMetadata"];
    let expected = Usage {
        input_tokens: meta["promptTokenCount"].as_u64().unwrap(),
        output_tokens: meta["candidatesTokenCount"].as_u64().unwrap()
            + meta["thoughtsTokenCount"].as_u64().unwrap(),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
    };
    let text: String = sse_events(&stream)
        .iter()
        .filter_map(|(_, d)| {
            let v = parse(d.as_ref()?);
            v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    for client in [
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        Dialect::OpenAiResponses,
    ] {
        let body = client_request_body(client, "cm", true);
        let req = parse_client(client, &body, "cm", None);
        let (out, usage) = run_stream(&req, Dialect::Gemini, &stream);
        assert_eq!(usage, Some(expected), "{client:?}");
        let mut shown = String::new();
        for (_, data) in sse_events(&out) {
            let Some(data) = data else { continue };
            if data == b"[DONE]" {
                continue;
            }
            let v = parse(&data);
            for t in [
                v.pointer("/choices/0/delta/content"),
                v.pointer("/delta/text"),
                v.get("delta")
                    .filter(|_| v["type"] == "response.output_text.delta"),
            ]
            .into_iter()
            .flatten()
            {
                shown.push_str(t.as_str().unwrap_or_default());
            }
        }
        assert_eq!(shown, text, "{client:?}");
    }
}

#[test]
fn an_anthropic_tool_stream_reaches_a_gemini_client_in_both_framings() {
    let stream = sample("anthropic-tool-use-stream.sse");
    let body = br#"{"contents":[],"generationConfig":{"thinkingConfig":{"includeThoughts":true}}}"#;
    let sse_req = parse_client(Dialect::Gemini, body, "gm", Some(Framing::Sse));
    let (sse_out, sse_usage) = run_stream(&sse_req, Dialect::Anthropic, &stream);
    let array_req = parse_client(Dialect::Gemini, body, "gm", Some(Framing::JsonArray));
    let (array_out, array_usage) = run_stream(&array_req, Dialect::Anthropic, &stream);
    assert_eq!(sse_usage, array_usage);
    assert!(sse_usage.is_some());
    let from_sse: Vec<Value> = sse_events(&sse_out)
        .into_iter()
        .map(|(name, data)| {
            assert!(name.is_none());
            parse(&data.unwrap())
        })
        .collect();
    assert!(sse_out.ends_with(b"}\r\n\r\n"));
    let from_array: Vec<Value> = serde_json::from_slice(&array_out).unwrap();
    assert_eq!(from_sse, from_array, "one answer, two framings");
    let calls: Vec<&Value> = from_sse
        .iter()
        .filter_map(|c| c.pointer("/candidates/0/content/parts/0/functionCall"))
        .collect();
    assert_eq!(calls.len(), 1, "a call goes out whole, once");
    assert!(calls[0]["args"].is_object());
    assert!(calls[0]["id"].as_str().unwrap().starts_with("toolu_"));
    let last = from_sse.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    let u = sse_usage.unwrap();
    assert_eq!(
        last["usageMetadata"]["promptTokenCount"].as_u64(),
        Some(u.input_tokens + u.cache_read_tokens + u.cache_write_tokens)
    );
    assert_eq!(
        last["usageMetadata"]["totalTokenCount"].as_u64(),
        Some(u.input_tokens + u.cache_read_tokens + u.cache_write_tokens + u.output_tokens)
    );
}

#[test]
fn gemini_pass_through_streams_keep_bytes_and_bill_the_last_usage() {
    let stream = sample("gemini-stream.sse");
    let body = br#"{"contents":[]}"#;
    let sse_req = parse_client(Dialect::Gemini, body, "g", Some(Framing::Sse));
    let (out, usage) = run_stream(&sse_req, Dialect::Gemini, &stream);
    assert_eq!(out, stream);
    let array_req = parse_client(Dialect::Gemini, body, "g", Some(Framing::JsonArray));
    let (array, array_usage) = run_stream(&array_req, Dialect::Gemini, &stream);
    assert_eq!(usage, array_usage);
    let chunks: Vec<Value> = serde_json::from_slice(&array).unwrap();
    assert_eq!(chunks.len(), sse_events(&stream).len());
    let mut reframed = Vec::new();
    for (i, (_, data)) in sse_events(&stream).into_iter().enumerate() {
        reframed.extend_from_slice(if i == 0 { b"[" } else { b",\r\n" });
        reframed.extend_from_slice(&data.unwrap());
    }
    reframed.push(b']');
    assert_eq!(array, reframed, "each chunk's bytes unchanged");
}

#[test]
fn a_gemini_clients_openapi_schemas_reach_other_upstreams_as_json_schema() {
    // google-genai writes a declaration's `parameters` in Gemini's OpenAPI schema: upper-case
    // type names, which OpenAI and Anthropic refuse.
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather",
            "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]})
    .to_string();
    let chat = outbound(Dialect::Gemini, body.as_bytes(), Dialect::OpenAiChat, "g");
    assert_eq!(
        chat["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    );
    let anthropic = outbound(Dialect::Gemini, body.as_bytes(), Dialect::Anthropic, "g");
    assert_eq!(anthropic["tools"][0]["input_schema"]["type"], "object");
    // A Gemini upstream gets the client's bytes.
    let req = parse_client(Dialect::Gemini, body.as_bytes(), "g", None);
    let out = req
        .upstream_body(body.as_bytes(), Dialect::Gemini, "g")
        .unwrap();
    assert_eq!(&out.body[..], body.as_bytes());
}
