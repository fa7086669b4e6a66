//! The request log: one entry per request a data plane answered or refused, with who asked, the
//! dialect and model, the upstreams tried in order, status, error code, tokens, cost and timing
//! (`keyplanectl requests`). Entries arrive in the usage reports (a `UsageRecord` is also its
//! request's log entry; `unbilled` ones are only that) and are kept for the retention
//! (`--request-log-retention`), pruned in the background in bounded batches. Prompt and
//! completion bodies are never part of an entry.
//!
//! # Layout
//!
//! | tree                | key                                                    | value |
//! |---------------------|--------------------------------------------------------|-------|
//! | `request_log`       | start time (Unix ms, `u64` BE) ‖ request id             | `LoggedRequest` protobuf (without `key`) |
//! | `request_log_index` | kind byte ‖ value length (`u16` BE) ‖ value ‖ the entry's `request_log` key | empty |
//!
//! Index kinds: `k` client key id, `m` model, `s` HTTP status (`u16` BE) of a request that was
//! not served with a 2xx. So the newest entries, or the newest of one key, model or error
//! status, are a reverse range scan that stops at the limit. Successes are not indexed by status:
//! they are most of the log, so a scan of the whole log meets them at once.
//!
//! # Exactly once
//!
//! An entry's keys follow from its start time and request id alone, which a data plane re-sends
//! unchanged: storing a re-sent record writes the same keys with the same value, so the log
//! holds one entry per request however often it arrives.

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

/// The entry's key in `request_log`.
fn entry_key(started_at_ms: i64, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + request_id.len());
    key.extend_from_slice(&time_bytes(started_at_ms));
    key.extend_from_slice(request_id.as_bytes());
    key
}

fn time_bytes(ms: i64) -> [u8; 8] {
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

/// The index entries of one log entry.
fn index_keys(rec: &pb::UsageRecord, entry: &[u8]) -> Vec<Vec<u8>> {
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
                    index: index_keys(rec, &key),
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
        for e in &self.entries {
            if log.get(&e.key)?.is_some() {
                continue;
            }
            log.insert(e.key.as_slice(), e.value.as_slice())?;
            for ik in &e.index {
                index.insert(ik.as_slice(), &[][..])?;
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

    /// The entries `filter` selects, newest first, at most its limit (or [`DEFAULT_LIMIT`]).
    /// Walks the narrowest index the filter names (key, model, or an error status), else the
    /// log itself, backwards from `until`, and stops at the limit.
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
        let index = if let Some(key) = &filter.key_id {
            Some(index_prefix(INDEX_KEY, key.as_bytes()))
        } else if let Some(model) = &filter.model {
            Some(index_prefix(INDEX_MODEL, model.as_bytes()))
        } else {
            filter
                .status
                .filter(|s| !(200..300).contains(s))
                .map(|s| index_prefix(INDEX_STATUS, &status_bytes(s)))
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
                let from = [prefix.as_slice(), &lo].concat();
                let to = [prefix.as_slice(), &hi].concat();
                for item in self.request_log_index.range(from..to).rev() {
                    let (ik, _) = item?;
                    let entry = &ik[prefix.len()..];
                    // An index entry whose entry is gone (pruned midway) is skipped.
                    if let Some(raw) = self.request_log.get(entry)?
                        && take(&raw)?
                    {
                        break;
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

    /// Deletes up to `max` of the oldest entries started before `before_ms`, index entries
    /// first. Returns how many were deleted: fewer than `max` when none older are left.
    pub fn prune_request_log(&self, before_ms: i64, max: usize) -> Result<usize> {
        let mut entries = sled::Batch::default();
        let mut index = sled::Batch::default();
        let mut n = 0;
        for item in self
            .request_log
            .range(..time_bytes(before_ms.max(0)).to_vec())
            .take(max)
        {
            let (key, raw) = item?;
            // An entry that does not decode is still removed; its index entries (if any) then
            // point at nothing and are skipped by listings.
            if let Ok(pb::LoggedRequest {
                record: Some(rec), ..
            }) = pb::LoggedRequest::decode(&*raw)
            {
                for ik in index_keys(&rec, &key) {
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
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let cutoff = crate::store::now_ms().saturating_sub(retention_ms);
        let mut total = 0usize;
        loop {
            let store = std::sync::Arc::clone(&store);
            let pruned =
                tokio::task::spawn_blocking(move || store.prune_request_log(cutoff, batch)).await;
            match pruned {
                Ok(Ok(n)) => {
                    total += n;
                    if n < batch || cancel.is_cancelled() {
                        break;
                    }
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "request log pruning failed; retrying later");
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "request log pruning task failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(pruned = total, "request log entries past retention pruned");
        }
        // The rollups keep their own retention (`rollup.rs`), pruned on the same beat.
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
        assert_eq!(store.prune_request_log(3500, 2).unwrap(), 2);
        assert_eq!(store.prune_request_log(3500, 2).unwrap(), 1);
        assert_eq!(store.prune_request_log(3500, 2).unwrap(), 0);
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
    fn check_refuses_what_cannot_be_keyed() {
        assert!(check(&rec("r", 1, "k", "", 404)).is_ok());
        assert!(check(&rec("", 1, "k", "m", 200)).is_err());
        assert!(check(&rec("r", 1, "", "m", 200)).is_err());
        assert!(check(&rec("r", 1, "k", &"m".repeat(300), 200)).is_err());
        assert!(check(&rec("r\n", 1, "k", "m", 200)).is_err());
    }
}
