//! Model catalog and price sync end to end: fake providers serve recorded models lists (and
//! broken ones) from `testkit/samples`; the control plane syncs them, converts and merges prices,
//! pushes the route table, and a data plane routes a canonical name to the cheapest provider and
//! bills the provider's reported cost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::{Behavior, ControlPlane, DataPlane, FakeConfig, FakeUpstream, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
const CANONICAL: &str = "deepseek/deepseek-chat";

fn sample(name: &str) -> String {
    keyplane_testkit::samples::text(name).to_string()
}

/// The recorded OpenRouter list plus `deepseek/deepseek-chat` at the given USD-per-token strings.
fn openrouter_body(prompt: &str, completion: &str) -> String {
    let mut v: Value = serde_json::from_str(&sample("openrouter-models.json")).unwrap();
    v["data"].as_array_mut().unwrap().push(json!({
        "id": CANONICAL,
        "name": "DeepSeek: DeepSeek V3",
        "pricing": {"prompt": prompt, "completion": completion},
    }));
    v.to_string()
}

/// The recorded ZenMux list plus `deepseek/deepseek-chat` at the given USD per million tokens.
fn zenmux_body(input: f64, output: f64) -> String {
    let mut v: Value = serde_json::from_str(&sample("zenmux-models.json")).unwrap();
    let tier = |value: f64| json!([{"value": value, "unit": "perMTokens", "currency": "USD"}]);
    v["data"].as_array_mut().unwrap().push(json!({
        "id": CANONICAL,
        "object": "model",
        "pricings": {"prompt": tier(input), "completion": tier(output)},
    }));
    v.to_string()
}

struct Setup {
    cp: ControlPlane,
    fakes: Vec<FakeUpstream>,
}

impl Setup {
    /// A control plane (automatic sync off unless `extra` says otherwise) and one fake per
    /// (name, preset), each added with `--preset` and `--base-url` pointing at the fake, with a
    /// credential the fake requires.
    fn start(providers: &[(&str, &str)], extra: &[&str]) -> Setup {
        let cp = ControlPlane::start_with_args(extra);
        let mut fakes = Vec::new();
        for (name, preset) in providers {
            let fake = FakeUpstream::start(FakeConfig {
                name: name.to_string(),
                api_key: Some(format!("sk-{name}")),
                ..FakeConfig::default()
            });
            cp.ctl(&[
                "provider",
                "add",
                name,
                "--preset",
                preset,
                "--base-url",
                &fake.openai_base_url(),
            ])
            .ok();
            cp.ctl_with(
                &["credential", "add", name],
                Some(&format!("sk-{name}\n")),
                &cp.admin_token,
            )
            .ok();
            fakes.push(fake);
        }
        Setup { cp, fakes }
    }

    fn fake(&self, name: &str) -> &FakeUpstream {
        self.fakes.iter().find(|f| f.name() == name).unwrap()
    }

    fn sync(&self, provider: &str) -> Value {
        self.cp
            .ctl(&["--json", "catalog", "sync", provider])
            .ok()
            .json()[0]
            .clone()
    }

    fn offering(&self, model: &str, provider: &str) -> Value {
        let rows = self
            .cp
            .ctl(&["--json", "model", "list", "--model", model])
            .ok()
            .json();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["provider"] == provider)
            .unwrap_or_else(|| panic!("no {model} offering of {provider}: {rows}"))
            .clone()
    }
}

fn client(setup: &Setup) -> (DataPlane, String) {
    let key = setup
        .cp
        .ctl(&["--json", "key", "create", "tester"])
        .ok()
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = DataPlane::start(&setup.cp, "edge-1", &[]);
    assert!(
        wait_until(TIMEOUT, || HttpRequest::get("/v1/models")
            .bearer(&key)
            .send(dp.addr, TIMEOUT)
            .is_ok_and(|r| r.status == 200)),
        "the data plane never accepted the key:\n{}",
        dp.logs()
    );
    (dp, key)
}

fn chat(dp: &DataPlane, key: &str, model: &str) -> HttpResponse {
    let body = json!({
        "model": model,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello there, how are you today?"}],
    });
    HttpRequest::post_json("/v1/chat/completions", &body)
        .bearer(key)
        .send(dp.addr, TIMEOUT)
        .unwrap()
}

/// Waits until a request for `model` is served by `provider` (the route table is pushed
/// asynchronously after a sync). The data plane does not pass `x-fake-upstream` on, so the
/// fakes' request logs say who answered.
fn wait_served_by(s: &Setup, dp: &DataPlane, key: &str, model: &str, provider: &str) {
    let mut last = String::new();
    let ok = wait_until(TIMEOUT, || {
        for f in &s.fakes {
            f.clear_requests();
        }
        let r = chat(dp, key, model);
        let served: Vec<&str> = s
            .fakes
            .iter()
            .filter(|f| {
                f.requests()
                    .iter()
                    .any(|q| q.path == "/v1/chat/completions" && q.status == Some(200))
            })
            .map(FakeUpstream::name)
            .collect();
        last = format!("{} served by {served:?}", r.status);
        r.status == 200 && served == [provider]
    });
    assert!(ok, "{model} never went to {provider}; last answer {last}");
}

#[test]
fn synced_prices_convert_and_the_cheapest_of_three_wins_until_a_sync_changes_it() {
    let s = Setup::start(
        &[("or", "openrouter"), ("zm", "zenmux"), ("ds", "deepseek")],
        &["--catalog-sync-interval-secs", "0"],
    );
    s.fake("or")
        .set_models_body(Some((200, openrouter_body("0.00000027", "0.0000011"))));
    s.fake("zm")
        .set_models_body(Some((200, zenmux_body(0.25, 1.0))));
    s.fake("ds")
        .set_models_body(Some((200, sample("deepseek-models.json"))));

    let status = s.sync("or");
    assert_eq!(status["models"], 10, "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    assert!(status["last_success"].is_string(), "{status}");
    s.sync("zm");
    let ds = s.sync("ds");
    assert_eq!(
        (ds["models"].as_u64(), ds["priced_models"].as_u64()),
        (Some(2), Some(0))
    );
    // The sync used the provider's credential as bearer.
    let listed = s.fake("or").requests();
    let get = listed.iter().find(|r| r.path == "/v1/models").unwrap();
    assert_eq!(get.header("authorization"), Some("Bearer sk-or"));

    // A known model's price, to the cent: "0.00000015" / "0.0000006" USD per token.
    let mini = s.offering("openai/gpt-4o-mini", "or");
    assert_eq!(
        (mini["input"].as_f64(), mini["output"].as_f64()),
        (Some(0.15), Some(0.6))
    );
    assert_eq!(mini["source"], "sync:openrouter");
    assert!(mini["synced_at"].is_string());
    let keys: Vec<&str> = mini
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        8,
        "model list rows are exactly model, provider, upstream_model, input, output, currency, source, synced_at: {keys:?}"
    );
    // openrouter/auto's "-1" is unknown, not free; ZenMux keeps its tiers (routing test in
    // dataplane/src/table.rs).
    assert_eq!(s.offering("openrouter/auto", "or")["input"], Value::Null);
    let sonnet = s.offering("anthropic/claude-sonnet-4.5", "zm");
    assert_eq!(
        (sonnet["input"].as_f64(), sonnet["output"].as_f64()),
        (Some(3.0), Some(15.0))
    );

    // DeepSeek lists models without prices: a CNY price file prices them once a rate exists.
    assert_eq!(s.offering(CANONICAL, "ds")["input"], Value::Null);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        r#"{"source": "DeepSeek pricing page (CNY)", "as_of": "2025-09-05", "currency": "CNY",
  "prices": [{"provider": "ds", "model": "deepseek-chat", "input": "2", "output": "3"}]}"#,
    )
    .unwrap();
    s.cp.ctl(&["prices", "import", file.path().to_str().unwrap()])
        .ok();
    let row = s.offering(CANONICAL, "ds");
    assert_eq!(row["currency"], "CNY");
    assert_eq!(
        row["input"],
        Value::Null,
        "no CNY rate yet: unknown, not free"
    );
    s.cp.ctl(&["fx", "set", "CNY", "0.14"]).ok();
    let row = s.offering(CANONICAL, "ds");
    assert_eq!(
        (row["input"].as_f64(), row["output"].as_f64()),
        (Some(0.28), Some(0.42))
    );
    assert_eq!(row["currency"], "CNY");
    assert_eq!(row["source"], "import:DeepSeek pricing page (CNY)");
    let table =
        s.cp.ctl(&["model", "list", "--model", CANONICAL])
            .ok()
            .stdout;
    assert!(table.contains("CNY 2 / 3"), "both prices shown:\n{table}");
    let rates = s.cp.ctl(&["--json", "fx", "list"]).ok().json();
    assert_eq!(rates[0]["currency"], "CNY");

    // 3 offerings of the canonical name; for this request DeepSeek ($0.28/$0.42) is cheapest
    // (OpenRouter $0.27/$1.10, ZenMux $0.25/$1.00 cost more with 20 output tokens).
    let (dp, key) = client(&s);
    wait_served_by(&s, &dp, &key, CANONICAL, "ds");
    let upstream_body = s
        .fake("ds")
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .unwrap();
    assert_eq!(
        upstream_body.json.unwrap()["model"],
        "deepseek-chat",
        "the provider's own id"
    );

    // ZenMux drops its price: after its next sync, it wins.
    s.fake("zm")
        .set_models_body(Some((200, zenmux_body(0.05, 0.05))));
    s.sync("zm");
    wait_served_by(&s, &dp, &key, CANONICAL, "zm");

    // A manual price wins over the synced one for the same offering.
    s.cp.ctl(&[
        "model",
        "set",
        CANONICAL,
        "--provider",
        "or",
        "--upstream-model",
        CANONICAL,
        "--input",
        "0.01",
        "--output",
        "0.01",
    ])
    .ok();
    assert_eq!(s.offering(CANONICAL, "or")["source"], "manual");
    wait_served_by(&s, &dp, &key, CANONICAL, "or");

    // Aliases reach every offering of their target.
    s.cp.ctl(&["model", "alias", "ds-chat", CANONICAL]).ok();
    wait_served_by(&s, &dp, &key, "ds-chat", "or");
    let aliases = s.cp.ctl(&["--json", "model", "aliases"]).ok().json();
    assert_eq!(aliases[0]["target"], CANONICAL);
}

#[test]
fn a_failed_sync_keeps_the_last_good_catalog_and_touches_no_other_provider() {
    let s = Setup::start(
        &[("or", "openrouter"), ("zm", "zenmux")],
        &["--catalog-sync-interval-secs", "0"],
    );
    s.fake("or")
        .set_models_body(Some((200, openrouter_body("0.00000027", "0.0000011"))));
    s.fake("zm")
        .set_models_body(Some((200, zenmux_body(0.25, 1.0))));
    let all = s.cp.ctl(&["--json", "catalog", "sync"]).ok().json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");

    let broken = [
        (200, "<html>bad gateway</html>".to_string(), "not JSON"),
        (200, r#"{"models": []}"#.to_string(), "no `data` array"),
        (
            200,
            r#"{"data":[{"id":"a/b","pricing":{"prompt":"cheap","completion":"0"}}]}"#.to_string(),
            "pricing.prompt",
        ),
        (500, r#"{"error":"boom"}"#.to_string(), "HTTP 500"),
    ];
    for (code, body, expect) in broken {
        s.fake("or").set_models_body(Some((code, body)));
        let status = s.sync("or");
        let err = status["last_error"].as_str().unwrap_or_default();
        assert!(err.contains(expect), "{expect}: {status}");
        assert_eq!(
            status["models"], 10,
            "the last good catalog stays: {status}"
        );
        assert!(status["consecutive_failures"].as_u64().unwrap() >= 1);
        let mini = s.offering("openai/gpt-4o-mini", "or");
        assert_eq!(mini["input"].as_f64(), Some(0.15));
    }
    let zm = s.cp.ctl(&["--json", "catalog", "status", "zm"]).ok().json();
    assert_eq!(zm[0]["last_error"], Value::Null, "{zm}");
    assert_eq!(s.offering(CANONICAL, "zm")["input"].as_f64(), Some(0.25));
    let table = s.cp.ctl(&["catalog", "status"]).ok().stdout;
    assert!(
        table.contains("HTTP 500") && table.contains("zm"),
        "{table}"
    );

    // It recovers on the next good answer.
    s.fake("or")
        .set_models_body(Some((200, openrouter_body("0.0000001", "0.0000002"))));
    let status = s.sync("or");
    assert_eq!(status["last_error"], Value::Null);
    assert_eq!(s.offering(CANONICAL, "or")["input"].as_f64(), Some(0.1));

    // Unknown adapters and providers are refused.
    let bad = s.cp.ctl(&["provider", "add", "x", "--preset", "nope"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("preset"), "{}", bad.stderr);
    let bad = s.cp.ctl(&[
        "provider",
        "add",
        "y",
        "--protocol",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--catalog",
        "nope",
    ]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert_eq!(s.cp.ctl(&["catalog", "sync", "ghost"]).code, 1);
}

#[test]
fn providers_sync_on_start_and_on_schedule() {
    let s = Setup::start(&[], &["--catalog-sync-interval-secs", "1"]);
    let fake = FakeUpstream::start(FakeConfig {
        name: "or".into(),
        ..FakeConfig::default()
    });
    fake.set_models_body(Some((200, openrouter_body("0.00000027", "0.0000011"))));
    s.cp.ctl(&[
        "provider",
        "add",
        "or",
        "--preset",
        "openrouter",
        "--base-url",
        &fake.openai_base_url(),
    ])
    .ok();
    let synced = || {
        s.cp.ctl(&["--json", "catalog", "status", "or"]).ok().json()[0]["models"].as_u64()
            == Some(10)
    };
    assert!(wait_until(TIMEOUT, synced), "{}", s.cp.logs());
    // The schedule picks up a price change without anyone asking.
    fake.set_models_body(Some((200, openrouter_body("0.000001", "0.000002"))));
    assert!(
        wait_until(TIMEOUT, || s.offering(CANONICAL, "or")["input"].as_f64()
            == Some(1.0)),
        "{}",
        s.cp.logs()
    );

    // Across a restart, with the provider now broken: the sync on start fails, and the last
    // good catalog (stored) keeps serving.
    let mut s = s;
    assert_eq!(s.cp.terminate(), Some(0));
    fake.set_models_body(Some((502, "upstream down".into())));
    s.cp.restart();
    let failed = || {
        let st = s.cp.ctl(&["--json", "catalog", "status", "or"]).ok().json();
        st[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 502"))
            && st[0]["models"] == 10
    };
    assert!(wait_until(TIMEOUT, failed), "{}", s.cp.logs());
    assert_eq!(s.offering(CANONICAL, "or")["input"].as_f64(), Some(1.0));
}

#[test]
fn a_litellm_price_file_imports_and_a_broken_one_is_refused_whole() {
    let s = Setup::start(&[("oa", "openai")], &["--catalog-sync-interval-secs", "0"]);
    s.fake("oa").set_models_body(Some((
        200,
        r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","owned_by":"system"}]}"#
            .to_string(),
    )));
    s.sync("oa");
    let litellm = r#"{
    "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "one of ...", "mode": "chat"},
    "gpt-4o-mini": {
        "cache_read_input_token_cost": 7.5e-08,
        "input_cost_per_token": 1.5e-07,
        "litellm_provider": "openai",
        "mode": "chat",
        "output_cost_per_token": 6e-07
    },
    "text-embedding-3-small": {"input_cost_per_token": 2e-08, "litellm_provider": "openai", "mode": "embedding"}
}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model_prices_and_context_window.json");
    std::fs::write(&path, litellm).unwrap();
    let out =
        s.cp.ctl(&["--json", "prices", "import", path.to_str().unwrap()])
            .ok()
            .json();
    assert_eq!(
        (
            out["imported"].as_u64(),
            out["skipped"].as_u64(),
            out["format"].as_str()
        ),
        (Some(1), Some(1), Some("litellm"))
    );
    let row = s.offering("openai/gpt-4o-mini", "oa");
    assert_eq!(
        (row["input"].as_f64(), row["output"].as_f64()),
        (Some(0.15), Some(0.6))
    );
    assert_eq!(row["source"], "import:model_prices_and_context_window.json");
    assert_eq!(row["upstream_model"], "gpt-4o-mini");

    let broken = litellm
        .replace(
            "\"output_cost_per_token\": 6e-07",
            "\"output_cost_per_token\": \"lots\"",
        )
        .replace(
            "\"input_cost_per_token\": 1.5e-07",
            "\"input_cost_per_token\": 1e-07",
        );
    std::fs::write(&path, broken).unwrap();
    let refused = s.cp.ctl(&["prices", "import", path.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("line 8: \"gpt-4o-mini\".output_cost_per_token"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        s.offering("openai/gpt-4o-mini", "oa")["input"].as_f64(),
        Some(0.15),
        "nothing of the refused file was imported"
    );
    let missing = s.cp.ctl(&["prices", "import", "/nonexistent/file.json"]);
    assert_eq!(missing.code, 2);
}

#[test]
fn the_providers_reported_cost_is_billed_and_both_costs_are_kept() {
    let s = Setup::start(
        &[("or", "openrouter")],
        &["--catalog-sync-interval-secs", "0"],
    );
    s.fake("or")
        .set_models_body(Some((200, openrouter_body("0.00000027", "0.0000011"))));
    s.sync("or");
    let (dp, key) = client(&s);
    // The upstream answers with OpenRouter's recorded completion: usage.cost 0.00435825.
    s.fake("or").set_behavior(Behavior::Status {
        code: 200,
        retry_after: None,
        body: Some(sample("openrouter-usage-cost.json")),
    });
    wait_served_by(&s, &dp, &key, "openai/gpt-4o-mini", "or");
    let mut rows = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            rows =
                s.cp.ctl(&["--json", "usage"])
                    .ok()
                    .json()
                    .as_array()
                    .unwrap()
                    .clone();
            rows.first()
                .is_some_and(|r| r["requests"].as_u64() == r["reported_requests"].as_u64())
        }),
        "{rows:?}"
    );
    let r = &rows[0];
    let n = r["requests"].as_f64().unwrap();
    assert_eq!(r["billed"], "reported");
    assert!(
        (r["cost_usd"].as_f64().unwrap() - n * 0.00435825).abs() < 1e-12,
        "{r}"
    );
    assert!(
        (r["reported_cost_usd"].as_f64().unwrap() - n * 0.00435825).abs() < 1e-12,
        "{r}"
    );
    // Computed at the synced $0.15/$0.60: 17 prompt + 2177 completion tokens = $0.00130875.
    assert!(
        (r["computed_cost_usd"].as_f64().unwrap() - n * 0.00130875).abs() < 1e-12,
        "{r}"
    );
    for field in [
        "key",
        "model",
        "provider",
        "credential",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    ] {
        assert!(
            r.get(field).is_some(),
            "contract field {field} missing: {r}"
        );
    }
    // Grouped reports (`--by`, read from the stored records) carry the same three figures.
    let by =
        s.cp.ctl(&["--json", "usage", "--by", "provider"])
            .ok()
            .json();
    let g = &by.as_array().unwrap()[0];
    assert_eq!(g["billed"], "reported", "{g}");
    for field in [
        "cost_usd",
        "reported_cost_usd",
        "computed_cost_usd",
        "requests",
    ] {
        assert_eq!(g[field], r[field], "{field}: {g} vs {r}");
    }
}

#[test]
fn anthropic_and_openai_lists_sync_with_their_own_auth() {
    let cp = ControlPlane::start_with_args(&["--catalog-sync-interval-secs", "0"]);
    let fake = FakeUpstream::start(FakeConfig {
        name: "an".into(),
        api_key: Some("sk-an".into()),
        ..FakeConfig::default()
    });
    cp.ctl(&[
        "provider",
        "add",
        "an",
        "--preset",
        "anthropic",
        "--base-url",
        &fake.anthropic_base_url(),
    ])
    .ok();
    // Without a credential the fake refuses the list: a clear status, no models.
    let s = cp.ctl(&["--json", "catalog", "sync", "an"]).ok().json();
    assert!(
        s[0]["last_error"].as_str().unwrap().contains("HTTP 401"),
        "{s}"
    );
    cp.ctl_with(
        &["credential", "add", "an"],
        Some("sk-an\n"),
        &cp.admin_token,
    )
    .ok();
    let s = cp.ctl(&["--json", "catalog", "sync", "an"]).ok().json();
    assert_eq!(s[0]["models"], 3, "{s}");
    let get = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.starts_with("/v1/models"))
        .unwrap();
    assert_eq!(get.header("x-api-key"), Some("sk-an"));
    assert_eq!(get.header("anthropic-version"), Some("2023-06-01"));
    let rows = cp
        .ctl(&[
            "--json",
            "model",
            "list",
            "--model",
            "anthropic/claude-sonnet-4.5",
        ])
        .ok()
        .json();
    assert_eq!(
        rows[0]["upstream_model"], "claude-sonnet-4-5-20250929",
        "{rows}"
    );
    assert_eq!(rows[0]["input"], Value::Null, "a list without prices");
    let providers = cp.ctl(&["--json", "provider", "list"]).ok().json();
    assert_eq!(providers[0]["protocol"], "anthropic");
    assert_eq!(providers[0]["catalog"], "anthropic-list");
    assert_eq!(providers[0]["preset"], "anthropic");
}

#[test]
fn an_openai_responses_provider_lists_its_models_as_openai_does() {
    let cp = ControlPlane::start_with_args(&["--catalog-sync-interval-secs", "0"]);
    let fake = FakeUpstream::start(FakeConfig {
        name: "resp".into(),
        api_key: Some("sk-resp".into()),
        ..FakeConfig::default()
    });
    cp.ctl(&[
        "provider",
        "add",
        "resp",
        "--preset",
        "openai",
        "--protocol",
        "openai-responses",
        "--base-url",
        &fake.openai_base_url(),
    ])
    .ok();
    cp.ctl_with(
        &["credential", "add", "resp"],
        Some("sk-resp\n"),
        &cp.admin_token,
    )
    .ok();
    let s = cp.ctl(&["--json", "catalog", "sync", "resp"]).ok().json();
    assert_eq!(s[0]["models"], 3, "{s}");
    let get = fake
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.starts_with("/v1/models"))
        .unwrap();
    assert_eq!(get.header("authorization"), Some("Bearer sk-resp"));
    assert_eq!(get.header("x-api-key"), None);
    let rows = cp
        .ctl(&["--json", "model", "list", "--model", "openai/gpt-4o-mini"])
        .ok()
        .json();
    assert_eq!(rows[0]["provider"], "resp", "{rows}");
    assert_eq!(rows[0]["upstream_model"], "gpt-4o-mini", "{rows}");
    let providers = cp.ctl(&["--json", "provider", "list"]).ok().json();
    assert_eq!(providers[0]["protocol"], "openai-responses");
    assert_eq!(providers[0]["catalog"], "list");
}

/// A Google-style models list on a loopback port: two pages joined by a page token with
/// characters a query must encode, each request's path and `x-goog-api-key` recorded.
struct GoogleModels {
    base_url: String,
    /// Each request's path and `x-goog-api-key`.
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

type Seen = (String, Option<String>);

impl GoogleModels {
    const TOKEN: &'static str = "page+2/of=2";

    fn start() -> GoogleModels {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            // Bounded: a test syncs a few times at most.
            for stream in listener.incoming().take(64) {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut key = None;
                for _ in 0..100 {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("x-goog-api-key")
                    {
                        key = Some(value.trim().to_string());
                    }
                }
                log.lock().unwrap().push((path.clone(), key.clone()));
                let (status, body) = if key.as_deref() != Some("AIza-test") {
                    (
                        "400 Bad Request",
                        r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#.to_string(),
                    )
                } else if path == "/v1beta/models?pageSize=1000" {
                    (
                        "200 OK",
                        json!({
                            "models": [
                                {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash",
                                 "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                                 "supportedGenerationMethods": ["generateContent", "countTokens"]},
                                {"name": "models/imagen-4.0-generate-001",
                                 "supportedGenerationMethods": ["predict"]},
                            ],
                            "nextPageToken": GoogleModels::TOKEN,
                        })
                        .to_string(),
                    )
                } else if path == "/v1beta/models?pageSize=1000&pageToken=page%2B2%2Fof%3D2" {
                    (
                        "200 OK",
                        json!({"models": [
                            {"name": "models/gemini-embedding-001",
                             "supportedGenerationMethods": ["embedContent", "countTokens"]},
                            {"name": "models/gemini-2.5-pro",
                             "supportedGenerationMethods": ["generateContent"]},
                        ]})
                        .to_string(),
                    )
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        GoogleModels { base_url, seen }
    }
}

#[test]
fn a_gemini_provider_syncs_every_page_of_googles_list_and_takes_litellm_prices() {
    let cp = ControlPlane::start_with_args(&["--catalog-sync-interval-secs", "0"]);
    let google = GoogleModels::start();
    let added = cp
        .ctl(&[
            "--json",
            "provider",
            "add",
            "google",
            "--preset",
            "gemini",
            "--base-url",
            &google.base_url,
        ])
        .ok()
        .json();
    assert_eq!(
        (&added["protocol"], &added["catalog"]),
        (&json!("gemini"), &json!("gemini-list")),
        "{added}"
    );
    // Without a credential Google refuses the list; the error is recorded, nothing synced.
    let s = cp.ctl(&["--json", "catalog", "sync", "google"]).ok().json();
    assert!(
        s[0]["last_error"].as_str().unwrap().contains("HTTP 400"),
        "{s}"
    );
    cp.ctl_with(
        &["credential", "add", "google"],
        Some("AIza-test\n"),
        &cp.admin_token,
    )
    .ok();
    let s = cp.ctl(&["--json", "catalog", "sync", "google"]).ok().json();
    assert_eq!(
        s[0]["models"], 3,
        "both pages, without the predict-only model: {s}"
    );
    assert_eq!(s[0]["last_error"], Value::Null, "{s}");
    {
        let seen = google.seen.lock().unwrap();
        let synced = &seen[seen.len() - 2..];
        assert_eq!(
            synced,
            [
                (
                    "/v1beta/models?pageSize=1000".to_string(),
                    Some("AIza-test".to_string())
                ),
                (
                    "/v1beta/models?pageSize=1000&pageToken=page%2B2%2Fof%3D2".to_string(),
                    Some("AIza-test".to_string())
                ),
            ],
            "the key travels as x-goog-api-key, never in the URL"
        );
    }
    let rows = cp.ctl(&["--json", "model", "list"]).ok().json();
    let mut names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["provider"] == "google")
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "google/gemini-2.5-flash",
            "google/gemini-2.5-pro",
            "google/gemini-embedding-001"
        ],
        "{rows}"
    );
    let flash = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "google/gemini-2.5-flash" && r["provider"] == "google")
        .unwrap();
    assert_eq!(flash["upstream_model"], "gemini-2.5-flash");
    assert_eq!(flash["input"], Value::Null, "Google's list has no prices");

    // LiteLLM's `gemini/…` entries price a gemini-preset provider without --provider.
    let litellm = r#"{
    "gemini/gemini-2.5-flash": {
        "input_cost_per_token": 3e-07,
        "litellm_provider": "gemini",
        "mode": "chat",
        "output_cost_per_token": 2.5e-06
    }
}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model_prices_and_context_window.json");
    std::fs::write(&path, litellm).unwrap();
    let out = cp
        .ctl(&["--json", "prices", "import", path.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(out["imported"], 1, "{out}");
    let rows = cp
        .ctl(&[
            "--json",
            "model",
            "list",
            "--model",
            "google/gemini-2.5-flash",
        ])
        .ok()
        .json();
    assert_eq!(
        (rows[0]["input"].as_f64(), rows[0]["output"].as_f64()),
        (Some(0.3), Some(2.5)),
        "{rows}"
    );
}
