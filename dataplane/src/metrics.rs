//! Prometheus metrics of the data plane, served at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Served {
    provider: String,
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    reason: String,
}

/// Seconds, from 5 ms to about 82 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

type Timings = Family<ProviderLabel, Histogram, fn() -> Histogram>;

/// One provider's per-request series, resolved once. Counting a served request through them is
/// a few atomic adds; through the families it was six label allocations, hashes and lookups.
/// Each handle shares its value with the family's series, so the exposition is unchanged.
struct ProviderSeries {
    input_tokens: Counter,
    output_tokens: Counter,
    cost_nano: Counter,
    duration: Histogram,
    ttfb: Histogram,
    /// `requests{provider, model, status}`: model, then (status, counter).
    requests: RwLock<HashMap<String, Vec<(u32, Counter)>>>,
    /// `upstream_attempts{provider, outcome}`.
    attempts: RwLock<Vec<(&'static str, Counter)>>,
}

/// Counts one in the counter `find` locates in `cache`. The first time, `create` resolves it
/// from its family (allocating the labels once) and `insert` files it in the cache.
fn count<C>(
    cache: &RwLock<C>,
    find: impl Fn(&C) -> Option<&Counter>,
    create: impl FnOnce() -> Counter,
    insert: impl FnOnce(&mut C, Counter),
) {
    if let Some(counter) = find(&cache.read().unwrap_or_else(PoisonError::into_inner)) {
        counter.inc();
        return;
    }
    let counter = create();
    counter.inc();
    let mut cache = cache.write().unwrap_or_else(PoisonError::into_inner);
    if find(&cache).is_none() {
        insert(&mut cache, counter);
    }
}

pub struct Metrics {
    registry: Registry,
    /// Handles by provider name (see [`ProviderSeries`]).
    series: RwLock<HashMap<String, std::sync::Arc<ProviderSeries>>>,
    failovers: Family<ProviderLabel, Counter>,
    request_duration: Timings,
    ttfb: Timings,
    /// Issue 7: credential health and limit refusals (see `health_limits` below).
    pub health_limits: HealthLimitMetrics,
    requests: Family<Served, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    input_tokens: Family<ProviderLabel, Counter>,
    output_tokens: Family<ProviderLabel, Counter>,
    cost_nano: Family<ProviderLabel, Counter>,
    refused: Family<Refusal, Counter>,
    pub route_version: Gauge,
    pub route_table_age_seconds: Gauge,
    pub spool_depth: Gauge,
    pub spool_oldest_age_seconds: Gauge,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// Client connections closed at accept because the connection cap was reached.
    pub refused_connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyplane");
        let m = Metrics {
            failovers: Family::default(),
            request_duration: Family::new_with_constructor(seconds_histogram),
            ttfb: Family::new_with_constructor(seconds_histogram),
            requests: Family::default(),
            attempts: Family::default(),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            cost_nano: Family::default(),
            refused: Family::default(),
            route_version: Gauge::default(),
            route_table_age_seconds: Gauge::default(),
            spool_depth: Gauge::default(),
            spool_oldest_age_seconds: Gauge::default(),
            open_connections: Gauge::default(),
            refused_connections: Counter::default(),
            registry: Registry::default(),
            series: RwLock::default(),
            health_limits: HealthLimitMetrics::default(),
        };
        m.health_limits.register(&mut registry);
        registry.register(
            "requests",
            "Requests served by an upstream, by final status",
            m.requests.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Upstream attempts by outcome (failovers are the non-ok ones)",
            m.attempts.clone(),
        );
        registry.register(
            "failovers",
            "Requests served by another candidate after the cheapest one(s) failed, by the provider that served",
            m.failovers.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response (stream included), by provider",
            m.request_duration.clone(),
        );
        registry.register(
            "upstream_time_to_first_byte_seconds",
            "Time from a request's arrival to the upstream's first committed byte, by provider",
            m.ttfb.clone(),
        );
        registry.register(
            "input_tokens",
            "Input tokens billed",
            m.input_tokens.clone(),
        );
        registry.register(
            "output_tokens",
            "Output tokens billed",
            m.output_tokens.clone(),
        );
        registry.register(
            "cost_nano_usd",
            "Cost billed, in nano-USD",
            m.cost_nano.clone(),
        );
        registry.register(
            "refused_requests",
            "Requests refused before any upstream call",
            m.refused.clone(),
        );
        registry.register(
            "route_version",
            "Version of the route table in use",
            m.route_version.clone(),
        );
        registry.register(
            "route_table_age_seconds",
            "Seconds since the route table in use was generated",
            m.route_table_age_seconds.clone(),
        );
        registry.register(
            "usage_spool_depth",
            "Usage records not yet acknowledged by the control plane",
            m.spool_depth.clone(),
        );
        registry.register(
            "usage_spool_oldest_age_seconds",
            "Age of the oldest unacknowledged usage record",
            m.spool_oldest_age_seconds.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        registry.register(
            "refused_connections",
            "Client connections closed at accept because --max-connections were open",
            m.refused_connections.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The handles of `provider`'s series, created on its first request.
    fn series(&self, provider: &str) -> std::sync::Arc<ProviderSeries> {
        if let Some(found) = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(provider)
        {
            return std::sync::Arc::clone(found);
        }
        let p = ProviderLabel {
            provider: provider.to_string(),
        };
        let created = std::sync::Arc::new(ProviderSeries {
            input_tokens: self.input_tokens.get_or_create(&p).clone(),
            output_tokens: self.output_tokens.get_or_create(&p).clone(),
            cost_nano: self.cost_nano.get_or_create(&p).clone(),
            duration: self.request_duration.get_or_create(&p).clone(),
            ttfb: self.ttfb.get_or_create(&p).clone(),
            requests: RwLock::default(),
            attempts: RwLock::default(),
        });
        let mut all = self.series.write().unwrap_or_else(PoisonError::into_inner);
        std::sync::Arc::clone(all.entry(p.provider).or_insert(created))
    }

    pub fn served(
        &self,
        provider: &str,
        model: &str,
        status: u32,
        input: u64,
        output: u64,
        cost_nano: u64,
    ) {
        let series = self.series(provider);
        count(
            &series.requests,
            |cache| {
                cache
                    .get(model)
                    .and_then(|by_status| by_status.iter().find(|(s, _)| *s == status))
                    .map(|(_, counter)| counter)
            },
            || {
                self.requests
                    .get_or_create(&Served {
                        provider: provider.to_string(),
                        model: model.to_string(),
                        status: status.to_string(),
                    })
                    .clone()
            },
            |cache, counter| {
                cache
                    .entry(model.to_string())
                    .or_default()
                    .push((status, counter))
            },
        );
        series.input_tokens.inc_by(input);
        series.output_tokens.inc_by(output);
        series.cost_nano.inc_by(cost_nano);
    }

    pub fn attempt(&self, provider: &str, outcome: &'static str) {
        let series = self.series(provider);
        count(
            &series.attempts,
            |cache| {
                cache
                    .iter()
                    .find(|(o, _)| *o == outcome)
                    .map(|(_, counter)| counter)
            },
            || {
                self.attempts
                    .get_or_create(&AttemptLabels {
                        provider: provider.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .clone()
            },
            |cache, counter| cache.push((outcome, counter)),
        );
    }

    /// A request served after failing over from cheaper candidates.
    pub fn failover(&self, provider: &str) {
        self.failovers
            .get_or_create(&ProviderLabel {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// Latency and time to first byte of a served request.
    pub fn timing(&self, provider: &str, latency_ms: u32, ttfb_ms: u32) {
        let series = self.series(provider);
        series.duration.observe(f64::from(latency_ms) / 1000.0);
        series.ttfb.observe(f64::from(ttfb_ms) / 1000.0);
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&Refusal {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A request a key's policy refused: counted among refusals (`reason`) and by the limit it
    /// hit (`keyplane_limit_refusals_total{limit}`).
    pub fn key_limit_refused(&self, reason: &str, limit: &str) {
        self.refused(reason);
        self.health_limits.limit_refused(limit);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

// --- health, chains, limits (issue 7) ---

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialStateLabels {
    provider: String,
    credential: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

/// `keyplane_credential_state{provider,credential,state}` (1 for the credential's current state,
/// 0 for the others) and `keyplane_limit_refusals_total{limit}`.
#[derive(Default)]
pub struct HealthLimitMetrics {
    credential_state: Family<CredentialStateLabels, Gauge>,
    limit_refusals: Family<LimitLabel, Counter>,
}

impl HealthLimitMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "credential_state",
            "Health state of each upstream credential on this node (1 = current state)",
            self.credential_state.clone(),
        );
        registry.register(
            "limit_refusals",
            "Requests refused by a client key's limit, by limit",
            self.limit_refusals.clone(),
        );
    }

    pub fn credential_state(&self, provider: &str, credential: &str, state: &str) {
        for s in crate::health::State::ALL {
            self.credential_state
                .get_or_create(&CredentialStateLabels {
                    provider: provider.to_string(),
                    credential: credential.to_string(),
                    state: s.as_str().to_string(),
                })
                .set(i64::from(s.as_str() == state));
        }
    }

    pub fn limit_refused(&self, limit: &str) {
        self.limit_refusals
            .get_or_create(&LimitLabel {
                limit: limit.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn cached_series_count_into_the_exposition() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.served("p1", "m1", 200, 10, 5, 7);
            m.attempt("p1", "ok");
            m.timing("p1", 120, 30);
        }
        m.served("p1", "m1", 502, 0, 0, 0);
        m.served("p1", "m2", 200, 1, 1, 1);
        m.served("p2", "m1", 200, 2, 2, 2);
        m.attempt("p1", "status_5xx");
        let text = m.encode();
        let count = |prefix: &str| {
            line(&text, prefix)
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("missing")
                .to_string()
        };
        assert_eq!(
            count(r#"keyplane_requests_total{provider="p1",model="m1",status="200"}"#),
            "3"
        );
        assert_eq!(
            count(r#"keyplane_requests_total{provider="p1",model="m1",status="502"}"#),
            "1"
        );
        assert_eq!(
            count(r#"keyplane_requests_total{provider="p1",model="m2",status="200"}"#),
            "1"
        );
        assert_eq!(count(r#"keyplane_input_tokens_total{provider="p1"}"#), "31");
        assert_eq!(count(r#"keyplane_input_tokens_total{provider="p2"}"#), "2");
        assert_eq!(
            count(r#"keyplane_upstream_attempts_total{provider="p1",outcome="ok"}"#),
            "3"
        );
        assert_eq!(
            count(r#"keyplane_upstream_attempts_total{provider="p1",outcome="status_5xx"}"#),
            "1"
        );
        assert_eq!(
            count(r#"keyplane_request_duration_seconds_count{provider="p1"}"#),
            "3"
        );
    }
}
