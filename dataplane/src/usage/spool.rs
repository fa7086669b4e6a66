//! The on-disk half of usage reporting: append-only, checksummed segment files, and the writer
//! task that fills them with group commit.
//!
//! # Format
//!
//! The spool is a directory of segments named `seg-<16-digit sequence>.log`; sequences only grow,
//! across restarts (a new run starts after the highest one found). A segment is a run of frames:
//!
//! ```text
//! u32 LE payload length | u32 LE crc32(payload) | payload = prost-encoded pb::UsageRecord
//! ```
//!
//! The payload is also what goes to the control plane: the reporter holds each record as a slice
//! of the buffer its group was written from (or its segment was read into), an [`EncodedRecord`],
//! and sends those slices as `ReportUsageRequestEncoded`, so a record is encoded once per life.
//!
//! # Invariants
//!
//! - **Append-only, one writer.** Only the writer task appends, and only to the segment it
//!   opened itself in this run. Segments found at start are never appended to: their tail may be
//!   torn, and anything written after a torn frame would be unreadable.
//! - **Durable before reported.** A group is written and `sync_data`ed before its records are
//!   handed to the reporter; a new segment's directory entry is synced when it is created.
//! - **A torn tail ends a segment.** Reading stops at the first short header, short payload,
//!   implausible length, checksum mismatch or undecodable payload; the frames before it are kept
//!   and a warning names the file. A crash mid-write can only tear the last group, whose records
//!   the request path never saw acknowledged as durable anyway.
//! - **A failed write seals its segment.** The segment is cut back to its last good length (best
//!   effort) and closed; the group is retried into a new segment. If the cut fails, the records
//!   of the torn group that did reach the file are also written again: a duplicate on disk, which
//!   the control plane's idempotency by `request_id` absorbs.
//! - **No write on the response path.** [`super::UsageSink::record`] only sends on a channel; the
//!   file work happens here, on the blocking pool.

use super::StatsInner;
use super::reporter::Event;
use bytes::Bytes;
use keyplane_proto::v1 as pb;
use prost::Message;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes before each payload: length and checksum.
const FRAME_HEADER_BYTES: usize = 8;

/// A frame that claims more than this is corruption, not a record: a `UsageRecord` is a few
/// hundred bytes. Records this large are refused at write time too, so that every written frame
/// can be read back.
pub(super) const MAX_RECORD_BYTES: usize = 1 << 20;

/// One usage record as the spool's frames and the control plane's wire carry it: the prost
/// encoding of a `pb::UsageRecord`, a slice of the buffer its group (or segment file) was read
/// into, so holding or sending it copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EncodedRecord {
    bytes: Bytes,
    /// Where the request id sits in `bytes` (empty if the record has none).
    id: std::ops::Range<usize>,
}

impl EncodedRecord {
    /// Wraps a payload read back from disk, if it decodes as a `pb::UsageRecord` (a frame that
    /// does not would fail every batch it went out in). prost writes fields in tag order, so a
    /// non-empty request id (tag 1) is the first field; a payload from another encoder is
    /// re-encoded once so that this holds.
    fn new(bytes: Bytes) -> Result<EncodedRecord, prost::DecodeError> {
        let rec = pb::UsageRecord::decode(bytes.clone())?;
        let bytes = match leading_request_id(&bytes) {
            Some(id) if bytes.get(id.clone()) == Some(rec.request_id.as_bytes()) => {
                return Ok(EncodedRecord { bytes, id });
            }
            _ if rec.request_id.is_empty() => bytes,
            _ => Bytes::from(rec.encode_to_vec()),
        };
        let id = leading_request_id(&bytes).unwrap_or(0..0);
        Ok(EncodedRecord { bytes, id })
    }

    /// The record's request id, the ledger's idempotency key.
    pub fn request_id(&self) -> &str {
        self.bytes
            .get(self.id.clone())
            .and_then(|id| std::str::from_utf8(id).ok())
            .unwrap_or_default()
    }

    /// The encoded record, as `ReportUsageRequestEncoded` sends it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The record itself.
    #[cfg(test)]
    pub fn decode(&self) -> pb::UsageRecord {
        pb::UsageRecord::decode(self.bytes.clone()).unwrap_or_default()
    }
}

/// The range of a leading field 1 (wire type 2: key byte `0x0a`) holding UTF-8, if there is one.
fn leading_request_id(payload: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut rest = payload.strip_prefix(&[0x0a])?;
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    let start = payload.len() - rest.len();
    let id = payload.get(start..start.checked_add(len)?)?;
    std::str::from_utf8(id).ok()?;
    Some(start..start + len)
}

/// Why a segment's valid records end before its last byte.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpoolError {
    /// Fewer than 8 bytes left where a frame header should start.
    #[error("short frame header at offset {offset}")]
    ShortHeader {
        /// Where the frame starts.
        offset: usize,
    },
    /// The header claims an absurd length.
    #[error("implausible frame length {len} at offset {offset}")]
    TooLong {
        /// Where the frame starts.
        offset: usize,
        /// The claimed payload length.
        len: usize,
    },
    /// The payload is cut short.
    #[error("short payload at offset {offset}: {len} bytes claimed, {available} present")]
    ShortPayload {
        /// Where the frame starts.
        offset: usize,
        /// The claimed payload length.
        len: usize,
        /// The bytes actually left.
        available: usize,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch at offset {offset}")]
    Checksum {
        /// Where the frame starts.
        offset: usize,
    },
    /// The checksum matches but the payload is not a `UsageRecord`.
    #[error("undecodable record at offset {offset}: {reason}")]
    Decode {
        /// Where the frame starts.
        offset: usize,
        /// What prost said.
        reason: String,
    },
}

/// When the writer closes a segment and starts the next one.
#[derive(Clone, Copy, Debug)]
pub(super) struct SegmentLimits {
    /// Seal once a segment holds at least this many records.
    pub max_records: usize,
    /// Seal once a segment's first record is this old, with or without new traffic.
    pub max_age: Duration,
}

/// The records of one segment found at start, in file order.
#[derive(Debug)]
pub(super) struct LoadedSegment {
    pub seq: u64,
    pub records: Vec<EncodedRecord>,
}

/// A segment's decoded frames and, if they end early, why.
#[derive(Debug)]
pub(super) struct Decoded {
    pub records: Vec<EncodedRecord>,
    /// Bytes covered by the valid frames.
    pub valid_bytes: usize,
    pub torn: Option<SpoolError>,
}

/// A failed append. `sealed` names the segment the failure closed, if one was open.
#[derive(Debug)]
pub(super) struct AppendError {
    pub source: io::Error,
    pub sealed: Option<u64>,
}

/// The segment being appended to.
struct OpenSegment {
    seq: u64,
    file: File,
    /// Bytes of complete, synced frames.
    len: u64,
    records: usize,
    opened_at: Instant,
}

/// The spool directory, as the writer sees it.
pub(super) struct Spool {
    dir: PathBuf,
    next_seq: u64,
    current: Option<OpenSegment>,
    limits: SegmentLimits,
}

/// The file of segment `seq` in `dir`.
pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016}.log"))
}

/// The sequence of a segment file name, `None` for any other name.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one frame for `rec` to `buf`; returns where its payload is.
fn encode_frame(rec: &pb::UsageRecord, buf: &mut Vec<u8>) -> io::Result<std::ops::Range<usize>> {
    let len = rec.encoded_len();
    if len > MAX_RECORD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("usage record of {len} bytes exceeds {MAX_RECORD_BYTES}"),
        ));
    }
    let len_le = u32::try_from(len).map_err(io::Error::other)?.to_le_bytes();
    let header = buf.len();
    buf.extend_from_slice(&len_le);
    buf.extend_from_slice(&[0; 4]);
    let start = buf.len();
    rec.encode_raw(buf);
    let crc = crc32fast::hash(&buf[start..]).to_le_bytes();
    buf[header + 4..start].copy_from_slice(&crc);
    Ok(start..buf.len())
}

/// A group of records encoded as frames: what one [`Spool::write`] writes, and then, as
/// [`EncodedRecord`]s, what the reporter holds.
///
/// The writer task fills it, not the blocking thread that writes it: the buffer then belongs to
/// a runtime worker's heap, like the reporter that frees it. Allocated on the blocking pool, each
/// group's buffer (~150 KB) was freed into the heap of a thread that then sat idle, and the data
/// plane's RSS crept up by several MB over a benchmark run.
#[derive(Debug, Default)]
pub(super) struct Frames {
    buf: Vec<u8>,
    payloads: Vec<std::ops::Range<usize>>,
}

impl Frames {
    /// Empty frames with room for `group`'s, so that encoding it never reallocates.
    pub fn for_group(group: &[pb::UsageRecord]) -> Frames {
        Frames {
            buf: Vec::with_capacity(
                group
                    .iter()
                    .map(|r| r.encoded_len() + FRAME_HEADER_BYTES)
                    .sum(),
            ),
            payloads: Vec::with_capacity(group.len()),
        }
    }

    /// Appends `rec`'s frame; refuses a record over [`MAX_RECORD_BYTES`], which could not be read
    /// back.
    pub fn push(&mut self, rec: &pb::UsageRecord) -> io::Result<()> {
        let payload = encode_frame(rec, &mut self.buf)?;
        self.payloads.push(payload);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// The records, as slices of the frames' one buffer.
    pub fn into_records(self) -> Vec<EncodedRecord> {
        let buf = Bytes::from(self.buf);
        self.payloads
            .into_iter()
            .map(|payload| {
                let bytes = buf.slice(payload);
                let id = leading_request_id(&bytes).unwrap_or(0..0);
                EncodedRecord { bytes, id }
            })
            .collect()
    }
}

/// Decodes the frames of one segment, stopping at the first bad one.
pub(super) fn decode_segment(bytes: Bytes) -> Decoded {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let torn = loop {
        if offset == bytes.len() {
            break None;
        }
        let Some(header) = bytes.get(offset..offset + FRAME_HEADER_BYTES) else {
            break Some(SpoolError::ShortHeader { offset });
        };
        let mut len_le = [0u8; 4];
        let mut crc_le = [0u8; 4];
        len_le.copy_from_slice(&header[..4]);
        crc_le.copy_from_slice(&header[4..]);
        let len = u32::from_le_bytes(len_le) as usize;
        if len > MAX_RECORD_BYTES {
            break Some(SpoolError::TooLong { offset, len });
        }
        let start = offset + FRAME_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + len) else {
            break Some(SpoolError::ShortPayload {
                offset,
                len,
                available: bytes.len() - start,
            });
        };
        if crc32fast::hash(payload) != u32::from_le_bytes(crc_le) {
            break Some(SpoolError::Checksum { offset });
        }
        match EncodedRecord::new(bytes.slice(start..start + len)) {
            Ok(rec) => records.push(rec),
            Err(err) => {
                break Some(SpoolError::Decode {
                    offset,
                    reason: err.to_string(),
                });
            }
        }
        offset = start + len;
    };
    Decoded {
        records,
        valid_bytes: offset,
        torn,
    }
}

/// Makes the directory entries of `dir` durable (a new segment's name, here).
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens `dir` (creating it), reads every segment in sequence order and returns the writer
    /// side with what was found. Blocking: call it from the blocking pool.
    pub fn open(dir: &Path, limits: SegmentLimits) -> io::Result<(Spool, Vec<LoadedSegment>)> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            match name.to_str().and_then(parse_segment_name) {
                Some(seq) => seqs.push(seq),
                None => tracing::debug!(
                    file = %name.to_string_lossy(),
                    "ignoring a file that is not a spool segment"
                ),
            }
        }
        seqs.sort_unstable();

        let mut loaded = Vec::with_capacity(seqs.len());
        for &seq in &seqs {
            let path = segment_path(dir, seq);
            let bytes = fs::read(&path).map_err(|err| {
                io::Error::new(err.kind(), format!("reading {}: {err}", path.display()))
            })?;
            let file_len = bytes.len();
            let decoded = decode_segment(Bytes::from(bytes));
            if let Some(torn) = &decoded.torn {
                tracing::warn!(
                    file = %path.display(),
                    valid_records = decoded.records.len(),
                    valid_bytes = decoded.valid_bytes,
                    discarded_bytes = file_len - decoded.valid_bytes,
                    reason = %torn,
                    "torn tail in a usage spool segment; keeping its valid prefix"
                );
            }
            loaded.push(LoadedSegment {
                seq,
                records: decoded.records,
            });
        }
        let next_seq = seqs.last().map_or(1, |last| last.saturating_add(1));
        let spool = Spool {
            dir: dir.to_path_buf(),
            next_seq,
            current: None,
            limits,
        };
        Ok((spool, loaded))
    }

    /// Encodes and appends `records` (see [`Spool::write`]).
    #[cfg(test)]
    pub fn append(
        &mut self,
        records: &[pb::UsageRecord],
    ) -> Result<(u64, Vec<EncodedRecord>), AppendError> {
        let mut frames = Frames::default();
        for rec in records {
            frames.push(rec).map_err(|source| AppendError {
                source,
                sealed: None,
            })?;
        }
        let seq = self.write(&frames)?;
        Ok((seq, frames.into_records()))
    }

    /// Appends a group's frames to the open segment (opening a new one if none is), then syncs:
    /// one write and one `sync_data` for the whole group. Returns the segment they are in.
    /// Blocking.
    pub fn write(&mut self, frames: &Frames) -> Result<u64, AppendError> {
        let buf = &frames.buf;
        let mut segment = match self.current.take() {
            Some(segment) => segment,
            None => self.create_segment()?,
        };
        let written = segment
            .file
            .write_all(buf)
            .and_then(|()| segment.file.sync_data());
        match written {
            Ok(()) => {
                segment.len += buf.len() as u64;
                segment.records += frames.len();
                let seq = segment.seq;
                self.current = Some(segment);
                Ok(seq)
            }
            Err(source) => {
                // Cut the torn group off so that the segment's frames stay exactly the ones the
                // reporter was told about; the segment is sealed either way (see module docs).
                if let Err(err) = segment.file.set_len(segment.len) {
                    tracing::warn!(
                        file = %segment_path(&self.dir, segment.seq).display(),
                        error = %err,
                        "cannot cut a failed write off a usage spool segment"
                    );
                }
                Err(AppendError {
                    source,
                    sealed: Some(segment.seq),
                })
            }
        }
    }

    /// Creates the next segment file and syncs the directory.
    fn create_segment(&mut self) -> Result<OpenSegment, AppendError> {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let path = segment_path(&self.dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|source| AppendError {
                source,
                sealed: None,
            })?;
        if let Err(source) = sync_dir(&self.dir) {
            // The empty file exists: report it sealed so that the reporter removes it.
            return Err(AppendError {
                source,
                sealed: Some(seq),
            });
        }
        tracing::debug!(file = %path.display(), "usage spool segment opened");
        Ok(OpenSegment {
            seq,
            file,
            len: 0,
            records: 0,
            opened_at: Instant::now(),
        })
    }

    /// When the open segment must be sealed for age, if one is open.
    pub fn rotation_deadline(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .map(|segment| segment.opened_at + self.limits.max_age)
    }

    /// Whether the open segment is full or old enough to seal.
    pub fn should_rotate(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|segment| {
            segment.records >= self.limits.max_records
                || now >= segment.opened_at + self.limits.max_age
        })
    }

    /// Closes the open segment, if any, and returns its sequence. Its frames are already synced.
    pub fn seal(&mut self) -> Option<u64> {
        self.current.take().map(|segment| segment.seq)
    }
}

/// Tuning of the writer task.
#[derive(Clone, Copy, Debug)]
pub(super) struct WriterConfig {
    /// Most records in one group (one write, one sync).
    pub max_group: usize,
    pub limits: SegmentLimits,
    /// First retry delay after a failed write; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After the first record of a group arrives, how long to wait for more before writing, so
    /// that a busy node makes a few large syncs rather than one per handful of records. Only
    /// billing waits for it, never a response. Skipped when the channel already held a full
    /// group (a backlog), so it never caps the rate.
    pub linger: Duration,
}

/// The writer task: group commit from the sink's channel into the spool, then on to the reporter.
///
/// Ends when `stop` fires (after closing the channel and writing everything already in it) or
/// when every sink is dropped; either way it seals the open segment last.
pub(super) async fn run_writer(
    mut spool: Spool,
    mut rx: mpsc::UnboundedReceiver<pb::UsageRecord>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    stats: Arc<StatsInner>,
    config: WriterConfig,
) {
    let mut closing = false;
    loop {
        let mut group = Vec::with_capacity(config.max_group);
        let rotate_at = spool.rotation_deadline();
        tokio::select! {
            biased;
            () = stop.cancelled(), if !closing => {
                // No new sends succeed from here on; what is buffered is still received.
                rx.close();
                closing = true;
                continue;
            }
            received = rx.recv_many(&mut group, config.max_group) => {
                if received == 0 {
                    break;
                }
                if !closing && !config.linger.is_zero() && group.len() < config.max_group {
                    // Sleep, then take what arrived: a receiver waiting on the channel would be
                    // woken, and this task polled, by every request's send.
                    tokio::time::sleep(config.linger).await;
                    if !rx.is_empty() {
                        let room = config.max_group - group.len();
                        rx.recv_many(&mut group, room).await;
                    }
                }
            }
            () = super::sleep_until_opt(rotate_at) => {
                seal(&mut spool, &events);
                continue;
            }
        }

        let mut frames = Frames::for_group(&group);
        for rec in &group {
            if let Err(err) = frames.push(rec) {
                // Unreadable if written, and far beyond what the ledger accepts: the same fate
                // as a rejected record, decided here.
                tracing::error!(
                    request_id = %rec.request_id,
                    error = %err,
                    "usage record too large to spool; dropping it"
                );
                stats.forget(1);
            }
        }
        drop(group);
        if frames.is_empty() {
            continue;
        }

        let Some((returned, frames, segment)) = write_group(spool, frames, &events, &config).await
        else {
            return;
        };
        spool = returned;
        let records = frames.into_records();
        if events.send(Event::Durable { segment, records }).is_err() {
            // Only after the reporter was stopped at the shutdown deadline: the records are on
            // disk and will be reported by the next start.
            tracing::debug!(segment, "usage reporter gone; records stay in the spool");
        }
        if spool.should_rotate(Instant::now()) {
            seal(&mut spool, &events);
        }
    }
    seal(&mut spool, &events);
    tracing::debug!("usage spool writer stopped");
}

/// Seals the open segment and tells the reporter.
fn seal(spool: &mut Spool, events: &mpsc::UnboundedSender<Event>) {
    if let Some(segment) = spool.seal() {
        // A send error means the reporter is gone (shutdown deadline): the next start reads it.
        let _ = events.send(Event::Sealed { segment });
    }
}

/// Appends one group, retrying with backoff until it is durable. `None` only if the blocking
/// task could not be joined (the runtime is going away), in which case the spool is lost to this
/// run but its files are intact.
async fn write_group(
    mut spool: Spool,
    mut frames: Frames,
    events: &mpsc::UnboundedSender<Event>,
    config: &WriterConfig,
) -> Option<(Spool, Frames, u64)> {
    let mut backoff = super::Backoff::new(config.backoff_min, config.backoff_max);
    let mut attempt = 1u32;
    loop {
        let joined = tokio::task::spawn_blocking(move || {
            let result = spool.write(&frames);
            (spool, frames, result)
        })
        .await;
        let (returned, returned_frames, result) = match joined {
            Ok(parts) => parts,
            Err(err) => {
                tracing::error!(error = %err, "usage spool write task failed; writer stops");
                return None;
            }
        };
        spool = returned;
        frames = returned_frames;
        match result {
            Ok(segment) => return Some((spool, frames, segment)),
            Err(err) => {
                if let Some(segment) = err.sealed {
                    let _ = events.send(Event::Sealed { segment });
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %err.source,
                    records = frames.len(),
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot write usage records to the spool; retrying"
                );
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SegmentLimits {
        SegmentLimits {
            max_records: 4096,
            max_age: Duration::from_secs(5),
        }
    }

    fn rec(i: usize) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: format!("req-{i:05}"),
            key_id: "key-1".into(),
            model: "gpt-test".into(),
            provider: "fake".into(),
            credential_id: "cred-1".into(),
            input_tokens: i as u64,
            output_tokens: 2 * i as u64,
            cost_nano_usd: 1000 + i as u64,
            ..Default::default()
        }
    }

    fn ids(records: &[EncodedRecord]) -> Vec<&str> {
        records.iter().map(EncodedRecord::request_id).collect()
    }

    fn all_records(loaded: &[LoadedSegment]) -> Vec<pb::UsageRecord> {
        loaded
            .iter()
            .flat_map(|s| s.records.iter().map(EncodedRecord::decode))
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn round_trip_keeps_order_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, loaded) = Spool::open(&dir, limits()).unwrap();
        assert!(loaded.is_empty());
        let written: Vec<_> = (0..30).map(rec).collect();
        let first = spool.append(&written[..10]).unwrap().0;
        assert_eq!(spool.append(&written[10..20]).unwrap().0, first);
        assert_eq!(spool.seal(), Some(first));
        let second = spool.append(&written[20..]).unwrap().0;
        assert!(second > first);
        drop(spool);

        let (mut spool, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].seq, first);
        assert_eq!(loaded[1].seq, second);
        assert_eq!(all_records(&loaded), written);
        // A new run never appends to an old segment.
        let third = spool.append(&written[..1]).unwrap().0;
        assert!(third > second);
        assert_eq!(segment_files(&dir).len(), 3);
    }

    #[tokio::test]
    async fn truncated_tail_keeps_valid_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, _) = Spool::open(&dir, limits()).unwrap();
        let written: Vec<_> = (0..5).map(rec).collect();
        let seq = spool.append(&written).unwrap().0;
        drop(spool);
        let path = segment_path(&dir, seq);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let (_, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(all_records(&loaded), written[..4].to_vec());
    }

    #[tokio::test]
    async fn garbage_tail_keeps_valid_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, _) = Spool::open(&dir, limits()).unwrap();
        let written: Vec<_> = (0..5).map(rec).collect();
        let seq = spool.append(&written).unwrap().0;
        drop(spool);
        let path = segment_path(&dir, seq);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        // A plausible length with a wrong checksum, then noise.
        file.write_all(&[20, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
        drop(file);

        let (_, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(all_records(&loaded), written);
    }

    #[tokio::test]
    async fn append_returns_the_records_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(&tmp.path().join("spool"), limits()).unwrap();
        let written: Vec<_> = (0..3).map(rec).collect();
        let (_, encoded) = spool.append(&written).unwrap();
        assert_eq!(ids(&encoded), vec!["req-00000", "req-00001", "req-00002"]);
        let decoded: Vec<_> = encoded.iter().map(EncodedRecord::decode).collect();
        assert_eq!(decoded, written);
    }

    #[test]
    fn encoded_records_go_out_as_a_report_usage_request() {
        let written: Vec<_> = (0..3).map(rec).collect();
        let mut buf = Vec::new();
        let payloads: Vec<_> = written
            .iter()
            .map(|r| encode_frame(r, &mut buf).unwrap())
            .collect();
        let buf = Bytes::from(buf);
        let encoded = pb::ReportUsageRequestEncoded {
            node_id: "node-1".into(),
            records: payloads.into_iter().map(|p| buf.slice(p)).collect(),
        };
        let as_sent = pb::ReportUsageRequest::decode(encoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            as_sent,
            pb::ReportUsageRequest {
                node_id: "node-1".into(),
                records: written,
            }
        );
    }

    #[test]
    fn a_request_id_that_is_not_the_first_field_is_still_found() {
        // Another encoder may write fields in any order: tag 6 first, then the id (tag 1).
        let mut payload = pb::UsageRecord {
            input_tokens: 7,
            ..Default::default()
        }
        .encode_to_vec();
        pb::UsageRecord {
            request_id: "late-id".into(),
            ..Default::default()
        }
        .encode_raw(&mut payload);
        let late = EncodedRecord::new(Bytes::from(payload)).unwrap();
        assert_eq!(late.request_id(), "late-id");
        assert_eq!(late.decode().input_tokens, 7);
        let first = EncodedRecord::new(Bytes::from(rec(1).encode_to_vec())).unwrap();
        assert_eq!(first.request_id(), "req-00001");
        let empty = EncodedRecord::new(Bytes::new()).unwrap();
        assert_eq!(empty.request_id(), "");
    }

    #[test]
    fn decode_names_each_kind_of_tear() {
        let mut buf = Vec::new();
        encode_frame(&rec(1), &mut buf).unwrap();
        let one = buf.len();
        encode_frame(&rec(2), &mut buf).unwrap();

        let whole = decode_segment(Bytes::from(buf.clone()));
        assert_eq!(ids(&whole.records), vec!["req-00001", "req-00002"]);
        assert_eq!(whole.valid_bytes, buf.len());
        assert_eq!(whole.torn, None);

        let short_header = decode_segment(Bytes::copy_from_slice(&buf[..one + 5]));
        assert_eq!(short_header.records.len(), 1);
        assert_eq!(
            short_header.torn,
            Some(SpoolError::ShortHeader { offset: one })
        );

        let short_payload = decode_segment(Bytes::copy_from_slice(&buf[..buf.len() - 1]));
        assert_eq!(short_payload.records.len(), 1);
        assert!(matches!(
            short_payload.torn,
            Some(SpoolError::ShortPayload { offset, .. }) if offset == one
        ));

        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let checksum = decode_segment(Bytes::from(flipped.clone()));
        assert_eq!(checksum.records.len(), 1);
        assert_eq!(checksum.valid_bytes, one);
        assert_eq!(checksum.torn, Some(SpoolError::Checksum { offset: one }));

        let mut huge = buf[..one].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        let too_long = decode_segment(Bytes::from(huge.clone()));
        assert_eq!(too_long.records.len(), 1);
        assert!(matches!(too_long.torn, Some(SpoolError::TooLong { .. })));

        // A checksum that matches bytes that are not a record.
        let junk = [0xffu8; 3];
        let mut undecodable = (junk.len() as u32).to_le_bytes().to_vec();
        undecodable.extend_from_slice(&crc32fast::hash(&junk).to_le_bytes());
        undecodable.extend_from_slice(&junk);
        assert!(matches!(
            decode_segment(Bytes::from(undecodable.clone())).torn,
            Some(SpoolError::Decode { offset: 0, .. })
        ));

        assert_eq!(decode_segment(Bytes::new()).torn, None);
    }

    #[tokio::test]
    async fn corrupt_middle_frame_ends_the_segment_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, _) = Spool::open(&dir, limits()).unwrap();
        let first: Vec<_> = (0..3).map(rec).collect();
        let second: Vec<_> = (3..6).map(rec).collect();
        let a = spool.append(&first).unwrap().0;
        spool.seal();
        spool.append(&second).unwrap();
        drop(spool);
        // Flip a payload byte of the second frame of the first segment.
        let path = segment_path(&dir, a);
        let mut bytes = fs::read(&path).unwrap();
        let mut one = Vec::new();
        encode_frame(&first[0], &mut one).unwrap();
        bytes[one.len() + FRAME_HEADER_BYTES + 2] ^= 0x55;
        fs::write(&path, bytes).unwrap();

        let (_, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(ids(&loaded[0].records), vec!["req-00000"]);
        assert_eq!(all_records(&loaded[1..]), second);
    }

    #[tokio::test]
    async fn foreign_and_empty_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("notes.txt"), b"hello").unwrap();
        fs::write(dir.join("seg-12.log"), b"short name").unwrap();
        fs::write(segment_path(&dir, 7), b"").unwrap();
        let (mut spool, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].seq, 7);
        assert!(loaded[0].records.is_empty());
        assert_eq!(spool.append(&[rec(1)]).unwrap().0, 8);
    }

    #[tokio::test]
    async fn rotation_by_count_and_age() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let small = SegmentLimits {
            max_records: 3,
            max_age: Duration::from_secs(60),
        };
        let (mut spool, _) = Spool::open(&dir, small).unwrap();
        assert!(!spool.should_rotate(Instant::now()));
        assert_eq!(spool.rotation_deadline(), None);
        spool.append(&[rec(1), rec(2)]).unwrap();
        assert!(!spool.should_rotate(Instant::now()));
        let deadline = spool.rotation_deadline().unwrap();
        assert!(spool.should_rotate(deadline));
        spool.append(&[rec(3)]).unwrap();
        assert!(spool.should_rotate(Instant::now()));
    }

    #[tokio::test]
    async fn oversized_record_is_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut spool, _) = Spool::open(&dir, limits()).unwrap();
        let mut big = rec(1);
        big.model = "m".repeat(MAX_RECORD_BYTES + 1);
        let err = spool.append(&[rec(0), big]).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(err.sealed, None);
        assert!(segment_files(&dir).is_empty());
    }
}
