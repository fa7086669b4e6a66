//! Encryption at rest of upstream secrets.
//!
//! AES-256-GCM under `KEYPLANE_MASTER_KEY`, a fresh random 96-bit nonce for every value, and the
//! owning record's id as associated data, so that a sealed value copied onto another record does
//! not open.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;

const NONCE_LEN: usize = 12;

/// A 32-byte master key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// Parses base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let raw = STANDARD
            .decode(text.trim())
            .map_err(|_| "is not valid base64".to_string())?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|v: Vec<u8>| format!("decodes to {} bytes, expected 32", v.len()))?;
        Ok(MasterKey(bytes))
    }

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut OsRng, &mut bytes);
        MasterKey(bytes)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A secret that is not the master key (an upstream API key, a token). `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The one way to read the value; grep for it to find every place a secret leaves its box.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A value could not be opened: wrong master key, or the record was tampered with.
#[derive(Debug, thiserror::Error)]
#[error("a sealed value does not open with this master key")]
pub struct OpenError;

/// Seals and opens values under one master key.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl Cipher {
    pub fn new(key: &MasterKey) -> Self {
        Cipher {
            aead: Aes256Gcm::new(&key.0.into()),
        }
    }

    /// Encrypts `plaintext` bound to `record_id`; returns base64 of nonce || ciphertext.
    pub fn seal(&self, record_id: &str, plaintext: &[u8]) -> Result<String, OpenError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: record_id.as_bytes(),
                },
            )
            .map_err(|_| OpenError)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(STANDARD.encode(out))
    }

    /// Opens what [`Cipher::seal`] produced for the same `record_id`.
    pub fn open(&self, record_id: &str, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let raw = STANDARD.decode(sealed).map_err(|_| OpenError)?;
        if raw.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: record_id.as_bytes(),
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let cipher = Cipher::new(&MasterKey::generate());
        let a = cipher.seal("cred-1", b"sk-secret").unwrap();
        let b = cipher.seal("cred-1", b"sk-secret").unwrap();
        assert_ne!(a, b, "every seal draws a new nonce");
        assert_eq!(cipher.open("cred-1", &a).unwrap(), b"sk-secret");
        assert!(!a.contains("sk-secret"));
    }

    #[test]
    fn wrong_record_or_key_does_not_open() {
        let cipher = Cipher::new(&MasterKey::generate());
        let sealed = cipher.seal("cred-1", b"sk-secret").unwrap();
        assert!(cipher.open("cred-2", &sealed).is_err());
        assert!(
            Cipher::new(&MasterKey::generate())
                .open("cred-1", &sealed)
                .is_err()
        );
        assert!(cipher.open("cred-1", "AAAA").is_err());
        assert!(cipher.open("cred-1", "not base64!").is_err());
    }

    #[test]
    fn master_key_parsing_and_redaction() {
        let key = MasterKey::generate();
        let parsed = MasterKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(parsed.0, key.0);
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("???").is_err());
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        assert_eq!(
            format!("{:?}", Secret::new("x".into())),
            "Secret(<redacted>)"
        );
    }
}
