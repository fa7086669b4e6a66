//! The usage ledger: idempotent ingest of the data planes' usage records, and per-(key, model,
//! provider, credential) totals that keep `usage` queries fast however many records there are.
//!
//! Invariant: a record is counted in the totals in the same sled transaction that stores it, and
//! only if its request id was not stored before. Callers acknowledge a batch only after
//! [`Store::flush`] has returned.
//!
//! Where a record is stored: under its request id in `usage`, or, when the id is a canonical
//! UUIDv7 (every id a data plane makes), in its millisecond's bucket in `usage_ms` (see
//! `bucket`). `usage` also holds the UUIDv7 records written before layout version 3, up to
//! [`Store::legacy_v7_until_ms`]; a re-sent id in that range is looked up there too.

use crate::error::Result;
use crate::store::{SEP, Store, composite, now_ms};
use bucket::Bucket;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use std::collections::{BTreeMap, HashSet};

mod bucket;
mod codec;

/// One billable request, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRec {
    pub request_id: String,
    pub node_id: String,
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub credential_id: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What was billed: the provider's reported cost when it gave one, else the computed cost.
    pub cost_nano_usd: u64,
    /// The cost computed from the route table's prices (absent in records older than it).
    #[serde(default)]
    pub computed_cost_nano_usd: Option<u64>,
    /// The provider's own charge for the request, when it reported one.
    #[serde(default)]
    pub reported_cost_nano_usd: Option<u64>,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    pub latency_ms: u32,
    pub ttfb_ms: u32,
    pub status: u32,
    pub started_at_ms: i64,
    #[serde(default)]
    pub estimated: bool,
    #[serde(default)]
    pub received_at_ms: i64,
    /// The fallback chain the client asked for, if any.
    #[serde(default)]
    pub chain: String,
}

/// Totals of one (key, model, provider, credential).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotal {
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub credential_id: String,
    pub counts: Counts,
}

/// The summed columns of a totals row, stored as nine big-endian `u64`s. Rows written before the
/// last three columns existed are six long and read with zeros there, which is exactly right:
/// no request of theirs was billed at a reported cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Billed.
    pub cost_nano_usd: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Requests billed at the provider's reported cost, and the sums of that reported cost and
    /// of the computed cost of the same requests.
    pub reported_requests: u64,
    pub reported_cost_nano_usd: u64,
    pub computed_of_reported_nano_usd: u64,
}

impl Counts {
    const LEN: usize = 72;

    fn of(rec: &UsageRec) -> Counts {
        let reported = rec.reported_cost_nano_usd.is_some();
        Counts {
            requests: 1,
            input_tokens: rec.input_tokens,
            output_tokens: rec.output_tokens,
            cost_nano_usd: rec.cost_nano_usd,
            cache_read_tokens: rec.cache_read_tokens,
            cache_write_tokens: rec.cache_write_tokens,
            reported_requests: u64::from(reported),
            reported_cost_nano_usd: rec.reported_cost_nano_usd.unwrap_or(0),
            computed_of_reported_nano_usd: if reported {
                rec.computed_cost_nano_usd.unwrap_or(0)
            } else {
                0
            },
        }
    }

    /// The cost computed from catalog prices for every request of the row.
    pub fn computed_cost_nano_usd(&self) -> u64 {
        self.cost_nano_usd
            .saturating_sub(self.reported_cost_nano_usd)
            .saturating_add(self.computed_of_reported_nano_usd)
    }

    fn add(&mut self, other: &Counts) {
        // Records are clamped at ingest (`clamp_absurd`), so a column would need billions of
        // the largest records to get near 2^64. Saturating all the same: a total that reaches
        // it is wrong either way, but it must not wrap to 0.
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_nano_usd = self.cost_nano_usd.saturating_add(other.cost_nano_usd);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.reported_requests = self
            .reported_requests
            .saturating_add(other.reported_requests);
        self.reported_cost_nano_usd = self
            .reported_cost_nano_usd
            .saturating_add(other.reported_cost_nano_usd);
        self.computed_of_reported_nano_usd = self
            .computed_of_reported_nano_usd
            .saturating_add(other.computed_of_reported_nano_usd);
    }

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let fields = [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cost_nano_usd,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reported_requests,
            self.reported_cost_nano_usd,
            self.computed_of_reported_nano_usd,
        ];
        for (chunk, value) in out.chunks_exact_mut(8).zip(fields) {
            chunk.copy_from_slice(&value.to_be_bytes());
        }
        out
    }

    fn from_bytes(raw: &[u8]) -> Counts {
        let mut fields = [0u64; 9];
        for (field, chunk) in fields.iter_mut().zip(raw.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *field = u64::from_be_bytes(bytes);
        }
        let [
            requests,
            input_tokens,
            output_tokens,
            cost_nano_usd,
            cache_read_tokens,
            cache_write_tokens,
            reported_requests,
            reported_cost_nano_usd,
            computed_of_reported_nano_usd,
        ] = fields;
        Counts {
            requests,
            input_tokens,
            output_tokens,
            cost_nano_usd,
            cache_read_tokens,
            cache_write_tokens,
            reported_requests,
            reported_cost_nano_usd,
            computed_of_reported_nano_usd,
        }
    }
}

/// What became of a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Stored, now or by an earlier report: these may leave the node's spool once durable.
    pub acked: Vec<String>,
    /// Malformed records with the reason; they will never be stored.
    pub rejected: Vec<(String, String)>,
    /// How many records were new.
    pub inserted: usize,
}

/// `key_days` key: key id, SEP, day number as big-endian `u32` (days after 1970 are positive).
fn key_day(key_id: &str, day: i64) -> Vec<u8> {
    let mut key = key_id.as_bytes().to_vec();
    key.push(SEP);
    key.extend_from_slice(&(day.clamp(0, i64::from(u32::MAX)) as u32).to_be_bytes());
    key
}

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.len() > 256 || value.bytes().any(|b| b == SEP || b.is_ascii_control()) {
        return Err(format!("{name} is malformed"));
    }
    Ok(())
}

/// Most tokens one column of one stored record may hold: ten times the data plane's own bound
/// per bucket, so only a record that bypassed it (an older or broken node) is ever clamped.
pub const MAX_RECORD_TOKENS: u64 = 100_000_000;

/// Most one stored record may cost, in nano-USD ($100,000).
pub const MAX_RECORD_COST_NANO_USD: u64 = 100_000 * 1_000_000_000;

/// Clamps a record's counts and costs to what one request can believably be, flagging a clamped
/// record as estimated. An absurd record (2^64-1 tokens, say) would otherwise fill its totals to
/// the brim, and every later record of the row would be lost in the saturated sum. Returns
/// whether anything was clamped.
fn clamp_absurd(rec: &mut UsageRec) -> bool {
    let mut clamped = false;
    let mut clamp = |value: &mut u64, max: u64| {
        if *value > max {
            *value = max;
            clamped = true;
        }
    };
    clamp(&mut rec.input_tokens, MAX_RECORD_TOKENS);
    clamp(&mut rec.output_tokens, MAX_RECORD_TOKENS);
    clamp(&mut rec.cache_read_tokens, MAX_RECORD_TOKENS);
    clamp(&mut rec.cache_write_tokens, MAX_RECORD_TOKENS);
    clamp(&mut rec.cost_nano_usd, MAX_RECORD_COST_NANO_USD);
    for cost in [
        &mut rec.computed_cost_nano_usd,
        &mut rec.reported_cost_nano_usd,
    ]
    .into_iter()
    .flatten()
    {
        clamp(cost, MAX_RECORD_COST_NANO_USD);
    }
    if clamped {
        rec.estimated = true;
    }
    clamped
}

pub(crate) fn validate(rec: &UsageRec) -> Result<(), String> {
    check_field("request_id", &rec.request_id)?;
    check_field("key_id", &rec.key_id)?;
    check_field("model", &rec.model)?;
    check_field("provider", &rec.provider)?;
    check_field("credential_id", &rec.credential_id)
}

/// A valid record of a batch as its insert uses it: its key and stored value, the keys of the
/// totals it adds to, and what it adds.
struct Prepared {
    request_id: String,
    /// The id's bytes when it is a canonical UUIDv7: the record goes to its bucket.
    v7: Option<[u8; 16]>,
    value: Vec<u8>,
    total_key: Vec<u8>,
    day_key: Vec<u8>,
    counts: Counts,
    /// What the record adds to the rollups.
    roll: crate::rollup::Entry,
}

impl Prepared {
    fn new(rec: UsageRec) -> Prepared {
        let roll = crate::rollup::Entry::billed(&rec);
        let total_key = composite(&[&rec.key_id, &rec.model, &rec.provider, &rec.credential_id]);
        let day_key = key_day(&rec.key_id, crate::period::day_of(rec.started_at_ms));
        let counts = Counts::of(&rec);
        let v7 = bucket::v7_id(&rec.request_id);
        let (request_id, value) = codec::encode(rec);
        Prepared {
            request_id,
            v7,
            value,
            total_key,
            day_key,
            counts,
            roll,
        }
    }
}

impl Store {
    /// Stores the new records of a batch and adds them to the totals and the rollups,
    /// atomically. The caller must [`Store::flush`] before acknowledging.
    pub fn ingest_usage(&self, node_id: &str, records: Vec<UsageRec>) -> Result<Ingested> {
        self.ingest_with_log(node_id, records, &crate::request_log::Pending::default())
    }

    /// Stores the new records of a batch in the ledger and the request log entries of `log`,
    /// and adds what is new to the totals and the rollups, in one sled transaction: a crash
    /// keeps all of it or none, and a re-sent record (already stored) adds nothing. The caller
    /// must [`Store::flush`] before acknowledging.
    pub(crate) fn ingest_with_log(
        &self,
        node_id: &str,
        records: Vec<UsageRec>,
        log: &crate::request_log::Pending,
    ) -> Result<Ingested> {
        let mut out = Ingested::default();
        let mut seen = HashSet::new();
        let mut valid = Vec::with_capacity(records.len());
        let received_at_ms = now_ms();
        for mut rec in records {
            if let Err(reason) = validate(&rec) {
                out.rejected.push((rec.request_id, reason));
                continue;
            }
            // A batch may repeat an id (a node re-sending while a send was in flight): the first
            // one counts, every copy is acknowledged.
            if seen.insert(rec.request_id.clone()) {
                if clamp_absurd(&mut rec) {
                    tracing::warn!(
                        request_id = %rec.request_id,
                        node_id,
                        provider = %rec.provider,
                        "usage record beyond belief; its counts were clamped and it is flagged estimated"
                    );
                }
                rec.node_id = node_id.to_string();
                rec.received_at_ms = received_at_ms;
                valid.push(rec);
            } else {
                out.acked.push(rec.request_id);
            }
        }

        // Everything a record's insert needs is prepared once, here: sled may run the
        // transaction's closure more than once.
        let prepared: Vec<Prepared> = valid.into_iter().map(Prepared::new).collect();

        // Which bucket each UUIDv7 record goes to; the others are stored under their id.
        let mut buckets: BTreeMap<[u8; bucket::KEY], Vec<(&[u8; 16], &Prepared)>> = BTreeMap::new();
        let mut by_id: Vec<&Prepared> = Vec::new();
        for rec in &prepared {
            match &rec.v7 {
                Some(id) => buckets
                    .entry(bucket::key_of(id))
                    .or_default()
                    .push((id, rec)),
                None => by_id.push(rec),
            }
        }
        let legacy_until = self.legacy_v7_until_ms;

        // Shared: ingests run side by side; only a backup's export waits for them.
        let _export = self
            .export_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inserted = (
            &self.usage,
            &self.usage_ms,
            &self.usage_totals,
            &self.key_days,
            &self.request_log,
            &self.request_log_index,
            &self.rollups,
        )
            .transaction(
                |(usage, usage_ms, totals, key_days, log_tree, log_index, rollups)| {
                    let mut fresh: Vec<&Prepared> = Vec::with_capacity(prepared.len());
                    for rec in &by_id {
                        if usage.get(rec.request_id.as_bytes())?.is_some() {
                            continue;
                        }
                        usage.insert(rec.request_id.as_bytes(), rec.value.as_slice())?;
                        fresh.push(rec);
                    }
                    for (key, members) in &buckets {
                        let raw = usage_ms.get(key)?;
                        let held = Bucket::parse(raw.as_deref())
                            .map_err(ConflictableTransactionError::Abort)?;
                        let mut added: Vec<(&[u8], &[u8])> = Vec::with_capacity(members.len());
                        for &(id, rec) in members {
                            let suffix = &id[bucket::KEY..];
                            if held.find(suffix).is_some() {
                                continue;
                            }
                            if legacy_until.is_some_and(|until| bucket::ms_of(id) <= until)
                                && usage.get(rec.request_id.as_bytes())?.is_some()
                            {
                                continue;
                            }
                            added.push((suffix, rec.value.as_slice()));
                            fresh.push(rec);
                        }
                        if !added.is_empty() {
                            usage_ms.insert(&key[..], held.with(&added))?;
                        }
                    }
                    let mut sums: BTreeMap<&[u8], Counts> = BTreeMap::new();
                    let mut days: BTreeMap<&[u8], Counts> = BTreeMap::new();
                    for rec in &fresh {
                        sums.entry(&rec.total_key).or_default().add(&rec.counts);
                        days.entry(&rec.day_key).or_default().add(&rec.counts);
                    }
                    for (key, sum) in days {
                        let mut total = key_days
                            .get(key)?
                            .map(|raw| Counts::from_bytes(&raw))
                            .unwrap_or_default();
                        total.add(&sum);
                        key_days.insert(key, total.to_bytes().to_vec())?;
                    }
                    for (key, sum) in sums {
                        let mut total = totals
                            .get(key)?
                            .map(|raw| Counts::from_bytes(&raw))
                            .unwrap_or_default();
                        total.add(&sum);
                        totals.insert(key, total.to_bytes().to_vec())?;
                    }
                    let mut deltas = crate::rollup::Deltas::default();
                    for rec in &fresh {
                        deltas.add(&rec.roll, received_at_ms);
                    }
                    log.store(log_tree, log_index, &mut |entry| {
                        deltas.add(entry, received_at_ms);
                    })?;
                    crate::rollup::apply(rollups, &deltas)?;
                    Ok(fresh.len())
                },
            )?;
        out.inserted = inserted;
        out.acked
            .extend(prepared.into_iter().map(|rec| rec.request_id));
        Ok(out)
    }

    /// Totals rows, all or those of one client key id, in key order.
    pub fn usage_totals(&self, key_id: Option<&str>) -> Result<Vec<UsageTotal>> {
        let prefix = match key_id {
            Some(id) => {
                let mut p = id.as_bytes().to_vec();
                p.push(SEP);
                p
            }
            None => Vec::new(),
        };
        let mut rows = Vec::new();
        for item in self.usage_totals.scan_prefix(prefix) {
            let (key, value) = item?;
            let parts: Vec<&[u8]> = key.split(|b| *b == SEP).collect();
            let [key_id, model, provider, credential_id] = parts.as_slice() else {
                return Err(crate::error::Error::Corrupt {
                    tree: crate::store::USAGE_TOTALS,
                    detail: "a totals key does not have four parts".into(),
                });
            };
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            rows.push(UsageTotal {
                key_id: text(key_id),
                model: text(model),
                provider: text(provider),
                credential_id: text(credential_id),
                counts: Counts::from_bytes(&value),
            });
        }
        Ok(rows)
    }

    /// Adds every stored record to `usage_key_days` (which must be empty): the one-time backfill
    /// of a store written before that tree existed.
    pub(crate) fn rebuild_key_days(&self) -> Result<()> {
        let mut days: BTreeMap<Vec<u8>, Counts> = BTreeMap::new();
        self.each_record(&mut |rec| {
            days.entry(key_day(
                &rec.key_id,
                crate::period::day_of(rec.started_at_ms),
            ))
            .or_default()
            .add(&Counts::of(&rec));
        })?;
        for (key, sum) in days {
            self.key_days.insert(key, sum.to_bytes().to_vec())?;
        }
        Ok(())
    }

    /// A key's billed totals from day `from_day` on (UTC day numbers), for budgets.
    pub fn key_spend_since(&self, key_id: &str, from_day: i64) -> Result<Counts> {
        let mut sum = Counts::default();
        let start = key_day(key_id, from_day);
        let mut end = key_id.as_bytes().to_vec();
        end.push(SEP + 1);
        for item in self.key_days.range(start..end) {
            let (_, value) = item?;
            sum.add(&Counts::from_bytes(&value));
        }
        Ok(sum)
    }

    /// Records started in `[since_ms, until_ms)` (0: unbounded) of one key or all, grouped by
    /// `group_of`. Scans the records: meant for reports, not for the request path.
    pub fn usage_grouped(
        &self,
        key_id: Option<&str>,
        since_ms: i64,
        until_ms: i64,
        group_of: &dyn Fn(&UsageRec) -> Vec<String>,
    ) -> Result<BTreeMap<Vec<String>, Counts>> {
        let mut out: BTreeMap<Vec<String>, Counts> = BTreeMap::new();
        self.each_record(&mut |rec| {
            if key_id.is_some_and(|k| k != rec.key_id)
                || (since_ms > 0 && rec.started_at_ms < since_ms)
                || (until_ms > 0 && rec.started_at_ms >= until_ms)
            {
                return;
            }
            out.entry(group_of(&rec))
                .or_default()
                .add(&Counts::of(&rec));
        })?;
        Ok(out)
    }

    /// One stored record, for tests and audits.
    pub fn usage_record(&self, request_id: &str) -> Result<Option<UsageRec>> {
        if let Some(id) = bucket::v7_id(request_id)
            && let Some(raw) = self.usage_ms.get(bucket::key_of(&id))?
            && let Some(value) = Bucket::parse(Some(&raw))?.find(&id[bucket::KEY..])
        {
            return codec::decode(request_id.as_bytes(), value).map(Some);
        }
        self.usage
            .get(request_id)?
            .map(|raw| codec::decode(request_id.as_bytes(), &raw))
            .transpose()
    }

    /// Calls `f` with every stored record of one key or all started at or after `since_ms`, in
    /// no particular order. Scans the records: for reports (the console's overview), not for the
    /// request path.
    pub fn each_usage(
        &self,
        key_id: Option<&str>,
        since_ms: i64,
        f: &mut dyn FnMut(&UsageRec),
    ) -> Result<()> {
        self.each_record(&mut |rec| {
            if key_id.is_none_or(|k| k == rec.key_id) && rec.started_at_ms >= since_ms {
                f(&rec);
            }
        })
    }

    /// Calls `f` with every stored record, in no particular order.
    fn each_record(&self, f: &mut dyn FnMut(UsageRec)) -> Result<()> {
        for item in self.usage.iter() {
            let (key, raw) = item?;
            f(codec::decode(&key, &raw)?);
        }
        for item in self.usage_ms.iter() {
            let (key, raw) = item?;
            for (suffix, value) in Bucket::parse(Some(&raw))?.entries() {
                let id = bucket::id_string(&key, suffix)?;
                f(codec::decode(id.as_bytes(), value)?);
            }
        }
        Ok(())
    }
}

/// The latest millisecond of a UUIDv7 request id stored under its id in `usage` (see
/// [`Store::legacy_v7_until_ms`]), found from the end of the tree: canonical UUIDv7 strings sort
/// by their millisecond, and none sorts after the one below.
pub(crate) fn legacy_v7_until_ms(usage: &sled::Tree) -> Result<Option<u64>> {
    const LAST_V7: &[u8] = b"ffffffff-ffff-7fff-bfff-ffffffffffff";
    for item in usage.range(..=LAST_V7).rev() {
        let (key, _) = item?;
        if let Some(id) = std::str::from_utf8(&key).ok().and_then(bucket::v7_id) {
            return Ok(Some(bucket::ms_of(&id)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    fn rec(id: &str, key: &str, input: u64, output: u64, cost: u64) -> UsageRec {
        UsageRec {
            request_id: id.into(),
            key_id: key.into(),
            model: "m".into(),
            provider: "p".into(),
            credential_id: "c".into(),
            input_tokens: input,
            output_tokens: output,
            cost_nano_usd: cost,
            status: 200,
            ..UsageRec::default()
        }
    }

    #[test]
    fn an_absurd_record_is_clamped_and_flagged_and_later_records_still_count() {
        let (_d, store) = open_temp();
        let mut absurd = rec("r1", "k", u64::MAX, 5, u64::MAX);
        absurd.cache_read_tokens = u64::MAX;
        absurd.reported_cost_nano_usd = Some(u64::MAX);
        absurd.computed_cost_nano_usd = Some(7);
        store.ingest_usage("n1", vec![absurd]).unwrap();
        let stored = store.usage_record("r1").unwrap().unwrap();
        assert!(stored.estimated, "a clamped record is flagged");
        assert_eq!(stored.input_tokens, MAX_RECORD_TOKENS);
        assert_eq!(stored.cache_read_tokens, MAX_RECORD_TOKENS);
        assert_eq!(stored.output_tokens, 5);
        assert_eq!(stored.cost_nano_usd, MAX_RECORD_COST_NANO_USD);
        assert_eq!(
            stored.reported_cost_nano_usd,
            Some(MAX_RECORD_COST_NANO_USD)
        );
        assert_eq!(stored.computed_cost_nano_usd, Some(7));

        // Many more absurd records and then an honest one: the honest one still adds.
        for i in 2..12 {
            let id = format!("r{i}");
            store
                .ingest_usage("n1", vec![rec(&id, "k", u64::MAX, u64::MAX, u64::MAX)])
                .unwrap();
        }
        store
            .ingest_usage("n1", vec![rec("honest", "k", 3, 4, 5)])
            .unwrap();
        let counts = store.usage_totals(None).unwrap()[0].counts;
        assert_eq!(counts.requests, 12);
        assert_eq!(counts.input_tokens, 11 * MAX_RECORD_TOKENS + 3);
        assert_eq!(counts.output_tokens, 5 + 10 * MAX_RECORD_TOKENS + 4);
        assert_eq!(counts.cost_nano_usd, 11 * MAX_RECORD_COST_NANO_USD + 5);
        let honest = store.usage_record("honest").unwrap().unwrap();
        assert!(!honest.estimated, "a sane record is stored as sent");
        let day = crate::period::day_of(0);
        assert_eq!(store.key_spend_since("k", day).unwrap(), counts);
    }

    #[test]
    fn resent_records_count_once() {
        let (_d, store) = open_temp();
        let batch = vec![rec("r1", "k", 10, 5, 100), rec("r2", "k", 1, 1, 1)];
        let first = store.ingest_usage("n1", batch.clone()).unwrap();
        assert_eq!(first.inserted, 2);
        let again = store.ingest_usage("n2", batch).unwrap();
        assert_eq!(again.inserted, 0);
        assert_eq!(again.acked, vec!["r1", "r2"]);
        let totals = store.usage_totals(None).unwrap();
        assert_eq!(totals.len(), 1);
        assert_eq!(
            totals[0].counts,
            Counts {
                requests: 2,
                input_tokens: 11,
                output_tokens: 6,
                cost_nano_usd: 101,
                ..Counts::default()
            }
        );
        assert_eq!(store.usage_record("r1").unwrap().unwrap().node_id, "n1");
    }

    #[test]
    fn duplicates_within_a_batch_and_malformed_records() {
        let (_d, store) = open_temp();
        let mut bad = rec("r3", "k", 1, 1, 1);
        bad.model = String::new();
        let out = store
            .ingest_usage(
                "n",
                vec![
                    rec("r1", "k", 1, 0, 0),
                    rec("r1", "k", 1, 0, 0),
                    bad,
                    rec("", "k", 1, 1, 1),
                ],
            )
            .unwrap();
        assert_eq!(out.inserted, 1);
        assert_eq!(out.acked, vec!["r1", "r1"]);
        assert_eq!(out.rejected.len(), 2);
        assert_eq!(store.usage_totals(None).unwrap()[0].counts.requests, 1);
    }

    #[test]
    fn totals_filter_by_key_without_prefix_collisions() {
        let (_d, store) = open_temp();
        store
            .ingest_usage("n", vec![rec("a", "k1", 1, 1, 1), rec("b", "k10", 2, 2, 2)])
            .unwrap();
        let rows = store.usage_totals(Some("k1")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key_id, "k1");
        assert_eq!(store.usage_totals(None).unwrap().len(), 2);
    }

    /// A canonical UUIDv7 string of millisecond `ms` (`n` tells ids of one millisecond apart).
    fn v7(ms: u64, n: u8) -> String {
        let mut rest = [0x5a_u8; 10];
        rest[9] = n;
        uuid::Builder::from_unix_timestamp_millis(ms, &rest)
            .into_uuid()
            .to_string()
    }

    /// One record of one token each way for each of `ids`, all of key `k`.
    fn ones(ids: &[&str]) -> Vec<UsageRec> {
        ids.iter().map(|id| rec(id, "k", 1, 1, 1)).collect()
    }

    #[test]
    fn uuid_v7_records_share_a_bucket_per_millisecond_and_count_once() {
        let (_d, store) = open_temp();
        let (a, b, c, d) = (v7(1_000, 1), v7(1_000, 2), v7(1_001, 1), v7(1_000, 3));
        let first = store.ingest_usage("n", ones(&[&b, &a, &c, "r1"])).unwrap();
        assert_eq!(first.inserted, 4);
        assert_eq!(store.usage_ms.len(), 2, "one entry per millisecond");
        assert_eq!(
            store.usage.len(),
            1,
            "only the non-UUIDv7 id is stored under its id"
        );
        // A bucket that already holds records takes a new one; a re-sent one counts once.
        let second = store
            .ingest_usage("n", vec![rec(&b, "k", 1, 1, 1), rec(&d, "k", 5, 0, 0)])
            .unwrap();
        assert_eq!(second.inserted, 1);
        assert_eq!(second.acked, vec![b.clone(), d.clone()]);
        assert_eq!(store.usage_ms.len(), 2);
        let totals = store.usage_totals(None).unwrap();
        assert_eq!(totals[0].counts.requests, 5);
        assert_eq!(totals[0].counts.input_tokens, 9);
        for id in [&a, &b, &c, &d, &"r1".to_string()] {
            let stored = store.usage_record(id).unwrap().unwrap();
            assert_eq!(&stored.request_id, id);
            assert_eq!(stored.node_id, "n");
        }
        assert_eq!(store.usage_record(&d).unwrap().unwrap().input_tokens, 5);
        assert!(store.usage_record(&v7(1_000, 9)).unwrap().is_none());
        // Scans see both trees.
        let grouped = store
            .usage_grouped(None, 0, 0, &|r| vec![r.key_id.clone()])
            .unwrap();
        assert_eq!(grouped[&vec!["k".to_string()]].requests, 5);
        store.key_days.clear().unwrap();
        store.rebuild_key_days().unwrap();
        assert_eq!(store.key_spend_since("k", 0).unwrap().requests, 5);
    }

    #[test]
    fn uuid_v7_records_stored_before_layout_3_still_count_once() {
        let (_d, mut store) = open_temp();
        // As layout version 2 stored them: under the id, in `usage`.
        let (old, older) = (v7(5_000, 1), v7(4_000, 1));
        for id in [&old, &older] {
            let (key, value) = codec::encode(rec(id, "k", 1, 1, 1));
            store.usage.insert(key, value).unwrap();
        }
        // Keys that are not canonical UUIDv7s, on both sides of where the bound is looked for.
        for junk in ["fff", "zzz", "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B"] {
            store.usage.insert(junk, b"{}".as_slice()).unwrap();
        }
        store.legacy_v7_until_ms = legacy_v7_until_ms(&store.usage).unwrap();
        assert_eq!(store.legacy_v7_until_ms, Some(5_000));
        let (same_ms, newer) = (v7(4_000, 2), v7(6_000, 1));
        let out = store
            .ingest_usage("n", ones(&[&old, &older, &same_ms, &newer]))
            .unwrap();
        assert_eq!(
            out.inserted, 2,
            "the two ids already in `usage` are not counted again"
        );
        assert_eq!(out.acked.len(), 4);
        assert_eq!(store.usage_ms.len(), 2);
        assert!(store.usage_record(&old).unwrap().is_some());

        let (_e, fresh) = open_temp();
        assert_eq!(fresh.legacy_v7_until_ms, None);
    }

    #[test]
    fn a_damaged_bucket_fails_the_batch_and_stores_nothing() {
        let (_d, store) = open_temp();
        let id = v7(7_000, 1);
        store
            .usage_ms
            .insert(&[0, 0, 0, 0, 0x1b, 0x58][..], &[0x09][..])
            .unwrap();
        let err = store
            .ingest_usage("n", vec![rec("r1", "k", 1, 1, 1), rec(&id, "k", 1, 1, 1)])
            .unwrap_err();
        assert!(err.to_string().contains("usage_ms"), "{err}");
        assert!(store.usage_record("r1").unwrap().is_none());
        assert!(store.usage_totals(None).unwrap().is_empty());
    }

    #[test]
    fn counts_round_trip() {
        let c = Counts {
            requests: 1,
            input_tokens: 2,
            output_tokens: 3,
            cost_nano_usd: u64::MAX,
            cache_read_tokens: 5,
            cache_write_tokens: 6,
            reported_requests: 7,
            reported_cost_nano_usd: 8,
            computed_of_reported_nano_usd: 9,
        };
        assert_eq!(Counts::from_bytes(&c.to_bytes()), c);
        // A row written before the reported-cost columns reads with zeros there.
        let old = Counts::from_bytes(&c.to_bytes()[..48]);
        assert_eq!(old.reported_requests, 0);
        assert_eq!(old.computed_cost_nano_usd(), u64::MAX);
    }

    #[test]
    fn reported_cost_is_billed_and_computed_kept() {
        let (_d, store) = open_temp();
        let mut a = rec("a", "k", 10, 10, 900);
        a.computed_cost_nano_usd = Some(1_000);
        a.reported_cost_nano_usd = Some(900);
        let mut b = rec("b", "k", 10, 10, 500);
        b.computed_cost_nano_usd = Some(500);
        store.ingest_usage("n", vec![a, b]).unwrap();
        let c = store.usage_totals(None).unwrap()[0].counts;
        assert_eq!(c.cost_nano_usd, 1_400);
        assert_eq!((c.reported_requests, c.reported_cost_nano_usd), (1, 900));
        assert_eq!(c.computed_cost_nano_usd(), 1_500);
        let stored = store.usage_record("a").unwrap().unwrap();
        assert_eq!(stored.reported_cost_nano_usd, Some(900));
        assert_eq!(stored.computed_cost_nano_usd, Some(1_000));
    }
}
