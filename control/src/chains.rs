//! Fallback chains: a name that stands for an ordered list of models. A request for the chain
//! tries the cheapest healthy offering of the first model, then of the second, and so on.

use crate::catalog::check_name;
use crate::error::{Error, Result, invalid};
use crate::store::{self, CHAINS, Store, now_ms};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainRec {
    pub name: String,
    pub models: Vec<String>,
    pub updated_at_ms: i64,
}

/// Most models one chain may name.
pub const MAX_CHAIN_MODELS: usize = 16;

impl Store {
    /// Creates or replaces chain `name`. The models need not be offered yet (a chain may be set
    /// up before its models), but each must be a well-formed model name.
    pub fn set_chain(&self, name: &str, models: &[String]) -> Result<ChainRec> {
        check_name("chain", name)?;
        let models: Vec<String> = models
            .iter()
            .flat_map(|m| m.split(','))
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        if models.is_empty() {
            return Err(invalid(
                "a chain needs at least one model (--models m1,m2,...)",
            ));
        }
        if models.len() > MAX_CHAIN_MODELS {
            return Err(invalid(format!(
                "a chain names at most {MAX_CHAIN_MODELS} models"
            )));
        }
        for m in &models {
            if m.len() > 256 || m.chars().any(char::is_control) {
                return Err(invalid(format!("model name {m:?} is malformed")));
            }
            if m.starts_with("chain:") || m == name {
                return Err(invalid("a chain cannot name a chain"));
            }
        }
        let rec = ChainRec {
            name: name.to_string(),
            models,
            updated_at_ms: now_ms(),
        };
        let _guard = self.admin_guard();
        self.chains.insert(name, store::encode(&rec))?;
        Ok(rec)
    }

    pub fn chains(&self) -> Result<Vec<ChainRec>> {
        store::scan(&self.chains, CHAINS, b"")
    }

    pub fn delete_chain(&self, name: &str) -> Result<ChainRec> {
        let _guard = self.admin_guard();
        let old = self
            .chains
            .remove(name)?
            .ok_or_else(|| Error::NotFound(format!("no chain named {name:?}")))?;
        store::decode(CHAINS, &old)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::open_temp;

    #[test]
    fn set_list_delete() {
        let (_d, store) = open_temp();
        let rec = store
            .set_chain("smart", &["a,b".to_string(), "c".to_string()])
            .unwrap();
        assert_eq!(rec.models, ["a", "b", "c"]);
        assert!(store.set_chain("smart", &[]).is_err());
        assert!(store.set_chain("x", &["chain:y".into()]).is_err());
        assert_eq!(store.chains().unwrap().len(), 1);
        store.delete_chain("smart").unwrap();
        assert!(store.delete_chain("smart").is_err());
    }
}
