//! The OpenAI Chat Completions shapes the data plane reads and writes.
//!
//! Requests are read into their top-level entries with each value kept as raw JSON, so that a
//! rewrite (the upstream's model id, `stream_options.include_usage`) changes only those entries
//! and every other byte the client sent reaches the upstream as it was.

pub mod decode;
pub mod encode;
pub mod relay;
pub mod usage;

pub use usage::Usage;

use super::json::Entries;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Output tokens assumed for ranking when the request sets no limit.
pub const DEFAULT_OUTPUT_TOKENS_ESTIMATE: u64 = 1024;

/// A request body, parsed as far as routing needs.
pub struct ChatRequest<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: String,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage: true`).
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
}

/// Why a request body was refused before any upstream saw it. The message is for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub message: String,
    pub param: Option<&'static str>,
}

fn refuse(message: impl Into<String>, param: Option<&'static str>) -> RequestError {
    RequestError {
        message: message.into(),
        param,
    }
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl<'a> ChatRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<ChatRequest<'a>, RequestError> {
        let Entries(entries) = serde_json::from_slice(body).map_err(|e| {
            refuse(
                format!("We could not parse the JSON body of your request: {e}"),
                None,
            )
        })?;
        let mut req = ChatRequest {
            entries,
            model: String::new(),
            stream: false,
            include_usage: false,
            max_tokens: None,
        };
        let mut has_messages = false;
        let mut max_tokens = None;
        let mut max_completion_tokens = None;
        for (key, value) in &req.entries {
            let raw = value.get();
            match key.as_ref() {
                "model" => {
                    req.model = serde_json::from_str::<String>(raw)
                        .map_err(|_| refuse("'model' must be a string", Some("model")))?;
                }
                "stream" => {
                    req.stream = serde_json::from_str::<Option<bool>>(raw)
                        .map_err(|_| refuse("'stream' must be a boolean", Some("stream")))?
                        .unwrap_or(false);
                }
                "stream_options" => {
                    let opts: Option<StreamOptions> = serde_json::from_str(raw).map_err(|_| {
                        refuse("'stream_options' must be an object", Some("stream_options"))
                    })?;
                    req.include_usage = opts.and_then(|o| o.include_usage).unwrap_or(false);
                }
                "max_tokens" => max_tokens = token_limit(raw, "max_tokens")?,
                "max_completion_tokens" => {
                    max_completion_tokens = token_limit(raw, "max_completion_tokens")?
                }
                "messages" => {
                    if !raw.trim_start().starts_with('[') {
                        return Err(refuse("'messages' must be an array", Some("messages")));
                    }
                    has_messages = true;
                }
                _ => {}
            }
        }
        if req.model.is_empty() {
            return Err(refuse("you must provide a model parameter", Some("model")));
        }
        if !has_messages {
            return Err(refuse(
                "Missing required parameter: 'messages'.",
                Some("messages"),
            ));
        }
        req.max_tokens = max_completion_tokens.or(max_tokens);
        Ok(req)
    }

    /// The body to send upstream: `model` replaced by `upstream_model` and, when
    /// `force_include_usage`, `stream_options.include_usage` set to true. Everything else is the
    /// client's bytes.
    pub fn rewrite(&self, upstream_model: &str, force_include_usage: bool) -> Bytes {
        let model = serde_json::to_string(upstream_model).unwrap_or_default();
        let mut extra = Vec::new();
        if force_include_usage && !self.entries.iter().any(|(k, _)| k == "stream_options") {
            extra.push(("stream_options", r#"{"include_usage":true}"#.to_string()));
        }
        let out = super::json::write_object(
            &self.entries,
            |key, value| match key {
                "model" => Some(model.clone()),
                "stream_options" if force_include_usage => {
                    let mut opts: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(value.get()).unwrap_or_default();
                    opts.insert("include_usage".into(), serde_json::Value::Bool(true));
                    Some(serde_json::to_string(&opts).unwrap_or_default())
                }
                _ => None,
            },
            &extra,
        );
        Bytes::from(out)
    }
}

fn token_limit(raw: &str, param: &'static str) -> Result<Option<u64>, RequestError> {
    serde_json::from_str::<Option<u64>>(raw).map_err(|_| {
        refuse(
            format!("'{param}' must be a non-negative integer"),
            Some(param),
        )
    })
}

/// An OpenAI error object, `{"error":{"message","type","param","code"}}`, in OpenAI's own key
/// order. Chat completions and the Responses API share it.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    #[derive(serde::Serialize)]
    struct Inner<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        param: Option<&'a str>,
        code: Option<&'a str>,
    }
    let body = Body {
        error: Inner {
            message,
            kind,
            param,
            code,
        },
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// An upstream's refusal as OpenAI's error object, for a client of either OpenAI dialect: the
/// upstream's status kept, except Anthropic's 529 (overloaded), which OpenAI clients do not know
/// and read as 503; the type and code OpenAI gives the status.
pub fn upstream_error(err: &crate::protocol::shape::UpstreamError) -> (u16, Vec<u8>) {
    let message = err.message_or_generic();
    let (status, kind, code) = match err.status {
        529 => (503, "server_error", None),
        429 => (429, "rate_limit_error", Some("rate_limit_exceeded")),
        401 => (401, "invalid_request_error", Some("invalid_api_key")),
        403 => (403, "invalid_request_error", Some("permission_denied")),
        404 if message.to_ascii_lowercase().contains("model") => {
            (404, "invalid_request_error", Some("model_not_found"))
        }
        404 => (404, "invalid_request_error", Some("not_found")),
        413 => (413, "invalid_request_error", Some("request_too_large")),
        s @ 500..=599 => (s, "server_error", None),
        s => (s, "invalid_request_error", None),
    };
    (status, error_body(&message, kind, None, code).to_vec())
}

#[derive(Deserialize)]
struct CompletionBody<'a> {
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// The usage of a non-streamed completion body, if it has a readable one.
pub fn completion_usage(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<CompletionBody<'_>>(body)
        .ok()?
        .usage
        .and_then(Usage::read)
}

/// A non-streamed body that is what a chat completion promises.
#[derive(Debug)]
pub struct Completion {
    /// Its usage, when it has a readable one.
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct CompletionShape<'a> {
    /// Required, and only its shape matters.
    #[serde(rename = "choices")]
    _choices: Vec<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// Reads a non-streamed upstream body as a chat completion: a JSON object with a `choices`
/// array. `None` for anything else (HTML, text, empty, truncated, an array, compressed bytes),
/// which is not to be relayed as a completion. An unreadable `usage` leaves the body a
/// completion without usage. One parse gives both the verdict and the usage.
pub fn completion(body: &[u8]) -> Option<Completion> {
    if super::json::first_byte(body) != Some(b'{') {
        return None;
    }
    let shape = serde_json::from_slice::<CompletionShape<'_>>(body).ok()?;
    Some(Completion {
        usage: shape.usage.and_then(Usage::read),
    })
}

/// What one streamed event means to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Shows nothing to a client: comments, keep-alives, an empty role chunk. May be held back
    /// while a failover is still possible.
    Preamble,
    /// Content, reasoning, a tool call, a refusal or a finish reason: the stream is committed.
    Content { usage: Option<Usage> },
    /// A chunk with `choices: []` that carries only usage (the `include_usage` chunk).
    UsageOnly(Usage),
    /// `data: [DONE]`.
    Done,
    /// An error event (a top-level `error` object, or `event: error`), with its message.
    Error {
        message: String,
        usage: Option<Usage>,
    },
}

/// One streamed chunk as every reader of it sees it: the pass-through relay ([`classify`]) and
/// the decoder ([`decode::Stream`]) parse this same struct, so they cannot disagree about what a
/// chunk holds. Values whose type varies between upstreams stay raw and are read where used.
#[derive(Deserialize)]
pub(super) struct WireChunk<'a> {
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub choices: Option<Vec<WireChoice<'a>>>,
    #[serde(default, borrow)]
    pub usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct WireChoice<'a> {
    /// Which choice (only `n > 1` requests have more than choice 0).
    #[serde(default, borrow)]
    pub index: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub delta: Option<WireDelta<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<&'a RawValue>,
}

impl WireChoice<'_> {
    /// Whether this is the first choice (an absent index is).
    pub fn is_first(&self) -> bool {
        self.index
            .is_none_or(|i| matches!(i.get().trim(), "0" | "null"))
    }

    /// The finish reason, when there is one: its text, or `""` when it is not a string. An
    /// empty string is none (some upstreams send `"finish_reason": ""` on every chunk).
    pub fn finish_reason(&self) -> Option<Cow<'_, str>> {
        let raw = self.finish_reason.filter(|f| !is_null(f))?;
        match serde_json::from_str::<Cow<'_, str>>(raw.get()) {
            Ok(text) if text.is_empty() => None,
            Ok(text) => Some(text),
            Err(_) => Some(Cow::Borrowed("")),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct WireDelta<'a> {
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
    /// DeepSeek's and most open-model hosts' reasoning text.
    #[serde(default, borrow)]
    pub reasoning_content: Option<Cow<'a, str>>,
    /// OpenRouter's reasoning text.
    #[serde(default, borrow)]
    pub reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub tool_calls: Option<&'a RawValue>,
}

impl WireDelta<'_> {
    /// Whether the delta carries tool-call fragments.
    pub fn has_tool_calls(&self) -> bool {
        self.tool_calls
            .is_some_and(|t| !is_null(t) && t.get().trim() != "[]")
    }
}

fn non_empty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

fn is_null(v: &RawValue) -> bool {
    v.get().trim() == "null"
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
}

/// Classifies one event by its `event:` name and data.
pub fn classify(name: Option<&[u8]>, data: Option<&[u8]>) -> Chunk {
    let Some(data) = data else {
        return Chunk::Preamble;
    };
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Chunk::Done;
    }
    // Only an object is a chunk: serde would also read a struct from an array, taking its first
    // element for `error`.
    let parsed: Option<WireChunk<'_>> = (trimmed.first() == Some(&b'{'))
        .then(|| serde_json::from_slice(trimmed).ok())
        .flatten();
    let is_error_event = name == Some(b"error".as_slice());
    let Some(chunk) = parsed else {
        return if is_error_event {
            Chunk::Error {
                message: String::from_utf8_lossy(trimmed).into_owned(),
                usage: None,
            }
        } else {
            // Not JSON and not an error: nothing a client would show; pass it along.
            Chunk::Preamble
        };
    };
    let usage = chunk.usage.and_then(Usage::read);
    if let Some(error) = chunk.error.filter(|e| !is_null(e)) {
        let message = serde_json::from_str::<ErrorObject>(error.get())
            .ok()
            .and_then(|e| e.message)
            .unwrap_or_else(|| error.get().to_string());
        return Chunk::Error { message, usage };
    }
    if is_error_event {
        return Chunk::Error {
            message: String::from_utf8_lossy(trimmed).into_owned(),
            usage,
        };
    }
    let choices = chunk.choices.unwrap_or_default();
    if choices.is_empty() {
        return match usage {
            Some(u) => Chunk::UsageOnly(u),
            None => Chunk::Preamble,
        };
    }
    let shows_something = choices.iter().any(|c| {
        c.finish_reason().is_some()
            || c.delta.as_ref().is_some_and(|d| {
                non_empty(&d.content)
                    || non_empty(&d.reasoning_content)
                    || non_empty(&d.reasoning)
                    || non_empty(&d.refusal)
                    || d.has_tool_calls()
            })
    });
    if shows_something {
        Chunk::Content { usage }
    } else if usage.is_some() {
        // Choices with nothing in them but usage attached (some providers' final chunk).
        Chunk::Content { usage }
    } else {
        Chunk::Preamble
    }
}

/// Whether an event's data may hold usage or an error, so that only those events are parsed once
/// a stream is committed. False positives are fine (the event is then parsed); a false negative
/// would miss billing, so this errs on the side of "maybe".
pub fn may_matter(name: Option<&[u8]>, data: &[u8]) -> bool {
    if name == Some(b"error".as_slice()) || data.trim_ascii() == b"[DONE]" {
        return true;
    }
    for pos in memchr::memmem::find_iter(data, b"\"usage\"") {
        let after = data[pos + 7..].trim_ascii_start();
        if let Some(rest) = after.strip_prefix(b":")
            && rest.trim_ascii_start().first() == Some(&b'{')
        {
            return true;
        }
    }
    memchr::memmem::find(data, b"\"error\"").is_some()
}

/// The OpenAI-shaped error event that ends a stream that failed after content was sent.
pub fn stream_error_event(message: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": "server_error",
            "param": null,
            "code": "upstream_error",
        }
    });
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(&body).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse;

    #[test]
    fn an_array_is_no_chunk_and_no_error() {
        // Read as a struct, the array's first element would have been the `error` field.
        let data = br#"[{"index":0,"delta":{"content":"x"}}]"#;
        assert_eq!(classify(None, Some(data)), Chunk::Preamble);
        assert!(!may_matter(None, data));
    }

    #[test]
    fn usage_counts_only_as_an_object() {
        // Read as a struct, `[40, 2]` would have been 40 prompt and 2 completion tokens, in an
        // event `may_matter` lets pass unparsed once a stream is committed.
        let data = br#"{"choices":[],"usage":[40,2]}"#;
        assert_eq!(classify(None, Some(data)), Chunk::Preamble);
        assert!(!may_matter(None, data));
        let data = br#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":[40,2]}"#;
        assert_eq!(classify(None, Some(data)), Chunk::Content { usage: None });
        let body = br#"{"choices":[],"usage":[40,2]}"#;
        assert_eq!(completion(body).and_then(|c| c.usage), None);
        // An unreadable usage no longer hides the content it came with.
        let data = br#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":"lots"}}"#;
        assert_eq!(classify(None, Some(data)), Chunk::Content { usage: None });
    }

    #[test]
    fn only_a_json_object_with_choices_is_a_completion() {
        let ok =
            br#" {"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],
            "usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let c = completion(ok).unwrap();
        assert_eq!(c.usage.unwrap().prompt_tokens, 3);
        // Unreadable usage leaves a completion without usage.
        let c = completion(br#"{"choices":[],"usage":{"prompt_tokens":"lots"}}"#).unwrap();
        assert!(c.usage.is_none());
        for bad in [
            &b""[..],
            b"<html><body>502 Bad Gateway</body></html>",
            b"upstream connect error",
            br#"{"choices":[{"index":0"#,
            br#"[[], {"prompt_tokens": 1}]"#,
            br#"{"error":{"message":"x"}}"#,
            br#"{"choices":{}}"#,
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
        ] {
            assert!(
                completion(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rewrite_changes_only_model_and_keeps_other_bytes() {
        let body = br#"{"model":"deepseek/deepseek-chat","messages":[{"role":"user","content":"hi \u00e9"}],"tools":[{"x":1}],"unknown_field":{"a":[1,2]},"temperature":0}"#;
        let req = ChatRequest::parse(body).unwrap();
        assert_eq!(req.model, "deepseek/deepseek-chat");
        assert!(!req.stream);
        let out = req.rewrite("deepseek-chat", false);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi \u00e9"}],"tools":[{"x":1}],"unknown_field":{"a":[1,2]},"temperature":0}"#
        );
    }

    #[test]
    fn forcing_include_usage() {
        let body = br#"{"model":"m","messages":[],"stream":true}"#;
        let req = ChatRequest::parse(body).unwrap();
        assert!(req.stream && !req.include_usage);
        let out: serde_json::Value = serde_json::from_slice(&req.rewrite("u", true)).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);

        let body = br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false,"other":1}}"#;
        let req = ChatRequest::parse(body).unwrap();
        let out: serde_json::Value = serde_json::from_slice(&req.rewrite("u", true)).unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"include_usage": true, "other": 1})
        );

        let body = br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"max_completion_tokens":7}"#;
        let req = ChatRequest::parse(body).unwrap();
        assert!(req.include_usage);
        assert_eq!(req.max_tokens, Some(7));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        for (body, param) in [
            (&b"not json"[..], None),
            (b"[1,2]", None),
            (br#"{"messages":[]}"#, Some("model")),
            (br#"{"model":5,"messages":[]}"#, Some("model")),
            (br#"{"model":"m"}"#, Some("messages")),
            (br#"{"model":"m","messages":"hi"}"#, Some("messages")),
            (
                br#"{"model":"m","messages":[],"stream":"yes"}"#,
                Some("stream"),
            ),
            (
                br#"{"model":"m","messages":[],"max_tokens":-1}"#,
                Some("max_tokens"),
            ),
        ] {
            let err = ChatRequest::parse(body).err().unwrap();
            assert_eq!(err.param, param, "{}", String::from_utf8_lossy(body));
        }
    }

    fn events(sample: &str) -> Vec<Chunk> {
        let raw = keyplane_testkit::samples::bytes(sample);
        let mut out = Vec::new();
        sse::Splitter::default().push(Bytes::from_static(raw), &mut out);
        out.iter()
            .map(|e| {
                let ev = sse::parse(e);
                classify(ev.name, ev.data.as_deref())
            })
            .collect()
    }

    #[test]
    fn openai_sample_stream() {
        let chunks = events("openai-chat-stream.sse");
        assert_eq!(
            chunks[0],
            Chunk::Preamble,
            "the empty role chunk shows nothing"
        );
        assert!(matches!(chunks[1], Chunk::Content { usage: None }));
        assert_eq!(chunks.last(), Some(&Chunk::Done));
        let usage = chunks.iter().find_map(|c| match c {
            Chunk::UsageOnly(u) => Some(*u),
            _ => None,
        });
        assert!(usage.is_some_and(|u| u.prompt_tokens > 0 && u.completion_tokens > 0));
    }

    #[test]
    fn openrouter_midstream_error_and_groq_error_event() {
        let chunks = events("openrouter-stream-midstream-error.sse");
        assert!(
            chunks.iter().take(17).all(|c| *c == Chunk::Preamble),
            "comments are preamble"
        );
        assert!(
            matches!(chunks[17], Chunk::Content { .. }),
            "reasoning commits"
        );
        let err = chunks.iter().find_map(|c| match c {
            Chunk::Error { message, usage } => Some((message.clone(), *usage)),
            _ => None,
        });
        let (message, usage) = err.unwrap();
        assert_eq!(message, "Token limit reached");
        assert_eq!(usage.unwrap().prompt_tokens, 43);

        let chunks = events("groq-stream-midstream-error.trimmed.sse");
        assert_eq!(chunks[0], Chunk::Preamble);
        assert!(matches!(chunks.last(), Some(Chunk::Error { .. })));
    }

    #[test]
    fn usage_on_finish_chunks_is_read() {
        let chunks = events("deepseek-stream.trimmed.sse");
        let usage = chunks.iter().find_map(|c| match c {
            Chunk::Content { usage: Some(u) } => Some(*u),
            _ => None,
        });
        assert_eq!(usage.unwrap().completion_tokens, 212);
        let chunks = events("openrouter-stream-usage-cost.sse");
        assert!(
            chunks
                .iter()
                .any(|c| matches!(c, Chunk::Content { usage: Some(_) }))
        );
    }

    #[test]
    fn may_matter_finds_usage_and_errors() {
        assert!(!may_matter(
            None,
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#
        ));
        assert!(may_matter(
            None,
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(may_matter(
            None,
            br#"{"choices":[], "usage" : {"prompt_tokens":1}}"#
        ));
        assert!(may_matter(None, br#"{"error":{"message":"x"}}"#));
        assert!(may_matter(Some(b"error"), b"{}"));
        assert!(may_matter(None, b"[DONE]"));
    }

    #[test]
    fn reported_costs_from_samples() {
        use keyplane_testkit::samples;
        // OpenRouter non-stream: "cost": 0.00435825 USD.
        let body = samples::bytes("openrouter-usage-cost.json");
        assert_eq!(
            completion_usage(body).unwrap().reported_cost_nano,
            Some(4_358_250)
        );
        let body = samples::bytes("openrouter-usage-without-include.json");
        assert_eq!(completion_usage(body).unwrap().reported_cost_nano, None);
        // OpenRouter stream: cost 0.000669 on the last chunk.
        let chunks = events("openrouter-stream-usage-cost.sse");
        let cost = chunks.iter().find_map(|c| match c {
            Chunk::Content { usage: Some(u) } => u.reported_cost_nano,
            _ => None,
        });
        assert_eq!(cost, Some(669_000));
        // xAI: 1466250 ticks = $0.000146625.
        let xai = samples::text("xai-chat-stream.recorded.jsonl");
        let last = xai.lines().last().unwrap();
        let usage = match classify(None, Some(last.as_bytes())) {
            Chunk::UsageOnly(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(usage.reported_cost_nano, Some(146_625));
        // DeepInfra (unverified field name, as the brief gives it).
        let di = br#"{"usage":{"prompt_tokens":1,"completion_tokens":1,"estimated_cost":1.5e-05}}"#;
        assert_eq!(
            completion_usage(di).unwrap().reported_cost_nano,
            Some(15_000)
        );
        let neg = br#"{"usage":{"prompt_tokens":1,"cost":-1}}"#;
        assert_eq!(completion_usage(neg).unwrap().reported_cost_nano, None);
    }

    #[test]
    fn completion_usage_from_samples() {
        let body = keyplane_testkit::samples::bytes("openai-chat-completion.json");
        let usage = completion_usage(body).unwrap();
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        assert!(completion_usage(b"{}").is_none());
    }
}
