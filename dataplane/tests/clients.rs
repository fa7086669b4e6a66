//! Real clients as subprocesses, at the versions `clients/install` pins: the Codex CLI
//! (`codex exec` with a custom model provider on `wire_api = "responses"`) and the OpenAI Python
//! SDK's `responses.create` (`clients/openai_responses.py`).
//!
//! Each scenario runs against the fake upstream directly, which checks the harness (the fake's
//! Responses API is what these clients accept, and the requests they send are the ones the
//! tests expect), and through the data plane to an upstream of each protocol, where every
//! request must also be billed exactly once.
//!
//! Clients reach nothing but 127.0.0.1: Codex's update check, analytics, feedback, plugin and
//! app sync are off in its `config.toml`, and its environment is only what is set here. Every
//! client run has a deadline (`client_support::CLIENT_TIMEOUT`) after which it is killed and the
//! test fails. Missing clients fail the test with the command that installs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_support;
mod support;

use client_support::{Finished, clients_dir, installed, run_bounded};
use support::{Cluster, MODEL, Offer, TIMEOUT, add_offer, offer, total};

use keyplane_testkit::fake_upstream::{
    ANTHROPIC_TOOL_USE_ID, OPENAI_TOOL_CALL_ID, RecordedRequest, prompt_tokens_for,
};
use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{
    Behavior, ControlPlane, DataPlane, FakeConfig, FakeUpstream, TlsFiles, samples, wait_until,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

/// The key the clients present (to the fake upstream directly, or as a stand-in name).
const FAKE_KEY: &str = "sk-fake-direct";

/// Words in each text answer of the fakes.
const WORDS: usize = 5;

/// The text answer of the fakes: [`WORDS`] words.
fn words() -> String {
    (0..WORDS).map(|i| format!("word{i} ")).collect()
}

/// Where a client is pointed: an OpenAI-style base URL (ending in `/v1`), a key and a model.
struct Target {
    base_url: String,
    key: String,
    model: String,
    /// The CA that signed an `https` base URL's certificate (Codex: `CODEX_CA_CERTIFICATE`).
    ca: Option<PathBuf>,
}

impl Target {
    fn fake(fake: &FakeUpstream) -> Target {
        Target {
            base_url: fake.openai_base_url(),
            key: FAKE_KEY.to_string(),
            model: "gpt-5-codex".to_string(),
            ca: None,
        }
    }
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

/// The requests that asked the upstream for a completion, in order (Codex may also list models).
fn completions(fake: &FakeUpstream) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

fn body_text(r: &RecordedRequest) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Codex CLI

/// The name of Codex's shell tool (its unified exec tool: `{"cmd": "..."}` runs in a shell).
const CODEX_SHELL_TOOL: &str = "exec_command";

/// The command the model asks Codex to run. It prints [`MARKER_OUTPUT`], which it does not
/// contain, so a request carrying that text proves Codex ran it and sent back what it printed.
const MARKER_COMMAND: &str = "echo keyplane-marker-$((6*7))";
const MARKER_OUTPUT: &str = "keyplane-marker-42";

/// Codex's `config.toml` for a provider at `base_url` whose key is in `KEYPLANE_API_KEY`:
/// Responses wire API, no retries, not even of a failed connection (a failure must reach the
/// test at once), no approval prompts and no sandbox (the command is fixed and harmless), and
/// nothing that would reach beyond 127.0.0.1.
fn codex_config(target: &Target) -> String {
    format!(
        r#"model = "{model}"
model_provider = "keyplane"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
shell_snapshot = false
unbounded_connection_retries = false

[model_providers.keyplane]
name = "Keyplane"
base_url = "{base_url}"
env_key = "KEYPLANE_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 30000
"#,
        model = target.model,
        base_url = target.base_url,
    )
}

/// What a Codex run left.
struct CodexRun {
    finished: Finished,
    /// The agent's last message (`--output-last-message`).
    last_message: String,
}

/// `codex exec` with a fresh `CODEX_HOME` holding [`codex_config`] for `target`, in a fresh
/// working directory, until it exits (bounded).
fn run_codex(target: &Target, prompt: &str) -> CodexRun {
    let codex = installed("node_modules/.bin/codex");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("codex-home");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(home.join("config.toml"), codex_config(target)).unwrap();
    let last = dir.path().join("last-message.txt");
    let mut cmd = Command::new(codex);
    cmd.args([
        "exec",
        "--strict-config",
        "--skip-git-repo-check",
        "--ephemeral",
    ])
    .args(["--color", "never", "--cd"])
    .arg(&work)
    .arg("--output-last-message")
    .arg(&last)
    .arg(prompt)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("HOME", dir.path())
    .env("CODEX_HOME", &home)
    .env("KEYPLANE_API_KEY", &target.key)
    .env("NO_COLOR", "1")
    .current_dir(&work);
    if let Some(ca) = &target.ca {
        cmd.env("CODEX_CA_CERTIFICATE", ca);
    }
    let finished = run_bounded(cmd, dir.path());
    let last_message = std::fs::read_to_string(&last).unwrap_or_default();
    CodexRun {
        finished,
        last_message,
    }
}

/// Scripts `upstream` to have Codex run [`MARKER_COMMAND`] and then answer text, runs Codex
/// against `target`, and checks what every protocol shares: Codex exits 0 with the text as its
/// last message, after exactly two upstream completions, of which only the second carries what
/// the command printed. Returns those two requests.
fn codex_runs_a_shell_command(target: &Target, upstream: &FakeUpstream) -> Vec<RecordedRequest> {
    let arguments = json!({ "cmd": MARKER_COMMAND }).to_string();
    upstream.push_once(Behavior::tool_call(CODEX_SHELL_TOOL, &arguments));
    let run = run_codex(
        target,
        "Run the shell command that prints the keyplane marker and tell me what it printed.",
    );
    assert!(
        run.finished.status.success(),
        "codex failed; {}",
        run.finished.describe()
    );
    assert_eq!(
        run.last_message.trim(),
        words().trim(),
        "codex's last message is the upstream's text answer; {}",
        run.finished.describe()
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

/// Codex against the fake's `/v1/responses` directly: the harness works, and Codex's requests
/// have the shape the gateway's Responses codec must accept (the same shape as
/// `testkit/samples/codex-responses-request.json`).
#[test]
fn codex_runs_a_shell_command_against_the_fake_responses_api() {
    let upstream = fake("fake-responses");
    let requests = codex_runs_a_shell_command(&Target::fake(&upstream), &upstream);
    for r in &requests {
        assert_eq!(r.path, "/v1/responses");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {FAKE_KEY}").as_str())
        );
        let body = r.json.as_ref().unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["store"], false);
        assert_eq!(body["include"], json!(["reasoning.encrypted_content"]));
        assert!(body.get("instructions").is_none(), "no instructions field");
        assert!(body["reasoning"].get("summary").is_some());
        let tools = body["tools"].as_array().unwrap();
        let kinds: Vec<&str> = tools.iter().filter_map(|t| t["type"].as_str()).collect();
        assert!(kinds.contains(&"web_search"), "tool types {kinds:?}");
        assert!(kinds.contains(&"namespace"), "tool types {kinds:?}");
        assert!(
            tools.iter().any(|t| t["name"] == CODEX_SHELL_TOOL),
            "the shell tool is offered"
        );
        // The system prompt comes as developer messages.
        assert_eq!(body["input"][0]["role"], "developer");
    }
    // The second request carries the call and its output as input items.
    let input = requests[1].json.as_ref().unwrap()["input"]
        .as_array()
        .unwrap()
        .clone();
    let call = input
        .iter()
        .find(|i| i["type"] == "function_call")
        .expect("the function_call item");
    assert_eq!(call["call_id"], OPENAI_TOOL_CALL_ID);
    assert_eq!(call["name"], CODEX_SHELL_TOOL);
    let output = input
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .expect("the function_call_output item");
    assert_eq!(output["call_id"], OPENAI_TOOL_CALL_ID);
    assert!(output["output"].to_string().contains(MARKER_OUTPUT));

    // The recorded sample the codec tests read is still what the pinned Codex sends: the same
    // fields, input item types and roles, and tools.
    let sample: Value =
        serde_json::from_slice(samples::bytes("codex-responses-request.json")).unwrap();
    let live = requests[1].json.as_ref().unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(live), keys(&sample), "top-level fields");
    let items = |v: &Value| {
        v["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| format!("{}/{}", i["type"], i["role"]))
            .collect::<Vec<_>>()
    };
    assert_eq!(items(live), items(&sample), "input items");
    let tools = |v: &Value| {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("{}/{}", t["type"], t["name"]))
            .collect::<Vec<_>>()
    };
    assert_eq!(tools(live), tools(&sample), "tools");
    for field in [
        "include",
        "reasoning",
        "store",
        "tool_choice",
        "parallel_tool_calls",
    ] {
        assert_eq!(live[field], sample[field], "{field}");
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI Python SDK

/// Runs `clients/openai_responses.py` against `target` with `upstream` scripted to call the
/// tool on each first turn, and returns its JSON report after the checks every protocol
/// shares: both turns of non-stream and stream, the call seen as sent, the tool's output and
/// the text answer.
fn sdk_round_trips(target: &Target, upstream: &FakeUpstream) -> Value {
    let python = installed(".venv/bin/python");
    let script = clients_dir().join("openai_responses.py");
    let arguments = r#"{"city":"Zurich"}"#;
    // Non-stream: tool call, then text; stream: the same.
    upstream.push_once(Behavior::tool_call("get_weather", arguments));
    upstream.push_once(Behavior::Normal);
    upstream.push_once(Behavior::tool_call("get_weather", arguments));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .args([&target.base_url, &target.key, &target.model])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path());
    let finished = run_bounded(cmd, dir.path());
    assert!(
        finished.status.success(),
        "the SDK script failed; {}",
        finished.describe()
    );
    let report: Value = serde_json::from_str(finished.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the script's report is not JSON ({e}); {}",
            finished.describe()
        )
    });
    for mode in ["non_stream", "stream"] {
        let turns = &report[mode];
        assert_eq!(turns["call"]["name"], "get_weather", "{mode}: {turns}");
        assert_eq!(turns["call"]["arguments"], arguments, "{mode}");
        assert_eq!(turns["call"]["status"], "completed", "{mode}");
        assert_eq!(turns["text"], words(), "{mode}");
        assert_eq!(
            turns["statuses"],
            json!(["completed", "completed"]),
            "{mode}"
        );
        for usage in turns["usage"].as_array().unwrap() {
            assert_eq!(
                usage["total_tokens"].as_u64().unwrap(),
                usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap(),
                "{mode}: {usage}"
            );
        }
        assert_eq!(turns["usage"][1]["output_tokens"], WORDS as u64, "{mode}");
    }
    let stream = &report["stream"];
    assert_eq!(stream["sequence_numbers_ok"], true);
    for turn in stream["events"].as_array().unwrap() {
        let kinds: Vec<&str> = turn
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    }
    let first_turn: Vec<&Value> = stream["events"][0].as_array().unwrap().iter().collect();
    assert!(
        first_turn
            .iter()
            .any(|k| *k == "response.function_call_arguments.delta"),
        "the call's arguments were streamed: {first_turn:?}"
    );
    let requests = completions(upstream);
    assert_eq!(requests.len(), 4, "two turns, non-stream and stream");
    let tool_output = report["non_stream"]["tool_output"].as_str().unwrap();
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r.status, Some(200));
        // The tool's output goes up in each second turn, and only there.
        let text = body_text(r);
        assert_eq!(
            text.contains("tool-result-7"),
            i % 2 == 1,
            "request {i}: {text}"
        );
    }
    assert!(tool_output.contains("Zurich"));
    report
}

/// The SDK against the fake's `/v1/responses` directly: the harness works, and the SDK reads
/// the fake's response objects and stream events as OpenAI's.
#[test]
fn openai_sdk_responses_round_trip_against_the_fake_responses_api() {
    let upstream = fake("fake-responses");
    let report = sdk_round_trips(&Target::fake(&upstream), &upstream);
    let requests = completions(&upstream);
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r.path, "/v1/responses");
        let body = r.json.as_ref().unwrap();
        assert_eq!(body["stream"].as_bool().unwrap_or(false), i >= 2);
        assert_eq!(body["tools"][0]["name"], "get_weather");
    }
    let second = requests[1].json.as_ref().unwrap();
    let output = second["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .unwrap();
    assert_eq!(output["call_id"], OPENAI_TOOL_CALL_ID);
    assert_eq!(output["output"], report["non_stream"]["tool_output"]);
    assert_eq!(report["non_stream"]["call"]["call_id"], OPENAI_TOOL_CALL_ID);
}

// ---------------------------------------------------------------------------------------------
// Through the data plane, to an upstream of each protocol

/// A cluster whose one upstream speaks `protocol` (`openai`, `anthropic`, `openai-responses`)
/// and answers [`WORDS`] words.
fn gateway(protocol: &str) -> Cluster {
    let name = format!("up-{protocol}");
    let offer = Offer {
        protocol,
        ..offer(&name, "1", "2")
    };
    Cluster::start_with(&[offer], &[], |config| config.chunks = WORDS)
}

/// The data plane as a client sees it: its `/v1`, the cluster's key, [`MODEL`].
fn through(c: &Cluster) -> Target {
    Target {
        base_url: format!("http://{}/v1", c.dp.addr),
        key: c.key.clone(),
        model: MODEL.to_string(),
        ca: None,
    }
}

/// The path an upstream of `protocol` is asked for completions on.
fn completion_path(protocol: &str) -> &'static str {
    match protocol {
        "openai" => "/v1/chat/completions",
        "anthropic" => "/v1/messages",
        _ => "/v1/responses",
    }
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

/// The result of the upstream's tool call in a request `body` of `protocol`, as text: a `tool`
/// message (chat), a `tool_result` block (Anthropic) or a `function_call_output` item
/// (Responses) answering the fake's call id.
fn tool_result(protocol: &str, body: &Value) -> Option<String> {
    let found = match protocol {
        "openai" => body["messages"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == OPENAI_TOOL_CALL_ID)
            .map(|m| m["content"].clone()),
        "anthropic" => body["messages"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "user")
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == ANTHROPIC_TOOL_USE_ID)
            .map(|b| b["content"].clone()),
        _ => body["input"]
            .as_array()?
            .iter()
            .find(|i| i["type"] == "function_call_output" && i["call_id"] == OPENAI_TOOL_CALL_ID)
            .map(|i| i["output"].clone()),
    };
    found.map(|v| v.to_string())
}

/// Codex through the data plane to a `protocol` upstream: the command runs, its output goes up
/// in the next request as a tool result in the upstream's own dialect, and both requests are
/// billed once.
fn codex_through_the_gateway(protocol: &str) {
    let c = gateway(protocol);
    let upstream = &c.fakes[0];
    let requests = codex_runs_a_shell_command(&through(&c), upstream);
    let second = requests[1].json.as_ref().unwrap();
    let result = tool_result(protocol, second)
        .unwrap_or_else(|| panic!("no result of the fake's call in {second}"));
    assert!(result.contains(MARKER_OUTPUT), "{result}");
    for r in &requests {
        assert_eq!(r.path, completion_path(protocol), "{}", c.dp.logs());
        let tools = r.json.as_ref().unwrap()["tools"].to_string();
        assert!(
            tools.contains(CODEX_SHELL_TOOL),
            "the shell tool reaches the upstream: {tools}"
        );
    }
    // Tool call: one output token per argument fragment (4); then the text.
    assert_billed_once(&c, &requests, 4 + WORDS as u64);
}

#[test]
fn codex_runs_a_shell_command_through_an_openai_responses_upstream() {
    codex_through_the_gateway("openai-responses");
}

/// The SDK's round trips through the data plane to a `protocol` upstream, each of the four
/// requests billed once.
fn sdk_through_the_gateway(protocol: &str) {
    let c = gateway(protocol);
    let upstream = &c.fakes[0];
    let report = sdk_round_trips(&through(&c), upstream);
    let requests = completions(upstream);
    for (i, r) in requests.iter().enumerate() {
        let result = tool_result(protocol, r.json.as_ref().unwrap());
        if i % 2 == 1 {
            let output = report["stream"]["tool_output"].as_str().unwrap();
            assert_eq!(
                result.as_deref(),
                Some(Value::from(output).to_string().as_str()),
                "request {i}"
            );
        } else {
            assert_eq!(result, None, "request {i}");
        }
    }
    assert!(
        requests.iter().all(|r| r.path == completion_path(protocol)),
        "{}",
        c.dp.logs()
    );
    // Two tool calls of 4 argument fragments, two text answers.
    assert_billed_once(&c, &requests, 2 * 4 + 2 * WORDS as u64);
}

#[test]
fn openai_sdk_responses_round_trip_through_an_openai_responses_upstream() {
    sdk_through_the_gateway("openai-responses");
}

#[test]
fn codex_runs_a_shell_command_through_an_openai_chat_upstream() {
    codex_through_the_gateway("openai");
}

#[test]
fn codex_runs_a_shell_command_through_an_anthropic_upstream() {
    codex_through_the_gateway("anthropic");
}

#[test]
fn openai_sdk_responses_round_trip_through_an_openai_chat_upstream() {
    sdk_through_the_gateway("openai");
}

#[test]
fn openai_sdk_responses_round_trip_through_an_anthropic_upstream() {
    sdk_through_the_gateway("anthropic");
}

/// Codex to a data plane serving HTTPS with a private CA, given to Codex in
/// `CODEX_CA_CERTIFICATE`: the setup of a deployment whose certificate is not in the web roots.
#[test]
fn codex_reaches_an_https_data_plane_whose_ca_is_in_codex_ca_certificate() {
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
        protocol: "openai-responses",
        ..offer(name, "1", "2")
    };
    add_offer(&cp, &offer, &upstream.openai_base_url());
    let key = cp.ctl(&["--json", "key", "create", "codex"]).ok().json()["key"]
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
        base_url: format!("{}/v1", dp.url()),
        key,
        model: MODEL.to_string(),
        ca: Some(certs.ca.clone()),
    };
    assert!(target.base_url.starts_with("https://127.0.0.1:"));
    let requests = codex_runs_a_shell_command(&target, &upstream);
    assert!(requests.iter().all(|r| r.path == "/v1/responses"));
}
