//! Gemini's HTTP surface: the paths Google's clients call (Gemini CLI, the google-genai SDKs),
//! their key placements, and the models list in Google's shape.
//!
//! - `POST /v1beta/models/{model}:{method}`, and the `/v1/models/…` spelling (google-genai's
//!   default API version is `v1`). `{model}` may contain `/` (`deepseek/deepseek-chat`), so the
//!   method is what follows the **last** `:`; the model is percent-decoded (`%2F`). Methods:
//!   `generateContent`, `streamGenerateContent` (`?alt=sse` for server-sent events, else
//!   Google's JSON-array stream), `countTokens`, and the embedding methods `embedContent` and
//!   `batchEmbedContents` (`server::embeddings`); [`serve`] dispatches one arm per method.
//! - `GET /v1beta/models` (paged with `pageSize` / `pageToken`) and `GET /v1beta/models/{model}`,
//!   in Google's `ListModelsResponse` / `Model` shape. `GET /v1/models` stays OpenAI's list
//!   unless the request carries its key Google's way (`x-goog-api-key` or `?key=`).
//! - The key comes from `x-goog-api-key`, `?key=` or `Authorization: Bearer`
//!   (`server::presented_key`). The query is never logged, never forwarded upstream and never
//!   put in an error: a `?key=` value stays in this request.
//!
//! Every refusal is in Google's error shape (`{"error":{"code","message","status"}}`) through
//! `proxy::client_error` with [`Protocol::Gemini`]; nothing refused here reaches an upstream.

use crate::gateway::Gateway;
use crate::protocol::embeddings::Client as Embed;
use crate::protocol::gemini::Framing;
use crate::proxy::{Body, UrlModel, client_error, json_response};
use crate::server;
use crate::table::{Protocol, Table};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use std::sync::Arc;

/// What a Gemini path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `/v1beta/models`: the list.
    List,
    /// `/v1beta/models/{model}`: one model.
    Model(String),
    /// `/v1beta/models/{model}:{method}`.
    Method { model: String, method: String },
    /// A Gemini path that names nothing served here (`/v1beta/files`, a model that is not
    /// percent-encoded properly).
    Unknown(&'static str),
}

/// The API versions served, as path prefixes.
const VERSIONS: [&str; 2] = ["/v1beta/", "/v1/"];

/// The methods a listed model supports, as Google's `supportedGenerationMethods` names them.
/// The route table does not say which models embed, so the embedding methods are served for
/// any model (`SERVED_METHODS`) but not advertised.
pub const SUPPORTED_METHODS: &[&str] = &["generateContent", "streamGenerateContent", "countTokens"];

/// Every method [`serve`] answers.
const SERVED_METHODS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
];

/// Models per page of the list when the request names no `pageSize`, and the most a page
/// holds: Google's own default and maximum.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

impl Call {
    /// The call a path names, or `None` when it is not a Gemini path. `/v1/models/…` is Gemini
    /// only with a method or with Google's key placement (`google_key`); otherwise it is left to
    /// OpenAI's routes.
    pub fn of(path: &str, google_key: bool) -> Option<Call> {
        if path == "/v1beta/models" || path == "/v1beta/models/" {
            return Some(Call::List);
        }
        let (version, rest) = VERSIONS
            .iter()
            .find_map(|v| path.strip_prefix(v).map(|rest| (*v, rest)))?;
        let Some(named) = rest.strip_prefix("models/") else {
            // Any other v1beta path is Gemini's (and unknown); a /v1/ one is OpenAI's.
            return (version == "/v1beta/").then_some(Call::Unknown("path"));
        };
        match named.rfind(':') {
            Some(at) => {
                let (model, method) = (&named[..at], &named[at + 1..]);
                Some(match percent_decode(model) {
                    Some(model) => Call::Method {
                        model,
                        method: method.to_string(),
                    },
                    None => Call::Unknown("model"),
                })
            }
            None if version == "/v1beta/" || google_key => Some(match percent_decode(named) {
                Some(model) if !model.is_empty() => Call::Model(model),
                _ => Call::Unknown("model"),
            }),
            None => None,
        }
    }
}

/// `%XX` sequences decoded; `None` for a malformed one or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `name`, percent-decoded (`+` as a space, as forms write it).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(&v.replace('+', " ")))?
    })
}

/// Whether the request carries its key Google's way (`x-goog-api-key` or `?key=`).
pub fn google_key(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(GOOG_API_KEY) || query_param(req.uri().query(), "key").is_some()
}

/// The header Google's clients send their key in.
pub const GOOG_API_KEY: &str = "x-goog-api-key";

/// Serves a Gemini call. Adding a method is one arm of the `match`.
pub async fn serve(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    request_id: &str,
    call: Call,
) -> Response<Body> {
    match call {
        Call::List | Call::Model(_) if req.method() != Method::GET => {
            method_not_allowed(&req, "GET")
        }
        Call::List => list_models(gw, &req),
        Call::Model(model) => get_model(gw, &req, &model),
        Call::Method { .. } if req.method() != Method::POST => method_not_allowed(&req, "POST"),
        Call::Method { model, method } => match method.as_str() {
            "generateContent" => {
                let url = UrlModel {
                    model,
                    framing: None,
                };
                server::proxied(gw, req, request_id, Protocol::Gemini, Some(url)).await
            }
            "streamGenerateContent" => {
                let framing = if query_param(req.uri().query(), "alt").as_deref() == Some("sse") {
                    Framing::Sse
                } else {
                    Framing::JsonArray
                };
                let url = UrlModel {
                    model,
                    framing: Some(framing),
                };
                server::proxied(gw, req, request_id, Protocol::Gemini, Some(url)).await
            }
            "countTokens" => count_tokens(gw, req, &model).await,
            "embedContent" => {
                server::embeddings(
                    gw,
                    req,
                    request_id,
                    Embed::GeminiOne,
                    Protocol::Gemini,
                    model,
                )
                .await
            }
            "batchEmbedContents" => {
                let shape = Embed::GeminiBatch;
                server::embeddings(gw, req, request_id, shape, Protocol::Gemini, model).await
            }
            other => not_found(&format!(
                "Method {other:?} is not found for model {model:?}: this gateway serves {}.",
                SERVED_METHODS.join(", ")
            )),
        },
        Call::Unknown(what) => not_found(&format!(
            "The {what} in {} is not served by this gateway.",
            req.uri().path()
        )),
    }
}

fn not_found(message: &str) -> Response<Body> {
    client_error(Protocol::Gemini, StatusCode::NOT_FOUND, message, None)
}

fn method_not_allowed(req: &Request<Incoming>, allowed: &'static str) -> Response<Body> {
    let mut resp = client_error(
        Protocol::Gemini,
        StatusCode::METHOD_NOT_ALLOWED,
        &format!(
            "Method {} is not allowed on {}; use {allowed}.",
            req.method(),
            req.uri().path()
        ),
        None,
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

/// The 401 of a request without a key, or with one that is not a key, in Google's shape; a
/// wrong key carries the `ErrorInfo` reason Google gives one (`API_KEY_INVALID`), so that
/// clients and gateways reading the reason tell it apart.
///
/// 401 `UNAUTHENTICATED` rather than Google's own 400 (bad key) or 403 (no key): Gemini CLI
/// takes a 401 as an authentication error (`isAuthenticationError`; interactively it opens its
/// sign-in dialog, so the user can fix the key), while a 400 reads as a malformed request; the
/// google-genai SDKs raise a `ClientError` for any 4xx either way. It is also what every other
/// dialect of this gateway answers.
pub fn unauthenticated(message: &str, wrong_key: bool) -> Response<Body> {
    let mut error = serde_json::json!({
        "code": 401,
        "message": message,
        "status": "UNAUTHENTICATED",
    });
    if wrong_key {
        error["details"] = serde_json::json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "keyplane",
        }]);
    }
    let body = serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default();
    let mut resp = json_response(StatusCode::UNAUTHORIZED, body);
    crate::proxy::unserved(&mut resp).error = "invalid_api_key".to_string();
    resp
}

/// One model in Google's `Model` shape. Token limits are left out: the route table does not
/// carry them, and a wrong limit is worse than none (every field of `Model` is optional to
/// Google's SDKs).
fn model_object(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("models/{name}"),
        "version": "keyplane",
        "displayName": name,
        "description": format!("{name}, served by Keyplane from its cheapest healthy upstream."),
        "supportedGenerationMethods": SUPPORTED_METHODS,
    })
}

// The error is the refusal itself, returned to the client as is (as `server::authenticate`).
#[allow(clippy::result_large_err)]
fn table_of(gw: &Gateway, req: &Request<Incoming>) -> Result<Arc<Table>, Response<Body>> {
    server::authenticate(gw, req, Protocol::Gemini).map(|(table, _)| table)
}

/// `GET /v1beta/models` (and `GET /v1/models` with Google's key placement): every model and
/// chain name of the table, sorted, `pageSize` at a time. The page token is the last name of
/// the page before, hex-encoded, so a page follows on from where the last one ended even if
/// the table changed in between.
pub fn list_models(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    let table = match table_of(gw, req) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let query = req.uri().query();
    let size = match query_param(query, "pageSize") {
        None => DEFAULT_PAGE_SIZE,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if n <= 0 => DEFAULT_PAGE_SIZE,
            Ok(n) => usize::try_from(n)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
            Err(_) => {
                return client_error(
                    Protocol::Gemini,
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid value at 'page_size' ({text:?}): not an integer."),
                    None,
                );
            }
        },
    };
    let after = match query_param(query, "pageToken").filter(|t| !t.is_empty()) {
        None => None,
        Some(token) => match hex_decode(&token) {
            Some(name) => Some(name),
            None => {
                return client_error(
                    Protocol::Gemini,
                    StatusCode::BAD_REQUEST,
                    "Invalid page token: send the nextPageToken of the page before.",
                    None,
                );
            }
        },
    };
    let names = &table.model_names;
    let start = match &after {
        Some(name) => names.partition_point(|n| n.as_str() <= name.as_str()),
        None => 0,
    };
    let page = &names[start.min(names.len())..(start + size).min(names.len())];
    let mut body = serde_json::json!({
        "models": page.iter().map(|n| model_object(n)).collect::<Vec<_>>(),
    });
    if start + size < names.len()
        && let Some(last) = page.last()
    {
        body["nextPageToken"] = serde_json::Value::String(hex_encode(last));
    }
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `GET /v1beta/models/{model}`.
fn get_model(gw: &Gateway, req: &Request<Incoming>, model: &str) -> Response<Body> {
    let table = match table_of(gw, req) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let name = model.strip_prefix("models/").unwrap_or(model);
    if !(table.models.contains_key(name) || table.chains.contains_key(name)) {
        return not_found(&format!("models/{name} is not found."));
    }
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&model_object(name)).unwrap_or_default(),
    )
}

/// `POST …/models/{model}:countTokens`: the key is checked (and its model allow-list), the
/// body read within the limits, then [`crate::proxy::Proxy::gemini_count_tokens`]. Not billed
/// and not in the request log: nothing is generated.
async fn count_tokens(gw: &Arc<Gateway>, req: Request<Incoming>, model: &str) -> Response<Body> {
    let (table, key) = match server::authenticate(gw, &req, Protocol::Gemini) {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    if let Some(p) = &key.policy
        && !p.model_allowed(model)
    {
        gw.metrics.key_limit_refused("model_not_allowed", "models");
        return client_error(
            Protocol::Gemini,
            StatusCode::FORBIDDEN,
            &format!("This API key may not use the model `{model}`."),
            Some("model_not_allowed"),
        );
    }
    let (parts, body) = match server::read_body(gw, req, Protocol::Gemini).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    gw.proxy
        .gemini_count_tokens(&table, model, &parts.headers, &body)
        .await
}

pub(crate) fn hex_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

pub(crate) fn hex_decode(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) || text.len() > 2048 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(model: &str, method: &str) -> Option<Call> {
        Some(Call::Method {
            model: model.into(),
            method: method.into(),
        })
    }

    #[test]
    fn paths_split_the_method_at_the_last_colon_and_decode_the_model() {
        assert_eq!(
            Call::of(
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                false
            ),
            method("gemini-2.5-flash", "streamGenerateContent")
        );
        assert_eq!(
            Call::of("/v1/models/deepseek/deepseek-chat:generateContent", false),
            method("deepseek/deepseek-chat", "generateContent")
        );
        assert_eq!(
            Call::of("/v1beta/models/deepseek%2Fdeepseek-chat:countTokens", false),
            method("deepseek/deepseek-chat", "countTokens")
        );
        assert_eq!(
            Call::of("/v1beta/models/a:b:generateContent", false),
            method("a:b", "generateContent")
        );
        assert_eq!(
            Call::of("/v1beta/models/x:", false),
            method("x", ""),
            "an empty method is an unknown one"
        );
        assert_eq!(Call::of("/v1beta/models", false), Some(Call::List));
        assert_eq!(
            Call::of("/v1beta/models/google/gemini-2.5-pro", false),
            Some(Call::Model("google/gemini-2.5-pro".into()))
        );
        assert_eq!(
            Call::of("/v1beta/files", false),
            Some(Call::Unknown("path"))
        );
        assert_eq!(
            Call::of("/v1beta/models/bad%zz:generateContent", false),
            Some(Call::Unknown("model"))
        );
        // /v1/ paths without a method are OpenAI's unless the key came Google's way.
        assert_eq!(Call::of("/v1/models/gpt-4o", false), None);
        assert_eq!(
            Call::of("/v1/models/gpt-4o", true),
            Some(Call::Model("gpt-4o".into()))
        );
        for openai in [
            "/v1/chat/completions",
            "/v1/models",
            "/v1/messages",
            "/healthz",
        ] {
            assert_eq!(Call::of(openai, true), None, "{openai}");
        }
    }

    #[test]
    fn query_params_and_page_tokens() {
        let q = Some("alt=sse&key=AIza%2Bkey&pageSize=2");
        assert_eq!(query_param(q, "alt").as_deref(), Some("sse"));
        assert_eq!(query_param(q, "key").as_deref(), Some("AIza+key"));
        assert_eq!(query_param(q, "pageToken"), None);
        assert_eq!(query_param(None, "key"), None);
        assert_eq!(query_param(Some("key"), "key").as_deref(), Some(""));
        for name in ["google/gemini-2.5-flash", "m", "é/ü"] {
            assert_eq!(hex_decode(&hex_encode(name)).as_deref(), Some(name));
        }
        for bad in ["abc", "zz", "ff"] {
            assert_eq!(hex_decode(bad), None, "{bad}");
        }
    }
}
