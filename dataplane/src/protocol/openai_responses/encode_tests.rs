//! Encoding the shape as Responses bytes: the response object, the stream's event sequence, the
//! upstream request, errors, and the reasoning round trip through a client.

use super::*;
use crate::protocol::openai_responses::{ResponsesRequest, decode};
use crate::protocol::shape::{
    Arguments, Encoded, Image, Message, Reasoning, Request, ResponseFormat, Role, StreamEncode,
    Tool, ToolChoice, UpstreamError, Usage,
};
use serde_json::{Value, json};

fn metering() -> Metering {
    Metering {
        usage: Usage {
            input_tokens: 100,
            output_tokens: 40,
            cache_read_tokens: 900,
            cache_write_tokens: 5,
        },
        reasoning_tokens: Some(12),
        reported_cost_nano: None,
    }
}

/// An answer as an Anthropic upstream gives it: signed thinking, text, a tool call.
fn anthropic_like_answer(stop: StopReason) -> Response {
    Response {
        id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
        model: "claude-sonnet-4-5".into(),
        content: vec![
            Block::Thinking {
                text: "The user wants the files listed.".into(),
                signature: Some("EqQBCkYIBxgCKkDsig==".into()),
            },
            Block::Text("Listing them now.".into()),
            Block::ToolCall {
                id: "toolu_01A".into(),
                name: "mcp__docs__search".into(),
                arguments: Arguments::Text(r#"{"q":"ls"}"#.into()),
            },
        ],
        stop,
        stop_sequence: None,
        metering: Some(metering()),
    }
}

/// The echo of a Codex-like request: a namespace group and a temperature.
fn codex_echo() -> Echo {
    let body = br#"{"model":"gpt-5.1-codex","input":"hi","temperature":0.30,"parallel_tool_calls":false,
        "tools":[{"type":"namespace","name":"mcp__docs","description":"Docs","tools":[{"type":"function","name":"search","parameters":{}}]},
                 {"type":"namespace","name":"functions","description":"","tools":[{"type":"function","name":"wait"}]}]}"#;
    ResponsesRequest::parse(body).unwrap().echo()
}

#[test]
fn response_object_has_what_the_sdk_and_codex_require() {
    let body = response_with(
        &anthropic_like_answer(StopReason::ToolUse),
        "my-model",
        &codex_echo(),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    // Required by openai-python `Response` (no default): id, created_at, model, object, output,
    // parallel_tool_calls, tool_choice, tools.
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["object"], "response");
    assert!(v["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["incomplete_details"], Value::Null);
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["model"], "my-model");
    assert_eq!(v["parallel_tool_calls"], false, "echoed");
    assert_eq!(v["tool_choice"], "auto");
    assert_eq!(v["tools"][0]["type"], "namespace");
    assert_eq!(v["temperature"], json!(0.30));
    assert_eq!(v["store"], false);
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 3);
    assert!(output[0]["id"].as_str().unwrap().starts_with("rs_"));
    assert_eq!(output[0]["type"], "reasoning");
    assert_eq!(
        output[0]["summary"],
        json!([{"type":"summary_text","text":"The user wants the files listed."}])
    );
    assert_eq!(output[0]["encrypted_content"], "EqQBCkYIBxgCKkDsig==");
    assert!(output[1]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(output[1]["type"], "message");
    assert_eq!(output[1]["role"], "assistant");
    assert_eq!(output[1]["status"], "completed");
    assert_eq!(
        output[1]["content"],
        json!([{"type":"output_text","annotations":[],"logprobs":[],"text":"Listing them now."}])
    );
    assert!(output[2]["id"].as_str().unwrap().starts_with("fc_"));
    assert_eq!(output[2]["type"], "function_call");
    assert_eq!(output[2]["status"], "completed");
    assert_eq!(output[2]["call_id"], "toolu_01A");
    // Codex routes a call by namespace and bare name.
    assert_eq!(output[2]["name"], "search");
    assert_eq!(output[2]["namespace"], "mcp__docs");
    assert_eq!(output[2]["arguments"], r#"{"q":"ls"}"#);
    // Usage as OpenAI counts it: input includes cached and cache-written input.
    assert_eq!(
        v["usage"],
        json!({"input_tokens":1005,"input_tokens_details":{"cache_write_tokens":5,"cached_tokens":900},
               "output_tokens":40,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":1045})
    );
    // What the pass-through scanner and the decoder read back from it.
    let read = crate::protocol::openai_responses::response(&body).unwrap();
    assert_eq!(read.metering, Some(metering()));
}

#[test]
fn stop_reasons_become_status_and_incomplete_details() {
    for (stop, status, reason) in [
        (StopReason::EndTurn, "completed", Value::Null),
        (StopReason::ToolUse, "completed", Value::Null),
        (StopReason::StopSequence, "completed", Value::Null),
        (
            StopReason::MaxTokens,
            "incomplete",
            json!("max_output_tokens"),
        ),
        (
            StopReason::ContextWindow,
            "incomplete",
            json!("max_output_tokens"),
        ),
        (StopReason::Refusal, "incomplete", json!("content_filter")),
    ] {
        let body = response(&anthropic_like_answer(stop), "m");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], status, "{stop:?}");
        assert_eq!(v["incomplete_details"]["reason"], reason, "{stop:?}");
    }
    // Without an echo, a namespaced-looking name stays as the upstream called it.
    let v: Value =
        serde_json::from_slice(&response(&anthropic_like_answer(StopReason::ToolUse), "m"))
            .unwrap();
    assert_eq!(v["output"][2]["name"], "mcp__docs__search");
    assert!(v["output"][2].get("namespace").is_none());
    assert_eq!(v["usage"]["total_tokens"], 1045);
}

/// Parses a stream into (event name, data), checking the framing of each event.
fn parse_sse(bytes: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            // One `event:` line and one `data:` line: a newline inside the data would end it.
            let lines: Vec<&str> = e.split('\n').collect();
            assert_eq!(lines.len(), 2, "{e}");
            let (name_line, data_line) = (lines[0], lines[1]);
            let name = name_line.strip_prefix("event: ").unwrap().to_string();
            let data: Value =
                serde_json::from_str(data_line.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "`type` repeats the event name");
            (name, data)
        })
        .collect()
}

/// The shape events an Anthropic upstream's stream decodes into, usage before the stop.
fn anthropic_like_events() -> Vec<Event> {
    vec![
        Event::Start {
            id: "msg_1".into(),
            model: "claude".into(),
        },
        Event::BlockStart {
            index: 0,
            block: BlockStart::Thinking,
        },
        Event::Delta {
            index: 0,
            delta: Delta::Thinking("Let me ".into()),
        },
        Event::Delta {
            index: 0,
            delta: Delta::Thinking("think.".into()),
        },
        Event::Delta {
            index: 0,
            delta: Delta::Signature("EqQBsig".into()),
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
                id: "toolu_9".into(),
                name: "wait".into(),
            },
        },
        Event::Delta {
            index: 2,
            delta: Delta::ToolArguments("{\"ms\":".into()),
        },
        Event::Delta {
            index: 2,
            delta: Delta::ToolArguments("5}".into()),
        },
        Event::BlockStop { index: 2 },
        Event::Metering(metering()),
        Event::Stop {
            reason: StopReason::ToolUse,
            stop_sequence: None,
        },
        Event::End,
    ]
}

fn encode_stream(events: &[Event], echo: Echo) -> (Stream, Vec<u8>) {
    let mut stream = Stream::with_echo("my-model", echo);
    let mut out = Vec::new();
    for e in events {
        stream.event(e, &mut out);
    }
    (stream, out)
}

#[test]
fn stream_is_the_documented_event_sequence() {
    let (_, out) = encode_stream(&anthropic_like_events(), codex_echo());
    let events = parse_sse(&out);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    // Sequence numbers count from 0 without gaps.
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64);
    }
    // Every item added is done, same index and id; deltas name their item.
    let mut added = std::collections::HashMap::new();
    for (name, data) in &events {
        match name.as_str() {
            "response.output_item.added" => {
                assert_eq!(
                    data["item"]["status"].as_str().unwrap_or("in_progress"),
                    "in_progress"
                );
                added.insert(
                    data["output_index"].as_u64().unwrap(),
                    data["item"]["id"].clone(),
                );
            }
            "response.output_item.done" => {
                let id = added
                    .remove(&data["output_index"].as_u64().unwrap())
                    .unwrap();
                assert_eq!(data["item"]["id"], id);
            }
            n if n.ends_with(".delta")
                || n.ends_with(".done") && n != "response.output_item.done" =>
            {
                assert!(data["item_id"].is_string(), "{n}");
                assert!(data["output_index"].is_u64(), "{n}");
            }
            _ => {}
        }
    }
    assert!(added.is_empty(), "items added without done: {added:?}");
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["usage"], Value::Null);
    assert_eq!(created["model"], "my-model");
    let (_, completed) = events.last().unwrap();
    let r = &completed["response"];
    assert_eq!(r["id"], created["id"], "one response id throughout");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["usage"]["input_tokens"], 1005);
    assert_eq!(r["output"][0]["encrypted_content"], "EqQBsig");
    assert_eq!(r["output"][1]["content"][0]["text"], "Hello");
    // A member of Codex's default namespace goes back by its bare name, without a namespace.
    assert_eq!(r["output"][2]["name"], "wait");
    assert!(r["output"][2].get("namespace").is_none());
    assert_eq!(r["output"][2]["arguments"], "{\"ms\":5}");
    let args_done = events
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(args_done.1["name"], "wait");
    assert_eq!(args_done.1["arguments"], "{\"ms\":5}");
}

/// Rebuilds the output the way openai-python's stream helper does
/// (`lib/streaming/responses/_responses.py`, `accumulate_event`): items appended at
/// `output_item.added`, parts at `content_part.added`, text and arguments appended by
/// `output_index`/`content_index`. It must equal the final response's output.
#[test]
fn the_sdk_accumulation_of_the_stream_equals_the_final_output() {
    let (_, out) = encode_stream(&anthropic_like_events(), Echo::default());
    let events = parse_sse(&out);
    let mut snapshot: Vec<Value> = Vec::new();
    for (name, data) in &events {
        let at = data["output_index"].as_u64().unwrap_or(0) as usize;
        match name.as_str() {
            "response.output_item.added" => snapshot.push(data["item"].clone()),
            "response.content_part.added" => snapshot[at]["content"]
                .as_array_mut()
                .unwrap()
                .push(data["part"].clone()),
            "response.output_text.delta" => {
                let ci = data["content_index"].as_u64().unwrap() as usize;
                let text = &mut snapshot[at]["content"][ci]["text"];
                *text = json!(format!(
                    "{}{}",
                    text.as_str().unwrap(),
                    data["delta"].as_str().unwrap()
                ));
            }
            "response.function_call_arguments.delta" => {
                let args = &mut snapshot[at]["arguments"];
                *args = json!(format!(
                    "{}{}",
                    args.as_str().unwrap(),
                    data["delta"].as_str().unwrap()
                ));
            }
            "response.output_item.done" => snapshot[at] = data["item"].clone(),
            _ => {}
        }
    }
    let (_, completed) = events.last().unwrap();
    assert_eq!(Value::Array(snapshot), completed["response"]["output"]);
}

#[test]
fn stream_ends_once_in_any_order_and_closes_what_is_open() {
    // Stop before usage, and the upstream ends without closing its block.
    let events = vec![
        Event::Start {
            id: "x".into(),
            model: "y".into(),
        },
        Event::BlockStart {
            index: 0,
            block: BlockStart::Text,
        },
        Event::Delta {
            index: 0,
            delta: Delta::Text("cut".into()),
        },
        Event::Stop {
            reason: StopReason::MaxTokens,
            stop_sequence: None,
        },
        Event::Metering(metering()),
    ];
    let (mut stream, mut out) = encode_stream(&events, Echo::default());
    assert!(
        !String::from_utf8_lossy(&out).contains("response.incomplete"),
        "nothing final before the end"
    );
    stream.finish(&mut out);
    stream.finish(&mut out);
    stream.event(&Event::End, &mut out);
    let parsed = parse_sse(&out);
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete"
        ]
    );
    let r = &parsed.last().unwrap().1["response"];
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r["usage"]["output_tokens"], 40);
    // An empty answer still has its created … completed.
    let mut empty = Stream::new("m");
    let mut out = Vec::new();
    empty.finish(&mut out);
    let names: Vec<String> = parse_sse(&out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.completed"
        ]
    );
}

#[test]
fn error_event_continues_the_numbering() {
    let (stream, out) = encode_stream(&anthropic_like_events()[..8], Echo::default());
    let sent = parse_sse(&out);
    let next = sent.len() as u64;
    let failure = parse_sse(&stream.error_event("upstream reset"));
    assert_eq!(failure[0].0, "error");
    assert_eq!(failure[0].1["sequence_number"], next);
    assert_eq!(failure[0].1["error"]["message"], "upstream reset");
    assert_eq!(failure[1].0, "response.failed");
    assert_eq!(failure[1].1["sequence_number"], next + 1);
    assert_eq!(failure[1].1["response"]["id"], sent[0].1["response"]["id"]);
    assert_eq!(failure[1].1["response"]["status"], "failed");
}

/// The reasoning round trip: an Anthropic upstream's signed thinking reaches a Responses client
/// as a reasoning item (summary = the text, `encrypted_content` = the signature); the client
/// sends the item back in its next request's `input` (as Codex does with every reasoning
/// item); decoding gives the identical block, signature included, for the Anthropic encoder.
#[test]
fn reasoning_round_trips_through_a_responses_client() {
    let signed = Block::Thinking {
        text: "Step one.\nStep two.".into(),
        signature: Some("EqQBCkYIBxgCKkDsig+/==".into()),
    };
    let redacted = Block::RedactedThinking {
        data: "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP".into(),
    };
    let answer = Response {
        id: "msg_1".into(),
        model: "claude".into(),
        content: vec![
            Block::Thinking {
                text: "Step one.\nStep two.".into(),
                signature: Some("EqQBCkYIBxgCKkDsig+/==".into()),
            },
            Block::RedactedThinking {
                data: "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP".into(),
            },
        ],
        stop: StopReason::EndTurn,
        stop_sequence: None,
        metering: None,
    };
    let check = |output: Vec<Value>| {
        let next = json!({"model":"m","input": output});
        let body = serde_json::to_vec(&next).unwrap();
        let req = decode::request(&body).unwrap();
        let blocks = &req.messages[0].content;
        assert_eq!(format!("{:?}", blocks[0]), format!("{signed:?}"));
        assert_eq!(format!("{:?}", blocks[1]), format!("{redacted:?}"));
    };
    // Through the response object.
    let v: Value = serde_json::from_slice(&response(&answer, "m")).unwrap();
    check(v["output"].as_array().unwrap().clone());
    // Through the stream: the items of `output_item.done`, as Codex keeps them.
    let events = vec![
        Event::BlockStart {
            index: 0,
            block: BlockStart::Thinking,
        },
        Event::Delta {
            index: 0,
            delta: Delta::Thinking("Step one.\n".into()),
        },
        Event::Delta {
            index: 0,
            delta: Delta::Thinking("Step two.".into()),
        },
        Event::Delta {
            index: 0,
            delta: Delta::Signature("EqQBCkYIBxgCKkDsig+/==".into()),
        },
        Event::BlockStop { index: 0 },
        Event::BlockStart {
            index: 1,
            block: BlockStart::RedactedThinking {
                data: "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP".into(),
            },
        },
        Event::BlockStop { index: 1 },
        Event::End,
    ];
    let (_, out) = encode_stream(&events, Echo::default());
    let done: Vec<Value> = parse_sse(&out)
        .into_iter()
        .filter(|(n, _)| n == "response.output_item.done")
        .map(|(_, d)| d["item"].clone())
        .collect();
    check(done);
}

fn shape_request<'a>(
    tool_params: &'a RawValue,
    schema: &'a RawValue,
    temp: &'a RawValue,
) -> Request<'a> {
    Request {
        model: "claude-sonnet-4-5".into(),
        system: vec!["Be brief.".into(), "Use tools.".into()],
        messages: vec![
            Message {
                role: Role::User,
                content: vec![
                    Block::Text("What is here?".into()),
                    Block::Image(Image::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    }),
                ],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    Block::Thinking {
                        text: "from Anthropic".into(),
                        signature: Some("EqQBanthropic".into()),
                    },
                    Block::Thinking {
                        text: "from OpenAI".into(),
                        signature: Some("gAAAAABpPDIVenc".into()),
                    },
                    Block::Text("Looking.".into()),
                    Block::ToolCall {
                        id: "call_1".into(),
                        name: "look".into(),
                        arguments: Arguments::Raw(tool_params),
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    Block::ToolResult {
                        call_id: "call_1".into(),
                        content: vec![Block::Text("a cat".into())],
                        is_error: Some(true),
                    },
                    Block::Text("And now?".into()),
                ],
            },
        ],
        tools: vec![Tool {
            name: "look".into(),
            description: Some("Look".into()),
            parameters: None,
            strict: None,
        }],
        tool_choice: Some(ToolChoice::Named("look".into())),
        parallel_tool_calls: Some(false),
        max_output_tokens: Some(256),
        temperature: Some(temp),
        top_p: None,
        stop: vec!["END".into()],
        stream: Some(true),
        include_usage: true,
        reasoning: Some(Reasoning::Budget(4096)),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "out".into(),
            schema,
            strict: Some(true),
            description: None,
        }),
        user: Some("u-1".into()),
        dropped: vec!["metadata".into()],
    }
}

#[test]
fn upstream_request_from_the_shape() {
    let raw = |s: &str| -> Box<RawValue> { serde_json::from_str(s).unwrap() };
    let (params, schema, temp) = (
        raw(r#"{ "where": "here" }"#),
        raw(r#"{"type":"object"}"#),
        raw("0.10"),
    );
    let req = shape_request(&params, &schema, &temp);
    let Encoded { body, dropped } = request(&req, "gpt-5.1").unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains(r#""temperature":0.10"#),
        "raw numbers kept: {text}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model"], "gpt-5.1");
    assert_eq!(v["instructions"], "Be brief.\n\nUse tools.");
    assert_eq!(v["store"], false);
    assert_eq!(v["stream"], true);
    assert_eq!(v["max_output_tokens"], 256);
    assert_eq!(v["parallel_tool_calls"], false);
    assert_eq!(v["user"], "u-1");
    assert_eq!(v["reasoning"], json!({"effort":"medium","summary":"auto"}));
    assert_eq!(v["include"], json!(["reasoning.encrypted_content"]));
    assert_eq!(v["tool_choice"], json!({"type":"function","name":"look"}));
    assert_eq!(
        v["tools"],
        json!([{"type":"function","name":"look","description":"Look",
                "parameters":{"type":"object","properties":{}},"strict":false}])
    );
    assert_eq!(
        v["text"],
        json!({"format":{"type":"json_schema","name":"out","schema":{"type":"object"},"strict":true}})
    );
    assert_eq!(
        v["input"],
        json!([
            {"type":"message","role":"user","content":[
                {"type":"input_text","text":"What is here?"},
                {"type":"input_image","image_url":"data:image/png;base64,iVBORw0KGgo="}]},
            {"type":"reasoning","summary":[{"type":"summary_text","text":"from OpenAI"}],
             "encrypted_content":"gAAAAABpPDIVenc"},
            {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Looking."}]},
            {"type":"function_call","call_id":"call_1","name":"look","arguments":"{\"where\":\"here\"}"},
            {"type":"function_call_output","call_id":"call_1","output":"a cat"},
            {"type":"message","role":"user","content":[{"type":"input_text","text":"And now?"}]}
        ])
    );
    assert_eq!(
        dropped,
        [
            "metadata",
            "messages.content.thinking",
            "messages.content.tool_result.is_error",
            "stop"
        ]
    );
    // What this encoder writes, the Responses decoder reads back to the same conversation.
    let back = decode::request(&body).unwrap();
    assert_eq!(back.system, ["Be brief.\n\nUse tools."]);
    assert_eq!(back.messages.len(), 3);
    assert_eq!(back.tool_choice, Some(ToolChoice::Named("look".into())));
    assert_eq!(back.tools[0].strict, Some(false));
}

#[test]
fn upstream_errors_are_openai_error_objects() {
    for (status, message, want_status, kind, code) in [
        (529, Some("Overloaded"), 503, "server_error", Value::Null),
        (
            429,
            Some("slow down"),
            429,
            "rate_limit_error",
            json!("rate_limit_exceeded"),
        ),
        (
            404,
            Some("model: nope"),
            404,
            "invalid_request_error",
            json!("model_not_found"),
        ),
        (
            401,
            None,
            401,
            "invalid_request_error",
            json!("invalid_api_key"),
        ),
        (400, Some("bad"), 400, "invalid_request_error", Value::Null),
        (502, None, 502, "server_error", Value::Null),
    ] {
        let (got, body) = error(&UpstreamError {
            status,
            message: message.map(str::to_string),
        });
        assert_eq!(got, want_status);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], kind, "{status}");
        assert_eq!(v["error"]["code"], code, "{status}");
        assert_eq!(v["error"]["param"], Value::Null);
        assert!(v["error"]["message"].as_str().unwrap().len() > 2);
    }
}

/// What this encoder streams, the Responses stream decoder (an openai-responses upstream's
/// reader) reads back to the same blocks, signature, stop reason and usage.
#[test]
fn decoding_the_encoded_stream_gives_the_events_back() {
    use crate::protocol::shape::{StreamDecode, StreamNote};
    let sent = anthropic_like_events();
    let (_, out) = encode_stream(&sent, Echo::default());
    let mut decoder = decode::Stream::new();
    let mut got = Vec::new();
    let mut notes = Vec::new();
    for (name, data) in parse_sse(&out) {
        let data = serde_json::to_vec(&data).unwrap();
        notes.push(decoder.event(Some(name.as_bytes()), &data, &mut got));
    }
    assert!(
        matches!(&got[0], Event::Start { id, model } if id.starts_with("resp_") && model == "my-model")
    );
    let body = |events: &[Event]| -> Vec<Event> {
        let mut v: Vec<Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Start { .. }))
            .cloned()
            .collect();
        v.sort_by_key(|e| matches!(e, Event::Metering(_)));
        v
    };
    assert_eq!(body(&got), body(&sent));
    assert_eq!(notes.last(), Some(&StreamNote::Done));
}

/// A call of a custom tool goes back to the client as a `custom_tool_call` with its text as
/// `input` (what Codex runs), in a whole response and in a stream
/// (`response.custom_tool_call_input.delta`/`.done`, openai-python
/// `response_custom_tool_call_input_*_event.py`).
#[test]
fn custom_tool_calls_go_back_as_custom_tool_calls() {
    let body = br#"{"model":"m","input":"hi","tools":[
        {"type":"custom","name":"apply_patch","format":{"type":"grammar","syntax":"lark","definition":"start: /.+/"}},
        {"type":"namespace","name":"mcp__x","description":"","tools":[{"type":"custom","name":"run"}]}]}"#;
    let echo = ResponsesRequest::parse(body).unwrap().echo();
    let answer = Response {
        id: "msg_1".into(),
        model: "claude".into(),
        content: vec![
            Block::ToolCall {
                id: "toolu_1".into(),
                name: "apply_patch".into(),
                arguments: Arguments::Text(r#"{"input":"*** Begin Patch\n*** End Patch"}"#.into()),
            },
            Block::ToolCall {
                id: "toolu_2".into(),
                name: "mcp__x__run".into(),
                arguments: Arguments::Text("not json".into()),
            },
        ],
        stop: StopReason::ToolUse,
        stop_sequence: None,
        metering: None,
    };
    let v: Value = serde_json::from_slice(&response_with(&answer, "m", &echo)).unwrap();
    let call = &v["output"][0];
    assert!(call["id"].as_str().unwrap().starts_with("ctc_"));
    assert_eq!(call["type"], "custom_tool_call");
    assert_eq!(call["call_id"], "toolu_1");
    assert_eq!(call["name"], "apply_patch");
    assert_eq!(call["input"], "*** Begin Patch\n*** End Patch");
    assert!(call.get("namespace").is_none());
    assert_eq!(v["output"][1]["name"], "run");
    assert_eq!(v["output"][1]["namespace"], "mcp__x");
    assert_eq!(
        v["output"][1]["input"], "not json",
        "other arguments are given as they are"
    );

    let events = vec![
        Event::BlockStart {
            index: 0,
            block: BlockStart::ToolCall {
                id: "toolu_1".into(),
                name: "apply_patch".into(),
            },
        },
        Event::Delta {
            index: 0,
            delta: Delta::ToolArguments(r#"{"input":"*** Begin"#.into()),
        },
        Event::Delta {
            index: 0,
            delta: Delta::ToolArguments(r#" Patch"}"#.into()),
        },
        Event::BlockStop { index: 0 },
        Event::End,
    ];
    let (_, out) = encode_stream(&events, echo);
    let parsed = parse_sse(&out);
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.custom_tool_call_input.delta",
            "response.custom_tool_call_input.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert_eq!(parsed[2].1["item"]["type"], "custom_tool_call");
    assert_eq!(parsed[2].1["item"]["input"], "");
    assert_eq!(parsed[3].1["delta"], "*** Begin Patch");
    assert_eq!(parsed[4].1["input"], "*** Begin Patch");
    assert_eq!(parsed[5].1["item"]["input"], "*** Begin Patch");
    assert_eq!(
        parsed[6].1["response"]["output"][0]["input"],
        "*** Begin Patch"
    );
    // The client's next request sends the call back; the upstream sees the same function call.
    let next = json!({"model":"m","input":[parsed[5].1["item"].clone()]});
    let next = serde_json::to_vec(&next).unwrap();
    let req = decode::request(&next).unwrap();
    assert!(
        matches!(&req.messages[0].content[0], Block::ToolCall { name, arguments: Arguments::Text(a), .. }
        if name == "apply_patch" && a == r#"{"input":"*** Begin Patch"}"#)
    );
}
