//! The web console against the real `keyplane-control` over loopback: headers, sign-in, cookies,
//! CSRF, the sign-in limit, key creation shown once, and no secret on any page.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)] // The usage helpers only; subscriptions are for other tests.
mod support;

use keyplane_proto::v1 as pb;
use keyplane_testkit::http::{HttpRequest, HttpResponse};
use keyplane_testkit::process::{ControlOptions, ControlPlane, TlsFiles};
use std::net::SocketAddr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A refused attempt: what it shows, its form fields, its extra headers.
type Attempt<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<(&'static str, &'a str)>,
);

fn start() -> ControlPlane {
    ControlPlane::start_with(ControlOptions {
        console: true,
        ..ControlOptions::default()
    })
}

fn console(cp: &ControlPlane) -> SocketAddr {
    cp.console_addr.expect("the console announced its address")
}

/// `application/x-www-form-urlencoded`, every byte but unreserved ones percent-encoded.
fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> HttpResponse {
    let mut req = HttpRequest::get(path);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send(addr, TIMEOUT).unwrap()
}

fn post(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
    extra: &[(&'static str, &str)],
) -> HttpResponse {
    let mut req = HttpRequest {
        method: "POST",
        path,
        headers: vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )],
        body: form(fields),
    };
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    for (k, v) in extra {
        req = req.header(k, v);
    }
    req.send(addr, TIMEOUT).unwrap()
}

/// `name=value` of the response's session cookie.
fn cookie_of(resp: &HttpResponse) -> Option<String> {
    let set = resp.header("set-cookie")?;
    Some(set.split(';').next()?.trim().to_string())
}

/// Signs in with the admin token; returns the cookie to send.
fn sign_in(cp: &ControlPlane) -> String {
    let resp = post(
        console(cp),
        "/login",
        None,
        &[("token", &cp.admin_token)],
        &[],
    );
    assert_eq!(resp.status, 303, "{}", resp.text());
    assert_eq!(resp.header("location"), Some("/"));
    cookie_of(&resp).expect("a session cookie")
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    html[start..start + 64].to_string()
}

fn assert_hardened(resp: &HttpResponse, what: &str) {
    let csp = resp.header("content-security-policy").unwrap_or_default();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{what}: CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        resp.header("referrer-policy"),
        Some("no-referrer"),
        "{what}"
    );
}

#[test]
fn every_response_carries_the_security_headers_and_pages_have_no_inline_code() {
    let cp = start();
    let addr = console(&cp);
    let cookie = sign_in(&cp);
    for path in [
        "/",
        "/requests",
        "/models",
        "/usage",
        "/usage?by=day",
        "/usage.csv",
        "/keys",
        "/providers",
        "/nodes",
        "/connect",
        "/login",
        "/no-such-page",
    ] {
        let resp = get(addr, path, Some(&cookie));
        assert_hardened(&resp, path);
        let html = resp.text();
        assert!(!html.contains("<script>"), "{path}: inline script");
        assert!(!html.contains("<style"), "{path}: inline style");
        assert!(!html.contains(" style="), "{path}: style attribute");
        assert!(!html.contains(" onclick="), "{path}: inline handler");
    }
    assert_eq!(get(addr, "/no-such-page", Some(&cookie)).status, 404);
    for asset in [
        "console.js",
        "console.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ] {
        let resp = get(addr, &format!("/assets/{asset}"), None);
        assert_eq!(resp.status, 200, "{asset}");
        assert!(resp.body.len() > 100, "{asset} is embedded");
        assert_hardened(&resp, asset);
    }
    // Without a session every page sends the browser to the sign-in form.
    let anon = get(addr, "/keys", None);
    assert_eq!(anon.status, 303);
    assert_eq!(anon.header("location"), Some("/login"));
    assert_hardened(&anon, "redirect");
}

#[test]
fn sign_in_sets_a_strict_cookie_a_wrong_token_gets_none_and_sign_out_ends_it() {
    let cp = start();
    let addr = console(&cp);

    let wrong = post(addr, "/login", None, &[("token", "not-the-token")], &[]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.text().contains("Wrong admin token"));
    let forged = get(addr, "/", Some("keyplane_session=00ff"));
    assert_eq!(forged.status, 303, "an unknown session id is no session");

    let resp = post(addr, "/login", None, &[("token", &cp.admin_token)], &[]);
    assert_eq!(resp.status, 303);
    let set = resp.header("set-cookie").unwrap().to_string();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    for want in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attrs.contains(&want), "{set} lacks {want}");
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP: no Secure ({set})");
    let cookie = cookie_of(&resp).unwrap();
    assert!(cookie.starts_with("keyplane_session=") && cookie.len() > 60);

    let overview = get(addr, "/", Some(&cookie));
    assert_eq!(overview.status, 200);
    assert!(overview.text().contains("Overview"));
    let csrf = csrf_of(&overview.text());

    // Sign-out needs the CSRF token too.
    let refused = post(addr, "/logout", Some(&cookie), &[], &[]);
    assert_eq!(refused.status, 403);
    assert_eq!(get(addr, "/", Some(&cookie)).status, 200);
    let out = post(addr, "/logout", Some(&cookie), &[("csrf", &csrf)], &[]);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = get(addr, "/", Some(&cookie));
    assert_eq!(after.status, 303, "the old cookie no longer signs in");
    assert_eq!(after.header("location"), Some("/login"));
}

#[test]
fn over_tls_the_console_is_https_and_its_cookie_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path());
    let cp = ControlPlane::start_with(ControlOptions {
        tls: Some(tls.clone()),
        console: true,
        ..ControlOptions::default()
    });
    let addr = console(&cp);
    let body = form(&[("token", &cp.admin_token)]);
    let req = HttpRequest {
        method: "POST",
        path: "/login",
        headers: vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )],
        body,
    }
    // A browser posting from the console's own page sends this origin.
    .header("origin", &format!("https://{addr}"))
    .header("sec-fetch-site", "same-origin");
    let resp = req.send_tls(addr, &tls.ca, TIMEOUT).unwrap();
    assert_eq!(resp.status, 303, "{}", resp.text());
    let set = resp.header("set-cookie").unwrap();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(attrs.contains(&want), "{set} lacks {want}");
    }
    assert_hardened(&resp, "https sign-in");
    // Plain HTTP on the TLS port gets no page.
    let plain = HttpRequest::get("/login").send(addr, Duration::from_secs(5));
    assert!(plain.map_or(true, |r| r.status != 200));
}

#[test]
fn sign_in_attempts_are_limited_per_address() {
    let cp = start();
    let addr = console(&cp);
    for i in 0..5 {
        let resp = post(addr, "/login", None, &[("token", "guess")], &[]);
        assert_eq!(resp.status, 401, "attempt {i}");
    }
    // Past the limit even the right token is refused, until the minute has passed.
    let limited = post(addr, "/login", None, &[("token", &cp.admin_token)], &[]);
    assert_eq!(limited.status, 429);
    assert!(limited.header("set-cookie").is_none());
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}

#[test]
fn a_post_without_the_right_csrf_token_or_from_another_origin_changes_nothing() {
    let cp = start();
    let addr = console(&cp);
    let cookie = sign_in(&cp);
    let csrf = csrf_of(&get(addr, "/keys", Some(&cookie)).text());

    let zeros = "0".repeat(64);
    let attempts: Vec<Attempt> = vec![
        ("no token", vec![("name", "mallory")], vec![]),
        (
            "wrong token",
            vec![("name", "mallory"), ("csrf", &zeros)],
            vec![],
        ),
        (
            "another origin",
            vec![("name", "mallory"), ("csrf", &csrf)],
            vec![("origin", "http://evil.example")],
        ),
        (
            "cross-site fetch",
            vec![("name", "mallory"), ("csrf", &csrf)],
            vec![("sec-fetch-site", "cross-site")],
        ),
        (
            "an opaque origin",
            vec![("name", "mallory"), ("csrf", &csrf)],
            vec![("origin", "null")],
        ),
    ];
    for (what, fields, headers) in &attempts {
        let resp = post(addr, "/keys", Some(&cookie), fields, headers);
        assert_eq!(resp.status, 403, "{what}");
        assert!(!resp.text().contains("kp_"), "{what}");
    }
    // Without a session, the right-looking form is refused as well.
    let anon = post(
        addr,
        "/keys",
        None,
        &[("name", "mallory"), ("csrf", &csrf)],
        &[],
    );
    assert_eq!(anon.status, 403);
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 0, "no key was created");

    // The same form with the token, from the console's origin, works; as does a browser's form
    // under no-referrer, which says `Origin: null` with `Sec-Fetch-Site: same-origin`.
    let ok = post(
        addr,
        "/keys",
        Some(&cookie),
        &[("name", "alice"), ("csrf", &csrf)],
        &[
            ("origin", &format!("http://{addr}")),
            ("sec-fetch-site", "same-origin"),
        ],
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let browser_like = post(
        addr,
        "/keys",
        Some(&cookie),
        &[("name", "bob"), ("csrf", &csrf)],
        &[("origin", "null"), ("sec-fetch-site", "same-origin")],
    );
    assert_eq!(browser_like.status, 200, "{}", browser_like.text());
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert_eq!(keys.as_array().unwrap().len(), 2);
}

#[test]
fn a_created_key_is_shown_once_and_then_never_again() {
    let cp = start();
    let addr = console(&cp);
    let cookie = sign_in(&cp);
    let csrf = csrf_of(&get(addr, "/keys", Some(&cookie)).text());
    let created = post(
        addr,
        "/keys",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("name", "team-a"),
            ("budget_usd", "12.5"),
            ("period", "monthly"),
            ("rpm", "60"),
            ("models", "demo/*"),
            ("expires", "2099-01-31"),
        ],
        &[],
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let html = created.text();
    let start = html.find("value=\"kp_").expect("the new key is shown") + "value=\"".len();
    let key: String = html[start..].chars().take_while(|c| *c != '"').collect();
    assert_eq!(key.len(), 46, "{key}");
    assert!(html.contains("shown this once"));

    // The key is real: the ledger's key list has it with the policy from the form.
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    let k = &keys[0];
    assert_eq!(k["name"], "team-a");
    let text = k.to_string();
    assert!(text.contains("monthly") && text.contains("60"), "{text}");

    let list = get(addr, "/keys", Some(&cookie)).text();
    assert!(list.contains("team-a"));
    assert!(list.contains("$0 of $12.5 (monthly)"), "{list}");
    assert!(!list.contains(&key), "the key is not shown again");
    assert!(!list.contains(&key[3..12]), "not even part of it");

    // A second key with the same name is refused, and shows no key.
    let again = post(
        addr,
        "/keys",
        Some(&cookie),
        &[("csrf", &csrf), ("name", "team-a")],
        &[],
    );
    assert_eq!(again.status, 409);
    assert!(!again.text().contains("value=\"kp_"));

    // Revoke through the form.
    let revoked = post(
        addr,
        "/keys/revoke",
        Some(&cookie),
        &[("csrf", &csrf), ("name", "team-a")],
        &[],
    );
    assert_eq!(revoked.status, 200);
    assert!(revoked.text().contains("Key team-a revoked."));
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert_eq!(keys[0]["revoked"], true, "{keys}");
}

#[test]
fn no_page_renders_a_token_a_credential_secret_or_a_client_key() {
    let cp = start();
    let addr = console(&cp);
    cp.ctl(&[
        "provider",
        "add",
        "deepseek",
        "--protocol",
        "openai",
        "--base-url",
        "https://api.deepseek.com/v1",
    ])
    .ok();
    let cli_secret = "sk-cli-secret-5f0d1e2c3b4a";
    cp.ctl_with(
        &["credential", "add", "deepseek", "--label", "main"],
        Some(cli_secret),
        &cp.admin_token,
    )
    .ok();
    let cli_key = cp.ctl(&["--json", "key", "create", "bob"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();

    let cookie = sign_in(&cp);
    let providers = get(addr, "/providers", Some(&cookie)).text();
    assert!(providers.contains("deepseek") && providers.contains("main"));
    let csrf = csrf_of(&providers);
    let form_secret = "sk-form-secret-9a8b7c6d5e4f";
    let added = post(
        addr,
        "/credentials",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("provider", "deepseek"),
            ("label", "second"),
            ("multiplier", "0.5"),
            ("secret", form_secret),
        ],
        &[],
    );
    assert_eq!(added.status, 200, "{}", added.text());
    assert!(added.text().contains("added to deepseek"));
    let creds = cp
        .ctl(&["--json", "credential", "list", "--provider", "deepseek"])
        .ok()
        .json();
    assert_eq!(creds.as_array().unwrap().len(), 2, "{creds}");
    let form_key_page = post(
        addr,
        "/keys",
        Some(&cookie),
        &[("csrf", &csrf), ("name", "carol")],
        &[],
    );
    assert_eq!(form_key_page.status, 200);
    let start = form_key_page.text().find("value=\"kp_").unwrap() + "value=\"".len();
    let form_key: String = form_key_page.text()[start..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();

    let secrets = [
        ("admin token", cp.admin_token.as_str()),
        ("node token", cp.node_token.as_str()),
        ("master key", cp.master_key.as_str()),
        ("credential secret from the CLI", cli_secret),
        ("credential secret from the form", form_secret),
        ("client key from the CLI", cli_key.as_str()),
        ("client key from the form", form_key.as_str()),
    ];
    // The pages the operator actions answer with, too.
    let second_id = creds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == "second")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let disabled = post(
        addr,
        "/credentials/disable",
        Some(&cookie),
        &[("csrf", &csrf), ("id", &second_id)],
        &[],
    );
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    let set = post(
        addr,
        "/providers/set",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("name", "deepseek"),
            ("idle_timeout_ms", "9000"),
        ],
        &[],
    );
    assert_eq!(set.status, 200, "{}", set.text());
    // No data plane: the probe says so, and its page is scanned like the others.
    let probe = post(addr, "/probe", Some(&cookie), &[("csrf", &csrf)], &[]);
    assert_eq!(probe.status, 503, "{}", probe.text());
    assert!(probe.text().contains("--advertise-url"), "{}", probe.text());
    let mut pages = vec![added.text(), disabled.text(), set.text(), probe.text()];
    for path in [
        "/",
        "/?window=hour",
        "/?window=month",
        "/requests",
        "/models",
        "/usage",
        "/usage?by=day",
        "/usage.csv",
        "/keys",
        "/providers",
        "/nodes",
        "/probe",
        "/connect",
        "/connect?url=https://gw.example.com",
    ] {
        let resp = get(addr, path, Some(&cookie));
        assert_eq!(resp.status, 200, "{path}");
        pages.push(resp.text());
    }
    pages.push(get(addr, "/login", None).text());
    for (i, html) in pages.iter().enumerate() {
        for (what, secret) in secrets {
            assert!(!html.contains(secret), "page {i} shows the {what}");
        }
    }
    let logs = cp.logs();
    assert!(!logs.contains(form_secret) && !logs.contains(&form_key));
}

#[test]
fn a_plain_http_console_off_loopback_is_refused_unless_insecure() {
    let cp = ControlPlane::unstarted(ControlOptions::default());
    let out = cp.offline(
        &[
            "--data-dir",
            cp.data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("console") && out.stderr.contains("--insecure"),
        "{}",
        out.stderr
    );
}

#[test]
fn with_json_logs_the_console_address_is_a_json_line() {
    let cp = ControlPlane::start_with(ControlOptions {
        console: true,
        extra_args: vec!["--log-format".into(), "json".into()],
        ..ControlOptions::default()
    });
    // The testkit found the address in the JSON line's message; the console answers there.
    assert_eq!(get(console(&cp), "/login", None).status, 200);
}

#[test]
fn the_request_log_lists_filters_and_shows_one_request_with_its_attempts() {
    let cp = start();
    let addr = console(&cp);
    let key_id = cp.ctl(&["--json", "key", "create", "alice"]).ok().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let attempt = |provider: &str, credential: &str, outcome: &str| pb::UpstreamAttempt {
        provider: provider.into(),
        credential_id: credential.into(),
        outcome: outcome.into(),
    };
    let mut served = support::usage_record(
        "0190a000-0000-7000-8000-00000000000a",
        &key_id,
        100,
        20,
        5_000,
    );
    served.started_at_ms = now_ms - 5_000;
    served.dialect = "anthropic".into();
    served.attempts = vec![
        attempt("deepseek", "cred-1", "rate_limited"),
        attempt("openrouter", "cred-2", "ok"),
    ];
    served.provider = "openrouter".into();
    let mut refused =
        support::usage_record("0190a000-0000-7000-8000-00000000000b", &key_id, 0, 0, 0);
    refused.started_at_ms = now_ms - 1_000;
    refused.status = 429;
    refused.error = "rate_limit_exceeded".into();
    refused.unbilled = true;
    refused.model = "other/model".into();
    support::report_usage(&cp.url(), &cp.node_token, "node-a", vec![served, refused]).unwrap();

    let cookie = sign_in(&cp);
    let all = get(addr, "/requests", Some(&cookie));
    assert_eq!(all.status, 200);
    let html = all.text();
    assert!(
        html.contains("alice") && html.contains("anthropic"),
        "{html}"
    );
    assert!(
        html.contains("deepseek/cred-1: rate_limited → openrouter/cred-2: ok"),
        "{html}"
    );
    let newest = html.find("rate_limit_exceeded").unwrap();
    let older = html.find("deepseek/deepseek-chat").unwrap();
    assert!(newest < older, "newest first");

    let errors = get(addr, "/requests?status=429", Some(&cookie)).text();
    assert!(errors.contains("rate_limit_exceeded") && !errors.contains("deepseek/deepseek-chat"));
    let by_model = get(
        addr,
        "/requests?model=deepseek%2Fdeepseek-chat",
        Some(&cookie),
    )
    .text();
    assert!(!by_model.contains("rate_limit_exceeded") && by_model.contains("openrouter"));
    let unknown = get(addr, "/requests?key=nobody", Some(&cookie));
    assert_eq!(unknown.status, 400);
    assert!(unknown.text().contains("No key named"));

    // One request's page, from the list's link: its attempts in order.
    let marker = "href=\"/requests/view?id=0190a000-0000-7000-8000-00000000000a&amp;at=";
    let start = html.find(marker).unwrap() + "href=\"".len();
    let href: String = html[start..]
        .chars()
        .take_while(|c| *c != '"')
        .collect::<String>()
        .replace("&amp;", "&");
    let one = get(addr, &href, Some(&cookie));
    assert_eq!(one.status, 200, "{href}");
    let one = one.text();
    let first = one.find("rate_limited").unwrap();
    let second = one.find(">ok<").unwrap();
    assert!(first < second, "attempts in order: {one}");
    assert!(one.contains("node-a") && one.contains("alice"));
    let missing = get(addr, "/requests/view?id=nope&at=1", Some(&cookie));
    assert_eq!(missing.status, 404);
}

#[test]
fn the_portal_shows_a_key_holder_only_their_own_key() {
    let cp = start();
    let addr = console(&cp);
    let alice = cp
        .ctl(&[
            "--json",
            "key",
            "create",
            "alice",
            "--budget-usd",
            "10",
            "--period",
            "monthly",
            "--rpm",
            "30",
        ])
        .ok()
        .json();
    let bob = cp.ctl(&["--json", "key", "create", "bob"]).ok().json();
    let (alice_key, alice_id) = (
        alice["key"].as_str().unwrap(),
        alice["id"].as_str().unwrap(),
    );
    let (bob_key, bob_id) = (bob["key"].as_str().unwrap(), bob["id"].as_str().unwrap());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut a = support::usage_record(
        "0190a000-0000-7000-8000-0000000000a1",
        alice_id,
        100,
        10,
        2_000_000_000,
    );
    a.model = "alice-model".into();
    a.started_at_ms = now_ms - 10_000;
    let mut b = support::usage_record(
        "0190a000-0000-7000-8000-0000000000b1",
        bob_id,
        100,
        10,
        3_000_000_000,
    );
    b.model = "bobs-private-model".into();
    b.started_at_ms = now_ms - 10_000;
    support::report_usage(&cp.url(), &cp.node_token, "node-a", vec![a, b]).unwrap();

    let form_page = get(addr, "/portal", None);
    assert_eq!(form_page.status, 200);
    assert!(form_page.text().contains("action=\"/portal/login\""));
    assert_hardened(&form_page, "/portal");

    // The admin token is not a client key, and a wrong key gets no session.
    for wrong in [cp.admin_token.as_str(), "kp_not-a-key"] {
        let resp = post(addr, "/portal/login", None, &[("token", wrong)], &[]);
        assert_eq!(resp.status, 401);
        assert!(resp.header("set-cookie").is_none());
    }
    let signed = post(addr, "/portal/login", None, &[("token", alice_key)], &[]);
    assert_eq!(signed.status, 303, "{}", signed.text());
    assert_eq!(signed.header("location"), Some("/portal"));
    let set = signed.header("set-cookie").unwrap();
    assert!(set.starts_with("keyplane_portal=") && set.contains("HttpOnly"));
    assert!(set.contains("SameSite=Strict"));
    let cookie = cookie_of(&signed).unwrap();

    let mine = get(addr, "/portal", Some(&cookie));
    assert_eq!(mine.status, 200);
    let html = mine.text();
    assert!(
        html.contains("Key alice") && html.contains("alice-model"),
        "{html}"
    );
    assert!(
        html.contains("$2 of $10 (monthly)") && html.contains("30 rpm"),
        "{html}"
    );
    for (what, other) in [
        ("bob's name", "bob"),
        ("bob's model", "bobs-private-model"),
        ("bob's key", bob_key),
        ("alice's own key", alice_key),
        ("the admin token", cp.admin_token.as_str()),
    ] {
        assert!(!html.contains(other), "the portal shows {what}");
    }
    // A portal session is no operator session.
    let console_page = get(addr, "/keys", Some(&cookie));
    assert_eq!(console_page.status, 303);
    assert_eq!(console_page.header("location"), Some("/login"));

    // Sign-out needs the CSRF token.
    assert_eq!(
        post(addr, "/portal/logout", Some(&cookie), &[], &[]).status,
        403
    );

    // Revoked: the session ends at the next page, and the key no longer signs in.
    cp.ctl(&["key", "revoke", "alice"]).ok();
    let after = get(addr, "/portal", Some(&cookie));
    assert_eq!(after.status, 401);
    assert!(after.text().contains("revoked or expired"));
    let again = post(addr, "/portal/login", None, &[("token", alice_key)], &[]);
    assert_eq!(again.status, 401);

    // Bob signs in and sees his own, and sign-out ends it.
    let bob_cookie = cookie_of(&post(
        addr,
        "/portal/login",
        None,
        &[("token", bob_key)],
        &[],
    ))
    .unwrap();
    let bobs = get(addr, "/portal", Some(&bob_cookie)).text();
    assert!(bobs.contains("bobs-private-model") && !bobs.contains("alice"));
    let out = post(
        addr,
        "/portal/logout",
        Some(&bob_cookie),
        &[("csrf", &csrf_of(&bobs))],
        &[],
    );
    assert_eq!(out.status, 303);
    assert!(
        get(addr, "/portal", Some(&bob_cookie))
            .text()
            .contains("action=\"/portal/login\"")
    );
}

#[test]
fn the_models_page_shows_offerings_catalogs_aliases_chains_and_syncs_on_request() {
    let cp = ControlPlane::start_with(ControlOptions {
        console: true,
        extra_args: vec!["--catalog-sync-interval-secs".into(), "0".into()],
        ..ControlOptions::default()
    });
    let addr = console(&cp);
    for args in [
        &[
            "provider",
            "add",
            "deepseek",
            "--protocol",
            "openai",
            "--base-url",
            "https://api.deepseek.com/v1",
        ][..],
        &[
            "model",
            "set",
            "deepseek/deepseek-chat",
            "--provider",
            "deepseek",
            "--upstream-model",
            "deepseek-chat",
            "--input",
            "0.28",
            "--output",
            "0.42",
        ],
        &["model", "alias", "ds", "deepseek/deepseek-chat"],
        &[
            "chain",
            "set",
            "smart",
            "--models",
            "deepseek/deepseek-chat,ds",
        ],
        // A catalog whose models API cannot be reached: "sync now" reports the failure.
        &[
            "provider",
            "add",
            "or",
            "--preset",
            "openrouter",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
    ] {
        cp.ctl(args).ok();
    }
    let cookie = sign_in(&cp);
    let page = get(addr, "/models", Some(&cookie));
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("deepseek-chat") && html.contains("$0.28") && html.contains("$0.42"));
    assert!(
        html.contains(">ds<") && html.contains("deepseek/deepseek-chat → ds"),
        "{html}"
    );
    assert!(html.contains(">or<") && html.contains("Sync now"), "{html}");

    let csrf = csrf_of(&html);
    assert_eq!(
        post(
            addr,
            "/catalog/sync",
            Some(&cookie),
            &[("provider", "or")],
            &[]
        )
        .status,
        403
    );
    let synced = post(
        addr,
        "/catalog/sync",
        Some(&cookie),
        &[("csrf", &csrf), ("provider", "or")],
        &[],
    );
    assert_eq!(synced.status, 200);
    assert!(
        synced.text().contains("Sync of or failed"),
        "{}",
        synced.text()
    );
    // The sync really ran: the control plane records the failed attempt.
    let status = cp.ctl(&["--json", "catalog", "status", "or"]).ok().json();
    assert!(status[0]["last_error"].is_string(), "{status}");
}

#[test]
fn the_usage_report_groups_like_keyplanectl_usage_and_downloads_as_csv() {
    let cp = start();
    let addr = console(&cp);
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let k = cp.ctl(&["--json", "key", "create", name]).ok().json();
        ids.push(k["id"].as_str().unwrap().to_string());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut records = Vec::new();
    for (i, (key, model, cost)) in [
        (&ids[0], "m-one", 1_000_000_000u64),
        (&ids[0], "m-two", 500_000_000),
        (&ids[1], "=HYPERLINK(\"x\")", 250_000_000),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = support::usage_record(
            &format!("0190a000-0000-7000-8000-0000000000c{i}"),
            key,
            10,
            5,
            cost,
        );
        r.model = model.into();
        r.started_at_ms = now_ms - 60_000;
        records.push(r);
    }
    support::report_usage(&cp.url(), &cp.node_token, "node-a", records).unwrap();
    let cookie = sign_in(&cp);

    let by_key = get(addr, "/usage?by=key", Some(&cookie));
    assert_eq!(by_key.status, 200);
    let html = by_key.text();
    assert!(html.contains("$1.5") && html.contains("$0.25"), "{html}");
    let cli = cp.ctl(&["--json", "usage", "--by", "key"]).ok().json();
    assert_eq!(cli.as_array().unwrap().len(), 2, "{cli}");

    let csv = get(addr, "/usage.csv?by=model", Some(&cookie));
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.header("content-disposition")
            .unwrap()
            .contains("attachment")
    );
    let text = csv.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("key,model,provider"));
    assert!(text.contains(",m-one,") && text.contains(",1,"), "{text}");
    assert!(
        text.contains("\"'=HYPERLINK(\"\"x\"\")\""),
        "a formula-like model is defused and quoted: {text}"
    );

    let only_alice = get(addr, "/usage.csv?key=alice&by=model", Some(&cookie)).text();
    assert_eq!(only_alice.lines().count(), 3, "{only_alice}");
    assert!(!only_alice.contains("HYPERLINK"));

    let bad = get(addr, "/usage?since=yesterday", Some(&cookie));
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("not a date"));
    let bad_by = get(addr, "/usage?by=colour", Some(&cookie));
    assert_eq!(bad_by.status, 400);
    assert_eq!(
        get(addr, "/usage.csv", None).status,
        303,
        "CSV needs a session too"
    );
}

#[test]
fn connect_a_tool_fills_in_the_typed_url_escaped() {
    let cp = start();
    let addr = console(&cp);
    let cookie = sign_in(&cp);
    let page = get(
        addr,
        "/connect?url=https%3A%2F%2Fgw.example.com%3A8443%2F",
        Some(&cookie),
    );
    assert_eq!(page.status, 200);
    let html = page.text();
    for want in [
        "ANTHROPIC_BASE_URL=https://gw.example.com:8443\n",
        "base_url = &quot;https://gw.example.com:8443/v1&quot;",
        "GOOGLE_GEMINI_BASE_URL=https://gw.example.com:8443 ",
        "Override OpenAI Base URL:  https://gw.example.com:8443/v1\n",
        "--openai-api-base https://gw.example.com:8443/v1",
        "&quot;baseURL&quot;: &quot;https://gw.example.com:8443/v1&quot;",
    ] {
        assert!(html.contains(want), "missing {want:?} in {html}");
    }
    // Whatever is typed is text, never markup.
    let hostile = get(
        addr,
        "/connect?url=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        Some(&cookie),
    )
    .text();
    assert!(!hostile.contains("<script>alert(1)"), "{hostile}");
    assert!(hostile.contains("&lt;script&gt;alert(1)"));
}

/// The text of the `<pre id="ID">` block on a page.
fn pre_block<'a>(html: &'a str, id: &str) -> &'a str {
    let open = format!("<pre id=\"{id}\">");
    let start = html
        .find(&open)
        .unwrap_or_else(|| panic!("no block {id} in {html}"))
        + open.len();
    let len = html[start..].find("</pre>").unwrap();
    &html[start..start + len]
}

#[test]
fn connect_a_tool_lists_each_tool_and_points_at_the_connected_data_plane() {
    let cp = start();
    let addr = console(&cp);
    let cookie = sign_in(&cp);
    // No node yet: the placeholder address.
    let html = get(addr, "/connect", Some(&cookie)).text();
    for tool in [
        "<h2>Claude Code</h2>",
        "<h2>Codex CLI</h2>",
        "<h2>Gemini CLI</h2>",
        "<h2>Cursor</h2>",
        "<h2>aider</h2>",
        "<h2>opencode</h2>",
    ] {
        assert!(html.contains(tool), "missing {tool} in {html}");
    }
    let gemini = pre_block(&html, "gemini");
    for want in [
        "export GOOGLE_GEMINI_BASE_URL=https://127.0.0.1:8080 ",
        "export GEMINI_API_KEY=kp_... ",
        "export GEMINI_MODEL=",
        "&quot;selectedType&quot;: &quot;gemini-api-key&quot;",
        "gemini -p",
    ] {
        assert!(gemini.contains(want), "missing {want:?} in {gemini}");
    }

    // A connected data plane that advertises where it serves: its URL, unless one is typed.
    let dp = keyplane_testkit::DataPlane::start(
        &cp,
        "edge-1",
        &["--advertise-url", "https://edge-1.example.net:8443/"],
    );
    let mut html = String::new();
    let pointed = keyplane_testkit::wait_until(TIMEOUT, || {
        html = get(addr, "/connect", Some(&cookie)).text();
        html.contains("GOOGLE_GEMINI_BASE_URL=https://edge-1.example.net:8443 ")
    });
    assert!(pointed, "{html}\ndata plane log:\n{}", dp.logs());
    assert!(html.contains("ANTHROPIC_BASE_URL=https://edge-1.example.net:8443\n"));
    assert!(html.contains("base_url = &quot;https://edge-1.example.net:8443/v1&quot;"));
    let typed = get(addr, "/connect?url=https://gw.example.com", Some(&cookie)).text();
    assert!(typed.contains("GOOGLE_GEMINI_BASE_URL=https://gw.example.com "));
    assert!(!typed.contains("edge-1.example.net"));
}

#[test]
fn a_key_policy_is_edited_through_its_form_and_empty_fields_clear_limits() {
    let cp = start();
    let addr = console(&cp);
    cp.ctl(&[
        "key",
        "create",
        "team-b",
        "--rpm",
        "60",
        "--budget-usd",
        "3",
        "--period",
        "daily",
    ])
    .ok();
    let cookie = sign_in(&cp);
    let keys = get(addr, "/keys", Some(&cookie)).text();
    assert!(keys.contains("href=\"/keys/edit?name=team-b\""), "{keys}");
    let form_page = get(addr, "/keys/edit?name=team-b", Some(&cookie));
    assert_eq!(form_page.status, 200);
    let html = form_page.text();
    assert!(html.contains("name=\"rpm\" value=\"60\""), "{html}");
    assert!(html.contains("name=\"budget_usd\" value=\"3\""), "{html}");
    assert!(html.contains("value=\"daily\" selected"), "{html}");
    let csrf = csrf_of(&html);

    let fields = [
        ("name", "team-b"),
        ("budget_usd", ""),
        ("budget_tokens", ""),
        ("period", "weekly"),
        ("rpm", "10"),
        ("tpm", ""),
        ("concurrency", "2"),
        ("models", "demo/*"),
        ("expires", ""),
    ];
    let refused = post(addr, "/keys/edit", Some(&cookie), &fields, &[]);
    assert_eq!(refused.status, 403, "no CSRF token");
    let unchanged = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert!(unchanged[0].to_string().contains("60"), "{unchanged}");

    let mut with_token = fields.to_vec();
    with_token.push(("csrf", &csrf));
    let saved = post(addr, "/keys/edit", Some(&cookie), &with_token, &[]);
    assert_eq!(saved.status, 200, "{}", saved.text());
    assert!(saved.text().contains("Key team-b updated."));
    let after = get(addr, "/keys/edit?name=team-b", Some(&cookie)).text();
    assert!(after.contains("name=\"rpm\" value=\"10\""), "{after}");
    assert!(
        after.contains("name=\"budget_usd\" value=\"\""),
        "the budget was cleared: {after}"
    );
    assert!(after.contains("name=\"concurrency\" value=\"2\""));
    assert!(after.contains("value=\"weekly\" selected"));
    assert!(after.contains("value=\"demo/*\""));
    assert_eq!(
        get(addr, "/keys/edit?name=ghost", Some(&cookie)).status,
        404
    );
}

#[test]
fn a_refused_request_through_a_data_plane_counts_as_an_error_in_the_overview() {
    let cp = start();
    let addr = console(&cp);
    let key = cp.ctl(&["--json", "key", "create", "refused"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = keyplane_testkit::DataPlane::start(&cp, "edge-1", &[]);
    support::wait_key_accepted(&dp, &key);
    assert_eq!(support::chat(&dp, &key, "no/such-model"), 404);

    // Refused, so never billed: only the request log knows it, and the overview counts it, as
    // an error and as a refusal.
    let cookie = sign_in(&cp);
    let mut html = String::new();
    let seen = keyplane_testkit::wait_until(TIMEOUT, || {
        html = get(addr, "/", Some(&cookie)).text();
        html.contains("class=\"num logged-errors\">1 (100.0%)")
    });
    assert!(seen, "{html}\ndata plane log:\n{}", dp.logs());
    assert!(html.contains("class=\"num logged-requests\">1<"), "{html}");
    assert!(html.contains("class=\"num refused\">1<"), "{html}");
}

/// The credential list as `keyplanectl credential list --json` gives it, by label.
fn credential_by_label(cp: &ControlPlane, provider: &str, label: &str) -> serde_json::Value {
    let creds = cp
        .ctl(&["--json", "credential", "list", "--provider", provider])
        .ok()
        .json();
    creds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == label)
        .cloned()
        .unwrap_or_else(|| panic!("no credential {label}: {creds}"))
}

#[test]
fn a_credential_is_disabled_and_enabled_from_the_console_as_keyplanectl_sees_it() {
    let cp = start();
    let addr = console(&cp);
    cp.ctl(&[
        "provider",
        "add",
        "deepseek",
        "--protocol",
        "openai",
        "--base-url",
        "https://api.deepseek.com/v1",
    ])
    .ok();
    cp.ctl_with(
        &["credential", "add", "deepseek", "--label", "main"],
        Some("sk-main-0123456789"),
        &cp.admin_token,
    )
    .ok();
    let id = credential_by_label(&cp, "deepseek", "main")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cookie = sign_in(&cp);
    let page = get(addr, "/providers", Some(&cookie)).text();
    assert!(page.contains("action=\"/credentials/disable\""), "{page}");
    let csrf = csrf_of(&page);

    // Refused without the session's token, from another origin, or without a session.
    let attempts: Vec<Attempt> = vec![
        ("no token", vec![("id", id.as_str())], vec![]),
        (
            "another origin",
            vec![("csrf", csrf.as_str()), ("id", id.as_str())],
            vec![("origin", "https://evil.example")],
        ),
    ];
    for (what, fields, extra) in attempts {
        let resp = post(addr, "/credentials/disable", Some(&cookie), &fields, &extra);
        assert_eq!(resp.status, 403, "{what}");
    }
    let anon = post(
        addr,
        "/credentials/disable",
        None,
        &[("csrf", &csrf), ("id", &id)],
        &[],
    );
    assert_eq!(anon.status, 403);
    assert_eq!(
        credential_by_label(&cp, "deepseek", "main")["state"],
        "active"
    );

    let disabled = post(
        addr,
        "/credentials/disable",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("id", &id),
            ("reason", "key leaked in a ticket"),
        ],
        &[],
    );
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    let html = disabled.text();
    assert!(
        html.contains(&format!("Credential {id} disabled.")),
        "{html}"
    );
    assert!(
        html.contains("key leaked in a ticket") && html.contains("action=\"/credentials/enable\"")
    );
    let cred = credential_by_label(&cp, "deepseek", "main");
    assert_eq!(cred["state"], "disabled", "{cred}");
    assert_eq!(cred["state_reason"], "key leaked in a ticket", "{cred}");
    assert!(cred["state_since"].is_string(), "{cred}");

    let missing = post(
        addr,
        "/credentials/disable",
        Some(&cookie),
        &[("csrf", &csrf), ("id", "no-such-credential")],
        &[],
    );
    assert_eq!(missing.status, 404);
    assert!(missing.text().contains("no credential with id"));

    let enabled = post(
        addr,
        "/credentials/enable",
        Some(&cookie),
        &[("csrf", &csrf), ("id", &id)],
        &[],
    );
    assert_eq!(enabled.status, 200, "{}", enabled.text());
    assert!(
        enabled
            .text()
            .contains(&format!("Credential {id} enabled."))
    );
    let cred = credential_by_label(&cp, "deepseek", "main");
    assert_eq!(cred["state"], "active", "{cred}");
    assert_eq!(cred["state_reason"], "enabled by an operator", "{cred}");

    // keyplanectl has the same pair.
    let out = cp
        .ctl(&[
            "--json",
            "credential",
            "disable",
            &id,
            "--reason",
            "rotating",
        ])
        .ok()
        .json();
    assert_eq!(out["state"], "disabled", "{out}");
    let page = get(addr, "/providers", Some(&cookie)).text();
    assert!(page.contains("rotating"), "{page}");
}

#[test]
fn a_provider_is_changed_from_the_console_with_keyplanectl_provider_set_s_checks() {
    let cp = start();
    let addr = console(&cp);
    cp.ctl(&[
        "provider",
        "add",
        "deepseek",
        "--protocol",
        "openai",
        "--base-url",
        "https://api.deepseek.com/v1",
    ])
    .ok();
    let cookie = sign_in(&cp);
    let page = get(addr, "/providers", Some(&cookie)).text();
    assert!(page.contains("action=\"/providers/set\""), "{page}");
    let csrf = csrf_of(&page);
    let provider =
        |cp: &ControlPlane| cp.ctl(&["--json", "provider", "list"]).ok().json()[0].clone();
    let before = provider(&cp);

    let refused = post(
        addr,
        "/providers/set",
        Some(&cookie),
        &[("name", "deepseek"), ("connect_timeout_ms", "1")],
        &[],
    );
    assert_eq!(refused.status, 403, "no CSRF token");
    let bad_number = post(
        addr,
        "/providers/set",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("name", "deepseek"),
            ("connect_timeout_ms", "soon"),
        ],
        &[],
    );
    assert_eq!(bad_number.status, 400);
    assert!(
        bad_number
            .text()
            .contains("connect timeout &quot;soon&quot; is not a whole number"),
        "{}",
        bad_number.text()
    );
    // The store's own check, word for word what keyplanectl prints for the same change.
    let bad_protocol = post(
        addr,
        "/providers/set",
        Some(&cookie),
        &[("csrf", &csrf), ("name", "deepseek"), ("protocol", "smtp")],
        &[],
    );
    assert_eq!(bad_protocol.status, 400);
    let cli = cp.ctl(&["provider", "set", "deepseek", "--protocol", "smtp"]);
    let cli_text = format!("{}{}", cli.stdout, cli.stderr);
    let reason = cli_text
        .lines()
        .find(|l| l.contains("smtp"))
        .unwrap()
        .split(": ")
        .last()
        .unwrap()
        .trim()
        .replace('"', "&quot;");
    assert!(
        bad_protocol.text().contains(&reason),
        "{reason}\n{}",
        bad_protocol.text()
    );
    assert_eq!(provider(&cp), before, "refused changes change nothing");

    let saved = post(
        addr,
        "/providers/set",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("name", "deepseek"),
            ("protocol", "openai"),
            ("base_url", "https://api.deepseek.com/v1"),
            ("connect_timeout_ms", "1500"),
            ("first_byte_timeout_ms", "20000"),
            ("idle_timeout_ms", ""),
            ("max_body_bytes", "1048576"),
        ],
        &[],
    );
    assert_eq!(saved.status, 200, "{}", saved.text());
    assert!(saved.text().contains("Provider deepseek updated."));
    let after = provider(&cp);
    assert_eq!(after["connect_timeout_ms"], 1500, "{after}");
    assert_eq!(after["first_byte_timeout_ms"], 20000, "{after}");
    assert_eq!(
        after["idle_timeout_ms"], before["idle_timeout_ms"],
        "empty: unchanged"
    );
    assert_eq!(after["max_body_bytes"], 1048576, "{after}");
    assert!(saved.text().contains("connect 1500 ms"), "{}", saved.text());
}

#[test]
fn the_nodes_page_shows_each_node_s_usage_backlog_as_of_its_last_report() {
    let cp = start();
    let addr = console(&cp);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    support::report_usage_request(
        &cp.url(),
        &cp.node_token,
        pb::ReportUsageRequest {
            node_id: "edge-late".into(),
            records: vec![],
            backlog_records: 1234,
            backlog_oldest_ms: now_ms - 90_000,
        },
    )
    .unwrap();
    let cookie = sign_in(&cp);
    let html = get(addr, "/nodes", Some(&cookie)).text();
    assert!(html.contains("edge-late"), "{html}");
    assert!(html.contains("class=\"num backlog\">1234<"), "{html}");
    let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
    let node = &nodes[0];
    assert_eq!(node["node_id"], "edge-late");
    assert_eq!(node["backlog_records"], 1234, "{nodes}");
    assert!(node["backlog_oldest"].is_string(), "{nodes}");

    // The next report, with its spool drained: the backlog is 0 and has no oldest record.
    support::report_usage_request(
        &cp.url(),
        &cp.node_token,
        pb::ReportUsageRequest {
            node_id: "edge-late".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let html = get(addr, "/nodes", Some(&cookie)).text();
    assert!(html.contains("class=\"num backlog\">0<"), "{html}");
    let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
    assert_eq!(nodes[0]["backlog_records"], 0, "{nodes}");
}

#[test]
fn the_route_probe_sends_one_request_per_route_through_a_data_plane_billed_to_the_probe_key() {
    use keyplane_testkit::{Behavior, FakeConfig, FakeUpstream};
    let cp = start();
    let addr = console(&cp);
    let model = "test/model";
    let fakes: Vec<FakeUpstream> = ["good", "bad", "gem"]
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
    support::add_offer(
        &cp,
        "gemini",
        "gem",
        &fakes[2].gemini_base_url(),
        model,
        "2",
    );
    fakes[1].push_once(Behavior::status(500));
    let bad_id = credential_by_label(&cp, "bad", "")["id"]
        .as_str()
        .map(str::to_string);
    let plain = cp.ctl(&["--json", "key", "create", "plain"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dp = keyplane_testkit::DataPlane::start(&cp, "edge-1", &[]);
    support::wait_key_accepted(&dp, &plain);

    let cookie = sign_in(&cp);
    let served_at = format!("http://{}", dp.addr);
    let nodes_seen = keyplane_testkit::wait_until(TIMEOUT, || {
        get(addr, "/nodes", Some(&cookie))
            .text()
            .contains(&served_at)
    });
    assert!(nodes_seen, "the node said where it serves: {served_at}");
    let page = get(addr, "/probe", Some(&cookie)).text();
    assert!(page.contains("edge-1"), "{page}");
    let csrf = csrf_of(&page);
    let refused = post(addr, "/probe", Some(&cookie), &[("node", "edge-1")], &[]);
    assert_eq!(refused.status, 403, "no CSRF token");
    assert!(fakes.iter().all(|f| f.requests().is_empty()));

    let run = post(
        addr,
        "/probe",
        Some(&cookie),
        &[("csrf", &csrf), ("node", "edge-1")],
        &[],
    );
    assert_eq!(run.status, 200, "{}\n{}", run.text(), dp.logs());
    let html = run.text();
    assert!(
        html.contains("Probed 3 routes through edge-1: 2 answered, 1 failed."),
        "{html}"
    );
    // One request per route, each the minimal one, each to its own upstream only, each in its
    // upstream's own dialect (passed through, not translated).
    for fake in &fakes[..2] {
        let requests = fake.requests();
        assert_eq!(requests.len(), 1, "{}", fake.name());
        assert_eq!(requests[0].path, "/v1/chat/completions");
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(body["max_tokens"], 1, "{body}");
    }
    let gemini = fakes[2].requests();
    assert_eq!(gemini.len(), 1, "{gemini:?}");
    assert_eq!(gemini[0].path, "/v1beta/models/gem-model:generateContent");
    assert_eq!(gemini[0].header("x-goog-api-key"), Some("sk-gem"));
    let body: serde_json::Value = serde_json::from_slice(&gemini[0].body).unwrap();
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 1, "{body}");
    assert_eq!(body["contents"][0]["parts"][0]["text"], "ping", "{body}");
    let row = |provider: &str| -> String {
        let start = html
            .find(&format!("<td>{provider}</td>"))
            .unwrap_or_else(|| panic!("no row for {provider}: {html}"));
        let row_start = html[..start].rfind("<tr").unwrap();
        let end = start + html[start..].find("</tr>").unwrap();
        html[row_start..end].to_string()
    };
    let good = row("good");
    let bad = row("bad");
    let gem = row("gem");
    assert!(
        gem.contains("class=\"ok\"") && gem.contains(">200<"),
        "{gem}"
    );
    assert!(gem.contains("/requests/view?id="), "{gem}");
    assert!(
        good.contains("class=\"ok\"") && good.contains(">200<"),
        "{good}"
    );
    assert!(good.contains("/requests/view?id="), "{good}");
    // The one upstream tried answered 500: the data plane says 503, as to any client.
    assert!(
        bad.contains("class=\"failed\"") && bad.contains(">503<"),
        "{bad}"
    );
    assert!(bad.contains("upstream_unavailable"), "{bad}");
    if let Some(id) = &bad_id {
        assert!(bad.contains(id.as_str()), "{bad}");
    }
    // The fake's usage: billed to the probe key, tokens and cost from the request log.
    assert!(good.contains(" / "), "{good}");
    assert!(!html.contains("kp_"), "no client key on the page");
    assert!(!html.contains(&cp.admin_token) && !html.contains("sk-good"));

    // The ledger bills the probe key the answered request (the failed one is logged, unbilled).
    let usage = cp.ctl(&["--json", "usage", "--by", "key"]).ok().json();
    let probe_row = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "probe")
        .cloned()
        .unwrap_or_else(|| panic!("{usage}"));
    assert_eq!(probe_row["requests"], 2, "{usage}");
    let keys = cp.ctl(&["--json", "key", "list"]).ok().json();
    assert!(keys.to_string().contains("\"probe\""), "{keys}");

    // The request log's view of the answered one, from the row's link.
    let marker = "href=\"/requests/view?id=";
    let start = good.find(marker).unwrap() + "href=\"".len();
    let href: String = good[start..]
        .chars()
        .take_while(|c| *c != '"')
        .collect::<String>()
        .replace("&amp;", "&");
    let one = get(addr, &href, Some(&cookie));
    assert_eq!(one.status, 200, "{href}");
    assert!(one.text().contains("probe") && one.text().contains("good"));
    // The Gemini route was asked in Gemini's dialect (a chat request would have been bridged,
    // and logged as OpenAI's).
    let start = gem.find(marker).unwrap() + "href=\"".len();
    let href: String = gem[start..]
        .chars()
        .take_while(|c| *c != '"')
        .collect::<String>()
        .replace("&amp;", "&");
    let one = get(addr, &href, Some(&cookie)).text();
    assert!(one.contains("<th>Dialect</th><td>gemini</td>"), "{one}");

    // An ordinary key cannot pin a route: 403, and no upstream hears of it.
    let good_id = credential_by_label(&cp, "good", "")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pinned = keyplane_testkit::http::HttpRequest::post_json(
        "/v1/chat/completions",
        &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .bearer(&plain)
    .header("x-keyplane-probe-route", &format!("good/{good_id}"))
    .send(dp.addr, TIMEOUT)
    .unwrap();
    assert_eq!(pinned.status, 403, "{}", pinned.text());
    assert!(pinned.text().contains("probe_route_forbidden"));
    assert_eq!(fakes[0].requests().len(), 1);
    assert_eq!(fakes[1].requests().len(), 1);
    assert_eq!(fakes[2].requests().len(), 1);
    // The page keeps the last run.
    let again = get(addr, "/probe", Some(&cookie)).text();
    assert!(again.contains("probe-results") && again.contains("Last run"));
}

#[test]
fn a_credential_s_multiplier_and_quota_period_are_set_from_the_console_as_keyplanectl_sets_them() {
    let cp = start();
    let addr = console(&cp);
    cp.ctl(&[
        "provider",
        "add",
        "deepseek",
        "--protocol",
        "openai",
        "--base-url",
        "https://api.deepseek.com/v1",
    ])
    .ok();
    cp.ctl_with(
        &["credential", "add", "deepseek", "--label", "main"],
        Some("sk-main-0123456789"),
        &cp.admin_token,
    )
    .ok();
    let id = credential_by_label(&cp, "deepseek", "main")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cookie = sign_in(&cp);
    let page = get(addr, "/providers", Some(&cookie)).text();
    assert!(page.contains("action=\"/credentials/set\""), "{page}");
    let csrf = csrf_of(&page);

    let refused = post(
        addr,
        "/credentials/set",
        Some(&cookie),
        &[("id", &id), ("multiplier", "0.5")],
        &[],
    );
    assert_eq!(refused.status, 403, "no CSRF token");
    // The checks and words of `credential add`.
    let cli = cp.ctl(&["credential", "set", &id, "--multiplier", "0"]);
    assert_ne!(cli.code, 0);
    let zero = post(
        addr,
        "/credentials/set",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("id", &id),
            ("multiplier", "0"),
            ("quota_resets", ""),
        ],
        &[],
    );
    assert_eq!(zero.status, 400);
    assert!(zero.text().contains("multiplier must be greater than 0"));
    assert!(format!("{}{}", cli.stdout, cli.stderr).contains("multiplier must be greater than 0"));
    let hourly = post(
        addr,
        "/credentials/set",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("id", &id),
            ("multiplier", "1"),
            ("quota_resets", "hourly"),
        ],
        &[],
    );
    assert_eq!(hourly.status, 400);
    assert!(
        hourly
            .text()
            .contains("is not one of daily, weekly, monthly")
    );
    assert_eq!(
        credential_by_label(&cp, "deepseek", "main")["multiplier"],
        1.0
    );

    let saved = post(
        addr,
        "/credentials/set",
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("id", &id),
            ("multiplier", "0.8"),
            ("quota_resets", "monthly"),
        ],
        &[],
    );
    assert_eq!(saved.status, 200, "{}", saved.text());
    assert!(
        saved
            .text()
            .contains("now costs 0.8 times the price, its quota resets monthly"),
        "{}",
        saved.text()
    );
    let cred = credential_by_label(&cp, "deepseek", "main");
    assert_eq!(cred["multiplier"], 0.8, "{cred}");
    assert_eq!(cred["quota_resets"], "monthly", "{cred}");
    // keyplanectl changes only what it is given.
    let out = cp
        .ctl(&["--json", "credential", "set", &id, "--multiplier", "1.25"])
        .ok()
        .json();
    assert_eq!(out["multiplier"], 1.25, "{out}");
    assert_eq!(out["quota_resets"], "monthly", "{out}");
    assert_eq!(out["label"], "main", "{out}");
}
