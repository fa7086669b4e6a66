//! The wire dialects the data plane speaks, to clients and to upstreams, around one internal
//! shape (`shape`). Each dialect module reads and writes its own requests, responses, stream
//! events, usage and errors; `bridge` says whether a pair of dialects passes bytes through or
//! translates through the shape. Pure functions and small state machines: no IO, no logging.

pub mod anthropic;
pub mod bridge;
pub mod embeddings;
pub mod gemini;
pub mod json;
pub mod openai_chat;
pub mod openai_responses;
pub mod shape;
pub mod usage;
pub mod wire;

/// A wire dialect: what a client speaks to the data plane, or an upstream speaks to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenAiChat,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// OpenAI Responses (`/v1/responses`), stateless.
    OpenAiResponses,
    /// Google Gemini (`/v1beta/models/{model}:generateContent` and `:streamGenerateContent`):
    /// the model and the stream's framing are in the URL, not the body.
    Gemini,
}

impl Dialect {
    /// The dialect's name in the request log (`keyplanectl requests`), fixed by the operator
    /// contract.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => "openai-chat",
            Dialect::Anthropic => "anthropic",
            Dialect::OpenAiResponses => "openai-responses",
            Dialect::Gemini => "gemini",
        }
    }
}
