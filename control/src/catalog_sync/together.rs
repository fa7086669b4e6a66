//! Together: `GET /models` answers a bare JSON array (also accepted inside `data`) of
//! `{id, type, pricing: {input, output, hourly, base, finetune}}` with float prices. The SDK type
//! states no unit; Together's pricing pages quote USD per million tokens, which is what this
//! adapter assumes. Non-chat models (embeddings, images, audio, rerank) are skipped; a model
//! whose input and output prices are both 0 is listed without a price unless its id says it is
//! free, since Together lists dedicated-only models at 0.

use super::{Price, SyncedModel, per_mtok, priced_models};
use serde_json::Value;

const SKIPPED_TYPES: &[&str] = &[
    "embedding",
    "image",
    "audio",
    "rerank",
    "moderation",
    "transcribe",
];

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    let keep = |m: &Value| {
        !m.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| SKIPPED_TYPES.contains(&t))
    };
    priced_models(body, names, keep, |m| m.get("pricing"), price)
}

fn price(id: &str, p: &Value) -> Result<Option<Price>, String> {
    let (Some(input), Some(output)) = (
        per_mtok(p, "pricing.", "input")?,
        per_mtok(p, "pricing.", "output")?,
    ) else {
        return Ok(None);
    };
    if input == 0 && output == 0 && !id.to_ascii_lowercase().contains("free") {
        return Ok(None);
    }
    Ok(Some(Price::usd(input, output)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_or_data_and_units() {
        let body = br#"[{"id":"meta-llama/Llama-3.3-70B-Instruct-Turbo","type":"chat","pricing":{"input":0.88,"output":0.88,"hourly":0,"base":0,"finetune":0}},
            {"id":"BAAI/bge-large","type":"embedding","pricing":{"input":0.02,"output":0}},
            {"id":"some/dedicated","type":"chat","pricing":{"input":0,"output":0}}]"#;
        let models = parse(body, "together").unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].canonical, "meta-llama/llama-3.3-70b-instruct");
        let p = models[0].price.clone().unwrap();
        assert_eq!((p.input, p.output), (880_000, 880_000));
        assert!(models[1].price.is_none(), "0/0 is not free");
        let wrapped = br#"{"data":[{"id":"a","pricing":{"input":"x","output":1}}]}"#;
        assert!(parse(wrapped, "together").is_err());
    }
}
