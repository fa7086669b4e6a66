//! The text log's field formatter and clock: what `tracing_subscriber`'s defaults write, for
//! less CPU, because the access log writes one line per request.
//!
//! The default field formatter styles every field name through `nu_ansi_term` even when ANSI
//! is off and writes every integer through `core::fmt`; its clock formats the time through
//! `core::fmt` piece by piece. Avoiding that took the log's share of the data plane's CPU under
//! load from ~4% to ~2% (BENCHMARKS.md, "The access log's formatting and the spool writer's
//! wake-ups"). [`PlainFields`] writes a plain field itself and hands the rest (the message,
//! errors, `r#` names, `log.` metadata) to the default visitor, and a whole line to the default
//! formatter when ANSI is on (a terminal), so that the line is the default's, byte for byte:
//! the tests format the same events both ways.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::FormatTime;

/// Formats fields as [`tracing_subscriber::fmt::format::DefaultFields`] does.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() {
            // A terminal: styled names, one line at a time; the default as it is.
            return DefaultFields::new().format_fields(writer, fields);
        }
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'a> {
    writer: Writer<'a>,
    /// Nothing written yet: the next field needs no separating space.
    is_empty: bool,
    result: fmt::Result,
}

/// Counts what passes through, so that the default visitor's output tells whether it wrote.
struct Counting<'a, 'w> {
    inner: &'a mut Writer<'w>,
    written: usize,
}

impl fmt::Write for Counting<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.written += s.len();
        self.inner.write_str(s)
    }
}

impl PlainVisitor<'_> {
    /// Whether this visitor writes `field` itself: a plain name. The default visitor escapes
    /// messages, skips `log.` metadata and strips `r#`.
    fn plain(field: &Field) -> bool {
        let name = field.name();
        name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
    }

    /// Writes ` name=` (no space before the first field) and then `value`.
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !self.is_empty {
                self.writer.write_char(' ')?;
            }
            self.is_empty = false;
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
            value(&mut self.writer)
        })();
    }

    /// Lets the default visitor write the field, as if it had written every field so far.
    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut counting = Counting {
            inner: &mut self.writer,
            written: 0,
        };
        // `Writer::new`: ANSI off (as here) and escapes sanitized (the layer's default).
        let mut visitor = DefaultVisitor::new(Writer::new(&mut counting), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        if counting.written > 0 {
            self.is_empty = false;
        }
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if Self::plain(field) {
            self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
        } else {
            self.by_default(|v| v.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if Self::plain(field) {
            self.put(field, |w| w.write_str(itoa::Buffer::new().format(value)));
        } else {
            self.by_default(|v| v.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if Self::plain(field) {
            self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
        } else {
            self.by_default(|v| v.record_bool(field, value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if Self::plain(field) {
            self.put(field, |w| write!(w, "{value:?}"));
        } else {
            self.by_default(|v| v.record_str(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if Self::plain(field) {
            self.put(field, |w| write!(w, "{value:?}"));
        } else {
            self.by_default(|v| v.record_debug(field, value));
        }
    }
}

/// The wall clock as `tracing_subscriber`'s `SystemTime` writes it (RFC 3339, UTC,
/// microseconds: `2026-11-24T06:07:40.123456Z`), formatted by `humantime` in one piece.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(
            w,
            "{}",
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("upstream failed")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of field the data plane logs, and the ones the default treats specially.
    fn events() {
        let reported: Option<u64> = None;
        let cost: Option<u64> = Some(17);
        tracing::info!(
            request_id = %"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            client_key_id = %"key_1",
            model = %"bench/model",
            status = 200u32,
            input_tokens = 12u64,
            delta = -3i64,
            ratio = 0.25f64,
            reported_cost_nano_usd = reported,
            cost_nano_usd = cost,
            estimated = false,
            quoted = "a \"quoted\" \u{1b}[31m str",
            list = ?vec![1, 2],
            "request served"
        );
        tracing::warn!(
            r#type = "raw",
            "message with \u{1b}[31m an escape and {}",
            42
        );
        let err = Outer(std::io::Error::other("connection refused"));
        tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
        let plain = std::io::Error::other("no source");
        tracing::error!(
            error = &plain as &(dyn std::error::Error + 'static),
            after = 1u64
        );
        tracing::info!(only = 1u64);
        let span = tracing::info_span!("request", request_id = %"r-1", n = 5u64);
        let _entered = span.enter();
        tracing::debug!(inside = true, "in a span");
    }

    fn capture(ours: bool, ansi: bool) -> String {
        let out = Captured::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(out.clone())
            .with_ansi(ansi)
            .without_time();
        let subscriber =
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::DEBUG);
        if ours {
            tracing::subscriber::with_default(
                subscriber.with(layer.fmt_fields(PlainFields)),
                events,
            );
        } else {
            tracing::subscriber::with_default(subscriber.with(layer), events);
        }
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn fields_are_written_as_the_default_writes_them() {
        let ours = capture(true, false);
        let default = capture(false, false);
        assert_eq!(ours, default);
        // The comparison covers something: every event, span fields and the escaped message.
        assert_eq!(ours.lines().count(), 6, "{ours}");
        assert!(
            ours.contains("request served request_id=0193a1b2"),
            "{ours}"
        );
        assert!(ours.contains("cost_nano_usd=17 estimated=false"), "{ours}");
        assert!(ours.contains("request{request_id=r-1 n=5}"), "{ours}");
        assert!(ours.contains("type=\"raw\""), "{ours}");
        assert!(ours.contains("error.sources=["), "{ours}");
        assert!(!ours.contains('\u{1b}'), "{ours}");
    }

    #[test]
    fn with_ansi_on_everything_is_the_default() {
        assert_eq!(capture(true, true), capture(false, true));
    }

    #[test]
    fn the_clock_writes_what_tracing_subscriber_writes() {
        use tracing_subscriber::fmt::time::SystemTime;
        let shape = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_digit() { '9' } else { c })
                .collect()
        };
        let format = |timer: &dyn Fn(&mut Writer<'_>) -> fmt::Result| {
            let mut s = String::new();
            timer(&mut Writer::new(&mut s)).unwrap();
            s
        };
        let ours = format(&|w| Rfc3339Micros.format_time(w));
        let theirs = format(&|w| SystemTime.format_time(w));
        assert_eq!(shape(&ours), "9999-99-99T99:99:99.999999Z");
        assert_eq!(shape(&ours), shape(&theirs));
        // The same instant, give or take the moment between the two reads.
        let parse = |s: &str| humantime::parse_rfc3339(s).unwrap();
        let apart = parse(&theirs)
            .duration_since(parse(&ours))
            .unwrap_or_default();
        assert!(
            apart < std::time::Duration::from_secs(5),
            "{ours} vs {theirs}"
        );
    }
}
