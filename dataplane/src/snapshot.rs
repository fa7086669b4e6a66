//! The route-table snapshot in `--state-dir`: what lets a data plane serve after its own restart
//! while the control plane is unreachable.
//!
//! The table carries upstream secrets, so the file is sealed: AES-256-GCM under a key derived
//! (HKDF-SHA256) from the node token, which every data plane has and the disk does not. Writes are
//! atomic: a temp file, fsync, rename, fsync of the directory.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use keyplane_proto::v1 as pb;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "route-table.snapshot";
const MAGIC: &[u8] = b"KPSNAP1\0";

fn cipher(node_token: &str) -> Aes256Gcm {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"keyplane"), node_token.as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(b"route-table snapshot v1", &mut key);
    Aes256Gcm::new(&key.into())
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Seals and writes `table` atomically.
pub fn save(state_dir: &Path, node_token: &str, table: &pb::RouteTable) -> std::io::Result<()> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed = cipher(node_token)
        .encrypt(
            &nonce,
            Payload {
                msg: &table.encode_to_vec(),
                aad: MAGIC,
            },
        )
        .map_err(|_| std::io::Error::other("cannot seal the snapshot"))?;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&nonce)?;
        file.write_all(&sealed)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// Why a snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no snapshot")]
    Missing,
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("the snapshot does not open with this node token (rotated?) or is damaged")]
    Sealed,
}

pub fn load(state_dir: &Path, node_token: &str) -> Result<pb::RouteTable, LoadError> {
    let raw = match std::fs::read(path(state_dir)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
        Err(e) => return Err(e.into()),
    };
    let rest = raw.strip_prefix(MAGIC).ok_or(LoadError::Sealed)?;
    if rest.len() < 12 {
        return Err(LoadError::Sealed);
    }
    let (nonce, sealed) = rest.split_at(12);
    let plain = cipher(node_token)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: MAGIC,
            },
        )
        .map_err(|_| LoadError::Sealed)?;
    pb::RouteTable::decode(plain.as_slice()).map_err(|_| LoadError::Sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sealed_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let table = pb::RouteTable {
            route_version: 7,
            credentials: vec![pb::RouteCredential {
                id: "c".into(),
                secret: "sk-very-secret-upstream".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(load(dir.path(), "tok"), Err(LoadError::Missing)));
        save(dir.path(), "node-token-1234567", &table).unwrap();
        let raw = std::fs::read(path(dir.path())).unwrap();
        assert!(!raw.windows(23).any(|w| w == b"sk-very-secret-upstream"));
        assert_eq!(load(dir.path(), "node-token-1234567").unwrap(), table);
        assert!(matches!(
            load(dir.path(), "other-token-123456"),
            Err(LoadError::Sealed)
        ));
        assert!(!dir.path().join("route-table.snapshot.tmp").exists());
    }
}
