//! The Google Gemini shapes (`generateContent`, `streamGenerateContent`) the data plane reads and
//! writes when the client speaks Gemini, or the upstream does.
//!
//! Gemini differs from the other dialects in where a call says what it wants: the model is in
//! the URL path (`/v1beta/models/{model}:generateContent`), not the body, and so is whether the
//! answer streams (`:streamGenerateContent`) and how (`?alt=sse` for server-sent events, else one
//! JSON array written out element by element). A request is therefore parsed with what its path
//! said ([`GenerateRequest::parse`]), and a same-dialect body goes upstream byte for byte: there
//! is no model in it to replace.

pub mod decode;
pub mod encode;
pub mod relay;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::Entries;
use super::wire;

/// How a streamed answer is written to the client, as the call's URL chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `:streamGenerateContent?alt=sse`: `data: {chunk}\r\n\r\n` per chunk.
    Sse,
    /// `:streamGenerateContent` without `alt=sse`: one JSON array, `[{chunk}` then
    /// `,\r\n{chunk}` … then `]`, valid JSON once complete.
    JsonArray,
}

/// Output tokens assumed for ranking when the request sets no limit.
pub const DEFAULT_OUTPUT_TOKENS_ESTIMATE: u64 = super::openai_chat::DEFAULT_OUTPUT_TOKENS_ESTIMATE;

/// A `generateContent` / `streamGenerateContent` body, parsed as far as routing needs, with the
/// model and framing its URL gave.
pub struct GenerateRequest<'a> {
    /// The client's bytes, which a Gemini upstream gets unchanged.
    pub body: &'a [u8],
    /// The model named in the URL path (without the `models/` prefix).
    pub model: String,
    /// `None`: `generateContent` (one whole answer).
    pub framing: Option<Framing>,
    /// `generationConfig.maxOutputTokens`.
    pub max_output_tokens: Option<u64>,
    /// `generationConfig.thinkingConfig.includeThoughts`: the client shows thought parts (Google
    /// sends them only then).
    pub include_thoughts: bool,
}

/// Why a request body was refused before any upstream saw it. The message is for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(pub String);

#[derive(Deserialize, Default)]
struct GenerationConfigPeek {
    #[serde(rename = "maxOutputTokens", alias = "max_output_tokens", default)]
    max_output_tokens: Option<u64>,
    #[serde(rename = "thinkingConfig", alias = "thinking_config", default)]
    thinking_config: Option<ThinkingConfigPeek>,
}

#[derive(Deserialize, Default)]
struct ThinkingConfigPeek {
    #[serde(rename = "includeThoughts", alias = "include_thoughts", default)]
    include_thoughts: Option<bool>,
}

impl<'a> GenerateRequest<'a> {
    /// Parses `body` for `model` (from the path; a leading `models/` is removed) answered in
    /// `framing` (`None`: not streamed).
    pub fn parse(
        body: &'a [u8],
        model: &str,
        framing: Option<Framing>,
    ) -> Result<GenerateRequest<'a>, RequestError> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        if model.is_empty() {
            return Err(RequestError(
                "The model is not specified in the URL.".into(),
            ));
        }
        let Entries(entries) = serde_json::from_slice(body).map_err(|e| {
            RequestError(format!(
                "Invalid JSON payload received. The request body is not a JSON object: {e}"
            ))
        })?;
        let mut has_contents = false;
        let mut max_output_tokens = None;
        let mut include_thoughts = false;
        for (key, value) in &entries {
            let raw = value.get();
            match key.as_ref() {
                "contents" => {
                    if !raw.trim_start().starts_with('[') {
                        return Err(RequestError(
                            "Invalid JSON payload received. 'contents' must be a list.".into(),
                        ));
                    }
                    has_contents = true;
                }
                "generationConfig" | "generation_config" => {
                    let config: Option<GenerationConfigPeek> =
                        serde_json::from_str(raw).map_err(|e| {
                            RequestError(format!(
                                "Invalid JSON payload received. Invalid 'generationConfig': {e}"
                            ))
                        })?;
                    let config = config.unwrap_or_default();
                    max_output_tokens = config.max_output_tokens;
                    include_thoughts = config
                        .thinking_config
                        .and_then(|t| t.include_thoughts)
                        .unwrap_or(false);
                }
                _ => {}
            }
        }
        if !has_contents {
            return Err(RequestError(
                "* GenerateContentRequest.contents: contents is not specified".into(),
            ));
        }
        Ok(GenerateRequest {
            body,
            model: model.to_string(),
            framing,
            max_output_tokens,
            include_thoughts,
        })
    }

    pub fn stream(&self) -> bool {
        self.framing.is_some()
    }

    /// The output limit the request sets, or the estimate ranking assumes.
    pub fn output_estimate(&self) -> u64 {
        self.max_output_tokens
            .unwrap_or(DEFAULT_OUTPUT_TOKENS_ESTIMATE)
    }
}

/// Google's canonical status name for an HTTP status (google.rpc.Code's HTTP mapping), the one
/// table for errors the gateway makes and for upstream errors translated for a Gemini client.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        402 => "FAILED_PRECONDITION",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

/// `{"error":{"code":404,"message":"…","status":"NOT_FOUND"}}`, as Google writes its errors.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": { "code": status, "message": message, "status": status_name(status) },
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Gemini `usageMetadata` as read, by pass-through and translation alike. Every count is lenient
/// ([`wire::count`]).
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UsageIn {
    /// The whole prompt, cached part included.
    #[serde(rename = "promptTokenCount", default, deserialize_with = "wire::count")]
    prompt: Option<u64>,
    #[serde(
        rename = "candidatesTokenCount",
        default,
        deserialize_with = "wire::count"
    )]
    candidates: Option<u64>,
    #[serde(
        rename = "thoughtsTokenCount",
        default,
        deserialize_with = "wire::count"
    )]
    thoughts: Option<u64>,
    #[serde(
        rename = "cachedContentTokenCount",
        default,
        deserialize_with = "wire::count"
    )]
    cached: Option<u64>,
    /// The results of built-in tools fed back to the model: prompt tokens not in
    /// `promptTokenCount`.
    #[serde(
        rename = "toolUsePromptTokenCount",
        default,
        deserialize_with = "wire::count"
    )]
    tool_use_prompt: Option<u64>,
}

impl UsageIn {
    /// The counts in billing terms: input excludes the cached part of the prompt and includes
    /// the tool-use prompt; output is the answer and the thoughts, thoughts also reported as
    /// reasoning. `None` when more is cached than was prompted (no truthful count).
    pub(crate) fn metering(&self) -> Option<super::shape::Metering> {
        let prompt = self.prompt.unwrap_or(0);
        let cached = self.cached.unwrap_or(0);
        let thoughts = self.thoughts.unwrap_or(0);
        let usage = super::usage::Usage {
            input_tokens: prompt
                .checked_sub(cached)?
                .saturating_add(self.tool_use_prompt.unwrap_or(0)),
            output_tokens: self.candidates.unwrap_or(0).saturating_add(thoughts),
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        };
        Some(super::shape::Metering {
            usage,
            reasoning_tokens: self.thoughts,
            reported_cost_nano: None,
        })
    }
}

#[derive(Deserialize)]
struct AnswerShape<'a> {
    #[serde(default, borrow)]
    candidates: Option<&'a RawValue>,
    #[serde(rename = "promptFeedback", default, borrow)]
    prompt_feedback: Option<&'a RawValue>,
    #[serde(rename = "usageMetadata", default, borrow)]
    usage: Option<&'a RawValue>,
}

/// A non-streamed body that is what a `GenerateContentResponse` promises.
#[derive(Debug)]
pub struct Answer {
    /// Its counts, when it has readable ones.
    pub metering: Option<super::shape::Metering>,
}

/// Reads a non-streamed upstream body as a `GenerateContentResponse`: a JSON object with a
/// `candidates` array, or with `promptFeedback` (a prompt blocked before any candidate). `None`
/// for anything else, which is not to be relayed as an answer.
pub fn answer(body: &[u8]) -> Option<Answer> {
    if super::json::first_byte(body) != Some(b'{') {
        return None;
    }
    let shape = serde_json::from_slice::<AnswerShape<'_>>(body).ok()?;
    let candidates = shape.candidates.and_then(wire::present);
    let is_answer = match candidates {
        Some(raw) => raw.get().trim_start().starts_with('['),
        None => shape.prompt_feedback.and_then(wire::present).is_some(),
    };
    if !is_answer {
        return None;
    }
    let metering = shape
        .usage
        .and_then(super::json::object::<UsageIn>)
        .and_then(|u| u.metering());
    Some(Answer { metering })
}

// ---------------------------------------------------------------------------------------------
// Other upstreams' reasoning, carried by a Gemini client
// ---------------------------------------------------------------------------------------------

/// What starts the bytes of a sealed thinking block (see [`seal`]).
const SEAL_MAGIC: &[u8] = b"keyplane-thinking\0";

#[derive(serde::Serialize, Deserialize, Default)]
struct Sealed {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redacted: Option<String>,
}

/// Another upstream's reasoning block (Anthropic thinking with its signature, or redacted
/// thinking) as a Gemini `thoughtSignature`, so that a Gemini client gives it back whole.
///
/// Gemini clients keep a turn's signatures but not its thought text (Gemini CLI drops thought
/// parts from history), while Anthropic refuses a thinking block whose text is not the one it
/// signed; and google-genai reads a signature as base64 bytes and writes them back in the
/// URL-safe alphabet, which would change a signature's text. So the block is sealed whole:
/// standard base64 of a marker and the block's JSON, which any base64 reader takes and gives
/// back as the same bytes. `None` for a block with nothing to carry.
pub(crate) fn seal(block: &super::shape::Block<'_>) -> Option<String> {
    use super::shape::Block;
    use base64::Engine;
    let sealed = match block {
        Block::Thinking { text, signature } => Sealed {
            text: text.clone(),
            signature: Some(signature.clone()?),
            redacted: None,
        },
        Block::RedactedThinking { data } => Sealed {
            redacted: Some(data.clone()),
            ..Sealed::default()
        },
        _ => return None,
    };
    let mut bytes = SEAL_MAGIC.to_vec();
    serde_json::to_writer(&mut bytes, &sealed).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The block a [`seal`]ed `thoughtSignature` carries, in either base64 alphabet, padded or not;
/// `None` for any other signature (Gemini's own).
pub(crate) fn unseal(signature: &str) -> Option<super::shape::Block<'static>> {
    use super::shape::Block;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = signature.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    let json = bytes.strip_prefix(SEAL_MAGIC)?;
    let sealed: Sealed = serde_json::from_slice(json).ok()?;
    match (sealed.redacted, sealed.signature) {
        (Some(data), _) => Some(Block::RedactedThinking { data }),
        (None, Some(signature)) => Some(Block::Thinking {
            text: sealed.text,
            signature: Some(signature),
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_the_model_from_the_path_and_the_limit_from_the_body() {
        let body = br#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":77}}"#;
        let req =
            GenerateRequest::parse(body, "models/gemini-2.5-flash", Some(Framing::Sse)).unwrap();
        assert_eq!(req.model, "gemini-2.5-flash");
        assert!(req.stream());
        assert_eq!(req.output_estimate(), 77);
        let req = GenerateRequest::parse(br#"{"contents":[]}"#, "g", None).unwrap();
        assert!(!req.stream());
        assert_eq!(req.output_estimate(), DEFAULT_OUTPUT_TOKENS_ESTIMATE);
    }

    #[test]
    fn parse_refuses_what_google_refuses() {
        for (body, model) in [
            (&br#"{"contents":[]}"#[..], ""),
            (br#"{"contents":[]}"#, "models/"),
            (br#"{}"#, "g"),
            (br#"{"contents":{}}"#, "g"),
            (br#"[]"#, "g"),
            (
                br#"{"contents":[],"generationConfig":{"maxOutputTokens":"x"}}"#,
                "g",
            ),
        ] {
            assert!(
                GenerateRequest::parse(body, model, None).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn error_body_has_googles_shape_and_status_names() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_body(404, "no such model")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":{"code":404,"message":"no such model","status":"NOT_FOUND"}})
        );
        for (status, name) in [
            (400, "INVALID_ARGUMENT"),
            (401, "UNAUTHENTICATED"),
            (403, "PERMISSION_DENIED"),
            (409, "ABORTED"),
            (413, "INVALID_ARGUMENT"),
            (429, "RESOURCE_EXHAUSTED"),
            (499, "CANCELLED"),
            (500, "INTERNAL"),
            (501, "UNIMPLEMENTED"),
            (502, "UNAVAILABLE"),
            (503, "UNAVAILABLE"),
            (504, "DEADLINE_EXCEEDED"),
        ] {
            assert_eq!(status_name(status), name, "{status}");
        }
    }

    #[test]
    fn usage_bills_uncached_prompt_plus_tool_prompt_and_thoughts_as_output() {
        let raw: UsageIn = serde_json::from_str(
            r#"{"promptTokenCount":100,"cachedContentTokenCount":60,"toolUsePromptTokenCount":7,
                "candidatesTokenCount":20,"thoughtsTokenCount":30,"totalTokenCount":157}"#,
        )
        .unwrap();
        let m = raw.metering().unwrap();
        assert_eq!(m.usage.input_tokens, 47);
        assert_eq!(m.usage.cache_read_tokens, 60);
        assert_eq!(m.usage.output_tokens, 50);
        assert_eq!(m.reasoning_tokens, Some(30));
        let lie: UsageIn =
            serde_json::from_str(r#"{"promptTokenCount":1,"cachedContentTokenCount":2}"#).unwrap();
        assert_eq!(lie.metering(), None);
    }

    #[test]
    fn sealed_thinking_survives_either_base64_alphabet() {
        use super::super::shape::Block;
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let block = Block::Thinking {
            text: "Let me think. ~~~~~~".into(),
            signature: Some("EqQBCkYIBxgCKkD+/sig==".into()),
        };
        let sealed = seal(&block).unwrap();
        let Some(Block::Thinking { text, signature }) = unseal(&sealed) else {
            panic!("not unsealed");
        };
        assert_eq!(
            (text.as_str(), signature.as_deref()),
            ("Let me think. ~~~~~~", Some("EqQBCkYIBxgCKkD+/sig=="))
        );
        // google-genai sends the bytes back URL-safe: the same block comes out.
        let url_safe = URL_SAFE.encode(STANDARD.decode(&sealed).unwrap());
        assert_ne!(url_safe, sealed);
        assert!(
            matches!(unseal(&url_safe), Some(Block::Thinking { text, .. }) if text == "Let me think. ~~~~~~")
        );
        let redacted = seal(&Block::RedactedThinking {
            data: "opaque".into(),
        })
        .unwrap();
        assert!(
            matches!(unseal(&redacted), Some(Block::RedactedThinking { data }) if data == "opaque")
        );
        // Gemini's own signatures, and thinking without one, are not sealed blocks.
        assert!(unseal("CiQBcsjafBqWxRZ0Pxc1nAx2u5zaeL5y0").is_none());
        assert!(unseal("skip_thought_signature_validator").is_none());
        assert!(
            seal(&Block::Thinking {
                text: "t".into(),
                signature: None
            })
            .is_none()
        );
    }

    #[test]
    fn answer_recognises_a_recorded_response_and_bills_it() {
        // testkit/samples/gemini-generate-content.json: a recorded generateContent answer.
        let body = include_bytes!("../../../../testkit/samples/gemini-generate-content.json");
        let a = answer(body).unwrap();
        assert!(a.metering.is_some());
        assert!(answer(br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#).is_some());
        for junk in [&b"[]"[..], b"{}", b"{\"candidates\":{}}", b"<html>", b""] {
            assert!(answer(junk).is_none(), "{junk:?}");
        }
    }
}
