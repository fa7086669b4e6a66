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
//! environment is only what is set here (traced once with `strace -f -e trace=connect` during a
//! tool turn: its only connection was to 127.0.0.1). Every client run has a deadline
//! (`client_support::CLIENT_TIMEOUT`) after which it is killed and the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_support;
mod support;

use client_support::{Finished, installed, python_report, run_bounded};
use support::{Cluster, MODEL, Offer, TIMEOUT, add_offer, offer, total};

use keyplane_testkit::fake_upstream::{
    ANTHROPIC_TOOL_USE_ID, EMBEDDING_DIMENSIONS, GEMINI_THOUGHT_SIGNATURE, OPENAI_TOOL_CALL_ID,
    RecordedRequest, embedding, prompt_tokens_for,
};
use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{
    Behavior, ControlPlane, DataPlane, FakeConfig, FakeUpstream, TlsFiles, samples, wait_until,
};
use serde_json::{Value, json};
use std::path::PathBuf;
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
    /// The CA that signed an `https` base URL's certificate (the CLI: `NODE_EXTRA_CA_CERTS`).
    ca: Option<PathBuf>,
}

impl Target {
    fn fake(fake: &FakeUpstream) -> Target {
        Target {
            base_url: fake.gemini_base_url(),
            key: FAKE_KEY.to_string(),
            model: FAKE_MODEL.to_string(),
            ca: None,
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
    if let Some(ca) = &target.ca {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
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

// ---------------------------------------------------------------------------------------------
// Through the data plane

/// A cluster whose one upstream speaks `protocol` (`gemini`, `openai`, …) and answers [`WORDS`]
/// words.
fn gateway(protocol: &str) -> Cluster {
    let name = format!("up-{protocol}");
    let offer = Offer {
        protocol,
        ..offer(&name, "1", "2")
    };
    Cluster::start_with(&[offer], &[], |config| config.chunks = WORDS)
}

/// The data plane as a Gemini client sees it: its root, the cluster's key, [`MODEL`] (whose
/// `/` the clients put in the path as is: `/v1beta/models/test/model:generateContent`).
fn through(c: &Cluster) -> Target {
    Target {
        base_url: format!("http://{}", c.dp.addr),
        key: c.key.clone(),
        model: MODEL.to_string(),
        ca: None,
    }
}

/// The upstream model id every offer of the cluster maps [`MODEL`] to.
fn upstream_model(c: &Cluster) -> String {
    format!("{}-model", c.fakes[0].name())
}

/// Asserts the ledger bills exactly the completions the upstream served: one record each, with
/// the input tokens the fake reported for their bodies and `output_tokens` in all; and that
/// nothing is billed a second time once the spool is empty.
fn assert_billed_once(c: &Cluster, requests: &[RecordedRequest], output_tokens: u64) {
    let n = requests.len() as u64;
    let rows = c.wait_usage(n);
    let input: u64 = requests.iter().map(|r| prompt_tokens_for(&r.body)).sum();
    assert_eq!(total(&rows, "input_tokens"), input, "{rows:?}");
    assert_eq!(total(&rows, "output_tokens"), output_tokens, "{rows:?}");
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), n, "each request billed once");
}

/// The content of the `tool` message answering the fake's call in an OpenAI chat `body`.
fn openai_tool_result(body: &Value) -> Option<String> {
    body["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == OPENAI_TOOL_CALL_ID)
        .map(|m| m["content"].to_string())
}

/// The Gemini CLI through the data plane to a Gemini upstream: the stream passes through, the
/// call's signature comes back with the history, the command's output goes up, and both
/// requests are billed once.
#[test]
fn gemini_cli_runs_a_shell_command_through_a_gemini_upstream() {
    let c = gateway("gemini");
    let upstream = &c.fakes[0];
    let requests = gemini_cli_runs_a_shell_command(&through(&c), upstream);
    for r in &requests {
        assert_eq!(
            r.path,
            format!(
                "/v1beta/models/{}:streamGenerateContent?alt=sse",
                upstream_model(&c)
            ),
            "{}",
            c.dp.logs()
        );
        assert_eq!(
            r.header("x-goog-api-key"),
            Some(format!("sk-{}", upstream.name()).as_str()),
            "the upstream's own key, not the client's"
        );
        assert!(
            declared(r.json.as_ref().unwrap())
                .iter()
                .any(|n| n == GEMINI_SHELL_TOOL)
        );
    }
    assert_gemini_tool_turn(requests[1].json.as_ref().unwrap());
    // Tool call: one candidate token per argument fragment (4); then the text.
    assert_billed_once(&c, &requests, 4 + WORDS as u64);
}

/// The Gemini CLI through the data plane to an OpenAI chat upstream: its request is translated,
/// the tool call comes back as a `functionCall` the CLI runs, its output goes up as a `tool`
/// message answering the upstream's call id, and both requests are billed once.
#[test]
fn gemini_cli_runs_a_shell_command_through_an_openai_chat_upstream() {
    let c = gateway("openai");
    let upstream = &c.fakes[0];
    let requests = gemini_cli_runs_a_shell_command(&through(&c), upstream);
    for r in &requests {
        assert_eq!(r.path, "/v1/chat/completions", "{}", c.dp.logs());
        let body = r.json.as_ref().unwrap();
        assert_eq!(body["stream"], true);
        assert!(
            body["tools"].to_string().contains(GEMINI_SHELL_TOOL),
            "the shell tool reaches the upstream: {}",
            body["tools"]
        );
    }
    let second = requests[1].json.as_ref().unwrap();
    let result = openai_tool_result(second)
        .unwrap_or_else(|| panic!("no result of the fake's call in {second}"));
    assert!(result.contains(MARKER_OUTPUT), "{result}");
    assert_billed_once(&c, &requests, 4 + WORDS as u64);
}

/// The Gemini CLI through the data plane to an Anthropic upstream: the call comes back as a
/// `functionCall`, and the command's output goes up as a `tool_result` block answering the
/// upstream's `tool_use` id; both requests billed once.
#[test]
fn gemini_cli_runs_a_shell_command_through_an_anthropic_upstream() {
    let c = gateway("anthropic");
    let upstream = &c.fakes[0];
    let requests = gemini_cli_runs_a_shell_command(&through(&c), upstream);
    for r in &requests {
        assert_eq!(r.path, "/v1/messages", "{}", c.dp.logs());
        let tools = r.json.as_ref().unwrap()["tools"].to_string();
        assert!(tools.contains(GEMINI_SHELL_TOOL), "{tools}");
    }
    let second = requests[1].json.as_ref().unwrap();
    let result = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == ANTHROPIC_TOOL_USE_ID)
        .unwrap_or_else(|| panic!("no tool_result for the fake's tool_use in {second}"));
    assert!(
        result["content"].to_string().contains(MARKER_OUTPUT),
        "{result}"
    );
    assert_billed_once(&c, &requests, 4 + WORDS as u64);
}

/// The Gemini CLI through the data plane to an OpenAI Responses upstream: the command's output
/// goes up as a `function_call_output` item answering the upstream's call id; both requests
/// billed once.
#[test]
fn gemini_cli_runs_a_shell_command_through_an_openai_responses_upstream() {
    let c = gateway("openai-responses");
    let upstream = &c.fakes[0];
    let requests = gemini_cli_runs_a_shell_command(&through(&c), upstream);
    for r in &requests {
        assert_eq!(r.path, "/v1/responses", "{}", c.dp.logs());
    }
    let second = requests[1].json.as_ref().unwrap();
    let output = second["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call_output" && i["call_id"] == OPENAI_TOOL_CALL_ID)
        .unwrap_or_else(|| panic!("no output for the fake's call in {second}"));
    assert!(
        output["output"].to_string().contains(MARKER_OUTPUT),
        "{output}"
    );
    assert_billed_once(&c, &requests, 4 + WORDS as u64);
}

/// google-genai through the data plane to a Gemini upstream, at the SDK's default API version
/// (`v1`): both round trips and a token count; each completion billed once.
#[test]
fn genai_sdk_round_trips_through_a_gemini_upstream() {
    let c = gateway("gemini");
    let upstream = &c.fakes[0];
    genai_round_trips(&through(&c), "default", upstream);
    let requests = completions(upstream);
    assert_genai_tool_turns(&requests);
    let model = upstream_model(&c);
    assert_eq!(
        requests[0].path,
        format!("/v1beta/models/{model}:generateContent")
    );
    assert_eq!(
        requests[2].path,
        format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
    );
    // Two calls of 4 argument fragments, two text answers.
    assert_billed_once(&c, &requests, 2 * 4 + 2 * WORDS as u64);
}

/// Runs `clients/chat_clients.py SDK` against the data plane with its Gemini upstream scripted
/// to call the tool on each first turn; checks that each second request answers the call with
/// the tool's output as a Gemini `functionResponse`; each request billed once.
fn chat_sdk_through_a_gemini_upstream(sdk: &str, base_url: &str, stop_reasons: [&str; 2]) {
    let c = gateway("gemini");
    let upstream = &c.fakes[0];
    chat_sdk_round_trips(
        sdk,
        &format!("http://{}{base_url}", c.dp.addr),
        &c.key,
        MODEL,
        upstream,
        stop_reasons,
    );
    let requests = completions(upstream);
    assert_eq!(requests.len(), 4);
    let model = upstream_model(&c);
    for (i, r) in requests.iter().enumerate() {
        let verb = if i < 2 {
            "generateContent"
        } else {
            "streamGenerateContent?alt=sse"
        };
        assert_eq!(
            r.path,
            format!("/v1beta/models/{model}:{verb}"),
            "{}",
            c.dp.logs()
        );
        let body = r.json.as_ref().unwrap();
        assert_eq!(declared(body), ["get_weather"], "request {i}");
        let response = parts_of(body, "user")
            .into_iter()
            .find(|p| p.get("functionResponse").is_some());
        if i % 2 == 0 {
            assert!(response.is_none(), "request {i}");
            continue;
        }
        let response = response.unwrap_or_else(|| panic!("request {i}: {body}"));
        assert_eq!(response["functionResponse"]["name"], "get_weather");
        assert!(
            response["functionResponse"]
                .to_string()
                .contains("tool-result-7"),
            "request {i}: {response}"
        );
        let call = parts_of(body, "model")
            .into_iter()
            .find(|p| p.get("functionCall").is_some())
            .unwrap_or_else(|| panic!("request {i}: no functionCall in {body}"));
        assert_eq!(call["functionCall"]["args"], json!({"city": "Zurich"}));
    }
    assert_billed_once(&c, &requests, 2 * 4 + 2 * WORDS as u64);
}

/// The OpenAI SDK's chat completions, stream and not, with a tool call each way, served by a
/// Gemini upstream.
#[test]
fn openai_sdk_chat_round_trips_through_a_gemini_upstream() {
    chat_sdk_through_a_gemini_upstream("openai", "/v1", ["tool_calls", "stop"]);
}

/// The Anthropic SDK's messages, stream and not, with a tool call each way, served by a Gemini
/// upstream.
#[test]
fn anthropic_sdk_messages_round_trip_through_a_gemini_upstream() {
    chat_sdk_through_a_gemini_upstream("anthropic", "", ["tool_use", "end_turn"]);
}

/// The Gemini CLI to a data plane serving HTTPS with a private CA, given to Node in
/// `NODE_EXTRA_CA_CERTS`: the setup of a deployment whose certificate is not in the web roots.
#[test]
fn gemini_cli_reaches_an_https_data_plane_whose_ca_is_in_node_extra_ca_certs() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = TlsFiles::generate(&tmp.path().join("certs"));
    let cp = ControlPlane::start();
    let name = "up-https";
    let upstream = FakeUpstream::start(FakeConfig {
        name: name.to_string(),
        api_key: Some(format!("sk-{name}")),
        chunks: WORDS,
        ..FakeConfig::default()
    });
    let offer = Offer {
        protocol: "gemini",
        ..offer(name, "1", "2")
    };
    add_offer(&cp, &offer, &upstream.gemini_base_url());
    let key = cp.ctl(&["--json", "key", "create", "gemini"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = DataPlane::start_https(
        &cp,
        "edge-https",
        &certs.node_cert,
        &certs.node_key,
        &certs.ca,
        &[],
    );
    assert!(
        wait_until(TIMEOUT, || {
            HttpRequest::get("/v1/models")
                .bearer(&key)
                .send_tls(dp.addr, &certs.ca, TIMEOUT)
                .is_ok_and(|r| r.status == 200)
        }),
        "the data plane never served the key over HTTPS; its log:\n{}",
        dp.logs()
    );
    let target = Target {
        base_url: dp.url(),
        key,
        model: MODEL.to_string(),
        ca: Some(certs.ca.clone()),
    };
    assert!(target.base_url.starts_with("https://127.0.0.1:"));
    let run = run_gemini(&target, "Say hello", false);
    assert!(run.status.success(), "gemini failed; {}", run.describe());
    assert_eq!(run.stdout.trim(), words().trim(), "{}", run.describe());
    assert_eq!(completions(&upstream).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// The fake's vectors of "hello" and "world" at its default dimensions, as JSON.
fn hello_world_vectors() -> Value {
    let v = |t: &str| embedding(t, EMBEDDING_DIMENSIONS);
    json!([v("hello"), v("world")])
}

/// The OpenAI SDK's `embeddings.create` through the data plane to a `protocol` upstream: the
/// vectors arrive as floats, as the SDK's default base64 (decoded by the SDK) and as raw base64
/// strings, all equal to what the upstream computed; each of the three requests billed once.
fn openai_sdk_embeds_through(protocol: &str, upstream_path: &str) {
    let c = gateway(protocol);
    let upstream = &c.fakes[0];
    let report = python_report(
        "openai_embeddings.py",
        &[&format!("http://{}/v1", c.dp.addr), &c.key, MODEL],
    );
    let expected = hello_world_vectors();
    assert_eq!(report["float"], expected, "{report}");
    assert_eq!(report["default"], expected, "{report}");
    assert_eq!(report["base64_decoded"], expected, "{report}");
    assert!(report["base64"][0].is_string());
    assert!(report["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let requests = completions(upstream);
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert!(
            r.path.ends_with(upstream_path),
            "{} {}",
            r.path,
            c.dp.logs()
        );
    }
    c.wait_usage(3);
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), 3, "each request billed once");
}

#[test]
fn openai_sdk_embeddings_through_a_gemini_upstream() {
    openai_sdk_embeds_through("gemini", ":batchEmbedContents");
}

#[test]
fn openai_sdk_embeddings_through_an_openai_upstream() {
    openai_sdk_embeds_through("openai", "/v1/embeddings");
}

/// google-genai's `embed_content` of two texts through the data plane to a `protocol`
/// upstream: the vectors are the upstream's; the request is billed once.
fn genai_sdk_embeds_through(protocol: &str, upstream_path: &str) {
    let c = gateway(protocol);
    let upstream = &c.fakes[0];
    let target = through(&c);
    let report = python_report(
        "genai_client.py",
        &[&target.base_url, &target.key, MODEL, "default", "embed"],
    );
    assert_eq!(report["embeddings"], hello_world_vectors(), "{report}");
    let requests = completions(upstream);
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].path.ends_with(upstream_path),
        "{} {}",
        requests[0].path,
        c.dp.logs()
    );
    c.wait_usage(1);
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), 1, "billed once");
}

#[test]
fn genai_sdk_embed_content_through_a_gemini_upstream() {
    genai_sdk_embeds_through("gemini", ":batchEmbedContents");
}

#[test]
fn genai_sdk_embed_content_through_an_openai_upstream() {
    genai_sdk_embeds_through("openai", "/v1/embeddings");
}
