//! The control plane's secrets: from the environment, or (with `--dev`) from files in the data
//! dir that are generated on first use.

use crate::creds::MasterKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const MASTER_KEY_ENV: &str = "KEYPLANE_MASTER_KEY";
/// The key `rotate-master-key` re-encrypts to.
pub const NEW_MASTER_KEY_ENV: &str = "KEYPLANE_NEW_MASTER_KEY";
pub const ADMIN_TOKEN_ENV: &str = "KEYPLANE_ADMIN_TOKEN";
pub const NODE_TOKEN_ENV: &str = "KEYPLANE_NODE_TOKEN";

/// Tokens shorter than this are refused: they would be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

pub struct Secrets {
    pub master_key: MasterKey,
    pub admin_token: String,
    pub node_token: String,
    /// Files that `--dev` read or wrote, for the one line that says where they are.
    pub dev_files: Vec<PathBuf>,
}

/// A one-line, operator-facing reason; the binary exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads each secret from its environment variable; with `dev`, a missing one comes from (or is
/// generated into) a 0600 file in `data_dir`. A malformed value is an error even with `dev`.
pub fn load_secrets(
    env: impl Fn(&str) -> Option<String>,
    dev: bool,
    data_dir: &Path,
) -> Result<Secrets, ConfigError> {
    let mut dev_files = Vec::new();
    let mut get =
        |var: &str, file: &str, generate: fn() -> String| -> Result<String, ConfigError> {
            if let Some(value) = env(var).filter(|v| !v.is_empty()) {
                return Ok(value);
            }
            if !dev {
                return Err(ConfigError(format!(
                    "{var} is not set (run with --dev to generate local secrets into the data dir)"
                )));
            }
            let path = data_dir.join(file);
            let value = read_or_create(&path, generate)?;
            dev_files.push(path);
            Ok(value)
        };
    let master = get(MASTER_KEY_ENV, "master.key", || {
        MasterKey::generate().to_base64()
    })?;
    let admin_token = get(ADMIN_TOKEN_ENV, "admin.token", random_token)?;
    let node_token = get(NODE_TOKEN_ENV, "node.token", random_token)?;

    let master_key = MasterKey::from_base64(&master).map_err(|why| {
        ConfigError(format!(
            "{MASTER_KEY_ENV} is malformed: {why} (want base64 of 32 random bytes)"
        ))
    })?;
    for (var, token) in [
        (ADMIN_TOKEN_ENV, &admin_token),
        (NODE_TOKEN_ENV, &node_token),
    ] {
        check_token(var, token)?;
    }
    if admin_token == node_token {
        return Err(ConfigError(format!(
            "{ADMIN_TOKEN_ENV} and {NODE_TOKEN_ENV} must differ: a data plane must not be an admin"
        )));
    }
    Ok(Secrets {
        master_key,
        admin_token,
        node_token,
        dev_files,
    })
}

fn check_token(var: &str, token: &str) -> Result<(), ConfigError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(ConfigError(format!(
            "{var} is malformed: use at least {MIN_TOKEN_LEN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "{var} is malformed: use printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// 32 random bytes, base64url: a token for the admin or the nodes.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn read_or_create(path: &Path, generate: fn() -> String) -> Result<String, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(ConfigError(format!(
                "cannot read {}: {err}",
                path.display()
            )));
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| ConfigError(format!("cannot create {}: {e}", dir.display())))?;
    }
    let value = generate();
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(value.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    write().map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_secrets_outside_dev_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_secrets(env_of(&[]), false, dir.path()).err().unwrap();
        assert!(err.0.contains(MASTER_KEY_ENV), "{}", err.0);
    }

    #[test]
    fn malformed_secrets_are_refused_even_in_dev() {
        let dir = tempfile::tempdir().unwrap();
        let bad = [
            (MASTER_KEY_ENV, "c2hvcnQ="),
            (ADMIN_TOKEN_ENV, "short"),
            (NODE_TOKEN_ENV, "has space in the token value"),
        ];
        for (var, value) in bad {
            let err = load_secrets(env_of(&[(var, value)]), true, dir.path())
                .err()
                .unwrap();
            assert!(err.0.contains(var), "{}", err.0);
            assert!(!err.0.contains(value), "no secret in errors: {}", err.0);
        }
    }

    #[test]
    fn dev_generates_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_secrets(env_of(&[]), true, dir.path()).unwrap();
        assert_eq!(first.dev_files.len(), 3);
        for f in &first.dev_files {
            let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let second = load_secrets(env_of(&[]), true, dir.path()).unwrap();
        assert_eq!(first.admin_token, second.admin_token);
        assert_eq!(first.master_key.to_base64(), second.master_key.to_base64());
        let env_token = "x".repeat(20);
        let third =
            load_secrets(env_of(&[(ADMIN_TOKEN_ENV, &env_token)]), true, dir.path()).unwrap();
        assert_eq!(third.admin_token, env_token);
    }
}
