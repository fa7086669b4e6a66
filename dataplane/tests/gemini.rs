//! The Gemini dialect translated, end to end through the real binaries: a Gemini client served by
//! OpenAI chat, Anthropic and Responses upstreams (whole answers and both stream framings), and
//! chat, Anthropic and Responses clients served by a Gemini upstream; tool calls round-tripped
//! with their ids and thought signatures; every request billed once, with the upstream's exact
//! counts. (Gemini to Gemini pass-through and Gemini's routes: `gemini_routes.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::fake_upstream::{
    ANTHROPIC_TOOL_USE_ID, GEMINI_THOUGHT_SIGNATURE, GeminiAnswer, OPENAI_TOOL_CALL_ID,
    prompt_tokens_for,
};
use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::{Behavior, wait_until};
use serde_json::{Value, json};
use support::*;

/// What the fake answers by default: 20 words.
fn fake_text() -> String {
    (0..20).map(|i| format!("word{i} ")).collect()
}

fn gemini_post(c: &Cluster, method: &str, body: &Value) -> HttpResponse {
    HttpRequest::post_json(&format!("/v1beta/models/{MODEL}:{method}"), body)
        .header("x-goog-api-key", &c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

fn gemini_body() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generationConfig": {"maxOutputTokens": 256},
    })
}

/// The chunks of a Gemini answer: one object, the SSE chunks, or the array's elements.
fn chunks(resp: &HttpResponse, method: &str) -> Vec<Value> {
    assert_eq!(resp.status, 200, "{}", resp.text());
    match method {
        "generateContent" => vec![resp.json()],
        "streamGenerateContent?alt=sse" => {
            assert_eq!(resp.header("content-type"), Some("text/event-stream"));
            assert!(resp.text().ends_with("\r\n\r\n"), "{}", resp.text());
            resp.sse_data()
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        }
        _ => {
            assert_eq!(resp.header("content-type"), Some("application/json"));
            resp.json().as_array().unwrap().clone()
        }
    }
}

/// The answer's text, its last chunk's finish reason and usage.
fn read_answer(chunks: &[Value]) -> (String, Value, Value) {
    let mut text = String::new();
    for c in chunks {
        for p in c["candidates"][0]["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if p["thought"] != true {
                text.push_str(p["text"].as_str().unwrap_or_default());
            }
        }
    }
    let last = chunks.last().unwrap();
    (
        text,
        last["candidates"][0]["finishReason"].clone(),
        last["usageMetadata"].clone(),
    )
}

/// The request log's entries, once it holds `n`.
fn wait_log(c: &Cluster, n: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let ok = wait_until(TIMEOUT, || {
        entries =
            c.cp.ctl(&["--json", "requests"])
                .ok()
                .json()
                .as_array()
                .unwrap()
                .clone();
        entries.len() == n
    });
    assert!(ok, "the request log never held {n} entries: {entries:?}");
    entries
}

const METHODS: [&str; 3] = [
    "generateContent",
    "streamGenerateContent?alt=sse",
    "streamGenerateContent",
];

#[test]
fn a_gemini_client_is_served_by_chat_anthropic_and_responses_upstreams() {
    for (o, upstream_path) in [
        (offer("oai", "1", "2"), "/v1/chat/completions"),
        (anthropic_offer("ant", "1", "2"), "/v1/messages"),
        (responses_offer("rsp", "1", "2"), "/v1/responses"),
    ] {
        let c = Cluster::start(&[o], &[]);
        for method in METHODS {
            let resp = gemini_post(&c, method, &gemini_body());
            let chunks = chunks(&resp, method);
            let (text, finish, usage) = read_answer(&chunks);
            assert_eq!(text, fake_text(), "{upstream_path} {method}");
            assert_eq!(finish, "STOP", "{upstream_path} {method}");
            assert_eq!(usage["candidatesTokenCount"], 20, "{usage}");
            for chunk in &chunks {
                assert_eq!(chunk["modelVersion"], MODEL);
            }
        }
        let seen = c.fakes[0].requests();
        assert_eq!(seen.len(), 3);
        for (r, stream) in seen.iter().zip([false, true, true]) {
            assert_eq!(r.path, upstream_path);
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["model"], format!("{}-model", c.fakes[0].name()));
            assert_eq!(body["stream"].as_bool().unwrap_or(false), stream, "{body}");
        }
        // Each call billed once, at the upstream's own counts.
        let rows = c.wait_usage(3);
        assert_eq!(total(&rows, "output_tokens"), 60, "{rows:?}");
        let prompts: u64 = seen.iter().map(|r| prompt_tokens_for(&r.body)).sum();
        assert_eq!(total(&rows, "input_tokens"), prompts, "{rows:?}");
        for e in wait_log(&c, 3) {
            assert_eq!(e["dialect"], "gemini", "{e}");
            assert_eq!(e["billed"], true, "{e}");
            assert_eq!(e["estimated"], false, "{e}");
        }
    }
}

#[test]
fn a_gemini_tool_call_round_trips_through_an_anthropic_upstream() {
    let c = Cluster::start(&[anthropic_offer("ant", "1", "2")], &[]);
    c.fake("ant")
        .set_behavior(Behavior::tool_call("get_weather", r#"{"city":"Zürich"}"#));
    let tools = json!([{"functionDeclarations": [{"name": "get_weather",
        "description": "Weather for a city",
        "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}]);
    let mut body = gemini_body();
    body["tools"] = tools.clone();
    for method in ["streamGenerateContent?alt=sse", "streamGenerateContent"] {
        let chunks = chunks(&gemini_post(&c, method, &body), method);
        let calls: Vec<&Value> = chunks
            .iter()
            .flat_map(|c| c["candidates"][0]["content"]["parts"].as_array().unwrap())
            .filter(|p| p.get("functionCall").is_some())
            .collect();
        assert_eq!(calls.len(), 1, "one whole call: {chunks:?}");
        assert_eq!(
            calls[0]["functionCall"],
            json!({"id": ANTHROPIC_TOOL_USE_ID, "name": "get_weather", "args": {"city": "Zürich"}})
        );
    }
    let sent: Value = serde_json::from_slice(&c.fake("ant").requests()[0].body).unwrap();
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");

    // The client sends the call back with the result, as Gemini CLI does (a signature on the
    // call that no upstream gave, the id it received).
    c.fake("ant").set_behavior(Behavior::Normal);
    let mut next = body.clone();
    next["contents"] = json!([
        {"role": "user", "parts": [{"text": "Weather in Zürich?"}]},
        {"role": "model", "parts": [{"functionCall": {"id": ANTHROPIC_TOOL_USE_ID,
            "name": "get_weather", "args": {"city": "Zürich"}},
            "thoughtSignature": "skip_thought_signature_validator"}]},
        {"role": "user", "parts": [{"functionResponse": {"id": ANTHROPIC_TOOL_USE_ID,
            "name": "get_weather", "response": {"output": "12 °C"}}}]}
    ]);
    let (text, _, _) = read_answer(&chunks(
        &gemini_post(&c, "generateContent", &next),
        "generateContent",
    ));
    assert_eq!(text, fake_text());
    let sent: Value = serde_json::from_slice(&c.fake("ant").requests()[2].body).unwrap();
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "tool_use", "id": ANTHROPIC_TOOL_USE_ID, "name": "get_weather",
            "input": {"city": "Zürich"}}])
    );
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": ANTHROPIC_TOOL_USE_ID, "content": "12 °C"})
    );
    assert_eq!(total(&c.wait_usage(3), "requests"), 3);
}

/// A Gemini answer with thoughts, cached prompt and tool-use prompt tokens.
fn rich_answer() -> Behavior {
    Behavior::Gemini(GeminiAnswer {
        thoughts: 2,
        cached_tokens: 5,
        tool_use_prompt_tokens: 3,
        ..GeminiAnswer::default()
    })
}

#[test]
fn every_client_is_served_by_a_gemini_upstream_and_billed_its_exact_counts() {
    let c = Cluster::start(&[gemini_offer("gem", "1", "2")], &[]);
    c.fake("gem").set_behavior(rich_answer());
    let mut served = 0;
    for stream in [false, true] {
        let chat = c.chat(&chat_body(stream));
        assert_eq!(chat.status, 200, "{}\n{}", chat.text(), c.dp.logs());
        let text: String = if stream {
            chat.sse_data()
                .iter()
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str::<Value>(d).unwrap())
                .filter_map(|v| {
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(String::from)
                })
                .collect()
        } else {
            chat.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(text, fake_text());
        let messages = c.messages(&messages_body(stream));
        assert_eq!(messages.status, 200, "{}", messages.text());
        let responses = c.responses(&responses_body(stream));
        assert_eq!(responses.status, 200, "{}", responses.text());
        for method in METHODS {
            let (text, finish, _) =
                read_answer(&chunks(&gemini_post(&c, method, &gemini_body()), method));
            assert_eq!((text, finish), (fake_text(), json!("STOP")));
        }
        served += 6;
    }
    let seen = c.fake("gem").requests();
    assert_eq!(seen.len(), served);
    // Every request billed once: input = prompt - cached + tool-use prompt, the cached part as
    // cache reads, output = 20 words + 2 thoughts.
    let rows = c.wait_usage(served as u64);
    assert_eq!(
        total(&rows, "output_tokens"),
        22 * served as u64,
        "{rows:?}"
    );
    let expected_input: u64 = seen
        .iter()
        .map(|r| prompt_tokens_for(&r.body) - 5 + 3)
        .sum();
    assert_eq!(total(&rows, "input_tokens"), expected_input, "{rows:?}");
    let log = wait_log(&c, served);
    let mut dialects: Vec<&str> = log.iter().map(|e| e["dialect"].as_str().unwrap()).collect();
    dialects.sort();
    dialects.dedup();
    assert_eq!(
        dialects,
        ["anthropic", "gemini", "openai-chat", "openai-responses"]
    );
    for e in &log {
        assert_eq!(e["cache_read_tokens"], 5, "{e}");
        assert_eq!(e["output_tokens"], 22, "{e}");
        assert_eq!(e["estimated"], false, "{e}");
        assert_eq!(e["status"], 200, "{e}");
    }
}

#[test]
fn a_gemini_tool_call_and_its_signature_come_back_through_anthropic_and_chat_clients() {
    let c = Cluster::start(&[gemini_offer("gem", "1", "2")], &[]);
    let gem = c.fake("gem");
    gem.set_behavior(Behavior::tool_call("get_weather", r#"{"city":"Oslo"}"#));
    let tool = json!({"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}});
    let mut ask = messages_body(false);
    ask["tools"] = json!([tool]);
    let answer = c.messages(&ask).json();
    assert_eq!(answer["stop_reason"], "tool_use", "{answer}");
    let content = answer["content"].as_array().unwrap().clone();
    assert!(
        content
            .iter()
            .any(|b| b["type"] == "thinking" && b["signature"] == GEMINI_THOUGHT_SIGNATURE),
        "{answer}"
    );
    let call = content.iter().find(|b| b["type"] == "tool_use").unwrap();
    assert_eq!(call["input"], json!({"city": "Oslo"}));
    gem.set_behavior(Behavior::Normal);
    let mut next = ask.clone();
    next["messages"] = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "3 °C"}]}
    ]);
    let done = c.messages(&next);
    assert_eq!(done.status, 200, "{}", done.text());
    let sent: Value = serde_json::from_slice(&gem.requests()[1].body).unwrap();
    assert!(sent.get("model").is_none());
    assert_eq!(
        sent["contents"][1]["parts"],
        json!([{"functionCall": {"id": call["id"], "name": "get_weather", "args": {"city": "Oslo"}},
            "thoughtSignature": GEMINI_THOUGHT_SIGNATURE}])
    );
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"],
        json!({"id": call["id"], "name": "get_weather", "response": {"output": "3 °C"}})
    );
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["type"],
        "object"
    );

    // A chat client keeps no signature: the call goes back with Google's documented bypass.
    gem.set_behavior(Behavior::tool_call("get_weather", r#"{"city":"Oslo"}"#));
    let mut ask = chat_body(true);
    ask["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object"}}}]);
    let streamed = c.chat(&ask);
    assert_eq!(streamed.status, 200);
    let chunks: Vec<Value> = streamed
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].as_str())
        .unwrap()
        .to_string();
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    gem.set_behavior(Behavior::Normal);
    let mut next = chat_body(false);
    next["messages"] = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": id, "content": "3 °C"}
    ]);
    assert_eq!(c.chat(&next).status, 200);
    let sent: Value = serde_json::from_slice(&gem.requests()[3].body).unwrap();
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        "skip_thought_signature_validator"
    );
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["id"],
        json!(id)
    );
    assert_ne!(id, OPENAI_TOOL_CALL_ID);
    assert_eq!(total(&c.wait_usage(4), "requests"), 4);
}

#[test]
fn a_prompt_gemini_blocks_is_each_clients_own_refusal() {
    let c = Cluster::start(&[gemini_offer("gem", "1", "2")], &[]);
    c.fake("gem").set_behavior(Behavior::Gemini(GeminiAnswer {
        block_reason: Some("PROHIBITED_CONTENT".into()),
        ..GeminiAnswer::default()
    }));
    let chat = c.chat(&chat_body(false)).json();
    assert_eq!(
        chat["choices"][0]["finish_reason"], "content_filter",
        "{chat}"
    );
    let message = c.messages(&messages_body(false)).json();
    assert_eq!(message["stop_reason"], "refusal", "{message}");
    let response = c.responses(&responses_body(false)).json();
    assert_eq!(response["status"], "incomplete", "{response}");
    assert_eq!(response["incomplete_details"]["reason"], "content_filter");
    let streamed = c.messages(&messages_body(true));
    let stop = anthropic_events(&streamed.text())
        .into_iter()
        .find(|(name, _)| name == "message_delta")
        .unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "refusal");
    // The prompt was read: each is billed its input.
    let rows = c.wait_usage(4);
    assert!(total(&rows, "input_tokens") > 0, "{rows:?}");
}
