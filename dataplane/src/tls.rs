//! The HTTPS listener's certificate: loaded from PEM files, offered with ALPN `h2` and
//! `http/1.1`, and reloaded on SIGHUP or when either file changes. A reload swaps the acceptor
//! new connections use; connections already open keep theirs, so nothing is dropped.

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files' modification times are compared.
const POLL: Duration = Duration::from_secs(2);

pub struct Reloader {
    cert: PathBuf,
    key: PathBuf,
    acceptor: ArcSwap<TlsAcceptor>,
    /// Modification times of (cert, key) when last loaded.
    stamp: std::sync::Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

/// Builds a server config from PEM files; the error names the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| format!("--tls-cert/--tls-key do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Reloader {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Reloader>, String> {
        let stamp = (mtime(cert), mtime(key));
        let config = server_config(cert, key)?;
        Ok(Arc::new(Reloader {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(config))),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Loads the files again; on failure keeps serving the certificate held.
    pub fn reload(&self, why: &str) {
        // Noted before loading: a failed load is retried at the files' next change (a writer
        // replacing the certificate and then the key), not on every tick.
        *self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            (mtime(&self.cert), mtime(&self.key));
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                self.acceptor
                    .store(Arc::new(TlsAcceptor::from(Arc::new(config))));
                tracing::info!(reason = why, cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(err) => tracing::error!(
                reason = why,
                error = %err,
                "TLS certificate reload failed; keeping the one held"
            ),
        }
    }

    fn changed(&self) -> bool {
        let now = (mtime(&self.cert), mtime(&self.key));
        let held = *self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        now != held
    }

    /// Reloads on SIGHUP and when either file's modification time changes, until `cancel`.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGHUP; reloading on file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = hup_recv => self.reload("SIGHUP"),
                _ = tick.tick() => {
                    if self.changed() {
                        self.reload("file changed");
                    }
                }
            }
        }
    }
}
