//! A chat stream relayed byte for byte to a chat client: what each event means for commit and
//! billing, and which events the client does not get.

use super::{Chunk, Usage, classify, may_matter};
use crate::protocol::shape::{Metering, StreamNote};

/// Reads a pass-through chat stream.
#[derive(Debug, Default)]
pub struct Scan {
    /// Drop the `choices: []` usage chunk the client did not ask for (the gateway asks every
    /// upstream for usage, to bill it).
    pub suppress_usage_chunk: bool,
    usage: Option<Usage>,
}

impl Scan {
    pub fn new(client_asked_for_usage: bool) -> Scan {
        Scan {
            suppress_usage_chunk: !client_asked_for_usage,
            usage: None,
        }
    }

    pub fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool {
        may_matter(name, data)
    }

    /// What the event meant, and whether the client gets it.
    pub fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool) {
        match classify(name, data) {
            Chunk::Preamble => (StreamNote::Nothing, true),
            Chunk::UsageOnly(u) => {
                self.usage = Some(u);
                (StreamNote::Nothing, !self.suppress_usage_chunk)
            }
            Chunk::Content { usage: u } => {
                if u.is_some() {
                    self.usage = u;
                }
                (StreamNote::Content, true)
            }
            Chunk::Error { message, usage: u } => {
                if u.is_some() {
                    self.usage = u;
                }
                (StreamNote::Error(message), true)
            }
            Chunk::Done => (StreamNote::Done, true),
        }
    }

    pub fn metering(&self) -> Option<Metering> {
        self.usage.and_then(metering)
    }
}

/// A chat usage in billing terms; `None` for counts no upstream truthfully reports (more cached
/// than prompted).
pub fn metering(u: Usage) -> Option<Metering> {
    u.metering()
}
