//! DeepInfra: `GET /models` under the OpenAI base. Third-party notes (unverified, no sample)
//! put prices in `metadata.pricing.input_tokens` / `output_tokens`; this adapter reads them as
//! USD per million tokens when present and lists the model without a price otherwise.

use super::{Price, SyncedModel, field_error, models_array, string_or_number};
use crate::money;
use serde_json::Value;

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    let mut out = Vec::new();
    for (i, m) in models_array(body)?.iter().enumerate() {
        let id = super::model_id(m, i)?;
        let pricing = m.get("metadata").and_then(|md| md.get("pricing"));
        let price = match pricing {
            None | Some(Value::Null) => None,
            Some(p) => price(p).map_err(|e| field_error(id, &e))?,
        };
        out.push(SyncedModel {
            canonical: super::presets::canonical(names, id),
            id: id.to_string(),
            price,
        });
    }
    Ok(out)
}

fn per_mtok(p: &Value, field: &str) -> Result<Option<u64>, String> {
    let Some(text) = string_or_number(p, field)? else {
        return Ok(None);
    };
    money::parse_scaled(&text, 6)
        .map(Some)
        .map_err(|e| format!("metadata.pricing.{field} {text:?} {e}"))
}

fn price(p: &Value) -> Result<Option<Price>, String> {
    let input = per_mtok(p, "input_tokens")?;
    let output = per_mtok(p, "output_tokens")?;
    let cache_read = per_mtok(p, "cache_read_tokens")?;
    Ok(match (input, output) {
        (Some(input), Some(output)) => Some(Price {
            cache_read,
            ..Price::usd(input, output)
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pricing() {
        let body = br#"{"object":"list","data":[
            {"id":"meta-llama/Llama-3.3-70B-Instruct","metadata":{"pricing":{"input_tokens":0.23,"output_tokens":0.4}}},
            {"id":"x/no-price","metadata":null}]}"#;
        let models = parse(body, "deepinfra").unwrap();
        assert_eq!(models[0].canonical, "meta-llama/llama-3.3-70b-instruct");
        let p = models[0].price.clone().unwrap();
        assert_eq!((p.input, p.output), (230_000, 400_000));
        assert!(models[1].price.is_none());
    }
}
