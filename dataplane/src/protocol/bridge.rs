//! The one place that knows how a client's dialect meets an upstream's: byte-for-byte
//! pass-through when they are the same, translation through the internal shape when they are
//! not. The request path asks here and never matches on a pair of dialects itself.
//!
//! Pass-through keeps every byte the client or the upstream sent except the model id (and, for
//! chat streams, the usage the gateway asks for to bill); the relay only reads what billing,
//! failover and the end need. Translation decodes with one dialect's module and encodes with
//! the other's.

use bytes::Bytes;
use http::HeaderName;

use super::Dialect;
use super::anthropic::{self, MessagesRequest};
use super::gemini::{self, Framing, GenerateRequest};
use super::openai_chat::{self, ChatRequest};
use super::openai_responses::{self, ResponsesRequest};
use super::shape::{
    Encoded, Event, Metering, Request, Response, StreamDecode, StreamEncode, StreamNote,
    TranslateError, UpstreamError,
};

/// A client's request, parsed in its own dialect as far as routing needs.
pub enum ClientRequest<'a> {
    Chat(ChatRequest<'a>),
    Messages(MessagesRequest<'a>),
    Responses(ResponsesRequest<'a>),
    Gemini(GenerateRequest<'a>),
}

/// Why a client's body was refused before routing, in words for the client (a 400 in its
/// dialect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    /// OpenAI's `param`, where the dialect has one.
    pub param: Option<&'static str>,
}

/// What an upstream gets: its body, and what could not be expressed in its dialect.
#[derive(Debug)]
pub struct Outbound {
    pub body: Bytes,
    /// Field paths dropped in translation (never for pass-through).
    pub dropped: Vec<String>,
}

/// Output tokens assumed for ranking when the request sets no limit.
pub const DEFAULT_OUTPUT_TOKENS_ESTIMATE: u64 = openai_chat::DEFAULT_OUTPUT_TOKENS_ESTIMATE;

impl<'a> ClientRequest<'a> {
    /// Parses `body` as a request of `dialect`. A Gemini request needs what its URL says
    /// ([`ClientRequest::parse_gemini`]); parsed here it is refused.
    pub fn parse(dialect: Dialect, body: &'a [u8]) -> Result<ClientRequest<'a>, Refusal> {
        match dialect {
            Dialect::Gemini => Err(Refusal {
                message: "The model is not specified in the URL.".into(),
                param: None,
            }),
            Dialect::OpenAiChat => ChatRequest::parse(body)
                .map(ClientRequest::Chat)
                .map_err(|e| Refusal {
                    message: e.message,
                    param: e.param,
                }),
            Dialect::Anthropic => MessagesRequest::parse(body)
                .map(ClientRequest::Messages)
                .map_err(|e| Refusal {
                    message: e.0,
                    param: None,
                }),
            Dialect::OpenAiResponses => ResponsesRequest::parse(body)
                .map(ClientRequest::Responses)
                .map_err(|e| Refusal {
                    message: e.message,
                    param: e.param,
                }),
        }
    }

    /// Parses `body` as a Gemini request for `model` (from the URL path), answered in `framing`
    /// (`None`: `generateContent`).
    pub fn parse_gemini(
        body: &'a [u8],
        model: &str,
        framing: Option<Framing>,
    ) -> Result<ClientRequest<'a>, Refusal> {
        GenerateRequest::parse(body, model, framing)
            .map(ClientRequest::Gemini)
            .map_err(|e| Refusal {
                message: e.0,
                param: None,
            })
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            ClientRequest::Chat(_) => Dialect::OpenAiChat,
            ClientRequest::Messages(_) => Dialect::Anthropic,
            ClientRequest::Responses(_) => Dialect::OpenAiResponses,
            ClientRequest::Gemini(_) => Dialect::Gemini,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            ClientRequest::Chat(r) => &r.model,
            ClientRequest::Messages(r) => &r.model,
            ClientRequest::Responses(r) => &r.model,
            ClientRequest::Gemini(r) => &r.model,
        }
    }

    pub fn stream(&self) -> bool {
        match self {
            ClientRequest::Chat(r) => r.stream,
            ClientRequest::Messages(r) => r.stream,
            ClientRequest::Responses(r) => r.stream,
            ClientRequest::Gemini(r) => r.stream(),
        }
    }

    /// The `content-type` of a streamed answer: Gemini's JSON-array stream is JSON; every other
    /// stream is server-sent events.
    pub fn stream_content_type(&self) -> &'static str {
        match self {
            ClientRequest::Gemini(r) if r.framing == Some(Framing::JsonArray) => "application/json",
            _ => "text/event-stream",
        }
    }

    /// The output limit the request sets, or the estimate ranking assumes.
    pub fn output_estimate(&self) -> u64 {
        match self {
            ClientRequest::Chat(r) => r.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS_ESTIMATE),
            ClientRequest::Messages(r) => r.max_tokens,
            ClientRequest::Responses(r) => r
                .max_output_tokens
                .unwrap_or(DEFAULT_OUTPUT_TOKENS_ESTIMATE),
            ClientRequest::Gemini(r) => r.output_estimate(),
        }
    }

    /// The body for an upstream that speaks `upstream` and calls the model `upstream_model`:
    /// the client's bytes with the model replaced, or a translation. `body` is the bytes this
    /// request was parsed from.
    pub fn upstream_body(
        &self,
        body: &[u8],
        upstream: Dialect,
        upstream_model: &str,
    ) -> Result<Outbound, TranslateError> {
        let passed = |body: Bytes| Outbound {
            body,
            dropped: Vec::new(),
        };
        match (self, upstream) {
            (ClientRequest::Chat(req), Dialect::OpenAiChat) => {
                // The gateway bills from the usage chunk, so it asks for one; the relay drops
                // it again when the client did not.
                let force = req.stream && !req.include_usage;
                return Ok(passed(req.rewrite(upstream_model, force)));
            }
            (ClientRequest::Messages(req), Dialect::Anthropic) => {
                return Ok(passed(req.rewrite(upstream_model)));
            }
            (ClientRequest::Responses(req), Dialect::OpenAiResponses) => {
                return Ok(passed(req.rewrite(upstream_model)));
            }
            // The model is in the URL: the body goes as the client sent it.
            (ClientRequest::Gemini(req), Dialect::Gemini) => {
                return Ok(passed(Bytes::copy_from_slice(req.body)));
            }
            (ClientRequest::Responses(req), _) => {
                if let Some(tool) = req.forced_builtin() {
                    return Err(TranslateError::new(format!(
                        "'tool_choice' requires the built-in tool '{tool}', which no upstream serving this model can run. Let the model choose ('auto') or offer it function tools instead."
                    )));
                }
            }
            _ => {}
        }
        // A Gemini client's OpenAPI schemas name types in upper case, which JSON Schema does not.
        let gemini_body = match self {
            ClientRequest::Gemini(_) => gemini::decode::json_schema_types(body),
            _ => None,
        };
        let body = gemini_body.as_deref().unwrap_or(body);
        let mut req = decode_request(self.dialect(), body)?;
        if let ClientRequest::Gemini(r) = self {
            // Gemini says these in the URL, not the body.
            req.model.clone_from(&r.model);
            req.stream = r.stream().then_some(true);
            req.include_usage = true;
        }
        let encoded = encode_request(upstream, &req, upstream_model)?;
        Ok(Outbound {
            body: Bytes::from(encoded.body),
            dropped: encoded.dropped,
        })
    }
}

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
static ANTHROPIC_TO_ANTHROPIC: [HeaderName; 2] =
    [ANTHROPIC_VERSION, HeaderName::from_static("anthropic-beta")];

/// The client's request headers an upstream gets: an allow-list by pair of dialects; every
/// other header stays behind (see `proxy::upstream_request` for why). Anthropic clients talking
/// to Anthropic keep `anthropic-version` (any version a client speaks is honoured) and
/// `anthropic-beta` (the features the request's fields rely on). A translated request is
/// written for the upstream's defaults, so it takes neither.
pub fn forwarded_headers(client: Dialect, upstream: Dialect) -> &'static [HeaderName] {
    match (client, upstream) {
        (Dialect::Anthropic, Dialect::Anthropic) => &ANTHROPIC_TO_ANTHROPIC,
        _ => &[],
    }
}

/// Whether the client's query string goes on to the upstream: only between Anthropic ends
/// (Claude Code's `?beta=true` selects features the body then uses).
pub fn forwards_query(client: Dialect, upstream: Dialect) -> bool {
    client == Dialect::Anthropic && upstream == Dialect::Anthropic
}

impl ClientRequest<'_> {
    /// A whole 200 answer from an upstream of `upstream`, as this client gets it: its bytes and
    /// the upstream's counts. `None` when the body is not an answer of the upstream's dialect
    /// (which is never relayed).
    pub fn response(&self, upstream: Dialect, body: Bytes) -> Option<(Bytes, Option<Metering>)> {
        match (self, upstream) {
            (ClientRequest::Chat(_), Dialect::OpenAiChat) => {
                // One parse says whether it is a completion and gives the counts and the charge.
                let completion = openai_chat::completion(&body)?;
                let metering = completion.usage.and_then(openai_chat::relay::metering);
                Some((body, metering))
            }
            (ClientRequest::Messages(_), Dialect::Anthropic) => {
                let message = anthropic::message(&body)?;
                Some((body, message.usage.map(anthropic::relay::metering)))
            }
            (ClientRequest::Responses(_), Dialect::OpenAiResponses) => {
                let response = openai_responses::response(&body)?;
                Some((body, response.metering))
            }
            (ClientRequest::Gemini(_), Dialect::Gemini) => {
                let answer = gemini::answer(&body)?;
                Some((body, answer.metering))
            }
            _ => {
                let response = decode_response(upstream, &body)?;
                let bytes = match self {
                    ClientRequest::Chat(r) => openai_chat::encode::response(&response, &r.model),
                    ClientRequest::Messages(r) => anthropic::encode::response(&response, &r.model),
                    ClientRequest::Responses(r) => {
                        openai_responses::encode::response_with(&response, &r.model, &r.echo())
                    }
                    ClientRequest::Gemini(r) => {
                        gemini::encode::response_with(&response, &r.model, r.include_thoughts)
                    }
                };
                Some((Bytes::from(bytes), response.metering))
            }
        }
    }
}

/// An upstream's refusal (status and body) as the client's dialect writes it.
pub fn upstream_error(
    client: Dialect,
    upstream: Dialect,
    status: u16,
    body: Bytes,
) -> (u16, Bytes) {
    if errors_of(client) == errors_of(upstream) {
        return (status, body);
    }
    let error = match upstream {
        Dialect::OpenAiChat => openai_chat::decode::error(status, &body),
        Dialect::Anthropic => anthropic::decode::error(status, &body),
        Dialect::OpenAiResponses => openai_responses::decode::error(status, &body),
        Dialect::Gemini => gemini::decode::error(status, &body),
    };
    let (s, b) = encode_error(client, &error);
    (s, Bytes::from(b))
}

/// The error shapes dialects write. OpenAI's two dialects share one error object, so errors
/// pass between them as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Errors {
    /// `{"error":{"message","type","param","code"}}`: chat completions and responses.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
    /// `{"error":{"code","message","status"}}`.
    Google,
}

fn errors_of(dialect: Dialect) -> Errors {
    match dialect {
        Dialect::OpenAiChat | Dialect::OpenAiResponses => Errors::OpenAi,
        Dialect::Anthropic => Errors::Anthropic,
        Dialect::Gemini => Errors::Google,
    }
}

/// An error the gateway itself answers with, in the client's dialect. `code` is OpenAI's
/// `code`; Anthropic's error type follows from the status.
pub fn error_body(client: Dialect, status: u16, message: &str, code: Option<&str>) -> Bytes {
    match errors_of(client) {
        Errors::OpenAi => {
            let kind = match status {
                429 => "rate_limit_error",
                s if s >= 500 => "server_error",
                _ => "invalid_request_error",
            };
            openai_chat::error_body(message, kind, None, code)
        }
        Errors::Anthropic => anthropic::error_body(anthropic::error_type(status), message),
        Errors::Google => Bytes::from(gemini::error_body(status, message)),
    }
}

/// How an upstream's stream becomes the client's: read and relayed as it is, or translated.
pub struct Stream {
    kind: StreamKind,
}

enum StreamKind {
    Chat(openai_chat::relay::Scan),
    Messages(anthropic::relay::Scan),
    Responses(openai_responses::relay::Scan),
    Gemini(gemini::relay::Scan),
    Translated(Box<Translator>),
}

/// A stream decoded in the upstream's dialect and encoded in the client's.
struct Translator {
    decoder: Box<dyn StreamDecode>,
    encoder: Box<dyn StreamEncode>,
    /// The events of the upstream event being handled (reused).
    events: Vec<Event>,
    metering: Option<Metering>,
}

impl Stream {
    /// The stream for `req` served by an upstream of `upstream`; `message_id` names the answer
    /// where the upstream's dialect does not carry an id the client's needs.
    pub fn new(req: &ClientRequest<'_>, upstream: Dialect, message_id: &str) -> Stream {
        let kind = match (req, upstream) {
            (ClientRequest::Chat(r), Dialect::OpenAiChat) => {
                StreamKind::Chat(openai_chat::relay::Scan::new(r.include_usage))
            }
            (ClientRequest::Messages(_), Dialect::Anthropic) => {
                StreamKind::Messages(anthropic::relay::Scan::default())
            }
            (ClientRequest::Responses(r), Dialect::OpenAiResponses) => {
                StreamKind::Responses(openai_responses::relay::Scan::new(&r.model))
            }
            (ClientRequest::Gemini(r), Dialect::Gemini) => {
                StreamKind::Gemini(gemini::relay::Scan::new(r.framing.unwrap_or(Framing::Sse)))
            }
            _ => {
                let decoder: Box<dyn StreamDecode> = match upstream {
                    Dialect::OpenAiChat => Box::new(openai_chat::decode::Stream::new(message_id)),
                    Dialect::Anthropic => Box::new(anthropic::decode::Stream::new()),
                    Dialect::OpenAiResponses => Box::new(openai_responses::decode::Stream::new()),
                    Dialect::Gemini => Box::new(gemini::decode::Stream::new()),
                };
                let encoder: Box<dyn StreamEncode> = match req {
                    ClientRequest::Chat(r) => {
                        Box::new(openai_chat::encode::Stream::new(&r.model, r.include_usage))
                    }
                    ClientRequest::Messages(r) => {
                        Box::new(anthropic::encode::Stream::new(&r.model, message_id))
                    }
                    ClientRequest::Responses(r) => Box::new(
                        openai_responses::encode::Stream::with_echo(&r.model, r.echo()),
                    ),
                    ClientRequest::Gemini(r) => Box::new(gemini::encode::Stream::new(
                        &r.model,
                        message_id,
                        r.framing.unwrap_or(Framing::Sse),
                        r.include_thoughts,
                    )),
                };
                StreamKind::Translated(Box::new(Translator {
                    decoder,
                    encoder,
                    events: Vec::new(),
                    metering: None,
                }))
            }
        };
        Stream { kind }
    }

    /// Whether the client's bytes are the upstream's (then the relay may pass events it does
    /// not need to read).
    pub fn is_translated(&self) -> bool {
        matches!(self.kind, StreamKind::Translated(_))
    }

    /// Handles one whole upstream event `raw`, pushing what the client gets onto `out`. An error
    /// the upstream reports reaches the client only once the stream is `committed` (as the
    /// dialect's own event when translated); before that the next candidate serves. Once
    /// committed, pass-through events that cannot carry usage, errors or the end are relayed
    /// without being parsed.
    pub fn event(&mut self, raw: Bytes, committed: bool, out: &mut Vec<Bytes>) -> StreamNote {
        let ev = crate::sse::parse(&raw);
        let data = ev.data.as_deref();
        match &mut self.kind {
            StreamKind::Chat(scan) => relayed(scan, &raw, ev.name, data, committed, out),
            StreamKind::Messages(scan) => relayed(scan, &raw, ev.name, data, committed, out),
            StreamKind::Responses(scan) => {
                if data.is_some() {
                    scan.observe(&raw);
                }
                relayed(scan, &raw, ev.name, data, committed, out)
            }
            StreamKind::Gemini(scan) => scan.event(&raw, data, committed, out),
            StreamKind::Translated(t) => {
                let Some(data) = data else {
                    return StreamNote::Nothing;
                };
                t.event(ev.name, data, committed, out)
            }
        }
    }

    /// The upstream ended cleanly: close what a translated stream still has open.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        let mut buf = Vec::new();
        match &mut self.kind {
            StreamKind::Translated(t) => t.encoder.finish(&mut buf),
            StreamKind::Gemini(scan) => scan.finish(out),
            StreamKind::Chat(_) | StreamKind::Messages(_) | StreamKind::Responses(_) => {}
        }
        if !buf.is_empty() {
            out.push(Bytes::from(buf));
        }
    }

    /// The event that ends a failed stream, in the client's dialect.
    pub fn error_event(&self, message: &str) -> Bytes {
        match &self.kind {
            StreamKind::Chat(_) => openai_chat::stream_error_event(message),
            StreamKind::Messages(_) => anthropic::stream_error_event(message),
            StreamKind::Responses(scan) => scan.error_event(message),
            StreamKind::Gemini(scan) => scan.error_event(message),
            StreamKind::Translated(t) => Bytes::from(t.encoder.error_event(message)),
        }
    }

    /// What the upstream counted so far.
    pub fn metering(&self) -> Option<Metering> {
        match &self.kind {
            StreamKind::Chat(scan) => scan.metering(),
            StreamKind::Messages(scan) => scan.metering(),
            StreamKind::Responses(scan) => scan.metering(),
            StreamKind::Gemini(scan) => scan.metering(),
            StreamKind::Translated(t) => t.metering,
        }
    }
}

/// A pass-through scanner, as `relayed` drives it.
trait Relay {
    fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool;
    fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool);
}

impl Relay for openai_chat::relay::Scan {
    fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool {
        openai_chat::relay::Scan::may_matter(self, name, data)
    }
    fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool) {
        openai_chat::relay::Scan::event(self, name, data)
    }
}

impl Relay for openai_responses::relay::Scan {
    fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool {
        openai_responses::relay::Scan::may_matter(self, name, data)
    }
    fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool) {
        openai_responses::relay::Scan::event(self, name, data)
    }
}

impl Relay for anthropic::relay::Scan {
    fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool {
        anthropic::relay::Scan::may_matter(self, name, data)
    }
    fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool) {
        anthropic::relay::Scan::event(self, name, data)
    }
}

/// One event of a pass-through stream: relayed as the upstream sent it, unless the scanner holds
/// it back or it is an error before commit. Once committed, an event that cannot carry usage,
/// an error or the end is relayed without being parsed.
fn relayed(
    scan: &mut impl Relay,
    raw: &Bytes,
    name: Option<&[u8]>,
    data: Option<&[u8]>,
    committed: bool,
    out: &mut Vec<Bytes>,
) -> StreamNote {
    if committed && !data.is_some_and(|d| scan.may_matter(name, d)) {
        let note = if data.is_some() {
            StreamNote::Content
        } else {
            StreamNote::Nothing
        };
        out.push(raw.clone());
        return note;
    }
    let (note, relay) = scan.event(name, data);
    let held = matches!(note, StreamNote::Error(_)) && !committed;
    if relay && !held {
        out.push(raw.clone());
    }
    note
}

/// The 400 for a body refused before routing, in the client's dialect.
pub fn refusal_body(client: Dialect, refusal: &Refusal) -> Bytes {
    match errors_of(client) {
        Errors::OpenAi => openai_chat::error_body(
            &refusal.message,
            "invalid_request_error",
            refusal.param,
            None,
        ),
        Errors::Anthropic => anthropic::error_body("invalid_request_error", &refusal.message),
        Errors::Google => Bytes::from(gemini::error_body(400, &refusal.message)),
    }
}

impl Translator {
    /// One upstream event: decoded, then encoded for the client. An error the upstream reports
    /// becomes the client's own error event once committed, and nothing before (the next
    /// candidate serves).
    fn event(
        &mut self,
        name: Option<&[u8]>,
        data: &[u8],
        committed: bool,
        out: &mut Vec<Bytes>,
    ) -> StreamNote {
        self.events.clear();
        let note = self.decoder.event(name, data, &mut self.events);
        // Counts count even on an error event (OpenRouter reports usage beside a mid-stream
        // error): what the upstream spent is billed, as on a pass-through stream.
        for event in &self.events {
            if let Event::Metering(m) = event {
                self.metering = Some(*m);
            }
        }
        if let StreamNote::Error(message) = &note {
            if committed {
                out.push(Bytes::from(self.encoder.error_event(message)));
            }
            return note;
        }
        let mut buf = Vec::new();
        for event in &self.events {
            self.encoder.event(event, &mut buf);
        }
        if !buf.is_empty() {
            out.push(Bytes::from(buf));
        }
        note
    }
}

/// A client's request in the shape.
pub fn decode_request(client: Dialect, body: &[u8]) -> Result<Request<'_>, TranslateError> {
    match client {
        Dialect::OpenAiChat => openai_chat::decode::request(body),
        Dialect::Anthropic => anthropic::decode::request(body),
        Dialect::OpenAiResponses => openai_responses::decode::request(body),
        Dialect::Gemini => gemini::decode::request(body),
    }
}

/// A request in the shape as an upstream's body.
pub fn encode_request(
    upstream: Dialect,
    req: &Request<'_>,
    upstream_model: &str,
) -> Result<Encoded, TranslateError> {
    match upstream {
        Dialect::OpenAiChat => openai_chat::encode::request(req, upstream_model),
        Dialect::Anthropic => anthropic::encode::request(req, upstream_model),
        Dialect::OpenAiResponses => openai_responses::encode::request(req, upstream_model),
        Dialect::Gemini => gemini::encode::request(req, upstream_model),
    }
}

/// An upstream's whole answer in the shape; `None` when it is not one of its dialect.
pub fn decode_response(upstream: Dialect, body: &[u8]) -> Option<Response> {
    match upstream {
        Dialect::OpenAiChat => openai_chat::decode::response(body),
        Dialect::Anthropic => anthropic::decode::response(body),
        Dialect::OpenAiResponses => openai_responses::decode::response(body),
        Dialect::Gemini => gemini::decode::response(body),
    }
}

/// An upstream's refusal as the client's dialect writes it.
pub fn encode_error(client: Dialect, error: &UpstreamError) -> (u16, Vec<u8>) {
    match client {
        Dialect::OpenAiChat => openai_chat::encode::error(error),
        Dialect::Anthropic => anthropic::encode::error(error),
        Dialect::OpenAiResponses => openai_responses::encode::error(error),
        Dialect::Gemini => gemini::encode::error(error),
    }
}

#[cfg(test)]
mod tests;
