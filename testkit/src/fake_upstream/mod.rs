//! A fake upstream LLM provider that speaks the OpenAI Chat Completions, the OpenAI Responses,
//! the Anthropic Messages and the Gemini wire formats over loopback, with fault injection.
//!
//! Tests, benchmarks and the demo point the data plane at a [`FakeUpstream`] instead of a real
//! provider. It answers like the recorded samples in `testkit/samples/` (same envelopes,
//! same SSE framing and event order), so a gateway that works against it has been exercised
//! against the real shapes; and it can misbehave on demand ([`Behavior`]): error statuses with
//! `Retry-After`, slow first bytes, trickling streams, streams cut mid-way, OpenRouter-style and
//! Anthropic-style mid-stream errors (`response.failed` on the Responses API), and requests that
//! never get an answer. It can also answer with a tool call instead of text
//! ([`Behavior::ToolCall`]).
//!
//! # Endpoints
//!
//! | Method and path | Protocol | Auth (when [`FakeConfig::api_key`] is set) |
//! |---|---|---|
//! | `POST /v1/chat/completions` | OpenAI, stream and non-stream | `Authorization: Bearer <key>` |
//! | `POST /v1/responses` | OpenAI Responses, stream and non-stream (shapes and their source: `responses.rs`) | `Authorization: Bearer <key>` |
//! | `POST /v1/messages` (any query, e.g. `?beta=true`) | Anthropic, stream and non-stream | `x-api-key: <key>` or Bearer |
//! | `POST /v1/messages/count_tokens` | Anthropic | `x-api-key: <key>` or Bearer |
//! | `POST /v1/embeddings` | OpenAI embeddings (shapes, vectors and usage: `embeddings.rs`) | `Authorization: Bearer <key>` |
//! | `POST /v1beta/models/{model}:embedContent`, `:batchEmbedContents` | Gemini embeddings (`embeddings.rs`) | `x-goog-api-key: <key>` or `?key=` |
//! | `GET /v1/models` | Anthropic shape if the request has `x-api-key` or `anthropic-version`, else OpenAI | either |
//! | `POST /v1beta/models/{model}:generateContent` | Gemini, non-stream (shapes and their source: `gemini.rs`) | `x-goog-api-key: <key>` or `?key=<key>` |
//! | `POST /v1beta/models/{model}:streamGenerateContent` | Gemini, SSE with `?alt=sse`, else one JSON array | as above |
//! | `POST /v1beta/models/{model}:countTokens` | Gemini (`totalTokens`) | as above |
//! | `GET /v1beta/models` (`pageSize`, `pageToken`), `GET /v1beta/models/{model}` | Gemini | as above |
//!
//! The Gemini endpoints answer under `/v1/` too (google-genai's default API version), and
//! anything else under `/v1beta/` is a Gemini 404. Gemini refuses a wrong key with Google's 400
//! `API_KEY_INVALID` and a missing one with its 403 `PERMISSION_DENIED`; its errors are Google's
//! `{"error":{code, message, status, details}}` ([`Behavior::Status`] defaults: 429
//! `RESOURCE_EXHAUSTED` with `QuotaFailure` and `RetryInfo.retryDelay`, 503 `UNAVAILABLE`, …),
//! and [`Behavior::Gemini`] scripts what only Gemini answers carry (thought parts, usage
//! details, finish reasons, a blocked prompt).
//!
//! [`FakeUpstream::set_models_body`] replaces the `GET /v1/models` (and Gemini's `GET models`) answer with a given status
//! and body (a recorded catalog such as `openrouter-models.json`, or a broken one), so the
//! control plane's catalog sync can be tested against it; such an answer takes no behaviour.
//!
//! Anything else is a 404 in the shape of the protocol guessed the same way (OpenAI's for any
//! other `/v1/responses…` path, such as `GET /v1/responses/{id}`: the fake stores nothing).
//! Checks run in this order, each answering in the protocol's own error shape: unknown path
//! (404), key (401), body not a JSON object (400), missing required fields (400: `model` and
//! `messages`; for the Responses API `model` and `input`, a string or an array; for Anthropic
//! also a positive `max_tokens` and the `anthropic-version` header, as the real API requires).
//!
//! # Deterministic content and usage
//!
//! A completion is [`FakeConfig::chunks`] words `"word0 "`, `"word1 "`, … (each one stream
//! event; the non-stream content is their concatenation), cut short by the request's
//! `max_completion_tokens` / `max_tokens` (Responses: `max_output_tokens`), in which case the
//! finish reason is `length` (Anthropic: `max_tokens`; Responses: status `incomplete` with reason
//! `max_output_tokens`) instead of `stop` (`end_turn`; `completed`). Token counts:
//!
//! - prompt tokens = [`prompt_tokens_for`] of the raw request body: `max(1, body_bytes / 4)`
//!   (Responses: `input_tokens`);
//! - completion tokens = the number of content words emitted (for [`Behavior::ToolCall`], the
//!   number of argument fragments) (Responses: `output_tokens`);
//! - cached and reasoning tokens are 0 (Responses: `input_tokens_details.cached_tokens`,
//!   `output_tokens_details.reasoning_tokens`), and a total is the sum of prompt and completion.
//!
//! The response's `model` echoes the request's `model`; every response carries
//! `x-fake-upstream: <name>` so a test can tell which upstream served it.
//!
//! # Behaviour
//!
//! [`FakeUpstream::set_behavior`] sets the default for all following requests;
//! [`FakeUpstream::push_once`] queues one-shot behaviours (FIFO) that take precedence; and
//! [`FakeUpstream::when_body_contains`] gives every request whose raw body contains a marker its
//! own behaviour, before both (so one client's requests can fail while another's are served,
//! as a provider answers what a prompt asks). A behaviour
//! is taken by a request only once it has passed the checks above (path, key, body), so a
//! misrouted or unauthenticated request does not use up a queued fault.
//!
//! # Recording
//!
//! Every request is recorded ([`FakeUpstream::requests`]) with its head, body, the behaviour it
//! got, the status answered and whether the client went away before the response ended
//! ([`RecordedRequest::client_disconnected`]), which is how a test checks that a client
//! disconnect cancels the upstream call.

mod body;
mod gemini;
mod responses;
mod server;
mod stream;
mod wire;

pub use server::embeddings::{DEFAULT_DIMENSIONS as EMBEDDING_DIMENSIONS, vector as embedding};

use bytes::Bytes;
use hyper::http::HeaderValue;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use gemini::THOUGHT_SIGNATURE as GEMINI_THOUGHT_SIGNATURE;

/// How a [`FakeUpstream`] is set up. Start from [`FakeConfig::default`] and override fields.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Sent back in the `x-fake-upstream` header of every response, and used as the
    /// `provider` / `owned_by` of OpenRouter-style chunks and model lists. Default `"fake"`.
    pub name: String,
    /// The key clients must present. `None` (the default) accepts any or no key.
    pub api_key: Option<String>,
    /// Content words per completion (stream events, for a stream). Default 20.
    pub chunks: usize,
    /// Pause before each stream event after the first. Default 0 (no pause).
    pub chunk_delay: Duration,
    /// Where to listen. Default `127.0.0.1:0` (a free port).
    pub listen: SocketAddr,
    /// Model ids returned by `GET /v1/models`. Requests may still name any model.
    pub models: Vec<String>,
    /// Whether to keep every request for [`FakeUpstream::requests`]. Default true; the binary
    /// turns it off so a long benchmark does not grow memory.
    pub record_requests: bool,
    /// Tokio worker threads of [`FakeUpstream::start`]'s runtime. Default 1 (enough for tests;
    /// an in-process benchmark may want more).
    pub worker_threads: usize,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            name: "fake".to_string(),
            api_key: None,
            chunks: 20,
            chunk_delay: Duration::ZERO,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            models: vec![
                "gpt-4o-mini".to_string(),
                "claude-sonnet-4-5-20250929".to_string(),
                "fake-model".to_string(),
            ],
            record_requests: true,
            worker_threads: 1,
        }
    }
}

/// How the fake answers a request. Stream-only behaviours on a non-stream request are described
/// on each variant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Answer normally.
    #[default]
    Normal,
    /// Answer with this HTTP status and no stream. `retry_after` becomes a `Retry-After` header;
    /// `body` replaces the default body, which is the protocol's error shape for the status
    /// (OpenAI chat and Responses: 429 `rate_limit_exceeded`, 5xx `server_error`; Anthropic: 429
    /// `rate_limit_error`, 500 `api_error`, 503 and 529 `overloaded_error`, …).
    Status {
        /// The HTTP status code (100..=999).
        code: u16,
        /// Value of the `Retry-After` header, if any.
        retry_after: Option<String>,
        /// The exact body to send (as `application/json`), if not the default.
        body: Option<String>,
    },
    /// Wait this long before sending the response head, then answer normally.
    DelayFirstByte(Duration),
    /// Pause this long before each stream event after the first (a trickle); overrides
    /// [`FakeConfig::chunk_delay`]. A non-stream request is answered normally.
    ChunkDelay(Duration),
    /// Stream: send the opening events and this many content events, then abort the connection
    /// (no finish chunk, no `[DONE]` / `message_stop` / `response.completed`). Non-stream: send
    /// the head and the first
    /// half of the JSON body, then abort.
    CutAfter(usize),
    /// Stream, HTTP 200: OpenAI protocol as OpenRouter does it (`: OPENROUTER PROCESSING`
    /// comments, an empty role chunk, then a chunk with a top-level `"error"` object and usage,
    /// then `data: [DONE]`, as in `openrouter-stream-midstream-error.sse`); Anthropic protocol:
    /// `message_start`, `content_block_start`, `ping`, then `event: error` with
    /// `overloaded_error` and the end of the body; Responses API: `response.created`,
    /// `response.in_progress`, the message's `output_item.added` and `content_part.added`, then
    /// `response.failed` (status `failed`, `error.code: "server_error"`) and the end of the body.
    /// Same as `ErrorAfterContent(0)`. A non-stream request gets a 502 `server_error` (OpenAI
    /// chat and Responses) or a 529 `overloaded_error` (Anthropic).
    MidStreamError,
    /// Like [`Behavior::MidStreamError`], with this many content events before the error.
    ErrorAfterContent(usize),
    /// Never answer; the request ends only when the client gives up (recorded as a disconnect).
    Hang,
    /// Answer with one call of tool `name` instead of text, `arguments` being the call's input
    /// as JSON text (it must be a JSON object; [`FakeUpstream::set_behavior`] and
    /// [`FakeUpstream::push_once`] panic otherwise). The text is sent as given, so its key order
    /// and spacing reach the client unchanged. The request's `tools` are not looked at, and its
    /// max tokens do not cut the call short.
    ///
    /// - OpenAI, non-stream: `message.content: null`, `message.tool_calls: [{id:
    ///   "call_fake1", type: "function", function: {name, arguments}}]`, finish reason
    ///   `tool_calls`.
    /// - OpenAI, stream (as openai-tool-call-stream.sse): a first chunk with the role,
    ///   `content: null` and `tool_calls[{index: 0, id, type, function: {name, arguments: ""}}]`;
    ///   then one chunk per fragment of the arguments (`tool_calls[{index: 0, function:
    ///   {arguments}}]`); a finish chunk with `tool_calls`; the usage chunk if
    ///   `stream_options.include_usage`; `[DONE]`.
    /// - Anthropic, non-stream: `content: [{type: "tool_use", id: "toolu_fake1", name, input}]`
    ///   with `input` the arguments object, stop reason `tool_use`.
    /// - Anthropic, stream (as anthropic-tool-use-stream.sse): `message_start`;
    ///   `content_block_start` of block 0 with the `tool_use` block and `input: {}`; `ping`; an
    ///   `input_json_delta` with an empty `partial_json` (the real API sends one), then one per
    ///   fragment; `content_block_stop`; `message_delta` with `tool_use` and the usage;
    ///   `message_stop`.
    /// - Responses, non-stream: `output: [{id: "fc_fake<n>", type: "function_call", status:
    ///   "completed", arguments, call_id: "call_fake1", name}]`, status `completed`.
    /// - Responses, stream: `response.created`, `response.in_progress`,
    ///   `response.output_item.added` with the item `in_progress` and empty `arguments`, one
    ///   `response.function_call_arguments.delta` per fragment,
    ///   `response.function_call_arguments.done`, `response.output_item.done`,
    ///   `response.completed`.
    ///
    /// The arguments are cut into up to 4 non-empty fragments of about equal length (fewer only
    /// for an object shorter than 4 characters), and the completion / output token count is the
    /// number of fragments. [`FakeConfig::chunk_delay`] paces the stream events as usual.
    ToolCall {
        /// The tool (function) name.
        name: String,
        /// The call's input: a JSON object, as text.
        ///
        /// Gemini: one `functionCall {name, args}` part carrying
        /// [`GEMINI_THOUGHT_SIGNATURE`], `finishReason: "STOP"`, in one stream chunk.
        arguments: String,
    },
    /// Gemini endpoints: answer with what [`GeminiAnswer`] asks for (thought parts, usage
    /// details, a finish reason, a blocked prompt, a function call). The other dialects answer
    /// it as [`Behavior::Normal`], or as [`Behavior::ToolCall`] when it holds a function call.
    Gemini(GeminiAnswer),
}

/// What a Gemini answer carries beyond the words (see [`Behavior::Gemini`]); the default is a
/// plain text answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeminiAnswer {
    /// `thought: true` text parts (`"thought0 "`, …) before the answer, one stream chunk each
    /// (one part for a non-stream answer), counted one token each in `thoughtsTokenCount`; the
    /// first answer part then carries [`GEMINI_THOUGHT_SIGNATURE`].
    pub thoughts: usize,
    /// `usageMetadata.cachedContentTokenCount` (part of `promptTokenCount`, as Google counts).
    pub cached_tokens: u64,
    /// `usageMetadata.toolUsePromptTokenCount` (added to `totalTokenCount`).
    pub tool_use_prompt_tokens: u64,
    /// Replaces the finish reason (`"SAFETY"`, `"RECITATION"`, `"MALFORMED_FUNCTION_CALL"`, …).
    pub finish_reason: Option<String>,
    /// Blocks the prompt: HTTP 200 with no candidates and `promptFeedback.blockReason` this
    /// (`"SAFETY"`, `"PROHIBITED_CONTENT"`, …); a stream is that one chunk.
    pub block_reason: Option<String>,
    /// Answer with a call of this function (name, arguments as a JSON object's text) instead of
    /// text, as [`Behavior::ToolCall`] does.
    pub function_call: Option<(String, String)>,
}

impl Behavior {
    /// `Status` with the default body and no `Retry-After`.
    pub fn status(code: u16) -> Behavior {
        Behavior::Status {
            code,
            retry_after: None,
            body: None,
        }
    }

    /// `Status` with the default body and a `Retry-After` header.
    pub fn status_retry_after(code: u16, retry_after: &str) -> Behavior {
        Behavior::Status {
            code,
            retry_after: Some(retry_after.to_string()),
            body: None,
        }
    }

    /// `ToolCall` of tool `name` with `arguments` (a JSON object as text).
    pub fn tool_call(name: &str, arguments: &str) -> Behavior {
        Behavior::ToolCall {
            name: name.to_string(),
            arguments: arguments.to_string(),
        }
    }

    /// What this behaviour means to the dialects other than Gemini.
    fn outside_gemini(self) -> Behavior {
        match self {
            Behavior::Gemini(GeminiAnswer {
                function_call: Some((name, arguments)),
                ..
            }) => Behavior::ToolCall { name, arguments },
            Behavior::Gemini(_) => Behavior::Normal,
            other => other,
        }
    }

    /// Panics (on the test's thread) for a `Status` the server could not send, or a `ToolCall`
    /// whose arguments are not a JSON object.
    fn validate(&self) {
        if let Behavior::Gemini(GeminiAnswer {
            function_call: Some((name, arguments)),
            ..
        }) = self
        {
            Behavior::tool_call(name, arguments).validate();
        }
        if let Behavior::ToolCall { arguments, .. } = self {
            assert!(
                serde_json::from_str::<serde_json::Value>(arguments).is_ok_and(|v| v.is_object()),
                "Behavior::ToolCall arguments {arguments:?} are not a JSON object"
            );
        }
        if let Behavior::Status {
            code, retry_after, ..
        } = self
        {
            assert!(
                hyper::StatusCode::from_u16(*code).is_ok(),
                "Behavior::Status code {code} is not an HTTP status"
            );
            if let Some(v) = retry_after {
                assert!(
                    HeaderValue::from_str(v).is_ok(),
                    "Retry-After {v:?} is not a header value"
                );
            }
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path including the query string, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Header names (lower case) and values, in arrival order; non-UTF-8 values are converted
    /// lossily.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// The body parsed as JSON, if it is JSON.
    pub json: Option<serde_json::Value>,
    /// The behaviour this request got; `None` if it was rejected first (404, 401, 400).
    pub behavior: Option<Behavior>,
    /// The status sent, once a response head was produced (`None` while pending or for `Hang`).
    pub status: Option<u16>,
    /// Whether the client went away before the end of the response: while the fake was still
    /// waiting (`Hang`, `DelayFirstByte`) or in the middle of a stream. False for a response the
    /// fake itself cut (`CutAfter`).
    pub client_disconnected: bool,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `id` of the tool call in every OpenAI chat answer to [`Behavior::ToolCall`], and the
/// `call_id` of the `function_call` item in every Responses answer to it.
pub const OPENAI_TOOL_CALL_ID: &str = "call_fake1";

/// The `id` of the `tool_use` block in every Anthropic answer to [`Behavior::ToolCall`].
pub const ANTHROPIC_TOOL_USE_ID: &str = "toolu_fake1";

/// The prompt token count the fake reports for a request body: `max(1, body.len() / 4)`.
pub fn prompt_tokens_for(body: &[u8]) -> u64 {
    (body.len() as u64 / 4).max(1)
}

/// Behaviour state: the default and the one-shot queue.
#[derive(Debug, Default)]
struct Behaviors {
    default: Behavior,
    queue: VecDeque<Behavior>,
    /// Body markers and their behaviours, first match wins.
    rules: Vec<(Vec<u8>, Behavior)>,
}

/// State shared by the handle and every connection.
struct Shared {
    config: FakeConfig,
    /// `x-fake-upstream` value, built once.
    name_header: HeaderValue,
    behaviors: Mutex<Behaviors>,
    /// `GET /v1/models` answer (status, body) that replaces the generated list, if set.
    models_body: Mutex<Option<(u16, String)>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests received, counted even when recording is off.
    count: AtomicUsize,
    /// Source of response ids (`chatcmpl-fake…`, `msg_fake…`).
    next_id: AtomicU64,
}

/// Locks a mutex, ignoring poisoning: a test that panicked elsewhere must not hide this state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(config: FakeConfig) -> Shared {
        let name_header = HeaderValue::from_str(&config.name).unwrap_or_else(|_| {
            panic!("fake upstream name {:?} is not a header value", config.name)
        });
        Shared {
            config,
            name_header,
            behaviors: Mutex::new(Behaviors::default()),
            models_body: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// The behaviour of the first rule whose marker `body` contains, else the next one-shot
    /// behaviour, else the default.
    fn take_behavior(&self, body: &[u8]) -> Behavior {
        let mut b = lock(&self.behaviors);
        if let Some((_, rule)) = b.rules.iter().find(|(needle, _)| {
            !needle.is_empty() && body.windows(needle.len()).any(|w| w == needle.as_slice())
        }) {
            return rule.clone();
        }
        match b.queue.pop_front() {
            Some(once) => once,
            None => b.default.clone(),
        }
    }

    /// Counts a request and, when recording is on, records it; returns its index then.
    fn record(&self, request: impl FnOnce() -> RecordedRequest) -> Option<usize> {
        self.count.fetch_add(1, Ordering::Relaxed);
        if !self.config.record_requests {
            return None;
        }
        let request = request();
        let mut requests = lock(&self.requests);
        requests.push(request);
        Some(requests.len() - 1)
    }

    /// Updates the recorded request at `index`, if recorded (and not cleared since).
    fn update(&self, index: Option<usize>, f: impl FnOnce(&mut RecordedRequest)) {
        if let Some(i) = index
            && let Some(r) = lock(&self.requests).get_mut(i)
        {
            f(r);
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A running fake upstream on its own thread and tokio runtime. Dropping it stops it.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    /// Binds [`FakeConfig::listen`] and serves on a background thread. Returns once the socket
    /// is listening, so it can be called from plain `#[test]` functions and from async code.
    pub fn start(config: FakeConfig) -> FakeUpstream {
        let listener = std::net::TcpListener::bind(config.listen)
            .unwrap_or_else(|e| panic!("fake upstream cannot bind {}: {e}", config.listen));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let threads = config.worker_threads.max(1);
        let shared = Arc::new(Shared::new(config));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-upstream-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()
                    .expect("fake upstream runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    server::accept_loop(listener, thread_shared, async {
                        let _ = rx.await;
                    })
                    .await;
                });
                // Shutting the runtime down drops every connection and stream task: open
                // connections are closed, not left hanging.
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .expect("spawn fake upstream thread");
        FakeUpstream {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name sent in `x-fake-upstream`.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Base URL for OpenAI clients: `http://127.0.0.1:PORT/v1`.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Base URL for Anthropic clients: `http://127.0.0.1:PORT`.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL for Gemini clients (google-genai's `base_url`, Gemini CLI's
    /// `GOOGLE_GEMINI_BASE_URL`): `http://127.0.0.1:PORT`; they add `/v1beta/models/…`.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the behaviour for all following requests (one-shot ones queued by
    /// [`FakeUpstream::push_once`] still go first).
    pub fn set_behavior(&self, b: Behavior) {
        b.validate();
        lock(&self.shared.behaviors).default = b;
    }

    /// Queues a behaviour for exactly one request; several are used in FIFO order, then the
    /// default applies again.
    pub fn push_once(&self, b: Behavior) {
        b.validate();
        lock(&self.shared.behaviors).queue.push_back(b);
    }

    /// From now on, every request whose raw body contains `marker` gets `b`, before one-shot and
    /// default behaviours (which requests without the marker keep using). The first rule added
    /// whose marker matches wins. An empty marker matches nothing.
    pub fn when_body_contains(&self, marker: &str, b: Behavior) {
        b.validate();
        lock(&self.shared.behaviors)
            .rules
            .push((marker.as_bytes().to_vec(), b));
    }

    /// Answers `GET /v1/models` with this status and body from now on (after the usual path and
    /// key checks); `None` goes back to the generated list of [`FakeConfig::models`].
    pub fn set_models_body(&self, answer: Option<(u16, String)>) {
        *lock(&self.shared.models_body) = answer;
    }

    /// Every request received so far (since the last [`FakeUpstream::clear_requests`]), in
    /// arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests arrived (not reset by [`FakeUpstream::clear_requests`]).
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Forgets the recorded requests. A request still in flight keeps updating nothing.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Stops: closes the listener (later connects are refused) and drops every open connection,
    /// so in-flight responses end abruptly.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeUpstream")
            .field("name", &self.shared.config.name)
            .field("addr", &self.addr)
            .finish()
    }
}

/// Serves the fake on an already bound listener until `shutdown` completes, on the caller's
/// runtime. This is what the `keyplane-fake-upstream` binary runs; behaviour stays
/// [`Behavior::Normal`] since nothing can change it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: FakeConfig,
    shutdown: impl Future<Output = ()>,
) {
    server::accept_loop(listener, Arc::new(Shared::new(config)), shutdown).await;
}
