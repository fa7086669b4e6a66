//! Responses bytes → the internal shape: a Responses client's request, and an upstream's
//! response object, stream events and errors when that upstream speaks the Responses API.
//!
//! Structure is read with typed serde structs; values the gateway does not interpret
//! (`temperature`, `top_p`, tool and response schemas) are borrowed raw from the body. What the
//! shape cannot carry is named in [`Request::dropped`]: top-level fields by name, input items as
//! `input.<type>`, content parts as `input.content.<type>`, non-function tools as
//! `tools.<type>`.

use super::Namespaces;
use super::encode::REDACTED_PREFIX;
use crate::protocol::json;
use crate::protocol::shape::{
    Arguments, Block, BlockStart, Delta, Event, Image, Message, Reasoning, Request, Response,
    ResponseFormat, Role, StopReason, StreamDecode, StreamNote, Tool, ToolChoice, TranslateError,
    UpstreamError,
};
use crate::protocol::wire::{note, opt_field, present, top_level};
use serde::Deserialize;
use serde_json::value::RawValue;

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// One `input` item. Every kind's fields, all optional: the item's `type` (or, without one, its
/// `role`) says which apply.
#[derive(Deserialize)]
struct ItemIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    role: Option<String>,
    /// A message's content (a string or parts), or a reasoning item's `reasoning_text` parts.
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
    #[serde(default)]
    summary: Option<Vec<TextPart>>,
    #[serde(default)]
    encrypted_content: Option<String>,
    /// A custom tool call's free-text input.
    #[serde(default)]
    input: Option<String>,
    /// An `additional_tools` item's tools.
    #[serde(default, borrow)]
    tools: Option<Vec<ToolIn<'a>>>,
}

/// A custom tool call's input as the arguments of the function it is upstream.
#[derive(serde::Serialize)]
struct CustomArguments<'s> {
    input: &'s str,
}

/// A `summary_text` / `reasoning_text` part.
#[derive(Deserialize)]
struct TextPart {
    #[serde(default)]
    text: String,
}

/// A content part of a message or of a function call's output.
#[derive(Deserialize)]
struct PartIn {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    file_id: Option<String>,
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
    /// A `namespace` group's members.
    #[serde(default, borrow)]
    tools: Option<Vec<ToolIn<'a>>>,
    /// A custom tool's input format (text, or a grammar).
    #[serde(default, borrow)]
    format: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChoiceIn {
    Word(String),
    Object {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        mode: Option<String>,
    },
}

#[derive(Deserialize)]
struct ReasoningIn {
    #[serde(default)]
    effort: Option<String>,
}

#[derive(Deserialize)]
struct TextIn<'a> {
    #[serde(default, borrow)]
    format: Option<FormatIn<'a>>,
    #[serde(default, borrow)]
    verbosity: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FormatIn<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    schema: Option<&'a RawValue>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

/// Top-level fields that change nothing a translated request could carry or the gateway does:
/// nothing is stored, every encrypted reasoning item a client sends is used, reasoning
/// summaries are shown when the upstream reasons, and obfuscation padding is not added.
const ACCEPTED: &[&str] = &[
    "model",
    "store",
    "include",
    "stream_options",
    "background",
    "previous_response_id",
    "conversation",
];

/// The conversation as it is read: consecutive items of one role make one turn (function calls
/// join the assistant's turn, their outputs the user's).
struct Turns<'a> {
    messages: Vec<Message<'a>>,
}

impl<'a> Turns<'a> {
    fn push(&mut self, role: Role, block: Block<'a>) {
        match self.messages.last_mut() {
            Some(last) if last.role == role => last.content.push(block),
            _ => self.messages.push(Message {
                role,
                content: vec![block],
            }),
        }
    }
}

/// A Responses client's request in the shape.
pub fn request(body: &[u8]) -> Result<Request<'_>, TranslateError> {
    let fields = top_level(body)?;
    let mut req = Request {
        include_usage: true,
        ..Request::default()
    };
    let mut input = None;
    for (key, raw) in &fields {
        let raw: &RawValue = raw;
        match key.as_str() {
            "model" => {
                req.model = serde_json::from_str(raw.get())
                    .map_err(|_| TranslateError::new("'model' must be a string"))?;
            }
            "input" => input = Some(raw),
            "instructions" => {
                if let Some(text) = opt_field::<String>(raw, "instructions")?
                    && !text.is_empty()
                {
                    req.system.push(text);
                }
            }
            "tools" => {
                for (i, tool) in opt_field::<Vec<ToolIn<'_>>>(raw, "tools")?
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    push_tool(&mut req, tool, i)?;
                }
            }
            "tool_choice" => req.tool_choice = tool_choice(raw, &mut req.dropped)?,
            "parallel_tool_calls" => req.parallel_tool_calls = opt_field(raw, key)?,
            "max_output_tokens" => req.max_output_tokens = opt_field(raw, key)?,
            "temperature" => req.temperature = present(raw),
            "top_p" => req.top_p = present(raw),
            "stream" => req.stream = opt_field(raw, key)?,
            "reasoning" => {
                // `summary` asks OpenAI for summaries; other upstreams show reasoning as they do.
                if let Some(r) = opt_field::<ReasoningIn>(raw, key)? {
                    req.reasoning = r.effort.map(Reasoning::Effort);
                }
            }
            "text" => {
                if let Some(text) = opt_field::<TextIn<'_>>(raw, key)? {
                    if text.verbosity.and_then(present).is_some() {
                        note(&mut req.dropped, "text.verbosity");
                    }
                    req.response_format = text.format.map(response_format).transpose()?;
                }
            }
            "user" | "safety_identifier" => {
                if let Some(user) = opt_field::<String>(raw, key)?
                    && req.user.is_none()
                {
                    req.user = Some(user);
                }
            }
            // Refused by `ResponsesRequest::parse` first; a decoder never reads past them either.
            "previous_response_id" | "conversation" if present(raw).is_some() => {
                return Err(TranslateError::new(format!(
                    "'{key}' is not supported: this gateway is stateless. Send the whole \
                     conversation in 'input' instead."
                )));
            }
            "background" if raw.get().trim() == "true" => {
                return Err(TranslateError::new(
                    "'background' is not supported: this gateway stores no responses to poll.",
                ));
            }
            "prompt" if present(raw).is_some() => {
                return Err(TranslateError::new(
                    "'prompt' templates are stored with OpenAI and this upstream cannot read \
                     them: send the prompt's text in 'input' instead.",
                ));
            }
            k if ACCEPTED.contains(&k) => {}
            _ if present(raw).is_none() => {}
            _ => note(&mut req.dropped, key),
        }
    }
    let input = input.ok_or_else(|| TranslateError::new("Missing required parameter: 'input'."))?;
    read_input(&mut req, input)?;
    Ok(req)
}

/// The parameters a custom (free-text) tool has as a function: its text as `input`.
const CUSTOM_INPUT_SCHEMA: &str = r#"{"type":"object","properties":{"input":{"type":"string","description":"The tool's input, as free text."}},"required":["input"],"additionalProperties":false}"#;

#[derive(Deserialize)]
struct CustomFormatIn {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    syntax: Option<String>,
    #[serde(default)]
    definition: Option<String>,
}

/// A tool as a function: a function as it is; a custom tool taking its text as `input`, its
/// grammar (if it has one) told in the description, since a function cannot enforce one.
/// `about`: the description of the namespace it is in, which opens its own (a flat tool has no
/// field for it, and it tells the model which server a tool belongs to).
fn as_function<'a>(tool: ToolIn<'a>, name: String, about: Option<&str>) -> Tool<'a> {
    let custom = tool.kind.as_deref() == Some("custom");
    let mut description = tool.description;
    if custom
        && let Some(format) = tool.format.and_then(json::object::<CustomFormatIn>)
        && format.kind == "grammar"
        && let Some(definition) = format.definition
    {
        let syntax = format.syntax.unwrap_or_default();
        let rule = format!("The `input` must follow this {syntax} grammar:\n{definition}");
        description = Some(match description {
            Some(own) => format!("{own}\n\n{rule}"),
            None => rule,
        });
    }
    let description = match (about, description) {
        (Some(about), Some(own)) => Some(format!("{about}\n\n{own}")),
        (Some(about), None) => Some(about.to_string()),
        (None, own) => own,
    };
    let parameters = if custom {
        // A constant of valid JSON: the parse cannot fail.
        serde_json::from_str::<&'static RawValue>(CUSTOM_INPUT_SCHEMA).ok()
    } else {
        tool.parameters.and_then(present)
    };
    Tool {
        name,
        description,
        parameters,
        strict: tool.strict,
    }
}

fn push_tool<'a>(req: &mut Request<'a>, tool: ToolIn<'a>, i: usize) -> Result<(), TranslateError> {
    match tool.kind.as_deref() {
        Some("function" | "custom") => {
            let name = tool
                .name
                .clone()
                .ok_or_else(|| TranslateError::new(format!("Missing 'tools[{i}].name'.")))?;
            req.tools.push(as_function(tool, name, None));
        }
        Some("namespace") => {
            let namespace = tool.name.unwrap_or_default();
            let about = tool.description.filter(|d| !d.trim().is_empty());
            for member in tool.tools.unwrap_or_default() {
                match (member.kind.as_deref(), member.name.clone()) {
                    (Some("function" | "custom"), Some(name)) => {
                        let name = Namespaces::flat_name(&namespace, &name);
                        req.tools.push(as_function(member, name, about.as_deref()));
                    }
                    (kind, _) => note(&mut req.dropped, &format!("tools.{}", kind.unwrap_or("?"))),
                }
            }
        }
        kind => note(&mut req.dropped, &format!("tools.{}", kind.unwrap_or("?"))),
    }
    Ok(())
}

fn tool_choice(
    raw: &RawValue,
    dropped: &mut Vec<String>,
) -> Result<Option<ToolChoice>, TranslateError> {
    Ok(match opt_field::<ChoiceIn>(raw, "tool_choice")? {
        None => None,
        Some(ChoiceIn::Word(word)) => match word.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(TranslateError::new(format!(
                    "Invalid value for 'tool_choice': '{other}'. Supported values are: 'none', \
                     'auto' and 'required'."
                )));
            }
        },
        Some(ChoiceIn::Object { kind, name, mode }) => match (kind.as_str(), name) {
            ("function" | "custom", Some(name)) => Some(ToolChoice::Named(name)),
            ("allowed_tools", _) => {
                // The subset is not carried: the upstream may call any of the tools.
                note(dropped, "tool_choice.allowed_tools");
                match mode.as_deref() {
                    Some("required") => Some(ToolChoice::Required),
                    _ => Some(ToolChoice::Auto),
                }
            }
            _ => {
                note(dropped, "tool_choice");
                None
            }
        },
    })
}

fn response_format(format: FormatIn<'_>) -> Result<ResponseFormat<'_>, TranslateError> {
    Ok(match format.kind.as_str() {
        "text" => ResponseFormat::Text,
        "json_object" => ResponseFormat::JsonObject,
        "json_schema" => ResponseFormat::JsonSchema {
            name: format.name.unwrap_or_else(|| "response".to_string()),
            schema: format.schema.and_then(present).ok_or_else(|| {
                TranslateError::new("Missing required parameter: 'text.format.schema'.")
            })?,
            strict: format.strict,
            description: format.description,
        },
        other => {
            return Err(TranslateError::new(format!(
                "Invalid value for 'text.format.type': '{other}'. Supported values are: 'text', \
                 'json_object' and 'json_schema'."
            )));
        }
    })
}

fn read_input<'a>(req: &mut Request<'a>, input: &'a RawValue) -> Result<(), TranslateError> {
    if json::first_byte(input.get().as_bytes()) == Some(b'"') {
        let text: String = serde_json::from_str(input.get())
            .map_err(|e| TranslateError::new(format!("Invalid 'input': {e}")))?;
        req.messages.push(Message {
            role: Role::User,
            content: vec![Block::Text(text)],
        });
        return Ok(());
    }
    let items: Vec<ItemIn<'a>> = serde_json::from_str(input.get())
        .map_err(|e| TranslateError::new(format!("Invalid 'input': {e}")))?;
    let mut turns = Turns {
        messages: Vec::new(),
    };
    for (i, item) in items.into_iter().enumerate() {
        let kind = item.kind.clone().unwrap_or_else(|| "message".to_string());
        match kind.as_str() {
            "message" => message(req, &mut turns, item, i)?,
            "function_call" => {
                let (Some(call_id), Some(name)) = (item.call_id, item.name) else {
                    return Err(TranslateError::new(format!(
                        "Invalid 'input[{i}]': a function_call needs 'call_id' and 'name'."
                    )));
                };
                let name = Namespaces::flat_name(item.namespace.as_deref().unwrap_or(""), &name);
                turns.push(
                    Role::Assistant,
                    Block::ToolCall {
                        id: call_id,
                        name,
                        arguments: Arguments::Text(item.arguments.unwrap_or_default()),
                    },
                );
            }
            "custom_tool_call" => {
                let (Some(call_id), Some(name)) = (item.call_id, item.name) else {
                    return Err(TranslateError::new(format!(
                        "Invalid 'input[{i}]': a custom_tool_call needs 'call_id' and 'name'."
                    )));
                };
                let name = Namespaces::flat_name(item.namespace.as_deref().unwrap_or(""), &name);
                let input = item.input.unwrap_or_default();
                let arguments = serde_json::to_string(&CustomArguments { input: &input })
                    .map_err(|e| TranslateError::new(format!("Invalid 'input[{i}]': {e}")))?;
                turns.push(
                    Role::Assistant,
                    Block::ToolCall {
                        id: call_id,
                        name,
                        arguments: Arguments::Text(arguments),
                    },
                );
            }
            "additional_tools" => {
                for (t, tool) in item.tools.unwrap_or_default().into_iter().enumerate() {
                    push_tool(req, tool, t)?;
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let Some(call_id) = item.call_id else {
                    return Err(TranslateError::new(format!(
                        "Invalid 'input[{i}]': a {kind} needs 'call_id'."
                    )));
                };
                let content = tool_output(item.output, i, &mut req.dropped)?;
                turns.push(
                    Role::User,
                    Block::ToolResult {
                        call_id,
                        content,
                        is_error: None,
                    },
                );
            }
            "reasoning" => {
                if let Some(block) = reasoning(&item)? {
                    turns.push(Role::Assistant, block);
                }
            }
            "item_reference" => {
                return Err(TranslateError::new(format!(
                    "Invalid 'input[{i}]': an item_reference needs stored items and this gateway \
                     stores none: send the item itself."
                )));
            }
            other => note(&mut req.dropped, &format!("input.{other}")),
        }
    }
    // A result whose call was dropped (a custom or built-in tool's call, which has no function
    // call here) would be refused by an upstream as an answer to nothing: it goes too.
    let calls: Vec<String> = turns
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|b| match b {
            Block::ToolCall { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    for message in &mut turns.messages {
        let before = message.content.len();
        message.content.retain(|b| match b {
            Block::ToolResult { call_id, .. } => calls.contains(call_id),
            _ => true,
        });
        if message.content.len() != before {
            note(&mut req.dropped, "input.function_call_output");
        }
    }
    turns.messages.retain(|m| !m.content.is_empty());
    req.messages = turns.messages;
    Ok(())
}

fn message<'a>(
    req: &mut Request<'a>,
    turns: &mut Turns<'a>,
    item: ItemIn<'a>,
    i: usize,
) -> Result<(), TranslateError> {
    let role = item.role.as_deref().unwrap_or("");
    let blocks = content(item.content, i, &mut req.dropped)?;
    match role {
        "system" | "developer" => {
            let text: Vec<String> = blocks
                .into_iter()
                .filter_map(|b| match b {
                    Block::Text(t) => Some(t),
                    _ => None,
                })
                .collect();
            let text = text.join("\n");
            if turns.messages.is_empty() {
                // Before the conversation: part of the system prompt (Codex sends its
                // instructions this way, as `developer` items and no `instructions`).
                req.system.push(text);
            } else {
                turns.push(Role::System, Block::Text(text));
            }
        }
        "user" => {
            for block in blocks {
                turns.push(Role::User, block);
            }
        }
        "assistant" => {
            for block in blocks {
                turns.push(Role::Assistant, block);
            }
        }
        other => {
            return Err(TranslateError::new(format!(
                "Invalid value for 'input[{i}].role': '{other}'. Supported values are: 'user', \
                 'assistant', 'system' and 'developer'."
            )));
        }
    }
    Ok(())
}

/// A message's content: a string, or parts (`input_text`, `output_text`, `refusal`,
/// `input_image` by URL; an image by `file_id`, files and audio are dropped and named).
fn content<'a>(
    raw: Option<&RawValue>,
    i: usize,
    dropped: &mut Vec<String>,
) -> Result<Vec<Block<'a>>, TranslateError> {
    let Some(raw) = raw.and_then(present) else {
        return Ok(Vec::new());
    };
    let bad =
        |e: serde_json::Error| TranslateError::new(format!("Invalid 'input[{i}].content': {e}"));
    if json::first_byte(raw.get().as_bytes()) == Some(b'"') {
        return Ok(vec![Block::Text(
            serde_json::from_str(raw.get()).map_err(bad)?,
        )]);
    }
    let parts: Vec<PartIn> = serde_json::from_str(raw.get()).map_err(bad)?;
    Ok(parts_to_blocks(parts, "input.content", dropped))
}

fn parts_to_blocks<'a>(
    parts: Vec<PartIn>,
    what: &str,
    dropped: &mut Vec<String>,
) -> Vec<Block<'a>> {
    let mut out = Vec::new();
    for part in parts {
        match part.kind.as_str() {
            "input_text" | "output_text" | "text" => {
                out.push(Block::Text(part.text.unwrap_or_default()));
            }
            "refusal" => out.push(Block::Text(part.refusal.unwrap_or_default())),
            "input_image" => match part.image_url {
                Some(url) => out.push(Block::Image(Image::Url(url))),
                None if part.file_id.is_some() => {
                    note(dropped, &format!("{what}.input_image.file_id"));
                }
                None => note(dropped, &format!("{what}.input_image")),
            },
            other => note(dropped, &format!("{what}.{other}")),
        }
    }
    out
}

/// A function call's `output`: a string, or `input_text`/`input_image` parts.
fn tool_output<'a>(
    raw: Option<&RawValue>,
    i: usize,
    dropped: &mut Vec<String>,
) -> Result<Vec<Block<'a>>, TranslateError> {
    let Some(raw) = raw.and_then(present) else {
        return Ok(Vec::new());
    };
    let bad =
        |e: serde_json::Error| TranslateError::new(format!("Invalid 'input[{i}].output': {e}"));
    match json::first_byte(raw.get().as_bytes()) {
        Some(b'"') => Ok(vec![Block::Text(
            serde_json::from_str(raw.get()).map_err(bad)?,
        )]),
        Some(b'[') => {
            let parts: Vec<PartIn> = serde_json::from_str(raw.get()).map_err(bad)?;
            Ok(parts_to_blocks(parts, "input.output", dropped))
        }
        // An object (Codex's old `{content, success}` payload, or any JSON): its text.
        _ => Ok(vec![Block::Text(raw.get().to_string())]),
    }
}

/// A reasoning item as a thinking block: its summary texts (or its reasoning text when it has
/// no summary) and its `encrypted_content` as the signature. An item the gateway made from an
/// opaque block ([`REDACTED_PREFIX`]) is that block again. `None`: an item with nothing in it.
fn reasoning<'a>(item: &ItemIn<'_>) -> Result<Option<Block<'a>>, TranslateError> {
    if let Some(data) = item
        .encrypted_content
        .as_deref()
        .and_then(|e| e.strip_prefix(REDACTED_PREFIX))
    {
        return Ok(Some(Block::RedactedThinking {
            data: data.to_string(),
        }));
    }
    let mut text = join(item.summary.iter().flatten());
    if text.is_empty()
        && let Some(raw) = item.content.and_then(present)
    {
        let parts: Vec<TextPart> = serde_json::from_str(raw.get())
            .map_err(|e| TranslateError::new(format!("Invalid reasoning 'content': {e}")))?;
        text = join(parts.iter());
    }
    let signature = item.encrypted_content.clone();
    if text.is_empty() && signature.is_none() {
        return Ok(None);
    }
    Ok(Some(Block::Thinking { text, signature }))
}

/// Summary parts read as one text: parts are paragraphs.
fn join<'p>(parts: impl Iterator<Item = &'p TextPart>) -> String {
    parts
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ResponseIn<'a> {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default, borrow)]
    incomplete_details: Option<&'a RawValue>,
    output: Vec<OutputIn<'a>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputIn<'a> {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    summary: Option<Vec<TextPart>>,
    #[serde(default)]
    encrypted_content: Option<String>,
}

#[derive(Deserialize)]
struct IncompleteIn {
    #[serde(default)]
    reason: Option<String>,
}

/// Why a response ended, from its `status` and `incomplete_details`, and whether it called a
/// tool or refused.
fn stop_reason(
    status: Option<&str>,
    incomplete: Option<&RawValue>,
    called: bool,
    refused: bool,
) -> StopReason {
    if status == Some("incomplete") {
        let reason = incomplete
            .and_then(json::object::<IncompleteIn>)
            .and_then(|d| d.reason);
        return match reason.as_deref() {
            Some("content_filter") => StopReason::Refusal,
            _ => StopReason::MaxTokens,
        };
    }
    if refused {
        StopReason::Refusal
    } else if called {
        StopReason::ToolUse
    } else {
        StopReason::EndTurn
    }
}

/// An output item's blocks; `refused`: it held a refusal.
fn output_blocks(item: OutputIn<'_>, refused: &mut bool) -> Vec<Block<'static>> {
    match item.kind.as_str() {
        "message" => {
            let parts: Vec<PartIn> = item
                .content
                .and_then(|c| serde_json::from_str(c.get()).ok())
                .unwrap_or_default();
            parts
                .into_iter()
                .filter_map(|p| match p.kind.as_str() {
                    "output_text" => Some(Block::Text(p.text.unwrap_or_default())),
                    "refusal" => {
                        *refused = true;
                        Some(Block::Text(p.refusal.unwrap_or_default()))
                    }
                    _ => None,
                })
                .collect()
        }
        "reasoning" => {
            let as_input = ItemIn {
                kind: None,
                role: None,
                content: item.content,
                call_id: None,
                name: None,
                namespace: None,
                arguments: None,
                output: None,
                summary: item.summary,
                encrypted_content: item.encrypted_content,
                input: None,
                tools: None,
            };
            reasoning(&as_input).ok().flatten().into_iter().collect()
        }
        "function_call" => match (item.call_id, item.name) {
            (Some(id), Some(name)) => vec![Block::ToolCall {
                id,
                name: Namespaces::flat_name(item.namespace.as_deref().unwrap_or(""), &name),
                arguments: Arguments::Text(item.arguments.unwrap_or_default()),
            }],
            _ => Vec::new(),
        },
        // Built-in tool calls (web search, file search, …) ran upstream; nothing to carry.
        _ => Vec::new(),
    }
}

/// An upstream's response object in the shape; `None` when the body is not one.
pub fn response(body: &[u8]) -> Option<Response> {
    super::response(body)?;
    let resp: ResponseIn<'_> = serde_json::from_slice(body).ok()?;
    let mut refused = false;
    let mut content = Vec::new();
    for item in resp.output {
        content.extend(output_blocks(item, &mut refused));
    }
    let called = content.iter().any(|b| matches!(b, Block::ToolCall { .. }));
    Some(Response {
        id: resp.id,
        model: resp.model,
        stop: stop_reason(
            resp.status.as_deref(),
            resp.incomplete_details,
            called,
            refused,
        ),
        stop_sequence: None,
        metering: resp.usage.and_then(super::metering),
        content,
    })
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default, borrow)]
    response: Option<&'a RawValue>,
    #[serde(default, borrow)]
    item: Option<&'a RawValue>,
    #[serde(default)]
    output_index: Option<usize>,
    #[serde(default)]
    content_index: Option<usize>,
    #[serde(default)]
    summary_index: Option<usize>,
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default, borrow)]
    part: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartKind {
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize)]
struct StartIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
}

#[derive(Deserialize)]
struct EndIn<'a> {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, borrow)]
    incomplete_details: Option<&'a RawValue>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// A shape block opened for part of an output item.
struct Open {
    output_index: usize,
    /// The content part (a message's `content_index`); `None` for the item itself.
    part: Option<usize>,
    index: usize,
    /// Something was written into it (deltas), so a `done` event's full value is not repeated.
    written: bool,
    closed: bool,
}

/// Reads an upstream's Responses stream into shape events. Output items become blocks numbered
/// in the order they open: each text part of a message, each reasoning item, each function
/// call. The end (`response.completed` / `response.incomplete`) gives the stop reason and usage.
#[derive(Default)]
pub struct Stream {
    started: bool,
    open: Vec<Open>,
    next_index: usize,
    called: bool,
    refused: bool,
    ended: bool,
}

impl Stream {
    pub fn new() -> Stream {
        Stream::default()
    }

    fn start(&mut self, id: String, model: String, out: &mut Vec<Event>) {
        if !self.started {
            self.started = true;
            out.push(Event::Start { id, model });
        }
    }

    fn find(&self, output_index: usize, part: Option<usize>) -> Option<usize> {
        self.open
            .iter()
            .position(|o| o.output_index == output_index && o.part == part)
    }

    fn open(
        &mut self,
        output_index: usize,
        part: Option<usize>,
        block: BlockStart,
        out: &mut Vec<Event>,
    ) -> usize {
        if let Some(at) = self.find(output_index, part) {
            return at;
        }
        self.start(String::new(), String::new(), out);
        let index = self.next_index;
        self.next_index += 1;
        out.push(Event::BlockStart { index, block });
        self.open.push(Open {
            output_index,
            part,
            index,
            written: false,
            closed: false,
        });
        self.open.len() - 1
    }

    fn write(&mut self, at: usize, delta: Delta, out: &mut Vec<Event>) {
        let open = &mut self.open[at];
        if open.closed {
            return;
        }
        open.written = true;
        out.push(Event::Delta {
            index: open.index,
            delta,
        });
    }

    /// Closes every block of an output item (or only its part `part`). Closed blocks stay
    /// known, so an item's `done` event does not open its finished parts again.
    fn close(&mut self, output_index: usize, part: Option<Option<usize>>, out: &mut Vec<Event>) {
        for o in &mut self.open {
            let hit = o.output_index == output_index && part.is_none_or(|p| o.part == p);
            if hit && !o.closed {
                o.closed = true;
                out.push(Event::BlockStop { index: o.index });
            }
        }
    }

    /// An item's `output_item.done`: what no delta said yet (servers that send items whole),
    /// the reasoning signature, then the item's blocks stop.
    fn item_done(&mut self, output_index: usize, item: &RawValue, out: &mut Vec<Event>) {
        let Some(item) = json::object::<OutputIn<'_>>(item) else {
            return self.close(output_index, None, out);
        };
        match item.kind.as_str() {
            "message" => {
                let parts: Vec<PartIn> = item
                    .content
                    .and_then(|c| serde_json::from_str(c.get()).ok())
                    .unwrap_or_default();
                for (i, p) in parts.into_iter().enumerate() {
                    let text = match p.kind.as_str() {
                        "output_text" => p.text,
                        "refusal" => {
                            self.refused = true;
                            p.refusal
                        }
                        _ => None,
                    };
                    let at = self.open(output_index, Some(i), BlockStart::Text, out);
                    if let Some(text) = text.filter(|t| !t.is_empty() && !self.open[at].written) {
                        self.write(at, Delta::Text(text), out);
                    }
                }
            }
            "reasoning" => {
                if let Some(data) = item
                    .encrypted_content
                    .as_deref()
                    .and_then(|e| e.strip_prefix(REDACTED_PREFIX))
                {
                    if self.find(output_index, None).is_none() {
                        let block = BlockStart::RedactedThinking {
                            data: data.to_string(),
                        };
                        self.open(output_index, None, block, out);
                    }
                } else {
                    let at = self.open(output_index, None, BlockStart::Thinking, out);
                    let mut text = join(item.summary.iter().flatten());
                    if text.is_empty() {
                        let parts: Vec<TextPart> = item
                            .content
                            .and_then(|c| serde_json::from_str(c.get()).ok())
                            .unwrap_or_default();
                        text = join(parts.iter());
                    }
                    if !text.is_empty() && !self.open[at].written {
                        self.write(at, Delta::Thinking(text), out);
                    }
                    if let Some(signature) = item.encrypted_content {
                        self.write(at, Delta::Signature(signature), out);
                    }
                }
            }
            "function_call" => {
                if let (Some(id), Some(name)) = (item.call_id, item.name) {
                    let name =
                        Namespaces::flat_name(item.namespace.as_deref().unwrap_or(""), &name);
                    self.called = true;
                    let at = self.open(output_index, None, BlockStart::ToolCall { id, name }, out);
                    if let Some(args) = item.arguments.filter(|a| !a.is_empty())
                        && !self.open[at].written
                    {
                        self.write(at, Delta::ToolArguments(args), out);
                    }
                }
            }
            _ => {}
        }
        self.close(output_index, None, out);
    }

    fn end(&mut self, response: Option<&RawValue>, out: &mut Vec<Event>) {
        let end = response.and_then(json::object::<EndIn<'_>>);
        for o in &mut self.open {
            if !o.closed {
                o.closed = true;
                out.push(Event::BlockStop { index: o.index });
            }
        }
        let (status, incomplete, usage) = match &end {
            Some(e) => (e.status.as_deref(), e.incomplete_details, e.usage),
            None => (None, None, None),
        };
        out.push(Event::Stop {
            reason: stop_reason(status, incomplete, self.called, self.refused),
            stop_sequence: None,
        });
        if let Some(metering) = usage.and_then(super::metering) {
            out.push(Event::Metering(metering));
        }
        out.push(Event::End);
        self.ended = true;
    }
}

impl StreamDecode for Stream {
    fn event(&mut self, name: Option<&[u8]>, data: &[u8], out: &mut Vec<Event>) -> StreamNote {
        let chunk = super::classify(name, Some(data));
        if let super::Chunk::Error { message, metering } = chunk {
            if let Some(metering) = metering {
                out.push(Event::Metering(metering));
            }
            return StreamNote::Error(message);
        }
        let Some(event) = (json::first_byte(data) == Some(b'{'))
            .then(|| serde_json::from_slice::<EventIn<'_>>(data).ok())
            .flatten()
        else {
            return StreamNote::Nothing;
        };
        let kind = match (event.kind.as_deref(), name) {
            (Some(kind), _) => kind,
            (None, Some(name)) => std::str::from_utf8(name).unwrap_or(""),
            (None, None) => "",
        };
        let output_index = event.output_index.unwrap_or(0);
        let mut known = true;
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(start) = event.response.and_then(json::object::<StartIn>) {
                    self.start(start.id, start.model, out);
                }
            }
            "response.output_item.added" => {
                let item = event.item.and_then(json::object::<OutputIn<'_>>);
                match item {
                    Some(item) if item.kind == "function_call" => {
                        if let (Some(id), Some(name)) = (item.call_id, item.name) {
                            let name = Namespaces::flat_name(
                                item.namespace.as_deref().unwrap_or(""),
                                &name,
                            );
                            self.called = true;
                            self.open(output_index, None, BlockStart::ToolCall { id, name }, out);
                        }
                    }
                    Some(item) if item.kind == "reasoning" => {
                        let redacted = item
                            .encrypted_content
                            .as_deref()
                            .and_then(|e| e.strip_prefix(REDACTED_PREFIX));
                        let block = match redacted {
                            Some(data) => BlockStart::RedactedThinking {
                                data: data.to_string(),
                            },
                            None => BlockStart::Thinking,
                        };
                        self.open(output_index, None, block, out);
                    }
                    _ => {}
                }
            }
            "response.content_part.added" => {
                // A message's text or refusal; a reasoning item's `reasoning_text` parts are its
                // thinking, opened by their deltas.
                let part = event.part.and_then(json::object::<PartKind>);
                if part.is_none_or(|p| matches!(p.kind.as_str(), "output_text" | "refusal")) {
                    self.open(output_index, event.content_index, BlockStart::Text, out);
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if kind == "response.refusal.delta" {
                    self.refused = true;
                }
                let at = self.open(output_index, event.content_index, BlockStart::Text, out);
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    self.write(at, Delta::Text(delta), out);
                }
            }
            "response.content_part.done" => {
                self.close(output_index, Some(event.content_index), out);
            }
            "response.reasoning_summary_part.added" => {
                let at = self.open(output_index, None, BlockStart::Thinking, out);
                // Parts are paragraphs, as when a whole item is read.
                if event.summary_index.unwrap_or(0) > 0 && self.open[at].written {
                    self.write(at, Delta::Thinking("\n\n".to_string()), out);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let at = self.open(output_index, None, BlockStart::Thinking, out);
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    self.write(at, Delta::Thinking(delta), out);
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(at) = self.find(output_index, None)
                    && let Some(delta) = event.delta.filter(|d| !d.is_empty())
                {
                    self.write(at, Delta::ToolArguments(delta), out);
                }
            }
            "response.function_call_arguments.done" => {
                if let Some(at) = self.find(output_index, None)
                    && !self.open[at].written
                    && let Some(args) = event.arguments.filter(|a| !a.is_empty())
                {
                    self.write(at, Delta::ToolArguments(args), out);
                }
            }
            "response.output_item.done" => {
                if let Some(item) = event.item {
                    self.item_done(output_index, item, out);
                }
            }
            "response.completed" | "response.incomplete" => {
                self.end(event.response, out);
                return StreamNote::Done;
            }
            // Events this decoder does not know (built-in tool progress, later additions).
            _ => known = false,
        }
        match chunk {
            super::Chunk::Content if known => StreamNote::Content,
            _ => StreamNote::Nothing,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(default)]
    message: Option<String>,
}

/// An upstream's error status and body (`{"error":{"message":…}}`, or a bare error object).
pub fn error(status: u16, body: &[u8]) -> UpstreamError {
    let parsed = (json::first_byte(body) == Some(b'{'))
        .then(|| serde_json::from_slice::<ErrorBody<'_>>(body).ok())
        .flatten();
    let message = parsed
        .and_then(|b| b.error)
        .and_then(json::object::<ErrorIn>)
        .and_then(|e| e.message)
        .or_else(|| {
            (json::first_byte(body) == Some(b'{'))
                .then(|| serde_json::from_slice::<ErrorIn>(body).ok())
                .flatten()
                .and_then(|e| e.message)
        })
        .filter(|m| !m.is_empty());
    UpstreamError { status, message }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
