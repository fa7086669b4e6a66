//! Upstreams that lie or attack: the data plane trusts nothing an upstream sends. Oversized
//! bodies, endless stream lines, 200s that are not completions, absurd usage, redirects and
//! echoed secrets all fail over or are cut and scrubbed, with memory and CPU bounded (read from
//! the data plane's own /proc accounting).
//!
//! The hostile upstream is a raw TCP server that writes exactly the bytes a test gives it: a
//! well-behaved HTTP library would refuse to send most of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

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
            requests,
            stop,
        }
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

const SSE: (&str, &str) = ("Content-Type", "text/event-stream");

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
