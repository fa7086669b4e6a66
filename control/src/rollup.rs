//! Usage rollups: per minute, hour and day sums of every request a data plane reported, kept
//! up to date at ingest so that the console's overview and the portal read a few hundred small
//! values instead of walking the ledger and the request log.
//!
//! # What a rollup counts
//!
//! Every request counted once: a billed record when the ledger stores it for the first time, an
//! unbilled one (a request that served nothing) when the request log stores it for the first
//! time. The rows are written in the same sled transaction as the ledger record and the log
//! entry, so a re-sent record (already stored) adds nothing and a crash loses nothing it has
//! acknowledged. With the request log off an unbilled record is kept nowhere and counted nowhere.
//!
//! # Layout
//!
//! | tree      | key | value |
//! |-----------|-----|-------|
//! | `rollups` | resolution (`m` minute, `h` hour, `d` day) ‖ scope (`a`, or `k` ‖ key id length `u16` BE ‖ key id) ‖ row (`s` sums, `b` breakdown) ‖ bucket number (`u32` BE: minutes, hours or days since 1970) | [`Roll`], binary (`Roll::encode`) |
//!
//! A sums row holds the counters and the latency and time-to-first-token histograms; a breakdown
//! row the counters per model, provider and key (per model only in a key's scope). So one
//! window's series is one range scan of one scope's sums rows.
//!
//! # Retention
//!
//! Minute rows are kept for [`MINUTE_ROWS_KEPT_MS`], hour and day rows for [`ROWS_KEPT_MS`] (the
//! overview's longest window and a day more), pruned with the request log. They are sums, the
//! kind of figure the ledger's totals keep for ever, never a request of their own. A record that
//! arrives older than its row's retention is not added (its row is gone, and would not be shown).

use crate::error::{Error, Result};
use std::collections::BTreeMap;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// How long minute rows are kept: the overview's last hour, and an hour of slack for reports
/// that arrive late.
pub const MINUTE_ROWS_KEPT_MS: i64 = 2 * HOUR_MS;
/// How long hour and day rows are kept: the overview's 30 days and a day more.
pub const ROWS_KEPT_MS: i64 = 31 * DAY_MS;

/// A rollup's time resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Res {
    Minute,
    Hour,
    Day,
}

impl Res {
    pub const ALL: [Res; 3] = [Res::Minute, Res::Hour, Res::Day];

    fn byte(self) -> u8 {
        match self {
            Res::Minute => b'm',
            Res::Hour => b'h',
            Res::Day => b'd',
        }
    }

    fn of_byte(b: u8) -> Option<Res> {
        match b {
            b'm' => Some(Res::Minute),
            b'h' => Some(Res::Hour),
            b'd' => Some(Res::Day),
            _ => None,
        }
    }

    pub fn ms(self) -> i64 {
        match self {
            Res::Minute => MINUTE_MS,
            Res::Hour => HOUR_MS,
            Res::Day => DAY_MS,
        }
    }

    fn kept_ms(self) -> i64 {
        match self {
            Res::Minute => MINUTE_ROWS_KEPT_MS,
            Res::Hour | Res::Day => ROWS_KEPT_MS,
        }
    }

    /// The bucket holding `ms` (times before 1970 fall in bucket 0).
    pub fn bucket(self, ms: i64) -> u32 {
        u32::try_from(ms.max(0) / self.ms()).unwrap_or(u32::MAX)
    }

    /// The start of bucket `b`, in Unix ms.
    pub fn start_ms(self, b: u32) -> i64 {
        i64::from(b) * self.ms()
    }

    /// The oldest bucket still kept at `now_ms`.
    pub fn oldest_kept(self, now_ms: i64) -> u32 {
        self.bucket(now_ms - self.kept_ms())
    }
}

/// Whose requests a row sums: everyone's, or one client key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    All,
    Key(&'a str),
}

const SUMS: u8 = b's';
const BREAKDOWN: u8 = b'b';

/// Breakdown dimensions.
pub const BY_MODEL: u8 = b'm';
pub const BY_PROVIDER: u8 = b'p';
pub const BY_KEY: u8 = b'k';

/// The key of a row, up to (not including) its bucket number.
fn row_prefix(res: Res, scope: Scope<'_>, row: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + 32);
    write_prefix(&mut key, res, scope, row);
    key
}

fn write_prefix(key: &mut Vec<u8>, res: Res, scope: Scope<'_>, row: u8) {
    key.clear();
    key.push(res.byte());
    match scope {
        Scope::All => key.push(b'a'),
        Scope::Key(id) => {
            key.push(b'k');
            // Key ids are validated to at most 256 bytes.
            key.extend_from_slice(&(id.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
            key.extend_from_slice(id.as_bytes());
        }
    }
    key.push(row);
}

fn write_row_key(key: &mut Vec<u8>, res: Res, scope: Scope<'_>, row: u8, bucket: u32) {
    write_prefix(key, res, scope, row);
    key.extend_from_slice(&bucket.to_be_bytes());
}

/// Buckets per doubling of a latency histogram: a bucket spans a factor of 2^(1/4), so a
/// percentile read from it (its upper bound) is at least the true value and at most 19% above.
const STEPS_PER_DOUBLING: f64 = 4.0;
/// Buckets up to 2^24 ms (4.6 hours), past any timeout.
pub const HIST_BUCKETS: usize = 24 * 4 + 1;

/// Latencies in fixed log-spaced buckets: percentiles in constant memory, and sums of
/// histograms are the histogram of the union.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Empty until the first sample (most rows are breakdowns, which hold none), then
    /// [`HIST_BUCKETS`] long.
    counts: Vec<u64>,
    total: u64,
}

impl PartialEq for Histogram {
    fn eq(&self, other: &Histogram) -> bool {
        let at = |h: &Histogram, b: usize| h.counts.get(b).copied().unwrap_or(0);
        self.total == other.total && (0..HIST_BUCKETS).all(|b| at(self, b) == at(other, b))
    }
}

impl Eq for Histogram {}

impl Histogram {
    fn bucket(ms: u32) -> usize {
        let b = (f64::from(ms) + 1.0).log2() * STEPS_PER_DOUBLING;
        (b.ceil() as usize).min(HIST_BUCKETS - 1)
    }

    fn upper_ms(bucket: usize) -> u64 {
        (2f64.powf(bucket as f64 / STEPS_PER_DOUBLING) - 1.0).round() as u64
    }

    pub fn add(&mut self, ms: u32) {
        self.add_n(Self::bucket(ms), 1);
    }

    fn add_n(&mut self, bucket: usize, n: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; HIST_BUCKETS];
        }
        if let Some(c) = self.counts.get_mut(bucket) {
            *c = c.saturating_add(n);
            self.total = self.total.saturating_add(n);
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in other.counts.iter().enumerate() {
            if *n > 0 {
                self.add_n(b, *n);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `per_mille`th per-mille value's bucket bound (p50 = 500, p99 = 990); `None` when empty.
    pub fn percentile(&self, per_mille: u64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = (self.total.saturating_mul(per_mille)).div_ceil(1000).max(1);
        let mut seen = 0u64;
        for (b, n) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                return Some(Self::upper_ms(b));
            }
        }
        None
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let used = self.counts.iter().filter(|n| **n > 0).count();
        prost::encoding::encode_varint(used as u64, out);
        for (b, n) in self.counts.iter().enumerate() {
            if *n > 0 {
                out.push(b as u8);
                prost::encoding::encode_varint(*n, out);
            }
        }
    }

    fn decode(buf: &mut &[u8]) -> Result<Histogram> {
        let mut h = Histogram::default();
        let used = varint(buf)?;
        for _ in 0..used.min(HIST_BUCKETS as u64) {
            let Some((&b, rest)) = buf.split_first() else {
                return Err(corrupt("histogram cut short"));
            };
            *buf = rest;
            let n = varint(buf)?;
            if usize::from(b) >= HIST_BUCKETS {
                return Err(corrupt("histogram bucket out of range"));
            }
            h.add_n(usize::from(b), n);
        }
        Ok(h)
    }
}

/// Summed counters of a set of requests. Money in nano-USD, as the ledger bills it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every request counted: billed, and unbilled ones the request log kept.
    pub requests: u64,
    /// Requests answered with a status outside 2xx (refusals included).
    pub errors: u64,
    /// Requests the data plane refused without trying an upstream (limits, unknown model, ...).
    pub refused: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Billed.
    pub cost_nano_usd: u64,
}

impl Counters {
    const FIELDS: usize = 8;

    fn fields(&self) -> [u64; Self::FIELDS] {
        [
            self.requests,
            self.errors,
            self.refused,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.cost_nano_usd,
        ]
    }

    fn of_fields(f: [u64; Self::FIELDS]) -> Counters {
        let [
            requests,
            errors,
            refused,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost_nano_usd,
        ] = f;
        Counters {
            requests,
            errors,
            refused,
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
            cost_nano_usd,
        }
    }

    pub fn add(&mut self, other: &Counters) {
        let mut f = self.fields();
        for (a, b) in f.iter_mut().zip(other.fields()) {
            *a = a.saturating_add(b);
        }
        *self = Counters::of_fields(f);
    }

    /// Errors per thousand requests (0 with no requests).
    pub fn error_per_mille(&self) -> u64 {
        (self.errors.saturating_mul(1000))
            .checked_div(self.requests)
            .unwrap_or(0)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in self.fields() {
            prost::encoding::encode_varint(v, out);
        }
    }

    fn decode(buf: &mut &[u8]) -> Result<Counters> {
        let mut f = [0u64; Self::FIELDS];
        for v in &mut f {
            *v = varint(buf)?;
        }
        Ok(Counters::of_fields(f))
    }
}

/// One rollup row: counters and histograms (a sums row), or counters per dimension (a
/// breakdown row). The empty parts cost a byte each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roll {
    pub counters: Counters,
    /// End-to-end latency of every request an upstream was tried for.
    pub latency: Histogram,
    /// Time to the first byte (first token when streamed), where the data plane measured it.
    pub ttft: Histogram,
    /// Dimension → name → counters.
    pub dims: BTreeMap<u8, BTreeMap<String, Counters>>,
}

const FORMAT: u8 = 1;

impl Roll {
    pub fn merge(&mut self, other: &Roll) {
        self.counters.add(&other.counters);
        self.latency.merge(&other.latency);
        self.ttft.merge(&other.ttft);
        for (dim, names) in &other.dims {
            let mine = self.dims.entry(*dim).or_default();
            for (name, c) in names {
                match mine.get_mut(name.as_str()) {
                    Some(m) => m.add(c),
                    None => {
                        mine.insert(name.clone(), *c);
                    }
                }
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let n: usize = self.dims.values().map(BTreeMap::len).sum();
        let mut out = Vec::with_capacity(64 + n * 48);
        out.push(FORMAT);
        self.counters.encode(&mut out);
        self.latency.encode(&mut out);
        self.ttft.encode(&mut out);
        prost::encoding::encode_varint(n as u64, &mut out);
        for (dim, names) in &self.dims {
            for (name, c) in names {
                out.push(*dim);
                prost::encoding::encode_varint(name.len() as u64, &mut out);
                out.extend_from_slice(name.as_bytes());
                c.encode(&mut out);
            }
        }
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Roll> {
        let Some((&FORMAT, mut buf)) = raw.split_first() else {
            return Err(corrupt("unknown rollup format"));
        };
        let buf = &mut buf;
        let counters = Counters::decode(buf)?;
        let latency = Histogram::decode(buf)?;
        let ttft = Histogram::decode(buf)?;
        let n = varint(buf)?;
        let mut dims: BTreeMap<u8, BTreeMap<String, Counters>> = BTreeMap::new();
        for _ in 0..n {
            let Some((&dim, rest)) = buf.split_first() else {
                return Err(corrupt("breakdown cut short"));
            };
            *buf = rest;
            let len = usize::try_from(varint(buf)?).unwrap_or(usize::MAX);
            if len > buf.len() {
                return Err(corrupt("breakdown name cut short"));
            }
            let (name, rest) = buf.split_at(len);
            *buf = rest;
            let name = String::from_utf8_lossy(name).into_owned();
            dims.entry(dim)
                .or_default()
                .insert(name, Counters::decode(buf)?);
        }
        Ok(Roll {
            counters,
            latency,
            ttft,
            dims,
        })
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64> {
    prost::encoding::decode_varint(buf).map_err(|e| corrupt(&e.to_string()))
}

fn corrupt(detail: &str) -> Error {
    Error::Corrupt {
        tree: crate::store::ROLLUPS,
        detail: detail.to_string(),
    }
}

/// What one request adds to the rollups.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub key_id: String,
    pub model: String,
    pub provider: String,
    pub started_at_ms: i64,
    pub status: u32,
    /// Served nothing and tried no upstream.
    pub refused: bool,
    pub latency_ms: u32,
    pub ttft_ms: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_nano_usd: u64,
}

impl Entry {
    /// A billed request, as the ledger stored it.
    pub fn billed(rec: &crate::ledger::UsageRec) -> Entry {
        Entry {
            key_id: rec.key_id.clone(),
            model: rec.model.clone(),
            provider: rec.provider.clone(),
            started_at_ms: rec.started_at_ms,
            status: rec.status,
            refused: false,
            latency_ms: rec.latency_ms,
            ttft_ms: rec.ttfb_ms,
            input_tokens: rec.input_tokens,
            output_tokens: rec.output_tokens,
            cache_read_tokens: rec.cache_read_tokens,
            cache_write_tokens: rec.cache_write_tokens,
            cost_nano_usd: rec.cost_nano_usd,
        }
    }

    /// A request that served nothing: it counts as a request (and an error when it was one),
    /// never as tokens or spend.
    pub fn unbilled(rec: &keyplane_proto::v1::UsageRecord) -> Entry {
        Entry {
            key_id: rec.key_id.clone(),
            model: rec.model.clone(),
            provider: rec.provider.clone(),
            started_at_ms: rec.started_at_ms,
            status: rec.status,
            refused: rec.attempts.is_empty(),
            latency_ms: rec.latency_ms,
            ttft_ms: rec.ttfb_ms,
            ..Entry::default()
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            requests: 1,
            errors: u64::from(!(200..300).contains(&self.status)),
            refused: u64::from(self.refused),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            cost_nano_usd: self.cost_nano_usd,
        }
    }
}

/// Rollup deltas of a set of requests: summed per (key, minute) as they are added, one hash
/// lookup a request, and spread over the rows each (key, minute) belongs to only once, by
/// [`Deltas::rows`]: a batch of a thousand requests of twenty keys in one minute makes twenty
/// sums, not twelve thousand row updates.
#[derive(Debug, Default)]
pub struct Deltas {
    /// Key id → minute bucket → the key's sums of that minute, with a breakdown by model and
    /// by provider.
    by_key: std::collections::HashMap<String, BTreeMap<u32, Roll>>,
    now_ms: i64,
}

impl Deltas {
    /// Adds `e`, to the rows whose retention still holds it at `now_ms`.
    pub fn add(&mut self, e: &Entry, now_ms: i64) {
        self.now_ms = now_ms;
        // The day rows are kept longest: older than theirs, it belongs to no row.
        if Res::Day.bucket(e.started_at_ms) < Res::Day.oldest_kept(now_ms) {
            return;
        }
        let minutes = match self.by_key.get_mut(e.key_id.as_str()) {
            Some(m) => m,
            None => self.by_key.entry(e.key_id.clone()).or_default(),
        };
        let roll = minutes
            .entry(Res::Minute.bucket(e.started_at_ms))
            .or_default();
        let counters = e.counters();
        roll.counters.add(&counters);
        // A refusal's latency is the data plane's own few microseconds: it would drag the
        // percentiles of served requests down.
        if !e.refused {
            roll.latency.add(e.latency_ms);
            if e.ttft_ms > 0 {
                roll.ttft.add(e.ttft_ms);
            }
        }
        for (dim, name) in [(BY_MODEL, &e.model), (BY_PROVIDER, &e.provider)] {
            let names = roll.dims.entry(dim).or_default();
            match names.get_mut(name.as_str()) {
                Some(c) => c.add(&counters),
                None => {
                    names.insert(name.clone(), counters);
                }
            }
        }
    }

    /// What each row gains, by row key.
    pub fn rows(&self) -> BTreeMap<Vec<u8>, Roll> {
        let mut rows: BTreeMap<Vec<u8>, Roll> = BTreeMap::new();
        for (key_id, minutes) in &self.by_key {
            for (minute, roll) in minutes {
                let at = Res::Minute.start_ms(*minute);
                let sums = Roll {
                    counters: roll.counters,
                    latency: roll.latency.clone(),
                    ttft: roll.ttft.clone(),
                    dims: BTreeMap::new(),
                };
                let mut by_model = Roll::default();
                let mut everything = Roll::default();
                for (dim, names) in &roll.dims {
                    let names = names.clone();
                    if *dim == BY_MODEL {
                        by_model.dims.insert(*dim, names.clone());
                    }
                    everything.dims.insert(*dim, names);
                }
                everything
                    .dims
                    .entry(BY_KEY)
                    .or_default()
                    .insert(key_id.clone(), roll.counters);
                for res in Res::ALL {
                    let bucket = res.bucket(at);
                    if bucket < res.oldest_kept(self.now_ms) {
                        continue;
                    }
                    let key = Scope::Key(key_id);
                    for (scope, row, delta) in [
                        (Scope::All, SUMS, &sums),
                        (key, SUMS, &sums),
                        (Scope::All, BREAKDOWN, &everything),
                        (key, BREAKDOWN, &by_model),
                    ] {
                        let mut k = Vec::with_capacity(48);
                        write_row_key(&mut k, res, scope, row, bucket);
                        rows.entry(k).or_default().merge(delta);
                    }
                }
            }
        }
        rows
    }
}

/// Adds `deltas` to the stored rows, inside the ingest's transaction.
pub(crate) fn apply(
    tree: &sled::transaction::TransactionalTree,
    deltas: &Deltas,
) -> std::result::Result<(), sled::transaction::ConflictableTransactionError<Error>> {
    for (key, delta) in &deltas.rows() {
        let mut roll = match tree.get(key)? {
            Some(raw) => Roll::decode(&raw)
                .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
            None => Roll::default(),
        };
        roll.merge(delta);
        tree.insert(key.as_slice(), roll.encode())?;
    }
    Ok(())
}

/// Rollups read back: one scope's rows of one resolution.
pub struct Reader<'a> {
    tree: &'a sled::Tree,
}

impl<'a> Reader<'a> {
    pub fn new(store: &'a crate::store::Store) -> Reader<'a> {
        Reader {
            tree: &store.rollups,
        }
    }

    /// The sums rows of buckets `[from, to]`, by bucket number, ascending; absent ones are not
    /// returned.
    pub fn sums(&self, res: Res, scope: Scope<'_>, from: u32, to: u32) -> Result<Vec<(u32, Roll)>> {
        self.rows(res, scope, SUMS, from, to)
    }

    /// The breakdown of buckets `[from, to]`, summed.
    pub fn breakdown(&self, res: Res, scope: Scope<'_>, from: u32, to: u32) -> Result<Roll> {
        let mut sum = Roll::default();
        for (_, roll) in self.rows(res, scope, BREAKDOWN, from, to)? {
            sum.merge(&roll);
        }
        Ok(sum)
    }

    fn rows(
        &self,
        res: Res,
        scope: Scope<'_>,
        row: u8,
        from: u32,
        to: u32,
    ) -> Result<Vec<(u32, Roll)>> {
        let prefix = row_prefix(res, scope, row);
        let lo = [prefix.as_slice(), &from.to_be_bytes()].concat();
        let hi = [prefix.as_slice(), &to.to_be_bytes()].concat();
        let mut out = Vec::new();
        for item in self.tree.range(lo..=hi) {
            let (key, raw) = item?;
            let Some(b) = key.get(prefix.len()..prefix.len() + 4) else {
                continue;
            };
            let bucket = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            out.push((bucket, Roll::decode(&raw)?));
        }
        Ok(out)
    }
}

/// The bucket number at the end of a row key.
fn bucket_of(key: &[u8]) -> Option<u32> {
    let b = key.get(key.len().checked_sub(4)?..)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl crate::store::Store {
    /// Deletes the rollup rows past their retention at `now_ms`, up to `max` of them. Returns
    /// how many were deleted: fewer than `max` when none are left.
    pub fn prune_rollups(&self, now_ms: i64, max: usize) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.rollups.iter().keys() {
            let key = item?;
            let stale = match (key.first().copied().and_then(Res::of_byte), bucket_of(&key)) {
                (Some(res), Some(b)) => b < res.oldest_kept(now_ms),
                // Not a row this build writes: leave it.
                _ => false,
            };
            if stale {
                batch.remove(key);
                n += 1;
                if n >= max {
                    break;
                }
            }
        }
        if n > 0 {
            self.rollups.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// Every rollup row as a recount from what is stored makes it at `now_ms`: each ledger
    /// record, and each unbilled request log entry, within its row's retention. The first-start
    /// build of the rollups, and the reference their incremental upkeep is tested against.
    pub fn recount_rollups(&self, now_ms: i64) -> Result<Deltas> {
        let mut deltas = Deltas::default();
        let oldest = Res::ALL
            .iter()
            .map(|r| r.start_ms(r.oldest_kept(now_ms)))
            .min()
            .unwrap_or(0);
        self.each_usage(None, oldest, &mut |rec| {
            deltas.add(&Entry::billed(rec), now_ms);
        })?;
        self.each_logged_since(oldest, &mut |rec| {
            if rec.unbilled {
                deltas.add(&Entry::unbilled(rec), now_ms);
            }
        })?;
        Ok(deltas)
    }

    /// Rebuilds the rollups from the ledger and the request log (see
    /// [`Store::recount_rollups`]), replacing what the tree held.
    pub(crate) fn rebuild_rollups(&self, now_ms: i64) -> Result<()> {
        let deltas = self.recount_rollups(now_ms)?;
        self.rollups.clear()?;
        let mut batch = sled::Batch::default();
        for (key, roll) in deltas.rows() {
            batch.insert(key, roll.encode());
        }
        self.rollups.apply_batch(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roll_round_trips_through_its_encoding() {
        let mut roll = Roll::default();
        let mut d = Deltas::default();
        let e = Entry {
            key_id: "k".into(),
            model: "m".into(),
            provider: "p".into(),
            started_at_ms: 5 * HOUR_MS,
            status: 502,
            latency_ms: 1234,
            ttft_ms: 80,
            input_tokens: 7,
            cost_nano_usd: u64::MAX,
            ..Entry::default()
        };
        d.add(&e, 5 * HOUR_MS);
        for r in d.rows().values() {
            roll.merge(r);
            assert_eq!(&Roll::decode(&r.encode()).unwrap(), r);
        }
        assert_eq!(Roll::decode(&roll.encode()).unwrap(), roll);
        // 3 resolutions x 2 scopes x (sums, breakdown).
        assert_eq!(d.rows().len(), 12);
        assert!(Roll::decode(&[9]).is_err());
        assert!(Roll::decode(&roll.encode()[..5]).is_err());
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(500), None);
        for ms in 1..=1000u32 {
            h.add(ms);
        }
        let p50 = h.percentile(500).unwrap();
        let p99 = h.percentile(990).unwrap();
        assert!((500..=500 * 6 / 5).contains(&p50), "{p50}");
        assert!((990..=990 * 6 / 5).contains(&p99), "{p99}");
        let mut one = Histogram::default();
        one.add(0);
        assert_eq!(one.percentile(990), Some(0));
        let mut huge = Histogram::default();
        huge.add(u32::MAX);
        assert!(huge.percentile(500).unwrap() >= 1 << 23);
    }

    #[test]
    fn an_entry_older_than_a_rows_retention_is_not_added_to_it() {
        let now = 100 * DAY_MS;
        let mut d = Deltas::default();
        let e = |at| Entry {
            key_id: "k".into(),
            started_at_ms: at,
            status: 200,
            ..Entry::default()
        };
        // Three hours ago: no minute rows, hour and day rows.
        d.add(&e(now - 3 * HOUR_MS), now);
        assert!(d.rows().keys().all(|k| k[0] != b'm'));
        assert_eq!(d.rows().len(), 8);
        // Forty days ago: nothing.
        let mut old = Deltas::default();
        old.add(&e(now - 40 * DAY_MS), now);
        assert!(old.rows().is_empty());
    }

    use crate::creds::MasterKey;
    use crate::store::{Store, now_ms, testing::when_unlocked};
    use keyplane_proto::v1 as pb;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn stored(store: &Store) -> BTreeMap<Vec<u8>, Roll> {
        store
            .rollups
            .iter()
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), Roll::decode(&v).unwrap())
            })
            .collect()
    }

    /// A request as a data plane reports it, started `ago_ms` before `now`.
    fn random_record(rng: &mut StdRng, n: usize, now: i64) -> pb::UsageRecord {
        // Clear of every retention's edge, so the test's own run time cannot move a record
        // across one: the last 90 minutes, 3 hours to 29 days, or past 33 days.
        let ago = match rng.gen_range(0..3) {
            0 => rng.gen_range(0..90 * MINUTE_MS),
            1 => rng.gen_range(3 * HOUR_MS..29 * DAY_MS),
            _ => rng.gen_range(33 * DAY_MS..40 * DAY_MS),
        };
        let started_at_ms = now - ago;
        let request_id = if rng.gen_bool(0.7) {
            let rest: [u8; 10] = rng.r#gen();
            uuid::Builder::from_unix_timestamp_millis(started_at_ms as u64, &rest)
                .into_uuid()
                .to_string()
        } else {
            format!("plain-{n}")
        };
        let status = [200, 200, 200, 201, 404, 429, 500, 503][rng.gen_range(0..8)];
        let unbilled = status >= 400 && rng.gen_bool(0.6);
        let tried = !unbilled || rng.gen_bool(0.5);
        pb::UsageRecord {
            request_id,
            key_id: format!("key-{}", rng.gen_range(0..4)),
            model: format!("model-{}", rng.gen_range(0..3)),
            provider: if tried {
                format!("prov-{}", rng.gen_range(0..2))
            } else {
                String::new()
            },
            credential_id: if tried { "cred".into() } else { String::new() },
            input_tokens: if unbilled { 0 } else { rng.gen_range(0..5000) },
            output_tokens: if unbilled { 0 } else { rng.gen_range(0..2000) },
            cache_read_tokens: if unbilled { 0 } else { rng.gen_range(0..100) },
            cost_nano_usd: if unbilled {
                0
            } else {
                rng.gen_range(0..50_000_000)
            },
            reported_cost_nano_usd: (!unbilled && rng.gen_bool(0.2))
                .then(|| rng.gen_range(0..1_000_000)),
            latency_ms: rng.gen_range(0..20_000),
            ttfb_ms: if rng.gen_bool(0.5) {
                rng.gen_range(1..5000)
            } else {
                0
            },
            status,
            started_at_ms,
            unbilled,
            attempts: if tried {
                vec![pb::UpstreamAttempt {
                    provider: "prov-0".into(),
                    credential_id: "cred".into(),
                    outcome: "ok".into(),
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    #[test]
    fn rollups_equal_a_recount_after_mixed_ingest_replays_pruning_and_the_first_start_build() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let store = Store::open(dir.path(), &master).unwrap();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let now = now_ms();
        let mut sent: Vec<pb::UsageRecord> = Vec::new();
        for round in 0..40 {
            let mut batch = Vec::new();
            for _ in 0..rng.gen_range(1..30) {
                if !sent.is_empty() && rng.gen_bool(0.3) {
                    // A replay: a record sent before, or again in this batch.
                    batch.push(sent[rng.gen_range(0..sent.len())].clone());
                    continue;
                }
                let rec = random_record(&mut rng, sent.len(), now);
                sent.push(rec.clone());
                batch.push(rec);
            }
            // Mostly with the request log on; now and then off, as `--request-log-retention 0`
            // (an unbilled record is then kept nowhere, and counted nowhere).
            let log = round % 7 != 3;
            let out = store.ingest_report("node", &batch, log).unwrap();
            assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        }
        let rows = stored(&store);
        assert!(rows.len() > 100, "{} rows", rows.len());
        assert_eq!(rows, store.recount_rollups(now_ms()).unwrap().rows());
        // What a recount found is what was sent, once: every request of the last 29 days.
        let mut unique: std::collections::HashMap<&str, &pb::UsageRecord> = Default::default();
        for r in &sent {
            unique.insert(r.request_id.as_str(), r);
        }
        let month = Reader::new(&store)
            .sums(
                Res::Day,
                Scope::All,
                Res::Day.bucket(now - 29 * DAY_MS),
                Res::Day.bucket(now),
            )
            .unwrap();
        let counted: u64 = month.iter().map(|(_, r)| r.counters.requests).sum();
        let expected = unique
            .values()
            .filter(|r| r.started_at_ms >= now - 29 * DAY_MS)
            .count() as u64;
        // Unbilled records sent only while the log was off are the difference, if any.
        assert!(
            counted <= expected && counted + 30 >= expected,
            "{counted} of {expected}"
        );

        // A store whose rollups were never built (written before they existed) builds them at
        // its first start, to the same rows.
        store.rollups.clear().unwrap();
        store
            .meta
            .remove(crate::store::ROLLUPS_BUILT_FOR_TESTS)
            .unwrap();
        store.db.flush().unwrap();
        drop(store);
        let store = when_unlocked(|| Store::open(dir.path(), &master)).unwrap();
        assert_eq!(stored(&store), rows);
        // Built once: a later start leaves the rows alone.
        assert!(store.meta.get(b"rollups_built").unwrap().is_some());

        // Three hours and 31 days on, pruning (the log with the rollups' own retention) leaves
        // what a recount then finds: no minute rows, and the hour and day rows still kept.
        let later = now + 3 * HOUR_MS;
        store
            .prune_request_log(later - ROWS_KEPT_MS - DAY_MS, 100_000)
            .unwrap();
        while store.prune_rollups(later, 50).unwrap() == 50 {}
        let pruned = stored(&store);
        assert!(pruned.keys().all(|k| k[0] != b'm'));
        assert!(pruned.len() < rows.len());
        assert_eq!(pruned, store.recount_rollups(later).unwrap().rows());
        let much_later = now + 40 * DAY_MS;
        while store.prune_rollups(much_later, 50).unwrap() == 50 {}
        assert!(store.rollups.is_empty());
    }
}
