//! Fuzz harnesses for every parser that reads bytes from the network: the body of each
//! `cargo fuzz` target in the repository's `fuzz/` crate, with the invariants it checks.
//!
//! They live in the library, not in `fuzz/`, so that the stable replay test
//! (`tests/fuzz_corpus.rs`) runs literally the code the fuzzer ran: a corpus file that once passed
//! keeps passing, on stable, in `cargo test --workspace`. Each harness takes arbitrary bytes and
//! panics (an `assert!`) when an invariant breaks; "no panic" alone is never the whole check.
//!
//! Not part of the data plane's API: hidden from the docs and used only by the fuzz targets and
//! that test.

// A harness exists to panic when an invariant breaks: that is how libFuzzer and the replay test
// see a failure. Nothing in the server calls these functions.
#![allow(clippy::panic)]

use crate::protocol::bridge::{self, ClientRequest};
use crate::protocol::json::Entries;
use crate::protocol::shape::{Response, StreamNote};
use crate::protocol::usage::Usage;
use crate::protocol::{Dialect, anthropic, gemini, openai_chat, openai_responses};
use crate::sse;
use crate::usage::spool;
use bytes::Bytes;
use keyplane_proto::v1 as pb;
use prost::Message;

/// The model a rewrite puts in: quotes, a backslash and non-ASCII, so that its JSON encoding is
/// exercised too.
const NEW_MODEL: &str = "up/stream \"model\" \\ é";

// ---------------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------------

/// What one [`sse::Splitter`] gave: the events, the pending bytes, whether it stopped at a too
/// large event, and the bytes it scanned.
struct Split {
    events: Vec<Bytes>,
    pending: Vec<u8>,
    too_large: bool,
    scanned: u64,
}

/// Splits `stream` with a limit of `max` bytes per event, in chunks of the given lengths
/// (cycled, each `% 64`; a zero pushes an empty chunk, then one byte; the whole stream at once
/// when there are none).
fn split_chunked(stream: &[u8], lengths: &[u8], max: usize) -> Split {
    let mut splitter = sse::Splitter::new(max);
    let mut events = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let mut len = lengths
            .get(i % lengths.len().max(1))
            .map_or(stream.len(), |&l| usize::from(l % 64));
        if len == 0 {
            // An empty chunk, then a byte, so that the loop ends.
            splitter.push(Bytes::new(), &mut events);
            len = 1;
        }
        let end = (at + len).min(stream.len());
        splitter.push(Bytes::copy_from_slice(&stream[at..end]), &mut events);
        at = end;
        i += 1;
    }
    Split {
        events,
        pending: splitter.pending().to_vec(),
        too_large: splitter.too_large(),
        scanned: splitter.scanned_bytes(),
    }
}

/// The events of `stream` and its incomplete tail, split the plain way, with no limit.
fn reference_split(stream: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut events = Vec::new();
    let mut rest = stream;
    while let Some(end) = first_event_end(rest) {
        events.push(&rest[..end]);
        rest = &rest[end..];
    }
    (events, rest)
}

/// What an SSE consumer reads from one event, written the plain way (one line at a time, per the
/// WHATWG rules this relay needs): the last `event:` value and the `data:` lines joined by `\n`.
fn reference_parse(raw: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut name = None;
    let mut data: Option<Vec<u8>> = None;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (field, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => match &mut data {
                None => data = Some(value.to_vec()),
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
            },
            b"event" => name = Some(value.to_vec()),
            _ => {}
        }
    }
    (name, data)
}

/// Where the first event in `bytes` ends: just past the `\n` of its first blank line (empty,
/// or a lone `\r`).
fn first_event_end(bytes: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            let line = &bytes[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// [`sse::Splitter`] and [`sse::parse`]. Input: one control byte `k`, then `k % 16` bytes of chunk
/// lengths, then the stream. With `k`'s high bit set the splitter's event limit is small
/// (`1 + (k & 0x70) * 2` bytes), else the default.
///
/// - Whatever the chunking (whole, or the lengths from the input: byte by byte when they are all
///   1, zero-length chunks too), the splitter gives the events of the plain line-by-line split,
///   in order, each ending exactly at its first blank line, up to the first event (complete or
///   not) beyond the limit, where it stops and says so; without one, the events followed by the
///   pending bytes are exactly the stream: the relay neither drops, adds nor reorders a byte.
/// - It scans each byte once: linear work, however the stream is cut.
/// - [`sse::parse`] reads each event as the plain line-by-line reading does.
pub fn sse_splitter(input: &[u8]) {
    let Some((&k, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(k % 16).min(rest.len());
    let (lengths, stream) = rest.split_at(n);
    let max = if k & 0x80 != 0 {
        1 + usize::from(k & 0x70) * 2
    } else {
        sse::DEFAULT_MAX_EVENT_BYTES
    };
    let (reference, reference_pending) = reference_split(stream);
    // Where the reference split meets an event beyond the limit, if it does.
    let first_too_large = reference.iter().position(|e| e.len() > max);
    let expected_events = &reference[..first_too_large.unwrap_or(reference.len())];
    let expected_too_large = first_too_large.is_some() || reference_pending.len() > max;
    for chunking in [&[][..], lengths] {
        let split = split_chunked(stream, chunking, max);
        assert_eq!(
            split.too_large, expected_too_large,
            "too_large with limit {max}"
        );
        let events: Vec<&[u8]> = split.events.iter().map(|e| &e[..]).collect();
        assert_eq!(events, expected_events, "the events of the plain split");
        assert!(
            split.scanned <= stream.len() as u64,
            "{} bytes scanned for a stream of {}",
            split.scanned,
            stream.len()
        );
        if expected_too_large {
            assert!(split.pending.is_empty(), "a stopped splitter holds nothing");
        } else {
            assert_eq!(
                split.scanned,
                stream.len() as u64,
                "every byte scanned once"
            );
            assert_eq!(split.pending, reference_pending, "the incomplete tail");
            let mut joined = Vec::with_capacity(stream.len());
            for event in &split.events {
                joined.extend_from_slice(event);
            }
            joined.extend_from_slice(&split.pending);
            assert_eq!(joined, stream, "events + pending must be the input bytes");
        }
    }
    for raw in reference.iter().copied().chain([reference_pending, stream]) {
        let parsed = sse::parse(raw);
        let (name, data) = reference_parse(raw);
        assert_eq!(parsed.name.map(<[u8]>::to_vec), name, "event name");
        assert_eq!(
            parsed.data.as_deref().map(<[u8]>::to_vec),
            data,
            "event data"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The top-level entries of a JSON object, keys decoded and values as raw text.
fn entries(json: &[u8]) -> Vec<(String, String)> {
    let parsed: Result<Entries<'_>, _> = serde_json::from_slice(json);
    match parsed {
        Ok(Entries(entries)) => entries
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.get().to_string()))
            .collect(),
        Err(e) => {
            let text = String::from_utf8_lossy(json);
            panic!("a rewrite produced invalid JSON ({e}): {text}")
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Every dialect, each a client's and an upstream's.
const DIALECTS: [Dialect; 4] = [
    Dialect::OpenAiChat,
    Dialect::Anthropic,
    Dialect::OpenAiResponses,
    Dialect::Gemini,
];

/// A request of `client`'s dialect, decoded into the shape ([`bridge::decode_request`]) and
/// encoded for an upstream of each other dialect ([`bridge::encode_request`]): every encoding
/// that succeeds is a JSON object naming the upstream model.
fn check_translations(client: Dialect, body: &[u8]) {
    let Ok(req) = bridge::decode_request(client, body) else {
        return;
    };
    for upstream in DIALECTS.into_iter().filter(|d| *d != client) {
        if let Ok(encoded) = bridge::encode_request(upstream, &req, NEW_MODEL) {
            if upstream == Dialect::Gemini {
                check_gemini_request(&encoded.body);
            } else {
                check_translated_request(&encoded.body, NEW_MODEL);
            }
        }
    }
}

/// Checks a request translated for Gemini: a JSON object with a `contents` array and no model
/// (a Gemini upstream's model is in the URL), each turn `user` or `model`, each tool result named
/// after a function.
fn check_gemini_request(body: &[u8]) {
    let value = json_value(body, "a translated Gemini request");
    assert!(value.get("model").is_none(), "a Gemini body names no model");
    let Some(contents) = value.get("contents").and_then(|c| c.as_array()) else {
        panic!("a Gemini request without contents");
    };
    for turn in contents {
        let role = turn.get("role").and_then(|r| r.as_str());
        assert!(matches!(role, Some("user" | "model")), "role {role:?}");
        for part in turn
            .get("parts")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(r) = part.get("functionResponse") {
                assert!(r.get("name").is_some_and(|n| n.is_string()));
                assert!(r.get("response").is_some_and(|r| r.is_object()));
            }
            if let Some(c) = part.get("functionCall") {
                assert!(c.get("args").is_some_and(|a| a.is_object()));
            }
        }
    }
    if let Some(stops) = value.pointer("/generationConfig/stopSequences") {
        assert!(stops.as_array().is_some_and(|s| s.len() <= 5));
    }
}

/// Checks a translated request body: a JSON object whose `model` is `model`.
fn check_translated_request(body: &[u8], model: &str) {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => panic!("a translated request is not JSON ({e})"),
    };
    assert!(value.is_object(), "a translated request must be an object");
    assert_eq!(value.get("model").and_then(|m| m.as_str()), Some(model));
}

/// An OpenAI Chat Completions request body: [`openai_chat::ChatRequest::parse`] and `rewrite`,
/// and its translation for an upstream of each other dialect.
///
/// - A rewrite is valid JSON that parses again, with the new `model`, the same `stream` and
///   `max_tokens`, and every other top-level entry byte-identical and in order;
///   `force_include_usage` touches only `stream_options` (appended when absent) and makes
///   `include_usage` true.
/// - A translation that succeeds is a JSON object naming the upstream model
///   ([`check_translations`]).
pub fn openai_request(body: &[u8]) {
    if let Ok(req) = openai_chat::ChatRequest::parse(body) {
        assert!(!req.model.is_empty());
        let before = entries(body);
        for force in [false, true] {
            let out = req.rewrite(NEW_MODEL, force);
            let after = entries(&out);
            let again = match openai_chat::ChatRequest::parse(&out) {
                Ok(r) => r,
                Err(e) => panic!("a rewritten request no longer parses: {}", e.message),
            };
            assert_eq!(again.model, NEW_MODEL);
            assert_eq!(again.stream, req.stream);
            assert_eq!(again.max_tokens, req.max_tokens);
            assert_eq!(again.include_usage, req.include_usage || force);
            let appended = force && !before.iter().any(|(k, _)| k == "stream_options");
            assert_eq!(after.len(), before.len() + usize::from(appended));
            for ((k0, v0), (k1, v1)) in before.iter().zip(&after) {
                assert_eq!(k0, k1, "keys must keep their order");
                match k0.as_str() {
                    "model" => assert_eq!(v1, &json_string(NEW_MODEL)),
                    "stream_options" if force => {}
                    _ => assert_eq!(v0, v1, "entry {k0:?} must be byte-identical"),
                }
            }
            if appended {
                assert_eq!(
                    after.last().map(|(k, _)| k.as_str()),
                    Some("stream_options")
                );
            }
        }
    }
    check_translations(Dialect::OpenAiChat, body);
}

/// An Anthropic Messages request body: [`anthropic::MessagesRequest::parse`] and `rewrite`, and
/// its translation for an upstream of each other dialect. The same invariants as
/// [`openai_request`].
pub fn anthropic_request(body: &[u8]) {
    if let Ok(req) = anthropic::MessagesRequest::parse(body) {
        assert!(!req.model.is_empty());
        let before = entries(body);
        let out = req.rewrite(NEW_MODEL);
        let after = entries(&out);
        let again = match anthropic::MessagesRequest::parse(&out) {
            Ok(r) => r,
            Err(e) => panic!("a rewritten request no longer parses: {}", e.0),
        };
        assert_eq!(again.model, NEW_MODEL);
        assert_eq!(again.stream, req.stream);
        assert_eq!(again.max_tokens, req.max_tokens);
        assert_eq!(after.len(), before.len());
        for ((k0, v0), (k1, v1)) in before.iter().zip(&after) {
            assert_eq!(k0, k1, "keys must keep their order");
            if k0 == "model" {
                assert_eq!(v1, &json_string(NEW_MODEL));
            } else {
                assert_eq!(v0, v1, "entry {k0:?} must be byte-identical");
            }
        }
    }
    check_translations(Dialect::Anthropic, body);
}

/// An OpenAI Responses request body: [`openai_responses::ResponsesRequest::parse`] and `rewrite`,
/// and its translation ([`openai_responses::decode::request`], through
/// [`bridge::decode_request`]) for an upstream of each other dialect. The same invariants as
/// [`openai_request`].
pub fn responses_request(body: &[u8]) {
    if let Ok(req) = openai_responses::ResponsesRequest::parse(body) {
        assert!(!req.model.is_empty());
        let before = entries(body);
        let out = req.rewrite(NEW_MODEL);
        let after = entries(&out);
        let again = match openai_responses::ResponsesRequest::parse(&out) {
            Ok(r) => r,
            Err(e) => panic!("a rewritten request no longer parses: {}", e.message),
        };
        assert_eq!(again.model, NEW_MODEL);
        assert_eq!(again.stream, req.stream);
        assert_eq!(again.max_output_tokens, req.max_output_tokens);
        assert_eq!(after.len(), before.len());
        for ((k0, v0), (k1, v1)) in before.iter().zip(&after) {
            assert_eq!(k0, k1, "keys must keep their order");
            if k0 == "model" {
                assert_eq!(v1, &json_string(NEW_MODEL));
            } else {
                assert_eq!(v0, v1, "entry {k0:?} must be byte-identical");
            }
        }
    }
    check_translations(Dialect::OpenAiResponses, body);
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

/// Token counts as the biller takes them: a usage the plausibility gate lets through
/// ([`Usage::is_plausible`], which `proxy::Record::finish` applies to every usage it
/// bills) can be summed without overflow, so no total saturates and loses later records. The gate
/// is asked for the largest request there is, so only the per-bucket bound holds counts back.
fn check_billable(u: &Usage, what: &str) {
    if !u.is_plausible(u64::MAX) {
        return;
    }
    let counts = [
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
    ];
    let sum = counts.iter().try_fold(0u64, |acc, &c| acc.checked_add(c));
    assert!(
        sum.is_some(),
        "{what}: billable token counts {counts:?} overflow when summed"
    );
}

/// OpenAI usage in billing terms, as the proxy converts it (`None`: more cached than prompted).
fn openai_billing(u: &openai_chat::Usage) -> Option<Usage> {
    Usage::from_openai(u.prompt_tokens, u.completion_tokens, u.cached_tokens)
}

/// Anthropic usage in billing terms, as the proxy converts it.
fn anthropic_billing(u: &anthropic::Usage) -> Usage {
    Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_tokens: u.cache_read_input_tokens,
        cache_write_tokens: u.cache_creation_input_tokens,
    }
}

fn check_openai_usage(u: &openai_chat::Usage) {
    if let Some(b) = openai_billing(u) {
        check_billable(&b, "openai usage");
    }
}

fn check_anthropic_usage(u: &anthropic::Usage) {
    check_billable(&anthropic_billing(u), "anthropic usage");
}

fn check_billing_usage(u: &Usage) {
    check_billable(u, "translated usage");
}

/// OpenAI's `prompt_tokens` for a usage in billing terms, as the translators write it.
fn openai_prompt(u: &Usage) -> u64 {
    u.input_tokens
        .saturating_add(u.cache_read_tokens)
        .saturating_add(u.cache_write_tokens)
}

/// The first byte that is not JSON whitespace.
fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// `body` as a JSON value, when it is one with nothing a strict reader refuses (the shape
/// readers skip what they ignore without validating it, such as a lone surrogate escape in a
/// string, which clients' JSON parsers mostly accept too).
fn strict_json(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(body).ok()
}

fn json_value(bytes: &[u8], what: &str) -> serde_json::Value {
    match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => panic!(
            "{what} is not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Statuses an upstream error may come with, each branch of the error translators.
const ERROR_STATUSES: [u16; 9] = [400, 401, 403, 404, 413, 429, 500, 503, 529];

/// A non-streamed upstream body: [`openai_chat::completion_usage`], [`anthropic::message_usage`],
/// each dialect's answer decoder ([`bridge::decode_response`]) and the other dialects' answer
/// encoders, and [`bridge::upstream_error`] for every pair of dialects.
///
/// - Extracted token counts that the billing gate lets through can be summed without overflow.
/// - A body read as a completion (a message) is a JSON object with a `choices` array (`"type":
///   "message"` and a `content` array), and its usage is what the usage extractor reads.
/// - A translated response is JSON naming the client's model, and reading its usage back with the
///   client dialect's own extractor gives the counts the decoder read.
/// - A translated error is a JSON error object of the client's dialect, whatever the body; between
///   the two OpenAI dialects the error passes unchanged.
pub fn upstream_body(body: &[u8]) {
    let usage = openai_chat::completion_usage(body);
    if let Some(u) = &usage {
        check_openai_usage(u);
    }
    if let Some(c) = openai_chat::completion(body) {
        assert_eq!(first_byte(body), Some(b'{'), "a completion is an object");
        if let Some(v) = strict_json(body) {
            assert!(
                v.get("choices").is_some_and(|c| c.is_array()),
                "a completion without a choices array"
            );
        }
        if c.usage.is_some() {
            assert_eq!(c.usage, usage, "one body, two readings of its usage");
        }
    }
    let usage = anthropic::message_usage(body);
    if let Some(u) = &usage {
        check_anthropic_usage(u);
    }
    if let Some(m) = anthropic::message(body) {
        assert_eq!(first_byte(body), Some(b'{'), "a message is an object");
        if let Some(v) = strict_json(body) {
            assert_eq!(v.get("type").and_then(|t| t.as_str()), Some("message"));
            assert!(v.get("content").is_some_and(|c| c.is_array()));
        }
        if m.usage.is_some() {
            assert_eq!(m.usage, usage, "one body, two readings of its usage");
        }
    }
    for upstream in DIALECTS {
        let Some(resp) = bridge::decode_response(upstream, body) else {
            continue;
        };
        let usage = resp.metering.map(|m| m.usage);
        if let Some(u) = &usage {
            check_billing_usage(u);
        }
        for client in DIALECTS.into_iter().filter(|d| *d != upstream) {
            let out = encode_response(client, &resp);
            let v = json_value(&out, "a translated response");
            let model = if client == Dialect::Gemini {
                "modelVersion"
            } else {
                "model"
            };
            assert_eq!(v.get(model).and_then(|m| m.as_str()), Some(NEW_MODEL));
            if let Some(u) = usage {
                check_answer_usage(client, &out, &u);
            }
        }
    }
    for status in ERROR_STATUSES {
        for (client, upstream) in DIALECTS
            .into_iter()
            .flat_map(|c| DIALECTS.map(|u| (c, u)))
            .filter(|(c, u)| c != u)
        {
            let (s, out) =
                bridge::upstream_error(client, upstream, status, Bytes::copy_from_slice(body));
            if client == Dialect::Gemini {
                let v = json_value(&out, "a translated error");
                assert_eq!(s, if status == 529 { 503 } else { status });
                assert_eq!(
                    v.pointer("/error/code").and_then(|c| c.as_u64()),
                    Some(u64::from(s))
                );
                assert_eq!(
                    v.pointer("/error/status").and_then(|c| c.as_str()),
                    Some(gemini::status_name(s))
                );
                assert!(v.pointer("/error/message").is_some_and(|m| m.is_string()));
                continue;
            }
            if (client == Dialect::Anthropic) == (upstream == Dialect::Anthropic)
                && upstream != Dialect::Gemini
            {
                // OpenAI's two dialects write one error object: the error passes as it came.
                assert_eq!(
                    (s, &out[..]),
                    (status, body),
                    "an error between OpenAI dialects"
                );
                continue;
            }
            let v = json_value(&out, "a translated error");
            assert!(v.pointer("/error/message").is_some_and(|m| m.is_string()));
            if client == Dialect::Anthropic {
                assert_eq!(s, status);
                assert_eq!(v.get("type").and_then(|t| t.as_str()), Some("error"));
            } else {
                // OpenAI clients do not know Anthropic's 529.
                assert_eq!(s, if status == 529 { 503 } else { status });
            }
        }
    }
}

/// An answer in the shape as `client`'s dialect writes it for a client that asked for
/// [`NEW_MODEL`] (the encoders `ClientRequest::response` calls).
fn encode_response(client: Dialect, resp: &Response) -> Vec<u8> {
    match client {
        Dialect::OpenAiChat => openai_chat::encode::response(resp, NEW_MODEL),
        Dialect::Anthropic => anthropic::encode::response(resp, NEW_MODEL),
        Dialect::OpenAiResponses => openai_responses::encode::response(resp, NEW_MODEL),
        Dialect::Gemini => gemini::encode::response(resp, NEW_MODEL),
    }
}

/// Whether `sum` of the counts fits in a `u64`: where a dialect that adds buckets together (the
/// OpenAI dialects' input includes cached input) can write them without saturating.
fn sums_exactly(u: &Usage) -> bool {
    u.input_tokens
        .checked_add(u.cache_read_tokens)
        .and_then(|n| n.checked_add(u.cache_write_tokens))
        .and_then(|n| n.checked_add(u.output_tokens))
        .is_some()
}

/// Checks that an answer written for `client` carries `u`, read back with that dialect's own
/// usage reader.
fn check_answer_usage(client: Dialect, out: &[u8], u: &Usage) {
    const WHY: &str = "the translated body must carry the usage the translator returned";
    match client {
        Dialect::Anthropic => assert_eq!(
            anthropic::message_usage(out),
            Some(anthropic_usage(u)),
            "{WHY}"
        ),
        Dialect::OpenAiChat => {
            let back = openai_chat::completion_usage(out)
                .map(|b| (b.prompt_tokens, b.completion_tokens, b.cached_tokens));
            assert_eq!(
                back,
                Some((openai_prompt(u), u.output_tokens, u.cache_read_tokens)),
                "{WHY}"
            );
        }
        Dialect::OpenAiResponses => {
            let Some(back) = openai_responses::response(out) else {
                panic!("a translated response that is not a response object");
            };
            if sums_exactly(u) {
                assert_eq!(back.metering.map(|m| m.usage), Some(*u), "{WHY}");
            }
        }
        Dialect::Gemini => {
            let back = gemini::answer(out)
                .and_then(|a| a.metering)
                .map(|m| m.usage);
            if sums_exactly(u) {
                assert_eq!(back, Some(gemini_usage(u)), "{WHY}");
            }
        }
    }
}

/// Usage in billing terms as a Gemini client's `usageMetadata` reads back: Gemini counts no
/// cache writes apart, so they are prompt tokens.
fn gemini_usage(u: &Usage) -> Usage {
    Usage {
        input_tokens: u.input_tokens + u.cache_write_tokens,
        cache_write_tokens: 0,
        ..*u
    }
}

/// Usage in billing terms as Anthropic's `usage` reads.
fn anthropic_usage(u: &Usage) -> anthropic::Usage {
    anthropic::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: u.cache_write_tokens,
        cache_read_input_tokens: u.cache_read_tokens,
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// The whole events of `stream`, and its unterminated tail as a last event (an upstream that
/// closes mid-event), as the relay hands them on.
fn whole_events(stream: &[u8]) -> Vec<Bytes> {
    let mut splitter = sse::Splitter::default();
    let mut events = Vec::new();
    splitter.push(Bytes::copy_from_slice(stream), &mut events);
    if !splitter.pending().is_empty() {
        events.push(Bytes::copy_from_slice(splitter.pending()));
    }
    events
}

/// The events a translator wrote: every one whole, none left over.
fn translated_events(out: &[u8]) -> Vec<Bytes> {
    let mut splitter = sse::Splitter::default();
    let mut events = Vec::new();
    splitter.push(Bytes::copy_from_slice(out), &mut events);
    assert!(
        splitter.pending().is_empty(),
        "a translator wrote a partial event: {:?}",
        String::from_utf8_lossy(splitter.pending())
    );
    events
}

/// A streamed request of `client`'s dialect for [`NEW_MODEL`], as far as the bridge reads it to
/// answer (`include_usage`: an OpenAI Chat client's `stream_options.include_usage`; for a Gemini
/// client, the JSON-array framing instead of SSE).
fn client_request(client: Dialect, include_usage: bool) -> Vec<u8> {
    let body = match client {
        Dialect::OpenAiChat => serde_json::json!({"model": NEW_MODEL, "messages": [],
            "stream": true, "stream_options": {"include_usage": include_usage}}),
        Dialect::Anthropic => {
            serde_json::json!({"model": NEW_MODEL, "max_tokens": 1, "messages": [], "stream": true})
        }
        Dialect::OpenAiResponses => {
            serde_json::json!({"model": NEW_MODEL, "input": [], "stream": true})
        }
        Dialect::Gemini => serde_json::json!({"contents": []}),
    };
    body.to_string().into_bytes()
}

/// What a translated stream gave a client.
struct Translated {
    /// The client's bytes.
    out: Vec<u8>,
    /// The upstream reported an error, and the bridge wrote the client's error event.
    failed: bool,
    /// The counts the bridge held when the client's stream ended cleanly (its end marker, or
    /// `finish`); `None` when it failed.
    finished_with: Option<Option<Usage>>,
    /// The counts the bridge holds at the very end.
    usage: Option<Usage>,
}

/// `stream` from an upstream of `upstream`'s dialect through a [`bridge::Stream`] for a client of
/// `client`'s, fed as the relay feeds a committed stream: each whole event with data until the
/// client's stream ends (the upstream's end marker, or an error, for which the bridge writes the
/// client's error event); then, on a clean end, `finish`, which must be idempotent.
fn translate_stream(
    client: Dialect,
    upstream: Dialect,
    include_usage: bool,
    stream: &[u8],
) -> Translated {
    let request = client_request(client, include_usage);
    let parsed = match client {
        Dialect::Gemini => ClientRequest::parse_gemini(
            &request,
            NEW_MODEL,
            Some(if include_usage {
                gemini::Framing::JsonArray
            } else {
                gemini::Framing::Sse
            }),
        ),
        _ => ClientRequest::parse(client, &request),
    };
    let req = match parsed {
        Ok(req) => req,
        Err(e) => panic!("the harness's client request is refused: {}", e.message),
    };
    let mut translator = bridge::Stream::new(&req, upstream, "msg_fuzz");
    assert!(translator.is_translated(), "{client:?} from {upstream:?}");
    let usage = |t: &bridge::Stream| t.metering().map(|m| m.usage);
    let mut frames = Vec::new();
    let mut finished_with = None;
    let mut failed = false;
    for raw in whole_events(stream) {
        if sse::parse(&raw).data.is_none() {
            continue;
        }
        match translator.event(raw, true, &mut frames) {
            StreamNote::Error(_) => {
                failed = true;
                break;
            }
            StreamNote::Done => {
                finished_with = Some(usage(&translator));
                // The client's stream has ended; what the upstream sends after that is not the
                // translator's to show.
                break;
            }
            StreamNote::Content | StreamNote::Nothing => {}
        }
    }
    if !failed {
        translator.finish(&mut frames);
        finished_with.get_or_insert(usage(&translator));
        let mut again = Vec::new();
        translator.finish(&mut again);
        assert!(again.is_empty(), "finish must be idempotent");
    }
    let mut out = Vec::new();
    for frame in &frames {
        out.extend_from_slice(frame);
    }
    Translated {
        out,
        failed,
        finished_with,
        usage: usage(&translator),
    }
}

/// Checks a stream translated for `client`: see the checker of each dialect.
fn check_translated_stream(client: Dialect, include_usage: bool, t: &Translated) {
    if let Some(u) = &t.usage {
        check_billing_usage(u);
    }
    if let Some(Some(u)) = &t.finished_with {
        check_billing_usage(u);
    }
    match client {
        Dialect::Anthropic => check_anthropic_client_stream(t),
        Dialect::OpenAiChat => check_chat_client_stream(t, include_usage),
        Dialect::OpenAiResponses => check_responses_client_stream(t),
        Dialect::Gemini => check_gemini_client_stream(t, include_usage),
    }
}

/// A Gemini client's stream: `data: {chunk}\r\n\r\n` events, or (`array`) one JSON array of
/// chunks, valid JSON once whole. Every chunk is a `GenerateContentResponse` naming the client's
/// model, except an error object last when the stream failed; a finished stream's last chunk
/// has the finish reason and, read back by this dialect's own reader, the usage the bridge held.
fn check_gemini_client_stream(t: &Translated, array: bool) {
    let chunks: Vec<serde_json::Value> = if array {
        let v = json_value(&t.out, "a Gemini JSON-array stream");
        let Some(chunks) = v.as_array() else {
            panic!("a Gemini JSON-array stream that is not an array");
        };
        chunks.clone()
    } else {
        translated_events(&t.out)
            .iter()
            .map(|raw| {
                assert!(
                    raw.ends_with(b"\r\n\r\n"),
                    "Google ends events with CRLF CRLF"
                );
                let ev = sse::parse(raw);
                assert!(ev.name.is_none(), "Gemini events are unnamed");
                let Some(data) = ev.data.as_deref() else {
                    panic!("a translated event without data");
                };
                json_value(data, "a translated Gemini chunk")
            })
            .collect()
    };
    let Some(last) = chunks.last() else {
        panic!("a translated stream with no chunk");
    };
    let body = if t.failed {
        &chunks[..chunks.len() - 1]
    } else {
        &chunks[..]
    };
    if t.failed {
        assert!(
            last.pointer("/error/message")
                .is_some_and(|m| m.is_string())
        );
    }
    for (i, chunk) in body.iter().enumerate() {
        assert_eq!(
            chunk.get("modelVersion").and_then(|m| m.as_str()),
            Some(NEW_MODEL)
        );
        let finish = chunk.pointer("/candidates/0/finishReason");
        assert_eq!(
            finish.is_some(),
            !t.failed && i + 1 == body.len(),
            "a finish reason on the last chunk only"
        );
    }
    if let Some(u) = t.finished_with {
        let back = serde_json::to_vec(last)
            .ok()
            .and_then(|b| gemini::answer(&b))
            .and_then(|a| a.metering)
            .map(|m| m.usage);
        if u.as_ref().is_none_or(sums_exactly) {
            assert_eq!(
                back,
                u.map(|u| gemini_usage(&u)),
                "the last chunk must carry the usage the bridge bills"
            );
        }
    }
}

/// An Anthropic client's stream is whole Anthropic events, each named by its JSON data's `type`:
/// `message_start` first unless an error came first, then either one `message_stop` last, or an
/// error event last. Read back by [`anthropic::classify`], a finished stream reports the usage
/// the bridge held when it finished.
fn check_anthropic_client_stream(t: &Translated) {
    let events = translated_events(&t.out);
    let mut usage = anthropic::Usage::default();
    let mut kinds = Vec::new();
    for raw in &events {
        let ev = sse::parse(raw);
        let name = ev.name.map(|n| String::from_utf8_lossy(n).into_owned());
        let Some(data) = ev.data.as_deref() else {
            panic!("a translated event without data");
        };
        let v = json_value(data, "a translated event's data");
        assert_eq!(
            v.get("type").and_then(|t| t.as_str()),
            name.as_deref(),
            "an event's name must be its type"
        );
        let kind = anthropic::classify(ev.name, Some(data), &mut usage);
        kinds.push((name, kind));
    }
    let Some((last_name, last_kind)) = kinds.last() else {
        panic!("a translated stream with no event");
    };
    if kinds.len() > 1 || !t.failed {
        assert_eq!(
            kinds.first().and_then(|(n, _)| n.as_deref()),
            Some("message_start")
        );
    }
    let stops = kinds
        .iter()
        .filter(|(_, k)| *k == anthropic::Event::Done)
        .count();
    if t.failed {
        assert_eq!(last_name.as_deref(), Some("error"));
        assert!(matches!(last_kind, anthropic::Event::Error(_)));
        assert!(stops <= 1, "at most one message_stop");
    } else {
        assert_eq!(
            (last_name.as_deref(), last_kind),
            (Some("message_stop"), &anthropic::Event::Done)
        );
        assert_eq!(stops, 1, "one message_stop");
    }
    if let Some(u) = t.finished_with {
        assert_eq!(
            usage,
            anthropic_usage(&u.unwrap_or_default()),
            "the translated stream must carry the usage the bridge bills"
        );
    }
}

/// An OpenAI Chat client's stream is whole unnamed `data:` events of JSON chunks, ending with one
/// `[DONE]` or, after an upstream error, with an error chunk. Read back by
/// [`openai_chat::classify`], its usage chunk (present exactly when asked for) reports the usage
/// the bridge held when it finished.
fn check_chat_client_stream(t: &Translated, include_usage: bool) {
    let events = translated_events(&t.out);
    let mut reported = None;
    let mut dones = 0;
    for (i, raw) in events.iter().enumerate() {
        let ev = sse::parse(raw);
        assert!(ev.name.is_none(), "OpenAI chunks are unnamed");
        let Some(data) = ev.data.as_deref() else {
            panic!("a translated event without data");
        };
        let last = i + 1 == events.len();
        match openai_chat::classify(None, Some(data)) {
            openai_chat::Chunk::Done => {
                assert!(
                    last && !t.failed,
                    "[DONE] must come last, once, and not after an error"
                );
                dones += 1;
            }
            openai_chat::Chunk::Error { .. } => {
                assert!(
                    last && t.failed,
                    "an error chunk only for an upstream error, last"
                );
            }
            openai_chat::Chunk::UsageOnly(u) => {
                assert!(reported.is_none(), "one usage chunk");
                reported = Some(u);
            }
            openai_chat::Chunk::Content { .. } | openai_chat::Chunk::Preamble => {
                json_value(data, "a translated chunk");
            }
        }
    }
    assert_eq!(
        dones,
        usize::from(!t.failed),
        "[DONE] ends a stream that did not fail"
    );
    if let Some(u) = t.finished_with
        && include_usage
    {
        let u = u.unwrap_or_default();
        let Some(r) = reported else {
            panic!("include_usage asked for a usage chunk");
        };
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.cached_tokens),
            (openai_prompt(&u), u.output_tokens, u.cache_read_tokens),
            "the usage chunk must carry the bridge's usage"
        );
    }
    if !include_usage {
        assert!(reported.is_none(), "a usage chunk nobody asked for");
    }
}

/// A Responses client's stream is whole events, each named by its JSON data's `type` and
/// numbered by `sequence_number` from 0 without a gap: `response.created` first unless an error
/// came first, then either one `response.completed` or `response.incomplete` last, or `error`
/// then `response.failed`. Read back by [`openai_responses::classify`], the end reports the usage
/// the bridge held when it finished.
fn check_responses_client_stream(t: &Translated) {
    let events = translated_events(&t.out);
    let mut kinds = Vec::new();
    for (i, raw) in events.iter().enumerate() {
        let ev = sse::parse(raw);
        let name = ev.name.map(|n| String::from_utf8_lossy(n).into_owned());
        let Some(data) = ev.data.as_deref() else {
            panic!("a translated event without data");
        };
        let v = json_value(data, "a translated event's data");
        assert_eq!(
            v.get("type").and_then(|t| t.as_str()),
            name.as_deref(),
            "an event's name must be its type"
        );
        assert_eq!(
            v.get("sequence_number").and_then(|n| n.as_u64()),
            Some(i as u64),
            "events are numbered from 0 in order"
        );
        kinds.push((name, openai_responses::classify(ev.name, Some(data))));
    }
    let Some((last_name, last_kind)) = kinds.last() else {
        panic!("a translated stream with no event");
    };
    if kinds.len() > 2 || !t.failed {
        assert_eq!(
            kinds.first().and_then(|(n, _)| n.as_deref()),
            Some("response.created")
        );
    }
    let ends = kinds
        .iter()
        .filter(|(_, k)| matches!(k, openai_responses::Chunk::Done { .. }))
        .count();
    if t.failed {
        let names: Vec<Option<&str>> = kinds.iter().map(|(n, _)| n.as_deref()).collect();
        assert!(
            names.ends_with(&[Some("error"), Some("response.failed")]),
            "a failed stream ends with error then response.failed: {names:?}"
        );
        assert!(matches!(last_kind, openai_responses::Chunk::Error { .. }));
        assert!(ends <= 1, "at most one end");
    } else {
        assert!(
            matches!(
                last_name.as_deref(),
                Some("response.completed" | "response.incomplete")
            ),
            "{last_name:?} last"
        );
        assert_eq!(ends, 1, "one end");
        if let (Some(u), openai_responses::Chunk::Done { metering }) = (t.finished_with, last_kind)
            && u.as_ref().is_none_or(sums_exactly)
        {
            assert_eq!(
                metering.map(|m| m.usage),
                u,
                "the end must carry the usage the bridge bills"
            );
        }
    }
}

/// An OpenAI Chat upstream stream: [`openai_chat::classify`] and [`openai_chat::may_matter`] on
/// each event, as the relay reads them, and the stream translated for each other client dialect
/// ([`translate_stream`]).
///
/// - An event that carries usage, an error or the end is one that `may_matter` keeps (unless its
///   keys are escaped, which no encoder does for ASCII names).
/// - Usage counts the billing gate lets through can be summed.
/// - Each translation is a whole stream of the client's dialect that carries the usage the bridge
///   bills ([`check_translated_stream`]).
pub fn openai_stream(stream: &[u8]) {
    for raw in whole_events(stream) {
        let ev = sse::parse(&raw);
        let data = ev.data.as_deref();
        let chunk = openai_chat::classify(ev.name, data);
        let matters = match &chunk {
            openai_chat::Chunk::Error { .. }
            | openai_chat::Chunk::UsageOnly(_)
            | openai_chat::Chunk::Done => true,
            openai_chat::Chunk::Content { usage } => usage.is_some(),
            openai_chat::Chunk::Preamble => false,
        };
        if let (true, Some(d)) = (matters, data)
            && !d.contains(&b'\\')
        {
            assert!(
                openai_chat::may_matter(ev.name, d),
                "may_matter skips an event that carries usage, an error or the end"
            );
        }
        match &chunk {
            openai_chat::Chunk::Content { usage: Some(u) }
            | openai_chat::Chunk::UsageOnly(u)
            | openai_chat::Chunk::Error { usage: Some(u), .. } => check_openai_usage(u),
            _ => {}
        }
    }
    for client in [
        Dialect::Anthropic,
        Dialect::OpenAiResponses,
        Dialect::Gemini,
    ] {
        let t = translate_stream(client, Dialect::OpenAiChat, false, stream);
        check_translated_stream(client, false, &t);
    }
}

/// An Anthropic upstream stream (one control byte, then the SSE bytes): [`anthropic::classify`]
/// on each event, and the stream translated for each other client dialect (an OpenAI Chat
/// client's `include_usage` from the control byte).
///
/// - Usage counts the billing gate lets through can be summed.
/// - Each translation is a whole stream of the client's dialect that carries the usage the bridge
///   bills ([`check_translated_stream`]).
pub fn anthropic_stream(input: &[u8]) {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let include_usage = control & 1 == 1;
    let mut usage = anthropic::Usage::default();
    for raw in whole_events(stream) {
        let ev = sse::parse(&raw);
        anthropic::classify(ev.name, ev.data.as_deref(), &mut usage);
        check_anthropic_usage(&usage);
    }
    for client in [
        Dialect::OpenAiChat,
        Dialect::OpenAiResponses,
        Dialect::Gemini,
    ] {
        let t = translate_stream(client, Dialect::Anthropic, include_usage, stream);
        check_translated_stream(client, include_usage, &t);
    }
}

/// An OpenAI Responses upstream stream (one control byte, then the SSE bytes):
/// [`openai_responses::classify`] and [`openai_responses::may_matter`] on each event, as the
/// relay reads them, and the stream translated for each other client dialect (an OpenAI Chat
/// client's `include_usage` from the control byte).
///
/// - An event that ends the stream, reports an error or carries usage is one that `may_matter`
///   keeps (unless its keys are escaped).
/// - Usage counts the billing gate lets through can be summed.
/// - Each translation is a whole stream of the client's dialect that carries the usage the bridge
///   bills ([`check_translated_stream`]).
pub fn responses_stream(input: &[u8]) {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let include_usage = control & 1 == 1;
    for raw in whole_events(stream) {
        let ev = sse::parse(&raw);
        let data = ev.data.as_deref();
        let (matters, metering) = match openai_responses::classify(ev.name, data) {
            openai_responses::Chunk::Done { metering }
            | openai_responses::Chunk::Error { metering, .. } => (true, metering),
            openai_responses::Chunk::Content | openai_responses::Chunk::Preamble => (false, None),
        };
        if let (true, Some(d)) = (matters, data)
            && !d.contains(&b'\\')
        {
            assert!(
                openai_responses::may_matter(ev.name, d),
                "may_matter skips an event that ends the stream or reports an error"
            );
        }
        if let Some(m) = metering {
            check_billable(&m.usage, "responses usage");
        }
    }
    for client in [Dialect::OpenAiChat, Dialect::Anthropic, Dialect::Gemini] {
        let t = translate_stream(client, Dialect::OpenAiResponses, include_usage, stream);
        check_translated_stream(client, include_usage, &t);
    }
}

/// A Gemini request body: [`gemini::GenerateRequest::parse`] for each framing, its pass-through
/// to a Gemini upstream, and its translation for an upstream of each other dialect.
///
/// - A parsed request has the URL's model (without `models/`) and the framing it was given,
///   and a Gemini upstream gets the client's bytes unchanged.
/// - Its OpenAPI schemas rewritten for another dialect
///   ([`gemini::decode::json_schema_types`]), the body is JSON with the same entries.
/// - A translation that succeeds is a JSON object naming the upstream model
///   ([`check_translations`]).
pub fn gemini_request(body: &[u8]) {
    for framing in [
        None,
        Some(gemini::Framing::Sse),
        Some(gemini::Framing::JsonArray),
    ] {
        let Ok(req) = ClientRequest::parse_gemini(body, "models/gemini-x", framing) else {
            continue;
        };
        assert_eq!(req.model(), "gemini-x");
        assert_eq!(req.stream(), framing.is_some());
        match req.upstream_body(body, Dialect::Gemini, NEW_MODEL) {
            Ok(out) => {
                assert_eq!(
                    &out.body[..],
                    body,
                    "a Gemini upstream gets the client's bytes"
                );
                assert!(out.dropped.is_empty());
            }
            Err(e) => panic!("a Gemini pass-through failed: {}", e.message),
        }
    }
    if let Some(out) = gemini::decode::json_schema_types(body) {
        let before: Vec<String> = entries(body).into_iter().map(|(k, _)| k).collect();
        let after: Vec<String> = entries(&out).into_iter().map(|(k, _)| k).collect();
        assert_eq!(before, after, "a schema rewrite keeps the body's entries");
        check_translations(Dialect::Gemini, &out);
    }
    check_translations(Dialect::Gemini, body);
}

/// A Gemini upstream stream (one control byte, then the `alt=sse` bytes): the pass-through scan
/// for a Gemini client in both framings, and the stream translated for each other client dialect
/// (an OpenAI Chat client's `include_usage` from the control byte).
///
/// - Relayed as SSE, the client gets the upstream's bytes; as a JSON array, the data of each
///   event as one element, and the whole is valid JSON when the data was.
/// - Both framings bill the same usage, one the billing gate lets through and can sum.
/// - Each translation is a whole stream of the client's dialect that carries the usage the bridge
///   bills ([`check_translated_stream`]).
pub fn gemini_stream(input: &[u8]) {
    let Some((&control, stream)) = input.split_first() else {
        return;
    };
    let include_usage = control & 1 == 1;
    let request = br#"{"contents":[]}"#;
    let mut billed = Vec::new();
    for framing in [gemini::Framing::Sse, gemini::Framing::JsonArray] {
        let Ok(req) = ClientRequest::parse_gemini(request, NEW_MODEL, Some(framing)) else {
            panic!("the harness's client request is refused");
        };
        let mut relay = bridge::Stream::new(&req, Dialect::Gemini, "msg_fuzz");
        assert!(!relay.is_translated());
        let mut frames = Vec::new();
        // What a JSON-array client must get: each event's data as an element, up to and
        // including an error, then the close.
        let mut expected = Vec::new();
        let mut closed = false;
        for raw in whole_events(stream) {
            if let (Some(data), false) = (sse::parse(&raw).data, closed) {
                expected.extend_from_slice(if expected.is_empty() { b"[" } else { b",\r\n" });
                expected.extend_from_slice(&data);
                if matches!(gemini::relay::classify(&data).0, StreamNote::Error(_)) {
                    expected.push(b']');
                    closed = true;
                }
            }
            relay.event(raw, true, &mut frames);
        }
        relay.finish(&mut frames);
        let out: Vec<u8> = frames.concat();
        if framing == gemini::Framing::Sse {
            let upstream: Vec<u8> = whole_events(stream).concat();
            assert_eq!(out, upstream, "an SSE client gets the upstream's bytes");
        } else {
            if !closed {
                if expected.is_empty() {
                    expected.push(b'[');
                }
                expected.push(b']');
            }
            assert_eq!(
                out, expected,
                "each event's data is one element, bytes unchanged"
            );
        }
        if let Some(m) = relay.metering() {
            check_billable(&m.usage, "gemini usage");
        }
        billed.push(relay.metering());
    }
    assert_eq!(billed[0], billed[1], "both framings bill the same");
    for client in [
        Dialect::OpenAiChat,
        Dialect::Anthropic,
        Dialect::OpenAiResponses,
    ] {
        let t = translate_stream(client, Dialect::Gemini, include_usage, stream);
        check_translated_stream(client, include_usage, &t);
    }
}

// ---------------------------------------------------------------------------------------------
// Spool
// ---------------------------------------------------------------------------------------------

const FRAME_HEADER_BYTES: usize = 8;

/// A frame's payload length and checksum at `offset`, if a whole header is there.
fn frame_header(segment: &[u8], offset: usize) -> Option<(usize, u32)> {
    let header = segment.get(offset..offset.checked_add(FRAME_HEADER_BYTES)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    Some((usize::try_from(len).ok()?, crc))
}

/// Builds a segment from a script: each frame is one byte (low 7 bits: payload length; high
/// bit: a wrong checksum), then that many payload bytes (fewer at the end: a torn frame).
/// Returns the segment and how many leading frames are good (whole, checksum right, payload a
/// `UsageRecord`).
fn framed_segment(script: &[u8]) -> (Vec<u8>, usize) {
    let mut segment = Vec::new();
    let mut good = 0;
    let mut all_good = true;
    let mut at = 0;
    while let Some(&b) = script.get(at) {
        let len = usize::from(b & 0x7f);
        let corrupt = b & 0x80 != 0;
        let payload = &script[at + 1..(at + 1 + len).min(script.len())];
        at = at + 1 + len;
        let crc = crc32fast::hash(payload) ^ u32::from(corrupt);
        segment.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
        segment.extend_from_slice(&crc.to_le_bytes());
        segment.extend_from_slice(payload);
        let ok = !corrupt && payload.len() == len && pb::UsageRecord::decode(payload).is_ok();
        all_good &= ok;
        if all_good {
            good += 1;
        }
    }
    (segment, good)
}

/// The spool's segment decoder, [`spool::decode_segment`] (what a restarted data plane reads its
/// unreported usage back with). Input: one mode byte; even: the rest is a segment file as is;
/// odd: the rest is a script for well-formed frames (see `framed_segment`), so that the fuzzer
/// gets past the checksums.
///
/// - It never reads past the buffer and stops exactly where the first bad frame starts (a torn
///   tail is reported iff bytes remain).
/// - Every record it yields is the payload of a frame whose length and checksum held, in file
///   order, and decodes to the same `UsageRecord` with the same request id.
/// - On a scripted segment it yields exactly the leading good frames.
pub fn spool_segment(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let (segment, expected) = if mode & 1 == 0 {
        (rest.to_vec(), None)
    } else {
        let (segment, good) = framed_segment(rest);
        (segment, Some(good))
    };
    let decoded = spool::decode_segment(Bytes::from(segment.clone()));
    assert!(decoded.valid_bytes <= segment.len(), "read past the buffer");
    assert_eq!(
        decoded.torn.is_none(),
        decoded.valid_bytes == segment.len(),
        "a torn tail is reported iff bytes are left: {:?}",
        decoded.torn
    );
    if let Some(torn) = &decoded.torn {
        let offset = match torn {
            spool::SpoolError::ShortHeader { offset }
            | spool::SpoolError::TooLong { offset, .. }
            | spool::SpoolError::ShortPayload { offset, .. }
            | spool::SpoolError::Checksum { offset }
            | spool::SpoolError::Decode { offset, .. } => *offset,
        };
        assert_eq!(
            offset, decoded.valid_bytes,
            "the tear is where reading stopped"
        );
    }
    let mut offset = 0;
    for record in &decoded.records {
        let Some((len, crc)) = frame_header(&segment, offset) else {
            panic!("a record without a whole frame header at {offset}");
        };
        let start = offset + FRAME_HEADER_BYTES;
        let Some(payload) = segment.get(start..start + len) else {
            panic!("a record whose payload runs past the buffer at {offset}");
        };
        assert_eq!(
            crc32fast::hash(payload),
            crc,
            "a record whose checksum failed"
        );
        let from_file = pb::UsageRecord::decode(payload);
        let from_record = pb::UsageRecord::decode(record.bytes().clone());
        let (Ok(from_file), Ok(from_record)) = (from_file, from_record) else {
            panic!("a record that does not decode at {offset}");
        };
        assert_eq!(
            from_file, from_record,
            "a record must be its frame's payload"
        );
        assert_eq!(record.request_id(), from_file.request_id);
        offset = start + len;
    }
    assert_eq!(
        offset, decoded.valid_bytes,
        "records must cover the valid bytes"
    );
    if let Some(good) = expected {
        assert_eq!(
            decoded.records.len(),
            good,
            "the leading good frames, all of them"
        );
    }
}

/// A harness: arbitrary bytes in, a panic when an invariant breaks.
pub type Harness = fn(&[u8]);

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

/// An embeddings request body, read as OpenAI's `/v1/embeddings` and as Gemini's `embedContent`
/// and `batchEmbedContents`.
///
/// - A request read has 1 to `MAX_INPUTS` inputs and a token estimate of at least one per input.
/// - An OpenAI client's body for an OpenAI upstream is its own entries with only `model`
///   replaced: byte for byte the same otherwise, in order.
/// - Every upstream body built is a JSON object with the upstream model and one input (or one
///   Gemini request, each naming `models/{id}`) per input; a Gemini body is refused only for
///   token ids or more inputs than a Gemini batch takes.
pub fn embeddings_request(body: &[u8]) {
    use crate::protocol::embeddings::{EmbedRequest, Inputs, MAX_GEMINI_BATCH, MAX_INPUTS};
    use serde_json::Value;
    let check = |req: &EmbedRequest<'_>| {
        let n = req.count();
        assert!((1..=MAX_INPUTS).contains(&n), "{n} inputs");
        assert!(req.token_estimate() >= n as u64);
        if let Ok(out) = req.openai_body(NEW_MODEL) {
            let v: Value = serde_json::from_slice(&out.body)
                .unwrap_or_else(|e| panic!("OpenAI upstream body is not JSON: {e}"));
            assert_eq!(v["model"], NEW_MODEL);
        }
        match req.gemini_body(NEW_MODEL) {
            Ok(out) => {
                let v: Value = serde_json::from_slice(&out.body)
                    .unwrap_or_else(|e| panic!("Gemini upstream body is not JSON: {e}"));
                let requests = v["requests"].as_array().map_or(0, |r| {
                    assert!(
                        r.iter()
                            .all(|item| item["model"] == format!("models/{NEW_MODEL}"))
                    );
                    r.len()
                });
                assert_eq!(requests, n);
            }
            Err(_) => assert!(
                matches!(req.inputs, Inputs::Tokens(_)) || n > MAX_GEMINI_BATCH,
                "a Gemini body refused for text inputs within a batch"
            ),
        }
    };
    if let Ok(req) = EmbedRequest::parse_openai(body) {
        check(&req);
        let out = req
            .openai_body(NEW_MODEL)
            .unwrap_or_else(|e| panic!("an OpenAI pass-through failed: {e}"));
        assert!(out.dropped.is_empty());
        let before = serde_json::from_slice::<Entries<'_>>(body).map(|e| e.0);
        let after = serde_json::from_slice::<Entries<'_>>(&out.body).map(|e| e.0);
        let (Ok(before), Ok(after)) = (before, after) else {
            panic!("the rewrite is not a JSON object");
        };
        assert_eq!(before.len(), after.len());
        for ((k0, v0), (k1, v1)) in before.iter().zip(&after) {
            assert_eq!(k0, k1);
            if k0 != "model" {
                assert_eq!(v0.get(), v1.get(), "entry {k0} changed");
            }
        }
    }
    for batch in [false, true] {
        if let Ok(req) = EmbedRequest::parse_gemini("models/gemini-x", body, batch) {
            check(&req);
        }
    }
}

/// An upstream's embeddings answer: one control byte (bits 0–1: how many vectors are expected,
/// 1 to 4; bit 2: a Gemini answer, else OpenAI's; bits 3–4: the client, OpenAI floats, OpenAI
/// base64, Gemini `embedContent` or `batchEmbedContents`), then the body.
///
/// - An answer read holds exactly the expected vectors, and its count is the one it states.
/// - Written for the client, it is JSON of the client's shape with every vector, each of the
///   same `f32`s whatever its form (floats as they came, or base64 of little-endian `f32`s).
pub fn embeddings_answer(input: &[u8]) {
    use crate::protocol::embeddings::{self, EmbedRequest, Vector, decode_base64};
    use serde_json::Value;
    let Some((&control, body)) = input.split_first() else {
        return;
    };
    let expected = usize::from(control & 3) + 1;
    let read = if control & 4 != 0 {
        embeddings::read_gemini(body, expected)
    } else {
        embeddings::read_openai(body, expected)
    };
    let Ok(vectors) = read else {
        return;
    };
    assert_eq!(vectors.items.len(), expected);
    let texts: Vec<String> = (0..expected).map(|i| format!("t{i}")).collect();
    let client_body = match (control >> 3) & 3 {
        0 => serde_json::json!({"model": "m", "input": texts}).to_string(),
        1 => serde_json::json!({"model": "m", "input": texts, "encoding_format": "base64"})
            .to_string(),
        2 if expected == 1 => r#"{"content":{"parts":[{"text":"t"}]}}"#.to_string(),
        _ => {
            let requests: Vec<Value> = texts
                .iter()
                .map(|t| serde_json::json!({"content": {"parts": [{"text": t}]}}))
                .collect();
            serde_json::json!({ "requests": requests }).to_string()
        }
    };
    let req = match (control >> 3) & 3 {
        0 | 1 => EmbedRequest::parse_openai(client_body.as_bytes()),
        2 if expected == 1 => EmbedRequest::parse_gemini("g", client_body.as_bytes(), false),
        _ => EmbedRequest::parse_gemini("g", client_body.as_bytes(), true),
    }
    .unwrap_or_else(|e| panic!("the client request is refused: {}", e.message));
    let floats_of = |v: &Value| -> Vec<f32> {
        match v {
            Value::String(b64) => {
                decode_base64(b64).unwrap_or_else(|e| panic!("written base64 does not decode: {e}"))
            }
            Value::Array(items) => items
                .iter()
                .map(|f| f.as_f64().unwrap_or_else(|| panic!("{f} is not a number")) as f32)
                .collect(),
            other => panic!("a vector written as {other}"),
        }
    };
    let want: Vec<Vec<f32>> = vectors
        .items
        .iter()
        .map(|v| match v {
            Vector::Floats(raw) => serde_json::from_str::<Vec<f64>>(raw.get())
                .unwrap_or_else(|e| panic!("kept floats do not parse: {e}"))
                .into_iter()
                .map(|f| f as f32)
                .collect(),
            Vector::Base64(b64) => {
                decode_base64(b64).unwrap_or_else(|e| panic!("kept base64 does not decode: {e}"))
            }
        })
        .collect();
    let written = match req.encode(&vectors, 7) {
        Ok(w) => w,
        // Only a component that is no finite f32 stops a vector from changing form.
        Err(_) => {
            assert!(
                want.iter().flatten().any(|f| !f.is_finite()),
                "a read answer of finite f32s could not be written"
            );
            return;
        }
    };
    let out: Value = serde_json::from_slice(&written)
        .unwrap_or_else(|e| panic!("the written answer is not JSON: {e}"));
    let got: Vec<Vec<f32>> = match req.client {
        embeddings::Client::OpenAi => {
            assert_eq!(out["usage"]["prompt_tokens"], 7);
            assert_eq!(out["model"], "m");
            let data = out["data"].as_array().map_or(&[][..], Vec::as_slice);
            data.iter().map(|d| floats_of(&d["embedding"])).collect()
        }
        embeddings::Client::GeminiOne => vec![floats_of(&out["embedding"]["values"])],
        embeddings::Client::GeminiBatch => {
            let list = out["embeddings"].as_array().map_or(&[][..], Vec::as_slice);
            list.iter().map(|e| floats_of(&e["values"])).collect()
        }
    };
    // Compared by bits: a vector relayed as it came may hold a NaN, which equals nothing.
    let bits = |vs: &[Vec<f32>]| -> Vec<Vec<u32>> {
        vs.iter()
            .map(|v| v.iter().map(|f| f.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&got), bits(&want));
}

/// Every harness, by the name of its fuzz target (and of its seed and corpus directories).
/// A Gemini call's path and query (the input split at its first `?`): the path split into model
/// and method ([`gemini_api::Call::of`]), the query's parameters, and the list's page tokens.
///
/// - A method is what follows the path's last `:` and holds no `:` itself.
/// - A model written back as a Gemini upstream URL writes it (percent-encoded, `/` kept) parses
///   back to the same call: no model can change the method read after it.
/// - A query parameter that is read reads the same once percent-encoded again.
/// - A page token decodes to the name it was made from.
pub fn gemini_path(input: &[u8]) {
    use crate::gemini_api::{self, Call};
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    for google_key in [false, true] {
        if let Some(Call::Method { model, method }) = Call::of(path, google_key) {
            assert!(!method.contains(':'), "{path:?}");
            assert!(path.ends_with(&format!(":{method}")), "{path:?}");
            let mut written = String::from("/v1beta/models/");
            crate::table::push_path_encoded(&mut written, &model);
            written.push(':');
            written.push_str(&method);
            assert_eq!(
                Call::of(&written, google_key),
                Some(Call::Method {
                    model: model.clone(),
                    method: method.clone()
                }),
                "{path:?} written as {written:?}"
            );
        }
    }
    for name in ["key", "alt", "pageToken", "pageSize"] {
        if let Some(value) = gemini_api::query_param(query, name) {
            let encoded: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
            assert_eq!(
                gemini_api::query_param(Some(&format!("{name}={encoded}")), name),
                Some(value)
            );
        }
    }
    if text.len() <= 1024 {
        assert_eq!(
            gemini_api::hex_decode(&gemini_api::hex_encode(text)).as_deref(),
            Some(text)
        );
    }
}

pub const TARGETS: &[(&str, Harness)] = &[
    ("sse_splitter", sse_splitter),
    ("openai_request", openai_request),
    ("anthropic_request", anthropic_request),
    ("upstream_body", upstream_body),
    ("openai_stream", openai_stream),
    ("anthropic_stream", anthropic_stream),
    ("responses_request", responses_request),
    ("responses_stream", responses_stream),
    ("spool_segment", spool_segment),
    ("gemini_request", gemini_request),
    ("gemini_stream", gemini_stream),
    ("embeddings_request", embeddings_request),
    ("embeddings_answer", embeddings_answer),
    ("gemini_path", gemini_path),
];
