//! `keyplane-dataplane`: parses flags, loads the snapshot, subscribes to the control plane and
//! serves HTTP until SIGTERM or SIGINT; then drains in-flight requests, makes the usage spool
//! durable and exits 0.

use clap::Parser;
use keyplane_dataplane::control::Subscriber;
use keyplane_dataplane::gateway::Gateway;
use keyplane_dataplane::health::HealthSink;
use keyplane_dataplane::leaser::Leaser;
use keyplane_dataplane::metrics::Metrics;
use keyplane_dataplane::proxy::{Limits, Proxy, build_client};
use keyplane_dataplane::table::{StatsRegistry, Table};
use keyplane_dataplane::{server, snapshot, usage};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Keyplane's data plane: the OpenAI- and Anthropic-compatible endpoint clients talk to.
#[derive(Parser, Debug)]
#[command(name = "keyplane-dataplane", version)]
struct Args {
    /// Control plane gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    control: String,
    /// HTTP listen address; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// This node's name in the control plane (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Route-table snapshot and usage spool.
    #[arg(long, default_value = "keyplane-state")]
    state_dir: PathBuf,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Upstream connect timeout.
    #[arg(long, default_value_t = 5_000)]
    connect_timeout_ms: u64,
    /// Upstream time to response headers (and, for streams, to the first content).
    #[arg(long, default_value_t = 120_000)]
    first_byte_timeout_ms: u64,
    /// Longest silence between two chunks of an upstream body.
    #[arg(long, default_value_t = 120_000)]
    idle_timeout_ms: u64,
    /// How long a client may take to send a request's head before the connection is closed.
    #[arg(long, default_value_t = 30_000)]
    header_read_timeout_ms: u64,
    /// How long in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
}

const NODE_TOKEN_ENV: &str = "KEYPLANE_NODE_TOKEN";

/// mimalloc: fewer cycles per allocation on the request path than glibc's malloc, and memory that
/// goes back to the system instead of staying in per-thread arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Log lines are written by a background thread, so a request never waits on a write to
    // stderr. Not lossy: when the buffer is full, logging waits rather than drops lines.
    let (writer, _log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(1024)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Blocking threads serve the spool's fsyncs and snapshot writes; a few are plenty.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keyplane-dataplane: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("keyplane-dataplane: {msg}");
            ExitCode::from(code)
        }
    }
}

/// A host name cut down to what a node id may hold.
fn default_node_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        "dataplane".to_string()
    } else {
        id
    }
}

async fn run(args: Args) -> Result<(), (u8, String)> {
    let config = |msg: String| (2u8, msg);
    let runtime_err = |msg: String| (1u8, msg);

    let cancel = CancellationToken::new();
    let signals = install_shutdown_signals(cancel.clone()).map_err(runtime_err)?;

    let node_token = std::env::var(NODE_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| config(format!("{NODE_TOKEN_ENV} is not set")))?;
    let node_id = args.node_id.clone().unwrap_or_else(default_node_id);
    std::fs::create_dir_all(&args.state_dir).map_err(|e| {
        config(format!(
            "cannot create --state-dir {}: {e}",
            args.state_dir.display()
        ))
    })?;
    let endpoint = tonic::transport::Endpoint::from_shared(args.control.clone())
        .map_err(|e| {
            config(format!(
                "--control {:?} is not a valid URL: {e}",
                args.control
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint.connect_lazy();

    let (usage_sink, usage_handle) = usage::start(
        &args.state_dir,
        channel.clone(),
        node_id.clone(),
        node_token.clone(),
    )
    .await
    .map_err(|e| {
        runtime_err(format!(
            "cannot open the usage spool in {}: {e}",
            args.state_dir.display()
        ))
    })?;

    let limits = Limits {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        first_byte_timeout: Duration::from_millis(args.first_byte_timeout_ms),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        max_body_bytes: args.max_body_bytes,
    };
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(HealthSink::default());
    let lease_wake = Arc::new(tokio::sync::Notify::new());
    let proxy = Arc::new(Proxy {
        client: build_client(&limits),
        limits,
        usage: usage_sink,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        lease_wake: Arc::clone(&lease_wake),
        clients: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let gateway = Arc::new(Gateway {
        table: arc_swap::ArcSwapOption::empty(),
        stats: StatsRegistry::default(),
        proxy,
        metrics,
        usage_stats: usage_handle.stats(),
        table_generated_at_ms: std::sync::atomic::AtomicI64::new(0),
    });

    match snapshot::load(&args.state_dir, &node_token) {
        Ok(raw) => match Table::compile(&raw, &gateway.stats) {
            Ok(table) => {
                tracing::info!(
                    route_version = table.version,
                    "serving from the route-table snapshot until the control plane answers"
                );
                gateway.install(table, raw.generated_at_ms);
            }
            Err(err) => tracing::warn!(error = %err, "the route-table snapshot is not usable"),
        },
        Err(snapshot::LoadError::Missing) => {}
        Err(err) => tracing::warn!(error = %err, "the route-table snapshot is not usable"),
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| runtime_err(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| runtime_err(format!("cannot read the listen address: {e}")))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "keyplane-dataplane listening on {local}");
        let _ = out.flush();
    }
    tracing::info!(listen = %local, node_id = %node_id, control = %args.control, "keyplane-dataplane serving");

    let mut authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {node_token}")
            .parse()
            .map_err(|_| config(format!("{NODE_TOKEN_ENV} is not a valid header value")))?;
    authorization.set_sensitive(true);
    let health_task = tokio::spawn(health.run(
        channel.clone(),
        node_id.clone(),
        authorization.clone(),
        cancel.clone(),
    ));
    let leaser = Leaser {
        channel: channel.clone(),
        node_id: node_id.clone(),
        authorization,
        gateway: Arc::clone(&gateway),
        epoch: uuid::Uuid::new_v4().to_string(),
        wake: lease_wake,
    };
    let leaser_task = tokio::spawn(leaser.run(cancel.clone()));
    let subscriber = Subscriber {
        channel,
        node_id,
        node_token,
        state_dir: args.state_dir.clone(),
        gateway: Arc::clone(&gateway),
    };
    let subscription = tokio::spawn(subscriber.run(cancel.clone()));
    server::serve(
        listener,
        gateway,
        cancel.clone(),
        Duration::from_secs(args.drain_timeout_secs),
        Duration::from_millis(args.header_read_timeout_ms),
    )
    .await;
    let _ = subscription.await;
    let _ = health_task.await;
    let _ = leaser_task.await;
    signals.abort();
    usage_handle.shutdown(Duration::from_secs(5)).await;
    tracing::info!("usage spool flushed; bye");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the returned task fires `cancel` on either.
fn install_shutdown_signals(
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        cancel.cancel();
    }))
}
