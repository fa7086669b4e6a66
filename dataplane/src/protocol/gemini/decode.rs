//! Gemini bytes into the shape: a Gemini client's request, a Gemini upstream's answer, stream
//! and errors.

use crate::protocol::shape::{
    Event, Request, Response, StreamDecode, StreamNote, TranslateError, UpstreamError,
};
use crate::protocol::wire;

/// A Gemini client's request in the shape. The model and the stream flag are in the URL: the
/// caller sets them ([`crate::protocol::bridge`]).
pub fn request(_body: &[u8]) -> Result<Request<'_>, TranslateError> {
    Err(TranslateError::new(
        "This model is not served for Gemini clients by its current upstreams.",
    ))
}

/// A Gemini upstream's whole answer in the shape.
pub fn response(_body: &[u8]) -> Option<Response> {
    None
}

/// A Gemini upstream's refusal: Google's `{"error":{"code","message","status"}}`.
pub fn error(status: u16, body: &[u8]) -> UpstreamError {
    UpstreamError {
        status,
        message: wire::error_body_message(body),
    }
}

/// Reads a Gemini upstream's `alt=sse` stream.
#[derive(Default)]
pub struct Stream {}

impl Stream {
    pub fn new() -> Stream {
        Stream {}
    }
}

impl StreamDecode for Stream {
    fn event(&mut self, _name: Option<&[u8]>, data: &[u8], _out: &mut Vec<Event>) -> StreamNote {
        super::relay::classify(data).0
    }
}
