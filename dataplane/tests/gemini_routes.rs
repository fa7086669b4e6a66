//! Gemini's HTTP surface end to end, through the real binaries: the paths Google's clients call
//! (models with `/`, the `/v1/` spelling), the three key placements, Google-shaped refusals that
//! reach no upstream, the models list and its paging, `countTokens` both ways, Google's upstream
//! errors feeding credential health, and a `?key=` that never reaches a log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::Behavior;
use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::wait_until;
use serde_json::{Value, json};
use support::*;

fn gemini_body() -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generationConfig": {"maxOutputTokens": 64},
    })
}

fn post(c: &Cluster, path: &str, body: &Value, auth: Auth<'_>) -> HttpResponse {
    let req = HttpRequest::post_json(path, body);
    auth.apply(req).send(c.dp.addr, TIMEOUT).unwrap()
}

fn get(c: &Cluster, path: &str, auth: Auth<'_>) -> HttpResponse {
    auth.apply(HttpRequest::get(path))
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

/// Where a request carries its key (the query placement is part of the path).
#[derive(Clone, Copy)]
enum Auth<'a> {
    Goog(&'a str),
    Bearer(&'a str),
    None,
}

impl Auth<'_> {
    fn apply<'r>(self, req: HttpRequest<'r>) -> HttpRequest<'r> {
        match self {
            Auth::Goog(key) => req.header("x-goog-api-key", key),
            Auth::Bearer(key) => req.bearer(key),
            Auth::None => req,
        }
    }
}

/// The error object of a Google-shaped refusal, checked for Google's fields.
fn google_error(resp: &HttpResponse, status: u16, name: &str) -> Value {
    assert_eq!(resp.status, status, "{}", resp.text());
    let body = resp.json();
    let error = &body["error"];
    assert_eq!(error["code"], status, "{body}");
    assert_eq!(error["status"], name, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body.get("type").is_none(), "not Anthropic's shape: {body}");
    error.clone()
}

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

fn credential_of(c: &Cluster, provider: &str) -> Value {
    c.cp.ctl(&["--json", "credential", "list", "--provider", provider])
        .ok()
        .json()[0]
        .clone()
}

fn wait_state(c: &Cluster, provider: &str, state: &str) -> Value {
    let mut cred = Value::Null;
    assert!(
        wait_until(TIMEOUT, || {
            cred = credential_of(c, provider);
            cred["state"] == state
        }),
        "{provider} never became {state}: {cred}\n{}",
        c.dp.logs()
    );
    cred
}

const ONE: [Offer<'static>; 1] = [gemini_offer("gem", "1", "2")];

#[test]
fn every_path_spelling_and_key_placement_reaches_the_gemini_upstream() {
    let c = Cluster::start(&ONE, &[]);
    let key = c.key.clone();
    // MODEL is "test/model": a `/` in the path, plain and percent-encoded.
    let cases: [(String, Auth<'_>, &str); 4] = [
        (
            format!("/v1beta/models/{MODEL}:generateContent"),
            Auth::Goog(&key),
            "",
        ),
        (
            format!("/v1/models/test%2Fmodel:generateContent?key={key}"),
            Auth::None,
            "",
        ),
        (
            format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
            Auth::Bearer(&key),
            "sse",
        ),
        (
            format!("/v1/models/models/{MODEL}:streamGenerateContent"),
            Auth::Goog(&key),
            "array",
        ),
    ];
    for (path, auth, framing) in &cases {
        let resp = post(&c, path, &gemini_body(), *auth);
        assert_eq!(resp.status, 200, "{path}: {}\n{}", resp.text(), c.dp.logs());
        match *framing {
            "sse" => {
                assert_eq!(resp.header("content-type"), Some("text/event-stream"));
                let chunks = resp.sse_data();
                assert!(chunks.len() > 1, "{}", resp.text());
                let last: Value = serde_json::from_str(chunks.last().unwrap()).unwrap();
                assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{last}");
            }
            "array" => {
                assert_eq!(resp.header("content-type"), Some("application/json"));
                let chunks = resp.json();
                assert!(chunks.as_array().unwrap().len() > 1, "{chunks}");
            }
            _ => {
                let body = resp.json();
                assert!(
                    body["candidates"][0]["content"]["parts"].is_array(),
                    "{body}"
                );
                assert!(body["usageMetadata"]["promptTokenCount"].is_number());
            }
        }
    }
    let seen = c.fake("gem").requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gem-model:generateContent",
            "/v1beta/models/gem-model:generateContent",
            "/v1beta/models/gem-model:streamGenerateContent?alt=sse",
            "/v1beta/models/gem-model:streamGenerateContent?alt=sse",
        ],
        "the upstream's own id and method; a client's query (with its key) goes nowhere"
    );
    for r in &seen {
        assert_eq!(r.header("x-goog-api-key"), Some("sk-gem"));
        assert_eq!(r.header("authorization"), None);
        assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    }
    // Each served once, billed once, logged under the gemini dialect with the path's model.
    let rows = c.wait_usage(4);
    assert_eq!(total(&rows, "requests"), 4, "{rows:?}");
    assert!(total(&rows, "output_tokens") > 0);
    let log = c.cp.ctl(&["--json", "requests"]).ok().json();
    let entries = log.as_array().unwrap();
    assert_eq!(entries.len(), 4, "{log}");
    for e in entries {
        assert_eq!(e["dialect"], "gemini", "{e}");
        assert_eq!(e["model"], MODEL, "{e}");
        assert_eq!(e["status"], 200, "{e}");
    }
}

#[test]
fn refusals_are_googles_and_reach_no_upstream() {
    let c = Cluster::start(&ONE, &["--max-body-bytes", "4096"]);
    let key = c.key.clone();
    let generate = format!("/v1beta/models/{MODEL}:generateContent");

    let none = google_error(
        &post(&c, &generate, &gemini_body(), Auth::None),
        401,
        "UNAUTHENTICATED",
    );
    assert!(none.get("details").is_none(), "{none}");
    for resp in [
        post(&c, &generate, &gemini_body(), Auth::Goog("kp_wrong")),
        post(
            &c,
            &format!("{generate}?key=kp_wrong"),
            &gemini_body(),
            Auth::None,
        ),
        post(&c, &generate, &gemini_body(), Auth::Bearer("kp_wrong")),
    ] {
        let wrong = google_error(&resp, 401, "UNAUTHENTICATED");
        assert_eq!(wrong["details"][0]["reason"], "API_KEY_INVALID", "{wrong}");
    }
    google_error(
        &post(
            &c,
            "/v1beta/models/no/such-model:generateContent",
            &gemini_body(),
            Auth::Goog(&key),
        ),
        404,
        "NOT_FOUND",
    );
    let bad_json = HttpRequest::post_json(&generate, &json!({}))
        .raw_body(b"{\"contents\": [".to_vec())
        .header("x-goog-api-key", &key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    google_error(&bad_json, 400, "INVALID_ARGUMENT");
    google_error(
        &post(
            &c,
            &generate,
            &json!({"generationConfig": {}}),
            Auth::Goog(&key),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    let big = json!({"contents": [{"parts": [{"text": "x".repeat(8000)}]}]});
    let too_large = post(&c, &generate, &big, Auth::Goog(&key));
    assert_eq!(too_large.status, 413, "{}", too_large.text());
    assert!(too_large.json()["error"]["status"].is_string());
    google_error(
        &post(
            &c,
            &format!("/v1beta/models/{MODEL}:predict"),
            &gemini_body(),
            Auth::Goog(&key),
        ),
        404,
        "NOT_FOUND",
    );
    google_error(
        &post(&c, "/v1beta/files", &json!({}), Auth::Goog(&key)),
        404,
        "NOT_FOUND",
    );
    let wrong_method = get(&c, &generate, Auth::Goog(&key));
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text());
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert_eq!(wrong_method.json()["error"]["code"], 405);
    let post_list = post(&c, "/v1beta/models", &json!({}), Auth::Goog(&key));
    assert_eq!(post_list.status, 405);
    assert_eq!(post_list.header("allow"), Some("GET"));

    // A key's own limits answer in Google's shape too.
    let limited =
        c.cp.ctl(&["--json", "key", "create", "limited", "--models", "other/*"])
            .ok()
            .json()["key"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(wait_until(TIMEOUT, || {
        get(&c, "/v1beta/models", Auth::Goog(&limited)).status == 200
    }));
    for path in [
        generate.clone(),
        format!("/v1beta/models/{MODEL}:countTokens"),
    ] {
        google_error(
            &post(&c, &path, &gemini_body(), Auth::Goog(&limited)),
            403,
            "PERMISSION_DENIED",
        );
    }

    no_upstream_saw_anything(&c);
}

#[test]
fn the_models_list_is_googles_with_paging_and_v1_models_stays_openais() {
    let c = Cluster::start(&ONE, &[]);
    for extra in ["a/first", "z/last", "m/middle"] {
        c.cp.ctl(&[
            "model",
            "set",
            extra,
            "--provider",
            "gem",
            "--upstream-model",
            "gem-model",
            "--input",
            "1",
            "--output",
            "1",
        ])
        .ok();
    }
    let key = c.key.clone();
    assert!(wait_until(TIMEOUT, || {
        get(&c, "/v1beta/models", Auth::Goog(&key)).json()["models"]
            .as_array()
            .is_some_and(|m| m.len() == 4)
    }));
    let all = get(&c, "/v1beta/models", Auth::Goog(&key)).json();
    assert!(all.get("nextPageToken").is_none(), "{all}");
    let first = &all["models"][0];
    assert_eq!(first["name"], "models/a/first", "{all}");
    assert!(
        first["supportedGenerationMethods"]
            .as_array()
            .unwrap()
            .contains(&json!("generateContent"))
    );

    // Page by page, two at a time, with the key in the query.
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let path = match &token {
            Some(t) => format!("/v1beta/models?pageSize=2&pageToken={t}&key={key}"),
            None => format!("/v1beta/models?pageSize=2&key={key}"),
        };
        let page = get(&c, &path, Auth::None);
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let models = page["models"].as_array().unwrap();
        assert!(models.len() <= 2, "{page}");
        names.extend(
            models
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string()),
        );
        token = page["nextPageToken"].as_str().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(
        names,
        [
            "models/a/first",
            "models/m/middle",
            "models/test/model",
            "models/z/last"
        ]
    );
    google_error(
        &get(&c, "/v1beta/models?pageToken=zz", Auth::Goog(&key)),
        400,
        "INVALID_ARGUMENT",
    );

    // One model, by a path with a `/` in it.
    let one = get(&c, &format!("/v1beta/models/{MODEL}"), Auth::Goog(&key));
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["name"], "models/test/model");
    google_error(
        &get(&c, "/v1beta/models/no/such", Auth::Goog(&key)),
        404,
        "NOT_FOUND",
    );
    google_error(
        &get(&c, "/v1beta/models", Auth::None),
        401,
        "UNAUTHENTICATED",
    );

    // GET /v1/models: OpenAI's list with a Bearer key, Google's with Google's placements.
    let openai = get(&c, "/v1/models", Auth::Bearer(&key)).json();
    assert_eq!(openai["object"], "list", "{openai}");
    assert_eq!(openai["data"].as_array().unwrap().len(), 4);
    for google in [
        get(&c, "/v1/models", Auth::Goog(&key)),
        get(&c, &format!("/v1/models?key={key}"), Auth::None),
    ] {
        let body = google.json();
        assert_eq!(body["models"].as_array().unwrap().len(), 4, "{body}");
        assert!(body.get("object").is_none());
    }
    no_upstream_saw_anything(&c);
}

#[test]
fn count_tokens_asks_a_gemini_upstream_or_estimates_and_bills_nothing() {
    let offers = [gemini_offer("gem", "1", "2"), offer("oai", "0.1", "0.2")];
    let c = Cluster::start(&offers, &[]);
    // A second model only the OpenAI upstream serves.
    c.cp.ctl(&[
        "model",
        "set",
        "openai/only",
        "--provider",
        "oai",
        "--upstream-model",
        "oai-model",
        "--input",
        "1",
        "--output",
        "1",
    ])
    .ok();
    let key = c.key.clone();
    assert!(wait_until(TIMEOUT, || {
        get(&c, "/v1beta/models/openai/only", Auth::Goog(&key)).status == 200
    }));
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]});

    // MODEL: the OpenAI upstream is cheaper, but only the Gemini one can count.
    let exact = post(
        &c,
        &format!("/v1/models/{MODEL}:countTokens"),
        &body,
        Auth::Goog(&key),
    );
    assert_eq!(exact.status, 200, "{}", exact.text());
    let exact = exact.json();
    assert!(exact["totalTokens"].as_u64().unwrap() > 0, "{exact}");
    assert!(
        exact["promptTokensDetails"].is_array(),
        "the upstream's own answer: {exact}"
    );
    let seen = c.fake("gem").requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1beta/models/gem-model:countTokens");
    assert_eq!(seen[0].header("x-goog-api-key"), Some("sk-gem"));
    assert_eq!(seen[0].json.as_ref().unwrap(), &body);

    // Without a Gemini candidate: an estimate, and no upstream asked.
    let estimate = post(
        &c,
        "/v1beta/models/openai/only:countTokens",
        &body,
        Auth::Goog(&key),
    );
    assert_eq!(estimate.status, 200, "{}", estimate.text());
    let estimate = estimate.json();
    let bytes = serde_json::to_vec(&body).unwrap().len() as u64;
    assert_eq!(estimate, json!({"totalTokens": bytes / 4}));
    assert!(c.fake("oai").requests().is_empty());
    assert_eq!(c.fake("gem").requests().len(), 1);

    google_error(
        &post(
            &c,
            "/v1beta/models/no/such:countTokens",
            &body,
            Auth::Goog(&key),
        ),
        404,
        "NOT_FOUND",
    );
    google_error(
        &post(&c, "/v1beta/models/no/such:countTokens", &body, Auth::None),
        401,
        "UNAUTHENTICATED",
    );

    // Counting is not billed: nothing reaches the ledger.
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), 0);
}

const TWO: [Offer<'static>; 2] = [
    gemini_offer("gem-cheap", "0.1", "0.2"),
    gemini_offer("gem-dear", "3", "6"),
];

#[test]
fn a_429_with_retry_info_cools_the_credential_for_googles_delay_and_fails_over() {
    let c = Cluster::start(&TWO, &[]);
    let body = keyplane_testkit::samples::text("gemini-error-429-per-minute.json");
    c.fake("gem-cheap").set_behavior(Behavior::Status {
        code: 429,
        retry_after: None,
        body: Some(body.to_string()),
    });
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    let first = post(&c, &generate, &gemini_body(), Auth::Goog(&c.key));
    assert_eq!(first.status, 200, "{}", first.text());
    for _ in 0..3 {
        assert_eq!(
            post(&c, &generate, &gemini_body(), Auth::Goog(&c.key)).status,
            200
        );
    }
    assert_eq!(
        c.fake("gem-cheap").request_count(),
        1,
        "cooling down: the following requests skip it"
    );
    assert_eq!(c.fake("gem-dear").request_count(), 4);
    let cred = wait_state(&c, "gem-cheap", "cooldown");
    assert_eq!(cred["state_reason"], "429, retry after 26000 ms", "{cred}");

    // Every candidate rate limited: the client gets Google's 429 and Google's delay.
    c.fake("gem-dear").set_behavior(Behavior::Status {
        code: 429,
        retry_after: None,
        body: Some(body.to_string()),
    });
    let refused = post(&c, &generate, &gemini_body(), Auth::Goog(&c.key));
    google_error(&refused, 429, "RESOURCE_EXHAUSTED");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((20..=26).contains(&wait), "{wait}");
}

#[test]
fn a_key_google_calls_invalid_is_benched_even_on_a_400() {
    let c = Cluster::start(&TWO, &[]);
    c.fake("gem-cheap").set_behavior(Behavior::Status {
        code: 400,
        retry_after: None,
        body: Some(
            keyplane_testkit::samples::text("gemini-error-400-api-key-invalid.json").to_string(),
        ),
    });
    let generate = format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse");
    for _ in 0..3 {
        let resp = post(&c, &generate, &gemini_body(), Auth::Goog(&c.key));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(c.fake("gem-cheap").request_count(), 1);
    wait_state(&c, "gem-cheap", "invalid");

    // A 400 about the request is the client's: relayed, nobody benched, not tried elsewhere.
    c.fake("gem-dear").set_behavior(Behavior::Status {
        code: 400,
        retry_after: None,
        body: Some(
            r#"{"error":{"code":400,"message":"Invalid value at 'generation_config.temperature'","status":"INVALID_ARGUMENT"}}"#
                .to_string(),
        ),
    });
    let relayed = post(&c, &generate, &gemini_body(), Auth::Goog(&c.key));
    let error = google_error(&relayed, 400, "INVALID_ARGUMENT");
    assert!(error["message"].as_str().unwrap().contains("temperature"));
    assert_eq!(credential_of(&c, "gem-dear")["state"], "active");
}

#[test]
fn a_503_from_google_opens_the_breaker() {
    let c = Cluster::start(&TWO, &[]);
    c.fake("gem-cheap").set_behavior(Behavior::status(503));
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    // The breaker opens once its window holds enough requests (20) with enough failures.
    for _ in 0..20 {
        let resp = post(&c, &generate, &gemini_body(), Auth::Goog(&c.key));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    wait_state(&c, "gem-cheap", "circuit_open");
    let tried = c.fake("gem-cheap").request_count();
    assert_eq!(tried, 20);
    for _ in 0..3 {
        post(&c, &generate, &gemini_body(), Auth::Goog(&c.key));
    }
    assert_eq!(
        c.fake("gem-cheap").request_count(),
        tried,
        "an open breaker sends nothing"
    );
}

#[test]
fn a_key_in_the_query_never_reaches_a_log_a_metric_or_the_request_log() {
    let c = Cluster::start(&ONE, &[]);
    let key = c.key.clone();
    let wrong = "kp_wrong_QUERYKEYMARKER";
    let paths = [
        format!("/v1beta/models/{MODEL}:generateContent?key={key}"),
        format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse&key={key}"),
        format!("/v1beta/models/no/such:generateContent?key={key}"),
        format!("/v1beta/models/{MODEL}:countTokens?key={key}"),
        format!("/v1beta/models/{MODEL}:generateContent?key={wrong}"),
    ];
    for path in &paths {
        post(&c, path, &gemini_body(), Auth::None);
    }
    let bad = HttpRequest::post_json(&paths[0], &json!({}))
        .raw_body(b"not json".to_vec())
        .send(c.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(bad.status, 400);
    get(&c, &format!("/v1beta/models?key={key}"), Auth::None);
    c.wait_usage(2);
    c.wait_spool_settled();

    let metrics = get(&c, "/metrics", Auth::None).text();
    let requests = c.cp.ctl(&["--json", "requests"]).ok().stdout;
    assert!(requests.contains("\"gemini\""), "{requests}");
    let logs = c.dp.logs();
    assert!(!logs.is_empty());
    for secret in [key.as_str(), wrong] {
        assert!(
            !logs.contains(secret),
            "the data plane logged a query key:\n{logs}"
        );
        assert!(!metrics.contains(secret), "a metric holds a query key");
        assert!(
            !requests.contains(secret),
            "the request log holds a query key"
        );
        for r in c.fake("gem").requests() {
            assert!(!r.path.contains(secret), "{}", r.path);
            assert!(!r.headers.iter().any(|(_, v)| v.contains(secret)));
        }
    }
}

#[test]
fn other_dialects_reach_a_gemini_upstream_at_its_method_urls() {
    let c = Cluster::start(&ONE, &[]);
    for stream in [false, true] {
        let chat = c.chat(&chat_body(stream));
        assert_eq!(chat.status, 200, "{}\n{}", chat.text(), c.dp.logs());
        let messages = c.messages(&messages_body(stream));
        assert_eq!(messages.status, 200, "{}", messages.text());
    }
    let paths: Vec<String> = c
        .fake("gem")
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gem-model:generateContent",
            "/v1beta/models/gem-model:generateContent",
            "/v1beta/models/gem-model:streamGenerateContent?alt=sse",
            "/v1beta/models/gem-model:streamGenerateContent?alt=sse",
        ]
    );
    for r in c.fake("gem").requests() {
        assert_eq!(r.header("x-goog-api-key"), Some("sk-gem"));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("x-api-key"), None);
    }
    let rows = c.wait_usage(4);
    assert!(total(&rows, "output_tokens") > 0, "{rows:?}");
}

#[test]
fn gemini_embedding_methods_go_through_the_same_dispatch() {
    let c = Cluster::start(&[offer("oai", "0.1", "0.2")], &[]);
    let key = c.key.clone();
    let one = post(
        &c,
        &format!("/v1beta/models/{MODEL}:embedContent"),
        &json!({"content": {"parts": [{"text": "hello"}]}}),
        Auth::Goog(&key),
    );
    assert_eq!(one.status, 200, "{}\n{}", one.text(), c.dp.logs());
    assert!(
        one.json()["embedding"]["values"].is_array(),
        "{}",
        one.text()
    );
    let batch = post(
        &c,
        &format!("/v1/models/test%2Fmodel:batchEmbedContents?key={key}"),
        &json!({"requests": [
            {"content": {"parts": [{"text": "hello"}]}, "model": format!("models/{MODEL}")},
            {"content": {"parts": [{"text": "world"}]}, "model": format!("models/{MODEL}")},
        ]}),
        Auth::None,
    );
    assert_eq!(batch.status, 200, "{}", batch.text());
    assert_eq!(batch.json()["embeddings"].as_array().unwrap().len(), 2);
    google_error(
        &post(
            &c,
            &format!("/v1beta/models/{MODEL}:embedContent"),
            &json!({"content": {}}),
            Auth::None,
        ),
        401,
        "UNAUTHENTICATED",
    );
}
