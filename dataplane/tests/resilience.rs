//! Life without the control plane: serving on through its SIGKILL, restarting from the
//! snapshot while it is down, and usage that lands exactly once when it returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keyplane_testkit::{DataPlane, wait_until};
use std::time::Duration;
use support::*;

const TWO: [Offer<'static>; 2] = [offer("b-mid", "2", "4"), offer("c-cheap", "1", "2")];

#[test]
fn control_plane_sigkill_while_serving_loses_and_doubles_nothing() {
    let mut c = Cluster::start(&TWO, &[]);
    let mut served = 0u64;
    for i in 0..10 {
        assert_eq!(c.chat(&chat_body(i % 2 == 0)).status, 200);
        served += 1;
    }
    c.cp.kill9();
    for i in 0..10 {
        let resp = c.chat(&chat_body(i % 2 == 0));
        assert_eq!(
            resp.status,
            200,
            "serving goes on without the control plane: {}",
            resp.text()
        );
        served += 1;
        assert_eq!(c.dp.get_status("/readyz"), Some(200));
    }
    c.cp.restart();
    let rows = c.wait_usage(served);
    assert_eq!(total(&rows, "output_tokens"), served * 20);
    // Once the spool has nothing left to report, the count is final: each record counted once.
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), served);
}

#[test]
fn a_data_plane_restarted_while_the_control_plane_is_down_serves_from_its_snapshot() {
    let mut c = Cluster::start(&TWO, &[]);
    assert_eq!(c.chat(&chat_body(false)).status, 200);
    c.wait_usage(1);
    c.cp.kill9();
    assert_eq!(c.dp.terminate(), Some(0));
    c.dp.restart();
    assert!(
        c.dp.wait_ready(TIMEOUT),
        "ready from the snapshot: {}",
        c.dp.logs()
    );
    let mut request_ids = Vec::new();
    for i in 0..5 {
        let resp = c.chat(&chat_body(i % 2 == 1));
        assert_eq!(resp.status, 200, "{}", resp.text());
        request_ids.push(resp.header("x-request-id").unwrap().to_string());
    }
    // Kill it hard this time, once every record is in the spool (written and fsynced together,
    // in the background: the responses did not wait for it).
    let spool = c.dp.state_dir.join("spool");
    assert!(
        wait_until(TIMEOUT, || {
            let bytes: Vec<u8> = keyplane_testkit::process::files_below(&spool)
                .iter()
                .filter_map(|f| std::fs::read(f).ok())
                .flatten()
                .collect();
            request_ids
                .iter()
                .all(|id| bytes.windows(id.len()).any(|w| w == id.as_bytes()))
        }),
        "the usage records never reached the spool"
    );
    c.dp.kill9();
    c.dp.restart();
    assert!(c.dp.wait_ready(TIMEOUT));
    c.cp.restart();
    let rows = c.wait_usage(6);
    assert_eq!(total(&rows, "output_tokens"), 6 * 20);
    // Once the spool has nothing left to report, the count is final: each record counted once.
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), 6);
    // And the snapshot holds no secret in plaintext.
    for file in keyplane_testkit::process::files_below(&c.dp.state_dir) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in ["sk-c-cheap", "sk-b-mid"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                file.display()
            );
        }
    }
}

#[test]
fn a_data_plane_with_no_table_is_not_ready_and_says_so() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let dp = DataPlane::start_with(&url, "node-token-for-tests-0123", "edge-x", &[]);
    assert_eq!(dp.get_status("/healthz"), Some(200));
    assert_eq!(dp.get_status("/readyz"), Some(503));
    let resp =
        keyplane_testkit::http::HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
            .bearer("kp_x")
            .send(dp.addr, TIMEOUT)
            .unwrap();
    assert_eq!(resp.status, 503);
    assert!(resp.json()["error"]["message"].is_string());
    assert!(wait_until(Duration::from_secs(5), || dp
        .logs()
        .contains("cannot subscribe")));
}

#[test]
fn sigterm_drains_an_in_flight_stream() {
    let mut c = Cluster::start(&TWO, &[]);
    c.fake("c-cheap")
        .set_behavior(keyplane_testkit::Behavior::ChunkDelay(
            Duration::from_millis(50),
        ));
    let resp =
        keyplane_testkit::http::HttpRequest::post_json("/v1/chat/completions", &chat_body(true))
            .bearer(&c.key)
            .stream(c.dp.addr, TIMEOUT)
            .unwrap();
    let pid_term = std::thread::spawn({
        let mut dp_handle = std::mem::replace(&mut c.dp, DataPlane::start(&c.cp, "edge-2", &[]));
        move || dp_handle.terminate()
    });
    let chunks = resp.collect().unwrap();
    let text: String = chunks
        .iter()
        .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        text.contains("word19") && text.contains("[DONE]"),
        "the stream finished: {text}"
    );
    assert_eq!(pid_term.join().unwrap(), Some(0));
    c.wait_usage(1);
}

#[test]
fn a_data_plane_killed_right_after_a_response_still_bills_it_once() {
    let mut c = Cluster::start(&TWO, &[]);
    // Each response is read to its end, and the data plane is SIGKILLed at once, with no pause
    // for the spool's group sync: the record must already be in the spool file.
    const ROUNDS: u64 = 4;
    for round in 0..ROUNDS {
        let resp = c.chat(&chat_body(round % 2 == 1));
        assert_eq!(resp.status, 200, "{}", resp.text());
        c.dp.kill9();
        c.dp.restart();
        assert!(c.dp.wait_ready(TIMEOUT), "{}", c.dp.logs());
    }
    let rows = c.wait_usage(ROUNDS);
    assert_eq!(total(&rows, "output_tokens"), ROUNDS * 20);
    // Once the spool has nothing left to report, the count is final: each record counted once.
    c.wait_spool_settled();
    assert_eq!(total(&c.usage(), "requests"), ROUNDS);
}
