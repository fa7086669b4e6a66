//! The fake upstream over loopback, driven by a real HTTP client (hyper-util's legacy client)
//! and, where a test needs to control the socket itself, by raw TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyplane_testkit::fake_upstream::{
    GEMINI_THOUGHT_SIGNATURE, GeminiAnswer, OPENAI_TOOL_CALL_ID, prompt_tokens_for,
};
use keyplane_testkit::{Behavior, FakeConfig, FakeUpstream, wait_until};
use serde_json::{Value, json};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Upper bound for any one exchange; a test never waits longer on the network.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on a fresh current-thread runtime, failing the test after [`TIMEOUT`].
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(TIMEOUT, f)
                .await
                .expect("test exchange timed out")
        })
}

/// A response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    /// Body frames in arrival order.
    frames: Vec<Bytes>,
    /// Whether the body ended in an error (connection cut) instead of a clean end.
    aborted: bool,
}

/// One SSE block: `event:` name, `data:` payload and `:` comment, whichever are present.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sse {
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data line")).expect("data is JSON")
    }
}

impl Reply {
    fn text(&self) -> String {
        let bytes: Vec<u8> = self.frames.iter().flat_map(|f| f.to_vec()).collect();
        String::from_utf8(bytes).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text()).expect("JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body split into SSE blocks.
    fn sse(&self) -> Vec<Sse> {
        parse_sse(&self.text())
    }
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut sse = Sse {
                event: None,
                data: None,
                comment: None,
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    sse.event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    sse.data = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix(": ") {
                    sse.comment = Some(v.to_string());
                } else {
                    panic!("unexpected SSE line {line:?} in {text:?}");
                }
            }
            sse
        })
        .collect()
}

fn client(http2: bool) -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

/// Sends one request and reads the whole response, frame by frame.
async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    send_with(&client(false), method, url, headers, body).await
}

async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    let mut aborted = false;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
            Some(Err(_)) => {
                aborted = true;
                break;
            }
        }
    }
    Reply {
        status,
        headers,
        frames,
        aborted,
    }
}

/// `POST /v1/chat/completions` with a Bearer key.
async fn openai_chat(fake: &FakeUpstream, key: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {key}");
    send(
        Method::POST,
        &format!("{}/chat/completions", fake.openai_base_url()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

/// `POST /v1/messages?beta=true` with `x-api-key` and `anthropic-version`.
async fn anthropic_messages(fake: &FakeUpstream, key: &str, body: &Value) -> Reply {
    send(
        Method::POST,
        &format!("{}/v1/messages?beta=true", fake.anthropic_base_url()),
        &[
            ("x-api-key", key),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

fn config(chunks: usize) -> FakeConfig {
    FakeConfig {
        name: "fake-a".to_string(),
        api_key: Some("sk-test".to_string()),
        chunks,
        ..FakeConfig::default()
    }
}

fn openai_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

fn words(n: usize) -> String {
    (0..n).map(|i| format!("word{i} ")).collect()
}

#[test]
fn openai_non_stream_has_the_sample_shape_and_usage() {
    let fake = FakeUpstream::start(config(5));
    let body = openai_body(false);
    let reply = block_on(openai_chat(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-fake-upstream"), Some("fake-a"));
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], words(5));
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(prompt, body.to_string().len() as u64 / 4);
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], prompt + 5);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    // max_completion_tokens below the chunk count: fewer words, finish "length".
    let mut limited = openai_body(false);
    limited["max_completion_tokens"] = json!(2);
    let v = block_on(openai_chat(&fake, "sk-test", &limited)).json();
    assert_eq!(v["choices"][0]["message"]["content"], words(2));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[test]
fn openai_stream_events_come_in_order_and_end_with_done() {
    let fake = FakeUpstream::start(config(4));
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(true)));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("x-fake-upstream"), Some("fake-a"));
    assert!(!reply.aborted);
    let events = reply.sse();
    // role, 4 content, finish, [DONE]; no usage chunk without include_usage.
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events.last().unwrap().data.as_deref(), Some("[DONE]"));
    let chunks: Vec<Value> = events[..6].iter().map(Sse::json).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["usage"], Value::Null, "every chunk carries usage:null");
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    for (i, c) in chunks[1..5].iter().enumerate() {
        assert_eq!(
            c["choices"][0]["delta"],
            json!({"content": format!("word{i} ")})
        );
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
}

#[test]
fn openai_stream_usage_chunk_only_when_asked() {
    let fake = FakeUpstream::start(config(4));
    let mut body = openai_body(true);
    body["stream_options"] = json!({"include_usage": true});
    body["max_tokens"] = json!(3);
    let reply = block_on(openai_chat(&fake, "sk-test", &body));
    let events = reply.sse();
    // role, 3 content, finish(length), usage, [DONE].
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events[4].json()["choices"][0]["finish_reason"], "length");
    let usage_chunk = events[5].json();
    assert_eq!(usage_chunk["choices"], json!([]));
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], prompt);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    assert_eq!(usage_chunk["usage"]["total_tokens"], prompt + 3);
    assert_eq!(events[6].data.as_deref(), Some("[DONE]"));

    // include_usage:false is the same as absent.
    body["stream_options"] = json!({"include_usage": false});
    let events = block_on(openai_chat(&fake, "sk-test", &body)).sse();
    assert_eq!(events.len(), 6);
    assert!(events[..5].iter().all(|e| e.json()["usage"].is_null()));
}

#[test]
fn stream_events_are_separate_frames_sent_as_produced() {
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 3,
        chunk_delay: Duration::from_millis(30),
        ..FakeConfig::default()
    });
    let started = Instant::now();
    let reply = block_on(openai_chat(&fake, "", &openai_body(true)));
    // role, 3 content, finish, [DONE] = 6 events, 5 pauses.
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        reply.frames.len(),
        6,
        "one frame per event: {:?}",
        reply.frames
    );
    for frame in &reply.frames {
        assert_eq!(parse_sse(std::str::from_utf8(frame).unwrap()).len(), 1);
    }
}

#[test]
fn anthropic_stream_events_come_in_anthropic_order() {
    let fake = FakeUpstream::start(config(3));
    let body = anthropic_body(true);
    let reply = block_on(anthropic_messages(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("x-fake-upstream"), Some("fake-a"));
    let events = reply.sse();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for e in &events {
        assert_eq!(e.json()["type"].as_str(), e.event.as_deref());
    }
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    let start = events[0].json();
    assert_eq!(start["message"]["model"], "claude-sonnet-4-5");
    assert_eq!(start["message"]["usage"]["input_tokens"], prompt);
    for (i, e) in events[3..6].iter().enumerate() {
        assert_eq!(
            e.json()["delta"],
            json!({"type": "text_delta", "text": format!("word{i} ")})
        );
    }
    let delta = events[7].json();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3);
    assert_eq!(fake.requests()[0].path, "/v1/messages?beta=true");
}

#[test]
fn anthropic_non_stream_count_tokens_and_models() {
    let fake = FakeUpstream::start(config(4));
    let mut body = anthropic_body(false);
    body["max_tokens"] = json!(2);
    let reply = block_on(anthropic_messages(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let v = reply.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["content"], json!([{"type": "text", "text": words(2)}]));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(
        v["usage"]["input_tokens"],
        prompt_tokens_for(body.to_string().as_bytes())
    );
    assert_eq!(v["usage"]["output_tokens"], 2);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 0);

    let count_body = json!({"model": "claude-sonnet-4-5", "messages": []}).to_string();
    let reply = block_on(send(
        Method::POST,
        &format!("{}/v1/messages/count_tokens", fake.anthropic_base_url()),
        &[
            ("x-api-key", "sk-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        &count_body,
    ));
    assert_eq!(
        reply.json(),
        json!({"input_tokens": prompt_tokens_for(count_body.as_bytes())})
    );

    let models_url = format!("{}/v1/models", fake.anthropic_base_url());
    let anthropic = block_on(send(
        Method::GET,
        &models_url,
        &[
            ("x-api-key", "sk-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        "",
    ))
    .json();
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["data"][0]["type"], "model");
    let openai = block_on(send(
        Method::GET,
        &models_url,
        &[("authorization", "Bearer sk-test")],
        "",
    ))
    .json();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["data"][0]["object"], "model");
    assert_eq!(openai["data"][0]["owned_by"], "fake-a");
}

#[test]
fn wrong_or_missing_key_is_401_in_each_protocol_shape() {
    let fake = FakeUpstream::start(config(2));
    let reply = block_on(openai_chat(&fake, "sk-wrong", &openai_body(false)));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("x-fake-upstream"), Some("fake-a"));
    let v = reply.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"].as_object().unwrap().contains_key("param"));

    // The OpenAI endpoint does not take x-api-key.
    let reply = block_on(send(
        Method::POST,
        &format!("{}/chat/completions", fake.openai_base_url()),
        &[("x-api-key", "sk-test")],
        &openai_body(false).to_string(),
    ));
    assert_eq!(reply.status, 401);

    let reply = block_on(anthropic_messages(
        &fake,
        "sk-wrong",
        &anthropic_body(false),
    ));
    assert_eq!(reply.status, 401);
    let v = reply.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["request_id"].is_string());

    // Anthropic also accepts Bearer.
    let reply = block_on(send(
        Method::POST,
        &format!("{}/v1/messages", fake.anthropic_base_url()),
        &[
            ("authorization", "Bearer sk-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        &anthropic_body(false).to_string(),
    ));
    assert_eq!(reply.status, 200);

    // Rejected requests are recorded but take no behaviour.
    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0].behavior, None);
    assert_eq!(requests[0].status, Some(401));
    assert_eq!(requests[3].behavior, Some(Behavior::Normal));
}

#[test]
fn bad_json_unknown_path_and_missing_fields() {
    let fake = FakeUpstream::start(FakeConfig::default());
    let reply = block_on(send(
        Method::POST,
        &format!("{}/chat/completions", fake.openai_base_url()),
        &[],
        "{not json",
    ));
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    let reply = block_on(send(
        Method::POST,
        &format!("{}/v1/messages", fake.anthropic_base_url()),
        &[("anthropic-version", "2023-06-01")],
        "[1,2",
    ));
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(reply.json()["type"], "error");

    // Anthropic requires max_tokens and the version header.
    let mut no_max = anthropic_body(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let reply = block_on(anthropic_messages(&fake, "any", &no_max));
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    let reply = block_on(send(
        Method::POST,
        &format!("{}/v1/messages", fake.anthropic_base_url()),
        &[],
        &anthropic_body(false).to_string(),
    ));
    assert_eq!(reply.status, 400);

    let reply = block_on(send(
        Method::POST,
        &format!("{}/v1/audio/speech", fake.anthropic_base_url()),
        &[],
        "{}",
    ));
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-fake-upstream"), Some("fake"));
    assert!(reply.json()["error"]["message"].is_string());
    let reply = block_on(send(
        Method::GET,
        &format!("{}/v1/nothing", fake.anthropic_base_url()),
        &[("anthropic-version", "2023-06-01")],
        "",
    ));
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["type"], "not_found_error");
}

#[test]
fn status_behavior_sends_retry_after_and_protocol_bodies() {
    let fake = FakeUpstream::start(config(2));
    fake.set_behavior(Behavior::status_retry_after(429, "7"));
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(true)));
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

    let reply = block_on(anthropic_messages(&fake, "sk-test", &anthropic_body(false)));
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");

    fake.set_behavior(Behavior::status(529));
    let reply = block_on(anthropic_messages(&fake, "sk-test", &anthropic_body(true)));
    assert_eq!(reply.status, 529);
    assert_eq!(reply.header("retry-after"), None);
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");

    fake.set_behavior(Behavior::status(500));
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(false)));
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "server_error");

    fake.set_behavior(Behavior::Status {
        code: 503,
        retry_after: None,
        body: Some(r#"{"custom":true}"#.to_string()),
    });
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(false)));
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), r#"{"custom":true}"#);
}

#[test]
fn push_once_is_fifo_then_back_to_the_default() {
    let fake = FakeUpstream::start(config(2));
    fake.push_once(Behavior::status(503));
    fake.push_once(Behavior::status_retry_after(429, "1"));
    let statuses: Vec<u16> = (0..4)
        .map(|_| block_on(openai_chat(&fake, "sk-test", &openai_body(false))).status)
        .collect();
    assert_eq!(statuses, [503, 429, 200, 200]);
    let behaviors: Vec<Option<Behavior>> =
        fake.requests().into_iter().map(|r| r.behavior).collect();
    assert_eq!(behaviors[0], Some(Behavior::status(503)));
    assert_eq!(behaviors[3], Some(Behavior::Normal));

    // A queued behaviour goes before a changed default.
    fake.set_behavior(Behavior::status(500));
    fake.push_once(Behavior::Normal);
    assert_eq!(
        block_on(openai_chat(&fake, "sk-test", &openai_body(false))).status,
        200
    );
    assert_eq!(
        block_on(openai_chat(&fake, "sk-test", &openai_body(false))).status,
        500
    );
    assert_eq!(fake.request_count(), 6);
}

#[test]
fn a_body_marker_picks_its_behaviour_before_the_queue_and_the_default() {
    let fake = FakeUpstream::start(config(2));
    fake.when_body_contains("POISON", Behavior::status(500));
    fake.push_once(Behavior::status(503));
    let mut poisoned = openai_body(false);
    poisoned["messages"][0]["content"] = json!("POISON please");
    let poison = || block_on(openai_chat(&fake, "sk-test", &poisoned)).status;
    let plain = || block_on(openai_chat(&fake, "sk-test", &openai_body(false))).status;
    assert_eq!(poison(), 500, "the marker wins over the queued behaviour");
    assert_eq!(plain(), 503, "which the next plain request still gets");
    assert_eq!(plain(), 200);
    assert_eq!(poison(), 500, "the rule holds for every matching request");
    assert_eq!(
        fake.requests()[3].behavior,
        Some(Behavior::status(500)),
        "and is recorded"
    );
}

#[test]
fn cut_after_aborts_the_stream_without_finish() {
    let fake = FakeUpstream::start(config(10));
    fake.set_behavior(Behavior::CutAfter(3));
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(true)));
    assert_eq!(reply.status, 200);
    assert!(reply.aborted, "the body must end in an error, not cleanly");
    let events = reply.sse();
    assert_eq!(events.len(), 4, "role + 3 content: {events:?}");
    assert!(events.iter().all(|e| e.data.as_deref() != Some("[DONE]")));
    assert!(
        events
            .iter()
            .all(|e| e.json()["choices"][0]["finish_reason"].is_null())
    );

    let reply = block_on(anthropic_messages(&fake, "sk-test", &anthropic_body(true)));
    assert!(reply.aborted);
    let names: Vec<String> = reply.sse().into_iter().filter_map(|e| e.event).collect();
    assert_eq!(
        names.iter().filter(|n| *n == "content_block_delta").count(),
        3
    );
    assert!(
        !names
            .iter()
            .any(|n| n == "message_stop" || n == "message_delta")
    );

    // Non-stream: half a body, then the cut.
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(false)));
    assert!(reply.aborted);
    assert!(serde_json::from_str::<Value>(&reply.text()).is_err());

    // The fake cut it, not the client.
    assert!(fake.requests().iter().all(|r| !r.client_disconnected));
}

#[test]
fn mid_stream_error_has_the_openrouter_shape() {
    let fake = FakeUpstream::start(config(5));
    fake.set_behavior(Behavior::MidStreamError);
    let body = openai_body(true);
    let reply = block_on(openai_chat(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert!(!reply.aborted);
    let events = reply.sse();
    assert_eq!(events[0].comment.as_deref(), Some("OPENROUTER PROCESSING"));
    let data: Vec<&Sse> = events.iter().filter(|e| e.data.is_some()).collect();
    assert_eq!(data.len(), 3, "role, error, [DONE]: {events:?}");
    let role = data[0].json();
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["provider"], "fake-a");
    assert_eq!(
        role["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(role.get("error").is_none());
    let err = data[1].json();
    assert_eq!(err["error"]["code"], 502);
    assert!(err["error"]["message"].is_string());
    assert_eq!(err["model"], "gpt-4o-mini");
    assert_eq!(err["choices"][0]["delta"]["content"], "");
    assert_eq!(err["choices"][0]["finish_reason"], Value::Null);
    assert!(
        err["choices"][0]
            .as_object()
            .unwrap()
            .contains_key("native_finish_reason")
    );
    assert_eq!(
        err["usage"]["prompt_tokens"],
        prompt_tokens_for(body.to_string().as_bytes())
    );
    assert_eq!(err["usage"]["completion_tokens"], 0);
    assert_eq!(data[2].data.as_deref(), Some("[DONE]"));

    // ErrorAfterContent: the content first.
    fake.set_behavior(Behavior::ErrorAfterContent(2));
    let events = block_on(openai_chat(&fake, "sk-test", &body)).sse();
    let data: Vec<Value> = events
        .iter()
        .filter(|e| e.data.as_deref().is_some_and(|d| d != "[DONE]"))
        .map(Sse::json)
        .collect();
    assert_eq!(data.len(), 4);
    assert_eq!(data[1]["choices"][0]["delta"]["content"], "word0 ");
    assert_eq!(data[2]["choices"][0]["delta"]["content"], "word1 ");
    assert_eq!(data[3]["usage"]["completion_tokens"], 2);

    // Anthropic: an error event after the content, no message_stop.
    let events = block_on(anthropic_messages(&fake, "sk-test", &anthropic_body(true))).sse();
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert_eq!(
        last.json(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let deltas = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .count();
    assert_eq!(deltas, 2);
    assert!(
        events
            .iter()
            .all(|e| e.event.as_deref() != Some("message_stop"))
    );
}

/// The arguments of the tool-call tests: key order and a non-ASCII character that must survive.
const TOOL_ARGS: &str = r#"{"location":"Zürich, CH","unit":"celsius","days":[1,2]}"#;

fn tool_args() -> Value {
    serde_json::from_str(TOOL_ARGS).unwrap()
}

#[test]
fn tool_call_openai_non_stream_has_tool_calls_and_null_content() {
    let fake = FakeUpstream::start(config(5));
    fake.set_behavior(Behavior::tool_call("get_weather", TOOL_ARGS));
    let mut body = openai_body(false);
    // Max tokens do not cut a tool call short.
    body["max_completion_tokens"] = json!(1);
    let reply = block_on(openai_chat(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(message["role"], "assistant");
    assert!(message.as_object().unwrap().contains_key("content"));
    assert_eq!(message["content"], Value::Null);
    assert_eq!(
        message["tool_calls"],
        json!([{
            "id": "call_fake1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": TOOL_ARGS},
        }])
    );
    assert_eq!(
        keyplane_testkit::fake_upstream::OPENAI_TOOL_CALL_ID,
        "call_fake1"
    );
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], 4, "one per fragment");
    assert_eq!(v["usage"]["total_tokens"], prompt + 4);
    assert_eq!(
        fake.requests()[0].behavior,
        Some(Behavior::ToolCall {
            name: "get_weather".to_string(),
            arguments: TOOL_ARGS.to_string(),
        })
    );
}

#[test]
fn tool_call_openai_stream_follows_the_sample() {
    let fake = FakeUpstream::start(config(5));
    fake.set_behavior(Behavior::tool_call("get_weather", TOOL_ARGS));
    let mut body = openai_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = block_on(openai_chat(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(!reply.aborted);
    let events = reply.sse();
    // start (role + call 0), 4 argument fragments, finish, usage, [DONE].
    assert_eq!(events.len(), 8, "{events:?}");
    assert_eq!(events[7].data.as_deref(), Some("[DONE]"));
    let chunks: Vec<Value> = events[..7].iter().map(Sse::json).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], "gpt-4o-mini");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "index": 0,
                "id": "call_fake1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }],
            "refusal": null,
        })
    );
    let mut arguments = String::new();
    for c in &chunks[1..5] {
        let delta = &c["choices"][0]["delta"];
        let calls = delta["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["index"], 0);
        assert!(calls[0].get("id").is_none() && calls[0]["function"].get("name").is_none());
        let fragment = calls[0]["function"]["arguments"].as_str().unwrap();
        assert!(!fragment.is_empty());
        arguments.push_str(fragment);
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(c["usage"], Value::Null);
    }
    assert_eq!(
        arguments, TOOL_ARGS,
        "the fragments concatenate to the arguments"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        tool_args()
    );
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[6]["choices"], json!([]));
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], prompt);
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);

    // No usage chunk without include_usage; a short object gives fewer fragments.
    fake.set_behavior(Behavior::tool_call("noop", "{}"));
    let events = block_on(openai_chat(&fake, "sk-test", &openai_body(true))).sse();
    assert_eq!(
        events.len(),
        5,
        "start, '{{', '}}', finish, [DONE]: {events:?}"
    );
    assert!(events[..4].iter().all(|e| e.json()["choices"] != json!([])));
    assert_eq!(
        events[3].json()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[test]
fn tool_call_anthropic_non_stream_has_a_tool_use_block() {
    let fake = FakeUpstream::start(config(5));
    fake.set_behavior(Behavior::tool_call("get_weather", TOOL_ARGS));
    let body = anthropic_body(false);
    let reply = block_on(anthropic_messages(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    // The input is the arguments text itself: key order kept.
    assert!(
        reply.text().contains(&format!(r#""input":{TOOL_ARGS}"#)),
        "{}",
        reply.text()
    );
    let v = reply.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(
        v["content"],
        json!([{
            "type": "tool_use",
            "id": "toolu_fake1",
            "name": "get_weather",
            "input": tool_args(),
        }])
    );
    assert_eq!(
        keyplane_testkit::fake_upstream::ANTHROPIC_TOOL_USE_ID,
        "toolu_fake1"
    );
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(
        v["usage"]["input_tokens"],
        prompt_tokens_for(body.to_string().as_bytes())
    );
    assert_eq!(v["usage"]["output_tokens"], 4);
}

#[test]
fn tool_call_anthropic_stream_follows_the_sample() {
    let fake = FakeUpstream::start(config(5));
    fake.set_behavior(Behavior::tool_call("get_weather", TOOL_ARGS));
    let body = anthropic_body(true);
    let reply = block_on(anthropic_messages(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(!reply.aborted);
    let events = reply.sse();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for e in &events {
        assert_eq!(e.json()["type"].as_str(), e.event.as_deref());
    }
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(events[0].json()["message"]["usage"]["input_tokens"], prompt);
    assert_eq!(
        events[1].json(),
        json!({
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use", "id": "toolu_fake1", "name": "get_weather", "input": {},
            },
        })
    );
    let mut input = String::new();
    for (i, e) in events[3..8].iter().enumerate() {
        let d = e.json();
        assert_eq!(d["index"], 0);
        assert_eq!(d["delta"]["type"], "input_json_delta");
        let fragment = d["delta"]["partial_json"].as_str().unwrap();
        // The first fragment is empty, as the real API sends it.
        assert_eq!(fragment.is_empty(), i == 0, "{fragment:?}");
        input.push_str(fragment);
    }
    assert_eq!(input, TOOL_ARGS);
    assert_eq!(events[8].json()["index"], 0);
    let delta = events[9].json();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(delta["usage"]["input_tokens"], prompt);
}

#[test]
#[should_panic(expected = "not a JSON object")]
fn tool_call_arguments_must_be_a_json_object() {
    let fake = FakeUpstream::start(config(2));
    fake.set_behavior(Behavior::tool_call("f", "[1, 2]"));
}

#[test]
fn delay_first_byte_holds_the_response_head() {
    let fake = FakeUpstream::start(config(2));
    fake.push_once(Behavior::DelayFirstByte(Duration::from_millis(300)));
    let started = Instant::now();
    let reply = block_on(openai_chat(&fake, "sk-test", &openai_body(true)));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.sse().last().unwrap().data.as_deref(), Some("[DONE]"));
    // push_once: the next request is not delayed.
    block_on(openai_chat(&fake, "sk-test", &openai_body(true)));
    let behaviors: Vec<_> = fake.requests().into_iter().map(|r| r.behavior).collect();
    assert_eq!(
        behaviors,
        [
            Some(Behavior::DelayFirstByte(Duration::from_millis(300))),
            Some(Behavior::Normal)
        ]
    );
}

/// Opens a raw connection and writes one HTTP/1.1 request.
fn raw_request(addr: SocketAddr, path: &str, headers: &str, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{headers}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

#[test]
fn hang_ends_when_the_client_goes_away_and_is_recorded() {
    let fake = FakeUpstream::start(config(2));
    fake.push_once(Behavior::Hang);
    let mut stream = raw_request(
        fake.addr(),
        "/v1/chat/completions",
        "authorization: Bearer sk-test\r\n",
        &openai_body(false).to_string(),
    );
    assert!(wait_until(TIMEOUT, || fake.request_count() == 1));
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(stream.read(&mut buf).is_err(), "no answer while hanging");
    assert!(!fake.requests()[0].client_disconnected);
    drop(stream);
    assert!(wait_until(TIMEOUT, || fake.requests()[0].client_disconnected));
    assert_eq!(fake.requests()[0].status, None);
    assert_eq!(fake.requests()[0].behavior, Some(Behavior::Hang));
}

#[test]
fn client_disconnect_mid_stream_is_recorded() {
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 200,
        chunk_delay: Duration::from_millis(20),
        ..FakeConfig::default()
    });
    let mut stream = raw_request(
        fake.addr(),
        "/v1/messages",
        "anthropic-version: 2023-06-01\r\n",
        &anthropic_body(true).to_string(),
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("word1 ") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    assert!(wait_until(TIMEOUT, || fake.requests()[0].client_disconnected));

    // A stream read to its end is not a disconnect.
    let fake = FakeUpstream::start(config(3));
    block_on(anthropic_messages(&fake, "sk-test", &anthropic_body(true)));
    assert!(!fake.requests()[0].client_disconnected);
}

#[test]
fn requests_are_recorded_in_order() {
    let fake = FakeUpstream::start(config(2));
    let body = openai_body(false);
    block_on(openai_chat(&fake, "sk-test", &body));
    block_on(anthropic_messages(&fake, "sk-test", &anthropic_body(true)));
    block_on(send(
        Method::GET,
        &format!("{}/models", fake.openai_base_url()),
        &[("authorization", "Bearer sk-test")],
        "",
    ));
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(fake.request_count(), 3);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.header("Authorization"), Some("Bearer sk-test"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.body, Bytes::from(body.to_string()));
    assert_eq!(first.json.as_ref(), Some(&body));
    assert_eq!(first.status, Some(200));
    assert_eq!(first.behavior, Some(Behavior::Normal));
    assert_eq!(requests[1].path, "/v1/messages?beta=true");
    assert_eq!(requests[1].header("x-api-key"), Some("sk-test"));
    assert_eq!(requests[2].method, "GET");
    assert_eq!(requests[2].json, None);
    assert!(requests[2].body.is_empty());

    fake.clear_requests();
    assert!(fake.requests().is_empty());
    assert_eq!(fake.request_count(), 3);
}

#[test]
fn http2_prior_knowledge_is_served() {
    let fake = FakeUpstream::start(config(3));
    let client = client(true);
    let reply = block_on(send_with(
        &client,
        Method::POST,
        &format!("{}/chat/completions", fake.openai_base_url()),
        &[("authorization", "Bearer sk-test")],
        &openai_body(true).to_string(),
    ));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.sse().len(), 6);

    // An injected cut resets the HTTP/2 stream after the events before it.
    fake.push_once(Behavior::CutAfter(2));
    let reply = block_on(send_with(
        &client,
        Method::POST,
        &format!("{}/chat/completions", fake.openai_base_url()),
        &[("authorization", "Bearer sk-test")],
        &openai_body(true).to_string(),
    ));
    assert!(reply.aborted);
    assert_eq!(reply.sse().len(), 3, "role + 2 content");
}

#[test]
fn stop_refuses_later_connections() {
    let fake = FakeUpstream::start(config(2));
    let addr = fake.addr();
    assert_eq!(fake.openai_base_url(), format!("http://{addr}/v1"));
    assert_eq!(fake.anthropic_base_url(), format!("http://{addr}"));
    // A stream in flight when the fake stops is cut, not left hanging.
    fake.set_behavior(Behavior::ChunkDelay(Duration::from_secs(1)));
    let mut stream = raw_request(
        addr,
        "/v1/chat/completions",
        "authorization: Bearer sk-test\r\n",
        &openai_body(true).to_string(),
    );
    let mut buf = [0u8; 4096];
    assert!(stream.read(&mut buf).unwrap() > 0, "head and role chunk");
    fake.stop();
    assert!(TcpStream::connect(addr).is_err());
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("[DONE]"));
}

#[test]
fn binary_prints_its_address_serves_and_exits_on_sigterm() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyplane-fake-upstream"))
        .args(["--name", "bin-fake", "--api-key", "k", "--chunks", "3"])
        .args(["--chunk-delay-ms", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        // The line must be the only one.
        let _ = tx.send(lines.next().and_then(Result::ok));
    });
    let line = match rx.recv_timeout(TIMEOUT) {
        Ok(Some(line)) => line,
        other => {
            let _ = child.kill();
            panic!("no address line: {other:?}");
        }
    };
    let addr: SocketAddr = line
        .strip_prefix("fake-upstream listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let reply = block_on(send(
        Method::POST,
        &format!("http://{addr}/v1/chat/completions"),
        &[("authorization", "Bearer k")],
        &openai_body(true).to_string(),
    ));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-fake-upstream"), Some("bin-fake"));
    assert_eq!(reply.sse().len(), 6);

    keyplane_testkit::process::send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(
        rx.recv_timeout(TIMEOUT).unwrap(),
        None,
        "exactly one stdout line"
    );
}

#[tokio::test]
async fn works_from_inside_an_async_test() {
    let fake = FakeUpstream::start(config(2));
    let reply = tokio::time::timeout(TIMEOUT, openai_chat(&fake, "sk-test", &openai_body(false)))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    // Dropping it here (on a runtime thread) must not panic or hang.
    drop(fake);
}

#[test]
fn a_set_models_body_replaces_the_list_and_takes_no_behavior() {
    let fake = FakeUpstream::start(FakeConfig {
        api_key: Some("sk-test".into()),
        ..config(2)
    });
    let url = format!("{}/models", fake.openai_base_url());
    fake.set_models_body(Some((200, r#"{"data":[{"id":"x/y"}]}"#.into())));
    fake.push_once(Behavior::status(429));
    let reply = block_on(send(
        Method::GET,
        &url,
        &[("authorization", "Bearer sk-test")],
        "",
    ));
    assert_eq!(reply.json()["data"][0]["id"], "x/y");
    fake.set_models_body(Some((503, "<html>down</html>".into())));
    let down = block_on(send(
        Method::GET,
        &url,
        &[("authorization", "Bearer sk-test")],
        "",
    ));
    assert_eq!(down.status, 503);
    let unauthenticated = block_on(send(Method::GET, &url, &[], ""));
    assert_eq!(unauthenticated.status, 401, "the key check still applies");
    fake.set_models_body(None);
    // The queued 429 was not used by the models requests.
    let chat = block_on(send(
        Method::POST,
        &format!("{}/chat/completions", fake.openai_base_url()),
        &[("authorization", "Bearer sk-test")],
        &openai_body(false).to_string(),
    ));
    assert_eq!(chat.status, 429);
}

// ---------------------------------------------------------------------------------------------
// The OpenAI Responses API (`POST /v1/responses`)

/// `POST /v1/responses` with a Bearer key.
async fn responses(fake: &FakeUpstream, key: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {key}");
    send(
        Method::POST,
        &format!("{}/responses", fake.openai_base_url()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

fn responses_body(stream: bool) -> Value {
    json!({
        "model": "gpt-5-codex",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "Say hello"}]}],
        "stream": stream,
    })
}

/// The `usage` object for `input` and `output` tokens, every detail bucket 0.
fn responses_usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// The stream's events as (name, data) pairs, checking that each `event:` name is its data's
/// `type` and that `sequence_number` counts up from 0.
fn responses_events(reply: &Reply) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = reply
        .sse()
        .into_iter()
        .map(|e| {
            let name = e.event.clone().expect("every Responses event is named");
            let data = e.json();
            assert_eq!(data["type"], name.as_str(), "name and type agree: {data}");
            (name, data)
        })
        .collect();
    for (i, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], i as u64, "sequence number: {data}");
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn responses_non_stream_has_the_reference_shape_and_usage() {
    let fake = FakeUpstream::start(config(3));
    let mut body = responses_body(false);
    body["instructions"] = json!("Be brief.");
    body["store"] = json!(false);
    let reply = block_on(responses(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-fake-upstream"), Some("fake-a"));
    assert!(reply.header("x-request-id").is_some());
    let v = reply.json();
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["created_at"].is_u64());
    assert!(v["completed_at"].is_u64());
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["incomplete_details"], Value::Null);
    assert_eq!(v["model"], "gpt-5-codex");
    // The request's settings come back, as the real API echoes them.
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["store"], false);
    assert_eq!(v["tools"], json!([]));
    let output = v["output"].as_array().unwrap();
    assert_eq!(output.len(), 1);
    let message = &output[0];
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["status"], "completed");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        message["content"],
        json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": words(3)}])
    );
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(v["usage"], responses_usage(prompt, 3));

    // max_output_tokens below the word count: fewer words, status incomplete.
    let mut limited = responses_body(false);
    limited["max_output_tokens"] = json!(2);
    let v = block_on(responses(&fake, "sk-test", &limited)).json();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(
        v["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(v["max_output_tokens"], 2);
    assert_eq!(v["output"][0]["status"], "incomplete");
    assert_eq!(v["output"][0]["content"][0]["text"], words(2));
    assert_eq!(v["usage"]["output_tokens"], 2);
}

#[test]
fn responses_stream_sends_the_reference_events_in_order() {
    let fake = FakeUpstream::start(config(3));
    let body = responses_body(true);
    let reply = block_on(responses(&fake, "sk-test", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(!reply.aborted);
    assert!(
        !reply.text().contains("[DONE]"),
        "no [DONE] in a Responses stream"
    );
    let events = responses_events(&reply);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let created = &events[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["usage"], Value::Null);
    let id = created["id"].as_str().unwrap();
    let added = &events[2].1;
    assert_eq!(added["output_index"], 0);
    assert_eq!(added["item"]["status"], "in_progress");
    assert_eq!(added["item"]["content"], json!([]));
    let item_id = added["item"]["id"].as_str().unwrap();
    assert_eq!(events[3].1["part"]["text"], "");
    for (i, (_, delta)) in events[4..7].iter().enumerate() {
        assert_eq!(delta["item_id"], item_id);
        assert_eq!(delta["output_index"], 0);
        assert_eq!(delta["content_index"], 0);
        assert_eq!(delta["delta"], format!("word{i} "));
    }
    assert_eq!(events[7].1["text"], words(3));
    assert_eq!(events[8].1["part"]["text"], words(3));
    let done = &events[9].1["item"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["content"][0]["text"], words(3));
    let completed = &events[10].1["response"];
    assert_eq!(completed["id"], id);
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0], *done);
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(completed["usage"], responses_usage(prompt, 3));

    // Cut short by max_output_tokens: the stream ends with response.incomplete.
    let mut limited = body.clone();
    limited["max_output_tokens"] = json!(1);
    let events = responses_events(&block_on(responses(&fake, "sk-test", &limited)));
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.incomplete");
    assert_eq!(data["response"]["status"], "incomplete");
    assert_eq!(
        data["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(data["response"]["usage"]["output_tokens"], 1);
}

#[test]
fn responses_tool_call_is_a_function_call_item_with_argument_deltas() {
    let fake = FakeUpstream::start(config(5));
    fake.set_behavior(Behavior::tool_call("exec_command", TOOL_ARGS));
    let body = responses_body(false);
    let v = block_on(responses(&fake, "sk-test", &body)).json();
    assert_eq!(v["status"], "completed");
    let item = &v["output"][0];
    assert_eq!(item["type"], "function_call");
    assert_eq!(item["status"], "completed");
    assert_eq!(item["name"], "exec_command");
    assert_eq!(item["call_id"], OPENAI_TOOL_CALL_ID);
    assert!(item["id"].as_str().unwrap().starts_with("fc_"));
    assert_eq!(item["arguments"], TOOL_ARGS, "the text as given");
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(v["usage"], responses_usage(prompt, 4));

    let events = responses_events(&block_on(responses(
        &fake,
        "sk-test",
        &responses_body(true),
    )));
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let added = &events[2].1["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["status"], "in_progress");
    assert_eq!(added["arguments"], "");
    assert_eq!(added["call_id"], OPENAI_TOOL_CALL_ID);
    let item_id = added["id"].as_str().unwrap();
    let mut joined = String::new();
    for (_, delta) in &events[3..7] {
        assert_eq!(delta["item_id"], item_id);
        assert_eq!(delta["output_index"], 0);
        joined.push_str(delta["delta"].as_str().unwrap());
    }
    assert_eq!(joined, TOOL_ARGS);
    assert_eq!(events[7].1["arguments"], TOOL_ARGS);
    let done = &events[8].1["item"];
    assert_eq!(done["arguments"], TOOL_ARGS);
    assert_eq!(done["status"], "completed");
    let completed = &events[9].1["response"];
    assert_eq!(completed["output"][0], *done);
    assert_eq!(completed["usage"]["output_tokens"], 4);
    assert_eq!(tool_args()["location"], "Zürich, CH");
}

#[test]
fn responses_failures_are_openai_errors_or_response_failed() {
    let fake = FakeUpstream::start(config(5));
    // A mid-stream failure: the content so far, then response.failed, then the end.
    fake.set_behavior(Behavior::ErrorAfterContent(2));
    let reply = block_on(responses(&fake, "sk-test", &responses_body(true)));
    assert_eq!(reply.status, 200);
    assert!(!reply.aborted);
    let events = responses_events(&reply);
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.failed",
        ]
    );
    let failed = &events[6].1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
    assert!(failed["error"]["message"].is_string());

    // Non-stream: OpenAI's 502.
    fake.set_behavior(Behavior::MidStreamError);
    let reply = block_on(responses(&fake, "sk-test", &responses_body(false)));
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["type"], "server_error");

    // A status in OpenAI's error object, with Retry-After.
    fake.set_behavior(Behavior::status_retry_after(429, "3"));
    let reply = block_on(responses(&fake, "sk-test", &responses_body(true)));
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

    // A cut stream: the opening events and two deltas, then the connection ends in an error.
    fake.set_behavior(Behavior::CutAfter(2));
    let reply = block_on(responses(&fake, "sk-test", &responses_body(true)));
    assert!(reply.aborted, "the body must end in an error, not cleanly");
    let events = responses_events(&reply);
    assert_eq!(events.len(), 6, "{:?}", names(&events));
    assert_eq!(events[5].0, "response.output_text.delta");
    assert!(fake.requests().iter().all(|r| !r.client_disconnected));
}

#[test]
fn responses_refuses_a_bad_key_path_or_body_in_openai_shape() {
    let fake = FakeUpstream::start(config(2));
    let reply = block_on(responses(&fake, "sk-wrong", &responses_body(false)));
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    // Bearer only: x-api-key is not OpenAI's.
    let reply = block_on(send(
        Method::POST,
        &format!("{}/responses", fake.openai_base_url()),
        &[("x-api-key", "sk-test")],
        &responses_body(false).to_string(),
    ));
    assert_eq!(reply.status, 401);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );

    for field in ["model", "input"] {
        let mut body = responses_body(false);
        body.as_object_mut().unwrap().remove(field);
        let reply = block_on(responses(&fake, "sk-test", &body));
        assert_eq!(reply.status, 400, "without {field}");
        let err = &reply.json()["error"];
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["param"], field);
        assert_eq!(err["code"], "missing_required_parameter");
    }
    // `input` may be a plain string.
    let mut body = responses_body(false);
    body["input"] = json!("Say hello");
    assert_eq!(block_on(responses(&fake, "sk-test", &body)).status, 200);

    let reply = block_on(responses(&fake, "sk-test", &json!([1])));
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    // The fake stores nothing: a stored response cannot be fetched.
    let reply = block_on(send(
        Method::GET,
        &format!("{}/responses/resp_fake1", fake.openai_base_url()),
        &[("authorization", "Bearer sk-test")],
        "",
    ));
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    // Refused requests take no behaviour.
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.status != Some(200))
            .all(|r| r.behavior.is_none())
    );
}

// ---------------------------------------------------------------------------------------------
// Gemini

/// `POST /v1beta/models/{model}:{verb}{query}` with `x-goog-api-key`.
async fn gemini(fake: &FakeUpstream, verb: &str, query: &str, body: &Value) -> Reply {
    send(
        Method::POST,
        &format!(
            "{}/v1beta/models/gemini-2.5-flash:{verb}{query}",
            fake.gemini_base_url()
        ),
        &[
            ("x-goog-api-key", "sk-test"),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

fn gemini_body() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]})
}

/// The chunks of an `alt=sse` body: Gemini frames events with CRLF and sends no terminator.
fn gemini_sse(reply: &Reply) -> Vec<Value> {
    let text = reply.text();
    text.split("\r\n\r\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let data = block
                .strip_prefix("data: ")
                .expect("one data line per event");
            assert!(!data.contains('\n'), "one line per event: {block:?}");
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

/// All the text of the parts of chunks, thought parts or answer parts.
fn gemini_text(chunks: &[Value], thought: bool) -> String {
    chunks
        .iter()
        .flat_map(|c| c["candidates"][0]["content"]["parts"].as_array().cloned())
        .flatten()
        .filter(|p| p["thought"].as_bool().unwrap_or(false) == thought)
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn gemini_non_stream_has_the_sample_shape_and_usage() {
    let fake = FakeUpstream::start(config(3));
    let body = gemini_body();
    let reply = block_on(gemini(&fake, "generateContent", "", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-fake-upstream"), Some("fake-a"));
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let v = reply.json();
    let sample: Value = serde_json::from_str(keyplane_testkit::samples::text(
        "gemini-generate-content.json",
    ))
    .unwrap();
    assert_eq!(keys(&v), keys(&sample));
    assert_eq!(keys(&v["candidates"][0]), keys(&sample["candidates"][0]));
    let candidate = &v["candidates"][0];
    assert_eq!(candidate["content"]["role"], "model");
    assert_eq!(candidate["content"]["parts"][0]["text"], words(3));
    assert_eq!(candidate["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount": prompt, "candidatesTokenCount": 3,
               "totalTokenCount": prompt + 3,
               "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]})
    );
    // The request is recorded as sent.
    let recorded = &fake.requests()[0];
    assert_eq!(
        recorded.path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(recorded.header("x-goog-api-key"), Some("sk-test"));
    assert_eq!(recorded.json.as_ref(), Some(&body));
    assert_eq!(recorded.behavior, Some(Behavior::Normal));
}

#[test]
fn gemini_sse_stream_has_cumulative_usage_and_one_finish() {
    let fake = FakeUpstream::start(config(4));
    let body = gemini_body();
    let reply = block_on(gemini(&fake, "streamGenerateContent", "?alt=sse", &body));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    // Framed like the recording: CRLF, no `[DONE]`.
    let sample = keyplane_testkit::samples::text("gemini-stream.sse");
    assert!(sample.contains("\r\n\r\n") && !sample.contains("[DONE]"));
    assert!(!reply.text().contains("[DONE]"));
    let chunks = gemini_sse(&reply);
    assert_eq!(chunks.len(), 4);
    assert!(reply.frames.len() >= 4, "each chunk is sent as produced");
    assert_eq!(gemini_text(&chunks, false), words(4));
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    for (i, chunk) in chunks.iter().enumerate() {
        let usage = &chunk["usageMetadata"];
        assert_eq!(usage["promptTokenCount"], prompt);
        assert_eq!(usage["candidatesTokenCount"], i as u64 + 1, "cumulative");
        assert_eq!(usage["totalTokenCount"], prompt + i as u64 + 1);
        let finish = &chunk["candidates"][0]["finishReason"];
        assert_eq!(finish.as_str(), (i == 3).then_some("STOP"));
        assert_eq!(chunk["responseId"], chunks[0]["responseId"]);
    }
}

#[test]
fn gemini_stream_without_alt_is_one_json_array_sent_element_by_element() {
    let fake = FakeUpstream::start(config(3));
    let reply = block_on(gemini(&fake, "streamGenerateContent", "", &gemini_body()));
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let v = reply.json();
    let chunks = v.as_array().expect("an array");
    assert_eq!(chunks.len(), 3);
    assert!(reply.frames.len() >= 3);
    assert_eq!(gemini_text(chunks, false), words(3));
    assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
}

#[test]
fn gemini_max_output_tokens_cuts_the_answer_with_max_tokens() {
    let fake = FakeUpstream::start(config(5));
    let mut body = gemini_body();
    body["generationConfig"] = json!({"maxOutputTokens": 2});
    let v = block_on(gemini(&fake, "generateContent", "", &body)).json();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], words(2));
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    let chunks = gemini_sse(&block_on(gemini(
        &fake,
        "streamGenerateContent",
        "?alt=sse",
        &body,
    )));
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1]["candidates"][0]["finishReason"], "MAX_TOKENS");
    // Nothing left to say: a content with only its role, as in the recorded empty answer.
    body["generationConfig"] = json!({"maxOutputTokens": 0});
    let v = block_on(gemini(&fake, "generateContent", "", &body)).json();
    let sample: Value = serde_json::from_str(keyplane_testkit::samples::text(
        "gemini-generate-content-max-tokens-empty.json",
    ))
    .unwrap();
    assert_eq!(
        v["candidates"][0]["content"],
        sample["candidates"][0]["content"]
    );
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert!(v["usageMetadata"].get("candidatesTokenCount").is_none());
}

#[test]
fn gemini_takes_the_key_in_a_header_or_the_query_and_refuses_as_google_does() {
    let fake = FakeUpstream::start(config(1));
    let url = |query: &str| {
        format!(
            "{}/v1beta/models/gemini-2.5-flash:generateContent{query}",
            fake.gemini_base_url()
        )
    };
    let body = gemini_body().to_string();
    let ok = block_on(send(Method::POST, &url("?key=sk-test"), &[], &body));
    assert_eq!(ok.status, 200);
    // google-genai's default API version.
    let v1 = format!(
        "{}/v1/models/gemini-2.5-flash:generateContent",
        fake.gemini_base_url()
    );
    let ok = block_on(send(
        Method::POST,
        &v1,
        &[("x-goog-api-key", "sk-test")],
        &body,
    ));
    assert_eq!(ok.status, 200);

    let wrong = block_on(send(
        Method::POST,
        &url(""),
        &[("x-goog-api-key", "nope")],
        &body,
    ));
    assert_eq!(wrong.status, 400);
    let err = &wrong.json()["error"];
    assert_eq!(err["status"], "INVALID_ARGUMENT");
    assert_eq!(err["details"][0]["reason"], "API_KEY_INVALID");
    // A Bearer token is not an API key to Google.
    let missing = block_on(send(
        Method::POST,
        &url(""),
        &[("authorization", "Bearer sk-test")],
        &body,
    ));
    assert_eq!(missing.status, 403);
    assert_eq!(missing.json()["error"]["status"], "PERMISSION_DENIED");

    let headers = [("x-goog-api-key", "sk-test")];
    let not_json = block_on(send(Method::POST, &url(""), &headers, "{"));
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["status"], "INVALID_ARGUMENT");
    let no_contents = block_on(send(Method::POST, &url(""), &headers, "{}"));
    assert_eq!(no_contents.status, 400);
    assert!(
        no_contents.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("contents is not specified")
    );
    let unknown = block_on(send(
        Method::POST,
        &format!("{}/v1beta/models/m:predictAll", fake.gemini_base_url()),
        &headers,
        &body,
    ));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["status"], "NOT_FOUND");

    // Refused requests take no behaviour: the queued fault waits for a good one.
    fake.push_once(Behavior::status(500));
    let wrong = block_on(send(
        Method::POST,
        &url(""),
        &[("x-goog-api-key", "x")],
        &body,
    ));
    assert_eq!(wrong.status, 400);
    let good = block_on(send(Method::POST, &url(""), &headers, &body));
    assert_eq!(good.status, 500);
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.status != Some(200) && r.status != Some(500))
            .all(|r| r.behavior.is_none())
    );
}

#[test]
fn gemini_function_call_carries_a_thought_signature_after_thought_parts() {
    let fake = FakeUpstream::start(config(3));
    let args = r#"{"command":"echo hi","dir_path":"."}"#;
    fake.push_once(Behavior::Gemini(GeminiAnswer {
        thoughts: 2,
        function_call: Some(("run_shell_command".into(), args.into())),
        ..GeminiAnswer::default()
    }));
    let chunks = gemini_sse(&block_on(gemini(
        &fake,
        "streamGenerateContent",
        "?alt=sse",
        &gemini_body(),
    )));
    assert_eq!(chunks.len(), 3);
    assert_eq!(gemini_text(&chunks[..2], true), "thought0 thought1 ");
    assert_eq!(chunks[1]["usageMetadata"]["thoughtsTokenCount"], 2);
    assert!(chunks[1]["candidates"][0].get("finishReason").is_none());
    let call = &chunks[2]["candidates"][0];
    let part = &call["content"]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "run_shell_command");
    assert_eq!(
        part["functionCall"]["args"],
        serde_json::from_str::<Value>(args).unwrap()
    );
    assert_eq!(part["thoughtSignature"], GEMINI_THOUGHT_SIGNATURE);
    assert_eq!(call["finishReason"], "STOP");
    let usage = &chunks[2]["usageMetadata"];
    let candidates = usage["candidatesTokenCount"].as_u64().unwrap();
    assert!(candidates > 0);
    assert_eq!(
        usage["totalTokenCount"].as_u64().unwrap(),
        usage["promptTokenCount"].as_u64().unwrap() + candidates + 2
    );

    // `ToolCall` answers the same way on Gemini, and non-stream.
    fake.push_once(Behavior::tool_call("read_file", r#"{"file_path":"a.txt"}"#));
    let v = block_on(gemini(&fake, "generateContent", "", &gemini_body())).json();
    let part = &v["candidates"][0]["content"]["parts"][0];
    assert_eq!(part["functionCall"]["args"]["file_path"], "a.txt");
    assert_eq!(part["thoughtSignature"], GEMINI_THOUGHT_SIGNATURE);
    assert!(v["usageMetadata"].get("thoughtsTokenCount").is_none());
}

#[test]
fn gemini_thoughts_usage_details_finish_reason_and_blocked_prompt() {
    let fake = FakeUpstream::start(config(2));
    fake.push_once(Behavior::Gemini(GeminiAnswer {
        thoughts: 3,
        cached_tokens: 4,
        tool_use_prompt_tokens: 5,
        finish_reason: Some("SAFETY".into()),
        ..GeminiAnswer::default()
    }));
    let body = gemini_body();
    let v = block_on(gemini(&fake, "generateContent", "", &body)).json();
    let parts = &v["candidates"][0]["content"]["parts"];
    assert_eq!(
        parts[0],
        json!({"text": "thought0 thought1 thought2 ", "thought": true})
    );
    assert_eq!(parts[1]["text"], words(2));
    assert_eq!(parts[1]["thoughtSignature"], GEMINI_THOUGHT_SIGNATURE);
    assert_eq!(v["candidates"][0]["finishReason"], "SAFETY");
    let prompt = prompt_tokens_for(body.to_string().as_bytes());
    let usage = &v["usageMetadata"];
    assert_eq!(usage["thoughtsTokenCount"], 3);
    assert_eq!(usage["cachedContentTokenCount"], 4);
    assert_eq!(usage["toolUsePromptTokenCount"], 5);
    assert_eq!(usage["candidatesTokenCount"], 2);
    assert_eq!(usage["totalTokenCount"], prompt + 2 + 3 + 5);

    for stream in [false, true] {
        fake.push_once(Behavior::Gemini(GeminiAnswer {
            block_reason: Some("PROHIBITED_CONTENT".into()),
            ..GeminiAnswer::default()
        }));
        let reply = if stream {
            block_on(gemini(&fake, "streamGenerateContent", "?alt=sse", &body))
        } else {
            block_on(gemini(&fake, "generateContent", "", &body))
        };
        assert_eq!(reply.status, 200);
        let v = if stream {
            let chunks = gemini_sse(&reply);
            assert_eq!(chunks.len(), 1);
            chunks[0].clone()
        } else {
            reply.json()
        };
        assert_eq!(v["promptFeedback"]["blockReason"], "PROHIBITED_CONTENT");
        assert!(v.get("candidates").is_none());
        assert_eq!(v["usageMetadata"]["promptTokenCount"], prompt);
    }

    // The other dialects answer a Gemini behaviour normally.
    fake.push_once(Behavior::Gemini(GeminiAnswer {
        thoughts: 1,
        ..GeminiAnswer::default()
    }));
    let v = block_on(openai_chat(&fake, "sk-test", &openai_body(false))).json();
    assert_eq!(v["choices"][0]["message"]["content"], words(2));
}

#[test]
fn gemini_errors_are_googles_with_retry_info() {
    let fake = FakeUpstream::start(config(1));
    fake.push_once(Behavior::status_retry_after(429, "7"));
    let reply = block_on(gemini(&fake, "generateContent", "", &gemini_body()));
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    let err = &reply.json()["error"];
    assert_eq!(err["code"], 429);
    assert_eq!(err["status"], "RESOURCE_EXHAUSTED");
    let details = err["details"].as_array().unwrap();
    let of_type = |t: &str| {
        details
            .iter()
            .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{t}"))
            .unwrap_or_else(|| panic!("no {t} in {details:?}"))
    };
    assert_eq!(of_type("RetryInfo")["retryDelay"], "7s");
    assert_eq!(
        of_type("QuotaFailure")["violations"][0]["quotaDimensions"]["model"],
        "gemini-2.5-flash"
    );
    for (code, status) in [
        (400, "INVALID_ARGUMENT"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        fake.push_once(Behavior::status(code));
        let reply = block_on(gemini(
            &fake,
            "streamGenerateContent",
            "?alt=sse",
            &gemini_body(),
        ));
        assert_eq!(reply.status, code);
        assert_eq!(reply.json()["error"]["status"], status);
    }
    // A given body is sent as is.
    fake.push_once(Behavior::Status {
        code: 400,
        retry_after: None,
        body: Some(r#"{"error":{"code":400,"message":"x","status":"FAILED_PRECONDITION"}}"#.into()),
    });
    let reply = block_on(gemini(&fake, "generateContent", "", &gemini_body()));
    assert_eq!(reply.json()["error"]["status"], "FAILED_PRECONDITION");
}

#[test]
fn gemini_streams_can_be_cut_or_fail_midway() {
    let fake = FakeUpstream::start(config(5));
    fake.push_once(Behavior::CutAfter(2));
    let reply = block_on(gemini(
        &fake,
        "streamGenerateContent",
        "?alt=sse",
        &gemini_body(),
    ));
    assert!(reply.aborted, "the connection is cut");
    let chunks = gemini_sse(&reply);
    assert_eq!(chunks.len(), 2);
    assert!(
        chunks
            .iter()
            .all(|c| c["candidates"][0].get("finishReason").is_none())
    );

    fake.push_once(Behavior::ErrorAfterContent(1));
    let reply = block_on(gemini(
        &fake,
        "streamGenerateContent",
        "?alt=sse",
        &gemini_body(),
    ));
    assert!(!reply.aborted);
    let chunks = gemini_sse(&reply);
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        chunks[0]["candidates"][0]["content"]["parts"][0]["text"],
        "word0 "
    );
    assert_eq!(chunks[1]["error"]["code"], 500);
    assert_eq!(chunks[1]["error"]["status"], "INTERNAL");

    // The array stream closes its array after the error element.
    fake.push_once(Behavior::MidStreamError);
    let reply = block_on(gemini(&fake, "streamGenerateContent", "", &gemini_body()));
    let v = reply.json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["error"]["status"], "INTERNAL");

    // Non-stream: a failure is a 503, a cut is half a body.
    fake.push_once(Behavior::MidStreamError);
    let reply = block_on(gemini(&fake, "generateContent", "", &gemini_body()));
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["status"], "UNAVAILABLE");
    fake.push_once(Behavior::CutAfter(0));
    let reply = block_on(gemini(&fake, "generateContent", "", &gemini_body()));
    assert!(reply.aborted);
    assert!(serde_json::from_str::<Value>(&reply.text()).is_err());
}

#[test]
fn gemini_counts_tokens_and_pages_the_model_list() {
    let fake = FakeUpstream::start(FakeConfig {
        models: (0..5).map(|i| format!("gemini-fake-{i}")).collect(),
        ..config(1)
    });
    let body = gemini_body();
    let v = block_on(gemini(&fake, "countTokens", "", &body)).json();
    assert_eq!(
        v["totalTokens"],
        prompt_tokens_for(body.to_string().as_bytes())
    );
    let reply = block_on(gemini(&fake, "countTokens", "", &json!({})));
    assert_eq!(reply.status, 400);

    let list = |query: &str| {
        block_on(send(
            Method::GET,
            &format!("{}/v1beta/models{query}", fake.gemini_base_url()),
            &[("x-goog-api-key", "sk-test")],
            "",
        ))
    };
    let mut names = Vec::new();
    let mut query = "?pageSize=2".to_string();
    for _ in 0..5 {
        let v = list(&query).json();
        let page = v["models"].as_array().unwrap();
        assert!(page.len() <= 2);
        names.extend(page.iter().map(|m| m["name"].as_str().unwrap().to_string()));
        assert!(
            page.iter()
                .all(|m| m["supportedGenerationMethods"][0] == "generateContent")
        );
        match v["nextPageToken"].as_str() {
            Some(token) => query = format!("?pageSize=2&pageToken={token}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..5).map(|i| format!("models/gemini-fake-{i}")).collect();
    assert_eq!(names, expected);
    assert_eq!(list("").json()["models"].as_array().unwrap().len(), 5);
    assert_eq!(list("?pageToken=bogus").status, 400);

    let one = block_on(send(
        Method::GET,
        &format!("{}/v1beta/models/gemini-fake-3", fake.gemini_base_url()),
        &[("x-goog-api-key", "sk-test")],
        "",
    ));
    assert_eq!(one.json()["name"], "models/gemini-fake-3");
    let none = block_on(send(
        Method::GET,
        &format!("{}/v1beta/models/gemini-nope", fake.gemini_base_url()),
        &[("x-goog-api-key", "sk-test")],
        "",
    ));
    assert_eq!(none.status, 404);
    assert_eq!(none.json()["error"]["status"], "NOT_FOUND");
    // OpenAI's model list keeps its path and shape.
    let openai = block_on(send(
        Method::GET,
        &format!("{}/models", fake.openai_base_url()),
        &[("authorization", "Bearer sk-test")],
        "",
    ));
    assert_eq!(openai.json()["object"], "list");
}

#[test]
fn embeddings_in_openai_and_gemini_shapes_with_keys_and_behaviours() {
    let fake = FakeUpstream::start(config(2));
    let openai = |body: &str, key: &str| {
        let auth = format!("Bearer {key}");
        block_on(send(
            Method::POST,
            &format!("{}/embeddings", fake.openai_base_url()),
            &[("authorization", auth.as_str())],
            body,
        ))
    };
    let reply = openai(
        r#"{"model":"m","input":["abcdefgh","x"],"dimensions":4}"#,
        "sk-test",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["model"], "m");
    assert_eq!(answer["usage"]["prompt_tokens"], 3);
    let first: Vec<f32> = answer["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        first,
        keyplane_testkit::fake_upstream::embedding("abcdefgh", 4)
    );
    let b64 = openai(
        r#"{"model":"m","input":"abcdefgh","dimensions":4,"encoding_format":"base64"}"#,
        "sk-test",
    );
    assert!(b64.json()["data"][0]["embedding"].is_string());
    assert_eq!(openai(r#"{"model":"m","input":"x"}"#, "wrong").status, 401);
    assert_eq!(openai(r#"{"model":"m","input":[]}"#, "sk-test").status, 400);

    let gemini = |method: &str, body: &str, key: &str| {
        block_on(send(
            Method::POST,
            &format!("http://{}/v1beta/models/g-embed:{method}", fake.addr()),
            &[("x-goog-api-key", key)],
            body,
        ))
    };
    let one = gemini(
        "embedContent",
        r#"{"content":{"parts":[{"text":"hi"}]},"outputDimensionality":3}"#,
        "sk-test",
    );
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(
        one.json()["embedding"]["values"].as_array().unwrap().len(),
        3
    );
    let batch = gemini(
        "batchEmbedContents",
        r#"{"requests":[{"model":"models/g-embed","content":{"parts":[{"text":"a"}]}},{"content":{"parts":[{"text":"b"}]}}]}"#,
        "sk-test",
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    assert_eq!(batch.json()["embeddings"].as_array().unwrap().len(), 2);
    assert!(batch.json().get("usageMetadata").is_none());
    let bad_key = gemini(
        "embedContent",
        r#"{"content":{"parts":[{"text":"hi"}]}}"#,
        "nope",
    );
    assert_eq!(bad_key.status, 400);
    assert_eq!(bad_key.json()["error"]["status"], "INVALID_ARGUMENT");

    fake.push_once(Behavior::status(503));
    let busy = gemini(
        "batchEmbedContents",
        r#"{"requests":[{"content":{"parts":[{"text":"a"}]}}]}"#,
        "sk-test",
    );
    assert_eq!(busy.status, 503);
    assert_eq!(busy.json()["error"]["status"], "UNAVAILABLE");
    fake.push_once(Behavior::status(429));
    let limited = openai(r#"{"model":"m","input":"x"}"#, "sk-test");
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
}
