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
//! - **Append-only, one lock.** Frames are appended under the spool's lock, one `write(2)`
//!   each, and only to a segment created in this run. Segments found at start are never appended
//!   to: their tail may be torn, and anything written after a torn frame would be unreadable.
//! - **In the file when the response ends.** [`Spool::append`] runs on the request path as a
//!   response ends: the frame is in the page cache, which outlives a killed process, before the
//!   client sees the end. A new segment's file is created there too (once per segment); its
//!   directory entry is synced by the writer before its first frames.
//! - **Durable before reported.** The writer task `sync_data`s what was appended, in groups
//!   (one sync per segment per cycle), before handing the records to the reporter. Only a machine
//!   crash can lose frames written since the last completed sync.
//! - **A torn tail ends a segment.** Reading stops at the first short header, short payload,
//!   implausible length, checksum mismatch or undecodable payload; the frames before it are kept
//!   and a warning names the file. A crash mid-write can only tear the last frame, whose record
//!   was never reported.
//! - **A failed write closes its segment.** The torn frame is cut off (best effort) and the
//!   segment closed; the record goes to the writer's channel and is retried, with backoff, into a
//!   new segment. A failed sync trusts nothing written since the last good one: the segment is
//!   cut back to that, sealed, and its unsynced records are written again. If a cut fails, a
//!   record may be on disk twice, which the control plane's idempotency by `request_id` absorbs.

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
pub(crate) struct EncodedRecord {
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
            // No request id, though the payload may still lead with a field 1 that a later one
            // overrides (prost keeps the last): pointing at it would name the wrong record.
            _ if rec.request_id.is_empty() => return Ok(EncodedRecord { bytes, id: 0..0 }),
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
    /// Seal once a segment's frames take at least this many bytes: a segment is read back
    /// whole, and records read back keep its buffer, so records carrying captured bodies
    /// (up to about 130 KB each, against about 130 bytes for others) must not make huge files.
    pub max_bytes: u64,
}

/// The records of one segment found at start, in file order.
#[derive(Debug)]
pub(super) struct LoadedSegment {
    pub seq: u64,
    pub records: Vec<EncodedRecord>,
}

/// A segment's decoded frames and, if they end early, why.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub records: Vec<EncodedRecord>,
    /// Bytes covered by the valid frames.
    pub valid_bytes: usize,
    pub torn: Option<SpoolError>,
}

/// Why [`Spool::append`] did not write a record.
#[derive(Debug)]
pub(super) enum Refused {
    /// Over [`MAX_RECORD_BYTES`]: it could never be read back, so it is dropped.
    TooLarge(io::Error),
    /// The segment could not be created or written: the writer task retries it, with backoff.
    Failed(io::Error),
}

/// A segment records are appended to, or were until it was closed.
struct Segment {
    seq: u64,
    file: Arc<File>,
    /// Bytes of complete frames written (synced or not).
    len: u64,
    /// Bytes known to be synced.
    synced_len: u64,
    records: usize,
    /// When its first record was written: segments seal by age from there, so an idle node
    /// keeps no file open and makes none.
    first_at: Option<Instant>,
    /// Whether the directory entry is synced (the writer does it before the first sync).
    dir_synced: bool,
    /// Frames written and not yet synced, in file order: what the writer hands on next.
    unsynced: Frames,
}

/// What the request path and the writer share under the spool's lock.
struct Tail {
    next_seq: u64,
    /// The segment being appended to; created by the first append after the last one closed.
    open: Option<Segment>,
    /// Segments closed (rotated, or failed) whose last frames are still to sync, oldest first.
    closed: Vec<Segment>,
    /// Closed for good (shutdown): appends are refused.
    shut: bool,
}

/// The spool directory: the request path appends to it ([`Spool::append`], a `write(2)`), the
/// writer task syncs, rotates and hands the records on ([`run_writer`]).
pub(super) struct Spool {
    dir: PathBuf,
    limits: SegmentLimits,
    tail: std::sync::Mutex<Tail>,
    /// Wakes the writer after an append: there is something to sync.
    wake: tokio::sync::Notify,
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

/// Frames written to a segment and not yet synced: the bytes as written and, once synced, as
/// [`EncodedRecord`]s, what the reporter holds.
///
/// The request path fills it (a runtime worker), like the reporter that frees it: allocated on
/// the blocking pool, a group's buffer (~150 KB) was freed into the heap of a thread that then
/// sat idle, and the data plane's RSS crept up by several MB over a benchmark run.
#[derive(Debug, Default)]
pub(super) struct Frames {
    buf: Vec<u8>,
    payloads: Vec<std::ops::Range<usize>>,
}

impl Frames {
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// The records again, to be written anew (after a failed sync).
    fn decode_all(&self) -> Vec<pb::UsageRecord> {
        self.payloads
            .iter()
            .filter_map(|p| self.buf.get(p.clone()))
            .filter_map(|payload| pb::UsageRecord::decode(payload).ok())
            .collect()
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
pub(crate) fn decode_segment(bytes: Bytes) -> Decoded {
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
            limits,
            tail: std::sync::Mutex::new(Tail {
                next_seq,
                open: None,
                closed: Vec::new(),
                shut: false,
            }),
            wake: tokio::sync::Notify::new(),
        };
        Ok((spool, loaded))
    }

    /// Tells the writer task there is something to sync.
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A panic while holding the lock cannot leave a frame half-accounted: every change to
        // a segment's fields is made after its write succeeded.
        self.tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `rec` as one frame to the open segment (creating it if none is open): one
    /// `write(2)` into the page cache, no sync. Returns the segment. Called on the request path
    /// when a response ends, so that a process killed right after still has the record in the
    /// file; [`run_writer`] syncs what was written in groups.
    ///
    /// A failed write is cut back off the file and closes the segment; the caller hands the
    /// record to the writer task instead, which retries.
    pub fn append(&self, rec: &pb::UsageRecord) -> Result<u64, Refused> {
        let mut tail = self.lock();
        if tail.shut {
            return Err(Refused::Failed(io::Error::other(
                "the usage spool is shut down",
            )));
        }
        if tail
            .open
            .as_ref()
            .is_some_and(|s| s.records >= self.limits.max_records || s.len >= self.limits.max_bytes)
        {
            // Full: sealed here rather than by the writer, so that a burst faster than the
            // writer's cycle still makes segments of bounded size.
            let full = tail.open.take();
            tail.closed.extend(full);
        }
        if tail.open.is_none() {
            let segment = self.create_segment(&mut tail).map_err(Refused::Failed)?;
            tail.open = Some(segment);
        }
        let Some(segment) = tail.open.as_mut() else {
            return Err(Refused::Failed(io::Error::other("no open segment")));
        };
        let start = segment.unsynced.buf.len();
        let payload = encode_frame(rec, &mut segment.unsynced.buf).map_err(Refused::TooLarge)?;
        match (&*segment.file).write_all(&segment.unsynced.buf[start..]) {
            Ok(()) => {
                segment.unsynced.payloads.push(payload);
                segment.len += (segment.unsynced.buf.len() - start) as u64;
                segment.records += 1;
                segment.first_at.get_or_insert_with(Instant::now);
                Ok(segment.seq)
            }
            Err(err) => {
                segment.unsynced.buf.truncate(start);
                // Cut the torn frame off so that the file's frames stay exactly the ones the
                // reporter will be told about; the segment is closed either way.
                if let Err(cut) = segment.file.set_len(segment.len) {
                    tracing::warn!(
                        file = %segment_path(&self.dir, segment.seq).display(),
                        error = %cut,
                        "cannot cut a failed write off a usage spool segment"
                    );
                }
                let failed = tail.open.take();
                tail.closed.extend(failed);
                Err(Refused::Failed(err))
            }
        }
    }

    /// Creates the next segment file. Its directory entry is synced later, by the writer, before
    /// its frames are: a create is cheap enough for the request path, a directory sync is not.
    fn create_segment(&self, tail: &mut Tail) -> io::Result<Segment> {
        let seq = tail.next_seq;
        tail.next_seq = seq.saturating_add(1);
        let path = segment_path(&self.dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        tracing::debug!(file = %path.display(), "usage spool segment opened");
        Ok(Segment {
            seq,
            file: Arc::new(file),
            len: 0,
            synced_len: 0,
            records: 0,
            first_at: None,
            dir_synced: false,
            unsynced: Frames::default(),
        })
    }

    /// Appends `records` and syncs them at once, as the writer would (tests).
    #[cfg(test)]
    pub fn append_all(&self, records: &[pb::UsageRecord]) -> io::Result<(u64, Vec<EncodedRecord>)> {
        if let Some(rec) = records.iter().find(|r| r.encoded_len() > MAX_RECORD_BYTES) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("usage record of {} bytes", rec.encoded_len()),
            ));
        }
        let mut seq = 0;
        for rec in records {
            seq = self.append(rec).map_err(|err| match err {
                Refused::TooLarge(e) | Refused::Failed(e) => e,
            })?;
        }
        let mut encoded = Vec::new();
        for (done, _) in self.sync_taken(self.take_unsynced()) {
            if let Done::Durable { records, .. } = done {
                encoded.extend(records);
            }
        }
        Ok((seq, encoded))
    }

    /// Closes the open segment, if any, and returns its sequence (tests).
    #[cfg(test)]
    pub fn seal(&self) -> Option<u64> {
        let mut tail = self.lock();
        let segment = tail.open.take()?;
        let seq = segment.seq;
        tail.closed.push(segment);
        Some(seq)
    }

    /// When the open segment must be sealed for age, if it holds a record.
    pub fn rotation_deadline(&self) -> Option<Instant> {
        let tail = self.lock();
        let first = tail.open.as_ref()?.first_at?;
        Some(first + self.limits.max_age)
    }

    /// Whether the open segment is full or old enough to seal.
    pub fn should_rotate(&self, now: Instant) -> bool {
        let tail = self.lock();
        tail.open.as_ref().is_some_and(|segment| {
            segment.records >= self.limits.max_records
                || segment.len >= self.limits.max_bytes
                || segment
                    .first_at
                    .is_some_and(|first| now >= first + self.limits.max_age)
        })
    }

    /// Closes the open segment if it is full or old enough: the next append starts a new one.
    fn rotate_if_due(&self, now: Instant) {
        if self.should_rotate(now) {
            let mut tail = self.lock();
            let segment = tail.open.take();
            tail.closed.extend(segment);
        }
    }

    /// Closes the open segment, for good (shutdown).
    fn close(&self) {
        let mut tail = self.lock();
        tail.shut = true;
        let segment = tail.open.take();
        tail.closed.extend(segment);
    }

    /// Takes what is to be synced: every closed segment, and the open one's unsynced frames.
    fn take_unsynced(&self) -> Vec<ToSync> {
        let mut tail = self.lock();
        let mut out: Vec<ToSync> = std::mem::take(&mut tail.closed)
            .into_iter()
            .map(|segment| ToSync {
                seq: segment.seq,
                file: segment.file,
                synced_len: segment.synced_len,
                len: segment.len,
                sync_dir: !segment.dir_synced,
                frames: segment.unsynced,
                sealed: true,
            })
            .collect();
        if let Some(segment) = tail.open.as_mut()
            && !segment.unsynced.is_empty()
        {
            let room = segment.unsynced.buf.len();
            let frames = std::mem::replace(
                &mut segment.unsynced,
                Frames {
                    buf: Vec::with_capacity(room),
                    payloads: Vec::new(),
                },
            );
            out.push(ToSync {
                seq: segment.seq,
                file: Arc::clone(&segment.file),
                synced_len: segment.synced_len,
                len: segment.len,
                sync_dir: !segment.dir_synced,
                frames,
                sealed: false,
            });
            // Claimed now: a later sync of the same segment need not repeat it.
            segment.dir_synced = true;
        }
        out
    }

    /// Syncs what [`Spool::take_unsynced`] took (blocking) and says, per segment in order, what
    /// became durable, and which records must be written again because their sync failed.
    fn sync_taken(&self, taken: Vec<ToSync>) -> Vec<(Done, u64)> {
        let mut done = Vec::with_capacity(taken.len() + 1);
        let mut dir_synced = false;
        for part in taken {
            let synced = if part.sync_dir && !dir_synced {
                sync_dir(&self.dir).map(|()| dir_synced = true)
            } else {
                Ok(())
            };
            let synced = synced.and_then(|()| {
                if part.frames.is_empty() {
                    Ok(())
                } else {
                    part.file.sync_data()
                }
            });
            match synced {
                Ok(()) => {
                    if !part.sealed {
                        let mut tail = self.lock();
                        if let Some(open) = tail.open.as_mut().filter(|s| s.seq == part.seq) {
                            open.synced_len = open.synced_len.max(part.len);
                        }
                    }
                    if !part.frames.is_empty() {
                        done.push((
                            Done::Durable {
                                segment: part.seq,
                                records: part.frames.into_records(),
                            },
                            part.seq,
                        ));
                    }
                    if part.sealed {
                        done.push((Done::Sealed { segment: part.seq }, part.seq));
                    }
                }
                Err(err) => {
                    // After a failed sync the kernel may have dropped the dirty pages: nothing
                    // written since the last good sync is trusted. The segment is cut back to
                    // that and sealed, and its unsynced records are written again elsewhere
                    // (the ledger's idempotency absorbs a copy that did survive).
                    let mut again = part.frames.decode_all();
                    if !part.sealed {
                        let mut tail = self.lock();
                        if tail.open.as_ref().is_some_and(|s| s.seq == part.seq)
                            && let Some(open) = tail.open.take()
                        {
                            again.extend(open.unsynced.decode_all());
                        }
                    }
                    if let Err(cut) = part.file.set_len(part.synced_len) {
                        tracing::warn!(
                            file = %segment_path(&self.dir, part.seq).display(),
                            error = %cut,
                            "cannot cut unsynced frames off a usage spool segment"
                        );
                    }
                    tracing::warn!(
                        segment = part.seq,
                        error = %err,
                        records = again.len(),
                        "cannot sync a usage spool segment; writing its records again"
                    );
                    done.push((Done::Again(again), part.seq));
                    done.push((Done::Sealed { segment: part.seq }, part.seq));
                }
            }
        }
        done
    }
}

/// A segment's frames taken for syncing.
struct ToSync {
    seq: u64,
    file: Arc<File>,
    synced_len: u64,
    len: u64,
    sync_dir: bool,
    frames: Frames,
    /// Closed: the reporter is told it is sealed once its frames are durable.
    sealed: bool,
}

/// The outcome of syncing one segment's frames, in the order the reporter must hear of it.
enum Done {
    Durable {
        segment: u64,
        records: Vec<EncodedRecord>,
    },
    Sealed {
        segment: u64,
    },
    /// Records whose sync failed, to write again.
    Again(Vec<pb::UsageRecord>),
}

/// Tuning of the writer task.
#[derive(Clone, Copy, Debug)]
pub(super) struct WriterConfig {
    /// Most records the writer takes from its channel (records the request path could not
    /// write) at once.
    pub max_group: usize,
    pub limits: SegmentLimits,
    /// First retry delay after a failed write; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After an append wakes the writer, how long it waits for more before syncing, so that a
    /// busy node makes a few large syncs rather than one per handful of records. Only billing
    /// waits for it, never a response: the records are in the file already.
    pub linger: Duration,
}

/// The writer task: group commit of what the request path wrote, then on to the reporter; and
/// the records the request path could not write (the channel), written here with backoff.
///
/// Ends when `stop` fires (after closing the channel and writing everything already in it) or
/// when every sink is dropped; either way it seals the open segment last.
pub(super) async fn run_writer(
    spool: Arc<Spool>,
    mut rx: mpsc::UnboundedReceiver<pb::UsageRecord>,
    events: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    stats: Arc<StatsInner>,
    config: WriterConfig,
) {
    let mut closing = false;
    let mut backlog: Vec<pb::UsageRecord> = Vec::new();
    let mut backoff = super::Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        // Records the request path could not write: appended here, in arrival order.
        while backlog.len() < config.max_group {
            match rx.try_recv() {
                Ok(rec) => backlog.push(rec),
                Err(_) => break,
            }
        }
        let mut failed = None;
        let mut kept = Vec::new();
        for rec in backlog.drain(..) {
            if failed.is_some() {
                kept.push(rec);
                continue;
            }
            match spool.append(&rec) {
                Ok(_) => {}
                Err(Refused::TooLarge(err)) => {
                    // Unreadable if written, and far beyond what the ledger accepts: the same
                    // fate as a rejected record, decided here.
                    tracing::error!(
                        request_id = %rec.request_id,
                        error = %err,
                        "usage record too large to spool; dropping it"
                    );
                    stats.forget(1);
                }
                Err(Refused::Failed(err)) => {
                    failed = Some(err);
                    kept.push(rec);
                }
            }
        }
        backlog = kept;

        spool.rotate_if_due(Instant::now());
        let taken = spool.take_unsynced();
        if !taken.is_empty() {
            let syncing = Arc::clone(&spool);
            let Ok(done) = tokio::task::spawn_blocking(move || syncing.sync_taken(taken)).await
            else {
                tracing::error!("usage spool sync task failed; writer stops");
                return;
            };
            for (outcome, segment) in done {
                let sent = match outcome {
                    Done::Durable { segment, records } => {
                        events.send(Event::Durable { segment, records })
                    }
                    Done::Sealed { segment } => events.send(Event::Sealed { segment }),
                    Done::Again(records) => {
                        failed.get_or_insert_with(|| io::Error::other("sync failed"));
                        backlog.splice(0..0, records);
                        Ok(())
                    }
                };
                if sent.is_err() {
                    // Only after the reporter was stopped at the shutdown deadline: the records
                    // are on disk and will be reported by the next start.
                    tracing::debug!(segment, "usage reporter gone; records stay in the spool");
                }
            }
        }

        if let Some(err) = failed {
            let delay = backoff.next_delay();
            tracing::warn!(
                error = %err,
                records = backlog.len(),
                retry_in_ms = delay.as_millis() as u64,
                "cannot write usage records to the spool; retrying"
            );
            tokio::time::sleep(delay).await;
            continue;
        }
        backoff.reset();
        if closing && backlog.is_empty() && rx.is_empty() {
            spool.close();
            let taken = spool.take_unsynced();
            let syncing = Arc::clone(&spool);
            if let Ok(done) = tokio::task::spawn_blocking(move || syncing.sync_taken(taken)).await {
                for (outcome, _) in done {
                    let _ = match outcome {
                        Done::Durable { segment, records } => {
                            events.send(Event::Durable { segment, records })
                        }
                        Done::Sealed { segment } => events.send(Event::Sealed { segment }),
                        Done::Again(records) => {
                            tracing::error!(
                                records = records.len(),
                                "usage records not durable at shutdown; lost"
                            );
                            Ok(())
                        }
                    };
                }
            }
            break;
        }

        let rotate_at = spool.rotation_deadline();
        tokio::select! {
            biased;
            () = stop.cancelled(), if !closing => {
                // No new sends succeed from here on; what is buffered is still received. An
                // append after the open segment is closed goes to the channel and is refused.
                rx.close();
                closing = true;
                continue;
            }
            received = rx.recv_many(&mut backlog, config.max_group), if !closing => {
                if received == 0 {
                    // Every sink is gone.
                    closing = true;
                    continue;
                }
            }
            () = spool.wake.notified(), if !closing => {}
            () = super::sleep_until_opt(rotate_at), if !closing => {}
            () = std::future::ready(()), if closing => {}
        }
        if !config.linger.is_zero() && !closing {
            // Sleep, then sync what arrived meanwhile: the wake-ups of appends made during the
            // sleep coalesce into one.
            tokio::time::sleep(config.linger).await;
        }
    }
    tracing::debug!("usage spool writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SegmentLimits {
        SegmentLimits {
            max_records: 4096,
            max_age: Duration::from_secs(5),
            max_bytes: 16 << 20,
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
        let (spool, loaded) = Spool::open(&dir, limits()).unwrap();
        assert!(loaded.is_empty());
        let written: Vec<_> = (0..30).map(rec).collect();
        let first = spool.append_all(&written[..10]).unwrap().0;
        assert_eq!(spool.append_all(&written[10..20]).unwrap().0, first);
        assert_eq!(spool.seal(), Some(first));
        let second = spool.append_all(&written[20..]).unwrap().0;
        assert!(second > first);
        drop(spool);

        let (spool, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].seq, first);
        assert_eq!(loaded[1].seq, second);
        assert_eq!(all_records(&loaded), written);
        // A new run never appends to an old segment.
        let third = spool.append_all(&written[..1]).unwrap().0;
        assert!(third > second);
        assert_eq!(segment_files(&dir).len(), 3);
    }

    #[tokio::test]
    async fn truncated_tail_keeps_valid_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (spool, _) = Spool::open(&dir, limits()).unwrap();
        let written: Vec<_> = (0..5).map(rec).collect();
        let seq = spool.append_all(&written).unwrap().0;
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
        let (spool, _) = Spool::open(&dir, limits()).unwrap();
        let written: Vec<_> = (0..5).map(rec).collect();
        let seq = spool.append_all(&written).unwrap().0;
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
        let (spool, _) = Spool::open(&tmp.path().join("spool"), limits()).unwrap();
        let written: Vec<_> = (0..3).map(rec).collect();
        let (_, encoded) = spool.append_all(&written).unwrap();
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
            backlog_records: 7,
            backlog_oldest_ms: 1_700_000_000_123,
        };
        let as_sent = pb::ReportUsageRequest::decode(encoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            as_sent,
            pb::ReportUsageRequest {
                node_id: "node-1".into(),
                records: written,
                backlog_records: 7,
                backlog_oldest_ms: 1_700_000_000_123,
            }
        );
    }

    #[test]
    fn a_request_id_overridden_by_a_later_empty_one_is_empty() {
        // Field 1 twice: prost keeps the last, so the record has no request id, and the
        // idempotency key must say so rather than point at the first.
        let mut payload = pb::UsageRecord {
            request_id: "req-first".into(),
            ..Default::default()
        }
        .encode_to_vec();
        payload.extend_from_slice(&[0x0a, 0x00]);
        let rec = EncodedRecord::new(Bytes::from(payload)).unwrap();
        assert_eq!(rec.decode().request_id, "");
        assert_eq!(rec.request_id(), "");
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
        let (spool, _) = Spool::open(&dir, limits()).unwrap();
        let first: Vec<_> = (0..3).map(rec).collect();
        let second: Vec<_> = (3..6).map(rec).collect();
        let a = spool.append_all(&first).unwrap().0;
        spool.seal();
        spool.append_all(&second).unwrap();
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
        let (spool, loaded) = Spool::open(&dir, limits()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].seq, 7);
        assert!(loaded[0].records.is_empty());
        assert_eq!(spool.append_all(&[rec(1)]).unwrap().0, 8);
    }

    #[tokio::test]
    async fn rotation_by_count_and_age() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let small = SegmentLimits {
            max_records: 3,
            max_age: Duration::from_secs(60),
            max_bytes: 16 << 20,
        };
        let (spool, _) = Spool::open(&dir, small).unwrap();
        assert!(!spool.should_rotate(Instant::now()));
        assert_eq!(spool.rotation_deadline(), None);
        spool.append_all(&[rec(1), rec(2)]).unwrap();
        assert!(!spool.should_rotate(Instant::now()));
        let deadline = spool.rotation_deadline().unwrap();
        assert!(spool.should_rotate(deadline));
        spool.append_all(&[rec(3)]).unwrap();
        assert!(spool.should_rotate(Instant::now()));
    }

    #[tokio::test]
    async fn oversized_record_is_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (spool, _) = Spool::open(&dir, limits()).unwrap();
        let mut big = rec(1);
        big.model = "m".repeat(MAX_RECORD_BYTES + 1);
        let err = spool.append_all(&[rec(0), big]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(segment_files(&dir).is_empty());
    }
}
