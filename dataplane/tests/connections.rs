//! Clients that hold connections without finishing a request, as a hostile client would over raw
//! sockets: silent connections closed after the header read timeout counted from accept, a
//! connection cap with a metric and a rate-limited log line, `EMFILE` met without a log flood,
//! and a request body that never finishes answered with 408 in the client's dialect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::{DataPlane, wait_until};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::{Cluster, TIMEOUT, chat_body, offer};

/// A data plane with no control plane behind it: enough for connection handling.
fn lone_data_plane(extra: &[&str]) -> DataPlane {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let dp = DataPlane::start_with(&url, "node-token-for-tests-0123", "edge-conn", extra);
    assert!(wait_until(TIMEOUT, || dp.get_status("/healthz") == Some(200)));
    dp
}

/// How a connection ended while waiting for at most `within`.
#[derive(Debug, PartialEq)]
enum Ending {
    /// EOF or a reset, with the bytes read before it.
    Closed(Vec<u8>),
    /// Still open at the end of the wait.
    Open,
}

/// Reads until the peer closes (or resets) the connection, or `within` passes.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> Ending {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ending::Open;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ending::Closed(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ending::Open;
            }
            Err(_) => return Ending::Closed(got),
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, TIMEOUT).unwrap()
}

/// The value of an unlabelled sample in `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = HttpRequest::get("/metrics")
        .send(addr, TIMEOUT)
        .ok()?
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout_from_accept() {
    let dp = lone_data_plane(&["--header-read-timeout-ms", "300"]);
    // Silent on plain HTTP, silent after a partial h2c preface, silent after a partial
    // HTTP/1.1 head: each is closed, none is kept past the timeout (plus scheduling slack).
    let starts: [&[u8]; 3] = [b"", b"PRI * HTTP/2.0\r\n", b"GET /healthz HTTP/1.1\r\n"];
    for start in starts {
        let opened = Instant::now();
        let mut silent = connect(dp.addr);
        silent.write_all(start).unwrap();
        let ending = wait_closed(&mut silent, Duration::from_secs(5));
        let took = opened.elapsed();
        assert!(
            matches!(ending, Ending::Closed(_)),
            "a connection that sent {:?} was still open after 5 s",
            String::from_utf8_lossy(start)
        );
        assert!(
            took >= Duration::from_millis(250),
            "closed before the timeout: {took:?}"
        );
    }
    // An idle keep-alive connection is closed too, after a request it was served.
    let mut idle = connect(dp.addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    match wait_closed(&mut idle, Duration::from_secs(5)) {
        Ending::Closed(got) => assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        ),
        Ending::Open => panic!("an idle keep-alive connection was never closed"),
    }
    // And the server still serves.
    assert_eq!(dp.get_status("/healthz"), Some(200));
}

#[test]
fn an_idle_h2c_connection_is_closed_but_a_long_response_is_not_cut() {
    let cluster = Cluster::start(
        &[offer("cheap", "1", "2")],
        &["--header-read-timeout-ms", "300"],
    );
    // h2c with prior knowledge, by hand: the preface, empty SETTINGS, and one HEADERS frame
    // (`GET /` over http, HPACK static-table entries 2, 6 and 4; END_STREAM | END_HEADERS).
    let mut h2 = connect(cluster.dp.addr);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    h2.write_all(&[0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84])
        .unwrap();
    let answered = Instant::now();
    match wait_closed(&mut h2, Duration::from_secs(5)) {
        // The server's frames came first: its SETTINGS (type 4) and the answer.
        Ending::Closed(got) => assert!(got.len() > 9 && got[3] == 4, "{got:?}"),
        Ending::Open => panic!("an idle h2c connection was kept open"),
    }
    assert!(answered.elapsed() >= Duration::from_millis(250));
    // A stream that lasts far longer than the timeout is in flight all along: not cut.
    cluster
        .fake("cheap")
        .set_behavior(keyplane_testkit::Behavior::ChunkDelay(
            Duration::from_millis(60),
        ));
    let resp = HttpRequest::post_json("/v1/chat/completions", &chat_body(true))
        .bearer(&cluster.key)
        .send(cluster.dp.addr, TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200);
    let text = resp.text();
    assert!(text.contains("[DONE]"), "{text}");
}

#[test]
fn at_the_connection_cap_more_are_refused_and_clients_are_served_once_the_idle_ones_go() {
    const CAP: usize = 16;
    let dp = lone_data_plane(&[
        "--max-connections",
        &CAP.to_string(),
        "--header-read-timeout-ms",
        "2500",
    ]);
    // The probes before this (readiness) have closed their connections; wait until the server
    // has seen them go.
    assert!(wait_until(TIMEOUT, || metric(
        dp.addr,
        "keyplane_open_connections"
    ) == Some(1.0)));
    let filled = Instant::now();
    let silent: Vec<TcpStream> = (0..CAP).map(|_| connect(dp.addr)).collect();
    // Every further connection is accepted and closed at once, long before the silent ones
    // time out.
    const EXTRA: usize = 40;
    let mut kept = Vec::new();
    for _ in 0..EXTRA {
        let mut extra = connect(dp.addr);
        if wait_closed(&mut extra, Duration::from_millis(500)) == Ending::Open {
            kept.push(extra);
        }
    }
    // One may have taken the slot of the metrics probe above, which the server releases just
    // after the probe has read its answer.
    assert!(
        kept.len() <= 1,
        "{} connections over the cap were kept open",
        kept.len()
    );
    assert!(
        filled.elapsed() < Duration::from_millis(2500),
        "the machine is too slow for this test's timing: {:?}",
        filled.elapsed()
    );
    // Once the silent ones are closed (header read timeout), a real client is served again.
    assert!(
        wait_until(TIMEOUT, || dp.get_status("/healthz") == Some(200)),
        "never served again; log:\n{}",
        dp.logs()
    );
    assert!(filled.elapsed() >= Duration::from_millis(2000));
    drop(silent);
    drop(kept);
    let refused = metric(dp.addr, "keyplane_refused_connections_total").unwrap();
    assert!(refused >= EXTRA as f64 - 1.0, "refused {refused}");
    assert!(wait_until(TIMEOUT, || metric(
        dp.addr,
        "keyplane_open_connections"
    ) == Some(1.0)));
    // One log line for the whole burst (a line per ten seconds at most), not one per refusal.
    let logs = dp.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("too many open connections"))
        .count();
    assert!((1..=2).contains(&lines), "{lines} lines:\n{logs}");
}

/// Sets the soft open-file limit of a running process (`prlimit(2)`), keeping its hard limit;
/// returns the soft limit it had.
#[allow(unsafe_code)]
fn set_open_file_limit(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `prlimit` with no new limit writes the current one into a live local.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: `prlimit` reads one `rlimit` from a live local and writes none (old is null).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_and_logs_once() {
    // A cap far above the file limit, so that accept itself fails with EMFILE.
    let dp = lone_data_plane(&[
        "--max-connections",
        "100000",
        "--header-read-timeout-ms",
        "60000",
    ]);
    let fds =
        || std::fs::read_dir(format!("/proc/{}/fd", dp.pid().unwrap())).map_or(0, |d| d.count());
    let limit = fds() as u64 + 20;
    let original = set_open_file_limit(dp.pid().unwrap(), limit);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..60).map(|_| connect(dp.addr)).collect();
    // The process fills its table, then every accept fails while the silent ones are held.
    assert!(wait_until(TIMEOUT, || dp.logs().contains("accept failed")));
    let cpu = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let pid = dp.pid().unwrap();
    let cpu_before = cpu(pid);
    // Three seconds of failing accepts: no busy loop (well under a tenth of a core in clock
    // ticks of 10 ms), and the failures are counted into one line per ten seconds.
    std::thread::sleep(Duration::from_secs(3));
    let ticks = cpu(pid) - cpu_before;
    assert!(ticks < 30, "{ticks} ticks of CPU in 3 s of EMFILE");
    let logs = dp.logs();
    let lines = logs.lines().filter(|l| l.contains("accept failed")).count();
    let allowed = 1 + started.elapsed().as_secs() / 10;
    assert!(
        lines as u64 <= allowed,
        "{lines} accept-failure lines, at most {allowed} allowed:\n{logs}"
    );
    // Once descriptors are free again, clients are served.
    held.clear();
    set_open_file_limit(pid, original);
    assert!(wait_until(TIMEOUT, || dp.get_status("/healthz") == Some(200)));
}

/// Sends a request head announcing `len` body bytes and only part of the body, then stalls;
/// returns what came back before the connection closed.
fn stalled_body(addr: SocketAddr, path: &str, key: &str, within: Duration) -> Ending {
    let body = serde_json::to_vec(&chat_body(false)).unwrap();
    let mut stream = connect(addr);
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len() + 1000
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    wait_closed(&mut stream, within)
}

#[test]
fn a_body_that_never_finishes_gets_408_in_the_client_dialect() {
    let cluster = Cluster::start(
        &[offer("cheap", "1", "2")],
        &["--body-read-timeout-ms", "400"],
    );
    for (path, dialect) in [
        ("/v1/chat/completions", "openai"),
        ("/v1/messages", "anthropic"),
    ] {
        let started = Instant::now();
        let ending = stalled_body(cluster.dp.addr, path, &cluster.key, Duration::from_secs(10));
        let Ending::Closed(got) = ending else {
            panic!("{path}: a stalled body held the connection for 10 s");
        };
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(started.elapsed() >= Duration::from_millis(350));
        let json: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        match dialect {
            "openai" => assert_eq!(json["error"]["code"], "request_timeout", "{json}"),
            _ => {
                assert_eq!(json["type"], "error", "{json}");
                assert!(
                    json["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("400 ms")
                );
            }
        }
    }
    // A body that arrives in time is still served.
    assert_eq!(cluster.chat(&chat_body(false)).status, 200);
}
