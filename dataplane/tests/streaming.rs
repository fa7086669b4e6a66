//! Streaming through the data plane: events relayed as they arrive, usage chunks handled, client
//! disconnects, and failures after content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::Behavior;
use keyplane_testkit::http::HttpRequest;
use serde_json::json;
use std::time::Duration;
use support::*;

const TWO: [Offer<'static>; 2] = [offer("b-mid", "2", "4"), offer("c-cheap", "1", "2")];

#[test]
fn the_first_chunk_arrives_long_before_the_last() {
    let c = Cluster::start(&TWO, &[]);
    c.fake("c-cheap")
        .set_behavior(Behavior::ChunkDelay(Duration::from_millis(100)));
    let resp = HttpRequest::post_json("/v1/chat/completions", &chat_body(true))
        .bearer(&c.key)
        .stream(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
    );
    let sent = resp.sent;
    let chunks = resp.collect().unwrap();
    let with_content: Vec<_> = chunks
        .iter()
        .filter(|(bytes, _)| String::from_utf8_lossy(bytes).contains("word"))
        .collect();
    assert!(
        with_content.len() >= 15,
        "events arrive separately, not re-batched: {}",
        with_content.len()
    );
    let first = with_content.first().unwrap().1.duration_since(sent);
    let last = with_content.last().unwrap().1.duration_since(sent);
    assert!(
        last >= Duration::from_millis(1500),
        "the upstream trickles for ~2 s: {last:?}"
    );
    assert!(
        first + Duration::from_millis(1200) < last,
        "first {first:?}, last {last:?}"
    );
}

#[test]
fn usage_is_billed_once_with_and_without_include_usage_and_non_stream() {
    let c = Cluster::start(&TWO, &[]);
    // Stream without stream_options (aider): the client gets no usage chunk...
    let plain = c.chat(&chat_body(true));
    assert_eq!(plain.status, 200);
    let data = plain.sse_data();
    assert!(
        !data.iter().any(|d| d.contains("\"choices\":[]")),
        "no usage chunk for a client that did not ask: {data:?}"
    );
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    // ...but the upstream was asked for it.
    let asked = &c.fake("c-cheap").requests()[0];
    assert_eq!(
        asked.json.as_ref().unwrap()["stream_options"]["include_usage"],
        true
    );

    // Stream with include_usage: the chunk is passed on.
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let with = c.chat(&body);
    let usage_chunk = with
        .sse_data()
        .into_iter()
        .find(|d| d.contains("\"choices\":[]"))
        .expect("the usage chunk the client asked for");
    let usage: serde_json::Value = serde_json::from_str(&usage_chunk).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 20);

    // Non-stream.
    let non = c.chat(&chat_body(false));
    assert_eq!(non.json()["usage"]["completion_tokens"], 20);

    let rows = c.wait_usage(3);
    assert_eq!(rows.len(), 1);
    let expected_input: u64 = c
        .fake("c-cheap")
        .requests()
        .iter()
        .map(|r| keyplane_testkit::fake_upstream::prompt_tokens_for(&r.body))
        .sum();
    assert_eq!(
        total(&rows, "input_tokens"),
        expected_input,
        "the upstream's own counts"
    );
    assert_eq!(total(&rows, "output_tokens"), 60);
    // $1/M in, $2/M out.
    let expected_cost = (expected_input as f64 * 1.0 + 60.0 * 2.0) / 1e6;
    let cost = rows[0]["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected_cost).abs() < 1e-9,
        "{cost} vs {expected_cost}"
    );
    // Once the spool has nothing left to report, the count is final: each record counted once.
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), 3);
}

#[test]
fn an_error_after_content_ends_the_stream_and_bills_what_was_sent() {
    let c = Cluster::start(&TWO, &[]);
    c.fake("c-cheap")
        .set_behavior(Behavior::ErrorAfterContent(3));
    let resp = c.chat(&chat_body(true));
    assert_eq!(resp.status, 200);
    let text = resp.text();
    assert!(text.contains("word2"), "{text}");
    assert!(
        text.contains("\"error\""),
        "the error reaches the client: {text}"
    );
    assert_eq!(
        c.fake("b-mid").request_count(),
        0,
        "no retry once content was sent"
    );
    let rows = c.wait_usage(1);
    assert_eq!(rows[0]["provider"], "c-cheap");

    // A cut after content: the stream ends with an OpenAI-shaped error event.
    c.fake("c-cheap").set_behavior(Behavior::CutAfter(4));
    let resp = c.chat(&chat_body(true));
    let data = resp.sse_data();
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{data:?}");
    assert!(resp.text().contains("word3"));
    let rows = c.wait_usage(2);
    assert!(total(&rows, "output_tokens") >= 4 + 3);
}

#[test]
fn a_client_disconnect_cancels_the_upstream_request() {
    let c = Cluster::start(&TWO, &[]);
    c.fake("c-cheap")
        .set_behavior(Behavior::ChunkDelay(Duration::from_millis(200)));
    let mut resp = HttpRequest::post_json("/v1/chat/completions", &chat_body(true))
        .bearer(&c.key)
        .stream(c.dp.addr, TIMEOUT)
        .unwrap();
    let mut seen = 0;
    while seen < 2 {
        let (chunk, _) = resp.next_chunk().unwrap().unwrap();
        if String::from_utf8_lossy(&chunk).contains("word") {
            seen += 1;
        }
    }
    resp.abort();
    assert!(
        keyplane_testkit::wait_until(Duration::from_secs(5), || {
            c.fake("c-cheap").requests()[0].client_disconnected
        }),
        "the upstream request was not cancelled"
    );
    // What was streamed is billed, marked as estimated where the upstream sent no usage.
    let rows = c.wait_usage(1);
    assert!(total(&rows, "output_tokens") >= 2);
    assert!(
        total(&rows, "input_tokens") > 0,
        "the prompt is estimated too: {rows:?}"
    );
}
