//! Prometheus metrics of the data plane, served at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

pub struct Metrics {
    registry: Registry,
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
            registry: Registry::default(),
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
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn served(
        &self,
        provider: &str,
        model: &str,
        status: u32,
        input: u64,
        output: u64,
        cost_nano: u64,
    ) {
        self.requests
            .get_or_create(&Served {
                provider: provider.to_string(),
                model: model.to_string(),
                status: status.to_string(),
            })
            .inc();
        let p = ProviderLabel {
            provider: provider.to_string(),
        };
        self.input_tokens.get_or_create(&p).inc_by(input);
        self.output_tokens.get_or_create(&p).inc_by(output);
        self.cost_nano.get_or_create(&p).inc_by(cost_nano);
    }

    pub fn attempt(&self, provider: &str, outcome: &str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                provider: provider.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
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
        let p = ProviderLabel {
            provider: provider.to_string(),
        };
        self.request_duration
            .get_or_create(&p)
            .observe(f64::from(latency_ms) / 1000.0);
        self.ttfb
            .get_or_create(&p)
            .observe(f64::from(ttfb_ms) / 1000.0);
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
