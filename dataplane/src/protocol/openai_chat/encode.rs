//! The internal shape → OpenAI Chat Completions bytes: an upstream's request, and a client's
//! completion, stream chunks and errors.
//!
//! # Requests
//!
//! - **Model families by id** ([`family`]): OpenAI's reasoning models (o1, o3, o4, gpt-5) get
//!   `max_completion_tokens` instead of `max_tokens` and no `temperature`/`top_p` (they refuse
//!   both: `samples/openai-error.json`); classic chat models (gpt-4o, gpt-4.1, gpt-3.5) get no
//!   `reasoning_effort`. Other providers get the request as is. A model's own limits (its
//!   `max_tokens` ceiling, a tool-call id format some upstreams insist on) are not adapted.
//! - **Text:** a turn made only of text is one string, its blocks joined with `"\n"` (several
//!   OpenAI-compatible upstreams refuse content arrays); a turn with an image is content parts.
//!   The system prompt is joined the same way; a system turn inside the conversation stays
//!   where it was.
//! - **Tool results** are `tool` messages, sent before the rest of their user turn, their text
//!   joined with `"\n"` (images and `is_error` have no place there and are named as dropped).
//! - **Thinking** in the history is dropped (OpenAI takes no reasoning back); a thinking budget
//!   becomes a `reasoning_effort`.
//! - `tool_choice` and `parallel_tool_calls` are sent only with tools (OpenAI refuses them
//!   alone); a streamed request always asks for the usage chunk, which billing needs.
//!
//! # Streams
//!
//! A role chunk opens the stream; text, reasoning and tool-call deltas follow, each tool call
//! numbered by OpenAI's own count of calls; the finish chunk goes out at [`Event::Stop`], and the
//! usage chunk (only when the client asked for `include_usage`) and `[DONE]` at [`Event::End`],
//! when the usage is final. A tool call whose arguments never streamed gets `"{}"` at its stop:
//! OpenAI clients parse the concatenated arguments, and `""` is not JSON.

use crate::protocol::shape::{
    Arguments, Block, BlockStart, Delta, Encoded, Event, Image, Message, Reasoning, Request,
    Response, Role, StopReason, StreamEncode, ToolChoice, TranslateError, UpstreamError, Usage,
};
use crate::protocol::wire::{compact_json, note, put_data, put_json, to_body, unix_now};
use serde::Serialize;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

/// An OpenAI `finish_reason`.
pub fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextWindow => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::Refusal => "content_filter",
        StopReason::EndTurn | StopReason::StopSequence | StopReason::Pause => "stop",
    }
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

impl From<Usage> for UsageOut {
    /// OpenAI's `prompt_tokens` counts all input, cached or not.
    fn from(u: Usage) -> Self {
        let prompt = u
            .input_tokens
            .saturating_add(u.cache_read_tokens)
            .saturating_add(u.cache_write_tokens);
        UsageOut {
            prompt_tokens: prompt,
            completion_tokens: u.output_tokens,
            total_tokens: prompt.saturating_add(u.output_tokens),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cache_read_tokens,
            },
        }
    }
}

#[derive(Serialize)]
struct ToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'a>,
}

#[derive(Serialize)]
struct FunctionOut<'a> {
    name: &'a str,
    arguments: String,
}

/// A tool call's `arguments`: compact JSON text, `{}` when there were none.
fn arguments_text(arguments: &Arguments<'_>) -> String {
    match arguments {
        Arguments::Raw(raw) => compact_json(raw.get()),
        Arguments::Text(text) if text.is_empty() => "{}".to_string(),
        Arguments::Text(text) => text.clone(),
    }
}

fn tool_call<'a>(id: &'a str, name: &'a str, arguments: &Arguments<'_>) -> ToolCallOut<'a> {
    ToolCallOut {
        id,
        kind: "function",
        function: FunctionOut {
            name,
            arguments: arguments_text(arguments),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Default)]
struct RequestOut<'a> {
    model: &'a str,
    messages: Vec<MessageOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptionsOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: ContentOut<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> MessageOut<'a> {
    fn text(role: &'static str, text: String) -> Self {
        MessageOut {
            role,
            content: ContentOut::Text(text),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'a> {
    Null,
    Text(String),
    Parts(Vec<PartOut<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum PartOut<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageUrlOut },
}

#[derive(Serialize)]
struct ImageUrlOut {
    url: String,
}

#[derive(Serialize)]
struct StreamOptionsOut {
    include_usage: bool,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDefOut<'a>,
}

#[derive(Serialize)]
struct FunctionDefOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoiceOut<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NameOut<'a>,
    },
}

#[derive(Serialize)]
struct NameOut<'a> {
    name: &'a str,
}

/// What an upstream model id says about the request parameters it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// OpenAI's reasoning models (o1, o3, o4-mini, gpt-5…): `max_completion_tokens` only, no
    /// `temperature`/`top_p`.
    Reasoning,
    /// OpenAI's non-reasoning chat models (gpt-4o, gpt-4.1, gpt-3.5…): no `reasoning_effort`.
    Classic,
    /// Anything else (DeepSeek, Groq, Qwen, …): sent as translated.
    Other,
}

/// Classifies by the id's last path segment, so `openai/o3-mini` (OpenRouter) and `o3-mini`
/// (OpenAI) agree; `gpt-5-chat` is OpenAI's non-reasoning GPT-5 variant.
pub fn family(upstream_model: &str) -> Family {
    let name = upstream_model.rsplit('/').next().unwrap_or(upstream_model);
    let name = name.to_ascii_lowercase();
    let o_series = ["o1", "o3", "o4"].iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    });
    if name.starts_with("gpt-5-chat") {
        Family::Classic
    } else if o_series || name.starts_with("gpt-5") {
        Family::Reasoning
    } else if name.starts_with("gpt-4")
        || name.starts_with("gpt-3.5")
        || name.starts_with("chatgpt-")
    {
        Family::Classic
    } else {
        Family::Other
    }
}

/// `reasoning_effort` for a thinking budget in tokens.
fn effort_for_budget(budget: u64) -> &'static str {
    if budget < 4096 {
        "low"
    } else if budget < 16384 {
        "medium"
    } else {
        "high"
    }
}

fn image_url(image: &Image) -> String {
    match image {
        Image::Url(url) => url.clone(),
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
    }
}

/// The text of blocks, joined with `"\n"`; other blocks are skipped.
fn joined(blocks: &[Block<'_>]) -> String {
    let texts: Vec<&str> = blocks
        .iter()
        .filter_map(|b| match b {
            Block::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    texts.join("\n")
}

/// An OpenAI Chat Completions request for `upstream_model`.
pub fn request(req: &Request<'_>, upstream_model: &str) -> Result<Encoded, TranslateError> {
    let mut dropped = req.dropped.clone();
    let family = family(upstream_model);
    let mut out = RequestOut {
        model: upstream_model,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: (!req.stop.is_empty()).then_some(req.stop.as_slice()),
        stream: req.stream,
        user: req.user.as_deref(),
        ..RequestOut::default()
    };

    let system = req.system.join("\n");
    if !system.is_empty() {
        out.messages.push(MessageOut::text("system", system));
    }
    for m in &req.messages {
        match m.role {
            Role::System => out
                .messages
                .push(MessageOut::text("system", joined(&m.content))),
            Role::User => user(m, &mut out.messages, &mut dropped),
            Role::Assistant => assistant(m, &mut out.messages, &mut dropped),
        }
    }

    if !req.tools.is_empty() {
        out.tools = Some(
            req.tools
                .iter()
                .map(|t| ToolOut {
                    kind: "function",
                    function: FunctionDefOut {
                        name: &t.name,
                        description: t.description.as_deref(),
                        parameters: t.parameters,
                        strict: t.strict,
                    },
                })
                .collect(),
        );
        out.tool_choice = req.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => ToolChoiceOut::Mode("auto"),
            ToolChoice::Required => ToolChoiceOut::Mode("required"),
            ToolChoice::None => ToolChoiceOut::Mode("none"),
            ToolChoice::Named(name) => ToolChoiceOut::Function {
                kind: "function",
                function: NameOut { name },
            },
        });
        out.parallel_tool_calls = req.parallel_tool_calls;
    } else if req.tool_choice.is_some() {
        // OpenAI refuses a tool_choice without tools.
        note(&mut dropped, "tool_choice");
    }

    out.reasoning_effort = match &req.reasoning {
        Some(Reasoning::Budget(budget)) => Some(effort_for_budget(*budget)),
        Some(Reasoning::Effort(effort)) => Some(effort.as_str()),
        Some(Reasoning::Disabled) | None => None,
    };
    match family {
        Family::Reasoning => {
            out.max_completion_tokens = req.max_output_tokens;
            for (name, value) in [
                ("temperature", &mut out.temperature),
                ("top_p", &mut out.top_p),
            ] {
                if value.take().is_some() {
                    note(&mut dropped, name);
                }
            }
        }
        Family::Classic => {
            out.max_tokens = req.max_output_tokens;
            if out.reasoning_effort.take().is_some() {
                note(&mut dropped, "thinking");
            }
        }
        Family::Other => out.max_tokens = req.max_output_tokens,
    }
    if req.stream == Some(true) {
        out.stream_options = Some(StreamOptionsOut {
            include_usage: true,
        });
    }
    Ok(Encoded {
        body: to_body(&out)?,
        dropped,
    })
}

/// A user turn: its tool results become `tool` messages first, then the rest one user message.
fn user<'a>(m: &'a Message<'_>, messages: &mut Vec<MessageOut<'a>>, dropped: &mut Vec<String>) {
    let mut parts = Vec::new();
    for b in &m.content {
        match b {
            Block::Text(text) => parts.push(PartOut::Text { text }),
            Block::Image(image) => parts.push(PartOut::ImageUrl {
                image_url: ImageUrlOut {
                    url: image_url(image),
                },
            }),
            Block::ToolResult {
                call_id,
                content,
                is_error,
            } => {
                if is_error.is_some() {
                    note(dropped, "messages.content.tool_result.is_error");
                }
                if content.iter().any(|b| !matches!(b, Block::Text(_))) {
                    note(dropped, "messages.content.tool_result.content.image");
                }
                messages.push(MessageOut {
                    role: "tool",
                    content: ContentOut::Text(joined(content)),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call_id),
                });
            }
            Block::ToolCall { .. } => note(dropped, "messages.content.tool_use"),
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {
                note(dropped, "messages.content.thinking");
            }
        }
    }
    if parts.is_empty() {
        return;
    }
    let content = if parts.iter().all(|p| matches!(p, PartOut::Text { .. })) {
        let texts: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                PartOut::Text { text } => Some(*text),
                PartOut::ImageUrl { .. } => None,
            })
            .collect();
        ContentOut::Text(texts.join("\n"))
    } else {
        ContentOut::Parts(parts)
    };
    messages.push(MessageOut {
        role: "user",
        content,
        tool_calls: Vec::new(),
        tool_call_id: None,
    });
}

/// An assistant turn: text joined into `content`, tool calls into `tool_calls`, thinking dropped.
fn assistant<'a>(
    m: &'a Message<'_>,
    messages: &mut Vec<MessageOut<'a>>,
    dropped: &mut Vec<String>,
) {
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for b in &m.content {
        match b {
            Block::Text(text) => texts.push(text.as_str()),
            Block::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(tool_call(id, name, arguments)),
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {
                note(dropped, "messages.content.thinking");
            }
            Block::Image(_) => note(dropped, "messages.content.image"),
            Block::ToolResult { .. } => note(dropped, "messages.content.tool_result"),
        }
    }
    let content = if !texts.is_empty() {
        ContentOut::Text(texts.join("\n"))
    } else if calls.is_empty() {
        ContentOut::Text(String::new())
    } else {
        ContentOut::Null
    };
    messages.push(MessageOut {
        role: "assistant",
        content,
        tool_calls: calls,
        tool_call_id: None,
    });
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChoiceOut<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: ResponseMessageOut<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct ResponseMessageOut<'a> {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
    refusal: Option<()>,
}

/// A completion for a client that asked for `client_model`. Text blocks are concatenated with
/// no separator (Anthropic splits one text into blocks around citations); thinking becomes
/// `reasoning_content`.
pub fn response(resp: &Response, client_model: &str) -> Vec<u8> {
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for b in &resp.content {
        match b {
            Block::Text(t) => text.get_or_insert_with(String::new).push_str(t),
            Block::Thinking { text: t, .. } => {
                reasoning.get_or_insert_with(String::new).push_str(t);
            }
            Block::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(tool_call(id, name, arguments)),
            Block::RedactedThinking { .. } | Block::Image(_) | Block::ToolResult { .. } => {}
        }
    }
    let out = CompletionOut {
        id: format!("chatcmpl-{}", resp.id),
        object: "chat.completion",
        created: unix_now(),
        model: client_model,
        choices: [ChoiceOut {
            index: 0,
            message: ResponseMessageOut {
                role: "assistant",
                content: text,
                reasoning_content: reasoning,
                tool_calls: calls,
                refusal: None,
            },
            logprobs: None,
            finish_reason: finish_reason(resp.stop),
        }],
        usage: resp.metering.map(|m| UsageOut::from(m.usage)),
    };
    let mut body = Vec::new();
    put_json(&mut body, &out);
    body
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An upstream's refusal as an OpenAI error (see [`super::upstream_error`]).
pub fn error(err: &UpstreamError) -> (u16, Vec<u8>) {
    super::upstream_error(err)
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoiceOut<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolDeltaOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolDeltaOut<'a> {
    index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDeltaOut<'a>,
}

#[derive(Serialize)]
struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// What a block index turned into.
enum Slot {
    /// Text, reasoning, or nothing to show.
    Other,
    Tool {
        /// The OpenAI tool-call index.
        k: u64,
        /// Whether any argument bytes were sent.
        sent_arguments: bool,
    },
}

/// Shape events → OpenAI chunks for an OpenAI client.
pub struct Stream {
    model: String,
    include_usage: bool,
    id: String,
    created: u64,
    role_sent: bool,
    finish_sent: bool,
    done: bool,
    blocks: Vec<(usize, Slot)>,
    tool_count: u64,
    finish_reason: Option<&'static str>,
    usage: Option<Usage>,
}

impl Stream {
    /// `include_usage`: the client asked for `stream_options.include_usage` (the `choices: []`
    /// usage chunk before `[DONE]`).
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        Stream {
            model: client_model.to_string(),
            include_usage,
            id: "chatcmpl-keyplane".to_string(),
            created: unix_now(),
            role_sent: false,
            finish_sent: false,
            done: false,
            blocks: Vec::new(),
            tool_count: 0,
            finish_reason: None,
            usage: None,
        }
    }

    fn chunk(&self, delta: DeltaOut<'_>, finish_reason: Option<&'static str>, out: &mut Vec<u8>) {
        put_data(
            out,
            &ChunkOut {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: &[ChunkChoiceOut {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason,
                }],
                usage: None,
            },
        );
    }

    fn ensure_role(&mut self, out: &mut Vec<u8>) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        self.chunk(
            DeltaOut {
                role: Some("assistant"),
                content: Some(""),
                ..DeltaOut::default()
            },
            None,
            out,
        );
    }

    fn send_finish(&mut self, out: &mut Vec<u8>) {
        if self.finish_sent {
            return;
        }
        self.ensure_role(out);
        self.finish_sent = true;
        self.chunk(
            DeltaOut::default(),
            Some(self.finish_reason.unwrap_or("stop")),
            out,
        );
    }

    /// The tool call a block index started, if it started one.
    fn tool(&mut self, index: usize) -> Option<(u64, &mut bool)> {
        match self.blocks.iter_mut().rev().find(|(i, _)| *i == index) {
            Some((_, Slot::Tool { k, sent_arguments })) => Some((*k, sent_arguments)),
            _ => None,
        }
    }

    fn arguments(&self, k: u64, arguments: &str, out: &mut Vec<u8>) {
        self.chunk(
            DeltaOut {
                tool_calls: Some([ToolDeltaOut {
                    index: k,
                    id: None,
                    kind: None,
                    function: FunctionDeltaOut {
                        name: None,
                        arguments,
                    },
                }]),
                ..DeltaOut::default()
            },
            None,
            out,
        );
    }
}

impl StreamEncode for Stream {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match event {
            Event::Start { id, .. } => {
                if !id.is_empty() {
                    self.id = format!("chatcmpl-{id}");
                }
                self.ensure_role(out);
            }
            Event::BlockStart { index, block } => {
                self.ensure_role(out);
                let BlockStart::ToolCall { id, name } = block else {
                    self.blocks.push((*index, Slot::Other));
                    return;
                };
                let k = self.tool_count;
                self.tool_count += 1;
                self.blocks.push((
                    *index,
                    Slot::Tool {
                        k,
                        sent_arguments: false,
                    },
                ));
                self.chunk(
                    DeltaOut {
                        tool_calls: Some([ToolDeltaOut {
                            index: k,
                            id: Some(id),
                            kind: Some("function"),
                            function: FunctionDeltaOut {
                                name: Some(name),
                                arguments: "",
                            },
                        }]),
                        ..DeltaOut::default()
                    },
                    None,
                    out,
                );
            }
            Event::Delta { index, delta } => match delta {
                Delta::Text(text) if !text.is_empty() => {
                    self.ensure_role(out);
                    self.chunk(
                        DeltaOut {
                            content: Some(text),
                            ..DeltaOut::default()
                        },
                        None,
                        out,
                    );
                }
                Delta::Thinking(thinking) if !thinking.is_empty() => {
                    self.ensure_role(out);
                    self.chunk(
                        DeltaOut {
                            reasoning_content: Some(thinking),
                            ..DeltaOut::default()
                        },
                        None,
                        out,
                    );
                }
                Delta::ToolArguments(arguments) if !arguments.is_empty() => {
                    // Arguments for a block that never started as a tool: nowhere to put them.
                    if let Some((k, sent)) = self.tool(*index) {
                        *sent = true;
                        self.arguments(k, arguments, out);
                    }
                }
                // Signatures, and empty pieces: nothing to show.
                _ => {}
            },
            Event::BlockStop { index } => {
                if let Some((k, sent)) = self.tool(*index)
                    && !*sent
                {
                    *sent = true;
                    self.arguments(k, "{}", out);
                }
            }
            Event::Stop { reason, .. } => {
                self.finish_reason = Some(finish_reason(*reason));
                self.send_finish(out);
            }
            Event::Metering(m) => self.usage = Some(m.usage),
            Event::End => self.finish(out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.send_finish(out);
        if self.include_usage {
            put_data(
                out,
                &ChunkOut {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: &[],
                    usage: Some(self.usage.unwrap_or_default().into()),
                },
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn error_event(&self, message: &str) -> Vec<u8> {
        super::stream_error_event(message).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::shape::{Metering, Tool};
    use serde_json::{Value, json};

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn request_from_a_shape() {
        let schema = raw(r#"{"type":"object","properties":{"z":{"maximum":1e2},"a":{}}}"#);
        let input = raw(r#"{ "city" : "SF", "n": 2.50 }"#);
        let temperature = raw("0.70");
        let req = Request {
            model: "claude-x".into(),
            system: vec!["Be brief.".into(), "Be kind.".into()],
            messages: vec![
                Message {
                    role: Role::User,
                    content: vec![
                        Block::Text("What is this?".into()),
                        Block::Image(Image::Base64 {
                            media_type: "image/png".into(),
                            data: "iVBO".into(),
                        }),
                    ],
                },
                Message {
                    role: Role::System,
                    content: vec![Block::Text("Note.".into())],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Block::Thinking {
                            text: "Hm.".into(),
                            signature: Some("sig".into()),
                        },
                        Block::ToolCall {
                            id: "toolu_1".into(),
                            name: "get_weather".into(),
                            arguments: Arguments::Raw(&input),
                        },
                    ],
                },
                Message {
                    role: Role::User,
                    content: vec![
                        Block::Text("Hurry.".into()),
                        Block::ToolResult {
                            call_id: "toolu_1".into(),
                            content: vec![Block::Text("68F".into()), Block::Text("dry".into())],
                            is_error: Some(true),
                        },
                    ],
                },
            ],
            tools: vec![Tool {
                name: "get_weather".into(),
                description: Some("Weather".into()),
                parameters: Some(&schema),
                strict: None,
            }],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(false),
            max_output_tokens: Some(100),
            temperature: Some(&temperature),
            stop: vec!["END".into()],
            stream: Some(true),
            reasoning: Some(Reasoning::Budget(16384)),
            user: Some("u1".into()),
            ..Request::default()
        };

        let other = request(&req, "deepseek-chat").unwrap();
        let body = String::from_utf8(other.body).unwrap();
        // Opaque JSON keeps its bytes: the schema as sent, the arguments compacted only.
        assert!(body.contains(
            r#""parameters":{"type":"object","properties":{"z":{"maximum":1e2},"a":{}}}"#
        ));
        assert!(body.contains(r#""temperature":0.70"#));
        let out: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(out["model"], "deepseek-chat");
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "Be brief.\nBe kind."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
                ]},
                {"role": "system", "content": "Note."},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {
                        "name": "get_weather", "arguments": "{\"city\":\"SF\",\"n\":2.50}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "68F\ndry"},
                {"role": "user", "content": "Hurry."}
            ])
        );
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stop"], json!(["END"]));
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
        assert_eq!(out["reasoning_effort"], "high");
        assert_eq!(out["user"], "u1");
        for name in [
            "messages.content.thinking",
            "messages.content.tool_result.is_error",
        ] {
            assert!(other.dropped.iter().any(|d| d == name), "{name}");
        }

        // Reasoning models: max_completion_tokens, no sampling parameters.
        let reasoning = request(&req, "openai/o3-mini").unwrap();
        let out = parse(&reasoning.body);
        assert_eq!(out["max_completion_tokens"], 100);
        assert!(out.get("max_tokens").is_none() && out.get("temperature").is_none());
        assert!(reasoning.dropped.iter().any(|d| d == "temperature"));
        // Classic chat models: no reasoning_effort.
        let classic = request(&req, "gpt-4o").unwrap();
        assert!(parse(&classic.body).get("reasoning_effort").is_none());
        assert!(classic.dropped.iter().any(|d| d == "thinking"));
    }

    #[test]
    fn request_without_tools_sends_no_tool_choice_and_keeps_an_explicit_stream_false() {
        let req = Request {
            messages: vec![Message {
                role: Role::Assistant,
                content: Vec::new(),
            }],
            tool_choice: Some(ToolChoice::Auto),
            parallel_tool_calls: Some(false),
            stream: Some(false),
            reasoning: Some(Reasoning::Disabled),
            ..Request::default()
        };
        let enc = request(&req, "m").unwrap();
        assert_eq!(
            String::from_utf8(enc.body).unwrap(),
            r#"{"model":"m","messages":[{"role":"assistant","content":""}],"stream":false}"#
        );
        assert_eq!(enc.dropped, ["tool_choice"]);
    }

    #[test]
    fn response_concatenates_text_and_answers_with_the_clients_model() {
        let resp = Response {
            id: "msg_1".into(),
            model: "claude".into(),
            content: vec![
                Block::Thinking {
                    text: "Hm.".into(),
                    signature: None,
                },
                Block::Text("Hel".into()),
                Block::RedactedThinking { data: "x".into() },
                Block::Text("lo".into()),
                Block::ToolCall {
                    id: "t".into(),
                    name: "f".into(),
                    arguments: Arguments::Text(String::new()),
                },
            ],
            stop: StopReason::ContextWindow,
            stop_sequence: None,
            metering: Some(Metering {
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 4,
                    cache_read_tokens: 3,
                    cache_write_tokens: 2,
                },
                ..Metering::default()
            }),
        };
        let out = parse(&response(&resp, "gpt-client"));
        assert_eq!(out["id"], "chatcmpl-msg_1");
        assert_eq!(out["model"], "gpt-client");
        let choice = &out["choices"][0];
        assert_eq!(choice["message"]["content"], "Hello");
        assert_eq!(choice["message"]["reasoning_content"], "Hm.");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{}"
        );
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 15, "completion_tokens": 4, "total_tokens": 19,
                "prompt_tokens_details": {"cached_tokens": 3}})
        );
        for (stop, finish) in [
            (StopReason::EndTurn, "stop"),
            (StopReason::StopSequence, "stop"),
            (StopReason::Pause, "stop"),
            (StopReason::MaxTokens, "length"),
            (StopReason::ToolUse, "tool_calls"),
            (StopReason::Refusal, "content_filter"),
        ] {
            assert_eq!(finish_reason(stop), finish);
        }
    }

    #[test]
    fn errors_keep_the_status_except_overloaded() {
        let err = |status, message: Option<&str>| {
            let (s, body) = error(&UpstreamError {
                status,
                message: message.map(str::to_string),
            });
            (s, parse(&body)["error"].clone())
        };
        let (s, e) = err(529, Some("Overloaded"));
        assert_eq!(
            (s, e["type"].as_str(), e["code"].as_str()),
            (503, Some("server_error"), None)
        );
        let (s, e) = err(404, Some("model: claude-9"));
        assert_eq!((s, e["code"].as_str()), (404, Some("model_not_found")));
        let (_, e) = err(404, Some("no such thing"));
        assert_eq!(e["code"], "not_found");
        let (s, e) = err(429, None);
        assert_eq!((s, e["code"].as_str()), (429, Some("rate_limit_exceeded")));
        assert_eq!(
            e["message"],
            "The upstream provider returned an error (HTTP 429)."
        );
        assert_eq!(e["param"], Value::Null);
        let (s, e) = err(400, Some("bad"));
        assert_eq!(
            (s, e["type"].as_str()),
            (400, Some("invalid_request_error"))
        );
    }

    /// The JSON chunks of an OpenAI stream, and whether it ended with `[DONE]`.
    fn read_chunks(out: &[u8]) -> (Vec<Value>, bool) {
        let text = std::str::from_utf8(out).unwrap();
        let mut values = Vec::new();
        let mut done = false;
        for event in text.split("\n\n").filter(|e| !e.is_empty()) {
            let data = event.strip_prefix("data: ").unwrap();
            assert!(!done, "nothing after [DONE]");
            if data == "[DONE]" {
                done = true;
            } else {
                values.push(serde_json::from_str(data).unwrap());
            }
        }
        (values, done)
    }

    #[test]
    fn stream_numbers_tool_calls_and_ends_at_end() {
        let mut enc = Stream::new("gpt-client", true);
        let mut out = Vec::new();
        let metering = |output| {
            Event::Metering(Metering {
                usage: Usage {
                    input_tokens: 7,
                    output_tokens: output,
                    cache_read_tokens: 1,
                    cache_write_tokens: 0,
                },
                ..Metering::default()
            })
        };
        for event in [
            Event::Start {
                id: "msg_9".into(),
                model: "claude".into(),
            },
            metering(1),
            Event::BlockStart {
                index: 0,
                block: BlockStart::Thinking,
            },
            Event::Delta {
                index: 0,
                delta: Delta::Thinking("Hm.".into()),
            },
            Event::Delta {
                index: 0,
                delta: Delta::Signature("sig".into()),
            },
            Event::BlockStop { index: 0 },
            Event::BlockStart {
                index: 1,
                block: BlockStart::ToolCall {
                    id: "a".into(),
                    name: "f".into(),
                },
            },
            Event::Delta {
                index: 1,
                delta: Delta::ToolArguments("{\"x\":1}".into()),
            },
            Event::BlockStop { index: 1 },
            Event::BlockStart {
                index: 2,
                block: BlockStart::Text,
            },
            Event::Delta {
                index: 2,
                delta: Delta::Text(String::new()),
            },
            Event::BlockStart {
                index: 3,
                block: BlockStart::ToolCall {
                    id: "b".into(),
                    name: "g".into(),
                },
            },
            Event::BlockStop { index: 3 },
            Event::Stop {
                reason: StopReason::ToolUse,
                stop_sequence: None,
            },
            metering(9),
            Event::End,
            Event::Delta {
                index: 2,
                delta: Delta::Text("after the end".into()),
            },
        ] {
            enc.event(&event, &mut out);
        }
        let mut again = Vec::new();
        enc.finish(&mut again);
        assert!(again.is_empty(), "finish after End writes nothing");

        let (chunks, done) = read_chunks(&out);
        assert!(done);
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == "chatcmpl-msg_9" && c["model"] == "gpt-client")
        );
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"]["reasoning_content"], "Hm.");
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .map(|t| &t[0])
            .collect();
        assert_eq!(
            calls,
            [
                &json!({"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}),
                &json!({"index": 0, "function": {"arguments": "{\"x\":1}"}}),
                &json!({"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}),
                &json!({"index": 1, "function": {"arguments": "{}"}}),
            ]
        );
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17,
                "prompt_tokens_details": {"cached_tokens": 1}})
        );
        assert_eq!(
            chunks.len(),
            8,
            "role, reasoning, four tool-call pieces, finish, usage"
        );
    }

    #[test]
    fn stream_finish_closes_without_usage_unless_asked() {
        let mut enc = Stream::new("m", false);
        let mut out = Vec::new();
        enc.event(
            &Event::Delta {
                index: 0,
                delta: Delta::Text("Hi".into()),
            },
            &mut out,
        );
        enc.finish(&mut out);
        let (chunks, done) = read_chunks(&out);
        assert!(done);
        assert_eq!(chunks.len(), 3, "role, text, finish: no usage chunk");
        assert_eq!(chunks[0]["id"], "chatcmpl-keyplane");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        let event = enc.error_event("boom");
        let (errors, _) = read_chunks(&event);
        assert_eq!(errors[0]["error"]["message"], "boom");
        assert_eq!(errors[0]["error"]["code"], "upstream_error");
    }
}
