//! OpenRouter: `GET /models`; `pricing.prompt` / `completion` (and cache read / write) are JSON
//! strings in USD per token. `"-1"` (e.g. `openrouter/auto`) and a missing price mean "unknown":
//! the model is listed without a price, never as free. `:free` models carry real `"0"` prices.

use super::{Price, SyncedModel, priced_models, string_or_number};
use crate::money;
use serde_json::Value;

/// USD per token → micro-USD per million tokens.
const SHIFT: i32 = 12;

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    priced_models(body, names, |_| true, |m| m.get("pricing"), |_, p| price(p))
}

/// `Ok(None)`: the price is unknown. `Err`: a value that is not a price.
fn per_token(pricing: &Value, field: &str) -> Result<Option<u64>, String> {
    let Some(text) = string_or_number(pricing, field)? else {
        return Ok(None);
    };
    if text.trim() == "-1" {
        return Ok(None);
    }
    money::parse_scaled(&text, SHIFT)
        .map(Some)
        .map_err(|e| format!("pricing.{field} {text:?} {e}"))
}

fn price(pricing: &Value) -> Result<Option<Price>, String> {
    if !pricing.is_object() {
        return Err("pricing is not an object".into());
    }
    let input = per_token(pricing, "prompt")?;
    let output = per_token(pricing, "completion")?;
    let cache_read = per_token(pricing, "input_cache_read")?;
    let cache_write = per_token(pricing, "input_cache_write")?;
    Ok(match (input, output) {
        (Some(input), Some(output)) => Some(Price {
            currency: "USD".into(),
            input,
            output,
            cache_read,
            cache_write,
            tiers: Vec::new(),
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static [u8] {
        keyplane_testkit::samples::bytes("openrouter-models.json")
    }

    #[test]
    fn recorded_sample_to_the_micro_dollar() {
        let models = parse(sample(), "openrouter").unwrap();
        assert_eq!(models.len(), 9);
        let get = |id: &str| models.iter().find(|m| m.id == id).unwrap();
        let mini = get("openai/gpt-4o-mini");
        assert_eq!(mini.canonical, "openai/gpt-4o-mini");
        let p = mini.price.as_ref().unwrap();
        // "0.00000015" USD/token = $0.15 per million; "0.0000006" = $0.60.
        assert_eq!((p.input, p.output), (150_000, 600_000));
        assert_eq!(p.cache_read, Some(75_000));
        assert_eq!(p.cache_write, None);
        let opus = get("anthropic/claude-opus-4").price.clone().unwrap();
        assert_eq!((opus.input, opus.output), (15_000_000, 75_000_000));
        assert_eq!(opus.cache_write, Some(18_750_000));
        let free = get("deepseek/deepseek-chat-v3-0324:free")
            .price
            .clone()
            .unwrap();
        assert_eq!((free.input, free.output), (0, 0), ":free is a real zero");
        assert!(get("openrouter/auto").price.is_none(), "-1 is not a price");
    }

    #[test]
    fn broken_variants_fail_clearly() {
        assert!(
            parse(b"<html>", "openrouter")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(parse(br#"{"models":[]}"#, "openrouter").is_err());
        let bad = br#"{"data":[{"id":"a/b","pricing":{"prompt":"abc","completion":"0"}}]}"#;
        let err = parse(bad, "openrouter").unwrap_err();
        assert!(
            err.contains("a/b") && err.contains("pricing.prompt"),
            "{err}"
        );
        let neg = br#"{"data":[{"id":"a/b","pricing":{"prompt":"-2","completion":"0"}}]}"#;
        assert!(parse(neg, "openrouter").is_err());
        let missing = br#"{"data":[{"id":"a/b","pricing":{"completion":"0.000001"}}]}"#;
        assert!(parse(missing, "openrouter").unwrap()[0].price.is_none());
        assert!(parse(br#"{"data":[{"name":"x"}]}"#, "openrouter").is_err());
    }
}
