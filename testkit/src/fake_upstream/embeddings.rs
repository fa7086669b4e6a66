//! The fake's embeddings endpoints: OpenAI's `POST /v1/embeddings` and Gemini's `POST
//! /v1beta/models/{model}:embedContent` / `:batchEmbedContents`.
//!
//! Shapes follow OpenAI's API reference and the `openai` SDK's `CreateEmbeddingResponse`
//! (`{"object":"list","data":[{"object":"embedding","index","embedding"}],"model","usage":
//! {"prompt_tokens","total_tokens"}}`, `encoding_format: "base64"` giving the little-endian
//! `f32` bytes), and Google's Gemini API reference and the google-genai SDK
//! (`{"embedding":{"values"}}`, `{"embeddings":[{"values"}]}`; errors `{"error":{"code",
//! "message","status"}}`; the key in `x-goog-api-key` or `?key=`). Gemini answers carry no
//! usage, as Google's embeddings answers usually do not, so a gateway has to estimate.
//!
//! # Deterministic vectors
//!
//! Each input's vector has `dimensions` (OpenAI) / `outputDimensionality` (Gemini) components,
//! [`DEFAULT_DIMENSIONS`] when unset: component `i` of the vector of text `t` is
//! [`component`]`(t, i)`, a multiple of 1/1024 in [-1, 1) (exact in `f32`, so JSON and base64
//! carry the same value). A token-id input is embedded as the text of its ids joined by
//! commas. OpenAI's `prompt_tokens` is the sum over inputs of `max(1, text bytes / 4)` (for
//! token ids, their count).
//!
//! # Behaviour
//!
//! The fake's [`super::Behavior`]s apply after the checks (path, key, body): `Status` answers in
//! the endpoint's error shape (Gemini: `{"error":{"code","message","status"}}`), `Hang` and
//! `DelayFirstByte` as elsewhere, `CutAfter` sends half the body and aborts, and
//! `MidStreamError` / `ErrorAfterContent` become a 503 (Gemini `UNAVAILABLE`) / 502. A
//! `Status` of 200 with a body sends that body as the answer (a broken answer on demand).

use super::super::Behavior;
use super::super::body::{DisconnectGuard, FakeBody};
use super::super::wire;
use super::Exchange;
use base64::Engine as _;
use hyper::Response;
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use std::convert::Infallible;

/// Vector length when the request names none.
pub const DEFAULT_DIMENSIONS: usize = 8;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Which embeddings endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    OpenAi,
    GeminiOne,
    GeminiBatch,
}

impl Kind {
    /// The endpoint of `POST path`, if it is one.
    pub(super) fn of(path: &str) -> Option<Kind> {
        if path == "/v1/embeddings" {
            return Some(Kind::OpenAi);
        }
        let rest = path
            .strip_prefix("/v1beta/models/")
            .or_else(|| path.strip_prefix("/v1/models/"))?;
        if rest.ends_with(":embedContent") {
            Some(Kind::GeminiOne)
        } else if rest.ends_with(":batchEmbedContents") {
            Some(Kind::GeminiBatch)
        } else {
            None
        }
    }
}

/// Component `i` of the vector of `text`: FNV-1a of the text, mixed with `i`, as a multiple of
/// 1/1024 in [-1, 1).
pub fn component(text: &str, i: usize) -> f32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut x = h ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    ((x % 2048) as f32 - 1024.0) / 1024.0
}

/// The vector of `text` with `dims` components.
pub fn vector(text: &str, dims: usize) -> Vec<f32> {
    (0..dims).map(|i| component(text, i)).collect()
}

/// A Gemini error body.
pub fn gemini_error(code: u16, message: &str) -> String {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        c if c >= 500 => "INTERNAL",
        _ => "UNKNOWN",
    };
    json!({"error": {"code": code, "message": message, "status": status}}).to_string()
}

/// The texts of one Gemini content: its text parts joined by a newline.
fn gemini_text(item: &Value) -> Option<String> {
    let parts = item.pointer("/content/parts")?.as_array()?;
    let texts: Vec<&str> = parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

fn dims_of(v: Option<&Value>) -> Result<usize, ()> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_DIMENSIONS),
        Some(v) => match v.as_u64() {
            Some(d) if (1..=65_536).contains(&d) => Ok(d as usize),
            _ => Err(()),
        },
    }
}

impl Exchange {
    /// Answers an embeddings request: checks, then the behaviour, then the vectors.
    pub(super) async fn embeddings(
        self,
        kind: Kind,
        mut guard: DisconnectGuard,
    ) -> Response<FakeBody> {
        let reject = |this: &Exchange, guard: &mut DisconnectGuard, code: u16, body: String| {
            guard.disarm();
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
            this.reply(status, JSON, FakeBody::full(body), None)
        };
        if let Err((code, body)) = self.embed_check(kind) {
            return reject(&self, &mut guard, code, body);
        }
        let behavior = self.shared.take_behavior(&self.body);
        self.shared
            .update(self.index, |r| r.behavior = Some(behavior.clone()));
        let error = |code: u16| match kind {
            Kind::OpenAi => {
                wire::status_error(wire::Protocol::OpenAi, code, &wire::request_id(self.seq))
            }
            Kind::GeminiOne | Kind::GeminiBatch => gemini_error(code, "fake upstream error"),
        };
        match behavior {
            Behavior::Status {
                code,
                retry_after,
                body,
            } => {
                guard.disarm();
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = body.unwrap_or_else(|| error(code));
                return self.reply(status, JSON, FakeBody::full(body), retry_after.as_deref());
            }
            Behavior::Hang => match std::future::pending::<Infallible>().await {},
            Behavior::DelayFirstByte(delay) => tokio::time::sleep(delay).await,
            Behavior::MidStreamError | Behavior::ErrorAfterContent(_) => {
                let code = if kind == Kind::OpenAi { 502 } else { 503 };
                return reject(&self, &mut guard, code, error(code));
            }
            _ => {}
        }
        match self.embed_answer(kind) {
            Ok(body) => self.json_reply(body, &behavior, guard),
            Err((code, body)) => reject(&self, &mut guard, code, body),
        }
    }

    /// Key and body, in the order the real APIs check them.
    fn embed_check(&self, kind: Kind) -> Result<(), (u16, String)> {
        let openai_bad = |message: &str, param: Option<&str>| {
            (
                400,
                wire::openai_error(message, "invalid_request_error", param, None),
            )
        };
        if let Some(key) = &self.shared.config.api_key {
            let presented = match kind {
                Kind::OpenAi => self
                    .parts
                    .headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string),
                Kind::GeminiOne | Kind::GeminiBatch => self
                    .parts
                    .headers
                    .get("x-goog-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| {
                        self.parts.uri.query().and_then(|q| {
                            q.split('&')
                                .find_map(|kv| kv.strip_prefix("key="))
                                .map(str::to_string)
                        })
                    }),
            };
            if presented.as_deref() != Some(key.as_str()) {
                return Err(match kind {
                    Kind::OpenAi => (
                        401,
                        wire::openai_error(
                            "Incorrect API key provided.",
                            "invalid_request_error",
                            None,
                            Some("invalid_api_key"),
                        ),
                    ),
                    _ => (
                        400,
                        gemini_error(400, "API key not valid. Please pass a valid API key."),
                    ),
                });
            }
        }
        let Some(Value::Object(obj)) = &self.json else {
            return Err(match kind {
                Kind::OpenAi => openai_bad(
                    "We could not parse the JSON body of your request. The API expects a JSON payload.",
                    None,
                ),
                _ => (400, gemini_error(400, "Invalid JSON payload received.")),
            });
        };
        match kind {
            Kind::OpenAi => {
                if !obj.get("model").is_some_and(Value::is_string) {
                    return Err(openai_bad(
                        "Missing required parameter: 'model'.",
                        Some("model"),
                    ));
                }
                if openai_texts(obj.get("input")).is_none() {
                    return Err(openai_bad("'$.input' is invalid.", Some("input")));
                }
                if dims_of(obj.get("dimensions")).is_err() {
                    return Err(openai_bad("'dimensions' is invalid.", Some("dimensions")));
                }
            }
            Kind::GeminiOne => {
                let item = Value::Object(obj.clone());
                if gemini_text(&item).is_none() {
                    return Err((400, gemini_error(400, "* content: text is required.")));
                }
            }
            Kind::GeminiBatch => {
                let Some(requests) = obj.get("requests").and_then(Value::as_array) else {
                    return Err((400, gemini_error(400, "* requests: required field.")));
                };
                if requests.is_empty() || requests.iter().any(|r| gemini_text(r).is_none()) {
                    return Err((
                        400,
                        gemini_error(400, "* requests[].content: text is required."),
                    ));
                }
                if requests.len() > 100 {
                    return Err((
                        400,
                        gemini_error(
                            400,
                            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch",
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The normal answer.
    fn embed_answer(&self, kind: Kind) -> Result<String, (u16, String)> {
        let json = self.json.as_ref().unwrap_or(&Value::Null);
        let bad_dims = || (400, gemini_error(400, "* outputDimensionality: invalid."));
        match kind {
            Kind::OpenAi => {
                let texts = openai_texts(json.get("input")).unwrap_or_default();
                let dims = dims_of(json.get("dimensions")).unwrap_or(DEFAULT_DIMENSIONS);
                let base64 = json.get("encoding_format").and_then(Value::as_str) == Some("base64");
                let mut prompt_tokens = 0u64;
                let data: Vec<Value> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, (text, tokens))| {
                        prompt_tokens += tokens;
                        let v = vector(text, dims);
                        let embedding = if base64 {
                            let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                        } else {
                            json!(v)
                        };
                        json!({"object": "embedding", "index": i, "embedding": embedding})
                    })
                    .collect();
                Ok(json!({
                    "object": "list",
                    "data": data,
                    "model": json.get("model").cloned().unwrap_or(Value::Null),
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                })
                .to_string())
            }
            Kind::GeminiOne => {
                let text = gemini_text(json).unwrap_or_default();
                let dims = dims_of(json.get("outputDimensionality")).map_err(|()| bad_dims())?;
                Ok(json!({"embedding": {"values": vector(&text, dims)}}).to_string())
            }
            Kind::GeminiBatch => {
                let requests = json
                    .get("requests")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut embeddings = Vec::with_capacity(requests.len());
                for r in &requests {
                    let text = gemini_text(r).unwrap_or_default();
                    let dims = dims_of(r.get("outputDimensionality")).map_err(|()| bad_dims())?;
                    embeddings.push(json!({"values": vector(&text, dims)}));
                }
                Ok(json!({"embeddings": embeddings}).to_string())
            }
        }
    }
}

/// OpenAI's `input` as texts and their token counts, or `None` when it is not one of the four
/// forms or is empty.
fn openai_texts(input: Option<&Value>) -> Option<Vec<(String, u64)>> {
    let text = |s: &str| (s.to_string(), (s.len() as u64 / 4).max(1));
    let ids = |a: &[Value]| -> Option<(String, u64)> {
        let ids: Option<Vec<u64>> = a.iter().map(Value::as_u64).collect();
        let ids = ids?;
        (!ids.is_empty()).then(|| {
            let joined: Vec<String> = ids.iter().map(u64::to_string).collect();
            (joined.join(","), ids.len() as u64)
        })
    };
    match input? {
        Value::String(s) if !s.is_empty() => Some(vec![text(s)]),
        Value::Array(items) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .map(|v| v.as_str().filter(|s| !s.is_empty()).map(text))
                    .collect()
            } else if items.iter().all(Value::is_number) {
                Some(vec![ids(items)?])
            } else {
                items
                    .iter()
                    .map(|v| v.as_array().and_then(|a| ids(a)))
                    .collect()
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_and_exact_in_f32() {
        let a = vector("hello", 16);
        assert_eq!(a, vector("hello", 16));
        assert_ne!(a, vector("hellp", 16));
        for c in a {
            assert!((-1.0..1.0).contains(&c));
            assert_eq!((c * 1024.0).fract(), 0.0);
        }
    }

    #[test]
    fn openai_inputs() {
        assert_eq!(
            openai_texts(Some(&json!("abcdefgh"))),
            Some(vec![("abcdefgh".into(), 2)])
        );
        assert_eq!(
            openai_texts(Some(&json!([[1, 2], [3]]))),
            Some(vec![("1,2".into(), 2), ("3".into(), 1)])
        );
        assert_eq!(
            openai_texts(Some(&json!([1, 2]))),
            Some(vec![("1,2".into(), 2)])
        );
        for bad in [json!([]), json!(""), json!(["a", 1]), json!(3), json!([[]])] {
            assert_eq!(openai_texts(Some(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn kinds_by_path() {
        assert_eq!(Kind::of("/v1/embeddings"), Some(Kind::OpenAi));
        assert_eq!(
            Kind::of("/v1beta/models/a/b:embedContent"),
            Some(Kind::GeminiOne)
        );
        assert_eq!(
            Kind::of("/v1beta/models/g:batchEmbedContents"),
            Some(Kind::GeminiBatch)
        );
        assert_eq!(Kind::of("/v1beta/models/g:generateContent"), None);
    }
}
