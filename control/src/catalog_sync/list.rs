//! Lists without prices: which models exist. `list` reads the OpenAI shape (`{data: [{id}]}`,
//! also used by DeepSeek, Groq, Mistral, xAI, ...); `anthropic-list` reads Anthropic's
//! (`{data: [{id}], has_more, last_id}`, paged with `after_id`). Prices come from price files.

use super::{SyncedModel, models_array};
use serde_json::Value;

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    models_array(body)?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = super::model_id(m, i)?;
            Ok(SyncedModel {
                canonical: super::presets::canonical(names, id),
                id: id.to_string(),
                price: None,
            })
        })
        .collect()
}

/// The cursor of the next Anthropic page, if `has_more`.
pub fn anthropic_next(body: &[u8]) -> Option<String> {
    let root: Value = serde_json::from_slice(body).ok()?;
    if root.get("has_more").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    root.get("last_id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepseek_sample_and_anthropic_paging() {
        let body = keyplane_testkit::samples::bytes("deepseek-models.json");
        let models = parse(body, "deepseek").unwrap();
        let names: Vec<_> = models.iter().map(|m| m.canonical.as_str()).collect();
        assert_eq!(names, ["deepseek/deepseek-chat", "deepseek/deepseek-r1"]);
        assert!(models.iter().all(|m| m.price.is_none()));
        let page = br#"{"data":[{"id":"claude-sonnet-4-5-20250929","type":"model"}],"has_more":true,"last_id":"claude-sonnet-4-5-20250929"}"#;
        assert_eq!(
            parse(page, "anthropic").unwrap()[0].canonical,
            "anthropic/claude-sonnet-4.5"
        );
        assert_eq!(
            anthropic_next(page).as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(anthropic_next(br#"{"data":[],"has_more":false}"#), None);
    }
}
