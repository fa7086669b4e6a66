//! `keyplane-dataplane`: parses flags, loads the snapshot, subscribes to the control plane and
//! serves HTTP until SIGTERM or SIGINT; then drains in-flight requests, makes the usage spool
//! durable and exits 0.

use clap::{Parser, ValueEnum};
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
    /// The base URL the control plane reaches this node at, for the console's route probe
    /// (default: http:// or https:// with the bound --listen address, unless that address is
    /// unspecified such as 0.0.0.0; then none is said and the probe cannot use this node).
    #[arg(long)]
    advertise_url: Option<String>,
    /// Route-table snapshot and usage spool.
    #[arg(long, default_value = "keyplane-state")]
    state_dir: PathBuf,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest non-streamed upstream response body read; past it the attempt fails over (and
    /// the client gets a 502 if every candidate fails).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    max_upstream_body_bytes: usize,
    /// Largest upstream stream event: past it the attempt fails over, or a stream already
    /// relaying ends with an error event.
    #[arg(long, default_value_t = keyplane_dataplane::sse::DEFAULT_MAX_EVENT_BYTES)]
    max_sse_event_bytes: usize,
    /// Upstream connect timeout.
    #[arg(long, default_value_t = 5_000)]
    connect_timeout_ms: u64,
    /// Upstream time to response headers (and, for streams, to the first content).
    #[arg(long, default_value_t = 120_000)]
    first_byte_timeout_ms: u64,
    /// Longest silence between two chunks of an upstream body.
    #[arg(long, default_value_t = 120_000)]
    idle_timeout_ms: u64,
    /// Requests of one client key that may fail on every upstream they try (5xx, timeouts,
    /// streams broken before content) within a minute before the key is refused for a minute
    /// (429); 0: no limit.
    #[arg(long, default_value_t = 10)]
    key_failure_budget: u32,
    /// How long a client may take to send a request's head before the connection is closed.
    #[arg(long, default_value_t = 30_000)]
    header_read_timeout_ms: u64,
    /// How long a client may take to send a whole request body (however it is split) before it
    /// gets 408.
    #[arg(long, default_value_t = 60_000)]
    body_read_timeout_ms: u64,
    /// Client connections open at once; more are accepted and closed at once. Default: half of
    /// the open-file limit (RLIMIT_NOFILE) less 64, so that every connection can also hold an
    /// upstream socket and the spool and logs keep theirs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// How long in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// PEM certificate chain of the HTTPS listener (with --tls-key); reloaded on SIGHUP and when
    /// the file changes. Also the client certificate for mutual TLS to the control plane unless
    /// --control-cert is given.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate that signs the control plane's certificate (default: the public web
    /// roots). Needs an https:// --control URL.
    #[arg(long)]
    control_ca: Option<PathBuf>,
    /// PEM client certificate presented to the control plane (mutual TLS).
    #[arg(long, requires = "control_key")]
    control_cert: Option<PathBuf>,
    /// PEM private key of --control-cert.
    #[arg(long, requires = "control_cert")]
    control_key: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Allow a non-loopback --listen address without TLS.
    #[arg(long)]
    insecure: bool,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

const NODE_TOKEN_ENV: &str = "KEYPLANE_NODE_TOKEN";

/// mimalloc: fewer cycles per allocation on the request path than glibc's malloc, and memory that
/// goes back to the system instead of staying in per-thread arenas. Built with `no_thp` (no
/// transparent huge pages, which turned every touched 2 MiB of its arenas resident: 12 MiB idle,
/// 75 MiB under the benchmark's load) and tuned in [`tune_allocator`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its position in `mi_option_t` in the `mimalloc.h` of the
/// mimalloc 3 that libmimalloc-sys 0.1.49 builds (the crate names only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed pages stay resident before mimalloc returns them to the OS. Its default (1 s)
/// kept ~10 MiB more resident under request churn (BENCHMARKS.md, "Where the data plane's memory
/// goes"); 10 ms still lets a page freed by one request be reused by the next.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// glibc's `malloc` still serves the C code linked in: zstd, whose contexts for one usage report
/// (a 3.6 MB compression workspace, a 2.5 MB window to decompress the acknowledgement) are
/// allocated and freed per call. glibc's default threshold for serving an allocation by `mmap`
/// rises to the size of the last such chunk freed, after which these buffers came from per-thread
/// arenas that kept ~1.7 MB resident per worker thread for good (BENCHMARKS.md, "Data plane
/// memory after the zstd and spool-buffer fixes"). A fixed threshold keeps them in `mmap`,
/// returned at `free`; a few calls per second pay one `mmap`/`munmap` pair each.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const GLIBC_MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Applies [`PURGE_DELAY_MS`] unless the operator set `MIMALLOC_PURGE_DELAY`, which wins, and
/// [`GLIBC_MMAP_THRESHOLD`] unless glibc's own tunables set one (`GLIBC_TUNABLES`,
/// `MALLOC_MMAP_THRESHOLD_`).
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it takes no
        // pointers and may be called at any time. The delay is read when pages are purged.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var("GLIBC_TUNABLES").map_or(true, |t| !t.contains("malloc.mmap_threshold"))
        && std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
    {
        // SAFETY: `mallopt` sets one of glibc's malloc parameters; it takes no pointers and is
        // called here before any other thread exists. A refusal (0) leaves glibc's default.
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD) };
    }
}

fn main() -> ExitCode {
    tune_allocator();
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
    // Log lines are buffered and written by a background thread in large writes, so a request
    // never waits on stderr; not lossy (see `logbuf`).
    let (writer, _log_guard) = match keyplane_dataplane::logbuf::spawn(std::io::stderr()) {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("keyplane-dataplane: cannot start the log writer thread: {err}");
            return ExitCode::from(1);
        }
    };
    let logs = {
        // Inside the runtime: the OTLP exporter's gRPC channel runs its tasks there.
        let _enter = runtime.enter();
        init_logs(args.log_format, writer)
    };
    let result = runtime.block_on(run(args));
    logs.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("keyplane-dataplane: {msg}");
            ExitCode::from(code)
        }
    }
}

/// What must be flushed at exit: the OTLP span exporter (with `--features otlp`).
struct Logs {
    #[cfg(feature = "otlp")]
    otlp: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Logs {
    fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.otlp {
            let _ = provider.shutdown();
        }
    }
}

/// The stderr log layer in the chosen format, filtered by `RUST_LOG`; with `--features otlp`
/// and `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans also go to an OTLP/gRPC collector.
fn init_logs(format: LogFormat, writer: keyplane_dataplane::logbuf::LogWriter) -> Logs {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_timer(keyplane_dataplane::logfmt::Rfc3339Micros)
            .fmt_fields(keyplane_dataplane::logfmt::PlainFields)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt_layer);
    #[cfg(feature = "otlp")]
    {
        use opentelemetry::trace::TracerProvider as _;
        let provider = match otlp_provider() {
            Ok(p) => p,
            Err(err) => {
                eprintln!("keyplane-dataplane: OTLP exporter disabled: {err}");
                None
            }
        };
        let layer = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("keyplane-dataplane")));
        registry.with(layer).init();
        Logs { otlp: provider }
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        Logs {}
    }
}

/// An OTLP/gRPC span exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only variable)
/// is set; the exporter reads the standard `OTEL_*` variables itself.
#[cfg(feature = "otlp")]
fn otlp_provider() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("keyplane-dataplane")
        .build();
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
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
    if args.tls_cert.is_none() && !args.listen.ip().is_loopback() && !args.insecure {
        return Err(config(format!(
            "refusing to serve plain HTTP on {} (not loopback): give --tls-cert and --tls-key, \
             or --insecure",
            args.listen
        )));
    }
    let https_listener = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(keyplane_dataplane::tls::Reloader::load(cert, key).map_err(config)?)
        }
        _ => None,
    };
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
    let endpoint = control_tls(&args, endpoint).map_err(config)?;
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
        max_upstream_body_bytes: args.max_upstream_body_bytes,
        max_sse_event_bytes: args.max_sse_event_bytes,
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
        key_failure_budget: args.key_failure_budget,
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
    announce(args.log_format, local);
    let max_connections = match args.max_connections {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => default_max_connections(),
    };
    tracing::info!(
        listen = %local,
        node_id = %node_id,
        control = %args.control,
        max_connections,
        "keyplane-dataplane serving"
    );

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
    let serve_url = match &args.advertise_url {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            return Err(config(format!(
                "--advertise-url {url:?} is not an http:// or https:// URL"
            )));
        }
        Some(url) => url.trim_end_matches('/').to_string(),
        None if local.ip().is_unspecified() => String::new(),
        None => {
            let scheme = if https_listener.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{local}")
        }
    };
    let subscriber = Subscriber {
        channel,
        node_id,
        serve_url,
        node_token,
        state_dir: args.state_dir.clone(),
        gateway: Arc::clone(&gateway),
    };
    let subscription = tokio::spawn(subscriber.run(cancel.clone()));
    if let Some(tls) = &https_listener {
        tokio::spawn(Arc::clone(tls).watch(cancel.clone()));
    }
    server::serve(
        listener,
        gateway,
        cancel.clone(),
        Duration::from_secs(args.drain_timeout_secs),
        server::ConnLimits {
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            max_connections,
        },
        https_listener,
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

/// The one line on stdout that scripts (and the testkit) wait for: `keyplane-dataplane listening
/// on ADDR`, or with `--log-format json` that message as a JSON line shaped like the log's (and
/// the address in `listen`), so that everything the process prints parses as JSON.
fn announce(format: LogFormat, local: SocketAddr) {
    let message = format!("keyplane-dataplane listening on {local}");
    let line = match format {
        LogFormat::Text => message,
        LogFormat::Json => {
            use tracing_subscriber::fmt::time::FormatTime;
            let mut timestamp = String::new();
            let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
                &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
            );
            serde_json::json!({
                "timestamp": timestamp,
                "level": "INFO",
                "message": message,
                "listen": local.to_string(),
                "target": "keyplane_dataplane",
            })
            .to_string()
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// File descriptors kept back from client connections for the spool, the log, the control-plane
/// channel and the listener itself.
const RESERVED_FDS: u64 = 64;

/// The default connection cap: half of what the open-file limit leaves after [`RESERVED_FDS`],
/// since each client connection may hold an upstream socket too; at least 1.
fn default_max_connections() -> usize {
    let soft = open_file_limit().unwrap_or(1024);
    usize::try_from((soft.saturating_sub(RESERVED_FDS) / 2).max(1)).unwrap_or(usize::MAX)
}

/// The soft `RLIMIT_NOFILE`, if it can be read and is finite.
#[allow(unsafe_code)]
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live, writable local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// TLS to the control plane for an `https://` URL: its CA (`--control-ca`, else the public
/// roots) and, for mutual TLS, a client certificate (`--control-cert`, else `--tls-cert`).
fn control_tls(
    args: &Args,
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read: {e}", path.display()))
    };
    if !args.control.starts_with("https://") {
        let host = endpoint.uri().host().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            tracing::warn!(
                control = %args.control,
                "the control plane link is plain text to a non-loopback host: the node token \
                 and the route table's upstream secrets cross the network unencrypted; use https://"
            );
        }
        if args.control_ca.is_some() || args.control_cert.is_some() {
            return Err(
                "--control-ca and --control-cert need an https:// --control URL".to_string(),
            );
        }
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &args.control_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--control-ca", ca)?)),
        None => tls.with_webpki_roots(),
    };
    let identity = match (&args.control_cert, &args.control_key) {
        (Some(c), Some(k)) => Some((read("--control-cert", c)?, read("--control-key", k)?)),
        _ => match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some((read("--tls-cert", c)?, read("--tls-key", k)?)),
            _ => None,
        },
    };
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| format!("--control TLS setup: {e}"))
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
