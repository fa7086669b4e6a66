//! `keyplane-control`: parses flags, loads secrets, opens the store, serves gRPC until SIGTERM or
//! SIGINT, then flushes the store and exits 0.

use clap::Parser;
use keyplane_control::catalog_sync::{SyncConfig, Syncer};
use keyplane_control::config::{self, ConfigError};
use keyplane_control::grpc::{self, TokenCheck};
use keyplane_control::nodes::Registry;
use keyplane_control::routes::Routes;
use keyplane_control::store::{OpenStoreError, Store};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Keyplane's control plane: credentials, catalog, client keys, usage ledger and route tables.
#[derive(Parser, Debug)]
#[command(name = "keyplane-control", version)]
struct Args {
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
    /// Seconds between catalog syncs of each provider with a catalog adapter (also synced on
    /// start). 0 turns automatic sync off: only `keyplanectl catalog sync` syncs.
    #[arg(long, default_value_t = 300)]
    catalog_sync_interval_secs: u64,
    /// Time limit of one provider's catalog sync (fetch and parse), in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    catalog_sync_timeout_secs: u64,
}

/// How long in-flight calls get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("keyplane-control: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("keyplane-control: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("keyplane-control: {msg}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    /// Bad flags, secrets or data dir: the operator must change something. Exit code 2.
    Config(String),
    /// Anything else. Exit code 1.
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Failure {
        Failure::Config(err.0)
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    // Before anything else, so that a SIGTERM at any later moment is a graceful stop.
    let cancel = CancellationToken::new();
    let signals = install_shutdown_signals(cancel.clone())?;
    let secrets = config::load_secrets(|k| std::env::var(k).ok(), args.dev, &args.data_dir)?;
    let store = match Store::open(&args.data_dir, &secrets.master_key) {
        Ok(store) => Arc::new(store),
        Err(err @ (OpenStoreError::WrongMasterKey | OpenStoreError::Migration(_))) => {
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

    // One line on stdout that scripts (and the testkit) wait for; logs go to stderr.
    let mut out = std::io::stdout().lock();
    if !secrets.dev_files.is_empty() {
        let files: Vec<String> = secrets
            .dev_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = writeln!(out, "dev secrets (mode 0600): {}", files.join(", "));
    }
    let _ = writeln!(out, "keyplane-control listening on {local}");
    let _ = out.flush();
    drop(out);
    tracing::info!(listen = %local, data_dir = %args.data_dir.display(), "keyplane-control serving");

    let compiler = tokio::spawn(Arc::clone(&routes).run(cancel.clone()));
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
    let sync_loop = tokio::spawn(Arc::clone(&syncer).run(cancel.clone()));
    let services = grpc::Services {
        store: Arc::clone(&store),
        routes,
        registry,
        syncer,
        admin_token: TokenCheck::new(&secrets.admin_token, "admin token"),
        node_token: TokenCheck::new(&secrets.node_token, "node token"),
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
    let _ = sync_loop.await;
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
