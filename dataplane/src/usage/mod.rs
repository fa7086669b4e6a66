//! Usage reporting: a local spool on disk and a reporter that drains it into the control plane's
//! ledger, so that every finished request is billed exactly once and no request waits on it.
//!
//! # Design
//!
//! ```text
//!  request path                  writer task (spool.rs)          reporter task (reporter.rs)
//!  UsageSink::record ─write(2)─► seg-<seq>.log ◄─ sync_data ─mpsc─► batch ──ReportUsage──► control
//!   (no sync)                    (group commit)                     ◄── acked_ids / rejected
//!                                                                   delete settled segments
//! ```
//!
//! 1. [`UsageSink::record`] appends the record's frame to the open segment file: one `write(2)`
//!    into the page cache under the spool's lock, no sync, before the response ends. So a record
//!    survives a kill of the process from the moment its response ended. It never fails
//!    visibly: if the write fails, the record goes on a channel to the writer task, which retries
//!    it with backoff.
//! 2. The writer, woken by the first append of a group, sleeps 5 ms (the linger) so that a busy
//!    node makes fewer, larger syncs, then `sync_data`s what was appended (group commit) and
//!    only then hands the records to the reporter. Segments rotate at about 4096 records or 5 s
//!    after their first record.
//! 3. The reporter sends durable records in batches of up to 5000, at most about a second after
//!    the oldest one arrived, with a 10 s timeout per call, and retries failures forever with
//!    exponential backoff and jitter. A segment file is deleted once it is sealed and every record
//!    in it has been acked or rejected.
//!
//! # Why there is no ack log
//!
//! The control plane's ledger is idempotent by `request_id` (a record whose id is already stored
//! changes nothing and is acked again), and it acks only after a durable flush. So the spool may
//! always err towards sending again: at start every record of every segment on disk is re-sent,
//! including records acked just before a crash whose segment had not been deleted yet. They are
//! counted once. Keeping a separate, synced log of acks would only save some re-sending after a
//! crash, at the price of a second file to keep consistent.
//!
//! # Invariants
//!
//! - **Nothing is reported before it is durable locally**, and nothing leaves the spool before
//!   the control plane has it durably (acked) or has refused it for good (rejected).
//! - **Never counted twice**: every send, re-send and duplicate is keyed by `request_id`.
//! - **Never lost on a clean shutdown or a kill**: [`UsageHandle::shutdown`] closes the spool,
//!   syncs all it holds, then reports until the deadline; whatever is unacked stays on disk for
//!   the next start. A killed process (SIGKILL, OOM kill, panic) loses no record whose response
//!   ended: it is in the file. Only a machine crash (power loss, kernel panic) can lose records,
//!   those written since the last completed group sync: at most the linger (5 ms) plus two
//!   `sync_data` calls (one in progress when the record was written, then its own), which is the
//!   price of never syncing on the response path.
//! - **Torn tails are survivable**: a partly written frame ends its segment's valid records; the
//!   file is kept until its valid records are settled.
//!
//! # Limits
//!
//! The reporter holds at most `max_in_memory` durable records in memory (10,000 by default, about
//! 2.5 MB: each is its ~130 encoded bytes in the buffer of the group it was written with, plus
//! ~100 bytes of bookkeeping; records read back from disk keep their segment file's buffer, at
//! most 4,096 records' worth, until the last of them is settled); beyond that a backlog (a
//! control plane away or slower than the node) waits in its segment files and is read back,
//! oldest first, as acks make room. Records that carry captured bodies (`capture.rs`, up to
//! about 130 KB each) are bounded by bytes as well: at most 64 MiB of records in memory, 16 MiB
//! per call (far below the gRPC message limit), and segments sealed at 16 MiB, since a segment
//! is read back whole. A disk that refuses writes
//! still costs memory in proportion to the backlog (records wait in the channel), and so does
//! reading the spool at start (every segment is decoded once, then all but `max_in_memory`
//! records are let go). [`UsageStats`] shows both backlogs.

mod reporter;
pub(crate) mod spool;

use keyplane_proto::v1 as pb;
use rand::Rng;
use reporter::{Event, Reporter, ReporterConfig};
use spool::{SegmentLimits, Spool, WriterConfig};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// How long [`UsageHandle::shutdown`] waits for tasks it aborted at the deadline to be gone.
const ABORT_SLACK: Duration = Duration::from_millis(50);

/// Everything tunable, with the production values in `Default`; tests shorten the delays.
#[derive(Clone, Copy, Debug)]
struct Config {
    writer: WriterConfig,
    reporter: ReporterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            writer: WriterConfig {
                max_group: 1024,
                limits: SegmentLimits {
                    max_records: 4096,
                    max_age: Duration::from_secs(5),
                    max_bytes: 16 << 20,
                },
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(10),
                linger: Duration::from_millis(5),
            },
            reporter: ReporterConfig {
                batch_max: 5000,
                max_in_memory: 10_000,
                max_in_memory_bytes: 64 << 20,
                batch_max_bytes: 16 << 20,
                batch_delay: Duration::from_secs(1),
                call_timeout: Duration::from_secs(10),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(10),
            },
        }
    }
}

/// The counters behind [`UsageStats`].
#[derive(Debug)]
struct StatsInner {
    /// Records received by the sink (or found at start) and not yet acked or rejected.
    depth: AtomicU64,
    /// Records acked by the control plane since start.
    acked_total: AtomicU64,
    /// Arrival at the reporter of the oldest pending record, in ms since `base` plus one; 0 when
    /// nothing is pending.
    oldest_plus_one_ms: AtomicU64,
    /// Pending records the reporter holds in memory (the rest wait in their segment files).
    held: AtomicU64,
    base: Instant,
}

impl StatsInner {
    fn new() -> Self {
        StatsInner {
            depth: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            oldest_plus_one_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Takes `n` records off the depth (settled, or refused).
    fn forget(&self, n: u64) {
        // Saturating: a miscount must not wrap into a huge gauge.
        let _ = self
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }

    fn add_acked(&self, n: u64) {
        self.acked_total.fetch_add(n, Ordering::Relaxed);
    }

    fn set_oldest(&self, arrived: Option<Instant>) {
        let value = arrived.map_or(0, |at| {
            let ms = at.saturating_duration_since(self.base).as_millis();
            u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
        });
        self.oldest_plus_one_ms.store(value, Ordering::Relaxed);
    }
}

/// Where the request path drops finished requests' usage. Cheap to clone.
#[derive(Clone)]
pub struct UsageSink {
    spool: Arc<Spool>,
    /// Records the spool could not take at once, for the writer to retry.
    tx: mpsc::UnboundedSender<pb::UsageRecord>,
    stats: Arc<StatsInner>,
}

impl UsageSink {
    /// Writes `rec` to the spool file (one `write(2)` into the page cache, no sync) before it
    /// returns, so that it survives a kill of the process from then on; the writer task syncs
    /// in groups. If the write fails the record is queued for the writer, which retries. Never
    /// fails visibly: after [`UsageHandle::shutdown`] has closed the spool, the record is dropped
    /// with an error log.
    pub fn record(&self, rec: pb::UsageRecord) {
        // Counted before the write, so that the reporter can never settle it first.
        self.stats.depth.fetch_add(1, Ordering::Relaxed);
        match self.spool.append(&rec) {
            Ok(_) => {
                self.spool.wake_writer();
                return;
            }
            Err(spool::Refused::TooLarge(err)) => {
                self.stats.forget(1);
                tracing::error!(
                    request_id = %rec.request_id,
                    error = %err,
                    "usage record too large to spool; dropping it"
                );
                return;
            }
            Err(spool::Refused::Failed(err)) => {
                tracing::debug!(error = %err, "usage record left to the spool writer");
            }
        }
        if let Err(refused) = self.tx.send(rec) {
            self.stats.forget(1);
            tracing::error!(
                request_id = %refused.0.request_id,
                "usage spool is shut down; usage record dropped"
            );
        }
    }
}

/// Gauges and counters of the spool for metrics: plain atomic loads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UsageStats {
    inner: Arc<StatsInner>,
}

impl UsageStats {
    /// Records received and not yet acked or rejected by the control plane, whether still on
    /// their way to disk or already spooled.
    pub fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// Durable records the reporter holds in memory: at most its `max_in_memory`, however long
    /// the control plane is away.
    pub fn held_in_memory(&self) -> u64 {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// How long the oldest unacked record has waited since it became durable (or since start,
    /// for records found in the spool), in ms; 0 when nothing durable is pending.
    pub fn oldest_unacked_age_ms(&self) -> u64 {
        match self.inner.oldest_plus_one_ms.load(Ordering::Relaxed) {
            0 => 0,
            plus_one => {
                let now = Instant::now().saturating_duration_since(self.inner.base);
                let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
                now_ms.saturating_sub(plus_one - 1)
            }
        }
    }

    /// Records acked by the control plane since start.
    pub fn acked_total(&self) -> u64 {
        self.inner.acked_total.load(Ordering::Relaxed)
    }
}

/// Owns the writer and reporter tasks; [`UsageHandle::shutdown`] ends them.
pub struct UsageHandle {
    stats: UsageStats,
    shutdown: CancellationToken,
    writer: JoinHandle<()>,
    reporter: JoinHandle<()>,
}

impl UsageHandle {
    /// The spool's gauges, for metrics.
    pub fn stats(&self) -> UsageStats {
        self.stats.clone()
    }

    /// Stops accepting records, syncs everything already received into the spool, then reports
    /// what is pending until `deadline` has passed since the call. Whatever is still unacked
    /// then stays in the spool for the next start. Returns within `deadline` plus a few ms, even
    /// with the control plane down or hanging.
    pub async fn shutdown(mut self, deadline: Duration) {
        let until = Instant::now() + deadline;
        self.shutdown.cancel();

        match tokio::time::timeout_at(until, &mut self.writer).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "usage spool writer failed"),
            Err(_) => {
                self.writer.abort();
                let _ = tokio::time::timeout(ABORT_SLACK, &mut self.writer).await;
                tracing::error!(
                    depth = self.stats.depth(),
                    "usage spool writer did not finish by the shutdown deadline; \
                     records not yet synced are lost"
                );
            }
        }

        match tokio::time::timeout_at(until, &mut self.reporter).await {
            Ok(Ok(())) => tracing::info!(
                acked_total = self.stats.acked_total(),
                "usage reported in full; spool empty"
            ),
            Ok(Err(err)) => tracing::error!(error = %err, "usage reporter failed"),
            Err(_) => {
                self.reporter.abort();
                let _ = tokio::time::timeout(ABORT_SLACK, &mut self.reporter).await;
                tracing::warn!(
                    depth = self.stats.depth(),
                    "usage not fully reported by the shutdown deadline; \
                     it stays in the spool for the next start"
                );
            }
        }
    }
}

/// Opens (creating) the spool under `state_dir/spool`, re-queues what it holds, starts the writer
/// and reporter tasks on the current tokio runtime.
///
/// `channel` may point at a control plane that is not reachable yet: the reporter retries until
/// it is. Fails if the spool cannot be read, or if `node_id` is empty or `node_token` cannot be
/// sent as a header value.
pub async fn start(
    state_dir: &Path,
    channel: Channel,
    node_id: String,
    node_token: String,
) -> io::Result<(UsageSink, UsageHandle)> {
    start_with(state_dir, channel, node_id, node_token, Config::default()).await
}

/// [`start`] with explicit tuning.
async fn start_with(
    state_dir: &Path,
    channel: Channel,
    node_id: String,
    node_token: String,
    config: Config,
) -> io::Result<(UsageSink, UsageHandle)> {
    if node_id.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the node id is empty",
        ));
    }
    // The error says nothing of the token's content on purpose.
    let mut authorization: MetadataValue<Ascii> =
        format!("Bearer {node_token}").parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the node token is not a valid gRPC header value",
            )
        })?;
    authorization.set_sensitive(true);

    let dir = state_dir.join("spool");
    let limits = config.writer.limits;
    let open_dir = dir.clone();
    let (spool, loaded) = tokio::task::spawn_blocking(move || Spool::open(&open_dir, limits))
        .await
        .map_err(io::Error::other)??;

    let stats = Arc::new(StatsInner::new());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut found = 0u64;
    let segments = loaded.len();
    for segment in loaded {
        found += segment.records.len() as u64;
        // These sends cannot fail: the receiver is in hand.
        if !segment.records.is_empty() {
            let _ = events_tx.send(Event::Durable {
                segment: segment.seq,
                records: segment.records,
            });
        }
        let _ = events_tx.send(Event::Sealed {
            segment: segment.seq,
        });
    }
    stats.depth.store(found, Ordering::Relaxed);
    tracing::info!(
        spool_dir = %dir.display(),
        segments,
        records = found,
        "usage spool opened; records found are queued for reporting"
    );

    let client = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(keyplane_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(keyplane_proto::MAX_MESSAGE_BYTES)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip);
    let reporter = Reporter::new(
        client,
        node_id,
        authorization,
        dir,
        config.reporter,
        Arc::clone(&stats),
    );

    let shutdown = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let spool = Arc::new(spool);
    let writer = tokio::spawn(spool::run_writer(
        Arc::clone(&spool),
        rx,
        events_tx,
        shutdown.clone(),
        Arc::clone(&stats),
        config.writer,
    ));
    let reporter = tokio::spawn(reporter.run(events_rx, shutdown.clone()));

    let sink = UsageSink {
        spool,
        tx,
        stats: Arc::clone(&stats),
    };
    let handle = UsageHandle {
        stats: UsageStats { inner: stats },
        shutdown,
        writer,
        reporter,
    };
    Ok((sink, handle))
}

/// Exponential backoff with jitter: `min` doubling up to `max`, plus up to half of it at random.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The delay before the next attempt; each call doubles the base.
    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (base * 2).min(self.max);
        let half_ms = u64::try_from(base.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter_ms = rand::thread_rng().gen_range(0..=half_ms);
        base + Duration::from_millis(jitter_ms)
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Sleeps until `at`, or forever when `None` (a `select!` branch that never fires).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::reporter::tests::{dead_addr, fast, ids_on_disk, rec, start_at, wait_until};
    use super::*;
    use std::collections::HashSet;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_are_all_durable_after_shutdown() {
        let tmp = tempfile::tempdir().unwrap();
        let addr = dead_addr().await;
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..500 {
                    sink.record(rec(&format!("t{t}-{i}")));
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(handle.stats().depth(), 4000);
        tokio::time::timeout(
            Duration::from_secs(5),
            handle.shutdown(Duration::from_millis(300)),
        )
        .await
        .unwrap();
        let on_disk = ids_on_disk(tmp.path());
        assert_eq!(on_disk.len(), 4000);
        let unique: HashSet<_> = on_disk.iter().collect();
        assert_eq!(unique.len(), 4000);
        // Each task's records are in the order it recorded them.
        for t in 0..8 {
            let prefix = format!("t{t}-");
            let mine: Vec<&String> = on_disk
                .iter()
                .filter(|id| id.starts_with(&prefix))
                .collect();
            let expected: Vec<String> = (0..500).map(|i| format!("t{t}-{i}")).collect();
            assert!(mine.iter().zip(&expected).all(|(a, b)| *a == b));
        }
    }

    #[tokio::test]
    async fn stats_track_depth_and_age_while_the_control_plane_is_down() {
        let tmp = tempfile::tempdir().unwrap();
        let addr = dead_addr().await;
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        assert_eq!(stats.depth(), 0);
        assert_eq!(stats.oldest_unacked_age_ms(), 0);
        for i in 0..5 {
            sink.record(rec(&format!("s{i}")));
        }
        assert_eq!(stats.depth(), 5);
        wait_until("the oldest record ages", || {
            stats.oldest_unacked_age_ms() >= 100
        })
        .await;
        assert_eq!(stats.acked_total(), 0);
        handle.shutdown(Duration::from_millis(100)).await;
        assert_eq!(stats.depth(), 5);
        // The next start finds them and counts them.
        let (_sink, handle) = start_at(tmp.path(), addr, fast()).await;
        assert_eq!(handle.stats().depth(), 5);
        handle.shutdown(Duration::from_millis(50)).await;
        assert_eq!(ids_on_disk(tmp.path()).len(), 5);
    }

    #[tokio::test]
    async fn start_refuses_bad_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let addr = dead_addr().await;
        let chan = super::reporter::tests::channel(addr);
        let err = start(tmp.path(), chan.clone(), String::new(), "t".into())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = start(tmp.path(), chan, "n".into(), "bad\ntoken".into())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!err.to_string().contains("token\n"));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut base = 100u64;
        for _ in 0..12 {
            let delay = backoff.next_delay().as_millis() as u64;
            assert!(
                delay >= base && delay <= base + base / 2,
                "{delay} vs {base}"
            );
            base = (base * 2).min(10_000);
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(151));
    }
}
