//! Server-sent events, as far as relaying needs: split a byte stream into whole events (zero-copy
//! where a frame holds whole events), and read an event's name and data.
//!
//! Events are relayed as the upstream wrote them; this module never re-encodes one.

use bytes::{Bytes, BytesMut};
use std::borrow::Cow;

/// The largest event [`Splitter::default`] accepts. Text and tool calls arrive in small deltas,
/// but an image-generating model may send a whole base64 image in one event (several MiB at high
/// resolution); 16 MiB leaves room for that while one stream still cannot make the data plane
/// hold an unbounded line.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 << 20;

/// Splits arbitrary chunks into complete events, each with its terminating blank line.
///
/// Each byte is scanned for line ends once, however the stream is cut into chunks: the bytes of
/// an incomplete event are kept with the position scanning stopped at, so the work is linear in
/// what the upstream sent. An event (complete or not) longer than the limit stops the splitter:
/// it drops what it holds, ignores what follows, and [`Splitter::too_large`] says so.
pub struct Splitter {
    /// The incomplete event at the end of the stream so far.
    rest: BytesMut,
    /// Where the line being read starts in `rest` (`rest` itself starts at an event's start).
    line_start: usize,
    /// Scratch: the ends of the events one push completes.
    ends: Vec<usize>,
    max_event_bytes: usize,
    too_large: bool,
    /// Bytes looked at for line ends, over the splitter's life.
    scanned: u64,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl Splitter {
    /// A splitter that refuses events longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Splitter {
        Splitter {
            rest: BytesMut::new(),
            line_start: 0,
            ends: Vec::new(),
            max_event_bytes,
            too_large: false,
            scanned: 0,
        }
    }

    /// Appends `chunk`; pushes every event it completes onto `out`. Does nothing once an event
    /// was too large.
    pub fn push(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        if self.too_large || chunk.is_empty() {
            return;
        }
        self.ends.clear();
        // Whole events are slices of one buffer: the frame itself when nothing is pending (no
        // copy), else the pending bytes with the frame appended.
        let (data, line_start) = if self.rest.is_empty() {
            self.scanned += chunk.len() as u64;
            let line_start = event_ends(&chunk, 0, 0, &mut self.ends);
            (chunk, line_start)
        } else {
            let from = self.rest.len();
            self.rest.extend_from_slice(&chunk);
            self.scanned += (self.rest.len() - from) as u64;
            let line_start = event_ends(&self.rest, from, self.line_start, &mut self.ends);
            let last = self.ends.last().copied().unwrap_or(0);
            (self.rest.split_to(last).freeze(), line_start)
        };
        let mut start = 0;
        for i in 0..self.ends.len() {
            let end = self.ends[i];
            if !self.within(end - start) {
                return;
            }
            out.push(data.slice(start..end));
            start = end;
        }
        if start < data.len() {
            // The frame's incomplete tail (pending bytes were never frozen into `data`).
            if !self.within(data.len() - start) {
                return;
            }
            self.rest.extend_from_slice(&data[start..]);
        }
        if !self.within(self.rest.len()) {
            return;
        }
        self.line_start = line_start - start;
        // A short tail left in the buffer of a long event would keep all of it alive.
        if self.rest.capacity() > 64 * 1024 && self.rest.len() < self.rest.capacity() / 4 {
            self.rest = BytesMut::from(&self.rest[..]);
        }
    }

    /// Whether an event of `len` bytes (so far) is within the limit; if not, stops the splitter
    /// and frees what it holds.
    fn within(&mut self, len: usize) -> bool {
        if len <= self.max_event_bytes {
            return true;
        }
        self.too_large = true;
        self.rest = BytesMut::new();
        self.line_start = 0;
        false
    }

    /// Bytes of an incomplete event at the end of the stream so far.
    pub fn pending(&self) -> &[u8] {
        &self.rest
    }

    /// Whether an event went past the limit: the stream cannot be split any further.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// Bytes scanned for line ends so far (each byte pushed is scanned once; what is held is not
    /// scanned again).
    pub fn scanned_bytes(&self) -> u64 {
        self.scanned
    }
}

/// Pushes onto `ends` the end (one past the blank line's `\n`) of every event completed in
/// `data[from..]`, the line being read starting at `line_start`, with positions relative to
/// `data`. Returns where the last, unfinished line starts.
fn event_ends(data: &[u8], from: usize, mut line_start: usize, ends: &mut Vec<usize>) -> usize {
    for nl in memchr::memchr_iter(b'\n', &data[from..]).map(|i| i + from) {
        let line = &data[line_start..nl];
        if line.is_empty() || line == b"\r" {
            ends.push(nl + 1);
        }
        line_start = nl + 1;
    }
    line_start
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
        let mut streams = 0;
        for &(name, raw) in keyplane_testkit::samples::ALL {
            if !name.ends_with(".sse") {
                continue;
            }
            streams += 1;
            // Byte by byte: the worst fragmentation an upstream can produce.
            let mut s = Splitter::default();
            let mut out = Vec::new();
            for b in raw {
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
        assert!(streams >= 11, "every recorded SSE body, found {streams}");
    }

    /// The events a whole stream holds, split in one piece by the definition: an event ends at
    /// an empty line (`\n` or `\r\n`).
    fn reference(raw: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut events = Vec::new();
        let mut start = 0;
        let mut line_start = 0;
        for (i, b) in raw.iter().enumerate() {
            if *b == b'\n' {
                let line = &raw[line_start..i];
                if line.is_empty() || line == b"\r" {
                    events.push(raw[start..=i].to_vec());
                    start = i + 1;
                }
                line_start = i + 1;
            }
        }
        (events, raw[start..].to_vec())
    }

    #[test]
    fn any_cut_of_the_stream_gives_the_same_events() {
        let raw: &[u8] = b": c\n\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: y\n\n\n\r\n\ndata: z\ndata: w\n\ndata: tail";
        let (want, want_rest) = reference(raw);
        // Every pair of cut points, so each split position falls on every byte (`\r`, `\n`,
        // both halves of a CRLF).
        for a in 0..=raw.len() {
            for b in a..=raw.len() {
                let mut s = Splitter::default();
                let mut out = Vec::new();
                for part in [&raw[..a], &raw[a..b], &raw[b..]] {
                    s.push(Bytes::copy_from_slice(part), &mut out);
                }
                let got: Vec<Vec<u8>> = out.iter().map(|e| e.to_vec()).collect();
                assert_eq!(got, want, "cut at {a}, {b}");
                assert_eq!(s.pending(), &want_rest[..], "cut at {a}, {b}");
                assert_eq!(s.scanned_bytes(), raw.len() as u64);
            }
        }
    }

    #[test]
    fn a_line_fed_in_small_chunks_is_scanned_once() {
        // 1 MiB without a line end, 1 KiB at a time: each byte is looked at once, not once per
        // chunk that arrives after it.
        let mut s = Splitter::default();
        let mut out = Vec::new();
        let chunk = Bytes::from(vec![b'x'; 1024]);
        for _ in 0..1024 {
            s.push(chunk.clone(), &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(s.pending().len(), 1 << 20);
        assert_eq!(s.scanned_bytes(), 1 << 20);
        s.push(Bytes::from_static(b"\n\n"), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), (1 << 20) + 2);
        assert_eq!(s.scanned_bytes(), (1 << 20) + 2);
        assert!(s.pending().is_empty());
    }

    #[test]
    fn an_event_past_the_limit_stops_the_splitter() {
        // An unfinished line that grows past the limit.
        let mut s = Splitter::new(100);
        let mut out = Vec::new();
        s.push(Bytes::from_static(b"data: ok\n\ndata: "), &mut out);
        assert_eq!(out.len(), 1);
        for _ in 0..10 {
            s.push(Bytes::from(vec![b'x'; 20]), &mut out);
        }
        assert!(s.too_large());
        assert!(s.pending().is_empty(), "what it held is dropped");
        let scanned = s.scanned_bytes();
        s.push(Bytes::from_static(b"\n\ndata: more\n\n"), &mut out);
        assert_eq!(out.len(), 1, "nothing after the limit");
        assert_eq!(
            s.scanned_bytes(),
            scanned,
            "nothing scanned after the limit"
        );

        // A whole event over the limit in one frame, after one within it.
        let mut s = Splitter::new(100);
        let mut out = Vec::new();
        let mut frame = b"data: ok\n\ndata: ".to_vec();
        frame.extend_from_slice(&[b'y'; 200]);
        frame.extend_from_slice(b"\n\n");
        s.push(Bytes::from(frame), &mut out);
        assert_eq!(out.len(), 1);
        assert!(s.too_large());

        // Exactly at the limit is fine, pending or whole, in one frame or many.
        let event = [&[b'd'; 98][..], b"\n\n"].concat();
        let mut s = Splitter::new(100);
        let mut out = Vec::new();
        for b in &event {
            s.push(Bytes::copy_from_slice(&[*b]), &mut out);
        }
        s.push(Bytes::from(event.clone()), &mut out);
        assert!(!s.too_large());
        assert_eq!(out, vec![Bytes::from(event.clone()), Bytes::from(event)]);
    }

    #[test]
    fn multi_line_data_is_joined() {
        let e = parse(b"data: a\ndata: b\n\n");
        assert_eq!(e.data.as_deref(), Some(&b"a\nb"[..]));
        assert!(parse(b": keep-alive\n\n").data.is_none());
    }
}
