//! What the console's overview shows, computed from the usage ledger (billed requests) and the
//! request log (every request a data plane answered or refused).

use crate::error::Result;
use crate::ledger::UsageRec;
use crate::request_log::LogCounts;
use crate::store::Store;
use std::collections::HashMap;

const HOUR_MS: i64 = 3_600_000;

/// The windows the overview sums over, with their length in hours.
pub const WINDOWS: [(&str, &str, i64); 3] = [
    ("hour", "last hour", 1),
    ("day", "last day", 24),
    ("month", "last 30 days", 30 * 24),
];

/// Sums of a set of usage records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nano_usd: u64,
}

impl Totals {
    fn add(&mut self, rec: &UsageRec) {
        self.requests += 1;
        self.errors += u64::from(rec.status >= 400);
        self.input_tokens += rec.input_tokens;
        self.output_tokens += rec.output_tokens;
        self.cost_nano_usd += rec.cost_nano_usd;
    }

    /// Errors per thousand requests (0 with no requests).
    pub fn error_per_mille(&self) -> u64 {
        (self.errors * 1000).checked_div(self.requests).unwrap_or(0)
    }
}

/// Buckets per doubling of a latency histogram: a bucket spans a factor of 2^(1/4), so a
/// percentile read from it is at most 19% above the true value.
const STEPS_PER_DOUBLING: f64 = 4.0;
/// Buckets up to 2^24 ms (4.6 hours), past any timeout.
const BUCKETS: usize = 24 * 4 + 1;

/// Latencies in log-spaced buckets: percentiles in constant memory, whatever the record count.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn bucket(ms: u32) -> usize {
        let b = (f64::from(ms) + 1.0).log2() * STEPS_PER_DOUBLING;
        (b.ceil() as usize).min(BUCKETS - 1)
    }

    fn upper_ms(bucket: usize) -> u64 {
        (2f64.powf(bucket as f64 / STEPS_PER_DOUBLING) - 1.0).round() as u64
    }

    pub fn add(&mut self, ms: u32) {
        self.counts[Self::bucket(ms)] += 1;
        self.total += 1;
    }

    /// The `per_mille`th per-mille value's bucket bound (p50 = 500, p99 = 990); `None` when empty.
    pub fn percentile(&self, per_mille: u64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = (self.total * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (b, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::upper_ms(b));
            }
        }
        None
    }
}

/// One window's sums and latency percentiles.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub totals: Totals,
    /// End-to-end latency of every request.
    pub latency: Histogram,
    /// Time to the first byte (the first token when streamed), where the data plane measured it.
    pub ttfb: Histogram,
}

/// The overview: totals per window, one point per hour of the chosen window, and spend by model,
/// provider and key over it.
#[derive(Debug, Default)]
pub struct Overview {
    /// In the order of [`WINDOWS`].
    pub windows: Vec<Window>,
    /// (start of the hour in ms, totals), oldest first, for the chosen window.
    pub series: Vec<(i64, Totals)>,
    pub by_model: Vec<(String, Totals)>,
    pub by_provider: Vec<(String, Totals)>,
    /// By key name (the key id when the key is gone).
    pub by_key: Vec<(String, Totals)>,
    /// Every logged request and error per window (refusals included), in the order of
    /// [`WINDOWS`]; empty for one key's overview.
    pub logged: Vec<LogCounts>,
}

/// Builds the overview at `now_ms` for the window of `window_hours`, optionally of one key, in
/// one pass over the records of the longest window.
pub fn overview(
    store: &Store,
    now_ms: i64,
    window_hours: i64,
    key_id: Option<&str>,
) -> Result<Overview> {
    let longest = WINDOWS.iter().map(|w| w.2).max().unwrap_or(1);
    let since = now_ms - longest * HOUR_MS;
    let names: HashMap<String, String> =
        store.keys()?.into_iter().map(|k| (k.id, k.name)).collect();
    let mut out = Overview {
        windows: vec![Window::default(); WINDOWS.len()],
        series: (0..window_hours)
            .rev()
            .map(|ago| (now_ms - (ago + 1) * HOUR_MS, Totals::default()))
            .collect(),
        ..Overview::default()
    };
    let mut by_model: HashMap<String, Totals> = HashMap::new();
    let mut by_provider: HashMap<String, Totals> = HashMap::new();
    let mut by_key: HashMap<String, Totals> = HashMap::new();
    store.each_usage(key_id, since, &mut |rec| {
        // Whole hours ago (not clock hours), so that "last hour" is exactly 60 minutes.
        let ago = (now_ms - rec.started_at_ms).max(0) / HOUR_MS;
        for (w, (_, _, hours)) in out.windows.iter_mut().zip(WINDOWS) {
            if ago < hours {
                w.totals.add(rec);
                w.latency.add(rec.latency_ms);
                if rec.ttfb_ms > 0 {
                    w.ttfb.add(rec.ttfb_ms);
                }
            }
        }
        if ago < window_hours {
            if let Some((_, t)) = out.series.get_mut((window_hours - 1 - ago) as usize) {
                t.add(rec);
            }
            by_model.entry(rec.model.clone()).or_default().add(rec);
            by_provider
                .entry(rec.provider.clone())
                .or_default()
                .add(rec);
            by_key.entry(rec.key_id.clone()).or_default().add(rec);
        }
    })?;
    let ranked = |m: HashMap<String, Totals>| {
        let mut v: Vec<(String, Totals)> = m.into_iter().collect();
        v.sort_by(|a, b| {
            b.1.cost_nano_usd
                .cmp(&a.1.cost_nano_usd)
                .then(a.0.cmp(&b.0))
        });
        v
    };
    if key_id.is_none() {
        let sinces: Vec<i64> = WINDOWS.iter().map(|w| now_ms - w.2 * HOUR_MS).collect();
        // Up to the end of this millisecond, as the ledger's pass counts.
        out.logged = store.count_requests(&sinces, now_ms + 1)?;
    }
    out.by_model = ranked(by_model);
    out.by_provider = ranked(by_provider);
    out.by_key = ranked(by_key)
        .into_iter()
        .map(|(id, t)| (names.get(&id).cloned().unwrap_or(id), t))
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    fn rec(id: &str, model: &str, started_at_ms: i64, status: u32, cost: u64) -> UsageRec {
        UsageRec {
            request_id: id.into(),
            key_id: "k1".into(),
            model: model.into(),
            provider: "p".into(),
            credential_id: "c".into(),
            input_tokens: 10,
            output_tokens: 5,
            cost_nano_usd: cost,
            status,
            started_at_ms,
            latency_ms: 100,
            ..UsageRec::default()
        }
    }

    #[test]
    fn windows_series_and_breakdowns_count_each_record_where_it_belongs() {
        let (_d, store) = open_temp();
        let now = 1_000 * HOUR_MS;
        store
            .ingest_usage(
                "n1",
                vec![
                    rec("a", "m1", now - 10 * 60_000, 200, 100),
                    rec("b", "m2", now - 90 * 60_000, 502, 0),
                    rec("c", "m1", now - 30 * HOUR_MS, 200, 7),
                    rec("d", "m1", now - 40 * 24 * HOUR_MS, 200, 1000),
                ],
            )
            .unwrap();
        let o = overview(&store, now, 24, None).unwrap();
        let reqs: Vec<u64> = o.windows.iter().map(|w| w.totals.requests).collect();
        assert_eq!(
            reqs,
            vec![1, 2, 3],
            "hour, day, 30 days; d is older than all"
        );
        assert_eq!(o.windows[1].totals.errors, 1);
        assert_eq!(o.windows[1].totals.error_per_mille(), 500);
        assert_eq!(o.windows[2].totals.cost_nano_usd, 107);
        let p50 = o.windows[0].latency.percentile(500).unwrap();
        assert!((100..=120).contains(&p50), "{p50}");
        assert_eq!(
            o.windows[0].ttfb.percentile(500),
            None,
            "no record measured it"
        );
        assert_eq!(o.series.len(), 24);
        assert_eq!(
            o.series[23].1.requests, 1,
            "the last hour is the last point"
        );
        assert_eq!(o.series[22].1.errors, 1);
        assert_eq!(o.series[23].0, now - HOUR_MS);
        assert_eq!(o.by_model[0].0, "m1", "ranked by spend");
        assert_eq!(o.by_model[0].1.requests, 1, "only the day's records");
        assert_eq!(o.by_key[0].0, "k1", "a key that is gone shows its id");
        assert_eq!(Totals::default().error_per_mille(), 0);
        assert_eq!(
            o.logged,
            vec![LogCounts::default(); 3],
            "nothing logged yet"
        );

        // The request log counts what the ledger never sees: a refusal.
        let logged = |id: &str, at: i64, status: u32| keyplane_proto::v1::UsageRecord {
            request_id: id.into(),
            key_id: "k1".into(),
            status,
            started_at_ms: at,
            unbilled: status >= 400,
            ..Default::default()
        };
        store
            .log_requests(
                "n1",
                &[
                    logged("a", now - 10 * 60_000, 200),
                    logged("r", now - 20 * 60_000, 404),
                    logged("c", now - 30 * HOUR_MS, 200),
                    logged("d", now - 40 * 24 * HOUR_MS, 500),
                ],
            )
            .unwrap();
        let o = overview(&store, now, 24, None).unwrap();
        let logged: Vec<(u64, u64)> = o.logged.iter().map(|l| (l.requests, l.errors)).collect();
        assert_eq!(logged, [(2, 1), (2, 1), (3, 1)], "hour, day, 30 days");
        assert_eq!(
            o.windows[0].totals.errors, 0,
            "billed errors stay the ledger's"
        );
        let one_key = overview(&store, now, 24, Some("k1")).unwrap();
        assert!(one_key.logged.is_empty());
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::Histogram;

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
}
