//! Gemini bytes into the shape: a Gemini client's request, a Gemini upstream's answer, stream
//! and errors.
//!
//! # How Gemini's parts map
//!
//! - `text` is text; `thought: true` text is thinking, its `thoughtSignature` the signature.
//! - A `thoughtSignature` on any other part (a `functionCall`, an answer's text) is reasoning
//!   state with no text: a [`Block::Thinking`] with empty text and that signature, just before
//!   the block the part becomes, so that a Gemini encoder puts it back on that part.
//! - `functionCall` is a tool call. Gemini often sends no `id`: one is made from the call's
//!   place in the conversation (`call_<turn>_<n>`), which stays the same each time the client
//!   sends the history again; a `functionResponse` without an id answers the oldest unanswered
//!   call of its name.
//! - `inlineData` and `fileData` of an image type are images; other types (PDF, audio, video)
//!   have no block in the shape and are dropped and named.
//! - Google's JSON parser takes both spellings of a field (`systemInstruction` and
//!   `system_instruction`; the google-genai SDK sends `parameters_json_schema`), so both are read.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

use super::UsageIn;
use crate::protocol::shape::{
    Arguments, Block, BlockStart, Delta, Event, Image, Message, Metering, Reasoning, Request,
    Response, ResponseFormat, Role, StopReason, StreamDecode, StreamNote, Tool, ToolChoice,
    TranslateError, UpstreamError,
};
use crate::protocol::wire::{self, note, opt_field, present, top_level};

/// The signature Google documents for a function call whose real signature is unknown
/// (https://ai.google.dev/gemini-api/docs/thought-signatures, "skip_thought_signature_validator"):
/// it carries no reasoning, so it is not kept as thinking for other upstreams.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ContentIn<'a> {
    #[serde(default)]
    role: Option<String>,
    #[serde(default, borrow)]
    parts: Option<Vec<PartIn<'a>>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct PartIn<'a> {
    #[serde(default)]
    pub(crate) text: Option<String>,
    #[serde(default)]
    pub(crate) thought: Option<bool>,
    #[serde(rename = "thoughtSignature", alias = "thought_signature", default)]
    pub(crate) thought_signature: Option<String>,
    #[serde(rename = "inlineData", alias = "inline_data", default)]
    inline_data: Option<BlobIn>,
    #[serde(rename = "fileData", alias = "file_data", default)]
    file_data: Option<FileDataIn>,
    #[serde(rename = "functionCall", alias = "function_call", default, borrow)]
    pub(crate) function_call: Option<FunctionCallIn<'a>>,
    #[serde(
        rename = "functionResponse",
        alias = "function_response",
        default,
        borrow
    )]
    function_response: Option<FunctionResponseIn<'a>>,
    #[serde(rename = "executableCode", alias = "executable_code", default, borrow)]
    executable_code: Option<&'a RawValue>,
    #[serde(
        rename = "codeExecutionResult",
        alias = "code_execution_result",
        default,
        borrow
    )]
    code_execution_result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BlobIn {
    #[serde(rename = "mimeType", alias = "mime_type", default)]
    mime_type: String,
    #[serde(default)]
    data: String,
}

#[derive(Deserialize)]
struct FileDataIn {
    #[serde(rename = "mimeType", alias = "mime_type", default)]
    mime_type: String,
    #[serde(rename = "fileUri", alias = "file_uri", default)]
    file_uri: String,
}

#[derive(Deserialize)]
pub(crate) struct FunctionCallIn<'a> {
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default, borrow)]
    pub(crate) args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FunctionResponseIn<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default, borrow)]
    response: Option<&'a RawValue>,
    #[serde(default, borrow)]
    parts: Option<&'a RawValue>,
}

/// A `tools[]` entry: its `functionDeclarations`, and whatever else it is (`googleSearch`,
/// `codeExecution`, `urlContext`, …), by key.
type ToolIn<'a> = BTreeMap<String, &'a RawValue>;

#[derive(Deserialize)]
struct FunctionDeclarationIn<'a> {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(
        rename = "parametersJsonSchema",
        alias = "parameters_json_schema",
        default,
        borrow
    )]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolConfigIn {
    #[serde(
        rename = "functionCallingConfig",
        alias = "function_calling_config",
        default
    )]
    function_calling_config: Option<FunctionCallingConfigIn>,
}

#[derive(Deserialize)]
struct FunctionCallingConfigIn {
    #[serde(default)]
    mode: Option<String>,
    #[serde(
        rename = "allowedFunctionNames",
        alias = "allowed_function_names",
        default
    )]
    allowed_function_names: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ThinkingConfigIn {
    #[serde(rename = "thinkingBudget", alias = "thinking_budget", default)]
    thinking_budget: Option<i64>,
    #[serde(rename = "thinkingLevel", alias = "thinking_level", default)]
    thinking_level: Option<String>,
}

/// Pairs tool results with calls when Gemini gave no ids.
#[derive(Default)]
struct Calls {
    /// Calls not yet answered: (id, name), oldest first.
    open: Vec<(String, String)>,
}

impl Calls {
    fn call(&mut self, id: Option<String>, name: &str, turn: usize, n: usize) -> String {
        let id = id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("call_{turn}_{n}"));
        self.open.push((id.clone(), name.to_string()));
        id
    }

    fn answer(&mut self, id: Option<String>, name: &str) -> String {
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            self.open.retain(|(open, _)| *open != id);
            return id;
        }
        match self.open.iter().position(|(_, n)| n == name) {
            Some(i) => self.open.remove(i).0,
            // A result for a call the history does not hold: named after the function, so that
            // the upstream says what is wrong.
            None => format!("call_{name}"),
        }
    }
}

/// A Gemini client's request. The model and whether it streams are in the URL: the caller sets
/// them. Refused: a body that is not an object, a field of the wrong type, no `contents`, a role
/// other than `user`/`model`, and `candidateCount > 1` (one answer is all any translation
/// returns).
pub fn request(body: &[u8]) -> Result<Request<'_>, TranslateError> {
    let top = top_level(body)?;
    let mut req = Request {
        include_usage: true,
        ..Request::default()
    };
    let mut contents = None;
    let mut tools = None;
    let mut tool_config = None;
    for (key, &raw) in &top {
        match key.as_str() {
            "contents" => contents = Some(raw),
            "systemInstruction" | "system_instruction" => {
                if let Some(c) = opt_field::<ContentIn<'_>>(raw, "systemInstruction")? {
                    let text = c
                        .parts
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|p| p.text)
                        .collect::<Vec<_>>()
                        .join("\n");
                    if !text.is_empty() {
                        req.system.push(text);
                    }
                }
            }
            "tools" => tools = opt_field::<Vec<ToolIn<'_>>>(raw, "tools")?,
            "toolConfig" | "tool_config" => {
                tool_config = opt_field::<ToolConfigIn>(raw, "toolConfig")?;
            }
            "generationConfig" | "generation_config" => {
                if let Some(config) =
                    opt_field::<BTreeMap<String, &RawValue>>(raw, "generationConfig")?
                {
                    generation_config(&config, &mut req)?;
                }
            }
            // Gemini-only settings: kept byte for byte on a same-dialect call, named here.
            "safetySettings" | "safety_settings" | "cachedContent" | "cached_content"
            | "labels" => {
                if present(raw).is_some() {
                    note(&mut req.dropped, key);
                }
            }
            // The model is in the URL; a body's copy says nothing more.
            "model" => {}
            _ => note(&mut req.dropped, key),
        }
    }
    let Some(contents) = contents else {
        return Err(TranslateError::new(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    };
    let contents: Vec<ContentIn<'_>> = serde_json::from_str(contents.get())
        .map_err(|e| TranslateError::new(format!("Invalid 'contents': {e}")))?;
    let mut calls = Calls::default();
    for (turn, content) in contents.into_iter().enumerate() {
        let role = match content.role.as_deref() {
            None | Some("user" | "") => Role::User,
            Some("model") => Role::Assistant,
            Some(other) => {
                return Err(TranslateError::new(format!(
                    "Please use a valid role: user, model. (contents[{turn}].role is '{other}')"
                )));
            }
        };
        let mut blocks = Vec::new();
        let mut n = 0;
        for part in content.parts.unwrap_or_default() {
            part_blocks(
                part,
                role,
                turn,
                &mut n,
                &mut calls,
                &mut blocks,
                &mut req.dropped,
            );
        }
        // Tool results lead a user turn, as dialects that pair them with calls require.
        if role == Role::User {
            blocks.sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
        }
        if blocks.is_empty() {
            continue;
        }
        match req.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => req.messages.push(Message {
                role,
                content: blocks,
            }),
        }
    }
    for tool in tools.unwrap_or_default() {
        for (key, raw) in tool {
            if key != "functionDeclarations" && key != "function_declarations" {
                if present(raw).is_some() {
                    note(&mut req.dropped, &format!("tools.{key}"));
                }
                continue;
            }
            let declarations =
                opt_field::<Vec<FunctionDeclarationIn<'_>>>(raw, "tools.functionDeclarations")?;
            for f in declarations.unwrap_or_default() {
                req.tools.push(Tool {
                    name: f.name,
                    description: f.description,
                    parameters: f
                        .parameters_json_schema
                        .and_then(present)
                        .or(f.parameters.and_then(present)),
                    strict: None,
                });
            }
        }
    }
    if let Some(config) = tool_config.and_then(|c| c.function_calling_config) {
        let names = config.allowed_function_names.unwrap_or_default();
        req.tool_choice = match config
            .mode
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("MODE_UNSPECIFIED") if names.is_empty() => None,
            Some("NONE") => Some(ToolChoice::None),
            Some("ANY") | None | Some("MODE_UNSPECIFIED") => match names.as_slice() {
                [one] => Some(ToolChoice::Named(one.clone())),
                [] => Some(ToolChoice::Required),
                _ => {
                    note(
                        &mut req.dropped,
                        "toolConfig.functionCallingConfig.allowedFunctionNames",
                    );
                    Some(ToolChoice::Required)
                }
            },
            Some("VALIDATED") => {
                note(&mut req.dropped, "toolConfig.functionCallingConfig.mode");
                Some(ToolChoice::Auto)
            }
            _ => Some(ToolChoice::Auto),
        };
        if !names.is_empty() && matches!(req.tool_choice, Some(ToolChoice::Auto)) {
            note(
                &mut req.dropped,
                "toolConfig.functionCallingConfig.allowedFunctionNames",
            );
        }
    }
    Ok(req)
}

/// `generationConfig` into the request's settings, field by field (both spellings of each).
fn generation_config<'a>(
    config: &BTreeMap<String, &'a RawValue>,
    req: &mut Request<'a>,
) -> Result<(), TranslateError> {
    let mut mime_type: Option<String> = None;
    let mut schema = None;
    for (key, &raw) in config {
        let Some(raw) = present(raw) else {
            continue;
        };
        match key.as_str() {
            "candidateCount" | "candidate_count" => {
                if opt_field::<u64>(raw, "generationConfig.candidateCount")?.is_some_and(|n| n > 1)
                {
                    return Err(TranslateError::new(
                        "candidateCount > 1 is not supported by the upstream serving this model",
                    ));
                }
            }
            "temperature" => {
                opt_field::<f64>(raw, "generationConfig.temperature")?;
                req.temperature = Some(raw);
            }
            "topP" | "top_p" => {
                opt_field::<f64>(raw, "generationConfig.topP")?;
                req.top_p = Some(raw);
            }
            "maxOutputTokens" | "max_output_tokens" => {
                req.max_output_tokens = opt_field(raw, "generationConfig.maxOutputTokens")?;
            }
            "stopSequences" | "stop_sequences" => {
                req.stop = opt_field::<Vec<String>>(raw, "generationConfig.stopSequences")?
                    .unwrap_or_default();
            }
            "responseMimeType" | "response_mime_type" => {
                mime_type = opt_field(raw, "generationConfig.responseMimeType")?;
            }
            // A JSON Schema is preferred to the OpenAPI subset when both are given.
            "responseJsonSchema" | "response_json_schema" | "_responseJsonSchema" => {
                schema = Some(raw);
            }
            "responseSchema" | "response_schema" => {
                schema = schema.or(Some(raw));
            }
            "thinkingConfig" | "thinking_config" => {
                if let Some(thinking) =
                    opt_field::<ThinkingConfigIn>(raw, "generationConfig.thinkingConfig")?
                {
                    req.reasoning = match (thinking.thinking_level, thinking.thinking_budget) {
                        (Some(level), _) if !level.is_empty() => {
                            Some(Reasoning::Effort(level.to_ascii_lowercase()))
                        }
                        (_, Some(0)) => Some(Reasoning::Disabled),
                        (_, Some(b)) if b > 0 => Some(Reasoning::Budget(b.unsigned_abs())),
                        // -1: the model decides, as when nothing is said.
                        _ => None,
                    };
                }
            }
            // What the shape has no place for: `topK`, `seed`, penalties, modalities, …
            _ => note(&mut req.dropped, &format!("generationConfig.{key}")),
        }
    }
    req.response_format = match mime_type.as_deref() {
        Some("application/json") => Some(match schema {
            Some(schema) => ResponseFormat::JsonSchema {
                name: "response".into(),
                schema,
                strict: None,
                description: None,
            },
            None => ResponseFormat::JsonObject,
        }),
        None | Some("text/plain") if schema.is_none() => None,
        _ => {
            note(&mut req.dropped, "generationConfig.responseMimeType");
            None
        }
    };
    Ok(())
}

/// One part as blocks (a signature on a non-thought part becomes an empty thinking block first).
fn part_blocks<'a>(
    part: PartIn<'a>,
    role: Role,
    turn: usize,
    n: &mut usize,
    calls: &mut Calls,
    blocks: &mut Vec<Block<'a>>,
    dropped: &mut Vec<String>,
) {
    let signature = part
        .thought_signature
        .filter(|s| !s.is_empty() && s != SKIP_SIGNATURE);
    if part.thought == Some(true) {
        let text = part.text.unwrap_or_default();
        match signature.as_deref().and_then(super::unseal) {
            Some(sealed) => blocks.push(sealed),
            None if !text.is_empty() || signature.is_some() => {
                blocks.push(Block::Thinking { text, signature });
            }
            None => {}
        }
        return;
    }
    if let Some(signature) = signature {
        // Another upstream's reasoning that a Gemini client carried back, or Gemini's own
        // signature for the part it rides on.
        blocks.push(super::unseal(&signature).unwrap_or(Block::Thinking {
            text: String::new(),
            signature: Some(signature),
        }));
    }
    if let Some(text) = part.text {
        if !text.is_empty() {
            blocks.push(Block::Text(text));
        }
    } else if let Some(blob) = part.inline_data {
        if blob.mime_type.starts_with("image/") {
            blocks.push(Block::Image(Image::Base64 {
                media_type: blob.mime_type,
                data: blob.data,
            }));
        } else {
            note(dropped, "contents.parts.inlineData");
        }
    } else if let Some(file) = part.file_data {
        let is_url = file.file_uri.starts_with("https://") || file.file_uri.starts_with("http://");
        if file.mime_type.starts_with("image/") && is_url {
            blocks.push(Block::Image(Image::Url(file.file_uri)));
        } else {
            note(dropped, "contents.parts.fileData");
        }
    } else if let Some(call) = part.function_call {
        if role == Role::User {
            note(dropped, "contents.parts.functionCall");
            return;
        }
        let id = calls.call(call.id, &call.name, turn, *n);
        *n += 1;
        blocks.push(Block::ToolCall {
            id,
            name: call.name,
            arguments: match call.args.and_then(present) {
                Some(raw) => Arguments::Raw(raw),
                None => Arguments::Text(String::new()),
            },
        });
    } else if let Some(response) = part.function_response {
        let call_id = calls.answer(response.id, &response.name);
        let (content, is_error) = tool_result(response.response);
        if response.parts.and_then(present).is_some() {
            note(dropped, "contents.parts.functionResponse.parts");
        }
        blocks.push(Block::ToolResult {
            call_id,
            content,
            is_error,
        });
    } else if part.executable_code.is_some() || part.code_execution_result.is_some() {
        note(dropped, "contents.parts.executableCode");
    }
}

/// A `functionResponse.response` as a tool result: the text of its `output` (or `result`, or
/// `content`) when that is a string, the text of its `error` as an error, else the object's JSON.
fn tool_result<'a>(response: Option<&RawValue>) -> (Vec<Block<'a>>, Option<bool>) {
    let Some(raw) = response.and_then(present) else {
        return (Vec::new(), None);
    };
    #[derive(Deserialize)]
    struct Known<'r> {
        #[serde(default, borrow)]
        output: Option<&'r RawValue>,
        #[serde(default, borrow)]
        result: Option<&'r RawValue>,
        #[serde(default, borrow)]
        content: Option<&'r RawValue>,
        #[serde(default, borrow)]
        error: Option<&'r RawValue>,
    }
    let entries = crate::protocol::json::object::<BTreeMap<String, serde::de::IgnoredAny>>(raw)
        .map(|m| m.len())
        .unwrap_or(0);
    let text_of = |r: &RawValue| {
        serde_json::from_str::<String>(r.get()).unwrap_or_else(|_| wire::compact_json(r.get()))
    };
    if entries == 1
        && let Some(known) = crate::protocol::json::object::<Known<'_>>(raw)
    {
        if let Some(error) = known.error.and_then(present) {
            return (vec![Block::Text(text_of(error))], Some(true));
        }
        if let Some(value) = known.output.or(known.result).or(known.content) {
            let text = text_of(value);
            return (
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![Block::Text(text)]
                },
                None,
            );
        }
    }
    (vec![Block::Text(wire::compact_json(raw.get()))], None)
}

// ---------------------------------------------------------------------------------------------
// OpenAPI schemas
// ---------------------------------------------------------------------------------------------

/// The type names of Gemini's OpenAPI `Schema`, which Google takes in upper case (google-genai
/// writes `parameters` and `responseSchema` with them: `"type": "OBJECT"`) and JSON Schema
/// knows only in lower case.
const OPENAPI_TYPES: [&str; 7] = [
    "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL",
];

/// `schema` with each `"type"` key's upper-case OpenAPI type name in lower case, every other
/// byte as it was; `None` when there is none.
fn lowercase_types(schema: &str) -> Option<String> {
    let bytes = schema.as_bytes();
    // The end of the string token that starts at `start` (a `"`), just past its closing quote.
    let string_end = |start: usize| {
        let mut i = start + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    };
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut out = String::with_capacity(schema.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(i)?;
        let colon = skip_ws(end);
        if &schema[i..end] == "\"type\"" && bytes.get(colon) == Some(&b':') {
            let value = skip_ws(colon + 1);
            if bytes.get(value) == Some(&b'"') {
                let value_end = string_end(value)?;
                let name = &schema[value + 1..value_end - 1];
                if OPENAPI_TYPES.contains(&name) {
                    out.push_str(&schema[copied..value + 1]);
                    out.push_str(&name.to_ascii_lowercase());
                    copied = value_end - 1;
                }
                i = value_end;
                continue;
            }
        }
        i = end;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&schema[copied..]);
    Some(out)
}

/// A Gemini client's body with its OpenAPI schemas (`functionDeclarations[].parameters`,
/// `generationConfig.responseSchema`) in JSON Schema's lower-case type names, for an upstream
/// of another dialect; every other byte as it was. `None` when nothing needs it (or the body is
/// not one [`request`] would read).
pub fn json_schema_types(body: &[u8]) -> Option<Vec<u8>> {
    use crate::protocol::json::{Entries, write_object};
    let Entries(top) = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    // One object's entries with `field` rewritten by `f` when it returns something.
    let rewrite = |raw: &RawValue, field: &[&str], f: &dyn Fn(&RawValue) -> Option<String>| {
        let Entries(entries) = serde_json::from_str(raw.get()).ok()?;
        let mut any = false;
        let out = write_object(
            &entries,
            |key, value| {
                let new = field.contains(&key).then(|| f(value)).flatten();
                any |= new.is_some();
                new
            },
            &[],
        );
        any.then(|| String::from_utf8(out).ok()).flatten()
    };
    let schema = |raw: &RawValue| lowercase_types(raw.get());
    let declarations = |raw: &RawValue| {
        let list: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
        let new: Vec<Option<String>> = list
            .iter()
            .map(|d| rewrite(d, &["parameters"], &schema))
            .collect();
        new.iter().any(Option::is_some).then(|| {
            let items: Vec<&str> = new
                .iter()
                .zip(&list)
                .map(|(n, d)| n.as_deref().unwrap_or(d.get()))
                .collect();
            format!("[{}]", items.join(","))
        })
    };
    let tool = |raw: &RawValue| {
        rewrite(
            raw,
            &["functionDeclarations", "function_declarations"],
            &declarations,
        )
    };
    let tools = |raw: &RawValue| {
        let list: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
        let new: Vec<Option<String>> = list.iter().map(|t| tool(t)).collect();
        new.iter().any(Option::is_some).then(|| {
            let items: Vec<&str> = new
                .iter()
                .zip(&list)
                .map(|(n, t)| n.as_deref().unwrap_or(t.get()))
                .collect();
            format!("[{}]", items.join(","))
        })
    };
    let config = |raw: &RawValue| rewrite(raw, &["responseSchema", "response_schema"], &schema);
    let out = write_object(
        &top,
        |key, value| {
            let new = match key {
                "tools" => tools(value),
                "generationConfig" | "generation_config" => config(value),
                _ => None,
            };
            changed |= new.is_some();
            new
        },
        &[],
    );
    changed.then_some(out)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ResponseIn<'a> {
    #[serde(default, borrow)]
    candidates: Option<Vec<CandidateIn<'a>>>,
    #[serde(rename = "promptFeedback", default)]
    prompt_feedback: Option<PromptFeedbackIn>,
    #[serde(rename = "usageMetadata", default, borrow)]
    usage_metadata: Option<&'a RawValue>,
    #[serde(rename = "modelVersion", default)]
    model_version: Option<String>,
    #[serde(rename = "responseId", default)]
    response_id: Option<String>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CandidateIn<'a> {
    #[serde(default, borrow)]
    content: Option<ContentIn<'a>>,
    #[serde(rename = "finishReason", default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u64>,
}

#[derive(Deserialize)]
struct PromptFeedbackIn {
    #[serde(rename = "blockReason", default)]
    block_reason: Option<String>,
}

/// A Gemini `finishReason` in the shape: safety-like reasons are a refusal, so each client
/// dialect shows its own (`content_filter`, `refusal`, an incomplete response).
pub fn stop_reason(finish_reason: &str, called: bool) -> StopReason {
    match finish_reason {
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY"
        | "RECITATION"
        | "PROHIBITED_CONTENT"
        | "BLOCKLIST"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => StopReason::Refusal,
        _ if called => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

fn metering(raw: Option<&RawValue>) -> Option<Metering> {
    raw.and_then(crate::protocol::json::object::<UsageIn>)
        .and_then(|u| u.metering())
}

/// A Gemini upstream's whole answer in the shape: the first candidate's parts. `None` when the
/// body is not a `GenerateContentResponse`.
pub fn response(body: &[u8]) -> Option<Response> {
    super::answer(body)?;
    let resp = serde_json::from_slice::<ResponseIn<'_>>(body).ok()?;
    if resp.error.and_then(present).is_some() {
        return None;
    }
    let candidate = resp
        .candidates
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.index.unwrap_or(0) == 0);
    let blocked = resp
        .prompt_feedback
        .and_then(|f| f.block_reason)
        .is_some_and(|r| !r.is_empty());
    let mut content = Vec::new();
    let mut calls = Calls::default();
    let mut n = 0;
    let mut dropped = Vec::new();
    let mut finish = None;
    if let Some(candidate) = candidate {
        finish = candidate.finish_reason;
        for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
            let mut blocks = Vec::new();
            part_blocks(
                part,
                Role::Assistant,
                0,
                &mut n,
                &mut calls,
                &mut blocks,
                &mut dropped,
            );
            content.extend(blocks.into_iter().map(owned));
        }
    }
    let called = content.iter().any(|b| matches!(b, Block::ToolCall { .. }));
    let stop = match finish.as_deref() {
        _ if blocked => StopReason::Refusal,
        Some(reason) => stop_reason(reason, called),
        None if called => StopReason::ToolUse,
        None => StopReason::EndTurn,
    };
    Some(Response {
        id: resp.response_id.unwrap_or_default(),
        model: resp.model_version.unwrap_or_default(),
        content,
        stop,
        stop_sequence: None,
        metering: metering(resp.usage_metadata),
    })
}

/// A block that borrows from a body, as one that owns its data.
fn owned(block: Block<'_>) -> Block<'static> {
    match block {
        Block::Text(t) => Block::Text(t),
        Block::Image(i) => Block::Image(i),
        Block::ToolCall {
            id,
            name,
            arguments,
        } => Block::ToolCall {
            id,
            name,
            arguments: Arguments::Text(match arguments {
                Arguments::Raw(raw) => wire::compact_json(raw.get()),
                Arguments::Text(t) => t,
            }),
        },
        Block::ToolResult {
            call_id,
            content,
            is_error,
        } => Block::ToolResult {
            call_id,
            content: content.into_iter().map(owned).collect(),
            is_error,
        },
        Block::Thinking { text, signature } => Block::Thinking { text, signature },
        Block::RedactedThinking { data } => Block::RedactedThinking { data },
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A Gemini upstream's refusal: Google's `{"error":{"code","message","status","details"}}`.
pub fn error(status: u16, body: &[u8]) -> UpstreamError {
    UpstreamError {
        status,
        message: wire::error_body_message(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
}

/// Reads a Gemini upstream's `alt=sse` stream: each event is a whole `GenerateContentResponse`
/// whose parts are the new pieces. Text and thoughts arrive as deltas; a function call arrives
/// whole in one part. `usageMetadata` may come on several chunks, each the total so far. There
/// is no end marker: the stream ends when the body does.
#[derive(Default)]
pub struct Stream {
    started: bool,
    next_block: usize,
    open: Option<(Open, usize)>,
    calls: Calls,
    n: usize,
    called: bool,
    stopped: bool,
}

impl Stream {
    pub fn new() -> Stream {
        Stream::default()
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((_, index)) = self.open.take() {
            out.push(Event::BlockStop { index });
        }
    }

    fn open(&mut self, block: BlockStart, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        out.push(Event::BlockStart { index, block });
        index
    }

    /// Text or thinking into the open block of its kind, or a new one.
    fn delta(&mut self, kind: Open, text: String, out: &mut Vec<Event>) {
        let index = match self.open {
            Some((k, index)) if k == kind => index,
            _ => {
                let block = match kind {
                    Open::Text => BlockStart::Text,
                    Open::Thinking => BlockStart::Thinking,
                };
                let index = self.open(block, out);
                self.open = Some((kind, index));
                index
            }
        };
        let delta = match kind {
            Open::Text => Delta::Text(text),
            Open::Thinking => Delta::Thinking(text),
        };
        out.push(Event::Delta { index, delta });
    }

    /// A signature: on the open thinking block, or on an empty one of its own.
    fn signature(&mut self, signature: String, out: &mut Vec<Event>) {
        let index = match self.open {
            Some((Open::Thinking, index)) => index,
            _ => self.open(BlockStart::Thinking, out),
        };
        out.push(Event::Delta {
            index,
            delta: Delta::Signature(signature),
        });
        // A signature ends its thinking: what follows is another block.
        out.push(Event::BlockStop { index });
        self.open = None;
    }

    /// One part; whether it showed anything.
    fn part(&mut self, part: PartIn<'_>, out: &mut Vec<Event>) -> bool {
        let signature = part
            .thought_signature
            .filter(|s| !s.is_empty() && s != SKIP_SIGNATURE);
        if part.thought == Some(true) {
            let text = part.text.unwrap_or_default();
            let shown = !text.is_empty();
            if shown {
                self.delta(Open::Thinking, text, out);
            }
            if let Some(signature) = signature {
                self.signature(signature, out);
                return true;
            }
            return shown;
        }
        if let Some(signature) = signature {
            // Reasoning state for the part it rides on; a Gemini encoder puts it back there.
            self.close(out);
            self.signature(signature, out);
        }
        if let Some(call) = part.function_call {
            let id = self.calls.call(call.id, &call.name, 0, self.n);
            self.n += 1;
            self.called = true;
            let index = self.open(
                BlockStart::ToolCall {
                    id,
                    name: call.name,
                },
                out,
            );
            let arguments = call
                .args
                .and_then(present)
                .map(|raw| wire::compact_json(raw.get()))
                .unwrap_or_else(|| "{}".into());
            out.push(Event::Delta {
                index,
                delta: Delta::ToolArguments(arguments),
            });
            out.push(Event::BlockStop { index });
            return true;
        }
        match part.text {
            Some(text) if !text.is_empty() => {
                self.delta(Open::Text, text, out);
                true
            }
            _ => false,
        }
    }
}

impl StreamDecode for Stream {
    /// Reads one event's data (a chunk's JSON); the event name is not consulted.
    fn event(&mut self, _name: Option<&[u8]>, data: &[u8], out: &mut Vec<Event>) -> StreamNote {
        let data = data.trim_ascii();
        let chunk = (data.first() == Some(&b'{'))
            .then(|| serde_json::from_slice::<ResponseIn<'_>>(data).ok())
            .flatten();
        let Some(chunk) = chunk else {
            return StreamNote::Nothing;
        };
        if let Some(m) = metering(chunk.usage_metadata) {
            out.push(Event::Metering(m));
        }
        if let Some(error) = chunk.error.and_then(present) {
            return StreamNote::Error(wire::error_object_message(error));
        }
        if self.stopped {
            return StreamNote::Nothing;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: chunk.response_id.clone().unwrap_or_default(),
                model: chunk.model_version.clone().unwrap_or_default(),
            });
        }
        let mut note = StreamNote::Nothing;
        let candidate = chunk
            .candidates
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.index.unwrap_or(0) == 0);
        let blocked = chunk
            .prompt_feedback
            .and_then(|f| f.block_reason)
            .is_some_and(|r| !r.is_empty());
        let mut finish = None;
        if let Some(candidate) = candidate {
            for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
                if self.part(part, out) {
                    note = StreamNote::Content;
                }
            }
            finish = candidate.finish_reason.filter(|r| !r.is_empty());
        }
        if finish.is_some() || blocked {
            self.close(out);
            self.stopped = true;
            let reason = match finish.as_deref() {
                _ if blocked => StopReason::Refusal,
                Some(reason) => stop_reason(reason, self.called),
                None => StopReason::EndTurn,
            };
            out.push(Event::Stop {
                reason,
                stop_sequence: None,
            });
            note = StreamNote::Content;
        }
        note
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
