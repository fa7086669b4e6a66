//! The route table as the request path uses it: compiled once per push from the control plane's
//! normalized `RouteTable` into per-model candidate lists and a key-hash map, then swapped in
//! atomically (`ArcSwap`), so a request loads it once and never locks.

use http::HeaderValue;
use keyplane_proto::v1 as pb;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::limits::{KeyFailures, KeyState, LimitsRegistry, Policy};

/// The wire protocol of an upstream: one of the dialects the data plane speaks.
pub use crate::protocol::Dialect as Protocol;

#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    pub protocol: Protocol,
    /// The preset the provider was added with (`openrouter`, `anthropic`, …), if any.
    pub preset: Option<Arc<str>>,
    /// Its wire quirks, looked up once from `preset` when the table is compiled.
    pub quirks: &'static crate::providers::Quirks,
    /// The full URL of the chat endpoint (`{base}/chat/completions` or `{base}/v1/messages`);
    /// for Gemini, `{base}/v1beta`, which [`Candidate::upstream_url`] completes per call.
    pub chat_url: http::Uri,
    /// The base URL as configured, without a trailing `/`, for endpoints other than chat
    /// (`{base}/embeddings`).
    pub base_url: Arc<str>,
    /// Per-provider timeouts; `None`: the data plane's default.
    pub connect_timeout: Option<std::time::Duration>,
    pub first_byte_timeout: Option<std::time::Duration>,
    pub idle_timeout: Option<std::time::Duration>,
    /// Largest non-streamed answer read (`--max-upstream-body-bytes` when unset).
    pub max_body_bytes: Option<usize>,
}

/// One way to serve a model: an offering of a provider, through one of its credentials.
pub struct Candidate {
    pub provider: Arc<Provider>,
    pub credential_id: Arc<str>,
    /// The header that carries the secret (`authorization: Bearer …` or `x-api-key: …`), marked
    /// sensitive so that hyper never logs it.
    pub auth: (http::HeaderName, HeaderValue),
    /// Finds the secret of `auth` in what the upstream sends back, to scrub it.
    pub redactor: Arc<crate::redact::Redactor>,
    pub upstream_model: Arc<str>,
    pub input_micro_usd_per_mtok: u64,
    pub output_micro_usd_per_mtok: u64,
    /// Cached input prices; cached input is priced as input when they are unset.
    pub cache_read_micro_usd_per_mtok: Option<u64>,
    pub cache_write_micro_usd_per_mtok: Option<u64>,
    pub multiplier_ppm: u64,
    pub stats: Arc<CredentialStats>,
    /// The catalog lists this offering without a usable price: it ranks after every priced
    /// candidate (never as free) and bills at the prices above (0) unless the provider reports
    /// its own cost.
    pub price_unknown: bool,
    /// Prices for larger prompts, ascending by `min_prompt_tokens` (ZenMux-style tiers).
    pub tiers: Arc<[PriceTier]>,
}

/// The prices of an offering from `min_prompt_tokens` prompt tokens up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceTier {
    pub min_prompt_tokens: u64,
    pub input: u64,
    pub output: u64,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
}

/// What a candidate charges, as the usage record needs it after the request.
#[derive(Debug, Clone, Copy)]
pub struct Prices {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub multiplier_ppm: u64,
}

impl Prices {
    /// These (base) prices, or those of the last of `tiers` that `prompt_tokens` reaches.
    pub fn at_tier(self, tiers: &[PriceTier], prompt_tokens: u64) -> Prices {
        match tiers
            .iter()
            .rev()
            .find(|t| prompt_tokens >= t.min_prompt_tokens)
        {
            Some(t) => Prices {
                input: t.input,
                output: t.output,
                cache_read: t.cache_read.unwrap_or(t.input),
                cache_write: t.cache_write.unwrap_or(t.input),
                multiplier_ppm: self.multiplier_ppm,
            },
            None => self,
        }
    }

    /// Cost in nano-USD of uncached input, cache reads, cache writes and output, rounded to the
    /// nearest nano-USD: the one price formula of the data plane.
    ///
    /// micro-USD per million tokens is 10^-12 USD per token; times ppm / 10^6, divided by 10^3
    /// gives nano-USD. An overflow saturates at `u64::MAX`.
    pub fn cost_nano(&self, input: u64, cache_read: u64, cache_write: u64, output: u64) -> u64 {
        let pico = [
            (input, self.input),
            (cache_read, self.cache_read),
            (cache_write, self.cache_write),
            (output, self.output),
        ]
        .into_iter()
        .try_fold(0u128, |acc, (tokens, price)| {
            acc.checked_add(u128::from(tokens) * u128::from(price))
        });
        let nano = pico
            .and_then(|p| p.checked_mul(u128::from(self.multiplier_ppm)))
            .and_then(|scaled| scaled.checked_add(500_000_000))
            .map(|scaled| scaled / 1_000_000_000);
        nano.and_then(|n| u64::try_from(n).ok()).unwrap_or(u64::MAX)
    }
}

/// What a request asks of an upstream, where the URL depends on it: Gemini names the method in
/// the URL (`models/{id}:generateContent`), the other protocols have one endpoint for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCall {
    /// A whole answer.
    Generate,
    /// A streamed answer: Gemini's `:streamGenerateContent?alt=sse` (server-sent events, whatever
    /// framing the client asked for: the relay writes the client's).
    Stream,
    /// Gemini's `:countTokens`.
    CountTokens,
    /// Gemini's `:batchEmbedContents` (embeddings, one vector per request).
    BatchEmbedContents,
}

impl UpstreamCall {
    /// The Gemini method and query of the call.
    fn gemini_method(self) -> &'static str {
        match self {
            UpstreamCall::Generate => ":generateContent",
            UpstreamCall::Stream => ":streamGenerateContent?alt=sse",
            UpstreamCall::CountTokens => ":countTokens",
            UpstreamCall::BatchEmbedContents => ":batchEmbedContents",
        }
    }
}

/// Appends `id` to `out` as a URL path: unreserved bytes and `/` as they are (a Gemini-compatible
/// proxy may name models `google/gemini-2.5-flash`), everything else percent-encoded, `:` too,
/// so that an id cannot change the method Google reads after the last `:`.
pub(crate) fn push_path_encoded(out: &mut String, id: &str) {
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl Candidate {
    /// The URL of `call` to this candidate's upstream: the provider's endpoint, or for Gemini
    /// `{base}/v1beta/models/{id}:{method}` (`tunedModels/…` and `models/…` ids keep their own
    /// collection), the id percent-encoded. The secret is never in it: it travels in
    /// [`Candidate::auth`].
    pub fn upstream_url(&self, call: UpstreamCall) -> Result<http::Uri, http::uri::InvalidUri> {
        if self.provider.protocol != Protocol::Gemini {
            return Ok(self.provider.chat_url.clone());
        }
        let id = &*self.upstream_model;
        let base = self.provider.chat_url.to_string();
        let mut url = String::with_capacity(base.len() + id.len() + 40);
        url.push_str(base.trim_end_matches('/'));
        url.push('/');
        if !(id.starts_with("models/") || id.starts_with("tunedModels/")) {
            url.push_str("models/");
        }
        push_path_encoded(&mut url, id);
        url.push_str(call.gemini_method());
        url.parse()
    }

    pub fn prices(&self) -> Prices {
        Prices {
            input: self.input_micro_usd_per_mtok,
            output: self.output_micro_usd_per_mtok,
            cache_read: self
                .cache_read_micro_usd_per_mtok
                .unwrap_or(self.input_micro_usd_per_mtok),
            cache_write: self
                .cache_write_micro_usd_per_mtok
                .unwrap_or(self.input_micro_usd_per_mtok),
            multiplier_ppm: self.multiplier_ppm,
        }
    }

    /// The prices of the tier a prompt of `prompt_tokens` falls in: the last tier it reaches,
    /// else the base prices.
    pub fn prices_for(&self, prompt_tokens: u64) -> Prices {
        self.prices().at_tier(&self.tiers, prompt_tokens)
    }

    /// This candidate's cost of a request, in nano-USD, at the tier its prompt falls in.
    pub fn cost_nano(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        self.prices_for(input_tokens)
            .cost_nano(input_tokens, 0, 0, output_tokens)
    }
}

/// Per-credential observations that outlive table swaps: latency for tie-breaks, and health.
#[derive(Debug, Default)]
pub struct CredentialStats {
    /// Exponentially weighted moving average of upstream time to first byte, in microseconds;
    /// 0 = no observation yet.
    latency_ewma_us: AtomicU64,
    pub health: crate::health::Health,
}

impl CredentialStats {
    pub fn latency_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// Folds in one observation with weight 1/8. Races between concurrent updates lose an
    /// observation at worst, which an average does not mind.
    pub fn observe_latency(&self, us: u64) {
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.latency_ewma_us.store(new.max(1), Ordering::Relaxed);
    }
}

/// Keeps [`CredentialStats`] per credential id, and key limit counters per key id, across table
/// swaps.
#[derive(Default)]
pub struct StatsRegistry {
    map: Mutex<HashMap<String, Arc<CredentialStats>>>,
    pub limits: LimitsRegistry,
}

impl StatsRegistry {
    fn get(&self, credential_id: &str) -> Arc<CredentialStats> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(credential_id.to_string()).or_default())
    }
}

/// A client key allowed by the table.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub id: Arc<str>,
    /// `None`: no limits, no expiry, every model.
    pub policy: Option<Arc<Policy>>,
    /// Counters and lease, for a key with rate or budget limits.
    pub state: Option<Arc<KeyState>>,
    /// Its upstream failure budget (every key has one).
    pub failures: Arc<KeyFailures>,
    /// The control plane's route-probe key: it may pin a request to one route
    /// ([`crate::proxy::PinnedRoute`]).
    pub probe: bool,
    /// The operator opted in to keep this key's bodies (`capture.rs`).
    pub capture_bodies: bool,
}

pub struct Table {
    pub version: u64,
    pub models: HashMap<String, Vec<Candidate>>,
    /// Client-facing model and chain names, sorted, for `GET /v1/models`.
    pub model_names: Vec<String>,
    keys: HashMap<[u8; 32], ClientKey>,
    /// Keys with rate or budget limits (the ones the leaser renews).
    limited: Vec<ClientKey>,
    /// Fallback chains: name to models in order.
    pub chains: HashMap<String, Vec<String>>,
}

/// Why a table from the control plane was not usable.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("route table {version} is a delta on {base}; this data plane applies full tables only")]
    Delta { version: u64, base: u64 },
    #[error("provider {name:?} has a base URL that does not form a valid URI")]
    BadUrl { name: String },
}

impl Table {
    pub fn compile(table: &pb::RouteTable, stats: &StatsRegistry) -> Result<Table, TableError> {
        if table.base_version != 0 {
            return Err(TableError::Delta {
                version: table.route_version,
                base: table.base_version,
            });
        }
        let mut providers = Vec::with_capacity(table.providers.len());
        for p in &table.providers {
            let protocol = match pb::Protocol::try_from(p.protocol) {
                Ok(pb::Protocol::Anthropic) => Protocol::Anthropic,
                Ok(pb::Protocol::OpenaiResponses) => Protocol::OpenAiResponses,
                Ok(pb::Protocol::Gemini) => Protocol::Gemini,
                _ => Protocol::OpenAiChat,
            };
            let base = p.base_url.trim_end_matches('/');
            let url = match protocol {
                Protocol::OpenAiChat => format!("{base}/chat/completions"),
                Protocol::Anthropic => format!("{base}/v1/messages"),
                Protocol::OpenAiResponses => format!("{base}/responses"),
                // The model and method complete a Gemini URL per call (`upstream_url`).
                Protocol::Gemini => format!("{base}/v1beta"),
            };
            let chat_url = url.parse::<http::Uri>().map_err(|_| TableError::BadUrl {
                name: p.name.clone(),
            })?;
            let ms = |v: u32| (v > 0).then(|| std::time::Duration::from_millis(u64::from(v)));
            providers.push(Arc::new(Provider {
                name: Arc::from(p.name.as_str()),
                protocol,
                preset: (!p.preset.is_empty()).then(|| Arc::from(p.preset.as_str())),
                quirks: crate::providers::for_preset(&p.preset),
                chat_url,
                base_url: Arc::from(base),
                connect_timeout: ms(p.connect_timeout_ms),
                first_byte_timeout: ms(p.first_byte_timeout_ms),
                idle_timeout: ms(p.idle_timeout_ms),
                max_body_bytes: (p.max_body_bytes > 0)
                    .then(|| usize::try_from(p.max_body_bytes).unwrap_or(usize::MAX)),
            }));
        }

        struct Cred {
            id: Arc<str>,
            auth: (http::HeaderName, HeaderValue),
            redactor: Arc<crate::redact::Redactor>,
            multiplier_ppm: u64,
            stats: Arc<CredentialStats>,
        }
        let mut creds_by_provider: HashMap<u32, Vec<Cred>> = HashMap::new();
        let now = crate::proxy::now_ms();
        for c in &table.credentials {
            let Some(provider) = providers.get(c.provider_index as usize) else {
                continue;
            };
            let (name, value) = match provider.protocol {
                Protocol::OpenAiChat | Protocol::OpenAiResponses => {
                    (http::header::AUTHORIZATION, format!("Bearer {}", c.secret))
                }
                Protocol::Anthropic => {
                    (http::HeaderName::from_static("x-api-key"), c.secret.clone())
                }
                Protocol::Gemini => (
                    http::HeaderName::from_static("x-goog-api-key"),
                    c.secret.clone(),
                ),
            };
            let Ok(mut value) = HeaderValue::from_str(&value) else {
                tracing::warn!(credential_id = %c.id, "credential secret is not a valid header value; skipped");
                continue;
            };
            value.set_sensitive(true);
            let cred_stats = stats.get(&c.id);
            if c.state_since_ms > 0 {
                cred_stats
                    .health
                    .apply_shared(c.state_since_ms, c.blocked_until_ms, now);
            }
            creds_by_provider
                .entry(c.provider_index)
                .or_default()
                .push(Cred {
                    id: Arc::from(c.id.as_str()),
                    auth: (name, value),
                    redactor: Arc::new(crate::redact::Redactor::new(c.secret.as_bytes())),
                    multiplier_ppm: c.multiplier_ppm,
                    stats: cred_stats,
                });
        }

        let mut models = HashMap::with_capacity(table.models.len());
        for m in &table.models {
            let mut candidates = Vec::new();
            for o in &m.offerings {
                let Some(provider) = providers.get(o.provider_index as usize) else {
                    continue;
                };
                let tiers: Arc<[PriceTier]> = o
                    .tiers
                    .iter()
                    .map(|t| PriceTier {
                        min_prompt_tokens: t.min_prompt_tokens,
                        input: t.input_micro_usd_per_mtok,
                        output: t.output_micro_usd_per_mtok,
                        cache_read: t.cache_read_micro_usd_per_mtok,
                        cache_write: t.cache_write_micro_usd_per_mtok,
                    })
                    .collect();
                let upstream_model: Arc<str> = if o.upstream_model.is_empty() {
                    Arc::from(m.name.as_str())
                } else {
                    Arc::from(o.upstream_model.as_str())
                };
                for cred in creds_by_provider
                    .get(&o.provider_index)
                    .into_iter()
                    .flatten()
                {
                    candidates.push(Candidate {
                        provider: Arc::clone(provider),
                        credential_id: Arc::clone(&cred.id),
                        auth: cred.auth.clone(),
                        redactor: Arc::clone(&cred.redactor),
                        upstream_model: Arc::clone(&upstream_model),
                        input_micro_usd_per_mtok: o.input_micro_usd_per_mtok,
                        output_micro_usd_per_mtok: o.output_micro_usd_per_mtok,
                        cache_read_micro_usd_per_mtok: o.cache_read_micro_usd_per_mtok,
                        cache_write_micro_usd_per_mtok: o.cache_write_micro_usd_per_mtok,
                        multiplier_ppm: cred.multiplier_ppm,
                        stats: Arc::clone(&cred.stats),
                        price_unknown: o.price_unknown,
                        tiers: Arc::clone(&tiers),
                    });
                }
            }
            models.insert(m.name.clone(), candidates);
        }
        // Chains are listed beside models: a client picks either by name.
        let mut model_names: Vec<String> = models
            .keys()
            .chain(table.chains.iter().map(|c| &c.name))
            .cloned()
            .collect();
        model_names.sort();
        model_names.dedup();

        let mut limited = Vec::new();
        let keys = table
            .keys
            .iter()
            .filter_map(|k| {
                let hash: [u8; 32] = k.sha256.as_slice().try_into().ok()?;
                let capture_bodies = k.policy.as_ref().is_some_and(|p| p.capture_bodies);
                let policy = k
                    .policy
                    .as_ref()
                    .map(Policy::from_pb)
                    .filter(|p| p.is_limited() || !p.models.is_empty() || p.expires_at_ms > 0);
                let state = policy
                    .as_ref()
                    .filter(|p| p.is_limited())
                    .map(|_| stats.limits.get(&k.id));
                let key = ClientKey {
                    id: Arc::from(k.id.as_str()),
                    policy: policy.map(Arc::new),
                    state,
                    failures: stats.limits.failures(&k.id),
                    probe: k.policy.as_ref().is_some_and(|p| p.probe),
                    capture_bodies,
                };
                if key.state.is_some() {
                    limited.push(key.clone());
                }
                Some((hash, key))
            })
            .collect();
        let chains = table
            .chains
            .iter()
            .map(|c| (c.name.clone(), c.models.clone()))
            .collect();
        Ok(Table {
            version: table.route_version,
            models,
            model_names,
            keys,
            limited,
            chains,
        })
    }

    /// Keys with rate or budget limits.
    pub fn limited_keys(&self) -> &[ClientKey] {
        &self.limited
    }

    pub fn key_by_id(&self, id: &str) -> Option<&ClientKey> {
        self.limited.iter().find(|k| &*k.id == id)
    }

    /// The client key whose SHA-256 matches `presented`, if the table allows it.
    pub fn authenticate(&self, presented: &str) -> Option<&ClientKey> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.keys.get(&hash)
    }

    /// Candidate indexes of `model`, cheapest first for a request of about `input_tokens` in and
    /// `output_tokens` out, each priced at the tier that prompt falls in; equal costs go to the
    /// lower recent latency (unknown latency last). Candidates with an unknown price come after
    /// every priced one.
    pub fn rank(candidates: &[Candidate], input_tokens: u64, output_tokens: u64) -> Vec<usize> {
        let mut order: Vec<(bool, u64, u64, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let latency = match c.stats.latency_us() {
                    0 => u64::MAX,
                    us => us,
                };
                (
                    c.price_unknown,
                    c.cost_nano(input_tokens, output_tokens),
                    latency,
                    i,
                )
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, _, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> pb::RouteTable {
        let provider = |name: &str, port: u16| pb::RouteProvider {
            name: name.into(),
            protocol: pb::Protocol::Openai as i32,
            base_url: format!("http://127.0.0.1:{port}/v1"),
            ..Default::default()
        };
        let cred = |id: &str, p: u32, mult: u64| pb::RouteCredential {
            id: id.into(),
            provider_index: p,
            secret: format!("sk-{id}"),
            multiplier_ppm: mult,
            label: String::new(),
            ..Default::default()
        };
        let offer = |p: u32, input: u64, output: u64| pb::RouteOffering {
            provider_index: p,
            upstream_model: String::new(),
            input_micro_usd_per_mtok: input,
            output_micro_usd_per_mtok: output,
            ..Default::default()
        };
        pb::RouteTable {
            route_version: 3,
            base_version: 0,
            generated_at_ms: 0,
            providers: vec![
                provider("alpha", 1),
                provider("beta", 2),
                provider("gamma", 3),
            ],
            credentials: vec![
                cred("a", 0, 1_000_000),
                cred("b", 1, 1_000_000),
                cred("c", 2, 1_000_000),
            ],
            models: vec![pb::RouteModel {
                name: "m".into(),
                offerings: vec![
                    offer(0, 3_000_000, 15_000_000),
                    offer(1, 1_000_000, 2_000_000),
                    offer(2, 2_000_000, 4_000_000),
                ],
            }],
            keys: vec![pb::RouteClientKey {
                id: "k1".into(),
                sha256: Sha256::digest(b"kp_test").to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Provider names of `cands` in rank order for a 1,000-in / 1,000-out request.
    fn ranked_names(cands: &[Candidate]) -> Vec<String> {
        Table::rank(cands, 1000, 1000)
            .iter()
            .map(|&i| cands[i].provider.name.to_string())
            .collect()
    }

    #[test]
    fn a_providers_preset_selects_its_quirks_once_at_compile() {
        let stats = StatsRegistry::default();
        let mut raw = table();
        raw.providers[0].preset = "openrouter".into();
        raw.providers[2].preset = "a-preset-from-a-newer-control-plane".into();
        let t = Table::compile(&raw, &stats).unwrap();
        let provider = |name: &str| {
            t.models["m"]
                .iter()
                .map(|c| &c.provider)
                .find(|p| &*p.name == name)
                .unwrap()
                .clone()
        };
        let alpha = provider("alpha");
        assert_eq!(alpha.preset.as_deref(), Some("openrouter"));
        assert!(std::ptr::eq(
            alpha.quirks,
            crate::providers::for_preset("openrouter")
        ));
        assert!(alpha.quirks.affordable_mark.is_some());
        let beta = provider("beta");
        assert_eq!(beta.preset, None);
        assert!(std::ptr::eq(beta.quirks, &crate::providers::NO_QUIRKS));
        // An unknown preset is kept by name and has no quirks of its own.
        let gamma = provider("gamma");
        assert_eq!(
            gamma.preset.as_deref(),
            Some("a-preset-from-a-newer-control-plane")
        );
        assert!(std::ptr::eq(gamma.quirks, &crate::providers::NO_QUIRKS));
    }

    #[test]
    fn cheapest_first_and_multiplier_changes_the_order() {
        let stats = StatsRegistry::default();
        let t = Table::compile(&table(), &stats).unwrap();
        let cands = &t.models["m"];
        assert_eq!(ranked_names(cands), ["beta", "gamma", "alpha"]);

        let mut raw = table();
        raw.credentials[1].multiplier_ppm = 3_000_000;
        let t = Table::compile(&raw, &stats).unwrap();
        let cands = &t.models["m"];
        assert_eq!(ranked_names(cands), ["gamma", "beta", "alpha"]);
    }

    #[test]
    fn tiers_by_prompt_size_and_unknown_prices_last() {
        let stats = StatsRegistry::default();
        let mut raw = table();
        // alpha: $1/$1 below 200k prompt tokens, $10/$10 from there; beta $2/$2; gamma unknown.
        raw.models[0].offerings[0].input_micro_usd_per_mtok = 1_000_000;
        raw.models[0].offerings[0].output_micro_usd_per_mtok = 1_000_000;
        raw.models[0].offerings[0].tiers = vec![pb::RoutePriceTier {
            min_prompt_tokens: 200_000,
            input_micro_usd_per_mtok: 10_000_000,
            output_micro_usd_per_mtok: 10_000_000,
            ..Default::default()
        }];
        raw.models[0].offerings[1].input_micro_usd_per_mtok = 2_000_000;
        raw.models[0].offerings[1].output_micro_usd_per_mtok = 2_000_000;
        raw.models[0].offerings[2].input_micro_usd_per_mtok = 0;
        raw.models[0].offerings[2].output_micro_usd_per_mtok = 0;
        raw.models[0].offerings[2].price_unknown = true;
        let t = Table::compile(&raw, &stats).unwrap();
        let cands = &t.models["m"];
        assert_eq!(Table::rank(cands, 1_000, 100), vec![0, 1, 2]);
        assert_eq!(Table::rank(cands, 250_000, 100), vec![1, 0, 2]);
        assert_eq!(cands[0].prices_for(199_999).input, 1_000_000);
        assert_eq!(cands[0].prices_for(200_000).input, 10_000_000);
        assert_eq!(cands[0].prices_for(200_000).cache_read, 10_000_000);
    }

    #[test]
    fn ties_go_to_lower_latency() {
        let stats = StatsRegistry::default();
        let mut raw = table();
        for o in &mut raw.models[0].offerings {
            o.input_micro_usd_per_mtok = 1;
            o.output_micro_usd_per_mtok = 1;
        }
        let t = Table::compile(&raw, &stats).unwrap();
        let cands = &t.models["m"];
        cands[2].stats.observe_latency(5_000);
        cands[1].stats.observe_latency(9_000);
        let order = Table::rank(cands, 10, 10);
        assert_eq!(order, vec![2, 1, 0]);
    }

    #[test]
    fn authentication_by_hash_and_urls() {
        let t = Table::compile(&table(), &StatsRegistry::default()).unwrap();
        assert_eq!(&*t.authenticate("kp_test").unwrap().id, "k1");
        assert!(t.authenticate("kp_other").is_none());
        assert_eq!(
            t.models["m"][0].provider.chat_url.to_string(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        assert!(t.models["m"][0].auth.1.is_sensitive());
        let mut delta = table();
        delta.base_version = 2;
        assert!(Table::compile(&delta, &StatsRegistry::default()).is_err());
    }

    #[test]
    fn gemini_urls_name_the_model_and_method_and_never_the_secret() {
        let mut raw = table();
        raw.providers[0].protocol = pb::Protocol::Gemini as i32;
        raw.providers[0].base_url = "http://127.0.0.1:1/".into();
        raw.credentials[0].secret = "AIza-secret".into();
        let ids = [
            ("gemini-2.5-flash", "/v1beta/models/gemini-2.5-flash"),
            ("models/gemini-2.5-pro", "/v1beta/models/gemini-2.5-pro"),
            ("tunedModels/my-tune", "/v1beta/tunedModels/my-tune"),
            (
                "google/gemini 2:x?#%",
                "/v1beta/models/google/gemini%202%3Ax%3F%23%25",
            ),
        ];
        for (id, path) in ids {
            raw.models[0].offerings[0].upstream_model = id.into();
            let t = Table::compile(&raw, &StatsRegistry::default()).unwrap();
            let cand = t.models["m"]
                .iter()
                .find(|c| &*c.provider.name == "alpha")
                .unwrap();
            assert_eq!(cand.provider.protocol, Protocol::Gemini);
            assert_eq!(cand.auth.0, "x-goog-api-key");
            assert_eq!(cand.auth.1, "AIza-secret");
            for (call, method) in [
                (UpstreamCall::Generate, ":generateContent"),
                (UpstreamCall::Stream, ":streamGenerateContent?alt=sse"),
                (UpstreamCall::CountTokens, ":countTokens"),
            ] {
                let url = cand.upstream_url(call).unwrap().to_string();
                assert_eq!(url, format!("http://127.0.0.1:1{path}{method}"));
                assert!(!url.contains("AIza"));
            }
        }
        // Other protocols have one endpoint for every call.
        let t = Table::compile(&table(), &StatsRegistry::default()).unwrap();
        let cand = &t.models["m"][0];
        assert_eq!(
            cand.upstream_url(UpstreamCall::Stream).unwrap(),
            cand.provider.chat_url
        );
    }

    #[test]
    fn cache_prices_apply_to_cached_input() {
        let prices = Prices {
            input: 3_000_000,
            output: 15_000_000,
            cache_read: 300_000,
            cache_write: 3_750_000,
            multiplier_ppm: 1_000_000,
        };
        // 100 uncached ($0.0003) + 1,000 read ($0.0003) + 200 written ($0.00075) + 50 out ($0.00075).
        assert_eq!(
            prices.cost_nano(100, 1000, 200, 50),
            300_000 + 300_000 + 750_000 + 750_000
        );
        let mut raw = table();
        raw.models[0].offerings[0].cache_read_micro_usd_per_mtok = Some(1);
        let t = Table::compile(&raw, &StatsRegistry::default()).unwrap();
        let p = t.models["m"][0].prices();
        assert_eq!(
            (p.cache_read, p.cache_write),
            (1, 3_000_000),
            "unset cache write falls back to input"
        );
    }

    #[test]
    fn cost_arithmetic() {
        let cost_nano = |input, output, input_price, output_price, multiplier_ppm| {
            Prices {
                input: input_price,
                output: output_price,
                cache_read: input_price,
                cache_write: input_price,
                multiplier_ppm,
            }
            .cost_nano(input, 0, 0, output)
        };
        // 1,000 input at $0.28/M and 500 output at $0.42/M = $0.00028 + $0.00021 = 490,000 nano.
        assert_eq!(cost_nano(1000, 500, 280_000, 420_000, 1_000_000), 490_000);
        assert_eq!(cost_nano(1000, 500, 280_000, 420_000, 800_000), 392_000);
        assert_eq!(cost_nano(1, 0, 1, 0, 1_000_000), 0);
        assert_eq!(
            cost_nano(u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            u64::MAX
        );
    }
}
