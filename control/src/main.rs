//! `keyplane-control`: parses flags, loads secrets, opens the store, serves gRPC until SIGTERM or
//! SIGINT, then flushes the store and exits 0.

use clap::{Parser, Subcommand, ValueEnum};
use keyplane_control::catalog_sync::{SyncConfig, Syncer};
use keyplane_control::config::{self, ConfigError};
use keyplane_control::grpc::{self, TokenCheck};
use keyplane_control::nodes::Registry;
use keyplane_control::routes::Routes;
use keyplane_control::store::{OpenStoreError, Store};
use keyplane_control::tls;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Keyplane's control plane: credentials, catalog, client keys, usage ledger and route tables.
#[derive(Parser, Debug)]
#[command(
    name = "keyplane-control",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Directory of the sled store (created if missing).
    #[arg(long, default_value = "keyplane-data")]
    data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Generate whichever of KEYPLANE_MASTER_KEY, KEYPLANE_ADMIN_TOKEN and KEYPLANE_NODE_TOKEN
    /// are missing into files in the data dir (mode 0600). For local use only.
    #[arg(long)]
    dev: bool,
    /// PEM certificate chain of the gRPC server: TLS is on when given (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that signs the data planes' client certificates: mutual TLS, required of every
    /// data plane on top of the node token. Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Address of a plain-HTTP listener serving Prometheus `GET /metrics`.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Address of the web console (operators sign in with the admin token; key holders use
    /// /portal). HTTPS with --tls-cert; plain HTTP only on a loopback address unless --insecure.
    /// Off when not given.
    #[arg(long)]
    console_listen: Option<SocketAddr>,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Allow a non-loopback --listen or --console-listen address without TLS (tokens and
    /// secrets cross the network in plain text).
    #[arg(long)]
    insecure: bool,
    /// Seconds between catalog syncs of each provider with a catalog adapter (also synced on
    /// start). 0 turns automatic sync off: only `keyplanectl catalog sync` syncs.
    #[arg(long, default_value_t = 300)]
    catalog_sync_interval_secs: u64,
    /// Time limit of one provider's catalog sync (fetch and parse), in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    catalog_sync_timeout_secs: u64,
    /// How long the request log keeps an entry (`30d`, `12h`, `90m`, `45s`); older entries are
    /// pruned in the background. `0`: no request log (entries already kept are pruned).
    #[arg(long, default_value = "30d", value_parser = parse_retention)]
    request_log_retention: Duration,
    /// How long the bodies captured for keys with `--capture-bodies` are kept (same syntax);
    /// older ones are pruned in the background, before their log entries. `0`: none are kept.
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    request_body_retention: Duration,
}

/// A retention in humantime's syntax (`30d`, `12h 30m`, `45s`): 0, or at least a second.
fn parse_retention(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 30d, 12h or 90s: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than a second (0 turns the log off)"
        ));
    }
    Ok(d)
}

/// Entries one pruning step deletes: each step is one sled batch per tree.
const PRUNE_BATCH: usize = 1_000;

/// How often the request log is pruned: a quarter of the retention, between 1 s and a minute,
/// so an entry outlives its retention by at most that.
fn prune_every(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a private CA and certificates: ca.pem, ca-key.pem, control.pem, control-key.pem,
    /// node.pem, node-key.pem (valid for localhost, 127.0.0.1, ::1 and --hosts).
    GenCerts {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// More names or IP addresses the certificates are valid for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Replace a complete set already in --out (by default it is kept, so that rerunning,
        /// as `docker compose up` does, never breaks the trust between running nodes).
        #[arg(long)]
        force: bool,
    },
    /// Re-encrypt every secret from KEYPLANE_MASTER_KEY to KEYPLANE_NEW_MASTER_KEY, offline
    /// (stop the control plane first). Crash-safe: rerun it until it says done.
    RotateMasterKey {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Restore a `keyplanectl backup` file into an empty data dir, offline.
    Restore {
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file.
        file: PathBuf,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Writes a line for scripts on stdout: `message` as is, or with `--log-format json` a JSON line
/// shaped like the log's, with `field` beside the message, so that everything the process
/// prints parses as JSON.
fn announce(format: LogFormat, message: String, field: Option<(&str, String)>) {
    let line = match format {
        LogFormat::Text => message,
        LogFormat::Json => {
            use tracing_subscriber::fmt::time::FormatTime;
            let mut timestamp = String::new();
            let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
                &mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp),
            );
            let mut line = serde_json::json!({
                "timestamp": timestamp,
                "level": "INFO",
                "message": message,
                "target": "keyplane_control",
            });
            if let Some((name, value)) = field {
                line[name] = serde_json::Value::String(value);
            }
            line.to_string()
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// mimalloc (without transparent huge pages): usage ingest is sled inserts that allocate and free
/// many small nodes, and glibc's malloc was a fifth of the control plane's CPU under the data
/// plane benchmark's load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long in-flight calls get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    if let Some(cmd) = args.command {
        return offline(cmd);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keyplane-control: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    exit_code(runtime.block_on(run(args)))
}

enum Failure {
    /// Bad flags, secrets or data dir: the operator must change something. Exit code 2.
    Config(String),
    /// Anything else. Exit code 1.
    Runtime(String),
}

/// The one-line message on stderr and the exit code of a run or an offline subcommand.
fn exit_code(result: Result<(), Failure>) -> ExitCode {
    let (code, msg) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => (2, msg),
        Err(Failure::Runtime(msg)) => (1, msg),
    };
    eprintln!("keyplane-control: {msg}");
    ExitCode::from(code)
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Failure {
        Failure::Config(err.0)
    }
}

/// The offline subcommands: no server, a one-line outcome, exit 0 / 1 / 2.
fn offline(cmd: Cmd) -> ExitCode {
    let result = match cmd {
        Cmd::GenCerts { out, hosts, force } => {
            let existing = tls::existing_certs(&out);
            match existing {
                Some(files) if !force => {
                    eprintln!(
                        "keyplane-control: certificates already in {}; kept (--force replaces them)",
                        out.display()
                    );
                    for f in files {
                        println!("{}", f.display());
                    }
                    Ok(())
                }
                _ => tls::gen_certs(&out, &hosts)
                    .map(|files| {
                        for f in files {
                            println!("{}", f.display());
                        }
                    })
                    .map_err(Failure::Config),
            }
        }
        Cmd::RotateMasterKey { data_dir } => rotate(&data_dir),
        Cmd::Restore { data_dir, file } => {
            keyplane_control::backup::restore(&data_dir, &file, |k| std::env::var(k).ok())
                .map(|n| println!("restored {n} records into {}", data_dir.display()))
                .map_err(|e| match e {
                    keyplane_control::backup::RestoreError::Usage(m) => Failure::Config(m),
                    keyplane_control::backup::RestoreError::Failed(m) => Failure::Runtime(m),
                })
        }
    };
    exit_code(result)
}

fn rotate(data_dir: &std::path::Path) -> Result<(), Failure> {
    use keyplane_control::config::{MASTER_KEY_ENV, NEW_MASTER_KEY_ENV};
    use keyplane_control::creds::MasterKey;
    let key = |var: &str| -> Result<MasterKey, Failure> {
        let text = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Failure::Config(format!("{var} is not set")))?;
        MasterKey::from_base64(&text).map_err(|why| {
            Failure::Config(format!(
                "{var} is malformed: {why} (want base64 of 32 random bytes)"
            ))
        })
    };
    let old = key(MASTER_KEY_ENV)?;
    let new = key(NEW_MASTER_KEY_ENV)?;
    match keyplane_control::rotate::rotate_master_key(data_dir, &old, &new) {
        Ok(report) => {
            println!(
                "master key rotated: {} secrets re-encrypted, {} already under the new key; \
                 start keyplane-control with the new key as {MASTER_KEY_ENV}",
                report.rewritten, report.already
            );
            Ok(())
        }
        Err(keyplane_control::rotate::RotateError::Usage(m)) => Err(Failure::Config(m)),
        Err(keyplane_control::rotate::RotateError::Failed(m)) => Err(Failure::Runtime(m)),
    }
}

/// Refuses plain text on a non-loopback address unless `--insecure` says so.
fn check_insecure(args: &Args) -> Result<(), Failure> {
    if args.tls_cert.is_none() && !args.listen.ip().is_loopback() && !args.insecure {
        return Err(Failure::Config(format!(
            "refusing to serve gRPC in plain text on {} (not loopback): give --tls-cert and \
             --tls-key, or --insecure",
            args.listen
        )));
    }
    if let Some(console) = args.console_listen
        && args.tls_cert.is_none()
        && !console.ip().is_loopback()
        && !args.insecure
    {
        return Err(Failure::Config(format!(
            "refusing to serve the console in plain text on {console} (not loopback): the admin \
             token and session cookies would cross the network readable; give --tls-cert and \
             --tls-key, or --insecure"
        )));
    }
    Ok(())
}

fn server_tls(args: &Args) -> Result<Option<tonic::transport::ServerTlsConfig>, Failure> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let cert = tls::read_pem("--tls-cert", cert).map_err(Failure::Config)?;
    let key = tls::read_pem("--tls-key", key).map_err(Failure::Config)?;
    // A client that never finishes its handshake must not hold a slot forever.
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = &args.client_ca {
        let ca = tls::read_pem("--client-ca", ca).map_err(Failure::Config)?;
        // Optional at the handshake so that keyplanectl (admin token only) still connects; the
        // Nodes service refuses a call without a verified client certificate.
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(true);
    }
    Ok(Some(config))
}

async fn run(args: Args) -> Result<(), Failure> {
    // Before anything else, so that a SIGTERM at any later moment is a graceful stop.
    let cancel = CancellationToken::new();
    let signals = install_shutdown_signals(cancel.clone())?;
    check_insecure(&args)?;
    let secrets = config::load_secrets(|k| std::env::var(k).ok(), args.dev, &args.data_dir)?;
    let dev_certs = if args.dev {
        let (files, _) = tls::dev_certs(&args.data_dir.join("tls")).map_err(Failure::Config)?;
        files
    } else {
        Vec::new()
    };
    let tls_config = server_tls(&args)?;
    let store = match Store::open(&args.data_dir, &secrets.master_key) {
        Ok(store) => Arc::new(store),
        Err(
            err @ (OpenStoreError::WrongMasterKey
            | OpenStoreError::Migration(_)
            | OpenStoreError::RotationUnfinished),
        ) => {
            return Err(Failure::Config(err.to_string()));
        }
        Err(err) => return Err(Failure::Runtime(err.to_string())),
    };
    let routes = Routes::start(Arc::clone(&store))
        .await
        .map_err(|e| Failure::Runtime(format!("cannot compile the route table: {e}")))?;
    let registry = Registry::new(Arc::clone(&store));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(format!("cannot read the listen address: {e}")))?;

    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let metrics_listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?;
            let bound = metrics_listener
                .local_addr()
                .map_err(|e| Failure::Runtime(format!("cannot read the metrics address: {e}")))?;
            announce(
                args.log_format,
                format!("keyplane-control metrics on {bound}"),
                Some(("metrics_listen", bound.to_string())),
            );
            let source = Arc::new(keyplane_control::metrics::Source {
                store: Arc::clone(&store),
                routes: Arc::clone(&routes),
                registry: Arc::clone(&registry),
            });
            Some(tokio::spawn(keyplane_control::metrics::serve(
                metrics_listener,
                source,
                cancel.clone(),
            )))
        }
        None => None,
    };
    // Before the console, which offers "sync now"; its loop starts with the other tasks.
    let syncer = Syncer::new(
        Arc::clone(&store),
        Arc::clone(&routes),
        SyncConfig {
            interval: (args.catalog_sync_interval_secs > 0)
                .then(|| Duration::from_secs(args.catalog_sync_interval_secs)),
            timeout: Duration::from_secs(args.catalog_sync_timeout_secs),
            ..SyncConfig::default()
        },
    );
    let console_task = match args.console_listen {
        Some(addr) => {
            let acceptor = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(
                    keyplane_control::console::tls_acceptor(cert, key).map_err(Failure::Config)?,
                ),
                _ => None,
            };
            let console_listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?;
            let bound = console_listener
                .local_addr()
                .map_err(|e| Failure::Runtime(format!("cannot read the console address: {e}")))?;
            let mut console = keyplane_control::console::Console::new(
                Arc::clone(&store),
                Arc::clone(&routes),
                Arc::clone(&registry),
                Arc::clone(&syncer),
                TokenCheck::new(&secrets.admin_token, "admin token"),
                acceptor.is_some(),
            );
            if let Some(ca) = &args.client_ca {
                console.trust_node_ca(ca).map_err(Failure::Config)?;
            }
            let console = Arc::new(console);
            announce(
                args.log_format,
                format!("console listening on {bound}"),
                Some(("console_listen", bound.to_string())),
            );
            Some(tokio::spawn(keyplane_control::console::serve(
                console_listener,
                acceptor,
                console,
                cancel.clone(),
            )))
        }
        None => None,
    };
    // One line on stdout that scripts (and the testkit) wait for; logs go to stderr.
    if !secrets.dev_files.is_empty() {
        let files: Vec<String> = secrets
            .dev_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let message = format!("dev secrets (mode 0600): {}", files.join(", "));
        announce(args.log_format, message, None);
    }
    if !dev_certs.is_empty() {
        let files: Vec<String> = dev_certs.iter().map(|p| p.display().to_string()).collect();
        let message = format!("dev TLS certificates: {}", files.join(", "));
        announce(args.log_format, message, None);
    }
    announce(
        args.log_format,
        format!("keyplane-control listening on {local}"),
        Some(("listen", local.to_string())),
    );
    tracing::info!(
        listen = %local,
        data_dir = %args.data_dir.display(),
        tls = tls_config.is_some(),
        mutual_tls = args.client_ca.is_some(),
        "keyplane-control serving"
    );

    let compiler = tokio::spawn(Arc::clone(&routes).run(cancel.clone()));
    let sync_loop = tokio::spawn(Arc::clone(&syncer).run(cancel.clone()));
    let pruner = tokio::spawn(keyplane_control::request_log::prune_forever(
        Arc::clone(&store),
        args.request_log_retention,
        prune_every(args.request_log_retention),
        PRUNE_BATCH,
        cancel.clone(),
    ));
    let body_pruner = tokio::spawn(keyplane_control::request_bodies::prune_forever(
        Arc::clone(&store),
        args.request_body_retention,
        prune_every(args.request_body_retention),
        PRUNE_BATCH,
        cancel.clone(),
    ));
    let services = grpc::Services {
        store: Arc::clone(&store),
        routes,
        registry,
        syncer,
        admin_token: TokenCheck::new(&secrets.admin_token, "admin token"),
        node_token: TokenCheck::new(&secrets.node_token, "node token"),
        require_node_cert: args.client_ca.is_some(),
        tls: tls_config,
        request_log: !args.request_log_retention.is_zero(),
        request_bodies: !args.request_log_retention.is_zero()
            && !args.request_body_retention.is_zero(),
    };
    drop(secrets);

    let server = tokio::spawn(grpc::serve(listener, services, cancel.clone()));
    cancel.cancelled().await;
    tracing::info!("shutting down: no new calls, draining in-flight ones");
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::error!(error = %err, "gRPC server failed"),
        Ok(Err(err)) => tracing::error!(error = %err, "gRPC server task failed"),
        Err(_) => tracing::warn!("in-flight calls did not finish in time; stopping anyway"),
    }
    let _ = compiler.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(task) = console_task {
        let _ = task.await;
    }
    let _ = sync_loop.await;
    let _ = pruner.await;
    let _ = body_pruner.await;
    signals.abort();
    store
        .flush()
        .await
        .map_err(|e| Failure::Runtime(format!("cannot flush the store: {e}")))?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the returned task fires `cancel` on either.
fn install_shutdown_signals(
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| {
        signal(kind).map_err(|e| Failure::Runtime(format!("cannot install signal handlers: {e}")))
    };
    let mut term = install(SignalKind::terminate())?;
    let mut int = install(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        cancel.cancel();
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_takes_humantime_durations_zero_or_at_least_a_second() {
        assert_eq!(parse_retention("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_retention("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        assert!(parse_retention("500ms").is_err());
        assert!(parse_retention("soon").is_err());
        assert!(parse_retention("-1d").is_err());
        assert_eq!(prune_every(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            prune_every(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(60)
        );
    }
}
