//! A Responses stream relayed byte for byte to a Responses client: what each event means for
//! commit and billing, and how to end it in the client's terms if it fails part-way (numbered
//! after the last event relayed, for the response the stream announced).

use super::{Chunk, classify, may_matter, response_id, sequence_number, stream_error_events};
use crate::protocol::shape::{Metering, StreamNote};
use bytes::Bytes;

/// Reads a pass-through Responses stream.
#[derive(Debug, Default)]
pub struct Scan {
    metering: Option<Metering>,
    /// The last event with data, as the upstream sent it: its `sequence_number` is read only
    /// if the stream fails (a clone shares the bytes; nothing is scanned per event).
    last_event: Option<Bytes>,
    /// The id `response.created` gave the response.
    response_id: Option<String>,
    /// The model the client asked for, for a `response.failed` the gateway writes.
    model: String,
}

impl Scan {
    pub fn new(client_model: &str) -> Scan {
        Scan {
            model: client_model.to_string(),
            ..Scan::default()
        }
    }

    /// Keeps `raw`, a whole event with data, as the last one relayed.
    pub fn observe(&mut self, raw: &Bytes) {
        self.last_event = Some(raw.clone());
    }

    pub fn may_matter(&self, name: Option<&[u8]>, data: &[u8]) -> bool {
        may_matter(name, data)
    }

    /// What the event meant, and whether the client gets it (always).
    pub fn event(&mut self, name: Option<&[u8]>, data: Option<&[u8]>) -> (StreamNote, bool) {
        if self.response_id.is_none()
            && let Some(data) = data
        {
            self.response_id = response_id(data);
        }
        let note = match classify(name, data) {
            Chunk::Preamble => StreamNote::Nothing,
            Chunk::Content => StreamNote::Content,
            Chunk::Done { metering } => {
                if metering.is_some() {
                    self.metering = metering;
                }
                StreamNote::Done
            }
            Chunk::Error { message, metering } => {
                if metering.is_some() {
                    self.metering = metering;
                }
                StreamNote::Error(message)
            }
        };
        (note, true)
    }

    pub fn metering(&self) -> Option<Metering> {
        self.metering
    }

    /// The events that end the stream after a failure, numbered after the last one relayed.
    pub fn error_event(&self, message: &str) -> Bytes {
        let last = self.last_event.as_ref().and_then(|raw| {
            let event = crate::sse::parse(raw);
            event.data.as_deref().and_then(sequence_number)
        });
        let next = last.map_or(0, |n| n + 1);
        stream_error_events(message, next, self.response_id.as_deref(), &self.model)
    }
}
