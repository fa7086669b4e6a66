//! The log writer: formatted lines are appended to a shared buffer that a background thread
//! writes to stderr every [`FLUSH_EVERY`], or as soon as [`FLUSH_AT`] bytes wait.
//!
//! One `info` line per request is the data plane's access log. Through a channel to a writer
//! thread (what `tracing-appender` does) each line cost an allocation, a channel send and, as
//! the thread kept up, a wake-up and a `write(2)` of its own: about 6% of the data plane's CPU
//! under load. Here a line is one `memcpy` under a lock the request threads rarely contend
//! for, and the thread writes tens of kilobytes at a time.
//!
//! Not lossy: when [`MAX_BUFFERED`] bytes wait (stderr blocked), writers wait for the thread
//! rather than drop lines. A line reaches stderr at most [`FLUSH_EVERY`] after it was logged,
//! and every buffered line is written before [`LogGuard`] returns from its drop.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the thread before [`FLUSH_EVERY`].
pub const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes at which writers wait for the thread.
pub const MAX_BUFFERED: usize = 1024 * 1024;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signals the thread: enough bytes wait, or closing.
    flush: Condvar,
    /// Signals waiting writers: the buffer was taken.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cheap handle for `tracing_subscriber::fmt`'s writer: each formatted event is one `write`.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        while state.buf.len() >= MAX_BUFFERED && !state.closed {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            // After the guard is gone (the last lines of an exit): straight to stderr.
            drop(state);
            io::stderr().write_all(line)?;
            return Ok(line.len());
        }
        state.buf.extend_from_slice(line);
        if state.buf.len() >= FLUSH_AT {
            self.shared.flush.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

/// Writes what is buffered and stops the thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.flush.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread writing to `out` (stderr in the binary).
pub fn spawn(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || run(&shared, out)
        })?;
    Ok((
        LogWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run(shared: &Shared, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        let (mut full, closed) = {
            let mut state = shared.lock();
            if state.buf.len() < FLUSH_AT && !state.closed {
                state = shared
                    .flush
                    .wait_timeout(state, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let full = std::mem::replace(&mut state.buf, std::mem::take(&mut spare));
            (full, state.closed)
        };
        shared.room.notify_all();
        if !full.is_empty() {
            // Nowhere to report a failed write to stderr; the next lines try again.
            let _ = out.write_all(&full).and_then(|()| out.flush());
        }
        full.clear();
        // A burst may have grown the buffer to MAX_BUFFERED; keep only a normal one's worth.
        if full.capacity() > 2 * FLUSH_AT {
            full = Vec::new();
        }
        spare = full;
        if closed {
            // Writers that saw `closed` write directly; nothing can be left behind.
            let rest = std::mem::take(&mut shared.lock().buf);
            let _ = out.write_all(&rest).and_then(|()| out.flush());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A `Write` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_lands_whole_and_in_order_by_the_guards_drop() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_all(
                            format!("t{t} line {i:05} {}\n", "x".repeat(i % 300)).as_bytes(),
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 20_000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..5_000).collect::<Vec<_>>(),
                "thread {t}'s lines in order"
            );
        }
    }

    #[test]
    fn a_quiet_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (mut writer, _guard) = spawn(sink.clone()).unwrap();
        writer.write_all(b"one line\n").unwrap();
        let written = || !sink.0.lock().unwrap().is_empty();
        assert!(
            keyplane_testkit::wait_until(Duration::from_secs(5), written),
            "never written"
        );
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"one line\n");
    }
}
