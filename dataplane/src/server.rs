//! The HTTP server: accept loop, routing of paths, authentication, body limits, and draining on
//! shutdown.

use crate::gateway::Gateway;
use crate::proxy::{Body, RequestCtx, full, now_ms, openai_error};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves until `cancel` fires, then stops accepting and gives in-flight requests (streams
/// included) up to `drain` to finish.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    cancel: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = Arc::clone(&gateway);
        let service = service_fn(move |req| {
            let gw = Arc::clone(&gw);
            async move { Ok::<_, Infallible>(handle(gw, req).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
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

/// The bearer key of a request (`authorization: Bearer`, or `x-api-key` where the protocol uses
/// it).
fn presented_key(req: &Request<Incoming>, allow_x_api_key: bool) -> Option<&str> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.or_else(|| {
        allow_x_api_key
            .then(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
            .flatten()
    })
}

async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let request_id = uuid::Uuid::now_v7().to_string();
    let resp = route(&gw, req, &request_id).await;
    with_request_id(resp, &request_id)
}

async fn route(gw: &Arc<Gateway>, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let path = req.uri().path();
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
        (&Method::GET, "/v1/models") => models(gw, &req),
        (&Method::POST, "/v1/chat/completions") => chat(gw, req, request_id).await,
        (_, "/v1/chat/completions" | "/v1/models" | "/healthz" | "/readyz" | "/metrics") => {
            openai_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("Method {} is not allowed on {path}.", req.method()),
                "invalid_request_error",
                None,
                None,
            )
        }
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

fn unauthorized(gw: &Gateway, message: &str) -> Response<Body> {
    gw.metrics.refused("unauthenticated");
    openai_error(
        StatusCode::UNAUTHORIZED,
        message,
        "invalid_request_error",
        Some("invalid_api_key"),
        None,
    )
}

fn not_ready(gw: &Gateway) -> Response<Body> {
    gw.metrics.refused("not_ready");
    openai_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The gateway has no route table yet; retry shortly.",
        "server_error",
        Some("not_ready"),
        None,
    )
}

fn models(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let Some(table) = gw.table.load_full() else {
        return not_ready(gw);
    };
    let Some(key) = presented_key(req, false) else {
        return unauthorized(
            gw,
            "You didn't provide an API key. Use an Authorization header: Bearer <key>.",
        );
    };
    if table.authenticate(key).is_none() {
        return unauthorized(gw, "Incorrect API key provided.");
    }
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
    let mut resp = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn chat(gw: &Arc<Gateway>, req: Request<Incoming>, request_id: &str) -> Response<Body> {
    let started = Instant::now();
    let started_at_ms = now_ms();
    let Some(table) = gw.table.load_full() else {
        return not_ready(gw);
    };
    let Some(presented) = presented_key(&req, false) else {
        return unauthorized(
            gw,
            "You didn't provide an API key. Use an Authorization header: Bearer <key>.",
        );
    };
    let Some(key) = table.authenticate(presented) else {
        return unauthorized(gw, "Incorrect API key provided.");
    };
    let key_id = Arc::clone(&key.id);

    let limit = gw.proxy.limits.max_body_bytes;
    let too_large = || {
        gw.metrics.refused("body_too_large");
        openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("The request body is larger than the limit of {limit} bytes."),
            "invalid_request_error",
            Some("request_too_large"),
            None,
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            if err
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return too_large();
            }
            return openai_error(
                StatusCode::BAD_REQUEST,
                "The request body could not be read.",
                "invalid_request_error",
                None,
                None,
            );
        }
    };
    let ctx = RequestCtx {
        request_id: request_id.to_string(),
        key_id,
        started,
        started_at_ms,
    };
    gw.proxy
        .chat_completions(&table, &parts.headers, &body, ctx)
        .await
}
