//! ZenMux: `GET /models`; `pricings.{prompt,completion,input_cache_read,input_cache_write_*}` are
//! arrays of `{value, unit, currency, conditions: {prompt_tokens: {unit: "kTokens", gte, lt}}}`.
//! Only `perMTokens` entries are token prices. Tiers by prompt size are kept: the base price is
//! the tier from 0 tokens, each higher `gte` becomes a [`Tier`].

use super::{Price, SyncedModel, Tier, priced_models};
use crate::money;
use serde_json::Value;
use std::collections::BTreeSet;

/// USD per million tokens → micro-USD per million tokens.
const SHIFT: i32 = 6;

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    priced_models(
        body,
        names,
        |_| true,
        |m| m.get("pricings"),
        |_, p| price(p),
    )
}

/// One `perMTokens` entry: its range of prompt tokens and its price.
struct Entry {
    gte: u64,
    lt: Option<u64>,
    value: u64,
    currency: String,
}

fn tokens(cond: &Value, key: &str, unit: u64) -> Result<Option<u64>, String> {
    match cond.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => money::parse_scaled(&n.to_string(), 0)
            .map(|v| Some(v.saturating_mul(unit)))
            .map_err(|e| format!("conditions.prompt_tokens.{key} {e}")),
        Some(_) => Err(format!("conditions.prompt_tokens.{key} is not a number")),
    }
}

fn entries(pricings: &Value, kind: &str) -> Result<Vec<Entry>, String> {
    let Some(list) = pricings.get(kind) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| format!("pricings.{kind} is not an array"))?;
    let mut out = Vec::new();
    for (j, e) in list.iter().enumerate() {
        let at = format!("pricings.{kind}[{j}]");
        if e.get("unit").and_then(Value::as_str) != Some("perMTokens") {
            continue;
        }
        let value = match e.get("value") {
            Some(Value::Number(n)) => money::parse_scaled(&n.to_string(), SHIFT)
                .map_err(|err| format!("{at}.value {n} {err}"))?,
            Some(Value::String(s)) => {
                money::parse_scaled(s, SHIFT).map_err(|err| format!("{at}.value {s:?} {err}"))?
            }
            _ => return Err(format!("{at}.value is missing or not a number")),
        };
        let currency = e
            .get("currency")
            .and_then(Value::as_str)
            .unwrap_or("USD")
            .to_ascii_uppercase();
        let (gte, lt) = match e.get("conditions").and_then(|c| c.get("prompt_tokens")) {
            None | Some(Value::Null) => (0, None),
            Some(cond) => {
                let unit = match cond.get("unit").and_then(Value::as_str).unwrap_or("tokens") {
                    "kTokens" => 1_000,
                    "mTokens" | "MTokens" => 1_000_000,
                    "tokens" => 1,
                    other => return Err(format!("{at}: prompt_tokens unit {other:?} is unknown")),
                };
                (
                    tokens(cond, "gte", unit)
                        .map_err(|e| format!("{at}.{e}"))?
                        .unwrap_or(0),
                    tokens(cond, "lt", unit).map_err(|e| format!("{at}.{e}"))?,
                )
            }
        };
        out.push(Entry {
            gte,
            lt,
            value,
            currency,
        });
    }
    Ok(out)
}

/// The entry whose range holds `prompt` tokens.
fn at(entries: &[Entry], prompt: u64) -> Option<&Entry> {
    entries
        .iter()
        .find(|e| e.gte <= prompt && e.lt.is_none_or(|lt| prompt < lt))
}

fn price(pricings: &Value) -> Result<Option<Price>, String> {
    if !pricings.is_object() {
        return Err("pricings is not an object".into());
    }
    let prompt = entries(pricings, "prompt")?;
    let completion = entries(pricings, "completion")?;
    let cache_read = entries(pricings, "input_cache_read")?;
    let mut cache_write = entries(pricings, "input_cache_write_5_min")?;
    if cache_write.is_empty() {
        cache_write = entries(pricings, "input_cache_write")?;
    }
    let currencies: BTreeSet<&str> = [&prompt, &completion, &cache_read, &cache_write]
        .into_iter()
        .flatten()
        .map(|e| e.currency.as_str())
        .collect();
    if currencies.len() > 1 {
        return Err(format!("pricings mix currencies {currencies:?}"));
    }
    let currency = currencies.into_iter().next().unwrap_or("USD").to_string();
    let bounds: BTreeSet<u64> = prompt
        .iter()
        .chain(&completion)
        .map(|e| e.gte)
        .chain([0])
        .collect();
    let mut tiers = Vec::new();
    for bound in bounds {
        let (Some(input), Some(output)) = (at(&prompt, bound), at(&completion, bound)) else {
            if bound == 0 {
                return Ok(None);
            }
            continue;
        };
        tiers.push(Tier {
            min_prompt_tokens: bound,
            input: input.value,
            output: output.value,
            cache_read: at(&cache_read, bound).map(|e| e.value),
            cache_write: at(&cache_write, bound).map(|e| e.value),
        });
    }
    let Some(base) = tiers.first().cloned() else {
        return Ok(None);
    };
    Ok(Some(Price {
        currency,
        input: base.input,
        output: base.output,
        cache_read: base.cache_read,
        cache_write: base.cache_write,
        tiers: tiers.into_iter().skip(1).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_sample_keeps_tiers() {
        let body = keyplane_testkit::samples::bytes("zenmux-models.json");
        let models = parse(body, "zenmux").unwrap();
        assert_eq!(models.len(), 2);
        let sonnet = models[0].price.clone().unwrap();
        assert_eq!(models[0].canonical, "anthropic/claude-sonnet-4.5");
        assert_eq!((sonnet.input, sonnet.output), (3_000_000, 15_000_000));
        assert_eq!(sonnet.cache_read, Some(300_000));
        assert_eq!(sonnet.cache_write, Some(3_750_000));
        assert_eq!(
            sonnet.tiers,
            vec![Tier {
                min_prompt_tokens: 200_000,
                input: 6_000_000,
                output: 22_500_000,
                cache_read: Some(600_000),
                cache_write: Some(7_500_000),
            }]
        );
        let gpt = models[1].price.clone().unwrap();
        assert_eq!(
            (gpt.input, gpt.output, gpt.cache_read),
            (1_750_000, 14_000_000, Some(175_000))
        );
        assert!(gpt.tiers.is_empty());
    }

    #[test]
    fn broken_variants_fail_clearly() {
        let bad = br#"{"data":[{"id":"x/y","pricings":{"prompt":[{"value":"abc","unit":"perMTokens"}],"completion":[]}}]}"#;
        let err = parse(bad, "zenmux").unwrap_err();
        assert!(
            err.contains("x/y") && err.contains("prompt[0].value"),
            "{err}"
        );
        let no_completion =
            br#"{"data":[{"id":"x/y","pricings":{"prompt":[{"value":1,"unit":"perMTokens"}]}}]}"#;
        assert!(parse(no_completion, "zenmux").unwrap()[0].price.is_none());
        assert!(parse(br#"{"data":{}}"#, "zenmux").is_err());
    }
}
