//! The shape into Gemini bytes: a request for a Gemini upstream, and a Gemini client's answer,
//! stream and errors.

use super::Framing;
use crate::protocol::shape::{
    Encoded, Event, Request, Response, StreamEncode, TranslateError, UpstreamError,
};

/// A request for a Gemini upstream. The model goes in the URL, not the body.
pub fn request(_req: &Request<'_>, _upstream_model: &str) -> Result<Encoded, TranslateError> {
    Err(TranslateError::new(
        "This model's upstream speaks Gemini, which does not serve this dialect yet.",
    ))
}

/// A whole answer as a `GenerateContentResponse`.
pub fn response(_resp: &Response, _client_model: &str) -> Vec<u8> {
    super::error_body(
        501,
        "Translated answers are not written for Gemini clients yet.",
    )
}

/// An upstream's refusal in Google's shape.
pub fn error(err: &UpstreamError) -> (u16, Vec<u8>) {
    (
        err.status,
        super::error_body(err.status, &err.message_or_generic()),
    )
}

/// Writes a Gemini client's stream in its framing.
pub struct Stream {
    framing: Framing,
    opened: bool,
}

impl Stream {
    pub fn new(_client_model: &str, _response_id: &str, framing: Framing) -> Stream {
        Stream {
            framing,
            opened: false,
        }
    }
}

impl StreamEncode for Stream {
    fn event(&mut self, _event: &Event, _out: &mut Vec<u8>) {}

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.framing == Framing::JsonArray && !self.opened {
            out.extend_from_slice(b"[]");
            self.opened = true;
        }
    }

    fn error_event(&self, message: &str) -> Vec<u8> {
        super::relay::error_event(self.framing, self.opened, message)
    }
}
