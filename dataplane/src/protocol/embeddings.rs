//! Embeddings on the wire: OpenAI's `POST /v1/embeddings` and Gemini's `:embedContent` /
//! `:batchEmbedContents`, their requests and responses, and the one request both are read into.
//!
//! Shapes and their sources:
//!
//! - OpenAI request: `model`, `input` (a string, an array of strings, an array of token ids, or
//!   an array of token-id arrays; at most 2,048 inputs, none empty), `encoding_format` (`float`
//!   or `base64`), `dimensions`, `user` (the `openai` Python SDK's `EmbeddingCreateParams`).
//!   Response `{"object":"list","data":[{"object":"embedding","index":i,"embedding":[…] | "…"}],
//!   "model","usage":{"prompt_tokens","total_tokens"}}`; `base64` is the little-endian `f32`
//!   bytes of the vector, which the SDK decodes with `numpy.frombuffer(…, dtype="float32")`.
//! - Gemini `embedContent` request `{content:{parts:[{text}]}, taskType, title,
//!   outputDimensionality}` → `{"embedding":{"values":[…]}}`; `batchEmbedContents`
//!   `{requests:[{model:"models/ID", content, taskType, title, outputDimensionality}]}` →
//!   `{"embeddings":[{"values":[…]}], "usageMetadata"?: {"promptTokenCount"}}` (Google's API
//!   reference, and the google-genai SDK's `_EmbedContentParametersPrivate_to_mldev` /
//!   `_EmbedContentResponse_from_mldev`, which always call `:batchEmbedContents` and read an
//!   optional `usageMetadata`). Proto JSON names are accepted in either case (`taskType` or
//!   `task_type`), as Google's front end does.
//!
//! Vectors are kept as the upstream's JSON text whenever the client takes the same form (a float
//! array stays the bytes it came as); they are decoded only to change form: a float array to
//! OpenAI's base64, or base64 to floats.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::bridge::{Outbound, Refusal};
use super::json::{Entries, first_byte, write_object};

/// Most inputs one OpenAI request may carry (OpenAI's own limit).
pub const MAX_INPUTS: usize = 2048;

/// Most requests one Gemini `batchEmbedContents` call takes (Google's limit): a larger request
/// cannot go to a Gemini upstream in one call.
pub const MAX_GEMINI_BATCH: usize = 100;

/// The shape a client wrote its request in, and expects its answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// OpenAI's `/v1/embeddings`.
    OpenAi,
    /// Gemini's `:embedContent`: one content, one `embedding`.
    GeminiOne,
    /// Gemini's `:batchEmbedContents`: `requests`, answered with `embeddings`.
    GeminiBatch,
}

/// How an OpenAI client wants its vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// Little-endian `f32` bytes, base64 (standard alphabet, padded).
    Base64,
}

/// What is to be embedded.
#[derive(Debug)]
pub enum Inputs<'a> {
    /// OpenAI strings.
    Texts(Vec<String>),
    /// OpenAI token-id arrays (one per input).
    Tokens(Vec<Vec<u32>>),
    /// Gemini contents, one per input.
    Contents(Vec<Content<'a>>),
}

/// One Gemini input: its content as sent, its text (the text parts joined by a newline; `None`
/// when a part is not text), and its per-input options.
#[derive(Debug)]
pub struct Content<'a> {
    pub content: &'a RawValue,
    pub text: Option<String>,
    pub task_type: Option<&'a RawValue>,
    pub title: Option<&'a RawValue>,
    pub dimensions: Option<u32>,
}

/// An embeddings request in any client shape, as far as routing and the upstreams need it.
#[derive(Debug)]
pub struct EmbedRequest<'a> {
    pub client: Client,
    /// The model the client asked for (Gemini: from the path).
    pub model: String,
    pub inputs: Inputs<'a>,
    /// OpenAI's `dimensions`, or the one `outputDimensionality` every Gemini input shares.
    pub dimensions: Option<u32>,
    /// Gemini inputs disagree on `outputDimensionality` (an OpenAI upstream takes one).
    mixed_dimensions: bool,
    pub encoding: Encoding,
    /// The OpenAI client's top-level entries, passed on with only `model` replaced.
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

fn refusal(message: impl Into<String>, param: Option<&'static str>) -> Refusal {
    Refusal {
        message: message.into(),
        param,
    }
}

/// OpenAI's `input` in its four forms; anything else fails to match.
#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct GeminiContent {
    #[serde(default)]
    parts: Vec<GeminiPart>,
}

#[derive(Deserialize)]
struct GeminiPart {
    text: Option<String>,
}

#[derive(Deserialize)]
struct GeminiItem<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow, rename = "taskType", alias = "task_type")]
    task_type: Option<&'a RawValue>,
    #[serde(borrow)]
    title: Option<&'a RawValue>,
    #[serde(rename = "outputDimensionality", alias = "output_dimensionality")]
    output_dimensionality: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct GeminiBatch<'a> {
    #[serde(borrow)]
    requests: Option<Vec<&'a RawValue>>,
}

impl<'a> EmbedRequest<'a> {
    /// Reads an OpenAI `/v1/embeddings` body; a refusal is a 400 naming the field.
    pub fn parse_openai(body: &'a [u8]) -> Result<EmbedRequest<'a>, Refusal> {
        let not_json = || {
            refusal(
                "We could not parse the JSON body of your request. The API expects a JSON object.",
                None,
            )
        };
        if first_byte(body) != Some(b'{') {
            return Err(not_json());
        }
        let entries = serde_json::from_slice::<Entries<'a>>(body)
            .map_err(|_| not_json())?
            .0;
        let get = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let model = match get("model").map(|v| serde_json::from_str::<String>(v.get())) {
            Some(Ok(m)) if !m.is_empty() => m,
            Some(_) => {
                return Err(refusal(
                    "'model' must be a non-empty string.",
                    Some("model"),
                ));
            }
            None => {
                return Err(refusal(
                    "Missing required parameter: 'model'.",
                    Some("model"),
                ));
            }
        };
        let Some(raw_input) = get("input") else {
            return Err(refusal(
                "Missing required parameter: 'input'.",
                Some("input"),
            ));
        };
        let bad_input = || {
            refusal(
                "'input' must be a string, an array of strings, an array of token ids, or an array of token-id arrays.",
                Some("input"),
            )
        };
        let input =
            serde_json::from_str::<OpenAiInput>(raw_input.get()).map_err(|_| bad_input())?;
        let inputs = match input {
            OpenAiInput::Text(t) => Inputs::Texts(vec![t]),
            OpenAiInput::Texts(ts) => Inputs::Texts(ts),
            OpenAiInput::Tokens(ids) => Inputs::Tokens(vec![ids]),
            OpenAiInput::TokenLists(lists) => Inputs::Tokens(lists),
        };
        let (count, any_empty) = match &inputs {
            Inputs::Texts(ts) => (ts.len(), ts.iter().any(String::is_empty)),
            Inputs::Tokens(ls) => (ls.len(), ls.iter().any(Vec::is_empty)),
            Inputs::Contents(_) => (0, false),
        };
        if count == 0 {
            return Err(refusal(
                "'input' must not be an empty array.",
                Some("input"),
            ));
        }
        if any_empty {
            return Err(refusal(
                "'input' cannot be an empty string or an empty token array.",
                Some("input"),
            ));
        }
        if count > MAX_INPUTS {
            return Err(refusal(
                format!("'input' holds {count} inputs; at most {MAX_INPUTS} are allowed."),
                Some("input"),
            ));
        }
        let encoding = match get("encoding_format").map(|v| v.get()) {
            None | Some("null") | Some("\"float\"") => Encoding::Float,
            Some("\"base64\"") => Encoding::Base64,
            Some(_) => {
                return Err(refusal(
                    "'encoding_format' must be 'float' or 'base64'.",
                    Some("encoding_format"),
                ));
            }
        };
        let dimensions = match get("dimensions").map(|v| v.get()) {
            None | Some("null") => None,
            Some(text) => match text.parse::<u32>() {
                Ok(d) if d > 0 => Some(d),
                _ => {
                    return Err(refusal(
                        "'dimensions' must be a positive integer.",
                        Some("dimensions"),
                    ));
                }
            },
        };
        if let Some(user) = get("user")
            && user.get() != "null"
            && serde_json::from_str::<String>(user.get()).is_err()
        {
            return Err(refusal("'user' must be a string.", Some("user")));
        }
        Ok(EmbedRequest {
            client: Client::OpenAi,
            model,
            inputs,
            dimensions,
            mixed_dimensions: false,
            encoding,
            entries,
        })
    }

    /// Reads a Gemini `:embedContent` (`batch` false) or `:batchEmbedContents` body for
    /// `model`, the model of the request's path.
    pub fn parse_gemini(
        model: &str,
        body: &'a [u8],
        batch: bool,
    ) -> Result<EmbedRequest<'a>, Refusal> {
        let not_json =
            |e: serde_json::Error| refusal(format!("Invalid JSON payload received. {e}"), None);
        if first_byte(body) != Some(b'{') {
            return Err(refusal(
                "Invalid JSON payload received. The request body must be a JSON object.",
                None,
            ));
        }
        let items: Vec<&'a RawValue> = if batch {
            match serde_json::from_slice::<GeminiBatch<'a>>(body)
                .map_err(not_json)?
                .requests
            {
                Some(r) if !r.is_empty() => r,
                _ => {
                    return Err(refusal(
                        "* BatchEmbedContentsRequest.requests: at least one request is required.",
                        None,
                    ));
                }
            }
        } else {
            vec![serde_json::from_slice::<&'a RawValue>(body).map_err(not_json)?]
        };
        if items.len() > MAX_INPUTS {
            return Err(refusal(
                format!(
                    "* BatchEmbedContentsRequest.requests: at most {MAX_INPUTS} requests are allowed."
                ),
                None,
            ));
        }
        let mut contents = Vec::with_capacity(items.len());
        for (i, raw) in items.iter().enumerate() {
            let at = if batch {
                format!("requests[{i}].")
            } else {
                String::new()
            };
            if first_byte(raw.get().as_bytes()) != Some(b'{') {
                return Err(refusal(format!("* {at}: must be an object."), None));
            }
            let item: GeminiItem<'a> = serde_json::from_str(raw.get())
                .map_err(|e| refusal(format!("Invalid value at '{at}': {e}"), None))?;
            let Some(content) = item.content else {
                return Err(refusal(format!("* {at}content: required field."), None));
            };
            let parts = match serde_json::from_str::<GeminiContent>(content.get()) {
                Ok(c) if first_byte(content.get().as_bytes()) == Some(b'{') => c.parts,
                _ => {
                    return Err(refusal(
                        format!("Invalid value at '{at}content': it must be a Content object."),
                        None,
                    ));
                }
            };
            if parts.is_empty() {
                return Err(refusal(
                    format!("* {at}content.parts: must contain at least one part."),
                    None,
                ));
            }
            let text = parts
                .iter()
                .map(|p| p.text.as_deref())
                .collect::<Option<Vec<&str>>>()
                .map(|t| t.join("\n"));
            if text.as_deref() == Some("") {
                return Err(refusal(
                    format!("* {at}content: the text to embed is empty."),
                    None,
                ));
            }
            let dimensions = match item.output_dimensionality {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => match v.as_u64().and_then(|d| u32::try_from(d).ok()) {
                    Some(d) if d > 0 => Some(d),
                    _ => {
                        return Err(refusal(
                            format!(
                                "Invalid value at '{at}output_dimensionality': it must be a positive integer."
                            ),
                            None,
                        ));
                    }
                },
            };
            for (name, value) in [("task_type", item.task_type), ("title", item.title)] {
                if let Some(v) = value
                    && first_byte(v.get().as_bytes()) != Some(b'"')
                {
                    return Err(refusal(
                        format!("Invalid value at '{at}{name}': it must be a string."),
                        None,
                    ));
                }
            }
            contents.push(Content {
                content,
                text,
                task_type: item.task_type,
                title: item.title,
                dimensions,
            });
        }
        let dimensions = contents.first().and_then(|c| c.dimensions);
        let mixed_dimensions = contents.iter().any(|c| c.dimensions != dimensions);
        Ok(EmbedRequest {
            client: if batch {
                Client::GeminiBatch
            } else {
                Client::GeminiOne
            },
            model: model.to_string(),
            inputs: Inputs::Contents(contents),
            dimensions,
            mixed_dimensions,
            encoding: Encoding::Float,
            entries: Vec::new(),
        })
    }

    /// How many vectors the answer holds.
    pub fn count(&self) -> usize {
        match &self.inputs {
            Inputs::Texts(t) => t.len(),
            Inputs::Tokens(t) => t.len(),
            Inputs::Contents(c) => c.len(),
        }
    }

    /// Input tokens to bill when the upstream counts none: the token ids themselves, else about
    /// 4 bytes of text a token (at least one per input).
    pub fn token_estimate(&self) -> u64 {
        let text = |t: &str| (t.len() as u64 / 4).max(1);
        match &self.inputs {
            Inputs::Texts(ts) => ts.iter().map(|t| text(t)).sum(),
            Inputs::Tokens(ls) => ls.iter().map(|l| l.len() as u64).sum(),
            Inputs::Contents(cs) => cs
                .iter()
                .map(|c| match &c.text {
                    Some(t) => text(t),
                    None => (c.content.get().len() as u64 / 4).max(1),
                })
                .sum(),
        }
    }

    /// The body for an OpenAI-compatible upstream's `/embeddings`: an OpenAI client's bytes with
    /// only `model` replaced, or a Gemini client's texts as `input` (floats asked for). `Err`
    /// says why this request cannot go to such an upstream.
    pub fn openai_body(&self, upstream_model: &str) -> Result<Outbound, String> {
        let model = serde_json::to_string(upstream_model).unwrap_or_default();
        let Inputs::Contents(contents) = &self.inputs else {
            let body = write_object(
                &self.entries,
                |k, _| (k == "model").then(|| model.clone()),
                &[],
            );
            return Ok(Outbound {
                body: Bytes::from(body),
                dropped: Vec::new(),
            });
        };
        if self.mixed_dimensions {
            return Err("The inputs ask for different output dimensionalities, and an OpenAI-compatible upstream takes one per request.".into());
        }
        let mut texts = Vec::with_capacity(contents.len());
        let mut dropped = Vec::new();
        for c in contents {
            let Some(text) = &c.text else {
                return Err(
                    "Only text parts can be embedded by the upstream serving this model.".into(),
                );
            };
            texts.push(text.as_str());
            if c.task_type.is_some() && !dropped.iter().any(|d| d == "taskType") {
                dropped.push("taskType".to_string());
            }
            if c.title.is_some() && !dropped.iter().any(|d| d == "title") {
                dropped.push("title".to_string());
            }
        }
        #[derive(serde::Serialize)]
        struct Body<'b> {
            model: &'b str,
            input: Vec<&'b str>,
            encoding_format: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            dimensions: Option<u32>,
        }
        let body = serde_json::to_vec(&Body {
            model: upstream_model,
            input: texts,
            encoding_format: "float",
            dimensions: self.dimensions,
        })
        .map_err(|e| e.to_string())?;
        Ok(Outbound {
            body: Bytes::from(body),
            dropped,
        })
    }

    /// The body for a Gemini upstream's `:batchEmbedContents` on `upstream_model`. `Err` says
    /// why this request cannot go to such an upstream (token ids, or too many inputs).
    pub fn gemini_body(&self, upstream_model: &str) -> Result<Outbound, String> {
        if self.count() > MAX_GEMINI_BATCH {
            return Err(format!(
                "The upstream serving this model embeds at most {MAX_GEMINI_BATCH} inputs per request; this one has {}.",
                self.count()
            ));
        }
        let name = format!("models/{}", gemini_model_id(upstream_model));
        let name = serde_json::to_string(&name).unwrap_or_default();
        let mut out = Vec::with_capacity(64 + self.count() * 96);
        out.extend_from_slice(b"{\"requests\":[");
        let mut dropped = Vec::new();
        let item = |out: &mut Vec<u8>, content: &str, extra: &[(&str, &str)], dims: Option<u32>| {
            if out.last() != Some(&b'[') {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"model\":");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b",\"content\":");
            out.extend_from_slice(content.as_bytes());
            for (k, v) in extra {
                out.extend_from_slice(format!(",\"{k}\":").as_bytes());
                out.extend_from_slice(v.as_bytes());
            }
            if let Some(d) = dims {
                out.extend_from_slice(format!(",\"outputDimensionality\":{d}").as_bytes());
            }
            out.push(b'}');
        };
        match &self.inputs {
            Inputs::Tokens(_) => {
                return Err("Token-id input cannot be embedded by the upstream serving this model; send the text instead.".into());
            }
            Inputs::Texts(texts) => {
                for t in texts {
                    let text = serde_json::to_string(t).unwrap_or_default();
                    let content = format!("{{\"parts\":[{{\"text\":{text}}}]}}");
                    item(&mut out, &content, &[], self.dimensions);
                }
                if self.entries.iter().any(|(k, _)| k == "user") {
                    dropped.push("user".to_string());
                }
            }
            Inputs::Contents(contents) => {
                for c in contents {
                    let mut extra = Vec::new();
                    if let Some(t) = c.task_type {
                        extra.push(("taskType", t.get()));
                    }
                    if let Some(t) = c.title {
                        extra.push(("title", t.get()));
                    }
                    item(&mut out, c.content.get(), &extra, c.dimensions);
                }
            }
        }
        out.extend_from_slice(b"]}");
        Ok(Outbound {
            body: Bytes::from(out),
            dropped,
        })
    }

    /// The answer in the client's shape, with `model` the client's and `prompt_tokens` the
    /// count billed. `Err` when a vector cannot be converted (base64 that is not `f32`s).
    pub fn encode(&self, vectors: &Vectors, prompt_tokens: u64) -> Result<Vec<u8>, String> {
        let size: usize = vectors.items.iter().map(Vector::len).sum();
        let mut out = Vec::with_capacity(size + 64 + vectors.items.len() * 48);
        match self.client {
            Client::OpenAi => {
                out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
                for (i, v) in vectors.items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(
                        format!("{{\"object\":\"embedding\",\"index\":{i},\"embedding\":")
                            .as_bytes(),
                    );
                    v.write(self.encoding, &mut out)?;
                    out.push(b'}');
                }
                out.extend_from_slice(b"],\"model\":");
                out.extend_from_slice(
                    serde_json::to_string(&self.model)
                        .unwrap_or_default()
                        .as_bytes(),
                );
                out.extend_from_slice(
                    format!(
                        ",\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"total_tokens\":{prompt_tokens}}}}}"
                    )
                    .as_bytes(),
                );
            }
            Client::GeminiOne => {
                let Some(v) = vectors.items.first() else {
                    return Err("no vector".into());
                };
                out.extend_from_slice(b"{\"embedding\":{\"values\":");
                v.write(Encoding::Float, &mut out)?;
                out.extend_from_slice(b"}}");
            }
            Client::GeminiBatch => {
                out.extend_from_slice(b"{\"embeddings\":[");
                for (i, v) in vectors.items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"values\":");
                    v.write(Encoding::Float, &mut out)?;
                    out.push(b'}');
                }
                out.extend_from_slice(b"]}");
            }
        }
        Ok(out)
    }
}

/// A Gemini model id without its `models/` prefix, as a path or a `model` field wants it after
/// adding the prefix once.
pub fn gemini_model_id(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

/// An upstream's answer: its vectors in order, and the input tokens it counted, if it did.
#[derive(Debug)]
pub struct Vectors {
    pub items: Vec<Vector>,
    pub prompt_tokens: Option<u64>,
}

/// One vector as the upstream sent it.
#[derive(Debug)]
pub enum Vector {
    /// A JSON array of numbers, as its text.
    Floats(Box<RawValue>),
    /// OpenAI's base64 of little-endian `f32`s.
    Base64(String),
}

impl Vector {
    fn len(&self) -> usize {
        match self {
            Vector::Floats(raw) => raw.get().len(),
            Vector::Base64(s) => s.len() * 3,
        }
    }

    /// Writes the vector as `encoding` wants it: as it came when the forms agree.
    fn write(&self, encoding: Encoding, out: &mut Vec<u8>) -> Result<(), String> {
        match (self, encoding) {
            (Vector::Floats(raw), Encoding::Float) => out.extend_from_slice(raw.get().as_bytes()),
            (Vector::Base64(s), Encoding::Base64) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            (Vector::Floats(raw), Encoding::Base64) => {
                let floats: Vec<f64> =
                    serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
                let mut bytes = Vec::with_capacity(floats.len() * 4);
                for f in floats {
                    let f = f as f32;
                    if !f.is_finite() {
                        return Err(NOT_FINITE.into());
                    }
                    bytes.extend_from_slice(&f.to_le_bytes());
                }
                out.push(b'"');
                out.extend_from_slice(BASE64.encode(bytes).as_bytes());
                out.push(b'"');
            }
            (Vector::Base64(s), Encoding::Float) => {
                let floats = decode_base64(s)?;
                // JSON has no NaN or infinity: serde would write `null`.
                if !floats.iter().all(|f| f.is_finite()) {
                    return Err(NOT_FINITE.into());
                }
                serde_json::to_writer(&mut *out, &floats).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Why a vector cannot change form: a component that is no finite `f32` (JSON has no NaN or
/// infinity, and a float past `f32`'s range is none an embedding model writes).
const NOT_FINITE: &str = "embedding holds a component that is not a finite f32";

/// The `f32`s of an OpenAI base64 vector.
pub fn decode_base64(s: &str) -> Result<Vec<f32>, String> {
    let bytes = BASE64
        .decode(s)
        .map_err(|e| format!("embedding is not base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err("embedding's base64 is not a whole number of f32s".into());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Checks that `raw` is an array of numbers (or base64 text) and keeps it as it came.
fn vector(raw: &RawValue) -> Result<Vector, String> {
    match first_byte(raw.get().as_bytes()) {
        Some(b'[') => {
            serde_json::from_str::<Vec<f64>>(raw.get())
                .map_err(|_| "embedding is not an array of numbers".to_string())?;
            Ok(Vector::Floats(raw.to_owned()))
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            decode_base64(&s)?;
            Ok(Vector::Base64(s))
        }
        _ => Err("embedding is neither an array of numbers nor base64".into()),
    }
}

/// Reads an OpenAI-shaped `/embeddings` answer holding `expected` vectors, ordered by `index`.
pub fn read_openai(body: &[u8], expected: usize) -> Result<Vectors, String> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        data: Vec<Item<'a>>,
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Item<'a> {
        index: Option<usize>,
        #[serde(borrow)]
        embedding: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Usage {
        #[serde(default, deserialize_with = "super::wire::count")]
        prompt_tokens: Option<u64>,
    }
    if first_byte(body) != Some(b'{') {
        return Err("embeddings answer is not a JSON object".into());
    }
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if answer.data.len() != expected {
        return Err(format!(
            "embeddings answer holds {} vectors for {expected} inputs",
            answer.data.len()
        ));
    }
    let mut slots: Vec<Option<Vector>> = (0..expected).map(|_| None).collect();
    for (pos, item) in answer.data.iter().enumerate() {
        let index = item.index.unwrap_or(pos);
        let slot = slots
            .get_mut(index)
            .filter(|s| s.is_none())
            .ok_or_else(|| format!("embeddings answer has a bad or repeated index {index}"))?;
        *slot = Some(vector(item.embedding)?);
    }
    Ok(Vectors {
        items: slots.into_iter().flatten().collect(),
        prompt_tokens: answer.usage.and_then(|u| u.prompt_tokens),
    })
}

/// Reads a Gemini `batchEmbedContents` answer holding `expected` vectors.
pub fn read_gemini(body: &[u8], expected: usize) -> Result<Vectors, String> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        embeddings: Vec<Item<'a>>,
        #[serde(rename = "usageMetadata")]
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Item<'a> {
        #[serde(borrow)]
        values: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Usage {
        #[serde(
            default,
            rename = "promptTokenCount",
            deserialize_with = "super::wire::count"
        )]
        prompt_tokens: Option<u64>,
    }
    if first_byte(body) != Some(b'{') {
        return Err("embeddings answer is not a JSON object".into());
    }
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if answer.embeddings.len() != expected {
        return Err(format!(
            "embeddings answer holds {} vectors for {expected} inputs",
            answer.embeddings.len()
        ));
    }
    let items = answer
        .embeddings
        .iter()
        .map(|e| match vector(e.values)? {
            v @ Vector::Floats(_) => Ok(v),
            Vector::Base64(_) => Err("Gemini values are not an array of numbers".to_string()),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Vectors {
        items,
        prompt_tokens: answer.usage.and_then(|u| u.prompt_tokens),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(body: &str) -> Result<EmbedRequest<'_>, Refusal> {
        EmbedRequest::parse_openai(body.as_bytes())
    }

    fn refused(body: &str) -> Refusal {
        match parse(body) {
            Err(r) => r,
            Ok(r) => panic!("{body} was accepted as {r:?}"),
        }
    }

    #[test]
    fn openai_inputs_in_all_four_forms() {
        let r = parse(r#"{"model":"m","input":"hello"}"#).unwrap();
        assert!(matches!(&r.inputs, Inputs::Texts(t) if t == &["hello"]));
        assert_eq!(r.encoding, Encoding::Float);
        let r = parse(r#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#).unwrap();
        assert_eq!(r.count(), 2);
        assert_eq!(r.encoding, Encoding::Base64);
        let r = parse(r#"{"model":"m","input":[1,2,3]}"#).unwrap();
        assert!(matches!(&r.inputs, Inputs::Tokens(t) if t == &[vec![1, 2, 3]]));
        assert_eq!(r.token_estimate(), 3);
        let r = parse(r#"{"model":"m","input":[[1,2],[3]],"dimensions":256}"#).unwrap();
        assert_eq!(r.count(), 2);
        assert_eq!(r.dimensions, Some(256));
    }

    #[test]
    fn openai_refusals_name_the_field() {
        assert_eq!(refused("not json").param, None);
        assert_eq!(refused("[1]").param, None);
        assert_eq!(refused(r#"{"input":"x"}"#).param, Some("model"));
        assert_eq!(refused(r#"{"model":"m"}"#).param, Some("input"));
        for bad in [
            r#"{"model":"m","input":[]}"#,
            r#"{"model":"m","input":""}"#,
            r#"{"model":"m","input":["a",""]}"#,
            r#"{"model":"m","input":[[]]}"#,
            r#"{"model":"m","input":42}"#,
            r#"{"model":"m","input":{"text":"a"}}"#,
            r#"{"model":"m","input":["a",1]}"#,
            r#"{"model":"m","input":[1.5]}"#,
            r#"{"model":"m","input":[-1]}"#,
        ] {
            assert_eq!(refused(bad).param, Some("input"), "{bad}");
        }
        assert_eq!(
            refused(r#"{"model":"m","input":"a","encoding_format":"int8"}"#).param,
            Some("encoding_format")
        );
        for bad in ["0", "-3", "1.5", "\"8\""] {
            let body = format!(r#"{{"model":"m","input":"a","dimensions":{bad}}}"#);
            assert_eq!(refused(&body).param, Some("dimensions"));
        }
        assert_eq!(
            refused(r#"{"model":"m","input":"a","user":7}"#).param,
            Some("user")
        );
        let many = format!(
            r#"{{"model":"m","input":{}}}"#,
            json!(vec!["x"; MAX_INPUTS + 1])
        );
        assert_eq!(refused(&many).param, Some("input"));
    }

    #[test]
    fn openai_to_openai_replaces_only_the_model() {
        let body = r#"{"input": ["a"], "model":"mine","encoding_format":"base64","user":"u1","extra":{"k":1}}"#;
        let r = parse(body).unwrap();
        let out = r.openai_body("theirs").unwrap();
        assert_eq!(
            std::str::from_utf8(&out.body).unwrap(),
            r#"{"input":["a"],"model":"theirs","encoding_format":"base64","user":"u1","extra":{"k":1}}"#
        );
        assert!(out.dropped.is_empty());
    }

    #[test]
    fn openai_to_gemini_batches_texts_with_dimensions() {
        let r = parse(r#"{"model":"m","input":["a","b\"c"],"dimensions":8,"user":"u"}"#).unwrap();
        let out = r.gemini_body("models/gemini-embedding-001").unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            v,
            json!({"requests":[
                {"model":"models/gemini-embedding-001","content":{"parts":[{"text":"a"}]},"outputDimensionality":8},
                {"model":"models/gemini-embedding-001","content":{"parts":[{"text":"b\"c"}]},"outputDimensionality":8},
            ]})
        );
        assert_eq!(out.dropped, ["user"]);
        let tokens = parse(r#"{"model":"m","input":[1,2]}"#).unwrap();
        assert!(tokens.gemini_body("g").unwrap_err().contains("Token-id"));
        let many = format!(
            r#"{{"model":"m","input":{}}}"#,
            json!(vec!["x"; MAX_GEMINI_BATCH + 1])
        );
        assert!(parse(&many).unwrap().gemini_body("g").is_err());
    }

    #[test]
    fn gemini_requests_read_and_rewritten() {
        let one = br#"{"content":{"parts":[{"text":"hi"},{"text":"there"}]},"taskType":"RETRIEVAL_DOCUMENT","title":"T","outputDimensionality":4}"#;
        let r = EmbedRequest::parse_gemini("gemini-embedding-001", one, false).unwrap();
        assert_eq!(r.client, Client::GeminiOne);
        assert_eq!(r.dimensions, Some(4));
        let to_openai: Value =
            serde_json::from_slice(&r.openai_body("text-embedding-3-small").unwrap().body).unwrap();
        assert_eq!(
            to_openai,
            json!({"model":"text-embedding-3-small","input":["hi\nthere"],"encoding_format":"float","dimensions":4})
        );
        assert_eq!(r.openai_body("x").unwrap().dropped, ["taskType", "title"]);
        let to_gemini: Value =
            serde_json::from_slice(&r.gemini_body("gemini-embedding-001").unwrap().body).unwrap();
        assert_eq!(
            to_gemini,
            json!({"requests":[{"model":"models/gemini-embedding-001",
                "content":{"parts":[{"text":"hi"},{"text":"there"}]},
                "taskType":"RETRIEVAL_DOCUMENT","title":"T","outputDimensionality":4}]})
        );

        let batch = br#"{"requests":[{"model":"models/x","content":{"parts":[{"text":"a"}]},"task_type":"CLUSTERING"},{"content":{"parts":[{"text":"b"}]}}]}"#;
        let r = EmbedRequest::parse_gemini("x", batch, true).unwrap();
        assert_eq!(r.client, Client::GeminiBatch);
        assert_eq!(r.count(), 2);

        let mixed = br#"{"requests":[{"content":{"parts":[{"text":"a"}]},"outputDimensionality":4},{"content":{"parts":[{"text":"b"}]}}]}"#;
        let r = EmbedRequest::parse_gemini("x", mixed, true).unwrap();
        assert!(r.openai_body("y").is_err());
        assert!(r.gemini_body("y").is_ok());

        let image =
            br#"{"content":{"parts":[{"inline_data":{"mime_type":"image/png","data":"AA=="}}]}}"#;
        let r = EmbedRequest::parse_gemini("x", image, false).unwrap();
        assert!(r.openai_body("y").is_err());
        assert!(r.gemini_body("y").is_ok());

        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"content":"hi"}"#,
            br#"{"content":{"parts":[]}}"#,
            br#"{"content":{"parts":[{"text":""}]}}"#,
            br#"{"content":{"parts":[{"text":"a"}]},"outputDimensionality":0}"#,
            br#"{"content":{"parts":[{"text":"a"}]},"taskType":3}"#,
        ] {
            assert!(
                EmbedRequest::parse_gemini("x", bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&br#"{}"#[..], br#"{"requests":[]}"#, br#"{"requests":[1]}"#] {
            assert!(EmbedRequest::parse_gemini("x", bad, true).is_err());
        }
    }

    #[test]
    fn float_vectors_pass_as_they_came_and_convert_to_base64() {
        let answer = br#"{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0.5,-1.25e-3]},{"object":"embedding","index":0,"embedding":[1.0000001, 2]}],"model":"up","usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        let v = read_openai(answer, 2).unwrap();
        assert_eq!(v.prompt_tokens, Some(7));
        let r = parse(r#"{"model":"mine","input":["a","b"]}"#).unwrap();
        let out = String::from_utf8(r.encode(&v, 7).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1.0000001, 2]},{"object":"embedding","index":1,"embedding":[0.5,-1.25e-3]}],"model":"mine","usage":{"prompt_tokens":7,"total_tokens":7}}"#
        );
        let r = parse(r#"{"model":"mine","input":["a","b"],"encoding_format":"base64"}"#).unwrap();
        let out: Value = serde_json::from_slice(&r.encode(&v, 7).unwrap()).unwrap();
        let b0 = decode_base64(out["data"][0]["embedding"].as_str().unwrap()).unwrap();
        assert_eq!(b0, [1.0000001f32, 2.0]);
        let b1 = decode_base64(out["data"][1]["embedding"].as_str().unwrap()).unwrap();
        assert_eq!(b1, [0.5f32, -1.25e-3]);
        // And back: base64 from an upstream to a client that wants floats.
        let back = format!(
            r#"{{"data":[{{"embedding":{}}}]}}"#,
            out["data"][1]["embedding"]
        );
        let v = read_openai(back.as_bytes(), 1).unwrap();
        assert_eq!(v.prompt_tokens, None);
        let r = parse(r#"{"model":"mine","input":"b"}"#).unwrap();
        let floats: Value = serde_json::from_slice(&r.encode(&v, 1).unwrap()).unwrap();
        assert_eq!(floats["data"][0]["embedding"], json!([0.5, -0.00125]));
    }

    #[test]
    fn a_vector_that_is_no_finite_f32_is_not_converted() {
        let nan = BASE64.encode(f32::NAN.to_le_bytes());
        let v = read_openai(
            format!(r#"{{"data":[{{"embedding":"{nan}"}}]}}"#).as_bytes(),
            1,
        )
        .unwrap();
        let floats = parse(r#"{"model":"m","input":"a"}"#).unwrap();
        assert!(floats.encode(&v, 1).is_err());
        let base64 = parse(r#"{"model":"m","input":"a","encoding_format":"base64"}"#).unwrap();
        assert!(base64.encode(&v, 1).is_ok(), "as it came");
        let huge = read_openai(br#"{"data":[{"embedding":[1e300]}]}"#, 1).unwrap();
        assert!(base64.encode(&huge, 1).is_err());
        assert!(floats.encode(&huge, 1).is_ok(), "as it came");
    }

    #[test]
    fn gemini_answers_read_and_written() {
        let answer = br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[-3]}],"usageMetadata":{"promptTokenCount":5}}"#;
        let v = read_gemini(answer, 2).unwrap();
        assert_eq!(v.prompt_tokens, Some(5));
        let batch = br#"{"requests":[{"content":{"parts":[{"text":"a"}]}},{"content":{"parts":[{"text":"b"}]}}]}"#;
        let r = EmbedRequest::parse_gemini("g", batch, true).unwrap();
        assert_eq!(
            String::from_utf8(r.encode(&v, 5).unwrap()).unwrap(),
            r#"{"embeddings":[{"values":[0.1,0.2]},{"values":[-3]}]}"#
        );
        let v = read_gemini(br#"{"embeddings":[{"values":[0.25]}]}"#, 1).unwrap();
        assert_eq!(v.prompt_tokens, None);
        let one =
            EmbedRequest::parse_gemini("g", br#"{"content":{"parts":[{"text":"a"}]}}"#, false)
                .unwrap();
        assert_eq!(
            String::from_utf8(one.encode(&v, 1).unwrap()).unwrap(),
            r#"{"embedding":{"values":[0.25]}}"#
        );
    }

    #[test]
    fn answers_that_are_not_embeddings_are_refused() {
        for bad in [
            &b"[]"[..],
            b"{}",
            br#"{"data":[]}"#,
            br#"{"data":[{"embedding":"!!"}]}"#,
            br#"{"data":[{"embedding":["a"]}]}"#,
            br#"{"data":[{"embedding":{}}]}"#,
            br#"{"data":[{"index":3,"embedding":[1]}]}"#,
        ] {
            assert!(
                read_openai(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            read_openai(
                br#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[2]}]}"#,
                2
            )
            .is_err()
        );
        for bad in [
            &b"{}"[..],
            br#"{"embeddings":[]}"#,
            br#"{"embeddings":[{"values":"AACAPw=="}]}"#,
            br#"{"embeddings":[{"values":[true]}]}"#,
        ] {
            assert!(
                read_gemini(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
