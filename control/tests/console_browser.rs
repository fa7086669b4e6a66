//! The web console in a real headless Chromium (Debian's `chromium` through `chromedriver`):
//! what an operator does with a browser, with the browser's own cookie, CSP and form handling.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)] // The usage helpers only; subscriptions are for other tests.
mod support;

use keyplane_testkit::browser::Browser;
use keyplane_testkit::process::{ControlOptions, ControlPlane, DataPlane};
use keyplane_testkit::{Behavior, FakeConfig, FakeUpstream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_operator_signs_in_creates_a_key_sees_it_and_the_chart_then_its_holder_uses_the_portal() {
    let cp = ControlPlane::start_with(ControlOptions {
        console: true,
        ..ControlOptions::default()
    });
    let base = format!("http://{}", cp.console_addr.unwrap());
    let browser = Browser::start();

    // Any page sends a browser without a session to the sign-in form.
    browser.goto(&format!("{base}/keys"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());

    // A wrong token: refused, still on the sign-in form.
    browser.type_into("#token", "not-the-admin-token");
    browser.click("button[type=submit]");
    assert!(
        browser.wait_for("p.notice.error", WAIT),
        "{}",
        browser.source()
    );
    assert!(browser.source().contains("Wrong admin token"));

    // The admin token: the overview.
    browser.type_into("#token", &cp.admin_token);
    browser.click("button[type=submit]");
    assert!(
        browser.wait_for("form.signout", WAIT),
        "{}",
        browser.source()
    );
    assert!(browser.source().contains("<h1>Overview</h1>"));
    // The session cookie is HttpOnly: page script cannot read it.
    let cookies = browser.script("return document.cookie;");
    assert_eq!(cookies, "", "HttpOnly cookie visible to script: {cookies}");

    // Create a key through the form.
    browser.goto(&format!("{base}/keys"));
    browser.type_into("#create-key input[name=name]", "browser-key");
    browser.type_into("#create-key input[name=budget_usd]", "5");
    browser.click("#create-key button[type=submit]");
    assert!(browser.wait_for("#new-key", WAIT), "{}", browser.source());
    let key = browser.property("#new-key", "value");
    let key = key.as_str().unwrap().to_string();
    assert!(key.starts_with("kp_") && key.len() == 46, "{key}");

    // The list shows it, without the key; keyplanectl sees the same key.
    browser.goto(&format!("{base}/keys"));
    assert!(browser.wait_for("#keys", WAIT));
    let html = browser.source();
    assert!(
        html.contains("browser-key") && html.contains("of $5"),
        "{html}"
    );
    assert!(!html.contains(&key));
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert_eq!(keys[0]["name"], "browser-key");
    let key_id = keys[0]["id"].as_str().unwrap().to_string();

    // Usage reported by a node shows in the overview, and the vendored chart library ran (the
    // CSP allowed the console's own script files): uPlot drew a canvas into #chart.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut rec = support::usage_record(
        "0190a000-0000-7000-8000-000000000001",
        &key_id,
        1200,
        300,
        42_000_000,
    );
    rec.started_at_ms = now_ms - 60_000;
    support::report_usage(&cp.url(), &cp.node_token, "node-a", vec![rec]).unwrap();
    browser.goto(&format!("{base}/"));
    assert!(
        browser.wait_for("#chart canvas", WAIT),
        "{}",
        browser.source()
    );
    // The second chart, error rate and latency percentiles over time, drew too.
    assert!(
        browser.wait_for("#chart-health canvas", WAIT),
        "{}",
        browser.source()
    );
    let html = browser.source();
    assert!(
        html.contains("deepseek/deepseek-chat") && html.contains("$0.042"),
        "{html}"
    );
    assert!(html.contains("Latency p50") && html.contains("First token p50"));

    // Sign out: the session is gone, the keys page sends the browser back to sign-in.
    browser.click("form.signout button");
    assert!(browser.wait_for("#token", WAIT));
    browser.goto(&format!("{base}/keys"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());

    // The key holder signs in to the portal with the key and sees that key's usage.
    browser.goto(&format!("{base}/portal"));
    browser.type_into("#token", &key);
    browser.click("button[type=submit]");
    assert!(browser.wait_for("#budget", WAIT), "{}", browser.source());
    let html = browser.source();
    assert!(html.contains("Key browser-key") && html.contains("deepseek/deepseek-chat"));
    assert!(html.contains("of $5"), "{html}");
    assert!(!html.contains(&key) && !html.contains(&cp.admin_token));
}

#[test]
fn a_request_through_a_data_plane_that_failed_over_shows_both_attempts_in_order() {
    let cp = ControlPlane::start_with(ControlOptions {
        console: true,
        ..ControlOptions::default()
    });
    let model = "test/model";
    // Two upstreams for one model: the cheaper is tried first and fails once with a 500.
    let fakes: Vec<FakeUpstream> = ["cheap", "dear"]
        .into_iter()
        .map(|name| {
            FakeUpstream::start(FakeConfig {
                name: name.to_string(),
                api_key: Some(format!("sk-{name}")),
                ..FakeConfig::default()
            })
        })
        .collect();
    support::add_openai_offer(&cp, "cheap", &fakes[0].openai_base_url(), model, "1");
    support::add_openai_offer(&cp, "dear", &fakes[1].openai_base_url(), model, "5");
    fakes[0].push_once(Behavior::status(500));
    let key = cp.ctl(&["--json", "key", "create", "failover"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = DataPlane::start(&cp, "edge-1", &[]);
    support::wait_key_accepted(&dp, &key);
    assert_eq!(support::chat(&dp, &key, model), 200);

    let base = format!("http://{}", cp.console_addr.unwrap());
    let browser = Browser::start();
    browser.goto(&format!("{base}/login"));
    browser.type_into("#token", &cp.admin_token);
    browser.click("button[type=submit]");
    assert!(
        browser.wait_for("form.signout", WAIT),
        "{}",
        browser.source()
    );

    // The request log lists it once its node's report arrives, with its path.
    let path = "cheap/";
    let listed = keyplane_testkit::wait_until(Duration::from_secs(30), || {
        browser.goto(&format!("{base}/requests"));
        browser.source().contains(path)
    });
    assert!(
        listed,
        "{}\ndata plane log:\n{}",
        browser.source(),
        dp.logs()
    );
    let html = browser.source();
    assert!(html.contains(model) && html.contains("dear"), "{html}");

    // Its page, through the list's link: both attempts, the failed one first.
    browser.click("td a[href^='/requests/view']");
    assert!(browser.wait_for("#attempts", WAIT), "{}", browser.source());
    let rows = browser.script(
        "return Array.from(document.querySelectorAll('#attempts tbody tr')).map(r => \
         Array.from(r.cells).map(c => c.textContent.trim()));",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][1], "cheap", "{rows:?}");
    assert_ne!(rows[0][3], "ok", "the failed attempt: {rows:?}");
    assert_eq!(rows[1][1], "dear", "{rows:?}");
    assert_eq!(rows[1][3], "ok", "{rows:?}");
    assert_eq!(fakes[0].requests().len(), 1);
    assert_eq!(fakes[1].requests().len(), 1);

    // The overview counts it among the logged requests; served in the end, it is no error.
    browser.goto(&format!("{base}/"));
    assert!(browser.wait_for("#windows", WAIT), "{}", browser.source());
    let logged = browser.script(
        "return Array.from(document.querySelectorAll('#windows td.logged-requests')).map(c => \
         c.textContent.trim() + ' ' + c.nextElementSibling.textContent.trim());",
    );
    assert_eq!(
        logged,
        serde_json::json!(["1 0 (0.0%)", "1 0 (0.0%)", "1 0 (0.0%)"])
    );
}

#[test]
fn the_route_probe_shows_each_route_and_a_tampered_csrf_token_is_refused_in_the_browser() {
    let cp = ControlPlane::start_with(ControlOptions {
        console: true,
        ..ControlOptions::default()
    });
    let model = "test/model";
    let fakes: Vec<FakeUpstream> = ["good", "bad"]
        .into_iter()
        .map(|name| {
            FakeUpstream::start(FakeConfig {
                name: name.to_string(),
                api_key: Some(format!("sk-{name}")),
                ..FakeConfig::default()
            })
        })
        .collect();
    support::add_openai_offer(&cp, "good", &fakes[0].openai_base_url(), model, "1");
    support::add_openai_offer(&cp, "bad", &fakes[1].openai_base_url(), model, "5");
    fakes[1].push_once(Behavior::status(500));
    let dp = DataPlane::start(&cp, "edge-1", &[]);

    let base = format!("http://{}", cp.console_addr.unwrap());
    let browser = Browser::start();
    browser.goto(&format!("{base}/login"));
    browser.type_into("#token", &cp.admin_token);
    browser.click("button[type=submit]");
    assert!(
        browser.wait_for("form.signout", WAIT),
        "{}",
        browser.source()
    );

    // The route probe: one row per route, the answered one ok, the failed one with its status.
    browser.goto(&format!("{base}/probe"));
    let ready = keyplane_testkit::wait_until(Duration::from_secs(30), || {
        browser.goto(&format!("{base}/probe"));
        browser
            .find("#probe-form button[type=submit]:not([disabled])")
            .is_some()
    });
    assert!(ready, "{}\n{}", browser.source(), dp.logs());
    browser.click("#probe-form button[type=submit]");
    assert!(
        browser.wait_for("#probe-results", Duration::from_secs(60)),
        "{}\n{}",
        browser.source(),
        dp.logs()
    );
    let rows = browser.script(
        "return Array.from(document.querySelectorAll('#probe-results tbody tr')).map(r => \
         [r.className].concat(Array.from(r.cells).map(c => c.textContent.trim())));",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let good = rows.iter().find(|r| r[2] == "good").unwrap();
    let bad = rows.iter().find(|r| r[2] == "bad").unwrap();
    assert_eq!(good[0], "ok", "{rows:?}");
    assert_eq!(good[5], "200", "{rows:?}");
    assert_eq!(bad[0], "failed", "{rows:?}");
    assert_eq!(bad[5], "503", "{rows:?}");
    assert!(!browser.source().contains("kp_"));
    // The answered route's request, in the log, from the row's link.
    browser.click("#probe-results tr.ok a[href^='/requests/view']");
    assert!(browser.wait_for("#attempts", WAIT), "{}", browser.source());
    assert!(browser.source().contains("good"));

    // The browser submits the disable form with its hidden CSRF field changed: 403, nothing
    // changes. Same origin, same session cookie: only the token is wrong.
    let states = || {
        let creds = cp.ctl(&["--json", "credential", "list"]).ok().json();
        creds
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["state"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = states();
    assert!(!before.contains(&"disabled".to_string()), "{before:?}");
    browser.goto(&format!("{base}/providers"));
    assert!(
        browser.wait_for("form.disable", WAIT),
        "{}",
        browser.source()
    );
    let tampered = browser.script(
        "const f = document.querySelector('form.disable'); \
         f.querySelector('input[name=csrf]').value = '0'.repeat(64); return f.action;",
    );
    assert!(tampered.as_str().unwrap().ends_with("/credentials/disable"));
    browser.click("form.disable button[type=submit]");
    assert!(
        browser.wait_for("body.login h1", WAIT),
        "{}",
        browser.source()
    );
    let html = browser.source();
    assert!(
        html.contains("<h1>Refused</h1>") && html.contains("security token"),
        "{html}"
    );
    assert_eq!(states(), before, "the refused form changed nothing");
    // The same form, untampered, works: the refusal was the token's.
    browser.goto(&format!("{base}/providers"));
    assert!(browser.wait_for("form.disable", WAIT));
    browser.click("form.disable button[type=submit]");
    assert!(
        browser.wait_for("p.notice.done", WAIT),
        "{}",
        browser.source()
    );
    let creds = cp.ctl(&["--json", "credential", "list"]).ok().json();
    let disabled: Vec<_> = creds
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "disabled")
        .collect();
    assert_eq!(disabled.len(), 1, "{creds}");
}
