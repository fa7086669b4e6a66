//! Anthropic Messages bytes → the internal shape: a client's request, an upstream's message,
//! stream events and errors.
//!
//! Reading is as lenient as the upstream's own parser where the gateway only relays (block
//! fields of an unexpected type are absent, token counts are [`wire::count`]s), and as strict as
//! Anthropic where a client's mistake would be refused upstream anyway (a `max_tokens` that is
//! not an integer, `messages` that is not a list); the error's message is the client's.
//!
//! Fields only this module reads (a thinking block's `signature`, `redacted_thinking`'s `data`,
//! the model, the stop sequence) are read in a second pass ([`Loose`]) where the first would
//! otherwise refuse more than it ever did: serde skips an unknown field without checking its
//! UTF-8, and a body or event once relayed stays relayed. serde also names a struct in its error
//! messages, which reach the client: the structs a client's request or an upstream's message is
//! read into keep the names those messages always had (`An…In`, `AnMessageIn2`).

use super::{Usage as AnthropicUsage, UsageIn};
use crate::protocol::shape::{
    Arguments, Block, BlockStart, Delta, Event, Image, Message, Metering, Reasoning, Request,
    Response, Role, StopReason, StreamDecode, StreamNote, Tool, ToolChoice, TranslateError,
    UpstreamError,
};
use crate::protocol::wire::{
    self, compact_json, error_object_message, non_empty, note, opt_field, present, top_level,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The thinking budget read when a client enables thinking without `budget_tokens` (Anthropic
/// requires it; the gateway assumes the output size it assumes elsewhere).
const DEFAULT_THINKING_BUDGET: u64 = super::encode::DEFAULT_MAX_TOKENS;

// ---------------------------------------------------------------------------------------------
// Content blocks
// ---------------------------------------------------------------------------------------------

/// Any Anthropic content block, request or response; fields a type lacks stay `None`.
#[derive(Deserialize)]
struct AnBlockIn<'a> {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    source: Option<AnSourceIn>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    tool_use_id: Option<String>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(default, borrow)]
    cache_control: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AnSourceIn {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Anthropic `content` (or `system`): a string or blocks (with their JSON text, for [`Loose`]).
enum Content<'a> {
    Text(String),
    Blocks(Vec<AnBlockIn<'a>>, &'a str),
}

/// What a second pass reads: fields a first pass must not refuse a body or event for (see the
/// module doc). Raw, so a value of any type is read; [`string`] takes a string's text.
#[derive(Deserialize, Default)]
struct Loose<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stop_sequence: Option<&'a RawValue>,
    #[serde(default, borrow)]
    signature: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// Each block's [`Loose`] fields, in order; empty when they do not read.
fn loose_blocks(raw: &str) -> Vec<Loose<'_>> {
    serde_json::from_str(raw).unwrap_or_default()
}

fn content<'a>(raw: &'a RawValue, what: &str) -> Result<Option<Content<'a>>, TranslateError> {
    let s = raw.get().trim_start();
    let bad = |e: serde_json::Error| TranslateError::new(format!("Invalid '{what}': {e}"));
    if s.starts_with('"') {
        Ok(Some(Content::Text(serde_json::from_str(s).map_err(bad)?)))
    } else if s.starts_with('[') {
        Ok(Some(Content::Blocks(
            serde_json::from_str(s).map_err(bad)?,
            s,
        )))
    } else if s.trim_end() == "null" {
        Ok(None)
    } else {
        Err(TranslateError::new(format!(
            "Invalid '{what}': expected a string or an array of content blocks"
        )))
    }
}

/// A JSON string's text; `None` for anything else.
fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// The texts of Anthropic content: a string, or each text block. Other block types, and
/// `cache_control`, are named as dropped under `what`.
fn texts(content: Option<Content<'_>>, what: &str, dropped: &mut Vec<String>) -> Vec<String> {
    match content {
        None => Vec::new(),
        Some(Content::Text(s)) => vec![s],
        Some(Content::Blocks(blocks, _)) => {
            let mut texts = Vec::new();
            for b in blocks {
                if b.cache_control.is_some() {
                    note(dropped, &format!("{what}.cache_control"));
                }
                match b.kind.as_str() {
                    "text" => texts.push(b.text.unwrap_or_default()),
                    other => note(dropped, &format!("{what}.{other}")),
                }
            }
            texts
        }
    }
}

/// An image block's source: base64 with its media type, or a URL.
fn image(source: Option<AnSourceIn>) -> Option<Image> {
    let source = source?;
    match source.kind.as_str() {
        "base64" => Some(Image::Base64 {
            media_type: source.media_type?,
            data: source.data?,
        }),
        "url" => source.url.map(Image::Url),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AnMessageIn<'a> {
    role: String,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Deserialize)]
struct AnToolChoiceIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct AnThinkingIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "wire::count")]
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct AnMetadataIn {
    #[serde(default)]
    user_id: Option<String>,
}

/// An Anthropic client's `/v1/messages` body. Top-level fields the shape has no place for
/// (`top_k`, `output_config`, `context_management`, …), `cache_control` anywhere, document and
/// server-tool blocks, and server tools are named in [`Request::dropped`].
pub fn request(body: &[u8]) -> Result<Request<'_>, TranslateError> {
    let top = top_level(body)?;
    let mut req = Request {
        // Anthropic streams always end with their usage.
        include_usage: true,
        ..Request::default()
    };
    let mut system = None;
    let mut messages = None;
    let mut tools = None;
    let mut tool_choice = None;
    let mut thinking = None;
    for (key, &raw) in &top {
        match key.as_str() {
            // Routing read it already; any value is the upstream's to replace.
            "model" => req.model = serde_json::from_str(raw.get()).unwrap_or_default(),
            "system" => system = present(raw),
            "messages" => messages = Some(raw),
            "max_tokens" => req.max_output_tokens = opt_field::<u64>(raw, "max_tokens")?,
            "stop_sequences" => {
                req.stop = opt_field::<Vec<String>>(raw, "stop_sequences")?.unwrap_or_default();
            }
            "temperature" => req.temperature = present(raw),
            "top_p" => req.top_p = present(raw),
            "stream" => req.stream = opt_field::<bool>(raw, "stream")?,
            "metadata" => {
                req.user = opt_field::<AnMetadataIn>(raw, "metadata")?.and_then(|m| m.user_id);
            }
            "tools" => tools = opt_field::<Vec<BTreeMap<String, &RawValue>>>(raw, "tools")?,
            "tool_choice" => tool_choice = opt_field::<AnToolChoiceIn>(raw, "tool_choice")?,
            "thinking" => thinking = opt_field::<AnThinkingIn>(raw, "thinking")?,
            _ => req.dropped.push(key.clone()),
        }
    }

    if let Some(raw) = system {
        req.system = texts(content(raw, "system")?, "system", &mut req.dropped);
    }

    let Some(messages) = messages else {
        return Err(TranslateError::new("messages: Field required"));
    };
    let messages: Vec<AnMessageIn<'_>> = serde_json::from_str(messages.get())
        .map_err(|e| TranslateError::new(format!("Invalid 'messages': {e}")))?;
    for m in messages {
        let content = content(m.content, "messages.content")?;
        let dropped = &mut req.dropped;
        let message = match m.role.as_str() {
            // Claude Code sends one inside `messages`.
            "system" => Message {
                role: Role::System,
                content: texts(content, "messages.content", dropped)
                    .into_iter()
                    .map(Block::Text)
                    .collect(),
            },
            "user" => Message {
                role: Role::User,
                content: user_blocks(content, dropped),
            },
            "assistant" => Message {
                role: Role::Assistant,
                content: assistant_blocks(content, dropped),
            },
            other => {
                return Err(TranslateError::new(format!(
                    "messages: unexpected role '{other}' (expected user or assistant)"
                )));
            }
        };
        req.messages.push(message);
    }

    for tool in tools.unwrap_or_default() {
        let mut name = None;
        let mut description = None;
        let mut schema = None;
        let mut kind = None;
        for (key, &raw) in &tool {
            match key.as_str() {
                "name" => name = opt_field::<String>(raw, "tools.name")?,
                "description" => description = opt_field::<String>(raw, "tools.description")?,
                "input_schema" => schema = present(raw),
                "type" => kind = opt_field::<String>(raw, "tools.type")?,
                other => note(&mut req.dropped, &format!("tools.{other}")),
            }
        }
        match (name, schema) {
            (Some(name), Some(parameters)) if kind.as_deref().is_none_or(|k| k == "custom") => {
                req.tools.push(Tool {
                    name,
                    description,
                    parameters: Some(parameters),
                    strict: None,
                });
            }
            // Server tools (web search, bash, ...) have a versioned type and no schema.
            _ => note(
                &mut req.dropped,
                &format!("tools.{}", kind.as_deref().unwrap_or("(no input_schema)")),
            ),
        }
    }

    if let Some(choice) = tool_choice {
        req.tool_choice = match choice.kind.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "any" => Some(ToolChoice::Required),
            "none" => Some(ToolChoice::None),
            "tool" => choice.name.map(ToolChoice::Named),
            _ => None,
        };
        if req.tool_choice.is_none() {
            note(&mut req.dropped, "tool_choice");
        }
        // With no tool to call, there is nothing to call in parallel.
        if choice.disable_parallel_tool_use == Some(true) && choice.kind != "none" {
            req.parallel_tool_calls = Some(false);
        }
    }

    if let Some(t) = thinking {
        req.reasoning = match t.kind.as_str() {
            "enabled" => Some(Reasoning::Budget(
                t.budget_tokens.unwrap_or(DEFAULT_THINKING_BUDGET),
            )),
            // The model decides how much: the middle effort.
            "adaptive" => Some(Reasoning::Effort("medium".to_string())),
            "disabled" => Some(Reasoning::Disabled),
            _ => {
                note(&mut req.dropped, "thinking");
                None
            }
        };
    }
    Ok(req)
}

/// A user turn: text, images and tool results; anything else is named as dropped.
fn user_blocks<'a>(content: Option<Content<'a>>, dropped: &mut Vec<String>) -> Vec<Block<'a>> {
    let blocks = match content {
        None => return Vec::new(),
        Some(Content::Text(text)) => return vec![Block::Text(text)],
        Some(Content::Blocks(blocks, _)) => blocks,
    };
    let mut out = Vec::new();
    for b in blocks {
        if b.cache_control.is_some() {
            note(dropped, "messages.content.cache_control");
        }
        match b.kind.as_str() {
            "text" => out.push(Block::Text(b.text.unwrap_or_default())),
            "image" => match image(b.source) {
                Some(image) => out.push(Block::Image(image)),
                None => note(dropped, "messages.content.image.source"),
            },
            "tool_result" => out.push(Block::ToolResult {
                call_id: b.tool_use_id.unwrap_or_default(),
                content: tool_result_blocks(b.content, dropped),
                is_error: b.is_error,
            }),
            other => note(dropped, &format!("messages.content.{other}")),
        }
    }
    out
}

/// A tool result's content: a string, or its text and image blocks. Content that is neither is
/// named as dropped and read as empty (the call still gets its result).
fn tool_result_blocks<'a>(raw: Option<&'a RawValue>, dropped: &mut Vec<String>) -> Vec<Block<'a>> {
    const WHAT: &str = "messages.content.tool_result.content";
    let Some(raw) = raw.and_then(present) else {
        return Vec::new();
    };
    match content(raw, "tool_result.content") {
        Ok(None) => Vec::new(),
        Ok(Some(Content::Text(text))) => vec![Block::Text(text)],
        Ok(Some(Content::Blocks(blocks, _))) => {
            let mut out = Vec::new();
            for b in blocks {
                if b.cache_control.is_some() {
                    note(dropped, &format!("{WHAT}.cache_control"));
                }
                match b.kind.as_str() {
                    "text" => out.push(Block::Text(b.text.unwrap_or_default())),
                    "image" => match image(b.source) {
                        Some(image) => out.push(Block::Image(image)),
                        None => note(dropped, &format!("{WHAT}.image")),
                    },
                    other => note(dropped, &format!("{WHAT}.{other}")),
                }
            }
            out
        }
        Err(_) => {
            note(dropped, WHAT);
            Vec::new()
        }
    }
}

/// An assistant turn: text, tool calls and thinking; anything else is named as dropped.
fn assistant_blocks<'a>(content: Option<Content<'a>>, dropped: &mut Vec<String>) -> Vec<Block<'a>> {
    let (blocks, raw) = match content {
        None => return Vec::new(),
        Some(Content::Text(text)) => return vec![Block::Text(text)],
        Some(Content::Blocks(blocks, raw)) => (blocks, raw),
    };
    // Read only for a turn that shows thinking, which few do.
    let mut loose: Option<Vec<Loose<'_>>> = None;
    let mut out = Vec::new();
    for (i, b) in blocks.into_iter().enumerate() {
        if b.cache_control.is_some() {
            note(dropped, "messages.content.cache_control");
        }
        let mut extra = |raw: &'a str| {
            loose
                .get_or_insert_with(|| loose_blocks(raw))
                .get(i)
                .map(|l| (l.signature, l.data))
                .unwrap_or_default()
        };
        match b.kind.as_str() {
            "text" => out.push(Block::Text(b.text.unwrap_or_default())),
            "tool_use" => out.push(Block::ToolCall {
                id: b.id.unwrap_or_default(),
                name: b.name.unwrap_or_default(),
                arguments: match b.input.and_then(present) {
                    Some(input) => Arguments::Raw(input),
                    None => Arguments::Text(String::new()),
                },
            }),
            "thinking" => out.push(Block::Thinking {
                text: b.thinking.unwrap_or_default(),
                signature: string(extra(raw).0),
            }),
            "redacted_thinking" => out.push(Block::RedactedThinking {
                data: string(extra(raw).1).unwrap_or_default(),
            }),
            other => note(dropped, &format!("messages.content.{other}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// An Anthropic `stop_reason`; one the shape does not know ends the turn.
pub fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "max_tokens" => StopReason::MaxTokens,
        "model_context_window_exceeded" => StopReason::ContextWindow,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "refusal" => StopReason::Refusal,
        "pause_turn" => StopReason::Pause,
        _ => StopReason::EndTurn,
    }
}

/// A `usage` object folded into fresh counts; `None` for `null` or a shape that is no usage.
fn metering(raw: &RawValue) -> Option<Metering> {
    let read: UsageIn = serde_json::from_str(raw.get()).ok()?;
    let mut usage = AnthropicUsage::default();
    usage.merge(&read);
    Some(Metering {
        usage: usage.billing(),
        ..Metering::default()
    })
}

#[derive(Deserialize)]
struct AnMessageIn2<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    content: Option<Vec<AnBlockIn<'a>>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct LooseResponse<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stop_sequence: Option<&'a RawValue>,
    #[serde(default, borrow)]
    content: Option<Vec<Loose<'a>>>,
}

/// An Anthropic upstream's non-streamed message; `None` when the body is not one.
pub fn response(body: &[u8]) -> Option<Response> {
    read_response(body).ok()
}

/// [`response`], saying why a body is not a message (for the request path's log).
pub(crate) fn read_response(body: &[u8]) -> Result<Response, TranslateError> {
    let msg: AnMessageIn2<'_> = serde_json::from_slice(body).map_err(|e| {
        TranslateError::new(format!(
            "upstream response is not an Anthropic message: {e}"
        ))
    })?;
    let Some(blocks) = msg.content else {
        return Err(TranslateError::new(
            "upstream response is not an Anthropic message: no content",
        ));
    };
    let loose: LooseResponse<'_> = serde_json::from_slice(body).unwrap_or_default();
    let loose_blocks = loose.content.unwrap_or_default();
    let extra = |i: usize| {
        loose_blocks
            .get(i)
            .map(|l| (l.signature, l.data))
            .unwrap_or_default()
    };
    let mut content = Vec::with_capacity(blocks.len());
    for (i, b) in blocks.into_iter().enumerate() {
        match b.kind.as_str() {
            "text" => content.push(Block::Text(b.text.unwrap_or_default())),
            "thinking" => content.push(Block::Thinking {
                text: b.thinking.unwrap_or_default(),
                signature: string(extra(i).0),
            }),
            "redacted_thinking" => content.push(Block::RedactedThinking {
                data: string(extra(i).1).unwrap_or_default(),
            }),
            "tool_use" => content.push(Block::ToolCall {
                id: b.id.unwrap_or_default(),
                name: b.name.unwrap_or_default(),
                arguments: Arguments::Text(
                    b.input
                        .and_then(present)
                        .map(|r| compact_json(r.get()))
                        .unwrap_or_default(),
                ),
            }),
            // Server tool calls and results, citations: nothing another dialect can show.
            _ => {}
        }
    }
    Ok(Response {
        id: msg.id.unwrap_or_default(),
        model: string(loose.model).unwrap_or_default(),
        content,
        stop: stop_reason(msg.stop_reason.as_deref().unwrap_or("end_turn")),
        stop_sequence: string(loose.stop_sequence),
        metering: msg.usage.and_then(metering),
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An Anthropic upstream's refusal: its status, and the message of its error object.
pub fn error(status: u16, body: &[u8]) -> UpstreamError {
    UpstreamError {
        status,
        message: wire::error_body_message(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<StartMessageIn<'a>>,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, borrow)]
    content_block: Option<BlockStartIn<'a>>,
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StartMessageIn<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BlockStartIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// An event's [`Loose`] fields, read for the few events that have any.
#[derive(Deserialize, Default)]
struct LooseEvent<'a> {
    #[serde(default, borrow)]
    message: Option<Loose<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Loose<'a>>,
    #[serde(default, borrow)]
    delta: Option<Loose<'a>>,
}

fn loose_event(data: &[u8]) -> LooseEvent<'_> {
    serde_json::from_slice(data).unwrap_or_default()
}

/// What a started block index turned into.
enum Slot {
    /// Text, thinking, redacted thinking: passed on as blocks.
    Shown,
    /// A tool call. Its arguments stream as `input_json_delta`s; the block start's own `input`
    /// (compacted) is passed on at the stop when none streamed, so a call always has arguments.
    Tool {
        sent_arguments: bool,
        initial_input: String,
    },
    /// Server tool calls and results and types added later: not passed on.
    Hidden,
}

/// An Anthropic upstream's stream, read into shape events.
///
/// Usage counts are cumulative, as Anthropic sends them: every event that carries some is
/// followed by an [`Event::Metering`] with the counts so far. Once `message_stop` has been read
/// nothing more is passed on (usage is still counted, for billing).
#[derive(Default)]
pub struct Stream {
    usage: Option<AnthropicUsage>,
    blocks: Vec<(usize, Slot)>,
    started: bool,
    done: bool,
}

impl Stream {
    pub fn new() -> Self {
        Stream::default()
    }

    /// The counts so far, in billing terms; `None` until some event carried a usage object.
    pub fn usage(&self) -> Option<crate::protocol::usage::Usage> {
        self.usage.map(|u| u.billing())
    }

    fn metering(&self) -> Metering {
        Metering {
            usage: self.usage.unwrap_or_default().billing(),
            ..Metering::default()
        }
    }

    fn slot(&mut self, index: usize) -> Option<&mut Slot> {
        self.blocks
            .iter_mut()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, s)| s)
    }

    fn start(&mut self, id: &str, model: String, out: &mut Vec<Event>) {
        self.started = true;
        out.push(Event::Start {
            id: id.to_string(),
            model,
        });
    }

    fn block_start(&mut self, ev: &EventIn<'_>, data: &[u8], out: &mut Vec<Event>) -> StreamNote {
        let index = ev.index.unwrap_or(0);
        let Some(block) = &ev.content_block else {
            return StreamNote::Nothing;
        };
        // A block before `message_start` still opens the answer.
        if !self.started {
            self.start("", String::new(), out);
        }
        let (slot, start, first) = match block.kind.as_deref() {
            Some("text") => (
                Slot::Shown,
                BlockStart::Text,
                non_empty(&block.text).map(|t| Delta::Text(t.to_string())),
            ),
            Some("thinking") => (
                Slot::Shown,
                BlockStart::Thinking,
                non_empty(&block.thinking).map(|t| Delta::Thinking(t.to_string())),
            ),
            Some("redacted_thinking") => (
                Slot::Shown,
                BlockStart::RedactedThinking {
                    data: string(loose_event(data).content_block.and_then(|b| b.data))
                        .unwrap_or_default(),
                },
                None,
            ),
            Some("tool_use") => {
                let initial_input = block
                    .input
                    .and_then(present)
                    .map(|r| compact_json(r.get()))
                    .unwrap_or_else(|| "{}".to_string());
                let start = BlockStart::ToolCall {
                    id: block.id.as_deref().unwrap_or("").to_string(),
                    name: block.name.as_deref().unwrap_or("").to_string(),
                };
                self.blocks.push((
                    index,
                    Slot::Tool {
                        sent_arguments: false,
                        initial_input,
                    },
                ));
                out.push(Event::BlockStart {
                    index,
                    block: start,
                });
                return StreamNote::Content;
            }
            _ => {
                self.blocks.push((index, Slot::Hidden));
                return StreamNote::Nothing;
            }
        };
        self.blocks.push((index, slot));
        out.push(Event::BlockStart {
            index,
            block: start,
        });
        match first {
            Some(delta) => {
                out.push(Event::Delta { index, delta });
                StreamNote::Content
            }
            None => StreamNote::Nothing,
        }
    }

    fn block_delta(&mut self, ev: &EventIn<'_>, data: &[u8], out: &mut Vec<Event>) -> StreamNote {
        let Some(delta) = &ev.delta else {
            return StreamNote::Nothing;
        };
        let index = ev.index.unwrap_or(0);
        let (delta, note) = match delta.kind.as_deref() {
            Some("text_delta") => match non_empty(&delta.text) {
                Some(text) => (Delta::Text(text.to_string()), StreamNote::Content),
                None => return StreamNote::Nothing,
            },
            Some("thinking_delta") => match non_empty(&delta.thinking) {
                Some(thinking) => (Delta::Thinking(thinking.to_string()), StreamNote::Content),
                None => return StreamNote::Nothing,
            },
            Some("input_json_delta") => {
                let Some(partial) = non_empty(&delta.partial_json) else {
                    return StreamNote::Nothing;
                };
                let Some(Slot::Tool { sent_arguments, .. }) = self.slot(index) else {
                    // Arguments for a block that never started as a tool: nowhere to put them.
                    return StreamNote::Nothing;
                };
                *sent_arguments = true;
                (
                    Delta::ToolArguments(partial.to_string()),
                    StreamNote::Content,
                )
            }
            // Proof of the thinking shown, nothing to show itself.
            Some("signature_delta") => {
                match string(loose_event(data).delta.and_then(|d| d.signature))
                    .filter(|s| !s.is_empty())
                {
                    Some(signature) => (Delta::Signature(signature), StreamNote::Nothing),
                    None => return StreamNote::Nothing,
                }
            }
            // citations_delta, and types added later.
            _ => return StreamNote::Nothing,
        };
        out.push(Event::Delta { index, delta });
        note
    }

    fn block_stop(&mut self, index: usize, out: &mut Vec<Event>) -> StreamNote {
        let note = match self.slot(index) {
            None | Some(Slot::Hidden) => return StreamNote::Nothing,
            Some(Slot::Shown) => StreamNote::Nothing,
            Some(Slot::Tool {
                sent_arguments,
                initial_input,
            }) => {
                if *sent_arguments {
                    StreamNote::Nothing
                } else {
                    *sent_arguments = true;
                    let arguments = std::mem::take(initial_input);
                    out.push(Event::Delta {
                        index,
                        delta: Delta::ToolArguments(arguments),
                    });
                    StreamNote::Content
                }
            }
        };
        out.push(Event::BlockStop { index });
        note
    }
}

impl StreamDecode for Stream {
    fn event(&mut self, name: Option<&[u8]>, data: &[u8], out: &mut Vec<Event>) -> StreamNote {
        let data = data.trim_ascii();
        let named_error = name == Some(b"error".as_slice());
        let Ok(ev) = serde_json::from_slice::<EventIn<'_>>(data) else {
            return if named_error {
                StreamNote::Error(String::from_utf8_lossy(data).into_owned())
            } else {
                StreamNote::Nothing
            };
        };
        let kind: Cow<'_, str> = match (&ev.kind, name) {
            (Some(k), _) => Cow::Borrowed(k.as_ref()),
            (None, Some(n)) => String::from_utf8_lossy(n),
            (None, None) => Cow::Borrowed(""),
        };
        if kind == "error" || named_error {
            return StreamNote::Error(
                ev.error
                    .and_then(present)
                    .map(error_object_message)
                    .unwrap_or_else(|| "upstream error".to_string()),
            );
        }
        let mut metered = false;
        for raw in [ev.message.as_ref().and_then(|m| m.usage), ev.usage]
            .into_iter()
            .flatten()
        {
            if let Ok(read) = serde_json::from_str::<UsageIn>(raw.get()) {
                self.usage.get_or_insert_default().merge(&read);
                metered = true;
            }
        }
        if self.done {
            return StreamNote::Nothing;
        }
        if kind == "message_start" {
            let id = ev.message.as_ref().and_then(|m| non_empty(&m.id));
            let model = string(loose_event(data).message.and_then(|m| m.model));
            self.start(id.unwrap_or(""), model.unwrap_or_default(), out);
            if metered {
                out.push(Event::Metering(self.metering()));
            }
            return StreamNote::Nothing;
        }
        // The counts come before what the event means, so an end sees them.
        if metered {
            out.push(Event::Metering(self.metering()));
        }
        match kind.as_ref() {
            "content_block_start" => self.block_start(&ev, data, out),
            "content_block_delta" => self.block_delta(&ev, data, out),
            "content_block_stop" => self.block_stop(ev.index.unwrap_or(0), out),
            "message_delta" => {
                let Some(delta) = &ev.delta else {
                    return StreamNote::Nothing;
                };
                let Some(reason) = non_empty(&delta.stop_reason) else {
                    return StreamNote::Nothing;
                };
                out.push(Event::Stop {
                    reason: stop_reason(reason),
                    stop_sequence: string(loose_event(data).delta.and_then(|d| d.stop_sequence)),
                });
                StreamNote::Content
            }
            "message_stop" => {
                self.done = true;
                out.push(Event::End);
                StreamNote::Done
            }
            // ping, and event types added after this was written.
            _ => StreamNote::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::usage::Usage;
    use crate::sse;
    use bytes::Bytes;

    fn sample(name: &str) -> &'static [u8] {
        keyplane_testkit::samples::bytes(name)
    }

    /// Every event of an SSE sample through a fresh decoder: the shape events and each note.
    fn decode_stream(raw: &[u8]) -> (Stream, Vec<Event>, Vec<StreamNote>) {
        let mut split = Vec::new();
        sse::Splitter::default().push(Bytes::copy_from_slice(raw), &mut split);
        let mut stream = Stream::new();
        let mut events = Vec::new();
        let mut notes = Vec::new();
        for e in &split {
            let ev = sse::parse(e);
            if let Some(data) = ev.data.as_deref() {
                notes.push(stream.event(ev.name, data, &mut events));
            }
        }
        (stream, events, notes)
    }

    fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
        }
    }

    #[test]
    fn sample_message_is_text_end_turn_and_usage() {
        let resp = response(sample("anthropic-message.json")).unwrap();
        assert_eq!(resp.id, "msg_01VdEjxAP5ahtHKrrRdNBteQ");
        assert_eq!(resp.model, "claude-sonnet-4-5-20250929");
        assert!(matches!(
            resp.content.as_slice(),
            [Block::Text(t)] if t.starts_with("Hello! I'm doing well")
        ));
        assert_eq!(resp.stop, StopReason::EndTurn);
        assert_eq!(resp.stop_sequence, None);
        assert_eq!(resp.metering.map(|m| m.usage), Some(usage(12, 29, 0, 0)));
    }

    #[test]
    fn response_blocks_stop_reasons_and_what_is_no_message() {
        let body = br#"{"id":"msg_2","model":"claude","content":[
            {"type":"thinking","thinking":"Hm.","signature":"sig=="},
            {"type":"redacted_thinking","data":"opaque"},
            {"type":"text","text":"A"},
            {"type":"server_tool_use","id":"srv","name":"web_search","input":{}},
            {"type":"tool_use","id":"toolu_1","name":"f","input":{ "b" : [1, 2.50] }}],
            "stop_reason":"stop_sequence","stop_sequence":"END",
            "usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5,"cache_creation_input_tokens":6}}"#;
        let resp = response(body).unwrap();
        match resp.content.as_slice() {
            [
                Block::Thinking { text, signature },
                Block::RedactedThinking { data },
                Block::Text(a),
                Block::ToolCall {
                    id,
                    name,
                    arguments: Arguments::Text(arguments),
                },
            ] => {
                assert_eq!(
                    (text.as_str(), signature.as_deref()),
                    ("Hm.", Some("sig=="))
                );
                assert_eq!(data, "opaque");
                assert_eq!(a, "A");
                assert_eq!((id.as_str(), name.as_str()), ("toolu_1", "f"));
                assert_eq!(arguments, r#"{"b":[1,2.50]}"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(resp.stop, StopReason::StopSequence);
        assert_eq!(resp.stop_sequence.as_deref(), Some("END"));
        assert_eq!(resp.metering.map(|m| m.usage), Some(usage(3, 4, 5, 6)));

        for (reason, stop) in [
            ("end_turn", StopReason::EndTurn),
            ("max_tokens", StopReason::MaxTokens),
            ("model_context_window_exceeded", StopReason::ContextWindow),
            ("tool_use", StopReason::ToolUse),
            ("refusal", StopReason::Refusal),
            ("pause_turn", StopReason::Pause),
            ("a_reason_from_next_year", StopReason::EndTurn),
        ] {
            assert_eq!(stop_reason(reason), stop, "{reason}");
        }
        for bad in [&b"<html>"[..], br#"{"id":"x"}"#, br#"{"content":"text"}"#] {
            assert!(response(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sample_tool_use_stream_reads_as_shape_events() {
        let (stream, events, notes) = decode_stream(sample("anthropic-tool-use-stream.sse"));
        assert_eq!(
            events[..2],
            [
                Event::Start {
                    id: "msg_014p7gG3wDgGV9EUtLvnow3U".into(),
                    model: "claude-sonnet-4-5-20250929".into(),
                },
                Event::Metering(Metering {
                    usage: usage(472, 2, 0, 0),
                    ..Metering::default()
                }),
            ]
        );
        assert_eq!(
            events[2],
            Event::BlockStart {
                index: 0,
                block: BlockStart::Text
            }
        );
        assert!(events.contains(&Event::BlockStart {
            index: 1,
            block: BlockStart::ToolCall {
                id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                name: "get_weather".into(),
            },
        }));
        let arguments: String = events
            .iter()
            .filter_map(|e| match e {
                Event::Delta {
                    index: 1,
                    delta: Delta::ToolArguments(a),
                } => Some(a.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            arguments,
            r#"{"location": "San Francisco, CA", "unit": "fahrenheit"}"#
        );
        let tail = &events[events.len() - 4..];
        assert_eq!(
            tail,
            [
                Event::BlockStop { index: 1 },
                Event::Metering(Metering {
                    usage: usage(472, 89, 0, 0),
                    ..Metering::default()
                }),
                Event::Stop {
                    reason: StopReason::ToolUse,
                    stop_sequence: None,
                },
                Event::End,
            ]
        );
        // message_start, the empty text block and ping show nothing; the first text commits.
        assert!(notes[..3].iter().all(|n| *n == StreamNote::Nothing));
        assert_eq!(notes[3], StreamNote::Content);
        assert_eq!(notes.last(), Some(&StreamNote::Done));
        assert_eq!(stream.usage(), Some(usage(472, 89, 0, 0)));
    }

    #[test]
    fn sample_text_stream_ends_with_cumulative_usage() {
        let (stream, events, notes) = decode_stream(sample("anthropic-stream.sse"));
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Event::Delta {
                    delta: Delta::Text(t),
                    ..
                } => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert!(!text.is_empty());
        assert!(events.contains(&Event::Stop {
            reason: StopReason::EndTurn,
            stop_sequence: None
        }));
        assert_eq!(events.last(), Some(&Event::End));
        assert_eq!(notes.last(), Some(&StreamNote::Done));
        assert_eq!(stream.usage(), Some(usage(20, 5, 0, 0)));
    }

    #[test]
    fn stream_notes_follow_the_commit_rule() {
        let mut stream = Stream::new();
        let mut feed = |data: &str| {
            let mut events = Vec::new();
            let note = stream.event(None, data.as_bytes(), &mut events);
            (note, events)
        };
        // A block before message_start still opens the answer; thinking shows nothing yet.
        let (note, events) = feed(
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        );
        assert_eq!(note, StreamNote::Nothing);
        assert!(matches!(events[0], Event::Start { ref id, .. } if id.is_empty()));
        let (note, events) = feed(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
        );
        assert_eq!(note, StreamNote::Nothing);
        assert_eq!(
            events,
            [Event::Delta {
                index: 0,
                delta: Delta::Signature("c2ln".into())
            }]
        );
        // A tool call commits at its start; its block start's input goes out at the stop when no
        // argument streamed.
        let (note, _) = feed(
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{"a": 1}}}"#,
        );
        assert_eq!(note, StreamNote::Content);
        let (note, events) = feed(r#"{"type":"content_block_stop","index":1}"#);
        assert_eq!(note, StreamNote::Content);
        assert_eq!(
            events,
            [
                Event::Delta {
                    index: 1,
                    delta: Delta::ToolArguments(r#"{"a":1}"#.into())
                },
                Event::BlockStop { index: 1 }
            ]
        );
        // Server tools are nobody else's to show.
        let (note, events) = feed(
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}"#,
        );
        assert_eq!((note, events.len()), (StreamNote::Nothing, 0));
        let (note, events) = feed(r#"{"type":"content_block_stop","index":2}"#);
        assert_eq!((note, events.len()), (StreamNote::Nothing, 0));
        let (note, _) = feed(r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":3}}"#);
        assert_eq!(note, StreamNote::Nothing);
        let (note, events) = feed(r#"{"type":"message_delta","delta":{"stop_reason":"refusal"}}"#);
        assert_eq!(note, StreamNote::Content);
        assert_eq!(
            events,
            [Event::Stop {
                reason: StopReason::Refusal,
                stop_sequence: None
            }]
        );
        assert_eq!(feed(r#"{"type":"message_stop"}"#).0, StreamNote::Done);
        // After the end: nothing more is passed on, usage is still counted, errors still told.
        let (note, events) = feed(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"late"}}"#,
        );
        assert_eq!((note, events.len()), (StreamNote::Nothing, 0));
        let (note, events) = feed(r#"{"type":"message_delta","usage":{"output_tokens":7}}"#);
        assert_eq!((note, events.len()), (StreamNote::Nothing, 0));
        assert_eq!(
            feed(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
                .0,
            StreamNote::Error("Overloaded".into())
        );
        assert_eq!(stream.usage().map(|u| u.output_tokens), Some(7));
        let mut events = Vec::new();
        assert_eq!(
            stream.event(Some(b"error"), b"not json", &mut events),
            StreamNote::Error("not json".into())
        );
        assert_eq!(
            stream.event(None, b"not json", &mut events),
            StreamNote::Nothing
        );
    }

    #[test]
    fn request_reads_every_field_and_names_what_it_drops() {
        let body = br#"{"model":"claude-x","max_tokens":32000,"temperature":0.70,"top_p":0.9,
            "top_k":5,"stop_sequences":["END"],"stream":true,"metadata":{"user_id":"u1"},
            "thinking":{"type":"enabled","budget_tokens":8000},
            "system":[{"type":"text","text":"Be brief."},{"type":"text","text":"Be kind.","cache_control":{"type":"ephemeral"}}],
            "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object", "z":1e2}},
                     {"type":"web_search_20250305","name":"web_search"}],
            "tool_choice":{"type":"tool","name":"get_weather","disable_parallel_tool_use":true},
            "messages":[
              {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image","source":{"type":"url","url":"https://x/cat.png"}},{"type":"document","source":{}}]},
              {"role":"system","content":"Mid-conversation note."},
              {"role":"assistant","content":[{"type":"thinking","thinking":"Hm.","signature":"sig"},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{ "city" : "SF" }}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"68F","is_error":false}]}
            ]}"#;
        let req = request(body).unwrap();
        assert_eq!(req.model, "claude-x");
        assert_eq!(req.system, ["Be brief.", "Be kind."]);
        assert_eq!(req.max_output_tokens, Some(32000));
        assert_eq!(req.temperature.map(RawValue::get), Some("0.70"));
        assert_eq!(req.top_p.map(RawValue::get), Some("0.9"));
        assert_eq!(req.stop, ["END"]);
        assert_eq!(req.stream, Some(true));
        assert!(req.include_usage);
        assert_eq!(req.user.as_deref(), Some("u1"));
        assert_eq!(req.reasoning, Some(Reasoning::Budget(8000)));
        assert_eq!(req.tools.len(), 1);
        assert_eq!(
            req.tools[0].parameters.map(RawValue::get),
            Some(r#"{"type":"object", "z":1e2}"#)
        );
        assert_eq!(
            req.tool_choice,
            Some(ToolChoice::Named("get_weather".into()))
        );
        assert_eq!(req.parallel_tool_calls, Some(false));
        let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::User, Role::System, Role::Assistant, Role::User]
        );
        assert!(matches!(
            req.messages[0].content.as_slice(),
            [Block::Text(t), Block::Image(Image::Url(u))] if t == "Hi" && u == "https://x/cat.png"
        ));
        assert!(matches!(
            req.messages[2].content.as_slice(),
            [
                Block::Thinking { signature: Some(s), .. },
                Block::ToolCall { arguments: Arguments::Raw(input), .. },
            ] if s == "sig" && input.get() == r#"{ "city" : "SF" }"#
        ));
        assert!(matches!(
            req.messages[3].content.as_slice(),
            [Block::ToolResult { call_id, content, is_error: Some(false) }]
                if call_id == "toolu_1" && matches!(content.as_slice(), [Block::Text(t)] if t == "68F")
        ));
        for name in [
            "top_k",
            "system.cache_control",
            "messages.content.document",
            "tools.web_search_20250305",
        ] {
            assert!(
                req.dropped.iter().any(|d| d == name),
                "{name} in {:?}",
                req.dropped
            );
        }
    }

    #[test]
    fn request_refuses_what_anthropic_would() {
        for (body, message) in [
            (
                &br#"{"model":"c","max_tokens":5}"#[..],
                "messages: Field required",
            ),
            (
                br#"{"model":"c","max_tokens":5,"messages":[{"role":"tool","content":"x"}]}"#,
                "messages: unexpected role 'tool' (expected user or assistant)",
            ),
            (
                br#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":5}]}"#,
                "Invalid 'messages.content': expected a string or an array of content blocks",
            ),
        ] {
            assert_eq!(request(body).unwrap_err().message, message);
        }
        assert!(request(br#"{"model":"c","max_tokens":-1,"messages":[]}"#).is_err());
    }

    #[test]
    fn error_reads_the_upstreams_message() {
        let err = error(429, sample("anthropic-error-429.json"));
        assert_eq!(err.status, 429);
        assert!(
            err.message
                .as_deref()
                .is_some_and(|m| m.starts_with("This request would exceed the rate limit"))
        );
        let err = error(400, sample("anthropic-error.json"));
        assert!(
            err.message
                .is_some_and(|m| m.contains("effort level 'xhigh'"))
        );
        assert_eq!(error(502, b"<html>Bad gateway</html>").message, None);
    }
}
