//! Catalog sync at scale: a fake provider serves an OpenRouter-shaped models list of 500 models
//! (override with `KEYPLANE_BENCH_MODELS`); the bench times a full sync (HTTP fetch over
//! loopback, parse, store, route-table compile) and prints the size of the route table the data
//! planes receive.
//!
//! Run: `cargo bench -p keyplane-control --bench catalog_sync`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyplane_control::catalog::AddProvider;
use keyplane_control::catalog_sync::{SyncConfig, Syncer};
use keyplane_control::creds::{MasterKey, Secret};
use keyplane_control::routes::Routes;
use keyplane_control::store::Store;
use keyplane_testkit::{FakeConfig, FakeUpstream};
use prost::Message;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An OpenRouter-shaped list of `n` models whose prices depend on `round`, so that every round
/// changes every price.
fn body(n: usize, round: usize) -> String {
    let data: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "id": format!("vendor-{}/model-{i}-instruct", i % 50),
                "name": format!("Vendor: Model {i}"),
                "created": 1_748_000_000 + i,
                "description": "A model of the bench catalog, described in a sentence or two like the real list does for every model it carries.",
                "context_length": 131_072,
                "architecture": {"modality": "text->text", "input_modalities": ["text"], "output_modalities": ["text"], "tokenizer": "Other"},
                "pricing": {
                    "prompt": format!("0.000000{}", 100 + (i + round) % 900),
                    "completion": format!("0.00000{}", 1000 + (i * 7 + round) % 9000),
                    "request": "0", "image": "0", "web_search": "0", "internal_reasoning": "0",
                    "input_cache_read": format!("0.0000000{}", 10 + i % 90)
                },
                "top_provider": {"context_length": 131_072, "max_completion_tokens": 16_384, "is_moderated": false},
                "per_request_limits": null,
                "supported_parameters": ["max_tokens", "temperature", "top_p", "tools", "stop"]
            })
        })
        .collect();
    json!({ "data": data }).to_string()
}

#[tokio::main]
async fn main() {
    let models: usize = std::env::var("KEYPLANE_BENCH_MODELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rounds = 10;
    let fake = FakeUpstream::start(FakeConfig {
        name: "bench".into(),
        ..FakeConfig::default()
    });
    let first = body(models, 0);
    println!("catalog: {models} models, {} bytes of JSON", first.len());
    fake.set_models_body(Some((200, first)));

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), &MasterKey::generate()).unwrap());
    store
        .add_provider_with(&AddProvider {
            name: "or",
            preset: "openrouter",
            base_url: &fake.openai_base_url(),
            ..AddProvider::default()
        })
        .unwrap();
    store
        .add_credential("or", "main", "1", &Secret::new("sk-bench".into()))
        .unwrap();
    let routes = Routes::start(Arc::clone(&store)).await.unwrap();
    let syncer = Syncer::new(
        Arc::clone(&store),
        Arc::clone(&routes),
        SyncConfig {
            interval: None,
            timeout: Duration::from_secs(60),
            ..SyncConfig::default()
        },
    );

    let mut sync_ms = Vec::new();
    let mut compile_ms = Vec::new();
    for round in 0..rounds {
        fake.set_models_body(Some((200, body(models, round))));
        let start = Instant::now();
        let status = syncer.sync_now(Some("or")).await.unwrap();
        sync_ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            status[0].rec.models.len(),
            models,
            "{}",
            status[0].rec.last_error
        );
        let start = Instant::now();
        let table = keyplane_control::routes::compile(&store, 1).unwrap();
        compile_ms.push(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(table.models.len(), models);
    }
    let table = keyplane_control::routes::compile(&store, 1).unwrap();
    let encoded = table.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &encoded).unwrap();
    let gzipped = gz.finish().unwrap().len();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "sync (fetch + parse + store, every price changed): median {:.1} ms over {rounds} rounds, max {:.1} ms",
        median(&mut sync_ms.clone()),
        sync_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "route table compile: median {:.1} ms",
        median(&mut compile_ms)
    );
    println!(
        "route table pushed: {} bytes encoded, {} bytes gzipped ({} models, 1 offering each)",
        encoded.len(),
        gzipped,
        table.models.len()
    );
}
