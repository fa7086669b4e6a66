//! The shape into Gemini bytes: a request for a Gemini upstream, and a Gemini client's answer,
//! stream and errors.
//!
//! # Rules Gemini imposes, applied here
//!
//! - The model is in the URL: the body names none.
//! - Instructions, wherever they were, are one `systemInstruction` (Gemini has no system turn).
//! - Roles are `user` and `model`, and consecutive turns of one role are merged.
//! - A tool result needs its function's name: it is taken from the call with its id earlier in
//!   the conversation. Ids go in `functionCall.id` / `functionResponse.id`. The result is
//!   `{"output": text}`, or `{"error": text}` for a failed call, as Google documents.
//! - A thought signature rides on the part after its thinking (Gemini 3 validates the one on a
//!   turn's first function call); thinking text is not sent back (Gemini takes no thoughts in
//!   history). A model turn with a function call but no signature, from another dialect, gets
//!   Google's documented bypass value ([`super::decode::SKIP_SIGNATURE`]) on its first call,
//!   which Gemini 3 models otherwise refuse.
//! - Tool schemas are arbitrary JSON Schema: they go as `parametersJsonSchema` (`parameters`
//!   takes only an OpenAPI subset); a response schema as `responseJsonSchema`.
//! - At most 5 stop sequences (Gemini's limit); the rest are dropped and named.
//! - A reasoning effort is a `thinkingLevel` for Gemini 3 and later, a `thinkingBudget` for
//!   Gemini 2 (which has no levels); thoughts are asked for whenever reasoning is.
//!
//! # What a Gemini client gets
//!
//! - One `GenerateContentResponse` (or one per stream chunk) with the client's model as
//!   `modelVersion`; thought text only when the client asked `includeThoughts`.
//! - Another upstream's reasoning block is sealed whole into the `thoughtSignature` of the part
//!   after it ([`super::seal`]), which the client gives back even when it drops thought text.

use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;

use super::Framing;
use super::decode::SKIP_SIGNATURE;
use crate::protocol::shape::{
    Arguments, Block, BlockStart, Delta, Encoded, Event, Image, Metering, Reasoning, Request,
    Response, ResponseFormat, Role, StopReason, StreamEncode, ToolChoice, TranslateError,
    UpstreamError,
};
use crate::protocol::wire::{note, put_json, to_body, tool_input};

/// Most stop sequences Gemini takes.
pub const MAX_STOP_SEQUENCES: usize = 5;

// ---------------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------------

/// One part written, request or answer.
#[derive(Serialize, Default)]
pub(crate) struct PartOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(rename = "inlineData", skip_serializing_if = "Option::is_none")]
    inline_data: Option<BlobOut<'a>>,
    #[serde(rename = "fileData", skip_serializing_if = "Option::is_none")]
    file_data: Option<FileDataOut<'a>>,
    #[serde(rename = "functionCall", skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCallOut<'a>>,
    #[serde(rename = "functionResponse", skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponseOut<'a>>,
    #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
    thought_signature: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct BlobOut<'a> {
    #[serde(rename = "mimeType")]
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
struct FileDataOut<'a> {
    #[serde(rename = "mimeType")]
    mime_type: &'a str,
    #[serde(rename = "fileUri")]
    file_uri: &'a str,
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    name: &'a str,
    args: Cow<'a, RawValue>,
}

#[derive(Serialize)]
struct FunctionResponseOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    name: &'a str,
    response: ResultOut,
}

#[derive(Serialize)]
enum ResultOut {
    #[serde(rename = "output")]
    Output(String),
    #[serde(rename = "error")]
    Error(String),
}

#[derive(Serialize)]
struct ContentOut<'a> {
    role: &'static str,
    parts: Vec<PartOut<'a>>,
}

/// A tool call's arguments as a JSON object (`""` is `{}`).
fn args<'a>(arguments: &'a Arguments<'_>, id: &str) -> Result<Cow<'a, RawValue>, TranslateError> {
    match arguments {
        Arguments::Raw(raw) => Ok(Cow::Borrowed(*raw)),
        Arguments::Text(text) => {
            tool_input(Some(text), &format!("tool call '{id}'")).map(Cow::Owned)
        }
    }
}

/// The media type of an image URL, from its extension (Gemini requires one); JPEG when it says
/// none.
fn url_media_type(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        _ => "image/jpeg",
    }
}

/// An image as a part: base64 and `data:` URLs inline, any other URL by reference.
fn image_part(image: &Image) -> Result<PartOut<'_>, TranslateError> {
    let (mime_type, data) = match image {
        Image::Base64 { media_type, data } => (media_type.as_str(), data.as_str()),
        Image::Url(url) => match url.strip_prefix("data:") {
            None => {
                return Ok(PartOut {
                    file_data: Some(FileDataOut {
                        mime_type: url_media_type(url),
                        file_uri: url,
                    }),
                    ..PartOut::default()
                });
            }
            Some(rest) => {
                let parsed = rest.split_once(',').and_then(|(meta, data)| {
                    let media_type = meta.strip_suffix(";base64")?;
                    let media_type = media_type.split(';').next().unwrap_or(media_type);
                    (!media_type.is_empty()).then_some((media_type, data))
                });
                parsed.ok_or_else(|| {
                    TranslateError::new(
                        "Invalid image: a data URL must be of the form data:<media type>;base64,<data>",
                    )
                })?
            }
        },
    };
    Ok(PartOut {
        inline_data: Some(BlobOut { mime_type, data }),
        ..PartOut::default()
    })
}

fn text_part(text: &str) -> PartOut<'_> {
    PartOut {
        text: Some(Cow::Borrowed(text)),
        ..PartOut::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct RequestOut<'a> {
    contents: Vec<ContentOut<'a>>,
    #[serde(rename = "systemInstruction", skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolOut<'a>>,
    #[serde(rename = "toolConfig", skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfigOut<'a>>,
    #[serde(
        rename = "generationConfig",
        skip_serializing_if = "GenerationConfigOut::is_empty"
    )]
    generation_config: GenerationConfigOut<'a>,
}

#[derive(Serialize)]
struct SystemOut {
    parts: [TextOut; 1],
}

#[derive(Serialize)]
struct TextOut {
    text: String,
}

#[derive(Serialize)]
struct ToolOut<'a> {
    #[serde(rename = "functionDeclarations")]
    function_declarations: Vec<FunctionDeclarationOut<'a>>,
}

#[derive(Serialize)]
struct FunctionDeclarationOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(
        rename = "parametersJsonSchema",
        skip_serializing_if = "Option::is_none"
    )]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ToolConfigOut<'a> {
    #[serde(rename = "functionCallingConfig")]
    function_calling_config: FunctionCallingConfigOut<'a>,
}

#[derive(Serialize)]
struct FunctionCallingConfigOut<'a> {
    mode: &'static str,
    #[serde(
        rename = "allowedFunctionNames",
        skip_serializing_if = "Option::is_none"
    )]
    allowed_function_names: Option<[&'a str; 1]>,
}

#[derive(Serialize, Default)]
struct GenerationConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(rename = "topP", skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(rename = "maxOutputTokens", skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(rename = "stopSequences", skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(rename = "responseMimeType", skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(rename = "responseJsonSchema", skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
    #[serde(rename = "thinkingConfig", skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfigOut>,
}

impl GenerationConfigOut<'_> {
    fn is_empty(&self) -> bool {
        self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.stop_sequences.is_empty()
            && self.response_mime_type.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
struct ThinkingConfigOut {
    #[serde(rename = "includeThoughts", skip_serializing_if = "Option::is_none")]
    include_thoughts: Option<bool>,
    #[serde(rename = "thinkingBudget", skip_serializing_if = "Option::is_none")]
    thinking_budget: Option<u64>,
    #[serde(rename = "thinkingLevel", skip_serializing_if = "Option::is_none")]
    thinking_level: Option<&'static str>,
}

/// Whether a model id names a Gemini 1 or 2 model, which take a thinking budget and no level.
fn budget_only(model: &str) -> bool {
    let model = model.strip_prefix("models/").unwrap_or(model);
    model.starts_with("gemini-1") || model.starts_with("gemini-2")
}

/// Reasoning as Gemini's thinking settings for `model`. Google documents which settings each
/// family takes (ai.google.dev/gemini-api/docs/thinking): Gemini 2.5 takes a budget (Pro from
/// 128 tokens and never 0: it always thinks); Gemini 3 takes a level, `MINIMAL` and `MEDIUM`
/// only on Flash models, and its Pro models cannot stop thinking either. A setting the model
/// cannot take is sent as the nearest one it can, or not at all (and named).
fn thinking(
    reasoning: &Reasoning,
    model: &str,
    dropped: &mut Vec<String>,
) -> Option<ThinkingConfigOut> {
    let flash = model.contains("flash");
    let budget = |b: u64| ThinkingConfigOut {
        include_thoughts: Some(b > 0),
        thinking_budget: Some(b),
        thinking_level: None,
    };
    let level = |level: &'static str, shown: bool| ThinkingConfigOut {
        include_thoughts: Some(shown),
        thinking_budget: None,
        thinking_level: Some(level),
    };
    let effort = match reasoning {
        Reasoning::Budget(b) if budget_only(model) && !flash => return Some(budget((*b).max(128))),
        Reasoning::Budget(b) => return Some(budget(*b)),
        Reasoning::Disabled if budget_only(model) && !flash => {
            note(dropped, "reasoning");
            return None;
        }
        Reasoning::Disabled if budget_only(model) => return Some(budget(0)),
        Reasoning::Disabled if flash => return Some(level("MINIMAL", false)),
        Reasoning::Disabled => return Some(level("LOW", false)),
        Reasoning::Effort(effort) => effort.to_ascii_lowercase(),
    };
    if budget_only(model) {
        // Gemini 2.5's documented range: 128 (Pro's least) to 32768 tokens.
        let b = match effort.as_str() {
            "none" | "minimal" if flash => 0,
            "none" | "minimal" | "low" => 1024,
            "medium" => 8192,
            "high" | "xhigh" | "max" => 24576,
            _ => {
                note(dropped, "reasoning");
                return None;
            }
        };
        return Some(budget(b));
    }
    let name = match (effort.as_str(), flash) {
        ("none" | "minimal", true) => "MINIMAL",
        ("none" | "minimal" | "low", _) => "LOW",
        ("medium", true) => "MEDIUM",
        ("medium" | "high" | "xhigh" | "max", _) => "HIGH",
        _ => {
            note(dropped, "reasoning");
            return None;
        }
    };
    Some(level(name, true))
}

/// A request for a Gemini upstream. The model goes in the URL (`upstream_model` only decides
/// which thinking settings the model takes).
pub fn request(req: &Request<'_>, upstream_model: &str) -> Result<Encoded, TranslateError> {
    let mut dropped = Vec::new();
    let mut system: Vec<&str> = req.system.iter().map(String::as_str).collect();
    // Each call's function name, for the result that answers it.
    let names: HashMap<&str, &str> = req
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|b| match b {
            Block::ToolCall { id, name, .. } => Some((id.as_str(), name.as_str())),
            _ => None,
        })
        .collect();
    let mut contents: Vec<ContentOut<'_>> = Vec::new();
    for message in &req.messages {
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "model",
            Role::System => {
                for block in &message.content {
                    if let Block::Text(t) = block {
                        system.push(t);
                    }
                }
                continue;
            }
        };
        let mut parts = Vec::new();
        let mut signature: Option<&str> = None;
        for block in &message.content {
            let mut part = match block {
                Block::Text(text) if text.is_empty() => continue,
                Block::Text(text) => text_part(text),
                Block::Image(image) => image_part(image)?,
                Block::Thinking { text, signature: s } => {
                    if let Some(s) = s.as_deref().filter(|s| !s.is_empty()) {
                        signature = Some(s);
                    }
                    if !text.is_empty() {
                        note(&mut dropped, "contents.parts.thought");
                    }
                    continue;
                }
                Block::RedactedThinking { .. } => {
                    note(&mut dropped, "contents.parts.redacted_thinking");
                    continue;
                }
                Block::ToolCall {
                    id,
                    name,
                    arguments,
                } => PartOut {
                    function_call: Some(FunctionCallOut {
                        id,
                        name,
                        args: args(arguments, id)?,
                    }),
                    ..PartOut::default()
                },
                Block::ToolResult {
                    call_id,
                    content,
                    is_error,
                } => {
                    let mut texts = Vec::new();
                    for b in content {
                        match b {
                            Block::Text(t) => texts.push(t.as_str()),
                            _ => note(&mut dropped, "contents.parts.functionResponse.parts"),
                        }
                    }
                    let text = texts.join("\n");
                    PartOut {
                        function_response: Some(FunctionResponseOut {
                            id: call_id,
                            name: names.get(call_id.as_str()).copied().unwrap_or(call_id),
                            response: if *is_error == Some(true) {
                                ResultOut::Error(text)
                            } else {
                                ResultOut::Output(text)
                            },
                        }),
                        ..PartOut::default()
                    }
                }
            };
            part.thought_signature = signature.take().map(Cow::Borrowed);
            parts.push(part);
        }
        if let Some(s) = signature {
            // A signature after the turn's last part rides on an empty text part of its own.
            parts.push(PartOut {
                text: Some(Cow::Borrowed("")),
                thought_signature: Some(Cow::Borrowed(s)),
                ..PartOut::default()
            });
        }
        if role == "model" {
            let signed = parts
                .iter()
                .any(|p| p.function_call.is_some() && p.thought_signature.is_some());
            if let (false, Some(first)) =
                (signed, parts.iter_mut().find(|p| p.function_call.is_some()))
            {
                first.thought_signature = Some(Cow::Borrowed(SKIP_SIGNATURE));
            }
        }
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => contents.push(ContentOut { role, parts }),
        }
    }

    let tools = if req.tools.is_empty() {
        Vec::new()
    } else {
        vec![ToolOut {
            function_declarations: req
                .tools
                .iter()
                .map(|t| FunctionDeclarationOut {
                    name: &t.name,
                    description: t.description.as_deref(),
                    parameters_json_schema: t.parameters,
                })
                .collect(),
        }]
    };
    let tool_config = match (&req.tool_choice, tools.is_empty()) {
        (None, _) | (Some(_), true) => None,
        (Some(choice), false) => Some(ToolConfigOut {
            function_calling_config: match choice {
                ToolChoice::Auto => FunctionCallingConfigOut {
                    mode: "AUTO",
                    allowed_function_names: None,
                },
                ToolChoice::None => FunctionCallingConfigOut {
                    mode: "NONE",
                    allowed_function_names: None,
                },
                ToolChoice::Required => FunctionCallingConfigOut {
                    mode: "ANY",
                    allowed_function_names: None,
                },
                ToolChoice::Named(name) => FunctionCallingConfigOut {
                    mode: "ANY",
                    allowed_function_names: Some([name]),
                },
            },
        }),
    };
    if req.parallel_tool_calls == Some(false) {
        note(&mut dropped, "parallel_tool_calls");
    }
    if req.user.is_some() {
        note(&mut dropped, "user");
    }
    let stop_sequences = if req.stop.len() > MAX_STOP_SEQUENCES {
        note(&mut dropped, "stop");
        &req.stop[..MAX_STOP_SEQUENCES]
    } else {
        &req.stop[..]
    };
    let (response_mime_type, response_json_schema) = match &req.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            (Some("application/json"), Some(*schema))
        }
    };
    let generation_config = GenerationConfigOut {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens,
        stop_sequences,
        response_mime_type,
        response_json_schema,
        thinking_config: req
            .reasoning
            .as_ref()
            .and_then(|r| thinking(r, upstream_model, &mut dropped)),
    };
    let system: Vec<&str> = system.into_iter().filter(|s| !s.is_empty()).collect();
    let body = RequestOut {
        contents,
        system_instruction: (!system.is_empty()).then(|| SystemOut {
            parts: [TextOut {
                text: system.join("\n"),
            }],
        }),
        tools,
        tool_config,
        generation_config,
    };
    let mut all = req.dropped.clone();
    for d in dropped {
        note(&mut all, &d);
    }
    Ok(Encoded {
        body: to_body(&body)?,
        dropped: all,
    })
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ChunkOut<'a> {
    candidates: [CandidateOut<'a>; 1],
    #[serde(rename = "usageMetadata", skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<UsageOut>,
    #[serde(rename = "modelVersion")]
    model_version: &'a str,
    #[serde(rename = "responseId")]
    response_id: &'a str,
}

#[derive(Serialize)]
struct CandidateOut<'a> {
    content: ContentOut<'a>,
    #[serde(rename = "finishReason", skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

/// `usageMetadata` from billing counts: the prompt includes cached input (and what an upstream
/// wrote to its cache, which Gemini does not count apart); the candidates exclude thoughts.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub(crate) struct UsageOut {
    #[serde(rename = "promptTokenCount")]
    prompt: u64,
    #[serde(rename = "candidatesTokenCount")]
    candidates: u64,
    #[serde(rename = "thoughtsTokenCount", skip_serializing_if = "Option::is_none")]
    thoughts: Option<u64>,
    #[serde(
        rename = "cachedContentTokenCount",
        skip_serializing_if = "Option::is_none"
    )]
    cached: Option<u64>,
    #[serde(rename = "totalTokenCount")]
    total: u64,
}

pub(crate) fn usage(m: &Metering) -> UsageOut {
    let u = &m.usage;
    let prompt = u
        .input_tokens
        .saturating_add(u.cache_read_tokens)
        .saturating_add(u.cache_write_tokens);
    let thoughts = m.reasoning_tokens.map(|r| r.min(u.output_tokens));
    UsageOut {
        prompt,
        candidates: u.output_tokens - thoughts.unwrap_or(0),
        thoughts: thoughts.filter(|t| *t > 0),
        cached: (u.cache_read_tokens > 0).then_some(u.cache_read_tokens),
        total: prompt.saturating_add(u.output_tokens),
    }
}

/// The shape's stop reason as a `finishReason`.
pub fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens | StopReason::ContextWindow => "MAX_TOKENS",
        StopReason::Refusal => "SAFETY",
        StopReason::EndTurn
        | StopReason::StopSequence
        | StopReason::ToolUse
        | StopReason::Pause => "STOP",
    }
}

/// An answer's parts: thinking text shown only when the client asked for thoughts; each
/// reasoning block [`super::seal`]ed into the `thoughtSignature` of the part after it (or of an
/// empty text part when nothing follows, or another block comes first).
fn answer_parts<'a>(content: &'a [Block<'_>], thoughts: bool) -> Vec<PartOut<'a>> {
    let mut parts = Vec::new();
    let mut signature: Option<String> = None;
    for block in content {
        let mut part = match block {
            Block::Text(text) => text_part(text),
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {
                if let Some(sealed) = super::seal(block)
                    && let Some(earlier) = signature.replace(sealed)
                {
                    parts.push(signature_part(earlier));
                }
                match block {
                    Block::Thinking { text, .. } if thoughts && !text.is_empty() => PartOut {
                        text: Some(Cow::Borrowed(text)),
                        thought: Some(true),
                        ..PartOut::default()
                    },
                    _ => continue,
                }
            }
            Block::ToolCall {
                id,
                name,
                arguments,
            } => PartOut {
                function_call: Some(FunctionCallOut {
                    id,
                    name,
                    args: args(arguments, id).unwrap_or_else(|_| empty_object()),
                }),
                ..PartOut::default()
            },
            Block::Image(_) | Block::ToolResult { .. } => continue,
        };
        if part.thought != Some(true) {
            part.thought_signature = signature.take().map(Cow::Owned);
        }
        parts.push(part);
    }
    if let Some(s) = signature {
        parts.push(signature_part(s));
    }
    parts
}

/// An empty text part that only carries a signature.
fn signature_part(signature: String) -> PartOut<'static> {
    PartOut {
        text: Some(Cow::Borrowed("")),
        thought_signature: Some(Cow::Owned(signature)),
        ..PartOut::default()
    }
}

fn empty_object() -> Cow<'static, RawValue> {
    Cow::Owned(RawValue::from_string("{}".into()).unwrap_or_else(|_| {
        // `{}` is valid JSON: this branch is unreachable.
        RawValue::NULL.to_owned()
    }))
}

/// A whole answer as a `GenerateContentResponse`, for a client that asked for `client_model`
/// (`thoughts`: the client asked to see thoughts).
pub fn response_with(resp: &Response, client_model: &str, thoughts: bool) -> Vec<u8> {
    let body = ChunkOut {
        candidates: [CandidateOut {
            content: ContentOut {
                role: "model",
                parts: answer_parts(&resp.content, thoughts),
            },
            finish_reason: Some(finish_reason(resp.stop)),
            index: 0,
        }],
        usage_metadata: resp.metering.as_ref().map(usage),
        model_version: client_model,
        response_id: &resp.id,
    };
    let mut out = Vec::new();
    put_json(&mut out, &body);
    out
}

/// A whole answer as a `GenerateContentResponse`, thoughts included.
pub fn response(resp: &Response, client_model: &str) -> Vec<u8> {
    response_with(resp, client_model, true)
}

/// An upstream's refusal in Google's shape. Anthropic's 529 (overloaded) is Google's 503
/// UNAVAILABLE: Gemini clients know no 529.
pub fn error(err: &UpstreamError) -> (u16, Vec<u8>) {
    let status = if err.status == 529 { 503 } else { err.status };
    (status, super::error_body(status, &err.message_or_generic()))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// Writes a Gemini client's stream in its framing: a chunk per text or thought delta, a function
/// call whole in one chunk once its arguments are complete, and a last chunk with the finish
/// reason and the usage.
pub struct Stream {
    model: String,
    id: String,
    framing: Framing,
    thoughts: bool,
    /// The array's `[` was written.
    opened: bool,
    finished: bool,
    /// A sealed reasoning block waiting for the next part ([`super::seal`]).
    signature: Option<String>,
    /// The text of the thinking block being received, sealed with its signature.
    thinking: String,
    /// The call being received: block index, id, name, arguments so far.
    call: Option<(usize, String, String, String)>,
    stop: Option<StopReason>,
    metering: Option<Metering>,
}

impl Stream {
    /// `response_id` names the answer when the upstream gives no id; `thoughts`: the client
    /// asked to see thoughts.
    pub fn new(client_model: &str, response_id: &str, framing: Framing, thoughts: bool) -> Stream {
        Stream {
            model: client_model.to_string(),
            id: response_id.to_string(),
            framing,
            thoughts,
            opened: false,
            finished: false,
            signature: None,
            thinking: String::new(),
            call: None,
            stop: None,
            metering: None,
        }
    }

    fn put(&mut self, parts: Vec<PartOut<'_>>, last: bool, out: &mut Vec<u8>) {
        let chunk = ChunkOut {
            candidates: [CandidateOut {
                content: ContentOut {
                    role: "model",
                    parts,
                },
                finish_reason: last
                    .then(|| finish_reason(self.stop.unwrap_or(StopReason::EndTurn))),
                index: 0,
            }],
            usage_metadata: if last {
                self.metering.as_ref().map(usage)
            } else {
                None
            },
            model_version: &self.model,
            response_id: &self.id,
        };
        let mut json = Vec::new();
        put_json(&mut json, &chunk);
        match self.framing {
            Framing::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\r\n\r\n");
            }
            Framing::JsonArray => {
                out.extend_from_slice(if self.opened {
                    super::relay::ARRAY_SEPARATOR
                } else {
                    b"["
                });
                self.opened = true;
                out.extend_from_slice(&json);
            }
        }
    }

    /// A sealed block to ride on the next part; one already waiting goes out first on an empty
    /// text part of its own.
    fn pend(&mut self, sealed: Option<String>, out: &mut Vec<u8>) {
        if let Some(sealed) = sealed
            && let Some(earlier) = self.signature.replace(sealed)
        {
            self.put(vec![signature_part(earlier)], false, out);
        }
    }

    /// One part, with the waiting signature.
    fn put_part(&mut self, mut part: PartOut<'_>, out: &mut Vec<u8>) {
        if part.thought != Some(true) {
            part.thought_signature = self.signature.take().map(Cow::Owned);
        }
        self.put(vec![part], false, out);
    }

    fn flush_call(&mut self, out: &mut Vec<u8>) {
        let Some((_, id, name, arguments)) = self.call.take() else {
            return;
        };
        let arguments = Arguments::Text(arguments);
        let part = PartOut {
            function_call: Some(FunctionCallOut {
                id: &id,
                name: &name,
                args: args(&arguments, &id).unwrap_or_else(|_| empty_object()),
            }),
            ..PartOut::default()
        };
        let mut part = part;
        part.thought_signature = self.signature.take().map(Cow::Owned);
        self.put(vec![part], false, out);
    }
}

impl StreamEncode for Stream {
    fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        match event {
            Event::Start { id, .. } => {
                if !id.is_empty() {
                    self.id.clone_from(id);
                }
            }
            Event::BlockStart {
                index,
                block: BlockStart::ToolCall { id, name },
            } => {
                self.flush_call(out);
                self.call = Some((*index, id.clone(), name.clone(), String::new()));
            }
            Event::BlockStart {
                block: BlockStart::RedactedThinking { data },
                ..
            } => {
                let block = Block::RedactedThinking { data: data.clone() };
                self.pend(super::seal(&block), out);
            }
            Event::BlockStart {
                block: BlockStart::Thinking,
                ..
            } => self.thinking.clear(),
            Event::BlockStart { .. } => {}
            Event::Delta { index, delta } => match delta {
                Delta::Text(text) if !text.is_empty() => self.put_part(text_part(text), out),
                Delta::Thinking(text) if !text.is_empty() => {
                    self.thinking.push_str(text);
                    if self.thoughts {
                        let part = PartOut {
                            text: Some(Cow::Borrowed(text)),
                            thought: Some(true),
                            ..PartOut::default()
                        };
                        self.put_part(part, out);
                    }
                }
                Delta::Signature(s) if !s.is_empty() => {
                    let block = Block::Thinking {
                        text: std::mem::take(&mut self.thinking),
                        signature: Some(s.clone()),
                    };
                    self.pend(super::seal(&block), out);
                }
                Delta::ToolArguments(more) => {
                    if let Some((i, _, _, arguments)) = &mut self.call
                        && *i == *index
                    {
                        arguments.push_str(more);
                    }
                }
                _ => {}
            },
            Event::BlockStop { index } => {
                if self.call.as_ref().is_some_and(|(i, ..)| i == index) {
                    self.flush_call(out);
                }
            }
            Event::Stop { reason, .. } => self.stop = Some(*reason),
            Event::Metering(m) => self.metering = Some(*m),
            Event::End => self.finish(out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.flush_call(out);
        self.finished = true;
        let part = PartOut {
            text: Some(Cow::Borrowed("")),
            thought_signature: self.signature.take().map(Cow::Owned),
            ..PartOut::default()
        };
        self.put(vec![part], true, out);
        if self.framing == Framing::JsonArray {
            out.push(b']');
        }
    }

    fn error_event(&self, message: &str) -> Vec<u8> {
        super::relay::error_event(self.framing, self.opened, message)
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
