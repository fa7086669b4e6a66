//! A Gemini stream relayed to a Gemini client: what each chunk means for commit and billing, and
//! the client's framing. The upstream is always asked for server-sent events (`alt=sse`); a
//! client that asked for the JSON-array stream gets each event's data, its bytes unchanged, as
//! one element of the array.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Framing, UsageIn, error_body};
use crate::protocol::shape::{Metering, StreamNote};
use crate::protocol::wire;

/// Separates two elements of a JSON-array stream, as Google writes them.
pub const ARRAY_SEPARATOR: &[u8] = b",\r\n";

#[derive(Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    candidates: Option<Vec<CandidatePeek<'a>>>,
    #[serde(rename = "promptFeedback", default, borrow)]
    prompt_feedback: Option<&'a RawValue>,
    #[serde(rename = "usageMetadata", default, borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CandidatePeek<'a> {
    #[serde(default, borrow)]
    content: Option<ContentPeek<'a>>,
    #[serde(rename = "finishReason", default, borrow)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ContentPeek<'a> {
    #[serde(default, borrow)]
    parts: Option<Vec<&'a RawValue>>,
}

/// What one stream chunk meant: its note and its counts (cumulative, when it has them).
pub(crate) fn classify(data: &[u8]) -> (StreamNote, Option<Metering>) {
    let Ok(chunk) = serde_json::from_slice::<ChunkPeek<'_>>(data) else {
        return (StreamNote::Nothing, None);
    };
    if let Some(err) = chunk.error.and_then(wire::present) {
        return (StreamNote::Error(wire::error_object_message(err)), None);
    }
    let metering = chunk
        .usage
        .and_then(crate::protocol::json::object::<UsageIn>)
        .and_then(|u| u.metering());
    let content = chunk.candidates.iter().flatten().any(|c| {
        c.finish_reason.and_then(wire::present).is_some()
            || c.content
                .as_ref()
                .and_then(|c| c.parts.as_ref())
                .is_some_and(|p| !p.is_empty())
    }) || chunk.prompt_feedback.and_then(wire::present).is_some();
    let note = if content {
        StreamNote::Content
    } else {
        StreamNote::Nothing
    };
    (note, metering)
}

/// Reads a pass-through Gemini stream and writes it in the client's framing.
#[derive(Debug)]
pub struct Scan {
    framing: Framing,
    metering: Option<Metering>,
    /// A JSON-array stream has written its `[`.
    opened: bool,
    /// The client's stream has ended (an error element closed the array): nothing more goes.
    closed: bool,
}

impl Scan {
    pub fn new(framing: Framing) -> Scan {
        Scan {
            framing,
            metering: None,
            opened: false,
            closed: false,
        }
    }

    /// One upstream SSE event: `raw` as received, `data` its payload. The client's bytes go onto
    /// `out`, unless it is an error before the stream is `committed` (the next candidate
    /// serves).
    pub fn event(
        &mut self,
        raw: &Bytes,
        data: Option<&[u8]>,
        committed: bool,
        out: &mut Vec<Bytes>,
    ) -> StreamNote {
        let Some(data) = data else {
            // A comment or an empty event: kept in an SSE stream, nothing in an array.
            if self.framing == Framing::Sse && !self.closed {
                out.push(raw.clone());
            }
            return StreamNote::Nothing;
        };
        let (note, metering) = classify(data);
        if metering.is_some() {
            self.metering = metering;
        }
        if self.closed || (matches!(note, StreamNote::Error(_)) && !committed) {
            return note;
        }
        match self.framing {
            Framing::Sse => out.push(raw.clone()),
            Framing::JsonArray => {
                out.push(self.element(data));
                if matches!(note, StreamNote::Error(_)) {
                    out.push(Bytes::from_static(b"]"));
                    self.closed = true;
                }
            }
        }
        note
    }

    /// `data` as the next element of the array.
    fn element(&mut self, data: &[u8]) -> Bytes {
        let mut buf = Vec::with_capacity(data.len() + 3);
        buf.extend_from_slice(if self.opened { ARRAY_SEPARATOR } else { b"[" });
        self.opened = true;
        buf.extend_from_slice(data);
        Bytes::from(buf)
    }

    /// The upstream ended: a JSON-array stream closes its array.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.framing == Framing::JsonArray && !self.closed {
            out.push(Bytes::from_static(if self.opened { b"]" } else { b"[]" }));
            self.closed = true;
        }
    }

    /// The chunk that ends a failed stream: Google's error object as an event or as the array's
    /// last element.
    pub fn error_event(&self, message: &str) -> Bytes {
        Bytes::from(error_event(self.framing, self.opened, message))
    }

    pub fn metering(&self) -> Option<Metering> {
        self.metering
    }
}

/// The bytes that end a stream in `framing` with an error (a 500 in Google's shape): an SSE
/// event, or the array's last element and its close (`opened`: the array's `[` was written).
pub fn error_event(framing: Framing, opened: bool, message: &str) -> Vec<u8> {
    let body = error_body(500, message);
    let mut out = Vec::with_capacity(body.len() + 12);
    match framing {
        Framing::Sse => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n\r\n");
        }
        Framing::JsonArray => {
            out.extend_from_slice(if opened { ARRAY_SEPARATOR } else { b"[" });
            out.extend_from_slice(&body);
            out.push(b']');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// testkit/samples/gemini-stream.sse: a recorded `alt=sse` stream, CRLF line ends.
    const SAMPLE: &[u8] = include_bytes!("../../../../testkit/samples/gemini-stream.sse");

    fn events() -> Vec<Bytes> {
        let text = std::str::from_utf8(SAMPLE).unwrap();
        text.split("\r\n\r\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| Bytes::from(format!("{e}\r\n\r\n")))
            .collect()
    }

    fn run(framing: Framing) -> (Vec<u8>, Scan) {
        let mut scan = Scan::new(framing);
        let mut out = Vec::new();
        for raw in events() {
            let ev = crate::sse::parse(&raw);
            scan.event(&raw, ev.data.as_deref(), true, &mut out);
        }
        scan.finish(&mut out);
        (out.concat(), scan)
    }

    #[test]
    fn sse_passes_byte_for_byte_and_bills_the_last_usage() {
        let (out, scan) = run(Framing::Sse);
        assert_eq!(out, SAMPLE);
        let last = SAMPLE
            .split(|b| *b == b'\n')
            .rev()
            .find(|l| l.starts_with(b"data: "))
            .unwrap();
        let (_, m) = classify(&last[6..]);
        assert_eq!(scan.metering(), m);
        assert!(m.is_some());
    }

    #[test]
    fn json_array_framing_keeps_each_chunk_and_is_valid_json() {
        let (out, _) = run(Framing::JsonArray);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.len(), events().len());
        assert!(out.starts_with(b"[{"));
        assert!(out.windows(4).any(|w| w == b"},\r\n"));
        assert!(out.ends_with(b"}]"));
    }

    #[test]
    fn an_error_closes_the_array_and_nothing_follows() {
        let mut scan = Scan::new(Framing::JsonArray);
        let mut out = Vec::new();
        let chunk = br#"{"candidates":[{"content":{"parts":[{"text":"a"}],"role":"model"}}]}"#;
        let err = br#"{"error":{"code":500,"message":"boom","status":"INTERNAL"}}"#;
        assert_eq!(
            scan.event(&Bytes::new(), Some(chunk), false, &mut out),
            StreamNote::Content
        );
        assert_eq!(
            scan.event(&Bytes::new(), Some(err), true, &mut out),
            StreamNote::Error("boom".into())
        );
        scan.event(&Bytes::new(), Some(chunk), true, &mut out);
        scan.finish(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out.concat()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        // An error before commit is held back.
        let mut scan = Scan::new(Framing::Sse);
        let mut out = Vec::new();
        scan.event(
            &Bytes::from_static(b"data: x\r\n\r\n"),
            Some(err),
            false,
            &mut out,
        );
        assert!(out.is_empty());
        // The gateway's own error at the end of a stream is valid in both framings.
        let mut whole = b"[{}".to_vec();
        whole.extend(error_event(Framing::JsonArray, true, "cut"));
        let v: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(v[1]["error"]["message"], "cut");
        let v: serde_json::Value =
            serde_json::from_slice(&error_event(Framing::JsonArray, false, "cut")).unwrap();
        assert_eq!(v[0]["error"]["status"], "INTERNAL");
        assert!(error_event(Framing::Sse, false, "cut").starts_with(b"data: {\"error\""));
    }
}
