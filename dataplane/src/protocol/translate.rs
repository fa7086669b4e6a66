//! Translation between OpenAI Chat Completions and Anthropic Messages: requests, non-streamed
//! responses, stream events, errors, finish reasons and usage.
//!
//! # Boundary
//!
//! Pure functions plus two small stream state machines: no IO, no async, no logging (prompts and
//! completions must never reach a log). The proxy owns HTTP, failover and billing; this module
//! answers "what are these bytes in the other protocol", "what did this stream event mean"
//! ([`StreamNote`], for failover) and "how many tokens, in Keyplane's billing terms" ([`Usage`]).
//! The field mapping follows `docs/TRANSLATION.md`; the behaviour of each row is pinned by the
//! tests at the bottom, driven by the recorded samples in `testkit/samples`.
//!
//! The OpenAI → Anthropic direction is already a composition of the dialect codecs
//! (`openai_chat::decode` then `anthropic::encode`, through the internal shape); its functions
//! here stay only as the entry points the request path and the fuzz harnesses call.
//!
//! Request translation drops what the other protocol cannot express and returns the dropped names
//! (top-level fields, plus a few nested ones such as `cache_control`, named by path) so the caller
//! can log them at debug. Only a client mistake the upstream would also refuse, or one we cannot
//! honour (`n > 1`), is an error; the error's message is client-facing.
//!
//! # Decisions where the references leave a choice
//!
//! - **Opaque JSON is copied byte for byte.** Tool schemas, tool inputs, `temperature`, `top_p` and
//!   other values we do not interpret are carried as raw JSON, so key order (which a model sees in
//!   a schema) and number formatting survive. Structure is read with typed serde structs, never
//!   through `serde_json::Value` (whose maps would sort keys and whose numbers could lose digits).
//!   A tool input becomes an OpenAI `arguments` string with its insignificant whitespace removed.
//! - **System prompt, OpenAI → Anthropic:** one string, the `system`/`developer` messages joined
//!   with `"\n"` wherever they appeared (Anthropic's own compatibility layer); OpenAI has no
//!   `cache_control` to keep, so text blocks would add nothing.
//! - **Text, Anthropic → OpenAI:** a request turn made only of text becomes one string, its blocks
//!   joined with `"\n"` (several OpenAI-compatible upstreams reject content arrays); a turn with an
//!   image becomes content parts. A system prompt given as blocks is joined the same way.
//!   In a *response*, text blocks are concatenated with no separator (Anthropic splits one text
//!   into blocks around citations).
//! - **Turns, OpenAI → Anthropic:** always arrays of blocks; consecutive same-role turns are merged
//!   (a `tool` message is a user turn), empty turns are skipped, and in a user turn the
//!   `tool_result` blocks are moved first, as Anthropic requires.
//! - **`tool_choice` and `parallel_tool_calls`** are sent only when tools are (both APIs refuse
//!   them alone). `parallel_tool_calls: false` without a `tool_choice` becomes
//!   `{type:"auto", disable_parallel_tool_use:true}`; it is dropped with `tool_choice: "none"`.
//! - **Stop sequences:** whitespace-only OpenAI `stop` entries are dropped (Anthropic refuses them).
//! - **Reasoning:** `reasoning_effort` minimal/none → no thinking; low/medium/high (xhigh as high)
//!   → budgets 1024/4096/16384, sent only when below `max_tokens` and when the request has no
//!   setting Anthropic forbids with thinking (`temperature` ≠ 1, `top_p` < 0.95, a forced tool);
//!   otherwise the effort is dropped and reported.
//! - **Finish reasons:** the tables in TRANSLATION.md §2, plus Anthropic's
//!   `model_context_window_exceeded` → `length`. When an OpenAI upstream made tool calls but said
//!   `stop` (some do), the Anthropic stop reason is `tool_use`, since Anthropic clients only run
//!   tools on that reason.
//! - **Errors** keep the upstream's status, except Anthropic's 529, which OpenAI clients do not
//!   know: it becomes 503.
//! - **Streams, OpenAI → Anthropic:** `message_start` goes out with the first parseable chunk
//!   (input tokens unknown until the end, so 0); `message_delta` (stop reason and the full usage,
//!   all four Anthropic buckets) goes out only at `[DONE]` or [`OpenAiToAnthropicStream::finish`],
//!   so usage that arrives after the finish chunk (OpenAI's `choices: []` chunk, OpenRouter's
//!   trailing chunk) is included. Reasoning (`reasoning_content`, or OpenRouter's `reasoning`)
//!   becomes a `thinking` block with an empty signature. A tool call that arrives without an
//!   `id` gets `toolu_<message id>_<n>`.
//! - **Streams, Anthropic → OpenAI:** the finish chunk is sent at `message_delta`; the usage chunk
//!   (only when the client asked for `include_usage`) and `[DONE]` at `message_stop`, when the
//!   usage is final. A tool block whose input never streamed gets `arguments: "{}"` at its stop.
//!
//! # Limits
//!
//! - Only the first choice (`index` 0) of an OpenAI upstream is read; `n > 1` is refused earlier.
//! - Not translated: Anthropic documents, server tools, `redacted_thinking`, citations, `top_k`,
//!   `tool_result.is_error`; OpenAI audio and file parts, `response_format`, `logprobs`, penalties,
//!   `seed`. All are reported as dropped.
//! - Thinking signatures cannot survive a trip through an OpenAI upstream: thinking blocks in an
//!   Anthropic history are dropped on the way to OpenAI.
//! - OpenAI model families are recognised by id (`openai_chat::encode::family`): reasoning
//!   models (o1, o3, o4, gpt-5) get `max_completion_tokens` instead of `max_tokens` and no
//!   `temperature`/`top_p`; classic chat models (gpt-4o, gpt-4.1, gpt-3.5) get no
//!   `reasoning_effort`. Other limits (a model's `max_tokens` ceiling, tool-call id formats some
//!   upstreams insist on) are not adapted.

pub use super::anthropic::encode::DEFAULT_MAX_TOKENS as DEFAULT_ANTHROPIC_MAX_TOKENS;

use super::shape::{Event, StreamDecode, StreamEncode};
pub use super::shape::{StreamNote, TranslateError};
pub use super::usage::{
    MAX_PROMPT_TOKENS_PER_REQUEST_BYTE, MAX_TOKENS_PER_BUCKET, MIN_PROMPT_TOKENS_BOUND, Usage,
};
use super::{anthropic, openai_chat};

// ---------------------------------------------------------------------------------------------
// Finish reasons
// ---------------------------------------------------------------------------------------------

/// An OpenAI `finish_reason` as an Anthropic `stop_reason`.
pub fn anthropic_stop_reason(openai_finish: &str) -> &'static str {
    anthropic::encode::stop_reason(openai_chat::decode::stop_reason(openai_finish))
}

/// An Anthropic `stop_reason` as an OpenAI `finish_reason`.
pub fn openai_finish_reason(anthropic_stop: &str) -> &'static str {
    openai_chat::encode::finish_reason(anthropic::decode::stop_reason(anthropic_stop))
}

// ---------------------------------------------------------------------------------------------
// Requests: Anthropic → OpenAI
// ---------------------------------------------------------------------------------------------

/// Translates an Anthropic Messages request into an OpenAI Chat Completions request for
/// `upstream_model`. Returns the body and the names of what was dropped.
pub fn anthropic_to_openai_request(
    body: &[u8],
    upstream_model: &str,
) -> Result<(Vec<u8>, Vec<String>), TranslateError> {
    let req = anthropic::decode::request(body)?;
    let encoded = openai_chat::encode::request(&req, upstream_model)?;
    Ok((encoded.body, encoded.dropped))
}

// ---------------------------------------------------------------------------------------------
// Requests: OpenAI → Anthropic
// ---------------------------------------------------------------------------------------------

/// Translates an OpenAI Chat Completions request into an Anthropic Messages request for
/// `upstream_model`. Returns the body and the names of what was dropped.
pub fn openai_to_anthropic_request(
    body: &[u8],
    upstream_model: &str,
) -> Result<(Vec<u8>, Vec<String>), TranslateError> {
    let req = super::openai_chat::decode::request(body)?;
    let out = super::anthropic::encode::request(&req, upstream_model)?;
    Ok((out.body, out.dropped))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Translates a non-streamed OpenAI completion into an Anthropic message for a client that asked
/// for `client_model`. Also returns the usage, in billing terms, if the upstream reported it.
pub fn openai_to_anthropic_response(
    body: &[u8],
    client_model: &str,
) -> Result<(Vec<u8>, Option<Usage>), TranslateError> {
    let resp = super::openai_chat::decode::response(body)
        .ok_or_else(|| TranslateError::new("upstream response is not a usable chat completion"))?;
    let out = super::anthropic::encode::response(&resp, client_model);
    Ok((out, resp.metering.map(|m| m.usage)))
}

/// Translates a non-streamed Anthropic message into an OpenAI completion for a client that asked
/// for `client_model`. Also returns the usage, in billing terms, if the upstream reported it.
pub fn anthropic_to_openai_response(
    body: &[u8],
    client_model: &str,
) -> Result<(Vec<u8>, Option<Usage>), TranslateError> {
    let resp = anthropic::decode::read_response(body)?;
    let usage = resp.metering.map(|m| m.usage);
    Ok((openai_chat::encode::response(&resp, client_model), usage))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

pub use super::anthropic::encode::error_object as anthropic_error_body;

/// An OpenAI upstream's error (status and body) as an Anthropic error for the client.
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    super::anthropic::encode::error(&super::openai_chat::decode::error(status, body))
}

/// An Anthropic upstream's error (status and body) as an OpenAI error for the client. Anthropic's
/// 529 becomes 503, which OpenAI clients know.
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    openai_chat::encode::error(&anthropic::decode::error(status, body))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// OpenAI upstream chunks → Anthropic events for an Anthropic client: the chat stream decoder
/// feeding the Anthropic stream encoder.
pub struct OpenAiToAnthropicStream {
    decode: super::openai_chat::decode::Stream,
    encode: super::anthropic::encode::Stream,
    events: Vec<super::shape::Event>,
}

impl OpenAiToAnthropicStream {
    pub fn new(client_model: &str, message_id: &str) -> Self {
        OpenAiToAnthropicStream {
            decode: super::openai_chat::decode::Stream::new(message_id),
            encode: super::anthropic::encode::Stream::new(client_model, message_id),
            events: Vec::new(),
        }
    }

    /// The provider's own charge, when its usage carried one (OpenRouter's `cost`, …).
    pub fn reported_cost_nano(&self) -> Option<u64> {
        self.decode.reported_cost_nano()
    }

    /// Feeds one upstream event's data (a chunk's JSON, or `[DONE]`), appending complete
    /// Anthropic SSE events (`event: X\ndata: {json}\n\n`) to `out`.
    pub fn event(&mut self, data: &[u8], out: &mut Vec<u8>) -> StreamNote {
        use super::shape::{StreamDecode, StreamEncode};
        self.events.clear();
        let note = self.decode.event(None, data, &mut self.events);
        for event in &self.events {
            self.encode.event(event, out);
        }
        // Once the client's stream has ended, nothing more is shown.
        if self.encode.finished() && note == StreamNote::Content {
            return StreamNote::Nothing;
        }
        note
    }

    /// The upstream ended (cleanly or not): close any open block and emit message_delta
    /// (stop_reason, usage) + message_stop if not already done. Idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        super::shape::StreamEncode::finish(&mut self.encode, out);
    }

    /// An Anthropic `event: error` SSE event for a failure after content.
    pub fn error_event(message: &str) -> Vec<u8> {
        super::anthropic::encode::stream_error_event(message)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.decode.usage()
    }
}

/// Anthropic upstream events → OpenAI chunks for an OpenAI client: [`anthropic::decode::Stream`]
/// then [`openai_chat::encode::Stream`].
pub struct AnthropicToOpenAiStream {
    decode: anthropic::decode::Stream,
    encode: openai_chat::encode::Stream,
    events: Vec<Event>,
    /// [`Self::finish`] ran: later events are only counted (usage) or reported (errors).
    finished: bool,
}

impl AnthropicToOpenAiStream {
    /// `include_usage`: the client asked for stream_options.include_usage (emit the `choices: []`
    /// usage chunk before [DONE]).
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        AnthropicToOpenAiStream {
            decode: anthropic::decode::Stream::new(),
            encode: openai_chat::encode::Stream::new(client_model, include_usage),
            events: Vec::new(),
            finished: false,
        }
    }

    /// Feeds one upstream event (its `event:` name if any, and its data JSON), appending complete
    /// OpenAI SSE events (`data: {json}\n\n`, and `data: [DONE]\n\n` at message_stop) to `out`.
    pub fn event(&mut self, name: Option<&[u8]>, data: &[u8], out: &mut Vec<u8>) -> StreamNote {
        self.events.clear();
        let note = self.decode.event(name, data, &mut self.events);
        if self.finished {
            return match note {
                StreamNote::Error(_) => note,
                _ => StreamNote::Nothing,
            };
        }
        for event in &self.events {
            self.encode.event(event, out);
        }
        note
    }

    /// Emits finish + usage + [DONE] if message_stop never came. Idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.finished = true;
        self.encode.finish(out);
    }

    pub fn usage(&self) -> Option<Usage> {
        self.decode.usage()
    }
}
