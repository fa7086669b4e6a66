//! The Anthropic Messages shapes the data plane reads and writes when the client speaks
//! Anthropic, or the upstream does: request peek and rewrite, stream event classification and
//! usage, error objects.

pub mod decode;
pub mod encode;
pub mod relay;

use super::json::{Entries, write_object};
use super::wire;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A `/v1/messages` body, parsed as far as routing needs.
pub struct MessagesRequest<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u64,
}

/// Why a request body was refused, in words for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(pub String);

impl<'a> MessagesRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<MessagesRequest<'a>, RequestError> {
        let Entries(entries) = serde_json::from_slice(body)
            .map_err(|e| RequestError(format!("The request body is not valid JSON: {e}")))?;
        let mut model = None;
        let mut stream = false;
        let mut max_tokens = None;
        let mut has_messages = false;
        for (key, value) in &entries {
            let raw = value.get();
            match key.as_ref() {
                "model" => {
                    model = Some(serde_json::from_str::<String>(raw).map_err(|_| {
                        RequestError("model: Input should be a valid string".into())
                    })?);
                }
                "stream" => {
                    stream = serde_json::from_str::<Option<bool>>(raw)
                        .map_err(|_| {
                            RequestError("stream: Input should be a valid boolean".into())
                        })?
                        .unwrap_or(false);
                }
                "max_tokens" => {
                    max_tokens = Some(serde_json::from_str::<u64>(raw).map_err(|_| {
                        RequestError("max_tokens: Input should be a valid integer".into())
                    })?);
                }
                "messages" => {
                    if !raw.trim_start().starts_with('[') {
                        return Err(RequestError(
                            "messages: Input should be a valid list".into(),
                        ));
                    }
                    has_messages = true;
                }
                _ => {}
            }
        }
        let model = model
            .filter(|m| !m.is_empty())
            .ok_or_else(|| RequestError("model: Field required".into()))?;
        if !has_messages {
            return Err(RequestError("messages: Field required".into()));
        }
        let max_tokens =
            max_tokens.ok_or_else(|| RequestError("max_tokens: Field required".into()))?;
        Ok(MessagesRequest {
            entries,
            model,
            stream,
            max_tokens,
        })
    }

    /// The body for an Anthropic upstream: the client's bytes with `model` replaced.
    pub fn rewrite(&self, upstream_model: &str) -> Bytes {
        let model = serde_json::to_string(upstream_model).unwrap_or_default();
        Bytes::from(write_object(
            &self.entries,
            |key, _| (key == "model").then(|| model.clone()),
            &[],
        ))
    }
}

/// The Anthropic error type for an HTTP status: the one table for errors the gateway makes and
/// for upstream errors translated for an Anthropic client, so a status always reads the same.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type":…,"message":…}}`.
pub fn error_body(kind: &str, message: &str) -> Bytes {
    let body = serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message },
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// An Anthropic `event: error` to end a stream that failed after content was sent.
pub fn stream_error_event(message: &str) -> Bytes {
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(&error_body("api_error", message));
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Anthropic usage as it accumulates over a stream (or arrives in one body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// An Anthropic `usage` object as read, by pass-through and translation alike. Every count is
/// lenient ([`wire::count`]: a float is truncated, a negative or null count is absent) so that one
/// odd count costs that count, not the whole event or body it came in.
#[derive(Deserialize, Default, Clone, Copy)]
pub(crate) struct UsageIn {
    #[serde(default, deserialize_with = "wire::count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "wire::count")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "wire::count")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "wire::count")]
    cache_read_input_tokens: Option<u64>,
}

impl Usage {
    /// Folds in a usage object: later values replace earlier ones (Anthropic's counts are
    /// cumulative; `message_delta` repeats the input counts in recent responses).
    pub(crate) fn merge(&mut self, raw: &UsageIn) {
        if let Some(v) = raw.input_tokens {
            self.input_tokens = v;
        }
        if let Some(v) = raw.output_tokens {
            self.output_tokens = v;
        }
        if let Some(v) = raw.cache_creation_input_tokens {
            self.cache_creation_input_tokens = v;
        }
        if let Some(v) = raw.cache_read_input_tokens {
            self.cache_read_input_tokens = v;
        }
    }

    /// The counts in billing terms (Anthropic's `input_tokens` already excludes cached input).
    pub fn billing(&self) -> super::usage::Usage {
        super::usage::Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
        }
    }
}

#[derive(Deserialize)]
struct MessageBody {
    #[serde(default)]
    usage: Option<UsageIn>,
}

/// The usage of a non-streamed message body.
pub fn message_usage(body: &[u8]) -> Option<Usage> {
    let raw = serde_json::from_slice::<MessageBody>(body).ok()?.usage?;
    let mut usage = Usage::default();
    usage.merge(&raw);
    Some(usage)
}

/// A non-streamed body that is what a message promises.
#[derive(Debug)]
pub struct Message {
    /// Its usage, when it has a readable one.
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct MessageShape<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Required, and only its shape matters.
    #[serde(rename = "content")]
    _content: Vec<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// Reads a non-streamed upstream body as a message: a JSON object with `"type": "message"` and
/// a `content` array. `None` for anything else (HTML, text, empty, truncated, an array,
/// compressed bytes), which is not to be relayed as a message. One parse gives both the
/// verdict and the usage.
pub fn message(body: &[u8]) -> Option<Message> {
    if super::json::first_byte(body) != Some(b'{') {
        return None;
    }
    let shape = serde_json::from_slice::<MessageShape<'_>>(body).ok()?;
    if shape.kind != "message" {
        return None;
    }
    let usage = shape
        .usage
        .and_then(super::json::object::<UsageIn>)
        .map(|raw| {
            let mut usage = Usage::default();
            usage.merge(&raw);
            usage
        });
    Some(Message { usage })
}

/// What one upstream event means to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Shows nothing: `message_start`, an empty block start, `ping`, `content_block_stop`.
    Preamble,
    /// Text, thinking, a tool call or a stop reason: the stream is committed.
    Content,
    Done,
    Error(String),
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<MessageBody>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default)]
    content_block: Option<Block>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
}

/// Classifies one event and folds its usage into `usage`.
pub fn classify(name: Option<&[u8]>, data: Option<&[u8]>, usage: &mut Usage) -> Event {
    let Some(data) = data else {
        return Event::Preamble;
    };
    let Ok(ev) = serde_json::from_slice::<RawEvent<'_>>(data) else {
        return if name == Some(b"error".as_slice()) {
            Event::Error(String::from_utf8_lossy(data).into_owned())
        } else {
            Event::Preamble
        };
    };
    let kind = ev
        .kind
        .as_deref()
        .map(str::to_string)
        .or_else(|| name.map(|n| String::from_utf8_lossy(n).into_owned()))
        .unwrap_or_default();
    if let Some(u) = ev.message.as_ref().and_then(|m| m.usage.as_ref()) {
        usage.merge(u);
    }
    if let Some(u) = &ev.usage {
        usage.merge(u);
    }
    match kind.as_str() {
        "error" => Event::Error(
            ev.error
                .and_then(|e| e.message)
                .unwrap_or_else(|| "upstream error".to_string()),
        ),
        "message_stop" => Event::Done,
        "content_block_start" => match ev.content_block {
            Some(b) if b.kind == "text" && b.text.as_deref().unwrap_or("").is_empty() => {
                Event::Preamble
            }
            Some(b) if b.kind == "thinking" || b.kind == "redacted_thinking" => Event::Preamble,
            Some(_) => Event::Content,
            None => Event::Preamble,
        },
        "content_block_delta" => match ev.delta {
            Some(d) => {
                let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
                if non_empty(&d.text) || non_empty(&d.thinking) || non_empty(&d.partial_json) {
                    Event::Content
                } else if d.kind.as_deref() == Some("input_json_delta") {
                    // An empty fragment of a tool call that has already started.
                    Event::Content
                } else {
                    Event::Preamble
                }
            }
            None => Event::Preamble,
        },
        "message_delta" => {
            if ev.delta.and_then(|d| d.stop_reason).is_some() {
                Event::Content
            } else {
                Event::Preamble
            }
        }
        _ => Event::Preamble,
    }
}

/// Whether an event may carry usage, an error or the end, so that only those are parsed once a
/// stream is committed. Errs towards "maybe".
pub fn may_matter(name: Option<&[u8]>, data: &[u8]) -> bool {
    match name {
        Some(b"content_block_delta" | b"ping" | b"content_block_stop") => false,
        Some(_) => true,
        None => memchr::memmem::find(data, b"\"content_block_delta\"").is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse;

    fn sample(name: &str) -> &'static [u8] {
        keyplane_testkit::samples::bytes(name)
    }

    #[test]
    fn only_a_json_message_object_is_a_message() {
        let ok = br#"{"id":"msg_1","type":"message","role":"assistant","model":"m",
            "content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":12,"output_tokens":3}}"#;
        let m = message(ok).unwrap();
        assert!(
            m.usage
                .is_some_and(|u| u.input_tokens == 12 && u.output_tokens == 3)
        );
        for bad in [
            &b""[..],
            b"<html></html>",
            br#"{"type":"error","error":{"type":"overloaded_error"}}"#,
            br#"{"type":"message","content":"text"}"#,
            br#"{"type":"message","content":[{"type":"text""#,
            br#"["message", []]"#,
        ] {
            assert!(message(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        // A usage given as an array is no usage (serde would read the struct from it).
        let m = message(br#"{"type":"message","content":[],"usage":[12,3]}"#).unwrap();
        assert!(m.usage.is_none());
    }

    #[test]
    fn usage_counts_are_read_leniently() {
        // A float is truncated, a negative or null count is absent: the other counts still count.
        let body = br#"{"type":"message","content":[],"usage":{"input_tokens":12.0,"output_tokens":-1,"cache_read_input_tokens":null,"cache_creation_input_tokens":7}}"#;
        let expected = Usage {
            input_tokens: 12,
            output_tokens: 0,
            cache_creation_input_tokens: 7,
            cache_read_input_tokens: 0,
        };
        assert_eq!(message(body).unwrap().usage, Some(expected));
        assert_eq!(message_usage(body), Some(expected));
        let mut usage = Usage::default();
        let event = br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5.9}}"#;
        assert_eq!(
            classify(Some(b"message_delta"), Some(event), &mut usage),
            Event::Content
        );
        assert_eq!(usage.output_tokens, 5);
        assert_eq!(
            expected.billing(),
            crate::protocol::usage::Usage {
                input_tokens: 12,
                output_tokens: 0,
                cache_read_tokens: 0,
                cache_write_tokens: 7,
            }
        );
    }

    #[test]
    fn request_parse_and_rewrite() {
        let body = br#"{"model":"claude-x","max_tokens":100,"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"adaptive"},"stream":true}"#;
        let req = MessagesRequest::parse(body).unwrap();
        assert_eq!(
            (req.model.as_str(), req.stream, req.max_tokens),
            ("claude-x", true, 100)
        );
        let out = req.rewrite("claude-sonnet-4-5");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}],"thinking":{"type":"adaptive"},"stream":true}"#
        );
        for bad in [
            &b"nope"[..],
            br#"{"max_tokens":1,"messages":[]}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","max_tokens":1}"#,
        ] {
            assert!(MessagesRequest::parse(bad).is_err());
        }
    }

    #[test]
    fn sample_stream_commits_at_text_and_sums_usage() {
        let mut events = Vec::new();
        sse::Splitter::default().push(Bytes::from(sample("anthropic-stream.sse")), &mut events);
        let mut usage = Usage::default();
        let kinds: Vec<Event> = events
            .iter()
            .map(|e| {
                let ev = sse::parse(e);
                classify(ev.name, ev.data.as_deref(), &mut usage)
            })
            .collect();
        let first_content = kinds.iter().position(|k| *k == Event::Content).unwrap();
        assert!(
            first_content >= 2,
            "message_start and the empty block start are preamble"
        );
        assert_eq!(kinds.last(), Some(&Event::Done));
        assert!(
            usage.input_tokens > 0 && usage.output_tokens > 0,
            "{usage:?}"
        );
    }

    #[test]
    fn tool_use_stream_and_message_usage() {
        let mut events = Vec::new();
        sse::Splitter::default().push(
            Bytes::from(sample("anthropic-tool-use-stream.sse")),
            &mut events,
        );
        let mut usage = Usage::default();
        let kinds: Vec<Event> = events
            .iter()
            .map(|e| {
                let ev = sse::parse(e);
                classify(ev.name, ev.data.as_deref(), &mut usage)
            })
            .collect();
        assert!(kinds.contains(&Event::Content));
        assert!(usage.output_tokens > 0);
        let u = message_usage(sample("anthropic-message.json")).unwrap();
        assert!(u.input_tokens > 0 && u.output_tokens > 0);
        let mut none = Usage::default();
        assert!(matches!(
            classify(Some(b"error"), Some(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#), &mut none),
            Event::Error(m) if m == "Overloaded"
        ));
    }
}
