//! What the console's overview shows, computed from the usage ledger.

use crate::error::Result;
use crate::store::Store;
use std::collections::{BTreeMap, HashMap};

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
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_nano_usd += other.cost_nano_usd;
    }

    /// Errors per thousand requests (0 with no requests).
    pub fn error_per_mille(&self) -> u64 {
        (self.errors * 1000).checked_div(self.requests).unwrap_or(0)
    }
}

/// The overview: totals per window, one point per hour of the chosen window, and spend by model,
/// provider and key over it.
#[derive(Debug, Default)]
pub struct Overview {
    /// In the order of [`WINDOWS`].
    pub windows: Vec<Totals>,
    /// (start of the hour in ms, totals), oldest first, for the chosen window.
    pub series: Vec<(i64, Totals)>,
    pub by_model: Vec<(String, Totals)>,
    pub by_provider: Vec<(String, Totals)>,
    /// By key name (the key id when the key is gone).
    pub by_key: Vec<(String, Totals)>,
}

/// Builds the overview at `now_ms` for the window of `window_hours`, optionally of one key.
pub fn overview(
    store: &Store,
    now_ms: i64,
    window_hours: i64,
    key_id: Option<&str>,
) -> Result<Overview> {
    let longest = WINDOWS.iter().map(|w| w.2).max().unwrap_or(1);
    let since = now_ms - longest * HOUR_MS;
    // One pass: group by how many whole hours ago each record started, then by what it was
    // (model, provider, key). Hours ago (not clock hours) makes "last hour" exactly 60 minutes.
    let grouped = store.usage_grouped(key_id, since, 0, &|rec| {
        let ago = ((now_ms - rec.started_at_ms).max(0) / HOUR_MS).to_string();
        vec![
            ago,
            rec.model.clone(),
            rec.provider.clone(),
            rec.key_id.clone(),
            String::from(if rec.status >= 400 { "err" } else { "ok" }),
        ]
    })?;
    let names: HashMap<String, String> =
        store.keys()?.into_iter().map(|k| (k.id, k.name)).collect();
    let mut out = Overview {
        windows: vec![Totals::default(); WINDOWS.len()],
        series: (0..window_hours)
            .rev()
            .map(|ago| (now_ms - (ago + 1) * HOUR_MS, Totals::default()))
            .collect(),
        ..Overview::default()
    };
    let mut by_model: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_provider: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_key: BTreeMap<String, Totals> = BTreeMap::new();
    for (group, counts) in grouped {
        let [ago, model, provider, key, class] = group.as_slice() else {
            continue;
        };
        let Ok(ago) = ago.parse::<i64>() else {
            continue;
        };
        let t = Totals {
            requests: counts.requests,
            errors: if class == "err" { counts.requests } else { 0 },
            input_tokens: counts.input_tokens,
            output_tokens: counts.output_tokens,
            cost_nano_usd: counts.cost_nano_usd,
        };
        for (i, w) in WINDOWS.iter().enumerate() {
            if ago < w.2 {
                out.windows[i].add(&t);
            }
        }
        if ago < window_hours {
            let slot = (window_hours - 1 - ago) as usize;
            if let Some((_, s)) = out.series.get_mut(slot) {
                s.add(&t);
            }
            by_model.entry(model.clone()).or_default().add(&t);
            by_provider.entry(provider.clone()).or_default().add(&t);
            let name = names.get(key).cloned().unwrap_or_else(|| key.clone());
            by_key.entry(name).or_default().add(&t);
        }
    }
    let ranked = |m: BTreeMap<String, Totals>| {
        let mut v: Vec<(String, Totals)> = m.into_iter().collect();
        v.sort_by(|a, b| {
            b.1.cost_nano_usd
                .cmp(&a.1.cost_nano_usd)
                .then(a.0.cmp(&b.0))
        });
        v
    };
    out.by_model = ranked(by_model);
    out.by_provider = ranked(by_provider);
    out.by_key = ranked(by_key);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::UsageRec;
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
        let reqs: Vec<u64> = o.windows.iter().map(|t| t.requests).collect();
        assert_eq!(
            reqs,
            vec![1, 2, 3],
            "hour, day, 30 days; d is older than all"
        );
        assert_eq!(o.windows[1].errors, 1);
        assert_eq!(o.windows[1].error_per_mille(), 500);
        assert_eq!(o.windows[2].cost_nano_usd, 107);
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
    }
}
