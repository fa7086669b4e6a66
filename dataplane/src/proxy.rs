//! Forwarding with failover: rank the candidates of the requested model, try them cheapest first,
//! and commit to one only once it has produced something a client would show. Streams are relayed
//! event by event as they arrive.
//!
//! Failover happens only before anything has reached the client. What is held back until then is
//! only what a client shows nothing for (comments, an empty role chunk); the first event with
//! content, reasoning, a tool call or a finish reason commits the stream, together with what was
//! held, at once.

use crate::metrics::Metrics;
use crate::protocol::openai::{self, ChatRequest, Chunk, Usage};
use crate::sse;
use crate::table::{Candidate, Table};
use crate::usage::UsageSink;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
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

/// Builds an OpenAI-shaped error response.
pub fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
) -> Response<Body> {
    let mut resp = Response::new(full(openai::error_body(message, kind, param, code)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What the handler knows about the request besides its body.
pub struct RequestCtx {
    pub request_id: String,
    pub key_id: Arc<str>,
    pub started: Instant,
    pub started_at_ms: i64,
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
}

/// Why one candidate did not serve the request.
#[derive(Debug)]
enum Failure {
    /// The upstream answered with this status (429, 5xx, 401, …).
    Status {
        status: StatusCode,
        retry_after: Option<HeaderValue>,
    },
    Timeout,
    Connect(String),
    /// A 200 that failed before committing (error event, cut, nothing to show).
    Stream(String),
}

impl Failure {
    /// What went wrong, for a debug log: may quote an upstream's error text.
    fn detail(&self) -> String {
        match self {
            Failure::Status { status, .. } => status.to_string(),
            Failure::Timeout => "timed out".into(),
            Failure::Connect(e) | Failure::Stream(e) => e.clone(),
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
        }
    }
}

/// Statuses after which another candidate may succeed. Other 4xx are the client's fault and are
/// passed through: they would fail everywhere.
fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 401 | 402 | 403 | 404 | 408 | 409 | 429)
}

/// Request headers of the client that are not passed upstream: hop-by-hop headers, the client's
/// own credentials, and framing or encoding the data plane decides itself.
fn forwardable(name: &http::HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "authorization"
            | "x-api-key"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "accept-encoding"
            | "cookie"
            | "expect"
    )
}

impl Proxy {
    /// `POST /v1/chat/completions` once the key is known and the body read.
    pub async fn chat_completions(
        self: &Arc<Self>,
        table: &Table,
        client_headers: &HeaderMap,
        body: &[u8],
        ctx: RequestCtx,
    ) -> Response<Body> {
        let req = match ChatRequest::parse(body) {
            Ok(req) => req,
            Err(err) => {
                return openai_error(
                    StatusCode::BAD_REQUEST,
                    &err.message,
                    "invalid_request_error",
                    None,
                    err.param,
                );
            }
        };
        let Some(candidates) = table.models.get(&req.model) else {
            return openai_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    req.model
                ),
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
            );
        };
        if candidates.is_empty() {
            return openai_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("No upstream credential serves `{}` right now.", req.model),
                "server_error",
                Some("no_upstream"),
                None,
            );
        }
        // Prompt tokens from the body size (about 4 bytes a token), output from the limit.
        let input_estimate = (body.len() as u64 / 4).max(1);
        let output_estimate = req
            .max_tokens
            .unwrap_or(openai::DEFAULT_OUTPUT_TOKENS_ESTIMATE);
        let order = Table::rank(candidates, input_estimate, output_estimate);
        let force_usage = req.stream && !req.include_usage;

        let mut failures: Vec<Failure> = Vec::new();
        for idx in order {
            let cand = &candidates[idx];
            let upstream_body = req.rewrite(&cand.upstream_model, force_usage);
            let attempt = self
                .attempt(cand, client_headers, upstream_body, &req, &ctx, force_usage)
                .await;
            match attempt {
                Ok(resp) => {
                    self.metrics.attempt(&cand.provider.name, "ok");
                    return resp;
                }
                Err(Attempt::Final(resp)) => {
                    self.metrics.attempt(&cand.provider.name, "refused");
                    return resp;
                }
                Err(Attempt::Failed(failure)) => {
                    self.metrics.attempt(&cand.provider.name, failure.outcome());
                    tracing::info!(
                        request_id = %ctx.request_id,
                        provider = %cand.provider.name,
                        credential_id = %cand.credential_id,
                        outcome = failure.outcome(),
                        "upstream attempt failed; trying the next candidate"
                    );
                    tracing::debug!(request_id = %ctx.request_id, detail = %failure.detail(), "upstream failure detail");
                    failures.push(failure);
                }
            }
        }
        all_failed(&failures)
    }

    async fn attempt(
        self: &Arc<Self>,
        cand: &Candidate,
        client_headers: &HeaderMap,
        body: Bytes,
        req: &ChatRequest<'_>,
        ctx: &RequestCtx,
        force_usage: bool,
    ) -> Result<Response<Body>, Attempt> {
        let mut builder = http::Request::post(cand.provider.chat_url.clone());
        if let Some(headers) = builder.headers_mut() {
            for (name, value) in client_headers {
                if forwardable(name) {
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
            headers.insert(cand.auth.0.clone(), cand.auth.1.clone());
        }
        let upstream_req = builder
            .body(Full::new(body))
            .map_err(|e| Attempt::Failed(Failure::Connect(e.to_string())))?;

        let sent = Instant::now();
        let deadline = sent + self.limits.first_byte_timeout;
        let resp = match tokio::time::timeout_at(deadline.into(), self.client.request(upstream_req))
            .await
        {
            Err(_) => return Err(Attempt::Failed(Failure::Timeout)),
            Ok(Err(err)) => return Err(Attempt::Failed(Failure::Connect(error_chain(&err)))),
            Ok(Ok(resp)) => resp,
        };
        cand.stats
            .observe_latency(sent.elapsed().as_micros().min(u128::from(u64::MAX)) as u64);
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
            if is_retryable(status) {
                // Dropping the body closes or recycles the connection; the error text is not
                // needed (and may echo the request).
                return Err(Attempt::Failed(Failure::Status {
                    status,
                    retry_after,
                }));
            }
            // The client's fault: the upstream's own error, in the same (OpenAI) shape.
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = read_body(resp.into_body(), self.limits.idle_timeout, 1 << 20)
                .await
                .unwrap_or_default();
            let mut out = Response::new(full(bytes));
            *out.status_mut() = status;
            if let Some(ct) = content_type {
                out.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            return Err(Attempt::Final(out));
        }

        let record = Record {
            proxy: Arc::clone(self),
            request_id: ctx.request_id.clone(),
            key_id: Arc::clone(&ctx.key_id),
            model: req.model.clone(),
            provider: Arc::clone(&cand.provider.name),
            credential_id: Arc::clone(&cand.credential_id),
            prices: (
                cand.input_micro_usd_per_mtok,
                cand.output_micro_usd_per_mtok,
                cand.multiplier_ppm,
            ),
            started: ctx.started,
            started_at_ms: ctx.started_at_ms,
            ttfb_ms: 0,
        };
        if req.stream {
            let (upstream, scan) = precommit(
                resp.into_body(),
                deadline,
                self.limits.idle_timeout,
                force_usage,
            )
            .await
            .map_err(Attempt::Failed)?;
            let mut record = record;
            record.ttfb_ms = ms_since(ctx.started);
            let relay = Relay::new(upstream, scan, self.limits.idle_timeout, record);
            let mut out = Response::new(relay.boxed_unsync());
            let headers = out.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            Ok(out)
        } else {
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = read_body(resp.into_body(), self.limits.idle_timeout, usize::MAX)
                .await
                .map_err(|e| Attempt::Failed(Failure::Stream(e)))?;
            let mut record = record;
            record.ttfb_ms = ms_since(ctx.started);
            match openai::completion_usage(&bytes) {
                Some(usage) => record.finish(Some(usage), 0, 200),
                None => record.finish(None, estimate_tokens(bytes.len()), 200),
            }
            let mut out = Response::new(full(bytes));
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            Ok(out)
        }
    }
}

enum Attempt {
    Failed(Failure),
    /// A response to give the client as is (a non-retryable upstream error).
    Final(Response<Body>),
}

fn ms_since(t: Instant) -> u32 {
    t.elapsed().as_millis().min(u128::from(u32::MAX)) as u32
}

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

/// The response when every candidate failed: 429 if all were rate limited (with the shortest
/// `Retry-After` they gave), 503 if all were overloaded or unavailable, else 502.
fn all_failed(failures: &[Failure]) -> Response<Body> {
    let all_rate_limited = failures.iter().all(
        |f| matches!(f, Failure::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS),
    );
    if all_rate_limited {
        let retry_after = failures
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
        let mut resp = openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "Every upstream for this model is rate limited. Retry after the time in Retry-After.",
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            None,
        );
        if let Some(v) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let all_unavailable = failures.iter().all(|f| {
        matches!(f, Failure::Status { status, .. } if status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS)
    });
    if all_unavailable {
        openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Every upstream for this model is unavailable or overloaded.",
            "server_error",
            Some("upstream_unavailable"),
            None,
        )
    } else {
        openai_error(
            StatusCode::BAD_GATEWAY,
            "No upstream for this model could be reached or answered in time.",
            "server_error",
            Some("upstream_failed"),
            None,
        )
    }
}

/// Reads a whole body, failing on a gap longer than `idle` or more than `limit` bytes.
async fn read_body(mut body: Incoming, idle: Duration, limit: usize) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err("upstream body stalled".into()),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(format!("upstream body failed: {e}")),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err("upstream body too large".into());
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The stream state shared by the pre-commit phase and the relay.
struct Scan {
    splitter: sse::Splitter,
    /// Split but not yet looked at.
    queue: VecDeque<Bytes>,
    /// Ready to go to the client.
    out: Vec<Bytes>,
    /// Drop the `choices: []` usage chunk the client did not ask for.
    suppress_usage_chunk: bool,
    usage: Option<Usage>,
    content_events: u64,
    failed: Option<String>,
    done: bool,
}

impl Scan {
    fn feed(&mut self, data: Bytes) {
        let mut events = Vec::new();
        self.splitter.push(data, &mut events);
        self.queue.extend(events);
    }

    /// Looks at one committed event: passes it on, or drops it, noting usage and errors.
    fn relay_event(&mut self, raw: Bytes) {
        let ev = sse::parse(&raw);
        let data = ev.data.as_deref();
        let matters = data.is_some_and(|d| openai::may_matter(ev.name, d));
        if !matters {
            if data.is_some() {
                self.content_events += 1;
            }
            self.out.push(raw);
            return;
        }
        match openai::classify(ev.name, data) {
            Chunk::UsageOnly(u) => {
                self.usage = Some(u);
                if !self.suppress_usage_chunk {
                    self.out.push(raw);
                }
            }
            Chunk::Content { usage } => {
                self.content_events += 1;
                if usage.is_some() {
                    self.usage = usage;
                }
                self.out.push(raw);
            }
            Chunk::Error { message, usage } => {
                if usage.is_some() {
                    self.usage = usage;
                }
                self.failed = Some(message);
                self.out.push(raw);
            }
            Chunk::Done => {
                self.done = true;
                self.out.push(raw);
            }
            Chunk::Preamble => self.out.push(raw),
        }
    }
}

/// Reads a streaming response until its first committing event. Returns the body to go on
/// relaying from, and the scan with what was held plus the committing event ready to send.
async fn precommit(
    mut body: Incoming,
    deadline: Instant,
    idle: Duration,
    force_usage: bool,
) -> Result<(Incoming, Scan), Failure> {
    let mut scan = Scan {
        splitter: sse::Splitter::default(),
        queue: VecDeque::new(),
        out: Vec::new(),
        suppress_usage_chunk: force_usage,
        usage: None,
        content_events: 0,
        failed: None,
        done: false,
    };
    loop {
        while let Some(raw) = scan.queue.pop_front() {
            let ev = sse::parse(&raw);
            match openai::classify(ev.name, ev.data.as_deref()) {
                Chunk::Preamble => scan.out.push(raw),
                Chunk::UsageOnly(u) => {
                    scan.usage = Some(u);
                    if !force_usage {
                        scan.out.push(raw);
                    }
                }
                Chunk::Content { usage } => {
                    scan.content_events += 1;
                    if usage.is_some() {
                        scan.usage = usage;
                    }
                    scan.out.push(raw);
                    return Ok((body, scan));
                }
                Chunk::Error { message, .. } => return Err(Failure::Stream(message)),
                Chunk::Done => return Err(Failure::Stream("stream ended without content".into())),
            }
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

/// Everything needed to write the usage record when the response ends.
struct Record {
    proxy: Arc<Proxy>,
    request_id: String,
    key_id: Arc<str>,
    model: String,
    provider: Arc<str>,
    credential_id: Arc<str>,
    /// Input and output price (micro-USD per million tokens) and multiplier (ppm).
    prices: (u64, u64, u64),
    started: Instant,
    started_at_ms: i64,
    ttfb_ms: u32,
}

impl Record {
    /// Bills the upstream's counts if it gave them, else `estimated_output` output tokens (and
    /// no input: the prompt size is not known exactly), flagged as estimated.
    fn finish(self, usage: Option<Usage>, estimated_output: u64, status: u32) {
        let (input, output, cached, estimated) = match usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens, u.cached_tokens, false),
            None => (0, estimated_output, 0, true),
        };
        let (input_price, output_price, multiplier) = self.prices;
        let cost = crate::table::cost_nano(input, output, input_price, output_price, multiplier);
        self.proxy
            .metrics
            .served(&self.provider, &self.model, status, input, output, cost);
        tracing::info!(
            request_id = %self.request_id,
            client_key_id = %self.key_id,
            model = %self.model,
            provider = %self.provider,
            credential_id = %self.credential_id,
            status,
            input_tokens = input,
            output_tokens = output,
            cost_nano_usd = cost,
            estimated,
            latency_ms = ms_since(self.started),
            "request served"
        );
        self.proxy.usage.record(pb::UsageRecord {
            request_id: self.request_id,
            key_id: self.key_id.to_string(),
            model: self.model,
            provider: self.provider.to_string(),
            credential_id: self.credential_id.to_string(),
            input_tokens: input,
            output_tokens: output,
            cost_nano_usd: cost,
            latency_ms: ms_since(self.started),
            ttfb_ms: self.ttfb_ms,
            status,
            started_at_ms: self.started_at_ms,
            estimated,
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        });
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
}

impl Relay {
    fn new(upstream: Incoming, mut scan: Scan, idle: Duration, record: Record) -> Relay {
        let mut relay = Relay {
            upstream: Some(upstream),
            ready: VecDeque::new(),
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            record: Some(record),
            scan: Scan {
                out: std::mem::take(&mut scan.out),
                ..scan
            },
        };
        relay.drain_queue();
        relay
    }

    /// Processes split events and moves what is to be sent into `ready`, as one frame.
    fn drain_queue(&mut self) {
        while let Some(raw) = self.scan.queue.pop_front() {
            self.scan.relay_event(raw);
        }
        let out = std::mem::take(&mut self.scan.out);
        match out.len() {
            0 => {}
            1 => self.ready.extend(out),
            _ => {
                let mut joined = BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
                for b in out {
                    joined.extend_from_slice(&b);
                }
                self.ready.push_back(joined.freeze());
            }
        }
    }

    fn finish(&mut self, status: u32) {
        if let Some(record) = self.record.take() {
            let estimated_output = self.scan.content_events;
            record.finish(self.scan.usage, estimated_output, status);
        }
    }

    /// Ends the stream with an OpenAI-shaped error event (unless the upstream already sent one).
    fn fail(&mut self, message: &str) {
        self.upstream = None;
        if self.scan.failed.is_none() {
            self.ready.push_back(openai::stream_error_event(message));
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
                    if !rest.is_empty() {
                        this.ready.push_back(Bytes::from(rest));
                    }
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
