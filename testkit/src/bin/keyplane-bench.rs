//! `keyplane-bench`: the end-to-end performance benchmark of the data plane.
//!
//! One run starts, as separate processes, the fake upstream (`keyplane-fake-upstream`), a control
//! plane with providers pointing at that one fake (it serves every protocol on one port):
//! `bench` speaking OpenAI chat, offering `bench/model`, and `bench-anthropic` speaking Anthropic,
//! offering `bench/claude` (and, for `--only responses` and `all`, `bench-responses` speaking the
//! OpenAI Responses API, offering `bench/responses`); a credential each and a client key; a data
//! plane; and a **bare
//! reverse proxy** (this same binary in the hidden `--baseline-proxy` mode: a hyper 1 server and
//! a hyper-util pooled client that pass bodies through frame by frame, with no parsing and no
//! auth); and **nginx** as the reference proxy (Debian's `nginx-light`, found on `PATH` or in
//! `/usr/sbin`, or given with `--nginx`), run in the foreground from a temporary prefix with a
//! generated config (`proxy_buffering off`, pooled keep-alive upstream connections, as many
//! workers as the data plane has runtime threads; see `nginx::config`). A closed-loop load
//! generator then drives each target (direct to the fake, through the bare proxy, through nginx,
//! through Keyplane) with non-stream and streamed requests, and prints one markdown report:
//! throughput, latency percentiles, time to first byte of streams, the latency each proxy adds
//! over the direct baseline, CPU per request and memory, with Keyplane's ratios stated against
//! both references.
//!
//! Besides OpenAI clients against the OpenAI provider, Keyplane gets the cross-protocol routes
//! (`--only cross`): Anthropic Messages clients (`POST /v1/messages`) against the OpenAI
//! provider, OpenAI clients against the Anthropic provider, and Anthropic clients against the
//! Anthropic provider as the same-protocol reference; the report prints the translation cost per
//! request and per stream event. `--only openai` runs only the original OpenAI rows.
//!
//! `--only responses` measures the Responses API the same way: Responses clients (`POST
//! /v1/responses`, shaped like the official SDK's `responses.create`: `model`, `input` with one
//! user message, `max_output_tokens`, `stream`) against the Responses provider (pass-through, the
//! reference), the OpenAI chat provider and the Anthropic provider; and OpenAI chat and Anthropic
//! clients against the Responses provider, each beside its same-protocol reference. A streamed
//! Responses answer ends with `response.completed` (it has no `[DONE]`). It needs a data plane
//! that serves `/v1/responses` and a control plane that knows the `openai-responses` protocol,
//! which is why it is not part of `--only cross` (that one also runs against older builds).
//!
//! `--only gemini` measures Gemini's API the same way: Gemini clients (`POST
//! /v1beta/models/bench-gemini:generateContent`, or `:streamGenerateContent?alt=sse` as Gemini CLI
//! streams, key in `x-goog-api-key`) against the `gemini` provider (pass-through, the reference)
//! and the OpenAI chat provider, and OpenAI chat clients against the `gemini` provider, each beside
//! its same-protocol reference.
//!
//! `--only embeddings` measures `POST /v1/embeddings` (the body the OpenAI SDK's
//! `embeddings.create` sends by default: one input, `encoding_format: "base64"`, here with
//! `dimensions: 1536`) through Keyplane to the OpenAI provider's `/v1/embeddings` beside the
//! fake answering it directly, in one run; embeddings have no stream.
//!
//! Build every binary first, then run it from `target/release`:
//!
//! ```sh
//! apt-get install -y nginx-light   # once; not needed for `--only cross`
//! cargo build --release --bins
//! ./target/release/keyplane-bench --connections 64 --duration-secs 10 --warmup-secs 2
//! ```
//!
//! Binaries are looked up next to this executable (or in `KEYPLANE_BIN_DIR`), like the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyplane_testkit::http::HttpRequest;
use keyplane_testkit::process::send_signal;
use keyplane_testkit::{ControlPlane, DataPlane, wait_until};
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// End-to-end benchmark of the Keyplane data plane against a direct and a bare-proxy baseline.
#[derive(Debug, Parser)]
#[command(name = "keyplane-bench", version)]
struct Args {
    /// Concurrent keep-alive connections of the load generator, each sending back to back.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Measured time per target and workload.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    duration_secs: u64,
    /// Unmeasured load before each measurement (connections open, pools and caches fill).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// Content events per streamed completion (and words per non-stream one).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    chunks: u64,
    /// Workloads to run: `openai` (OpenAI clients against the direct, bare-proxy and Keyplane
    /// targets), `cross` (OpenAI chat and Anthropic clients against both of those upstream
    /// protocols through Keyplane, with their direct baselines), `responses` (the Responses API
    /// against every upstream protocol and every client protocol against a Responses upstream,
    /// with their references and direct baselines), `gemini` (Gemini clients against a Gemini and
    /// an OpenAI chat upstream, OpenAI chat clients against a Gemini upstream, with their
    /// references and direct baselines), `embeddings` (`POST /v1/embeddings` through Keyplane
    /// beside the direct baseline) or `all`.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// After the main runs, this many extra rounds of OpenAI → OpenAI runs per workload: the bare
    /// proxy, nginx, then Keyplane at once, alternating. The runs of a round see about the same
    /// machine, so the median of the rounds' ratios drifts less with other load than the single
    /// ratio of the main runs (which are minutes apart). Needs `--only openai` or `all`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=50))]
    pairs: u64,
    /// The nginx binary of the reference proxy (Debian's `nginx-light`), by path or by name on
    /// `PATH` (and in `/usr/sbin`, where Debian puts it). Needed unless `--only cross`.
    #[arg(long, default_value = "nginx", value_name = "PATH")]
    nginx: String,
    /// Internal: serve only the bare reverse proxy in front of UPSTREAM (`host:port`), print
    /// `baseline-proxy listening on ADDR`, and exit on SIGTERM, SIGINT or end of stdin.
    #[arg(long, hide = true, value_name = "UPSTREAM")]
    baseline_proxy: Option<SocketAddr>,
}

/// Which workloads a run measures (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    /// OpenAI → OpenAI: direct, bare proxy and Keyplane (the original rows).
    Openai,
    /// Cross-protocol rows through Keyplane, their same-protocol references and the direct
    /// baselines; no bare proxy.
    Cross,
    /// Responses API rows: Responses clients against each upstream protocol, OpenAI chat and
    /// Anthropic clients against a Responses upstream, their same-protocol references and the
    /// direct baselines; no bare proxy.
    Responses,
    /// `POST /v1/embeddings` through Keyplane and direct to the fake; no stream, no bare proxy.
    Embeddings,
    /// Gemini API rows: Gemini clients (`streamGenerateContent?alt=sse`, `generateContent`)
    /// against a Gemini upstream (pass-through, the reference) and the OpenAI chat provider, and
    /// OpenAI chat clients against the Gemini provider, each beside its same-protocol reference
    /// and the direct baselines; no bare proxy.
    Gemini,
    /// Every row above.
    All,
}

impl Only {
    fn flag(self) -> &'static str {
        match self {
            Only::Openai => "openai",
            Only::Cross => "cross",
            Only::Responses => "responses",
            Only::Embeddings => "embeddings",
            Only::Gemini => "gemini",
            Only::All => "all",
        }
    }

    /// Whether the run needs the Responses provider (and so a control plane that knows the
    /// `openai-responses` protocol).
    fn has_responses(self) -> bool {
        matches!(self, Only::Responses | Only::All)
    }

    /// Whether the run needs the Gemini provider (and so builds that know the `gemini` protocol
    /// and serve Gemini's paths).
    fn has_gemini(self) -> bool {
        matches!(self, Only::Gemini | Only::All)
    }

    /// Whether the run has the embeddings rows.
    fn has_embeddings(self) -> bool {
        matches!(self, Only::Embeddings | Only::All)
    }

    /// Whether the run has the OpenAI → OpenAI rows of the bare proxy and nginx.
    fn has_references(self) -> bool {
        matches!(self, Only::Openai | Only::All)
    }
}

/// The client-facing model offered only by the OpenAI-protocol provider.
const MODEL: &str = "bench/model";
/// The client-facing model offered only by the Anthropic-protocol provider.
const CLAUDE_MODEL: &str = "bench/claude";
/// The client-facing model offered only by the Responses-protocol provider.
const RESPONSES_MODEL: &str = "bench/responses";
/// The client-facing model offered only by the Gemini-protocol provider. Without a `/`, unlike the
/// others: the direct baseline posts it to the fake's Gemini paths, which (like Google's) take
/// none in a model id.
const GEMINI_MODEL: &str = "bench-gemini";
/// The client-facing embeddings model, offered by the OpenAI-protocol provider.
const EMBED_MODEL: &str = "bench/embed";
/// Components per vector of the embeddings rows (OpenAI's `text-embedding-3-small`).
const EMBED_DIMENSIONS: u64 = 1536;
/// The `anthropic-version` every Anthropic-shaped request carries.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Longest a single request may take before it counts as an error and its connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the monitor samples RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Start-up waits (processes, route table, key).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the bench waits for the ledger to bill every request Keyplane served.
const LEDGER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the bench keeps reading the ledger once it holds every answered request, to catch a
/// request billed twice (the data plane reports usage about once a second).
const LEDGER_RECHECK: Duration = Duration::from_secs(3);

fn main() {
    let args = Args::parse();
    if let Some(upstream) = args.baseline_proxy {
        baseline::run(upstream);
        return;
    }
    let bin_dir = keyplane_testkit::process::bin_dir();
    let missing: Vec<&str> = [
        "keyplane-fake-upstream",
        "keyplane-control",
        "keyplane-dataplane",
        "keyplanectl",
    ]
    .into_iter()
    .filter(|name| !bin_dir.join(name).exists())
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "keyplane-bench: {} not found in {}.\nBuild every binary first: `cargo build --release --bins`, then run \
             `./target/release/keyplane-bench` (or set KEYPLANE_BIN_DIR).",
            missing.join(", "),
            bin_dir.display()
        );
        std::process::exit(2);
    }
    // nginx is the reference row beside the bare proxy; `--only cross` and `responses` run
    // neither.
    let nginx_bin = if !args.only.has_references() {
        None
    } else {
        match nginx::find(&args.nginx) {
            Some(path) => Some(path),
            None => {
                eprintln!(
                    "keyplane-bench: nginx ({}) not found on PATH or in /usr/sbin: install Debian's \
                     nginx-light (`apt-get install -y nginx-light`) or pass --nginx PATH",
                    args.nginx
                );
                std::process::exit(2);
            }
        }
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "keyplane-bench: warning: this is a debug build; figures are only meaningful from `--release`"
        );
    }
    bench(&args, &bin_dir, nginx_bin.as_deref());
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A child process this bench started; SIGTERM (then SIGKILL after 5 s) on drop.
struct ChildProcess {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl ChildProcess {
    /// Spawns `cmd` and waits for the stdout line `PREFIX ADDR`. Stdin stays a pipe we hold, so
    /// a child that watches it (the baseline proxy) exits if this process dies without dropping.
    fn spawn(name: &'static str, mut cmd: Command, prefix: &'static str) -> ChildProcess {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the address line so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix(prefix) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(SETUP_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not print `{prefix}ADDR` within {SETUP_TIMEOUT:?}");
        };
        ChildProcess {
            name,
            child,
            addr: addr
                .parse()
                .unwrap_or_else(|e| panic!("{name} printed a bad address {addr:?}: {e}")),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the exit status if the process has exited (a benchmark of a dead target is
    /// meaningless, and the status, e.g. a signal, tells who ended it).
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} (pid {}) exited during the benchmark: {status}",
                self.name,
                self.child.id()
            );
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "keyplane-bench: {} did not exit within 5 s of SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Configures the control plane: providers at the same fake (it serves every protocol on one
/// port), `bench` speaking OpenAI chat (`http://ADDR/v1`) and `bench-anthropic` speaking Anthropic
/// (`http://ADDR`), with `responses` also `bench-responses` speaking the Responses API
/// (`http://ADDR/v1`); a credential each; the model [`MODEL`] offered only by the first,
/// [`CLAUDE_MODEL`] only by the second and [`RESPONSES_MODEL`] only by the third; and a client key
/// (returned).
fn configure(cp: &ControlPlane, fake: SocketAddr, responses: bool, gemini: bool) -> String {
    let mut providers = vec![
        (
            "bench",
            "openai",
            format!("http://{fake}/v1"),
            MODEL,
            "bench-model",
        ),
        (
            "bench-anthropic",
            "anthropic",
            format!("http://{fake}"),
            CLAUDE_MODEL,
            "bench-claude",
        ),
    ];
    if responses {
        providers.push((
            "bench-responses",
            "openai-responses",
            format!("http://{fake}/v1"),
            RESPONSES_MODEL,
            "bench-responses",
        ));
    }
    if gemini {
        providers.push((
            "bench-gemini",
            "gemini",
            format!("http://{fake}"),
            GEMINI_MODEL,
            "bench-gemini",
        ));
    }
    // Embeddings from the OpenAI provider (its `/v1/embeddings`).
    let embed = ("bench", "", String::new(), EMBED_MODEL, "bench-embed");
    for (name, protocol, base_url, model, upstream_model) in providers.iter().chain([&embed]) {
        if !protocol.is_empty() {
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
                &["credential", "add", name, "--label", name],
                Some(&format!("sk-{name}\n")),
                &cp.admin_token,
            )
            .ok();
        }
        cp.ctl(&[
            "model",
            "set",
            model,
            "--provider",
            name,
            "--upstream-model",
            upstream_model,
            "--input",
            "1",
            "--output",
            "2",
        ])
        .ok();
    }
    cp.ctl(&["--json", "key", "create", "bench"]).ok().json()["key"]
        .as_str()
        .expect("`key create --json` prints a key")
        .to_string()
}

/// Requests in the control plane's ledger, over every key and model.
fn ledger_requests(cp: &ControlPlane) -> u64 {
    let out = cp.ctl(&["--json", "usage"]);
    if out.code != 0 {
        return 0;
    }
    out.json().as_array().map_or(0, |rows| {
        rows.iter().filter_map(|r| r["requests"].as_u64()).sum()
    })
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// A wire protocol, of a client request or of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
    /// OpenAI embeddings (`POST /v1/embeddings`); served by the OpenAI provider.
    Embeddings,
    /// Gemini (`POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`).
    Gemini,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::OpenAi => "OpenAI",
            Api::Anthropic => "Anthropic",
            Api::Responses => "Responses",
            Api::Embeddings => "Embeddings",
            Api::Gemini => "Gemini",
        }
    }

    /// The client-facing model offered only by the provider speaking this protocol.
    fn model(self) -> &'static str {
        match self {
            Api::OpenAi => MODEL,
            Api::Anthropic => CLAUDE_MODEL,
            Api::Responses => RESPONSES_MODEL,
            Api::Embeddings => EMBED_MODEL,
            Api::Gemini => GEMINI_MODEL,
        }
    }

    /// The path (and query) a client of this protocol posts to: Gemini's names the model and
    /// whether it streams, as Gemini CLI and google-genai send it.
    fn path(self, model: &str, stream: bool) -> String {
        match self {
            Api::OpenAi => "/v1/chat/completions".to_string(),
            Api::Anthropic => "/v1/messages".to_string(),
            Api::Responses => "/v1/responses".to_string(),
            Api::Embeddings => "/v1/embeddings".to_string(),
            Api::Gemini if stream => {
                format!("/v1beta/models/{model}:streamGenerateContent?alt=sse")
            }
            Api::Gemini => format!("/v1beta/models/{model}:generateContent"),
        }
    }
}

/// What the load generator sends: a request of protocol `client` for the model whose only
/// provider speaks `upstream` (for the direct and bare-proxy targets, `upstream == client`: the
/// fake answers in the protocol of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Workload {
    client: Api,
    upstream: Api,
    stream: bool,
}

impl Workload {
    const fn new(client: Api, upstream: Api, stream: bool) -> Workload {
        Workload {
            client,
            upstream,
            stream,
        }
    }

    fn label(self, chunks: u64) -> String {
        if self.client == Api::Embeddings {
            format!("embeddings (1 input, {EMBED_DIMENSIONS} dims, base64)")
        } else if self.stream {
            format!("stream ({chunks} chunks)")
        } else {
            "chat (non-stream)".to_string()
        }
    }

    /// `client → upstream`.
    fn route(self) -> String {
        format!("{} → {}", self.client.name(), self.upstream.name())
    }

    fn is_translated(self) -> bool {
        self.client != self.upstream
    }

    /// The same client request against the same-protocol upstream: the reference a translated
    /// workload's cost is measured against (itself when not translated).
    fn same_protocol(self) -> Workload {
        Workload::new(self.client, self.client, self.stream)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Direct,
    Bare,
    /// nginx (`nginx-light`) as a reverse proxy with `proxy_buffering off`: the reference row.
    Nginx,
    Keyplane,
    /// Keyplane with a client key that has every limit set (budgets, RPM, TPM, concurrency,
    /// model globs, expiry), all far above what the bench sends: the hot-path cost of limits.
    KeyplaneLimited,
}

impl TargetKind {
    fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct (fake upstream)",
            TargetKind::Bare => "bare proxy",
            TargetKind::Nginx => "nginx",
            TargetKind::Keyplane => "Keyplane data plane",
            TargetKind::KeyplaneLimited => "Keyplane, key with every limit",
        }
    }
}

struct Target {
    kind: TargetKind,
    addr: SocketAddr,
}

/// The processes whose CPU and memory the monitor follows, in report column order. Each entry
/// is a group of pids whose figures add up (nginx: its master and workers; the others: one).
struct Watched {
    names: Vec<&'static str>,
    pids: Vec<Vec<u32>>,
    /// nginx's error log, printed when a run through nginx fails.
    nginx_error_log: Option<std::path::PathBuf>,
}

impl Watched {
    /// `name pid state` of each watched process (`gone` once it exited and was reaped, `Z` while
    /// it is dead but not reaped), to tell a failing target from a killed one.
    fn states(&self) -> String {
        self.names
            .iter()
            .zip(&self.pids)
            .flat_map(|(name, pids)| pids.iter().map(move |pid| (name, pid)))
            .map(|(name, pid)| {
                let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = &s[s.rfind(')')? + 1..];
                        rest.split_whitespace().next().map(str::to_string)
                    })
                    .unwrap_or_else(|| "gone".to_string());
                format!("{name} {pid} {state}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one (target, workload) run measured.
struct RunResult {
    target: TargetKind,
    workload: Workload,
    /// Successful requests completed inside the measured window.
    requests: u64,
    /// Failed requests (non-200, transport error, timeout) completed inside the window.
    errors: u64,
    /// Successful requests of the whole run, warm-up and the sanity request included.
    all_ok: u64,
    measured: Duration,
    /// Sorted, microseconds, successful requests only.
    latency_us: Vec<u32>,
    /// Sorted, microseconds, to the first body chunk; streams only.
    ttfb_us: Vec<u32>,
    /// SSE events in one streamed response as the client received it (counted on the sanity
    /// request); streams only.
    events: Option<usize>,
    /// CPU seconds of each watched process during the measured window.
    cpu_secs: Vec<f64>,
    /// Largest sampled VmRSS of each watched process during the whole run (warm-up included), kB.
    peak_rss_kb: Vec<u64>,
}

impl RunResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.measured.as_secs_f64()
    }
}

/// Per-worker tallies, merged after the run.
#[derive(Default)]
struct WorkerStats {
    requests: u64,
    /// Successful requests of the whole run, warm-up included (what the ledger should bill).
    all_ok: u64,
    errors: u64,
    latency_us: Vec<u32>,
    ttfb_us: Vec<u32>,
}

/// The request every target gets for a workload: the same bytes everywhere (the fake and the
/// bare proxy ignore the key; the data plane checks it). OpenAI chat and Responses requests carry
/// `Authorization: Bearer`; Anthropic ones `x-api-key`, `anthropic-version` and `max_tokens`.
/// Responses requests have the official SDK's shape for one user turn (`input` as a list with one
/// message, `max_output_tokens`).
struct RequestSpec {
    addr: SocketAddr,
    api: Api,
    uri: Uri,
    host: HeaderValue,
    auth: HeaderValue,
    body: Bytes,
}

impl RequestSpec {
    fn new(addr: SocketAddr, key: &str, workload: Workload, chunks: u64) -> RequestSpec {
        let model = workload.upstream.model();
        let (body, auth) = match workload.client {
            Api::OpenAi => (
                serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "Say hello"}],
                    "stream": workload.stream,
                }),
                format!("Bearer {key}"),
            ),
            Api::Anthropic => (
                serde_json::json!({
                    "model": model,
                    // Above the content length, so the fake never cuts the answer short.
                    "max_tokens": chunks.max(1_024),
                    "messages": [{"role": "user", "content": "Say hello"}],
                    "stream": workload.stream,
                }),
                key.to_string(),
            ),
            Api::Responses => (
                serde_json::json!({
                    "model": model,
                    "input": [{"role": "user", "content": "Say hello"}],
                    // Above the content length, so the fake never ends the answer `incomplete`.
                    "max_output_tokens": chunks.max(1_024),
                    "stream": workload.stream,
                }),
                format!("Bearer {key}"),
            ),
            // What the OpenAI SDK's `embeddings.create(model=…, input=…, dimensions=…)` sends.
            Api::Embeddings => (
                serde_json::json!({
                    "model": model,
                    "input": "Say hello",
                    "encoding_format": "base64",
                    "dimensions": EMBED_DIMENSIONS,
                }),
                format!("Bearer {key}"),
            ),
            Api::Gemini => (
                serde_json::json!({
                    "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
                    // Above the content length, so the fake never ends the answer at MAX_TOKENS.
                    "generationConfig": {"maxOutputTokens": chunks.max(1_024)},
                }),
                key.to_string(),
            ),
        };
        RequestSpec {
            addr,
            api: workload.client,
            uri: Uri::try_from(workload.client.path(model, workload.stream)).unwrap(),
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
            auth: HeaderValue::from_str(&auth).unwrap(),
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self.api {
            Api::OpenAi | Api::Responses | Api::Embeddings => {
                h.insert(AUTHORIZATION, self.auth.clone());
            }
            Api::Gemini => {
                h.insert("x-goog-api-key", self.auth.clone());
            }
            Api::Anthropic => {
                h.insert("x-api-key", self.auth.clone());
                h.insert(
                    "anthropic-version",
                    HeaderValue::from_static(ANTHROPIC_VERSION),
                );
            }
        }
        req
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens one HTTP/1.1 keep-alive connection; its driver runs as a task.
async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One exchange's outcome: the status, when the first body byte arrived, the body.
struct Exchange {
    status: StatusCode,
    first_byte: Option<Instant>,
    body: Vec<u8>,
}

/// Sends one request and reads the body frame by frame; `keep_body` collects it (for checks).
async fn exchange(sender: &mut Sender, spec: &RequestSpec, keep_body: bool) -> Option<Exchange> {
    sender.ready().await.ok()?;
    let resp = sender.send_request(spec.request()).await.ok()?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut first_byte = None;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            if first_byte.is_none() && !data.is_empty() {
                first_byte = Some(Instant::now());
            }
            if keep_body {
                kept.extend_from_slice(data);
            }
        }
    }
    Some(Exchange {
        status,
        first_byte,
        body: kept,
    })
}

/// One connection sending back to back until `end`; records requests completed in
/// `[measure_start, end)`.
async fn worker(spec: Arc<RequestSpec>, measure_start: Instant, end: Instant) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut sender: Option<Sender> = None;
    while Instant::now() < end {
        let conn = match sender.as_mut() {
            Some(s) => s,
            None => match connect(spec.addr).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    if Instant::now() >= measure_start {
                        stats.errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, exchange(conn, &spec, false)).await;
        let done = Instant::now();
        let in_window = done >= measure_start && done < end;
        match outcome {
            Ok(Some(ex)) if ex.status == StatusCode::OK => {
                stats.all_ok += 1;
                if in_window {
                    stats.requests += 1;
                    stats.latency_us.push(micros(done - started));
                    if let Some(first) = ex.first_byte {
                        stats.ttfb_us.push(micros(first - started));
                    }
                }
            }
            Ok(Some(_)) => {
                if in_window {
                    stats.errors += 1;
                }
            }
            Ok(None) | Err(_) => {
                if in_window {
                    stats.errors += 1;
                }
                sender = None;
            }
        }
    }
    stats
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Sends one request and checks the answer is a real completion in the client's protocol, so a
/// misconfigured target fails loudly instead of benchmarking error pages. Returns the number of
/// SSE events of a stream.
fn sanity_check(
    rt: &tokio::runtime::Runtime,
    spec: &RequestSpec,
    target: &Target,
    workload: Workload,
    dp: &DataPlane,
    watched: &Watched,
) -> Option<usize> {
    let result = rt.block_on(async {
        let mut sender = connect(spec.addr).await.ok()?;
        tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, spec, true))
            .await
            .ok()
            .flatten()
    });
    let fail = |why: String| -> ! {
        let log = match (target.kind, &watched.nginx_error_log) {
            (TargetKind::Keyplane | TargetKind::KeyplaneLimited, _) => {
                format!("\ndata plane log:\n{}", tail(&dp.logs(), 4_000))
            }
            (TargetKind::Nginx, Some(path)) => format!(
                "\nnginx error log:\n{}",
                tail(&std::fs::read_to_string(path).unwrap_or_default(), 4_000)
            ),
            _ => String::new(),
        };
        panic!(
            "{} / {} / {}: sanity request failed: {why}\nprocesses: {}{log}",
            target.kind.label(),
            workload.route(),
            workload.label(0),
            watched.states()
        );
    };
    let Some(ex) = result else {
        fail("no response".to_string())
    };
    let text = String::from_utf8_lossy(&ex.body);
    if ex.status != StatusCode::OK {
        fail(format!("status {}: {}", ex.status, tail(&text, 1_000)));
    }
    let content = |v: &serde_json::Value| -> Option<usize> {
        match workload.client {
            Api::OpenAi => v["choices"][0]["message"]["content"].as_str().map(str::len),
            Api::Anthropic => v["content"][0]["text"].as_str().map(str::len),
            // The text is in the `message` item of `output` (a reasoning item may come first).
            Api::Responses => (v["status"] == "completed")
                .then(|| v["output"].as_array())
                .flatten()?
                .iter()
                .find(|item| item["type"] == "message")?["content"][0]["text"]
                .as_str()
                .map(str::len),
            // A whole vector: 4 bytes a component, base64.
            Api::Embeddings => v["data"][0]["embedding"]
                .as_str()
                .filter(|b64| b64.len() as u64 == (EMBED_DIMENSIONS * 4).div_ceil(3) * 4)
                .map(str::len),
            Api::Gemini => (v["candidates"][0]["finishReason"] == "STOP")
                .then(|| v["candidates"][0]["content"]["parts"][0]["text"].as_str())
                .flatten()
                .map(str::len),
        }
    };
    let ok = if workload.stream {
        let ended = match workload.client {
            Api::OpenAi => text.contains("data: [DONE]"),
            Api::Anthropic => text.contains("event: message_stop"),
            // No `[DONE]`: the last event is the terminal one, and it must be the success.
            Api::Responses => last_sse_event(&text) == Some("response.completed"),
            Api::Embeddings => false,
            // No end marker: the last chunk carries the finish reason.
            Api::Gemini => text.contains("\"finishReason\":\"STOP\""),
        };
        ended && text.contains("word0")
    } else {
        serde_json::from_slice::<serde_json::Value>(&ex.body)
            .ok()
            .and_then(|v| content(&v))
            .is_some_and(|len| len > 0)
    };
    if !ok {
        fail(format!("unexpected body: {}", tail(&text, 1_000)));
    }
    workload.stream.then(|| sse_events(&text))
}

/// The `event:` name of the last SSE event in a body.
fn last_sse_event(text: &str) -> Option<&str> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
}

/// SSE events in a body: blank-line-separated blocks with at least one `data:` line.
fn sse_events(text: &str) -> usize {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
        .count()
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Drives `target` with `workload` for warm-up plus the measured duration.
fn run(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    target: &Target,
    workload: Workload,
    key: &str,
    watched: &Watched,
    dp: &DataPlane,
) -> RunResult {
    let spec = Arc::new(RequestSpec::new(target.addr, key, workload, args.chunks));
    let events = sanity_check(rt, &spec, target, workload, dp, watched);
    let measured = Duration::from_secs(args.duration_secs);
    let start = Instant::now();
    let measure_start = start + Duration::from_secs(args.warmup_secs);
    let end = measure_start + measured;
    let monitor = monitor::spawn(watched.pids.clone(), measure_start, end);
    let stats: Vec<WorkerStats> = rt.block_on(async {
        let workers: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(worker(Arc::clone(&spec), measure_start, end)))
            .collect();
        let mut out = Vec::with_capacity(workers.len());
        for w in workers {
            out.push(w.await.expect("load generator worker"));
        }
        out
    });
    let usage = monitor.join().expect("monitor thread");
    let mut result = RunResult {
        target: target.kind,
        workload,
        requests: 0,
        errors: 0,
        // The sanity request.
        all_ok: 1,
        measured,
        latency_us: Vec::new(),
        ttfb_us: Vec::new(),
        events,
        cpu_secs: usage.cpu_secs,
        peak_rss_kb: usage.peak_rss_kb,
    };
    for s in stats {
        result.requests += s.requests;
        result.errors += s.errors;
        result.all_ok += s.all_ok;
        result.latency_us.extend(s.latency_us);
        result.ttfb_us.extend(s.ttfb_us);
    }
    result.latency_us.sort_unstable();
    result.ttfb_us.sort_unstable();
    if !workload.stream {
        // For a non-stream answer the first byte is the whole answer; not reported.
        result.ttfb_us.clear();
    }
    eprintln!(
        "keyplane-bench: {:<22} {:<22} {:<20} {:>8.0} req/s  p50 {}  p99 {}  errors {}",
        target.kind.label(),
        workload.route(),
        workload.label(args.chunks),
        result.rps(),
        fmt_ms(percentile(&result.latency_us, 0.50)),
        fmt_ms(percentile(&result.latency_us, 0.99)),
        result.errors
    );
    if result.errors > 0 {
        eprintln!("keyplane-bench: processes: {}", watched.states());
    }
    result
}

/// The (target, client protocol, upstream protocol) triples `--only` selects, in run order; each
/// runs non-stream then stream. A translated route runs right after its same-protocol reference,
/// so the pair sees the same machine conditions as nearly as possible.
fn run_plan(only: Only) -> Vec<(TargetKind, Api, Api)> {
    use Api::{Anthropic, Embeddings, Gemini, OpenAi, Responses};
    let openai = only.has_references();
    let cross = matches!(only, Only::Cross | Only::All);
    let responses = only.has_responses();
    let gemini = only.has_gemini();
    if only == Only::Embeddings {
        return vec![
            (TargetKind::Direct, Embeddings, Embeddings),
            (TargetKind::Keyplane, Embeddings, Embeddings),
        ];
    }
    let mut plan = vec![(TargetKind::Direct, OpenAi, OpenAi)];
    if cross || responses {
        plan.push((TargetKind::Direct, Anthropic, Anthropic));
    }
    if responses {
        plan.push((TargetKind::Direct, Responses, Responses));
    }
    if gemini {
        plan.push((TargetKind::Direct, Gemini, Gemini));
    }
    if openai {
        plan.push((TargetKind::Bare, OpenAi, OpenAi));
        plan.push((TargetKind::Nginx, OpenAi, OpenAi));
    }
    plan.push((TargetKind::Keyplane, OpenAi, OpenAi));
    if openai {
        plan.push((TargetKind::KeyplaneLimited, OpenAi, OpenAi));
    }
    if cross {
        plan.push((TargetKind::Keyplane, OpenAi, Anthropic));
    }
    if responses {
        plan.push((TargetKind::Keyplane, OpenAi, Responses));
    }
    if cross || responses {
        plan.push((TargetKind::Keyplane, Anthropic, Anthropic));
    }
    if cross {
        plan.push((TargetKind::Keyplane, Anthropic, OpenAi));
    }
    if responses {
        plan.extend([
            (TargetKind::Keyplane, Anthropic, Responses),
            (TargetKind::Keyplane, Responses, Responses),
            (TargetKind::Keyplane, Responses, OpenAi),
            (TargetKind::Keyplane, Responses, Anthropic),
        ]);
    }
    if gemini {
        plan.extend([
            (TargetKind::Keyplane, OpenAi, Gemini),
            (TargetKind::Keyplane, Gemini, Gemini),
            (TargetKind::Keyplane, Gemini, OpenAi),
        ]);
    }
    if only.has_embeddings() {
        plan.extend([
            (TargetKind::Direct, Embeddings, Embeddings),
            (TargetKind::Keyplane, Embeddings, Embeddings),
        ]);
    }
    plan
}

fn bench(args: &Args, bin_dir: &Path, nginx_bin: Option<&Path>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string());

    eprintln!(
        "keyplane-bench: starting the fake upstream, control plane, data plane, bare proxy{}",
        if nginx_bin.is_some() { ", nginx" } else { "" }
    );
    let mut fake_cmd = Command::new(bin_dir.join("keyplane-fake-upstream"));
    fake_cmd
        .args(["--listen", "127.0.0.1:0", "--name", "bench", "--chunks"])
        .arg(args.chunks.to_string());
    let mut fake = ChildProcess::spawn(
        "keyplane-fake-upstream",
        fake_cmd,
        "fake-upstream listening on ",
    );

    let mut bare_cmd = Command::new(std::env::current_exe().expect("current exe"));
    bare_cmd.arg("--baseline-proxy").arg(fake.addr.to_string());
    let mut bare = ChildProcess::spawn("baseline proxy", bare_cmd, "baseline-proxy listening on ");
    // As many nginx workers as the data plane's runtime has worker threads (tokio's default: one
    // per core), which is also what the bare proxy's runtime gets.
    let mut nginx = nginx_bin.map(|bin| {
        (
            nginx::Nginx::start(bin, fake.addr, cores, args.connections),
            nginx::version(bin),
        )
    });

    let cp = ControlPlane::start();
    let key = configure(
        &cp,
        fake.addr,
        args.only.has_responses(),
        args.only.has_gemini(),
    );
    // Every limit set, none of them reached by the bench's load.
    let limited_key = cp
        .ctl(&[
            "--json",
            "key",
            "create",
            "bench-limited",
            "--budget-usd",
            "1000000",
            "--budget-tokens",
            "1000000000000",
            "--period",
            "monthly",
            "--rpm",
            "1000000000",
            "--tpm",
            "1000000000000",
            "--concurrency",
            "100000",
            "--models",
            "bench/*",
            "--expires",
            "2099-01-01T00:00:00Z",
        ])
        .ok()
        .json()["key"]
        .as_str()
        .expect("`key create --json` prints a key")
        .to_string();
    let dp = DataPlane::start(&cp, "bench", &[]);
    assert!(
        dp.wait_ready(SETUP_TIMEOUT),
        "the data plane never became ready; log:\n{}",
        dp.logs()
    );
    assert!(
        wait_until(SETUP_TIMEOUT, || {
            HttpRequest::get("/v1/models")
                .bearer(&key)
                .send(dp.addr, Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200)
        }),
        "the data plane never accepted the client key; log:\n{}",
        dp.logs()
    );
    let dp_pid = dp.pid().expect("data plane pid");
    let cp_pid = cp.pid().expect("control plane pid");

    let mut watched = Watched {
        names: vec![
            "load generator",
            "fake upstream",
            "bare proxy",
            "data plane",
            "control plane",
        ],
        pids: vec![
            vec![std::process::id()],
            vec![fake.pid()],
            vec![bare.pid()],
            vec![dp_pid],
            vec![cp_pid],
        ],
        nginx_error_log: None,
    };
    // Last, so the other columns keep their places (`report::NGINX`).
    if let Some((n, _)) = &nginx {
        watched.names.push("nginx");
        watched.pids.push(n.pids());
        watched.nginx_error_log = Some(n.error_log_path());
    }
    let idle_rss_kb: Vec<u64> = watched
        .pids
        .iter()
        .map(|group| monitor::group_kb(group, "VmRSS:"))
        .collect();

    // The load generator's own runtime: the proxies are separate processes, so nothing else
    // runs on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("load generator runtime");

    let plan = run_plan(args.only);
    let per_run = args.warmup_secs + args.duration_secs;
    eprintln!(
        "keyplane-bench: {} runs of {per_run} s each ({} connections, --only {})",
        plan.iter()
            .map(|&(_, client, _)| if client == Api::Embeddings { 1 } else { 2 })
            .sum::<usize>(),
        args.connections,
        args.only.flag()
    );
    let mut results = Vec::new();
    for (kind, client, upstream) in plan {
        let target = Target {
            kind,
            addr: match kind {
                TargetKind::Direct => fake.addr,
                TargetKind::Bare => bare.addr,
                TargetKind::Nginx => match &nginx {
                    Some((n, _)) => n.addr,
                    None => unreachable!("the plan has nginx rows only when nginx runs"),
                },
                TargetKind::Keyplane | TargetKind::KeyplaneLimited => dp.addr,
            },
        };
        for stream in [false, true] {
            if stream && client == Api::Embeddings {
                continue;
            }
            let workload = Workload::new(client, upstream, stream);
            let key = if kind == TargetKind::KeyplaneLimited {
                &limited_key
            } else {
                &key
            };
            results.push(run(&rt, args, &target, workload, key, &watched, &dp));
            fake.assert_alive();
            bare.assert_alive();
            if let Some((n, _)) = &mut nginx {
                n.assert_alive();
            }
            // Let sockets in TIME_WAIT and background work (usage reporting) settle.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let mut pairs = Vec::new();
    if args.only.has_references() && args.pairs > 0 {
        eprintln!(
            "keyplane-bench: {} alternating rounds of runs per workload (bare proxy, nginx, Keyplane)",
            args.pairs
        );
        let mut round = vec![(TargetKind::Bare, bare.addr)];
        if let Some((n, _)) = &nginx {
            round.push((TargetKind::Nginx, n.addr));
        }
        round.push((TargetKind::Keyplane, dp.addr));
        for _ in 0..args.pairs {
            for stream in [false, true] {
                let workload = Workload::new(Api::OpenAi, Api::OpenAi, stream);
                for &(kind, addr) in &round {
                    let target = Target { kind, addr };
                    pairs.push(run(&rt, args, &target, workload, &key, &watched, &dp));
                    fake.assert_alive();
                    bare.assert_alive();
                    if let Some((n, _)) = &mut nginx {
                        n.assert_alive();
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
    drop(rt);

    // Every request Keyplane served should reach the ledger (the data plane reports usage in
    // the background, about once a second).
    let served: u64 = results
        .iter()
        .chain(&pairs)
        .filter(|r| matches!(r.target, TargetKind::Keyplane | TargetKind::KeyplaneLimited))
        .map(|r| r.all_ok)
        .sum();
    let waited = Instant::now();
    let mut billed = 0;
    wait_until(LEDGER_TIMEOUT, || {
        billed = ledger_requests(&cp);
        billed >= served
    });
    let waited = waited.elapsed();
    // Then watch a few more usage reports: a request billed twice shows up as more records than
    // answers only once its second record arrives.
    wait_until(LEDGER_RECHECK, || {
        billed = ledger_requests(&cp);
        billed > served
    });
    let ledger = report::Ledger {
        served,
        billed,
        waited,
    };
    if results.iter().any(|r| r.errors > 0) {
        eprintln!(
            "keyplane-bench: some requests failed; the data plane's log ends with:\n{}",
            tail(&dp.logs(), 4_000)
        );
    }

    let hwm_kb: Vec<u64> = watched
        .pids
        .iter()
        .map(|group| monitor::group_kb(group, "VmHWM:"))
        .collect();
    let end_rss_kb: Vec<u64> = watched
        .pids
        .iter()
        .map(|group| monitor::group_kb(group, "VmRSS:"))
        .collect();
    let report = report::render(&report::Input {
        args,
        cores,
        loadavg: &loadavg,
        results: &results,
        pairs: &pairs,
        watched: &watched,
        idle_rss_kb: &idle_rss_kb,
        hwm_kb: &hwm_kb,
        end_rss_kb: &end_rss_kb,
        ledger: &ledger,
        nginx: nginx.as_ref().map(|(n, version)| report::NginxInfo {
            version: version.as_str(),
            workers: n.worker_count(),
        }),
    });
    print!("{report}");
    std::io::stdout().flush().expect("flush stdout");

    // Stop in dependency order: the data plane (it reports usage to the control plane), the
    // control plane, then the proxies and the upstream.
    drop(dp);
    drop(cp);
    drop(nginx);
    drop(bare);
    drop(fake);
}

// ---------------------------------------------------------------------------------------------
// CPU and memory of the processes
// ---------------------------------------------------------------------------------------------

mod monitor {
    use std::thread::JoinHandle;
    use std::time::Instant;

    pub struct Usage {
        /// CPU seconds (user + system) per pid over the measured window, then one more entry:
        /// the whole machine's busy CPU seconds (all cores, `/proc/stat`).
        pub cpu_secs: Vec<f64>,
        /// Largest VmRSS sampled per pid, kB.
        pub peak_rss_kb: Vec<u64>,
    }

    /// Samples each group of `pids` every 50 ms until `end`: peak VmRSS (summed over the group),
    /// and CPU time between `measure_start` and `end`.
    pub fn spawn(pids: Vec<Vec<u32>>, measure_start: Instant, end: Instant) -> JoinHandle<Usage> {
        std::thread::spawn(move || {
            let tick = clock_ticks_per_sec();
            let mut peak = vec![0u64; pids.len()];
            let mut cpu_start: Option<Vec<u64>> = None;
            loop {
                let now = Instant::now();
                for (i, group) in pids.iter().enumerate() {
                    peak[i] = peak[i].max(group_kb(group, "VmRSS:"));
                }
                if cpu_start.is_none() && now >= measure_start {
                    cpu_start = Some(cpu_snapshot(&pids));
                }
                if now >= end {
                    let after = cpu_snapshot(&pids);
                    let before = cpu_start.unwrap_or_else(|| after.clone());
                    let cpu_secs = after
                        .iter()
                        .zip(before)
                        .map(|(&a, b)| a.saturating_sub(b) as f64 / tick)
                        .collect();
                    return Usage {
                        cpu_secs,
                        peak_rss_kb: peak,
                    };
                }
                let next = if cpu_start.is_none() {
                    measure_start
                } else {
                    end
                };
                std::thread::sleep(super::SAMPLE_EVERY.min(next.saturating_duration_since(now)));
            }
        })
    }

    /// CPU ticks of each group of pids (a gone pid counts 0), then the machine's busy ticks.
    fn cpu_snapshot(pids: &[Vec<u32>]) -> Vec<u64> {
        let mut ticks: Vec<u64> = pids
            .iter()
            .map(|group| group.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).sum())
            .collect();
        ticks.push(machine_busy_ticks().unwrap_or(0));
        ticks
    }

    /// Busy ticks of all cores: the `cpu` line of `/proc/stat` minus idle and iowait (guest time
    /// is already inside user and nice).
    fn machine_busy_ticks() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some(total - idle)
    }

    /// A `kB` field of `/proc/PID/status` summed over a group of pids (0 for a gone pid). Pages
    /// the processes share (code, shared memory) count once per process: an upper bound.
    pub fn group_kb(pids: &[u32], field: &str) -> u64 {
        pids.iter().map(|&p| status_kb(p, field).unwrap_or(0)).sum()
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
    pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// utime + stime of every thread of `pid`, in clock ticks (`/proc/PID/stat` fields 14, 15).
    fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces; the fields after it start at its `)`.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    fn clock_ticks_per_sec() -> f64 {
        #[allow(unsafe_code)]
        // SAFETY: sysconf only reads a configuration value; it has no memory-safety
        // preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 { ticks as f64 } else { 100.0 }
    }
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

mod report {
    use super::{Api, Args, RunResult, TargetKind, Watched, Workload};
    use std::fmt::Write;
    use std::time::Duration;

    pub struct Input<'a> {
        pub args: &'a Args,
        pub cores: usize,
        /// `/proc/loadavg`'s 1, 5 and 15 minute figures when the bench started.
        pub loadavg: &'a str,
        pub results: &'a [RunResult],
        /// The `--pairs` runs: bare proxy, Keyplane, bare proxy, … in run order.
        pub pairs: &'a [RunResult],
        pub watched: &'a Watched,
        pub idle_rss_kb: &'a [u64],
        pub hwm_kb: &'a [u64],
        /// VmRSS once every run is over (and the ledger caught up).
        pub end_rss_kb: &'a [u64],
        pub ledger: &'a Ledger,
        /// Set when nginx ran as the reference proxy.
        pub nginx: Option<NginxInfo<'a>>,
    }

    /// What the report says about the nginx it ran.
    pub struct NginxInfo<'a> {
        /// `nginx -v`, e.g. `nginx/1.22.1`.
        pub version: &'a str,
        pub workers: usize,
    }

    /// Requests Keyplane answered 200 versus requests the control plane's ledger holds.
    pub struct Ledger {
        pub served: u64,
        pub billed: u64,
        pub waited: Duration,
    }

    /// Indexes of the proxies in `Watched` (the order set up in `bench`).
    const BARE: usize = 2;
    const DATAPLANE: usize = 3;
    const NGINX: usize = 5;

    fn find(results: &[RunResult], t: TargetKind, w: Workload) -> Option<&RunResult> {
        results.iter().find(|r| r.target == t && r.workload == w)
    }

    pub fn render(input: &Input<'_>) -> String {
        let a = input.args;
        let results = input.results;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w);
        let _ = writeln!(w, "## End-to-end data plane benchmark ({})", today());
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Command: `cargo build --release --bins && ./target/release/keyplane-bench --connections {} \
             --duration-secs {} --warmup-secs {} --chunks {} --only {}{}`",
            a.connections,
            a.duration_secs,
            a.warmup_secs,
            a.chunks,
            a.only.flag(),
            if a.pairs > 0 {
                format!(" --pairs {}", a.pairs)
            } else {
                String::new()
            }
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "- Machine: {} cores. The load generator, the fake upstream, the proxy under test (and, for \
             Keyplane, the control plane ingesting usage) all share them, so every figure includes CPU \
             contention with the load generator; compare rows with each other, not with other machines. \
             Load average before the run: {} (anything above 0 is other work competing too).",
            input.cores, input.loadavg
        );
        let _ = writeln!(
            w,
            "- Load: {} HTTP/1.1 keep-alive connections, closed loop (each sends its next request as soon \
             as the previous response ends), {} s measured after {} s of warm-up, per target and workload. \
             At saturation latency ≈ connections / throughput, so added latency here includes queueing, \
             not only per-request work.",
            a.connections, a.duration_secs, a.warmup_secs
        );
        let _ = writeln!(
            w,
            "- Requests: an OpenAI client sends `POST /v1/chat/completions` with `Authorization: Bearer`; \
             an Anthropic client sends `POST /v1/messages` with `x-api-key`, `anthropic-version: {}` and \
             `max_tokens: {}`. The route column is client protocol → upstream protocol: the model is `{}` \
             (offered only by an OpenAI-protocol provider) or `{}` (only by an Anthropic-protocol \
             provider); both providers are the same fake upstream process, which serves both protocols on \
             one port. Every target gets the same bytes and headers for a given route; the direct \
             baseline of a row is the fake answering that row's client request shape itself (the model \
             name does not change what it does). Streams are {} content events plus the protocol's \
             framing (OpenAI: role, finish, `[DONE]`, and the usage chunk the data plane asks OpenAI \
             upstreams for; Anthropic: `message_start`, `content_block_start`, `ping`, \
             `content_block_stop`, `message_delta`, `message_stop`). Latency is to the end of the body; \
             TTFB is to the first body chunk.",
            super::ANTHROPIC_VERSION,
            a.chunks.max(1_024),
            super::MODEL,
            super::CLAUDE_MODEL,
            a.chunks
        );
        if a.only.has_responses() {
            let _ = writeln!(
                w,
                "- Responses: a Responses client sends `POST /v1/responses` with `Authorization: \
                 Bearer` and the body the official SDK's `responses.create` sends for one user turn \
                 (`model`, `input: [{{\"role\": \"user\", \"content\": …}}]`, `max_output_tokens: {}`, \
                 `stream`); the model `{}` is offered only by a provider of protocol \
                 `openai-responses` (the same fake, `POST /v1/responses`), whose route from a \
                 Responses client is pass-through. A Responses stream is `response.created`, \
                 `response.in_progress`, the item and part events, one `response.output_text.delta` \
                 per content event, the done events and `response.completed`, with no `[DONE]`; a \
                 stream counts as answered only if its last event is `response.completed`.",
                a.chunks.max(1_024),
                super::RESPONSES_MODEL,
            );
        }
        if a.only.has_gemini() {
            let _ = writeln!(
                w,
                "- Gemini: a Gemini client sends `POST /v1beta/models/{{model}}:generateContent`, or \
                 `:streamGenerateContent?alt=sse` for a stream (as Gemini CLI does), with \
                 `x-goog-api-key` and `contents` with one user turn and \
                 `generationConfig.maxOutputTokens: {}`; the model `{}` is \
                 offered only by a provider of protocol `gemini` (the same fake, Google's paths), \
                 whose route from a Gemini client is pass-through. A Gemini stream is one SSE \
                 `data:` chunk per content event, the last with `finishReason` and \
                 `usageMetadata`, and no end marker.",
                a.chunks.max(1_024),
                super::GEMINI_MODEL,
            );
        }
        if a.only.has_embeddings() {
            let _ = writeln!(
                w,
                "- Embeddings: an OpenAI client sends `POST /v1/embeddings` with `Authorization: \
                 Bearer` and the body the OpenAI SDK's `embeddings.create` sends by default \
                 (`model`, one input, `encoding_format: \"base64\"`), with `dimensions: {}`; the \
                 model `{}` is offered by the OpenAI-protocol provider (the same fake, \
                 `POST /v1/embeddings`), the body passed on with only the model replaced and the \
                 vector relayed as it came; no stream.",
                super::EMBED_DIMENSIONS,
                super::EMBED_MODEL,
            );
        }
        let _ = writeln!(
            w,
            "- Targets: the fake upstream directly (`keyplane-fake-upstream`, multi-thread runtime); a \
             bare reverse proxy in a separate process (this binary, `--baseline-proxy`: hyper 1 auto \
             server + hyper-util legacy pooled client, bodies passed through frame by frame, no parsing, \
             no auth, TCP_NODELAY both sides; OpenAI → OpenAI only); the Keyplane data plane (auth, \
             routing, protocol translation when the route crosses protocols, usage extraction, billing \
             spool, one `info` log line per request to its log file)."
        );
        if let Some(n) = &input.nginx {
            let _ = writeln!(
                w,
                "- Reference: {} (Debian's `nginx-light`) as a reverse proxy, OpenAI → OpenAI only, \
                 started by the bench with a generated config: {} worker processes (as many as the \
                 data plane's runtime has worker threads), `listen … reuseport`, an upstream block \
                 with `keepalive {}` (HTTP/1.1, `Connection: \"\"`), `keepalive_requests 1000000` \
                 both sides, `proxy_buffering off`, `proxy_request_buffering off`, one access log \
                 line per request buffered (`buffer=64k flush=1s`, as the data plane logs one line \
                 per request through a buffered writer). Its CPU and memory are its master's plus \
                 its workers'.",
                n.version,
                n.workers,
                a.connections.max(1)
            );
        }
        let _ = writeln!(w);

        // Main table.
        let _ = writeln!(
            w,
            "| target | route | workload | req/s | p50 | p99 | p99.9 | TTFB p50 | TTFB p99 | proxy CPU per request | errors |"
        );
        let _ = writeln!(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in results {
            let ttfb = |q| {
                if r.ttfb_us.is_empty() {
                    "—".to_string()
                } else {
                    fmt_ms(percentile(&r.ttfb_us, q))
                }
            };
            let proxy_cpu = match r.target {
                TargetKind::Direct => "—".to_string(),
                TargetKind::Bare => cpu_per_request(r, BARE),
                TargetKind::Nginx => cpu_per_request(r, NGINX),
                TargetKind::Keyplane | TargetKind::KeyplaneLimited => cpu_per_request(r, DATAPLANE),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target.label(),
                r.workload.route(),
                r.workload.label(a.chunks),
                group(r.rps().round() as u64),
                fmt_ms(percentile(&r.latency_us, 0.50)),
                fmt_ms(percentile(&r.latency_us, 0.99)),
                fmt_ms(percentile(&r.latency_us, 0.999)),
                ttfb(0.50),
                ttfb(0.99),
                proxy_cpu,
                r.errors
            );
        }
        let _ = writeln!(w);

        // Overhead, the way TensorZero and Helicone publish it.
        let _ = writeln!(
            w,
            "Gateway overhead: added latency = percentile through the proxy − the same percentile direct \
             to the upstream with the same client request shape."
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| workload | route | proxy | added p50 | added p99 | added TTFB p50 | added TTFB p99 | throughput vs direct |"
        );
        let _ = writeln!(w, "|---|---|---|---:|---:|---:|---:|---:|");
        for stream in [false, true] {
            for r in results
                .iter()
                .filter(|r| r.target != TargetKind::Direct && r.workload.stream == stream)
            {
                let Some(direct) = find(results, TargetKind::Direct, r.workload.same_protocol())
                else {
                    continue;
                };
                let added_lat = |q| added(&r.latency_us, &direct.latency_us, q);
                let added_ttfb = |q| {
                    if r.ttfb_us.is_empty() || direct.ttfb_us.is_empty() {
                        "—".to_string()
                    } else {
                        fmt_signed_ms(added(&r.ttfb_us, &direct.ttfb_us, q))
                    }
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
                    r.workload.label(a.chunks),
                    r.workload.route(),
                    r.target.label(),
                    fmt_signed_ms(added_lat(0.50)),
                    fmt_signed_ms(added_lat(0.99)),
                    added_ttfb(0.50),
                    added_ttfb(0.99),
                    100.0 * r.rps() / direct.rps().max(f64::MIN_POSITIVE)
                );
            }
        }
        let _ = writeln!(w);

        // Keyplane against the bare proxy (OpenAI → OpenAI, the only route the bare proxy runs).
        let mut ratios = Vec::new();
        for stream in [false, true] {
            let workload = Workload::new(Api::OpenAi, Api::OpenAi, stream);
            if let (Some(direct), Some(bare), Some(kp)) = (
                find(results, TargetKind::Direct, workload),
                find(results, TargetKind::Bare, workload),
                find(results, TargetKind::Keyplane, workload),
            ) {
                let bare_p99 = added(&bare.latency_us, &direct.latency_us, 0.99);
                let kp_p99 = added(&kp.latency_us, &direct.latency_us, 0.99);
                let p99_ratio = if bare_p99 > 0 {
                    format!("{:.2}×", kp_p99 as f64 / bare_p99 as f64)
                } else {
                    "n/a (bare proxy added ≤ 0)".to_string()
                };
                let rps_ratio = format!("{:.2}×", kp.rps() / bare.rps().max(f64::MIN_POSITIVE));
                ratios.push((workload, p99_ratio, rps_ratio));
            }
        }
        if !ratios.is_empty() {
            let _ = writeln!(
                w,
                "| workload (OpenAI → OpenAI) | Keyplane added p99 / bare proxy added p99 | Keyplane throughput / bare proxy throughput |"
            );
            let _ = writeln!(w, "|---|---:|---:|");
            for (workload, p99, rps) in ratios {
                let _ = writeln!(w, "| {} | {p99} | {rps} |", workload.label(a.chunks));
            }
            let _ = writeln!(w);
        }
        against_nginx(w, input);
        alternating_pairs(w, input, TargetKind::Bare);
        alternating_pairs(w, input, TargetKind::Nginx);

        translation(w, input);

        // Memory.
        let _ = writeln!(
            w,
            "Memory (VmRSS sampled every 50 ms; peak over the runs against that process; VmHWM is the \
             kernel's lifetime high-water mark; the kernel updates both lazily, so they may differ by a \
             few hundred kB; \"after\" is once all runs ended and the ledger caught up):"
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| process | idle RSS | peak RSS under load | VmHWM | RSS after |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for (idx, target) in [
            (BARE, TargetKind::Bare),
            (NGINX, TargetKind::Nginx),
            (DATAPLANE, TargetKind::Keyplane),
        ] {
            let Some(peak) = results
                .iter()
                .chain(input.pairs)
                .filter(|r| r.target == target)
                .map(|r| r.peak_rss_kb[idx])
                .max()
            else {
                continue;
            };
            let name = match (target, &input.nginx) {
                (TargetKind::Nginx, Some(n)) => {
                    format!("nginx (master + {} workers, summed)", n.workers)
                }
                _ => input.watched.names[idx].to_string(),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                name,
                fmt_mib(input.idle_rss_kb[idx]),
                fmt_mib(peak),
                fmt_mib(input.hwm_kb[idx]),
                fmt_mib(input.end_rss_kb[idx])
            );
        }
        let _ = writeln!(w);
        let rss_ratios: Vec<String> = [
            (TargetKind::Bare, BARE, "bare proxy"),
            (TargetKind::Nginx, NGINX, "nginx"),
        ]
        .into_iter()
        .filter_map(|(target, idx, name)| {
            peak_rss_ratio(input, target, idx).map(|r| format!("{r:.2}× {name}'s"))
        })
        .collect();
        if !rss_ratios.is_empty() {
            let _ = writeln!(
                w,
                "Peak RSS under load, Keyplane data plane against the references: {}.",
                rss_ratios.join(", ")
            );
            let _ = writeln!(w);
        }

        // CPU split.
        let _ = writeln!(
            w,
            "CPU during the measured window, in cores busy (of {}); \"rest\" is the machine's busy time \
             outside these processes (kernel softirq work for loopback TCP, and any other load on the \
             machine, which skews every figure above; approximate, as the kernel counts process and \
             machine time at different granularity):",
            input.cores
        );
        let _ = writeln!(w);
        let _ = write!(w, "| target | route | workload |");
        for name in &input.watched.names {
            let _ = write!(w, " {name} |");
        }
        let _ = writeln!(w, " rest | machine total |");
        let _ = write!(w, "|---|---|---|");
        for _ in 0..input.watched.names.len() + 2 {
            let _ = write!(w, "---:|");
        }
        let _ = writeln!(w);
        for r in input.results {
            let secs = r.measured.as_secs_f64();
            let _ = write!(
                w,
                "| {} | {} | {} |",
                r.target.label(),
                r.workload.route(),
                r.workload.label(a.chunks)
            );
            let (machine, procs) = r.cpu_secs.split_last().unwrap_or((&0.0, &[]));
            for cpu in procs {
                let _ = write!(w, " {:.2} |", cpu / secs);
            }
            let _ = writeln!(w, " {:.2} | {:.2} |", rest_cores(r), machine / secs);
        }
        let _ = writeln!(w);
        let busy: Vec<String> = results
            .iter()
            .filter(|r| rest_cores(r) > BUSY_REST)
            .map(|r| {
                format!(
                    "{} {} {} ({:.2})",
                    r.target.label(),
                    r.workload.route(),
                    r.workload.label(a.chunks),
                    rest_cores(r)
                )
            })
            .collect();
        if !busy.is_empty() {
            let _ = writeln!(
                w,
                "Outside load: \"rest\" exceeded {BUSY_REST} cores during {} of {} runs ({}); other \
                 work took CPU from those runs, so their rows (and any difference computed from them) \
                 are skewed. Rerun on a quiet machine to compare them.",
                busy.len(),
                results.len(),
                busy.join("; ")
            );
            let _ = writeln!(w);
        }
        let l = input.ledger;
        let _ = writeln!(
            w,
            "Billing: the control plane's ledger holds {} of the {} requests Keyplane answered 200 \
             (warm-up included){}.",
            group(l.billed),
            group(l.served),
            if l.billed > l.served {
                format!(
                    ": {} more than were answered, so some request was billed twice",
                    group(l.billed - l.served)
                )
            } else if l.billed == l.served {
                format!(", {:.1} s after the last run", l.waited.as_secs_f64())
            } else {
                format!(
                    " after waiting {:.0} s: usage reporting is missing or behind, so these figures \
                     do not include the full cost of billing",
                    l.waited.as_secs_f64()
                )
            }
        );
        let _ = writeln!(w);
        let errors: u64 = input.results.iter().map(|r| r.errors).sum();
        if errors > 0 {
            let _ = writeln!(
                w,
                "{errors} requests failed (non-200, transport error or {} s timeout).",
                super::REQUEST_TIMEOUT.as_secs(),
            );
            let _ = writeln!(w);
        }
        out
    }

    fn cpu_per_request(r: &RunResult, idx: usize) -> String {
        cpu_us(r, idx).map_or_else(|| "—".to_string(), |us| format!("{us:.0} µs"))
    }

    /// "rest" above this many cores busy means other work ran on the machine during the run
    /// (loopback TCP softirq time alone stays around 0.05 on a quiet machine).
    const BUSY_REST: f64 = 0.2;

    /// Cores busy outside the watched processes during the measured window.
    fn rest_cores(r: &RunResult) -> f64 {
        let (machine, procs) = r.cpu_secs.split_last().unwrap_or((&0.0, &[]));
        (machine - procs.iter().sum::<f64>()).max(0.0) / r.measured.as_secs_f64()
    }

    /// CPU microseconds of watched process `idx` per successful request of the window.
    fn cpu_us(r: &RunResult, idx: usize) -> Option<f64> {
        (r.requests > 0).then(|| r.cpu_secs[idx] * 1e6 / r.requests as f64)
    }

    /// The cross-protocol tables: each translated Keyplane route against the same-protocol
    /// Keyplane route of the same client protocol, per request and per stream event.
    fn translation(w: &mut String, input: &Input<'_>) {
        let a = input.args;
        let results = input.results;
        let pairs: Vec<(&RunResult, &RunResult)> = results
            .iter()
            .filter(|r| r.target == TargetKind::Keyplane && r.workload.is_translated())
            .filter_map(|r| {
                find(results, TargetKind::Keyplane, r.workload.same_protocol()).map(|re| (r, re))
            })
            .collect();
        if pairs.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "Cross-protocol translation cost: a translated route through Keyplane minus the \
             same-protocol route with the same client request through Keyplane (e.g. Anthropic → \
             OpenAI against Anthropic → Anthropic, Responses → OpenAI against Responses → Responses; \
             a translated route runs soon after its reference). Both go to the same fake upstream, so the difference is the data plane's \
             request and response translation (plus the fake generating the other protocol, and run \
             to run noise: differences of a few percent are within it). Latency figures are \
             Keyplane's percentile of the translated route − the same percentile of the reference \
             (their shared direct baseline cancels); at saturation they are mostly queueing, so the \
             CPU figures are the better measure of work per request."
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| workload | translated route | reference route | req/s, translated / reference | p50, translated / reference | translation p50 | translation TTFB p50 | data plane CPU per request, translated / reference | translation CPU per request | rest (cores), translated / reference |"
        );
        let _ = writeln!(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for stream in [false, true] {
            for (t, re) in pairs.iter().filter(|(t, _)| t.workload.stream == stream) {
                let ttfb = if t.ttfb_us.is_empty() || re.ttfb_us.is_empty() {
                    "—".to_string()
                } else {
                    fmt_signed_ms(added(&t.ttfb_us, &re.ttfb_us, 0.50))
                };
                let cpu = match (cpu_us(t, DATAPLANE), cpu_us(re, DATAPLANE)) {
                    (Some(ct), Some(cr)) => format!("{:+.1} µs", ct - cr),
                    _ => "—".to_string(),
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} / {} | {} / {} | {} | {} | {} / {} | {} | {:.2} / {:.2} |",
                    t.workload.label(a.chunks),
                    t.workload.route(),
                    re.workload.route(),
                    group(t.rps().round() as u64),
                    group(re.rps().round() as u64),
                    fmt_ms(percentile(&t.latency_us, 0.50)),
                    fmt_ms(percentile(&re.latency_us, 0.50)),
                    fmt_signed_ms(added(&t.latency_us, &re.latency_us, 0.50)),
                    ttfb,
                    cpu_per_request(t, DATAPLANE),
                    cpu_per_request(re, DATAPLANE),
                    cpu,
                    rest_cores(t),
                    rest_cores(re)
                );
            }
        }
        let _ = writeln!(w);

        let streams: Vec<_> = pairs.iter().filter(|(t, _)| t.workload.stream).collect();
        if streams.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "Per stream event: the stream's per-request translation cost above divided by the SSE \
             events the client receives in one translated stream (counted on a sanity request; {} of \
             them carry content). This charges the per-request part of translation (request body, \
             stream set-up) to the events too, so it is an upper bound on the marginal cost of one \
             more event; the last column first subtracts the chat row's translation CPU per request \
             (the per-request part alone).",
            a.chunks
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| translated route | events per stream, translated / reference | translation p50 per event | translation CPU per event | translation CPU per event, per-request part (chat row) removed |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for (t, re) in streams {
            let events = t.events.unwrap_or(0).max(1) as f64;
            let p50 = added(&t.latency_us, &re.latency_us, 0.50) as f64 / events;
            let stream_cpu = cpu_us(t, DATAPLANE)
                .zip(cpu_us(re, DATAPLANE))
                .map(|(ct, cr)| ct - cr);
            let chat_cpu = pairs
                .iter()
                .find(|(tc, _)| {
                    tc.workload
                        == Workload {
                            stream: false,
                            ..t.workload
                        }
                })
                .and_then(|(tc, rc)| cpu_us(tc, DATAPLANE).zip(cpu_us(rc, DATAPLANE)))
                .map(|(ct, cr)| ct - cr);
            let per_event = |us: Option<f64>| {
                us.map_or_else(|| "—".to_string(), |us| format!("{:+.2} µs", us / events))
            };
            let _ = writeln!(
                w,
                "| {} | {} / {} | {:+.1} µs | {} | {} |",
                t.workload.route(),
                t.events.map_or_else(|| "?".to_string(), |n| n.to_string()),
                re.events.map_or_else(|| "?".to_string(), |n| n.to_string()),
                p50,
                per_event(stream_cpu),
                per_event(stream_cpu.zip(chat_cpu).map(|(s, c)| s - c))
            );
        }
        let _ = writeln!(w);
    }

    /// Keyplane's ratios against nginx (and the bare proxy's, to place the two references) from
    /// the main runs, OpenAI → OpenAI; plus the memory ratios.
    fn against_nginx(w: &mut String, input: &Input<'_>) {
        let a = input.args;
        let results = input.results;
        let mut rows = Vec::new();
        for stream in [false, true] {
            let workload = Workload::new(Api::OpenAi, Api::OpenAi, stream);
            let (Some(direct), Some(nginx), Some(kp)) = (
                find(results, TargetKind::Direct, workload),
                find(results, TargetKind::Nginx, workload),
                find(results, TargetKind::Keyplane, workload),
            ) else {
                continue;
            };
            let nginx_p99 = added(&nginx.latency_us, &direct.latency_us, 0.99);
            let p99_ratio = |proxy: &RunResult| {
                if nginx_p99 > 0 {
                    let proxy_p99 = added(&proxy.latency_us, &direct.latency_us, 0.99);
                    format!("{:.2}×", proxy_p99 as f64 / nginx_p99 as f64)
                } else {
                    "n/a (nginx added ≤ 0)".to_string()
                }
            };
            let rps_ratio = |proxy: &RunResult| {
                format!("{:.2}×", proxy.rps() / nginx.rps().max(f64::MIN_POSITIVE))
            };
            // The whole p99, for when nginx adds nothing measurable over direct (it relays a
            // stream in fewer, larger writes than the fake sends it, which can make the client's
            // side cheaper than direct).
            let total_p99 = format!(
                "{:.2}×",
                f64::from(percentile(&kp.latency_us, 0.99))
                    / f64::from(percentile(&nginx.latency_us, 0.99).max(1))
            );
            let bare = find(results, TargetKind::Bare, workload);
            rows.push((
                workload,
                p99_ratio(kp),
                total_p99,
                rps_ratio(kp),
                bare.map_or("—".to_string(), p99_ratio),
                bare.map_or("—".to_string(), rps_ratio),
            ));
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            w,
            "| workload (OpenAI → OpenAI) | Keyplane added p99 / nginx added p99 | Keyplane p99 / nginx p99 | Keyplane throughput / nginx throughput | bare proxy added p99 / nginx added p99 | bare proxy throughput / nginx throughput |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
        for (workload, kp_p99, kp_total_p99, kp_rps, bare_p99, bare_rps) in rows {
            let _ = writeln!(
                w,
                "| {} | {kp_p99} | {kp_total_p99} | {kp_rps} | {bare_p99} | {bare_rps} |",
                workload.label(a.chunks)
            );
        }
        let _ = writeln!(w);
    }

    /// Keyplane's peak RSS under load over that of `reference` (`BARE` or `NGINX`), if both ran.
    fn peak_rss_ratio(input: &Input<'_>, reference: TargetKind, idx: usize) -> Option<f64> {
        let peak = |target: TargetKind, idx: usize| {
            input
                .results
                .iter()
                .chain(input.pairs)
                .filter(|r| r.target == target)
                .map(|r| r.peak_rss_kb[idx])
                .max()
        };
        let kp = peak(TargetKind::Keyplane, DATAPLANE)?;
        let re = peak(reference, idx)?;
        (re > 0).then(|| kp as f64 / re as f64)
    }

    /// The `--pairs` table against `reference` (the bare proxy or nginx): each round's throughput
    /// and added-p99 ratios, then their medians.
    fn alternating_pairs(w: &mut String, input: &Input<'_>, reference: TargetKind) {
        let a = input.args;
        if !input.pairs.iter().any(|r| r.target == reference) {
            return;
        }
        let (re_name, re_idx) = match reference {
            TargetKind::Nginx => ("nginx", NGINX),
            _ => ("bare proxy", BARE),
        };
        if reference == TargetKind::Bare {
            let _ = writeln!(
                w,
                "Alternating pairs (`--pairs {}`): per workload, the bare proxy{} then Keyplane back \
                 to back, {} s each after {} s of warm-up, repeated; added p99 is over the main \
                 run's direct p99. Each pair's ratio compares runs seconds apart; the medians are \
                 the figures to hold against the targets.",
                a.pairs,
                if input.nginx.is_some() {
                    ", nginx,"
                } else {
                    ""
                },
                a.duration_secs,
                a.warmup_secs
            );
        } else {
            let _ = writeln!(w, "The same rounds, Keyplane against {re_name}:");
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| workload | pair | {re_name} req/s | Keyplane req/s | throughput ratio | {re_name} added p99 | Keyplane added p99 | added p99 ratio | Keyplane CPU per request |{}",
            if reference == TargetKind::Bare {
                ""
            } else {
                " nginx CPU per request |"
            }
        );
        let _ = writeln!(
            w,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|{}",
            if reference == TargetKind::Bare {
                ""
            } else {
                "---:|"
            }
        );
        for stream in [false, true] {
            let workload = Workload::new(Api::OpenAi, Api::OpenAi, stream);
            let Some(direct) = find(input.results, TargetKind::Direct, workload) else {
                continue;
            };
            let bare_runs = input
                .pairs
                .iter()
                .filter(|r| r.workload == workload && r.target == reference);
            let kp_runs = input
                .pairs
                .iter()
                .filter(|r| r.workload == workload && r.target == TargetKind::Keyplane);
            let mut rps_ratios = Vec::new();
            let mut p99_ratios = Vec::new();
            for (i, (bare, kp)) in bare_runs.zip(kp_runs).enumerate() {
                let rps_ratio = kp.rps() / bare.rps().max(f64::MIN_POSITIVE);
                let bare_p99 = added(&bare.latency_us, &direct.latency_us, 0.99);
                let kp_p99 = added(&kp.latency_us, &direct.latency_us, 0.99);
                let p99_ratio = (bare_p99 > 0).then(|| kp_p99 as f64 / bare_p99 as f64);
                rps_ratios.push(rps_ratio);
                if let Some(r) = p99_ratio {
                    p99_ratios.push(r);
                }
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {:.2}× | {} | {} | {} | {} |{}",
                    workload.label(a.chunks),
                    i + 1,
                    group(bare.rps().round() as u64),
                    group(kp.rps().round() as u64),
                    rps_ratio,
                    fmt_signed_ms(bare_p99),
                    fmt_signed_ms(kp_p99),
                    p99_ratio.map_or("n/a".to_string(), |r| format!("{r:.2}×")),
                    cpu_per_request(kp, DATAPLANE),
                    if reference == TargetKind::Bare {
                        String::new()
                    } else {
                        format!(" {} |", cpu_per_request(bare, re_idx))
                    }
                );
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                match v.len() {
                    0 => None,
                    n if n % 2 == 1 => Some(v[n / 2]),
                    n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
                }
            };
            let fmt = |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("**{m:.2}×**"));
            let _ = writeln!(
                w,
                "| {} | median | | | {} | | | {} | |{}",
                workload.label(a.chunks),
                fmt(median(&mut rps_ratios)),
                fmt(median(&mut p99_ratios)),
                if reference == TargetKind::Bare {
                    ""
                } else {
                    " |"
                }
            );
        }
        let _ = writeln!(w);
    }

    /// `percentile(proxy) − percentile(direct)`, microseconds.
    fn added(proxy: &[u32], direct: &[u32], q: f64) -> i64 {
        i64::from(percentile(proxy, q)) - i64::from(percentile(direct, q))
    }

    /// Nearest-rank percentile of sorted microseconds (0 when empty).
    pub fn percentile(sorted: &[u32], q: f64) -> u32 {
        if sorted.is_empty() {
            return 0;
        }
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn fmt_ms(us: u32) -> String {
        format!("{:.2} ms", f64::from(us) / 1000.0)
    }

    fn fmt_signed_ms(us: i64) -> String {
        format!("{:+.2} ms", us as f64 / 1000.0)
    }

    fn fmt_mib(kb: u64) -> String {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    }

    /// `12345` → `12,345`.
    fn group(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// Today's UTC date, `YYYY-MM-DD` (days-to-civil, Howard Hinnant's algorithm).
    fn today() -> String {
        let secs = super::SystemTime::now()
            .duration_since(super::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let z = (secs / 86_400) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!("{year:04}-{month:02}-{day:02}")
    }
}

use report::{fmt_ms, percentile};

// ---------------------------------------------------------------------------------------------
// The bare reverse proxy (`--baseline-proxy`)
// ---------------------------------------------------------------------------------------------

mod baseline {
    use super::*;
    use hyper::http::uri::Authority;
    use hyper_util::server::conn::auto;

    type Body = Either<Incoming, Empty<Bytes>>;

    /// Serves the bare proxy in front of `upstream` on its own multi-thread runtime (this is its
    /// own process) until SIGTERM, SIGINT or the end of stdin (the bench went away).
    pub fn run(upstream: SocketAddr) {
        std::thread::spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("baseline proxy runtime");
        runtime.block_on(serve(upstream));
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    async fn serve(upstream: SocketAddr) {
        use tokio::signal::unix::{SignalKind, signal};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("baseline proxy: bind 127.0.0.1:0");
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "baseline-proxy listening on {}",
                listener.local_addr().expect("local addr")
            )
            .expect("write stdout");
            out.flush().expect("flush stdout");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        let authority: Authority = upstream.to_string().parse().expect("upstream authority");
        let host = HeaderValue::from_str(authority.as_str()).expect("host header");
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let authority = authority.clone();
            let host = host.clone();
            let service = hyper::service::service_fn(move |req| {
                let client = client.clone();
                let authority = authority.clone();
                let host = host.clone();
                async move { Ok::<_, Infallible>(forward(&client, authority, host, req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }

    /// Points the request at the upstream and returns its response as is: the body is the
    /// upstream's `Incoming`, so hyper writes each frame as it arrives.
    async fn forward(
        client: &Client<HttpConnector, Incoming>,
        authority: Authority,
        host: HeaderValue,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("/"));
        }
        let Ok(uri) = Uri::from_parts(parts) else {
            return bad_gateway();
        };
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, host);
        match client.request(req).await {
            Ok(resp) => resp.map(Either::Left),
            Err(err) => {
                report_error(&err);
                bad_gateway()
            }
        }
    }

    /// Upstream failures seen, so that only the first few are printed.
    static ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// Prints the first 5 upstream errors with their causes on stderr (the bench's own stderr).
    fn report_error(err: &hyper_util::client::legacy::Error) {
        if ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                msg.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("baseline proxy: upstream request failed: {msg}");
        }
    }

    fn bad_gateway() -> Response<Body> {
        let mut resp = Response::new(Either::Right(Empty::new()));
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
        resp
    }
}

// ---------------------------------------------------------------------------------------------
// The nginx reference proxy
// ---------------------------------------------------------------------------------------------

mod nginx {
    use keyplane_testkit::http::HttpRequest;
    use keyplane_testkit::process::send_signal;
    use keyplane_testkit::wait_until;
    use std::fmt::Write;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    /// Where Debian installs nginx, searched after `PATH` (a non-root `PATH` often lacks them).
    const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

    /// `name` itself when it is a path, else the first file of that name on `PATH` or in
    /// [`SBIN_DIRS`].
    pub fn find(name: &str) -> Option<PathBuf> {
        if name.contains('/') {
            let path = PathBuf::from(name);
            return path.is_file().then_some(path);
        }
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .chain(SBIN_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    /// What `nginx -v` prints after `nginx version: `, e.g. `nginx/1.22.1`.
    pub fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("-v")
            .output()
            .ok()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stderr),
                    String::from_utf8_lossy(&o.stdout)
                );
                text.trim()
                    .trim_start_matches("nginx version: ")
                    .to_string()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "nginx, unknown version".to_string())
    }

    /// The generated `nginx.conf`: `workers` worker processes in front of `upstream`, listening on
    /// `listen`, every file under `dir`. The settings a streaming-API proxy needs and that make
    /// the comparison fair:
    /// - `proxy_buffering off` and `proxy_request_buffering off`: each chunk of a stream goes to
    ///   the client as it arrives, like the data plane and the bare proxy do;
    /// - `keepalive` to the upstream with HTTP/1.1 and an empty `Connection` header, one idle
    ///   connection per client connection: no connect per request, like their pooled clients;
    /// - `keepalive_requests` raised on both sides: nginx's default of 1,000 would close the
    ///   connections every 1,000 requests, which the other proxies never do;
    /// - `reuseport`: one listening socket per worker, so the kernel spreads the keep-alive
    ///   connections over the workers (a work-stealing runtime balances on its own);
    /// - an access log line per request, buffered (`buffer=64k flush=1s`): the data plane writes
    ///   one log line per request through a buffered writer thread, so nginx pays the same kind of
    ///   cost rather than none.
    ///
    /// `worker_connections` leaves room for every client connection and its upstream connection
    /// in one worker, should the kernel put them all there.
    pub fn config(
        dir: &Path,
        listen: SocketAddr,
        upstream: SocketAddr,
        workers: usize,
        connections: u64,
    ) -> String {
        let d = dir.display();
        let worker_connections = connections * 2 + 64;
        let mut c = String::new();
        let _ = writeln!(
            c,
            "# Generated by keyplane-bench: the nginx reference proxy in front of the fake upstream."
        );
        let _ = writeln!(c, "daemon off;");
        let _ = writeln!(c, "master_process on;");
        let _ = writeln!(c, "worker_processes {workers};");
        let _ = writeln!(c, "worker_rlimit_nofile {};", worker_connections + 64);
        let _ = writeln!(c, "error_log \"{d}/error.log\" warn;");
        let _ = writeln!(c, "pid \"{d}/nginx.pid\";");
        let _ = writeln!(c, "events {{");
        let _ = writeln!(c, "    worker_connections {worker_connections};");
        let _ = writeln!(c, "}}");
        let _ = writeln!(c, "http {{");
        let _ = writeln!(
            c,
            "    access_log \"{d}/access.log\" combined buffer=64k flush=1s;"
        );
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let _ = writeln!(c, "    {temp}_temp_path \"{d}/{temp}\";");
        }
        let _ = writeln!(c, "    keepalive_requests 1000000;");
        let _ = writeln!(c, "    keepalive_timeout 90s;");
        let _ = writeln!(c, "    upstream fake {{");
        let _ = writeln!(c, "        server {upstream};");
        let _ = writeln!(c, "        keepalive {};", connections.max(1));
        let _ = writeln!(c, "        keepalive_requests 1000000;");
        let _ = writeln!(c, "        keepalive_timeout 90s;");
        let _ = writeln!(c, "    }}");
        let _ = writeln!(c, "    server {{");
        let _ = writeln!(c, "        listen {listen} reuseport;");
        let _ = writeln!(c, "        location / {{");
        let _ = writeln!(c, "            proxy_pass http://fake;");
        let _ = writeln!(c, "            proxy_http_version 1.1;");
        let _ = writeln!(c, "            proxy_set_header Connection \"\";");
        let _ = writeln!(c, "            proxy_buffering off;");
        let _ = writeln!(c, "            proxy_request_buffering off;");
        let _ = writeln!(c, "        }}");
        let _ = writeln!(c, "    }}");
        let _ = writeln!(c, "}}");
        c
    }

    /// nginx running in the foreground as a child of the bench, in a temporary prefix directory
    /// (its config, pid file, logs and temp paths). Dropping it stops the master and its workers.
    pub struct Nginx {
        child: Child,
        pub addr: SocketAddr,
        /// The worker processes (children of the master), found once they all started.
        workers: Vec<u32>,
        dir: tempfile::TempDir,
    }

    impl Nginx {
        /// Starts nginx with [`config`] on a free loopback port and waits until all `workers`
        /// exist and it answers HTTP.
        pub fn start(bin: &Path, upstream: SocketAddr, workers: usize, connections: u64) -> Nginx {
            let dir = tempfile::Builder::new()
                .prefix("keyplane-bench-nginx")
                .tempdir()
                .expect("nginx prefix directory");
            // Run as root, the master hands the workers to `nobody`; they must reach the prefix.
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                    .expect("chmod the nginx prefix directory");
            }
            let listen = free_port();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(
                &conf,
                config(dir.path(), listen, upstream, workers, connections),
            )
            .expect("write nginx.conf");
            let mut cmd = Command::new(bin);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                // Errors before the config is read go to the same file as the rest.
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            {
                use std::os::unix::process::CommandExt;
                #[allow(unsafe_code)]
                // SAFETY: between fork and exec only `prctl` runs, which is async-signal-safe and
                // touches no memory of the parent.
                unsafe {
                    // If the bench dies without dropping this (SIGKILL), the master still gets
                    // SIGTERM and stops its workers.
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut nginx = Nginx {
                child,
                addr: listen,
                workers: Vec::new(),
                dir,
            };
            let master = nginx.child.id();
            let mut exited = false;
            let ready = wait_until(super::SETUP_TIMEOUT, || {
                if matches!(nginx.child.try_wait(), Ok(Some(_))) {
                    exited = true;
                    return true;
                }
                children(master).len() >= workers
                    && HttpRequest::get("/")
                        .send(listen, Duration::from_secs(2))
                        .is_ok()
            });
            if exited || !ready {
                panic!(
                    "nginx {} within {:?}; its error log:\n{}",
                    if exited { "exited" } else { "did not answer" },
                    super::SETUP_TIMEOUT,
                    nginx.error_log()
                );
            }
            nginx.workers = children(master);
            nginx
        }

        /// The master, then the workers: the processes whose CPU and memory are nginx's.
        pub fn pids(&self) -> Vec<u32> {
            std::iter::once(self.child.id())
                .chain(self.workers.iter().copied())
                .collect()
        }

        pub fn worker_count(&self) -> usize {
            self.workers.len()
        }

        pub fn error_log_path(&self) -> PathBuf {
            self.dir.path().join("error.log")
        }

        /// The end of nginx's error log (startup failures, upstream errors).
        pub fn error_log(&self) -> String {
            let text = std::fs::read_to_string(self.error_log_path()).unwrap_or_default();
            super::tail(&text, 4_000).to_string()
        }

        /// Panics with the exit status if the master has exited.
        pub fn assert_alive(&mut self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "nginx (pid {}) exited during the benchmark: {status}; its error log:\n{}",
                    self.child.id(),
                    self.error_log()
                );
            }
        }
    }

    impl Drop for Nginx {
        fn drop(&mut self) {
            // SIGTERM is nginx's fast shutdown: the master stops its workers, then exits.
            send_signal(self.child.id(), libc::SIGTERM);
            if wait_until(Duration::from_secs(5), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            }) {
                return;
            }
            eprintln!("keyplane-bench: nginx did not exit within 5 s of SIGTERM; killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
            // A master killed outright leaves its workers running; they are still nginx's own
            // processes unless the pid was reused (then its name differs).
            for &pid in &self.workers {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "nginx" {
                    send_signal(pid, libc::SIGKILL);
                }
            }
        }
    }

    /// A loopback address no socket is bound to right now (nginx cannot announce a port it
    /// picked itself, so the bench picks one).
    fn free_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
    }

    /// Pids whose parent is `parent` (`/proc/*/stat` field 4).
    fn children(parent: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = &s[s.rfind(')')? + 1..];
                        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == Some(parent)
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The directives the comparison depends on are in the generated file: streams relayed
        /// unbuffered, pooled HTTP/1.1 upstream connections, the worker count the data plane
        /// gets, and every path inside the prefix (nothing in /var or /etc).
        #[test]
        fn config_streams_unbuffered_through_a_pooled_upstream() {
            let dir = Path::new("/tmp/kb-nginx-test");
            let conf = config(
                dir,
                "127.0.0.1:4000".parse().unwrap(),
                "127.0.0.1:5000".parse().unwrap(),
                3,
                64,
            );
            for directive in [
                "daemon off;",
                "worker_processes 3;",
                "proxy_buffering off;",
                "proxy_request_buffering off;",
                "proxy_http_version 1.1;",
                "proxy_set_header Connection \"\";",
                "server 127.0.0.1:5000;",
                "keepalive 64;",
                "listen 127.0.0.1:4000 reuseport;",
                "worker_connections 192;",
            ] {
                assert!(
                    conf.contains(directive),
                    "missing `{directive}` in:\n{conf}"
                );
            }
            for directive in [
                "error_log ",
                "pid ",
                "access_log ",
                "client_body_temp_path ",
                "proxy_temp_path ",
                "fastcgi_temp_path ",
                "uwsgi_temp_path ",
                "scgi_temp_path ",
            ] {
                let line = conf
                    .lines()
                    .find(|l| l.trim_start().starts_with(directive))
                    .unwrap_or_else(|| panic!("no `{directive}` in:\n{conf}"));
                assert!(
                    line.contains(" \"/tmp/kb-nginx-test/"),
                    "a path outside the prefix: {line}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--only cross` must run against builds without the Responses API (before/after runs), and
    /// every translated route needs its same-protocol reference and direct baseline in the same
    /// run, or the translation tables leave it out.
    #[test]
    fn every_translated_route_runs_with_its_reference() {
        assert!(
            run_plan(Only::Cross)
                .iter()
                .all(|&(_, c, u)| c != Api::Responses && u != Api::Responses),
            "--only cross must not need the Responses provider"
        );
        for only in [
            Only::Openai,
            Only::Cross,
            Only::Responses,
            Only::Embeddings,
            Only::Gemini,
            Only::All,
        ] {
            let plan = run_plan(only);
            for &(kind, client, upstream) in &plan {
                if client != upstream {
                    assert!(
                        plan.contains(&(TargetKind::Keyplane, client, client)),
                        "--only {}: {client:?} → {upstream:?} without its reference",
                        only.flag()
                    );
                }
                assert!(
                    kind == TargetKind::Direct
                        || plan.contains(&(TargetKind::Direct, client, client)),
                    "--only {}: {client:?} without its direct baseline",
                    only.flag()
                );
                let needs_provider = client == Api::Responses || upstream == Api::Responses;
                assert!(
                    !needs_provider || only.has_responses(),
                    "--only {} has Responses rows but configures no Responses provider",
                    only.flag()
                );
                let needs_gemini = client == Api::Gemini || upstream == Api::Gemini;
                assert!(
                    !needs_gemini || only.has_gemini(),
                    "--only {} has Gemini rows but configures no Gemini provider",
                    only.flag()
                );
            }
        }
        let responses = run_plan(Only::Responses);
        for route in [
            (Api::Responses, Api::Responses),
            (Api::Responses, Api::OpenAi),
            (Api::Responses, Api::Anthropic),
            (Api::OpenAi, Api::Responses),
            (Api::Anthropic, Api::Responses),
        ] {
            assert!(
                responses.contains(&(TargetKind::Keyplane, route.0, route.1)),
                "--only responses lacks {route:?}"
            );
        }
    }

    /// `--only embeddings` runs the embeddings route through Keyplane beside its direct
    /// baseline and nothing else; `all` includes it.
    #[test]
    fn embeddings_rows_run_with_their_direct_baseline() {
        assert_eq!(
            run_plan(Only::Embeddings),
            [
                (TargetKind::Direct, Api::Embeddings, Api::Embeddings),
                (TargetKind::Keyplane, Api::Embeddings, Api::Embeddings),
            ]
        );
        let all = run_plan(Only::All);
        assert!(all.contains(&(TargetKind::Keyplane, Api::Embeddings, Api::Embeddings)));
        assert!(all.contains(&(TargetKind::Direct, Api::Embeddings, Api::Embeddings)));
    }

    /// A Responses stream has no `[DONE]`: it is complete only when its last event is
    /// `response.completed`, not `response.failed` or `response.incomplete`.
    #[test]
    fn a_responses_stream_ends_with_its_terminal_event() {
        let ok = "event: response.output_text.delta\ndata: {}\n\nevent: response.completed\ndata: {}\n\n";
        let failed = "event: response.completed\ndata: {}\n\nevent: response.failed\ndata: {}\n\n";
        assert_eq!(last_sse_event(ok), Some("response.completed"));
        assert_eq!(last_sse_event(failed), Some("response.failed"));
        assert_eq!(last_sse_event("data: {}\n\n"), None);
        assert_eq!(sse_events(ok), 2);
    }
}
