//! Server-sent events, as far as relaying needs: split a byte stream into whole events (zero-copy
//! where a frame holds whole events), and read an event's name and data.
//!
//! Events are relayed as the upstream wrote them; this module never re-encodes one.

use bytes::{Bytes, BytesMut};
use std::borrow::Cow;

/// Splits arbitrary chunks into complete events, each with its terminating blank line.
#[derive(Default)]
pub struct Splitter {
    rest: BytesMut,
}

impl Splitter {
    /// Appends `chunk`; pushes every event it completes onto `out`.
    pub fn push(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        let data = if self.rest.is_empty() {
            chunk
        } else {
            self.rest.extend_from_slice(&chunk);
            self.rest.split().freeze()
        };
        let mut event_start = 0;
        let mut line_start = 0;
        for nl in memchr::memchr_iter(b'\n', &data) {
            let line = &data[line_start..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                out.push(data.slice(event_start..nl + 1));
                event_start = nl + 1;
            }
            line_start = nl + 1;
        }
        if event_start < data.len() {
            self.rest.extend_from_slice(&data[event_start..]);
        }
    }

    /// Bytes of an incomplete event at the end of the stream so far.
    pub fn pending(&self) -> &[u8] {
        &self.rest
    }
}

/// The fields of one event that relaying looks at.
pub struct Event<'a> {
    /// The `event:` field, if any.
    pub name: Option<&'a [u8]>,
    /// The `data:` lines joined by `\n`; `None` for an event with no data (comments, pings).
    pub data: Option<Cow<'a, [u8]>>,
}

fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// Reads an event produced by [`Splitter`].
pub fn parse(raw: &[u8]) -> Event<'_> {
    let mut name = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = field(line, b"data") {
            data = Some(match data {
                None => Cow::Borrowed(value),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.push(b'\n');
                    joined.extend_from_slice(value);
                    Cow::Owned(joined)
                }
            });
        } else if let Some(value) = field(line, b"event") {
            name = Some(value);
        }
    }
    Event { name, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(Bytes::copy_from_slice(c), &mut out);
        }
        out.into_iter().map(|b| b.to_vec()).collect()
    }

    #[test]
    fn splits_across_chunk_boundaries() {
        let events = split_all(&[
            b"data: {\"a\":1}\n\nda",
            b"ta: {\"b\":2}\n",
            b"\n: comment\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                b"data: {\"a\":1}\n\n".to_vec(),
                b"data: {\"b\":2}\n\n".to_vec(),
                b": comment\n\n".to_vec()
            ]
        );
    }

    #[test]
    fn crlf_and_named_events() {
        let events =
            split_all(&[b"event: error\r\ndata: {\"x\":1}\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n"]);
        assert_eq!(events.len(), 2);
        let e = parse(&events[0]);
        assert_eq!(e.name, Some(&b"error"[..]));
        assert_eq!(e.data.as_deref(), Some(&b"{\"x\":1}"[..]));
    }

    #[test]
    fn parses_every_sample_stream_into_whole_events() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/providers/samples");
        for name in [
            "openai-chat-stream.sse",
            "anthropic-stream.sse",
            "openrouter-stream-midstream-error.sse",
            "groq-stream-midstream-error.trimmed.sse",
            "gemini-stream.sse",
        ] {
            let Ok(raw) = std::fs::read(dir.join(name)) else {
                panic!("sample {name} missing: is ../shared beside the checkout?");
            };
            // Byte by byte: the worst fragmentation an upstream can produce.
            let mut s = Splitter::default();
            let mut out = Vec::new();
            for b in &raw {
                s.push(Bytes::copy_from_slice(&[*b]), &mut out);
            }
            let joined: Vec<u8> = out
                .iter()
                .flat_map(|b| b.to_vec())
                .chain(s.pending().to_vec())
                .collect();
            assert_eq!(
                joined, raw,
                "{name}: relayed bytes must equal the upstream's"
            );
            assert!(out.len() > 2, "{name}");
        }
    }

    #[test]
    fn multi_line_data_is_joined() {
        let e = parse(b"data: a\ndata: b\n\n");
        assert_eq!(e.data.as_deref(), Some(&b"a\nb"[..]));
        assert!(parse(b": keep-alive\n\n").data.is_none());
    }
}
