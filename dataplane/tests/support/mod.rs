//! A cluster for the data plane's cross-process tests: a control plane, fake upstreams at known
//! prices, one data plane, and a client key.
#![allow(dead_code)]

use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::{ControlPlane, DataPlane, FakeConfig, FakeUpstream, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

pub const MODEL: &str = "test/model";
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One upstream: its name, input and output price (USD per million tokens), credential multiplier.
pub struct Offer<'a> {
    pub name: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub multiplier: &'a str,
    /// "openai", "anthropic", "openai-responses" or "gemini".
    pub protocol: &'a str,
}

pub const fn offer<'a>(name: &'a str, input: &'a str, output: &'a str) -> Offer<'a> {
    Offer {
        name,
        input,
        output,
        multiplier: "1",
        protocol: "openai",
    }
}

pub const fn anthropic_offer<'a>(name: &'a str, input: &'a str, output: &'a str) -> Offer<'a> {
    Offer {
        name,
        input,
        output,
        multiplier: "1",
        protocol: "anthropic",
    }
}

pub const fn gemini_offer<'a>(name: &'a str, input: &'a str, output: &'a str) -> Offer<'a> {
    Offer {
        name,
        input,
        output,
        multiplier: "1",
        protocol: "gemini",
    }
}

pub struct Cluster {
    pub cp: ControlPlane,
    pub dp: DataPlane,
    pub fakes: Vec<FakeUpstream>,
    pub key: String,
}

impl Cluster {
    pub fn start(offers: &[Offer<'_>], dp_args: &[&str]) -> Cluster {
        Self::start_with(offers, dp_args, |_| {})
    }

    /// `tune` adjusts each fake's config before it starts.
    pub fn start_with(
        offers: &[Offer<'_>],
        dp_args: &[&str],
        tune: impl Fn(&mut FakeConfig),
    ) -> Cluster {
        Self::start_on(ControlPlane::start(), offers, dp_args, tune)
    }

    /// [`Cluster::start_with`] around a control plane started by the caller (with flags).
    pub fn start_on(
        cp: ControlPlane,
        offers: &[Offer<'_>],
        dp_args: &[&str],
        tune: impl Fn(&mut FakeConfig),
    ) -> Cluster {
        let mut fakes = Vec::new();
        for o in offers {
            let mut config = FakeConfig {
                name: o.name.to_string(),
                api_key: Some(format!("sk-{}", o.name)),
                ..FakeConfig::default()
            };
            tune(&mut config);
            let fake = FakeUpstream::start(config);
            let base = match o.protocol {
                "anthropic" => fake.anthropic_base_url(),
                "gemini" => fake.gemini_base_url(),
                _ => fake.openai_base_url(),
            };
            add_offer(&cp, o, &base);
            fakes.push(fake);
        }
        let key = cp.ctl(&["--json", "key", "create", "tester"]).ok().json()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let dp = DataPlane::start(&cp, "edge-1", dp_args);
        let cluster = Cluster { cp, dp, fakes, key };
        cluster.wait_key_accepted();
        cluster
    }

    /// Waits until the data plane's table knows the client key.
    pub fn wait_key_accepted(&self) {
        assert!(
            wait_until(TIMEOUT, || {
                HttpRequest::get("/v1/models")
                    .bearer(&self.key)
                    .send(self.dp.addr, TIMEOUT)
                    .is_ok_and(|r| r.status == 200)
            }),
            "the data plane never accepted the key; log:\n{}",
            self.dp.logs()
        );
    }

    pub fn fake(&self, name: &str) -> &FakeUpstream {
        self.fakes.iter().find(|f| f.name() == name).unwrap()
    }

    pub fn chat(&self, body: &Value) -> HttpResponse {
        HttpRequest::post_json("/v1/chat/completions", body)
            .bearer(&self.key)
            .send(self.dp.addr, TIMEOUT)
            .unwrap()
    }

    /// `usage --json` rows.
    pub fn usage(&self) -> Vec<Value> {
        self.cp
            .ctl(&["--json", "usage"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until the data plane's spool holds no unacknowledged record (`/metrics`
    /// `keyplane_usage_spool_depth 0`): from then on nothing more can reach the ledger, so a
    /// count read afterwards is final.
    pub fn wait_spool_settled(&self) {
        let depth = || {
            let text = HttpRequest::get("/metrics")
                .send(self.dp.addr, TIMEOUT)
                .ok()?
                .text();
            text.lines()
                .find_map(|l| l.strip_prefix("keyplane_usage_spool_depth "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        assert!(
            wait_until(TIMEOUT, || depth() == Some(0)),
            "the spool never settled: depth {:?}",
            depth()
        );
    }

    /// Waits until the ledger holds `requests` requests in all; returns the rows.
    pub fn wait_usage(&self, requests: u64) -> Vec<Value> {
        let mut rows = Vec::new();
        let ok = wait_until(TIMEOUT, || {
            rows = self.usage();
            total(&rows, "requests") == requests
        });
        assert!(
            ok,
            "ledger never reached {requests} requests: {rows:?}\ndata plane log:\n{}",
            self.dp.logs()
        );
        rows
    }
}

/// Adds a provider (of `o.protocol`) with one credential and its offering of [`MODEL`].
pub fn add_offer(cp: &ControlPlane, o: &Offer<'_>, base_url: &str) {
    cp.ctl(&[
        "provider",
        "add",
        o.name,
        "--protocol",
        o.protocol,
        "--base-url",
        base_url,
    ])
    .ok();
    cp.ctl_with(
        &["credential", "add", o.name, "--multiplier", o.multiplier],
        Some(&format!("sk-{}\n", o.name)),
        &cp.admin_token,
    )
    .ok();
    let upstream = format!("{}-model", o.name);
    cp.ctl(&[
        "model",
        "set",
        MODEL,
        "--provider",
        o.name,
        "--upstream-model",
        &upstream,
        "--input",
        o.input,
        "--output",
        o.output,
    ])
    .ok();
}

pub fn total(rows: &[Value], field: &str) -> u64 {
    rows.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

pub fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

/// Which fake served: the `x-fake-upstream` header is not passed on, so read it from the fakes'
/// request logs: the one that answered 200 last.
pub fn served_by(cluster: &Cluster) -> String {
    cluster
        .fakes
        .iter()
        .filter(|f| f.requests().iter().any(|r| r.status == Some(200)))
        .map(|f| f.name().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// An Anthropic Messages request body.
pub fn messages_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

impl Cluster {
    /// POST /v1/messages with `x-api-key`.
    pub fn messages(&self, body: &Value) -> HttpResponse {
        HttpRequest::post_json("/v1/messages", body)
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .send(self.dp.addr, TIMEOUT)
            .unwrap()
    }
}

/// The `(event name, data JSON)` pairs of an Anthropic SSE body.
pub fn anthropic_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim());
            }
        }
        if !name.is_empty() {
            out.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    out
}

/// The route-table version a data plane serves, from its `/metrics` (0 before it has one), so a
/// test can wait for a table with a change it made.
pub fn route_version(addr: std::net::SocketAddr) -> f64 {
    let metrics = HttpRequest::get("/metrics")
        .send(addr, TIMEOUT)
        .unwrap()
        .text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("keyplane_route_version "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

pub const fn responses_offer<'a>(name: &'a str, input: &'a str, output: &'a str) -> Offer<'a> {
    Offer {
        name,
        input,
        output,
        multiplier: "1",
        protocol: "openai-responses",
    }
}

/// An OpenAI Responses request body.
pub fn responses_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}],
        "max_output_tokens": 256,
        "stream": stream,
    })
}

impl Cluster {
    /// POST /v1/responses with a Bearer key.
    pub fn responses(&self, body: &Value) -> HttpResponse {
        HttpRequest::post_json("/v1/responses", body)
            .bearer(&self.key)
            .send(self.dp.addr, TIMEOUT)
            .unwrap()
    }
}

/// The `(event type, data JSON)` pairs of a Responses SSE body, checking that each event's
/// `event:` line names its data's `type`.
pub fn responses_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if data.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&data).unwrap();
        let kind = value["type"].as_str().unwrap_or_default().to_string();
        if let Some(name) = name {
            assert_eq!(name, kind, "event line and type agree");
        }
        out.push((kind, value));
    }
    out
}
