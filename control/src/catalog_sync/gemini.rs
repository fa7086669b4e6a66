//! Google's Gemini models list (`gemini-list`): `GET {base}/v1beta/models?pageSize=1000`, with
//! the key in `x-goog-api-key`, paged by `nextPageToken` / `pageToken`. Each model is
//! `{"name": "models/ID", "supportedGenerationMethods": [...], ...}`; the list carries no prices
//! (they come from a price file: LiteLLM's `gemini/…` entries apply to a `gemini` preset
//! provider as they are).
//!
//! A model is kept when it serves a method the gateway calls: `generateContent` (chat) or
//! `embedContent` / `batchEmbedContents` (embeddings). Models that only answer other methods
//! (`predict` for Imagen, `bidiGenerateContent` for Live, `generateAnswer`, …) are left out:
//! a request routed to them could only fail. A model that lists no methods at all (a proxy that
//! trims the list) is kept, since nothing says it cannot serve.
//!
//! Source of the shape: Google's API reference, `models.list` (ai.google.dev/api/models):
//! `ListModelsResponse {models: Model[], nextPageToken}`, `Model.name` "models/{model}",
//! `supportedGenerationMethods`, `inputTokenLimit`, `outputTokenLimit`.

use super::SyncedModel;
use serde_json::Value;

/// The methods a kept model must offer one of.
const SERVED_METHODS: [&str; 3] = ["generateContent", "embedContent", "batchEmbedContents"];

/// The path of the list, after the base URL.
pub const LIST_PATH: &str = "/v1beta/models?pageSize=1000";

/// Most pages followed; a list that still says there is more is refused rather than synced
/// in part (a partial catalog would drop offerings).
pub const MAX_PAGES: usize = 50;

/// The URL of the page after `token` (`None`: the first).
pub fn page_url(base: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => {
            let encoded: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
            format!("{base}{LIST_PATH}&pageToken={encoded}")
        }
        None => format!("{base}{LIST_PATH}"),
    }
}

pub fn parse(body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the models list is not JSON ({e}); it starts with {:?}",
            super::fetch::excerpt(&body[..body.len().min(60)])
        )
    })?;
    let Value::Object(root) = root else {
        return Err("the models list is not an object".into());
    };
    // Protobuf's JSON leaves an empty repeated field out: `{}` is an empty page.
    let models = match root.get("models") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("the models list's `models` is not an array".into()),
    };
    let mut out = Vec::with_capacity(models.len());
    for (i, m) in models.iter().enumerate() {
        let id = m
            .get("name")
            .and_then(Value::as_str)
            .map(|n| n.strip_prefix("models/").unwrap_or(n))
            .filter(|id| !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_whitespace))
            .ok_or_else(|| format!("model #{i} has no valid string `name`"))?;
        let serves = match m.get("supportedGenerationMethods") {
            None | Some(Value::Null) => true,
            Some(Value::Array(methods)) => methods
                .iter()
                .filter_map(Value::as_str)
                .any(|method| SERVED_METHODS.contains(&method)),
            Some(_) => {
                return Err(super::field_error(
                    id,
                    "supportedGenerationMethods is not an array",
                ));
            }
        };
        if !serves {
            continue;
        }
        out.push(SyncedModel {
            canonical: super::presets::canonical(names, id),
            id: id.to_string(),
            price: None,
        });
    }
    Ok(out)
}

/// The token of the next page, if the body names one.
pub fn next_page(body: &[u8]) -> Option<String> {
    let root: Value = serde_json::from_slice(body).ok()?;
    root.get("nextPageToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Google's `models.list` answer (API reference, `ListModelsResponse`), trimmed
    /// to the fields read and a few the gateway must skip.
    const PAGE: &str = r#"{
      "models": [
        {"name": "models/gemini-2.5-flash", "version": "001", "displayName": "Gemini 2.5 Flash",
         "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
         "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]},
        {"name": "models/gemini-embedding-001", "displayName": "Gemini Embedding 001",
         "inputTokenLimit": 2048, "outputTokenLimit": 1,
         "supportedGenerationMethods": ["embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent"]},
        {"name": "models/imagen-4.0-generate-001", "supportedGenerationMethods": ["predict"]},
        {"name": "models/gemini-2.5-flash-native-audio-latest", "supportedGenerationMethods": ["countTokens", "bidiGenerateContent"]}
      ],
      "nextPageToken": "Ch1tb2RlbHMv+Z2VtaW5p=="
    }"#;

    #[test]
    fn keeps_chat_and_embedding_models_and_names_them_under_google() {
        let models = parse(PAGE.as_bytes(), "gemini").unwrap();
        let ids: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["gemini-2.5-flash", "gemini-embedding-001"]);
        assert_eq!(models[0].canonical, "google/gemini-2.5-flash");
        assert!(models.iter().all(|m| m.price.is_none()));
        assert_eq!(
            next_page(PAGE.as_bytes()).as_deref(),
            Some("Ch1tb2RlbHMv+Z2VtaW5p==")
        );
    }

    #[test]
    fn the_page_token_is_encoded_into_the_url() {
        assert_eq!(
            page_url("https://g.example", None),
            "https://g.example/v1beta/models?pageSize=1000"
        );
        assert_eq!(
            page_url("https://g.example", Some("a+b/c==")),
            "https://g.example/v1beta/models?pageSize=1000&pageToken=a%2Bb%2Fc%3D%3D"
        );
    }

    #[test]
    fn an_empty_page_is_empty_and_a_wrong_shape_is_refused() {
        assert!(parse(b"{}", "gemini").unwrap().is_empty());
        assert_eq!(next_page(b"{}"), None);
        assert_eq!(next_page(br#"{"models":[],"nextPageToken":""}"#), None);
        for bad in [
            &b"[]"[..],
            br#"{"models":{}}"#,
            br#"{"models":[{"displayName":"no name"}]}"#,
            br#"{"models":[{"name":"models/"}]}"#,
            br#"{"models":[{"name":"models/x","supportedGenerationMethods":"generateContent"}]}"#,
            b"<html>",
        ] {
            assert!(
                parse(bad, "gemini").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A model listing no methods is kept: nothing says it cannot serve.
        let bare = parse(br#"{"models":[{"name":"models/x"}]}"#, "gemini").unwrap();
        assert_eq!(bare[0].id, "x");
    }
}
