//! Decoding Responses requests, response objects and streams into the shape.

use super::*;
use crate::protocol::shape::{Event, Metering};
use keyplane_testkit::samples;

/// A request as Codex CLI sends it, built from its source (openai/codex):
/// - top level from `ResponsesApiRequest` (`codex-rs/codex-api/src/common.rs`): `instructions`
///   left out when empty, `tool_choice: "auto"`, `parallel_tool_calls`, `reasoning {effort,
///   summary}`, `store: false`, `stream: true`, `include: ["reasoning.encrypted_content"]`,
///   `prompt_cache_key` (the thread id), `text.verbosity`;
/// - `input` items from `ResponseItem` (`codex-rs/protocol/src/models.rs`): `message` with
///   `developer` role and `input_text`/`output_text` parts, `reasoning` with `summary` and
///   `encrypted_content` (its `id` is not serialized), `function_call` with `namespace` for an
///   MCP tool, `function_call_output` with a string `output`;
/// - `tools` from `ToolSpec` (`codex-rs/tools/src/tool_spec.rs`, `responses_api.rs`): a
///   `function`, a `namespace` of functions, `web_search`, a `custom` (freeform) tool.
const CODEX_REQUEST: &str = r#"{
  "model": "gpt-5.1-codex",
  "input": [
    {"type":"message","role":"developer","content":[{"type":"input_text","text":"You are Codex, a coding agent."}]},
    {"type":"message","role":"developer","content":[{"type":"input_text","text":"<permissions>workspace-write</permissions>"}]},
    {"type":"message","role":"user","content":[{"type":"input_text","text":"<environment_context>cwd=/repo</environment_context>"},{"type":"input_text","text":"List the files"}]},
    {"type":"reasoning","summary":[{"type":"summary_text","text":"**Listing files**"},{"type":"summary_text","text":"I will run ls."}],"encrypted_content":"gAAAAABpPDIVOKrs"},
    {"type":"function_call","name":"shell","arguments":"{\"command\":[\"ls\"]}","call_id":"call_1"},
    {"type":"function_call_output","call_id":"call_1","output":"Cargo.toml\nsrc\n"},
    {"type":"function_call","name":"search","namespace":"mcp__docs","arguments":"{\"q\":\"cargo\"}","call_id":"call_2"},
    {"type":"function_call_output","call_id":"call_2","output":"no results"},
    {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Two entries."}]},
    {"type":"message","role":"developer","content":[{"type":"input_text","text":"<permissions>read-only</permissions>"}]},
    {"type":"message","role":"user","content":[{"type":"input_text","text":"thanks"}]}
  ],
  "tools": [
    {"type":"function","name":"shell","description":"Runs a shell command","strict":false,
     "parameters":{"type":"object","properties":{"command":{"type":"array","items":{"type":"string"}}},"required":["command"],"additionalProperties":false}},
    {"type":"namespace","name":"mcp__docs","description":"Tools in the mcp__docs namespace.",
     "tools":[{"type":"function","name":"search","description":"Search the docs","strict":false,
               "parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}]},
    {"type":"web_search","external_web_access":false},
    {"type":"custom","name":"apply_patch","description":"Patch files","format":{"type":"grammar","syntax":"lark","definition":"start: /.+/"}}
  ],
  "tool_choice": "auto",
  "parallel_tool_calls": false,
  "reasoning": {"effort":"medium","summary":"auto"},
  "store": false,
  "stream": true,
  "include": ["reasoning.encrypted_content"],
  "prompt_cache_key": "0199a0b1-thread",
  "text": {"verbosity":"low"}
}"#;

fn texts(blocks: &[Block<'_>]) -> Vec<String> {
    blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn codex_request() {
    let req = request(CODEX_REQUEST.as_bytes()).unwrap();
    assert_eq!(req.model, "gpt-5.1-codex");
    assert_eq!(
        req.system,
        vec![
            "You are Codex, a coding agent.",
            "<permissions>workspace-write</permissions>"
        ]
    );
    assert_eq!(req.stream, Some(true));
    assert!(req.include_usage);
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.tool_choice, Some(ToolChoice::Auto));
    assert_eq!(req.reasoning, Some(Reasoning::Effort("medium".into())));
    // Function tools translate; the namespace's member is flattened; built-ins are named.
    let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["shell", "mcp__docs__search", "apply_patch"]);
    // The custom tool is a function of its text; its grammar is told in the description.
    let patch = &req.tools[2];
    assert_eq!(
        patch.parameters.unwrap().get(),
        r#"{"type":"object","properties":{"input":{"type":"string","description":"The tool's input, as free text."}},"required":["input"],"additionalProperties":false}"#
    );
    assert_eq!(
        patch.description.as_deref(),
        Some("Patch files\n\nThe `input` must follow this lark grammar:\nstart: /.+/")
    );
    assert_eq!(
        req.tools[1].description.as_deref(),
        Some("Tools in the mcp__docs namespace.\n\nSearch the docs")
    );
    assert_eq!(req.tools[0].strict, Some(false));
    assert!(
        req.tools[0]
            .parameters
            .unwrap()
            .get()
            .contains("\"command\"")
    );
    for d in ["tools.web_search", "prompt_cache_key", "text.verbosity"] {
        assert!(
            req.dropped.iter().any(|x| x == d),
            "{d} in {:?}",
            req.dropped
        );
    }
    for accepted in ["store", "include", "reasoning", "stream"] {
        assert!(!req.dropped.iter().any(|x| x == accepted), "{accepted}");
    }

    // user · assistant (thinking, call) · user (result) · assistant (call) · user (result) ·
    // assistant (text) · system (in place) · user.
    let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant,
            Role::System,
            Role::User
        ]
    );
    assert_eq!(
        texts(&req.messages[0].content),
        [
            "<environment_context>cwd=/repo</environment_context>",
            "List the files"
        ]
    );
    let Block::Thinking { text, signature } = &req.messages[1].content[0] else {
        panic!("{:?}", req.messages[1].content[0]);
    };
    assert_eq!(text, "**Listing files**\n\nI will run ls.");
    assert_eq!(signature.as_deref(), Some("gAAAAABpPDIVOKrs"));
    let Block::ToolCall {
        id,
        name,
        arguments: Arguments::Text(args),
    } = &req.messages[1].content[1]
    else {
        panic!("{:?}", req.messages[1].content[1]);
    };
    assert_eq!((id.as_str(), name.as_str()), ("call_1", "shell"));
    assert_eq!(args, r#"{"command":["ls"]}"#);
    let Block::ToolResult {
        call_id, content, ..
    } = &req.messages[2].content[0]
    else {
        panic!();
    };
    assert_eq!(call_id, "call_1");
    assert_eq!(texts(content), ["Cargo.toml\nsrc\n"]);
    // The namespaced call is sent under the same flat name as its tool.
    assert!(matches!(
        &req.messages[3].content[0],
        Block::ToolCall { name, .. } if name == "mcp__docs__search"
    ));
    assert_eq!(
        texts(&req.messages[6].content),
        ["<permissions>read-only</permissions>"]
    );
}

/// A request as the OpenAI SDK's `responses.create` types allow it (openai-python
/// `types/responses/response_create_params.py`, `easy_input_message_param.py`: items without
/// `type`, string content; `function_tool_param.py`; `response_format_text_json_schema_config_param.py`
/// for `text.format`; `tool_choice_function_param.py`).
const SDK_REQUEST: &str = r#"{
  "model": "gpt-4.1",
  "instructions": "Answer in JSON.",
  "input": [
    {"role":"system","content":"Be brief."},
    {"role":"user","content":[{"type":"input_text","text":"What is in this image?"},
                              {"type":"input_image","image_url":"data:image/png;base64,iVBORw0KGgo=","detail":"auto"},
                              {"type":"input_image","file_id":"file-abc"},
                              {"type":"input_file","file_id":"file-def"}]},
    {"role":"assistant","content":"Let me check the weather."},
    {"type":"function_call","call_id":"call_w","name":"get_weather","arguments":"{\"city\":\"Paris\"}","id":"fc_1","status":"completed"},
    {"type":"function_call_output","call_id":"call_w","output":[{"type":"input_text","text":"18C"},{"type":"input_image","image_url":"https://example.com/sky.png"}]}
  ],
  "tools": [{"type":"function","name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}],
  "tool_choice": {"type":"function","name":"get_weather"},
  "temperature": 0.20,
  "top_p": 1,
  "max_output_tokens": 300,
  "text": {"format":{"type":"json_schema","name":"answer","schema":{"type":"object","properties":{"a":{"type":"string"}}},"strict":true,"description":"The answer"}},
  "safety_identifier": "user-123",
  "metadata": {"k":"v"},
  "truncation": "auto",
  "service_tier": "flex"
}"#;

#[test]
fn sdk_request() {
    let req = request(SDK_REQUEST.as_bytes()).unwrap();
    assert_eq!(req.system, ["Answer in JSON.", "Be brief."]);
    assert_eq!(req.stream, None);
    assert_eq!(req.temperature.unwrap().get(), "0.20");
    assert_eq!(req.top_p.unwrap().get(), "1");
    assert_eq!(req.max_output_tokens, Some(300));
    assert_eq!(req.user.as_deref(), Some("user-123"));
    assert_eq!(
        req.tool_choice,
        Some(ToolChoice::Named("get_weather".into()))
    );
    assert_eq!(req.tools[0].strict, Some(true));
    let Some(ResponseFormat::JsonSchema {
        name,
        schema,
        strict,
        description,
    }) = &req.response_format
    else {
        panic!("{:?}", req.response_format);
    };
    assert_eq!(name, "answer");
    assert!(schema.get().starts_with("{\"type\":\"object\""));
    assert_eq!(*strict, Some(true));
    assert_eq!(description.as_deref(), Some("The answer"));
    for d in [
        "input.content.input_image.file_id",
        "input.content.input_file",
        "metadata",
        "truncation",
        "service_tier",
    ] {
        assert!(
            req.dropped.iter().any(|x| x == d),
            "{d} in {:?}",
            req.dropped
        );
    }
    let user = &req.messages[0];
    assert_eq!(user.role, Role::User);
    assert!(matches!(
        &user.content[1],
        Block::Image(Image::Url(u)) if u == "data:image/png;base64,iVBORw0KGgo="
    ));
    assert_eq!(user.content.len(), 2);
    let assistant = &req.messages[1];
    assert_eq!(texts(&assistant.content), ["Let me check the weather."]);
    assert!(matches!(&assistant.content[1], Block::ToolCall { name, .. } if name == "get_weather"));
    let Block::ToolResult { content, .. } = &req.messages[2].content[0] else {
        panic!();
    };
    assert!(matches!(&content[0], Block::Text(t) if t == "18C"));
    assert!(matches!(&content[1], Block::Image(Image::Url(u)) if u.starts_with("https://")));

    // A bare string input is one user turn; json_object and text formats.
    let req = request(
        br#"{"model":"m","input":"hi","text":{"format":{"type":"json_object"}},"user":"u1"}"#,
    )
    .unwrap();
    assert_eq!(texts(&req.messages[0].content), ["hi"]);
    assert!(matches!(
        req.response_format,
        Some(ResponseFormat::JsonObject)
    ));
    assert_eq!(req.user.as_deref(), Some("u1"));
    let req = request(
        br#"{"model":"m","input":"hi","tool_choice":{"type":"allowed_tools","mode":"required","tools":[]},"reasoning":{"summary":"auto"}}"#,
    )
    .unwrap();
    assert_eq!(req.tool_choice, Some(ToolChoice::Required));
    assert_eq!(req.reasoning, None);
    assert!(req.dropped.iter().any(|d| d == "tool_choice.allowed_tools"));
    // Stateful fields left empty are accepted and not named.
    let req = request(
        br#"{"model":"m","input":"hi","previous_response_id":null,"conversation":null,"background":false,"store":true,"include":["reasoning.encrypted_content"],"stream_options":{"include_obfuscation":false}}"#,
    )
    .unwrap();
    assert!(req.dropped.is_empty(), "{:?}", req.dropped);
}

/// Codex answers a `local_shell_call` with a `function_call_output` (`codex-rs/protocol/src/models.rs`):
/// once the call is dropped, its result answers nothing and goes too.
#[test]
fn results_of_dropped_calls_go_with_them() {
    let req = request(
        br#"{"model":"m","input":[
            {"role":"user","content":"run ls"},
            {"type":"local_shell_call","id":"lsc_1","call_id":"call_9","status":"completed","action":{"type":"exec","command":["ls"],"env":{}}},
            {"type":"function_call_output","call_id":"call_9","output":"a b"},
            {"type":"function_call","call_id":"call_1","name":"f","arguments":"{}"},
            {"type":"function_call_output","call_id":"call_1","output":"ok"}
        ]}"#,
    )
    .unwrap();
    assert_eq!(req.messages.len(), 3);
    assert!(
        matches!(&req.messages[2].content[..], [Block::ToolResult { call_id, .. }] if call_id == "call_1")
    );
    for d in ["input.local_shell_call", "input.function_call_output"] {
        assert!(
            req.dropped.iter().any(|x| x == d),
            "{d} in {:?}",
            req.dropped
        );
    }
}

#[test]
fn requests_the_shape_cannot_carry_are_refused() {
    for body in [
        &br#"{"model":"m"}"#[..],
        b"nope",
        br#"{"model":"m","input":{"role":"user"}}"#,
        br#"{"model":"m","input":[{"role":"tool","content":"x"}]}"#,
        br#"{"model":"m","input":[{"type":"function_call","name":"f"}]}"#,
        br#"{"model":"m","input":[{"type":"function_call_output","output":"x"}]}"#,
        br#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#,
        br#"{"model":"m","input":"hi","prompt":{"id":"pmpt_1"}}"#,
        br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
        br#"{"model":"m","input":"hi","conversation":{"id":"conv_1"}}"#,
        br#"{"model":"m","input":"hi","background":true}"#,
        br#"{"model":"m","input":"hi","tool_choice":"sometimes"}"#,
        br#"{"model":"m","input":"hi","text":{"format":{"type":"yaml"}}}"#,
        br#"{"model":"m","input":"hi","text":{"format":{"type":"json_schema","name":"x"}}}"#,
        br#"{"model":"m","input":"hi","tools":[{"type":"function"}]}"#,
        br#"{"model":"m","input":"hi","max_output_tokens":"many"}"#,
    ] {
        assert!(request(body).is_err(), "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn recorded_response_object() {
    let resp = response(samples::bytes("openai-responses.json")).unwrap();
    assert_eq!(resp.model, "gpt-5-mini-2025-08-07");
    assert_eq!(resp.stop, StopReason::EndTurn);
    assert!(matches!(
        &resp.content[0],
        Block::Thinking { signature: Some(s), .. } if s.starts_with("gAAAAA")
    ));
    assert_eq!(texts(&resp.content).len(), 1);
    let m = resp.metering.unwrap();
    assert_eq!((m.usage.input_tokens, m.reasoning_tokens), (865, Some(128)));
    assert!(response(samples::bytes("openai-error.json")).is_none());

    let incomplete = br#"{"object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[{"type":"message","content":[{"type":"output_text","text":"Hal"}]}]}"#;
    let resp = response(incomplete).unwrap();
    assert_eq!(resp.stop, StopReason::MaxTokens);
    assert_eq!(texts(&resp.content), ["Hal"]);
    let filtered =
        br#"{"status":"incomplete","incomplete_details":{"reason":"content_filter"},"output":[]}"#;
    assert_eq!(response(filtered).unwrap().stop, StopReason::Refusal);
    let refusal = br#"{"status":"completed","output":[{"type":"message","content":[{"type":"refusal","refusal":"No."}]},{"type":"web_search_call","id":"ws_1"}]}"#;
    let resp = response(refusal).unwrap();
    assert_eq!(resp.stop, StopReason::Refusal);
    assert_eq!(texts(&resp.content), ["No."]);
}

fn decode_lines(lines: &[&str]) -> (Vec<Event>, Vec<StreamNote>) {
    let mut stream = Stream::new();
    let mut events = Vec::new();
    let notes = lines
        .iter()
        .map(|l| stream.event(None, l.as_bytes(), &mut events))
        .collect();
    (events, notes)
}

/// The first stream of the sample (each stream starts again at sequence number 0).
fn first_stream(sample: &str) -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for line in samples::text(sample).lines().filter(|l| !l.is_empty()) {
        if !out.is_empty() && line.contains("\"type\":\"response.created\"") {
            break;
        }
        out.push(line);
    }
    out
}

#[test]
fn recorded_reasoning_and_tool_call_stream() {
    let lines = first_stream("openai-responses-reasoning-tools.recorded.jsonl");
    let (events, notes) = decode_lines(&lines);
    assert!(
        matches!(&events[0], Event::Start { id, model } if id.starts_with("resp_") && model == "gpt-5.1-codex-max")
    );
    assert_eq!(
        events[1],
        Event::BlockStart {
            index: 0,
            block: BlockStart::Thinking
        }
    );
    let thinking: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Delta {
                index: 0,
                delta: Delta::Thinking(t),
            } => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert!(thinking.starts_with("**Calculating step-by-step"));
    let sig_at = events
        .iter()
        .position(|e| matches!(e, Event::Delta { index: 0, delta: Delta::Signature(s) } if s.starts_with("gAAAAA")))
        .unwrap();
    assert_eq!(events[sig_at + 1], Event::BlockStop { index: 0 });
    assert!(events.iter().any(|e| matches!(e,
        Event::BlockStart { index: 1, block: BlockStart::ToolCall { id, name } }
            if id == "call_AB6AaRZ1FYZB2RwS6A5vbdqn" && name == "calculator")));
    let args: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Delta {
                index: 1,
                delta: Delta::ToolArguments(a),
            } => Some(a.as_str()),
            _ => None,
        })
        .collect();
    let args: serde_json::Value = serde_json::from_str(&args).unwrap();
    assert!(args.is_object());
    let n = events.len();
    assert_eq!(
        events[n - 3],
        Event::Stop {
            reason: StopReason::ToolUse,
            stop_sequence: None
        }
    );
    assert!(
        matches!(events[n - 2], Event::Metering(Metering { usage, .. }) if usage.input_tokens == 134)
    );
    assert_eq!(events[n - 1], Event::End);
    // Commit at the first summary text, not at the empty item or part.
    assert_eq!(
        notes.iter().position(|n| *n == StreamNote::Content),
        Some(4)
    );
    assert_eq!(notes.last(), Some(&StreamNote::Done));
}

#[test]
fn recorded_text_stream_with_two_messages() {
    let lines: Vec<&str> = samples::text("openai-responses-stream.recorded.jsonl")
        .lines()
        .collect();
    let (events, _) = decode_lines(&lines);
    let starts: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::BlockStart { .. }))
        .collect();
    assert_eq!(starts.len(), 2);
    let text0: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Delta {
                index: 0,
                delta: Delta::Text(t),
            } => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text0, "Got it");
    assert!(events.contains(&Event::BlockStop { index: 0 }));
    assert!(events.contains(&Event::BlockStop { index: 1 }));
    assert!(
        events.iter().any(|e| matches!(e,
        Event::Metering(m) if m.usage.cache_read_tokens == 3072 && m.reasoning_tokens == Some(64)))
    );
    assert_eq!(events.iter().filter(|e| **e == Event::End).count(), 1);
}

#[test]
fn recorded_stream_error() {
    let lines: Vec<&str> = samples::text("openai-responses-stream-error.recorded.jsonl")
        .lines()
        .collect();
    let (_, notes) = decode_lines(&lines);
    assert_eq!(notes[..2], [StreamNote::Nothing, StreamNote::Nothing]);
    assert!(matches!(&notes[2], StreamNote::Error(m) if m.starts_with("You exceeded")));
}

#[test]
fn items_sent_whole_are_read_from_their_done_event() {
    // A server that sends no deltas, only finished items (allowed by the event types).
    let lines = [
        r#"{"type":"response.created","response":{"id":"resp_1","model":"m","output":[]}}"#,
        r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","summary":[{"type":"summary_text","text":"a"},{"type":"summary_text","text":"b"}],"encrypted_content":"sig"}}"#,
        r#"{"type":"response.output_item.done","output_index":1,"item":{"type":"message","content":[{"type":"output_text","text":"hello"}]}}"#,
        r#"{"type":"response.output_item.done","output_index":2,"item":{"type":"function_call","call_id":"c1","name":"search","namespace":"mcp__docs","arguments":"{}"}}"#,
        r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":5,"output_tokens":2}}}"#,
    ];
    let (events, notes) = decode_lines(&lines);
    assert_eq!(
        events,
        vec![
            Event::Start {
                id: "resp_1".into(),
                model: "m".into()
            },
            Event::BlockStart {
                index: 0,
                block: BlockStart::Thinking
            },
            Event::Delta {
                index: 0,
                delta: Delta::Thinking("a\n\nb".into())
            },
            Event::Delta {
                index: 0,
                delta: Delta::Signature("sig".into())
            },
            Event::BlockStop { index: 0 },
            Event::BlockStart {
                index: 1,
                block: BlockStart::Text
            },
            Event::Delta {
                index: 1,
                delta: Delta::Text("hello".into())
            },
            Event::BlockStop { index: 1 },
            Event::BlockStart {
                index: 2,
                block: BlockStart::ToolCall {
                    id: "c1".into(),
                    name: "mcp__docs__search".into()
                }
            },
            Event::Delta {
                index: 2,
                delta: Delta::ToolArguments("{}".into())
            },
            Event::BlockStop { index: 2 },
            Event::Stop {
                reason: StopReason::ToolUse,
                stop_sequence: None
            },
            Event::Metering(
                crate::protocol::openai_responses::metering(
                    &serde_json::from_str::<Box<RawValue>>(
                        r#"{"input_tokens":5,"output_tokens":2}"#
                    )
                    .unwrap()
                )
                .unwrap()
            ),
            Event::End,
        ]
    );
    assert_eq!(notes[0], StreamNote::Nothing);
    assert!(notes[1..4].iter().all(|n| *n == StreamNote::Content));
    // Junk and unknown events mean nothing.
    let mut s = Stream::new();
    let mut out = Vec::new();
    assert_eq!(s.event(None, b"[1,2]", &mut out), StreamNote::Nothing);
    assert_eq!(
        s.event(None, br#"{"type":"response.future_thing"}"#, &mut out),
        StreamNote::Nothing
    );
    assert!(out.is_empty());
}

#[test]
fn upstream_errors() {
    let e = error(429, samples::bytes("openai-error-429.json"));
    assert_eq!(e.status, 429);
    assert!(e.message.unwrap().len() > 10);
    assert_eq!(error(502, b"<html>bad gateway</html>").message, None);
    assert_eq!(
        error(400, br#"{"message":"flat"}"#).message.as_deref(),
        Some("flat")
    );
    assert_eq!(error(400, br#"{"error":"text"}"#).message, None);
}

/// The request Codex CLI 0.171.0 really sent (`testkit/samples/codex-responses-request.json`,
/// provenance in `SOURCES.md`): its second turn, after a `function_call` of `exec_command`.
#[test]
fn recorded_codex_request() {
    let body = samples::bytes("codex-responses-request.json");
    let peek = crate::protocol::openai_responses::ResponsesRequest::parse(body).unwrap();
    assert_eq!(peek.builtin_tools(), ["web_search"]);
    assert_eq!(peek.forced_builtin(), None);
    let echo = peek.echo();
    assert_eq!(
        echo.namespaces.split("multi_agent_v1__spawn_agent"),
        Some(("multi_agent_v1", "spawn_agent"))
    );

    let req = request(body).unwrap();
    assert_eq!(req.model, "gpt-5-codex");
    assert_eq!(req.stream, Some(true));
    // Codex sends no `instructions`: its two developer messages are the system prompt.
    assert_eq!(req.system.len(), 2);
    assert!(req.messages[0].role == Role::User);
    let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"exec_command"));
    assert!(names.contains(&"multi_agent_v1__spawn_agent"));
    assert_eq!(names.len(), 12, "{names:?}");
    for d in ["tools.web_search", "client_metadata", "prompt_cache_key"] {
        assert!(
            req.dropped.iter().any(|x| x == d),
            "{d} in {:?}",
            req.dropped
        );
    }
    // The call and its output, as the upstream will see them.
    let call = req
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .find_map(|b| match b {
            Block::ToolCall { id, name, .. } => Some((id.clone(), name.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(call.1, "exec_command");
    let result = req.messages.last().unwrap();
    assert!(
        matches!(&result.content[0], Block::ToolResult { call_id, content, .. }
        if *call_id == call.0 && matches!(&content[0], Block::Text(t) if t.contains("keyplane-marker-42")))
    );
}

/// Codex's custom tools (`apply_patch`; for its "Responses Lite" models every tool, in an
/// `additional_tools` input item, with `exec` a custom member of the `functions` namespace:
/// `create_tools_json_for_responses_lite` in `codex-rs/tools/src/tool_spec.rs`) and the
/// `custom_tool_call` / `custom_tool_call_output` items of its history
/// (`ResponseItem::CustomToolCall` in `codex-rs/protocol/src/models.rs`).
#[test]
fn custom_tools_and_their_calls() {
    let body = br#"{"model":"gpt-5.6-luna","input":[
        {"type":"additional_tools","role":"developer","tools":[
            {"type":"namespace","name":"functions","description":"",
             "tools":[{"type":"custom","name":"exec","description":"Run a command","format":{"type":"text"}},
                      {"type":"function","name":"wait","parameters":{"type":"object","properties":{}}}]},
            {"type":"web_search"}]},
        {"type":"message","role":"user","content":"run ls"},
        {"type":"custom_tool_call","id":"ctc_1","call_id":"call_x","name":"exec","input":"ls -la\n"},
        {"type":"custom_tool_call_output","call_id":"call_x","output":"a\nb"}
    ],"tool_choice":{"type":"custom","name":"exec"}}"#;
    let peek = crate::protocol::openai_responses::ResponsesRequest::parse(body).unwrap();
    assert_eq!(peek.builtin_tools(), ["web_search"]);
    assert!(peek.echo().namespaces.is_custom("exec"));
    let req = request(body).unwrap();
    let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["exec", "wait"]);
    assert_eq!(req.tools[0].description.as_deref(), Some("Run a command"));
    assert!(req.dropped.iter().any(|d| d == "tools.web_search"));
    assert_eq!(req.tool_choice, Some(ToolChoice::Named("exec".into())));
    let Block::ToolCall {
        id,
        name,
        arguments: Arguments::Text(args),
    } = &req.messages[1].content[0]
    else {
        panic!("{:?}", req.messages[1]);
    };
    assert_eq!((id.as_str(), name.as_str()), ("call_x", "exec"));
    assert_eq!(args, r#"{"input":"ls -la\n"}"#);
    assert!(
        matches!(&req.messages[2].content[0], Block::ToolResult { call_id, .. } if call_id == "call_x")
    );
}

/// Models that show their reasoning text (gpt-oss) stream it as `reasoning_text` content parts
/// of the reasoning item (`content_part.added` with a `reasoning_text` part, then
/// `response.reasoning_text.delta`: openai-python `response_content_part_added_event.py`,
/// `response_reasoning_text_delta_event.py`): one thinking block, no empty text block.
#[test]
fn reasoning_text_parts_are_thinking() {
    let lines = [
        r#"{"type":"response.created","response":{"id":"resp_2","model":"gpt-oss-120b"}}"#,
        r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}"#,
        r#"{"type":"response.content_part.added","output_index":0,"content_index":0,"item_id":"rs_1","part":{"type":"reasoning_text","text":""}}"#,
        r#"{"type":"response.reasoning_text.delta","output_index":0,"content_index":0,"item_id":"rs_1","delta":"hmm"}"#,
        r#"{"type":"response.content_part.done","output_index":0,"content_index":0,"item_id":"rs_1","part":{"type":"reasoning_text","text":"hmm"}}"#,
        r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[],"content":[{"type":"reasoning_text","text":"hmm"}]}}"#,
        r#"{"type":"response.completed","response":{"status":"completed"}}"#,
    ];
    let (events, _) = decode_lines(&lines);
    let starts: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::BlockStart { .. }))
        .collect();
    assert_eq!(
        starts,
        [&Event::BlockStart {
            index: 0,
            block: BlockStart::Thinking
        }]
    );
    assert!(events.contains(&Event::Delta {
        index: 0,
        delta: Delta::Thinking("hmm".into())
    }));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Delta { .. }))
            .count(),
        1,
        "the done item does not repeat the text"
    );
    // Sent whole, the reasoning text is read from the done item's content.
    let (events, _) = decode_lines(&[lines[0], lines[5], lines[6]]);
    assert!(events.contains(&Event::Delta {
        index: 0,
        delta: Delta::Thinking("hmm".into())
    }));
}
