//! The sled store: tree names, key layout and record types, in one place.
//!
//! The layout is documented (and versioned) in the `keyplane-migrations` crate; this module is the
//! code that reads and writes it. Records are JSON so that optional fields can be added without a
//! migration.

use crate::creds::{Cipher, MasterKey};
use crate::error::{Error, Result};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const META: &str = "meta";
pub(crate) const PROVIDERS: &str = "providers";
pub(crate) const CREDENTIALS: &str = "credentials";
pub(crate) const OFFERINGS: &str = "offerings";
pub(crate) const CLIENT_KEYS: &str = "client_keys";
pub(crate) const CLIENT_KEY_NAMES: &str = "client_key_names";
pub(crate) const USAGE: &str = "usage";
pub(crate) const USAGE_TOTALS: &str = "usage_totals";
/// Usage records with UUIDv7 ids, grouped by the id's millisecond (layout version 3).
pub(crate) const USAGE_MS: &str = "usage_ms";
pub(crate) const NODES: &str = "nodes";
pub(crate) const CATALOGS: &str = "catalogs";
pub(crate) const PRICES: &str = "prices";
pub(crate) const FX_RATES: &str = "fx_rates";
pub(crate) const ALIASES: &str = "aliases";

pub(crate) const ROUTE_VERSION_KEY: &[u8] = b"route_version";
pub(crate) const KEY_CHECK_KEY: &[u8] = b"key_check";
pub(crate) const KEY_CHECK_PLAINTEXT: &[u8] = b"keyplane master key check v1";
/// Present while `rotate-master-key` has not finished: the store then holds secrets under two
/// keys and must not be served.
pub(crate) const ROTATION_KEY: &[u8] = b"master_key_rotation";

// --- health, chains, limits (issue 7): new trees, no layout change ---
pub(crate) const CHAINS: &str = "chains";
pub(crate) const KEY_DAYS: &str = "usage_key_days";
/// The request log and its index (`request_log.rs`): new trees, no layout change.
pub(crate) const REQUEST_LOG: &str = "request_log";
pub(crate) const REQUEST_LOG_INDEX: &str = "request_log_index";
/// Per minute, hour and day sums of every request (`rollup.rs`): a new tree, no layout change.
pub(crate) const ROLLUPS: &str = "rollups";
/// Set once `rollups` was built from the ledger and the request log (see
/// [`Store::backfill_rollups`]).
const ROLLUPS_BUILT: &[u8] = b"rollups_built";
#[cfg(test)]
pub(crate) const ROLLUPS_BUILT_FOR_TESTS: &[u8] = ROLLUPS_BUILT;
/// Captured prompt and completion bodies (`request_bodies.rs`): a new tree, no layout change.
pub(crate) const REQUEST_BODIES: &str = "request_bodies";
/// Set once `usage_key_days` holds every stored record (see [`Store::backfill_key_days`]).
const KEY_DAYS_BACKFILLED: &[u8] = b"key_days_backfilled";

/// Separator inside composite keys; names are validated never to contain it.
pub(crate) const SEP: u8 = 0;

/// Why the store could not be opened. Each is an operator-facing one-liner.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error("cannot open the store in {path}: {source}")]
    Sled { path: String, source: sled::Error },
    #[error(transparent)]
    Migration(#[from] keyplane_migrations::MigrationError),
    #[error(
        "KEYPLANE_MASTER_KEY does not match the key this data dir was written with; \
         its secrets cannot be read"
    )]
    WrongMasterKey,
    #[error(
        "a master-key rotation of this data dir is unfinished: rerun `keyplane-control \
         rotate-master-key` with the same two keys"
    )]
    RotationUnfinished,
    #[error("cannot initialize the store: {0}")]
    Init(#[from] Error),
}

/// The open store. Cheap to share behind an `Arc`.
pub struct Store {
    pub(crate) db: sled::Db,
    pub(crate) meta: sled::Tree,
    pub(crate) providers: sled::Tree,
    pub(crate) credentials: sled::Tree,
    pub(crate) offerings: sled::Tree,
    pub(crate) client_keys: sled::Tree,
    pub(crate) client_key_names: sled::Tree,
    pub(crate) usage: sled::Tree,
    pub(crate) usage_totals: sled::Tree,
    /// See `ledger/bucket.rs`.
    pub(crate) usage_ms: sled::Tree,
    /// The latest millisecond of a UUIDv7 request id stored in `usage` (written before layout
    /// version 3 grouped such records in `usage_ms`): a record re-sent with an id up to it may
    /// already be there. Fixed once the store is open, as `usage` takes no UUIDv7 ids since.
    pub(crate) legacy_v7_until_ms: Option<u64>,
    pub(crate) nodes: sled::Tree,
    /// Provider name → its last good synced catalog and sync status.
    pub(crate) catalogs: sled::Tree,
    /// Provider `\0` model id → an imported price.
    pub(crate) prices: sled::Tree,
    /// Currency code → USD per unit.
    pub(crate) fx_rates: sled::Tree,
    /// Client-facing alias → target model name.
    pub(crate) aliases: sled::Tree,
    /// Fallback chains by name.
    pub(crate) chains: sled::Tree,
    /// Per (key id, UTC day number) totals, for budgets by period.
    pub(crate) key_days: sled::Tree,
    /// Start time ‖ request id → logged request; see `request_log.rs`.
    pub(crate) request_log: sled::Tree,
    pub(crate) request_log_index: sled::Tree,
    /// See `rollup.rs`.
    pub(crate) rollups: sled::Tree,
    /// The same key → captured bodies of a key that opted in; see `request_bodies.rs`.
    pub(crate) request_bodies: sled::Tree,
    pub(crate) cipher: Cipher,
    /// Serializes admin writes, so that check-then-write validations (a label unique within a
    /// provider, a referenced provider existing) cannot race each other. Admin writes are rare;
    /// the ledger and the node registry do not take it.
    pub(crate) admin_lock: Mutex<()>,
    /// Usage ingest takes it shared; a backup takes it exclusive (with the admin lock), so that
    /// the export is one consistent cut of the store.
    pub(crate) export_lock: std::sync::RwLock<()>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, brings its layout to the current version and checks
    /// that `master_key` is the one its secrets were sealed with.
    pub fn open(dir: &Path, master_key: &MasterKey) -> Result<Store, OpenStoreError> {
        let path = dir.join("store");
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|source| OpenStoreError::Sled {
                path: path.display().to_string(),
                source,
            })?;
        keyplane_migrations::migrate(&db)?;
        let tree = |name: &str| db.open_tree(name).map_err(Error::from);
        let usage = tree(USAGE)?;
        let legacy_v7_until_ms = crate::ledger::legacy_v7_until_ms(&usage)?;
        let store = Store {
            meta: tree(META)?,
            providers: tree(PROVIDERS)?,
            credentials: tree(CREDENTIALS)?,
            offerings: tree(OFFERINGS)?,
            client_keys: tree(CLIENT_KEYS)?,
            client_key_names: tree(CLIENT_KEY_NAMES)?,
            usage,
            usage_totals: tree(USAGE_TOTALS)?,
            usage_ms: tree(USAGE_MS)?,
            legacy_v7_until_ms,
            nodes: tree(NODES)?,
            catalogs: tree(CATALOGS)?,
            prices: tree(PRICES)?,
            fx_rates: tree(FX_RATES)?,
            aliases: tree(ALIASES)?,
            chains: tree(CHAINS)?,
            key_days: tree(KEY_DAYS)?,
            request_log: tree(REQUEST_LOG)?,
            request_log_index: tree(REQUEST_LOG_INDEX)?,
            rollups: tree(ROLLUPS)?,
            request_bodies: tree(REQUEST_BODIES)?,
            cipher: Cipher::new(master_key),
            admin_lock: Mutex::new(()),
            export_lock: std::sync::RwLock::new(()),
            db,
        };
        store.check_master_key()?;
        store.backfill_key_days()?;
        store.backfill_rollups(now_ms())?;
        Ok(store)
    }

    fn check_master_key(&self) -> Result<(), OpenStoreError> {
        if self.meta.contains_key(ROTATION_KEY).map_err(Error::from)? {
            return Err(OpenStoreError::RotationUnfinished);
        }
        match self.meta.get(KEY_CHECK_KEY).map_err(Error::from)? {
            Some(sealed) => {
                let sealed =
                    std::str::from_utf8(&sealed).map_err(|_| OpenStoreError::WrongMasterKey)?;
                match self.cipher.open("meta/key_check", sealed) {
                    Ok(plain) if plain == KEY_CHECK_PLAINTEXT => Ok(()),
                    _ => Err(OpenStoreError::WrongMasterKey),
                }
            }
            None => {
                let sealed = self
                    .cipher
                    .seal("meta/key_check", KEY_CHECK_PLAINTEXT)
                    .map_err(Error::from)?;
                self.meta
                    .insert(KEY_CHECK_KEY, sealed.as_bytes())
                    .map_err(Error::from)?;
                self.db.flush().map_err(Error::from)?;
                Ok(())
            }
        }
    }

    /// `usage_key_days` (issue 7) is a new tree: a store that holds usage from before it is
    /// backfilled from the stored records once, before serving, so that budgets count that
    /// spend too. Idempotent: it rebuilds the tree from scratch and only then sets its marker.
    fn backfill_key_days(&self) -> Result<(), OpenStoreError> {
        if self
            .meta
            .get(KEY_DAYS_BACKFILLED)
            .map_err(Error::from)?
            .is_some()
        {
            return Ok(());
        }
        self.key_days.clear().map_err(Error::from)?;
        self.rebuild_key_days()?;
        self.meta
            .insert(KEY_DAYS_BACKFILLED, b"1".as_slice())
            .map_err(Error::from)?;
        self.db.flush().map_err(Error::from)?;
        Ok(())
    }

    /// `rollups` is a new tree: a store that holds usage or logged requests from before it is
    /// summed once, before serving, so that the overview shows them. Rebuilt from scratch (the
    /// ingest, which would add to it, is not served yet), and only then marked built; a crash
    /// midway builds it again at the next start.
    fn backfill_rollups(&self, now_ms: i64) -> Result<(), OpenStoreError> {
        if self.meta.get(ROLLUPS_BUILT).map_err(Error::from)?.is_some() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.rebuild_rollups(now_ms)?;
        self.meta
            .insert(ROLLUPS_BUILT, b"1".as_slice())
            .map_err(Error::from)?;
        self.db.flush().map_err(Error::from)?;
        tracing::info!(
            rows = self.rollups.len(),
            ms = started.elapsed().as_millis() as u64,
            "usage rollups built from the ledger and the request log"
        );
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Takes the admin write lock. A poisoned lock only means another admin call panicked; the
    /// store itself is consistent (each write is one sled operation or transaction), so go on.
    pub(crate) fn admin_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Decodes a JSON record, naming the tree when it is malformed.
pub(crate) fn decode<T: DeserializeOwned>(tree: &'static str, raw: &[u8]) -> Result<T> {
    serde_json::from_slice(raw).map_err(|e| Error::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and integers into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    key: impl AsRef<[u8]>,
) -> Result<Option<T>> {
    tree.get(key)?.map(|raw| decode(name, &raw)).transpose()
}

/// Every record of a tree (or of a key prefix), in key order.
pub(crate) fn scan<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    prefix: &[u8],
) -> Result<Vec<T>> {
    tree.scan_prefix(prefix)
        .map(|item| {
            let (_, raw) = item?;
            decode(name, &raw)
        })
        .collect()
}

/// Composite key: parts joined by [`SEP`].
pub(crate) fn composite(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &MasterKey::generate()).unwrap();
        (dir, store)
    }

    /// Runs `f` again (for up to 5 s) while the store's file lock is still held: sled lets go of
    /// it from its background threads a moment after the last handle is dropped, so opening a
    /// store right after closing it in the same process can find it locked.
    pub(crate) fn when_unlocked<T, E: std::fmt::Display>(
        mut f: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        for _ in 0..500 {
            match f() {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        drop(Store::open(dir.path(), &key).unwrap());
        let other = MasterKey::generate();
        assert!(matches!(
            testing::when_unlocked(|| Store::open(dir.path(), &other)),
            Err(OpenStoreError::WrongMasterKey)
        ));
        assert!(testing::when_unlocked(|| Store::open(dir.path(), &key)).is_ok());
    }
}
