//! The internal shape → Anthropic Messages bytes: an upstream's request, and a client's message,
//! stream events and errors.
//!
//! # Rules Anthropic imposes, applied here
//!
//! - `max_tokens` is required: [`DEFAULT_MAX_TOKENS`] when the request set no limit.
//! - `system` is one string, the instructions joined with `"\n"` (Anthropic's own OpenAI
//!   compatibility layer does the same; a chat client has no `cache_control` that blocks would
//!   keep).
//! - Turns alternate: consecutive same-role messages are merged and empty ones skipped; in a user
//!   turn the `tool_result` blocks come first.
//! - `tool_choice` and parallel-call settings are sent only with tools (Anthropic refuses them
//!   alone). Parallel calls off without a choice is `{type:"auto",
//!   disable_parallel_tool_use:true}`; it is dropped with choice `none`.
//! - Whitespace-only stop sequences are dropped (Anthropic refuses them); a `temperature` above 1
//!   is sent as 1, Anthropic's maximum.
//! - A reasoning effort becomes a thinking budget (low/medium/high, xhigh as high: 1024, 4096,
//!   16384) only when the budget is below `max_tokens` and nothing Anthropic forbids with
//!   thinking is set (`temperature` ≠ 1, `top_p` < 0.95, a forced tool); `minimal`/`none` is no
//!   thinking. Otherwise the effort is dropped and reported.
//! - Tool arguments given as text must be a JSON object (`""` is `{}`); they are sent as the
//!   text was, whitespace included.

use crate::protocol::shape::{
    self, Arguments, Block, BlockStart, Delta, Encoded, Event, Image, Reasoning, Role, StopReason,
    StreamEncode, ToolChoice, TranslateError, Usage,
};
use crate::protocol::wire::{EmptyObject, note, put_event, put_json, to_body, tool_input};
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// `max_tokens` sent when the request set no limit (LiteLLM's default; Anthropic requires the
/// field).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---------------------------------------------------------------------------------------------
// Content blocks
// ---------------------------------------------------------------------------------------------

/// Any content block written, request or response.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum BlockOut<'a> {
    Thinking {
        thinking: Cow<'a, str>,
        signature: Cow<'a, str>,
    },
    RedactedThinking {
        data: Cow<'a, str>,
    },
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: ImageSourceOut<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Cow<'a, RawValue>,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        content: ToolResultOut<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ImageSourceOut<'a> {
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url {
        url: Cow<'a, str>,
    },
}

/// A `tool_result`'s content: a string when it is only text, else blocks (text and images).
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ToolResultOut<'a> {
    Text(String),
    Blocks(Vec<BlockOut<'a>>),
}

/// An image as an Anthropic source: a `data:` URL becomes base64, any other URL stays a URL.
fn image_source(image: &Image) -> Result<ImageSourceOut<'_>, TranslateError> {
    let url = match image {
        Image::Base64 { media_type, data } => {
            return Ok(ImageSourceOut::Base64 {
                media_type: Cow::Borrowed(media_type),
                data: Cow::Borrowed(data),
            });
        }
        Image::Url(url) => url,
    };
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(ImageSourceOut::Url {
            url: Cow::Borrowed(url),
        });
    };
    let parsed = rest.split_once(',').and_then(|(meta, data)| {
        let media_type = meta.strip_suffix(";base64")?;
        let media_type = media_type.split(';').next().unwrap_or(media_type);
        Some((media_type, data))
    });
    match parsed {
        Some((media_type, data)) if !media_type.is_empty() => Ok(ImageSourceOut::Base64 {
            media_type: Cow::Borrowed(media_type),
            data: Cow::Borrowed(data),
        }),
        _ => Err(TranslateError::new(
            "Invalid 'image_url': a data URL must be of the form data:<media type>;base64,<data>",
        )),
    }
}

/// A call's arguments as an Anthropic `input` object.
fn input<'a>(arguments: &'a Arguments<'_>, id: &str) -> Result<Cow<'a, RawValue>, TranslateError> {
    match arguments {
        Arguments::Raw(raw) => Ok(Cow::Borrowed(*raw)),
        Arguments::Text(text) => {
            tool_input(Some(text), &format!("tool call '{id}'")).map(Cow::Owned)
        }
    }
}

/// A request block as Anthropic writes it; `None` for what Anthropic cannot take back (noted).
fn request_block<'a>(
    block: &'a Block<'_>,
    dropped: &mut Vec<String>,
) -> Result<Option<BlockOut<'a>>, TranslateError> {
    Ok(Some(match block {
        // Anthropic refuses empty text blocks.
        Block::Text(text) if text.is_empty() => return Ok(None),
        Block::Text(text) => BlockOut::Text {
            text: Cow::Borrowed(text),
        },
        Block::Image(image) => BlockOut::Image {
            source: image_source(image)?,
        },
        Block::ToolCall {
            id,
            name,
            arguments,
        } => BlockOut::ToolUse {
            id: Cow::Borrowed(id),
            name: Cow::Borrowed(name),
            input: input(arguments, id)?,
        },
        Block::ToolResult {
            call_id,
            content,
            is_error,
        } => BlockOut::ToolResult {
            tool_use_id: Cow::Borrowed(call_id),
            content: tool_result(content, dropped)?,
            is_error: *is_error,
        },
        Block::Thinking {
            text,
            signature: Some(signature),
        } => BlockOut::Thinking {
            thinking: Cow::Borrowed(text),
            signature: Cow::Borrowed(signature),
        },
        // Anthropic refuses thinking it did not sign.
        Block::Thinking {
            signature: None, ..
        } => {
            note(dropped, "messages.content.thinking");
            return Ok(None);
        }
        Block::RedactedThinking { data } => BlockOut::RedactedThinking {
            data: Cow::Borrowed(data),
        },
    }))
}

/// A tool result's content: its texts joined with `"\n"` when that is all it holds.
fn tool_result<'a>(
    content: &'a [Block<'_>],
    dropped: &mut Vec<String>,
) -> Result<ToolResultOut<'a>, TranslateError> {
    if content.iter().all(|b| matches!(b, Block::Text(_))) {
        let texts: Vec<&str> = content
            .iter()
            .filter_map(|b| match b {
                Block::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        return Ok(ToolResultOut::Text(texts.join("\n")));
    }
    let mut blocks = Vec::new();
    for b in content {
        match b {
            Block::Text(_) | Block::Image(_) => blocks.extend(request_block(b, dropped)?),
            _ => note(dropped, "messages.content.tool_result.content"),
        }
    }
    Ok(ToolResultOut::Blocks(blocks))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct RequestOut<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<TurnOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<NumberOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoiceOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingOut>,
}

#[derive(Serialize)]
struct TurnOut<'a> {
    role: &'static str,
    content: Vec<BlockOut<'a>>,
}

/// A number copied as the client wrote it, or one computed.
#[derive(Serialize)]
#[serde(untagged)]
enum NumberOut<'a> {
    Raw(&'a RawValue),
    Float(f64),
}

#[derive(Serialize)]
struct ToolOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: SchemaOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum SchemaOut<'a> {
    Raw(&'a RawValue),
    /// `{"type":"object","properties":{}}` for a function without parameters.
    Empty {
        #[serde(rename = "type")]
        kind: &'static str,
        properties: EmptyObject,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToolChoiceOut<'a> {
    Auto {
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    #[serde(rename = "none")]
    NoTool {},
}

#[derive(Serialize)]
struct MetadataOut<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct ThinkingOut {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget_tokens: Option<u64>,
}

/// The thinking budget for a reasoning effort; `None` for no thinking.
fn budget_for_effort(effort: &str) -> Option<u64> {
    match effort {
        "low" => Some(1024),
        "medium" => Some(4096),
        "high" | "xhigh" => Some(16384),
        _ => None,
    }
}

/// A raw JSON number's value; `None` for anything else.
fn number(raw: &RawValue) -> Option<f64> {
    serde_json::from_str::<f64>(raw.get()).ok()
}

/// Appends blocks to the conversation, merging them into the last turn if it has the same role.
/// Empty turns are skipped.
fn push_turn<'a>(turns: &mut Vec<TurnOut<'a>>, role: &'static str, blocks: Vec<BlockOut<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(TurnOut {
            role,
            content: blocks,
        }),
    }
}

/// An Anthropic Messages request for `upstream_model` (see the module doc for the rules).
pub fn request(req: &shape::Request<'_>, upstream_model: &str) -> Result<Encoded, TranslateError> {
    let mut dropped = req.dropped.clone();
    let max_tokens = req.max_output_tokens.unwrap_or(DEFAULT_MAX_TOKENS);

    let mut system: Vec<&str> = req.system.iter().map(String::as_str).collect();
    let mut turns: Vec<TurnOut<'_>> = Vec::new();
    for m in &req.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            // Messages has no system turn: its text joins the system prompt.
            Role::System => {
                system.extend(m.content.iter().filter_map(|b| match b {
                    Block::Text(t) if !t.is_empty() => Some(t.as_str()),
                    _ => None,
                }));
                continue;
            }
        };
        let mut blocks = Vec::with_capacity(m.content.len());
        for b in &m.content {
            blocks.extend(request_block(b, &mut dropped)?);
        }
        push_turn(&mut turns, role, blocks);
    }
    // Anthropic wants a user turn's tool results before anything else in it.
    for turn in turns.iter_mut().filter(|t| t.role == "user") {
        turn.content
            .sort_by_key(|b| !matches!(b, BlockOut::ToolResult { .. }));
    }

    let stop: Vec<&str> = req
        .stop
        .iter()
        .map(String::as_str)
        .filter(|s| !s.trim().is_empty())
        .collect();
    if stop.len() != req.stop.len() {
        note(&mut dropped, "stop");
    }

    let mut tools = Vec::with_capacity(req.tools.len());
    for tool in &req.tools {
        if tool.strict.is_some() {
            note(&mut dropped, "tools.function.strict");
        }
        tools.push(ToolOut {
            name: &tool.name,
            description: tool.description.as_deref(),
            input_schema: match tool.parameters {
                Some(raw) => SchemaOut::Raw(raw),
                None => SchemaOut::Empty {
                    kind: "object",
                    properties: EmptyObject {},
                },
            },
        });
    }
    let disable_parallel = (req.parallel_tool_calls == Some(false)).then_some(true);
    let mut tool_choice = None;
    if !tools.is_empty() {
        tool_choice = match &req.tool_choice {
            None => disable_parallel.map(|d| ToolChoiceOut::Auto {
                disable_parallel_tool_use: Some(d),
            }),
            Some(ToolChoice::Auto) => Some(ToolChoiceOut::Auto {
                disable_parallel_tool_use: disable_parallel,
            }),
            Some(ToolChoice::Required) => Some(ToolChoiceOut::Any {
                disable_parallel_tool_use: disable_parallel,
            }),
            Some(ToolChoice::None) => Some(ToolChoiceOut::NoTool {}),
            Some(ToolChoice::Named(name)) => Some(ToolChoiceOut::Tool {
                name,
                disable_parallel_tool_use: disable_parallel,
            }),
        };
    } else if req.tool_choice.is_some() || req.parallel_tool_calls.is_some() {
        note(&mut dropped, "tool_choice");
    }

    let temperature = req.temperature.map(|raw| (number(raw), raw));
    let top_p = req.top_p.map(number);
    let thinking = match &req.reasoning {
        None => None,
        Some(Reasoning::Effort(effort)) => {
            let forced_tool = matches!(
                tool_choice,
                Some(ToolChoiceOut::Any { .. } | ToolChoiceOut::Tool { .. })
            );
            // Anthropic refuses thinking with a temperature other than 1, top_p below 0.95 or a
            // forced tool; the client's explicit sampling settings win.
            let compatible = temperature.is_none_or(|(t, _)| t.is_some_and(|t| t >= 1.0))
                && top_p.is_none_or(|p| p.is_some_and(|p| p >= 0.95))
                && !forced_tool;
            match budget_for_effort(effort) {
                Some(budget) if budget < max_tokens && compatible => Some(ThinkingOut {
                    kind: "enabled",
                    budget_tokens: Some(budget),
                }),
                None if matches!(effort.as_str(), "none" | "minimal") => None,
                _ => {
                    note(&mut dropped, "reasoning_effort");
                    None
                }
            }
        }
        Some(Reasoning::Budget(budget)) => Some(ThinkingOut {
            kind: "enabled",
            budget_tokens: Some(*budget),
        }),
        Some(Reasoning::Disabled) => Some(ThinkingOut {
            kind: "disabled",
            budget_tokens: None,
        }),
    };
    if req.response_format.is_some() {
        note(&mut dropped, "response_format");
    }

    let out = RequestOut {
        model: upstream_model,
        max_tokens,
        system: (!system.is_empty()).then(|| system.join("\n")),
        messages: turns,
        stop_sequences: (!stop.is_empty()).then_some(stop),
        temperature: temperature.map(|(t, raw)| match t {
            Some(t) if t > 1.0 => NumberOut::Float(1.0),
            _ => NumberOut::Raw(raw),
        }),
        top_p: req.top_p,
        stream: req.stream,
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        metadata: req.user.as_deref().map(|user_id| MetadataOut { user_id }),
        thinking,
    };
    Ok(Encoded {
        body: to_body(&out)?,
        dropped,
    })
}

// ---------------------------------------------------------------------------------------------
// Stop reasons and usage
// ---------------------------------------------------------------------------------------------

/// A stop reason as Anthropic names it.
pub fn stop_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::ContextWindow => "model_context_window_exceeded",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::Refusal => "refusal",
        StopReason::Pause => "pause_turn",
    }
}

/// The reason a client gets: `tool_use` when the answer made tool calls but the upstream said the
/// turn simply ended (some chat upstreams do), since Anthropic clients only run tools on that
/// reason.
fn client_stop_reason(reason: StopReason, made_tool_calls: bool) -> &'static str {
    if reason == StopReason::EndTurn && made_tool_calls {
        "tool_use"
    } else {
        stop_reason(reason)
    }
}

/// Anthropic's four usage buckets.
#[derive(Serialize)]
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            input_tokens: u.input_tokens,
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
            output_tokens: u.output_tokens,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct MessageOut<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

/// A call's arguments in an answer. Decoders refuse an answer whose arguments are not an object;
/// should one reach here, `{}` keeps the message valid.
fn response_input<'a>(arguments: &'a Arguments<'_>) -> Cow<'a, RawValue> {
    input(arguments, "")
        .unwrap_or_else(|_| Cow::Owned(RawValue::from_string("{}".into()).unwrap_or_default()))
}

/// An Anthropic message for a client that asked for `client_model`. The id is the upstream's,
/// prefixed `msg_` as Anthropic's are; thinking without a signature gets an empty one.
pub fn response(resp: &shape::Response, client_model: &str) -> Vec<u8> {
    let mut content = Vec::with_capacity(resp.content.len());
    let mut made_tool_calls = false;
    for block in &resp.content {
        content.push(match block {
            Block::Thinking { text, signature } => BlockOut::Thinking {
                thinking: Cow::Borrowed(text),
                signature: Cow::Borrowed(signature.as_deref().unwrap_or("")),
            },
            Block::RedactedThinking { data } => BlockOut::RedactedThinking {
                data: Cow::Borrowed(data),
            },
            Block::Text(text) => BlockOut::Text {
                text: Cow::Borrowed(text),
            },
            Block::ToolCall {
                id,
                name,
                arguments,
            } => {
                made_tool_calls = true;
                BlockOut::ToolUse {
                    id: Cow::Borrowed(id),
                    name: Cow::Borrowed(name),
                    input: response_input(arguments),
                }
            }
            // Not parts of an answer.
            Block::Image(_) | Block::ToolResult { .. } => continue,
        });
    }
    let out = MessageOut {
        id: format!("msg_{}", resp.id),
        kind: "message",
        role: "assistant",
        model: client_model,
        content,
        stop_reason: client_stop_reason(resp.stop, made_tool_calls),
        stop_sequence: resp.stop_sequence.as_deref(),
        usage: resp.metering.map(|m| m.usage).unwrap_or_default().into(),
    };
    let mut body = Vec::new();
    put_json(&mut body, &out);
    body
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// `{"type":"error","error":{"type":kind,"message":message}}`.
pub fn error_object(kind: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: Inner<'a>,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        message: &'a str,
    }
    let mut out = Vec::new();
    put_json(
        &mut out,
        &Body {
            kind: "error",
            error: Inner { kind, message },
        },
    );
    out
}

/// An upstream's refusal as an Anthropic error, with the upstream's status and its type for that
/// status ([`super::error_type`]).
pub fn error(err: &shape::UpstreamError) -> (u16, Vec<u8>) {
    (
        err.status,
        error_object(super::error_type(err.status), &err.message_or_generic()),
    )
}

/// The `event: error` that ends a stream that failed after content was sent.
pub fn stream_error_event(message: &str) -> Vec<u8> {
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(&error_object("api_error", message));
    out.extend_from_slice(b"\n\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct MessageStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageStartBody<'a>,
}

#[derive(Serialize)]
struct MessageStartBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct BlockStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    content_block: BlockStartBody<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockStartBody<'a> {
    Text {
        text: &'static str,
    },
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    RedactedThinking {
        data: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: EmptyObject,
    },
}

#[derive(Serialize)]
struct BlockDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: BlockDeltaBody<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum BlockDeltaBody<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockStopOut {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
}

#[derive(Serialize)]
struct MessageDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: MessageDeltaBody<'a>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct MessageDeltaBody<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Shape events → Anthropic SSE events for an Anthropic client.
///
/// `message_start` goes out with the first event (input tokens are those known by then, often
/// 0); blocks keep the indexes the decoder gave them, and a block still open when another starts
/// or the stream ends is closed. `message_delta` (the stop reason and the full usage, all four
/// buckets) goes out only at [`Event::End`] or [`StreamEncode::finish`], so usage that arrives
/// after the stop reason (OpenAI's `choices: []` chunk, OpenRouter's trailing chunk) is
/// included; then `message_stop`. The message id is the gateway's, given at construction, so a
/// client sees one id per request whatever the upstream calls it.
pub struct Stream {
    model: String,
    message_id: String,
    started: bool,
    finished: bool,
    open: Option<usize>,
    made_tool_calls: bool,
    stop: Option<(StopReason, Option<String>)>,
    usage: Option<Usage>,
}

impl Stream {
    pub fn new(client_model: &str, message_id: &str) -> Stream {
        Stream {
            model: client_model.to_string(),
            message_id: message_id.to_string(),
            started: false,
            finished: false,
            open: None,
            made_tool_calls: false,
            stop: None,
            usage: None,
        }
    }

    /// Whether the stream's end has been written.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let input = self.usage.unwrap_or_default();
        put_event(
            out,
            "message_start",
            &MessageStartOut {
                kind: "message_start",
                message: MessageStartBody {
                    id: &self.message_id,
                    kind: "message",
                    role: "assistant",
                    model: &self.model,
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    usage: Usage {
                        output_tokens: 0,
                        ..input
                    }
                    .into(),
                },
            },
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(index) = self.open.take() {
            put_event(
                out,
                "content_block_stop",
                &BlockStopOut {
                    kind: "content_block_stop",
                    index,
                },
            );
        }
    }
}

impl StreamEncode for Stream {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        match event {
            Event::Metering(m) => {
                self.usage = Some(m.usage);
                return;
            }
            Event::Stop {
                reason,
                stop_sequence,
            } => {
                self.stop = Some((*reason, stop_sequence.clone()));
                return;
            }
            Event::End => return self.finish(out),
            _ => {}
        }
        self.start(out);
        match event {
            Event::BlockStart { index, block } => {
                self.close(out);
                let body = match block {
                    BlockStart::Text => BlockStartBody::Text { text: "" },
                    BlockStart::Thinking => BlockStartBody::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    BlockStart::RedactedThinking { data } => {
                        BlockStartBody::RedactedThinking { data }
                    }
                    BlockStart::ToolCall { id, name } => {
                        self.made_tool_calls = true;
                        BlockStartBody::ToolUse {
                            id,
                            name,
                            input: EmptyObject {},
                        }
                    }
                };
                put_event(
                    out,
                    "content_block_start",
                    &BlockStartOut {
                        kind: "content_block_start",
                        index: *index,
                        content_block: body,
                    },
                );
                self.open = Some(*index);
            }
            // A delta may name a block already closed (a tool call's arguments interleaved with
            // another call's): it goes to that index, where SDK accumulators look for it.
            Event::Delta { index, delta } => {
                let delta = match delta {
                    Delta::Text(text) => BlockDeltaBody::Text { text },
                    Delta::Thinking(thinking) => BlockDeltaBody::Thinking { thinking },
                    Delta::Signature(signature) => BlockDeltaBody::Signature { signature },
                    Delta::ToolArguments(partial_json) => {
                        BlockDeltaBody::InputJson { partial_json }
                    }
                };
                put_event(
                    out,
                    "content_block_delta",
                    &BlockDeltaOut {
                        kind: "content_block_delta",
                        index: *index,
                        delta,
                    },
                );
            }
            Event::BlockStop { index } => {
                if self.open == Some(*index) {
                    self.close(out);
                }
            }
            Event::Start { .. } | Event::Metering(_) | Event::Stop { .. } | Event::End => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.start(out);
        self.close(out);
        let (reason, stop_sequence) = match &self.stop {
            Some((reason, sequence)) => (*reason, sequence.as_deref()),
            None => (StopReason::EndTurn, None),
        };
        put_event(
            out,
            "message_delta",
            &MessageDeltaOut {
                kind: "message_delta",
                delta: MessageDeltaBody {
                    stop_reason: client_stop_reason(reason, self.made_tool_calls),
                    stop_sequence,
                },
                usage: self.usage.unwrap_or_default().into(),
            },
        );
        put_event(
            out,
            "message_stop",
            &TypeOnly {
                kind: "message_stop",
            },
        );
        self.finished = true;
    }

    fn error_event(&self, message: &str) -> Vec<u8> {
        stream_error_event(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::shape::{Message, Tool};
    use serde_json::{Value, json};

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    fn encode(req: &shape::Request<'_>) -> (Value, Vec<String>) {
        let out = request(req, "claude-up").unwrap();
        (serde_json::from_slice(&out.body).unwrap(), out.dropped)
    }

    #[test]
    fn blocks_turns_and_thinking_from_a_constructed_shape() {
        let input = raw(r#"{"z":1e2,"a":[1, 2]}"#);
        let req = shape::Request {
            system: vec!["A".into(), "B".into()],
            messages: vec![
                Message {
                    role: Role::System,
                    content: vec![Block::Text("C".into())],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Block::Thinking {
                            text: "hmm".into(),
                            signature: Some("sig".into()),
                        },
                        Block::Thinking {
                            text: "unsigned".into(),
                            signature: None,
                        },
                        Block::RedactedThinking {
                            data: "opaque".into(),
                        },
                        Block::ToolCall {
                            id: "t1".into(),
                            name: "f".into(),
                            arguments: Arguments::Raw(input),
                        },
                    ],
                },
                Message {
                    role: Role::User,
                    content: vec![Block::Text("see".into()), Block::Text(String::new())],
                },
                Message {
                    role: Role::User,
                    content: vec![Block::ToolResult {
                        call_id: "t1".into(),
                        content: vec![
                            Block::Text("chart".into()),
                            Block::Image(Image::Base64 {
                                media_type: "image/png".into(),
                                data: "AAAA".into(),
                            }),
                        ],
                        is_error: Some(true),
                    }],
                },
            ],
            dropped: vec!["seed".into()],
            ..Default::default()
        };
        let out = request(&req, "claude-up").unwrap();
        let text = String::from_utf8(out.body.clone()).unwrap();
        assert!(
            text.contains(r#""input":{"z":1e2,"a":[1, 2]}"#),
            "a raw input is copied byte for byte: {text}"
        );
        let (v, dropped) = encode(&req);
        assert_eq!(v["model"], "claude-up");
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(
            v["system"], "A\nB\nC",
            "a system turn joins the system prompt"
        );
        assert_eq!(
            v["messages"],
            json!([
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"z": 100.0, "a": [1, 2]}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "is_error": true, "content": [
                        {"type": "text", "text": "chart"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                    ]},
                    {"type": "text", "text": "see"}
                ]}
            ])
        );
        assert_eq!(dropped, ["seed", "messages.content.thinking"]);
    }

    #[test]
    fn tools_choice_sampling_and_reasoning_rules() {
        let schema = raw(r#"{"type":"object","properties":{"q":{"type":"string"}}}"#);
        let temperature = raw("0.2");
        let mut req = shape::Request {
            tools: vec![
                Tool {
                    name: "search".into(),
                    description: Some("Search".into()),
                    parameters: Some(schema),
                    strict: Some(true),
                },
                Tool {
                    name: "now".into(),
                    description: None,
                    parameters: None,
                    strict: None,
                },
            ],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(false),
            stop: vec!["\n".into(), "END".into()],
            reasoning: Some(Reasoning::Effort("low".into())),
            temperature: Some(temperature),
            user: Some("u".into()),
            stream: Some(true),
            ..Default::default()
        };
        let (v, dropped) = encode(&req);
        assert_eq!(
            v["tools"],
            json!([
                {"name": "search", "description": "Search", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(v["stop_sequences"], json!(["END"]));
        assert_eq!(v["temperature"], 0.2);
        assert_eq!(v["metadata"], json!({"user_id": "u"}));
        assert_eq!(v["stream"], true);
        assert!(v.get("thinking").is_none(), "forced tool and temperature");
        for d in ["tools.function.strict", "stop", "reasoning_effort"] {
            assert!(dropped.iter().any(|x| x == d), "{d} in {dropped:?}");
        }

        req.tool_choice = None;
        req.temperature = None;
        let (v, _) = encode(&req);
        assert_eq!(
            v["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 1024})
        );

        req.reasoning = Some(Reasoning::Budget(2000));
        req.tools.clear();
        let (v, dropped) = encode(&req);
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 2000})
        );
        assert!(v.get("tool_choice").is_none() && v.get("tools").is_none());
        assert!(
            dropped.iter().any(|d| d == "tool_choice"),
            "parallel setting without tools"
        );
        req.reasoning = Some(Reasoning::Disabled);
        req.stream = None;
        let (v, _) = encode(&req);
        assert_eq!(v["thinking"], json!({"type": "disabled"}));
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn bad_arguments_and_data_urls_are_refused() {
        for args in ["{\"a\":", "[1]", "\"s\""] {
            let req = shape::Request {
                messages: vec![Message {
                    role: Role::Assistant,
                    content: vec![Block::ToolCall {
                        id: "c9".into(),
                        name: "f".into(),
                        arguments: Arguments::Text(args.into()),
                    }],
                }],
                ..Default::default()
            };
            let err = request(&req, "m").unwrap_err().message;
            assert!(err.starts_with("tool call 'c9': arguments"), "{err}");
        }
        let req = shape::Request {
            messages: vec![Message {
                role: Role::User,
                content: vec![Block::Image(Image::Url("data:image/svg+xml,<svg/>".into()))],
            }],
            ..Default::default()
        };
        assert!(request(&req, "m").unwrap_err().message.contains("data URL"));
    }

    // ---- Responses, streams and errors, from constructed shapes ----

    use crate::protocol::shape::Metering;

    fn usage(input: u64, output: u64, read: u64, write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
        }
    }

    #[test]
    fn response_from_a_constructed_shape() {
        let resp = shape::Response {
            id: "abc".into(),
            model: "upstream-model".into(),
            content: vec![
                Block::Thinking {
                    text: "hmm".into(),
                    signature: None,
                },
                Block::Text("hi".into()),
                Block::ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: Arguments::Text(" {\"a\": 1} ".into()),
                },
                Block::ToolCall {
                    id: "c2".into(),
                    name: "g".into(),
                    arguments: Arguments::Text(String::new()),
                },
            ],
            stop: StopReason::EndTurn,
            stop_sequence: None,
            metering: Some(Metering {
                usage: usage(5, 7, 3, 2),
                ..Metering::default()
            }),
        };
        let v: Value = serde_json::from_slice(&response(&resp, "client-model")).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "msg_abc", "type": "message", "role": "assistant", "model": "client-model",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": ""},
                    {"type": "text", "text": "hi"},
                    {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
                    {"type": "tool_use", "id": "c2", "name": "g", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 5, "cache_creation_input_tokens": 2,
                          "cache_read_input_tokens": 3, "output_tokens": 7}
            })
        );
        // Without calls the upstream's reason stands; no metering is zero usage.
        let resp = shape::Response {
            content: vec![Block::Text("x".into())],
            stop: StopReason::ContextWindow,
            stop_sequence: Some("END".into()),
            metering: None,
            ..resp
        };
        let v: Value = serde_json::from_slice(&response(&resp, "m")).unwrap();
        assert_eq!(v["stop_reason"], "model_context_window_exceeded");
        assert_eq!(v["stop_sequence"], "END");
        assert_eq!(v["usage"]["output_tokens"], 0);
    }

    /// (event name, data) of every event written.
    fn read_sse(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).unwrap();
        text.split_terminator("\n\n")
            .map(|ev| {
                let (name, data) = ev.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], name.as_str(), "each event named by its type");
                (name, data)
            })
            .collect()
    }

    #[test]
    fn stream_from_constructed_events() {
        let mut s = Stream::new("client-model", "msg_1");
        let mut out = Vec::new();
        let tool = |index, id: &str| Event::BlockStart {
            index,
            block: BlockStart::ToolCall {
                id: id.into(),
                name: "f".into(),
            },
        };
        for event in [
            Event::Metering(Metering {
                usage: usage(9, 1, 4, 0),
                ..Metering::default()
            }),
            Event::Start {
                id: "upstream-id".into(),
                model: "upstream-model".into(),
            },
            Event::BlockStart {
                index: 0,
                block: BlockStart::Thinking,
            },
            Event::Delta {
                index: 0,
                delta: Delta::Thinking("t".into()),
            },
            Event::Delta {
                index: 0,
                delta: Delta::Signature("sig".into()),
            },
            // A block starting while another is open closes it.
            tool(1, "c1"),
            Event::BlockStop { index: 1 },
            Event::BlockStop { index: 1 },
            tool(2, "c2"),
            // Arguments for a closed call still go to its block.
            Event::Delta {
                index: 1,
                delta: Delta::ToolArguments("{}".into()),
            },
            Event::Stop {
                reason: StopReason::EndTurn,
                stop_sequence: None,
            },
            // Usage after the stop reason is the one the client gets.
            Event::Metering(Metering {
                usage: usage(9, 30, 4, 1),
                ..Metering::default()
            }),
            Event::End,
            Event::Delta {
                index: 2,
                delta: Delta::Text("late".into()),
            },
        ] {
            s.event(&event, &mut out);
        }
        s.finish(&mut out);
        let events = read_sse(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &events[0].1["message"];
        assert_eq!(start["id"], "msg_1", "the gateway's id, not the upstream's");
        assert_eq!(start["model"], "client-model");
        assert_eq!(
            start["usage"],
            json!({"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 0})
        );
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "signature_delta", "signature": "sig"})
        );
        assert_eq!(events[4].1["index"], 0);
        assert_eq!(
            events[5].1["content_block"],
            json!({"type": "tool_use", "id": "c1", "name": "f", "input": {}})
        );
        assert_eq!(events[8].1["index"], 1);
        assert_eq!(
            events[8].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{}"})
        );
        assert_eq!(events[9].1["index"], 2);
        let delta = &events[10].1;
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "tool_use", "stop_sequence": null})
        );
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 9, "cache_creation_input_tokens": 1, "cache_read_input_tokens": 4, "output_tokens": 30})
        );

        // An upstream that ends without its marker: finish writes the start and the end once.
        let mut s = Stream::new("m", "msg_2");
        let mut out = Vec::new();
        s.finish(&mut out);
        s.finish(&mut out);
        let events = read_sse(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        assert_eq!(events[1].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn errors_keep_the_status_and_name_its_type() {
        for (status, message, kind, text) in [
            (
                402,
                None,
                "billing_error",
                "The upstream provider returned an error (HTTP 402).",
            ),
            (529, Some("busy"), "overloaded_error", "busy"),
            (504, Some("slow"), "timeout_error", "slow"),
            (418, Some("teapot"), "invalid_request_error", "teapot"),
        ] {
            let (s, body) = error(&shape::UpstreamError {
                status,
                message: message.map(String::from),
            });
            assert_eq!(s, status);
            assert_eq!(
                String::from_utf8(body).unwrap(),
                format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{text}"}}}}"#)
            );
        }
        let event = Stream::new("m", "i").error_event("cut");
        assert_eq!(
            String::from_utf8(event).unwrap(),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"cut\"}}\n\n"
        );
    }
}
