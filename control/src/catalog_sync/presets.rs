//! Provider presets and the id → canonical-name mapping, both kept as data (`presets.json`,
//! `names.json`) compiled into the binary.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What `provider add NAME --preset X` fills in.
#[derive(Debug, Clone, Deserialize)]
pub struct Preset {
    pub protocol: String,
    pub base_url: String,
    pub catalog: String,
    #[serde(default)]
    pub canonical_prefix: String,
}

const PRESETS_JSON: &str = include_str!("presets.json");
const NAMES_JSON: &str = include_str!("names.json");

fn presets() -> &'static BTreeMap<String, Preset> {
    static PRESETS: OnceLock<BTreeMap<String, Preset>> = OnceLock::new();
    PRESETS.get_or_init(|| {
        // Entries starting with '_' are documentation. The file is tested to parse.
        let raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(PRESETS_JSON).unwrap_or_default();
        raw.into_iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
            .collect()
    })
}

fn names() -> &'static BTreeMap<String, BTreeMap<String, String>> {
    static NAMES: OnceLock<BTreeMap<String, BTreeMap<String, String>>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(NAMES_JSON).unwrap_or_default();
        raw.into_iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .filter_map(|(k, v)| Some((k, serde_json::from_value(v).ok()?)))
            .collect()
    })
}

pub fn preset(name: &str) -> Option<&'static Preset> {
    presets().get(name)
}

pub fn preset_names() -> Vec<&'static str> {
    presets().keys().map(String::as_str).collect()
}

/// The canonical `author/slug` of a provider's model id. `table` is the preset's name (or the
/// adapter's, for a provider added without a preset): its mapping wins, then a bare id gets the
/// preset's prefix, else the id is already canonical.
pub fn canonical(table: &str, id: &str) -> String {
    if let Some(mapped) = names().get(table).and_then(|m| m.get(id)) {
        return mapped.clone();
    }
    if !id.contains('/')
        && let Some(p) = preset(table)
        && !p.canonical_prefix.is_empty()
    {
        return format!("{}{id}", p.canonical_prefix);
    }
    id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_issue_preset_is_there_and_the_data_parses() {
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(PRESETS_JSON).unwrap();
        for (k, v) in raw.iter().filter(|(k, _)| !k.starts_with('_')) {
            serde_json::from_value::<Preset>(v.clone()).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        let names_raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(NAMES_JSON).unwrap();
        for (k, v) in names_raw.iter().filter(|(k, _)| !k.starts_with('_')) {
            serde_json::from_value::<BTreeMap<String, String>>(v.clone())
                .unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        for name in [
            "openrouter",
            "zenmux",
            "deepinfra",
            "deepseek",
            "openai",
            "anthropic",
            "groq",
            "together",
            "mistral",
            "xai",
            "qwen",
            "siliconflow",
            "moonshot",
            "zhipu",
            "gemini-openai",
            "gemini",
        ] {
            let p = preset(name).unwrap_or_else(|| panic!("preset {name} missing"));
            assert!(p.base_url.starts_with("https://"), "{name}");
            assert!(
                super::super::adapter_known(&p.catalog),
                "{name}: {}",
                p.catalog
            );
        }
        assert_eq!(preset("openrouter").unwrap().catalog, "openrouter");
        assert_eq!(preset("anthropic").unwrap().protocol, "anthropic");
        let gemini = preset("gemini").unwrap();
        assert_eq!(gemini.protocol, "gemini");
        assert_eq!(gemini.catalog, "gemini-list");
        assert_eq!(gemini.base_url, "https://generativelanguage.googleapis.com");
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical("deepseek", "deepseek-chat"),
            "deepseek/deepseek-chat"
        );
        assert_eq!(
            canonical("deepseek", "deepseek-reasoner"),
            "deepseek/deepseek-r1"
        );
        assert_eq!(canonical("openai", "gpt-4o-mini"), "openai/gpt-4o-mini");
        assert_eq!(
            canonical("groq", "llama-3.3-70b-versatile"),
            "meta-llama/llama-3.3-70b-instruct"
        );
        assert_eq!(
            canonical("openrouter", "openai/gpt-4o-mini"),
            "openai/gpt-4o-mini"
        );
        assert_eq!(canonical("custom", "bare"), "bare");
        assert_eq!(
            canonical("gemini", "gemini-2.5-flash"),
            "google/gemini-2.5-flash"
        );
    }
}
