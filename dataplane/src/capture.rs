//! Body capture for keys whose policy opts in (`capture_bodies`): the request body the client
//! sent and the response body the client got, each cut at [`CAP_BYTES`], carried to the control
//! plane inside the request's usage record (`UsageRecord.bodies`).
//!
//! A request of any other key has no [`Capture`] at all: nothing is copied or allocated for it.
//! Headers are never captured, so neither is the client key. A stream's frames are copied as
//! they pass to the client (a bounded `memcpy`), never held back, and never more than the cap.

use bytes::Bytes;
use keyplane_proto::v1 as pb;
use std::sync::Mutex;

/// The most bytes kept of each body. Two bodies and their record must fit the usage spool's
/// frame limit (1 MiB) with room to spare, and a backlog of captured records held by the
/// reporter must stay a bounded amount of memory; 64 KiB holds a long prompt's JSON or a long
/// answer's stream, and past it the view says it was cut.
pub const CAP_BYTES: usize = 64 * 1024;

/// The captured bodies of one request, shared by whatever writes its usage record (the relay
/// of a stream copies frames into it as they pass; the record takes it when it is written).
/// Its `Debug` shows sizes only: a prompt never reaches a log line.
#[derive(Default)]
pub struct Capture {
    bodies: Mutex<Bodies>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.lock();
        f.debug_struct("Capture")
            .field("request_bytes", &b.request.len())
            .field("response_bytes", &b.response.len())
            .finish()
    }
}

#[derive(Default)]
struct Bodies {
    request: Vec<u8>,
    request_truncated: bool,
    response: Vec<u8>,
    response_truncated: bool,
    /// Taken into a record already: later copies are not kept.
    taken: bool,
}

/// Appends to `to` as much of `bytes` as fits under the cap; true when some did not fit.
fn append_capped(to: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let room = CAP_BYTES.saturating_sub(to.len());
    let take = bytes.len().min(room);
    to.extend_from_slice(&bytes[..take]);
    take < bytes.len()
}

impl Capture {
    /// A capture holding the (capped) request body. `request` is `None` when the body was never
    /// read (refused before it: too large, too slow).
    pub fn new(request: Option<&[u8]>) -> Capture {
        let mut bodies = Bodies::default();
        if let Some(body) = request {
            bodies.request_truncated = append_capped(&mut bodies.request, body);
        }
        Capture {
            bodies: Mutex::new(bodies),
        }
    }

    /// Adds bytes the client got to the response body, up to the cap.
    pub fn response(&self, bytes: &[u8]) {
        let mut b = self.lock();
        if b.taken || b.response_truncated {
            return;
        }
        if append_capped(&mut b.response, bytes) {
            b.response_truncated = true;
        }
    }

    /// Adds a frame the client is about to get. Cheap when the cap is reached.
    pub fn frame(&self, frame: &Bytes) {
        self.response(frame);
    }

    /// The bodies, for the usage record. A second take gets empty bodies.
    pub fn take(&self) -> pb::CapturedBodies {
        let mut b = self.lock();
        b.taken = true;
        pb::CapturedBodies {
            request: std::mem::take(&mut b.request),
            request_truncated: b.request_truncated,
            response: std::mem::take(&mut b.response),
            response_truncated: b.response_truncated,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bodies> {
        // A poisoned lock only means a panic elsewhere mid-copy; the bytes are still bytes.
        self.bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The most frames [`copy_response_body`] reads from a body that says it is whole in memory.
const MAX_HELD_FRAMES: usize = 16;

/// Copies a response body that is held whole in memory (an error answer, whose size is known)
/// into `capture` without consuming it: its frames are read at once and put back in front of
/// whatever is left. A body that is not in memory (no exact size) is left alone.
pub fn copy_response_body(body: &mut crate::proxy::Body, capture: &Capture) {
    use http_body::{Body as _, Frame};
    use http_body_util::BodyExt;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    if body.size_hint().exact().is_none() {
        return;
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut ended = false;
    while frames.len() < MAX_HELD_FRAMES {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    capture.response(data);
                }
                frames.push(frame);
            }
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => {
                ended = true;
                break;
            }
            Poll::Pending => break,
        }
    }
    if ended && frames.len() <= 1 {
        let data = frames
            .pop()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default();
        *body = crate::proxy::full(data);
        return;
    }
    let rest = std::mem::replace(body, crate::proxy::full(Bytes::new()));
    let read = futures_util::stream::iter(frames.into_iter().map(Ok));
    let stream = futures_util::StreamExt::chain(read, http_body_util::BodyStream::new(rest));
    *body = http_body_util::StreamBody::new(stream).boxed_unsync();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_cut_at_the_cap_with_the_flag() {
        let big = vec![b'x'; CAP_BYTES + 10];
        let c = Capture::new(Some(&big));
        c.response(&big[..CAP_BYTES - 3]);
        c.frame(&Bytes::from_static(b"abcdef"));
        c.frame(&Bytes::from_static(b"more"));
        let b = c.take();
        assert_eq!(b.request.len(), CAP_BYTES);
        assert!(b.request_truncated);
        assert_eq!(b.response.len(), CAP_BYTES);
        assert!(b.response.ends_with(b"xxxabc"));
        assert!(b.response_truncated);
    }

    #[test]
    fn small_bodies_are_whole_and_a_second_take_is_empty() {
        let c = Capture::new(Some(b"{\"model\":\"m\"}"));
        c.frame(&Bytes::from_static(b"data: 1\n\n"));
        c.frame(&Bytes::from_static(b"data: 2\n\n"));
        let b = c.take();
        assert_eq!(b.request, b"{\"model\":\"m\"}");
        assert!(!b.request_truncated);
        assert_eq!(b.response, b"data: 1\n\ndata: 2\n\n");
        assert!(!b.response_truncated);
        c.response(b"late");
        assert_eq!(c.take(), pb::CapturedBodies::default());
        // A body that exactly fits is not truncated.
        let exact = Capture::new(Some(&vec![0u8; CAP_BYTES]));
        assert!(!exact.take().request_truncated);
        assert!(Capture::new(None).take().request.is_empty());
    }

    #[test]
    fn debug_shows_sizes_never_the_bodies() {
        let c = Capture::new(Some(b"secret prompt"));
        c.response(b"secret answer");
        let text = format!("{c:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("13"), "{text}");
    }

    #[tokio::test]
    async fn a_body_in_memory_is_copied_and_still_sent_whole() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let c = Capture::new(None);
        let mut body = crate::proxy::full(Bytes::from_static(b"{\"error\":{}}"));
        copy_response_body(&mut body, &c);
        assert_eq!(body.size_hint().exact(), Some(12));
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"{\"error\":{}}");
        assert_eq!(c.take().response, b"{\"error\":{}}");
        // A body of unknown size (a stream) is left alone.
        let c = Capture::new(None);
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            http_body::Frame::data(Bytes::from_static(b"x")),
        )]);
        let mut body = http_body_util::StreamBody::new(stream).boxed_unsync();
        copy_response_body(&mut body, &c);
        assert!(c.take().response.is_empty());
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"x");
    }
}
