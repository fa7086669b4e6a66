//! Shape → Responses bytes: the response object and the stream events a Responses client reads,
//! and its error objects.
//!
//! The response object and every event carry the fields OpenAI's API sends, in the order of the
//! recorded streams in `testkit/samples/openai-responses-*.recorded.jsonl` (field types from
//! openai-python `types/responses/`). Events are framed `event: <type>\ndata: <json>\n\n` and
//! numbered by `sequence_number` from 0.

use super::{Echo, Namespaces};
use crate::protocol::shape::{Block, Metering, Response, StopReason};
use crate::protocol::wire;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;

/// A reasoning item's `encrypted_content` that carries an opaque (redacted) reasoning block's
/// data rather than a signature, so that decoding the item gives the same block back. Neither
/// OpenAI's encrypted content (a Fernet token, `gAAAA…`) nor an Anthropic signature (base64)
/// contains a `:`, so the prefix cannot be mistaken for either.
pub const REDACTED_PREFIX: &str = "redacted_thinking:";

/// A new response id, `resp_` and 32 hex digits.
pub fn new_response_id() -> String {
    format!("resp_{}", uuid::Uuid::new_v4().simple())
}

fn new_item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// Output items
// ---------------------------------------------------------------------------------------------

/// One item of a response's `output`, as the shape's blocks become them.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    kind: ItemKind,
}

#[derive(Debug, Clone)]
enum ItemKind {
    Message {
        text: String,
    },
    Reasoning {
        text: String,
        /// `encrypted_content`: the thinking block's signature, or [`REDACTED_PREFIX`] and a
        /// redacted block's data.
        encrypted: Option<String>,
    },
    FunctionCall {
        call_id: String,
        name: String,
        namespace: Option<String>,
        arguments: String,
    },
}

impl Item {
    fn message(text: String) -> Item {
        Item {
            id: new_item_id("msg"),
            kind: ItemKind::Message { text },
        }
    }

    fn reasoning(text: String, encrypted: Option<String>) -> Item {
        Item {
            id: new_item_id("rs"),
            kind: ItemKind::Reasoning { text, encrypted },
        }
    }

    fn function_call(call_id: String, name: &str, arguments: String, ns: &Namespaces) -> Item {
        let (namespace, name) = match ns.split(name) {
            Some((namespace, bare)) if namespace != super::DEFAULT_NAMESPACE => {
                (Some(namespace.to_string()), bare.to_string())
            }
            Some((_, bare)) => (None, bare.to_string()),
            None => (None, name.to_string()),
        };
        Item {
            id: new_item_id("fc"),
            kind: ItemKind::FunctionCall {
                call_id,
                name,
                namespace,
                arguments,
            },
        }
    }

    /// The item as a stream's `output_item.added` shows it (`added`: empty, in progress) or as
    /// `output_item.done` and the response's `output` show it.
    fn view(&self, added: bool) -> ItemView<'_> {
        ItemView { item: self, added }
    }
}

struct ItemView<'a> {
    item: &'a Item,
    added: bool,
}

/// `{"type":"output_text","annotations":[],"logprobs":[],"text":…}`.
struct OutputText<'a>(&'a str);

impl Serialize for OutputText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("type", "output_text")?;
        m.serialize_entry("annotations", &[(); 0])?;
        m.serialize_entry("logprobs", &[(); 0])?;
        m.serialize_entry("text", self.0)?;
        m.end()
    }
}

/// `{"type":"summary_text","text":…}`.
struct SummaryText<'a>(&'a str);

impl Serialize for SummaryText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", "summary_text")?;
        m.serialize_entry("text", self.0)?;
        m.end()
    }
}

impl Serialize for ItemView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let item = self.item;
        let status = if self.added {
            "in_progress"
        } else {
            "completed"
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &item.id)?;
        match &item.kind {
            ItemKind::Message { text } => {
                m.serialize_entry("type", "message")?;
                m.serialize_entry("status", status)?;
                if self.added {
                    m.serialize_entry("content", &[(); 0])?;
                } else {
                    m.serialize_entry("content", &[OutputText(text)])?;
                }
                m.serialize_entry("role", "assistant")?;
            }
            ItemKind::Reasoning {
                text, encrypted, ..
            } => {
                m.serialize_entry("type", "reasoning")?;
                // A signature arrives at the end of a streamed block: the added item has none.
                if let Some(encrypted) = encrypted.as_ref().filter(|_| !self.added) {
                    m.serialize_entry("encrypted_content", encrypted)?;
                }
                if self.added || text.is_empty() {
                    m.serialize_entry("summary", &[(); 0])?;
                } else {
                    m.serialize_entry("summary", &[SummaryText(text)])?;
                }
            }
            ItemKind::FunctionCall {
                call_id,
                name,
                namespace,
                arguments,
            } => {
                m.serialize_entry("type", "function_call")?;
                m.serialize_entry("status", status)?;
                m.serialize_entry("arguments", if self.added { "" } else { arguments })?;
                m.serialize_entry("call_id", call_id)?;
                m.serialize_entry("name", name)?;
                if let Some(namespace) = namespace {
                    m.serialize_entry("namespace", namespace)?;
                }
            }
        }
        m.end()
    }
}

/// The output items of a whole answer, in the order of its blocks. Tool results never appear in
/// an answer; images neither (no upstream answers with one here).
fn items(content: &[Block<'_>], ns: &Namespaces) -> Vec<Item> {
    let mut out = Vec::new();
    for block in content {
        let item = match block {
            Block::Text(text) => Item::message(text.clone()),
            Block::Thinking { text, signature } => Item::reasoning(text.clone(), signature.clone()),
            Block::RedactedThinking { data } => {
                Item::reasoning(String::new(), Some(format!("{REDACTED_PREFIX}{data}")))
            }
            Block::ToolCall {
                id,
                name,
                arguments,
            } => {
                let arguments = match arguments {
                    crate::protocol::shape::Arguments::Raw(raw) => wire::compact_json(raw.get()),
                    crate::protocol::shape::Arguments::Text(text) => text.clone(),
                };
                Item::function_call(id.clone(), name, arguments, ns)
            }
            Block::Image(_) | Block::ToolResult { .. } => continue,
        };
        out.push(item);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The response object
// ---------------------------------------------------------------------------------------------

/// `status` and `incomplete_details.reason` for why an answer ended: cut short by the output
/// limit (or the context window) is `max_output_tokens`, a refusal is `content_filter`.
fn status_of(stop: Option<StopReason>) -> (&'static str, Option<&'static str>) {
    match stop {
        Some(StopReason::MaxTokens | StopReason::ContextWindow) => {
            ("incomplete", Some("max_output_tokens"))
        }
        Some(StopReason::Refusal) => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

/// `usage` as OpenAI counts it: `input_tokens` includes cached and cache-written input.
struct UsageView(Metering);

impl Serialize for UsageView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct InputDetails {
            cache_write_tokens: u64,
            cached_tokens: u64,
        }
        #[derive(Serialize)]
        struct OutputDetails {
            reasoning_tokens: u64,
        }
        let u = self.0.usage;
        let input = u
            .input_tokens
            .saturating_add(u.cache_read_tokens)
            .saturating_add(u.cache_write_tokens);
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("input_tokens", &input)?;
        m.serialize_entry(
            "input_tokens_details",
            &InputDetails {
                cache_write_tokens: u.cache_write_tokens,
                cached_tokens: u.cache_read_tokens,
            },
        )?;
        m.serialize_entry("output_tokens", &u.output_tokens)?;
        m.serialize_entry(
            "output_tokens_details",
            &OutputDetails {
                reasoning_tokens: self.0.reasoning_tokens.unwrap_or(0),
            },
        )?;
        m.serialize_entry("total_tokens", &input.saturating_add(u.output_tokens))?;
        m.end()
    }
}

/// An echoed request parameter: the client's raw value, or the API's default.
enum Echoed<'a> {
    Raw(&'a RawValue),
    Null,
    Bool(bool),
    Number(u64),
    Str(&'static str),
    EmptyList,
    EmptyMap,
    /// `{"format":{"type":"text"}}`.
    TextFormat,
    /// `{"effort":null,"summary":null}`.
    NoReasoning,
}

impl Serialize for Echoed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Echoed::Raw(raw) => raw.serialize(s),
            Echoed::Null => s.serialize_none(),
            Echoed::Bool(b) => s.serialize_bool(*b),
            Echoed::Number(n) => s.serialize_u64(*n),
            Echoed::Str(text) => s.serialize_str(text),
            Echoed::EmptyList => s.collect_seq(std::iter::empty::<()>()),
            Echoed::EmptyMap => s.serialize_map(Some(0))?.end(),
            Echoed::TextFormat => {
                #[derive(Serialize)]
                struct Format {
                    #[serde(rename = "type")]
                    kind: &'static str,
                }
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("format", &Format { kind: "text" })?;
                m.end()
            }
            Echoed::NoReasoning => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("effort", &())?;
                m.serialize_entry("summary", &())?;
                m.end()
            }
        }
    }
}

/// `{"code":…,"message":…}`, a failed response's `error`.
#[derive(Serialize)]
struct FailureView<'a> {
    code: &'a str,
    message: &'a str,
}

/// A response object. `output`/`metering` are what the answer has so far.
struct ResponseView<'a> {
    id: &'a str,
    created_at: u64,
    status: &'a str,
    incomplete_reason: Option<&'a str>,
    error: Option<FailureView<'a>>,
    model: &'a str,
    output: &'a [Item],
    metering: Option<Metering>,
    echo: &'a Echo,
}

impl Serialize for ResponseView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Incomplete<'a> {
            reason: &'a str,
        }
        let echo = |key: &str, default: Echoed<'static>| -> Echoed<'_> {
            match self.echo.get(key) {
                Some(raw) => Echoed::Raw(raw),
                None => default,
            }
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.id)?;
        m.serialize_entry("object", "response")?;
        m.serialize_entry("created_at", &self.created_at)?;
        m.serialize_entry("status", self.status)?;
        m.serialize_entry("background", &false)?;
        m.serialize_entry("error", &self.error)?;
        m.serialize_entry(
            "incomplete_details",
            &self.incomplete_reason.map(|reason| Incomplete { reason }),
        )?;
        m.serialize_entry("instructions", &echo("instructions", Echoed::Null))?;
        m.serialize_entry(
            "max_output_tokens",
            &echo("max_output_tokens", Echoed::Null),
        )?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("output", &OutputView(self.output))?;
        m.serialize_entry(
            "parallel_tool_calls",
            &echo("parallel_tool_calls", Echoed::Bool(true)),
        )?;
        m.serialize_entry("previous_response_id", &())?;
        m.serialize_entry("prompt_cache_key", &echo("prompt_cache_key", Echoed::Null))?;
        m.serialize_entry("reasoning", &echo("reasoning", Echoed::NoReasoning))?;
        m.serialize_entry(
            "safety_identifier",
            &echo("safety_identifier", Echoed::Null),
        )?;
        m.serialize_entry(
            "service_tier",
            &echo("service_tier", Echoed::Str("default")),
        )?;
        // Nothing is stored, whatever the client asked.
        m.serialize_entry("store", &false)?;
        m.serialize_entry("temperature", &echo("temperature", Echoed::Number(1)))?;
        m.serialize_entry("text", &echo("text", Echoed::TextFormat))?;
        m.serialize_entry("tool_choice", &echo("tool_choice", Echoed::Str("auto")))?;
        m.serialize_entry("tools", &echo("tools", Echoed::EmptyList))?;
        m.serialize_entry("top_p", &echo("top_p", Echoed::Number(1)))?;
        m.serialize_entry("truncation", &echo("truncation", Echoed::Str("disabled")))?;
        m.serialize_entry("usage", &self.metering.map(UsageView))?;
        m.serialize_entry("user", &echo("user", Echoed::Null))?;
        m.serialize_entry("metadata", &echo("metadata", Echoed::EmptyMap))?;
        m.end()
    }
}

struct OutputView<'a>(&'a [Item]);

impl Serialize for OutputView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|item| item.view(false)))
    }
}

/// The response object for a whole answer, as OpenAI answers `POST /v1/responses`
/// (`client_model` as its model, the API's defaults for the echoed parameters).
pub fn response(resp: &Response, client_model: &str) -> Vec<u8> {
    response_with(resp, client_model, &Echo::default())
}

/// [`response`], repeating the client's parameters and giving namespaced calls their namespace
/// back ([`Echo`], from [`super::ResponsesRequest::echo`]).
pub fn response_with(resp: &Response, client_model: &str, echo: &Echo) -> Vec<u8> {
    let output = items(&resp.content, &echo.namespaces);
    let (status, incomplete_reason) = status_of(Some(resp.stop));
    let view = ResponseView {
        id: &new_response_id(),
        created_at: wire::unix_now(),
        status,
        incomplete_reason,
        error: None,
        model: client_model,
        output: &output,
        metering: resp.metering,
        echo,
    };
    let mut out = Vec::new();
    wire::put_json(&mut out, &view);
    out
}

// ---------------------------------------------------------------------------------------------
// Stream failure
// ---------------------------------------------------------------------------------------------

/// Writes an `error` event numbered `sequence` and a `response.failed` numbered `sequence + 1`
/// (see [`super::stream_error_events`] for why both).
pub(super) fn put_failure(
    out: &mut Vec<u8>,
    message: &str,
    sequence: u64,
    response_id: &str,
    model: &str,
    echo: Option<&Echo>,
) {
    #[derive(Serialize)]
    struct ErrorObject<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        code: &'a str,
        message: &'a str,
        param: Option<()>,
    }
    #[derive(Serialize)]
    struct ErrorEvent<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        sequence_number: u64,
        error: ErrorObject<'a>,
    }
    #[derive(Serialize)]
    struct Failed<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        sequence_number: u64,
        response: ResponseView<'a>,
    }
    wire::put_event(
        out,
        "error",
        &ErrorEvent {
            kind: "error",
            sequence_number: sequence,
            error: ErrorObject {
                kind: "server_error",
                code: "upstream_error",
                message,
                param: None,
            },
        },
    );
    let default = Echo::default();
    wire::put_event(
        out,
        "response.failed",
        &Failed {
            kind: "response.failed",
            sequence_number: sequence + 1,
            response: ResponseView {
                id: response_id,
                created_at: wire::unix_now(),
                status: "failed",
                incomplete_reason: None,
                error: Some(FailureView {
                    code: "upstream_error",
                    message,
                }),
                model,
                output: &[],
                metering: None,
                echo: echo.unwrap_or(&default),
            },
        },
    );
}
