//! Together: `GET /models` answers a bare JSON array (also accepted inside `data`) of
//! `{id, type, pricing: {input, output, hourly, base, finetune}}` with float prices. The SDK type
//! states no unit; Together's pricing pages quote USD per million tokens, which is what this
//! adapter assumes. Non-chat models (embeddings, images, audio, rerank) are skipped; a model
//! whose input and output prices are both 0 is listed without a price unless its id says it is
//! free, since Together lists dedicated-only models at 0.

use super::{Price, SyncedModel, field_error, models_array, string_or_number};
use crate::money;
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
    let mut out = Vec::new();
    for (i, m) in models_array(body)?.iter().enumerate() {
        let id = super::model_id(m, i)?;
        if m.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| SKIPPED_TYPES.contains(&t))
        {
            continue;
        }
        let price = match m.get("pricing") {
            None | Some(Value::Null) => None,
            Some(p) => price(id, p).map_err(|e| field_error(id, &e))?,
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
        .map_err(|e| format!("pricing.{field} {text:?} {e}"))
}

fn price(id: &str, p: &Value) -> Result<Option<Price>, String> {
    let (Some(input), Some(output)) = (per_mtok(p, "input")?, per_mtok(p, "output")?) else {
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
