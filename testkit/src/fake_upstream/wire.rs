//! Wire text of both protocols, in the field order of the recorded samples
//! (`testkit/samples/`): completions, stream events, model lists and error bodies.
//!
//! Bodies are written with `format!` rather than `serde_json::json!` for two reasons: the
//! samples' key order is kept (serde_json's default map sorts keys), and a stream event costs one
//! allocation, which matters when the fake is a benchmark target. Every string that comes from a
//! request (the model) is escaped once with [`json_str`].

use std::fmt::Write as _;

/// The two wire protocols the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    OpenAi,
    Anthropic,
}

/// `s` as a JSON string literal, quotes included.
pub(super) fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Content word `i`: `"word{i} "`.
pub(super) fn word(i: usize) -> String {
    format!("word{i} ")
}

/// The non-stream content: words `0..n` concatenated.
pub(super) fn content_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 8);
    for i in 0..n {
        let _ = write!(s, "word{i} ");
    }
    s
}

/// How many fragments [`fragments`] cuts tool-call arguments into, at most.
const TOOL_FRAGMENTS: usize = 4;

/// Tool-call arguments cut into up to [`TOOL_FRAGMENTS`] non-empty pieces of about equal length
/// (at character boundaries), as a model streams them: their concatenation is `arguments`.
pub(super) fn fragments(arguments: &str) -> Vec<&str> {
    let bounds: Vec<usize> = arguments
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(arguments.len()))
        .collect();
    let chars = bounds.len() - 1;
    let n = chars.min(TOOL_FRAGMENTS);
    (0..n)
        .map(|k| &arguments[bounds[k * chars / n]..bounds[(k + 1) * chars / n]])
        .collect()
}

/// What identifies one response: its id, the echoed model (as a JSON literal) and the
/// creation time.
pub(super) struct Ids {
    /// The per-server sequence number behind every id of this response.
    pub seq: u64,
    /// The request's `model`, as a JSON string literal.
    pub model_json: String,
    /// Unix seconds.
    pub created: u64,
}

impl Ids {
    pub(super) fn openai_id(&self) -> String {
        format!("chatcmpl-fake{}", self.seq)
    }

    pub(super) fn anthropic_id(&self) -> String {
        format!("msg_fake{}", self.seq)
    }
}

/// The request id header value / `request_id` field for sequence number `seq`.
pub(super) fn request_id(seq: u64) -> String {
    format!("req_fake{seq}")
}

// ---------------------------------------------------------------------------------------------
// OpenAI

/// The OpenAI `usage` object (as in openai-chat-completion.json).
fn openai_usage(prompt: u64, completion: u64) -> String {
    format!(
        concat!(
            r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t},"#,
            r#""prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"#,
            r#""completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"#,
            r#""accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#
        ),
        p = prompt,
        c = completion,
        t = prompt + completion
    )
}

/// A non-stream `chat.completion` (shape of openai-chat-completion.json).
pub(super) fn openai_completion(
    ids: &Ids,
    content: &str,
    finish_reason: &str,
    prompt: u64,
    completion: u64,
) -> String {
    format!(
        concat!(
            r#"{{"id":"{id}","object":"chat.completion","created":{created},"model":{model},"#,
            r#""choices":[{{"index":0,"message":{{"role":"assistant","content":{content},"#,
            r#""refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"{finish}"}}],"#,
            r#""usage":{usage},"service_tier":"default","system_fingerprint":"fp_fake"}}"#
        ),
        id = ids.openai_id(),
        created = ids.created,
        model = ids.model_json,
        content = json_str(content),
        finish = finish_reason,
        usage = openai_usage(prompt, completion),
    )
}

/// The one tool call of an OpenAI answer to [`super::Behavior::ToolCall`], with `arguments`
/// (a JSON string literal) as given.
fn openai_tool_call(name: &str, arguments_json: &str) -> String {
    format!(
        concat!(
            r#"{{"id":"{id}","type":"function","function":{{"name":{name},"#,
            r#""arguments":{arguments}}}}}"#
        ),
        id = super::OPENAI_TOOL_CALL_ID,
        name = json_str(name),
        arguments = arguments_json,
    )
}

/// A non-stream `chat.completion` whose message is one tool call: `content: null`,
/// `tool_calls`, finish reason `tool_calls`.
pub(super) fn openai_tool_completion(
    ids: &Ids,
    name: &str,
    arguments: &str,
    prompt: u64,
    completion: u64,
) -> String {
    format!(
        concat!(
            r#"{{"id":"{id}","object":"chat.completion","created":{created},"model":{model},"#,
            r#""choices":[{{"index":0,"message":{{"role":"assistant","content":null,"#,
            r#""tool_calls":[{call}],"refusal":null,"annotations":[]}},"logprobs":null,"#,
            r#""finish_reason":"tool_calls"}}],"#,
            r#""usage":{usage},"service_tier":"default","system_fingerprint":"fp_fake"}}"#
        ),
        id = ids.openai_id(),
        created = ids.created,
        model = ids.model_json,
        call = openai_tool_call(name, &json_str(arguments)),
        usage = openai_usage(prompt, completion),
    )
}

/// `data: [DONE]`, the end of an OpenAI stream.
pub(super) const OPENAI_DONE: &str = "data: [DONE]\n\n";

/// The `data:` events of an OpenAI stream (shape of openai-chat-stream.sse, without the
/// optional `obfuscation` field).
pub(super) struct OpenAiChunks {
    /// Everything up to the `choices` array's contents.
    prefix: String,
}

impl OpenAiChunks {
    pub(super) fn new(ids: &Ids) -> OpenAiChunks {
        let prefix = format!(
            concat!(
                r#"data: {{"id":"{id}","object":"chat.completion.chunk","created":{created},"#,
                r#""model":{model},"service_tier":"default","system_fingerprint":"fp_fake","#,
                r#""choices":["#
            ),
            id = ids.openai_id(),
            created = ids.created,
            model = ids.model_json,
        );
        OpenAiChunks { prefix }
    }

    fn choice(&self, delta: &str, finish: &str) -> String {
        format!(
            concat!(
                r#"{prefix}{{"index":0,"delta":{delta},"logprobs":null,"#,
                r#""finish_reason":{finish}}}],"usage":null}}"#,
                "\n\n"
            ),
            prefix = self.prefix,
            delta = delta,
            finish = finish,
        )
    }

    /// The first chunk: role, empty content, `refusal: null`.
    pub(super) fn role(&self) -> String {
        self.choice(
            r#"{"role":"assistant","content":"","refusal":null}"#,
            "null",
        )
    }

    /// Content chunk `i`.
    pub(super) fn content(&self, i: usize) -> String {
        self.choice(&format!(r#"{{"content":"word{i} "}}"#), "null")
    }

    /// The first chunk of a tool-call stream (as in openai-tool-call-stream.sse): the role, `content:
    /// null`, and tool call 0 with its id, type, name and empty `arguments`.
    pub(super) fn tool_call_start(&self, name: &str) -> String {
        let call = openai_tool_call(name, r#""""#);
        // The tool call in a delta carries its `index` first.
        let call = call.replacen('{', r#"{"index":0,"#, 1);
        self.choice(
            &format!(
                r#"{{"role":"assistant","content":null,"tool_calls":[{call}],"refusal":null}}"#
            ),
            "null",
        )
    }

    /// A further fragment of tool call 0's `arguments`.
    pub(super) fn tool_arguments(&self, fragment: &str) -> String {
        self.choice(
            &format!(
                r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}"#,
                json_str(fragment)
            ),
            "null",
        )
    }

    /// The finish chunk: empty delta and `finish_reason`.
    pub(super) fn finish(&self, reason: &str) -> String {
        self.choice("{}", &format!("\"{reason}\""))
    }

    /// The `stream_options.include_usage` chunk: `choices: []` and the usage.
    pub(super) fn usage(&self, prompt: u64, completion: u64) -> String {
        format!(
            "{prefix}],\"usage\":{usage}}}\n\n",
            prefix = self.prefix,
            usage = openai_usage(prompt, completion)
        )
    }
}

/// The events of an OpenRouter stream (shape of openrouter-stream-midstream-error.sse):
/// `provider` field, `native_finish_reason`, the role repeated in every delta, no `usage: null`.
pub(super) struct OpenRouterChunks {
    prefix: String,
    suffix: String,
}

/// The keep-alive comment OpenRouter sends while waiting for the provider.
pub(super) const OPENROUTER_COMMENT: &str = ": OPENROUTER PROCESSING\n\n";

impl OpenRouterChunks {
    pub(super) fn new(ids: &Ids, provider: &str) -> OpenRouterChunks {
        let head = format!(
            r#"data: {{"id":"gen-{created}-fake{seq}","provider":{provider}"#,
            created = ids.created,
            seq = ids.seq,
            provider = json_str(provider),
        );
        let suffix = format!(
            r#""model":{model},"object":"chat.completion.chunk","created":{created},"choices":["#,
            model = ids.model_json,
            created = ids.created,
        );
        OpenRouterChunks {
            prefix: head,
            suffix,
        }
    }

    fn chunk(&self, content: &str, extra_top: &str, tail: &str) -> String {
        format!(
            concat!(
                r#"{prefix},{extra}{suffix}{{"index":0,"delta":{{"role":"assistant","#,
                r#""content":"{content}"}},"finish_reason":null,"native_finish_reason":null,"#,
                r#""logprobs":null}}]{tail}}}"#,
                "\n\n"
            ),
            prefix = self.prefix,
            extra = extra_top,
            suffix = self.suffix,
            content = content,
            tail = tail,
        )
    }

    /// The empty role chunk.
    pub(super) fn role(&self) -> String {
        self.chunk("", "", "")
    }

    /// Content chunk `i`.
    pub(super) fn content(&self, i: usize) -> String {
        self.chunk(&word(i), "", "")
    }

    /// The error chunk: top-level `error {code, message}` under HTTP 200, with usage and cost.
    pub(super) fn error(&self, prompt: u64, completion: u64) -> String {
        let usage = format!(
            concat!(
                r#","usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t},"#,
                r#""cost":0,"is_byok":false,"prompt_tokens_details":{{"cached_tokens":0,"#,
                r#""audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"#,
                r#""image_tokens":0}}}}"#
            ),
            p = prompt,
            c = completion,
            t = prompt + completion
        );
        self.chunk(
            "",
            r#""error":{"code":502,"message":"Provider returned error"},"#,
            &usage,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic

/// A non-stream message (shape of anthropic-message.json).
pub(super) fn anthropic_message(
    ids: &Ids,
    content: &str,
    stop_reason: &str,
    input: u64,
    output: u64,
) -> String {
    format!(
        concat!(
            r#"{{"model":{model},"id":"{id}","type":"message","role":"assistant","#,
            r#""content":[{{"type":"text","text":{content}}}],"stop_reason":"{stop}","#,
            r#""stop_sequence":null,"usage":{{"input_tokens":{input},"#,
            r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0,"#,
            r#""cache_creation":{{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0}},"#,
            r#""output_tokens":{output},"service_tier":"standard","#,
            r#""inference_geo":"not_available"}}}}"#
        ),
        model = ids.model_json,
        id = ids.anthropic_id(),
        content = json_str(content),
        stop = stop_reason,
        input = input,
        output = output,
    )
}

/// A non-stream message whose content is one `tool_use` block; `input` is `arguments` (a JSON
/// object, already checked) as given.
pub(super) fn anthropic_tool_message(
    ids: &Ids,
    name: &str,
    arguments: &str,
    input: u64,
    output: u64,
) -> String {
    format!(
        concat!(
            r#"{{"model":{model},"id":"{id}","type":"message","role":"assistant","#,
            r#""content":[{{"type":"tool_use","id":"{tool_id}","name":{name},"#,
            r#""input":{arguments}}}],"stop_reason":"tool_use","#,
            r#""stop_sequence":null,"usage":{{"input_tokens":{input},"#,
            r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0,"#,
            r#""cache_creation":{{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0}},"#,
            r#""output_tokens":{output},"service_tier":"standard","#,
            r#""inference_geo":"not_available"}}}}"#
        ),
        model = ids.model_json,
        id = ids.anthropic_id(),
        tool_id = super::ANTHROPIC_TOOL_USE_ID,
        name = json_str(name),
        arguments = arguments,
        input = input,
        output = output,
    )
}

/// The events of an Anthropic stream (shape of anthropic-stream.sse, including the whitespace
/// padding before closing braces that the real API sends).
pub(super) struct AnthropicEvents<'a> {
    ids: &'a Ids,
}

impl<'a> AnthropicEvents<'a> {
    pub(super) fn new(ids: &'a Ids) -> AnthropicEvents<'a> {
        AnthropicEvents { ids }
    }

    /// `message_start` with the input tokens (and `output_tokens: 1`, as observed).
    pub(super) fn message_start(&self, input: u64) -> String {
        format!(
            concat!(
                "event: message_start\n",
                r#"data: {{"type":"message_start","message":{{"model":{model},"id":"{id}","#,
                r#""type":"message","role":"assistant","content":[],"stop_reason":null,"#,
                r#""stop_sequence":null,"usage":{{"input_tokens":{input},"#,
                r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0,"#,
                r#""cache_creation":{{"ephemeral_5m_input_tokens":0,"#,
                r#""ephemeral_1h_input_tokens":0}},"output_tokens":1,"#,
                r#""service_tier":"standard"}}}}            }}"#,
                "\n\n"
            ),
            model = self.ids.model_json,
            id = self.ids.anthropic_id(),
            input = input,
        )
    }

    /// `content_block_start` of text block 0.
    pub(super) fn content_block_start(&self) -> &'static str {
        concat!(
            "event: content_block_start\n",
            r#"data: {"type":"content_block_start","index":0,"#,
            r#""content_block":{"type":"text","text":""}        }"#,
            "\n\n"
        )
    }

    /// `ping`.
    pub(super) fn ping(&self) -> &'static str {
        "event: ping\ndata: {\"type\": \"ping\"}\n\n"
    }

    /// `content_block_delta` carrying word `i`.
    pub(super) fn delta(&self, i: usize) -> String {
        format!(
            concat!(
                "event: content_block_delta\n",
                r#"data: {{"type":"content_block_delta","index":0,"#,
                r#""delta":{{"type":"text_delta","text":"word{i} "}}      }}"#,
                "\n\n"
            ),
            i = i
        )
    }

    /// `content_block_start` of block 0 as a `tool_use` block with `input: {}` (as in
    /// anthropic-tool-use-stream.sse).
    pub(super) fn tool_use_start(&self, name: &str) -> String {
        format!(
            concat!(
                "event: content_block_start\n",
                r#"data: {{"type":"content_block_start","index":0,"#,
                r#""content_block":{{"type":"tool_use","id":"{id}","name":{name},"input":{{}}}}}}"#,
                "\n\n"
            ),
            id = super::ANTHROPIC_TOOL_USE_ID,
            name = json_str(name),
        )
    }

    /// `content_block_delta` of block 0 carrying an `input_json_delta` fragment.
    pub(super) fn input_json_delta(&self, fragment: &str) -> String {
        format!(
            concat!(
                "event: content_block_delta\n",
                r#"data: {{"type":"content_block_delta","index":0,"#,
                r#""delta":{{"type":"input_json_delta","partial_json":{fragment}}}}}"#,
                "\n\n"
            ),
            fragment = json_str(fragment),
        )
    }

    /// `content_block_stop` of block 0.
    pub(super) fn content_block_stop(&self) -> &'static str {
        concat!(
            "event: content_block_stop\n",
            r#"data: {"type":"content_block_stop","index":0        }"#,
            "\n\n"
        )
    }

    /// `message_delta` with the stop reason and the cumulative usage.
    pub(super) fn message_delta(&self, stop_reason: &str, input: u64, output: u64) -> String {
        format!(
            concat!(
                "event: message_delta\n",
                r#"data: {{"type":"message_delta","delta":{{"stop_reason":"{stop}","#,
                r#""stop_sequence":null}},"usage":{{"input_tokens":{input},"#,
                r#""cache_creation_input_tokens":0,"cache_read_input_tokens":0,"#,
                r#""output_tokens":{output}}}       }}"#,
                "\n\n"
            ),
            stop = stop_reason,
            input = input,
            output = output,
        )
    }

    /// `message_stop`.
    pub(super) fn message_stop(&self) -> &'static str {
        "event: message_stop\ndata: {\"type\":\"message_stop\"    }\n\n"
    }

    /// A mid-stream `error` event (`overloaded_error`).
    pub(super) fn overloaded(&self) -> &'static str {
        concat!(
            "event: error\n",
            r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            "\n\n"
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Model lists

/// `GET /v1/models`, OpenAI shape.
pub(super) fn openai_models(models: &[String], owner: &str) -> String {
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|id| {
            serde_json::json!({
                "id": id,
                "object": "model",
                "created": 1_700_000_000u64,
                "owned_by": owner,
            })
        })
        .collect();
    serde_json::json!({ "object": "list", "data": data }).to_string()
}

/// `GET /v1/models`, Anthropic shape (one page, `has_more: false`).
pub(super) fn anthropic_models(models: &[String]) -> String {
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|id| {
            serde_json::json!({
                "type": "model",
                "id": id,
                "display_name": id,
                "created_at": "2025-01-01T00:00:00Z",
            })
        })
        .collect();
    serde_json::json!({
        "data": data,
        "has_more": false,
        "first_id": models.first(),
        "last_id": models.last(),
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OpenAI error body: `{"error":{"message","type","param","code"}}`.
pub(super) fn openai_error(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> String {
    let opt = |v: Option<&str>| v.map_or_else(|| "null".to_string(), json_str);
    format!(
        r#"{{"error":{{"message":{message},"type":{kind},"param":{param},"code":{code}}}}}"#,
        message = json_str(message),
        kind = json_str(kind),
        param = opt(param),
        code = opt(code),
    )
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"},"request_id"}`.
pub(super) fn anthropic_error(kind: &str, message: &str, request_id: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":{kind},"message":{message}}},"request_id":{rid}}}"#,
        kind = json_str(kind),
        message = json_str(message),
        rid = json_str(request_id),
    )
}

/// The default body of [`super::Behavior::Status`] for `status` in `protocol`'s shape.
pub(super) fn status_error(protocol: Protocol, status: u16, request_id: &str) -> String {
    match protocol {
        Protocol::OpenAi => {
            let (message, kind, code) = match status {
                400 => ("Invalid request.", "invalid_request_error", None),
                401 => (
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                ),
                403 => ("Forbidden.", "invalid_request_error", None),
                404 => (
                    "The model does not exist or you do not have access to it.",
                    "invalid_request_error",
                    Some("model_not_found"),
                ),
                429 => (
                    "Rate limit reached (fake upstream). Please try again later.",
                    "tokens",
                    Some("rate_limit_exceeded"),
                ),
                500 => (
                    "The server had an error while processing your request.",
                    "server_error",
                    None,
                ),
                503 | 529 => (
                    "The server is overloaded, please try again later.",
                    "server_error",
                    None,
                ),
                s if s >= 500 => ("Upstream error (fake upstream).", "server_error", None),
                _ => (
                    "Request failed (fake upstream).",
                    "invalid_request_error",
                    None,
                ),
            };
            openai_error(message, kind, None, code)
        }
        Protocol::Anthropic => {
            let (kind, message) = match status {
                400 => ("invalid_request_error", "Invalid request."),
                401 => ("authentication_error", "invalid x-api-key"),
                403 => (
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                ),
                404 => (
                    "not_found_error",
                    "The requested resource could not be found.",
                ),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum allowed number of bytes.",
                ),
                429 => (
                    "rate_limit_error",
                    "This request would exceed the rate limit (fake upstream).",
                ),
                503 | 529 => ("overloaded_error", "Overloaded"),
                s if s >= 500 => ("api_error", "Internal server error"),
                _ => ("invalid_request_error", "Request failed (fake upstream)."),
            };
            anthropic_error(kind, message, request_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Ids {
        Ids {
            seq: 7,
            model_json: json_str("m\"odel"),
            created: 1,
        }
    }

    fn data_json(event: &str) -> serde_json::Value {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn every_template_is_valid_json() {
        let ids = ids();
        let c = OpenAiChunks::new(&ids);
        for e in [c.role(), c.content(3), c.finish("length"), c.usage(5, 6)] {
            assert!(e.ends_with("\n\n"));
            assert_eq!(data_json(&e)["model"], "m\"odel");
        }
        let r = OpenRouterChunks::new(&ids, "Fake \"P\"");
        for e in [r.role(), r.content(0), r.error(1, 2)] {
            assert_eq!(data_json(&e)["provider"], "Fake \"P\"");
        }
        let a = AnthropicEvents::new(&ids);
        let events = [
            a.message_start(3),
            a.content_block_start().to_string(),
            a.ping().to_string(),
            a.delta(0),
            a.content_block_stop().to_string(),
            a.message_delta("end_turn", 3, 1),
            a.message_stop().to_string(),
            a.overloaded().to_string(),
        ];
        for e in events {
            let name = e.lines().next().unwrap().strip_prefix("event: ").unwrap();
            assert_eq!(data_json(&e)["type"], name);
        }
        let v: serde_json::Value =
            serde_json::from_str(&openai_completion(&ids, "a\nb", "stop", 1, 2)).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "a\nb");
        let v: serde_json::Value =
            serde_json::from_str(&anthropic_message(&ids, "x", "end_turn", 1, 2)).unwrap();
        assert_eq!(v["usage"]["output_tokens"], 2);
        for status in [400, 401, 403, 404, 413, 429, 500, 502, 503, 529, 418] {
            let v: serde_json::Value =
                serde_json::from_str(&status_error(Protocol::OpenAi, status, "r")).unwrap();
            assert!(v["error"]["message"].is_string());
            let v: serde_json::Value =
                serde_json::from_str(&status_error(Protocol::Anthropic, status, "r")).unwrap();
            assert_eq!(v["type"], "error");
        }
        let v: serde_json::Value =
            serde_json::from_str(&anthropic_models(&["a".into(), "b".into()])).unwrap();
        assert_eq!(v["last_id"], "b");
    }

    #[test]
    fn tool_call_templates_are_valid_json() {
        let ids = ids();
        let args = r#"{"city":"Paris \"centre\"","n":[1,2]}"#;
        let c = OpenAiChunks::new(&ids);
        let start = data_json(&c.tool_call_start("get\"x"));
        let call = &start["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert_eq!(call["function"]["name"], "get\"x");
        assert_eq!(call["function"]["arguments"], "");
        let frag = data_json(&c.tool_arguments("\"}"));
        assert_eq!(
            frag["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "\"}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&openai_tool_completion(&ids, "f", args, 1, 2)).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            args
        );
        let a = AnthropicEvents::new(&ids);
        for e in [a.tool_use_start("f"), a.input_json_delta("{\"")] {
            let name = e.lines().next().unwrap().strip_prefix("event: ").unwrap();
            assert_eq!(data_json(&e)["type"], name);
        }
        let v: serde_json::Value =
            serde_json::from_str(&anthropic_tool_message(&ids, "f", args, 1, 2)).unwrap();
        assert_eq!(v["content"][0]["input"]["n"][1], 2);
    }

    #[test]
    fn fragments_cover_the_arguments() {
        let args = r#"{"location":"Zürich","unit":"celsius"}"#;
        let parts = fragments(args);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| !p.is_empty()));
        assert_eq!(parts.concat(), args);
        assert_eq!(fragments("{}"), ["{", "}"]);
        assert!(fragments("").is_empty());
    }

    #[test]
    fn content_is_the_concatenated_words() {
        assert_eq!(content_text(3), "word0 word1 word2 ");
        assert_eq!(content_text(0), "");
        assert_eq!(word(12), "word12 ");
    }
}
