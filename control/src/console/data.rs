//! What the console's overview and the portal show, read from the usage rollups (`rollup.rs`):
//! a few hundred small rows whatever the number of requests, kept up to date at ingest.
//!
//! Windows are whole buckets up to now: the last hour is this minute and the 59 before it, the
//! last day this hour and the 23 before, the last 30 days today and the 29 days before.
//! Percentiles are read from fixed log-spaced histograms: each is its bucket's upper bound, at
//! least the true value and at most 19% above it.

use crate::error::Result;
use crate::rollup::{BY_KEY, BY_MODEL, BY_PROVIDER, Reader, Res, Roll, Scope};
use crate::store::Store;
use std::collections::HashMap;

pub use crate::rollup::{Counters as Totals, Histogram};

/// The windows the overview sums over, with their length in hours.
pub const WINDOWS: [(&str, &str, i64); 3] = [
    ("hour", "last hour", 1),
    ("day", "last day", 24),
    ("month", "last 30 days", 30 * 24),
];

/// One window's sums and latency percentiles.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub totals: Totals,
    /// End-to-end latency of every request an upstream was tried for.
    pub latency: Histogram,
    /// Time to the first byte (the first token when streamed), where the data plane measured it.
    pub ttfb: Histogram,
}

impl Window {
    fn of(roll: Roll) -> Window {
        Window {
            totals: roll.counters,
            latency: roll.latency,
            ttfb: roll.ttft,
        }
    }
}

/// The overview: totals per window, one point per minute (last hour) or hour (last day, last 30
/// days) of the chosen window, and spend by model, provider and key over it.
#[derive(Debug, Default)]
pub struct Overview {
    /// In the order of [`WINDOWS`].
    pub windows: Vec<Window>,
    /// (start of the point's bucket in ms, its sums), oldest first, for the chosen window.
    pub series: Vec<(i64, Window)>,
    pub by_model: Vec<(String, Totals)>,
    /// Empty for one key's overview.
    pub by_provider: Vec<(String, Totals)>,
    /// By key name (the key id when the key is gone); empty for one key's overview.
    pub by_key: Vec<(String, Totals)>,
}

/// `n` buckets of `res` up to and including the one holding `now_ms`, as (first, last).
fn span(res: Res, now_ms: i64, n: u32) -> (u32, u32) {
    let last = res.bucket(now_ms);
    (last.saturating_sub(n.saturating_sub(1)), last)
}

/// The sums rows of `[first, last]` as one point per bucket, absent buckets as zeros.
fn points(rows: Vec<(u32, Roll)>, res: Res, (first, last): (u32, u32)) -> Vec<(i64, Roll)> {
    let mut rows = rows.into_iter().peekable();
    (first..=last)
        .map(|b| {
            let roll = match rows.peek() {
                Some((at, _)) if *at == b => rows.next().map(|r| r.1).unwrap_or_default(),
                _ => Roll::default(),
            };
            (res.start_ms(b), roll)
        })
        .collect()
}

fn sum<'a>(rolls: impl IntoIterator<Item = &'a Roll>) -> Roll {
    let mut total = Roll::default();
    for r in rolls {
        total.merge(r);
    }
    total
}

/// Builds the overview at `now_ms` for the window of `window_hours` (one of [`WINDOWS`]),
/// optionally of one key, from the rollups: at most 60 minute rows, 720 hour rows, 30 day rows
/// and the chosen window's breakdown rows (60, 24 or 30).
pub fn overview(
    store: &Store,
    now_ms: i64,
    window_hours: i64,
    key_id: Option<&str>,
) -> Result<Overview> {
    let scope = key_id.map_or(Scope::All, Scope::Key);
    let read = Reader::new(store);
    let minutes_span = span(Res::Minute, now_ms, 60);
    let minutes = points(
        read.sums(Res::Minute, scope, minutes_span.0, minutes_span.1)?,
        Res::Minute,
        minutes_span,
    );
    let hours_n = if window_hours > 24 { 30 * 24 } else { 24 };
    let hours_span = span(Res::Hour, now_ms, hours_n);
    let hours = points(
        read.sums(Res::Hour, scope, hours_span.0, hours_span.1)?,
        Res::Hour,
        hours_span,
    );
    let days_span = span(Res::Day, now_ms, 30);
    let days = read.sums(Res::Day, scope, days_span.0, days_span.1)?;
    let last_day = hours.len().saturating_sub(24);
    let windows = vec![
        Window::of(sum(minutes.iter().map(|p| &p.1))),
        Window::of(sum(hours[last_day..].iter().map(|p| &p.1))),
        Window::of(sum(days.iter().map(|p| &p.1))),
    ];
    let (series, breakdown) = match window_hours {
        1 => (
            minutes,
            read.breakdown(Res::Minute, scope, minutes_span.0, minutes_span.1)?,
        ),
        24 => {
            let (first, last) = span(Res::Hour, now_ms, 24);
            (hours, read.breakdown(Res::Hour, scope, first, last)?)
        }
        _ => (
            hours,
            read.breakdown(Res::Day, scope, days_span.0, days_span.1)?,
        ),
    };
    let mut by = breakdown.dims;
    let mut ranked = |dim: u8| {
        let mut v: Vec<(String, Totals)> =
            by.remove(&dim).unwrap_or_default().into_iter().collect();
        v.sort_by(|a, b| {
            b.1.cost_nano_usd
                .cmp(&a.1.cost_nano_usd)
                .then(b.1.requests.cmp(&a.1.requests))
                .then(a.0.cmp(&b.0))
        });
        v
    };
    let by_model = ranked(BY_MODEL);
    let by_provider = ranked(BY_PROVIDER);
    let by_key = ranked(BY_KEY);
    let by_key = if by_key.is_empty() {
        by_key
    } else {
        let names: HashMap<String, String> =
            store.keys()?.into_iter().map(|k| (k.id, k.name)).collect();
        by_key
            .into_iter()
            .map(|(id, t)| (names.get(&id).cloned().unwrap_or(id), t))
            .collect()
    };
    Ok(Overview {
        windows,
        series: series
            .into_iter()
            .map(|(at, roll)| (at, Window::of(roll)))
            .collect(),
        by_model,
        by_provider,
        by_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::UsageRec;
    use crate::rollup::{DAY_MS, HOUR_MS};
    use crate::store::testing::open_temp;
    use keyplane_proto::v1 as pb;

    fn rec(id: &str, key: &str, model: &str, at: i64, status: u32, cost: u64) -> UsageRec {
        UsageRec {
            request_id: id.into(),
            key_id: key.into(),
            model: model.into(),
            provider: "p".into(),
            credential_id: "c".into(),
            input_tokens: 10,
            output_tokens: 5,
            cost_nano_usd: cost,
            status,
            started_at_ms: at,
            latency_ms: 100,
            ttfb_ms: 40,
            ..UsageRec::default()
        }
    }

    fn unbilled(id: &str, key: &str, at: i64, status: u32, tried: bool) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            key_id: key.into(),
            model: "m3".into(),
            status,
            started_at_ms: at,
            latency_ms: 3000,
            unbilled: true,
            attempts: if tried {
                vec![pb::UpstreamAttempt {
                    provider: "p".into(),
                    credential_id: "c".into(),
                    outcome: "server_error".into(),
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    #[test]
    fn windows_series_and_breakdowns_count_each_request_where_it_belongs() {
        let (_d, store) = open_temp();
        let key = store.create_key("alice").unwrap().0.id;
        let now = crate::store::now_ms();
        let billed = vec![
            rec("a", &key, "m1", now - 10 * 60_000, 200, 100),
            rec("b", &key, "m2", now - 90 * 60_000, 502, 0),
            rec("c", &key, "m1", now - 30 * HOUR_MS, 200, 7),
            rec("d", &key, "m1", now - 40 * DAY_MS, 200, 1000),
            rec("e", "gone", "m1", now - 2 * 60_000, 200, 5),
        ];
        let logged = [
            // Refused by the data plane: no upstream tried.
            unbilled("r", &key, now - 20 * 60_000, 404, false),
            // Every upstream failed.
            unbilled("f", &key, now - 5 * 60_000, 503, true),
        ];
        for _ in 0..2 {
            // The second round re-sends everything: nothing is counted twice.
            store.ingest_usage("n1", billed.clone()).unwrap();
            store.log_requests("n1", &logged).unwrap();
        }
        let o = overview(&store, now, 24, None).unwrap();
        let reqs: Vec<(u64, u64, u64)> = o
            .windows
            .iter()
            .map(|w| (w.totals.requests, w.totals.errors, w.totals.refused))
            .collect();
        // Hour: a, e, r, f; day: and b; 30 days: and c; d is older than all.
        assert_eq!(reqs, vec![(4, 2, 1), (5, 3, 1), (6, 3, 1)]);
        assert_eq!(o.windows[1].totals.error_per_mille(), 600);
        assert_eq!(o.windows[2].totals.cost_nano_usd, 112);
        assert_eq!(o.windows[2].totals.input_tokens, 40);
        // Latency of the served a, e and the failed f (3000 ms); the refusal's is left out.
        let hour = &o.windows[0];
        assert_eq!(hour.latency.total(), 3);
        let p50 = hour.latency.percentile(500).unwrap();
        assert!((100..=120).contains(&p50), "{p50}");
        let p99 = hour.latency.percentile(990).unwrap();
        assert!((3000..=3600).contains(&p99), "{p99}");
        assert_eq!(hour.ttfb.total(), 2, "only requests that measured it");
        // One point per hour of the day, the last one this hour's; together the day's sums.
        assert_eq!(o.series.len(), 24);
        assert_eq!(o.series[23].0, now / HOUR_MS * HOUR_MS);
        let series_requests: u64 = o.series.iter().map(|p| p.1.totals.requests).sum();
        assert_eq!(series_requests, 5);
        let series_errors: u64 = o.series.iter().map(|p| p.1.totals.errors).sum();
        assert_eq!(series_errors, 3);
        // Breakdowns over the day, ranked by spend; a key that is gone shows its id.
        let names = |v: &[(String, Totals)]| {
            v.iter()
                .map(|(n, t)| format!("{n}:{}:{}", t.requests, t.cost_nano_usd))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&o.by_model), ["m1:2:105", "m3:2:0", "m2:1:0"]);
        assert_eq!(names(&o.by_key), ["alice:4:100", "gone:1:5"]);
        assert_eq!(names(&o.by_provider), ["p:3:105", ":2:0"]);
        // The last hour: one point a minute.
        let o = overview(&store, now, 1, None).unwrap();
        assert_eq!(o.series.len(), 60);
        assert_eq!(names(&o.by_model), ["m1:2:105", "m3:2:0"]);
        // 30 days: 720 hourly points, breakdown by day.
        let o = overview(&store, now, 720, None).unwrap();
        assert_eq!(o.series.len(), 720);
        assert_eq!(names(&o.by_model), ["m1:3:112", "m3:2:0", "m2:1:0"]);

        // One key's overview: nothing of the other key, no breakdown by key or provider.
        let mine = overview(&store, now, 720, Some(&key)).unwrap();
        assert_eq!(mine.windows[2].totals.requests, 5);
        assert_eq!(mine.windows[2].totals.cost_nano_usd, 107);
        assert_eq!(names(&mine.by_model), ["m1:2:107", "m3:2:0", "m2:1:0"]);
        assert!(mine.by_key.is_empty() && mine.by_provider.is_empty());
    }
}
