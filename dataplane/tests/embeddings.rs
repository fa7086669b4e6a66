//! Embeddings end to end through the real binaries: `POST /v1/embeddings` routed like a
//! completion (cheapest first, failover, key limits), billed once on input tokens, logged with
//! dialect `embeddings`; bad requests refused before any upstream sees them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine as _;
use keyplane_testkit::fake_upstream::{EMBEDDING_DIMENSIONS, embedding};
use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::{Behavior, wait_until};
use serde_json::{Value, json};
use support::*;

const TWO: [Offer<'static>; 2] = [offer("b-mid", "2", "4"), offer("c-cheap", "1", "2")];

fn embed_as(c: &Cluster, key: &str, body: &Value) -> HttpResponse {
    HttpRequest::post_json("/v1/embeddings", body)
        .bearer(key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

fn embed(c: &Cluster, body: &Value) -> HttpResponse {
    embed_as(c, &c.key, body)
}

/// The vectors of an OpenAI embeddings answer, decoding base64 ones.
fn vectors(answer: &Value) -> Vec<Vec<f32>> {
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            match &d["embedding"] {
                Value::String(b64) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap();
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                floats => floats
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

/// `requests --json` entries, waiting until there are `n`.
fn wait_logged(c: &Cluster, n: usize) -> Vec<Value> {
    let mut list = Vec::new();
    let ok = wait_until(TIMEOUT, || {
        list =
            c.cp.ctl(&["--json", "requests", "--limit", "1000"])
                .ok()
                .json()
                .as_array()
                .unwrap()
                .clone();
        list.len() >= n
    });
    assert!(ok, "the log never held {n} entries: {list:?}");
    list
}

fn entry<'a>(list: &'a [Value], resp: &HttpResponse) -> &'a Value {
    let id = resp.header("x-request-id").unwrap();
    list.iter()
        .find(|e| e["request_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in the log: {list:?}"))
}

fn outcomes(e: &Value) -> Vec<(String, String)> {
    e["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn nano(usd: &Value) -> u64 {
    (usd.as_f64().unwrap() * 1e9).round() as u64
}

#[test]
fn string_and_array_input_as_floats_and_base64_with_dimensions_passed_on() {
    let c = Cluster::start(&TWO, &[]);
    let r = embed(&c, &json!({"model": MODEL, "input": "hello world"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["object"], "list");
    assert_eq!(
        answer["model"], MODEL,
        "the client's model, not the upstream's"
    );
    assert_eq!(
        vectors(&answer),
        [embedding("hello world", EMBEDDING_DIMENSIONS)]
    );
    let tokens = ("hello world".len() / 4) as u64;
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    assert_eq!(answer["usage"]["total_tokens"], tokens);
    // Cheapest first; the body passed on with only the model replaced.
    let cheap = c.fake("c-cheap").requests();
    assert_eq!(cheap.len(), 1);
    assert_eq!(cheap[0].path, "/v1/embeddings");
    assert_eq!(cheap[0].header("authorization"), Some("Bearer sk-c-cheap"));
    assert_eq!(
        cheap[0].json.as_ref().unwrap(),
        &json!({"model": "c-cheap-model", "input": "hello world"})
    );
    assert!(c.fake("b-mid").requests().is_empty());

    let texts = ["first input", "second, longer input"];
    let floats = embed(
        &c,
        &json!({"model": MODEL, "input": texts, "dimensions": 16, "encoding_format": "float", "user": "u-1"}),
    );
    assert_eq!(floats.status, 200, "{}", floats.text());
    let b64 = embed(
        &c,
        &json!({"model": MODEL, "input": texts, "dimensions": 16, "encoding_format": "base64"}),
    );
    assert_eq!(b64.status, 200, "{}", b64.text());
    assert!(b64.json()["data"][0]["embedding"].is_string());
    let expected: Vec<Vec<f32>> = texts.iter().map(|t| embedding(t, 16)).collect();
    assert_eq!(vectors(&floats.json()), expected);
    assert_eq!(
        vectors(&b64.json()),
        expected,
        "base64 decodes to the floats"
    );
    let sent = c.fake("c-cheap").requests();
    assert_eq!(sent[1].json.as_ref().unwrap()["dimensions"], 16);
    assert_eq!(sent[1].json.as_ref().unwrap()["user"], "u-1");
    assert_eq!(sent[2].json.as_ref().unwrap()["encoding_format"], "base64");

    let ids = embed(&c, &json!({"model": MODEL, "input": [[1, 2, 3], [4]]}));
    assert_eq!(ids.status, 200, "{}", ids.text());
    assert_eq!(ids.json()["usage"]["prompt_tokens"], 4);
    assert_eq!(
        vectors(&ids.json()),
        [
            embedding("1,2,3", EMBEDDING_DIMENSIONS),
            embedding("4", EMBEDDING_DIMENSIONS)
        ]
    );
}

#[test]
fn failover_bills_the_server_once_at_its_input_price_and_logs_embeddings() {
    let c = Cluster::start(&TWO, &[]);
    c.fake("c-cheap").push_once(Behavior::status(500));
    let input = "a text of some forty bytes, to be billed.";
    let failed_over = embed(&c, &json!({"model": MODEL, "input": [input, input]}));
    assert_eq!(failed_over.status, 200, "{}", failed_over.text());
    let tokens = 2 * (input.len() / 4) as u64;
    assert_eq!(failed_over.json()["usage"]["prompt_tokens"], tokens);
    let direct = embed(&c, &json!({"model": MODEL, "input": input}));
    assert_eq!(direct.status, 200);

    let list = wait_logged(&c, 2);
    c.wait_spool_settled();
    let e = entry(&list, &failed_over);
    assert_eq!(e["dialect"], "embeddings");
    assert_eq!(e["model"], MODEL);
    assert_eq!(e["provider"], "b-mid");
    assert_eq!(e["status"], 200);
    assert_eq!(e["billed"], true);
    assert_eq!(e["estimated"], false);
    assert_eq!(e["input_tokens"], tokens);
    assert_eq!(e["output_tokens"], 0);
    assert_eq!(e["stream"], false);
    // $2 per million input tokens: 2,000 nano-USD a token.
    assert_eq!(nano(&e["computed_cost_usd"]), tokens * 2_000);
    assert_eq!(
        outcomes(e),
        pairs(&[("c-cheap", "server_error"), ("b-mid", "ok")])
    );
    let e = entry(&list, &direct);
    assert_eq!(e["provider"], "c-cheap");
    assert_eq!(
        nano(&e["computed_cost_usd"]),
        (input.len() / 4) as u64 * 1_000
    );

    // Once each in the ledger, at the server's input price.
    let rows = c.wait_usage(2);
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), 2);
    let mid = rows.iter().find(|r| r["provider"] == "b-mid").unwrap();
    assert_eq!(mid["requests"], 1);
    assert_eq!(mid["input_tokens"], tokens);
    assert_eq!(mid["output_tokens"], 0);
    assert_eq!(nano(&mid["cost_usd"]), tokens * 2_000);
}

#[test]
fn bad_requests_are_refused_in_openai_shape_before_any_upstream() {
    let c = Cluster::start(&TWO, &["--max-body-bytes", "4096"]);
    let raw = |body: &[u8]| {
        HttpRequest::post_json("/v1/embeddings", &Value::Null)
            .raw_body(body.to_vec())
            .bearer(&c.key)
            .send(c.dp.addr, TIMEOUT)
            .unwrap()
    };
    let cases: Vec<(&str, HttpResponse, u16, Option<&str>)> = vec![
        ("bad JSON", raw(b"{\"model\":"), 400, None),
        (
            "missing input",
            embed(&c, &json!({"model": MODEL})),
            400,
            Some("input"),
        ),
        (
            "missing model",
            embed(&c, &json!({"input": "x"})),
            400,
            Some("model"),
        ),
        (
            "empty array",
            embed(&c, &json!({"model": MODEL, "input": []})),
            400,
            Some("input"),
        ),
        (
            "empty string",
            embed(&c, &json!({"model": MODEL, "input": ""})),
            400,
            Some("input"),
        ),
        (
            "a number",
            embed(&c, &json!({"model": MODEL, "input": 7})),
            400,
            Some("input"),
        ),
        (
            "mixed array",
            embed(&c, &json!({"model": MODEL, "input": ["a", 1]})),
            400,
            Some("input"),
        ),
        (
            "bad encoding",
            embed(
                &c,
                &json!({"model": MODEL, "input": "a", "encoding_format": "int8"}),
            ),
            400,
            Some("encoding_format"),
        ),
        (
            "bad dimensions",
            embed(&c, &json!({"model": MODEL, "input": "a", "dimensions": -1})),
            400,
            Some("dimensions"),
        ),
        (
            "unknown model",
            embed(&c, &json!({"model": "no/such", "input": "a"})),
            404,
            None,
        ),
        (
            "over the body limit",
            embed(&c, &json!({"model": MODEL, "input": "x".repeat(5000)})),
            413,
            None,
        ),
        (
            "no key",
            HttpRequest::post_json("/v1/embeddings", &json!({"model": MODEL, "input": "a"}))
                .send(c.dp.addr, TIMEOUT)
                .unwrap(),
            401,
            None,
        ),
    ];
    for (what, r, status, param) in &cases {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let error = &r.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            r.text()
        );
        assert!(error["type"].is_string(), "{what}: {}", r.text());
        if let Some(p) = param {
            assert_eq!(error["param"], *p, "{what}: {}", r.text());
        }
    }
    let get = HttpRequest::get("/v1/embeddings")
        .bearer(&c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(get.status, 405, "{}", get.text());
    assert!(get.json()["error"]["message"].is_string());
    for fake in &c.fakes {
        assert_eq!(fake.request_count(), 0, "{} was reached", fake.name());
    }
    // Every refusal of a known key is in the request log, as embeddings, billed nothing.
    let list = wait_logged(&c, cases.len() - 1);
    for (what, r, status, _) in &cases[..cases.len() - 1] {
        let e = entry(&list, r);
        assert_eq!(e["dialect"], "embeddings", "{what}");
        assert_eq!(e["status"], *status, "{what}");
        assert_eq!(e["billed"], false, "{what}");
    }
}

#[test]
fn key_limits_apply_to_embeddings() {
    let c = Cluster::start(&TWO, &[]);
    let create = |name: &str, flags: &[&str]| {
        let mut args = vec!["--json", "key", "create", name];
        args.extend_from_slice(flags);
        let key = c.cp.ctl(&args).ok().json()["key"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(wait_until(TIMEOUT, || {
            HttpRequest::get("/v1/models")
                .bearer(&key)
                .send(c.dp.addr, TIMEOUT)
                .is_ok_and(|r| r.status == 200)
        }));
        key
    };
    let body = json!({"model": MODEL, "input": "limited"});
    let narrow = create("narrow", &["--models", "other/*"]);
    let r = embed_as(&c, &narrow, &body);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_allowed");
    let slow = create("slow", &["--rpm", "1"]);
    assert_eq!(embed_as(&c, &slow, &body).status, 200);
    let r = embed_as(&c, &slow, &body);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(c.fake("c-cheap").request_count(), 1);
}

#[test]
fn upstreams_without_embeddings_are_skipped_and_a_model_with_none_is_refused_clearly() {
    let c = Cluster::start(
        &[
            anthropic_offer("a-cheapest", "0.5", "1"),
            offer("b-mid", "2", "4"),
        ],
        &[],
    );
    let r = embed(
        &c,
        &json!({"model": MODEL, "input": "skip the anthropic one"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.fake("a-cheapest").request_count(), 0);
    let list = wait_logged(&c, 1);
    assert_eq!(
        outcomes(entry(&list, &r)),
        pairs(&[("a-cheapest", "unsupported"), ("b-mid", "ok")])
    );

    let only = Cluster::start(&[anthropic_offer("a-only", "1", "2")], &[]);
    let r = embed(
        &only,
        &json!({"model": MODEL, "input": "nobody serves this"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("No upstream serves embeddings") && message.contains(MODEL),
        "{message}"
    );
    assert_eq!(only.fake("a-only").request_count(), 0);
}

#[test]
fn an_upstream_answer_that_is_not_embeddings_fails_over() {
    let c = Cluster::start(&TWO, &[]);
    // One vector for two inputs, then a body that is not JSON: neither reaches the client.
    c.fake("c-cheap").push_once(Behavior::Status {
        code: 200,
        retry_after: None,
        body: Some(r#"{"object":"list","data":[{"index":0,"embedding":[1]}]}"#.into()),
    });
    let r = embed(&c, &json!({"model": MODEL, "input": ["a", "b"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(vectors(&r.json()).len(), 2);
    assert_eq!(c.fake("b-mid").request_count(), 1);
    // A non-retryable refusal of the request is the client's, in its shape, and not retried.
    c.fake("c-cheap").push_once(Behavior::status(400));
    let r = embed(&c, &json!({"model": MODEL, "input": "refused"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(c.fake("b-mid").request_count(), 1);
}

/// A Gemini upstream (cheapest) and an OpenAI one for the same model.
const MIXED: [Offer<'static>; 2] = [gemini_offer("g-cheap", "1", "2"), offer("o-dear", "3", "6")];

/// The billing estimate of a text: about 4 bytes a token, at least one.
fn estimate(texts: &[&str]) -> u64 {
    texts.iter().map(|t| (t.len() as u64 / 4).max(1)).sum()
}

#[test]
fn a_gemini_upstream_serves_openai_clients_billed_on_its_count_or_the_estimate_flagged() {
    let c = Cluster::start(&MIXED, &[]);
    let texts = ["first text to embed here", "second"];
    let floats = embed(
        &c,
        &json!({"model": MODEL, "input": texts, "dimensions": 6}),
    );
    assert_eq!(floats.status, 200, "{}", floats.text());
    let answer = floats.json();
    assert_eq!(answer["model"], MODEL);
    let expected: Vec<Vec<f32>> = texts.iter().map(|t| embedding(t, 6)).collect();
    assert_eq!(vectors(&answer), expected);
    assert_eq!(answer["usage"]["prompt_tokens"], estimate(&texts));
    let sent = &c.fake("g-cheap").requests()[0];
    assert_eq!(sent.path, "/v1beta/models/g-cheap-model:batchEmbedContents");
    assert_eq!(sent.header("x-goog-api-key"), Some("sk-g-cheap"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.json.as_ref().unwrap(),
        &json!({"requests": [
            {"model": "models/g-cheap-model", "content": {"parts": [{"text": texts[0]}]}, "outputDimensionality": 6},
            {"model": "models/g-cheap-model", "content": {"parts": [{"text": texts[1]}]}, "outputDimensionality": 6},
        ]})
    );
    let b64 = embed(
        &c,
        &json!({"model": MODEL, "input": texts, "dimensions": 6, "encoding_format": "base64"}),
    );
    assert_eq!(b64.status, 200, "{}", b64.text());
    assert!(b64.json()["data"][1]["embedding"].is_string());
    assert_eq!(vectors(&b64.json()), expected, "Gemini's floats as base64");

    // Token ids cannot go to Gemini: the OpenAI upstream serves them.
    let ids = embed(&c, &json!({"model": MODEL, "input": [5, 6, 7]}));
    assert_eq!(ids.status, 200, "{}", ids.text());
    assert_eq!(c.fake("g-cheap").request_count(), 2);

    // A Gemini answer that counts its tokens is billed on its count.
    c.fake("g-cheap").push_once(Behavior::Status {
        code: 200,
        retry_after: None,
        body: Some(
            r#"{"embeddings":[{"values":[0.5,-0.25]}],"usageMetadata":{"promptTokenCount":42}}"#
                .into(),
        ),
    });
    let counted = embed(&c, &json!({"model": MODEL, "input": "counted"}));
    assert_eq!(counted.status, 200, "{}", counted.text());
    assert_eq!(counted.json()["usage"]["prompt_tokens"], 42);
    assert_eq!(vectors(&counted.json()), [vec![0.5, -0.25]]);
    // Google's refusal of the request reaches an OpenAI client in OpenAI's shape, not retried.
    c.fake("g-cheap").push_once(Behavior::Status {
        code: 400,
        retry_after: None,
        body: Some(
            r#"{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT"}}"#
                .into(),
        ),
    });
    let refused = embed(&c, &json!({"model": MODEL, "input": "refused"}));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        refused.json()["error"]["message"],
        "Request contains an invalid argument."
    );
    assert!(refused.json()["error"]["type"].is_string());
    assert_eq!(
        c.fake("o-dear").request_count(),
        1,
        "a refusal is not retried"
    );

    let list = wait_logged(&c, 5);
    c.wait_spool_settled();
    let e = entry(&list, &counted);
    assert_eq!(e["estimated"], false, "{e}");
    assert_eq!(e["input_tokens"], 42);
    assert_eq!(nano(&e["computed_cost_usd"]), 42_000);
    let e = entry(&list, &floats);
    assert_eq!(e["dialect"], "embeddings");
    assert_eq!(e["provider"], "g-cheap");
    assert_eq!(e["estimated"], true, "Gemini counted nothing: {e}");
    assert_eq!(e["input_tokens"], estimate(&texts));
    assert_eq!(nano(&e["computed_cost_usd"]), estimate(&texts) * 1_000);
    let e = entry(&list, &ids);
    assert_eq!(e["provider"], "o-dear");
    assert_eq!(e["estimated"], false);
    assert_eq!(e["input_tokens"], 3);
    assert_eq!(
        outcomes(e),
        pairs(&[("g-cheap", "unsupported"), ("o-dear", "ok")])
    );
    let rows = c.wait_usage(4);
    assert_eq!(total(&rows, "requests"), 4);
}

fn gemini_call(c: &Cluster, method: &str, body: &Value) -> HttpResponse {
    let path = format!("/v1beta/models/{MODEL}:{method}");
    HttpRequest::post_json(&path, body)
        .header("x-goog-api-key", &c.key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

fn values(v: &Value) -> Vec<f32> {
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn gemini_clients_embed_through_a_gemini_and_an_openai_upstream() {
    let c = Cluster::start(&MIXED, &[]);
    let one = json!({
        "content": {"parts": [{"text": "embed me"}]},
        "taskType": "RETRIEVAL_DOCUMENT",
        "title": "A title",
        "outputDimensionality": 5,
    });
    let r = gemini_call(&c, "embedContent", &one);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(values(&r.json()["embedding"]), embedding("embed me", 5));
    // Gemini to Gemini: content and options passed on as sent, the model rewritten.
    assert_eq!(
        c.fake("g-cheap").requests()[0].json.as_ref().unwrap(),
        &json!({"requests": [{"model": "models/g-cheap-model", "content": {"parts": [{"text": "embed me"}]},
            "taskType": "RETRIEVAL_DOCUMENT", "title": "A title", "outputDimensionality": 5}]})
    );

    // The Gemini upstream fails: the OpenAI one serves, in the client's Gemini shape.
    c.fake("g-cheap").push_once(Behavior::status(503));
    let r = gemini_call(&c, "embedContent", &one);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(values(&r.json()["embedding"]), embedding("embed me", 5));
    assert_eq!(r.header("x-keyplane-dropped"), Some("taskType, title"));
    assert_eq!(
        c.fake("o-dear").requests()[0].json.as_ref().unwrap(),
        &json!({"model": "o-dear-model", "input": ["embed me"], "encoding_format": "float", "dimensions": 5})
    );

    let batch = json!({"requests": [
        {"model": format!("models/{MODEL}"), "content": {"parts": [{"text": "one"}]}},
        {"model": format!("models/{MODEL}"), "content": {"parts": [{"text": "two"}, {"text": "parts"}]}},
    ]});
    let r = gemini_call(&c, "batchEmbedContents", &batch);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(
        values(&got["embeddings"][0]),
        embedding("one", EMBEDDING_DIMENSIONS)
    );
    assert_eq!(
        values(&got["embeddings"][1]),
        embedding("two\nparts", EMBEDDING_DIMENSIONS)
    );
    c.fake("g-cheap").push_once(Behavior::status(503));
    let r = gemini_call(&c, "batchEmbedContents", &batch);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(
        values(&r.json()["embeddings"][1]),
        embedding("two\nparts", EMBEDDING_DIMENSIONS),
        "an OpenAI upstream embeds the parts' text joined by newlines, as the fake's Gemini does"
    );

    let list = wait_logged(&c, 4);
    for e in &list {
        assert_eq!(e["dialect"], "gemini", "{e}");
        assert_eq!(e["status"], 200);
        assert_eq!(e["billed"], true);
    }
    assert_eq!(total(&c.wait_usage(4), "requests"), 4);
}

#[test]
fn bad_gemini_embed_requests_are_refused_in_googles_shape_before_any_upstream() {
    let c = Cluster::start(&MIXED, &["--max-body-bytes", "4096"]);
    let raw = |method: &str, body: &[u8]| {
        let path = format!("/v1beta/models/{MODEL}:{method}");
        HttpRequest::post_json(&path, &Value::Null)
            .raw_body(body.to_vec())
            .header("x-goog-api-key", &c.key)
            .send(c.dp.addr, TIMEOUT)
            .unwrap()
    };
    let big = json!({"content": {"parts": [{"text": "x".repeat(5000)}]}});
    let cases = [
        ("bad JSON", raw("embedContent", b"{\"content\":"), 400),
        ("no content", raw("embedContent", b"{}"), 400),
        (
            "content not an object",
            raw("embedContent", br#"{"content":"hi"}"#),
            400,
        ),
        (
            "no parts",
            raw("embedContent", br#"{"content":{"parts":[]}}"#),
            400,
        ),
        ("no requests", raw("batchEmbedContents", b"{}"), 400),
        (
            "empty requests",
            raw("batchEmbedContents", br#"{"requests":[]}"#),
            400,
        ),
        (
            "bad dimensionality",
            raw(
                "embedContent",
                br#"{"content":{"parts":[{"text":"a"}]},"outputDimensionality":"big"}"#,
            ),
            400,
        ),
        (
            "over the body limit",
            raw("embedContent", big.to_string().as_bytes()),
            413,
        ),
        (
            "unknown model",
            HttpRequest::post_json(
                "/v1beta/models/no-such:embedContent",
                &json!({"content": {"parts": [{"text": "a"}]}}),
            )
            .header("x-goog-api-key", &c.key)
            .send(c.dp.addr, TIMEOUT)
            .unwrap(),
            404,
        ),
        (
            "wrong method",
            HttpRequest::get(&format!("/v1beta/models/{MODEL}:embedContent"))
                .header("x-goog-api-key", &c.key)
                .send(c.dp.addr, TIMEOUT)
                .unwrap(),
            405,
        ),
    ];
    for (what, r, status) in &cases {
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let error = &r.json()["error"];
        assert_eq!(error["code"], *status, "{what}: {}", r.text());
        assert!(error["status"].is_string(), "{what}: {}", r.text());
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for fake in &c.fakes {
        assert_eq!(fake.request_count(), 0, "{} was reached", fake.name());
    }
}
