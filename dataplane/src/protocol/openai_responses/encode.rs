//! Shape → Responses bytes: the response object and the stream events a Responses client reads,
//! and its error objects.
//!
//! The response object and every event carry the fields OpenAI's API sends, in the order of the
//! recorded streams in `testkit/samples/openai-responses-*.recorded.jsonl` (field types from
//! openai-python `types/responses/`). Events are framed `event: <type>\ndata: <json>\n\n` and
//! numbered by `sequence_number` from 0.

use super::{Echo, Namespaces};
use crate::protocol::shape::{Block, BlockStart, Delta, Event, Metering, Response, StopReason};
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
    /// A custom (free-text) tool's call: upstream a function taking `{"input": string}`.
    CustomToolCall {
        call_id: String,
        name: String,
        namespace: Option<String>,
        /// The upstream's arguments JSON text, as it streams.
        arguments: String,
        /// The input the client gets, read from the whole arguments.
        input: String,
    },
}

/// A custom tool's input from the arguments of the function it was upstream:
/// `{"input": "…"}`'s text; arguments of another shape are given as they are.
fn custom_input(arguments: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Input {
        input: String,
    }
    if crate::protocol::json::first_byte(arguments.as_bytes()) == Some(b'{')
        && let Ok(parsed) = serde_json::from_str::<Input>(arguments)
    {
        return parsed.input;
    }
    arguments.to_string()
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

    fn function_call(call_id: String, flat: &str, arguments: String, ns: &Namespaces) -> Item {
        let (namespace, name) = match ns.split(flat) {
            Some((namespace, bare)) if namespace != super::DEFAULT_NAMESPACE => {
                (Some(namespace.to_string()), bare.to_string())
            }
            Some((_, bare)) => (None, bare.to_string()),
            None => (None, flat.to_string()),
        };
        if ns.is_custom(flat) {
            return Item {
                id: new_item_id("ctc"),
                kind: ItemKind::CustomToolCall {
                    call_id,
                    name,
                    namespace,
                    input: custom_input(&arguments),
                    arguments,
                },
            };
        }
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
            ItemKind::CustomToolCall {
                call_id,
                name,
                namespace,
                input,
                ..
            } => {
                m.serialize_entry("type", "custom_tool_call")?;
                m.serialize_entry("status", status)?;
                m.serialize_entry("call_id", call_id)?;
                m.serialize_entry("input", if self.added { "" } else { input })?;
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

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// A content part in an event: a message's `output_text` or a reasoning item's `summary_text`.
enum PartView<'a> {
    Output(&'a str),
    Summary(&'a str),
}

impl Serialize for PartView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PartView::Output(text) => OutputText(text).serialize(s),
            PartView::Summary(text) => SummaryText(text).serialize(s),
        }
    }
}

/// The fields of one stream event after its `type` and `sequence_number`; each event type uses
/// the ones its SDK type has (openai-python `types/responses/response_*_event.py`).
#[derive(Serialize, Default)]
struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    item_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<ItemView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<PartView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a str>,
    /// Text events carry `logprobs: []` (none are asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<ResponseView<'a>>,
}

/// Writes one event: `event: <kind>` and its data, `type` and `sequence_number` first.
fn put(out: &mut Vec<u8>, kind: &str, sequence_number: u64, fields: Fields<'_>) {
    let envelope = Envelope {
        kind,
        sequence_number,
        fields,
    };
    wire::put_event(out, kind, &envelope);
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    fields: Fields<'a>,
}

/// An output item of a stream, with the shape block it came from.
struct Streamed {
    item: Item,
    block: usize,
    open: bool,
    /// A reasoning item's summary part was opened (its first text arrived).
    summary_open: bool,
}

/// Writes a Responses client's stream from shape events: `response.created`,
/// `response.in_progress`, then per output item `response.output_item.added` … its content
/// events … `response.output_item.done`, and at the end `response.completed` (or
/// `response.incomplete`) with the whole response object, every event numbered from 0.
pub struct Stream {
    client_model: String,
    echo: Echo,
    response_id: String,
    created_at: u64,
    next_sequence: u64,
    started: bool,
    items: Vec<Streamed>,
    stop: Option<StopReason>,
    metering: Option<Metering>,
    finished: bool,
}

impl Stream {
    /// A stream answering with `client_model` and the API's defaults for echoed parameters.
    pub fn new(client_model: &str) -> Stream {
        Stream::with_echo(client_model, Echo::default())
    }

    /// A stream repeating the client's parameters and giving namespaced calls their namespace
    /// back ([`Echo`], from [`super::ResponsesRequest::echo`]).
    pub fn with_echo(client_model: &str, echo: Echo) -> Stream {
        Stream {
            client_model: client_model.to_string(),
            echo,
            response_id: new_response_id(),
            created_at: wire::unix_now(),
            next_sequence: 0,
            started: false,
            items: Vec::new(),
            stop: None,
            metering: None,
            finished: false,
        }
    }

    /// The next event's `sequence_number`.
    fn seq(&mut self) -> u64 {
        let n = self.next_sequence;
        self.next_sequence += 1;
        n
    }

    /// Writes one event of `kind`, numbered next; `fields` is built after the number is taken,
    /// so it may borrow the stream.
    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, fields: impl FnOnce(&Self) -> Fields<'_>) {
        let n = self.seq();
        put(out, kind, n, fields(self));
    }

    fn response_view(&self, status: &'static str, reason: Option<&'static str>) -> Fields<'_> {
        Fields {
            response: Some(ResponseView {
                id: &self.response_id,
                created_at: self.created_at,
                status,
                incomplete_reason: reason,
                error: None,
                model: &self.client_model,
                output: &[],
                metering: None,
                echo: &self.echo,
            }),
            ..Fields::default()
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.emit(out, "response.created", |s| {
            s.response_view("in_progress", None)
        });
        self.emit(out, "response.in_progress", |s| {
            s.response_view("in_progress", None)
        });
    }

    fn item_fields(&self, at: usize) -> Fields<'_> {
        Fields {
            item_id: Some(&self.items[at].item.id),
            output_index: Some(at),
            ..Fields::default()
        }
    }

    fn open(&mut self, block: usize, start: &BlockStart, out: &mut Vec<u8>) -> usize {
        self.start(out);
        let item = match start {
            BlockStart::Text => Item::message(String::new()),
            BlockStart::Thinking => Item::reasoning(String::new(), None),
            BlockStart::RedactedThinking { data } => {
                Item::reasoning(String::new(), Some(format!("{REDACTED_PREFIX}{data}")))
            }
            BlockStart::ToolCall { id, name } => {
                Item::function_call(id.clone(), name, String::new(), &self.echo.namespaces)
            }
        };
        self.items.push(Streamed {
            item,
            block,
            open: true,
            summary_open: false,
        });
        let at = self.items.len() - 1;
        self.emit(out, "response.output_item.added", |s| Fields {
            output_index: Some(at),
            item: Some(s.items[at].item.view(true)),
            ..Fields::default()
        });
        if matches!(start, BlockStart::Text) {
            self.emit(out, "response.content_part.added", |s| Fields {
                content_index: Some(0),
                part: Some(PartView::Output("")),
                ..s.item_fields(at)
            });
        }
        at
    }

    fn find(&self, block: usize) -> Option<usize> {
        self.items.iter().rposition(|s| s.block == block && s.open)
    }

    fn delta(&mut self, block: usize, delta: &Delta, out: &mut Vec<u8>) {
        let at = match (self.find(block), delta) {
            (Some(at), _) => at,
            // A decoder opens every block first; one that did not still has its text shown.
            (None, Delta::Text(_)) => self.open(block, &BlockStart::Text, out),
            (None, Delta::Thinking(_)) => self.open(block, &BlockStart::Thinking, out),
            (None, _) => return,
        };
        // What the delta adds to its item first, then the events that show it.
        let streamed = &mut self.items[at];
        let mut open_summary = false;
        let event = match (&mut streamed.item.kind, delta) {
            (ItemKind::Message { text }, Delta::Text(d)) => {
                text.push_str(d);
                Some(("response.output_text.delta", d))
            }
            (ItemKind::Reasoning { text, .. }, Delta::Thinking(d)) => {
                text.push_str(d);
                open_summary = !streamed.summary_open;
                streamed.summary_open = true;
                Some(("response.reasoning_summary_text.delta", d))
            }
            (ItemKind::Reasoning { encrypted, .. }, Delta::Signature(sig)) => {
                *encrypted = Some(sig.clone());
                None
            }
            (ItemKind::FunctionCall { arguments, .. }, Delta::ToolArguments(d)) => {
                arguments.push_str(d);
                Some(("response.function_call_arguments.delta", d))
            }
            // The input is inside the arguments' JSON: it is shown whole when the call ends.
            (ItemKind::CustomToolCall { arguments, .. }, Delta::ToolArguments(d)) => {
                arguments.push_str(d);
                None
            }
            // A delta of another kind than its block: nothing a client could be shown.
            _ => None,
        };
        if open_summary {
            self.emit(out, "response.reasoning_summary_part.added", |s| Fields {
                summary_index: Some(0),
                part: Some(PartView::Summary("")),
                ..s.item_fields(at)
            });
        }
        let Some((kind, d)) = event else {
            return;
        };
        let n = self.seq();
        let fields = match kind {
            "response.output_text.delta" => Fields {
                content_index: Some(0),
                logprobs: Some([]),
                ..self.item_fields(at)
            },
            "response.reasoning_summary_text.delta" => Fields {
                summary_index: Some(0),
                ..self.item_fields(at)
            },
            _ => self.item_fields(at),
        };
        put(
            out,
            kind,
            n,
            Fields {
                delta: Some(d),
                ..fields
            },
        );
    }

    fn close(&mut self, at: usize, out: &mut Vec<u8>) {
        if !self.items[at].open {
            return;
        }
        self.items[at].open = false;
        if let ItemKind::CustomToolCall {
            arguments, input, ..
        } = &mut self.items[at].item.kind
        {
            *input = custom_input(arguments);
        }
        match &self.items[at].item.kind {
            ItemKind::Message { .. } => {
                self.emit(out, "response.output_text.done", |s| Fields {
                    content_index: Some(0),
                    text: Some(s.text_of(at)),
                    logprobs: Some([]),
                    ..s.item_fields(at)
                });
                self.emit(out, "response.content_part.done", |s| Fields {
                    content_index: Some(0),
                    part: Some(PartView::Output(s.text_of(at))),
                    ..s.item_fields(at)
                });
            }
            ItemKind::Reasoning { .. } => {
                if self.items[at].summary_open {
                    self.emit(out, "response.reasoning_summary_text.done", |s| Fields {
                        summary_index: Some(0),
                        text: Some(s.text_of(at)),
                        ..s.item_fields(at)
                    });
                    self.emit(out, "response.reasoning_summary_part.done", |s| Fields {
                        summary_index: Some(0),
                        part: Some(PartView::Summary(s.text_of(at))),
                        ..s.item_fields(at)
                    });
                }
            }
            ItemKind::CustomToolCall { input, .. } => {
                if !input.is_empty() {
                    self.emit(out, "response.custom_tool_call_input.delta", |s| Fields {
                        delta: Some(s.text_of(at)),
                        ..s.item_fields(at)
                    });
                }
                self.emit(out, "response.custom_tool_call_input.done", |s| Fields {
                    input: Some(s.text_of(at)),
                    ..s.item_fields(at)
                });
            }
            ItemKind::FunctionCall { .. } => {
                let n = self.seq();
                let name = match &self.items[at].item.kind {
                    ItemKind::FunctionCall { name, .. } => Some(name.as_str()),
                    _ => None,
                };
                put(
                    out,
                    "response.function_call_arguments.done",
                    n,
                    Fields {
                        name,
                        arguments: Some(self.text_of(at)),
                        ..self.item_fields(at)
                    },
                )
            }
        }
        self.emit(out, "response.output_item.done", |s| Fields {
            output_index: Some(at),
            item: Some(s.items[at].item.view(false)),
            ..Fields::default()
        });
    }

    fn text_of(&self, at: usize) -> &str {
        match &self.items[at].item.kind {
            ItemKind::Message { text } | ItemKind::Reasoning { text, .. } => text,
            ItemKind::FunctionCall { arguments, .. } => arguments,
            ItemKind::CustomToolCall { input, .. } => input,
        }
    }
}

impl crate::protocol::shape::StreamEncode for Stream {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        match event {
            Event::Start { .. } => self.start(out),
            Event::BlockStart { index, block } => {
                self.open(*index, block, out);
            }
            Event::Delta { index, delta } => self.delta(*index, delta, out),
            Event::BlockStop { index } => {
                if let Some(at) = self.find(*index) {
                    self.close(at, out);
                }
            }
            Event::Stop { reason, .. } => self.stop = Some(*reason),
            Event::Metering(metering) => self.metering = Some(*metering),
            Event::End => self.finish(out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.start(out);
        for at in 0..self.items.len() {
            self.close(at, out);
        }
        self.finished = true;
        let (status, reason) = status_of(self.stop);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let output: Vec<Item> = self.items.iter().map(|s| s.item.clone()).collect();
        let n = self.seq();
        put(
            out,
            kind,
            n,
            Fields {
                response: Some(ResponseView {
                    id: &self.response_id,
                    created_at: self.created_at,
                    status,
                    incomplete_reason: reason,
                    error: None,
                    model: &self.client_model,
                    output: &output,
                    metering: self.metering,
                    echo: &self.echo,
                }),
                ..Fields::default()
            },
        );
    }

    fn error_event(&self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_failure(
            &mut out,
            message,
            self.next_sequence,
            &self.response_id,
            &self.client_model,
            Some(&self.echo),
        );
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A content part of an input message.
enum PartOut<'r> {
    InputText(&'r str),
    OutputText(&'r str),
    InputImage(String),
}

impl Serialize for PartOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        match self {
            PartOut::InputText(text) => {
                m.serialize_entry("type", "input_text")?;
                m.serialize_entry("text", text)?;
            }
            PartOut::OutputText(text) => {
                m.serialize_entry("type", "output_text")?;
                m.serialize_entry("text", text)?;
            }
            PartOut::InputImage(url) => {
                m.serialize_entry("type", "input_image")?;
                m.serialize_entry("image_url", url)?;
            }
        }
        m.end()
    }
}

/// A function call's output: its text, or parts when it has images.
enum OutputOut<'r> {
    Text(String),
    Parts(Vec<PartOut<'r>>),
}

impl Serialize for OutputOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OutputOut::Text(text) => s.serialize_str(text),
            OutputOut::Parts(parts) => parts.serialize(s),
        }
    }
}

/// One `input` item of an upstream request.
enum InputOut<'r> {
    Message {
        role: &'static str,
        content: Vec<PartOut<'r>>,
    },
    FunctionCall {
        call_id: &'r str,
        name: &'r str,
        arguments: String,
    },
    FunctionCallOutput {
        call_id: &'r str,
        output: OutputOut<'r>,
    },
    Reasoning {
        text: &'r str,
        encrypted: &'r str,
    },
}

impl Serialize for InputOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            InputOut::Message { role, content } => {
                m.serialize_entry("type", "message")?;
                m.serialize_entry("role", role)?;
                m.serialize_entry("content", content)?;
            }
            InputOut::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                m.serialize_entry("type", "function_call")?;
                m.serialize_entry("call_id", call_id)?;
                m.serialize_entry("name", name)?;
                m.serialize_entry("arguments", arguments)?;
            }
            InputOut::FunctionCallOutput { call_id, output } => {
                m.serialize_entry("type", "function_call_output")?;
                m.serialize_entry("call_id", call_id)?;
                m.serialize_entry("output", output)?;
            }
            InputOut::Reasoning { text, encrypted } => {
                m.serialize_entry("type", "reasoning")?;
                if text.is_empty() {
                    m.serialize_entry("summary", &[(); 0])?;
                } else {
                    m.serialize_entry("summary", &[SummaryText(text)])?;
                }
                m.serialize_entry("encrypted_content", encrypted)?;
            }
        }
        m.end()
    }
}

fn image_url(image: &crate::protocol::shape::Image) -> String {
    match image {
        crate::protocol::shape::Image::Url(url) => url.clone(),
        crate::protocol::shape::Image::Base64 { media_type, data } => {
            format!("data:{media_type};base64,{data}")
        }
    }
}

/// Whether a signature is OpenAI's encrypted reasoning (a Fernet token: version byte 0x80,
/// base64url `gAAAAA…`), which a Responses upstream can take back. Another upstream's signature
/// (Anthropic's) would be refused by it, so that reasoning is not sent.
fn is_openai_encrypted(signature: &str) -> bool {
    signature.starts_with("gAAAA")
}

/// The `input` items of a conversation: text and images of one turn make one message; tool
/// calls, tool results and reasoning are items of their own, in the order of their blocks.
fn input_items<'r>(
    messages: &'r [crate::protocol::shape::Message<'_>],
    dropped: &mut Vec<String>,
) -> Vec<InputOut<'r>> {
    use crate::protocol::shape::Role;
    let mut items = Vec::new();
    for message in messages {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
        };
        let mut parts: Vec<PartOut<'r>> = Vec::new();
        let flush = |parts: &mut Vec<PartOut<'r>>, items: &mut Vec<InputOut<'r>>| {
            if !parts.is_empty() {
                items.push(InputOut::Message {
                    role,
                    content: std::mem::take(parts),
                });
            }
        };
        for block in &message.content {
            match block {
                Block::Text(text) if message.role == Role::Assistant => {
                    parts.push(PartOut::OutputText(text));
                }
                Block::Text(text) => parts.push(PartOut::InputText(text)),
                Block::Image(image) if message.role == Role::User => {
                    parts.push(PartOut::InputImage(image_url(image)));
                }
                Block::Image(_) => wire::note(dropped, "messages.content.image"),
                Block::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    flush(&mut parts, &mut items);
                    let arguments = match arguments {
                        crate::protocol::shape::Arguments::Raw(raw) => {
                            wire::compact_json(raw.get())
                        }
                        crate::protocol::shape::Arguments::Text(text) => text.clone(),
                    };
                    items.push(InputOut::FunctionCall {
                        call_id: id,
                        name,
                        arguments,
                    });
                }
                Block::ToolResult {
                    call_id,
                    content,
                    is_error,
                } => {
                    flush(&mut parts, &mut items);
                    if *is_error == Some(true) {
                        wire::note(dropped, "messages.content.tool_result.is_error");
                    }
                    items.push(InputOut::FunctionCallOutput {
                        call_id,
                        output: tool_output(content, dropped),
                    });
                }
                Block::Thinking {
                    text,
                    signature: Some(signature),
                } if is_openai_encrypted(signature) => {
                    flush(&mut parts, &mut items);
                    items.push(InputOut::Reasoning {
                        text,
                        encrypted: signature,
                    });
                }
                Block::Thinking { .. } => wire::note(dropped, "messages.content.thinking"),
                Block::RedactedThinking { .. } => {
                    wire::note(dropped, "messages.content.redacted_thinking");
                }
            }
        }
        flush(&mut parts, &mut items);
    }
    items
}

fn tool_output<'r>(content: &'r [Block<'_>], dropped: &mut Vec<String>) -> OutputOut<'r> {
    if content.iter().all(|b| matches!(b, Block::Text(_))) {
        let text: Vec<&str> = content
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        return OutputOut::Text(text.join("\n"));
    }
    let mut parts = Vec::new();
    for block in content {
        match block {
            Block::Text(text) => parts.push(PartOut::InputText(text)),
            Block::Image(image) => parts.push(PartOut::InputImage(image_url(image))),
            _ => wire::note(dropped, "messages.content.tool_result.content"),
        }
    }
    OutputOut::Parts(parts)
}

/// `{"type":"function","name",…}`. `strict` is written as the client said it, `false` when it
/// did not: the Responses API would otherwise choose strict validation itself, which chat and
/// Anthropic clients never asked for.
struct ToolOut<'r>(&'r crate::protocol::shape::Tool<'r>);

impl Serialize for ToolOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tool = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", "function")?;
        m.serialize_entry("name", &tool.name)?;
        if let Some(description) = &tool.description {
            m.serialize_entry("description", description)?;
        }
        match tool.parameters {
            Some(parameters) => m.serialize_entry("parameters", parameters)?,
            None => m.serialize_entry("parameters", &EmptyObjectSchema)?,
        }
        m.serialize_entry("strict", &tool.strict.unwrap_or(false))?;
        m.end()
    }
}

/// `{"type":"object","properties":{}}`, the schema of a function without parameters.
struct EmptyObjectSchema;

impl Serialize for EmptyObjectSchema {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", "object")?;
        m.serialize_entry("properties", &wire::EmptyObject {})?;
        m.end()
    }
}

struct ToolChoiceOut<'r>(&'r crate::protocol::shape::ToolChoice);

impl Serialize for ToolChoiceOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use crate::protocol::shape::ToolChoice;
        match self.0 {
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Named(name) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "function")?;
                m.serialize_entry("name", name)?;
                m.end()
            }
        }
    }
}

struct FormatOut<'r>(&'r crate::protocol::shape::ResponseFormat<'r>);

impl Serialize for FormatOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use crate::protocol::shape::ResponseFormat;
        let mut outer = s.serialize_map(Some(1))?;
        struct Format<'f>(&'f ResponseFormat<'f>);
        impl Serialize for Format<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                match self.0 {
                    ResponseFormat::Text => m.serialize_entry("type", "text")?,
                    ResponseFormat::JsonObject => m.serialize_entry("type", "json_object")?,
                    ResponseFormat::JsonSchema {
                        name,
                        schema,
                        strict,
                        description,
                    } => {
                        m.serialize_entry("type", "json_schema")?;
                        m.serialize_entry("name", name)?;
                        m.serialize_entry("schema", schema)?;
                        if let Some(strict) = strict {
                            m.serialize_entry("strict", strict)?;
                        }
                        if let Some(description) = description {
                            m.serialize_entry("description", description)?;
                        }
                    }
                }
                m.end()
            }
        }
        outer.serialize_entry("format", &Format(self.0))?;
        outer.end()
    }
}

/// OpenAI's effort word for an Anthropic thinking budget: the budgets Codex's own Anthropic
/// adapter gives the efforts (`reasoning_budget` in `codex-api`: low 2048, medium 4096, high
/// 8192 and above), read the other way.
fn effort_for_budget(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=4096 => "medium",
        _ => "high",
    }
}

/// A request in the shape as a Responses API body for `upstream_model`. Nothing is stored
/// upstream (`store: false`); reasoning is asked for with summaries and its encrypted content,
/// so a later turn can send it back whole (the gateway keeps no state between turns).
pub fn request(
    req: &crate::protocol::shape::Request<'_>,
    upstream_model: &str,
) -> Result<crate::protocol::shape::Encoded, crate::protocol::shape::TranslateError> {
    use crate::protocol::shape::Reasoning;
    let mut dropped = req.dropped.clone();
    let input = input_items(&req.messages, &mut dropped);
    if !req.stop.is_empty() {
        wire::note(&mut dropped, "stop");
    }
    let effort = match &req.reasoning {
        Some(Reasoning::Effort(effort)) => Some(effort.as_str()),
        Some(Reasoning::Budget(budget)) => Some(effort_for_budget(*budget)),
        Some(Reasoning::Disabled) | None => None,
    };
    let sends_reasoning = input
        .iter()
        .any(|i| matches!(i, InputOut::Reasoning { .. }));

    struct Body<'r> {
        req: &'r crate::protocol::shape::Request<'r>,
        model: &'r str,
        input: &'r [InputOut<'r>],
        effort: Option<&'r str>,
        include_reasoning: bool,
    }
    impl Serialize for Body<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            #[derive(Serialize)]
            struct ReasoningOut<'e> {
                effort: &'e str,
                summary: &'e str,
            }
            let req = self.req;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("model", self.model)?;
            if !req.system.is_empty() {
                m.serialize_entry("instructions", &req.system.join("\n\n"))?;
            }
            m.serialize_entry("input", self.input)?;
            if !req.tools.is_empty() {
                let tools: Vec<ToolOut<'_>> = req.tools.iter().map(ToolOut).collect();
                m.serialize_entry("tools", &tools)?;
            }
            if let Some(choice) = &req.tool_choice {
                m.serialize_entry("tool_choice", &ToolChoiceOut(choice))?;
            }
            if let Some(parallel) = req.parallel_tool_calls {
                m.serialize_entry("parallel_tool_calls", &parallel)?;
            }
            if let Some(max) = req.max_output_tokens {
                m.serialize_entry("max_output_tokens", &max)?;
            }
            if let Some(temperature) = req.temperature {
                m.serialize_entry("temperature", temperature)?;
            }
            if let Some(top_p) = req.top_p {
                m.serialize_entry("top_p", top_p)?;
            }
            if let Some(effort) = self.effort {
                m.serialize_entry(
                    "reasoning",
                    &ReasoningOut {
                        effort,
                        summary: "auto",
                    },
                )?;
            }
            if let Some(format) = &req.response_format {
                m.serialize_entry("text", &FormatOut(format))?;
            }
            if self.include_reasoning {
                m.serialize_entry("include", &["reasoning.encrypted_content"])?;
            }
            m.serialize_entry("store", &false)?;
            if let Some(stream) = req.stream {
                m.serialize_entry("stream", &stream)?;
            }
            if let Some(user) = &req.user {
                m.serialize_entry("user", user)?;
            }
            m.end()
        }
    }
    let body = wire::to_body(&Body {
        req,
        model: upstream_model,
        input: &input,
        effort,
        include_reasoning: effort.is_some() || sends_reasoning,
    })?;
    Ok(crate::protocol::shape::Encoded { body, dropped })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An upstream's refusal as OpenAI's error object, which the Responses API shares with chat
/// completions (see [`crate::protocol::openai_chat::upstream_error`]).
pub fn error(err: &crate::protocol::shape::UpstreamError) -> (u16, Vec<u8>) {
    super::upstream_error(err)
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
