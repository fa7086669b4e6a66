//! The HTTP server: accept loop, routing of paths, authentication, body limits, and draining on
//! shutdown.

use crate::gateway::Gateway;
use crate::protocol::embeddings::Client;
use crate::proxy::{Body, RequestCtx, client_error, full, json_response, now_ms, openai_error};
use crate::table::Protocol;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How the server bounds its clients' connections (flags of the same names).
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// From accept to a complete first request head (the TLS handshake included), and the
    /// longest a connection may have no request in flight (HTTP/1.1 and HTTP/2).
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
}

/// How often at most a refused connection or a failed accept is logged (with the count since).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A pause after an accept error such as `EMFILE`: the pending connection stays in the backlog,
/// so retrying at once would only fail again and spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Counts events and lets one log line through per interval, carrying the count since the last
/// line: a flood of refusals costs a line every ten seconds, not one per connection.
struct Throttled {
    interval: Duration,
    last: Option<Instant>,
    since_last: u64,
}

impl Throttled {
    fn new(interval: Duration) -> Self {
        Throttled {
            interval,
            last: None,
            since_last: 0,
        }
    }

    /// Counts one event; `Some(n)` when a line is due, with the `n` events it stands for.
    fn hit(&mut self) -> Option<u64> {
        self.since_last += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since_last))
    }
}

/// What an open connection holds until it ends: its slot under the cap, and its count in the
/// open-connections gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves until `cancel` fires, then stops accepting and gives in-flight requests (streams
/// included) up to `drain` to finish. With `tls`, every connection is HTTPS (HTTP/1.1 or HTTP/2
/// by ALPN), with the certificate the reloader holds when it is accepted.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    cancel: CancellationToken,
    drain: Duration,
    limits: ConnLimits,
    tls: Option<Arc<crate::tls::Reloader>>,
) {
    let header_read_timeout = limits.header_read_timeout;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own timer bounds an HTTP/1.1 head once it has started reading one. The rest is
    // `serve_connection`'s: before the first head hyper waits for bytes to tell HTTP/1.1 from h2c
    // with no deadline at all, and an HTTP/2 connection has no idle timer.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // The cap keeps a file descriptor free for each proxied request's upstream socket and for
    // the spool and logs: a flood of idle connections is refused instead of turning every
    // accept into `EMFILE`. Nothing ever closes the semaphore.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = Throttled::new(REFUSAL_LOG_INTERVAL);
    let mut accept_errors = Throttled::new(REFUSAL_LOG_INTERVAL);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    if let Some(count) = accept_errors.hit() {
                        tracing::warn!(
                            error = %err,
                            count,
                            "accept failed (count: failures since the last such line)"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        () = cancel.cancelled() => break,
                    }
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        // At the cap the connection is closed at once rather than left in the backlog: a client
        // learns now, the descriptor is back, and a real client is served as soon as a slot
        // frees, without waiting behind a queue of idle sockets.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            gateway.metrics.refused_connections.inc();
            if let Some(count) = refusals.hit() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    count,
                    "connection refused: too many open connections \
                     (count: refusals since the last such line)"
                );
            }
            continue;
        };
        gateway.metrics.open_connections.inc();
        let slot = Slot {
            _permit: permit,
            open: gateway.metrics.open_connections.clone(),
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let gw = Arc::clone(&gateway);
        let tracked = Arc::clone(&activity);
        let service = service_fn(move |req| {
            let in_flight = InFlight::start(&tracked);
            let gw = Arc::clone(&gw);
            async move {
                let resp = handle(gw, req).await;
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        });
        let watcher = graceful.watcher();
        let builder = builder.clone();
        match &tls {
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let _slot = slot;
                    // The handshake counts against the same deadline as the first head.
                    let deadline = activity.opened + header_read_timeout;
                    let stream =
                        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    serve_connection(
                        watcher.watch(conn.into_owned()),
                        header_read_timeout,
                        &activity,
                        peer,
                    )
                    .await;
                });
            }
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    serve_connection(
                        watcher.watch(conn.into_owned()),
                        header_read_timeout,
                        &activity,
                        peer,
                    )
                    .await;
                });
            }
        }
    }
    drop(listener);
    tracing::info!(drain_secs = drain.as_secs(), "draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time; closing them");
    }
}

/// What a connection's watchdog reads: requests in flight, and since when it has had none.
struct Activity {
    /// Requests whose response (body included) has not ended.
    in_flight: AtomicU32,
    /// When the connection last had no request in flight, in ms after `opened`.
    idle_since_ms: AtomicU64,
    opened: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: tokio::time::Instant::now(),
        }
    }

    /// When the connection went idle, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.opened + Duration::from_millis(ms))
    }
}

/// A request's hold on its connection, from its head until its response body ends or is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] until it ends.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Runs one connection and closes it once it has had no request in flight for `timeout`: from
/// accept until a first request head (so a client that connects and sends nothing, or too
/// little, holds its socket no longer than the header read timeout), and between requests, on
/// HTTP/2 too, where hyper has no idle timer of its own.
async fn serve_connection<F, E>(
    conn: F,
    timeout: Duration,
    activity: &Activity,
    peer: std::net::SocketAddr,
) where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut check_at = activity.opened + timeout;
    let ended = loop {
        tokio::select! {
            ended = &mut conn => break ended,
            () = tokio::time::sleep_until(check_at) => {}
        }
        let now = tokio::time::Instant::now();
        match activity.idle_since() {
            None => check_at = now + timeout,
            Some(since) if since + timeout <= now => {
                tracing::debug!(%peer, "connection idle past the header read timeout; closing");
                return;
            }
            Some(since) => check_at = since + timeout,
        }
    };
    if let Err(err) = ended {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

fn with_request_id(mut resp: Response<Body>, request_id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The key a request presents: `authorization: Bearer`, or where the protocol uses it
/// Anthropic's `x-api-key`, or Google's `x-goog-api-key` and `?key=` (in that order). A key
/// from the query is decoded, so it is owned.
fn presented_key(req: &Request<Incoming>, protocol: Protocol) -> Option<Cow<'_, str>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if protocol == Protocol::Gemini {
        if let Some(key) = header(crate::gemini_api::GOOG_API_KEY) {
            return Some(Cow::Borrowed(key));
        }
        if let Some(key) = crate::gemini_api::query_param(req.uri().query(), "key") {
            return Some(Cow::Owned(key));
        }
    }
    let bearer = header(header::AUTHORIZATION.as_str())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer
        .or_else(|| {
            (protocol == Protocol::Anthropic)
                .then(|| header("x-api-key"))
                .flatten()
        })
        .map(Cow::Borrowed)
}

async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let request_id = uuid::Uuid::now_v7().to_string();
    // With OTLP traces built in, each request is a span (its events become span events).
    #[cfg(feature = "otlp")]
    let resp = {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method(),
            path = req.uri().path(),
        );
        route(&gw, req, &request_id).instrument(span).await
    };
    #[cfg(not(feature = "otlp"))]
    let resp = route(&gw, req, &request_id).await;
    with_request_id(resp, &request_id)
}

async fn route(gw: &Arc<Gateway>, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let path = req.uri().path();
    if let Some(call) = crate::gemini_api::Call::of(path, crate::gemini_api::google_key(&req)) {
        return crate::gemini_api::serve(gw, req, request_id, call).await;
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if gw.table.load().is_some() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no route table yet\n")
            }
        }
        (&Method::GET, "/metrics") => metrics(gw),
        (&Method::GET, "/v1/models") if crate::gemini_api::google_key(&req) => {
            crate::gemini_api::list_models(gw, &req)
        }
        (&Method::GET, "/v1/models") => models(gw, &req),
        (&Method::POST, "/v1/chat/completions") => {
            proxied(gw, req, request_id, Protocol::OpenAiChat, None).await
        }
        (&Method::POST, "/v1/messages") => {
            proxied(gw, req, request_id, Protocol::Anthropic, None).await
        }
        (&Method::POST, "/v1/responses") => {
            proxied(gw, req, request_id, Protocol::OpenAiResponses, None).await
        }
        (&Method::POST, "/v1/messages/count_tokens") => count_tokens(gw, req).await,
        (&Method::POST, "/v1/embeddings") => {
            embeddings(
                gw,
                req,
                request_id,
                Client::OpenAi,
                Protocol::OpenAiChat,
                String::new(),
            )
            .await
        }
        (_, "/v1/messages" | "/v1/messages/count_tokens") => client_error(
            Protocol::Anthropic,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {} is not allowed on {path}.", req.method()),
            None,
        ),
        (
            _,
            "/v1/chat/completions"
            | "/v1/responses"
            | "/v1/embeddings"
            | "/v1/models"
            | "/healthz"
            | "/readyz"
            | "/metrics",
        ) => openai_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method {} is not allowed on {path}.", req.method()),
            "invalid_request_error",
            None,
            None,
        ),
        _ => openai_error(
            StatusCode::NOT_FOUND,
            &format!("Unknown path {path}."),
            "invalid_request_error",
            Some("unknown_url"),
            None,
        ),
    }
}

fn metrics(gw: &Gateway) -> Response<Body> {
    let stats = &gw.usage_stats;
    gw.metrics.spool_depth.set(stats.depth() as i64);
    gw.metrics
        .spool_oldest_age_seconds
        .set((stats.oldest_unacked_age_ms() / 1000) as i64);
    let generated = gw
        .table_generated_at_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    if generated > 0 {
        gw.metrics
            .route_table_age_seconds
            .set(((now_ms() - generated) / 1000).max(0));
    }
    let mut resp = Response::new(full(gw.metrics.encode()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

fn unauthorized(gw: &Gateway, protocol: Protocol, message: &str) -> Response<Body> {
    gw.metrics.refused("unauthenticated");
    if protocol == Protocol::Gemini {
        return crate::gemini_api::unauthenticated(message, message == BAD_KEY);
    }
    client_error(
        protocol,
        StatusCode::UNAUTHORIZED,
        message,
        Some("invalid_api_key"),
    )
}

fn not_ready(gw: &Gateway, protocol: Protocol) -> Response<Body> {
    gw.metrics.refused("not_ready");
    client_error(
        protocol,
        StatusCode::SERVICE_UNAVAILABLE,
        "The gateway has no route table yet; retry shortly.",
        Some("not_ready"),
    )
}

const NO_KEY: &str = "You didn't provide an API key. Use an Authorization header: Bearer <key>.";
const NO_KEY_ANTHROPIC: &str = "x-api-key header is required (or Authorization: Bearer <key>).";
const NO_KEY_GEMINI: &str = "API key not provided: send it in the x-goog-api-key header (or ?key=, or Authorization: Bearer <key>).";
const BAD_KEY: &str = "Incorrect API key provided.";

/// The table and the client key id of an authenticated request, or the error response.
// The error is the response itself, returned to the client as is: boxing it would only add an
// allocation to the refusal path.
#[allow(clippy::result_large_err)]
pub(crate) fn authenticate(
    gw: &Gateway,
    req: &Request<Incoming>,
    protocol: Protocol,
) -> Result<(Arc<crate::table::Table>, crate::table::ClientKey), Response<Body>> {
    let Some(table) = gw.table.load_full() else {
        return Err(not_ready(gw, protocol));
    };
    let Some(presented) = presented_key(req, protocol) else {
        let message = match protocol {
            Protocol::Anthropic => NO_KEY_ANTHROPIC,
            Protocol::Gemini => NO_KEY_GEMINI,
            _ => NO_KEY,
        };
        return Err(unauthorized(gw, protocol, message));
    };
    let Some(key) = table.authenticate(&presented) else {
        return Err(unauthorized(gw, protocol, BAD_KEY));
    };
    // Expiry is checked here, not only by the control plane, so that it holds while the control
    // plane is unreachable.
    if let Some(p) = &key.policy
        && p.expires_at_ms > 0
        && now_ms() >= p.expires_at_ms
    {
        gw.metrics.key_limit_refused("unauthenticated", "expired");
        let mut resp = client_error(
            protocol,
            StatusCode::UNAUTHORIZED,
            "This API key has expired.",
            Some("key_expired"),
        );
        // The key is known: the refusal goes to the request log under it.
        crate::proxy::unserved(&mut resp).key_id = Some(Arc::clone(&key.id));
        return Err(resp);
    }
    let key = key.clone();
    Ok((table, key))
}

fn models(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let table = match authenticate(gw, req, Protocol::OpenAiChat) {
        Ok((table, _)) => table,
        Err(resp) => return resp,
    };
    let data: Vec<serde_json::Value> = table
        .model_names
        .iter()
        .map(|name| {
            serde_json::json!({
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "keyplane",
            })
        })
        .collect();
    let body = serde_json::json!({ "object": "list", "data": data });
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// Reads the body within the limit, or the error response in the client's shape.
#[allow(clippy::result_large_err)]
pub(crate) async fn read_body(
    gw: &Gateway,
    req: Request<Incoming>,
    protocol: Protocol,
) -> Result<(http::request::Parts, Bytes), Response<Body>> {
    let limit = gw.proxy.limits.max_body_bytes;
    let too_large = || {
        gw.metrics.refused("body_too_large");
        client_error(
            protocol,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("The request body is larger than the limit of {limit} bytes."),
            Some("request_too_large"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    // The whole body must arrive within the timeout, however it is split: a per-frame bound
    // would let a client trickle a byte at a time and hold the connection (and what it has
    // buffered so far) for ever.
    let timeout = gw.proxy.limits.body_read_timeout;
    let Ok(collected) = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await
    else {
        gw.metrics.refused("body_timeout");
        return Err(client_error(
            protocol,
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "The request body did not arrive within {} ms.",
                timeout.as_millis()
            ),
            Some("request_timeout"),
        ));
    };
    match collected {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(err)
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(_) => Err(client_error(
            protocol,
            StatusCode::BAD_REQUEST,
            "The request body could not be read.",
            None,
        )),
    }
}

/// `/v1/chat/completions`, `/v1/messages`, `/v1/responses` and Gemini's `generateContent` /
/// `streamGenerateContent` (`from_url`: the model and framing its URL names): authenticate,
/// read the body, proxy.
pub(crate) async fn proxied(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    request_id: &str,
    protocol: Protocol,
    from_url: Option<crate::proxy::UrlModel>,
) -> Response<Body> {
    let started = (Instant::now(), now_ms());
    let not_served = |resp, key_id, capture| {
        log_not_served(
            gw,
            request_id,
            key_id,
            protocol.name(),
            started,
            resp,
            capture,
        )
    };
    let (table, key) = match authenticate(gw, &req, protocol) {
        Ok(ok) => ok,
        Err(resp) => return not_served(resp, None, None),
    };
    let pin = match probe_route(gw, &req, &key, protocol) {
        Ok(pin) => pin,
        Err(resp) => return not_served(resp, Some(&key.id), None),
    };
    // A Gemini call's query holds `alt` (already read into `from_url`) and maybe the key: it
    // goes nowhere.
    let query = if from_url.is_some() {
        None
    } else {
        req.uri().query().map(str::to_string)
    };
    let (parts, body) = match read_body(gw, req, protocol).await {
        Ok(ok) => ok,
        Err(resp) => return not_served(resp, Some(&key.id), capture_for(&key, None)),
    };
    let logged_key = Arc::clone(&key.id);
    let capture = capture_for(&key, Some(&body));
    let logged_capture = capture.clone();
    let ctx = RequestCtx {
        query,
        pin,
        from_url,
        ..request_ctx(request_id, key, started, capture)
    };
    let resp = gw
        .proxy
        .complete(protocol, &table, &parts.headers, &body, ctx)
        .await;
    not_served(resp, Some(&logged_key), logged_capture)
}

/// The bodies of a request whose key opted in to keep them (the request's, when it was read),
/// else `None`: only a key that opted in pays for a copy.
fn capture_for(
    key: &crate::table::ClientKey,
    body: Option<&[u8]>,
) -> Option<Arc<crate::capture::Capture>> {
    key.capture_bodies
        .then(|| Arc::new(crate::capture::Capture::new(body)))
}

/// The request's context for `key`, with no query, pin or URL model (the caller sets those it
/// has).
fn request_ctx(
    request_id: &str,
    key: crate::table::ClientKey,
    (started, started_at_ms): (Instant, i64),
    capture: Option<Arc<crate::capture::Capture>>,
) -> RequestCtx {
    RequestCtx {
        request_id: request_id.to_string(),
        key_id: key.id,
        policy: key.policy,
        limits: key.state,
        failures: key.failures,
        started,
        started_at_ms,
        query: None,
        attempts: Vec::new(),
        pin: None,
        from_url: None,
        capture,
    }
}

/// The route a probe request pins (`x-keyplane-probe-route`), if it sends one. Only the route
/// probe's key may: any other key gets 403, so that a client can never choose a credential.
#[allow(clippy::result_large_err)]
fn probe_route(
    gw: &Gateway,
    req: &Request<Incoming>,
    key: &crate::table::ClientKey,
    protocol: Protocol,
) -> Result<Option<crate::proxy::PinnedRoute>, Response<Body>> {
    let Some(value) = req.headers().get(crate::proxy::PROBE_ROUTE) else {
        return Ok(None);
    };
    if !key.probe {
        gw.metrics.refused("probe_route_forbidden");
        return Err(client_error(
            protocol,
            StatusCode::FORBIDDEN,
            "Only the route probe's key may pin a route (x-keyplane-probe-route).",
            Some("probe_route_forbidden"),
        ));
    }
    match value
        .to_str()
        .ok()
        .and_then(crate::proxy::PinnedRoute::parse)
    {
        Some(pin) => Ok(Some(pin)),
        None => Err(client_error(
            protocol,
            StatusCode::BAD_REQUEST,
            "x-keyplane-probe-route must be PROVIDER/CREDENTIAL_ID.",
            Some("invalid_probe_route"),
        )),
    }
}

/// Writes the one log line and the request log record of a response that served nothing (a
/// served one, 2xx, is logged with its usage when its response ends), with the bodies a
/// capturing key's `capture` holds. Never the key or the body in the log line.
fn log_not_served(
    gw: &Gateway,
    request_id: &str,
    key_id: Option<&Arc<str>>,
    dialect: &str,
    (started, started_at_ms): (Instant, i64),
    mut resp: Response<Body>,
    capture: Option<Arc<crate::capture::Capture>>,
) -> Response<Body> {
    if !resp.status().is_success() {
        if capture.is_some() {
            crate::proxy::unserved(&mut resp).capture = capture;
        }
        tracing::info!(
            request_id,
            client_key_id = key_id.map_or("", |k| &**k),
            status = resp.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "request not served"
        );
        gw.proxy.log_unserved(
            request_id,
            key_id,
            dialect,
            started,
            started_at_ms,
            &mut resp,
        );
    }
    resp
}

/// An embeddings request (`POST /v1/embeddings`, Gemini's `:embedContent` and
/// `:batchEmbedContents`) in `shape`, with errors in `errors` and, for Gemini's, the path's
/// model: authenticate, read the body, route as a completion is routed.
pub(crate) async fn embeddings(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    request_id: &str,
    shape: Client,
    errors: Protocol,
    path_model: String,
) -> Response<Body> {
    let started = (Instant::now(), now_ms());
    let dialect = crate::proxy::embed_log_name(shape, errors);
    let (table, key) = match authenticate(gw, &req, errors) {
        Ok(ok) => ok,
        Err(resp) => return log_not_served(gw, request_id, None, dialect, started, resp, None),
    };
    let (_, body) = match read_body(gw, req, errors).await {
        Ok(ok) => ok,
        Err(resp) => {
            let capture = capture_for(&key, None);
            return log_not_served(
                gw,
                request_id,
                Some(&key.id),
                dialect,
                started,
                resp,
                capture,
            );
        }
    };
    let logged_key = Arc::clone(&key.id);
    let capture = capture_for(&key, Some(&body));
    let logged_capture = capture.clone();
    let ctx = request_ctx(request_id, key, started, capture);
    let resp = gw
        .proxy
        .embed(shape, errors, &path_model, &table, &body, ctx)
        .await;
    log_not_served(
        gw,
        request_id,
        Some(&logged_key),
        dialect,
        started,
        resp,
        logged_capture,
    )
}

/// `POST /v1/messages/count_tokens`: exact from the upstream when the candidate the request would
/// go to speaks Anthropic, else an estimate of one token per 4 bytes of the request.
async fn count_tokens(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let (table, _) = match authenticate(gw, &req, Protocol::Anthropic) {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let (parts, body) = match read_body(gw, req, Protocol::Anthropic).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    gw.proxy.count_tokens(&table, &parts.headers, &body).await
}
