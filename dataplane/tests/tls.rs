//! TLS around and between the nodes, with the real binaries over loopback: a data plane that
//! subscribes to a control plane over (mutual) TLS and serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN),
//! reloads its certificate without dropping connections, and refusals of a wrong CA, of plain
//! text and of a node without a client certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keyplane_testkit::http::{HttpRequest, tls_client_config};
use keyplane_testkit::{
    ControlOptions, ControlPlane, DataPlane, FakeConfig, FakeUpstream, TlsFiles, wait_until,
};
use std::path::Path;
use std::time::Duration;
use support::{TIMEOUT, add_offer, chat_body, offer};

/// A fake upstream offering MODEL on `cp`, and a client key.
fn catalog(cp: &ControlPlane) -> (FakeUpstream, String) {
    let fake = FakeUpstream::start(FakeConfig {
        name: "cheap".into(),
        api_key: Some("sk-cheap".into()),
        ..FakeConfig::default()
    });
    add_offer(cp, &offer("cheap", "1", "2"), &fake.openai_base_url());
    let key = cp.ctl(&["--json", "key", "create", "tester"]).ok().json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    (fake, key)
}

/// Copies a file through a temporary name and a rename, as a certificate manager would.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("swap");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

type H2Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// What an OpenAI SDK is, on the wire: an HTTPS client that offers HTTP/2 and HTTP/1.1 and keeps
/// its connections, trusting `ca`.
fn sdk_client(ca: &Path) -> H2Client {
    let config = tls_client_config(ca, &[]).unwrap();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

async fn sdk_chat(
    client: &H2Client,
    dp: &DataPlane,
    key: &str,
    stream: bool,
) -> Result<(http::Version, u16, String), String> {
    let body = serde_json::to_vec(&chat_body(stream)).unwrap();
    let req = http::Request::post(format!("{}/v1/chat/completions", dp.url()))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("user-agent", "OpenAI/Python 1.0 (test)")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let version = resp.version();
    let status = resp.status().as_u16();
    let text = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((version, status, String::from_utf8_lossy(&text).into_owned()))
}

#[test]
fn a_node_subscribes_over_mutual_tls_and_serves_https_over_h1_and_h2_with_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = TlsFiles::generate(&tmp.path().join("certs"));
    let cp = ControlPlane::start_with(ControlOptions {
        tls: Some(certs.clone()),
        mutual_tls: true,
        ..ControlOptions::default()
    });
    assert!(cp.url().starts_with("https://"));
    let (fake, key) = catalog(&cp);

    // The listener's files live apart, so that the test can replace them.
    let listener_dir = tmp.path().join("listener");
    std::fs::create_dir_all(&listener_dir).unwrap();
    let (cert, cert_key) = (
        listener_dir.join("tls.pem"),
        listener_dir.join("tls-key.pem"),
    );
    std::fs::copy(&certs.node_cert, &cert).unwrap();
    std::fs::copy(&certs.node_key, &cert_key).unwrap();
    // No --control-cert: the node presents its --tls-cert for mutual TLS.
    let dp = DataPlane::start_https(&cp, "edge-tls", &cert, &cert_key, &certs.ca, &[]);
    assert!(dp.url().starts_with("https://"));
    assert!(
        wait_until(TIMEOUT, || {
            HttpRequest::get("/v1/models")
                .bearer(&key)
                .send_tls(dp.addr, &certs.ca, TIMEOUT)
                .is_ok_and(|r| r.status == 200)
        }),
        "the data plane never served over TLS; its log:\n{}\ncontrol log:\n{}",
        dp.logs(),
        cp.logs()
    );
    let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
    assert_eq!(nodes[0]["node_id"], "edge-tls");
    assert_eq!(nodes[0]["connected"], true);

    // HTTP/1.1 over TLS.
    let resp = HttpRequest::post_json("/v1/chat/completions", &chat_body(false))
        .bearer(&key)
        .send_tls(dp.addr, &certs.ca, TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.json()["choices"].is_array());

    // Plain HTTP to the HTTPS listener is no request at all.
    let plain = HttpRequest::get("/healthz").send(dp.addr, Duration::from_secs(5));
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP was served: {plain:?}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // HTTP/2 by ALPN, streaming, like an SDK.
        let old_ca_client = sdk_client(&certs.ca);
        let (version, status, text) = sdk_chat(&old_ca_client, &dp, &key, true).await.unwrap();
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("data: [DONE]"), "{text}");

        // New certificate files from another CA: picked up on change, new connections get them.
        let other = TlsFiles::generate(&tmp.path().join("other"));
        replace_file(&other.node_key, &cert_key);
        replace_file(&other.node_cert, &cert);
        let new_ca_client = sdk_client(&other.ca);
        let mut reloaded = false;
        for _ in 0..500 {
            if sdk_chat(&new_ca_client, &dp, &key, false).await.is_ok() {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            reloaded,
            "the new certificate was never served; log:\n{}",
            dp.logs()
        );
        assert!(
            HttpRequest::get("/healthz")
                .send_tls(dp.addr, &certs.ca, Duration::from_secs(5))
                .is_err(),
            "a new connection still got the old certificate"
        );
        // The HTTP/2 connection opened before the reload still serves.
        let (version, status, _) = sdk_chat(&old_ca_client, &dp, &key, false).await.unwrap();
        assert_eq!((version, status), (http::Version::HTTP_2, 200));
    });
    assert!(dp.logs().contains("TLS certificate reloaded"));
    assert!(fake.request_count() >= 4);

    // SIGHUP reloads too, and the listener keeps serving.
    keyplane_testkit::process::send_signal(dp.pid().unwrap(), libc_sighup());
    assert!(
        wait_until(TIMEOUT, || dp.logs().contains("reason=\"SIGHUP\"")
            || dp.logs().contains("reason=SIGHUP")),
        "no reload on SIGHUP; log:\n{}",
        dp.logs()
    );
    let resp = HttpRequest::get("/healthz")
        .send_tls(dp.addr, &tmp.path().join("other").join("ca.pem"), TIMEOUT)
        .unwrap();
    assert_eq!(resp.status, 200);
}

/// SIGHUP's number on Linux.
fn libc_sighup() -> i32 {
    1
}

#[test]
fn a_wrong_ca_or_plain_text_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = TlsFiles::generate(&tmp.path().join("certs"));
    let other = TlsFiles::generate(&tmp.path().join("other"));
    let cp = ControlPlane::start_with(ControlOptions {
        tls: Some(certs.clone()),
        ..ControlOptions::default()
    });
    let (_fake, _key) = catalog(&cp);

    // A node trusting another CA, and a node speaking plain text to the TLS port.
    let ca_arg = other.ca.display().to_string();
    let wrong_ca = DataPlane::start_with(
        &cp.url(),
        &cp.node_token,
        "wrong-ca",
        &["--control-ca", &ca_arg],
    );
    let plain_url = format!("http://{}", cp.addr);
    let plain = DataPlane::start_with(&plain_url, &cp.node_token, "plain", &[]);
    for dp in [&wrong_ca, &plain] {
        assert!(
            wait_until(TIMEOUT, || dp
                .logs()
                .contains("cannot subscribe to the control plane")),
            "{} never failed to subscribe; log:\n{}",
            dp.node_id,
            dp.logs()
        );
        assert_eq!(dp.get_status("/readyz"), Some(503));
    }
    let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
    assert_eq!(nodes.as_array().unwrap().len(), 0, "{nodes}");

    // keyplanectl: the right CA works; another CA, no CA (public roots) or plain text do not.
    let token = cp.admin_token.clone();
    let ctl = |url: &str, ca: Option<&Path>| {
        keyplane_testkit::process::run_ctl_ca(url, &token, &["provider", "list"], None, ca)
    };
    assert_eq!(ctl(&cp.url(), Some(&certs.ca)).code, 0);
    for (url, ca) in [
        (cp.url(), Some(other.ca.as_path())),
        (cp.url(), None),
        (plain_url.clone(), None),
    ] {
        let out = ctl(&url, ca);
        assert_eq!(out.code, 2, "{url} {ca:?}: {out:?}");
    }
}

#[test]
fn mutual_tls_refuses_a_node_without_a_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = TlsFiles::generate(&tmp.path().join("certs"));
    let other = TlsFiles::generate(&tmp.path().join("other"));
    let cp = ControlPlane::start_with(ControlOptions {
        tls: Some(certs.clone()),
        mutual_tls: true,
        ..ControlOptions::default()
    });
    let ca = certs.ca.display().to_string();
    let no_cert =
        DataPlane::start_with(&cp.url(), &cp.node_token, "no-cert", &["--control-ca", &ca]);
    let (other_cert, other_key) = (
        other.node_cert.display().to_string(),
        other.node_key.display().to_string(),
    );
    let foreign_cert = DataPlane::start_with(
        &cp.url(),
        &cp.node_token,
        "foreign-cert",
        &[
            "--control-ca",
            &ca,
            "--control-cert",
            &other_cert,
            "--control-key",
            &other_key,
        ],
    );
    for dp in [&no_cert, &foreign_cert] {
        assert!(
            wait_until(TIMEOUT, || dp
                .logs()
                .contains("cannot subscribe to the control plane")),
            "{} was not refused; log:\n{}",
            dp.node_id,
            dp.logs()
        );
    }
    assert!(
        no_cert.logs().contains("client certificate is required"),
        "{}",
        no_cert.logs()
    );
    // The node token alone is not enough; the admin token alone still is for keyplanectl.
    let nodes = cp.ctl(&["--json", "nodes"]).ok().json();
    assert_eq!(nodes.as_array().unwrap().len(), 0, "{nodes}");

    // With its certificate the same node is served.
    let good = DataPlane::start(&cp, "good", &[]);
    assert!(good.wait_ready(TIMEOUT), "log:\n{}", good.logs());
}

#[test]
fn plain_text_on_a_non_loopback_address_needs_insecure() {
    let out = std::process::Command::new(keyplane_testkit::bin_path("keyplane-dataplane"))
        .args(["--listen", "0.0.0.0:0", "--control", "http://127.0.0.1:1"])
        .env("KEYPLANE_NODE_TOKEN", "x".repeat(24))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
