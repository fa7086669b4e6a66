//! Forwarding with failover: rank the candidates of the requested model, try them cheapest first,
//! and commit to one only once it has produced something a client would show. Streams are relayed
//! event by event as they arrive.
//!
//! Failover happens only before anything has reached the client. What is held back until then is
//! only what a client shows nothing for (comments, an empty role chunk); the first event with
//! content, reasoning, a tool call or a finish reason commits the stream, together with what was
//! held, at once.

use crate::attribution::{self, Cause};
use crate::capture::Capture;
use crate::health::HealthSink;
use crate::limits::{KeyFailures, KeyState, Limit, Permit, Policy, Refusal};
use crate::metrics::Metrics;
use crate::protocol::bridge::{self, ClientRequest};
use crate::protocol::embeddings::EmbedRequest;
use crate::protocol::shape::StreamNote;
use crate::protocol::usage::Usage;
use crate::protocol::{anthropic, openai_chat};
use crate::sse;
use crate::table::{Candidate, Protocol, Table, UpstreamCall};
use crate::usage::UsageSink;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyplane_proto::v1 as pb;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod embed;
pub use embed::log_name as embed_log_name;

/// Every response body the data plane sends.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Timeouts and limits of the request path.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// From sending the request to the upstream's response headers, and for streams on to the
    /// first event that commits.
    pub first_byte_timeout: Duration,
    /// Longest silence between two frames of an upstream body.
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    /// Largest non-streamed upstream body read; a larger one fails the attempt.
    pub max_upstream_body_bytes: usize,
    /// Largest upstream stream event; a larger one fails the attempt, or ends a committed
    /// stream with an error event.
    pub max_sse_event_bytes: usize,
    /// How long a client gets to send a whole request body; then 408.
    pub body_read_timeout: Duration,
    /// Requests of one key that may fail on every upstream within a minute before the key is
    /// refused for a minute (`--key-failure-budget`); 0: no limit.
    pub key_failure_budget: u32,
}

pub fn build_client(limits: &Limits) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(limits.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Builds an OpenAI-shaped error response.
pub fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Response<Body> {
    json_response(status, openai_chat::error_body(message, kind, param, code))
}

/// Builds an Anthropic-shaped error response.
pub fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    json_response(status, anthropic::error_body(kind, message))
}

/// An error in the client's dialect. `code` is OpenAI's `code`; Anthropic's error type follows
/// from the status. The code is noted for the request log ([`Unserved`]).
pub fn client_error(
    protocol: Protocol,
    status: StatusCode,
    message: &str,
    code: Option<&str>,
) -> Response<Body> {
    let mut resp = json_response(
        status,
        bridge::error_body(protocol, status.as_u16(), message, code),
    );
    if let Some(code) = code {
        unserved(&mut resp).error = code.to_string();
    }
    resp
}

/// What the request log records of a response that served nothing, beside its status. Each part
/// is noted where it is known: the error code in [`client_error`], the model and the upstreams
/// tried in [`Proxy::complete`], the key of an expired key where keys are checked
/// (`server.rs`); [`Proxy::log_unserved`] writes the record. Extensions never reach the client.
#[derive(Clone, Debug, Default)]
pub struct Unserved {
    /// The error code the client got; empty for none.
    pub error: String,
    /// The model the client asked for, when its body was read that far.
    pub model: String,
    /// Every upstream tried, in order.
    pub attempts: Vec<pb::UpstreamAttempt>,
    /// The key, when the refusal was decided before the request had one (an expired key).
    pub key_id: Option<Arc<str>>,
    /// The request's bodies, for a key that keeps them: the answer is added when it is logged.
    pub capture: Option<Arc<Capture>>,
}

/// The response's [`Unserved`] note, added if it has none yet.
pub fn unserved(resp: &mut Response<Body>) -> &mut Unserved {
    resp.extensions_mut().get_or_insert_default::<Unserved>()
}

/// What the handler knows about the request besides its body.
pub struct RequestCtx {
    pub request_id: String,
    pub key_id: Arc<str>,
    /// The key's policy and limit counters, if it has any.
    pub policy: Option<Arc<Policy>>,
    pub limits: Option<Arc<KeyState>>,
    /// The key's upstream failure budget.
    pub failures: Arc<KeyFailures>,
    pub started: Instant,
    pub started_at_ms: i64,
    /// The client's query string (`beta=true` from Claude Code), passed on to Anthropic upstreams
    /// of Anthropic clients.
    pub query: Option<String>,
    /// The upstreams tried so far and how each failed, for the request log.
    pub attempts: Vec<pb::UpstreamAttempt>,
    /// The one route a probe request may take (only the probe key's requests have one).
    pub pin: Option<PinnedRoute>,
    /// For a Gemini call, what its URL says and its body does not: the model and the framing.
    pub from_url: Option<UrlModel>,
    /// The request's bodies, for a key that opted in to keep them; `None` for every other key.
    pub capture: Option<Arc<Capture>>,
}

/// What a Gemini call's URL names (`/v1beta/models/{model}:streamGenerateContent?alt=sse`).
#[derive(Debug, Clone)]
pub struct UrlModel {
    pub model: String,
    /// `None`: `generateContent`.
    pub framing: Option<crate::protocol::gemini::Framing>,
}

/// The request header that pins a request to one route: `PROVIDER/CREDENTIAL_ID`. Only the
/// control plane's route-probe key may send it (`table::ClientKey::probe`); any other key that
/// sends it is refused with 403, so a client can never steer around the routing rules.
pub const PROBE_ROUTE: HeaderName = HeaderName::from_static("x-keyplane-probe-route");

/// A pinned route: the request tries only the candidate of this provider and credential, with
/// no failover, so the probe's answer is that route's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRoute {
    pub provider: String,
    pub credential_id: String,
}

impl PinnedRoute {
    /// `PROVIDER/CREDENTIAL_ID` (the credential id is the part after the last `/`).
    pub fn parse(value: &str) -> Option<PinnedRoute> {
        let (provider, credential_id) = value.trim().rsplit_once('/')?;
        (!provider.is_empty() && !credential_id.is_empty()).then(|| PinnedRoute {
            provider: provider.to_string(),
            credential_id: credential_id.to_string(),
        })
    }

    fn admits(&self, cand: &Candidate) -> bool {
        *cand.provider.name == *self.provider && *cand.credential_id == *self.credential_id
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Shared by every request.
pub struct Proxy {
    pub client: HttpClient,
    pub limits: Limits,
    pub usage: UsageSink,
    pub metrics: Arc<Metrics>,
    /// Credential health changes, reported to the control plane in the background.
    pub health: Arc<HealthSink>,
    /// Wakes the leaser when a key's allowance runs out.
    pub lease_wake: Arc<tokio::sync::Notify>,
    /// Clients for providers with their own connect timeout, by timeout in ms.
    pub clients: std::sync::Mutex<std::collections::HashMap<u64, HttpClient>>,
}

/// Why one candidate did not serve the request.
#[derive(Debug)]
enum Failure {
    /// The upstream answered with this status (429, 5xx, 401, …).
    Status {
        status: StatusCode,
        retry_after: Option<HeaderValue>,
        /// For 429: how long the upstream asked to wait, from any of its headers.
        wait_ms: Option<i64>,
        /// What the status and error body say about the credential.
        cause: Cause,
    },
    Timeout,
    Connect(String),
    /// A 200 that failed before committing (error event, cut, nothing to show, untranslatable).
    Stream(String),
    /// An answer that is not what the upstream's protocol promises: a redirect, a body of the
    /// wrong type, encoding or shape, or one past the size limit. Never relayed.
    Invalid(String),
    /// This candidate cannot serve the request as asked (`n > 1` to an Anthropic upstream, say).
    Unsupported(String),
}

impl Failure {
    /// What went wrong, for a debug log: may quote an upstream's error text.
    fn detail(&self) -> String {
        match self {
            Failure::Status { status, .. } => status.to_string(),
            Failure::Timeout => "timed out".into(),
            Failure::Connect(e)
            | Failure::Stream(e)
            | Failure::Invalid(e)
            | Failure::Unsupported(e) => e.clone(),
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Failure::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limited"
            }
            Failure::Status { status, .. } if status.is_server_error() => "server_error",
            Failure::Status { .. } => "refused",
            Failure::Timeout => "timeout",
            Failure::Connect(_) => "connect_error",
            Failure::Stream(_) => "stream_error",
            Failure::Invalid(_) => "invalid_response",
            Failure::Unsupported(_) => "unsupported",
        }
    }
}

/// Statuses after which another candidate may succeed. Other 4xx are the client's fault and are
/// passed through: they would fail everywhere.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 401 | 402 | 403 | 404 | 408 | 409 | 429)
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
/// The gateway's own `User-Agent` on every upstream request.
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("keyplane/", env!("CARGO_PKG_VERSION")));

/// The request to `cand`'s upstream: the client's allowed headers, JSON,
/// no compression (the relay reads the body), the gateway's user agent, the protocol's version
/// header, and the credential.
fn upstream_request(
    cand: &Candidate,
    client: Protocol,
    uri: http::Uri,
    client_headers: &HeaderMap,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let upstream = cand.provider.protocol;
    let mut builder = http::Request::post(uri);
    if let Some(headers) = builder.headers_mut() {
        // An allow-list (`bridge::forwarded_headers`); everything else stays behind. An upstream
        // credential is shared by every key, so nothing a client chooses may change whose
        // account, organisation or project a request runs under (`OpenAI-Organization`,
        // `OpenAI-Project`, …: a wrong one makes the upstream refuse the credential), nor tell a
        // provider about the client's own software in the pool's name (`User-Agent`, SDK
        // telemetry such as `x-stainless-*`, tracing ids, OpenRouter's app attribution
        // `HTTP-Referer` / `X-Title`). The gateway sets what an upstream needs itself.
        for name in bridge::forwarded_headers(client, upstream) {
            for value in client_headers.get_all(name) {
                headers.append(name, value.clone());
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        headers.insert(header::USER_AGENT, USER_AGENT);
        if upstream == Protocol::Anthropic && !headers.contains_key(ANTHROPIC_VERSION) {
            let version = cand.provider.quirks.anthropic_version();
            headers.insert(ANTHROPIC_VERSION, HeaderValue::from_static(version));
        }
        headers.insert(cand.auth.0.clone(), cand.auth.1.clone());
    }
    builder.body(Full::new(body))
}

impl Proxy {
    /// A completion request in `dialect` (`/v1/chat/completions`, `/v1/messages`, …) once the
    /// key is known and the body read. A response that served nothing carries its [`Unserved`]
    /// note for the request log; a served one has written its record itself.
    pub async fn complete(
        self: &Arc<Self>,
        dialect: Protocol,
        table: &Table,
        client_headers: &HeaderMap,
        body: &[u8],
        mut ctx: RequestCtx,
    ) -> Response<Body> {
        let parsed = match &ctx.from_url {
            Some(url) => ClientRequest::parse_gemini(body, &url.model, url.framing),
            None => ClientRequest::parse(dialect, body),
        };
        match parsed {
            Ok(req) => {
                let mut resp = self
                    .serve(table, client_headers, body, Ask::Complete(&req), &mut ctx)
                    .await;
                if !resp.status().is_success() {
                    let note = unserved(&mut resp);
                    note.model = req.model().to_string();
                    note.attempts = std::mem::take(&mut ctx.attempts);
                }
                resp
            }
            Err(refusal) => {
                let mut resp = json_response(
                    StatusCode::BAD_REQUEST,
                    bridge::refusal_body(dialect, &refusal),
                );
                let note = unserved(&mut resp);
                note.error = INVALID_REQUEST.to_string();
                if let Some(url) = ctx.from_url {
                    note.model = url.model;
                }
                resp
            }
        }
    }

    /// Writes the request log's record of a request that served nothing: billed nothing, with
    /// the status, error code, model and upstreams tried that `resp` carries (its note is
    /// removed). Nothing for a
    /// request whose key is unknown (no key, or one that is not a key).
    pub fn log_unserved(
        &self,
        request_id: &str,
        key_id: Option<&Arc<str>>,
        dialect: &str,
        started: Instant,
        started_at_ms: i64,
        resp: &mut Response<Body>,
    ) {
        // The note has done its work once read: it is taken, not copied.
        let note = resp
            .extensions_mut()
            .remove::<Unserved>()
            .unwrap_or_default();
        let Some(key_id) = key_id.or(note.key_id.as_ref()) else {
            return;
        };
        let Unserved {
            error,
            model,
            attempts,
            capture,
            ..
        } = note;
        self.usage.record(pb::UsageRecord {
            request_id: request_id.to_string(),
            key_id: key_id.to_string(),
            model,
            status: u32::from(resp.status().as_u16()),
            started_at_ms,
            latency_ms: ms_since(started),
            dialect: dialect.to_string(),
            error,
            attempts,
            unbilled: true,
            bodies: capture.map(|c| {
                crate::capture::copy_response_body(resp.body_mut(), &c);
                c.take()
            }),
            ..pb::UsageRecord::default()
        });
    }

    /// `POST /v1/messages/count_tokens`: forwarded when the candidate this request would go to
    /// speaks Anthropic (exact), else estimated at one token per 4 bytes of the body (documented
    /// as an estimate; no tokenizer of every upstream ships with the gateway).
    pub async fn count_tokens(
        self: &Arc<Self>,
        table: &Table,
        client_headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Body> {
        let entries = match serde_json::from_slice::<crate::protocol::json::Entries<'_>>(body) {
            Ok(e) => e.0,
            Err(e) => {
                return anthropic_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("The request body is not valid JSON: {e}"),
                );
            }
        };
        let model = entries
            .iter()
            .find(|(k, _)| k == "model")
            .and_then(|(_, v)| serde_json::from_str::<String>(v.get()).ok());
        let Some(model) = model else {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model: Field required",
            );
        };
        let Some(candidates) = table.models.get(&model) else {
            return client_error(
                Protocol::Anthropic,
                StatusCode::NOT_FOUND,
                &format!("The model `{model}` does not exist or you do not have access to it."),
                None,
            );
        };
        let estimate = estimate_tokens(body.len());
        let order = Table::rank(candidates, estimate, 0);
        if let Some(cand) = order.first().map(|&i| &candidates[i])
            && cand.provider.protocol == Protocol::Anthropic
        {
            let upstream_model = serde_json::to_string(&*cand.upstream_model).unwrap_or_default();
            let rewritten = crate::protocol::json::write_object(
                &entries,
                |k, _| (k == "model").then(|| upstream_model.clone()),
                &[],
            );
            let url = format!("{}/count_tokens", cand.provider.chat_url);
            if let Ok(uri) = url.parse::<http::Uri>()
                && let Some(resp) = self
                    .ask_count(cand, Protocol::Anthropic, uri, client_headers, rewritten)
                    .await
            {
                return resp;
            }
        }
        json_response(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({ "input_tokens": estimate }))
                .unwrap_or_default(),
        )
    }

    /// A token count asked of `cand` at `uri` (`protocol`'s count endpoint): its answer, with the
    /// candidate's secrets redacted, when it answers 2xx within the timeouts and 1 MiB; `None`
    /// otherwise, and the caller estimates. Never billed, never counted against health.
    async fn ask_count(
        &self,
        cand: &Candidate,
        protocol: Protocol,
        uri: http::Uri,
        client_headers: &HeaderMap,
        body: Vec<u8>,
    ) -> Option<Response<Body>> {
        let req = upstream_request(cand, protocol, uri, client_headers, Bytes::from(body)).ok()?;
        let resp = tokio::time::timeout(self.limits.first_byte_timeout, self.client.request(req))
            .await
            .ok()?
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = read_body(resp.into_body(), self.limits.idle_timeout, 1 << 20)
            .await
            .ok()?;
        Some(json_response(StatusCode::OK, cand.redactor.bytes(bytes)))
    }

    /// Gemini's `:countTokens` for `model`: forwarded to the first Gemini candidate in rank
    /// order that is not benched (exact, and Google's own answer with its
    /// `promptTokensDetails`), else estimated at one token per 4 bytes of the body, as
    /// `{"totalTokens": N}`. The body goes as the client sent it, except that a
    /// `generateContentRequest.model` is set to the candidate's own id. Not billed.
    pub async fn gemini_count_tokens(
        self: &Arc<Self>,
        table: &Table,
        model: &str,
        client_headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Body> {
        let Ok(serde_json::Value::Object(request)) = serde_json::from_slice(body) else {
            return client_error(
                Protocol::Gemini,
                StatusCode::BAD_REQUEST,
                "Invalid JSON payload received. The request body is not a JSON object.",
                Some(INVALID_REQUEST),
            );
        };
        let Some(candidates) = table.models.get(model) else {
            self.metrics.refused("unknown_model");
            return client_error(
                Protocol::Gemini,
                StatusCode::NOT_FOUND,
                &format!("models/{model} is not found."),
                Some("model_not_found"),
            );
        };
        let estimate = estimate_tokens(body.len());
        let now = now_ms();
        let order = Table::rank(candidates, estimate, 0);
        let cand = order.iter().map(|&i| &candidates[i]).find(|c| {
            c.provider.protocol == Protocol::Gemini
                && !matches!(
                    c.stats.health.state(),
                    crate::health::State::Invalid | crate::health::State::Exhausted
                )
                && c.stats.health.blocked_until_ms() <= now
        });
        if let Some(cand) = cand
            && let Ok(uri) = cand.upstream_url(UpstreamCall::CountTokens)
        {
            let mut request = request;
            if let Some(serde_json::Value::Object(inner)) =
                request.get_mut("generateContentRequest")
                && inner.contains_key("model")
            {
                let id = cand.upstream_model.trim_start_matches("models/");
                inner.insert("model".into(), format!("models/{id}").into());
            }
            let bytes = serde_json::to_vec(&request).unwrap_or_default();
            if let Some(resp) = self
                .ask_count(cand, Protocol::Gemini, uri, client_headers, bytes)
                .await
            {
                return resp;
            }
        }
        json_response(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({ "totalTokens": estimate })).unwrap_or_default(),
        )
    }

    async fn serve(
        self: &Arc<Self>,
        table: &Table,
        client_headers: &HeaderMap,
        body: &[u8],
        inbound: Ask<'_, '_>,
        ctx: &mut RequestCtx,
    ) -> Response<Body> {
        let protocol = inbound.dialect();
        // A chain (by name, or `chain:NAME`) tries its models in order.
        let requested = inbound.model();
        let chain_name = if table.models.contains_key(requested) {
            None
        } else {
            let name = requested.strip_prefix("chain:").unwrap_or(requested);
            table.chains.get_key_value(name).map(|(k, _)| k.as_str())
        };
        let hops: Vec<&str> = match chain_name {
            Some(name) => table.chains[name].iter().map(String::as_str).collect(),
            None => vec![requested],
        };
        let hops: Vec<&str> = match &ctx.policy {
            Some(p) if !p.models.is_empty() => {
                let allowed: Vec<&str> = hops
                    .iter()
                    .copied()
                    .filter(|m| p.model_allowed(m))
                    .collect();
                if allowed.is_empty() {
                    self.metrics
                        .key_limit_refused("model_not_allowed", "models");
                    return client_error(
                        protocol,
                        StatusCode::FORBIDDEN,
                        &format!(
                            "This API key may not use the model `{requested}`; it may use models matching: {}.",
                            p.models.join(", ")
                        ),
                        Some("model_not_allowed"),
                    );
                }
                allowed
            }
            _ => hops,
        };
        if chain_name.is_some() {
            let routes: Vec<(&str, &Vec<Candidate>)> = hops
                .iter()
                .filter_map(|m| table.models.get(*m).map(|c| (*m, c)))
                .collect();
            return self
                .serve_routes(routes, chain_name, client_headers, body, inbound, ctx)
                .await;
        }
        let Some(candidates) = table.models.get(inbound.model()) else {
            self.metrics.refused("unknown_model");
            return client_error(
                protocol,
                StatusCode::NOT_FOUND,
                &format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    inbound.model()
                ),
                Some("model_not_found"),
            );
        };
        if candidates.is_empty() {
            return client_error(
                protocol,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "No upstream credential serves `{}` right now.",
                    inbound.model()
                ),
                Some("no_upstream"),
            );
        }
        let model = inbound.model();
        self.serve_routes(
            vec![(model, candidates)],
            None,
            client_headers,
            body,
            inbound,
            ctx,
        )
        .await
    }

    /// Tries each model of `routes` in order, each model's healthy candidates cheapest first,
    /// under the key's limits.
    async fn serve_routes(
        self: &Arc<Self>,
        routes: Vec<(&str, &Vec<Candidate>)>,
        chain: Option<&str>,
        client_headers: &HeaderMap,
        body: &[u8],
        inbound: Ask<'_, '_>,
        ctx: &mut RequestCtx,
    ) -> Response<Body> {
        let protocol = inbound.dialect();
        // Prompt tokens from the body size (about 4 bytes a token), output from the limit.
        let input_estimate = inbound.input_estimate(body);
        let output_estimate = inbound.output_estimate();
        if let Some(until) = ctx.failures.refused_until(now_ms()) {
            return failure_budget_refusal(
                protocol,
                until,
                self.limits.key_failure_budget,
                &self.metrics,
            );
        }
        let mut permit = None;
        if let (Some(policy), Some(state)) = (&ctx.policy, &ctx.limits) {
            // Worst case: the dearest candidate that may serve, at the full output limit.
            let reserve_nano = routes
                .iter()
                .flat_map(|(_, c)| c.iter())
                .map(|c| c.cost_nano(input_estimate, output_estimate))
                .max()
                .unwrap_or(0);
            let reserve_tokens = input_estimate.saturating_add(output_estimate);
            match self
                .admit(policy, state, reserve_nano, reserve_tokens)
                .await
            {
                Ok(p) => permit = Some(p),
                Err(refusal) => return limit_refusal(protocol, policy, &refusal, &self.metrics),
            }
        }

        let now = now_ms();
        let mut failures: Vec<Failure> = Vec::new();
        // Candidates whose failure the request itself may have caused: judged when it ends.
        let mut suspects: Vec<&Candidate> = Vec::new();
        let mut skipped_until: Option<i64> = None;
        let mut skipped_dead = 0usize;
        // A pinned request whose route this table does not hold is told so, not "rate limited".
        let mut pinned_found = false;
        for (model, candidates) in &routes {
            let order = Table::rank(candidates, input_estimate, output_estimate);
            for idx in order {
                let cand = &candidates[idx];
                if ctx.pin.as_ref().is_some_and(|pin| !pin.admits(cand)) {
                    continue;
                }
                pinned_found = true;
                let health = &cand.stats.health;
                if !health.admit(now) {
                    match health.state() {
                        crate::health::State::Invalid | crate::health::State::Exhausted => {
                            skipped_dead += 1;
                        }
                        _ => {
                            let until = health.blocked_until_ms();
                            skipped_until = Some(skipped_until.map_or(until, |u| u.min(until)));
                        }
                    }
                    continue;
                }
                let attempt = match inbound {
                    Ask::Complete(inbound) => {
                        self.attempt(
                            cand,
                            client_headers,
                            body,
                            inbound,
                            ctx,
                            model,
                            chain,
                            &mut permit,
                        )
                        .await
                    }
                    Ask::Embed(req, errors) => {
                        self.embed_attempt(cand, body, req, errors, ctx, model, chain, &mut permit)
                            .await
                    }
                };
                match attempt {
                    Ok(resp) => {
                        self.metrics.attempt(&cand.provider.name, "ok");
                        if !failures.is_empty() {
                            self.metrics.failover(&cand.provider.name);
                        }
                        self.health_changed(cand, health.on_success(now_ms()));
                        self.blame(&suspects, true, &ctx.failures);
                        return resp;
                    }
                    Err(Attempt::Final(resp)) => {
                        self.metrics.attempt(&cand.provider.name, "refused");
                        ctx.attempts.push(attempt_of(cand, "refused"));
                        health.end_probe();
                        self.blame(&suspects, false, &ctx.failures);
                        return resp;
                    }
                    Err(Attempt::Failed(failure)) => {
                        self.metrics.attempt(&cand.provider.name, failure.outcome());
                        if self.note_failure(cand, &failure) {
                            suspects.push(cand);
                        }
                        tracing::info!(
                            request_id = %ctx.request_id,
                            provider = %cand.provider.name,
                            credential_id = %cand.credential_id,
                            model = %model,
                            outcome = failure.outcome(),
                            "upstream attempt failed; trying the next candidate"
                        );
                        // The detail may quote the upstream, which may echo the secret.
                        let detail = failure.detail();
                        let detail = cand.redactor.text(&detail);
                        tracing::debug!(request_id = %ctx.request_id, detail = %detail, "upstream failure detail");
                        ctx.attempts.push(attempt_of(cand, failure.outcome()));
                        failures.push(failure);
                    }
                }
            }
        }
        self.blame(&suspects, false, &ctx.failures);
        if let Some(pin) = ctx.pin.as_ref().filter(|_| !pinned_found) {
            return client_error(
                protocol,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "This data plane's route table has no route {}/{} for `{}`.",
                    pin.provider,
                    pin.credential_id,
                    inbound.model()
                ),
                Some("no_upstream"),
            );
        }
        if failures.is_empty() {
            if let Some(until) = skipped_until {
                let secs = ((until - now).max(0) as u64).div_ceil(1000).max(1);
                let mut resp = client_error(
                    protocol,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Every upstream credential for this model is cooling down after rate limits or errors. Retry after the time in Retry-After.",
                    Some("rate_limit_exceeded"),
                );
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return resp;
            }
            if skipped_dead > 0 || routes.is_empty() {
                return client_error(
                    protocol,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "No usable upstream credential serves `{}` right now.",
                        inbound.model()
                    ),
                    Some("no_upstream"),
                );
            }
        }
        all_failed(protocol, &failures)
    }

    /// Checks and reserves the key's limits. A budget that does not fit wakes the leaser and
    /// waits (at most 1 s) for a renewed lease before refusing.
    async fn admit(
        &self,
        policy: &Policy,
        state: &Arc<KeyState>,
        reserve_nano: u64,
        reserve_tokens: u64,
    ) -> Result<Permit, Refusal> {
        match state.admit(policy, reserve_nano, reserve_tokens) {
            Ok(p) => Ok(p),
            Err(r) if matches!(r.limit, Limit::BudgetUsd | Limit::BudgetTokens) => {
                let notified = state.leased.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                state
                    .wants_lease
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.lease_wake.notify_one();
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                state.admit(policy, reserve_nano, reserve_tokens)
            }
            Err(r) => Err(r),
        }
    }

    fn health_changed(&self, cand: &Candidate, change: Option<crate::health::Change>) {
        let Some(change) = change else { return };
        tracing::info!(
            provider = %cand.provider.name,
            credential_id = %cand.credential_id,
            state = change.state.as_str(),
            until_ms = change.until_ms,
            reason = %change.reason,
            "credential health changed"
        );
        self.metrics.health_limits.credential_state(
            &cand.provider.name,
            &cand.credential_id,
            change.state.as_str(),
        );
        self.health.report(&cand.credential_id, change);
    }

    /// What a failed attempt says about the credential, noted at once; or `true` for a failure
    /// the request itself may have caused (5xx, a timeout, a stream that failed before content,
    /// an unexplained 401/403), which [`Proxy::blame`] judges when the request has ended.
    fn note_failure(&self, cand: &Candidate, failure: &Failure) -> bool {
        let health = &cand.stats.health;
        let now = now_ms();
        let change = match failure {
            Failure::Status {
                status,
                wait_ms,
                cause,
                ..
            } => match cause {
                Cause::KeyRefused => Some(health.on_invalid(now, status.as_u16())),
                Cause::Exhausted => Some(
                    health.on_exhausted(now, &format!("upstream answered {status}: out of quota")),
                ),
                Cause::RateLimited => Some(health.on_rate_limited(now, *wait_ms)),
                Cause::Upstream => return true,
                Cause::NotHere | Cause::Content | Cause::Request => {
                    health.end_probe();
                    None
                }
            },
            Failure::Timeout | Failure::Stream(_) => return true,
            // Nothing in a request makes a connection fail, and an upstream that answers what
            // its protocol does not promise is misconfigured or broken, like one that answers
            // 5xx.
            Failure::Connect(_) | Failure::Invalid(_) => health.on_server_error(now),
            Failure::Unsupported(_) => {
                health.end_probe();
                None
            }
        };
        self.health_changed(cand, change);
        false
    }

    /// Judges the failures a request may have caused (`suspects`) once it has ended.
    ///
    /// - Served by another candidate: the ones that failed are to blame, as any upstream failure
    ///   (the circuit breaker counts them).
    /// - Not served (every candidate failed, or one relayed the client's own error): the request
    ///   may be what fails, so it is charged to its key's failure budget. A failure still counts
    ///   toward a credential's breaker only while the key is within its budget and when the
    ///   credential has answered nothing else well for [`ANSWERED_RECENTLY_MS`]: an upstream that
    ///   is down answers no one, one that serves others while failing this request has nothing
    ///   wrong with it. So a client sending requests that make upstreams fail cannot open a
    ///   breaker that other keys are being served through, and once over its budget it is
    ///   refused before it reaches an upstream at all.
    fn blame(&self, suspects: &[&Candidate], served: bool, failures: &KeyFailures) {
        if suspects.is_empty() {
            return;
        }
        let now = now_ms();
        let within_budget = served || failures.charge(now, self.limits.key_failure_budget);
        for cand in suspects {
            let health = &cand.stats.health;
            if served || (within_budget && !health.answered_since(now - ANSWERED_RECENTLY_MS)) {
                self.health_changed(cand, health.on_server_error(now));
            } else {
                health.end_probe();
            }
        }
    }

    /// The upstream client for `cand`: the shared one, or one with the provider's connect
    /// timeout.
    fn client_for(&self, cand: &Candidate) -> HttpClient {
        match cand.provider.connect_timeout {
            Some(t) if t != self.limits.connect_timeout => {
                let ms = t.as_millis() as u64;
                let mut clients = self
                    .clients
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                clients
                    .entry(ms)
                    .or_insert_with(|| {
                        build_client(&Limits {
                            connect_timeout: t,
                            ..self.limits.clone()
                        })
                    })
                    .clone()
            }
            _ => self.client.clone(),
        }
    }

    /// The body for `cand`'s upstream: the client's bytes with the model replaced (same
    /// dialect), or a translation.
    fn upstream_body(
        inbound: &ClientRequest<'_>,
        body: &[u8],
        cand: &Candidate,
        request_id: &str,
    ) -> Result<bridge::Outbound, Failure> {
        match inbound.upstream_body(body, cand.provider.protocol, &cand.upstream_model) {
            Ok(out) => {
                if !out.dropped.is_empty() {
                    tracing::debug!(
                        request_id,
                        dropped = ?out.dropped,
                        "fields with no counterpart upstream were dropped"
                    );
                }
                Ok(out)
            }
            Err(err) => Err(Failure::Unsupported(err.message)),
        }
    }

    /// Sends `upstream_req` to `cand` and reads its head by `deadline`: a 2xx response to read
    /// on; a failure another candidate may make good (a retryable status, a redirect, no
    /// answer); or the upstream's refusal of the request itself, in the client's dialect, to be
    /// given the client as it is.
    async fn send(
        &self,
        cand: &Candidate,
        client_protocol: Protocol,
        upstream_req: http::Request<Full<Bytes>>,
        deadline: Instant,
        idle_timeout: Duration,
    ) -> Result<Response<Incoming>, Attempt> {
        let upstream = cand.provider.protocol;
        let sent = Instant::now();
        let client = self.client_for(cand);
        let resp =
            match tokio::time::timeout_at(deadline.into(), client.request(upstream_req)).await {
                Err(_) => return Err(Attempt::Failed(Failure::Timeout)),
                Ok(Err(err)) => return Err(Attempt::Failed(Failure::Connect(error_chain(&err)))),
                Ok(Ok(resp)) => resp,
            };
        cand.stats
            .observe_latency(sent.elapsed().as_micros().min(u128::from(u64::MAX)) as u64);
        let status = resp.status();
        if status.is_redirection() {
            // An API endpoint never redirects; the client would get neither the answer nor a
            // usable Location.
            return Err(Attempt::Failed(Failure::Invalid(format!(
                "upstream answered {status}, a redirect"
            ))));
        }
        if !status.is_success() {
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let wait_ms = crate::health::retry_wait_ms(resp.headers());
            let body = resp.into_body();
            let bytes = if is_retryable(status) {
                // 401, 402, 403 and 429 are judged by their short error body (whose key, quota,
                // or the request's content?). Otherwise dropping the body closes or recycles the
                // connection; the error text is not needed (and may echo the request).
                let short = if matches!(status.as_u16(), 401 | 402 | 403 | 429) {
                    read_body(body, idle_timeout, attribution::ERROR_BODY_LIMIT)
                        .await
                        .unwrap_or_default()
                } else {
                    Bytes::new()
                };
                let cause = attribution::classify(status, &short);
                if cause != Cause::Content {
                    // Google says how long to wait in the body (`RetryInfo.retryDelay`), not in
                    // a header; the client's Retry-After then says the same.
                    let (wait_ms, retry_after) = match wait_ms {
                        Some(ms) => (Some(ms), retry_after),
                        None if status == StatusCode::TOO_MANY_REQUESTS => {
                            let ms = attribution::retry_delay_ms(&short);
                            let header = retry_after.or_else(|| {
                                let secs = (ms? as u64).div_ceil(1000).max(1);
                                HeaderValue::from_str(&secs.to_string()).ok()
                            });
                            (ms, header)
                        }
                        None => (None, retry_after),
                    };
                    return Err(Attempt::Failed(Failure::Status {
                        status,
                        retry_after,
                        wait_ms,
                        cause,
                    }));
                }
                short
            } else {
                let bytes = read_body(body, idle_timeout, 1 << 20)
                    .await
                    .unwrap_or_default();
                // Google refuses a bad key with a 400 (`ErrorInfo.reason` API_KEY_INVALID):
                // the credential's failure, not the request's, so the next candidate serves.
                if status == StatusCode::BAD_REQUEST
                    && attribution::classify(status, &bytes) == Cause::KeyRefused
                {
                    return Err(Attempt::Failed(Failure::Status {
                        status,
                        retry_after,
                        wait_ms,
                        cause: Cause::KeyRefused,
                    }));
                }
                bytes
            };
            // The client's fault: the upstream's own error, in the client's shape.
            let (code, bytes) =
                bridge::upstream_error(client_protocol, upstream, status.as_u16(), bytes);
            let status = StatusCode::from_u16(code).unwrap_or(status);
            let bytes = cand.redactor.bytes(bytes);
            let mut out = Response::new(full(bytes));
            *out.status_mut() = status;
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            return Err(Attempt::Final(out));
        }
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        self: &Arc<Self>,
        cand: &Candidate,
        client_headers: &HeaderMap,
        client_body: &[u8],
        inbound: &ClientRequest<'_>,
        ctx: &RequestCtx,
        model: &str,
        chain: Option<&str>,
        permit: &mut Option<Permit>,
    ) -> Result<Response<Body>, Attempt> {
        let first_byte_timeout = cand
            .provider
            .first_byte_timeout
            .unwrap_or(self.limits.first_byte_timeout);
        let idle_timeout = cand
            .provider
            .idle_timeout
            .unwrap_or(self.limits.idle_timeout);
        let client_protocol = inbound.dialect();
        let upstream = cand.provider.protocol;
        let bridge::Outbound { body, dropped } =
            Self::upstream_body(inbound, client_body, cand, &ctx.request_id)
                .map_err(Attempt::Failed)?;
        let call = if inbound.stream() {
            UpstreamCall::Stream
        } else {
            UpstreamCall::Generate
        };
        let url = cand
            .upstream_url(call)
            .map_err(|e| Attempt::Failed(Failure::Connect(e.to_string())))?;
        let uri = match &ctx.query {
            Some(q) if bridge::forwards_query(client_protocol, upstream) => {
                format!("{url}?{q}").parse().unwrap_or(url)
            }
            _ => url,
        };
        let upstream_req = upstream_request(cand, client_protocol, uri, client_headers, body)
            .map_err(|e| Attempt::Failed(Failure::Connect(e.to_string())))?;

        let deadline = Instant::now() + first_byte_timeout;
        let resp = self
            .send(cand, client_protocol, upstream_req, deadline, idle_timeout)
            .await?;
        check_success_head(resp.headers(), inbound.stream()).map_err(Attempt::Failed)?;
        let mut record = Record::for_attempt(self, cand, ctx, model, chain);
        record.input_estimate = estimate_tokens(client_body.len());
        record.request_bytes = client_body.len() as u64;
        record.dialect = client_protocol.name();
        record.stream = inbound.stream();
        if inbound.stream() {
            let adapter = bridge::Stream::new(
                inbound,
                upstream,
                &format!("msg_{}", ctx.request_id.replace('-', "")),
            );
            let scan = Scan::new(
                adapter,
                self.limits.max_sse_event_bytes,
                Arc::clone(&cand.redactor),
            );
            let (upstream_body, scan) = precommit(resp.into_body(), scan, deadline, idle_timeout)
                .await
                .map_err(Attempt::Failed)?;
            record.ttfb_ms = ms_since(ctx.started);
            record.permit = permit.take();
            let relay = Relay::new(upstream_body, scan, idle_timeout, record);
            let mut out = Response::new(relay.boxed_unsync());
            let headers = out.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(inbound.stream_content_type()),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            name_dropped(headers, &dropped);
            Ok(out)
        } else {
            let limit = cand
                .provider
                .max_body_bytes
                .unwrap_or(self.limits.max_upstream_body_bytes);
            let bytes = read_body(resp.into_body(), idle_timeout, limit)
                .await
                .map_err(Attempt::Failed)?;
            record.ttfb_ms = ms_since(ctx.started);
            let (bytes, metering) = inbound
                .response(upstream, bytes)
                .ok_or_else(not_a_completion)?;
            record.reported_cost_nano_usd = metering.and_then(|m| m.reported_cost_nano);
            let usage = metering.map(|m| m.usage);
            let bytes = cand.redactor.bytes(bytes);
            let estimate = estimate_tokens(bytes.len());
            record.permit = permit.take();
            if let Some(capture) = &record.capture {
                capture.response(&bytes);
            }
            record.finish(usage, estimate, 200);
            let mut out = json_response(StatusCode::OK, bytes);
            name_dropped(out.headers_mut(), &dropped);
            Ok(out)
        }
    }
}

/// The response header naming what a translation dropped (field paths such as
/// `tools.web_search`), so a client sees that the upstream never got them.
const DROPPED: HeaderName = HeaderName::from_static("x-keyplane-dropped");

/// Sets [`DROPPED`] to the comma-separated `dropped` names, leaving out any that could not be
/// a header value's item (the names come from the client's own JSON keys).
fn name_dropped(headers: &mut HeaderMap, dropped: &[String]) {
    let names: Vec<&str> = dropped
        .iter()
        .map(String::as_str)
        .filter(|d| {
            !d.is_empty() && d.len() <= 128 && d.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        })
        .collect();
    if names.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
        headers.insert(DROPPED, value);
    }
}

/// The request log's note of one upstream tried.
fn attempt_of(cand: &Candidate, outcome: &str) -> pb::UpstreamAttempt {
    pb::UpstreamAttempt {
        provider: cand.provider.name.to_string(),
        credential_id: cand.credential_id.to_string(),
        outcome: outcome.to_string(),
    }
}

/// What a request asks the upstreams for: a completion in a client dialect, or embeddings.
/// Routing, limits, failover and billing are the same for both; only the attempt differs.
#[derive(Clone, Copy)]
enum Ask<'r, 'b> {
    Complete(&'r ClientRequest<'b>),
    /// Embeddings, with the dialect the client's errors are written in.
    Embed(&'r EmbedRequest<'b>, Protocol),
}

impl<'r> Ask<'r, '_> {
    /// The dialect the client's errors are written in.
    fn dialect(self) -> Protocol {
        match self {
            Ask::Complete(r) => r.dialect(),
            Ask::Embed(_, errors) => errors,
        }
    }

    fn model(self) -> &'r str {
        match self {
            Ask::Complete(r) => r.model(),
            Ask::Embed(r, _) => &r.model,
        }
    }

    /// Prompt tokens for ranking and the key's reservation: about 4 bytes of the body a token
    /// for a completion, the inputs' own estimate for embeddings.
    fn input_estimate(self, body: &[u8]) -> u64 {
        match self {
            Ask::Complete(_) => estimate_tokens(body.len()),
            Ask::Embed(r, _) => r.token_estimate(),
        }
    }

    /// Output tokens for ranking and the reservation: embeddings have none.
    fn output_estimate(self) -> u64 {
        match self {
            Ask::Complete(r) => r.output_estimate(),
            Ask::Embed(..) => 0,
        }
    }
}

/// The request log's error code of a request whose body is not a request of its dialect.
const INVALID_REQUEST: &str = "invalid_request";

enum Attempt {
    Failed(Failure),
    /// A response to give the client as is (a non-retryable upstream error).
    Final(Response<Body>),
}

/// How recently a credential must have answered well for a request that failed on it to be
/// presumed the request's own doing (see [`Proxy::blame`]).
const ANSWERED_RECENTLY_MS: i64 = 10_000;

/// The 429 of a key whose requests keep failing upstream, in the client's shape, with
/// `Retry-After` until its cool-off ends.
fn failure_budget_refusal(
    protocol: Protocol,
    until_ms: i64,
    budget: u32,
    metrics: &Metrics,
) -> Response<Body> {
    metrics.key_limit_refused("key_limit", "upstream_failures");
    let secs = ((until_ms - now_ms()).max(0) as u64).div_ceil(1000).max(1);
    let mut resp = client_error(
        protocol,
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "This API key's requests keep failing upstream ({budget} failed on every upstream within a minute); it is refused for {secs} s so they cannot bench shared upstream credentials for other keys. Check what these requests send."
        ),
        Some("upstream_failures"),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The 429 (403 for nothing) of a key's own limit, in the client's shape, with `Retry-After`
/// and `x-ratelimit-*` headers.
fn limit_refusal(
    protocol: Protocol,
    policy: &Policy,
    r: &Refusal,
    metrics: &Metrics,
) -> Response<Body> {
    metrics.key_limit_refused("key_limit", r.limit.as_str());
    let (message, code) = match r.limit {
        Limit::BudgetUsd => (
            format!(
                "This API key's budget of ${} is spent{}.",
                nano_text(policy.budget_nano_usd),
                if r.no_lease {
                    " or cannot be checked right now"
                } else {
                    ""
                }
            ),
            "budget_exceeded",
        ),
        Limit::BudgetTokens => (
            format!(
                "This API key's token budget of {} tokens is spent{}.",
                policy.budget_tokens,
                if r.no_lease {
                    " or cannot be checked right now"
                } else {
                    ""
                }
            ),
            "budget_exceeded",
        ),
        Limit::Rpm => (
            format!(
                "Rate limit reached: this API key allows {} requests per minute.",
                policy.rpm
            ),
            "rate_limit_exceeded",
        ),
        Limit::Tpm => (
            format!(
                "Rate limit reached: this API key allows {} tokens per minute.",
                policy.tpm
            ),
            "rate_limit_exceeded",
        ),
        Limit::Concurrency => (
            format!(
                "Concurrency limit reached: this API key allows {} requests at once.",
                policy.concurrency
            ),
            "concurrency_limit_exceeded",
        ),
    };
    let mut resp = client_error(
        protocol,
        StatusCode::TOO_MANY_REQUESTS,
        &message,
        Some(code),
    );
    let h = resp.headers_mut();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("retry-after", r.retry_after_secs.to_string());
    put("x-ratelimit-limit-key", r.limit.as_str().to_string());
    let reset = format!("{}s", r.retry_after_secs);
    match r.limit {
        Limit::Rpm => {
            put("x-ratelimit-limit-requests", r.limit_value.to_string());
            put("x-ratelimit-remaining-requests", r.remaining.to_string());
            put("x-ratelimit-reset-requests", reset);
        }
        Limit::Tpm => {
            put("x-ratelimit-limit-tokens", r.limit_value.to_string());
            put("x-ratelimit-remaining-tokens", r.remaining.to_string());
            put("x-ratelimit-reset-tokens", reset);
        }
        Limit::Concurrency => {
            put("x-ratelimit-limit-concurrency", r.limit_value.to_string());
            put("x-ratelimit-remaining-concurrency", "0".to_string());
        }
        Limit::BudgetUsd | Limit::BudgetTokens => {
            put("x-ratelimit-limit-budget", r.limit_value.to_string());
            put("x-ratelimit-remaining-budget", r.remaining.to_string());
        }
    }
    resp
}

/// Nano-USD as decimal dollars.
fn nano_text(nano: u64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

fn ms_since(t: Instant) -> u32 {
    t.elapsed().as_millis().min(u128::from(u32::MAX)) as u32
}

/// Tokens in `bytes` of text, for ranking and for billing what an upstream did not count: about
/// 4 bytes a token.
fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64 / 4).max(1)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The response when every candidate failed, in the client's shape: 400 if none could serve the
/// request as asked, 429 if all were rate limited (with the shortest `Retry-After` they gave),
/// 503 if all were overloaded or unavailable, else 502.
fn all_failed(protocol: Protocol, failures: &[Failure]) -> Response<Body> {
    if let Some(Failure::Unsupported(message)) = failures
        .iter()
        .find(|f| matches!(f, Failure::Unsupported(_)))
        && failures
            .iter()
            .all(|f| matches!(f, Failure::Unsupported(_)))
    {
        return client_error(protocol, StatusCode::BAD_REQUEST, message, None);
    }
    let tried: Vec<&Failure> = failures
        .iter()
        .filter(|f| !matches!(f, Failure::Unsupported(_)))
        .collect();
    let all_rate_limited = tried.iter().all(
        |f| matches!(f, Failure::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS),
    );
    if all_rate_limited {
        let retry_after = tried
            .iter()
            .filter_map(|f| match f {
                Failure::Status {
                    retry_after: Some(v),
                    ..
                } => Some(v.clone()),
                _ => None,
            })
            .min_by_key(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(u64::MAX)
            });
        let mut resp = client_error(
            protocol,
            StatusCode::TOO_MANY_REQUESTS,
            "Every upstream for this model is rate limited. Retry after the time in Retry-After.",
            Some("rate_limit_exceeded"),
        );
        if let Some(v) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let all_unavailable = tried.iter().all(|f| {
        matches!(f, Failure::Status { status, .. } if status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS)
    });
    if all_unavailable {
        client_error(
            protocol,
            StatusCode::SERVICE_UNAVAILABLE,
            "Every upstream for this model is unavailable or overloaded.",
            Some("upstream_unavailable"),
        )
    } else {
        client_error(
            protocol,
            StatusCode::BAD_GATEWAY,
            "No upstream for this model could be reached or answered in time.",
            Some("upstream_failed"),
        )
    }
}

/// Reads a whole body, failing on a gap longer than `idle` or more than `limit` bytes. The
/// buffer never grows past `limit` (a declared length past it fails before a byte is read), and
/// is freed when the read fails.
async fn read_body(mut body: Incoming, idle: Duration, limit: usize) -> Result<Bytes, Failure> {
    let too_large = || Failure::Invalid(format!("upstream body larger than {limit} bytes"));
    let declared = http_body::Body::size_hint(&body).lower();
    if declared > limit as u64 {
        return Err(too_large());
    }
    let mut buf: Vec<u8> = Vec::with_capacity(declared as usize);
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(Failure::Stream("upstream body stalled".into())),
            Ok(None) => return Ok(Bytes::from(buf)),
            Ok(Some(Err(e))) => return Err(Failure::Stream(format!("upstream body failed: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let needed = buf.len() + data.len();
                    if needed > limit {
                        return Err(too_large());
                    }
                    if needed > buf.capacity() {
                        // Doubling, but never past the limit.
                        let cap = needed.max(buf.capacity() * 2).min(limit);
                        buf.reserve_exact(cap - buf.len());
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Whether the head of a 200 is what the protocol promises before its body is read: a JSON
/// body (or no content type) for a completion, an event stream (or no content type) for a
/// stream, and no content encoding the gateway did not ask for (it sends
/// `Accept-Encoding: identity`, and relays and parses the bytes as they are).
fn check_success_head(headers: &HeaderMap, stream: bool) -> Result<(), Failure> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(Failure::Invalid(format!(
            "upstream answered with content encoding {:?}",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = content_type
        .as_bytes()
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let ok = if stream {
        essence.eq_ignore_ascii_case(b"text/event-stream")
    } else {
        essence.eq_ignore_ascii_case(b"application/json")
    };
    if ok {
        Ok(())
    } else {
        Err(Failure::Invalid(format!(
            "upstream answered a 200 of content type {:?}",
            String::from_utf8_lossy(content_type.as_bytes())
        )))
    }
}

/// A 200 whose body is not a completion (or message) of the upstream's protocol.
fn not_a_completion() -> Attempt {
    Attempt::Failed(Failure::Invalid(
        "upstream answered a 200 that is not a completion".into(),
    ))
}

/// The stream state shared by the pre-commit phase and the relay.
struct Scan {
    adapter: bridge::Stream,
    splitter: sse::Splitter,
    /// Split but not yet looked at.
    queue: VecDeque<Bytes>,
    /// Ready to go to the client.
    out: Vec<Bytes>,
    content_events: u64,
    failed: Option<String>,
    done: bool,
    /// Scrubs the candidate's secret from what goes to the client.
    redactor: Arc<crate::redact::Redactor>,
}

impl Scan {
    fn new(
        adapter: bridge::Stream,
        max_event_bytes: usize,
        redactor: Arc<crate::redact::Redactor>,
    ) -> Scan {
        Scan {
            redactor,
            adapter,
            splitter: sse::Splitter::new(max_event_bytes),
            queue: VecDeque::new(),
            out: Vec::new(),
            content_events: 0,
            failed: None,
            done: false,
        }
    }

    fn feed(&mut self, data: Bytes) {
        let mut events = Vec::new();
        self.splitter.push(data, &mut events);
        self.queue.extend(events);
    }
}

/// Reads a streaming response until its first committing event. Returns the body to go on
/// relaying from, and the scan with what was held plus the committing event ready to send.
async fn precommit(
    mut body: Incoming,
    mut scan: Scan,
    deadline: Instant,
    idle: Duration,
) -> Result<(Incoming, Scan), Failure> {
    loop {
        while let Some(raw) = scan.queue.pop_front() {
            match scan.adapter.event(raw, false, &mut scan.out) {
                StreamNote::Nothing => {}
                StreamNote::Content => {
                    scan.content_events += 1;
                    return Ok((body, scan));
                }
                StreamNote::Error(message) => return Err(Failure::Stream(message)),
                StreamNote::Done => {
                    return Err(Failure::Stream("stream ended without content".into()));
                }
            }
        }
        if scan.splitter.too_large() {
            return Err(Failure::Stream(TOO_LARGE_EVENT.into()));
        }
        let wait = deadline.saturating_duration_since(Instant::now()).min(idle);
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(None) => return Err(Failure::Stream("stream ended without content".into())),
            Ok(Some(Err(e))) => return Err(Failure::Stream(format!("stream failed: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    scan.feed(data);
                }
            }
        }
    }
}

/// Why a stream failed when one of its events went past `--max-sse-event-bytes`.
const TOO_LARGE_EVENT: &str = "The upstream sent a stream event larger than the gateway accepts.";

/// The most a provider's own reported charge for one request may be ($1,000): beyond it, the
/// computed cost is billed instead.
const MAX_REPORTED_COST_NANO_USD: u64 = 1_000 * 1_000_000_000;

/// Everything needed to write the usage record when the response ends.
struct Record {
    proxy: Arc<Proxy>,
    request_id: String,
    key_id: Arc<str>,
    model: String,
    provider: Arc<str>,
    credential_id: Arc<str>,
    /// Base prices; `tiers` by prompt size pick the ones a request is billed at.
    prices: crate::table::Prices,
    tiers: Arc<[crate::table::PriceTier]>,
    /// The provider's own charge, when its usage reported one (OpenAI-protocol upstreams).
    reported_cost_nano_usd: Option<u64>,
    started: Instant,
    started_at_ms: i64,
    /// The request's bodies, taken into the record, for a key that keeps them.
    capture: Option<Arc<Capture>>,
    ttfb_ms: u32,
    /// Input tokens to bill when the upstream reports none: the client body's bytes / 4.
    input_estimate: u64,
    /// The client body's size, which bounds the prompt tokens an upstream may report.
    request_bytes: u64,
    /// The chain the client asked for ("" if none).
    chain: String,
    /// The key's limits, settled to the billed cost when the record is written.
    permit: Option<Permit>,
    /// The client's dialect as the request log names it (`Dialect::name`, or `embeddings`),
    /// whether it asked for a stream, and the upstreams tried (the last one answered), for the
    /// request log.
    dialect: &'static str,
    stream: bool,
    attempts: Vec<pb::UpstreamAttempt>,
}

impl Record {
    /// The record of a request `cand` is answering, for `model` (of `chain`, if any), with the
    /// upstreams tried before it; the caller sets what the request's kind knows (dialect,
    /// stream, estimate, size).
    fn for_attempt(
        proxy: &Arc<Proxy>,
        cand: &Candidate,
        ctx: &RequestCtx,
        model: &str,
        chain: Option<&str>,
    ) -> Record {
        let mut attempts = Vec::with_capacity(ctx.attempts.len() + 1);
        attempts.extend_from_slice(&ctx.attempts);
        attempts.push(attempt_of(cand, "ok"));
        Record {
            proxy: Arc::clone(proxy),
            request_id: ctx.request_id.clone(),
            key_id: Arc::clone(&ctx.key_id),
            model: model.to_string(),
            chain: chain.map(str::to_string).unwrap_or_default(),
            permit: None,
            provider: Arc::clone(&cand.provider.name),
            credential_id: Arc::clone(&cand.credential_id),
            prices: cand.prices(),
            tiers: Arc::clone(&cand.tiers),
            reported_cost_nano_usd: None,
            started: ctx.started,
            started_at_ms: ctx.started_at_ms,
            capture: ctx.capture.clone(),
            ttfb_ms: 0,
            input_estimate: 0,
            request_bytes: 0,
            dialect: "",
            stream: false,
            attempts,
        }
    }

    /// Bills the upstream's counts if it gave them, else `estimated_output` output tokens and the
    /// input estimated from the request body's size, flagged as estimated. Cached input is
    /// priced at the offering's cache prices (the input price where it has none).
    fn finish(mut self, usage: Option<Usage>, estimated_output: u64, status: u32) {
        // Counts beyond belief are not billed, and neither is a charge that came with them or
        // one beyond belief by itself.
        let usage = match usage {
            Some(u) if !u.is_plausible(self.request_bytes) => {
                tracing::warn!(
                    request_id = %self.request_id,
                    provider = %self.provider,
                    "upstream usage beyond belief; billing an estimate"
                );
                self.reported_cost_nano_usd = None;
                None
            }
            u => u,
        };
        if self
            .reported_cost_nano_usd
            .is_some_and(|c| c > MAX_REPORTED_COST_NANO_USD)
        {
            self.reported_cost_nano_usd = None;
        }
        let (u, estimated) = match usage {
            Some(u) => (u, false),
            None => (
                Usage {
                    input_tokens: self.input_estimate,
                    output_tokens: estimated_output,
                    ..Usage::default()
                },
                true,
            ),
        };
        let all_input = u.input_tokens + u.cache_read_tokens + u.cache_write_tokens;
        let cost = self.prices.at_tier(&self.tiers, all_input).cost_nano(
            u.input_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.output_tokens,
        );
        // What the ledger will bill: the provider's own charge when it reported one.
        let billed = self.reported_cost_nano_usd.unwrap_or(cost);
        if let Some(permit) = self.permit.take() {
            permit.settle(billed, all_input.saturating_add(u.output_tokens));
        }
        self.proxy.metrics.served(
            &self.provider,
            &self.model,
            status,
            all_input,
            u.output_tokens,
            billed,
        );
        let latency_ms = ms_since(self.started);
        self.proxy
            .metrics
            .timing(&self.provider, latency_ms, self.ttfb_ms);
        tracing::info!(
            request_id = %self.request_id,
            client_key_id = %self.key_id,
            model = %self.model,
            provider = %self.provider,
            credential_id = %self.credential_id,
            status,
            input_tokens = u.input_tokens,
            cache_read_tokens = u.cache_read_tokens,
            cache_write_tokens = u.cache_write_tokens,
            output_tokens = u.output_tokens,
            cost_nano_usd = cost,
            reported_cost_nano_usd = self.reported_cost_nano_usd,
            estimated,
            latency_ms,
            "request served"
        );
        self.proxy.usage.record(pb::UsageRecord {
            request_id: self.request_id,
            key_id: self.key_id.to_string(),
            model: self.model,
            provider: self.provider.to_string(),
            credential_id: self.credential_id.to_string(),
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_nano_usd: cost,
            latency_ms,
            ttfb_ms: self.ttfb_ms,
            status,
            started_at_ms: self.started_at_ms,
            estimated,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reported_cost_nano_usd: self.reported_cost_nano_usd,
            chain: self.chain,
            dialect: self.dialect.to_string(),
            stream: self.stream,
            error: served_error(status).to_string(),
            attempts: self.attempts,
            unbilled: false,
            bodies: self.capture.as_deref().map(Capture::take),
        });
    }
}

/// The request log's error code of a served request that ended with `status`: a committed stream
/// that failed (502) or whose client went away (499), else none.
fn served_error(status: u32) -> &'static str {
    match status {
        502 => "stream_failed",
        499 => "client_closed_request",
        _ => "",
    }
}

/// The body of a committed stream: relays the upstream's events as they arrive, notes usage, and
/// writes the usage record when the stream ends, fails, or the client goes away (drop).
struct Relay {
    upstream: Option<Incoming>,
    scan: Scan,
    ready: VecDeque<Bytes>,
    idle: Duration,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    record: Option<Record>,
    /// Copies each frame as it goes to the client, for a key that keeps its bodies.
    capture: Option<Arc<Capture>>,
}

impl Relay {
    fn new(upstream: Incoming, scan: Scan, idle: Duration, record: Record) -> Relay {
        let mut relay = Relay {
            capture: record.capture.clone(),
            upstream: Some(upstream),
            ready: VecDeque::new(),
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            record: Some(record),
            scan,
        };
        relay.drain_queue();
        relay
    }

    /// Processes split events and moves what is to be sent into `ready`, as one frame.
    fn drain_queue(&mut self) {
        let scan = &mut self.scan;
        while let Some(raw) = scan.queue.pop_front() {
            if scan.done {
                // The client's stream has ended ([DONE], `message_stop`): nothing an upstream
                // sends after its own end marker is relayed or billed, or a later usage would
                // change the bill and a later error would follow the end. Legitimate upstreams
                // send nothing more, so the upstream is dropped instead of read on.
                scan.queue.clear();
                self.upstream = None;
                break;
            }
            match scan.adapter.event(raw, true, &mut scan.out) {
                StreamNote::Content => scan.content_events += 1,
                StreamNote::Error(message) => {
                    // The error event went out to the client in its own shape. A translated
                    // stream ends there: closing events after an error would tell the client
                    // the message ended normally. A pass-through stream goes on as the upstream
                    // sends it.
                    scan.failed = Some(message);
                    if scan.adapter.is_translated() {
                        scan.queue.clear();
                        self.upstream = None;
                        break;
                    }
                }
                StreamNote::Done => scan.done = true,
                StreamNote::Nothing => {}
            }
        }
        self.flush_out();
        if self.scan.splitter.too_large() && self.upstream.is_some() {
            tracing::warn!("upstream stream event too large after content was sent");
            self.fail(TOO_LARGE_EVENT);
        }
    }

    /// Moves what is ready into one frame, without the candidate's secret (events are whole,
    /// so an echoed secret is never split across two).
    fn flush_out(&mut self) {
        let out = std::mem::take(&mut self.scan.out);
        let frame = match out.len() {
            0 => return,
            1 => out.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
                for b in out {
                    joined.extend_from_slice(&b);
                }
                joined.freeze()
            }
        };
        self.ready.push_back(self.scan.redactor.bytes(frame));
    }

    fn finish(&mut self, status: u32) {
        if let Some(mut record) = self.record.take() {
            let estimated_output = self.scan.content_events;
            let metering = self.scan.adapter.metering();
            record.reported_cost_nano_usd = metering.and_then(|m| m.reported_cost_nano);
            record.finish(metering.map(|m| m.usage), estimated_output, status);
        }
    }

    /// Ends the stream with an error event in the client's shape (unless the upstream already
    /// sent one).
    fn fail(&mut self, message: &str) {
        self.upstream = None;
        if self.scan.failed.is_none() {
            self.ready.push_back(self.scan.adapter.error_event(message));
            self.scan.failed = Some(message.to_string());
        }
    }
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.ready.pop_front() {
                if let Some(capture) = &this.capture {
                    capture.frame(&bytes);
                }
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            let Some(upstream) = this.upstream.as_mut() else {
                let status = if this.scan.failed.is_some() { 502 } else { 200 };
                this.finish(status);
                return Poll::Ready(None);
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.idle_timer.as_mut().reset(deadline);
                    if let Ok(data) = frame.into_data() {
                        this.scan.feed(data);
                        this.drain_queue();
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    tracing::warn!(error = %err, "upstream stream failed after content was sent");
                    this.fail("The upstream stream failed before it finished.");
                }
                Poll::Ready(None) => {
                    this.upstream = None;
                    let rest = this.scan.splitter.pending().to_vec();
                    if !rest.is_empty() && !this.scan.done {
                        let raw = Bytes::from(rest);
                        let scan = &mut this.scan;
                        let _ = scan.adapter.event(raw, true, &mut scan.out);
                    }
                    if this.scan.failed.is_none() {
                        let scan = &mut this.scan;
                        scan.adapter.finish(&mut scan.out);
                    }
                    this.flush_out();
                }
                Poll::Pending => {
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        this.fail("The upstream stream stalled.");
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Relay {
    /// The client went away mid-stream: the upstream request is dropped with this body, and what
    /// was streamed so far is billed.
    fn drop(&mut self) {
        if self.record.is_some() {
            self.upstream = None;
            self.finish(499);
        }
    }
}
