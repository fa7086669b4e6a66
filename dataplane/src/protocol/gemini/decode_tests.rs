//! Gemini decoding, from recorded requests, answers and streams (testkit/samples, provenance in
//! testkit/samples/SOURCES.md) and from shapes in Google's API reference
//! (ai.google.dev/api/generate-content: `GenerateContentRequest`, `Part`, `FunctionCall`,
//! `FunctionResponse`, `ToolConfig`, `GenerationConfig`, `ThinkingConfig`).

use super::*;
use serde_json::json;

fn sample_body(name: &str) -> Vec<u8> {
    let path = format!("{}/../testkit/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::to_vec(&recorded["body"]).unwrap()
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../testkit/samples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn a_gemini_cli_tool_result_turn_keeps_ids_signature_schemas_and_settings() {
    // Gemini CLI 0.61.0's third request: history with its own functionCall id and the
    // thoughtSignature it received, then the functionResponse with that id.
    let body = sample_body("gemini-cli-0.61.0-tool-result-request.json");
    let req = request(&body).unwrap();
    assert_eq!(req.system.len(), 1);
    assert!(req.system[0].starts_with("You are Gemini CLI"));
    assert_eq!(req.messages.len(), 3);
    assert_eq!(req.messages[0].role, Role::User);
    assert!(
        matches!(&req.messages[0].content[1], Block::Text(t) if t.starts_with("Run the shell"))
    );
    let Message { role, content } = &req.messages[1];
    assert_eq!(*role, Role::Assistant);
    let [
        Block::Thinking { text, signature },
        Block::ToolCall {
            id,
            name,
            arguments: Arguments::Raw(args),
        },
    ] = content.as_slice()
    else {
        panic!("{content:?}");
    };
    assert!(text.is_empty());
    assert!(signature.as_deref().unwrap().starts_with("CiQB"));
    assert_eq!(id, "run_shell_command_1796638976255_0");
    assert_eq!(name, "run_shell_command");
    assert!(args.get().contains("keyplane-marker"));
    let [
        Block::ToolResult {
            call_id,
            content,
            is_error: None,
        },
    ] = req.messages[2].content.as_slice()
    else {
        panic!("{:?}", req.messages[2]);
    };
    assert_eq!(call_id, "run_shell_command_1796638976255_0");
    assert!(matches!(&content[0], Block::Text(t) if t.contains("KEYPLANE-MARKER")));
    // parametersJsonSchema kept raw.
    let read_file = req.tools.iter().find(|t| t.name == "read_file").unwrap();
    assert!(read_file.parameters.unwrap().get().contains("\"minimum\""));
    assert_eq!(req.temperature.unwrap().get(), "1");
    assert_eq!(req.top_p.unwrap().get(), "0.95");
    assert_eq!(req.reasoning, Some(Reasoning::Effort("high".into())));
    assert_eq!(req.dropped, vec!["generationConfig.topK".to_string()]);
    assert!(req.include_usage);
}

#[test]
fn the_router_call_asks_for_json_by_schema() {
    let body = sample_body("gemini-cli-0.61.0-router-request.json");
    let req = request(&body).unwrap();
    let Some(ResponseFormat::JsonSchema { schema, .. }) = req.response_format else {
        panic!("{:?}", req.response_format);
    };
    assert!(schema.get().contains("complexity_score"));
}

#[test]
fn the_sdk_spelling_of_fields_is_read_too() {
    // google-genai 3.6.1 sends `parameters_json_schema` (snake_case) even to v1beta.
    let body = sample_body("google-genai-3.6.1-generate-content-request.json");
    let req = request(&body).unwrap();
    assert_eq!(req.tools.len(), 1);
    assert!(req.tools[0].parameters.is_some());
    assert!(req.max_output_tokens.is_some());
    assert!(!req.system.is_empty());
}

#[test]
fn calls_without_ids_get_stable_ids_and_results_pair_by_name_and_order() {
    let body = json!({"contents": [
        {"role": "user", "parts": [{"text": "weather in two cities, then the time"}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
            {"functionCall": {"name": "time", "args": {}}}
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "time", "response": {"output": "noon"}}},
            {"functionResponse": {"name": "weather", "response": {"output": "sun"}}},
            {"functionResponse": {"name": "weather", "response": {"error": "no station"}}}
        ]}
    ]})
    .to_string();
    let req = request(body.as_bytes()).unwrap();
    let ids: Vec<&str> = req.messages[1]
        .content
        .iter()
        .map(|b| match b {
            Block::ToolCall { id, .. } => id.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["call_1_0", "call_1_1", "call_1_2"]);
    let results: Vec<(&str, Option<bool>)> = req.messages[2]
        .content
        .iter()
        .map(|b| match b {
            Block::ToolResult {
                call_id, is_error, ..
            } => (call_id.as_str(), *is_error),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        results,
        [
            ("call_1_2", None),
            ("call_1_0", None),
            ("call_1_1", Some(true))
        ]
    );
    // The same history sent again gives the same ids.
    let again = request(body.as_bytes()).unwrap();
    assert!(
        matches!(&again.messages[1].content[0], Block::ToolCall { id, .. } if id == "call_1_0")
    );
}

#[test]
fn thoughts_images_and_what_the_shape_cannot_carry() {
    let body = json!({
        "contents": [
            {"parts": [
                {"text": "look"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBER"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a.jpg"}},
                {"fileData": {"mimeType": "video/mp4", "fileUri": "https://example.com/a.mp4"}}
            ]},
            {"role": "model", "parts": [
                {"text": "pondering", "thought": true, "thoughtSignature": "sig-1"},
                {"text": "a cat"},
                {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "skip_thought_signature_validator"}
            ]}
        ],
        "tools": [{"googleSearch": {}}, {"codeExecution": {}}],
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "cachedContent": "cachedContents/abc",
        "generationConfig": {"seed": 7, "presencePenalty": 0.5, "stopSequences": ["END"],
            "thinkingConfig": {"thinkingBudget": 0}}
    })
    .to_string();
    let req = request(body.as_bytes()).unwrap();
    assert_eq!(req.messages[0].content.len(), 3);
    assert_eq!(
        req.messages[0].content[1].image(),
        Some(&Image::Base64 {
            media_type: "image/png".into(),
            data: "iVBOR".into()
        })
    );
    assert_eq!(
        req.messages[0].content[2].image(),
        Some(&Image::Url("https://example.com/a.jpg".into()))
    );
    let model = &req.messages[1].content;
    assert!(
        matches!(&model[0], Block::Thinking { text, signature: Some(s) } if text == "pondering" && s == "sig-1")
    );
    assert!(matches!(&model[1], Block::Text(t) if t == "a cat"));
    // Google's bypass value is no reasoning to carry to another upstream.
    assert!(matches!(&model[2], Block::ToolCall { .. }));
    assert_eq!(model.len(), 3);
    assert_eq!(req.stop, ["END"]);
    assert_eq!(req.reasoning, Some(Reasoning::Disabled));
    for name in [
        "contents.parts.inlineData",
        "contents.parts.fileData",
        "tools.googleSearch",
        "tools.codeExecution",
        "safetySettings",
        "cachedContent",
        "generationConfig.seed",
        "generationConfig.presencePenalty",
    ] {
        assert!(
            req.dropped.iter().any(|d| d == name),
            "{name}: {:?}",
            req.dropped
        );
    }
}

impl Block<'_> {
    fn image(&self) -> Option<&Image> {
        match self {
            Block::Image(i) => Some(i),
            _ => None,
        }
    }
}

#[test]
fn tool_config_modes_become_tool_choices() {
    let choice = |config: serde_json::Value| {
        let body = json!({"contents": [], "toolConfig": {"functionCallingConfig": config}});
        let body = body.to_string();
        let req = request(body.as_bytes()).unwrap();
        (req.tool_choice.clone(), req.dropped.clone())
    };
    assert_eq!(choice(json!({"mode": "AUTO"})).0, Some(ToolChoice::Auto));
    assert_eq!(choice(json!({"mode": "NONE"})).0, Some(ToolChoice::None));
    assert_eq!(choice(json!({"mode": "ANY"})).0, Some(ToolChoice::Required));
    assert_eq!(
        choice(json!({"mode": "ANY", "allowedFunctionNames": ["f"]})).0,
        Some(ToolChoice::Named("f".into()))
    );
    let (c, dropped) = choice(json!({"mode": "ANY", "allowedFunctionNames": ["f", "g"]}));
    assert_eq!(c, Some(ToolChoice::Required));
    assert!(!dropped.is_empty());
    let (c, dropped) = choice(json!({"mode": "VALIDATED"}));
    assert_eq!(c, Some(ToolChoice::Auto));
    assert_eq!(dropped, ["toolConfig.functionCallingConfig.mode"]);
    assert_eq!(choice(json!({})).0, None);
}

#[test]
fn generation_settings_map_and_bad_requests_are_refused() {
    let body = json!({"contents": [], "generationConfig": {
        "maxOutputTokens": 99, "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}}})
    .to_string();
    let req = request(body.as_bytes()).unwrap();
    assert_eq!(req.max_output_tokens, Some(99));
    assert!(matches!(
        req.response_format,
        Some(ResponseFormat::JsonObject)
    ));
    assert_eq!(req.reasoning, Some(Reasoning::Budget(2048)));
    for bad in [
        json!({"contents": [], "generationConfig": {"candidateCount": 2}}),
        json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}),
        json!({"contents": "text"}),
        json!({"generationConfig": {}}),
    ] {
        assert!(request(bad.to_string().as_bytes()).is_err(), "{bad}");
    }
    assert!(request(b"[]").is_err());
}

#[test]
fn recorded_answers_decode_with_their_stop_and_usage() {
    let resp = response(&sample("gemini-generate-content.json")).unwrap();
    assert!(matches!(&resp.content[..], [Block::Text(t)] if t.starts_with("Hello!")));
    assert_eq!(resp.stop, StopReason::EndTurn);
    assert_eq!(resp.id, "bzlXaa_EE_aHqtsPi_zw8Ao");
    assert_eq!(resp.model, "gemini-2.5-flash");
    let m = resp.metering.unwrap();
    assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (9, 43));
    assert_eq!(m.reasoning_tokens, Some(34));

    let resp = response(&sample("gemini-generate-content-max-tokens-empty.json")).unwrap();
    assert!(resp.content.is_empty());
    assert_eq!(resp.stop, StopReason::MaxTokens);
    assert_eq!(resp.metering.unwrap().usage.output_tokens, 2);
}

#[test]
fn blocked_prompts_and_unsafe_answers_are_refusals() {
    let blocked = br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}}"#;
    let resp = response(blocked).unwrap();
    assert_eq!(resp.stop, StopReason::Refusal);
    assert_eq!(resp.metering.unwrap().usage.input_tokens, 8);
    for reason in [
        "SAFETY",
        "RECITATION",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
    ] {
        assert_eq!(stop_reason(reason, false), StopReason::Refusal);
        assert_eq!(stop_reason(reason, true), StopReason::Refusal);
    }
    assert_eq!(stop_reason("STOP", true), StopReason::ToolUse);
    assert_eq!(
        stop_reason("MALFORMED_FUNCTION_CALL", false),
        StopReason::EndTurn
    );
    assert_eq!(stop_reason("OTHER", false), StopReason::EndTurn);
}

#[test]
fn a_function_call_answer_is_a_tool_use_with_its_signature() {
    let body = br#"{"candidates":[{"content":{"role":"model","parts":[
        {"functionCall":{"name":"get_weather","args":{"city": "Paris"}},"thoughtSignature":"c2ln"}]},
        "finishReason":"STOP","index":0}],"responseId":"r1"}"#;
    let resp = response(body).unwrap();
    assert_eq!(resp.stop, StopReason::ToolUse);
    let [
        Block::Thinking {
            signature: Some(s), ..
        },
        Block::ToolCall {
            id,
            name,
            arguments: Arguments::Text(args),
        },
    ] = resp.content.as_slice()
    else {
        panic!("{:?}", resp.content);
    };
    assert_eq!(s, "c2ln");
    assert_eq!(id, "call_0_0");
    assert_eq!(name, "get_weather");
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert!(response(br#"{"error":{"code":500,"message":"x"}}"#).is_none());
}

fn decode_stream(raw: &[u8]) -> (Vec<Event>, Vec<StreamNote>) {
    let mut stream = Stream::new();
    let mut events = Vec::new();
    let mut notes = Vec::new();
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    for event in text.split("\n\n") {
        if let Some(data) = event.strip_prefix("data: ") {
            notes.push(stream.event(None, data.as_bytes(), &mut events));
        }
    }
    (events, notes)
}

#[test]
fn the_recorded_stream_is_text_deltas_then_a_stop_billed_at_the_last_usage() {
    let raw = sample("gemini-stream.sse");
    let (events, notes) = decode_stream(&raw);
    assert!(matches!(
        events[0],
        Event::Metering(_) | Event::Start { .. }
    ));
    assert!(notes.iter().all(|n| *n == StreamNote::Content));
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Delta {
                index: 0,
                delta: Delta::Text(t),
            } => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert!(text.starts_with("1\n2\n3\n"));
    let stops: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Stop { .. }))
        .collect();
    assert_eq!(
        stops,
        [&Event::Stop {
            reason: StopReason::EndTurn,
            stop_sequence: None
        }]
    );
    // Every chunk's usage is the total so far: the last one is the bill.
    let last_usage = String::from_utf8_lossy(&raw)
        .rsplit("data: ")
        .next()
        .map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).unwrap())
        .unwrap()["usageMetadata"]
        .clone();
    let expected = serde_json::from_value::<UsageIn>(last_usage)
        .unwrap()
        .metering();
    let last = events.iter().rev().find_map(|e| match e {
        Event::Metering(m) => Some(*m),
        _ => None,
    });
    assert_eq!(last, expected);
    assert!(last.is_some());
}

#[test]
fn a_streamed_function_call_is_one_whole_block_after_its_thoughts() {
    let stream = concat!(
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"I should\",\"thought\":true}]},\"index\":0}],\"responseId\":\"r9\",\"modelVersion\":\"gemini-3-flash\"}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"ls\",\"args\":{\"dir\":\".\"}},\"thoughtSignature\":\"U0lH\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"candidatesTokenCount\":5,\"thoughtsTokenCount\":3}}\r\n\r\n",
    );
    let (events, _) = decode_stream(stream.as_bytes());
    let expected = vec![
        Event::Start {
            id: "r9".into(),
            model: "gemini-3-flash".into(),
        },
        Event::BlockStart {
            index: 0,
            block: BlockStart::Thinking,
        },
        Event::Delta {
            index: 0,
            delta: Delta::Thinking("I should".into()),
        },
        Event::BlockStop { index: 0 },
        Event::BlockStart {
            index: 1,
            block: BlockStart::Thinking,
        },
        Event::Delta {
            index: 1,
            delta: Delta::Signature("U0lH".into()),
        },
        Event::BlockStop { index: 1 },
        Event::BlockStart {
            index: 2,
            block: BlockStart::ToolCall {
                id: "call_0_0".into(),
                name: "ls".into(),
            },
        },
        Event::Delta {
            index: 2,
            delta: Delta::ToolArguments(r#"{"dir":"."}"#.into()),
        },
        Event::BlockStop { index: 2 },
        Event::Stop {
            reason: StopReason::ToolUse,
            stop_sequence: None,
        },
    ];
    let shown: Vec<Event> = events
        .iter()
        .filter(|e| !matches!(e, Event::Metering(_)))
        .cloned()
        .collect();
    assert_eq!(shown, expected);
    let m = events.iter().find_map(|e| match e {
        Event::Metering(m) => Some(*m),
        _ => None,
    });
    assert_eq!(m.unwrap().usage.output_tokens, 8);
}

#[test]
fn stream_errors_and_blocked_prompts() {
    let mut stream = Stream::new();
    let mut out = Vec::new();
    assert_eq!(
        stream.event(
            None,
            br#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#,
            &mut out
        ),
        StreamNote::Error("overloaded".into())
    );
    let mut stream = Stream::new();
    let mut out = Vec::new();
    assert_eq!(
        stream.event(
            None,
            br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#,
            &mut out
        ),
        StreamNote::Content
    );
    assert!(out.contains(&Event::Stop {
        reason: StopReason::Refusal,
        stop_sequence: None
    }));
    assert_eq!(
        stream.event(None, b"not json", &mut out),
        StreamNote::Nothing
    );
    assert_eq!(stream.event(None, b"[1]", &mut out), StreamNote::Nothing);
}

#[test]
fn openapi_type_names_become_json_schema_ones_and_nothing_else_changes() {
    // Compact between entries (a rewritten object or list is written compact); the spacing
    // inside a schema is kept.
    let body = concat!(
        r#"{"contents":[{"role":"model","parts":[{"functionCall":{"name":"f","args":{"type":"OBJECT"}}}]}],"#,
        r#""tools":[{"googleSearch":{}},{"functionDeclarations":["#,
        r#"{"name":"f","parameters":{"type": "OBJECT","properties":{"type":{"type":"STRING","description":"the \"type\": \"ARRAY\""},"n":{"type":"INTEGER","minimum":1.50}}}},"#,
        r#"{"name":"g","parametersJsonSchema":{"type":"OBJECT"}}]}],"#,
        r#""generationConfig":{"responseMimeType":"application/json","responseSchema":{"type":"ARRAY","items":{"type":"NUMBER"}}}}"#
    )
    .as_bytes();
    let out = json_schema_types(body).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(
        text,
        String::from_utf8_lossy(body)
            .replace(
                r#""type": "OBJECT","properties""#,
                r#""type": "object","properties""#
            )
            .replace(r#""type":"STRING""#, r#""type":"string""#)
            .replace(r#""type":"INTEGER""#, r#""type":"integer""#)
            .replace(r#""type":"ARRAY""#, r#""type":"array""#)
            .replace(r#""type":"NUMBER""#, r#""type":"number""#)
    );
    // The call's arguments and the JSON Schema declaration are the client's, untouched.
    assert!(text.contains(r#""args":{"type":"OBJECT"}"#));
    assert!(text.contains(r#""parametersJsonSchema":{"type":"OBJECT"}"#));
    assert!(text.contains(r#"\"type\": \"ARRAY\""#));
    let req = request(&out).unwrap();
    assert!(
        req.tools[0]
            .parameters
            .unwrap()
            .get()
            .starts_with(r#"{"type": "object""#)
    );
    assert!(json_schema_types(br#"{"contents":[]}"#).is_none());
    assert!(json_schema_types(b"not json").is_none());
}
