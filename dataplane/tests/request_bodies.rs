//! Captured bodies end to end: a key with `--capture-bodies` has its prompt and completion (stream
//! and not, refusals too, in the OpenAI chat, Anthropic, Gemini and embeddings endpoints) shown in
//! the console's view of the request, cut at the cap with a flag;
//! a key without has nothing kept; bodies never reach `keyplanectl requests --json`; they are
//! pruned before their log entries; and they land once across a data plane kill.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::process::{ControlOptions, ControlPlane};
use keyplane_testkit::{FakeConfig, wait_until};
use serde_json::{Value, json};
use std::net::SocketAddr;
use support::*;

const ONE: [Offer<'static>; 1] = [offer("c-cheap", "1", "2")];
/// The data plane's capture cap (`capture::CAP_BYTES`).
const CAP: usize = 64 * 1024;
/// Words per completion: a completion without a token limit is past the cap (stream or not).
const LONG_WORDS: usize = 12_000;

fn control(extra: &[&str]) -> ControlPlane {
    ControlPlane::start_with(ControlOptions {
        console: true,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..ControlOptions::default()
    })
}

fn long_completions(config: &mut FakeConfig) {
    config.chunks = LONG_WORDS;
}

/// Creates key `name` with `flags`; returns the client key once the data plane accepts it.
fn key(c: &Cluster, name: &str, flags: &[&str]) -> String {
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
}

fn chat_as(c: &Cluster, key: &str, body: &Value) -> HttpResponse {
    HttpRequest::post_json("/v1/chat/completions", body)
        .bearer(key)
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
}

/// A chat request whose prompt carries `marker`, answered with at most 5 words when `short`.
fn prompt(marker: &str, stream: bool, short: bool) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("Tell me about {marker}")}],
        "stream": stream,
    });
    if short {
        body["max_tokens"] = json!(5);
    }
    body
}

fn id_of(resp: &HttpResponse) -> String {
    resp.header("x-request-id").unwrap().to_string()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Signs in to the console with the admin token; returns the session cookie.
fn sign_in(cp: &ControlPlane) -> String {
    let resp = HttpRequest {
        method: "POST",
        path: "/login",
        headers: vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )],
        body: format!("token={}", encode(&cp.admin_token)).into_bytes(),
    }
    .send(console(cp), TIMEOUT)
    .unwrap();
    assert_eq!(resp.status, 303, "{}", resp.text());
    let set = resp.header("set-cookie").unwrap();
    set.split(';').next().unwrap().trim().to_string()
}

fn console(cp: &ControlPlane) -> SocketAddr {
    cp.console_addr.expect("the console announced its address")
}

fn page(cp: &ControlPlane, cookie: &str, path: &str) -> String {
    let resp = HttpRequest::get(path)
        .header("cookie", cookie)
        .send(console(cp), TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    resp.text()
}

/// The console's view of request `id` of key `key`, found through the log's page (which links
/// it with its start time), once it is logged.
fn view(cp: &ControlPlane, cookie: &str, key: &str, id: &str) -> String {
    let marker = format!("href=\"/requests/view?id={id}&amp;at=");
    let mut list = String::new();
    let found = wait_until(TIMEOUT, || {
        list = page(cp, cookie, &format!("/requests?key={key}&limit=1000"));
        list.contains(&marker)
    });
    assert!(found, "{id} never logged: {list}");
    let start = list.find(&marker).unwrap() + marker.len();
    let at: String = list[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    page(cp, cookie, &format!("/requests/view?id={id}&at={at}"))
}

/// The text of the `<pre>` with `id` in a page, unescaped, and its truncation flag; `None`
/// when the page has no such body.
fn body_in(html: &str, id: &str) -> Option<(String, bool)> {
    let open = html.find(&format!("<pre class=\"body\" id=\"{id}\""))?;
    let rest = &html[open..];
    let truncated = rest[..rest.find('>')?].contains("data-truncated=\"true\"");
    let text = &rest[rest.find('>')? + 1..rest.find("</pre>")?];
    let text = text
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    Some((text, truncated))
}

fn requests_json(c: &Cluster) -> String {
    c.cp.ctl(&["--json", "requests", "--limit", "1000"])
        .ok()
        .stdout
}

#[test]
fn a_capturing_key_shows_its_bodies_in_the_console_and_nowhere_else() {
    let cp = control(&[]);
    let c = Cluster::start_on(cp, &ONE, &[], long_completions);
    let debug = key(&c, "debug", &["--capture-bodies"]);
    let cookie = sign_in(&c.cp);

    // Not streamed: the prompt as sent and the JSON answer as the client got it.
    let plain = chat_as(&c, &debug, &prompt("marker-plain", false, true));
    assert_eq!(plain.status, 200, "{}", plain.text());
    let html = view(&c.cp, &cookie, "debug", &id_of(&plain));
    let (request, cut) = body_in(&html, "request-body").expect("a request body");
    assert!(!cut);
    let sent: Value = serde_json::from_str(&request).unwrap();
    assert_eq!(sent, prompt("marker-plain", false, true));
    let (response, cut) = body_in(&html, "response-body").expect("a response body");
    assert!(!cut);
    assert_eq!(response, plain.text(), "the answer as the client got it");

    // Streamed: the bytes relayed, events and all.
    let streamed = chat_as(&c, &debug, &prompt("marker-stream", true, true));
    assert_eq!(streamed.status, 200);
    let html = view(&c.cp, &cookie, "debug", &id_of(&streamed));
    let (request, _) = body_in(&html, "request-body").unwrap();
    assert!(request.contains("marker-stream"), "{request}");
    let (response, cut) = body_in(&html, "response-body").unwrap();
    assert!(!cut);
    assert_eq!(response, streamed.text(), "the stream as relayed");
    assert!(response.contains("data: [DONE]"), "{response}");

    // Past the cap, in both directions: cut there, and flagged.
    let filler = "x".repeat(CAP + 1000);
    let long = chat_as(&c, &debug, &prompt(&filler, true, false));
    assert_eq!(long.status, 200);
    assert!(
        long.text().len() > CAP,
        "the completion itself is past the cap"
    );
    let html = view(&c.cp, &cookie, "debug", &id_of(&long));
    let (request, cut) =
        body_in(&html, "request-body").unwrap_or_else(|| panic!("{html}\n{}", c.dp.logs()));
    assert!(cut && request.len() == CAP, "{}", request.len());
    let (response, cut) = body_in(&html, "response-body").unwrap();
    assert!(cut && response.len() == CAP, "{}", response.len());
    assert!(long.text().starts_with(&response));
    assert!(html.contains("truncated at the capture cap"));

    // A refusal keeps the prompt and the error the client got.
    let refused = chat_as(
        &c,
        &debug,
        &json!({"model": "no/such-model", "messages": [{"role": "user", "content": "marker-404"}]}),
    );
    assert_eq!(refused.status, 404);
    let html = view(&c.cp, &cookie, "debug", &id_of(&refused));
    assert!(
        body_in(&html, "request-body")
            .unwrap()
            .0
            .contains("marker-404")
    );
    assert_eq!(body_in(&html, "response-body").unwrap().0, refused.text());

    // Anthropic's dialect too.
    let anthropic = HttpRequest::post_json("/v1/messages", &{
        let mut b = messages_body(false);
        b["messages"][0]["content"] = json!("marker-anthropic");
        b
    })
    .header("x-api-key", &debug)
    .header("anthropic-version", "2023-06-01")
    .send(c.dp.addr, TIMEOUT)
    .unwrap();
    assert_eq!(anthropic.status, 200, "{}", anthropic.text());
    let html = view(&c.cp, &cookie, "debug", &id_of(&anthropic));
    assert!(
        body_in(&html, "request-body")
            .unwrap()
            .0
            .contains("marker-anthropic")
    );
    assert_eq!(body_in(&html, "response-body").unwrap().0, anthropic.text());

    // Gemini's dialect (key in `x-goog-api-key`, never captured), streamed as SSE.
    let gemini = HttpRequest::post_json(
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        &json!({
            "contents": [{"role": "user", "parts": [{"text": "marker-gemini"}]}],
            "generationConfig": {"maxOutputTokens": 5},
        }),
    )
    .header("x-goog-api-key", &debug)
    .send(c.dp.addr, TIMEOUT)
    .unwrap();
    assert_eq!(gemini.status, 200, "{}", gemini.text());
    let html = view(&c.cp, &cookie, "debug", &id_of(&gemini));
    assert!(
        body_in(&html, "request-body")
            .unwrap()
            .0
            .contains("marker-gemini")
    );
    assert_eq!(body_in(&html, "response-body").unwrap().0, gemini.text());

    // Embeddings: the input and the vectors as the client got them.
    let embedded = HttpRequest::post_json(
        "/v1/embeddings",
        &json!({"model": MODEL, "input": "marker-embed"}),
    )
    .bearer(&debug)
    .send(c.dp.addr, TIMEOUT)
    .unwrap();
    assert_eq!(embedded.status, 200, "{}", embedded.text());
    let html = view(&c.cp, &cookie, "debug", &id_of(&embedded));
    assert!(
        body_in(&html, "request-body")
            .unwrap()
            .0
            .contains("marker-embed")
    );
    assert_eq!(body_in(&html, "response-body").unwrap().0, embedded.text());

    // A key without the opt-in: logged, nothing kept.
    let quiet = chat_as(&c, &c.key, &prompt("marker-quiet", false, true));
    assert_eq!(quiet.status, 200);
    let html = view(&c.cp, &cookie, "tester", &id_of(&quiet));
    assert!(body_in(&html, "request-body").is_none());
    assert!(html.contains("Not captured"), "{html}");
    assert!(!html.contains("marker-quiet"));

    // Never in the log's listings, nor the client keys in any view.
    c.wait_spool_settled();
    let listed = requests_json(&c);
    for marker in [
        "marker-plain",
        "marker-stream",
        "marker-404",
        "marker-gemini",
        "marker-embed",
        "word0",
        "xxxxxxxx",
    ] {
        assert!(!listed.contains(marker), "{marker} in requests --json");
    }
    for id in [
        id_of(&plain),
        id_of(&streamed),
        id_of(&long),
        id_of(&gemini),
        id_of(&embedded),
        id_of(&refused),
    ] {
        let html = view(&c.cp, &cookie, "debug", &id);
        for secret in [
            debug.as_str(),
            c.key.as_str(),
            "sk-c-cheap",
            &c.cp.admin_token,
        ] {
            assert!(!html.contains(secret), "a secret in the view of {id}");
        }
    }
    let list = page(&c.cp, &cookie, "/requests?limit=1000");
    assert!(
        !list.contains("marker-plain"),
        "bodies only on a request's own page"
    );

    // Turned off: the next request keeps nothing.
    c.cp.ctl(&["key", "set", "debug", "--no-capture-bodies"])
        .ok();
    let keys = c.cp.ctl(&["--json", "key", "list"]).ok().json();
    let listed_debug = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "debug")
        .unwrap()
        .clone();
    assert_eq!(
        listed_debug["policy"]["capture_bodies"], false,
        "{listed_debug}"
    );
    let mut later = None;
    assert!(wait_until(TIMEOUT, || {
        let r = chat_as(&c, &debug, &prompt("marker-off", false, true));
        let html = view(&c.cp, &cookie, "debug", &id_of(&r));
        let off = body_in(&html, "request-body").is_none();
        later = Some(html);
        off
    }));
    assert!(!later.unwrap().contains("marker-off"));
}

#[test]
fn bodies_are_pruned_before_their_request_rows() {
    let cp = control(&["--request-body-retention", "2s"]);
    let c = Cluster::start_on(cp, &ONE, &[], |_| {});
    let debug = key(&c, "debug", &["--capture-bodies"]);
    let cookie = sign_in(&c.cp);
    let r = chat_as(&c, &debug, &prompt("marker-aging", false, true));
    assert_eq!(r.status, 200);
    let id = id_of(&r);
    let html = view(&c.cp, &cookie, "debug", &id);
    assert!(body_in(&html, "request-body").is_some());
    let mut last = String::new();
    assert!(
        wait_until(TIMEOUT, || {
            last = view(&c.cp, &cookie, "debug", &id);
            body_in(&last, "request-body").is_none()
        }),
        "the bodies outlived their retention"
    );
    assert!(last.contains("Not captured") && !last.contains("marker-aging"));
    // The row stays for its own, longer retention.
    assert!(requests_json(&c).contains(&id));
}

#[test]
fn spooled_bodies_land_once_across_a_data_plane_kill() {
    let mut c = Cluster::start_on(control(&[]), &ONE, &[], |_| {});
    let debug = key(&c, "debug", &["--capture-bodies"]);
    // The control plane is away: the records and their bodies wait in the spool.
    c.cp.kill9();
    let mut ids = Vec::new();
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let r = chat_as(
            &c,
            &debug,
            &prompt(&format!("marker-spooled-{i}"), stream, true),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push((id_of(&r), r.text()));
    }
    let refused = chat_as(
        &c,
        &debug,
        &json!({"model": "missing", "messages": [{"role": "user", "content": "marker-spooled-404"}]}),
    );
    ids.push((id_of(&refused), refused.text()));
    c.dp.kill9();
    c.dp.restart();
    c.cp.restart();
    assert!(c.dp.wait_ready(TIMEOUT), "{}", c.dp.logs());
    c.wait_spool_settled();
    let cookie = sign_in(&c.cp);
    let listed: Vec<Value> = serde_json::from_str::<Value>(&requests_json(&c))
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    for (i, (id, answer)) in ids.iter().enumerate() {
        let n = listed
            .iter()
            .filter(|e| e["request_id"] == id.as_str())
            .count();
        assert_eq!(n, 1, "{id} logged {n} times");
        let html = view(&c.cp, &cookie, "debug", id);
        let (request, _) = body_in(&html, "request-body").expect("bodies after the restart");
        let marker = if i < 3 {
            format!("marker-spooled-{i}")
        } else {
            "marker-spooled-404".into()
        };
        assert!(request.contains(&marker), "{request}");
        assert_eq!(&body_in(&html, "response-body").unwrap().0, answer);
    }
}
