//! `/v1/responses` end to end: Responses clients served by upstreams that speak the Responses
//! API (bytes passed through) and by chat and Anthropic upstreams (translated); chat and
//! Anthropic clients served by Responses upstreams; bad input refused in OpenAI's error shape
//! before any upstream sees it. Every request is billed once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::Behavior;
use keyplane_testkit::http::HttpRequest;
use serde_json::{Value, json};
use support::*;

fn no_upstream_saw_anything(c: &Cluster) {
    for f in &c.fakes {
        assert!(
            f.requests().is_empty(),
            "{} was called: {:?}",
            f.name(),
            f.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
        );
    }
}

fn openai_error(resp: &keyplane_testkit::http::HttpResponse) -> Value {
    let body = resp.json();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    error.clone()
}

/// Every event numbered from 0 without gaps; every output item added is done.
fn check_stream(events: &[(String, Value)]) {
    for (i, (_, e)) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
    let added = events
        .iter()
        .filter(|(k, _)| k == "response.output_item.added")
        .count();
    let done = events
        .iter()
        .filter(|(k, _)| k == "response.output_item.done")
        .count();
    assert_eq!(added, done);
}

#[test]
fn responses_client_responses_upstream_passes_through() {
    let offers = [responses_offer("resp-direct", "1", "2")];
    let c = Cluster::start(&offers, &[]);
    let mut body = responses_body(false);
    body["store"] = json!(false);
    body["include"] = json!(["reasoning.encrypted_content"]);
    body["reasoning"] = json!({"effort": "low", "summary": "auto"});
    // A number spelled as no serializer would write it survives only if the bytes pass through.
    let raw = serde_json::to_string(&body).unwrap();
    let raw = format!(r#"{{"unknown_field":{{"kept":[1,2.50,"x"]}},{}"#, &raw[1..]);
    let non = HttpRequest::post_json("/v1/responses", &json!({}))
        .raw_body(raw.into_bytes())
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(non.status, 200, "{}\n{}", non.text(), c.dp.logs());
    let out = non.json();
    assert_eq!(out["object"], "response");
    assert_eq!(out["status"], "completed");
    let seen = &c.fake("resp-direct").requests()[0];
    assert_eq!(seen.path, "/v1/responses");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-resp-direct"));
    let sent = seen.json.clone().unwrap();
    assert_eq!(sent["model"], "resp-direct-model");
    assert_eq!(sent["unknown_field"]["kept"][2], "x");
    assert_eq!(sent["include"], body["include"]);
    assert!(
        String::from_utf8_lossy(&seen.body).contains(r#"{"kept":[1,2.50,"x"]}"#),
        "bytes other than the model are the client's"
    );

    let streamed = c.responses(&responses_body(true));
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    assert_eq!(
        streamed.header("content-type").unwrap_or_default(),
        "text/event-stream"
    );
    let events = responses_events(&streamed.text());
    check_stream(&events);
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");

    let rows = c.wait_usage(2);
    assert_eq!(total(&rows, "requests"), 2, "{rows:?}");
    assert_eq!(total(&rows, "output_tokens"), 40);
    assert!(total(&rows, "input_tokens") > 0);
}

#[test]
fn responses_fail_over_before_the_first_output() {
    let offers = [
        responses_offer("resp-cheap", "0.1", "0.2"),
        responses_offer("resp-dear", "3", "6"),
    ];
    let c = Cluster::start(&offers, &[]);
    c.fake("resp-cheap").push_once(Behavior::status(500));
    c.fake("resp-cheap").push_once(Behavior::status(500));
    for stream in [false, true] {
        let resp = c.responses(&responses_body(stream));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(c.fake("resp-dear").requests().len(), 2);
    let rows = c.wait_usage(2);
    assert_eq!(
        total(&rows, "requests"),
        2,
        "each request billed once: {rows:?}"
    );
    assert!(
        rows.iter().all(|r| r["provider"] == "resp-dear"),
        "{rows:?}"
    );
}

#[test]
fn responses_stream_cut_after_output_ends_with_numbered_failure_events() {
    let offers = [responses_offer("resp-cut", "1", "2")];
    let c = Cluster::start(&offers, &[]);
    c.fake("resp-cut").push_once(Behavior::CutAfter(3));
    let resp = c.responses(&responses_body(true));
    assert_eq!(resp.status, 200);
    let events = responses_events(&resp.text());
    check_sequence_only(&events);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.ends_with(&["error", "response.failed"]), "{kinds:?}");
    let failed = &events.last().unwrap().1;
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(
        failed["response"]["id"], events[0].1["response"]["id"],
        "the failure is the announced response's"
    );
    let rows = c.wait_usage(1);
    assert_eq!(total(&rows, "requests"), 1, "{rows:?}");
}

fn check_sequence_only(events: &[(String, Value)]) {
    for (i, (_, e)) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64, "{e}");
    }
}

#[test]
fn bad_responses_requests_get_openai_errors_and_reach_no_upstream() {
    let offers = [
        responses_offer("resp-a", "1", "2"),
        offer("chat-b", "0.5", "1"),
    ];
    let c = Cluster::start(&offers, &["--max-body-bytes", "65536"]);

    let bad_json = HttpRequest::post_json("/v1/responses", &json!({}))
        .raw_body(b"{\"model\": ".to_vec())
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(bad_json.status, 400, "{}", bad_json.text());
    openai_error(&bad_json);

    let mut unknown = responses_body(false);
    unknown["model"] = json!("no/such-model");
    let resp = c.responses(&unknown);
    assert_eq!(resp.status, 404, "{}", resp.text());
    assert_eq!(openai_error(&resp)["code"], "model_not_found");

    let bad_key = HttpRequest::post_json("/v1/responses", &responses_body(false))
        .bearer("kp-not-a-key")
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(bad_key.status, 401, "{}", bad_key.text());
    openai_error(&bad_key);

    let mut chained = responses_body(false);
    chained["previous_response_id"] = json!("resp_123");
    let resp = c.responses(&chained);
    assert_eq!(resp.status, 400, "{}", resp.text());
    let error = openai_error(&resp);
    assert_eq!(error["param"], "previous_response_id");
    assert!(
        error["message"].as_str().unwrap().contains("input"),
        "says to send the whole conversation: {error}"
    );

    let mut no_input = responses_body(false);
    no_input.as_object_mut().unwrap().remove("input");
    let resp = c.responses(&no_input);
    assert_eq!(resp.status, 400, "{}", resp.text());
    openai_error(&resp);

    let mut teleport = responses_body(false);
    teleport["tools"] = json!([{"type": "teleport", "name": "beam_me_up"}]);
    let resp = c.responses(&teleport);
    assert_eq!(resp.status, 400, "{}", resp.text());
    let error = openai_error(&resp);
    assert_eq!(error["param"], "tools", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("teleport"),
        "names the unsupported type: {error}"
    );

    let mut huge = responses_body(false);
    huge["input"] = json!("x".repeat(100_000));
    let resp = c.responses(&huge);
    assert_eq!(resp.status, 413, "{}", resp.text());
    openai_error(&resp);

    let wrong_method = HttpRequest::get("/v1/responses")
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text());

    no_upstream_saw_anything(&c);
}

#[test]
fn forcing_a_builtin_tool_on_an_upstream_that_cannot_run_it_is_refused() {
    let offers = [offer("chat-only", "0.5", "1")];
    let c = Cluster::start(&offers, &[]);
    let mut body = responses_body(false);
    body["tools"] = json!([{"type": "web_search"}]);
    body["tool_choice"] = json!({"type": "web_search"});
    let resp = c.responses(&body);
    assert_eq!(resp.status, 400, "{}", resp.text());
    let error = openai_error(&resp);
    assert!(
        error["message"].as_str().unwrap().contains("web_search"),
        "{error}"
    );
    no_upstream_saw_anything(&c);
}

/// The text of a Responses `output`'s message items.
fn output_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().unwrap() {
        if item["type"] == "message" {
            for part in item["content"].as_array().unwrap() {
                assert_eq!(part["type"], "output_text", "{part}");
                text.push_str(part["text"].as_str().unwrap());
            }
        }
    }
    text
}

#[test]
fn responses_clients_are_served_by_chat_and_anthropic_upstreams() {
    for upstream in [
        offer("chat-up", "1", "2"),
        anthropic_offer("claude-up", "1", "2"),
    ] {
        let c = Cluster::start(&[upstream], &[]);
        let non = c.responses(&responses_body(false));
        assert_eq!(non.status, 200, "{}\n{}", non.text(), c.dp.logs());
        let out = non.json();
        assert_eq!(out["object"], "response");
        assert_eq!(out["status"], "completed");
        assert_eq!(out["model"], MODEL, "answers with the client's model name");
        assert!(out["id"].as_str().unwrap().starts_with("resp_"), "{out}");
        assert!(output_text(&out).starts_with("word0 word1 "), "{out}");
        assert_eq!(out["usage"]["output_tokens"], 20);
        assert!(out["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(out["usage"]["input_tokens_details"]["cached_tokens"], 0);
        let sent = c.fakes[0].requests()[0].json.clone().unwrap();
        let system = if c.fakes[0].requests()[0].path.ends_with("/messages") {
            sent["system"].to_string()
        } else {
            sent["messages"][0].to_string()
        };
        assert!(
            system.contains("Be brief."),
            "instructions reach the upstream: {sent}"
        );

        let streamed = c.responses(&responses_body(true));
        assert_eq!(streamed.status, 200, "{}", streamed.text());
        let events = responses_events(&streamed.text());
        check_stream(&events);
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(&kinds[..2], ["response.created", "response.in_progress"]);
        assert_eq!(kinds.last(), Some(&"response.completed"));
        let deltas: String = events
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, e)| e["delta"].as_str().unwrap())
            .collect();
        let done = &events.last().unwrap().1["response"];
        assert_eq!(
            deltas,
            output_text(done),
            "the deltas add up to the final text"
        );
        assert_eq!(done["usage"]["output_tokens"], 20);

        let rows = c.wait_usage(2);
        assert_eq!(total(&rows, "requests"), 2, "each billed once: {rows:?}");
        assert_eq!(total(&rows, "output_tokens"), 40);
    }
}

#[test]
fn responses_function_calls_round_trip_through_chat_and_anthropic_upstreams() {
    for upstream in [
        offer("chat-up", "1", "2"),
        anthropic_offer("claude-up", "1", "2"),
    ] {
        let c = Cluster::start(&[upstream], &[]);
        let tools = json!([
            {"type": "function", "name": "get_weather", "description": "Weather of a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}},
            {"type": "web_search"}
        ]);
        for stream in [false, true] {
            c.fakes[0].push_once(Behavior::tool_call("get_weather", r#"{"city":"Paris"}"#));
            let mut body = responses_body(stream);
            body["tools"] = tools.clone();
            let resp = c.responses(&body);
            assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
            assert_eq!(
                resp.header("x-keyplane-dropped"),
                Some("tools.web_search"),
                "the built-in tool the upstream cannot run is named"
            );
            let response = if stream {
                let events = responses_events(&resp.text());
                check_stream(&events);
                let args: String = events
                    .iter()
                    .filter(|(k, _)| k == "response.function_call_arguments.delta")
                    .map(|(_, e)| e["delta"].as_str().unwrap())
                    .collect();
                assert_eq!(args, r#"{"city":"Paris"}"#);
                events.last().unwrap().1["response"].clone()
            } else {
                resp.json()
            };
            let call = response["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["type"] == "function_call")
                .unwrap_or_else(|| panic!("no function_call in {response}"))
                .clone();
            assert_eq!(call["name"], "get_weather");
            assert_eq!(call["arguments"], r#"{"city":"Paris"}"#);
            let sent = c.fakes[0].requests().last().unwrap().json.clone().unwrap();
            let sent_tools = sent["tools"].as_array().unwrap();
            assert_eq!(
                sent_tools.len(),
                1,
                "only the function reaches the upstream: {sent}"
            );

            // The client runs the tool and sends the whole conversation back.
            let call_id = call["call_id"].as_str().unwrap().to_string();
            let mut next = responses_body(stream);
            next["tools"] = tools.clone();
            next["input"] = json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": call_id, "name": "get_weather",
                 "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call_output", "call_id": call_id, "output": "sunny, 21C"}
            ]);
            let resp = c.responses(&next);
            assert_eq!(resp.status, 200, "{}", resp.text());
            let sent = c.fakes[0].requests().last().unwrap().body.clone();
            let sent = String::from_utf8_lossy(&sent);
            assert!(
                sent.contains("sunny, 21C"),
                "the tool result reaches the upstream: {sent}"
            );
            assert!(sent.contains(&call_id), "under the call's id: {sent}");
        }
        let rows = c.wait_usage(4);
        assert_eq!(total(&rows, "requests"), 4, "each billed once: {rows:?}");
    }
}

#[test]
fn chat_and_anthropic_clients_are_served_by_a_responses_upstream() {
    let c = Cluster::start(&[responses_offer("resp-up", "1", "2")], &[]);
    let chat = c.chat(&chat_body(false));
    assert_eq!(chat.status, 200, "{}\n{}", chat.text(), c.dp.logs());
    let chat = chat.json();
    assert_eq!(chat["object"], "chat.completion");
    assert!(
        chat["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("word0 ")
    );
    assert_eq!(chat["usage"]["completion_tokens"], 20);

    let streamed = c.chat(&chat_body(true));
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let data = streamed.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");

    let message = c.messages(&messages_body(false));
    assert_eq!(message.status, 200, "{}", message.text());
    let message = message.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["output_tokens"], 20);

    let streamed = c.messages(&messages_body(true));
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let events = anthropic_events(&streamed.text());
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));

    for r in c.fake("resp-up").requests() {
        assert_eq!(r.path, "/v1/responses");
        let sent = r.json.clone().unwrap();
        assert_eq!(sent["model"], "resp-up-model");
        assert!(sent["input"].is_array(), "{sent}");
    }
    let rows = c.wait_usage(4);
    assert_eq!(total(&rows, "requests"), 4, "each billed once: {rows:?}");
    assert_eq!(total(&rows, "output_tokens"), 80);
}

#[test]
fn a_model_offered_in_several_protocols_fails_over_across_them() {
    // Cheapest first whatever the protocol: the chat upstream, then Anthropic, then Responses.
    let offers = [
        offer("chat-cheap", "0.1", "0.2"),
        anthropic_offer("claude-mid", "1", "2"),
        responses_offer("resp-dear", "3", "6"),
    ];
    let c = Cluster::start(&offers, &[]);
    for stream in [false, true] {
        c.fake("chat-cheap").push_once(Behavior::status(503));
        c.fake("claude-mid").push_once(Behavior::status(529));
        let resp = c.responses(&responses_body(stream));
        assert_eq!(resp.status, 200, "{}\n{}", resp.text(), c.dp.logs());
    }
    assert_eq!(c.fake("chat-cheap").requests().len(), 2);
    assert_eq!(c.fake("claude-mid").requests().len(), 2);
    assert_eq!(c.fake("resp-dear").requests().len(), 2);
    let rows = c.wait_usage(2);
    assert_eq!(total(&rows, "requests"), 2, "each billed once: {rows:?}");
    assert!(
        rows.iter().all(|r| r["provider"] == "resp-dear"),
        "{rows:?}"
    );
}

#[test]
fn a_translated_stream_that_fails_after_output_ends_in_the_clients_terms() {
    let c = Cluster::start(&[anthropic_offer("claude-up", "1", "2")], &[]);
    c.fake("claude-up")
        .push_once(Behavior::ErrorAfterContent(3));
    let resp = c.responses(&responses_body(true));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let events = responses_events(&resp.text());
    check_sequence_only(&events);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"response.output_text.delta"), "{kinds:?}");
    assert!(!kinds.contains(&"response.completed"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.failed"), "{kinds:?}");
    let failed = &events.last().unwrap().1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["id"], events[0].1["response"]["id"]);
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let rows = c.wait_usage(1);
    assert_eq!(
        total(&rows, "requests"),
        1,
        "billed once for what was sent: {rows:?}"
    );
}
