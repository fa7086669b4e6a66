//! `keyplane-fake-upstream`: the testkit's fake LLM provider as a standalone process, for the
//! demo and as the direct-to-upstream baseline of end-to-end benchmarks.
//!
//! It serves the OpenAI (`/v1/chat/completions`, `/v1/responses`, `/v1/models`) and Anthropic
//! (`/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`) endpoints with normal behaviour
//! (see `keyplane_testkit::fake_upstream`), prints exactly one stdout line
//! `fake-upstream listening on ADDR` once it listens, and exits on SIGTERM or SIGINT. Requests
//! are counted but not recorded, so memory stays flat under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use keyplane_testkit::fake_upstream::{self, FakeConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// A fake upstream LLM provider speaking the OpenAI (chat, Responses) and Anthropic wire formats.
#[derive(Debug, Parser)]
#[command(name = "keyplane-fake-upstream", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name sent back in the `x-fake-upstream` response header.
    #[arg(long, default_value = "fake")]
    name: String,
    /// Key clients must present (`Authorization: Bearer` or `x-api-key`; Gemini: `x-goog-api-key`
    /// or `?key=`); none accepts any.
    #[arg(long)]
    api_key: Option<String>,
    /// Content words per completion (stream events per stream).
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// Pause before each stream event after the first, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
    // In-flight connections are dropped with the runtime, without waiting for slow streams.
    runtime.shutdown_timeout(Duration::from_secs(1));
}

async fn run(args: Args) {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!(
                "keyplane-fake-upstream: cannot listen on {}: {e}",
                args.listen
            );
            std::process::exit(2);
        });
    let addr = listener.local_addr().expect("local addr");
    let config = FakeConfig {
        name: args.name,
        api_key: args.api_key,
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        listen: addr,
        record_requests: false,
        ..FakeConfig::default()
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "fake-upstream listening on {addr}").expect("write stdout");
        stdout.flush().expect("flush stdout");
    }
    fake_upstream::serve(listener, config, shutdown_signal()).await;
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
