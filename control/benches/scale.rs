//! Control-plane scale: how long from `SetModel` to a subscriber holding the new table with
//! 10,000 models x 5 offerings in the store, the table's encoded size, usage records ingested
//! per second (with the request log off, on, on with records carrying the log's fields, and on
//! while a console session polls the overview every second over HTTP, in one run, the rate with
//! the log off beside each), and `ListRequests` and the console's overview (last hour, day, 30
//! days) over LOGGED logged requests spread over the last 30 days. Prints figures; asserts
//! nothing about speed.
//!
//! Run: `cargo bench -p keyplane-control --bench scale` (env MODELS, OFFERINGS, RECORDS to scale;
//! IDS_PER_MS: UUIDv7 ids per millisecond in the UUIDv7 ingest runs, default 36; LOGGED: logged
//! requests to query over, default 1,000,000).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use keyplane_control::catalog::SetModel;
use keyplane_control::creds::{MasterKey, Secret};
use keyplane_control::grpc::{self, TokenCheck};
use keyplane_control::nodes::Registry;
use keyplane_control::routes::Routes;
use keyplane_control::store::Store;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::admin_client::AdminClient;
use keyplane_proto::v1::nodes_client::NodesClient;
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::codec::CompressionEncoding;

const ADMIN: &str = "bench-admin-token-0123456789";
const NODE: &str = "bench-node-token-0123456789";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let models = env_usize("MODELS", 10_000);
    let offerings = env_usize("OFFERINGS", 5);
    let records = env_usize("RECORDS", 200_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), &MasterKey::generate()).unwrap());

    let fill = Instant::now();
    for p in 0..offerings {
        let name = format!("provider-{p}");
        store
            .add_provider(&name, "openai", "http://127.0.0.1:9/v1")
            .unwrap();
        store
            .add_credential(
                &name,
                "main",
                "1",
                &Secret::new(format!("sk-bench-{p}-0123456789abcdef")),
            )
            .unwrap();
    }
    for m in 0..models {
        let model = format!("vendor-{}/model-{m}-instruct", m % 50);
        for p in 0..offerings {
            store
                .set_model(&SetModel {
                    model: &model,
                    provider: &format!("provider-{p}"),
                    upstream_model: &format!("upstream/model-{m}-{p}"),
                    input_usd_per_mtok: &format!("0.{}", 100 + p),
                    output_usd_per_mtok: &format!("1.{}", 200 + p),
                    cache_read_usd_per_mtok: "",
                    cache_write_usd_per_mtok: "",
                })
                .unwrap();
        }
    }
    store.flush().await.unwrap();
    println!(
        "store filled: {models} models x {offerings} offerings in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let routes = Routes::start(Arc::clone(&store)).await.unwrap();
    let table = routes.current();
    let encoded = table.encoded_len();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &table.encode_to_vec()).unwrap();
    let gzipped = gz.finish().unwrap().len();
    let compile_start = Instant::now();
    let _ = keyplane_control::routes::compile(&store, 0).unwrap();
    let compile_time = compile_start.elapsed();

    let registry = Registry::new(Arc::clone(&store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let compiler = tokio::spawn(Arc::clone(&routes).run(cancel.clone()));
    // The same store behind a second server with the request log off (`--request-log-retention
    // 0`): the baseline of the ingest runs.
    let listener_off = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url_off = format!("http://{}", listener_off.local_addr().unwrap());
    let server_off = tokio::spawn(grpc::serve(
        listener_off,
        grpc::Services {
            syncer: keyplane_control::catalog_sync::Syncer::new(
                Arc::clone(&store),
                Arc::clone(&routes),
                keyplane_control::catalog_sync::SyncConfig {
                    interval: None,
                    ..Default::default()
                },
            ),
            store: Arc::clone(&store),
            routes: Arc::clone(&routes),
            registry: Registry::new(Arc::clone(&store)),
            admin_token: TokenCheck::new(ADMIN, "admin token"),
            node_token: TokenCheck::new(NODE, "node token"),
            tls: None,
            require_node_cert: false,
            request_log: false,
            request_bodies: false,
        },
        cancel.clone(),
    ));
    let server = tokio::spawn(grpc::serve(
        listener,
        grpc::Services {
            syncer: keyplane_control::catalog_sync::Syncer::new(
                Arc::clone(&store),
                Arc::clone(&routes),
                keyplane_control::catalog_sync::SyncConfig {
                    interval: None,
                    ..Default::default()
                },
            ),
            store: Arc::clone(&store),
            routes,
            registry,
            admin_token: TokenCheck::new(ADMIN, "admin token"),
            node_token: TokenCheck::new(NODE, "node token"),
            tls: None,
            require_node_cert: false,
            request_log: true,
            request_bodies: false,
        },
        cancel.clone(),
    ));
    let url = format!("http://{addr}");

    println!(
        "route table: {} bytes encoded, {} bytes gzipped; compile {:.1} ms",
        encoded,
        gzipped,
        compile_time.as_secs_f64() * 1e3
    );

    for gzip in [false, true] {
        let mut nodes = NodesClient::connect(url.clone())
            .await
            .unwrap()
            .max_decoding_message_size(keyplane_proto::MAX_MESSAGE_BYTES);
        if gzip {
            nodes = nodes.accept_compressed(CompressionEncoding::Gzip);
        }
        let mut admin = AdminClient::connect(url.clone()).await.unwrap();
        let first_at = Instant::now();
        let mut stream = nodes
            .subscribe(authed(
                pb::SubscribeRequest {
                    node_id: format!("bench-{gzip}"),
                    have_route_version: 0,
                    ..Default::default()
                },
                NODE,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut version = stream.message().await.unwrap().unwrap().route_version;
        let first = first_at.elapsed();
        let mut samples = Vec::new();
        for i in 0..10 {
            let start = Instant::now();
            admin
                .set_model(authed(
                    pb::SetModelRequest {
                        model: "vendor-0/model-0-instruct".into(),
                        provider: "provider-0".into(),
                        upstream_model: String::new(),
                        input_usd_per_mtok: format!("0.{}", 500 + i),
                        output_usd_per_mtok: "1".into(),
                        ..Default::default()
                    },
                    ADMIN,
                ))
                .await
                .unwrap();
            loop {
                let table = stream.message().await.unwrap().unwrap();
                if table.route_version > version {
                    version = table.route_version;
                    let price = table
                        .models
                        .iter()
                        .find(|m| m.name == "vendor-0/model-0-instruct")
                        .unwrap()
                        .offerings[0]
                        .input_micro_usd_per_mtok;
                    if price == (500 + i) as u64 * 1000 {
                        break;
                    }
                }
            }
            samples.push(start.elapsed());
        }
        samples.sort();
        println!(
            "model set -> subscriber holds new table ({}): p50 {:.0} ms, max {:.0} ms over {} changes; first table {:.0} ms",
            if gzip { "gzip" } else { "uncompressed" },
            percentile(&samples, 0.5).as_secs_f64() * 1e3,
            samples.last().unwrap().as_secs_f64() * 1e3,
            samples.len(),
            first.as_secs_f64() * 1e3
        );
    }

    // Usage ingest: 4 concurrent reporters, batches of 1,000, each acknowledged only once durable.
    // First with ids that are not UUIDv7s (stored one per sled entry), then with UUIDv7 ids as a
    // node serving IDS_PER_MS x 1,000 requests/s makes them (stored a millisecond to an entry).
    // The UUIDv7 runs, one after another in this process, differ only in the request log: off
    // (the second server), on with records as nodes sent them before the log existed, and on
    // with the log's fields (dialect, two attempts, an error code on the 1% refused).
    let ids_per_ms = env_usize("IDS_PER_MS", 36) as u64;
    let now = keyplane_control::store::now_ms() as u64;
    let hour = 3_600_000u64;
    let plain = ingest(&url, records, "plain", false, &|r, b, i| {
        format!("r{r}-{b}-{i}")
    })
    .await;
    let v7_id = move |base_ms: u64| {
        move |r: usize, b: usize, i: usize| {
            let n = (b * 1_000 + i) as u64;
            let mut rest = [0u8; 10];
            rest[..8].copy_from_slice(&n.to_be_bytes());
            rest[8] = r as u8;
            uuid::Builder::from_unix_timestamp_millis(base_ms + n / ids_per_ms, &rest)
                .into_uuid()
                .to_string()
        }
    };
    let off = ingest(
        &url_off,
        records,
        "uuid7, request log off",
        true,
        &v7_id(now - 6 * hour),
    )
    .await;
    let rate = |n: usize, secs: f64| n as f64 / secs;
    let baseline = rate(off.0, off.1);
    let beside = |label: &str, run: (usize, f64)| {
        println!(
            "  {label}: {:.0} records/s = {:.2}x the rate with the log off ({baseline:.0}/s)",
            rate(run.0, run.1),
            rate(run.0, run.1) / baseline
        );
    };
    let on_bare = ingest(
        &url,
        records,
        "uuid7, request log on, records without log fields",
        false,
        &v7_id(now - 5 * hour),
    )
    .await;
    beside("log on, records without log fields", on_bare);
    let on = ingest(
        &url,
        records,
        "uuid7, request log on, records with log fields",
        true,
        &v7_id(now - 4 * hour),
    )
    .await;
    beside("log on, records with log fields", on);

    // The same with a console session polling the overview (last 30 days, its heaviest window)
    // every second over HTTP, as a browser left open on it does.
    let console_cancel = CancellationToken::new();
    let console_url = start_console(&store, &console_cancel).await;
    let cookie = sign_in(&console_url).await;
    let polling = CancellationToken::new();
    let poller = tokio::spawn(poll_overview(
        console_url.clone(),
        cookie.clone(),
        polling.clone(),
    ));
    let polled = ingest(
        &url,
        records,
        "uuid7, request log on, records with log fields, console polling the overview every second",
        true,
        &v7_id(now - 3 * hour),
    )
    .await;
    polling.cancel();
    let polls = poller.await.unwrap();
    beside("log on, console polling the overview", polled);
    print_samples("  overview polls during that ingest", polls);
    let off_again = ingest(
        &url_off,
        records,
        "uuid7, request log off, again",
        true,
        &v7_id(now - 2 * hour),
    )
    .await;
    beside("log off again (drift of the baseline)", off_again);
    let (off, on_bare, on, polled, off_again) = (off.0, on_bare.0, on.0, polled.0, off_again.0);
    let plain = plain.0;
    let total = plain + off + on_bare + on + polled + off_again;
    // The refused 1% of the runs with log fields are unbilled: never in the ledger.
    let unbilled = |n: usize| n / 100;
    let total = total - unbilled(off) - unbilled(on) - unbilled(polled) - unbilled(off_again);
    let totals = store.usage_totals(None).unwrap();
    let requests: u64 = totals.iter().map(|t| t.counts.requests).sum();
    assert_eq!(requests as usize, total);
    let q = Instant::now();
    let _ = store.usage_totals(Some("key-3")).unwrap();
    println!(
        "usage query for one key over {total} records: {:.2} ms ({} totals rows in all)",
        q.elapsed().as_secs_f64() * 1e3,
        totals.len()
    );

    // Every record of the runs through the server with the log on is logged already.
    list_requests(
        &store,
        &url,
        &console_url,
        &cookie,
        env_usize("LOGGED", 1_000_000),
        plain + on_bare + on + polled,
    )
    .await;

    console_cancel.cancel();
    cancel.cancel();
    let _ = server.await;
    let _ = server_off.await;
    let _ = compiler.await;
}

/// One usage record as a node sends it: `fields` adds the request log's own fields; every
/// hundredth is then a refused request (429, unbilled).
fn record(request_id: String, i: usize, fields: bool, started_at_ms: i64) -> pb::UsageRecord {
    let mut rec = pb::UsageRecord {
        request_id,
        started_at_ms,
        key_id: format!("key-{}", i % 20),
        model: format!("vendor-0/model-{}-instruct", i % 100),
        provider: format!("provider-{}", i % 5),
        credential_id: format!("cred-{}", i % 5),
        input_tokens: 1000,
        output_tokens: 200,
        cost_nano_usd: 12345,
        latency_ms: 840,
        ttfb_ms: 210,
        status: 200,
        ..Default::default()
    };
    if fields {
        rec.dialect = "openai-chat".into();
        rec.stream = i.is_multiple_of(2);
        rec.attempts = vec![
            pb::UpstreamAttempt {
                provider: format!("provider-{}", (i + 1) % 5),
                credential_id: format!("cred-{}", (i + 1) % 5),
                outcome: "server_error".into(),
            },
            pb::UpstreamAttempt {
                provider: rec.provider.clone(),
                credential_id: rec.credential_id.clone(),
                outcome: "ok".into(),
            },
        ];
        if i % 100 == 99 {
            rec.status = 429;
            rec.error = "rate_limit_exceeded".into();
            rec.unbilled = true;
            rec.attempts.clear();
            rec.provider.clear();
            rec.credential_id.clear();
            rec.input_tokens = 0;
            rec.output_tokens = 0;
            rec.cost_nano_usd = 0;
        }
    }
    rec
}

/// Fills the ledger, the request log and the rollups, which hold `have` logged requests, to
/// `logged` (straight into the store as a report would, 10,000 a batch, spread evenly over the
/// last 30 days), then times `ListRequests` through gRPC (the newest 50, and filtered queries)
/// and the console's overview and portal pages over HTTP. Each figure is the median of 5 calls.
async fn list_requests(
    store: &Arc<Store>,
    url: &str,
    console_url: &str,
    cookie: &str,
    logged: usize,
    have: usize,
) {
    // `--key` takes a key's name: the filled entries belong to 20 real keys.
    let keys: Vec<(String, String)> = (0..20)
        .map(|k| {
            let (rec, secret) = store.create_key(&format!("bench-key-{k}")).unwrap();
            (rec.id, secret.expose().to_string())
        })
        .collect();
    let fill = Instant::now();
    let now_ms = keyplane_control::store::now_ms();
    let month = 30 * 24 * 3_600_000i64;
    let first_ms = now_ms - month;
    let step = month as f64 / logged.saturating_sub(have).max(1) as f64;
    let mut n = have;
    while n < logged {
        let batch: Vec<pb::UsageRecord> = (n..(n + 10_000).min(logged))
            .map(|i| {
                let at = first_ms + ((i - have) as f64 * step) as i64;
                let mut rec = record(format!("fill-{i:08}"), i, true, at);
                rec.key_id = keys[i % 20].0.clone();
                rec
            })
            .collect();
        n += batch.len();
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || {
            store.ingest_report("bench-fill", &batch, true).unwrap()
        })
        .await
        .unwrap();
    }
    store.flush().await.unwrap();
    println!(
        "ledger, request log and rollups filled to {logged} logged requests over the last 30 days \
         ({} added by Store::ingest_report in {:.1} s)",
        logged.saturating_sub(have),
        fill.elapsed().as_secs_f64()
    );
    let mut admin = AdminClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(keyplane_proto::MAX_MESSAGE_BYTES);
    let mid = now_ms - month / 2;
    let queries: [(&str, pb::ListRequestsRequest); 6] = [
        ("newest 50", pb::ListRequestsRequest::default()),
        (
            "--key (1 in 20), 50",
            pb::ListRequestsRequest {
                key: "bench-key-3".into(),
                ..Default::default()
            },
        ),
        (
            "--model (1 in 100), 50",
            pb::ListRequestsRequest {
                model: "vendor-0/model-7-instruct".into(),
                ..Default::default()
            },
        ),
        (
            "--status 429 (1 in 100), 50",
            pb::ListRequestsRequest {
                status: 429,
                ..Default::default()
            },
        ),
        (
            "--key --model --status 429 (1 in 2,000), 50",
            pb::ListRequestsRequest {
                key: "bench-key-19".into(),
                model: "vendor-0/model-99-instruct".into(),
                status: 429,
                ..Default::default()
            },
        ),
        (
            "--since/--until an hour 15 days ago, 1,000",
            pb::ListRequestsRequest {
                since_ms: mid,
                until_ms: mid + 3_600_000,
                limit: 1_000,
                ..Default::default()
            },
        ),
    ];
    for (label, query) in queries {
        let mut samples = Vec::new();
        let mut got = 0;
        for _ in 0..5 {
            let start = Instant::now();
            got = admin
                .list_requests(authed(query.clone(), ADMIN))
                .await
                .unwrap()
                .into_inner()
                .requests
                .len();
            samples.push(start.elapsed());
        }
        print_samples(
            &format!("ListRequests over {logged} logged requests, {label} ({got} returned)"),
            samples,
        );
    }
    // The overview's three windows, page and all, as a browser gets it.
    for window in ["hour", "day", "month"] {
        let path = format!("/?window={window}");
        let mut samples = Vec::new();
        let mut size = 0;
        for _ in 0..5 {
            let start = Instant::now();
            size = http_get(console_url, &path, cookie).await.len();
            samples.push(start.elapsed());
        }
        print_samples(
            &format!("console overview over {logged} logged requests, GET {path} ({size} bytes)"),
            samples,
        );
    }
    // One key holder's portal (spend, its overview, its recent requests).
    let portal = sign_in_portal(console_url, &keys[3].1).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        http_get(console_url, "/portal?window=month", &portal).await;
        samples.push(start.elapsed());
    }
    print_samples(
        &format!(
            "console portal of one key (1 in 20) over {logged} logged requests, GET /portal?window=month"
        ),
        samples,
    );
}

fn print_samples(label: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        println!("{label}: no samples");
        return;
    }
    samples.sort();
    println!(
        "{label}: median {:.1} ms, max {:.1} ms over {}",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
        samples.len()
    );
}

/// Serves the console (`--console-listen`) on a loopback port; returns its base URL.
async fn start_console(store: &Arc<Store>, cancel: &CancellationToken) -> String {
    let routes = Routes::start(Arc::clone(store)).await.unwrap();
    let syncer = keyplane_control::catalog_sync::Syncer::new(
        Arc::clone(store),
        Arc::clone(&routes),
        keyplane_control::catalog_sync::SyncConfig {
            interval: None,
            ..Default::default()
        },
    );
    let console = Arc::new(keyplane_control::console::Console::new(
        Arc::clone(store),
        routes,
        Registry::new(Arc::clone(store)),
        syncer,
        TokenCheck::new(ADMIN, "admin token"),
        false,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(keyplane_control::console::serve(
        listener,
        None,
        console,
        cancel.clone(),
    ));
    url
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Posts a sign-in form; returns the session cookie (`name=value`).
async fn post_sign_in(base: &str, path: &str, token: &str) -> String {
    let req = http::Request::post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            "token={token}"
        ))))
        .unwrap();
    let resp = http_client().request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

async fn sign_in(base: &str) -> String {
    post_sign_in(base, "/login", ADMIN).await
}

async fn sign_in_portal(base: &str, key: &str) -> String {
    post_sign_in(base, "/portal/login", key).await
}

/// GETs a console page with a session cookie; returns its body (asserting a 200).
async fn http_get(base: &str, path: &str, cookie: &str) -> bytes::Bytes {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("{base}{path}"))
        .header("cookie", cookie)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = http_client().request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK, "{path}");
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Loads the 30-day overview once a second until `stop`; returns how long each load took.
async fn poll_overview(base: String, cookie: String, stop: CancellationToken) -> Vec<Duration> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return samples,
        }
        let start = Instant::now();
        http_get(&base, "/?window=month", &cookie).await;
        samples.push(start.elapsed());
    }
}

/// Sends about `records` usage records through `ReportUsage` from 4 concurrent reporters in
/// batches of 1,000, with request ids from `id(reporter, batch, index)`, started now; prints
/// the rate. Returns the records sent and the seconds it took.
async fn ingest(
    url: &str,
    records: usize,
    label: &str,
    log_fields: bool,
    id: &(dyn Fn(usize, usize, usize) -> String + Sync),
) -> (usize, f64) {
    let batch = 1_000;
    let reporters = 4;
    let per_reporter = records / reporters / batch;
    let start = Instant::now();
    let sends = (0..reporters).map(|r| async move {
        let mut client = NodesClient::connect(url.to_string()).await.unwrap();
        for b in 0..per_reporter {
            let at = keyplane_control::store::now_ms();
            let recs = (0..batch)
                .map(|i| record(id(r, b, i), i, log_fields, at))
                .collect();
            let ack = client
                .report_usage(authed(
                    pb::ReportUsageRequest {
                        node_id: format!("bench-{r}"),
                        records: recs,
                        ..Default::default()
                    },
                    NODE,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(ack.acked_ids.len(), batch);
        }
    });
    futures_util::future::join_all(sends).await;
    let elapsed = start.elapsed();
    let total = reporters * per_reporter * batch;
    println!(
        "usage ingest ({label} ids): {total} records in {:.2} s = {:.0} records/s ({reporters} reporters, batches of {batch}, flushed before each ack)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    (total, elapsed.as_secs_f64())
}
