//! Gemini encoding: requests for a Gemini upstream and a Gemini client's answers and streams, in
//! the shapes of Google's API reference (ai.google.dev/api/generate-content) and the recorded
//! stream (testkit/samples/gemini-stream.sse: `data: {chunk}\r\n\r\n`).

use super::*;
use crate::protocol::shape::{Message, Tool};
use crate::protocol::usage::Usage;
use serde_json::{Value, json};

fn raw(s: &str) -> &RawValue {
    Box::leak(RawValue::from_string(s.to_string()).unwrap())
}

fn encode(req: &Request<'_>, model: &str) -> (Value, Vec<String>) {
    let encoded = request(req, model).unwrap();
    (
        serde_json::from_slice(&encoded.body).unwrap(),
        encoded.dropped,
    )
}

fn tool_round_trip() -> Request<'static> {
    Request {
        model: "client-model".into(),
        system: vec!["Be brief.".into()],
        messages: vec![
            Message {
                role: Role::System,
                content: vec![Block::Text("Use tools.".into())],
            },
            Message {
                role: Role::User,
                content: vec![
                    Block::Text("weather?".into()),
                    Block::Image(Image::Url("data:image/png;base64,iVBOR".into())),
                    Block::Image(Image::Url("https://example.com/cat.webp?x=1".into())),
                ],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    Block::Thinking {
                        text: "need the tool".into(),
                        signature: None,
                    },
                    Block::ToolCall {
                        id: "toolu_1".into(),
                        name: "weather".into(),
                        arguments: Arguments::Raw(raw(r#"{"city": "Paris"}"#)),
                    },
                    Block::ToolCall {
                        id: "toolu_2".into(),
                        name: "time".into(),
                        arguments: Arguments::Text(String::new()),
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    Block::ToolResult {
                        call_id: "toolu_1".into(),
                        content: vec![Block::Text("sunny".into())],
                        is_error: None,
                    },
                    Block::ToolResult {
                        call_id: "toolu_2".into(),
                        content: vec![Block::Text("no clock".into())],
                        is_error: Some(true),
                    },
                ],
            },
        ],
        tools: vec![Tool {
            name: "weather".into(),
            description: Some("Weather".into()),
            parameters: Some(raw(r#"{"type":"object","additionalProperties":false}"#)),
            strict: Some(true),
        }],
        tool_choice: Some(ToolChoice::Named("weather".into())),
        stop: (0..7).map(|i| format!("s{i}")).collect(),
        max_output_tokens: Some(512),
        temperature: Some(raw("0.3")),
        reasoning: Some(Reasoning::Effort("low".into())),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "w".into(),
            schema: raw(r#"{"type":"object"}"#),
            strict: Some(true),
            description: None,
        }),
        ..Request::default()
    }
}

#[test]
fn a_tool_round_trip_from_another_dialect_becomes_a_valid_gemini_request() {
    let (body, dropped) = encode(&tool_round_trip(), "gemini-3-pro-preview");
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "Be brief.\nUse tools."}]})
    );
    assert!(body.get("model").is_none());
    let contents = body["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 3);
    assert_eq!(
        contents[0],
        json!({"role": "user", "parts": [
            {"text": "weather?"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
            {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?x=1"}}
        ]})
    );
    // No signature came with the calls: Google's bypass value rides on the first call only.
    assert_eq!(
        contents[1],
        json!({"role": "model", "parts": [
            {"functionCall": {"id": "toolu_1", "name": "weather", "args": {"city": "Paris"}},
             "thoughtSignature": "skip_thought_signature_validator"},
            {"functionCall": {"id": "toolu_2", "name": "time", "args": {}}}
        ]})
    );
    // Results carry the name of the call they answer.
    assert_eq!(
        contents[2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"id": "toolu_1", "name": "weather", "response": {"output": "sunny"}}},
            {"functionResponse": {"id": "toolu_2", "name": "time", "response": {"error": "no clock"}}}
        ]})
    );
    assert_eq!(
        body["tools"],
        json!([{"functionDeclarations": [{"name": "weather", "description": "Weather",
            "parametersJsonSchema": {"type": "object", "additionalProperties": false}}]}])
    );
    assert_eq!(
        body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
    let config = &body["generationConfig"];
    assert_eq!(config["stopSequences"].as_array().unwrap().len(), 5);
    assert_eq!(config["maxOutputTokens"], 512);
    assert_eq!(config["temperature"], 0.3);
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseJsonSchema"], json!({"type": "object"}));
    assert_eq!(
        config["thinkingConfig"],
        json!({"includeThoughts": true, "thinkingLevel": "LOW"})
    );
    assert!(dropped.contains(&"stop".to_string()));
    assert!(dropped.contains(&"contents.parts.thought".to_string()));
}

#[test]
fn signatures_ride_on_the_part_after_their_thinking() {
    let req = Request {
        messages: vec![Message {
            role: Role::Assistant,
            content: vec![
                Block::Thinking {
                    text: String::new(),
                    signature: Some("sig-a".into()),
                },
                Block::ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: Arguments::Text("{}".into()),
                },
                Block::Text("done".into()),
                Block::Thinking {
                    text: "more".into(),
                    signature: Some("sig-b".into()),
                },
            ],
        }],
        ..Request::default()
    };
    let (body, _) = encode(&req, "gemini-3-flash");
    assert_eq!(
        body["contents"][0]["parts"],
        json!([
            {"functionCall": {"id": "c", "name": "f", "args": {}}, "thoughtSignature": "sig-a"},
            {"text": "done"},
            {"text": "", "thoughtSignature": "sig-b"}
        ])
    );
}

#[test]
fn reasoning_becomes_a_level_or_a_budget_by_model_generation() {
    let with = |reasoning| Request {
        reasoning: Some(reasoning),
        ..Request::default()
    };
    let thinking = |reasoning, model| {
        let (body, dropped) = encode(&with(reasoning), model);
        (body["generationConfig"]["thinkingConfig"].clone(), dropped)
    };
    let effort = |e: &str| Reasoning::Effort(e.into());
    for (reasoning, model, expected) in [
        (
            effort("high"),
            "gemini-2.5-pro",
            json!({"includeThoughts": true, "thinkingBudget": 24576}),
        ),
        (
            effort("minimal"),
            "gemini-2.5-pro",
            json!({"includeThoughts": true, "thinkingBudget": 1024}),
        ),
        (
            effort("minimal"),
            "gemini-2.5-flash",
            json!({"includeThoughts": false, "thinkingBudget": 0}),
        ),
        (
            effort("medium"),
            "gemini-3-flash",
            json!({"includeThoughts": true, "thinkingLevel": "MEDIUM"}),
        ),
        // Gemini 3 Pro takes LOW and HIGH only.
        (
            effort("medium"),
            "gemini-3-pro",
            json!({"includeThoughts": true, "thinkingLevel": "HIGH"}),
        ),
        (
            effort("minimal"),
            "gemini-3-pro",
            json!({"includeThoughts": true, "thinkingLevel": "LOW"}),
        ),
        (
            Reasoning::Budget(3000),
            "gemini-3-pro",
            json!({"includeThoughts": true, "thinkingBudget": 3000}),
        ),
        (
            Reasoning::Budget(64),
            "gemini-2.5-pro",
            json!({"includeThoughts": true, "thinkingBudget": 128}),
        ),
        (
            Reasoning::Disabled,
            "gemini-2.5-flash",
            json!({"includeThoughts": false, "thinkingBudget": 0}),
        ),
        (
            Reasoning::Disabled,
            "gemini-3-flash",
            json!({"includeThoughts": false, "thinkingLevel": "MINIMAL"}),
        ),
        (
            Reasoning::Disabled,
            "gemini-3-pro",
            json!({"includeThoughts": false, "thinkingLevel": "LOW"}),
        ),
    ] {
        let (got, dropped) = thinking(reasoning.clone(), model);
        assert_eq!(got, expected, "{reasoning:?} on {model}");
        assert!(dropped.is_empty());
    }
    // Gemini 2.5 Pro always thinks: "off" cannot be sent, and is named.
    let (body, dropped) = encode(&with(Reasoning::Disabled), "gemini-2.5-pro");
    assert!(body.get("generationConfig").is_none());
    assert_eq!(dropped, ["reasoning"]);
    let (body, dropped) = encode(&with(effort("odd")), "gemini-3-pro");
    assert!(body.get("generationConfig").is_none());
    assert_eq!(dropped, ["reasoning"]);
}

fn metering(input: u64, output: u64, read: u64, write: u64, reasoning: Option<u64>) -> Metering {
    Metering {
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
        },
        reasoning_tokens: reasoning,
        reported_cost_nano: None,
    }
}

fn answer() -> Response {
    Response {
        id: "msg_1".into(),
        model: "claude-x".into(),
        content: vec![
            Block::Thinking {
                text: "hmm".into(),
                signature: Some("anthropic-sig".into()),
            },
            Block::Text("Let me check.".into()),
            Block::ToolCall {
                id: "toolu_9".into(),
                name: "weather".into(),
                arguments: Arguments::Text(r#"{"city":"Oslo"}"#.into()),
            },
        ],
        stop: StopReason::ToolUse,
        stop_sequence: None,
        metering: Some(metering(100, 30, 40, 0, Some(12))),
    }
}

#[test]
fn a_whole_answer_is_a_generate_content_response_that_reads_back_exactly() {
    let body = response_with(&answer(), "gemini-client-model", true);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    // The thinking block rides sealed on the next part: its text and Anthropic's signature come
    // back whole however little of the turn the client keeps.
    let sealed = v["candidates"][0]["content"]["parts"][1]["thoughtSignature"]
        .take()
        .as_str()
        .unwrap()
        .to_string();
    assert!(matches!(
        super::super::unseal(&sealed),
        Some(Block::Thinking { text, signature: Some(s) }) if text == "hmm" && s == "anthropic-sig"
    ));
    assert_eq!(
        v,
        json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "hmm", "thought": true},
                    {"text": "Let me check.", "thoughtSignature": null},
                    {"functionCall": {"id": "toolu_9", "name": "weather", "args": {"city": "Oslo"}}}
                ]},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 140, "candidatesTokenCount": 18,
                "thoughtsTokenCount": 12, "cachedContentTokenCount": 40, "totalTokenCount": 170},
            "modelVersion": "gemini-client-model",
            "responseId": "msg_1"
        })
    );
    // Read back by this dialect's own decoder, the counts are the ones billed.
    let back = super::super::decode::response(&body).unwrap();
    assert_eq!(back.metering, answer().metering);
    // Without includeThoughts the thought's text stays out; its signature does not.
    let v: Value = serde_json::from_slice(&response_with(&answer(), "m", false)).unwrap();
    let parts = v["candidates"][0]["content"]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["thoughtSignature"], sealed.as_str());
}

#[test]
fn finish_reasons_and_errors() {
    assert_eq!(finish_reason(StopReason::Refusal), "SAFETY");
    assert_eq!(finish_reason(StopReason::MaxTokens), "MAX_TOKENS");
    assert_eq!(finish_reason(StopReason::ContextWindow), "MAX_TOKENS");
    assert_eq!(finish_reason(StopReason::ToolUse), "STOP");
    let (status, body) = error(&UpstreamError {
        status: 429,
        message: Some("slow".into()),
    });
    assert_eq!(status, 429);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(v["error"]["message"], "slow");
}

fn events() -> Vec<Event> {
    vec![
        Event::Start {
            id: "msg_7".into(),
            model: "up".into(),
        },
        Event::BlockStart {
            index: 0,
            block: BlockStart::Thinking,
        },
        Event::Delta {
            index: 0,
            delta: Delta::Thinking("hmm".into()),
        },
        Event::Delta {
            index: 0,
            delta: Delta::Signature("sig".into()),
        },
        Event::BlockStop { index: 0 },
        Event::BlockStart {
            index: 1,
            block: BlockStart::Text,
        },
        Event::Delta {
            index: 1,
            delta: Delta::Text("Hel".into()),
        },
        Event::Delta {
            index: 1,
            delta: Delta::Text("lo".into()),
        },
        Event::BlockStop { index: 1 },
        Event::BlockStart {
            index: 2,
            block: BlockStart::ToolCall {
                id: "call_1".into(),
                name: "f".into(),
            },
        },
        Event::Delta {
            index: 2,
            delta: Delta::ToolArguments("{\"a\":".into()),
        },
        Event::Delta {
            index: 2,
            delta: Delta::ToolArguments("1}".into()),
        },
        Event::BlockStop { index: 2 },
        Event::Stop {
            reason: StopReason::ToolUse,
            stop_sequence: None,
        },
        Event::Metering(metering(10, 5, 0, 0, None)),
        Event::End,
    ]
}

fn stream(framing: Framing, thoughts: bool) -> Vec<u8> {
    let mut s = Stream::new("client-model", "fallback-id", framing, thoughts);
    let mut out = Vec::new();
    for e in events() {
        s.event(&e, &mut out);
    }
    let len = out.len();
    s.finish(&mut out);
    assert_eq!(out.len(), len, "finish after the end writes nothing");
    out
}

fn sse_chunks(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.ends_with("\r\n\r\n"));
    text.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[test]
fn an_sse_stream_has_deltas_a_whole_call_and_usage_last() {
    let sealed = super::super::seal(&Block::Thinking {
        text: "hmm".into(),
        signature: Some("sig".into()),
    })
    .unwrap();
    let chunks = sse_chunks(&stream(Framing::Sse, true));
    let parts: Vec<Value> = chunks
        .iter()
        .map(|c| c["candidates"][0]["content"]["parts"][0].clone())
        .collect();
    assert_eq!(
        parts,
        [
            json!({"text": "hmm", "thought": true}),
            json!({"text": "Hel", "thoughtSignature": sealed}),
            json!({"text": "lo"}),
            json!({"functionCall": {"id": "call_1", "name": "f", "args": {"a": 1}}}),
            json!({"text": ""}),
        ]
    );
    for c in &chunks[..4] {
        assert!(c.get("usageMetadata").is_none());
        assert!(c["candidates"][0].get("finishReason").is_none());
        assert_eq!(c["responseId"], "msg_7");
        assert_eq!(c["modelVersion"], "client-model");
    }
    let last = &chunks[4];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        last["usageMetadata"],
        json!({"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15})
    );
    // Without includeThoughts no thought text goes out.
    let chunks = sse_chunks(&stream(Framing::Sse, false));
    assert_eq!(chunks.len(), 4);
    assert_eq!(
        chunks[0]["candidates"][0]["content"]["parts"][0],
        json!({"text": "Hel", "thoughtSignature": sealed})
    );
}

#[test]
fn a_json_array_stream_is_valid_json_with_googles_separators() {
    let out = stream(Framing::JsonArray, true);
    assert!(out.starts_with(b"[{"));
    assert!(out.ends_with(b"}]"));
    let text = std::str::from_utf8(&out).unwrap();
    assert_eq!(text.matches("},\r\n{").count(), 4);
    let all: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[4]["usageMetadata"]["totalTokenCount"], 15);
}

#[test]
fn a_failed_stream_ends_with_googles_error_in_its_framing() {
    let mut s = Stream::new("m", "id", Framing::JsonArray, false);
    let mut out = Vec::new();
    s.event(
        &Event::Delta {
            index: 0,
            delta: Delta::Text("partial".into()),
        },
        &mut out,
    );
    out.extend(s.error_event("upstream went away"));
    let all: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(all[1]["error"]["message"], "upstream went away");
    let s = Stream::new("m", "id", Framing::Sse, false);
    let ev = s.error_event("x");
    assert!(ev.starts_with(b"data: {\"error\":{"));
    assert!(ev.ends_with(b"\r\n\r\n"));
    // A stream that ends with nothing sent is still a whole answer.
    let mut s = Stream::new("m", "id", Framing::JsonArray, false);
    let mut out = Vec::new();
    s.finish(&mut out);
    let all: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(all[0]["candidates"][0]["finishReason"], "STOP");
}
