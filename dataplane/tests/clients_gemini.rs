//! Real Gemini clients and the SDKs that reach a Gemini upstream, as subprocesses at the versions
//! `clients/install` pins: the Gemini CLI (`gemini -p`, its shell tool in `--yolo`), the
//! google-genai Python SDK (`clients/genai_client.py`), the OpenAI and Anthropic Python SDKs
//! (`clients/chat_clients.py`, `clients/openai_embeddings.py`).
//!
//! Each client first runs against the fake upstream's Gemini API directly, which checks the
//! harness (the fake answers what these clients accept, and they send what the tests expect,
//! the same shape as the recorded `testkit/samples/gemini-cli-0.61.0-*` requests), then through
//! the data plane, where every request must also be billed exactly once.
//!
//! The Gemini CLI reaches nothing but 127.0.0.1: its `settings.json` (in a fresh `HOME`) turns
//! off auto-update, update notices, usage statistics and telemetry, and picks API-key auth; its
//! environment is only what is set here. Every client run has a deadline
//! (`client_support::CLIENT_TIMEOUT`) after which it is killed and the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_support;

use client_support::{Finished, installed, python_report, run_bounded};

use keyplane_testkit::fake_upstream::{
    GEMINI_THOUGHT_SIGNATURE, OPENAI_TOOL_CALL_ID, RecordedRequest, prompt_tokens_for,
};
use keyplane_testkit::{Behavior, FakeConfig, FakeUpstream, samples};
use serde_json::{Value, json};
use std::process::Command;

/// The key the clients present to the fake upstream directly.
const FAKE_KEY: &str = "sk-fake-direct";

/// The model the clients name when they talk to the fake directly.
const FAKE_MODEL: &str = "gemini-2.5-flash";

/// Words in each text answer of the fakes.
const WORDS: usize = 5;

/// The text answer of the fakes: [`WORDS`] words.
fn words() -> String {
    (0..WORDS).map(|i| format!("word{i} ")).collect()
}

/// A fake upstream that wants [`FAKE_KEY`] and answers [`WORDS`] words.
fn fake(name: &str) -> FakeUpstream {
    FakeUpstream::start(FakeConfig {
        name: name.to_string(),
        api_key: Some(FAKE_KEY.to_string()),
        chunks: WORDS,
        ..FakeConfig::default()
    })
}

/// The requests that asked the upstream for a completion (not a token count or a model list),
/// in order.
fn completions(fake: &FakeUpstream) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && !r.path.contains(":countTokens"))
        .collect()
}

fn body_text(r: &RecordedRequest) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Where a Gemini client is pointed: the server's root (the client adds `/v1beta/…`), a key and
/// a model.
struct Target {
    base_url: String,
    key: String,
    model: String,
}

impl Target {
    fn fake(fake: &FakeUpstream) -> Target {
        Target {
            base_url: fake.gemini_base_url(),
            key: FAKE_KEY.to_string(),
            model: FAKE_MODEL.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gemini CLI

/// The Gemini CLI's shell tool (`{"command": "..."}` runs in `bash -c`).
const GEMINI_SHELL_TOOL: &str = "run_shell_command";

/// The command the model asks the CLI to run. It prints [`MARKER_OUTPUT`], which it does not
/// contain, so a request carrying that text proves the CLI ran it and sent back what it printed.
/// (The CLI refuses `$(…)` and `$((…))` as command injection, so the output comes from a pipe.)
const MARKER_COMMAND: &str = "echo keyplane-marker | tr a-z A-Z";
const MARKER_OUTPUT: &str = "KEYPLANE-MARKER";

/// The CLI's `~/.gemini/settings.json`: API-key auth (without it, a `GOOGLE_GEMINI_BASE_URL`
/// makes 0.61.0 pick its "gateway" auth, which non-interactive mode refuses), and nothing that
/// would reach beyond 127.0.0.1.
const GEMINI_SETTINGS: &str = r#"{
  "security": { "auth": { "selectedType": "gemini-api-key" } },
  "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false },
  "privacy": { "usageStatisticsEnabled": false },
  "telemetry": { "enabled": false }
}
"#;

/// `gemini -m MODEL -p PROMPT` (with `--yolo`: tools run without asking, and the shell tool is
/// offered) with a fresh `HOME` holding [`GEMINI_SETTINGS`], in a fresh working directory,
/// until it exits (bounded).
fn run_gemini(target: &Target, prompt: &str, yolo: bool) -> Finished {
    let gemini = installed("node_modules/.bin/gemini");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let work = dir.path().join("work");
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(home.join(".gemini/settings.json"), GEMINI_SETTINGS).unwrap();
    let mut cmd = Command::new(gemini);
    cmd.args(["-m", &target.model, "-p", prompt]);
    if yolo {
        cmd.arg("--yolo");
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("GEMINI_API_KEY", &target.key)
        .env("GOOGLE_GEMINI_BASE_URL", &target.base_url)
        // Trust the fresh working directory instead of asking; no Docker sandbox for --yolo.
        .env("GEMINI_CLI_TRUST_WORKSPACE", "true")
        .env("GEMINI_SANDBOX", "false")
        .env("NO_COLOR", "1")
        .current_dir(&work);
    run_bounded(cmd, dir.path())
}

/// Scripts `upstream` to have the CLI run [`MARKER_COMMAND`] and then answer text, runs the CLI
/// against `target`, and checks what every upstream shares: the CLI exits 0 printing the text,
/// after exactly two upstream completions, of which only the second carries what the command
/// printed. Returns those two requests.
fn gemini_cli_runs_a_shell_command(
    target: &Target,
    upstream: &FakeUpstream,
) -> Vec<RecordedRequest> {
    let arguments = json!({ "command": MARKER_COMMAND }).to_string();
    upstream.push_once(Behavior::tool_call(GEMINI_SHELL_TOOL, &arguments));
    let run = run_gemini(
        target,
        &format!("Run the shell command `{MARKER_COMMAND}` and tell me what it printed."),
        true,
    );
    assert!(run.status.success(), "gemini failed; {}", run.describe());
    assert_eq!(
        run.stdout.trim(),
        words().trim(),
        "the CLI prints the upstream's text answer; {}",
        run.describe()
    );
    let requests = completions(upstream);
    assert_eq!(
        requests.len(),
        2,
        "one completion for the tool call, one after it: {:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(!body_text(&requests[0]).contains(MARKER_OUTPUT));
    assert!(
        body_text(&requests[1]).contains(MARKER_OUTPUT),
        "the second request carries what the command printed: {}",
        body_text(&requests[1])
    );
    assert!(requests.iter().all(|r| r.status == Some(200)));
    requests
}

/// The parts of `body`'s `contents` with `role`, in order.
fn parts_of(body: &Value, role: &str) -> Vec<Value> {
    body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == role)
        .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The names of the functions a Gemini request declares.
fn declared(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t["functionDeclarations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// Checks the second request of a CLI tool turn in Gemini's dialect: the model turn repeats the
/// call with the signature the upstream gave it, and a user turn answers it by id with what the
/// command printed.
fn assert_gemini_tool_turn(second: &Value) {
    let model_parts = parts_of(second, "model");
    let call = model_parts
        .iter()
        .find(|p| p.get("functionCall").is_some())
        .unwrap_or_else(|| panic!("no functionCall in the history: {second}"));
    assert_eq!(call["functionCall"]["name"], GEMINI_SHELL_TOOL);
    assert_eq!(call["functionCall"]["args"]["command"], MARKER_COMMAND);
    assert_eq!(
        call["thoughtSignature"], GEMINI_THOUGHT_SIGNATURE,
        "the signature goes back with the call"
    );
    let response = parts_of(second, "user")
        .into_iter()
        .find(|p| p.get("functionResponse").is_some())
        .unwrap_or_else(|| panic!("no functionResponse: {second}"));
    assert_eq!(response["functionResponse"]["name"], GEMINI_SHELL_TOOL);
    assert_eq!(
        response["functionResponse"]["id"],
        call["functionCall"]["id"]
    );
    assert!(
        response["functionResponse"]["response"]
            .to_string()
            .contains(MARKER_OUTPUT)
    );
}

/// The CLI against the fake's Gemini API directly: the harness works, and the CLI's requests
/// have the shape of the recorded samples the codec tests read.
#[test]
fn gemini_cli_runs_a_shell_command_against_the_fake_gemini_api() {
    let upstream = fake("fake-gemini");
    let requests = gemini_cli_runs_a_shell_command(&Target::fake(&upstream), &upstream);
    for r in &requests {
        assert_eq!(
            r.path,
            format!("/v1beta/models/{FAKE_MODEL}:streamGenerateContent?alt=sse")
        );
        assert_eq!(r.header("x-goog-api-key"), Some(FAKE_KEY));
        let body = r.json.as_ref().unwrap();
        assert!(declared(body).iter().any(|n| n == GEMINI_SHELL_TOOL));
        assert!(
            body["tools"][0]["functionDeclarations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d.get("parametersJsonSchema").is_some()),
            "declarations carry parametersJsonSchema"
        );
        assert_eq!(
            body["generationConfig"]["thinkingConfig"]["includeThoughts"],
            true
        );
    }
    assert_gemini_tool_turn(requests[1].json.as_ref().unwrap());

    // The recorded sample is still what the pinned CLI sends: the same fields, tools and turns.
    let sample: Value =
        serde_json::from_slice(samples::bytes("gemini-cli-0.61.0-tool-result-request.json"))
            .unwrap();
    let sample = &sample["body"];
    let live = requests[1].json.as_ref().unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(live), keys(sample), "top-level fields");
    // The sample's turn ran on the router's model (`gemini-3.8-flash`); some models get a tool
    // more (`write_todos` on 2.5), none fewer.
    let live_tools = declared(live);
    for name in declared(sample) {
        assert!(live_tools.contains(&name), "{name} not in {live_tools:?}");
    }
    let turns = |v: &Value| {
        v["contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let kinds: Vec<String> = c["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| keys(p).join("+"))
                    .collect();
                format!("{}:{}", c["role"], kinds.join(","))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(turns(live), turns(sample), "turns and their parts");
}

// ---------------------------------------------------------------------------------------------
// google-genai Python SDK

/// Runs `clients/genai_client.py chat` against `target` with `upstream` scripted to call the
/// function on each first turn, and returns its report after the checks every route shares.
fn genai_round_trips(target: &Target, api_version: &str, upstream: &FakeUpstream) -> Value {
    let arguments = r#"{"city":"Zurich"}"#;
    upstream.push_once(Behavior::tool_call("get_weather", arguments));
    upstream.push_once(Behavior::Normal);
    upstream.push_once(Behavior::tool_call("get_weather", arguments));
    let report = python_report(
        "genai_client.py",
        &[
            &target.base_url,
            &target.key,
            &target.model,
            api_version,
            "chat",
        ],
    );
    for mode in ["non_stream", "stream"] {
        let turns = &report[mode];
        assert_eq!(turns["call"]["name"], "get_weather", "{mode}: {turns}");
        assert_eq!(turns["call"]["args"], json!({"city": "Zurich"}), "{mode}");
        assert_eq!(
            turns["call"]["thought_signature"], GEMINI_THOUGHT_SIGNATURE,
            "{mode}: the SDK decoded the signature"
        );
        assert_eq!(turns["text"], words(), "{mode}");
        assert_eq!(turns["finish_reasons"], json!(["STOP", "STOP"]), "{mode}");
        assert_eq!(turns["usage"][1]["candidates"], WORDS, "{mode}");
    }
    assert!(report["count_tokens"].as_u64().unwrap() > 0, "{report}");
    report
}

/// The second request of each round trip answers the call: the model turn with its signature,
/// a function response naming the tool's marker.
fn assert_genai_tool_turns(requests: &[RecordedRequest]) {
    assert_eq!(requests.len(), 4, "two round trips");
    for (i, r) in requests.iter().enumerate() {
        let body = r.json.as_ref().unwrap();
        let response = parts_of(body, "user")
            .into_iter()
            .find(|p| p.get("functionResponse").is_some());
        if i % 2 == 0 {
            assert!(response.is_none(), "request {i}");
            assert_eq!(declared(body), ["get_weather"], "request {i}");
            continue;
        }
        let response = response.unwrap_or_else(|| panic!("request {i}: {body}"));
        assert!(
            response["functionResponse"]["response"]
                .to_string()
                .contains("tool-result-7")
        );
        let call = parts_of(body, "model")
            .into_iter()
            .find(|p| p.get("functionCall").is_some())
            .unwrap();
        assert_eq!(call["thoughtSignature"], GEMINI_THOUGHT_SIGNATURE);
    }
}

/// google-genai against the fake directly, at the SDK's default API version (`v1`): the
/// harness works.
#[test]
fn genai_sdk_round_trips_against_the_fake_gemini_api() {
    let upstream = fake("fake-gemini");
    let report = genai_round_trips(&Target::fake(&upstream), "default", &upstream);
    let requests = completions(&upstream);
    assert_genai_tool_turns(&requests);
    assert_eq!(
        requests[0].path,
        format!("/v1/models/{FAKE_MODEL}:generateContent")
    );
    assert_eq!(
        requests[2].path,
        format!("/v1/models/{FAKE_MODEL}:streamGenerateContent?alt=sse")
    );
    let count = upstream
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with(":countTokens"))
        .unwrap();
    assert_eq!(report["count_tokens"], prompt_tokens_for(&count.body));
    assert_eq!(
        report["non_stream"]["usage"][0]["prompt"],
        prompt_tokens_for(&requests[0].body)
    );
}

// ---------------------------------------------------------------------------------------------
// OpenAI and Anthropic SDKs with a tool (the harness, against the fake's own dialects)

/// Scripts `upstream` to call the tool on each first turn and runs `clients/chat_clients.py
/// SDK` against `base_url`; checks the report every route shares and returns it.
fn chat_sdk_round_trips(
    sdk: &str,
    base_url: &str,
    key: &str,
    model: &str,
    upstream: &FakeUpstream,
    stop_reasons: [&str; 2],
) -> Value {
    let arguments = r#"{"city":"Zurich"}"#;
    for _ in 0..2 {
        upstream.push_once(Behavior::tool_call("get_weather", arguments));
        upstream.push_once(Behavior::Normal);
    }
    let report = python_report("chat_clients.py", &[sdk, base_url, key, model]);
    for mode in ["non_stream", "stream"] {
        let turns = &report[mode];
        assert_eq!(turns["call"]["name"], "get_weather", "{mode}: {turns}");
        assert_eq!(
            turns["call"]["arguments"],
            json!({"city": "Zurich"}),
            "{mode}"
        );
        assert_eq!(turns["text"], words(), "{mode}");
        assert_eq!(turns["stop_reasons"], json!(stop_reasons), "{mode}");
        assert_eq!(turns["usage"][1]["output"], WORDS, "{mode}");
    }
    report
}

#[test]
fn chat_sdks_round_trip_a_tool_call_against_the_fake() {
    let upstream = fake("fake-chat");
    let report = chat_sdk_round_trips(
        "openai",
        &upstream.openai_base_url(),
        FAKE_KEY,
        "gpt-4o-mini",
        &upstream,
        ["tool_calls", "stop"],
    );
    assert_eq!(report["stream"]["call"]["id"], OPENAI_TOOL_CALL_ID);
    let requests = completions(&upstream);
    assert_eq!(requests.len(), 4);
    for r in requests.iter().skip(1).step_by(2) {
        let result = openai_tool_result(r.json.as_ref().unwrap()).unwrap();
        assert!(result.contains("tool-result-7"), "{result}");
    }
    let upstream = fake("fake-messages");
    chat_sdk_round_trips(
        "anthropic",
        &upstream.anthropic_base_url(),
        FAKE_KEY,
        "claude-sonnet-4-5",
        &upstream,
        ["tool_use", "end_turn"],
    );
    let requests = completions(&upstream);
    assert_eq!(requests.len(), 4);
    assert!(body_text(&requests[3]).contains("tool_result"));
}

/// The content of the `tool` message answering the fake's call in an OpenAI chat `body`.
fn openai_tool_result(body: &Value) -> Option<String> {
    body["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == OPENAI_TOOL_CALL_ID)
        .map(|m| m["content"].to_string())
}
