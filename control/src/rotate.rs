//! `keyplane-control rotate-master-key`: re-encrypts every sealed secret from the old master key
//! to the new one, offline and crash-safe.
//!
//! Order of writes, each one flushed before the next:
//! 1. a marker in `meta`, sealed under the new key: from here on the store refuses to be served
//!    (it holds secrets under two keys) and a rerun must use the same new key;
//! 2. each credential record, rewritten alone (compare-and-swap): a record that already opens
//!    under the new key is skipped, so a rerun after a crash picks up where it stopped;
//! 3. one atomic batch: the key-check record sealed under the new key, and the marker removed.
//!
//! A kill at any point leaves every secret sealed under exactly one of the two keys, and the
//! marker says which rotation to finish.

use crate::creds::{Cipher, MasterKey};
use crate::store::{CREDENTIALS, KEY_CHECK_KEY, KEY_CHECK_PLAINTEXT, META, ROTATION_KEY};
use std::path::Path;

/// A test hook: stop (and wait to be killed) after this many records were rewritten.
pub const PAUSE_AFTER_ENV: &str = "KEYPLANE_TEST_ROTATE_PAUSE_AFTER";

const ROTATION_AAD: &str = "meta/master_key_rotation";
const KEY_CHECK_AAD: &str = "meta/key_check";

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Secrets re-encrypted by this run.
    pub rewritten: usize,
    /// Secrets found already under the new key (by an earlier, interrupted run).
    pub already: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The operator must change something (keys, data dir): exit 2.
    #[error("{0}")]
    Usage(String),
    /// IO or a damaged store: exit 1.
    #[error("{0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> RotateError {
    RotateError::Failed(format!("rotation failed: {e}"))
}

fn opens(cipher: &Cipher, aad: &str, sealed: &[u8], want: &[u8]) -> bool {
    std::str::from_utf8(sealed)
        .ok()
        .and_then(|s| cipher.open(aad, s).ok())
        .is_some_and(|plain| plain == want)
}

/// Rotates the store in `data_dir` from `old` to `new`. Safe to rerun at any point.
pub fn rotate_master_key(
    data_dir: &Path,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<Report, RotateError> {
    let path = data_dir.join("store");
    if !path.exists() {
        return Err(RotateError::Usage(format!(
            "{} holds no store",
            data_dir.display()
        )));
    }
    let db = sled::Config::new().path(&path).open().map_err(|e| {
        RotateError::Failed(format!(
            "cannot open the store in {} (is keyplane-control still running?): {e}",
            path.display()
        ))
    })?;
    keyplane_migrations::migrate(&db).map_err(failed)?;
    let meta = db.open_tree(META).map_err(failed)?;
    let creds = db.open_tree(CREDENTIALS).map_err(failed)?;
    let old_c = Cipher::new(old);
    let new_c = Cipher::new(new);

    let check = meta.get(KEY_CHECK_KEY).map_err(failed)?;
    let check_opens = |c: &Cipher| {
        check
            .as_ref()
            .is_some_and(|v| opens(c, KEY_CHECK_AAD, v, KEY_CHECK_PLAINTEXT))
    };
    match meta.get(ROTATION_KEY).map_err(failed)? {
        Some(marker) => {
            if !opens(&new_c, ROTATION_AAD, &marker, KEY_CHECK_PLAINTEXT) {
                return Err(RotateError::Usage(
                    "an unfinished rotation to another new key is in this data dir: rerun with \
                     the same KEYPLANE_NEW_MASTER_KEY"
                        .into(),
                ));
            }
            if !check_opens(&old_c) {
                return Err(RotateError::Usage(
                    "KEYPLANE_MASTER_KEY is not the key this data dir was written with".into(),
                ));
            }
            tracing::info!("resuming an unfinished master-key rotation");
        }
        None => {
            if check_opens(&new_c) {
                // Done by an earlier run.
                let already = creds.len();
                return Ok(Report {
                    rewritten: 0,
                    already,
                });
            }
            if check.is_some() && !check_opens(&old_c) {
                return Err(RotateError::Usage(
                    "KEYPLANE_MASTER_KEY is not the key this data dir was written with".into(),
                ));
            }
            if old.to_base64() == new.to_base64() {
                return Err(RotateError::Usage(
                    "KEYPLANE_NEW_MASTER_KEY is the same as KEYPLANE_MASTER_KEY".into(),
                ));
            }
            let marker = new_c
                .seal(ROTATION_AAD, KEY_CHECK_PLAINTEXT)
                .map_err(failed)?;
            meta.insert(ROTATION_KEY, marker.as_bytes())
                .map_err(failed)?;
            db.flush().map_err(failed)?;
        }
    }

    let pause_after: Option<usize> = std::env::var(PAUSE_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut report = Report::default();
    for item in creds.iter() {
        let (key, raw) = item.map_err(failed)?;
        let mut rec: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| RotateError::Failed(format!("a credential record is malformed: {e}")))?;
        let id = rec
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let Some(sealed) = rec.get("secret_sealed").and_then(|v| v.as_str()) else {
            continue;
        };
        if new_c.open(&id, sealed).is_ok() {
            report.already += 1;
            continue;
        }
        let plain = old_c.open(&id, sealed).map_err(|_| {
            RotateError::Failed(format!(
                "credential {id} opens with neither key: the store is damaged"
            ))
        })?;
        let resealed = new_c.seal(&id, &plain).map_err(failed)?;
        rec["secret_sealed"] = serde_json::Value::String(resealed);
        let bytes = serde_json::to_vec(&rec).map_err(failed)?;
        creds
            .compare_and_swap(&key, Some(&raw), Some(bytes))
            .map_err(failed)?
            .map_err(|_| failed("a credential changed during the rotation"))?;
        db.flush().map_err(failed)?;
        report.rewritten += 1;
        if pause_after == Some(report.rewritten) {
            println!("rotation paused after {} records", report.rewritten);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }

    let check = new_c
        .seal(KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
        .map_err(failed)?;
    let mut batch = sled::Batch::default();
    batch.insert(KEY_CHECK_KEY, check.as_bytes());
    batch.remove(ROTATION_KEY);
    meta.apply_batch(batch).map_err(failed)?;
    db.flush().map_err(failed)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::Secret;
    use crate::store::testing::when_unlocked;
    use crate::store::{OpenStoreError, Store};

    #[test]
    fn rotation_reencrypts_and_the_store_opens_with_the_new_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        {
            let store = Store::open(dir.path(), &old).unwrap();
            store
                .add_provider("p", "openai", "http://127.0.0.1:1/v1")
                .unwrap();
            for i in 0..3 {
                store
                    .add_credential("p", &format!("c{i}"), "", &Secret::new(format!("sk-{i}")))
                    .unwrap();
            }
        }
        let r = when_unlocked(|| rotate_master_key(dir.path(), &old, &new)).unwrap();
        assert_eq!(r.rewritten, 3);
        let again = when_unlocked(|| rotate_master_key(dir.path(), &old, &new)).unwrap();
        assert_eq!(again.rewritten, 0);
        assert!(matches!(
            when_unlocked(|| Store::open(dir.path(), &old)),
            Err(OpenStoreError::WrongMasterKey)
        ));
        let store = when_unlocked(|| Store::open(dir.path(), &new)).unwrap();
        let mut secrets: Vec<String> = store
            .credentials()
            .unwrap()
            .iter()
            .map(|c| store.credential_secret(c).unwrap().expose().to_string())
            .collect();
        secrets.sort();
        assert_eq!(secrets, ["sk-0", "sk-1", "sk-2"]);
    }
}
