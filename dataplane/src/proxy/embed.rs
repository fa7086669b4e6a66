//! Embeddings on the request path. An [`EmbedRequest`] is routed, limited, failed over and
//! billed as a completion is (`Proxy::serve`, `Record`); what differs is one attempt: the
//! upstream's embeddings endpoint, and its answer rewritten into the client's shape.
//!
//! OpenAI-compatible upstreams are asked at `{base}/embeddings`; Gemini upstreams at
//! `{base}/v1beta/models/{id}:batchEmbedContents` (Google's API gives usage there only
//! sometimes, as `usageMetadata.promptTokenCount`; without it the input is estimated and the
//! record flagged so). Upstreams of other protocols have no
//! embeddings endpoint and are skipped (an `unsupported` attempt), so a model served only by
//! them answers 400 saying so.

use super::{
    Ask, Attempt, Body, Failure, INVALID_REQUEST, Proxy, Record, RequestCtx, check_success_head,
    json_response, ms_since, name_dropped, read_body, unserved, upstream_request,
};
use crate::limits::Permit;
use crate::protocol::bridge;
use crate::protocol::embeddings::{self, Client, EmbedRequest};
use crate::protocol::usage::Usage;
use crate::table::{Candidate, Protocol, Table, UpstreamCall};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use std::sync::Arc;
use std::time::Instant;

/// The request log's dialect of `POST /v1/embeddings`.
pub const OPENAI_EMBEDDINGS: &str = "embeddings";

/// The request log's dialect of an embeddings request: `embeddings` for OpenAI's endpoint, the
/// client dialect's own name for the others (Gemini's embed methods are Gemini requests).
pub fn log_name(shape: Client, errors: Protocol) -> &'static str {
    match shape {
        Client::OpenAi => OPENAI_EMBEDDINGS,
        Client::GeminiOne | Client::GeminiBatch => errors.name(),
    }
}

impl Proxy {
    /// An embeddings request written in `shape` (for Gemini's, `path_model` is the model of the
    /// path), once the key is known and the body read; errors are written in `errors`. A
    /// response that served nothing carries its [`super::Unserved`] note for the request log.
    #[allow(clippy::too_many_arguments)]
    pub async fn embed(
        self: &Arc<Self>,
        shape: Client,
        errors: Protocol,
        path_model: &str,
        table: &Table,
        body: &[u8],
        mut ctx: RequestCtx,
    ) -> Response<Body> {
        let parsed = match shape {
            Client::OpenAi => EmbedRequest::parse_openai(body),
            Client::GeminiOne => EmbedRequest::parse_gemini(path_model, body, false),
            Client::GeminiBatch => EmbedRequest::parse_gemini(path_model, body, true),
        };
        match parsed {
            Ok(req) => {
                // No client header reaches an embeddings upstream: none of them changes what
                // an embedding is, and the credential's account is the pool's.
                let mut resp = self
                    .serve(
                        table,
                        &HeaderMap::new(),
                        body,
                        Ask::Embed(&req, errors),
                        &mut ctx,
                    )
                    .await;
                if !resp.status().is_success() {
                    let note = unserved(&mut resp);
                    note.model = req.model.clone();
                    note.attempts = std::mem::take(&mut ctx.attempts);
                }
                resp
            }
            Err(refusal) => {
                let mut resp = json_response(
                    StatusCode::BAD_REQUEST,
                    bridge::refusal_body(errors, &refusal),
                );
                let note = unserved(&mut resp);
                note.error = INVALID_REQUEST.to_string();
                note.model = path_model.to_string();
                resp
            }
        }
    }

    /// One candidate's try at an embeddings request: its upstream's embeddings endpoint, the
    /// answer checked (one vector per input) and written in the client's shape, billed on the
    /// upstream's input count, or on the estimate, flagged, where it gives none.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn embed_attempt(
        self: &Arc<Self>,
        cand: &Candidate,
        client_body: &[u8],
        req: &EmbedRequest<'_>,
        errors: Protocol,
        ctx: &RequestCtx,
        model: &str,
        chain: Option<&str>,
        permit: &mut Option<Permit>,
    ) -> Result<Response<Body>, Attempt> {
        let unsupported = |message: String| Attempt::Failed(Failure::Unsupported(message));
        let provider = &cand.provider;
        let invalid_url =
            |_| Attempt::Failed(Failure::Invalid("embeddings URL is not a valid URI".into()));
        let (uri, outbound) = match provider.protocol {
            Protocol::OpenAiChat => (
                format!("{}/embeddings", provider.base_url)
                    .parse::<http::Uri>()
                    .map_err(invalid_url)?,
                req.openai_body(&cand.upstream_model),
            ),
            Protocol::Gemini => (
                cand.upstream_url(UpstreamCall::BatchEmbedContents)
                    .map_err(invalid_url)?,
                req.gemini_body(&cand.upstream_model),
            ),
            other => {
                return Err(unsupported(format!(
                    "No upstream serves embeddings for `{}`: provider `{}` speaks the {} protocol, which has no embeddings endpoint.",
                    req.model,
                    provider.name,
                    other.name()
                )));
            }
        };
        let outbound = outbound.map_err(unsupported)?;
        let upstream_req = upstream_request(cand, errors, uri, &HeaderMap::new(), outbound.body)
            .map_err(|e| Attempt::Failed(Failure::Connect(e.to_string())))?;
        let first_byte_timeout = provider
            .first_byte_timeout
            .unwrap_or(self.limits.first_byte_timeout);
        let idle_timeout = provider.idle_timeout.unwrap_or(self.limits.idle_timeout);
        let deadline = Instant::now() + first_byte_timeout;
        let resp = self
            .send(cand, errors, upstream_req, deadline, idle_timeout)
            .await?;
        check_success_head(resp.headers(), false).map_err(Attempt::Failed)?;
        let limit = provider
            .max_body_bytes
            .unwrap_or(self.limits.max_upstream_body_bytes);
        let bytes = read_body(resp.into_body(), idle_timeout, limit)
            .await
            .map_err(Attempt::Failed)?;
        let ttfb_ms = ms_since(ctx.started);
        let vectors = match provider.protocol {
            Protocol::Gemini => embeddings::read_gemini(&bytes, req.count()),
            _ => embeddings::read_openai(&bytes, req.count()),
        }
        .map_err(|e| Attempt::Failed(Failure::Invalid(e)))?;
        let estimate = req.token_estimate();
        let answer = req
            .encode(&vectors, vectors.prompt_tokens.unwrap_or(estimate))
            .map_err(|e| Attempt::Failed(Failure::Invalid(e)))?;
        let mut record = Record::for_attempt(self, cand, ctx, model, chain);
        record.ttfb_ms = ttfb_ms;
        record.input_estimate = estimate;
        record.request_bytes = client_body.len() as u64;
        record.dialect = log_name(req.client, errors);
        record.permit = permit.take();
        let usage = vectors.prompt_tokens.map(|input_tokens| Usage {
            input_tokens,
            ..Usage::default()
        });
        let answer = cand.redactor.bytes(Bytes::from(answer));
        if let Some(capture) = &record.capture {
            capture.response(&answer);
        }
        record.finish(usage, 0, 200);
        let mut out = json_response(StatusCode::OK, answer);
        name_dropped(out.headers_mut(), &outbound.dropped);
        Ok(out)
    }
}
