//! The OpenAI Responses API (`POST /v1/responses`), stateless: what the request path needs
//! without translating (request peek and rewrite, built-in tool checks, pass-through scanning of
//! an upstream's answer and stream, the client's error shapes), and the codecs to and from the
//! internal shape ([`decode`], [`encode`]).
//!
//! Wire facts come from OpenAI's API reference and the official SDK's types
//! (openai/openai-python `src/openai/types/responses/`), from recorded streams
//! (`testkit/samples/openai-responses-*`), and from what Codex CLI sends and requires
//! (openai/codex `codex-rs/codex-api/src/sse/responses.rs`, `codex-rs/tools/src/tool_spec.rs`).
//!
//! The gateway stores nothing: a client sends the whole conversation in `input` every time, so
//! `previous_response_id`, `conversation` and `background` are refused; `store` and `include`
//! are accepted and have no effect on the gateway.

pub mod decode;
pub mod encode;
pub mod relay;

use super::json::{Entries, first_byte, write_object};
use super::shape::{Metering, Usage};
use super::wire;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The client's error shape is OpenAI's, as for chat completions.
pub use super::openai_chat::{RequestError, error_body, upstream_error};

/// The namespace Codex gives top-level function tools (`DEFAULT_FUNCTION_NAMESPACE` in
/// `codex-rs/protocol/src/tool_name.rs`): its members are called by their bare name.
pub const DEFAULT_NAMESPACE: &str = "functions";

/// Tool types a client may send besides `function`, `namespace` and `custom`: OpenAI's built-in
/// (hosted) tools and the client-side kinds with call items of their own
/// (`local_shell`/`shell`/`apply_patch`). From the `ToolParam` union of openai-python
/// `types/responses/tool_param.py`. None of them can be served by an upstream that is not
/// OpenAI's Responses API: translation drops them and names them.
///
/// A `custom` tool (free-text input, Codex's `apply_patch` and, for its newer models, `exec`)
/// translates: it becomes a function taking `{"input": string}`, as Codex's own Anthropic
/// adapter sends it (`codex-api`'s `function_tool_to_anthropic`), and its call goes back to the
/// client as a `custom_tool_call` with that input.
pub const BUILTIN_TOOL_TYPES: &[&str] = &[
    "web_search",
    "web_search_2025_08_26",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "computer",
    "computer_use",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "tool_search",
    "programmatic_tool_calling",
];

fn refuse(message: impl Into<String>, param: Option<&'static str>) -> RequestError {
    RequestError {
        message: message.into(),
        param,
    }
}

/// A `/v1/responses` body, parsed as far as routing needs. Top-level entries are kept raw so a
/// pass-through rewrite changes `model` only.
pub struct ResponsesRequest<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: String,
    pub stream: bool,
    pub max_output_tokens: Option<u64>,
    tools: Vec<RawTool<'a>>,
    tool_choice: Option<&'a RawValue>,
}

/// One entry of `tools`, as far as its kind and names.
#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    /// A `namespace` group's members.
    #[serde(default, borrow)]
    tools: Option<Vec<RawTool<'a>>>,
}

impl RawTool<'_> {
    fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }

    /// A tool any upstream can be given: a function or a custom (free-text) tool.
    fn translates(&self) -> bool {
        matches!(self.kind(), "function" | "custom")
    }
}

/// An `input` item, as far as the tools an `additional_tools` item carries (Codex sends its
/// whole tool set that way to the models it serves with "Responses Lite":
/// `create_tools_json_for_responses_lite` in `codex-rs/tools/src/tool_spec.rs`).
#[derive(Deserialize)]
struct ItemTools<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tools: Option<Vec<RawTool<'a>>>,
}

impl<'a> ResponsesRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<ResponsesRequest<'a>, RequestError> {
        let Entries(entries) = serde_json::from_slice(body).map_err(|e| {
            refuse(
                format!("We could not parse the JSON body of your request: {e}"),
                None,
            )
        })?;
        let mut req = ResponsesRequest {
            entries,
            model: String::new(),
            stream: false,
            max_output_tokens: None,
            tools: Vec::new(),
            tool_choice: None,
        };
        let mut has_input = false;
        let mut additional = Vec::new();
        for (key, value) in &req.entries {
            let raw = value.get();
            let present = wire::present(value).is_some();
            match key.as_ref() {
                "model" => {
                    req.model = serde_json::from_str::<String>(raw)
                        .map_err(|_| refuse("'model' must be a string", Some("model")))?;
                }
                "stream" => {
                    req.stream = serde_json::from_str::<Option<bool>>(raw)
                        .map_err(|_| refuse("'stream' must be a boolean", Some("stream")))?
                        .unwrap_or(false);
                }
                "max_output_tokens" => {
                    req.max_output_tokens =
                        serde_json::from_str::<Option<u64>>(raw).map_err(|_| {
                            refuse(
                                "'max_output_tokens' must be a non-negative integer",
                                Some("max_output_tokens"),
                            )
                        })?;
                }
                "input" => {
                    if !matches!(first_byte(raw.as_bytes()), Some(b'"' | b'[')) {
                        return Err(refuse(
                            "Invalid type for 'input': expected a string or an array of input items.",
                            Some("input"),
                        ));
                    }
                    has_input = true;
                    // Only a body that names the item type pays for reading the items.
                    if memchr::memmem::find(raw.as_bytes(), b"\"additional_tools\"").is_some() {
                        let items: Vec<ItemTools<'a>> =
                            serde_json::from_str(raw).unwrap_or_default();
                        additional.extend(
                            items
                                .into_iter()
                                .filter(|i| i.kind.as_deref() == Some("additional_tools"))
                                .flat_map(|i| i.tools.unwrap_or_default()),
                        );
                    }
                }
                "previous_response_id" if present => {
                    return Err(refuse(
                        "'previous_response_id' is not supported: this gateway is stateless and \
                         stores no responses. Send the whole conversation in 'input' instead.",
                        Some("previous_response_id"),
                    ));
                }
                "conversation" if present => {
                    return Err(refuse(
                        "'conversation' is not supported: this gateway is stateless and stores \
                         no conversations. Send the whole conversation in 'input' instead.",
                        Some("conversation"),
                    ));
                }
                "background" if raw.trim() == "true" => {
                    return Err(refuse(
                        "'background' is not supported: this gateway is stateless and stores no \
                         responses to poll. Send the request without 'background'.",
                        Some("background"),
                    ));
                }
                "tools" if present => {
                    req.tools = serde_json::from_str::<Vec<RawTool<'a>>>(raw).map_err(|_| {
                        refuse(
                            "Invalid type for 'tools': expected an array of tool objects.",
                            Some("tools"),
                        )
                    })?;
                }
                "tool_choice" if present => req.tool_choice = Some(value),
                _ => {}
            }
        }
        if req.model.is_empty() {
            return Err(refuse("you must provide a model parameter", Some("model")));
        }
        if !has_input {
            return Err(refuse(
                "Missing required parameter: 'input'.",
                Some("input"),
            ));
        }
        req.tools.extend(additional);
        check_tool_types(&req.tools, false)?;
        Ok(req)
    }

    /// The body for an upstream that speaks the Responses API: the client's bytes with `model`
    /// replaced.
    pub fn rewrite(&self, upstream_model: &str) -> Bytes {
        let model = serde_json::to_string(upstream_model).unwrap_or_default();
        Bytes::from(write_object(
            &self.entries,
            |key, _| (key == "model").then(|| model.clone()),
            &[],
        ))
    }

    /// The types of the built-in tools in `tools` (and in `additional_tools` input items), each
    /// once, in order: what a translated request drops (see [`BUILTIN_TOOL_TYPES`]). Functions,
    /// custom tools and a `namespace` group's members translate.
    pub fn builtin_tools(&self) -> Vec<String> {
        let mut out = Vec::new();
        for tool in &self.tools {
            match tool.kind() {
                "namespace" => {}
                _ if tool.translates() => {}
                kind => wire::note(&mut out, kind),
            }
        }
        out
    }

    /// The built-in tool `tool_choice` forces, if it forces one: an object naming a built-in
    /// tool type (`{"type":"web_search"}`, `{"type":"mcp",…}`), `allowed_tools` in `required`
    /// mode listing only built-ins, or `required` when every tool is a built-in. An upstream that cannot serve built-ins
    /// cannot honour it, so the request path refuses it there instead of dropping the tool.
    pub fn forced_builtin(&self) -> Option<String> {
        let raw = self.tool_choice?;
        let builtins = self.builtin_tools();
        match first_byte(raw.get().as_bytes()) {
            Some(b'"') => {
                let choice: String = serde_json::from_str(raw.get()).ok()?;
                let functions = self.tools.iter().any(|t| match t.kind() {
                    "namespace" => t.tools.iter().flatten().any(RawTool::translates),
                    _ => t.translates(),
                });
                (choice == "required" && !functions)
                    .then(|| builtins.into_iter().next())
                    .flatten()
            }
            Some(b'{') => {
                #[derive(Deserialize)]
                struct Choice<'a> {
                    #[serde(default, rename = "type", borrow)]
                    kind: Option<Cow<'a, str>>,
                    #[serde(default, borrow)]
                    mode: Option<Cow<'a, str>>,
                    #[serde(default, borrow)]
                    tools: Option<Vec<RawTool<'a>>>,
                }
                let choice: Choice<'_> = serde_json::from_str(raw.get()).ok()?;
                match choice.kind.as_deref()? {
                    "function" | "custom" => None,
                    "allowed_tools" => {
                        let allowed = choice.tools.unwrap_or_default();
                        let required = choice.mode.as_deref() == Some("required");
                        if required && !allowed.iter().any(RawTool::translates) {
                            allowed.first().map(|t| t.kind().to_string())
                        } else {
                            None
                        }
                    }
                    kind => Some(kind.to_string()),
                }
            }
            _ => None,
        }
    }

    /// What a translated answer repeats from this request (see [`Echo`]).
    pub fn echo(&self) -> Echo {
        let mut echo = Echo::default();
        for (key, value) in &self.entries {
            if !ECHOED.contains(&key.as_ref()) || wire::present(value).is_none() {
                continue;
            }
            // Compact: a stream writes the value inside one `data:` line, which a newline of
            // the client's formatting would end. Only insignificant whitespace goes.
            if let Ok(compact) = RawValue::from_string(wire::compact_json(value.get())) {
                echo.fields.push((key.to_string(), compact));
            }
        }
        echo.namespaces = Namespaces::from_tools(&self.tools);
        echo
    }
}

/// Refuses a tool whose type is none the API has; `in_namespace`: a group's member, which may
/// only be `function` or `custom` (openai-python `namespace_tool_param.py`).
fn check_tool_types(tools: &[RawTool<'_>], in_namespace: bool) -> Result<(), RequestError> {
    for tool in tools {
        let kind = tool.kind();
        let known = if in_namespace {
            matches!(kind, "function" | "custom")
        } else {
            tool.translates() || kind == "namespace" || BUILTIN_TOOL_TYPES.contains(&kind)
        };
        if !known {
            let message = if kind.is_empty() {
                "Missing required parameter: 'tools[].type'.".to_string()
            } else if in_namespace {
                format!(
                    "Invalid value: '{kind}'. A namespace may only contain 'function' and \
                     'custom' tools."
                )
            } else {
                format!(
                    "Invalid value: '{kind}'. Supported tool types are 'function', 'custom', \
                     'namespace' and the built-in tools: {}.",
                    BUILTIN_TOOL_TYPES.join(", ")
                )
            };
            return Err(refuse(message, Some("tools")));
        }
        if kind == "namespace" {
            check_tool_types(tool.tools.as_deref().unwrap_or_default(), true)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Namespaced tools
// ---------------------------------------------------------------------------------------------

/// The function tools of `namespace` groups, flattened for an upstream that has no namespaces.
///
/// Codex declares MCP and app tools as `{"type":"namespace","name":"mcp__server","tools":[…]}`
/// and routes a call by its `(namespace, name)` pair, never by parsing a flat name
/// (`ToolName::new(namespace, name)` in `codex-rs/core/src/tools/router.rs`): a call that comes
/// back without its `namespace` field is "unsupported call". So a member is sent upstream as
/// `{namespace}__{name}` (the separator Codex's own Anthropic adapter uses), and an answer's
/// call to that flat name is given its namespace and bare name back. Members of
/// [`DEFAULT_NAMESPACE`] keep their bare name both ways.
/// The longest function name OpenAI's chat API takes (`^[a-zA-Z0-9_-]{1,64}$`); Anthropic's
/// limit is no shorter.
pub const MAX_FLAT_NAME: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    members: Vec<Member>,
}

/// A tool as an upstream without namespaces or custom tools knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    flat: String,
    namespace: String,
    name: String,
    /// A custom (free-text) tool: its call goes back as a `custom_tool_call`.
    custom: bool,
}

impl Namespaces {
    /// The name a namespaced function has on an upstream without namespaces. A name longer
    /// than [`MAX_FLAT_NAME`] keeps its start and ends in a hash of the whole, so it fits the
    /// upstream's limit and stays the same on every request (the call comes back by this name,
    /// and a later request's history names it again).
    pub fn flat_name(namespace: &str, name: &str) -> String {
        if namespace.is_empty() || namespace == DEFAULT_NAMESPACE {
            return name.to_string();
        }
        let flat = format!("{namespace}__{name}");
        if flat.len() <= MAX_FLAT_NAME {
            return flat;
        }
        // FNV-1a, 64 bits: deterministic across processes and versions, unlike std's hasher.
        let hash = flat.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let keep = MAX_FLAT_NAME - 17;
        let mut cut = keep;
        while !flat.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}_{hash:016x}", &flat[..cut])
    }

    fn from_tools(tools: &[RawTool<'_>]) -> Namespaces {
        let mut out = Namespaces::default();
        for tool in tools {
            match (tool.kind(), tool.name.as_deref()) {
                ("namespace", Some(namespace)) => {
                    for member in tool.tools.iter().flatten().filter(|m| m.translates()) {
                        if let Some(name) = member.name.as_deref() {
                            out.add(namespace, name, member.kind() == "custom");
                        }
                    }
                }
                ("custom", Some(name)) => out.add("", name, true),
                _ => {}
            }
        }
        out
    }

    fn add(&mut self, namespace: &str, name: &str, custom: bool) {
        let flat = Self::flat_name(namespace, name);
        if !self.members.iter().any(|m| m.flat == flat) {
            self.members.push(Member {
                flat,
                namespace: namespace.to_string(),
                name: name.to_string(),
                custom,
            });
        }
    }

    /// The `(namespace, bare name)` of a flat name an upstream called, if it is a namespace's
    /// member (`None` for a top-level tool, whose flat name is its name).
    pub fn split(&self, flat: &str) -> Option<(&str, &str)> {
        self.members
            .iter()
            .find(|m| m.flat == flat && !m.namespace.is_empty())
            .map(|m| (m.namespace.as_str(), m.name.as_str()))
    }

    /// Whether a flat name an upstream called is a custom (free-text) tool's.
    pub fn is_custom(&self, flat: &str) -> bool {
        self.members.iter().any(|m| m.flat == flat && m.custom)
    }
}

// ---------------------------------------------------------------------------------------------
// What an answer repeats from its request
// ---------------------------------------------------------------------------------------------

/// Request parameters a response object repeats (OpenAI's response object echoes them: see
/// `Response` in openai-python `types/responses/response.py`).
const ECHOED: &[&str] = &[
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "prompt_cache_key",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "user",
];

/// What a translated answer takes from its request: the parameters the response object repeats
/// (raw JSON, as the client sent them) and the namespaced tools to give back their namespace.
/// Owned, so it outlives the request body. `Echo::default()` answers with the API's defaults.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    fields: Vec<(String, Box<RawValue>)>,
    pub namespaces: Namespaces,
}

impl Echo {
    /// The client's value of an echoed parameter, if it sent one.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RawUsage<'a> {
    #[serde(default, deserialize_with = "wire::count")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "wire::count")]
    output_tokens: Option<u64>,
    #[serde(default, borrow)]
    input_tokens_details: Option<&'a RawValue>,
    #[serde(default, borrow)]
    output_tokens_details: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct InputDetails {
    #[serde(default, deserialize_with = "wire::count")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "wire::count")]
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OutputDetails {
    #[serde(default, deserialize_with = "wire::count")]
    reasoning_tokens: Option<u64>,
}

/// A Responses `usage` object in billing terms. OpenAI's `input_tokens` includes the cached
/// (`input_tokens_details.cached_tokens`) and cache-written (`cache_write_tokens`) tokens;
/// billing's `input_tokens` excludes both. `None` when it is not an object, carries neither
/// count, or claims more cached than input (which no upstream truthfully reports).
pub fn metering(usage: &RawValue) -> Option<Metering> {
    let raw: RawUsage<'_> = super::json::object(usage)?;
    if raw.input_tokens.is_none() && raw.output_tokens.is_none() {
        return None;
    }
    let input: InputDetails = raw
        .input_tokens_details
        .and_then(super::json::object)
        .unwrap_or_default();
    let output: OutputDetails = raw
        .output_tokens_details
        .and_then(super::json::object)
        .unwrap_or_default();
    let cached = input.cached_tokens.unwrap_or(0);
    let written = input.cache_write_tokens.unwrap_or(0);
    let uncached = raw
        .input_tokens
        .unwrap_or(0)
        .checked_sub(cached)?
        .checked_sub(written)?;
    Some(Metering {
        usage: Usage {
            input_tokens: uncached,
            output_tokens: raw.output_tokens.unwrap_or(0),
            cache_read_tokens: cached,
            cache_write_tokens: written,
        },
        reasoning_tokens: output.reasoning_tokens,
        reported_cost_nano: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Pass-through scanning
// ---------------------------------------------------------------------------------------------

/// A non-streamed upstream body that is a response object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseObject {
    /// Its usage, when it has a readable one.
    pub metering: Option<Metering>,
}

#[derive(Deserialize)]
struct ResponseShape<'a> {
    /// Required, and only its shape matters.
    #[serde(rename = "output")]
    _output: Vec<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// Reads a non-streamed upstream body as a response object: a JSON object with an `output`
/// array (and `object: "response"` when it says what it is). `None` for anything else (HTML,
/// an error object, truncated or compressed bytes), which is not to be relayed as an answer.
pub fn response(body: &[u8]) -> Option<ResponseObject> {
    if first_byte(body) != Some(b'{') {
        return None;
    }
    let shape: ResponseShape<'_> = serde_json::from_slice(body).ok()?;
    if shape.object.as_deref().is_some_and(|o| o != "response") {
        return None;
    }
    Some(ResponseObject {
        metering: shape.usage.and_then(metering),
    })
}

/// What one streamed event means to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Shows nothing to a client: `response.created`, `response.in_progress`, `response.queued`,
    /// an empty message or reasoning item opening, an empty content part, comments, keep-alives,
    /// events that are not JSON. May be held back while a failover is still possible.
    Preamble,
    /// Output (text, reasoning, a tool call, a finished item): the stream is committed.
    Content,
    /// `response.completed` or `response.incomplete`: the answer's end, with the final usage.
    Done { metering: Option<Metering> },
    /// An `error` event or `response.failed`, with its message (and usage, which a failed
    /// response may carry).
    Error {
        message: String,
        metering: Option<Metering>,
    },
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    response: Option<&'a RawValue>,
    #[serde(default, borrow)]
    item: Option<&'a RawValue>,
    #[serde(default, borrow)]
    delta: Option<&'a RawValue>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
}

/// The message of an error object (`{"message":…}`), or its JSON text.
fn error_message(error: &RawValue) -> String {
    super::json::object::<ErrorObject>(error)
        .and_then(|e| e.message)
        .unwrap_or_else(|| error.get().to_string())
}

/// Classifies one event by its `event:` name and data. The data's `type` names the event (the
/// `event:` line repeats it; an event without `type` is named by that line).
pub fn classify(name: Option<&[u8]>, data: Option<&[u8]>) -> Chunk {
    let Some(data) = data else {
        return Chunk::Preamble;
    };
    let trimmed = data.trim_ascii();
    let parsed: Option<RawEvent<'_>> = (first_byte(trimmed) == Some(b'{'))
        .then(|| serde_json::from_slice(trimmed).ok())
        .flatten();
    let named_error = name == Some(b"error".as_slice());
    let Some(event) = parsed else {
        return if named_error {
            Chunk::Error {
                message: String::from_utf8_lossy(trimmed).into_owned(),
                metering: None,
            }
        } else {
            Chunk::Preamble
        };
    };
    let kind = match (&event.kind, name) {
        (Some(kind), _) => kind.as_ref(),
        (None, Some(name)) => std::str::from_utf8(name).unwrap_or(""),
        (None, None) => "",
    };
    let response = event
        .response
        .and_then(super::json::object::<RawResponse<'_>>);
    let metering = response.as_ref().and_then(|r| r.usage).and_then(metering);
    match kind {
        "response.completed" | "response.incomplete" => Chunk::Done { metering },
        "response.failed" => Chunk::Error {
            message: response
                .and_then(|r| r.error)
                .and_then(wire::present)
                .map(error_message)
                .unwrap_or_else(|| "The response failed.".to_string()),
            metering,
        },
        "error" => Chunk::Error {
            // Recorded OpenAI streams nest the error object (`{"type":"error","error":{…}}`);
            // the SDK's `ResponseErrorEvent` has `message` at the top. Either is read.
            message: event
                .message
                .map(Cow::into_owned)
                .or_else(|| event.error.and_then(wire::present).map(error_message))
                .unwrap_or_else(|| String::from_utf8_lossy(trimmed).into_owned()),
            metering,
        },
        ""
        | "response.created"
        | "response.in_progress"
        | "response.queued"
        | "response.content_part.added"
        | "response.reasoning_summary_part.added" => Chunk::Preamble,
        "response.output_item.added" => {
            let item = event.item.and_then(super::json::object::<RawItem<'_>>);
            match item.as_ref().and_then(|i| i.kind.as_deref()) {
                Some("message" | "reasoning") | None => Chunk::Preamble,
                Some(_) => Chunk::Content,
            }
        }
        _ if kind.ends_with(".delta") => {
            if event.delta.is_some_and(|d| d.get() == "\"\"") {
                Chunk::Preamble
            } else {
                Chunk::Content
            }
        }
        _ => Chunk::Content,
    }
}

/// Whether an event may end the stream or report an error or usage, so that only those events
/// are parsed once a stream is committed. False positives are fine (the event is then parsed); a
/// false negative would miss billing, so this errs on the side of "maybe".
pub fn may_matter(name: Option<&[u8]>, data: &[u8]) -> bool {
    const ENDS: [&[u8]; 4] = [
        b"response.completed",
        b"response.incomplete",
        b"response.failed",
        b"error",
    ];
    if let Some(name) = name
        && ENDS.contains(&name)
    {
        return true;
    }
    memchr::memmem::find(data, b"\"usage\"").is_some()
        || memchr::memmem::find(data, b"\"error\"").is_some()
        || memchr::memmem::find(data, b"response.completed").is_some()
        || memchr::memmem::find(data, b"response.incomplete").is_some()
        || memchr::memmem::find(data, b"response.failed").is_some()
}

/// The `sequence_number` of an event's data, read without parsing the event (for a relay that
/// must number the error events it adds after the upstream's).
pub fn sequence_number(data: &[u8]) -> Option<u64> {
    let key = b"\"sequence_number\"";
    let at = memchr::memmem::rfind(data, key)?;
    let rest = data[at + key.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The `response.id` of a `response.created` event's data.
pub fn response_id(data: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Created {
        response: CreatedResponse,
    }
    #[derive(Deserialize)]
    struct CreatedResponse {
        id: String,
    }
    if first_byte(data) != Some(b'{') {
        return None;
    }
    serde_json::from_slice::<Created>(data)
        .ok()
        .map(|c| c.response.id)
}

/// The events that end a stream that failed after content was sent, as OpenAI ends one (the
/// recorded `testkit/samples/openai-responses-stream-error.recorded.jsonl`): an `error` event
/// carrying the error object, which the Python SDK raises as `APIError`, then `response.failed`
/// with `response.error`, which Codex reads (`codex-api/src/sse/responses.rs` handles
/// `response.failed` and ignores `error`). `next_sequence` numbers the first of the two;
/// `response_id` is the failed response's (a new one when the stream never said).
pub fn stream_error_events(
    message: &str,
    next_sequence: u64,
    response_id: Option<&str>,
    model: &str,
) -> Bytes {
    let id = response_id.map_or_else(encode::new_response_id, str::to_string);
    let mut out = Vec::new();
    encode::put_failure(&mut out, message, next_sequence, &id, model, None);
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
