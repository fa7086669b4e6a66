//! DeepInfra: `GET /models` under the OpenAI base. Third-party notes (unverified, no sample)
//! put prices in `metadata.pricing.input_tokens` / `output_tokens`; this adapter reads them as
//! USD per million tokens when present and lists the model without a price otherwise.

use super::{Price, SyncedModel, per_mtok, priced_models};
use serde_json::Value;

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    priced_models(
        body,
        names,
        |_| true,
        |m| m.get("metadata").and_then(|md| md.get("pricing")),
        |_, p| price(p),
    )
}

fn price(p: &Value) -> Result<Option<Price>, String> {
    let input = per_mtok(p, "metadata.pricing.", "input_tokens")?;
    let output = per_mtok(p, "metadata.pricing.", "output_tokens")?;
    let cache_read = per_mtok(p, "metadata.pricing.", "cache_read_tokens")?;
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
