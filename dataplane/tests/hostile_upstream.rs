//! Upstreams that lie or attack: the data plane trusts nothing an upstream sends. Oversized
//! bodies, endless stream lines, 200s that are not completions, absurd usage, redirects and
//! echoed secrets all fail over or are cut and scrubbed, with memory and CPU bounded (read from
//! the data plane's own /proc accounting).
//!
//! The hostile upstream is a raw TCP server that writes exactly the bytes a test gives it: a
//! well-behaved HTTP library would refuse to send most of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{ControlPlane, DataPlane, FakeConfig, FakeUpstream};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use support::*;

/// Writes the response to one request: gets the raw request (head and body) and the socket.
type Script = dyn Fn(&[u8], &mut TcpStream) + Send + Sync;

/// A raw HTTP/1.1 upstream: each connection serves one request with the current script, then
/// closes.
struct Hostile {
    addr: SocketAddr,
    script: Arc<Mutex<Arc<Script>>>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    fn start(script: impl Fn(&[u8], &mut TcpStream) + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<Mutex<Arc<Script>>> = Arc::new(Mutex::new(Arc::new(script)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, st) = (script.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let (s, r) = (s.clone(), r.clone());
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let Some(request) = read_request(&mut conn) else {
                        return;
                    };
                    r.lock().unwrap().push(request.clone());
                    let script = s.lock().unwrap().clone();
                    script(&request, &mut conn);
                    let _ = conn.flush();
                });
            }
        });
        Hostile {
            addr,
            script,
            requests,
            stop,
        }
    }

    fn set(&self, script: impl Fn(&[u8], &mut TcpStream) + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn base_url(&self, protocol: &str) -> String {
        if protocol == "anthropic" {
            format!("http://{}", self.addr)
        } else {
            format!("http://{}/v1", self.addr)
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request: the head up to its blank line and a `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
        if buf.len() > 64 << 20 {
            return None;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response head; the body follows until the connection closes.
fn head(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A whole response with `Content-Length`.
fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("Content-Length", &len));
    let _ = conn.write_all(&head(status, &all));
    let _ = conn.write_all(body);
}

/// A response header line's name and value.
type Header = (&'static str, &'static str);

const JSON: (&str, &str) = ("Content-Type", "application/json");
const SSE: (&str, &str) = ("Content-Type", "text/event-stream");

/// An OpenAI chat completion with this content and usage object.
fn completion(content: &str, usage: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"chatcmpl-h","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":{}}},"finish_reason":"stop"}}],"usage":{usage}}}"#,
        serde_json::to_string(content).unwrap()
    )
    .into_bytes()
}

/// An OpenAI stream chunk with content.
const CONTENT_CHUNK: &[u8] = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hostile\"},\"finish_reason\":null}]}\n\n";

/// A control plane with the hostile upstream (cheapest, so tried first) and a well-behaved fake
/// `z-good` behind it, both speaking `protocol`; a data plane with `dp_args`.
fn cluster(hostile: &Hostile, protocol: &str, dp_args: &[&str]) -> Cluster {
    let cp = ControlPlane::start();
    let bad = Offer {
        name: "a-hostile",
        input: "1",
        output: "1",
        multiplier: "1",
        protocol,
    };
    add_offer(&cp, &bad, &hostile.base_url(protocol));
    let good = FakeUpstream::start(FakeConfig {
        name: "z-good".into(),
        api_key: Some("sk-z-good".into()),
        ..FakeConfig::default()
    });
    let base = if protocol == "anthropic" {
        good.anthropic_base_url()
    } else {
        good.openai_base_url()
    };
    let offer = Offer {
        name: "z-good",
        input: "5",
        output: "5",
        multiplier: "1",
        protocol,
    };
    add_offer(&cp, &offer, &base);
    let key = cp.ctl(&["--json", "key", "create", "tester"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = DataPlane::start(&cp, "edge-1", dp_args);
    let c = Cluster {
        cp,
        dp,
        fakes: vec![good],
        key,
    };
    c.wait_key_accepted();
    c
}

/// The ledger row of `provider`, if it has one.
fn row<'a>(rows: &'a [Value], provider: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["provider"] == provider)
}

/// CPU time the process has used (user + system), in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second of /proc's CPU times (`USER_HZ`, 100 on Linux whatever the kernel's
/// own tick rate).
const TICKS_PER_SECOND: u64 = 100;

#[test]
fn an_endless_stream_line_after_content_ends_the_stream_with_bounded_cpu() {
    const LINE_BYTES: usize = 24 << 20;
    let hostile = Hostile::start(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[SSE]));
        let _ = conn.write_all(CONTENT_CHUNK);
        let _ = conn.write_all(b"data: ");
        // 24 MiB without a line end, in 16 KiB writes; the data plane may stop reading early.
        let piece = vec![b'x'; 16 * 1024];
        for _ in 0..LINE_BYTES / piece.len() {
            if conn.write_all(&piece).is_err() {
                return;
            }
        }
    });
    let c = cluster(&hostile, "openai", &["--max-sse-event-bytes", "1048576"]);
    let pid = c.dp.pid().unwrap();
    let before = cpu_ticks(pid);
    let resp = c.chat(&chat_body(true));
    let used = cpu_ticks(pid) - before;
    assert_eq!(resp.status, 200, "committed at the first content");
    let data = resp.sse_data();
    assert!(data[0].contains("hostile"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_error",
        "the stream ends with an error event in the client's dialect: {data:?}"
    );
    let text = resp.text();
    assert!(
        text.len() < 64 * 1024,
        "none of the endless line reached the client: {} bytes",
        text.len()
    );
    // Splitting 1 MiB and dropping the rest is milliseconds of CPU; rescanning the pending line
    // on every frame, as a quadratic splitter does, is seconds for the 24 MiB.
    assert!(
        used < TICKS_PER_SECOND / 2,
        "the data plane used {used} ticks ({TICKS_PER_SECOND}/s) of CPU on one stream"
    );
    // Billed for what was sent: one request, at the hostile upstream, estimated.
    let rows = c.wait_usage(1);
    assert_eq!(row(&rows, "a-hostile").unwrap()["requests"], 1, "{rows:?}");
    assert!(c.dp.logs().contains("estimated=true"), "{}", c.dp.logs());
}

#[test]
fn an_oversized_event_ends_an_anthropic_stream_with_an_anthropic_error_event() {
    let hostile = Hostile::start(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[SSE]));
        let _ = conn.write_all(concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_h\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hostile\"}}\n\n",
            "event: content_block_delta\n",
            "data: ",
        ).as_bytes());
        let piece = vec![b'x'; 16 * 1024];
        for _ in 0..256 {
            if conn.write_all(&piece).is_err() {
                return;
            }
        }
    });
    let c = cluster(&hostile, "anthropic", &["--max-sse-event-bytes", "1048576"]);
    let resp = c.messages(&messages_body(true));
    assert_eq!(resp.status, 200);
    let events = anthropic_events(&resp.text());
    assert!(
        events.iter().any(|(_, d)| d["delta"]["text"] == "hostile"),
        "{events:?}"
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["type"], "error", "{events:?}");
    assert!(resp.text().len() < 64 * 1024);
    let rows = c.wait_usage(1);
    assert_eq!(row(&rows, "a-hostile").unwrap()["requests"], 1, "{rows:?}");
}

#[test]
fn an_oversized_event_before_content_fails_over() {
    let hostile = Hostile::start(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[SSE]));
        let _ = conn.write_all(b"data: ");
        let piece = vec![b'x'; 16 * 1024];
        for _ in 0..256 {
            if conn.write_all(&piece).is_err() {
                return;
            }
        }
    });
    let c = cluster(&hostile, "openai", &["--max-sse-event-bytes", "1048576"]);
    let resp = c.chat(&chat_body(true));
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("[DONE]"), "{}", resp.text());
    assert_eq!(hostile.request_count(), 1);
    let rows = c.wait_usage(1);
    assert_eq!(row(&rows, "z-good").unwrap()["requests"], 1, "{rows:?}");
}

/// `VmHWM` (peak) and `VmRSS` (now) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn an_oversized_body_fails_over_and_its_memory_comes_back() {
    const BODY_BYTES: usize = 200 << 20;
    // No Content-Length: the data plane learns the size only by reading.
    let hostile = Hostile::start(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[JSON]));
        let _ = conn.write_all(b"{\"choices\":[{\"message\":{\"content\":\"");
        let piece = vec![b'x'; 64 * 1024];
        for _ in 0..BODY_BYTES / piece.len() {
            if conn.write_all(&piece).is_err() {
                return;
            }
        }
        let _ = conn.write_all(b"\"}}]}");
    });
    let c = cluster(
        &hostile,
        "openai",
        &["--max-upstream-body-bytes", "8388608"],
    );
    let pid = c.dp.pid().unwrap();
    let (hwm_before, rss_before) = memory_kib(pid);
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("word")
    );
    assert_eq!(hostile.request_count(), 1);
    let (hwm, rss) = memory_kib(pid);
    assert!(
        hwm < hwm_before + 48 * 1024,
        "peak grew from {hwm_before} to {hwm} KiB for an 8 MiB limit"
    );
    assert!(
        rss < rss_before + 32 * 1024,
        "resident memory was not given back: {rss_before} -> {rss} KiB"
    );
    let rows = c.wait_usage(1);
    assert_eq!(row(&rows, "z-good").unwrap()["requests"], 1, "{rows:?}");

    // A declared length past the limit fails before the body is read; with no other candidate
    // the client gets a 502 in its own shape.
    hostile.set(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[JSON, ("Content-Length", "1073741824")]));
    });
    c.fakes[0].set_behavior(keyplane_testkit::Behavior::status(500));
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "upstream_failed");
    assert_eq!(hostile.request_count(), 2);
}

#[test]
fn a_providers_own_body_limit_applies_before_the_data_planes() {
    let big = completion(&"y".repeat(4096), "null");
    let hostile = Hostile::start(move |_, conn| respond(conn, "200 OK", &[JSON], &big));
    let c = cluster(&hostile, "openai", &[]);
    let resp = c.chat(&chat_body(false));
    assert!(
        resp.text().contains("yyyy"),
        "under the default limit: {}",
        resp.text()
    );
    let before = route_version(c.dp.addr);
    let set =
        c.cp.ctl(&[
            "--json",
            "provider",
            "set",
            "a-hostile",
            "--max-body-bytes",
            "1024",
        ])
        .ok()
        .json();
    assert_eq!(set["max_body_bytes"], 1024, "{set}");
    assert!(
        keyplane_testkit::wait_until(TIMEOUT, || route_version(c.dp.addr) > before),
        "the table with the limit never arrived"
    );
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 200);
    assert!(!resp.text().contains("yyyy"), "{}", resp.text());
    assert!(
        resp.text().contains("word"),
        "the good upstream served: {}",
        resp.text()
    );
    assert_eq!(hostile.request_count(), 2);
}

#[test]
fn a_200_that_is_not_a_completion_fails_over_and_is_billed_once_at_the_good_upstream() {
    type Case = (&'static str, Vec<Header>, Vec<u8>);
    let gzip_bytes = [0x1f_u8, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03]
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect::<Vec<u8>>();
    let cases: Vec<Case> = vec![
        (
            "html",
            vec![("Content-Type", "text/html")],
            b"<html><body>Bad gateway</body></html>".to_vec(),
        ),
        (
            "plain text",
            vec![("Content-Type", "text/plain")],
            b"upstream connect error".to_vec(),
        ),
        ("empty", vec![JSON], Vec::new()),
        (
            "truncated",
            vec![JSON],
            completion("hi", "null")[..40].to_vec(),
        ),
        ("array", vec![JSON], b"[{\"choices\":[]}]".to_vec()),
        (
            "error object",
            vec![JSON],
            b"{\"error\":{\"message\":\"overloaded\"}}".to_vec(),
        ),
        (
            "gzip, not asked for",
            vec![JSON, ("Content-Encoding", "gzip")],
            gzip_bytes,
        ),
        (
            "a completion, but gzip-labelled",
            vec![JSON, ("Content-Encoding", "gzip")],
            completion("hi", "null"),
        ),
    ];
    let hostile = Hostile::start(|_, _| {});
    let c = cluster(&hostile, "openai", &[]);
    for (i, (name, headers, body)) in cases.into_iter().enumerate() {
        hostile.set(move |_, conn| respond(conn, "200 OK", &headers, &body));
        let resp = c.chat(&chat_body(false));
        assert_eq!(resp.status, 200, "{name}: {}", resp.text());
        assert!(
            resp.json()["choices"][0]["message"]["content"]
                .as_str()
                .is_some_and(|t| t.contains("word")),
            "{name}: the good upstream answered: {}",
            resp.text()
        );
        assert_eq!(
            hostile.request_count(),
            i + 1,
            "{name}: the hostile one was tried"
        );
    }
    // Streams: a 200 that is not an event stream, or is compressed.
    for (i, headers) in [
        vec![("Content-Type", "text/html")],
        vec![SSE, ("Content-Encoding", "gzip")],
    ]
    .into_iter()
    .enumerate()
    {
        hostile.set(move |_, conn| respond(conn, "200 OK", &headers, CONTENT_CHUNK));
        let resp = c.chat(&chat_body(true));
        assert_eq!(resp.status, 200);
        assert!(!resp.text().contains("hostile"), "{}", resp.text());
        assert!(resp.text().contains("word"), "{}", resp.text());
        assert_eq!(hostile.request_count(), 9 + i);
    }
    // A valid completion from the same upstream is relayed byte for byte.
    let good = completion(
        "hostile says hi",
        r#"{"prompt_tokens":9,"completion_tokens":2}"#,
    );
    let sent = good.clone();
    hostile.set(move |_, conn| {
        respond(
            conn,
            "200 OK",
            &[("Content-Type", "application/json; charset=utf-8")],
            &sent,
        )
    });
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.body, good);

    let rows = c.wait_usage(11);
    assert_eq!(row(&rows, "z-good").unwrap()["requests"], 10, "{rows:?}");
    let hostile_row = row(&rows, "a-hostile").unwrap();
    assert_eq!(hostile_row["requests"], 1, "{rows:?}");
    assert_eq!(hostile_row["output_tokens"], 2, "{rows:?}");
}

#[test]
fn an_anthropic_200_that_is_not_a_message_fails_over() {
    let hostile = Hostile::start(|_, _| {});
    let c = cluster(&hostile, "anthropic", &[]);
    let cases: Vec<(Vec<Header>, Vec<u8>)> = vec![
        (
            vec![("Content-Type", "text/html")],
            b"<html></html>".to_vec(),
        ),
        (
            vec![JSON],
            br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#.to_vec(),
        ),
        // An OpenAI completion is not an Anthropic message.
        (vec![JSON], completion("hi", "null")),
        (vec![JSON], br#"[{"type":"message","content":[]}]"#.to_vec()),
    ];
    for (i, (headers, body)) in cases.into_iter().enumerate() {
        hostile.set(move |_, conn| respond(conn, "200 OK", &headers, &body));
        let resp = c.messages(&messages_body(false));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["type"], "message", "{}", resp.text());
        assert!(resp.text().contains("word"), "{}", resp.text());
        assert_eq!(hostile.request_count(), i + 1);
    }
    let rows = c.wait_usage(4);
    assert_eq!(row(&rows, "z-good").unwrap()["requests"], 4, "{rows:?}");
    assert!(row(&rows, "a-hostile").is_none(), "{rows:?}");
}

#[test]
fn absurd_usage_is_billed_as_an_estimate_and_later_records_still_count() {
    let hostile = Hostile::start(|_, _| {});
    let c = cluster(&hostile, "openai", &[]);
    let max = u64::MAX;
    for usage in [
        format!(r#"{{"prompt_tokens":{max},"completion_tokens":1}}"#),
        format!(r#"{{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{{"cached_tokens":{max}}}}}"#),
        r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":11}}"#.to_string(),
        format!(r#"{{"prompt_tokens":5,"completion_tokens":{max}}}"#),
        r#"{"prompt_tokens":5,"completion_tokens":2,"cost":1e15}"#.to_string(),
    ] {
        let body = completion("hi", &usage);
        hostile.set(move |_, conn| respond(conn, "200 OK", &[JSON], &body));
        let resp = c.chat(&chat_body(false));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    // Then an honest answer: it must still count.
    let body = completion("hi", r#"{"prompt_tokens":7,"completion_tokens":3}"#);
    hostile.set(move |_, conn| respond(conn, "200 OK", &[JSON], &body));
    assert_eq!(c.chat(&chat_body(false)).status, 200);

    let rows = c.wait_usage(6);
    let r = row(&rows, "a-hostile").unwrap();
    assert_eq!(r["requests"], 6, "{rows:?}");
    let input = r["input_tokens"].as_u64().unwrap();
    let output = r["output_tokens"].as_u64().unwrap();
    // Four estimates (the request's bytes / 4, about 25 tokens each) plus 5 and 7.
    assert!((12..1_000).contains(&input), "input {input}: {rows:?}");
    assert!((5..1_000).contains(&output), "output {output}: {rows:?}");
    assert!(r["cost_usd"].as_f64().unwrap() < 0.01, "{rows:?}");
    let logs = c.dp.logs();
    assert_eq!(
        logs.matches("estimated=true").count(),
        4,
        "each absurd count is billed as an estimate, flagged: {logs}"
    );
}

#[test]
fn a_redirect_fails_over_and_is_never_relayed() {
    let hostile = Hostile::start(|_, _| {});
    let c = cluster(&hostile, "openai", &[]);
    for (i, status) in [
        "301 Moved Permanently",
        "302 Found",
        "303 See Other",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ]
    .into_iter()
    .enumerate()
    {
        hostile.set(move |_, conn| {
            respond(
                conn,
                status,
                &[("Location", "http://127.0.0.1:1/elsewhere"), JSON],
                b"",
            )
        });
        let resp = c.chat(&chat_body(i % 2 == 0));
        assert_eq!(resp.status, 200, "{status}: {}", resp.text());
        assert!(resp.header("location").is_none());
        assert!(resp.text().contains("word"), "{status}: {}", resp.text());
        assert_eq!(hostile.request_count(), i + 1);
    }
    let metrics = HttpRequest::get("/metrics")
        .send(c.dp.addr, TIMEOUT)
        .unwrap()
        .text();
    assert!(
        metrics.contains(
            r#"keyplane_upstream_attempts_total{provider="a-hostile",outcome="invalid_response"} 5"#
        ),
        "{metrics}"
    );
}

#[test]
fn an_echoed_upstream_secret_never_reaches_the_client() {
    const SECRET: &str = "sk-a-hostile";
    // A 400 (the client's fault, relayed) that echoes the request it got, headers and all.
    let hostile = Hostile::start(|request, conn| {
        let echo = serde_json::json!({"error": {"message": String::from_utf8_lossy(request), "type": "invalid_request_error"}});
        respond(
            conn,
            "400 Bad Request",
            &[JSON],
            echo.to_string().as_bytes(),
        );
    });
    let c = cluster(&hostile, "openai", &[]);
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 400);
    let text = resp.text();
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // A completion that quotes it.
    hostile.set(|_, conn| {
        respond(
            conn,
            "200 OK",
            &[JSON],
            &completion("your key is Bearer sk-a-hostile", "null"),
        )
    });
    let resp = c.chat(&chat_body(false));
    assert_eq!(resp.status, 200);
    assert!(!resp.text().contains(SECRET), "{}", resp.text());
    assert!(resp.text().contains("Bearer [redacted]"), "{}", resp.text());

    // A stream that quotes it, in an event of its own.
    hostile.set(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[SSE]));
        let _ = conn.write_all(CONTENT_CHUNK);
        let quoting =
            String::from_utf8_lossy(CONTENT_CHUNK).replace("\"hostile\"", "\"key sk-a-hostile\"");
        let _ = conn.write_all(quoting.as_bytes());
        let _ = conn.write_all(b"data: [DONE]\n\n");
    });
    let resp = c.chat(&chat_body(true));
    assert_eq!(resp.status, 200);
    assert!(!resp.text().contains(SECRET), "{}", resp.text());
    assert!(resp.text().contains("[redacted]"), "{}", resp.text());
    assert!(!c.dp.logs().contains(SECRET));
}

#[test]
fn nothing_an_upstream_sends_after_its_end_marker_is_relayed_or_billed() {
    // An honest stream with its usage chunk and `[DONE]`, then a larger usage and an error: the
    // client's stream ended at `[DONE]`, so neither reaches it nor the bill.
    let hostile = Hostile::start(|_, conn| {
        let _ = conn.write_all(&head("200 OK", &[SSE]));
        let _ = conn.write_all(CONTENT_CHUNK);
        let _ = conn.write_all(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n");
        let _ = conn.write_all(b"data: [DONE]\n\n");
        let _ = conn.write_all(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":9000,\"completion_tokens\":9000}}\n\n");
        let _ = conn.write_all(b"data: {\"error\":{\"message\":\"after the end\"}}\n\n");
    });
    let c = cluster(&hostile, "openai", &[]);
    let mut body = chat_body(true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let resp = c.chat(&body);
    assert_eq!(resp.status, 200);
    let data = resp.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert!(!resp.text().contains("9000"), "{}", resp.text());
    assert!(!resp.text().contains("after the end"), "{}", resp.text());

    let rows = c.wait_usage(1);
    let r = row(&rows, "a-hostile").unwrap();
    assert_eq!(r["requests"], 1, "{rows:?}");
    assert_eq!(r["input_tokens"], 7, "{rows:?}");
    assert_eq!(r["output_tokens"], 3, "{rows:?}");
}
