//! An Anthropic stream relayed byte for byte to an Anthropic client: what each event means for
//! commit and billing.

use super::{Event, Usage, classify, may_matter};
use crate::protocol::shape::{Metering, StreamNote};
use crate::protocol::usage;

/// Reads a pass-through Anthropic stream.
#[derive(Debug, Default)]
pub struct Scan {
    usage: Usage,
}

impl Scan {
    pub fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool {
        may_matter(name, data)
    }

    /// What the event meant, and whether the client gets it (always).
    pub fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool) {
        let note = match classify(name, data, &mut self.usage) {
            Event::Preamble => StreamNote::Nothing,
            Event::Content => StreamNote::Content,
            Event::Done => StreamNote::Done,
            Event::Error(m) => StreamNote::Error(m),
        };
        (note, true)
    }

    pub fn metering(&self) -> Option<Metering> {
        (self.usage != Usage::default()).then(|| metering(self.usage))
    }
}

/// Anthropic's four buckets in billing terms.
pub fn metering(u: Usage) -> Metering {
    Metering {
        usage: usage::Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_input_tokens,
            cache_write_tokens: u.cache_creation_input_tokens,
        },
        reasoning_tokens: None,
        reported_cost_nano: None,
    }
}
