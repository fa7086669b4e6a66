//! The request peek, built-in tool checks and pass-through scanning, against recorded streams
//! and request shapes taken from the SDK types and Codex's source (named at each fixture).

use super::*;
use keyplane_testkit::samples;

fn lines(sample: &str) -> Vec<&'static str> {
    samples::text(sample)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn name_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn rewrite_changes_only_model_and_keeps_every_other_byte() {
    let body = br#"{"model":"gpt-5", "input":[{"role":"user","content":"h\u00e9"}],"tools":[{"type":"web_search"}],"store":false,"include":["reasoning.encrypted_content"],"temperature":0.10}"#;
    let req = ResponsesRequest::parse(body).unwrap();
    assert_eq!(req.model, "gpt-5");
    assert!(!req.stream);
    assert_eq!(
        std::str::from_utf8(&req.rewrite("gpt-5-2025-08-07")).unwrap(),
        r#"{"model":"gpt-5-2025-08-07","input":[{"role":"user","content":"h\u00e9"}],"tools":[{"type":"web_search"}],"store":false,"include":["reasoning.encrypted_content"],"temperature":0.10}"#
    );
}

#[test]
fn reads_stream_and_output_limit() {
    let req = ResponsesRequest::parse(
        br#"{"model":"m","input":"hi","stream":true,"max_output_tokens":77}"#,
    )
    .unwrap();
    assert!(req.stream);
    assert_eq!(req.max_output_tokens, Some(77));
    let req = ResponsesRequest::parse(
        br#"{"model":"m","input":"hi","stream":null,"max_output_tokens":null,"previous_response_id":null,"background":false,"store":true,"include":[]}"#,
    )
    .unwrap();
    assert!(!req.stream);
    assert_eq!(req.max_output_tokens, None);
}

#[test]
fn bad_requests_are_refused_with_the_parameter_named() {
    for (body, param) in [
        (&b"not json"[..], None),
        (b"[1]", None),
        (br#"{"input":"hi"}"#, Some("model")),
        (br#"{"model":3,"input":"hi"}"#, Some("model")),
        (br#"{"model":"m"}"#, Some("input")),
        (br#"{"model":"m","input":{"role":"user"}}"#, Some("input")),
        (br#"{"model":"m","input":7}"#, Some("input")),
        (br#"{"model":"m","input":"hi","stream":"yes"}"#, Some("stream")),
        (
            br#"{"model":"m","input":"hi","max_output_tokens":-1}"#,
            Some("max_output_tokens"),
        ),
        (
            br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#,
            Some("previous_response_id"),
        ),
        (
            br#"{"model":"m","input":"hi","conversation":"conv_1"}"#,
            Some("conversation"),
        ),
        (br#"{"model":"m","input":"hi","background":true}"#, Some("background")),
        (br#"{"model":"m","input":"hi","tools":{"type":"function"}}"#, Some("tools")),
        (br#"{"model":"m","input":"hi","tools":[{"type":"teleport"}]}"#, Some("tools")),
        (br#"{"model":"m","input":"hi","tools":[{"name":"f"}]}"#, Some("tools")),
        (
            br#"{"model":"m","input":"hi","tools":[{"type":"namespace","name":"n","tools":[{"type":"web_search"}]}]}"#,
            Some("tools"),
        ),
    ] {
        let err = ResponsesRequest::parse(body).err().unwrap();
        assert_eq!(err.param, param, "{}", String::from_utf8_lossy(body));
    }
    let err =
        ResponsesRequest::parse(br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#)
            .err()
            .unwrap();
    assert!(
        err.message.contains("whole conversation in 'input'"),
        "{}",
        err.message
    );
}

/// The `tools` Codex sends: `ToolSpec` serialized as tagged by `type` (openai/codex
/// `codex-rs/tools/src/tool_spec.rs`: `function`, `namespace` of functions as
/// `ResponsesApiNamespace` in `responses_api.rs`, `web_search`, `custom` freeform tools such as
/// `apply_patch`, `image_generation`).
const CODEX_TOOLS: &str = r#"[
    {"type":"function","name":"shell","description":"Runs a shell command","strict":false,
     "parameters":{"type":"object","properties":{"command":{"type":"array","items":{"type":"string"}}},"required":["command"],"additionalProperties":false}},
    {"type":"namespace","name":"mcp__docs","description":"Tools in the mcp__docs namespace.",
     "tools":[{"type":"function","name":"search","description":"Search the docs","strict":false,
               "parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}]},
    {"type":"namespace","name":"functions","description":"",
     "tools":[{"type":"function","name":"wait","description":"Wait","strict":false,"parameters":{"type":"object","properties":{}}},
              {"type":"custom","name":"exec","description":"Run code","format":{"type":"grammar","syntax":"lark","definition":"start: /.+/"}}]},
    {"type":"web_search","external_web_access":false},
    {"type":"custom","name":"apply_patch","description":"Patch files","format":{"type":"grammar","syntax":"lark","definition":"start: /.+/"}}
]"#;

fn with_tools(tools: &str, choice: Option<&str>) -> Vec<u8> {
    let choice = choice
        .map(|c| format!(r#","tool_choice":{c}"#))
        .unwrap_or_default();
    format!(r#"{{"model":"m","input":"hi","tools":{tools}{choice}}}"#).into_bytes()
}

#[test]
fn builtin_tools_lists_what_does_not_translate_once() {
    let body = with_tools(CODEX_TOOLS, Some(r#""auto""#));
    let req = ResponsesRequest::parse(&body).unwrap();
    // Functions, custom tools and namespace members translate.
    assert_eq!(req.builtin_tools(), vec!["web_search"]);
    let body = with_tools(
        r#"[{"type":"web_search"},{"type":"mcp","server_label":"x"},{"type":"web_search"},{"type":"local_shell"}]"#,
        None,
    );
    assert_eq!(
        ResponsesRequest::parse(&body).unwrap().builtin_tools(),
        vec!["web_search", "mcp", "local_shell"]
    );
    assert_eq!(req.forced_builtin(), None);
    let body = with_tools(r#"[{"type":"function","name":"f"}]"#, None);
    assert!(
        ResponsesRequest::parse(&body)
            .unwrap()
            .builtin_tools()
            .is_empty()
    );
}

#[test]
fn forced_builtins_are_found() {
    for (tools, choice, forced) in [
        (CODEX_TOOLS, r#"{"type":"web_search"}"#, Some("web_search")),
        (
            CODEX_TOOLS,
            r#"{"type":"web_search_preview"}"#,
            Some("web_search_preview"),
        ),
        (
            CODEX_TOOLS,
            r#"{"type":"custom","name":"apply_patch"}"#,
            None,
        ),
        (
            r#"[{"type":"mcp","server_label":"x","server_url":"https://x"}]"#,
            r#"{"type":"mcp","server_label":"x"}"#,
            Some("mcp"),
        ),
        (CODEX_TOOLS, r#"{"type":"function","name":"shell"}"#, None),
        (CODEX_TOOLS, r#""required""#, None),
        (
            r#"[{"type":"web_search"}]"#,
            r#""required""#,
            Some("web_search"),
        ),
        (r#"[{"type":"web_search"}]"#, r#""auto""#, None),
        (
            CODEX_TOOLS,
            r#"{"type":"allowed_tools","mode":"required","tools":[{"type":"image_generation"}]}"#,
            Some("image_generation"),
        ),
        (
            CODEX_TOOLS,
            r#"{"type":"allowed_tools","mode":"required","tools":[{"type":"function","name":"shell"},{"type":"web_search"}]}"#,
            None,
        ),
        (
            CODEX_TOOLS,
            r#"{"type":"allowed_tools","mode":"auto","tools":[{"type":"web_search"}]}"#,
            None,
        ),
    ] {
        let body = with_tools(tools, Some(choice));
        let req = ResponsesRequest::parse(&body).unwrap();
        assert_eq!(req.forced_builtin().as_deref(), forced, "{choice}");
    }
}

#[test]
fn echo_keeps_the_client_values_and_the_namespaced_functions() {
    let body = format!(
        r#"{{"model":"m","input":"hi","tools":{CODEX_TOOLS},"temperature":0.30,"store":true,"metadata":null,"parallel_tool_calls":false}}"#
    );
    let req = ResponsesRequest::parse(body.as_bytes()).unwrap();
    let echo = req.echo();
    assert_eq!(echo.get("temperature").unwrap().get(), "0.30");
    assert_eq!(echo.get("parallel_tool_calls").unwrap().get(), "false");
    assert!(echo.get("metadata").is_none(), "null is not echoed");
    assert!(echo.get("model").is_none());
    assert_eq!(
        echo.namespaces.split("mcp__docs__search"),
        Some(("mcp__docs", "search"))
    );
    // Members of Codex's default namespace keep their bare name.
    assert_eq!(echo.namespaces.split("wait"), Some(("functions", "wait")));
    // A custom member of the default namespace keeps its bare name too, and is custom.
    assert_eq!(echo.namespaces.split("exec"), Some(("functions", "exec")));
    assert!(echo.namespaces.is_custom("exec"));
    assert!(echo.namespaces.is_custom("apply_patch"));
    assert!(!echo.namespaces.is_custom("wait"));
    // Top-level tools are not namespaced.
    assert_eq!(echo.namespaces.split("shell"), None);
    assert_eq!(echo.namespaces.split("apply_patch"), None);
    assert_eq!(
        Namespaces::flat_name("mcp__docs", "search"),
        "mcp__docs__search"
    );
    assert_eq!(Namespaces::flat_name("functions", "wait"), "wait");
}

#[test]
fn long_flat_names_fit_the_upstream_limit_and_map_back() {
    let namespace = "mcp__codex_apps__google_calendar_and_more";
    let name = "google_calendar_create_recurring_event";
    let flat = Namespaces::flat_name(namespace, name);
    assert_eq!(flat.len(), MAX_FLAT_NAME);
    assert!(flat.starts_with("mcp__codex_apps__google_calendar"));
    assert_eq!(flat, Namespaces::flat_name(namespace, name), "stable");
    assert_ne!(
        flat,
        Namespaces::flat_name(namespace, "google_calendar_create_recurring_evenT")
    );
    let body = format!(
        r#"{{"model":"m","input":"hi","tools":[{{"type":"namespace","name":"{namespace}","description":"","tools":[{{"type":"function","name":"{name}"}}]}}]}}"#
    );
    let echo = ResponsesRequest::parse(body.as_bytes()).unwrap().echo();
    assert_eq!(echo.namespaces.split(&flat), Some((namespace, name)));
    // Exactly at the limit: unchanged.
    let at_limit = Namespaces::flat_name(&"n".repeat(30), &"f".repeat(32));
    assert_eq!(at_limit, format!("{}__{}", "n".repeat(30), "f".repeat(32)));
}

#[test]
fn usage_is_read_in_billing_terms() {
    let raw = |s: &str| -> Box<RawValue> { serde_json::from_str(s).unwrap() };
    let m = metering(&raw(
        r#"{"input_tokens":7112,"input_tokens_details":{"cached_tokens":3072},"output_tokens":463,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":7575}"#,
    ))
    .unwrap();
    assert_eq!(m.usage.input_tokens, 4040);
    assert_eq!(m.usage.cache_read_tokens, 3072);
    assert_eq!(m.usage.output_tokens, 463);
    assert_eq!(m.reasoning_tokens, Some(64));
    let m = metering(&raw(
        r#"{"input_tokens":100,"input_tokens_details":{"cache_write_tokens":30,"cached_tokens":50},"output_tokens":1}"#,
    ))
    .unwrap();
    assert_eq!((m.usage.input_tokens, m.usage.cache_write_tokens), (20, 30));
    for bad in [
        "[10, 2]",
        "null",
        r#"{"total_tokens":5}"#,
        r#"{"input_tokens":1,"input_tokens_details":{"cached_tokens":5}}"#,
    ] {
        assert_eq!(metering(&raw(bad)), None, "{bad}");
    }
}

#[test]
fn only_a_response_object_is_a_response() {
    let r = response(samples::bytes("openai-responses.json")).unwrap();
    let m = r.metering.unwrap();
    assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (865, 163));
    assert_eq!(m.reasoning_tokens, Some(128));
    assert!(
        response(br#"{"output":[],"usage":[1,2]}"#)
            .unwrap()
            .metering
            .is_none()
    );
    for bad in [
        &b""[..],
        b"<html>502</html>",
        samples::bytes("openai-error.json"),
        br#"{"object":"chat.completion","output":[]}"#,
        br#"{"output":{}}"#,
        br#"[{"output":[]}]"#,
        br#"{"output":["#,
    ] {
        assert!(response(bad).is_none(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn recorded_text_stream_commits_at_the_first_delta_and_ends_with_usage() {
    let chunks: Vec<Chunk> = lines("openai-responses-stream.recorded.jsonl")
        .into_iter()
        .map(|l| classify(None, Some(l.as_bytes())))
        .collect();
    let first_content = chunks.iter().position(|c| *c == Chunk::Content).unwrap();
    assert_eq!(
        first_content, 4,
        "created, in_progress, empty message, empty part are preamble"
    );
    let Some(Chunk::Done { metering: Some(m) }) = chunks.last() else {
        panic!("{:?}", chunks.last());
    };
    assert_eq!(m.usage.input_tokens, 7112 - 3072);
    assert_eq!(m.usage.cache_read_tokens, 3072);
    assert_eq!(m.reasoning_tokens, Some(64));
}

#[test]
fn recorded_reasoning_and_tool_streams() {
    let all = lines("openai-responses-reasoning-tools.recorded.jsonl");
    let chunks: Vec<(String, Chunk)> = all
        .iter()
        .map(|l| (name_of(l), classify(None, Some(l.as_bytes()))))
        .collect();
    // The reasoning item opens empty; its summary text commits.
    assert_eq!(chunks[2].1, Chunk::Preamble, "{}", chunks[2].0);
    assert_eq!(chunks[3].1, Chunk::Preamble, "{}", chunks[3].0);
    assert_eq!(chunks[4].1, Chunk::Content, "{}", chunks[4].0);
    // A function call opening names the tool: content.
    for (name, chunk) in &chunks {
        if name == "response.output_item.added" && *chunk == Chunk::Content {
            return assert!(all.iter().any(|l| l.contains("\"type\":\"function_call\"")));
        }
    }
    panic!("no function call item was content");
}

#[test]
fn recorded_stream_error_and_failed_response() {
    let chunks: Vec<Chunk> = lines("openai-responses-stream-error.recorded.jsonl")
        .into_iter()
        .map(|l| classify(None, Some(l.as_bytes())))
        .collect();
    assert_eq!(chunks[..2], [Chunk::Preamble, Chunk::Preamble]);
    for chunk in &chunks[2..] {
        let Chunk::Error { message, .. } = chunk else {
            panic!("{chunk:?}");
        };
        assert!(
            message.starts_with("You exceeded your current quota"),
            "{message}"
        );
    }
    // The SDK's flat shape, and an error event that is not JSON.
    assert_eq!(
        classify(
            Some(b"error"),
            Some(
                br#"{"type":"error","code":"x","message":"boom","param":null,"sequence_number":3}"#
            )
        ),
        Chunk::Error {
            message: "boom".into(),
            metering: None
        }
    );
    assert!(matches!(
        classify(Some(b"error"), Some(b"upstream died")),
        Chunk::Error { .. }
    ));
}

#[test]
fn classify_edges() {
    assert_eq!(classify(None, None), Chunk::Preamble);
    assert_eq!(classify(None, Some(b": keep-alive")), Chunk::Preamble);
    assert_eq!(
        classify(None, Some(br#"[{"type":"error"}]"#)),
        Chunk::Preamble
    );
    assert_eq!(
        classify(
            None,
            Some(br#"{"type":"response.output_text.delta","delta":""}"#)
        ),
        Chunk::Preamble
    );
    // Named only by its `event:` line.
    assert_eq!(
        classify(
            Some(b"response.completed"),
            Some(br#"{"response":{"usage":{"input_tokens":3,"output_tokens":1}}}"#)
        ),
        Chunk::Done {
            metering: metering(
                &serde_json::from_str::<Box<RawValue>>(r#"{"input_tokens":3,"output_tokens":1}"#)
                    .unwrap()
            )
        }
    );
    assert_eq!(
        classify(
            None,
            Some(br#"{"type":"response.incomplete","response":{"usage":[3,1]}}"#)
        ),
        Chunk::Done { metering: None }
    );
    assert!(matches!(
        classify(
            None,
            Some(br#"{"type":"response.failed","response":{"error":null}}"#)
        ),
        Chunk::Error { .. }
    ));
}

#[test]
fn may_matter_sees_every_end_and_error_of_the_samples() {
    for sample in [
        "openai-responses-stream.recorded.jsonl",
        "openai-responses-reasoning-tools.recorded.jsonl",
        "openai-responses-stream-error.recorded.jsonl",
    ] {
        for line in lines(sample) {
            let chunk = classify(None, Some(line.as_bytes()));
            if matches!(chunk, Chunk::Done { .. } | Chunk::Error { .. }) {
                assert!(may_matter(None, line.as_bytes()), "{line}");
            }
        }
    }
    assert!(may_matter(Some(b"response.completed"), b"{}"));
    assert!(!may_matter(
        Some(b"response.output_text.delta"),
        br#"{"type":"response.output_text.delta","delta":"x"}"#
    ));
}

#[test]
fn sequence_numbers_and_ids_are_read_from_events() {
    let all = lines("openai-responses-stream.recorded.jsonl");
    assert_eq!(sequence_number(all[0].as_bytes()), Some(0));
    assert_eq!(sequence_number(all.last().unwrap().as_bytes()), Some(129));
    assert_eq!(sequence_number(b"{}"), None);
    assert_eq!(
        response_id(all[0].as_bytes()).as_deref(),
        Some("resp_0a63f40a2632b74300699f8818e5648196a8fa657ae8091421")
    );
    assert_eq!(response_id(b"[]"), None);
}

#[test]
fn stream_error_events_are_what_openai_sends() {
    let out = stream_error_events("upstream reset", 7, Some("resp_abc"), "my-model");
    let text = std::str::from_utf8(&out).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2);
    assert!(events[0].starts_with("event: error\ndata: "));
    assert!(events[1].starts_with("event: response.failed\ndata: "));
    let data = |e: &str| -> serde_json::Value {
        serde_json::from_str(e.split_once("data: ").unwrap().1).unwrap()
    };
    let error = data(events[0]);
    assert_eq!(error["type"], "error");
    assert_eq!(error["sequence_number"], 7);
    assert_eq!(error["error"]["message"], "upstream reset");
    let failed = data(events[1]);
    assert_eq!(failed["sequence_number"], 8);
    assert_eq!(failed["response"]["id"], "resp_abc");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["model"], "my-model");
    assert_eq!(failed["response"]["error"]["message"], "upstream reset");
    // What a relay scanning its own output reads from them.
    let err = classify(
        None,
        Some(events[1].split_once("data: ").unwrap().1.as_bytes()),
    );
    assert!(matches!(err, Chunk::Error { message, .. } if message == "upstream reset"));
    let fresh = stream_error_events("x", 0, None, "m");
    assert!(
        std::str::from_utf8(&fresh)
            .unwrap()
            .contains("\"id\":\"resp_")
    );
}
