//! The OpenAI Responses dialect (`POST /v1/responses`): the response object, the stream events
//! and the producer that sends them.
//!
//! # Source of the shapes
//!
//! OpenAI's API reference (Responses: "The response object" and "Streaming events") and the
//! types of the official Python SDK, openai-python 3.63.0 (the version `clients/requirements.txt`
//! pins), `src/openai/types/responses/`: `response.py`, `response_usage.py`,
//! `response_output_message.py`, `response_output_text.py`, `response_function_tool_call.py`,
//! `response_error.py` and the `response_*_event.py` of each event sent here. Field order is the
//! reference's examples' (`type`, then `sequence_number`, then the rest). The optional
//! `obfuscation` field of delta events is left out, as it is from the chat stream.
//!
//! # What is sent
//!
//! The response object echoes the request's `model`, `instructions`, `max_output_tokens`,
//! `parallel_tool_calls`, `previous_response_id`, `reasoning`, `store`, `temperature`, `text`,
//! `tool_choice`, `tools`, `top_p`, `user` and `metadata` (the API's defaults where absent), as
//! OpenAI's API does; nothing is stored.
//!
//! A text answer is one `message` output item with one `output_text` part; its stream is
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, one `response.output_text.delta` per word,
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`, and
//! `response.completed` (or, when `max_output_tokens` cut the words short, `response.incomplete`
//! with `incomplete_details.reason: "max_output_tokens"` and the message `incomplete`). A tool call
//! is one `function_call` output item whose stream sends `response.function_call_arguments.delta`
//! per fragment and `response.function_call_arguments.done` instead of the part and text events.
//! A failing stream ends with `response.failed` (status `failed`, `error: {code: "server_error",
//! message}`), the terminal event OpenAI documents for a response that fails once begun. The body
//! just ends after the terminal event: the Responses stream has no `[DONE]`. Every event carries
//! `sequence_number`, from 0 up by one.

use super::body::{Emitter, Gone};
use super::stream::{Ending, Plan, ToolPlan};
use super::wire::{self, json_str};
use serde_json::Value;
use std::fmt::Write as _;

/// The `call_id` of the `function_call` item in every Responses answer to
/// [`super::Behavior::ToolCall`] (the same id the chat dialect gives its tool call).
pub(super) const CALL_ID: &str = super::OPENAI_TOOL_CALL_ID;

/// The request's fields a response object repeats, as JSON text, and the ids of one response.
pub(super) struct Envelope {
    /// `resp_fake<seq>`.
    id: String,
    /// The per-server sequence number behind the item ids.
    seq: u64,
    created: u64,
    model_json: String,
    /// `"instructions":…,"max_output_tokens":…,"max_tool_calls":null`.
    head: String,
    /// `"parallel_tool_calls":…` up to `"truncation":"disabled"`.
    tail: String,
    /// `"user":…,"metadata":…`.
    end: String,
}

/// `request[field]` as JSON text, or `default` when absent or null.
fn echo(request: &Value, field: &str, default: &str) -> String {
    match request.get(field) {
        Some(v) if !v.is_null() => v.to_string(),
        _ => default.to_string(),
    }
}

impl Envelope {
    /// The envelope of the answer with sequence number `seq` to `request`.
    pub(super) fn new(seq: u64, created: u64, request: &Value) -> Envelope {
        let model = request.get("model").and_then(Value::as_str).unwrap_or("");
        let head = format!(
            r#""instructions":{},"max_output_tokens":{},"max_tool_calls":null"#,
            echo(request, "instructions", "null"),
            echo(request, "max_output_tokens", "null"),
        );
        let tail = format!(
            concat!(
                r#""parallel_tool_calls":{parallel},"previous_response_id":{previous},"#,
                r#""prompt_cache_key":null,"reasoning":{reasoning},"safety_identifier":null,"#,
                r#""service_tier":"default","store":{store},"temperature":{temperature},"#,
                r#""text":{text},"tool_choice":{tool_choice},"tools":{tools},"top_logprobs":0,"#,
                r#""top_p":{top_p},"truncation":"disabled""#
            ),
            parallel = echo(request, "parallel_tool_calls", "true"),
            previous = echo(request, "previous_response_id", "null"),
            reasoning = echo(request, "reasoning", r#"{"effort":null,"summary":null}"#),
            store = echo(request, "store", "true"),
            temperature = echo(request, "temperature", "1.0"),
            text = echo(
                request,
                "text",
                r#"{"format":{"type":"text"},"verbosity":"medium"}"#
            ),
            tool_choice = echo(request, "tool_choice", r#""auto""#),
            tools = echo(request, "tools", "[]"),
            top_p = echo(request, "top_p", "1.0"),
        );
        let end = format!(
            r#""user":{},"metadata":{}"#,
            echo(request, "user", "null"),
            echo(request, "metadata", "{}"),
        );
        Envelope {
            id: format!("resp_fake{seq}"),
            seq,
            created,
            model_json: json_str(model),
            head,
            tail,
            end,
        }
    }

    /// The `id` of the message output item.
    fn message_id(&self) -> String {
        format!("msg_fake{}", self.seq)
    }

    /// The `id` of the function call output item.
    fn function_call_id(&self) -> String {
        format!("fc_fake{}", self.seq)
    }

    /// The response object in state `state` with `output` (the items' JSON, comma-separated).
    fn response(&self, state: &State, output: &str) -> String {
        let (status, completed_at, error, incomplete, usage) = match state {
            State::InProgress => ("in_progress", None, "null", "null", None),
            State::Completed(u) => ("completed", Some(self.created), "null", "null", Some(*u)),
            State::Incomplete(u) => (
                "incomplete",
                None,
                "null",
                r#"{"reason":"max_output_tokens"}"#,
                Some(*u),
            ),
            State::Failed => ("failed", None, FAILED_ERROR, "null", None),
        };
        format!(
            concat!(
                r#"{{"id":"{id}","object":"response","created_at":{created},"#,
                r#""status":"{status}","background":false,"completed_at":{completed_at},"#,
                r#""error":{error},"incomplete_details":{incomplete},{head},"model":{model},"#,
                r#""output":[{output}],{tail},"usage":{usage},{end}}}"#
            ),
            id = self.id,
            created = self.created,
            status = status,
            completed_at = completed_at.map_or_else(|| "null".to_string(), |t| t.to_string()),
            error = error,
            incomplete = incomplete,
            head = self.head,
            model = self.model_json,
            output = output,
            tail = self.tail,
            usage = usage.map_or_else(|| "null".to_string(), |(i, o)| usage_json(i, o)),
            end = self.end,
        )
    }

    /// A message output item holding `text`, with `status` (`in_progress` items hold no part).
    fn message_item(&self, status: &str, text: Option<&str>) -> String {
        let content = text.map(output_text).unwrap_or_default();
        format!(
            r#"{{"id":"{id}","type":"message","status":"{status}","content":[{content}],"role":"assistant"}}"#,
            id = self.message_id(),
        )
    }

    /// A function call output item with `arguments` (raw text, escaped here).
    fn function_call_item(&self, status: &str, name: &str, arguments: &str) -> String {
        format!(
            concat!(
                r#"{{"id":"{id}","type":"function_call","status":"{status}","#,
                r#""arguments":{arguments},"call_id":"{call_id}","name":{name}}}"#
            ),
            id = self.function_call_id(),
            status = status,
            arguments = json_str(arguments),
            call_id = CALL_ID,
            name = json_str(name),
        )
    }

    /// The non-stream answer with text `words` words long: `completed`, or `incomplete` when
    /// `max_output_tokens` cut it short.
    pub(super) fn text_response(&self, words: usize, hit_max: bool, prompt: u64) -> String {
        let text = wire::content_text(words);
        let usage = (prompt, words as u64);
        let (state, item_status) = if hit_max {
            (State::Incomplete(usage), "incomplete")
        } else {
            (State::Completed(usage), "completed")
        };
        self.response(&state, &self.message_item(item_status, Some(&text)))
    }

    /// The non-stream answer that is one function call.
    pub(super) fn tool_response(&self, plan: &ToolPlan) -> String {
        let output = wire::fragments(&plan.arguments).len() as u64;
        let item = self.function_call_item("completed", &plan.name, &plan.arguments);
        self.response(&State::Completed((plan.prompt_tokens, output)), &item)
    }
}

/// A response object's status and what goes with it.
enum State {
    InProgress,
    /// Input and output tokens.
    Completed((u64, u64)),
    /// Input and output tokens; cut by `max_output_tokens`.
    Incomplete((u64, u64)),
    Failed,
}

/// The `error` of a failed response.
const FAILED_ERROR: &str =
    r#"{"code":"server_error","message":"The server had an error while processing your request."}"#;

/// The `usage` object: input, cached (0), output, reasoning (0) and total tokens.
fn usage_json(input: u64, output: u64) -> String {
    format!(
        concat!(
            r#"{{"input_tokens":{i},"input_tokens_details":{{"cached_tokens":0}},"#,
            r#""output_tokens":{o},"output_tokens_details":{{"reasoning_tokens":0}},"#,
            r#""total_tokens":{t}}}"#
        ),
        i = input,
        o = output,
        t = input + output,
    )
}

/// An `output_text` content part holding `text`.
fn output_text(text: &str) -> String {
    format!(
        r#"{{"type":"output_text","annotations":[],"logprobs":[],"text":{}}}"#,
        json_str(text)
    )
}

/// Writes stream events with consecutive `sequence_number`s.
struct Events<'a> {
    env: &'a Envelope,
    next: u64,
}

impl<'a> Events<'a> {
    fn new(env: &'a Envelope) -> Events<'a> {
        Events { env, next: 0 }
    }

    /// `event: <kind>` and `data: {"type":<kind>,"sequence_number":n,<fields>}`.
    fn event(&mut self, kind: &str, fields: &str) -> String {
        let mut s = String::with_capacity(64 + kind.len() * 2 + fields.len());
        let _ = write!(
            s,
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{n},{fields}}}\n\n",
            n = self.next,
        );
        self.next += 1;
        s
    }

    fn lifecycle(&mut self, kind: &str, state: &State, output: &str) -> String {
        let response = self.env.response(state, output);
        self.event(kind, &format!(r#""response":{response}"#))
    }

    fn item(&mut self, kind: &str, item: &str) -> String {
        self.event(kind, &format!(r#""output_index":0,"item":{item}"#))
    }

    /// The fields that place an event in the message's text part.
    fn in_part(&self) -> String {
        format!(
            r#""item_id":"{}","output_index":0,"content_index":0"#,
            self.env.message_id()
        )
    }

    fn part(&mut self, kind: &str, text: &str) -> String {
        let fields = format!(r#"{},"part":{}"#, self.in_part(), output_text(text));
        self.event(kind, &fields)
    }

    fn text_delta(&mut self, i: usize) -> String {
        let fields = format!(r#"{},"delta":"word{i} ","logprobs":[]"#, self.in_part());
        self.event("response.output_text.delta", &fields)
    }

    fn text_done(&mut self, text: &str) -> String {
        let fields = format!(
            r#"{},"text":{},"logprobs":[]"#,
            self.in_part(),
            json_str(text)
        );
        self.event("response.output_text.done", &fields)
    }

    fn arguments(&mut self, kind: &str, key: &str, value: &str) -> String {
        let fields = format!(
            r#""item_id":"{}","output_index":0,"{key}":{}"#,
            self.env.function_call_id(),
            json_str(value)
        );
        self.event(kind, &fields)
    }
}

/// Runs a text stream to its end (or until the client leaves).
pub(super) async fn text_stream(mut out: Emitter, env: Envelope, plan: Plan) {
    if send_text(&mut out, &env, &plan).await.is_ok() && plan.ending == Ending::Cut {
        out.abort().await;
    }
}

async fn send_text(out: &mut Emitter, env: &Envelope, plan: &Plan) -> Result<(), Gone> {
    let mut ev = Events::new(env);
    out.send(ev.lifecycle("response.created", &State::InProgress, ""))
        .await?;
    out.send(ev.lifecycle("response.in_progress", &State::InProgress, ""))
        .await?;
    out.send(ev.item(
        "response.output_item.added",
        &env.message_item("in_progress", None),
    ))
    .await?;
    out.send(ev.part("response.content_part.added", "")).await?;
    for i in 0..plan.content {
        out.send(ev.text_delta(i)).await?;
    }
    match plan.ending {
        Ending::Cut => return Ok(()),
        Ending::Error => {
            return out
                .send(ev.lifecycle("response.failed", &State::Failed, ""))
                .await;
        }
        Ending::Complete => {}
    }
    let text = wire::content_text(plan.content);
    out.send(ev.text_done(&text)).await?;
    out.send(ev.part("response.content_part.done", &text))
        .await?;
    let usage = (plan.prompt_tokens, plan.content as u64);
    let (state, kind, item_status) = if plan.hit_max_tokens {
        (
            State::Incomplete(usage),
            "response.incomplete",
            "incomplete",
        )
    } else {
        (State::Completed(usage), "response.completed", "completed")
    };
    let item = env.message_item(item_status, Some(&text));
    out.send(ev.item("response.output_item.done", &item))
        .await?;
    out.send(ev.lifecycle(kind, &state, &item)).await
}

/// Runs a function call stream to its end (or until the client leaves).
pub(super) async fn tool_stream(mut out: Emitter, env: Envelope, plan: ToolPlan) {
    let _ = send_tool(&mut out, &env, &plan).await;
}

async fn send_tool(out: &mut Emitter, env: &Envelope, plan: &ToolPlan) -> Result<(), Gone> {
    let mut ev = Events::new(env);
    let fragments = wire::fragments(&plan.arguments);
    out.send(ev.lifecycle("response.created", &State::InProgress, ""))
        .await?;
    out.send(ev.lifecycle("response.in_progress", &State::InProgress, ""))
        .await?;
    let added = env.function_call_item("in_progress", &plan.name, "");
    out.send(ev.item("response.output_item.added", &added))
        .await?;
    for fragment in &fragments {
        out.send(ev.arguments("response.function_call_arguments.delta", "delta", fragment))
            .await?;
    }
    out.send(ev.arguments(
        "response.function_call_arguments.done",
        "arguments",
        &plan.arguments,
    ))
    .await?;
    let item = env.function_call_item("completed", &plan.name, &plan.arguments);
    out.send(ev.item("response.output_item.done", &item))
        .await?;
    let usage = (plan.prompt_tokens, fragments.len() as u64);
    out.send(ev.lifecycle("response.completed", &State::Completed(usage), &item))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(request: &Value) -> Envelope {
        Envelope::new(7, 1_700_000_000, request)
    }

    fn data(event: &str) -> Value {
        let mut lines = event.lines();
        let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
        let v: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["type"], name, "event name and type agree");
        v
    }

    #[test]
    fn the_response_echoes_the_request_and_defaults_the_rest() {
        let request = json!({
            "model": "m\"x", "input": "hi", "instructions": "be brief",
            "tools": [{"type": "function", "name": "f", "parameters": {}}],
            "store": false, "reasoning": {"effort": "low", "summary": "auto"},
        });
        let v: Value = serde_json::from_str(&env(&request).text_response(2, false, 5)).unwrap();
        assert_eq!(v["id"], "resp_fake7");
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["completed_at"], 1_700_000_000);
        assert_eq!(v["model"], "m\"x");
        assert_eq!(v["instructions"], "be brief");
        assert_eq!(v["tools"][0]["name"], "f");
        assert_eq!(v["store"], false);
        assert_eq!(v["reasoning"]["summary"], "auto");
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["parallel_tool_calls"], true);
        assert_eq!(v["text"]["format"]["type"], "text");
        assert_eq!(v["metadata"], json!({}));
        let item = &v["output"][0];
        assert_eq!(item["id"], "msg_fake7");
        assert_eq!(item["status"], "completed");
        assert_eq!(item["content"][0]["text"], "word0 word1 ");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 7})
        );
    }

    #[test]
    fn a_cut_answer_is_incomplete_for_max_output_tokens() {
        let v: Value =
            serde_json::from_str(&env(&json!({"model": "m"})).text_response(1, true, 5)).unwrap();
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["completed_at"], Value::Null);
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(v["output"][0]["status"], "incomplete");
    }

    #[test]
    fn a_tool_response_is_one_function_call_item() {
        let plan = ToolPlan {
            name: "sh\"ell".into(),
            arguments: r#"{"cmd":["echo","x"]}"#.into(),
            prompt_tokens: 3,
        };
        let v: Value =
            serde_json::from_str(&env(&json!({"model": "m"})).tool_response(&plan)).unwrap();
        let item = &v["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["id"], "fc_fake7");
        assert_eq!(item["call_id"], CALL_ID);
        assert_eq!(item["name"], "sh\"ell");
        assert_eq!(item["arguments"], plan.arguments);
        assert_eq!(v["usage"]["output_tokens"], 4);
    }

    #[test]
    fn events_number_themselves_from_zero() {
        let e = env(&json!({"model": "m"}));
        let mut ev = Events::new(&e);
        let a = data(&ev.lifecycle("response.created", &State::InProgress, ""));
        let b = data(&ev.part("response.content_part.added", ""));
        let c = data(&ev.text_delta(3));
        let d = data(&ev.arguments("response.function_call_arguments.delta", "delta", "{\""));
        let f = data(&ev.lifecycle("response.failed", &State::Failed, ""));
        let seqs: Vec<_> = [&a, &b, &c, &d, &f]
            .iter()
            .map(|v| v["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert_eq!(a["response"]["status"], "in_progress");
        assert_eq!(a["response"]["usage"], Value::Null);
        assert_eq!(b["part"]["type"], "output_text");
        assert_eq!(c["delta"], "word3 ");
        assert_eq!(c["item_id"], "msg_fake7");
        assert_eq!(d["delta"], "{\"");
        assert_eq!(d["item_id"], "fc_fake7");
        assert_eq!(f["response"]["status"], "failed");
        assert_eq!(f["response"]["error"]["code"], "server_error");
    }
}
