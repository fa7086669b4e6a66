//! The model catalog, synced from each provider's own models API.
//!
//! Each provider with a catalog adapter (from its preset or `--catalog`) is fetched on start and
//! every `interval`; one adapter module per API shape turns the body into [`SyncedModel`]s
//! (upstream id, canonical `author/slug` name, price if the API carries one). A provider's last
//! good catalog is one record in the `catalogs` tree, replaced only by a successful sync: a
//! failed fetch or parse records its error and keeps the models. A sync that changes a catalog
//! has the route table recompiled (`Routes::changed`), which pushes it to every data plane.
//!
//! Providers are synced concurrently, each under its own timeout; a failure backs that provider
//! off (`backoff_base` doubling, capped at the interval) and touches nobody else.

mod deepinfra;
pub mod fetch;
mod gemini;
mod list;
mod openrouter;
pub mod presets;
mod together;
mod zenmux;

use crate::catalog::ProviderRec;
use crate::error::{Error, Result};
use crate::routes::Routes;
use crate::store::{self, CATALOGS, Store, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Every adapter name `--catalog` accepts.
pub const ADAPTERS: &[&str] = &[
    "openrouter",
    "zenmux",
    "together",
    "deepinfra",
    "list",
    "anthropic-list",
    "gemini-list",
];

pub fn adapter_known(name: &str) -> bool {
    ADAPTERS.contains(&name)
}

/// Prices from `min_prompt_tokens` prompt tokens up, in millionths of the currency per million
/// tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub min_prompt_tokens: u64,
    pub input: u64,
    pub output: u64,
    #[serde(default)]
    pub cache_read: Option<u64>,
    #[serde(default)]
    pub cache_write: Option<u64>,
}

/// A price in millionths of `currency` per million tokens; `tiers` are the higher prompt-size
/// tiers (the base fields are the tier from 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub currency: String,
    pub input: u64,
    pub output: u64,
    #[serde(default)]
    pub cache_read: Option<u64>,
    #[serde(default)]
    pub cache_write: Option<u64>,
    #[serde(default)]
    pub tiers: Vec<Tier>,
}

impl Price {
    pub fn usd(input: u64, output: u64) -> Price {
        Price {
            currency: "USD".into(),
            input,
            output,
            cache_read: None,
            cache_write: None,
            tiers: Vec::new(),
        }
    }
}

/// One model of a provider's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedModel {
    /// The provider's own id, sent upstream.
    pub id: String,
    /// The client-facing `author/slug` name.
    pub canonical: String,
    /// `None`: the list carries no (usable) price.
    #[serde(default)]
    pub price: Option<Price>,
}

/// A provider's last good catalog and the outcome of its last sync attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRec {
    pub provider: String,
    pub adapter: String,
    #[serde(default)]
    pub models: Vec<SyncedModel>,
    #[serde(default)]
    pub last_success_ms: i64,
    #[serde(default)]
    pub last_attempt_ms: i64,
    /// Empty when the last attempt succeeded.
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// Parses a models-list body with `adapter`; `names` picks the id → canonical mapping table.
pub fn parse(adapter: &str, body: &[u8], names: &str) -> Result<Vec<SyncedModel>, String> {
    match adapter {
        "openrouter" => openrouter::parse(body, names),
        "zenmux" => zenmux::parse(body, names),
        "together" => together::parse(body, names),
        "deepinfra" => deepinfra::parse(body, names),
        "list" | "anthropic-list" => list::parse(body, names),
        "gemini-list" => gemini::parse(body, names),
        other => Err(format!("catalog adapter {other:?} is unknown")),
    }
}

/// The models of a list body: the root array, or the root object's `data` array.
fn models_array(body: &[u8]) -> Result<Vec<Value>, String> {
    let root: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the models list is not JSON ({e}); it starts with {:?}",
            fetch::excerpt(&body[..body.len().min(60)])
        )
    })?;
    match root {
        Value::Array(items) => Ok(items),
        Value::Object(mut obj) => match obj.remove("data") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err("the models list has no `data` array".into()),
        },
        _ => Err("the models list is neither an object nor an array".into()),
    }
}

fn model_id(m: &Value, i: usize) -> Result<&str, String> {
    m.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_whitespace))
        .ok_or_else(|| format!("model #{i} has no valid string `id`"))
}

/// Every model of a list body that `keep` accepts, with the price `price` reads from the object
/// `pricing` finds in it (missing or `null` there: the price is unknown, not zero). Errors name
/// the model.
fn priced_models(
    body: &[u8],
    names: &str,
    keep: impl Fn(&Value) -> bool,
    pricing: impl Fn(&Value) -> Option<&Value>,
    price: impl Fn(&str, &Value) -> Result<Option<Price>, String>,
) -> Result<Vec<SyncedModel>, String> {
    let mut out = Vec::new();
    for (i, m) in models_array(body)?.iter().enumerate() {
        let id = model_id(m, i)?;
        if !keep(m) {
            continue;
        }
        let price = match pricing(m) {
            None | Some(Value::Null) => None,
            Some(p) => price(id, p).map_err(|e| field_error(id, &e))?,
        };
        out.push(SyncedModel {
            canonical: presets::canonical(names, id),
            id: id.to_string(),
            price,
        });
    }
    Ok(out)
}

/// A price field in USD per million tokens (a string or a number) as micro-USD per million;
/// `path` is where the field sits, for errors.
fn per_mtok(p: &Value, path: &str, field: &str) -> Result<Option<u64>, String> {
    let Some(text) = string_or_number(p, field)? else {
        return Ok(None);
    };
    crate::money::parse_scaled(&text, 6)
        .map(Some)
        .map_err(|e| format!("{path}{field} {text:?} {e}"))
}

fn field_error(id: &str, err: &str) -> String {
    format!("model {id:?}: {err}")
}

/// A price field that providers write as a string or a number; `None` if missing or null.
fn string_or_number(v: &Value, field: &str) -> Result<Option<String>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!("{field} is neither a string nor a number")),
    }
}

impl Store {
    pub fn catalog(&self, provider: &str) -> Result<Option<CatalogRec>> {
        store::get(&self.catalogs, CATALOGS, provider)
    }

    pub fn catalogs(&self) -> Result<Vec<CatalogRec>> {
        store::scan(&self.catalogs, CATALOGS, b"")
    }

    pub fn put_catalog(&self, rec: &CatalogRec) -> Result<()> {
        self.catalogs
            .insert(rec.provider.as_bytes(), store::encode(rec))?;
        Ok(())
    }
}

/// How the sync loop runs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `None`: no automatic sync (only `keyplanectl catalog sync`).
    pub interval: Option<Duration>,
    /// Per provider, the whole fetch (every page) and parse.
    pub timeout: Duration,
    /// First retry delay after a failure; doubles per failure, capped at the interval.
    pub backoff_base: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval: Some(Duration::from_secs(300)),
            timeout: Duration::from_secs(30),
            backoff_base: Duration::from_secs(5),
        }
    }
}

/// A provider's catalog status with when the loop will next sync it.
pub struct Status {
    pub rec: CatalogRec,
    pub next_sync_ms: i64,
}

pub struct Syncer {
    store: Arc<Store>,
    routes: Arc<Routes>,
    fetcher: fetch::Fetcher,
    config: SyncConfig,
    /// Provider name → when the loop syncs it next (Unix ms). Missing: due now.
    next_due: Mutex<HashMap<String, i64>>,
    /// One sync at a time per provider, so a manual sync and the loop never fetch the same
    /// provider twice at once, while a slow provider holds up nobody else.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wake: Notify,
}

/// The provider's adapter, if it has one.
fn adapter_of(p: &ProviderRec) -> Option<&str> {
    p.catalog.as_deref().filter(|a| !a.is_empty())
}

impl Syncer {
    pub fn new(store: Arc<Store>, routes: Arc<Routes>, config: SyncConfig) -> Arc<Syncer> {
        Arc::new(Syncer {
            fetcher: fetch::Fetcher::new(config.timeout.min(Duration::from_secs(10))),
            store,
            routes,
            config,
            next_due: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    /// Says a provider was added: the loop looks at it now rather than at its next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Syncs `only` (or every provider with an adapter) now and answers with their status.
    pub async fn sync_now(&self, only: Option<&str>) -> Result<Vec<Status>> {
        let providers = self.targets(only)?;
        self.sync_round(providers).await?;
        self.status(only)
    }

    fn targets(&self, only: Option<&str>) -> Result<Vec<ProviderRec>> {
        match only {
            Some(name) => {
                let p = self
                    .store
                    .provider(name)?
                    .ok_or_else(|| Error::NotFound(format!("provider {name:?} does not exist")))?;
                if adapter_of(&p).is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "provider {name:?} has no catalog adapter: add it with --preset or --catalog"
                    )));
                }
                Ok(vec![p])
            }
            None => Ok(self
                .store
                .providers()?
                .into_iter()
                .filter(|p| adapter_of(p).is_some())
                .collect()),
        }
    }

    /// Status of `only`, or of every provider with an adapter.
    pub fn status(&self, only: Option<&str>) -> Result<Vec<Status>> {
        let providers = self.targets(only)?;
        let due = self.next_due.lock().unwrap_or_else(PoisonError::into_inner);
        providers
            .into_iter()
            .map(|p| {
                let rec = self.store.catalog(&p.name)?.unwrap_or_else(|| CatalogRec {
                    provider: p.name.clone(),
                    adapter: adapter_of(&p).unwrap_or_default().to_string(),
                    ..CatalogRec::default()
                });
                Ok(Status {
                    next_sync_ms: if self.config.interval.is_some() {
                        due.get(&p.name).copied().unwrap_or(0)
                    } else {
                        0
                    },
                    rec,
                })
            })
            .collect()
    }

    async fn sync_round(&self, providers: Vec<ProviderRec>) -> Result<()> {
        let results =
            futures_util::future::join_all(providers.iter().map(|p| self.sync_one(p))).await;
        let mut changed = false;
        for r in results {
            changed |= r?;
        }
        self.store.flush().await?;
        if changed {
            self.routes.changed();
        }
        Ok(())
    }

    /// Fetches and parses one provider's catalog and records the outcome. `Ok(true)` when the
    /// catalog changed. A fetch or parse failure is an `Ok(false)` with the error recorded; only
    /// a store failure is an `Err`.
    async fn sync_one(&self, p: &ProviderRec) -> Result<bool> {
        let lock = {
            let mut map = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(p.name.clone()).or_default())
        };
        let _one_at_a_time = lock.lock().await;
        let adapter = adapter_of(p).unwrap_or_default().to_string();
        let names = p.preset.clone().unwrap_or_else(|| adapter.clone());
        let started = std::time::Instant::now();
        let outcome = match tokio::time::timeout(self.config.timeout, self.fetch(p, &adapter)).await
        {
            Ok(Ok(bodies)) => bodies
                .iter()
                .map(|b| parse(&adapter, b, &names))
                .collect::<Result<Vec<_>, _>>()
                .map(|pages| pages.into_iter().flatten().collect::<Vec<_>>()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "timed out after {} s",
                self.config.timeout.as_secs_f64()
            )),
        };
        let now = now_ms();
        let old = self.store.catalog(&p.name)?;
        let mut rec = old.clone().unwrap_or_else(|| CatalogRec {
            provider: p.name.clone(),
            ..CatalogRec::default()
        });
        rec.adapter = adapter;
        rec.last_attempt_ms = now;
        let changed = match outcome {
            Ok(mut models) => {
                models.sort_by(|a, b| a.id.cmp(&b.id));
                models.dedup_by(|a, b| a.id == b.id);
                let changed = old.as_ref().is_none_or(|o| o.models != models);
                tracing::info!(
                    provider = %p.name,
                    models = models.len(),
                    changed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "catalog synced"
                );
                rec.models = models;
                rec.last_success_ms = now;
                rec.last_error.clear();
                rec.consecutive_failures = 0;
                changed
            }
            Err(err) => {
                tracing::warn!(provider = %p.name, error = %err, "catalog sync failed; keeping the last good catalog");
                rec.last_error = err;
                rec.consecutive_failures = rec.consecutive_failures.saturating_add(1);
                false
            }
        };
        self.schedule(&rec, now);
        self.store.put_catalog(&rec)?;
        Ok(changed)
    }

    fn schedule(&self, rec: &CatalogRec, now: i64) {
        let Some(interval) = self.config.interval else {
            return;
        };
        let delay = if rec.consecutive_failures == 0 {
            interval
        } else {
            let factor = 1u32 << rec.consecutive_failures.saturating_sub(1).min(16);
            self.config
                .backoff_base
                .saturating_mul(factor)
                .min(interval)
        };
        let mut due = self.next_due.lock().unwrap_or_else(PoisonError::into_inner);
        due.insert(rec.provider.clone(), now + delay.as_millis() as i64);
    }

    /// The body (or bodies, one per page) of the provider's models list.
    async fn fetch(&self, p: &ProviderRec, adapter: &str) -> Result<Vec<Vec<u8>>, String> {
        let secret = self
            .store
            .credentials()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|c| c.provider == p.name && c.state == "active")
            .map(|c| self.store.credential_secret(&c))
            .transpose()
            .map_err(|e| e.to_string())?;
        let mut headers = Vec::new();
        if let Some(secret) = secret {
            let value = if p.protocol.bearer_auth() {
                format!("Bearer {}", secret.expose())
            } else {
                secret.expose().to_string()
            };
            let mut value = http::HeaderValue::from_str(&value)
                .map_err(|_| "the credential is not a valid header value".to_string())?;
            value.set_sensitive(true);
            headers.push((p.protocol.secret_header(), value));
        }
        let base = p.base_url.trim_end_matches('/');
        if adapter == "gemini-list" {
            return self.fetch_gemini_pages(base, &headers).await;
        }
        if adapter != "anthropic-list" {
            return Ok(vec![
                self.fetcher
                    .get(&format!("{base}/models"), &headers)
                    .await?,
            ]);
        }
        headers.push((
            http::HeaderName::from_static("anthropic-version"),
            http::HeaderValue::from_static("2023-06-01"),
        ));
        let mut pages = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..50 {
            let url = match &after {
                Some(id) => format!("{base}/v1/models?limit=1000&after_id={id}"),
                None => format!("{base}/v1/models?limit=1000"),
            };
            let body = self.fetcher.get(&url, &headers).await?;
            after = list::anthropic_next(&body);
            pages.push(body);
            if after.is_none() {
                break;
            }
        }
        Ok(pages)
    }

    /// Every page of a Gemini models list, following `nextPageToken` at most
    /// [`gemini::MAX_PAGES`] times; a list longer than that is an error, not a partial catalog.
    async fn fetch_gemini_pages(
        &self,
        base: &str,
        headers: &[(http::HeaderName, http::HeaderValue)],
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..gemini::MAX_PAGES {
            let body = self
                .fetcher
                .get(&gemini::page_url(base, token.as_deref()), headers)
                .await?;
            let next = gemini::next_page(&body);
            pages.push(body);
            match next {
                // A token that repeats would page for ever.
                Some(t) if token.as_deref() == Some(t.as_str()) => {
                    return Err("the models list repeats its page token".into());
                }
                Some(t) => token = Some(t),
                None => return Ok(pages),
            }
        }
        Err(format!(
            "the models list has more than {} pages",
            gemini::MAX_PAGES
        ))
    }

    /// Syncs every due provider, on start and then on schedule, until `cancel` fires. Does
    /// nothing without an interval.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let Some(interval) = self.config.interval else {
            return;
        };
        loop {
            let now = now_ms();
            let providers = match self.targets(None) {
                Ok(list) => list,
                Err(err) => {
                    tracing::error!(error = %err, "cannot list providers for catalog sync");
                    Vec::new()
                }
            };
            let due: Vec<ProviderRec> = {
                let next = self.next_due.lock().unwrap_or_else(PoisonError::into_inner);
                providers
                    .into_iter()
                    .filter(|p| next.get(&p.name).is_none_or(|&t| t <= now))
                    .collect()
            };
            if !due.is_empty() {
                tokio::select! {
                    r = self.sync_round(due) => if let Err(err) = r {
                        tracing::error!(error = %err, "catalog sync round failed");
                    },
                    () = cancel.cancelled() => return,
                }
            }
            let earliest = {
                let next = self.next_due.lock().unwrap_or_else(PoisonError::into_inner);
                next.values().copied().min()
            };
            let wait = earliest
                .map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)))
                .unwrap_or(interval)
                .clamp(Duration::from_millis(200), Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_adapter_is_an_error() {
        assert!(super::parse("nope", b"{}", "x").is_err());
        assert!(super::adapter_known("openrouter"));
    }
}
