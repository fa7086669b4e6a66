//! Client keys: generated from the OS RNG, shown once, stored only as SHA-256 hashes.

use crate::catalog::check_name;
use crate::creds::Secret;
use crate::error::{Error, Result, invalid};
use crate::store::{self, CLIENT_KEYS, META, Store, now_ms};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;

/// Prefix of every client key, so that a leaked one is recognizable by secret scanners.
pub const KEY_PREFIX: &str = "kp_";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientKeyRec {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the full key.
    pub sha256: String,
    pub created_at_ms: i64,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
    #[serde(default)]
    pub policy: KeyPolicy,
}

/// A key's limits; 0 / empty means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    #[serde(default)]
    pub budget_nano_usd: u64,
    #[serde(default)]
    pub budget_tokens: u64,
    /// daily, weekly, monthly or total (the default).
    #[serde(default)]
    pub period: String,
    #[serde(default)]
    pub rpm: u32,
    #[serde(default)]
    pub tpm: u64,
    #[serde(default)]
    pub concurrency: u32,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub expires_at_ms: i64,
    /// The control plane's route-probe key (`console/probe.rs`): it may pin a request to one
    /// route. Set only when the control plane makes that key; no policy change touches it.
    #[serde(default)]
    pub probe: bool,
    /// Keep the key's prompt and completion bodies, capped, for the console's request view
    /// (`request_bodies.rs`). Off unless the operator turns it on for the key.
    #[serde(default)]
    pub capture_bodies: bool,
}

impl KeyPolicy {
    pub fn period(&self) -> &str {
        if self.period.is_empty() {
            "total"
        } else {
            &self.period
        }
    }

    pub fn is_limited(&self) -> bool {
        self.budget_nano_usd > 0
            || self.budget_tokens > 0
            || self.rpm > 0
            || self.tpm > 0
            || self.concurrency > 0
    }
}

/// A policy change: `None` leaves a field as it is; a zero / empty value clears a limit.
#[derive(Debug, Clone, Default)]
pub struct PolicyInput {
    pub budget_usd: Option<String>,
    pub budget_tokens: Option<u64>,
    pub period: Option<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u32>,
    pub models: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub capture_bodies: Option<bool>,
}

impl PolicyInput {
    /// Applies the change to `policy`, validating every field first.
    pub fn apply(&self, policy: &mut KeyPolicy) -> Result<()> {
        let mut next = policy.clone();
        if let Some(text) = &self.budget_usd {
            let micros = if text.trim().is_empty() {
                0
            } else {
                crate::money::parse_micros(text)
                    .map_err(|e| invalid(format!("budget {text:?} {e}")))?
            };
            next.budget_nano_usd = micros.saturating_mul(1000);
        }
        if let Some(v) = self.budget_tokens {
            next.budget_tokens = v;
        }
        if let Some(p) = &self.period {
            let p = p.trim();
            crate::period::check_period(p).map_err(invalid)?;
            next.period = p.to_string();
        }
        if let Some(v) = self.rpm {
            next.rpm = v;
        }
        if let Some(v) = self.tpm {
            next.tpm = v;
        }
        if let Some(v) = self.concurrency {
            next.concurrency = v;
        }
        if let Some(text) = &self.models {
            let globs: Vec<String> = text
                .split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect();
            if globs
                .iter()
                .any(|g| g.len() > 256 || g.chars().any(char::is_control))
            {
                return Err(invalid("a model glob is malformed"));
            }
            next.models = globs;
        }
        if let Some(v) = self.expires_at_ms {
            next.expires_at_ms = v.max(0);
        }
        if let Some(v) = self.capture_bodies {
            next.capture_bodies = v;
        }
        *policy = next;
        Ok(())
    }
}

/// Where the route probe's key is held in `meta`.
const PROBE_KEY: &[u8] = b"probe_key";

/// The probe key's id and its secret sealed under the master key.
#[derive(Serialize, Deserialize)]
struct ProbeKeyRec {
    key_id: String,
    sealed: String,
}

/// The associated data of the probe key's seal: bound to the key it belongs to.
fn probe_seal_id(key_id: &str) -> String {
    format!("meta/probe_key/{key_id}")
}

/// `kp_` followed by 32 random bytes from the OS, base64url without padding.
pub fn generate_key() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Store {
    /// Creates a key named `name`; returns its record and the key itself, which is not kept.
    pub fn create_key(&self, name: &str) -> Result<(ClientKeyRec, Secret)> {
        self.create_key_with(name, &PolicyInput::default())
    }

    /// Creates a key with a policy.
    pub fn create_key_with(
        &self,
        name: &str,
        policy: &PolicyInput,
    ) -> Result<(ClientKeyRec, Secret)> {
        check_name("key", name)?;
        let mut limits = KeyPolicy::default();
        policy.apply(&mut limits)?;
        self.insert_new_key(name, limits)
    }

    fn insert_new_key(&self, name: &str, limits: KeyPolicy) -> Result<(ClientKeyRec, Secret)> {
        let _guard = self.admin_guard();
        self.insert_new_key_locked(name, limits)
    }

    /// [`Store::insert_new_key`] with the admin lock already held.
    fn insert_new_key_locked(
        &self,
        name: &str,
        limits: KeyPolicy,
    ) -> Result<(ClientKeyRec, Secret)> {
        let key = generate_key();
        let rec = ClientKeyRec {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_string(),
            sha256: hex::encode(hash_key(key.expose())),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            policy: limits,
        };
        let value = store::encode(&rec);
        (&self.client_keys, &self.client_key_names).transaction(|(keys, names)| {
            if names.get(name.as_bytes())?.is_some() {
                return sled::transaction::abort(Error::AlreadyExists(format!(
                    "a key named {name:?} already exists"
                )));
            }
            names.insert(name.as_bytes(), rec.id.as_bytes())?;
            keys.insert(rec.id.as_bytes(), value.clone())?;
            Ok(())
        })?;
        Ok((rec, key))
    }

    /// The route probe's key and its secret, made on first use. The secret is kept sealed under
    /// the master key in `meta/probe_key` (the one client key the control plane keeps, since it
    /// sends requests with it). A probe key that was revoked, or whose seal no longer opens (the
    /// master key was rotated), is replaced by a new one named `probe`, `probe-2`, ... (one that
    /// no longer opens is revoked first: nobody holds it any more). The flag says whether the key
    /// is new, so that the route table must carry it before it is used.
    pub fn probe_key(&self) -> Result<(ClientKeyRec, Secret, bool)> {
        let _guard = self.admin_guard();
        if let Some(held) = store::get::<ProbeKeyRec>(&self.meta, META, PROBE_KEY)?
            && let Some(mut rec) = self.key_by_id(&held.key_id)?
            && rec.revoked_at_ms.is_none()
            && rec.policy.probe
        {
            let opened = self
                .cipher
                .open(&probe_seal_id(&rec.id), &held.sealed)
                .ok()
                .and_then(|plain| String::from_utf8(plain).ok());
            if let Some(text) = opened {
                return Ok((rec, Secret::new(text), false));
            }
            rec.revoked_at_ms = Some(now_ms());
            self.client_keys
                .insert(rec.id.as_bytes(), store::encode(&rec))?;
        }
        for n in 1..=100 {
            let name = match n {
                1 => "probe".to_string(),
                n => format!("probe-{n}"),
            };
            let limits = KeyPolicy {
                probe: true,
                ..KeyPolicy::default()
            };
            match self.insert_new_key_locked(&name, limits) {
                Ok((rec, key)) => {
                    let held = ProbeKeyRec {
                        key_id: rec.id.clone(),
                        sealed: self
                            .cipher
                            .seal(&probe_seal_id(&rec.id), key.expose().as_bytes())?,
                    };
                    self.meta.insert(PROBE_KEY, store::encode(&held))?;
                    return Ok((rec, key, true));
                }
                Err(Error::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::AlreadyExists(
            "keys named probe to probe-100 all exist and none is the route probe's key".into(),
        ))
    }

    pub fn keys(&self) -> Result<Vec<ClientKeyRec>> {
        let mut keys: Vec<ClientKeyRec> = store::scan(&self.client_keys, CLIENT_KEYS, b"")?;
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(keys)
    }

    pub fn key_by_name(&self, name: &str) -> Result<Option<ClientKeyRec>> {
        match self.client_key_names.get(name.as_bytes())? {
            Some(id) => store::get(&self.client_keys, CLIENT_KEYS, id),
            None => Ok(None),
        }
    }

    pub fn key_by_id(&self, id: &str) -> Result<Option<ClientKeyRec>> {
        store::get(&self.client_keys, CLIENT_KEYS, id)
    }

    /// `key set`: changes a key's policy.
    pub fn set_key_policy(&self, name: &str, policy: &PolicyInput) -> Result<ClientKeyRec> {
        let _guard = self.admin_guard();
        let mut rec = self
            .key_by_name(name)?
            .ok_or_else(|| Error::NotFound(format!("no key named {name:?}")))?;
        policy.apply(&mut rec.policy)?;
        self.client_keys
            .insert(rec.id.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    /// Revokes a key; revoking a revoked key changes nothing and succeeds.
    pub fn revoke_key(&self, name: &str) -> Result<ClientKeyRec> {
        let _guard = self.admin_guard();
        let mut rec = self
            .key_by_name(name)?
            .ok_or_else(|| Error::NotFound(format!("no key named {name:?}")))?;
        if rec.revoked_at_ms.is_none() {
            rec.revoked_at_ms = Some(now_ms());
            self.client_keys
                .insert(rec.id.as_bytes(), store::encode(&rec))?;
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    #[test]
    fn keys_are_random_prefixed_and_stored_hashed() {
        let (_d, store) = open_temp();
        let (rec, key) = store.create_key("team-a").unwrap();
        assert!(key.expose().starts_with(KEY_PREFIX));
        assert_eq!(key.expose().len(), 3 + 43);
        assert_eq!(rec.sha256, hex::encode(hash_key(key.expose())));
        let (_, other) = store.create_key("team-b").unwrap();
        assert_ne!(key.expose(), other.expose());
        let stored = store.client_keys.get(rec.id.as_bytes()).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&stored).contains(&key.expose()[3..]));
    }

    #[test]
    fn the_probe_key_is_made_once_kept_sealed_and_replaced_when_revoked() {
        let (_d, store) = open_temp();
        let (rec, key, new) = store.probe_key().unwrap();
        assert!(new && rec.policy.probe && rec.name == "probe");
        assert_eq!(rec.sha256, hex::encode(hash_key(key.expose())));
        let held = store.meta.get(PROBE_KEY).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&held).contains(&key.expose()[3..]));
        let (again, same, new) = store.probe_key().unwrap();
        assert!(!new);
        assert_eq!((again.id, same.expose()), (rec.id.clone(), key.expose()));
        // A policy change keeps it the probe key; only the control plane sets the flag.
        let changed = store
            .set_key_policy(
                "probe",
                &PolicyInput {
                    rpm: Some(5),
                    ..PolicyInput::default()
                },
            )
            .unwrap();
        assert!(changed.policy.probe);
        assert!(!store.create_key("other").unwrap().0.policy.probe);
        store.revoke_key("probe").unwrap();
        let (next, other, new) = store.probe_key().unwrap();
        assert!(new && next.name == "probe-2" && next.policy.probe);
        assert_ne!(other.expose(), key.expose());
    }

    #[test]
    fn a_probe_key_whose_seal_no_longer_opens_is_revoked_and_replaced() {
        let (_d, store) = open_temp();
        let (rec, _, _) = store.probe_key().unwrap();
        // As after a master-key rotation: the seal is not one this store's key opens.
        let mut held: ProbeKeyRec =
            serde_json::from_slice(&store.meta.get(PROBE_KEY).unwrap().unwrap()).unwrap();
        held.sealed = store.cipher.seal("some/other/record", b"kp_x").unwrap();
        store.meta.insert(PROBE_KEY, store::encode(&held)).unwrap();
        let (next, _, new) = store.probe_key().unwrap();
        assert!(new && next.id != rec.id);
        assert!(
            store
                .key_by_id(&rec.id)
                .unwrap()
                .unwrap()
                .revoked_at_ms
                .is_some()
        );
    }

    #[test]
    fn names_are_unique_and_revoke_is_idempotent() {
        let (_d, store) = open_temp();
        store.create_key("a").unwrap();
        assert!(matches!(
            store.create_key("a"),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            store.create_key("bad name"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(store.revoke_key("zzz"), Err(Error::NotFound(_))));
        let first = store.revoke_key("a").unwrap();
        let again = store.revoke_key("a").unwrap();
        assert!(first.revoked_at_ms.is_some());
        assert_eq!(first.revoked_at_ms, again.revoked_at_ms);
        assert_eq!(store.keys().unwrap().len(), 1);
    }
}
