//! The accept loop and the request handler: routing, auth, validation, behaviour, and the
//! normal answers of each dialect.

use super::body::{DisconnectGuard, FakeBody};
use super::gemini;
use super::responses::{self, Envelope};
use super::stream::{self, Ending, Plan, ToolPlan};
use super::wire::{self, Ids, Protocol};
use super::{Behavior, RecordedRequest, Shared, prompt_tokens_for};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// The embeddings endpoints, in their own file beside this one; a child module so that they
// answer through the same `Exchange` (recording, behaviours, replies).
#[path = "embeddings.rs"]
pub(super) mod embeddings;

const X_FAKE_UPSTREAM: HeaderName = HeaderName::from_static("x-fake-upstream");
const X_API_KEY: &str = "x-api-key";
const ANTHROPIC_VERSION: &str = "anthropic-version";
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");

/// Accepts connections until `shutdown` completes, then drops the listener (later connects are
/// refused). Connections already open keep running on the runtime; HTTP/1.1 and HTTP/2
/// (prior knowledge) are both served.
pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(_) => {
                    // Usually EMFILE under a benchmark; back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Each SSE event must reach the client when it is produced, not when Nagle allows.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            // A connection error (client reset, injected cut) only ends this connection.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Which endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    OpenAiChat,
    OpenAiResponses,
    AnthropicMessages,
    AnthropicCountTokens,
    Embeddings(embeddings::Kind),
    Models(Protocol),
    NotFound(Protocol),
}

impl Route {
    fn of(parts: &Parts) -> Route {
        let path = parts.uri.path();
        if parts.method == Method::POST
            && let Some(kind) = embeddings::Kind::of(path)
        {
            return Route::Embeddings(kind);
        }
        match (&parts.method, path) {
            (&Method::POST, "/v1/chat/completions") => Route::OpenAiChat,
            (&Method::POST, "/v1/responses") => Route::OpenAiResponses,
            (&Method::POST, "/v1/messages") => Route::AnthropicMessages,
            (&Method::POST, "/v1/messages/count_tokens") => Route::AnthropicCountTokens,
            (&Method::GET, "/v1/models") => Route::Models(guess_protocol(&parts.headers)),
            _ if path.starts_with("/v1/messages") => Route::NotFound(Protocol::Anthropic),
            _ => Route::NotFound(guess_protocol(&parts.headers)),
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            // The Responses API's errors are OpenAI's error object.
            // Gemini's embeddings errors are written by `embeddings.rs`; OpenAI's request-id
            // header serves both.
            Route::OpenAiChat | Route::OpenAiResponses | Route::Embeddings(_) => Protocol::OpenAi,
            Route::AnthropicMessages | Route::AnthropicCountTokens => Protocol::Anthropic,
            Route::Models(p) | Route::NotFound(p) => p,
        }
    }
}

/// Anthropic if the request carries Anthropic's headers, else OpenAI.
fn guess_protocol(headers: &HeaderMap) -> Protocol {
    if headers.contains_key(X_API_KEY) || headers.contains_key(ANTHROPIC_VERSION) {
        Protocol::Anthropic
    } else {
        Protocol::OpenAi
    }
}

/// The request handler: never fails; every outcome is an HTTP response (or no response at all
/// for [`Behavior::Hang`]).
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // A client that leaves while sending its body gets nothing; an empty body stands in.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let index = shared.record(|| RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        json: json.clone(),
        behavior: None,
        status: None,
        client_disconnected: false,
    });
    let guard = DisconnectGuard::new(shared.clone(), index);
    let seq = shared.next_id();
    // Gemini's embed methods are answered by `embeddings.rs`, beside OpenAI's.
    let embeddings =
        parts.method == Method::POST && embeddings::Kind::of(parts.uri.path()).is_some();
    if !embeddings && let Some(endpoint) = gemini::Endpoint::of(&parts) {
        let exchange = gemini::Exchange {
            shared,
            index,
            seq,
            endpoint,
            parts,
            body,
            json,
        };
        return Ok(gemini::respond(exchange, guard).await);
    }
    let exchange = Exchange {
        shared,
        seq,
        index,
        route: Route::of(&parts),
        parts,
        body,
        json,
    };
    Ok(exchange.respond(guard).await)
}

/// One request being answered.
struct Exchange {
    shared: Arc<Shared>,
    /// Index in the recorded requests, if recorded.
    index: Option<usize>,
    /// Source of this response's ids.
    seq: u64,
    route: Route,
    parts: Parts,
    body: Bytes,
    json: Option<Value>,
}

/// A request the fake refuses before any behaviour applies.
struct Rejection {
    status: StatusCode,
    body: String,
}

impl Exchange {
    async fn respond(self, mut guard: DisconnectGuard) -> Response<FakeBody> {
        if let Route::Embeddings(kind) = self.route {
            return self.embeddings(kind, guard).await;
        }
        if let Err(rejection) = self.check() {
            guard.disarm();
            return self.reply(rejection.status, JSON, FakeBody::full(rejection.body), None);
        }
        if let Route::Models(_) = self.route
            && let Some((code, body)) = super::lock(&self.shared.models_body).clone()
        {
            // A set models body (a recorded catalog, or a broken one) takes no behaviour.
            guard.disarm();
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            return self.reply(status, JSON, FakeBody::full(body), None);
        }
        let behavior = self.shared.take_behavior(&self.body);
        self.shared
            .update(self.index, |r| r.behavior = Some(behavior.clone()));
        match behavior.outside_gemini() {
            Behavior::Status {
                code,
                retry_after,
                body,
            } => {
                guard.disarm();
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = body.unwrap_or_else(|| {
                    wire::status_error(self.route.protocol(), code, &wire::request_id(self.seq))
                });
                self.reply(status, JSON, FakeBody::full(body), retry_after.as_deref())
            }
            Behavior::Hang => {
                // Dropped by hyper when the client goes away; the guard records it.
                match std::future::pending::<Infallible>().await {}
            }
            Behavior::DelayFirstByte(delay) => {
                tokio::time::sleep(delay).await;
                self.serve(Behavior::Normal, guard)
            }
            other => self.serve(other, guard),
        }
    }

    /// Path, key, body and required fields, in the order the real APIs check them.
    fn check(&self) -> Result<(), Rejection> {
        let protocol = self.route.protocol();
        let rid = wire::request_id(self.seq);
        if let Route::NotFound(_) = self.route {
            let body = match protocol {
                Protocol::OpenAi => wire::openai_error(
                    &format!(
                        "Invalid URL ({} {})",
                        self.parts.method,
                        self.parts.uri.path()
                    ),
                    "invalid_request_error",
                    None,
                    None,
                ),
                Protocol::Anthropic => wire::anthropic_error("not_found_error", "Not Found", &rid),
            };
            return Err(Rejection {
                status: StatusCode::NOT_FOUND,
                body,
            });
        }
        if let Some(key) = &self.shared.config.api_key {
            self.check_key(key, protocol, &rid)?;
        }
        let bad_request = |message: &str, param: Option<&str>, code: Option<&str>| Rejection {
            status: StatusCode::BAD_REQUEST,
            body: match protocol {
                Protocol::OpenAi => {
                    wire::openai_error(message, "invalid_request_error", param, code)
                }
                Protocol::Anthropic => {
                    wire::anthropic_error("invalid_request_error", message, &rid)
                }
            },
        };
        if self.route == Route::Models(protocol) {
            return Ok(());
        }
        if protocol == Protocol::Anthropic && !self.parts.headers.contains_key(ANTHROPIC_VERSION) {
            return Err(bad_request(
                "anthropic-version: header is required",
                None,
                None,
            ));
        }
        let Some(Value::Object(obj)) = &self.json else {
            return Err(match protocol {
                Protocol::OpenAi => bad_request(
                    "We could not parse the JSON body of your request. The API expects a JSON \
                     payload, but what was sent was not valid JSON.",
                    None,
                    None,
                ),
                Protocol::Anthropic => bad_request(
                    "There was an error parsing the body of your request.",
                    None,
                    None,
                ),
            });
        };
        let missing = |field: &str| match protocol {
            Protocol::OpenAi => bad_request(
                &format!("Missing required parameter: '{field}'."),
                Some(field),
                Some("missing_required_parameter"),
            ),
            Protocol::Anthropic => bad_request(&format!("{field}: Field required"), None, None),
        };
        if !obj.get("model").is_some_and(Value::is_string) {
            return Err(missing("model"));
        }
        if self.route == Route::OpenAiResponses {
            // `input` is a string or an array of items.
            if !obj
                .get("input")
                .is_some_and(|v| v.is_string() || v.is_array())
            {
                return Err(missing("input"));
            }
        } else if !obj.get("messages").is_some_and(Value::is_array) {
            return Err(missing("messages"));
        }
        let max_tokens = obj.get("max_tokens").and_then(Value::as_u64);
        if self.route == Route::AnthropicMessages && max_tokens.is_none_or(|n| n == 0) {
            return Err(missing("max_tokens"));
        }
        Ok(())
    }

    /// OpenAI chat and Responses take `Authorization: Bearer`; the other endpoints also
    /// `x-api-key`.
    fn check_key(&self, key: &str, protocol: Protocol, rid: &str) -> Result<(), Rejection> {
        let headers = &self.parts.headers;
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_api_key = headers.get(X_API_KEY).and_then(|v| v.to_str().ok());
        let presented = match self.route {
            Route::OpenAiChat | Route::OpenAiResponses => bearer,
            _ => x_api_key.or(bearer),
        };
        if presented == Some(key) {
            return Ok(());
        }
        let body = match (protocol, presented) {
            (Protocol::OpenAi, None) => wire::openai_error(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
                None,
            ),
            (Protocol::OpenAi, Some(_)) => wire::openai_error(
                "Incorrect API key provided.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
            (Protocol::Anthropic, None) => {
                wire::anthropic_error("authentication_error", "x-api-key header is required", rid)
            }
            (Protocol::Anthropic, Some(_)) => {
                wire::anthropic_error("authentication_error", "invalid x-api-key", rid)
            }
        };
        Err(Rejection {
            status: StatusCode::UNAUTHORIZED,
            body,
        })
    }

    /// A checked request under a behaviour other than `Status`, `Hang` and `DelayFirstByte`.
    fn serve(self, behavior: Behavior, guard: DisconnectGuard) -> Response<FakeBody> {
        let prompt_tokens = prompt_tokens_for(&self.body);
        let body = match self.route {
            Route::Models(Protocol::OpenAi) => {
                wire::openai_models(&self.shared.config.models, &self.shared.config.name)
            }
            Route::Models(Protocol::Anthropic) => {
                wire::anthropic_models(&self.shared.config.models)
            }
            Route::AnthropicCountTokens => format!(r#"{{"input_tokens":{prompt_tokens}}}"#),
            Route::OpenAiChat | Route::OpenAiResponses | Route::AnthropicMessages => {
                return self.completion(behavior, prompt_tokens, guard);
            }
            Route::NotFound(_) => unreachable!("rejected by check"),
            Route::Embeddings(_) => unreachable!("answered by embeddings.rs"),
        };
        self.json_reply(body, &behavior, guard)
    }

    /// A chat completion / message, streamed or not.
    fn completion(
        self,
        behavior: Behavior,
        prompt_tokens: u64,
        guard: DisconnectGuard,
    ) -> Response<FakeBody> {
        let json = self.json.as_ref().unwrap_or(&Value::Null);
        let config = &self.shared.config;
        let max_tokens = match self.route {
            Route::OpenAiChat => json
                .get("max_completion_tokens")
                .and_then(Value::as_u64)
                .or_else(|| json.get("max_tokens").and_then(Value::as_u64)),
            Route::OpenAiResponses => json.get("max_output_tokens").and_then(Value::as_u64),
            _ => json.get("max_tokens").and_then(Value::as_u64),
        };
        let available = max_tokens.map_or(config.chunks, |m| {
            config.chunks.min(usize::try_from(m).unwrap_or(usize::MAX))
        });
        let (content, ending) = match behavior {
            Behavior::CutAfter(n) => (available.min(n), Ending::Cut),
            Behavior::MidStreamError => (0, Ending::Error),
            Behavior::ErrorAfterContent(n) => (available.min(n), Ending::Error),
            _ => (available, Ending::Complete),
        };
        let plan = Plan {
            content,
            hit_max_tokens: available < config.chunks,
            ending,
            prompt_tokens,
        };
        let ids = Ids {
            seq: self.seq,
            model_json: wire::json_str(json.get("model").and_then(Value::as_str).unwrap_or("")),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let stream = json.get("stream").and_then(Value::as_bool) == Some(true);
        let include_usage = json
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        if let Behavior::ToolCall { name, arguments } = &behavior {
            let plan = ToolPlan {
                name: name.clone(),
                arguments: arguments.clone(),
                prompt_tokens,
            };
            return self.tool_call(plan, ids, stream, include_usage, &behavior, guard);
        }
        if !stream {
            let body =
                match self.route {
                    Route::OpenAiResponses => Envelope::new(self.seq, ids.created, json)
                        .text_response(plan.content, plan.hit_max_tokens, prompt_tokens),
                    Route::OpenAiChat => wire::openai_completion(
                        &ids,
                        &wire::content_text(plan.content),
                        if plan.hit_max_tokens {
                            "length"
                        } else {
                            "stop"
                        },
                        prompt_tokens,
                        plan.content as u64,
                    ),
                    _ => wire::anthropic_message(
                        &ids,
                        &wire::content_text(plan.content),
                        if plan.hit_max_tokens {
                            "max_tokens"
                        } else {
                            "end_turn"
                        },
                        prompt_tokens,
                        plan.content as u64,
                    ),
                };
            return self.json_reply(body, &behavior, guard);
        }
        let delay = match behavior {
            Behavior::ChunkDelay(d) => d,
            _ => config.chunk_delay,
        };
        let (body, out) = FakeBody::channel(guard, delay);
        match self.route {
            Route::OpenAiResponses => {
                let envelope = Envelope::new(self.seq, ids.created, json);
                tokio::spawn(responses::text_stream(out, envelope, plan));
            }
            Route::OpenAiChat => {
                tokio::spawn(stream::openai(
                    out,
                    ids,
                    plan,
                    include_usage,
                    config.name.clone(),
                ));
            }
            _ => {
                tokio::spawn(stream::anthropic(out, ids, plan));
            }
        }
        self.reply(StatusCode::OK, EVENT_STREAM, body, None)
    }

    /// The answer to [`Behavior::ToolCall`]: one tool call, streamed or not.
    fn tool_call(
        self,
        plan: ToolPlan,
        ids: Ids,
        stream: bool,
        include_usage: bool,
        behavior: &Behavior,
        guard: DisconnectGuard,
    ) -> Response<FakeBody> {
        if !stream {
            let completion = wire::fragments(&plan.arguments).len() as u64;
            let body = match self.route {
                Route::OpenAiResponses => {
                    let json = self.json.as_ref().unwrap_or(&Value::Null);
                    Envelope::new(self.seq, ids.created, json).tool_response(&plan)
                }
                Route::OpenAiChat => wire::openai_tool_completion(
                    &ids,
                    &plan.name,
                    &plan.arguments,
                    plan.prompt_tokens,
                    completion,
                ),
                _ => wire::anthropic_tool_message(
                    &ids,
                    &plan.name,
                    &plan.arguments,
                    plan.prompt_tokens,
                    completion,
                ),
            };
            return self.json_reply(body, behavior, guard);
        }
        let (body, out) = FakeBody::channel(guard, self.shared.config.chunk_delay);
        match self.route {
            Route::OpenAiResponses => {
                let json = self.json.as_ref().unwrap_or(&Value::Null);
                let envelope = Envelope::new(self.seq, ids.created, json);
                tokio::spawn(responses::tool_stream(out, envelope, plan));
            }
            Route::OpenAiChat => {
                tokio::spawn(stream::openai_tool_call(out, ids, plan, include_usage));
            }
            _ => {
                tokio::spawn(stream::anthropic_tool_use(out, ids, plan));
            }
        }
        self.reply(StatusCode::OK, EVENT_STREAM, body, None)
    }

    /// A non-stream JSON answer under `behavior`: `CutAfter` sends half of it and aborts;
    /// `MidStreamError` / `ErrorAfterContent` become the protocol's overload status.
    fn json_reply(
        &self,
        body: String,
        behavior: &Behavior,
        mut guard: DisconnectGuard,
    ) -> Response<FakeBody> {
        match behavior {
            Behavior::CutAfter(_) => {
                let (cut_body, mut out) = FakeBody::channel(guard, Duration::ZERO);
                let whole = Bytes::from(body);
                let half = whole.slice(..whole.len() / 2);
                tokio::spawn(async move {
                    if out.send(half).await.is_ok() {
                        out.abort().await;
                    }
                });
                self.reply(StatusCode::OK, JSON, cut_body, None)
            }
            Behavior::MidStreamError | Behavior::ErrorAfterContent(_) => {
                guard.disarm();
                let (status, code) = match self.route.protocol() {
                    Protocol::OpenAi => (StatusCode::BAD_GATEWAY, 502),
                    Protocol::Anthropic => (
                        StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        529,
                    ),
                };
                let err =
                    wire::status_error(self.route.protocol(), code, &wire::request_id(self.seq));
                self.reply(status, JSON, FakeBody::full(err), None)
            }
            _ => {
                guard.disarm();
                self.reply(StatusCode::OK, JSON, FakeBody::full(body), None)
            }
        }
    }

    /// Builds the response head shared by every answer and records the status.
    fn reply(
        &self,
        status: StatusCode,
        content_type: HeaderValue,
        body: FakeBody,
        retry_after: Option<&str>,
    ) -> Response<FakeBody> {
        self.shared
            .update(self.index, |r| r.status = Some(status.as_u16()));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if content_type == EVENT_STREAM {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(X_FAKE_UPSTREAM, self.shared.name_header.clone());
        let request_id_header = match self.route.protocol() {
            Protocol::OpenAi => "x-request-id",
            Protocol::Anthropic => "request-id",
        };
        if let Ok(v) = HeaderValue::from_str(&wire::request_id(self.seq)) {
            headers.insert(request_id_header, v);
        }
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(RETRY_AFTER, v);
        }
        response
    }
}
