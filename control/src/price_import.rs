//! Price files: LiteLLM's public `model_prices_and_context_window.json` and Keyplane's own small
//! format. Pure parsing: a file with any error is refused as a whole, every error naming its line
//! and field.
//!
//! Keyplane's format (JSON; prices are decimals, as strings or numbers, per million tokens):
//!
//! ```json
//! {
//!   "source": "DeepSeek pricing page",
//!   "as_of": "2025-09-05",
//!   "currency": "CNY",
//!   "prices": [
//!     {"provider": "deepseek", "model": "deepseek-chat", "input": "2", "output": "3",
//!      "cache_read": "0.2"}
//!   ]
//! }
//! ```
//!
//! `source` (default: the file name), `as_of` (default: today, UTC) and `currency` (default USD)
//! are optional; an entry may name its own `currency`, and `provider` may be left out when the
//! import names one (`--provider`). LiteLLM entries give USD per token
//! (`input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost`, and `…_above_200k_tokens` tiers); entries whose `mode` is not
//! chat-like, or that have no token prices, are skipped.

use crate::catalog_sync::{Price, Tier};
use crate::money;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// One price read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Empty when the file names none and the import gave none.
    pub provider: String,
    pub model: String,
    pub price: Price,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub format: &'static str,
    pub source: String,
    pub as_of: String,
    pub entries: Vec<Entry>,
    pub skipped: u64,
}

/// Errors beyond this many are summarized.
const MAX_ERRORS: usize = 20;

fn line_of(content: &str, raw: &RawValue) -> usize {
    let offset = (raw.get().as_ptr() as usize).saturating_sub(content.as_ptr() as usize);
    content[..offset.min(content.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The line of `"field"` inside `raw` (the entry's own line if it is not found).
fn field_line(content: &str, raw: &RawValue, field: &str) -> usize {
    let start = (raw.get().as_ptr() as usize).saturating_sub(content.as_ptr() as usize);
    let at = raw
        .get()
        .find(&format!("\"{field}\""))
        .map_or(start, |i| start + i);
    content[..at.min(content.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Parses a price file. `provider`: the import's `--provider` (empty: each entry's own).
pub fn parse(
    content: &str,
    file_name: &str,
    provider: &str,
    today: &str,
) -> Result<Parsed, String> {
    let root: BTreeMap<String, &RawValue> = serde_json::from_str(content).map_err(|e| {
        format!(
            "line {} column {}: not a JSON object: {e}",
            e.line(),
            e.column()
        )
    })?;
    if root.contains_key("prices") {
        keyplane(content, file_name, provider, today)
    } else {
        litellm(content, &root, file_name, provider, today)
    }
}

fn decimal(v: &Value, shift: i32) -> Result<u64, String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("{other} is not a number")),
    };
    money::parse_scaled(&text, shift).map_err(|e| format!("{text:?} {e}"))
}

fn finish(errors: Vec<String>) -> Result<(), String> {
    if errors.is_empty() {
        return Ok(());
    }
    let more = errors.len().saturating_sub(MAX_ERRORS);
    let mut text = format!(
        "the file has {} error(s); nothing was imported:",
        errors.len()
    );
    for e in errors.iter().take(MAX_ERRORS) {
        text.push_str("\n  ");
        text.push_str(e);
    }
    if more > 0 {
        text.push_str(&format!("\n  … and {more} more"));
    }
    Err(text)
}

#[derive(Deserialize)]
struct KeyplaneFile<'a> {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    as_of: Option<String>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(borrow)]
    prices: Vec<&'a RawValue>,
}

fn check_currency(c: &str) -> Result<String, String> {
    let c = c.trim().to_ascii_uppercase();
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(c)
    } else {
        Err(format!("currency {c:?} is not a 3-letter code"))
    }
}

fn check_date(d: &str) -> Result<String, String> {
    let ok = d.len() == 10
        && d.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if ok {
        Ok(d.to_string())
    } else {
        Err(format!("as_of {d:?} is not a YYYY-MM-DD date"))
    }
}

fn keyplane(content: &str, file_name: &str, provider: &str, today: &str) -> Result<Parsed, String> {
    let file: KeyplaneFile<'_> = serde_json::from_str(content)
        .map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))?;
    let mut errors = Vec::new();
    let default_currency = match file.currency.as_deref().map(check_currency).transpose() {
        Ok(c) => c.unwrap_or_else(|| "USD".into()),
        Err(e) => {
            errors.push(format!("currency: {e}"));
            "USD".into()
        }
    };
    let as_of = match file.as_of.as_deref().map(check_date).transpose() {
        Ok(d) => d.unwrap_or_else(|| today.to_string()),
        Err(e) => {
            errors.push(e);
            today.to_string()
        }
    };
    let mut entries = Vec::new();
    for (i, raw) in file.prices.iter().enumerate() {
        let line = line_of(content, raw);
        let at = |field: &str, msg: &str| {
            let line = field_line(content, raw, field);
            format!("line {line}: prices[{i}].{field}: {msg}")
        };
        let v: Value = match serde_json::from_str(raw.get()) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                errors.push(format!("line {line}: prices[{i}] is not an object"));
                continue;
            }
        };
        let text = |field: &str| v.get(field).and_then(Value::as_str).map(str::trim);
        let model = match text("model") {
            Some(m) if !m.is_empty() && !m.contains(char::is_whitespace) => m.to_string(),
            _ => {
                errors.push(at("model", "missing or not a model id"));
                continue;
            }
        };
        let entry_provider = match (provider, text("provider")) {
            (p, _) if !p.is_empty() => p.to_string(),
            (_, Some(p)) if !p.is_empty() => p.to_string(),
            _ => {
                errors.push(at("provider", "missing (or give --provider)"));
                continue;
            }
        };
        let currency = match text("currency") {
            Some(c) => match check_currency(c) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(at("currency", &e));
                    continue;
                }
            },
            None => default_currency.clone(),
        };
        let mut field = |name: &str, required: bool| -> Option<Option<u64>> {
            match v.get(name) {
                None | Some(Value::Null) if !required => Some(None),
                None | Some(Value::Null) => {
                    errors.push(at(name, "missing"));
                    None
                }
                Some(x) => match decimal(x, 6) {
                    Ok(n) => Some(Some(n)),
                    Err(e) => {
                        errors.push(at(name, &e));
                        None
                    }
                },
            }
        };
        let (Some(Some(input)), Some(Some(output)), Some(cache_read), Some(cache_write)) = (
            field("input", true),
            field("output", true),
            field("cache_read", false),
            field("cache_write", false),
        ) else {
            continue;
        };
        entries.push(Entry {
            provider: entry_provider,
            model,
            price: Price {
                currency,
                input,
                output,
                cache_read,
                cache_write,
                tiers: Vec::new(),
            },
        });
    }
    finish(errors)?;
    Ok(Parsed {
        format: "keyplane",
        source: file.source.unwrap_or_else(|| file_name.to_string()),
        as_of,
        entries,
        skipped: 0,
    })
}

const CHAT_MODES: &[&str] = &["chat", "completion", "responses"];

fn litellm(
    content: &str,
    root: &BTreeMap<String, &RawValue>,
    file_name: &str,
    provider: &str,
    today: &str,
) -> Result<Parsed, String> {
    let mut errors = Vec::new();
    let mut entries = Vec::new();
    let mut skipped = 0u64;
    let mut ordered: Vec<(&String, &&RawValue)> = root.iter().collect();
    ordered.sort_by_key(|(_, raw)| raw.get().as_ptr() as usize);
    for (key, raw) in ordered {
        if key == "sample_spec" {
            continue;
        }
        let line = line_of(content, raw);
        let Ok(Value::Object(v)) = serde_json::from_str::<Value>(raw.get()) else {
            errors.push(format!("line {line}: {key:?} is not an object"));
            continue;
        };
        let mode = v.get("mode").and_then(Value::as_str);
        if mode.is_some_and(|m| !CHAT_MODES.contains(&m)) {
            skipped += 1;
            continue;
        }
        let mut cost = |field: &str| -> Result<Option<u64>, ()> {
            match v.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => decimal(x, 12).map(Some).map_err(|e| {
                    let line = field_line(content, raw, field);
                    errors.push(format!("line {line}: {key:?}.{field}: {e}"));
                }),
            }
        };
        let (Ok(input), Ok(output), Ok(cache_read), Ok(cache_write)) = (
            cost("input_cost_per_token"),
            cost("output_cost_per_token"),
            cost("cache_read_input_token_cost"),
            cost("cache_creation_input_token_cost"),
        ) else {
            continue;
        };
        let mut tiers = Vec::new();
        for (k, _) in v.iter() {
            let Some(rest) = k.strip_prefix("input_cost_per_token_above_") else {
                continue;
            };
            // A threshold that is not a token count (not a number, or beyond u64 once times
            // 1000) names no tier, like any other key this import does not know.
            let Some((thousands, min_prompt_tokens)) = rest
                .strip_suffix("k_tokens")
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|t| Some((t, t.checked_mul(1000)?)))
            else {
                continue;
            };
            let (Ok(Some(tin)), Ok(Some(tout))) = (
                cost(k),
                cost(&format!("output_cost_per_token_above_{thousands}k_tokens")),
            ) else {
                continue;
            };
            tiers.push(Tier {
                min_prompt_tokens,
                input: tin,
                output: tout,
                cache_read: None,
                cache_write: None,
            });
        }
        tiers.sort_by_key(|t| t.min_prompt_tokens);
        let (Some(input), Some(output)) = (input, output) else {
            skipped += 1;
            continue;
        };
        let own = v
            .get("litellm_provider")
            .and_then(Value::as_str)
            .unwrap_or("");
        let entry_provider = if provider.is_empty() { own } else { provider };
        if entry_provider.is_empty() {
            skipped += 1;
            continue;
        }
        let model = key
            .strip_prefix(&format!("{own}/"))
            .filter(|_| !own.is_empty())
            .unwrap_or(key)
            .to_string();
        if model.is_empty() || model.contains(char::is_whitespace) {
            // Not a model id a client could ask for (`""`, `"openai/"`, a phrase).
            skipped += 1;
            continue;
        }
        entries.push(Entry {
            provider: entry_provider.to_string(),
            model,
            price: Price {
                currency: "USD".into(),
                input,
                output,
                cache_read,
                cache_write,
                tiers,
            },
        });
    }
    finish(errors)?;
    Ok(Parsed {
        format: "litellm",
        source: file_name.to_string(),
        as_of: today.to_string(),
        entries,
        skipped,
    })
}

/// `YYYY-MM-DD` of a Unix time in ms (UTC).
pub fn date_of(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LITELLM: &str = r#"{
    "sample_spec": {
        "input_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "mode": "one of: chat, embedding, completion, image_generation"
    },
    "gpt-4o-mini": {
        "cache_read_input_token_cost": 7.5e-08,
        "input_cost_per_token": 1.5e-07,
        "litellm_provider": "openai",
        "max_input_tokens": 128000,
        "mode": "chat",
        "output_cost_per_token": 6e-07
    },
    "deepseek/deepseek-chat": {
        "input_cost_per_token": 2.7e-07,
        "output_cost_per_token": 1.1e-06,
        "litellm_provider": "deepseek",
        "mode": "chat"
    },
    "gemini-2.5-pro": {
        "input_cost_per_token": 1.25e-06,
        "input_cost_per_token_above_200k_tokens": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "output_cost_per_token_above_200k_tokens": 1.5e-05,
        "litellm_provider": "vertex_ai-language-models",
        "mode": "chat"
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "litellm_provider": "openai",
        "mode": "embedding",
        "output_cost_per_token": 0.0
    }
}"#;

    #[test]
    fn litellm_format() {
        let p = parse(LITELLM, "prices.json", "", "2026-11-23").unwrap();
        assert_eq!(p.format, "litellm");
        assert_eq!(p.entries.len(), 3);
        assert_eq!(p.skipped, 1);
        let mini = &p.entries[0];
        assert_eq!(
            (mini.provider.as_str(), mini.model.as_str()),
            ("openai", "gpt-4o-mini")
        );
        assert_eq!((mini.price.input, mini.price.output), (150_000, 600_000));
        assert_eq!(mini.price.cache_read, Some(75_000));
        let ds = &p.entries[1];
        assert_eq!(
            (ds.provider.as_str(), ds.model.as_str()),
            ("deepseek", "deepseek-chat")
        );
        assert_eq!((ds.price.input, ds.price.output), (270_000, 1_100_000));
        let gem = &p.entries[2];
        assert_eq!(gem.price.tiers.len(), 1);
        assert_eq!(gem.price.tiers[0].min_prompt_tokens, 200_000);
        assert_eq!(gem.price.tiers[0].input, 2_500_000);
        let forced = parse(LITELLM, "prices.json", "myopenai", "2026-11-23").unwrap();
        assert!(forced.entries.iter().all(|e| e.provider == "myopenai"));
    }

    #[test]
    fn errors_name_lines_and_fields_and_refuse_the_whole_file() {
        let bad = LITELLM
            .replace(
                "\"output_cost_per_token\": 6e-07",
                "\"output_cost_per_token\": \"abc\"",
            )
            .replace(
                "\"input_cost_per_token\": 2.7e-07",
                "\"input_cost_per_token\": -1",
            );
        let err = parse(&bad, "prices.json", "", "2026-11-23").unwrap_err();
        assert!(err.contains("2 error(s)"), "{err}");
        assert!(
            err.contains("line 13: \"gpt-4o-mini\".output_cost_per_token"),
            "{err}"
        );
        assert!(
            err.contains("line 16: \"deepseek/deepseek-chat\".input_cost_per_token"),
            "{err}"
        );
        let broken = parse("{\n  \"a\": \n", "x.json", "", "2026-11-23").unwrap_err();
        assert!(broken.starts_with("line "), "{broken}");
    }

    #[test]
    fn litellm_keys_that_are_no_model_or_tier_are_skipped() {
        let prices = r#""input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "litellm_provider": "p""#;
        let file = format!(
            r#"{{"": {{{prices}}}, "p/": {{{prices}}}, "a b": {{{prices}}}, "m": {{{prices},
                "input_cost_per_token_above_18446744073709552k_tokens": 3e-6,
                "output_cost_per_token_above_18446744073709552k_tokens": 4e-6}}}}"#
        );
        let p = parse(&file, "prices.json", "", "2026-11-23").unwrap();
        assert_eq!(p.skipped, 3);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].model, "m");
        // 18,446,744,073,709,552 thousand tokens is beyond u64: no tier, not a wrapped one.
        assert!(p.entries[0].price.tiers.is_empty());
    }

    #[test]
    fn keyplane_format() {
        let file = r#"{
  "source": "DeepSeek pricing page",
  "as_of": "2025-09-05",
  "currency": "CNY",
  "prices": [
    {"provider": "deepseek", "model": "deepseek-chat", "input": "2", "output": "3", "cache_read": "0.2"},
    {"provider": "deepseek", "model": "deepseek-reasoner", "input": 4, "output": "16", "currency": "USD"}
  ]
}"#;
        let p = parse(file, "ds.json", "", "2026-11-23").unwrap();
        assert_eq!(
            (p.format, p.source.as_str(), p.as_of.as_str()),
            ("keyplane", "DeepSeek pricing page", "2025-09-05")
        );
        assert_eq!(p.entries[0].price.currency, "CNY");
        assert_eq!(p.entries[0].price.input, 2_000_000);
        assert_eq!(p.entries[0].price.cache_read, Some(200_000));
        assert_eq!(p.entries[1].price.currency, "USD");
        let bad = file
            .replace("\"output\": \"3\"", "\"output\": \"x\"")
            .replace("\"model\": \"deepseek-reasoner\", ", "");
        let err = parse(&bad, "ds.json", "", "2026-11-23").unwrap_err();
        assert!(err.contains("line 6: prices[0].output"), "{err}");
        assert!(err.contains("line 7: prices[1].model"), "{err}");
    }

    #[test]
    fn dates() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_764_000_000_000), "2025-11-24");
    }
}
