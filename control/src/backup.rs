//! Backup and restore of the whole store.
//!
//! `Store::export` (behind the Admin `Backup` RPC, `keyplanectl backup FILE`) writes one
//! consistent cut of every sled tree: admin writes and usage ingest wait while it is read. The
//! format is JSON lines: a header, one line per record (tree, key and value in base64), and an
//! end line with the record count, so that a truncated file is refused. Values are the store's
//! own bytes: upstream secrets stay sealed under the master key, client keys stay hashes.
//!
//! `restore` (offline, `keyplane-control restore --data-dir DIR FILE`) writes such a file into an
//! empty data dir.

use crate::creds::{Cipher, MasterKey};
use crate::error::Result;
use crate::store::{KEY_CHECK_KEY, KEY_CHECK_PLAINTEXT, META, Store, now_ms};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::path::Path;

const FORMAT: &str = "keyplane-backup";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tree: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// Only on the last line: how many records came before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_records: Option<u64>,
}

impl Store {
    /// The whole store as a backup file's bytes, read as one consistent cut.
    pub fn export(&self) -> Result<Vec<u8>> {
        let _admin = self.admin_guard();
        let _ingest = self
            .export_lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            created_at_ms: now_ms(),
        };
        push_json(&mut out, &header);
        let mut count = 0u64;
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            for item in tree.iter() {
                let (k, v) = item?;
                push_json(
                    &mut out,
                    &Line {
                        tree: Some(B64.encode(&name)),
                        key: Some(B64.encode(&k)),
                        value: Some(B64.encode(&v)),
                        end_records: None,
                    },
                );
                count += 1;
            }
        }
        push_json(
            &mut out,
            &Line {
                tree: None,
                key: None,
                value: None,
                end_records: Some(count),
            },
        );
        Ok(out)
    }
}

fn push_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Bad arguments or file: exit 2.
    #[error("{0}")]
    Usage(String),
    /// IO while writing: exit 1.
    #[error("{0}")]
    Failed(String),
}

type Records = Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>;

fn parse(text: &str) -> std::result::Result<Records, String> {
    let mut lines = text.lines();
    let header: Header = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("not a keyplane backup (no header line)")?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(format!(
            "not a keyplane backup of a known version ({} v{})",
            header.format, header.version
        ));
    }
    let mut records = Vec::new();
    for (n, line) in lines.enumerate() {
        let bad = || format!("line {} is malformed", n + 2);
        let line: Line = serde_json::from_str(line).map_err(|_| bad())?;
        if let Some(count) = line.end_records {
            if count != records.len() as u64 {
                return Err(format!(
                    "the file says {count} records but holds {}",
                    records.len()
                ));
            }
            return Ok(records);
        }
        let field = |f: Option<String>| f.and_then(|v| B64.decode(v).ok()).ok_or_else(bad);
        records.push((field(line.tree)?, field(line.key)?, field(line.value)?));
    }
    Err("the file is truncated (no end line)".into())
}

/// Restores `file` into `data_dir`, which must be missing or empty. With `KEYPLANE_MASTER_KEY`
/// set (via `env`), first checks that the backup's secrets open with it. Returns the record count.
pub fn restore(
    data_dir: &Path,
    file: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> std::result::Result<usize, RestoreError> {
    let usage = RestoreError::Usage;
    if let Ok(mut entries) = std::fs::read_dir(data_dir)
        && entries.next().is_some()
    {
        return Err(usage(format!(
            "{} is not empty: restore only into a new data dir",
            data_dir.display()
        )));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
    let records = parse(&text).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    if let Some(key) = env(crate::config::MASTER_KEY_ENV).filter(|k| !k.is_empty()) {
        let key = MasterKey::from_base64(&key)
            .map_err(|why| usage(format!("KEYPLANE_MASTER_KEY is malformed: {why}")))?;
        let cipher = Cipher::new(&key);
        let check = records
            .iter()
            .find(|(t, k, _)| t.as_slice() == META.as_bytes() && k.as_slice() == KEY_CHECK_KEY);
        let opens = check.is_some_and(|(_, _, v)| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| cipher.open("meta/key_check", s).ok())
                .is_some_and(|p| p == KEY_CHECK_PLAINTEXT)
        });
        if !opens {
            return Err(usage(
                "KEYPLANE_MASTER_KEY does not open this backup's secrets".into(),
            ));
        }
    }
    let failed = |e: sled::Error| RestoreError::Failed(format!("cannot write the store: {e}"));
    let db = sled::Config::new()
        .path(data_dir.join("store"))
        .open()
        .map_err(failed)?;
    for (tree, key, value) in &records {
        db.open_tree(tree)
            .map_err(failed)?
            .insert(key.as_slice(), value.as_slice())
            .map_err(failed)?;
    }
    db.flush().map_err(failed)?;
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::Secret;

    #[test]
    fn export_restore_round_trip_and_refusals() {
        let src = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let bytes = {
            let store = Store::open(src.path(), &key).unwrap();
            store
                .add_provider("p", "openai", "http://127.0.0.1:1/v1")
                .unwrap();
            store
                .add_credential("p", "main", "", &Secret::new("sk-live-secret".into()))
                .unwrap();
            store.create_key("alice").unwrap();
            store.export().unwrap()
        };
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("sk-live-secret"));
        let file = src.path().join("backup.jsonl");
        std::fs::write(&file, &bytes).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let dir = dst.path().join("data");
        let wrong = MasterKey::generate().to_base64();
        let err = restore(&dir, &file, |_| Some(wrong.clone())).unwrap_err();
        assert!(matches!(err, RestoreError::Usage(_)), "{err}");
        let n = restore(&dir, &file, |_| Some(key.to_base64())).unwrap();
        assert!(n > 0);
        let err = restore(&dir, &file, |_| None).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");

        let store = crate::store::testing::when_unlocked(|| Store::open(&dir, &key)).unwrap();
        let creds = store.credentials().unwrap();
        assert_eq!(
            store.credential_secret(&creds[0]).unwrap().expose(),
            "sk-live-secret"
        );
        assert!(store.key_by_name("alice").unwrap().is_some());

        let truncated = src.path().join("cut.jsonl");
        std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
        let err = restore(&dst.path().join("other"), &truncated, |_| None).unwrap_err();
        assert!(matches!(err, RestoreError::Usage(_)), "{err}");
    }
}
