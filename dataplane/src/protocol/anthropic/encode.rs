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
    self, Arguments, Block, Encoded, Image, Reasoning, Role, ToolChoice, TranslateError,
};
use crate::protocol::wire::{EmptyObject, note, to_body, tool_input};
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
}
