//! OpenAI Chat Completions bytes → the internal shape: a chat client's request, and a chat
//! upstream's completion, stream chunks and errors.
//!
//! Structure is read with typed serde structs; values the gateway does not interpret
//! (`temperature`, `top_p`, tool schemas) are borrowed raw from the body. What the shape cannot
//! carry is named in [`shape::Request::dropped`]: top-level fields by name, content parts as
//! `messages.content.<type>`, non-function tools as `tools.<type>`.
//!
//! The serde types keep the names they had when this was the pairwise translator
//! (`OaMessageIn`, …): serde writes a type's name into the message of a refused request, which
//! the client sees.

use crate::protocol::shape::{self, Arguments, Block, Message, Role, TranslateError};
use crate::protocol::wire::{note, opt_field, present, top_level};
use serde::Deserialize;
use serde_json::value::RawValue;

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
}
