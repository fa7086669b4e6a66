//! OpenAI Chat Completions bytes → the internal shape: a chat client's request, and a chat
//! upstream's completion, stream chunks and errors. Usage is read by [`super::usage`], the one
//! chat usage reader.
//!
//! Structure is read with typed serde structs; values the gateway does not interpret
//! (`temperature`, `top_p`, tool schemas) are borrowed raw from the body. What the shape cannot
//! carry is named in [`shape::Request::dropped`]: top-level fields by name, content parts as
//! `messages.content.<type>`, non-function tools as `tools.<type>`.
//!
//! The serde types keep the names they had when this was the pairwise translator
//! (`OaMessageIn`, …): serde writes a type's name into the message of a refused request, which
//! the client sees.

use super::{Usage, WireChunk};
use crate::protocol::shape::{
    self, Arguments, Block, BlockStart, Delta, Event, Message, Role, StreamDecode, StreamNote,
    TranslateError,
};
use crate::protocol::usage as billing;
use crate::protocol::wire::{
    error_body_message, error_object_message, non_empty, note, opt_field, present, tool_input,
    top_level,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

/// OpenAI `content`: a string or parts.
pub(crate) enum Content {
    Text(String),
    Parts(Vec<OaPartIn>),
}

#[derive(Deserialize)]
pub(crate) struct OaPartIn {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    image_url: Option<OaImageUrlIn>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OaImageUrlIn {
    Url(String),
    Object { url: String },
}

/// Reads `content` (absent or `null`: `None`); `what` names it in the error.
pub(crate) fn content(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<Option<Content>, TranslateError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let s = raw.get().trim_start();
    let bad = |e: serde_json::Error| TranslateError::new(format!("Invalid '{what}': {e}"));
    if s.starts_with('"') {
        Ok(Some(Content::Text(serde_json::from_str(s).map_err(bad)?)))
    } else if s.starts_with('[') {
        Ok(Some(Content::Parts(serde_json::from_str(s).map_err(bad)?)))
    } else if s.trim_end() == "null" {
        Ok(None)
    } else {
        Err(TranslateError::new(format!(
            "Invalid '{what}': expected a string or an array of content parts"
        )))
    }
}

/// The text of content: a string, or its text (and refusal) parts joined with `"\n"`. Other
/// parts are noted as dropped under `what`.
pub(crate) fn text(content: Option<Content>, what: &str, dropped: &mut Vec<String>) -> String {
    match content {
        None => String::new(),
        Some(Content::Text(s)) => s,
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::new();
            for p in parts {
                match p.kind.as_str() {
                    "text" => texts.push(p.text.unwrap_or_default()),
                    "refusal" => texts.push(p.refusal.unwrap_or_default()),
                    other => note(dropped, &format!("{what}.{other}")),
                }
            }
            texts.join("\n")
        }
    }
}

/// A `tool_calls` entry, request history or response.
#[derive(Deserialize)]
struct OaToolCallIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<OaFunctionCallIn>,
}

#[derive(Deserialize, Default)]
struct OaFunctionCallIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct OaMessageIn<'a> {
    role: String,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<Vec<OaToolCallIn>>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
struct OaToolIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, borrow)]
    function: Option<OaFunctionDefIn<'a>>,
}

#[derive(Deserialize)]
struct OaFunctionDefIn<'a> {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(default, borrow)]
    strict: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OaToolChoiceIn {
    Mode(String),
    Named {
        #[serde(default)]
        function: Option<OaNameIn>,
    },
}

#[derive(Deserialize)]
struct OaNameIn {
    name: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OaStopIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptionsIn {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ResponseFormatIn<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    json_schema: Option<JsonSchemaIn<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaIn<'a> {
    #[serde(default)]
    name: Option<String>,
    #[serde(borrow)]
    schema: &'a RawValue,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

fn response_format(raw: &RawValue) -> Option<shape::ResponseFormat<'_>> {
    let f: ResponseFormatIn<'_> = serde_json::from_str(raw.get()).ok()?;
    match (f.kind.as_str(), f.json_schema) {
        ("text", _) => Some(shape::ResponseFormat::Text),
        ("json_object", _) => Some(shape::ResponseFormat::JsonObject),
        ("json_schema", Some(s)) => Some(shape::ResponseFormat::JsonSchema {
            name: s.name.unwrap_or_default(),
            schema: s.schema,
            strict: s.strict,
            description: s.description,
        }),
        _ => None,
    }
}

/// A chat client's request. Refused: a body that is not an object, a field of the wrong type,
/// no `messages`, an unknown role, an image part without a URL, and `n > 1` (one answer is all
/// any translation returns).
pub fn request(body: &[u8]) -> Result<shape::Request<'_>, TranslateError> {
    let top = top_level(body)?;
    let mut req = shape::Request::default();
    let mut messages = None;
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    let mut n = None;
    let mut tools = None;
    let mut tool_choice = None;
    for (key, &raw) in &top {
        match key.as_str() {
            // Validated by the request path before any translation; read leniently here.
            "model" => req.model = serde_json::from_str(raw.get()).unwrap_or_default(),
            "stream_options" => {
                req.include_usage = serde_json::from_str::<Option<StreamOptionsIn>>(raw.get())
                    .ok()
                    .flatten()
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false);
            }
            "messages" => messages = Some(raw),
            "max_tokens" => max_tokens = opt_field::<u64>(raw, "max_tokens")?,
            "max_completion_tokens" => {
                max_completion_tokens = opt_field::<u64>(raw, "max_completion_tokens")?;
            }
            "stop" => {
                req.stop = match opt_field::<OaStopIn>(raw, "stop")? {
                    None => Vec::new(),
                    Some(OaStopIn::One(s)) => vec![s],
                    Some(OaStopIn::Many(v)) => v,
                };
            }
            "temperature" => {
                req.temperature = opt_field::<f64>(raw, "temperature")?.map(|_| raw);
            }
            "top_p" => req.top_p = opt_field::<f64>(raw, "top_p")?.map(|_| raw),
            "n" => n = opt_field::<u64>(raw, "n")?,
            "stream" => req.stream = opt_field::<bool>(raw, "stream")?,
            "tools" => tools = opt_field::<Vec<OaToolIn<'_>>>(raw, "tools")?,
            "tool_choice" => tool_choice = opt_field::<OaToolChoiceIn>(raw, "tool_choice")?,
            "parallel_tool_calls" => {
                req.parallel_tool_calls = opt_field::<bool>(raw, "parallel_tool_calls")?;
            }
            "user" => req.user = opt_field::<String>(raw, "user")?,
            "reasoning_effort" => {
                req.reasoning =
                    opt_field::<String>(raw, "reasoning_effort")?.map(shape::Reasoning::Effort);
            }
            "response_format" => {
                if let Some(raw) = present(raw) {
                    req.response_format = response_format(raw);
                    if req.response_format.is_none() {
                        note(&mut req.dropped, "response_format");
                    }
                }
            }
            _ => req.dropped.push(key.clone()),
        }
    }
    if n.is_some_and(|n| n > 1) {
        return Err(TranslateError::new(
            "n > 1 is not supported by the upstream serving this model",
        ));
    }
    req.max_output_tokens = max_completion_tokens.or(max_tokens);

    let Some(messages) = messages else {
        return Err(TranslateError::new(
            "Missing required parameter: 'messages'.",
        ));
    };
    let messages: Vec<OaMessageIn<'_>> = serde_json::from_str(messages.get())
        .map_err(|e| TranslateError::new(format!("Invalid 'messages': {e}")))?;
    for (i, m) in messages.into_iter().enumerate() {
        let content = content(m.content, "messages.content")?;
        match m.role.as_str() {
            "system" | "developer" => {
                let text = text(content, "messages.content", &mut req.dropped);
                if !text.is_empty() {
                    req.system.push(text);
                }
            }
            "user" => {
                let blocks = user_blocks(content, i, &mut req.dropped)?;
                push(&mut req.messages, Role::User, blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = text(content, "messages.content", &mut req.dropped);
                if !text.is_empty() {
                    blocks.push(Block::Text(text));
                }
                for call in m.tool_calls.unwrap_or_default() {
                    let function = call.function.unwrap_or_default();
                    blocks.push(Block::ToolCall {
                        id: call.id.unwrap_or_default(),
                        name: function.name.unwrap_or_default(),
                        arguments: Arguments::Text(function.arguments.unwrap_or_default()),
                    });
                }
                push(&mut req.messages, Role::Assistant, blocks);
            }
            "tool" => {
                let text = text(content, "messages.content", &mut req.dropped);
                let block = Block::ToolResult {
                    call_id: m.tool_call_id.unwrap_or_default(),
                    content: if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![Block::Text(text)]
                    },
                    is_error: None,
                };
                push(&mut req.messages, Role::User, vec![block]);
            }
            // The legacy `function` role has no call id to pair it with.
            "function" => note(&mut req.dropped, "messages.function"),
            other => {
                return Err(TranslateError::new(format!(
                    "messages[{i}]: unexpected role '{other}'"
                )));
            }
        }
    }

    for tool in tools.unwrap_or_default() {
        match (tool.kind.as_deref(), tool.function) {
            (None | Some("function"), Some(f)) => {
                let strict = f.strict.and_then(present).map(|raw| raw.get().trim());
                let strict = match strict {
                    None => None,
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    Some(_) => {
                        note(&mut req.dropped, "tools.function.strict");
                        None
                    }
                };
                req.tools.push(shape::Tool {
                    name: f.name,
                    description: f.description,
                    parameters: f.parameters.and_then(present),
                    strict,
                });
            }
            (kind, _) => note(&mut req.dropped, &format!("tools.{}", kind.unwrap_or("?"))),
        }
    }
    if let Some(choice) = tool_choice {
        req.tool_choice = match choice {
            OaToolChoiceIn::Mode(mode) => match mode.as_str() {
                "auto" => Some(shape::ToolChoice::Auto),
                "required" => Some(shape::ToolChoice::Required),
                "none" => Some(shape::ToolChoice::None),
                _ => None,
            },
            OaToolChoiceIn::Named {
                function: Some(OaNameIn { name }),
            } => Some(shape::ToolChoice::Named(name)),
            OaToolChoiceIn::Named { function: None } => None,
        };
        if req.tool_choice.is_none() {
            // An unreadable choice leaves every tool setting to the upstream's defaults.
            note(&mut req.dropped, "tool_choice");
            req.parallel_tool_calls = None;
        }
    }
    Ok(req)
}

/// A user message's blocks: non-empty texts and images, in order.
fn user_blocks<'a>(
    content: Option<Content>,
    i: usize,
    dropped: &mut Vec<String>,
) -> Result<Vec<Block<'a>>, TranslateError> {
    let mut blocks = Vec::new();
    match content {
        None => {}
        Some(Content::Text(text)) if text.is_empty() => {}
        Some(Content::Text(text)) => blocks.push(Block::Text(text)),
        Some(Content::Parts(parts)) => {
            for p in parts {
                match p.kind.as_str() {
                    "text" => {
                        let text = p.text.unwrap_or_default();
                        if !text.is_empty() {
                            blocks.push(Block::Text(text));
                        }
                    }
                    "image_url" => {
                        let url = match p.image_url {
                            Some(OaImageUrlIn::Url(url) | OaImageUrlIn::Object { url }) => url,
                            None => {
                                return Err(TranslateError::new(format!(
                                    "messages[{i}]: image_url part without a url"
                                )));
                            }
                        };
                        blocks.push(Block::Image(shape::Image::Url(url)));
                    }
                    other => note(dropped, &format!("messages.content.{other}")),
                }
            }
        }
    }
    Ok(blocks)
}

/// Appends a message unless it has nothing in it (an empty user string, say).
fn push<'a>(messages: &mut Vec<Message<'a>>, role: Role, content: Vec<Block<'a>>) {
    if !content.is_empty() {
        messages.push(Message { role, content });
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct OaCompletionIn<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default, borrow)]
    choices: Option<Vec<OaChoiceIn<'a>>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OaChoiceIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    message: Option<OaResponseMessageIn<'a>>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct OaResponseMessageIn<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<OaToolCallIn>>,
}

/// A `finish_reason` as a stop reason (`stop`, `function_call` and words added later: the turn
/// ended).
pub fn stop_reason(finish_reason: &str) -> shape::StopReason {
    match finish_reason {
        "length" => shape::StopReason::MaxTokens,
        "tool_calls" => shape::StopReason::ToolUse,
        "content_filter" => shape::StopReason::Refusal,
        _ => shape::StopReason::EndTurn,
    }
}

/// A chat upstream's completion: its first choice (reasoning — DeepSeek's `reasoning_content` or
/// OpenRouter's `reasoning` — then text, or the refusal when there is no text, then tool calls)
/// and its usage. `None` for a body that is not a completion with a first choice, or whose tool
/// arguments are not a JSON object (the chat API promises one; a client cannot run the call).
pub fn response(body: &[u8]) -> Option<shape::Response> {
    let resp: OaCompletionIn<'_> = serde_json::from_slice(body).ok()?;
    let metering = resp.usage.and_then(Usage::read).and_then(|u| u.metering());
    let mut choices = resp.choices.unwrap_or_default();
    let first = choices.iter().position(|c| c.index.unwrap_or(0) == 0)?;
    let choice = choices.swap_remove(first);
    let mut content = Vec::new();
    if let Some(msg) = choice.message {
        let reasoning = msg
            .reasoning_content
            .filter(|s| !s.is_empty())
            .or(msg.reasoning.filter(|s| !s.is_empty()));
        if let Some(text) = reasoning {
            content.push(Block::Thinking {
                text,
                signature: None,
            });
        }
        let mut ignored = Vec::new();
        let mut answer = text(
            self::content(msg.content, "content").ok()?,
            "content",
            &mut ignored,
        );
        if answer.is_empty() {
            answer = msg.refusal.unwrap_or_default();
        }
        if !answer.is_empty() {
            content.push(Block::Text(answer));
        }
        for (k, call) in msg.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let function = call.function.unwrap_or_default();
            let arguments = function.arguments.unwrap_or_default();
            tool_input(Some(&arguments), "upstream tool call").ok()?;
            content.push(Block::ToolCall {
                id: call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("toolu_{k}")),
                name: function.name.unwrap_or_default(),
                arguments: Arguments::Text(arguments),
            });
        }
    }
    Some(shape::Response {
        id: resp.id.unwrap_or_default(),
        model: resp.model.unwrap_or_default(),
        content,
        stop: stop_reason(choice.finish_reason.as_deref().unwrap_or("stop")),
        stop_sequence: None,
        metering,
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A chat upstream's refusal.
pub fn error(status: u16, body: &[u8]) -> shape::UpstreamError {
    shape::UpstreamError {
        status,
        message: error_body_message(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// A chunk's id and model.
#[derive(Deserialize, Default)]
struct ChunkNames {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct OaToolDeltaIn<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<OaFunctionDeltaIn<'a>>,
}

#[derive(Deserialize)]
struct OaFunctionDeltaIn<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    Tool,
}

/// A tool call seen in the stream and the block it became.
struct ToolSlot {
    /// The call's `index` in the chunks, when they gave one.
    chat_index: Option<u64>,
    id: String,
    block: usize,
}

/// Chat upstream chunks → shape events.
///
/// Blocks are numbered as they open: reasoning (`reasoning_content`, or OpenRouter's
/// `reasoning`) is a thinking block, content and refusals a text block, each tool call its own
/// block; a change of kind closes the open block. Arguments for a call whose block was already
/// closed (interleaved parallel calls) still go to that call's block, where SDK accumulators
/// look for them. A call that arrives without an `id` gets `toolu_<message id>_<n>`; one with
/// neither `id` nor `index` continues the latest call (seen from some compatible upstreams).
/// Only the first choice is read. Usage replaces the last one (each chat usage is complete);
/// the provider's charge is kept from whichever usage last carried one.
pub struct Stream {
    message_id: String,
    started: bool,
    done: bool,
    next_block: usize,
    open: Option<(Kind, usize)>,
    tools: Vec<ToolSlot>,
    usage: Option<billing::Usage>,
    reasoning_tokens: Option<u64>,
    reported_cost_nano: Option<u64>,
}

impl Stream {
    /// `message_id` names the calls that arrive without an id.
    pub fn new(message_id: &str) -> Stream {
        Stream {
            message_id: message_id.to_string(),
            started: false,
            done: false,
            next_block: 0,
            open: None,
            tools: Vec::new(),
            usage: None,
            reasoning_tokens: None,
            reported_cost_nano: None,
        }
    }

    /// The counts so far, in billing terms.
    pub fn usage(&self) -> Option<billing::Usage> {
        self.usage
    }

    /// The provider's own charge, when a usage carried one (even one whose counts were not
    /// believable).
    pub fn reported_cost_nano(&self) -> Option<u64> {
        self.reported_cost_nano
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((_, index)) = self.open.take() {
            out.push(Event::BlockStop { index });
        }
    }

    fn open(&mut self, kind: Kind, block: BlockStart, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        out.push(Event::BlockStart { index, block });
        self.open = Some((kind, index));
        index
    }

    /// Text or thinking, in the open block of that kind or a new one.
    fn delta(&mut self, kind: Kind, text: &str, out: &mut Vec<Event>) {
        let index = match self.open {
            Some((k, index)) if k == kind => index,
            _ => {
                let block = if kind == Kind::Thinking {
                    BlockStart::Thinking
                } else {
                    BlockStart::Text
                };
                self.open(kind, block, out)
            }
        };
        let delta = if kind == Kind::Thinking {
            Delta::Thinking(text.to_string())
        } else {
            Delta::Text(text.to_string())
        };
        out.push(Event::Delta { index, delta });
    }

    /// One tool-call fragment; returns whether it carried anything (a new call or arguments).
    fn tool_call(&mut self, call: &OaToolDeltaIn<'_>, out: &mut Vec<Event>) -> bool {
        let id = non_empty(&call.id);
        let function = call.function.as_ref();
        let existing = match (id, call.index) {
            (Some(id), _) => self.tools.iter().position(|t| t.id == id),
            (None, Some(i)) => self.tools.iter().rposition(|t| t.chat_index == Some(i)),
            (None, None) => self.tools.len().checked_sub(1),
        };
        let mut carried = false;
        let slot = match existing {
            Some(slot) => slot,
            None => {
                let id = id
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("toolu_{}_{}", self.message_id, self.tools.len()));
                let name = function
                    .and_then(|f| f.name.as_deref())
                    .unwrap_or("")
                    .to_string();
                let block = self.open(
                    Kind::Tool,
                    BlockStart::ToolCall {
                        id: id.clone(),
                        name,
                    },
                    out,
                );
                self.tools.push(ToolSlot {
                    chat_index: call.index,
                    id,
                    block,
                });
                carried = true;
                self.tools.len() - 1
            }
        };
        if let Some(arguments) = function.and_then(|f| non_empty(&f.arguments)) {
            out.push(Event::Delta {
                index: self.tools[slot].block,
                delta: Delta::ToolArguments(arguments.to_string()),
            });
            carried = true;
        }
        carried
    }
}

impl StreamDecode for Stream {
    /// Reads one event's data (a chunk's JSON, or `[DONE]`); the event name is not consulted (an
    /// error is an `error` object in the data).
    fn event(&mut self, _name: Option<&[u8]>, data: &[u8], out: &mut Vec<Event>) -> StreamNote {
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            if !self.done {
                self.done = true;
                self.close(out);
                out.push(Event::End);
            }
            return StreamNote::Done;
        }
        // Only an object is a chunk (serde would also read one from an array, its first element
        // taken for `error`).
        let chunk = (data.first() == Some(&b'{'))
            .then(|| serde_json::from_slice::<WireChunk<'_>>(data).ok())
            .flatten();
        let Some(chunk) = chunk else {
            // Not a chunk (a comment's stray data, a keep-alive): nothing to show.
            return StreamNote::Nothing;
        };
        if let Some(u) = chunk.usage.and_then(Usage::read) {
            if let Some(usage) = u.billing() {
                self.usage = Some(usage);
                self.reasoning_tokens = u.reasoning_tokens;
            }
            if u.reported_cost_nano.is_some() {
                self.reported_cost_nano = u.reported_cost_nano;
            }
            if let Some(usage) = self.usage {
                out.push(Event::Metering(shape::Metering {
                    usage,
                    reasoning_tokens: self.reasoning_tokens,
                    reported_cost_nano: self.reported_cost_nano,
                }));
            }
        }
        if let Some(error) = chunk.error.and_then(present) {
            return StreamNote::Error(error_object_message(error));
        }
        if self.done {
            return StreamNote::Nothing;
        }
        if !self.started {
            self.started = true;
            // Read apart from the chunk, once: an id or model of another type, or not UTF-8,
            // must not cost the chunk its content.
            let names = serde_json::from_slice::<ChunkNames>(data).unwrap_or_default();
            out.push(Event::Start {
                id: names.id.unwrap_or_default(),
                model: names.model.unwrap_or_default(),
            });
        }
        let mut note = StreamNote::Nothing;
        for choice in chunk.choices.unwrap_or_default() {
            if !choice.is_first() {
                continue;
            }
            if let Some(delta) = &choice.delta {
                if let Some(reasoning) =
                    non_empty(&delta.reasoning_content).or(non_empty(&delta.reasoning))
                {
                    self.delta(Kind::Thinking, reasoning, out);
                    note = StreamNote::Content;
                }
                if let Some(text) = non_empty(&delta.content).or(non_empty(&delta.refusal)) {
                    self.delta(Kind::Text, text, out);
                    note = StreamNote::Content;
                }
                // Fragments of an unreadable shape carry nothing this decoder can pass on.
                let calls = delta
                    .tool_calls
                    .and_then(|raw| serde_json::from_str::<Vec<OaToolDeltaIn<'_>>>(raw.get()).ok());
                for call in calls.iter().flatten() {
                    if self.tool_call(call, out) {
                        note = StreamNote::Content;
                    }
                }
            }
            if let Some(reason) = choice.finish_reason() {
                out.push(Event::Stop {
                    reason: stop_reason(&reason),
                    stop_sequence: None,
                });
                note = StreamNote::Content;
            }
        }
        note
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::shape::{Image, Reasoning, ResponseFormat, ToolChoice};

    #[test]
    fn request_reads_every_field_into_the_shape() {
        let body = br#"{"model":"gpt-x","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Look"},{"type":"text","text":""},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
                {"type":"image_url","image_url":"https://x/y.png"},
                {"type":"input_audio","input_audio":{}}]},
            {"role":"developer","content":[{"type":"text","text":"Use metric."}]},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": 1}"}},
                {"function":{"name":"g"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"42"},
            {"role":"tool","tool_call_id":"call_2","content":""},
            {"role":"function","name":"old","content":"x"},
            {"role":"user","content":""}],
          "tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object","z":1,"a":2},"strict":true}},
                   {"type":"function","function":{"name":"g","parameters":null}},
                   {"type":"web_search"}],
          "tool_choice":{"type":"function","function":{"name":"f"}},"parallel_tool_calls":false,
          "max_tokens":10,"max_completion_tokens":20,"temperature":0.70,"top_p":1e0,"stop":"END",
          "stream":true,"stream_options":{"include_usage":true},"reasoning_effort":"high","user":"u1",
          "response_format":{"type":"json_schema","json_schema":{"name":"out","schema":{"b":1,"a":2},"strict":true}},
          "seed":7,"n":1}"#;
        let req = request(body).unwrap();
        assert_eq!(req.model, "gpt-x");
        assert_eq!(req.system, ["Be brief.", "Use metric."]);
        assert_eq!(req.messages.len(), 4, "empty user turn skipped");
        let m = &req.messages[0];
        assert_eq!(m.role, Role::User);
        assert!(matches!(&m.content[..], [
            Block::Text(t),
            Block::Image(Image::Url(a)),
            Block::Image(Image::Url(b)),
        ] if t == "Look" && a == "data:image/png;base64,AAAA" && b == "https://x/y.png"));
        let m = &req.messages[1];
        assert_eq!(m.role, Role::Assistant);
        assert!(matches!(&m.content[..], [
            Block::ToolCall { id, name, arguments: Arguments::Text(args) },
            Block::ToolCall { id: id2, name: name2, arguments: Arguments::Text(args2) },
        ] if id == "call_1" && name == "f" && args == "{\"a\": 1}"
            && id2.is_empty() && name2 == "g" && args2.is_empty()));
        assert!(
            matches!(&req.messages[2].content[..], [Block::ToolResult { call_id, content, is_error: None }]
            if call_id == "call_1" && matches!(&content[..], [Block::Text(t)] if t == "42"))
        );
        assert_eq!(req.messages[2].role, Role::User);
        assert!(
            matches!(&req.messages[3].content[..], [Block::ToolResult { call_id, content, .. }]
            if call_id == "call_2" && content.is_empty())
        );

        assert_eq!(req.tools.len(), 2);
        assert_eq!(req.tools[0].name, "f");
        assert_eq!(req.tools[0].description.as_deref(), Some("d"));
        assert_eq!(
            req.tools[0].parameters.map(RawValue::get),
            Some(r#"{"type":"object","z":1,"a":2}"#),
            "the schema's bytes, key order kept"
        );
        assert_eq!(req.tools[0].strict, Some(true));
        assert!(req.tools[1].parameters.is_none());
        assert_eq!(req.tool_choice, Some(ToolChoice::Named("f".into())));
        assert_eq!(req.parallel_tool_calls, Some(false));
        assert_eq!(req.max_output_tokens, Some(20));
        assert_eq!(req.temperature.map(RawValue::get), Some("0.70"));
        assert_eq!(req.top_p.map(RawValue::get), Some("1e0"));
        assert_eq!(req.stop, ["END"]);
        assert!(req.stream == Some(true) && req.include_usage);
        assert_eq!(req.reasoning, Some(Reasoning::Effort("high".into())));
        assert_eq!(req.user.as_deref(), Some("u1"));
        assert!(
            matches!(&req.response_format, Some(ResponseFormat::JsonSchema { name, schema, strict: Some(true), .. })
            if name == "out" && schema.get() == r#"{"b":1,"a":2}"#)
        );
        for d in [
            "seed",
            "messages.content.input_audio",
            "messages.function",
            "tools.web_search",
        ] {
            assert!(
                req.dropped.iter().any(|x| x == d),
                "{d} in {:?}",
                req.dropped
            );
        }
        assert!(
            !req.dropped
                .iter()
                .any(|x| x == "n" || x == "response_format")
        );
    }

    #[test]
    fn request_refusals_and_unreadable_tool_choice() {
        for (body, message) in [
            (
                &br#"{"n":2,"messages":[]}"#[..],
                "n > 1 is not supported by the upstream serving this model",
            ),
            (
                br#"{"model":"m"}"#,
                "Missing required parameter: 'messages'.",
            ),
            (
                br#"{"messages":[{"role":"wizard"}]}"#,
                "messages[0]: unexpected role 'wizard'",
            ),
            (
                br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0]: image_url part without a url",
            ),
            (
                br#"{"messages":[{"role":"user","content":5}]}"#,
                "Invalid 'messages.content': expected a string or an array of content parts",
            ),
        ] {
            assert_eq!(request(body).unwrap_err().message, message);
        }
        assert!(request(br#"{"stream":"yes","messages":[]}"#).is_err());

        // A choice that is not understood leaves the parallel setting to the upstream too.
        let req = request(br#"{"messages":[],"tool_choice":"banana","parallel_tool_calls":false}"#)
            .unwrap();
        assert_eq!(req.tool_choice, None);
        assert_eq!(req.parallel_tool_calls, None);
        assert!(req.dropped.iter().any(|d| d == "tool_choice"));
        // A strict flag that is not a boolean is dropped, not refused.
        let req = request(
            br#"{"messages":[],"tools":[{"type":"function","function":{"name":"f","strict":"yes"}}]}"#,
        )
        .unwrap();
        assert_eq!(req.tools[0].strict, None);
        assert!(req.dropped.iter().any(|d| d == "tools.function.strict"));
    }

    // ---- Responses, streams and errors, from recorded samples ----

    use crate::protocol::shape::{BlockStart, Delta, Event, Metering, StopReason, StreamDecode};
    use keyplane_testkit::samples;

    #[test]
    fn response_from_samples() {
        let r = response(samples::bytes("openai-chat-completion.json")).unwrap();
        assert_eq!(r.id, "chatcmpl-D8Z5f52zQqikDBEKQMQoYcWMcWPeU");
        assert_eq!(r.model, "gpt-4.1-nano-2025-04-14");
        assert!(
            matches!(&r.content[..], [Block::Text(t)] if t.starts_with("**Holiday Name:** Galaxy Day"))
        );
        assert_eq!(r.stop, StopReason::EndTurn);
        let m = r.metering.unwrap();
        assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (16, 363));
        assert_eq!(m.reasoning_tokens, Some(0));

        let r = response(samples::bytes("deepseek-chat-completion.json")).unwrap();
        assert_eq!(r.stop, StopReason::MaxTokens);
        assert_eq!(r.metering.unwrap().usage.input_tokens, 13);

        // OpenRouter: `reasoning` is thinking (unsigned), and the reported charge is kept.
        let r = response(samples::bytes("openrouter-usage-cost.json")).unwrap();
        assert!(
            matches!(&r.content[..], [Block::Thinking { text, signature: None }, Block::Text(_)]
            if text.starts_with("**Exploring Mars Overview**"))
        );
        assert_eq!(r.metering.unwrap().reported_cost_nano, Some(4_358_250));
    }

    #[test]
    fn response_edges() {
        // A call without an id is numbered; a refusal stands in for missing text.
        let r = response(br#"{"id":"x","choices":[{"index":0,"finish_reason":"tool_calls","message":{"content":null,"refusal":"no",
            "tool_calls":[{"function":{"name":"f","arguments":""}}]}}]}"#).unwrap();
        assert!(
            matches!(&r.content[..], [Block::Text(t), Block::ToolCall { id, name, .. }]
            if t == "no" && id == "toolu_0" && name == "f")
        );
        assert_eq!(r.stop, StopReason::ToolUse);
        assert!(r.metering.is_none());
        // Only the choice with index 0 is read.
        let r = response(br#"{"choices":[{"index":1,"message":{"content":"b"}},{"index":0,"message":{"content":"a"}}]}"#).unwrap();
        assert!(matches!(&r.content[..], [Block::Text(t)] if t == "a"));
        for bad in [
            &b"<html>"[..],
            br#"{"choices":[]}"#,
            br#"{"choices":[{"index":2}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"arguments":"[1]"}}]}}]}"#,
            br#"{"choices":[{"message":{"tool_calls":[{"id":"c","function":{"arguments":"{\"a\":"}}]}}]}"#,
        ] {
            assert!(response(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Every event of a recorded stream through the decoder: (notes, events).
    fn decode_sample(name: &str) -> (Vec<StreamNote>, Vec<Event>) {
        let mut chunks = Vec::new();
        crate::sse::Splitter::default()
            .push(bytes::Bytes::from_static(samples::bytes(name)), &mut chunks);
        let mut stream = Stream::new("msg_t");
        let mut notes = Vec::new();
        let mut events = Vec::new();
        for chunk in &chunks {
            let ev = crate::sse::parse(chunk);
            if let Some(data) = ev.data.as_deref() {
                notes.push(stream.event(ev.name, data, &mut events));
            }
        }
        (notes, events)
    }

    #[test]
    fn tool_call_stream_from_sample() {
        let (notes, events) = decode_sample("openai-tool-call-stream.sse");
        assert_eq!(notes[0], StreamNote::Content, "a new call commits");
        assert_eq!(notes.last(), Some(&StreamNote::Done));
        let start = Event::Start {
            id: "chatcmpl-Dx0XpqH8w09uBXwq1zFGYdETjtnEl".into(),
            model: "gpt-4o-mini-2024-07-18".into(),
        };
        let args = |s: &str| Event::Delta {
            index: 0,
            delta: Delta::ToolArguments(s.into()),
        };
        assert_eq!(
            events,
            [
                start,
                Event::BlockStart {
                    index: 0,
                    block: BlockStart::ToolCall {
                        id: "call_ZR5UUuTt3pf61kjwAJIYdVMj".into(),
                        name: "get_capital".into()
                    }
                },
                args("{\""),
                args("country"),
                args("\":\""),
                args("UK"),
                args("\"}"),
                Event::Stop {
                    reason: StopReason::ToolUse,
                    stop_sequence: None
                },
                Event::Metering(Metering {
                    usage: billing::Usage {
                        input_tokens: 53,
                        output_tokens: 15,
                        ..Default::default()
                    },
                    reasoning_tokens: Some(0),
                    reported_cost_nano: None,
                }),
                Event::BlockStop { index: 0 },
                Event::End,
            ]
        );
    }

    #[test]
    fn reasoning_stream_and_midstream_error_from_samples() {
        // DeepSeek: reasoning_content is block 0 (thinking), content block 1 (text).
        let (_, events) = decode_sample("deepseek-stream.trimmed.sse");
        let starts: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::BlockStart { index, block } => Some((*index, block.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, BlockStart::Thinking), (1, BlockStart::Text)]);
        let metering = events.iter().rev().find_map(|e| match e {
            Event::Metering(m) => Some(*m),
            _ => None,
        });
        let metering = metering.unwrap();
        assert_eq!(metering.usage.output_tokens, 212);
        assert_eq!(metering.reasoning_tokens, Some(198));

        // OpenRouter: comments are nothing, reasoning commits, the error chunk's message and
        // usage are read.
        let (notes, events) = decode_sample("openrouter-stream-midstream-error.sse");
        assert!(notes.contains(&StreamNote::Content));
        assert!(notes.contains(&StreamNote::Error("Token limit reached".into())));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Metering(m) if m.usage.input_tokens == 43))
        );
    }

    #[test]
    fn stream_edges() {
        let mut s = Stream::new("msg_9");
        let mut events = Vec::new();
        // Not a chunk: nothing, not even a start.
        assert_eq!(s.event(None, b"[1,2]", &mut events), StreamNote::Nothing);
        assert_eq!(
            s.event(None, b": keep-alive", &mut events),
            StreamNote::Nothing
        );
        assert!(events.is_empty());
        // Calls without ids are named after the message; fragments with neither id nor index
        // continue the latest call, and arguments for a closed call go to its block.
        let chunk = br#"{"id":7,"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"a"}},{"index":1,"function":{"name":"b"}},{"index":0,"function":{"arguments":"{}"}},{"function":{"arguments":"[]"}}]}}]}"#;
        assert_eq!(s.event(None, chunk, &mut events), StreamNote::Content);
        assert_eq!(
            &events[..6],
            [
                Event::Start {
                    id: String::new(),
                    model: String::new()
                },
                Event::BlockStart {
                    index: 0,
                    block: BlockStart::ToolCall {
                        id: "toolu_msg_9_0".into(),
                        name: "a".into()
                    }
                },
                Event::BlockStop { index: 0 },
                Event::BlockStart {
                    index: 1,
                    block: BlockStart::ToolCall {
                        id: "toolu_msg_9_1".into(),
                        name: "b".into()
                    }
                },
                Event::Delta {
                    index: 0,
                    delta: Delta::ToolArguments("{}".into())
                },
                Event::Delta {
                    index: 1,
                    delta: Delta::ToolArguments("[]".into())
                },
            ]
        );
        // After [DONE], content is nothing; a second [DONE] writes no second end.
        events.clear();
        assert_eq!(s.event(None, b"[DONE]", &mut events), StreamNote::Done);
        assert_eq!(s.event(None, b"[DONE]", &mut events), StreamNote::Done);
        assert_eq!(events, [Event::BlockStop { index: 1 }, Event::End]);
        assert_eq!(
            s.event(
                None,
                br#"{"choices":[{"delta":{"content":"x"}}]}"#,
                &mut events
            ),
            StreamNote::Nothing
        );
    }

    #[test]
    fn errors_from_samples() {
        let e = error(400, samples::bytes("openai-error.json"));
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .unwrap()
                .starts_with("Unsupported parameter: 'max_tokens'")
        );
        assert_eq!(
            error(429, br#"{"error":"slow down"}"#).message.as_deref(),
            Some("slow down")
        );
        assert_eq!(
            error(502, br#"{"message":"bad gateway"}"#)
                .message
                .as_deref(),
            Some("bad gateway")
        );
        assert_eq!(error(502, b"<html>").message, None);
        assert_eq!(error(500, br#"{"error":{"message":""}}"#).message, None);
    }
}
