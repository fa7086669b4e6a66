//! The request log: one entry per request a data plane answered or refused, with who asked, the
//! dialect and model, the upstreams tried in order, status, error code, tokens, cost and timing
//! (`keyplanectl requests`). Entries arrive in the usage reports (a `UsageRecord` is also its
//! request's log entry; `unbilled` ones are only that) and are kept for the retention
//! (`--request-log-retention`), pruned in the background in bounded batches. Prompt and
//! completion bodies are never part of an entry: a key that opted in has them kept apart, in
//! `request_bodies.rs`.
//!
//! # Layout
//!
//! | tree                | key                                                    | value |
//! |---------------------|--------------------------------------------------------|-------|
//! | `request_log`       | start time (Unix ms, `u64` BE) ‖ request id             | `LoggedRequest` protobuf (without `key`) |
//! | `request_log_index` | kind byte ‖ value length (`u16` BE) ‖ value ‖ start of a second (Unix ms, `u64` BE) | empty |
//!
//! Index kinds: `k` client key id, `m` model, `s` HTTP status (`u16` BE) of a request that was
//! not served with a 2xx. An index entry says "this second holds entries with this value": a
//! listing walks the value's seconds newest first and reads each second's entries from the log
//! newest first, keeping those the filter selects, until the limit. One index entry per value
//! and second, not per entry, because sled's cost is per insert: a busy second's thousand
//! requests of one key write one index entry, not a thousand. Index entries written before
//! (naming an entry's whole key) are read as naming its second. Successes are not indexed by
//! status: they are most of the log, so a scan of the whole log meets them at once.
//!
//! # Exactly once
//!
//! An entry's key follows from its start time and request id alone, which a data plane re-sends
//! unchanged: an entry already there is left as it is, so the log holds one entry per request
//! however often it arrives. Entries are written in the same sled transaction as the ledger's
//! records and the rollups (`Store::ingest_report`).

use crate::error::{Error, Result};
use crate::store::Store;
use keyplane_proto::v1 as pb;
use prost::Message;

/// Entries a listing returns when it asks for no limit.
pub const DEFAULT_LIMIT: usize = 50;
/// The most entries one listing returns.
pub const MAX_LIMIT: usize = 10_000;

const INDEX_KEY: u8 = b'k';
const INDEX_MODEL: u8 = b'm';
const INDEX_STATUS: u8 = b's';

/// What a listing selects. Empty or zero fields select everything.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub status: Option<u32>,
    /// Start time in `[since_ms, until_ms)`; 0 is unbounded.
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: usize,
}

impl RequestFilter {
    fn selects(&self, rec: &pb::UsageRecord) -> bool {
        self.key_id.as_deref().is_none_or(|k| rec.key_id == k)
            && self.model.as_deref().is_none_or(|m| rec.model == m)
            && self.status.is_none_or(|s| rec.status == s)
            && (self.since_ms <= 0 || rec.started_at_ms >= self.since_ms)
            && (self.until_ms <= 0 || rec.started_at_ms < self.until_ms)
    }
}

/// The entry's key in `request_log` (and of its bodies in `request_bodies`).
pub(crate) fn entry_key(started_at_ms: i64, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + request_id.len());
    key.extend_from_slice(&time_bytes(started_at_ms));
    key.extend_from_slice(request_id.as_bytes());
    key
}

pub(crate) fn time_bytes(ms: i64) -> [u8; 8] {
    u64::try_from(ms).unwrap_or(0).to_be_bytes()
}

fn index_prefix(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + value.len() + 8 + 40);
    key.push(kind);
    // Values are validated to fit (`check`).
    key.extend_from_slice(&(value.len() as u16).to_be_bytes());
    key.extend_from_slice(value);
    key
}

/// Index entries name a second, not an entry: one per (key, second), (model, second) and
/// (error status, second), so a batch of records writes one index entry per value and second
/// it holds instead of one per record and value.
const INDEX_STEP_MS: u64 = 1_000;

/// The start of the second holding `ms` (Unix ms, as the log's keys order it).
fn second_of(ms: u64) -> u64 {
    ms - ms % INDEX_STEP_MS
}

/// The index entries of one log entry: kind ‖ value ‖ the start of its second.
fn index_keys(rec: &pb::UsageRecord) -> Vec<Vec<u8>> {
    let second = second_of(u64::from_be_bytes(time_bytes(rec.started_at_ms))).to_be_bytes();
    let mut keys = Vec::with_capacity(3);
    let mut with = |kind: u8, value: &[u8]| {
        let mut key = index_prefix(kind, value);
        key.extend_from_slice(&second);
        keys.push(key);
    };
    with(INDEX_KEY, rec.key_id.as_bytes());
    with(INDEX_MODEL, rec.model.as_bytes());
    if !(200..300).contains(&rec.status) {
        with(INDEX_STATUS, &status_bytes(rec.status));
    }
    keys
}

/// The index entries an entry had when they named it (its whole `request_log` key) rather than
/// its second; a listing reads such an entry as naming the entry's second, and pruning removes
/// it with its entry.
fn entry_index_keys(rec: &pb::UsageRecord, entry: &[u8]) -> Vec<Vec<u8>> {
    let mut keys = Vec::with_capacity(3);
    let mut with = |kind: u8, value: &[u8]| {
        let mut key = index_prefix(kind, value);
        key.extend_from_slice(entry);
        keys.push(key);
    };
    with(INDEX_KEY, rec.key_id.as_bytes());
    with(INDEX_MODEL, rec.model.as_bytes());
    if !(200..300).contains(&rec.status) {
        with(INDEX_STATUS, &status_bytes(rec.status));
    }
    keys
}

fn status_bytes(status: u32) -> [u8; 2] {
    u16::try_from(status).unwrap_or(u16::MAX).to_be_bytes()
}

/// Why a record cannot be logged, if it cannot.
pub fn check(rec: &pb::UsageRecord) -> Result<(), String> {
    let field = |name: &str, value: &str, empty_ok: bool| {
        if value.is_empty() && !empty_ok {
            return Err(format!("{name} is empty"));
        }
        if value.len() > 256 || value.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("{name} is malformed"));
        }
        Ok(())
    };
    field("request_id", &rec.request_id, false)?;
    field("key_id", &rec.key_id, false)?;
    field("model", &rec.model, true)
}

/// A stored entry's value: `LoggedRequest { record, node_id }`, encoded from borrowed parts.
fn encode_entry(rec: &pb::UsageRecord, node_id: &String) -> Vec<u8> {
    let mut buf = Vec::with_capacity(rec.encoded_len() + node_id.len() + 8);
    prost::encoding::message::encode(1, rec, &mut buf);
    prost::encoding::string::encode(2, node_id, &mut buf);
    buf
}

fn decode_entry(raw: &[u8]) -> Result<pb::LoggedRequest> {
    pb::LoggedRequest::decode(raw).map_err(|e| Error::Corrupt {
        tree: "request_log",
        detail: e.to_string(),
    })
}

/// Log entries made ready for the ingest's transaction: keys and values encoded once, outside
/// it (sled may run a transaction's closure more than once).
#[derive(Default)]
pub struct Pending {
    entries: Vec<PendingEntry>,
}

struct PendingEntry {
    key: Vec<u8>,
    value: Vec<u8>,
    index: Vec<Vec<u8>>,
    /// What an unbilled request adds to the rollups when its entry is new (a billed one is
    /// counted by the ledger, which keeps it for ever).
    unbilled: Option<crate::rollup::Entry>,
}

impl Pending {
    /// The entries of `records` (checked with [`check`] by the caller), from `node_id`.
    pub fn of<'a>(
        node_id: &str,
        records: impl IntoIterator<Item = &'a pb::UsageRecord>,
    ) -> Pending {
        let node_id = node_id.to_string();
        let entries = records
            .into_iter()
            .map(|rec| {
                let key = entry_key(rec.started_at_ms, &rec.request_id);
                PendingEntry {
                    index: index_keys(rec),
                    value: encode_entry(rec, &node_id),
                    key,
                    unbilled: rec.unbilled.then(|| crate::rollup::Entry::unbilled(rec)),
                }
            })
            .collect();
        Pending { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores every entry not stored yet, with its index entries, inside the ingest's
    /// transaction, and hands each new unbilled one to `counted`. An entry already there (a
    /// re-sent record: its key follows from its start time and id alone) is left as it is.
    pub(crate) fn store(
        &self,
        log: &sled::transaction::TransactionalTree,
        index: &sled::transaction::TransactionalTree,
        counted: &mut dyn FnMut(&crate::rollup::Entry),
    ) -> std::result::Result<(), sled::transaction::ConflictableTransactionError<Error>> {
        // The index entries this write has seen: most records of a batch share their seconds.
        let mut seen: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        for e in &self.entries {
            if log.get(&e.key)?.is_some() {
                continue;
            }
            log.insert(e.key.as_slice(), e.value.as_slice())?;
            for ik in &e.index {
                // A read is cheaper than a write: an index entry already there is left alone.
                if seen.insert(ik.as_slice()) && index.get(ik)?.is_none() {
                    index.insert(ik.as_slice(), &[][..])?;
                }
            }
            if let Some(entry) = &e.unbilled {
                counted(entry);
            }
        }
        Ok(())
    }
}

impl Store {
    /// Stores the log entries of `records` (checked with [`check`] by the caller), from
    /// `node_id`, counting the new unbilled ones in the rollups. Idempotent; the caller must
    /// [`Store::flush`] before acknowledging. Returns how many records it was given.
    pub fn log_requests<'a>(
        &self,
        node_id: &str,
        records: impl IntoIterator<Item = &'a pb::UsageRecord>,
    ) -> Result<usize> {
        let pending = Pending::of(node_id, records);
        if pending.is_empty() {
            return Ok(0);
        }
        self.ingest_with_log(node_id, Vec::new(), &pending)?;
        Ok(pending.len())
    }

    /// Stores a usage report: the billable records in the ledger and, with the log on (`log`),
    /// every record in the request log, all in one transaction with the rollups. An unbilled
    /// record (a request that served nothing) reaches the log only, so it changes no usage
    /// total or budget. A record either refuses is rejected, every other one acknowledged, in
    /// the order sent (a reporter matches acks in order). With the log off an unbilled record is
    /// acknowledged and kept nowhere.
    pub fn ingest_report(
        &self,
        node_id: &str,
        records: &[pb::UsageRecord],
        log: bool,
    ) -> Result<crate::ledger::Ingested> {
        let mut rejected: Vec<(String, String)> = Vec::new();
        let mut loggable: Vec<&pb::UsageRecord> = Vec::with_capacity(records.len());
        let mut billable: Vec<crate::ledger::UsageRec> = Vec::with_capacity(records.len());
        for rec in records {
            if let Err(reason) = check(rec) {
                rejected.push((rec.request_id.clone(), reason));
                continue;
            }
            if !rec.unbilled {
                let usage = crate::grpc::convert::usage_record(rec);
                if let Err(reason) = crate::ledger::validate(&usage) {
                    rejected.push((rec.request_id.clone(), reason));
                    continue;
                }
                billable.push(usage);
            }
            loggable.push(rec);
        }
        let pending = if log {
            Pending::of(node_id, loggable.iter().copied())
        } else {
            Pending::default()
        };
        let billed = self.ingest_with_log(node_id, billable, &pending)?;
        rejected.extend(billed.rejected);
        Ok(crate::ledger::Ingested {
            inserted: billed.inserted,
            acked: loggable.iter().map(|r| r.request_id.clone()).collect(),
            rejected,
        })
    }

    /// Calls `f` with every logged request started at or after `since_ms`, oldest first.
    pub fn each_logged_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(&pb::UsageRecord),
    ) -> Result<()> {
        for item in self
            .request_log
            .range(time_bytes(since_ms.max(0)).to_vec()..)
        {
            let (_, raw) = item?;
            if let Some(rec) = decode_entry(&raw)?.record {
                f(&rec);
            }
        }
        Ok(())
    }

    /// Whether each index prefix in `prefixes` has an entry in the second starting at `second`
    /// (Unix ms). A range, not a point read: index entries written before name an entry's whole
    /// key (its time ‖ request id) rather than its second.
    fn all_index_second(&self, prefixes: &[Vec<u8>], second: u64) -> Result<bool> {
        for prefix in prefixes {
            let from = [prefix.as_slice(), &second.to_be_bytes()].concat();
            let to = [
                prefix.as_slice(),
                &second.saturating_add(INDEX_STEP_MS).to_be_bytes(),
            ]
            .concat();
            if self
                .request_log_index
                .range(from..to)
                .next()
                .transpose()?
                .is_none()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The entries `filter` selects, newest first, at most its limit (or [`DEFAULT_LIMIT`]).
    /// Walks one index the filter names (key, else model, else an error status), else the log
    /// itself, backwards from `until`, and stops at the limit. A second the walked index names is
    /// read from the log only if every other index the filter names has that second too, so a
    /// combined filter skips the seconds that cannot hold a match.
    pub fn list_requests(&self, filter: &RequestFilter) -> Result<Vec<pb::LoggedRequest>> {
        let limit = match filter.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let lo = time_bytes(filter.since_ms.max(0));
        let hi = if filter.until_ms > 0 {
            time_bytes(filter.until_ms)
        } else {
            u64::MAX.to_be_bytes()
        };
        let mut named: Vec<Vec<u8>> = Vec::new();
        if let Some(key) = &filter.key_id {
            named.push(index_prefix(INDEX_KEY, key.as_bytes()));
        }
        if let Some(model) = &filter.model {
            named.push(index_prefix(INDEX_MODEL, model.as_bytes()));
        }
        if let Some(s) = filter.status.filter(|s| !(200..300).contains(s)) {
            named.push(index_prefix(INDEX_STATUS, &status_bytes(s)));
        }
        let (index, others) = match named.split_first() {
            Some((first, rest)) => (Some(first.clone()), rest),
            None => (None, &[][..]),
        };
        let mut out = Vec::new();
        let mut take = |raw: &[u8]| -> Result<bool> {
            let entry = decode_entry(raw)?;
            if entry.record.as_ref().is_some_and(|r| filter.selects(r)) {
                out.push(entry);
            }
            Ok(out.len() >= limit)
        };
        match index {
            Some(prefix) => {
                // Each second the index names, newest first, is read from the log newest first:
                // so the listing is newest first across seconds too.
                let lo_ms = u64::from_be_bytes(lo);
                let hi_ms = u64::from_be_bytes(hi);
                let from = [prefix.as_slice(), &second_of(lo_ms).to_be_bytes()].concat();
                let to = [prefix.as_slice(), &hi].concat();
                let mut last_second = None;
                'seconds: for item in self.request_log_index.range(from..to).rev() {
                    let (ik, _) = item?;
                    let Some(at) = ik.get(prefix.len()..prefix.len() + 8) else {
                        continue;
                    };
                    let mut b = [0u8; 8];
                    b.copy_from_slice(at);
                    let second = second_of(u64::from_be_bytes(b));
                    if last_second == Some(second) {
                        continue;
                    }
                    last_second = Some(second);
                    if !self.all_index_second(others, second)? {
                        continue;
                    }
                    let start = second.max(lo_ms).to_be_bytes();
                    let end = second
                        .saturating_add(INDEX_STEP_MS)
                        .min(hi_ms)
                        .to_be_bytes();
                    // A second whose entries are gone (pruned midway) yields nothing.
                    for item in self.request_log.range(start..end).rev() {
                        let (_, raw) = item?;
                        if take(&raw)? {
                            break 'seconds;
                        }
                    }
                }
            }
            None => {
                for item in self.request_log.range(lo..hi).rev() {
                    let (_, raw) = item?;
                    if take(&raw)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes up to `max` of the oldest entries started in the seconds wholly before
    /// `before_ms`, index entries first. Returns how many entries were deleted: fewer than `max`
    /// when none older are left.
    pub fn prune_request_log(&self, before_ms: i64, max: usize) -> Result<usize> {
        let mut entries = sled::Batch::default();
        let mut index = sled::Batch::default();
        let mut n = 0;
        // Whole seconds only: every entry of a second goes with its index entries.
        let cut = second_of(u64::from_be_bytes(time_bytes(before_ms)));
        for item in self
            .request_log
            .range(..cut.to_be_bytes().to_vec())
            .take(max)
        {
            let (key, raw) = item?;
            // An entry that does not decode is still removed; its index entries (if any) then
            // point at nothing and are skipped by listings.
            if let Ok(pb::LoggedRequest {
                record: Some(rec), ..
            }) = pb::LoggedRequest::decode(&*raw)
            {
                for ik in index_keys(&rec) {
                    index.remove(ik);
                }
                for ik in entry_index_keys(&rec, &key) {
                    index.remove(ik);
                }
            }
            entries.remove(key);
            n += 1;
        }
        if n > 0 {
            self.request_log_index.apply_batch(index)?;
            self.request_log.apply_batch(entries)?;
        }
        Ok(n)
    }
}

/// Prunes entries older than `retention` every `every`, in batches of `batch` (each its own
/// sled batch, so a large backlog never holds the store in one long write), until `cancel`.
pub async fn prune_forever(
    store: std::sync::Arc<Store>,
    retention: std::time::Duration,
    every: std::time::Duration,
    batch: usize,
    cancel: tokio_util::sync::CancellationToken,
) {
    prune_loop(
        store,
        Pruning {
            retention,
            every,
            batch,
            what: "request log entries",
            prune: Store::prune_request_log,
            rollups: true,
        },
        cancel,
    )
    .await;
}

/// One kind of aged data [`prune_loop`] deletes: what it is called in a log line, and the
/// store's step that deletes up to `batch` of it started before a time.
pub(crate) struct Pruning {
    pub retention: std::time::Duration,
    pub every: std::time::Duration,
    pub batch: usize,
    pub what: &'static str,
    pub prune: fn(&Store, i64, usize) -> Result<usize>,
    /// Also prune the rollups on the same beat (the request log's pruner does).
    pub rollups: bool,
}

/// Prunes what `p` names, older than its retention, every `p.every`, in batches, until
/// `cancel`.
pub(crate) async fn prune_loop(
    store: std::sync::Arc<Store>,
    p: Pruning,
    cancel: tokio_util::sync::CancellationToken,
) {
    let Pruning {
        retention,
        every,
        batch,
        what,
        prune,
        rollups,
    } = p;
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let cutoff = crate::store::now_ms().saturating_sub(retention_ms);
        let mut total = 0usize;
        loop {
            let store = std::sync::Arc::clone(&store);
            let pruned = tokio::task::spawn_blocking(move || prune(&store, cutoff, batch)).await;
            match pruned {
                Ok(Ok(n)) => {
                    total += n;
                    if n < batch || cancel.is_cancelled() {
                        break;
                    }
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, what, "pruning failed; retrying later");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, what, "pruning task failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(pruned = total, what, "pruned past their retention");
        }
        // The rollups keep their own retention (`rollup.rs`), pruned on the same beat.
        if rollups {
            loop {
                let store = std::sync::Arc::clone(&store);
                let now = crate::store::now_ms();
                match tokio::task::spawn_blocking(move || store.prune_rollups(now, batch)).await {
                    Ok(Ok(n)) if n == batch && !cancel.is_cancelled() => continue,
                    Ok(Ok(_)) => break,
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "rollup pruning failed; retrying later");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "rollup pruning task failed");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    fn rec(id: &str, at: i64, key: &str, model: &str, status: u32) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            key_id: key.into(),
            model: model.into(),
            status,
            started_at_ms: at,
            ..Default::default()
        }
    }

    fn ids(list: &[pb::LoggedRequest]) -> Vec<&str> {
        list.iter()
            .map(|e| e.record.as_ref().unwrap().request_id.as_str())
            .collect()
    }

    fn sample(store: &Store) {
        let recs = [
            rec("r1", 1000, "ka", "m1", 200),
            rec("r2", 2000, "kb", "m1", 429),
            rec("r3", 3000, "ka", "m2", 404),
            rec("r4", 4000, "kb", "m2", 200),
            rec("r5", 5000, "ka", "m1", 429),
        ];
        assert_eq!(store.log_requests("n1", &recs).unwrap(), 5);
    }

    #[test]
    fn newest_first_with_limit_and_time_bounds() {
        let (_dir, store) = open_temp();
        sample(&store);
        let all = store.list_requests(&RequestFilter::default()).unwrap();
        assert_eq!(ids(&all), ["r5", "r4", "r3", "r2", "r1"]);
        assert_eq!(all[0].node_id, "n1");
        let two = RequestFilter {
            limit: 2,
            ..Default::default()
        };
        assert_eq!(ids(&store.list_requests(&two).unwrap()), ["r5", "r4"]);
        let window = RequestFilter {
            since_ms: 2000,
            until_ms: 4000,
            ..Default::default()
        };
        assert_eq!(ids(&store.list_requests(&window).unwrap()), ["r3", "r2"]);
    }

    #[test]
    fn filters_by_key_model_status_and_their_combinations() {
        let (_dir, store) = open_temp();
        sample(&store);
        let list = |f: RequestFilter| ids(&store.list_requests(&f).unwrap()).join(",");
        let key = |k: &str| Some(k.to_string());
        assert_eq!(
            list(RequestFilter {
                key_id: key("ka"),
                ..Default::default()
            }),
            "r5,r3,r1"
        );
        assert_eq!(
            list(RequestFilter {
                model: key("m2"),
                ..Default::default()
            }),
            "r4,r3"
        );
        // An error status walks its index; a success walks the log.
        assert_eq!(
            list(RequestFilter {
                status: Some(429),
                ..Default::default()
            }),
            "r5,r2"
        );
        assert_eq!(
            list(RequestFilter {
                status: Some(200),
                ..Default::default()
            }),
            "r4,r1"
        );
        assert_eq!(
            list(RequestFilter {
                key_id: key("ka"),
                model: key("m1"),
                status: Some(429),
                ..Default::default()
            }),
            "r5"
        );
        assert_eq!(
            list(RequestFilter {
                key_id: key("kb"),
                since_ms: 3000,
                ..Default::default()
            }),
            "r4"
        );
        assert_eq!(
            list(RequestFilter {
                key_id: key("nobody"),
                ..Default::default()
            }),
            ""
        );
        // A key id that is a prefix of another selects only its own entries.
        store
            .log_requests("n1", &[rec("r6", 6000, "kaa", "m1", 200)])
            .unwrap();
        assert_eq!(
            list(RequestFilter {
                key_id: key("ka"),
                limit: 1,
                ..Default::default()
            }),
            "r5"
        );
    }

    #[test]
    fn a_resent_record_is_one_entry() {
        let (_dir, store) = open_temp();
        sample(&store);
        sample(&store);
        let all = store.list_requests(&RequestFilter::default()).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(store.request_log.len(), 5);
        // 5 key + 5 model + 3 error-status index entries.
        assert_eq!(store.request_log_index.len(), 13);
    }

    #[test]
    fn pruning_removes_old_entries_and_their_index_entries_in_batches() {
        let (_dir, store) = open_temp();
        sample(&store);
        // Pruning stops at a whole second (r3 at 3000 is in the second 3500 cuts), so that no
        // index entry is left naming a second whose entries are gone.
        assert_eq!(store.prune_request_log(3500, 2).unwrap(), 2);
        assert_eq!(store.prune_request_log(3500, 2).unwrap(), 0);
        assert_eq!(store.prune_request_log(4000, 2).unwrap(), 1);
        assert_eq!(store.prune_request_log(4000, 2).unwrap(), 0);
        let all = store.list_requests(&RequestFilter::default()).unwrap();
        assert_eq!(ids(&all), ["r5", "r4"]);
        // Only r4's two and r5's three index entries are left.
        assert_eq!(store.request_log_index.len(), 5);
        let errors = RequestFilter {
            status: Some(429),
            ..Default::default()
        };
        assert_eq!(ids(&store.list_requests(&errors).unwrap()), ["r5"]);
    }

    #[test]
    fn index_entries_name_seconds_and_listings_stay_newest_first_across_them() {
        let (_dir, store) = open_temp();
        // 3 seconds of 200 requests each, every tenth of key "rare", every other of model "m2".
        let recs: Vec<pb::UsageRecord> = (0..600)
            .map(|i| {
                let key = if i % 10 == 0 { "rare" } else { "busy" };
                let model = if i % 2 == 0 { "m2" } else { "m1" };
                let status = if i % 50 == 0 { 503 } else { 200 };
                rec(&format!("r{i:03}"), 10_000 + i * 5, key, model, status)
            })
            .collect();
        store.log_requests("n1", &recs).unwrap();
        // (2 keys + 2 models + 1 error status) x 3 seconds.
        assert_eq!(store.request_log_index.len(), 15);
        let list = |f: RequestFilter| ids(&store.list_requests(&f).unwrap()).join(",");
        let rare = RequestFilter {
            key_id: Some("rare".into()),
            limit: 25,
            ..Default::default()
        };
        // 20 a second: the 25 newest run from the last second into the one before.
        let expected: Vec<String> = (0..600)
            .rev()
            .filter(|i| i % 10 == 0)
            .take(25)
            .map(|i| format!("r{i:03}"))
            .collect();
        assert_eq!(list(rare.clone()), expected.join(","));
        // Bounds cut inside a second.
        let window = RequestFilter {
            since_ms: 10_000 + 195 * 5,
            until_ms: 10_000 + 215 * 5,
            ..rare
        };
        assert_eq!(list(window), "r210,r200");
        let errors = RequestFilter {
            status: Some(503),
            ..Default::default()
        };
        assert_eq!(
            list(errors),
            "r550,r500,r450,r400,r350,r300,r250,r200,r150,r100,r050,r000"
        );
        // An index entry as written before they named seconds (the entry's whole key) still
        // finds its entry, and pruning removes it.
        let old = rec("old", 500, "legacy", "m9", 200);
        let key = entry_key(old.started_at_ms, &old.request_id);
        store
            .request_log
            .insert(&key, encode_entry(&old, &"n0".to_string()))
            .unwrap();
        for ik in entry_index_keys(&old, &key) {
            store.request_log_index.insert(ik, &[][..]).unwrap();
        }
        let legacy = RequestFilter {
            key_id: Some("legacy".into()),
            ..Default::default()
        };
        assert_eq!(list(legacy.clone()), "old");
        // Combined with another index, a legacy entry's second is found through both.
        let legacy_m9 = RequestFilter {
            model: Some("m9".into()),
            ..legacy.clone()
        };
        assert_eq!(list(legacy_m9), "old");
        let legacy_m1 = RequestFilter {
            model: Some("m1".into()),
            ..legacy
        };
        assert_eq!(list(legacy_m1), "");
        assert_eq!(store.prune_request_log(1000, 10).unwrap(), 1);
        assert_eq!(store.request_log_index.len(), 15);
    }

    /// A combined filter reads from the log only the seconds every index it names has: the
    /// seconds its walked index (the key) names without the status are skipped unread, which a
    /// damaged entry in one of them shows (reading it would fail the listing).
    #[test]
    fn a_combined_filter_reads_only_seconds_every_named_index_has() {
        let (_dir, store) = open_temp();
        let recs = [
            rec("a", 1_000, "ka", "m1", 429),
            rec("b", 2_000, "ka", "m1", 200),
            rec("c", 3_000, "ka", "m1", 429),
        ];
        store.log_requests("n1", &recs).unwrap();
        // Second 2 holds key ka but no 429; damage an entry there.
        store
            .request_log
            .insert(entry_key(2_500, "damaged"), &b"\xff\xff not an entry"[..])
            .unwrap();
        let filter = RequestFilter {
            key_id: Some("ka".into()),
            status: Some(429),
            ..Default::default()
        };
        assert_eq!(ids(&store.list_requests(&filter).unwrap()), ["c", "a"]);
        // The key alone walks second 2 and meets the damage.
        let key_only = RequestFilter {
            key_id: Some("ka".into()),
            ..Default::default()
        };
        assert!(store.list_requests(&key_only).is_err());
    }

    #[test]
    fn check_refuses_what_cannot_be_keyed() {
        assert!(check(&rec("r", 1, "k", "", 404)).is_ok());
        assert!(check(&rec("", 1, "k", "m", 200)).is_err());
        assert!(check(&rec("r", 1, "", "m", 200)).is_err());
        assert!(check(&rec("r", 1, "k", &"m".repeat(300), 200)).is_err());
        assert!(check(&rec("r\n", 1, "k", "m", 200)).is_err());
    }
}
