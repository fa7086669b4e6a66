//! Helpers shared by the control plane's cross-process tests.

use keyplane_proto::v1 as pb;
use keyplane_proto::v1::nodes_client::NodesClient;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tonic::Request;

/// A route table as a subscriber received it.
pub struct Received {
    pub table: pb::RouteTable,
    pub at: Instant,
}

/// Subscribes as `node_id` on a background thread; every table received comes out of the channel.
/// The subscription ends when the receiver is dropped and the next table arrives, or with the process.
pub fn subscribe(
    url: String,
    token: String,
    node_id: &str,
) -> mpsc::Receiver<Result<Received, tonic::Status>> {
    let (tx, rx) = mpsc::channel();
    let node_id = node_id.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = match NodesClient::connect(url).await {
                Ok(c) => c.max_decoding_message_size(keyplane_proto::MAX_MESSAGE_BYTES),
                Err(e) => {
                    let _ = tx.send(Err(tonic::Status::unavailable(e.to_string())));
                    return;
                }
            };
            let mut req = Request::new(pb::SubscribeRequest {
                node_id,
                have_route_version: 0,
                ..Default::default()
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let mut stream = match client.subscribe(req).await {
                Ok(resp) => resp.into_inner(),
                Err(status) => {
                    let _ = tx.send(Err(status));
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(table)) => {
                        if tx
                            .send(Ok(Received {
                                table,
                                at: Instant::now(),
                            }))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status));
                        return;
                    }
                }
            }
        });
    });
    rx
}

/// Sends one usage batch; returns the acknowledged ids.
pub fn report_usage(
    url: &str,
    token: &str,
    node_id: &str,
    records: Vec<pb::UsageRecord>,
) -> Result<pb::ReportUsageResponse, tonic::Status> {
    report_usage_request(
        url,
        token,
        pb::ReportUsageRequest {
            node_id: node_id.to_string(),
            records,
            ..Default::default()
        },
    )
}

/// `Nodes/ReportUsage` with the whole request as given (the backlog fields too).
pub fn report_usage_request(
    url: &str,
    token: &str,
    request: pb::ReportUsageRequest,
) -> Result<pb::ReportUsageResponse, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = NodesClient::connect(url.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut req = Request::new(request);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client
            .report_usage(req)
            .await
            .map(tonic::Response::into_inner)
    })
}

pub fn usage_record(
    request_id: &str,
    key_id: &str,
    input: u64,
    output: u64,
    cost_nano: u64,
) -> pb::UsageRecord {
    pb::UsageRecord {
        request_id: request_id.to_string(),
        key_id: key_id.to_string(),
        model: "deepseek/deepseek-chat".to_string(),
        provider: "deepseek".to_string(),
        credential_id: "cred-1".to_string(),
        input_tokens: input,
        output_tokens: output,
        cost_nano_usd: cost_nano,
        status: 200,
        ..Default::default()
    }
}

/// Waits for the next table on `rx` whose version is above `above`.
pub fn next_table(
    rx: &mpsc::Receiver<Result<Received, tonic::Status>>,
    above: u64,
    timeout: Duration,
) -> Received {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(r)) if r.table.route_version > above => return r,
            Ok(Ok(_)) => continue,
            Ok(Err(status)) => panic!("subscription failed: {status}"),
            Err(_) => panic!("no route table above version {above} within {timeout:?}"),
        }
    }
}

/// Adds provider `name` (OpenAI protocol at `base_url`) with one credential `sk-{name}` and its
/// offering of `model` at the given prices (USD per million tokens).
#[allow(dead_code)] // The console tests' data plane only.
pub fn add_openai_offer(
    cp: &keyplane_testkit::ControlPlane,
    name: &str,
    base_url: &str,
    model: &str,
    price: &str,
) {
    add_offer(cp, "openai", name, base_url, model, price);
}

/// As [`add_openai_offer`], for a provider of `protocol`.
pub fn add_offer(
    cp: &keyplane_testkit::ControlPlane,
    protocol: &str,
    name: &str,
    base_url: &str,
    model: &str,
    price: &str,
) {
    cp.ctl(&[
        "provider",
        "add",
        name,
        "--protocol",
        protocol,
        "--base-url",
        base_url,
    ])
    .ok();
    cp.ctl_with(
        &["credential", "add", name],
        Some(&format!("sk-{name}\n")),
        &cp.admin_token,
    )
    .ok();
    let upstream = format!("{name}-model");
    cp.ctl(&[
        "model",
        "set",
        model,
        "--provider",
        name,
        "--upstream-model",
        &upstream,
        "--input",
        price,
        "--output",
        price,
    ])
    .ok();
}

/// Waits until the data plane's table knows the client key `key`.
#[allow(dead_code)] // The console tests' data plane only.
pub fn wait_key_accepted(dp: &keyplane_testkit::DataPlane, key: &str) {
    use keyplane_testkit::http::HttpRequest;
    let timeout = Duration::from_secs(30);
    assert!(
        keyplane_testkit::wait_until(timeout, || {
            HttpRequest::get("/v1/models")
                .bearer(key)
                .send(dp.addr, timeout)
                .is_ok_and(|r| r.status == 200)
        }),
        "the data plane never accepted the key; log:\n{}",
        dp.logs()
    );
}

/// Sends one chat completion for `model` through the data plane; returns its status.
#[allow(dead_code)] // The console tests' data plane only.
pub fn chat(dp: &keyplane_testkit::DataPlane, key: &str, model: &str) -> u16 {
    use keyplane_testkit::http::HttpRequest;
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
    });
    HttpRequest::post_json("/v1/chat/completions", &body)
        .bearer(key)
        .send(dp.addr, Duration::from_secs(30))
        .unwrap()
        .status
}
