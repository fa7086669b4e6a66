//! Response bodies: a whole body in one frame, or a channel fed by a producer task so that each
//! SSE event leaves as its own frame the moment it is produced.
//!
//! The channel body also tells whether the client went away early: hyper drops a response body
//! when its connection or stream goes away, so a body dropped before it reached its end (or its
//! injected error) means the client disconnected.

use super::Shared;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// The error a body yields to make hyper abort the connection.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One item of a channel body: a frame's bytes, or an error that aborts the response.
type Item = Result<Bytes, BoxError>;

/// How many produced events may wait for the connection. Small, so a producer notices a slow
/// or departed client soon.
const CHANNEL_CAPACITY: usize = 4;

/// Marks the recorded request as disconnected when dropped while still armed.
pub(super) struct DisconnectGuard {
    shared: Arc<Shared>,
    index: Option<usize>,
    armed: bool,
}

impl DisconnectGuard {
    pub(super) fn new(shared: Arc<Shared>, index: Option<usize>) -> DisconnectGuard {
        DisconnectGuard {
            shared,
            index,
            armed: index.is_some(),
        }
    }

    /// The response reached its end (or the fake ended it on purpose): not a disconnect.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared
                .update(self.index, |r| r.client_disconnected = true);
        }
    }
}

/// The body of every response the fake sends.
pub(super) enum FakeBody {
    /// A complete body, sent as one frame with a `content-length`.
    Full(Option<Bytes>),
    /// Frames from a producer task; chunked, no `content-length`.
    Channel {
        rx: mpsc::Receiver<Item>,
        guard: DisconnectGuard,
        /// An injected error held back until [`CUT_GRACE`] has passed (see there).
        cut: Option<(BoxError, Pin<Box<tokio::time::Sleep>>)>,
    },
}

/// How long an injected error waits behind the frames before it. hyper drops whatever it has
/// buffered but not yet written when a body fails, so the error is held back (the body reports
/// `Pending`) long enough for hyper to flush the earlier frames: the client then sees exactly
/// the events before the cut, and then the cut.
const CUT_GRACE: Duration = Duration::from_millis(10);

impl FakeBody {
    pub(super) fn full(bytes: impl Into<Bytes>) -> FakeBody {
        FakeBody::Full(Some(bytes.into()))
    }

    /// A channel body and the [`Emitter`] that feeds it. `delay` is the pause before each
    /// event after the first.
    pub(super) fn channel(guard: DisconnectGuard, delay: Duration) -> (FakeBody, Emitter) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        (
            FakeBody::Channel {
                rx,
                guard,
                cut: None,
            },
            Emitter {
                tx,
                delay,
                first: true,
            },
        )
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            FakeBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Channel { rx, guard, cut } => {
                if cut.is_none() {
                    match rx.poll_recv(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(bytes))) => {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            // The fake ends this response on purpose: not a disconnect.
                            guard.disarm();
                            *cut = Some((e, Box::pin(tokio::time::sleep(CUT_GRACE))));
                        }
                        Poll::Ready(None) => {
                            guard.disarm();
                            return Poll::Ready(None);
                        }
                    }
                }
                if let Some((_, sleep)) = cut.as_mut()
                    && sleep.as_mut().poll(cx).is_pending()
                {
                    return Poll::Pending;
                }
                Poll::Ready(cut.take().map(|(e, _)| Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FakeBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FakeBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FakeBody::Full(None) => SizeHint::with_exact(0),
            FakeBody::Channel { .. } => SizeHint::default(),
        }
    }
}

/// The client is gone; the producer should stop.
#[derive(Debug)]
pub(super) struct Gone;

/// The producer side of a channel body.
pub(super) struct Emitter {
    tx: mpsc::Sender<Item>,
    delay: Duration,
    first: bool,
}

impl Emitter {
    /// Sends one event (one frame), after the configured pause unless it is the first.
    pub(super) async fn send(&mut self, bytes: impl Into<Bytes>) -> Result<(), Gone> {
        if !self.first && !self.delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.delay) => {}
                () = self.tx.closed() => return Err(Gone),
            }
        }
        self.first = false;
        self.tx.send(Ok(bytes.into())).await.map_err(|_| Gone)
    }

    /// Ends the response with an error: hyper aborts the connection (HTTP/1) or resets the
    /// stream (HTTP/2) instead of finishing the body.
    pub(super) async fn abort(self) {
        let err = std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "fake upstream: response cut on purpose",
        );
        let _ = self.tx.send(Err(Box::new(err))).await;
    }
}
