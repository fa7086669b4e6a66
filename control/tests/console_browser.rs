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
