//! The internal shape every dialect decodes into and encodes out of: requests, content blocks,
//! responses, stream events, usage and errors, in no dialect's terms.
//!
//! Translation is always `decode` in one dialect's module then `encode` in another's
//! ([`super::bridge`] picks the pair), so a dialect is written once against this shape instead of
//! once per other dialect. Same-dialect traffic never comes here: it is relayed byte for byte.
//!
//! # Rules every dialect keeps
//!
//! - **Opaque JSON stays raw.** Tool schemas, tool arguments, `temperature`, `top_p`, response
//!   schemas and other values the gateway does not interpret are borrowed as [`RawValue`] from the
//!   client's body (or kept as the exact JSON text), never rebuilt through `serde_json::Value`,
//!   whose maps would sort keys and whose numbers could lose digits.
//! - **Nothing is dropped silently.** What a decoder cannot carry in this shape, or an encoder
//!   cannot express in its dialect, is named in [`Request::dropped`] (by field path, once) so the
//!   request path can log it and, for built-in tools, name it in a response header.
//! - **Usage is in billing terms** ([`Usage`]): input excludes cached input; reasoning tokens are
//!   part of output and only reported beside it ([`Metering::reasoning_tokens`]).
//! - **Decoders never fail on what a stream adds later.** A stream event a decoder does not know
//!   is [`StreamNote::Nothing`]; a malformed one too, unless it is an error report.
//!
//! # What each dialect module provides
//!
//! Request side (client → upstream):
//! - `decode::request(body: &[u8]) -> Result<Request<'_>, TranslateError>` (Gemini's model and
//!   stream flag are in its URL: the bridge sets them after decoding)
//! - `encode::request(req: &Request<'_>, upstream_model: &str) -> Result<Encoded, TranslateError>`
//!
//! Response side (upstream → client):
//! - `decode::response(body: &[u8]) -> Option<Response>` (`None`: not this dialect's answer)
//! - `encode::response(resp: &Response, client_model: &str) -> Vec<u8>`
//! - `decode::Stream: StreamDecode` and `encode::Stream: StreamEncode`
//! - `decode::error(status, body) -> UpstreamError` and `encode::error(&UpstreamError) -> (u16, Vec<u8>)`

use serde_json::value::RawValue;

pub use crate::protocol::usage::Usage;

/// Why a request cannot be translated. The message is for the client (a 400 in its dialect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    pub message: String,
}

impl TranslateError {
    pub fn new(message: impl Into<String>) -> Self {
        TranslateError {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for TranslateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TranslateError {}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A chat request in no dialect's terms. Borrows opaque JSON from the client's body.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// The model the client asked for (the upstream's id is given to the encoder).
    pub model: String,
    /// System instructions in order (OpenAI `system`/`developer` messages wherever they were,
    /// Anthropic `system` as a string or each text block, Responses `instructions` then its
    /// `system`/`developer` items). Encoders join them as their dialect needs.
    pub system: Vec<String>,
    /// The conversation, oldest first. Tool results are [`Block::ToolResult`] in a user turn.
    pub messages: Vec<Message<'a>>,
    pub tools: Vec<Tool<'a>>,
    /// `None`: the client did not say (the upstream's default, `auto`).
    pub tool_choice: Option<ToolChoice>,
    /// `None`: the client did not say.
    pub parallel_tool_calls: Option<bool>,
    /// Output token limit (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<&'a RawValue>,
    pub top_p: Option<&'a RawValue>,
    /// Stop sequences, as the client wrote them (encoders filter what their dialect refuses).
    pub stop: Vec<String>,
    /// `None`: the client did not say (not streamed). Kept apart from `Some(false)` so that an
    /// encoder writes the field back only when the client wrote it.
    pub stream: Option<bool>,
    /// The client wants usage at the end of a stream (OpenAI chat's
    /// `stream_options.include_usage`; always true for dialects that always send it).
    pub include_usage: bool,
    pub reasoning: Option<Reasoning>,
    /// Structured output (`response_format`, `text.format`).
    pub response_format: Option<ResponseFormat<'a>>,
    /// An end-user id for the upstream's abuse tracking (`user`, `metadata.user_id`,
    /// `safety_identifier`).
    pub user: Option<String>,
    /// What the decoder could not carry, by field path (see the module doc).
    pub dropped: Vec<String>,
}

/// A request body in an upstream's dialect, with what its encoder could not express.
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    /// Field paths the encoder dropped, after the decoder's own ([`Request::dropped`]).
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// Instructions the client placed inside the conversation rather than before it (a `system`
    /// entry in an Anthropic client's `messages`, as Claude Code sends), text blocks only. A
    /// dialect with a system turn keeps it in place; one without hoists its text into the
    /// system prompt.
    System,
}

#[derive(Debug)]
pub struct Message<'a> {
    pub role: Role,
    pub content: Vec<Block<'a>>,
}

/// One piece of a turn, request or response.
#[derive(Debug)]
pub enum Block<'a> {
    Text(String),
    Image(Image),
    /// A call the assistant made. `arguments` is the JSON text of the arguments object, as the
    /// model produced it (compact when it came from an object).
    ToolCall {
        id: String,
        name: String,
        arguments: Arguments<'a>,
    },
    /// The result of a call, sent back by the client in a user turn.
    ToolResult {
        call_id: String,
        /// Text and images only.
        content: Vec<Block<'a>>,
        /// `None`: the client did not say (not an error).
        is_error: Option<bool>,
    },
    /// Reasoning the model showed. `signature` is the upstream's proof of it (Anthropic's
    /// `signature`, or what a Responses `reasoning` item's `encrypted_content` carried back);
    /// without one, an upstream that needs it cannot take the block back. Empty text with a
    /// signature is reasoning state the upstream attached to the block that follows (Gemini's
    /// `thoughtSignature` on a function call or answer text), kept in place so that it goes
    /// back on that block.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Reasoning the upstream keeps opaque (Anthropic `redacted_thinking`'s data).
    RedactedThinking {
        data: String,
    },
}

/// Tool arguments: borrowed JSON from a request body, or text that arrived as a string.
#[derive(Debug)]
pub enum Arguments<'a> {
    /// A JSON object from the body (Anthropic `input`).
    Raw(&'a RawValue),
    /// A JSON text (OpenAI `arguments`), possibly empty.
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// An `http(s):` or `data:` URL, as the client gave it.
    Url(String),
    Base64 {
        media_type: String,
        data: String,
    },
}

#[derive(Debug)]
pub struct Tool<'a> {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of the arguments; `None`: a function without parameters.
    pub parameters: Option<&'a RawValue>,
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Named(String),
}

/// How hard the model should think.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reasoning {
    /// OpenAI's `reasoning_effort` / `reasoning.effort` word (`minimal`, `low`, …), as sent.
    Effort(String),
    /// Anthropic's thinking budget in tokens.
    Budget(u64),
    /// Thinking explicitly off (Anthropic `thinking: {type: disabled}`).
    Disabled,
}

#[derive(Debug)]
pub enum ResponseFormat<'a> {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: &'a RawValue,
        strict: Option<bool>,
        description: Option<String>,
    },
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A whole (non-streamed) answer. Owns its data: it is built from an upstream body that is
/// dropped before the client's body is written.
#[derive(Debug)]
pub struct Response {
    pub id: String,
    /// The upstream's model id (encoders answer with the client's).
    pub model: String,
    /// Text, thinking and tool calls, in the order the upstream gave them.
    pub content: Vec<Block<'static>>,
    pub stop: StopReason,
    /// The stop sequence that ended the answer, when the upstream says which.
    pub stop_sequence: Option<String>,
    pub metering: Option<Metering>,
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    /// The context window filled (Anthropic's `model_context_window_exceeded`).
    ContextWindow,
    StopSequence,
    ToolUse,
    /// Refused or filtered (OpenAI `content_filter`, Anthropic `refusal`).
    Refusal,
    /// The upstream paused a long turn (Anthropic `pause_turn`).
    Pause,
}

/// What the upstream counted for one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metering {
    pub usage: Usage,
    /// The part of `usage.output_tokens` spent reasoning, when the upstream says.
    pub reasoning_tokens: Option<u64>,
    /// The upstream's own charge in nano-USD (OpenRouter's `cost`, …), when it reports one.
    pub reported_cost_nano: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// One step of a streamed answer. Block indexes count from 0 in the order blocks open, across
/// kinds, as Anthropic numbers them; a decoder whose dialect numbers otherwise renumbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The answer began (sent once, before any block).
    Start {
        id: String,
        model: String,
    },
    BlockStart {
        index: usize,
        block: BlockStart,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    /// Why the answer ended. Usage may still follow.
    Stop {
        reason: StopReason,
        stop_sequence: Option<String>,
    },
    /// The counts so far (each replaces the last: decoders accumulate their dialect's partial
    /// reports).
    Metering(Metering),
    /// The upstream's end marker (`[DONE]`, `message_stop`, `response.completed`): nothing more
    /// comes; an encoder closes what is open and writes its own end.
    End,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockStart {
    Text,
    Thinking,
    RedactedThinking { data: String },
    ToolCall { id: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Text(String),
    Thinking(String),
    /// A thinking block's signature (sent once, before the block stops).
    Signature(String),
    /// More of a tool call's arguments JSON text.
    ToolArguments(String),
}

/// What one upstream stream event meant, for failover: the request path commits to an upstream
/// at the first [`StreamNote::Content`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamNote {
    /// Nothing a client would show (preamble: role chunk, message_start, empty block start, ping,
    /// comments).
    Nothing,
    /// Text, reasoning/thinking, a tool call, or a finish reason: the stream is committed.
    Content,
    /// The upstream reported an error inside the stream, with its message.
    Error(String),
    /// The upstream's end marker.
    Done,
}

/// Reads an upstream's stream in its dialect.
pub trait StreamDecode: Send {
    /// One whole SSE event (its `event:` name, its `data:`), appending what it meant to `out`.
    fn event(&mut self, name: Option<&[u8]>, data: &[u8], out: &mut Vec<Event>) -> StreamNote;
}

/// Writes a client's stream in its dialect.
pub trait StreamEncode: Send {
    /// Appends the client's SSE bytes for one event to `out`.
    fn event(&mut self, event: &Event, out: &mut Vec<u8>);
    /// The upstream ended without its end marker, or the relay is closing cleanly: close what is
    /// open and write the dialect's end, once. Idempotent (after [`Event::End`] too).
    fn finish(&mut self, out: &mut Vec<u8>);
    /// The event that ends a stream that failed after content was sent, in this dialect.
    fn error_event(&self, message: &str) -> Vec<u8>;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An upstream's refusal, read from its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub status: u16,
    /// The upstream's own message; `None` when its body carried none.
    pub message: Option<String>,
}

impl UpstreamError {
    /// The upstream's message, or a generic one naming the status.
    pub fn message_or_generic(&self) -> String {
        self.message.clone().unwrap_or_else(|| {
            format!(
                "The upstream provider returned an error (HTTP {}).",
                self.status
            )
        })
    }
}
