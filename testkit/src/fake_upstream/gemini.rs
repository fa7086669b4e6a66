//! The Gemini API (Google AI, `generativelanguage.googleapis.com`): `generateContent`,
//! `streamGenerateContent`, `countTokens` and the model list, under `/v1beta/` and `/v1/`.
//!
//! # Source of the shapes
//!
//! - Responses: the recorded `gemini-generate-content.json`, `gemini-stream.sse` (CRLF SSE,
//!   cumulative `usageMetadata` on every chunk, no terminator) and
//!   `gemini-generate-content-max-tokens-empty.json` (`content` with only a `role`) in
//!   `testkit/samples/`; fields those lack (`thought` parts, `thoughtSignature`,
//!   `cachedContentTokenCount`, `toolUsePromptTokenCount`, `promptFeedback.blockReason`,
//!   `functionCall`) are named as in Google's API reference (ai.google.dev/api/generate-content:
//!   `GenerateContentResponse`, `UsageMetadata`, `PromptFeedback`, `Part`) and in the types of
//!   the google-genai SDK 3.6.1 that `clients/requirements.txt` pins (`google/genai/types.py`).
//! - The JSON-array stream (`streamGenerateContent` without `alt=sse`): Google's REST reference
//!   ("returns a stream of GenerateContentResponse"; the HTTP body is one JSON array whose
//!   elements arrive one by one, separated by `,\r\n`).
//! - A failure in the middle of a stream: a chunk `{"error":{code,message,status}}`, the form
//!   google-genai's `_api_client.py` (3.6.1) looks for in each chunk.
//! - Errors: `{"error":{code,message,status,details}}`, the recorded bodies of
//!   `testkit/samples/` where there is one: the wrong-key answer
//!   (`gemini-error-400-api-key-invalid.json`: 400 `INVALID_ARGUMENT`, `ErrorInfo` reason
//!   `API_KEY_INVALID`, `LocalizedMessage`), the 403 (`gemini-error-403-leaked-key.json`), the
//!   404 (`gemini-error-404.json`, naming the request's model) and the 429
//!   (`gemini-error-429-per-minute.json`: `QuotaFailure` naming the request's model, `Help`,
//!   `RetryInfo.retryDelay`). The no-key answer (403 `PERMISSION_DENIED`, "Method doesn't allow
//!   unregistered callers …") is what Google answered on 2026-10-03 as quoted in a public test
//!   file (code index id 71626737737); the 500 and 503 messages are Google's documented ones
//!   (ai.google.dev/gemini-api/docs/troubleshooting).
//!
//! Bodies are built with `serde_json`, whose maps sort their keys: the same order as the
//! recorded samples, which were stored that way.
//!
//! # What is answered
//!
//! Text: [`super::FakeConfig::chunks`] words `"word0 "`, … as in the other dialects, one stream
//! chunk each, the last carrying `finishReason` (`STOP`, or `MAX_TOKENS` when
//! `generationConfig.maxOutputTokens` cut the words short). `thought: true` parts (text
//! `"thought0 "`, …) come first when [`GeminiAnswer::thoughts`] asks for them, and then the
//! first answer part carries [`THOUGHT_SIGNATURE`] as Gemini 2.5/3 send it. A function call
//! ([`super::Behavior::ToolCall`] or [`GeminiAnswer::function_call`]) is one `functionCall` part
//! `{name, args}` carrying [`THOUGHT_SIGNATURE`], with `finishReason: "STOP"` (Gemini has no
//! tool-call finish reason); its `candidatesTokenCount` is the number of argument fragments, as
//! the other dialects count a tool call.
//!
//! `usageMetadata` on every chunk is cumulative: `promptTokenCount` =
//! [`super::prompt_tokens_for`] of the body, `candidatesTokenCount` = answer words so far,
//! `thoughtsTokenCount` = thought parts so far (only when thoughts were asked for),
//! `cachedContentTokenCount` and `toolUsePromptTokenCount` as [`GeminiAnswer`] sets them, and
//! `totalTokenCount` = prompt + candidates + thoughts + tool-use prompt (the cached count is part
//! of the prompt count, as Google reports it).

use super::body::{DisconnectGuard, Emitter, FakeBody, Gone};
use super::stream::Ending;
use super::wire;
use super::{Behavior, GeminiAnswer, Shared, lock, prompt_tokens_for};
use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const X_FAKE_UPSTREAM: HeaderName = HeaderName::from_static("x-fake-upstream");
const X_GOOG_API_KEY: &str = "x-goog-api-key";
const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// The `thoughtSignature` on every function call part and on the first answer part after
/// thoughts: opaque to clients, valid base64 (google-genai decodes it into bytes).
pub const THOUGHT_SIGNATURE: &str = "a2V5cGxhbmUtZmFrZS11cHN0cmVhbS10aG91Z2h0LXNpZ25hdHVyZS0x";

/// Models per page of `GET models` when the request names no `pageSize`, and the most one
/// page holds (Google's documented default and maximum).
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// How a streamed answer is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `?alt=sse`: one `data:` event per chunk, CRLF line ends.
    Sse,
    /// No `alt`: one JSON array whose elements are the chunks.
    JsonArray,
}

/// Which Gemini endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `POST models/{model}:generateContent` (`framing: None`) or `:streamGenerateContent`.
    Generate {
        model: String,
        framing: Option<Framing>,
    },
    /// `POST models/{model}:countTokens`.
    CountTokens,
    /// `GET models`.
    ListModels,
    /// `GET models/{model}`.
    GetModel { model: String },
    /// Any other path or method under the Gemini API.
    NotFound,
}

impl Endpoint {
    /// The Gemini endpoint `parts` asks for, or `None` for a path outside the Gemini API, left
    /// to the other dialects. Everything under `/v1beta/` is Gemini's, and so is
    /// `/v1/models/{model}…` (google-genai's default API version is `v1`); `GET /v1/models` is
    /// Gemini's list only when it carries a Google key (`x-goog-api-key` or `?key=`), else
    /// OpenAI's or Anthropic's.
    pub(super) fn of(parts: &Parts) -> Option<Endpoint> {
        let path = parts.uri.path();
        let google_key =
            parts.headers.contains_key(X_GOOG_API_KEY) || query(parts, "key").is_some();
        let rest = path.strip_prefix("/v1beta/").or_else(|| {
            path.strip_prefix("/v1/")
                .filter(|r| r.starts_with("models/") || (*r == "models" && google_key))
        })?;
        let get = parts.method == Method::GET;
        let post = parts.method == Method::POST;
        if rest == "models" {
            return Some(if get {
                Endpoint::ListModels
            } else {
                Endpoint::NotFound
            });
        }
        let Some(name) = rest.strip_prefix("models/") else {
            return Some(Endpoint::NotFound);
        };
        let (model, verb) = match name.split_once(':') {
            Some((model, verb)) => (model, Some(verb)),
            None => (name, None),
        };
        if model.is_empty() || model.contains('/') {
            return Some(Endpoint::NotFound);
        }
        let model = model.to_string();
        Some(match verb {
            None if get => Endpoint::GetModel { model },
            Some("generateContent") if post => Endpoint::Generate {
                model,
                framing: None,
            },
            Some("streamGenerateContent") if post => {
                let framing = if query(parts, "alt") == Some("sse") {
                    Framing::Sse
                } else {
                    Framing::JsonArray
                };
                Endpoint::Generate {
                    model,
                    framing: Some(framing),
                }
            }
            Some("countTokens") if post => Endpoint::CountTokens,
            _ => Endpoint::NotFound,
        })
    }
}

/// The first value of query parameter `name`, undecoded.
fn query<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// One Gemini request being answered.
pub(super) struct Exchange {
    pub(super) shared: Arc<Shared>,
    /// Index in the recorded requests, if recorded.
    pub(super) index: Option<usize>,
    /// Source of this response's ids.
    pub(super) seq: u64,
    pub(super) endpoint: Endpoint,
    pub(super) parts: Parts,
    pub(super) body: Bytes,
    pub(super) json: Option<Value>,
}

/// A refused request: status and Google error body.
type Rejection = (StatusCode, String);

/// Answers a Gemini request: checks, behaviour, then the endpoint's answer.
pub(super) async fn respond(x: Exchange, mut guard: DisconnectGuard) -> Response<FakeBody> {
    if let Err((status, body)) = x.check() {
        guard.disarm();
        return x.reply(status, JSON, FakeBody::full(body), None);
    }
    if x.endpoint == Endpoint::ListModels
        && let Some((code, body)) = lock(&x.shared.models_body).clone()
    {
        // A set models body (a recorded catalog, or a broken one) takes no behaviour.
        guard.disarm();
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        return x.reply(status, JSON, FakeBody::full(body), None);
    }
    let behavior = x.shared.take_behavior(&x.body);
    x.shared
        .update(x.index, |r| r.behavior = Some(behavior.clone()));
    match behavior {
        Behavior::Status {
            code,
            retry_after,
            body,
        } => {
            guard.disarm();
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body =
                body.unwrap_or_else(|| status_error(code, retry_after.as_deref(), x.model()));
            x.reply(status, JSON, FakeBody::full(body), retry_after.as_deref())
        }
        Behavior::Hang => {
            // Dropped by hyper when the client goes away; the guard records it.
            match std::future::pending::<Infallible>().await {}
        }
        Behavior::DelayFirstByte(delay) => {
            tokio::time::sleep(delay).await;
            x.serve(Behavior::Normal, guard)
        }
        other => x.serve(other, guard),
    }
}

impl Exchange {
    /// The model named in the path (empty for the model list).
    fn model(&self) -> &str {
        match &self.endpoint {
            Endpoint::Generate { model, .. } | Endpoint::GetModel { model } => model,
            _ => self.parts.uri.path().rsplit('/').next().map_or("", |last| {
                last.split_once(':').map_or(last, |(model, _)| model)
            }),
        }
    }

    /// Path, key, body and required fields, in the order Google checks them.
    fn check(&self) -> Result<(), Rejection> {
        if self.endpoint == Endpoint::NotFound {
            return Err((
                StatusCode::NOT_FOUND,
                error_body(404, "NOT_FOUND", "Method not found.", Vec::new()),
            ));
        }
        if let Some(key) = &self.shared.config.api_key {
            let presented = self
                .parts
                .headers
                .get(X_GOOG_API_KEY)
                .and_then(|v| v.to_str().ok())
                .or_else(|| query(&self.parts, "key"));
            match presented {
                Some(p) if p == key => {}
                Some(_) => return Err((StatusCode::BAD_REQUEST, invalid_key_body())),
                None => return Err((StatusCode::FORBIDDEN, no_key_body())),
            }
        }
        if matches!(
            self.endpoint,
            Endpoint::ListModels | Endpoint::GetModel { .. }
        ) {
            return Ok(());
        }
        let invalid = |message: &str| {
            (
                StatusCode::BAD_REQUEST,
                error_body(400, "INVALID_ARGUMENT", message, Vec::new()),
            )
        };
        let Some(Value::Object(obj)) = &self.json else {
            return Err(invalid(
                "Invalid JSON payload received. Unexpected token.\nThe request body is not a \
                 JSON object.",
            ));
        };
        let has_contents = obj
            .get("contents")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        match self.endpoint {
            Endpoint::CountTokens
                if !has_contents && !obj.contains_key("generateContentRequest") =>
            {
                Err(invalid(
                    "* CountTokensRequest.contents: contents is not specified\n",
                ))
            }
            Endpoint::Generate { .. } if !has_contents => Err(invalid(
                "* GenerateContentRequest.contents: contents is not specified\n",
            )),
            _ => Ok(()),
        }
    }

    /// A checked request under a behaviour other than `Status`, `Hang` and `DelayFirstByte`.
    fn serve(self, behavior: Behavior, guard: DisconnectGuard) -> Response<FakeBody> {
        let prompt = prompt_tokens_for(&self.body);
        let body = match &self.endpoint {
            Endpoint::ListModels => match self.models_page() {
                Ok(body) => body,
                Err((status, body)) => {
                    let mut guard = guard;
                    guard.disarm();
                    return self.reply(status, JSON, FakeBody::full(body), None);
                }
            },
            Endpoint::GetModel { model } => {
                if !self.shared.config.models.iter().any(|m| m == model) {
                    let mut guard = guard;
                    guard.disarm();
                    let body = status_error(404, None, model);
                    return self.reply(StatusCode::NOT_FOUND, JSON, FakeBody::full(body), None);
                }
                model_json(model).to_string()
            }
            Endpoint::CountTokens => json!({
                "totalTokens": prompt,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
            })
            .to_string(),
            Endpoint::Generate { model, framing } => {
                let answer = self.plan(&behavior, model, prompt);
                let framing = *framing;
                return self.generate(answer, framing, &behavior, guard);
            }
            Endpoint::NotFound => {
                let mut guard = guard;
                guard.disarm();
                let body = error_body(404, "NOT_FOUND", "Method not found.", Vec::new());
                return self.reply(StatusCode::NOT_FOUND, JSON, FakeBody::full(body), None);
            }
        };
        self.json_reply(body, &behavior, guard)
    }

    /// One page of `GET models`: `pageSize` (default 50, at most 1000) models from the
    /// `pageToken`'s offset, and a `nextPageToken` while more remain.
    fn models_page(&self) -> Result<String, Rejection> {
        let models = &self.shared.config.models;
        let size = match query(&self.parts, "pageSize") {
            None => DEFAULT_PAGE_SIZE,
            Some(s) => match s.parse::<usize>() {
                Ok(0) => DEFAULT_PAGE_SIZE,
                Ok(n) => n.min(MAX_PAGE_SIZE),
                Err(_) => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        error_body(
                            400,
                            "INVALID_ARGUMENT",
                            &format!(
                                "Invalid value at 'page_size' (TYPE_INT32), \"{}\"",
                                s.replace('"', "")
                            ),
                            Vec::new(),
                        ),
                    ));
                }
            },
        };
        let start = match query(&self.parts, "pageToken").filter(|t| !t.is_empty()) {
            None => 0,
            Some(token) => match page_offset(token) {
                Some(offset) if offset <= models.len() => offset,
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        error_body(400, "INVALID_ARGUMENT", "Invalid page token.", Vec::new()),
                    ));
                }
            },
        };
        let end = (start + size).min(models.len());
        let page: Vec<Value> = models[start..end].iter().map(|m| model_json(m)).collect();
        let mut body = json!({ "models": page });
        if end < models.len() {
            body["nextPageToken"] = Value::from(page_token(end));
        }
        Ok(body.to_string())
    }

    /// What a `generateContent` answer holds under `behavior`.
    fn plan(&self, behavior: &Behavior, model: &str, prompt: u64) -> Answer {
        let json = self.json.as_ref().unwrap_or(&Value::Null);
        let chunks = self.shared.config.chunks;
        let max = json
            .pointer("/generationConfig/maxOutputTokens")
            .and_then(Value::as_u64);
        let available = max.map_or(chunks, |m| {
            chunks.min(usize::try_from(m).unwrap_or(usize::MAX))
        });
        let hit_max = available < chunks;
        let extra = match behavior {
            Behavior::Gemini(extra) => extra.clone(),
            Behavior::ToolCall { name, arguments } => GeminiAnswer {
                function_call: Some((name.clone(), arguments.clone())),
                ..GeminiAnswer::default()
            },
            _ => GeminiAnswer::default(),
        };
        let (content, ending) = match behavior {
            Behavior::CutAfter(n) => (available.min(*n), Ending::Cut),
            Behavior::MidStreamError => (0, Ending::Error),
            Behavior::ErrorAfterContent(n) => (available.min(*n), Ending::Error),
            _ => (available, Ending::Complete),
        };
        let finish = extra.finish_reason.clone().unwrap_or_else(|| {
            if hit_max && extra.function_call.is_none() {
                "MAX_TOKENS".to_string()
            } else {
                "STOP".to_string()
            }
        });
        Answer {
            model: model.to_string(),
            response_id: format!("fakeGeminiResponse{}", self.seq),
            prompt,
            content,
            ending,
            finish,
            extra,
        }
    }

    /// A `generateContent` / `streamGenerateContent` answer.
    fn generate(
        self,
        answer: Answer,
        framing: Option<Framing>,
        behavior: &Behavior,
        guard: DisconnectGuard,
    ) -> Response<FakeBody> {
        let Some(framing) = framing else {
            return self.json_reply(answer.whole().to_string(), behavior, guard);
        };
        let delay = match behavior {
            Behavior::ChunkDelay(d) => *d,
            _ => self.shared.config.chunk_delay,
        };
        let (body, out) = FakeBody::channel(guard, delay);
        tokio::spawn(stream(out, answer, framing));
        let content_type = match framing {
            Framing::Sse => EVENT_STREAM,
            Framing::JsonArray => JSON,
        };
        self.reply(StatusCode::OK, content_type, body, None)
    }

    /// A non-stream JSON answer under `behavior`: `CutAfter` sends half of it and aborts;
    /// `MidStreamError` / `ErrorAfterContent` become a 503 `UNAVAILABLE`.
    fn json_reply(
        &self,
        body: String,
        behavior: &Behavior,
        mut guard: DisconnectGuard,
    ) -> Response<FakeBody> {
        match behavior {
            Behavior::CutAfter(_) => {
                let (cut_body, mut out) = FakeBody::channel(guard, Duration::ZERO);
                let whole = Bytes::from(body);
                let half = whole.slice(..whole.len() / 2);
                tokio::spawn(async move {
                    if out.send(half).await.is_ok() {
                        out.abort().await;
                    }
                });
                self.reply(StatusCode::OK, JSON, cut_body, None)
            }
            Behavior::MidStreamError | Behavior::ErrorAfterContent(_) => {
                guard.disarm();
                let err = status_error(503, None, self.model());
                self.reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    JSON,
                    FakeBody::full(err),
                    None,
                )
            }
            _ => {
                guard.disarm();
                self.reply(StatusCode::OK, JSON, FakeBody::full(body), None)
            }
        }
    }

    /// The response head every answer shares; records the status.
    fn reply(
        &self,
        status: StatusCode,
        content_type: HeaderValue,
        body: FakeBody,
        retry_after: Option<&str>,
    ) -> Response<FakeBody> {
        self.shared
            .update(self.index, |r| r.status = Some(status.as_u16()));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if content_type == EVENT_STREAM {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(X_FAKE_UPSTREAM, self.shared.name_header.clone());
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(RETRY_AFTER, v);
        }
        response
    }
}

/// The `pageToken` that starts a page at `offset`.
fn page_token(offset: usize) -> String {
    format!("fakePage{offset}")
}

fn page_offset(token: &str) -> Option<usize> {
    token.strip_prefix("fakePage")?.parse().ok()
}

/// One entry of the model list (fields of Google's `Model` resource).
fn model_json(id: &str) -> Value {
    json!({
        "name": format!("models/{id}"),
        "version": "001",
        "displayName": id,
        "description": "A model of the fake upstream.",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
        "temperature": 1.0,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2.0,
        "thinking": true,
    })
}

/// Everything one `generateContent` answer holds.
#[derive(Debug)]
struct Answer {
    model: String,
    response_id: String,
    prompt: u64,
    /// Answer words (ignored for a function call).
    content: usize,
    ending: Ending,
    finish: String,
    extra: GeminiAnswer,
}

impl Answer {
    /// The candidate token count of a function call: its argument fragments.
    fn call_tokens(&self) -> u64 {
        self.extra
            .function_call
            .as_ref()
            .map_or(0, |(_, args)| wire::fragments(args).len() as u64)
    }

    /// `usageMetadata` after `candidates` answer tokens and `thoughts` thought parts.
    fn usage(&self, candidates: u64, thoughts: u64) -> Value {
        let x = &self.extra;
        let mut u = json!({
            "promptTokenCount": self.prompt,
            "totalTokenCount": self.prompt + candidates + thoughts + x.tool_use_prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        });
        if candidates > 0 {
            u["candidatesTokenCount"] = candidates.into();
        }
        if x.thoughts > 0 {
            u["thoughtsTokenCount"] = thoughts.into();
        }
        if x.cached_tokens > 0 {
            u["cachedContentTokenCount"] = x.cached_tokens.into();
            u["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": x.cached_tokens}]);
        }
        if x.tool_use_prompt_tokens > 0 {
            u["toolUsePromptTokenCount"] = x.tool_use_prompt_tokens.into();
        }
        u
    }

    /// A response object with one candidate holding `parts` (none: a `content` with only its
    /// role, as in gemini-generate-content-max-tokens-empty.json) and `finish`.
    fn response(&self, parts: Vec<Value>, finish: Option<&str>, usage: Value) -> Value {
        let mut content = json!({ "role": "model" });
        if !parts.is_empty() {
            content["parts"] = Value::Array(parts);
        }
        let mut candidate = json!({ "content": content, "index": 0 });
        if let Some(f) = finish {
            candidate["finishReason"] = Value::from(f);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.response_id,
        })
    }

    /// The answer to a prompt blocked by `reason`: no candidates.
    fn blocked(&self, reason: &str) -> Value {
        json!({
            "promptFeedback": { "blockReason": reason },
            "usageMetadata": self.usage(0, 0),
            "modelVersion": self.model,
            "responseId": self.response_id,
        })
    }

    /// The function call part.
    fn call_part(name: &str, args: &str) -> Value {
        let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        json!({
            "functionCall": { "name": name, "args": args },
            "thoughtSignature": THOUGHT_SIGNATURE,
        })
    }

    /// Answer text part `text`; the first after thoughts carries the signature.
    fn text_part(&self, text: String, first: bool) -> Value {
        let mut part = json!({ "text": text });
        if first && self.extra.thoughts > 0 {
            part["thoughtSignature"] = Value::from(THOUGHT_SIGNATURE);
        }
        part
    }

    /// The non-stream answer: one thought part, then the text or the call.
    fn whole(&self) -> Value {
        if let Some(reason) = &self.extra.block_reason {
            return self.blocked(reason);
        }
        let thoughts = self.extra.thoughts;
        let mut parts = Vec::new();
        if thoughts > 0 {
            let text: String = (0..thoughts).map(thought).collect();
            parts.push(json!({ "text": text, "thought": true }));
        }
        let candidates = if let Some((name, args)) = &self.extra.function_call {
            parts.push(Self::call_part(name, args));
            self.call_tokens()
        } else {
            if self.content > 0 {
                parts.push(self.text_part(wire::content_text(self.content), true));
            }
            self.content as u64
        };
        let usage = self.usage(candidates, thoughts as u64);
        self.response(parts, Some(&self.finish), usage)
    }

    /// The stream's chunks, in order, without the failure that may follow them: thought
    /// chunks, then one chunk per word (the last with the finish reason when the stream
    /// completes) or the call chunk.
    fn chunks(&self) -> Vec<Value> {
        if let Some(reason) = &self.extra.block_reason {
            return vec![self.blocked(reason)];
        }
        let complete = self.ending == Ending::Complete;
        let thoughts = self.extra.thoughts;
        let mut out = Vec::with_capacity(thoughts + self.content + 1);
        for k in 0..thoughts {
            let part = json!({ "text": thought(k), "thought": true });
            out.push(self.response(vec![part], None, self.usage(0, k as u64 + 1)));
        }
        let t = thoughts as u64;
        if let Some((name, args)) = &self.extra.function_call {
            if complete {
                let usage = self.usage(self.call_tokens(), t);
                out.push(self.response(
                    vec![Self::call_part(name, args)],
                    Some(&self.finish),
                    usage,
                ));
            }
            return out;
        }
        for k in 0..self.content {
            let last = complete && k + 1 == self.content;
            let part = self.text_part(wire::word(k), k == 0);
            let usage = self.usage(k as u64 + 1, t);
            out.push(self.response(vec![part], last.then_some(self.finish.as_str()), usage));
        }
        if complete && self.content == 0 {
            out.push(self.response(Vec::new(), Some(&self.finish), self.usage(0, t)));
        }
        out
    }
}

/// Thought part text `k`.
fn thought(k: usize) -> String {
    format!("thought{k} ")
}

/// Runs a stream to its end (or until the client leaves).
async fn stream(mut out: Emitter, answer: Answer, framing: Framing) {
    if send_stream(&mut out, &answer, framing).await.is_ok() && answer.ending == Ending::Cut {
        out.abort().await;
    }
}

async fn send_stream(out: &mut Emitter, answer: &Answer, framing: Framing) -> Result<(), Gone> {
    let mut first = true;
    let mut frame = |chunk: &Value| {
        let text = match framing {
            Framing::Sse => format!("data: {chunk}\r\n\r\n"),
            Framing::JsonArray if first => format!("[{chunk}"),
            Framing::JsonArray => format!(",\r\n{chunk}"),
        };
        first = false;
        text
    };
    for chunk in answer.chunks() {
        out.send(frame(&chunk)).await?;
    }
    match answer.ending {
        Ending::Cut => return Ok(()),
        Ending::Error => {
            let error: Value = serde_json::from_str(&status_error(500, None, &answer.model))
                .unwrap_or_else(|_| json!({}));
            out.send(frame(&error)).await?;
        }
        Ending::Complete => {}
    }
    if framing == Framing::JsonArray {
        // An array with no element still opens before it closes.
        out.send(if first { "[]" } else { "]" }).await?;
    }
    Ok(())
}

/// A Google error body: `{"error":{code, message, status, details?}}`.
fn error_body(code: u16, status: &str, message: &str, details: Vec<Value>) -> String {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json!({ "error": error }).to_string()
}

/// A recorded Google error body of `testkit/samples/`, parsed.
fn recorded(name: &str) -> Value {
    serde_json::from_str(crate::samples::text(name)).unwrap_or(Value::Null)
}

/// Google's answer to a wrong API key: 400 `INVALID_ARGUMENT`, `ErrorInfo` `API_KEY_INVALID`
/// (gemini-error-400-api-key-invalid.json).
fn invalid_key_body() -> String {
    recorded("gemini-error-400-api-key-invalid.json").to_string()
}

/// Google's answer to a request without a key: 403 `PERMISSION_DENIED`.
fn no_key_body() -> String {
    error_body(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). \
         Please use API Key or other form of API consumer identity to call this API.",
        Vec::new(),
    )
}

/// The default body of [`Behavior::Status`] for `code` on a Gemini endpoint about `model`: the
/// recorded bodies where there is one (403 leaked key, 404 with the model named, 429 per-minute
/// quota with the model in its `QuotaFailure`); a 429's `RetryInfo.retryDelay` is `retry_after`
/// seconds when that is a number, else the recorded 26s.
pub(super) fn status_error(code: u16, retry_after: Option<&str>, model: &str) -> String {
    match code {
        400 => error_body(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            Vec::new(),
        ),
        401 => error_body(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential.",
            Vec::new(),
        ),
        403 => recorded("gemini-error-403-leaked-key.json").to_string(),
        404 => {
            let mut body = recorded("gemini-error-404.json");
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .replace("gemini-3.6-flahs", model);
            body["error"]["message"] = Value::from(message);
            body.to_string()
        }
        429 => {
            let delay = retry_after
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(26);
            let mut body = recorded("gemini-error-429-per-minute.json");
            if let Some(details) = body["error"]["details"].as_array_mut() {
                for detail in details {
                    match detail["@type"].as_str() {
                        Some("type.googleapis.com/google.rpc.QuotaFailure") => {
                            detail["violations"][0]["quotaDimensions"]["model"] =
                                Value::from(model);
                        }
                        Some("type.googleapis.com/google.rpc.RetryInfo") => {
                            detail["retryDelay"] = Value::from(format!("{delay}s"));
                        }
                        _ => {}
                    }
                }
            }
            body.to_string()
        }
        500 => error_body(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting",
            Vec::new(),
        ),
        503 => error_body(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            Vec::new(),
        ),
        504 => error_body(
            504,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
            Vec::new(),
        ),
        c if c >= 500 => error_body(c, "INTERNAL", "Internal error (fake upstream).", Vec::new()),
        c => error_body(
            c,
            "FAILED_PRECONDITION",
            "Request failed (fake upstream).",
            Vec::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str) -> Parts {
        hyper::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn paths_map_to_endpoints() {
        let of = |m: Method, uri: &str| Endpoint::of(&parts(m, uri));
        let generate = |framing| {
            Some(Endpoint::Generate {
                model: "gemini-2.5-flash".into(),
                framing,
            })
        };
        assert_eq!(
            of(
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:generateContent"
            ),
            generate(None)
        );
        assert_eq!(
            of(
                Method::POST,
                "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
            ),
            generate(Some(Framing::Sse))
        );
        assert_eq!(
            of(
                Method::POST,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
            ),
            generate(Some(Framing::JsonArray))
        );
        assert_eq!(
            of(Method::POST, "/v1beta/models/m:countTokens?key=k"),
            Some(Endpoint::CountTokens)
        );
        assert_eq!(
            of(Method::GET, "/v1beta/models?pageSize=2"),
            Some(Endpoint::ListModels)
        );
        assert_eq!(
            of(Method::GET, "/v1beta/models/m"),
            Some(Endpoint::GetModel { model: "m".into() })
        );
        assert_eq!(
            of(Method::GET, "/v1beta/models/m:generateContent"),
            Some(Endpoint::NotFound)
        );
        assert_eq!(
            of(Method::POST, "/v1beta/models/m:embedAll"),
            Some(Endpoint::NotFound)
        );
        assert_eq!(
            of(Method::POST, "/v1beta/tunedModels"),
            Some(Endpoint::NotFound)
        );
        // The other dialects keep their paths.
        assert_eq!(of(Method::GET, "/v1/models"), None);
        assert_eq!(
            of(Method::GET, "/v1/models?key=k"),
            Some(Endpoint::ListModels)
        );
        assert_eq!(of(Method::POST, "/v1/chat/completions"), None);
    }

    #[test]
    fn every_error_is_googles_shape() {
        for code in [400, 401, 403, 404, 429, 500, 503, 504, 502, 418] {
            let v: Value = serde_json::from_str(&status_error(code, Some("7"), "m\"x")).unwrap();
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["status"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(v["error"]["message"].is_string());
        }
        let retry = |after| {
            let v: Value = serde_json::from_str(&status_error(429, after, "m")).unwrap();
            let details = v["error"]["details"].as_array().unwrap().clone();
            assert_eq!(details[0]["violations"][0]["quotaDimensions"]["model"], "m");
            details
                .iter()
                .find_map(|d| d["retryDelay"].as_str().map(str::to_string))
                .unwrap()
        };
        assert_eq!(retry(Some("7")), "7s");
        assert_eq!(retry(Some("soon")), "26s");
        let v: Value = serde_json::from_str(&status_error(404, None, "gemini-x")).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("models/gemini-x is not found")
        );
        let v: Value = serde_json::from_str(&invalid_key_body()).unwrap();
        assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(page_offset(&page_token(17)), Some(17));
        assert_eq!(page_offset("garbage"), None);
    }
}
