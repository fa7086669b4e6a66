//! Route tables: compiled from the store on every change and published to every subscriber.
//!
//! Publishing goes through a `watch` channel: a subscriber that is slow (or dead) only ever misses
//! intermediate versions, it never holds up the compiler or the other subscribers.

use crate::catalog::Protocol;
use crate::error::Result;
use crate::store::{ROUTE_VERSION_KEY, Store, now_ms};
use keyplane_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub struct Routes {
    store: Arc<Store>,
    dirty: Notify,
    tx: watch::Sender<Arc<pb::RouteTable>>,
}

impl Routes {
    /// Compiles the first table (with a new version) before anything can subscribe.
    pub async fn start(store: Arc<Store>) -> Result<Arc<Routes>> {
        let table = compile_new_version(&store).await?;
        let (tx, _) = watch::channel(Arc::new(table));
        Ok(Arc::new(Routes {
            store,
            dirty: Notify::new(),
            tx,
        }))
    }

    /// Says that the store changed. Cheap; bursts of changes coalesce into one compile.
    pub fn changed(&self) {
        self.dirty.notify_one();
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<pb::RouteTable>> {
        self.tx.subscribe()
    }

    /// Whether an exhausted credential's quota reset since `since_ms`.
    fn quota_reset_since(&self, since_ms: i64) -> bool {
        let now = now_ms();
        self.store.credentials().is_ok_and(|creds| {
            creds.iter().any(|c| {
                c.state == "exhausted"
                    && matches!(c.effective_state(now), ("active", at) if at > since_ms)
            })
        })
    }

    pub fn current(&self) -> Arc<pb::RouteTable> {
        self.tx.borrow().clone()
    }

    /// Recompiles after every [`Routes::changed`] until `cancel` fires. A failed compile is logged
    /// and retried on the next change or after a short delay; subscribers keep the last good table.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut compiled_at_ms = now_ms();
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                // An exhausted credential whose quota period has reset comes back by itself.
                () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
                    if !self.quota_reset_since(compiled_at_ms) {
                        continue;
                    }
                }
                () = cancel.cancelled() => return,
            }
            compiled_at_ms = now_ms();
            match compile_new_version(&self.store).await {
                Ok(table) => {
                    crate::metrics::COUNTERS.route_tables_compiled.inc();
                    tracing::info!(
                        route_version = table.route_version,
                        models = table.models.len(),
                        "route table compiled"
                    );
                    self.tx.send_replace(Arc::new(table));
                }
                Err(err) => {
                    tracing::error!(error = %err, "route table compile failed; keeping the last one");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => self.dirty.notify_one(),
                        () = cancel.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Takes the next route version (durably, so versions never repeat across restarts) and compiles.
async fn compile_new_version(store: &Arc<Store>) -> Result<pb::RouteTable> {
    let next = store
        .meta
        .update_and_fetch(ROUTE_VERSION_KEY, |old| {
            let old = old
                .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
                .map_or(0, u64::from_be_bytes);
            Some((old + 1).to_be_bytes().to_vec())
        })?
        .and_then(|raw| <[u8; 8]>::try_from(raw.as_ref()).ok())
        .map_or(1, u64::from_be_bytes);
    store.flush().await?;
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || compile(&store, next))
        .await
        .map_err(|e| crate::error::Error::Internal(format!("compile task failed: {e}")))?
}

fn route_offering(provider_index: u32, e: &crate::prices::Effective) -> pb::RouteOffering {
    let usd = e.usd.as_ref();
    pb::RouteOffering {
        provider_index,
        upstream_model: if e.upstream_model == e.model {
            String::new()
        } else {
            e.upstream_model.clone()
        },
        input_micro_usd_per_mtok: usd.map_or(0, |p| p.input),
        output_micro_usd_per_mtok: usd.map_or(0, |p| p.output),
        cache_read_micro_usd_per_mtok: usd.and_then(|p| p.cache_read),
        cache_write_micro_usd_per_mtok: usd.and_then(|p| p.cache_write),
        price_unknown: usd.is_none(),
        tiers: usd.map(|p| route_tiers(&p.tiers)).unwrap_or_default(),
    }
}

pub fn route_tiers(tiers: &[crate::catalog_sync::Tier]) -> Vec<pb::RoutePriceTier> {
    tiers
        .iter()
        .map(|t| pb::RoutePriceTier {
            min_prompt_tokens: t.min_prompt_tokens,
            input_micro_usd_per_mtok: t.input,
            output_micro_usd_per_mtok: t.output,
            cache_read_micro_usd_per_mtok: t.cache_read,
            cache_write_micro_usd_per_mtok: t.cache_write,
        })
        .collect()
}

/// Builds the table for `version` from the store as it is now.
pub fn compile(store: &Store, version: u64) -> Result<pb::RouteTable> {
    let providers = store.providers()?;
    let index: HashMap<&str, u32> = providers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i as u32))
        .collect();

    let mut credentials = Vec::new();
    for cred in store.credentials()? {
        let Some(&provider_index) = index.get(cred.provider.as_str()) else {
            continue;
        };
        // Invalid and exhausted credentials stay out until an operator enables them; a cooldown
        // or open circuit travels as a time before which every node skips the credential.
        let (state, state_since_ms) = cred.effective_state(now_ms());
        let blocked_until_ms = match state {
            "active" => 0,
            "cooldown" | "circuit_open" => cred.state_until_ms,
            _ => continue,
        };
        credentials.push(pb::RouteCredential {
            blocked_until_ms,
            state_since_ms,
            secret: store.credential_secret(&cred)?.expose().to_string(),
            id: cred.id,
            provider_index,
            multiplier_ppm: cred.multiplier_ppm,
            label: cred.label,
        });
    }

    let mut models: Vec<pb::RouteModel> = Vec::new();
    for offering in store.effective_offerings(None)? {
        let Some(&provider_index) = index.get(offering.provider.as_str()) else {
            continue;
        };
        let route_offering = route_offering(provider_index, &offering);
        // Effective offerings come sorted by model, so one model's offerings are adjacent.
        match models.last_mut() {
            Some(last) if last.name == offering.model => last.offerings.push(route_offering),
            _ => models.push(pb::RouteModel {
                name: offering.model,
                offerings: vec![route_offering],
            }),
        }
    }
    // Aliases: the target's offerings under a second name, with explicit upstream ids. A real
    // model of the same name wins over an alias.
    let aliases = store.aliases()?;
    if !aliases.is_empty() {
        let by_name: HashMap<&str, usize> = models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let mut extra = Vec::new();
        for alias in aliases {
            if by_name.contains_key(alias.alias.as_str()) {
                continue;
            }
            let Some(&target) = by_name.get(alias.target.as_str()) else {
                continue;
            };
            let target = &models[target];
            let offerings = target
                .offerings
                .iter()
                .map(|o| pb::RouteOffering {
                    upstream_model: if o.upstream_model.is_empty() {
                        target.name.clone()
                    } else {
                        o.upstream_model.clone()
                    },
                    ..o.clone()
                })
                .collect();
            extra.push(pb::RouteModel {
                name: alias.alias,
                offerings,
            });
        }
        models.extend(extra);
    }

    let mut keys = Vec::new();
    for key in store.keys()? {
        if key.revoked_at_ms.is_some() {
            continue;
        }
        let Ok(sha256) = hex::decode(&key.sha256) else {
            tracing::error!(key_id = %key.id, "client key record has a malformed hash; skipped");
            continue;
        };
        let policy = crate::grpc::convert_policy(&key.policy);
        keys.push(pb::RouteClientKey {
            id: key.id,
            sha256,
            policy: Some(policy),
        });
    }

    Ok(pb::RouteTable {
        route_version: version,
        base_version: 0,
        generated_at_ms: now_ms(),
        providers: providers
            .into_iter()
            .map(|p| pb::RouteProvider {
                name: p.name,
                protocol: match p.protocol {
                    Protocol::Openai => pb::Protocol::Openai,
                    Protocol::Anthropic => pb::Protocol::Anthropic,
                    Protocol::OpenaiResponses => pb::Protocol::OpenaiResponses,
                    Protocol::Gemini => pb::Protocol::Gemini,
                } as i32,
                base_url: p.base_url,
                preset: p.preset.unwrap_or_default(),
                connect_timeout_ms: p.timeouts.connect_ms,
                first_byte_timeout_ms: p.timeouts.first_byte_ms,
                idle_timeout_ms: p.timeouts.idle_ms,
                max_body_bytes: p.timeouts.max_body_bytes,
            })
            .collect(),
        credentials,
        models,
        keys,
        chains: store
            .chains()?
            .into_iter()
            .map(|c| pb::RouteChain {
                name: c.name,
                models: c.models,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SetModel;
    use crate::creds::Secret;
    use crate::store::testing::open_temp;

    #[test]
    fn table_is_normalized_and_omits_revoked_keys() {
        let (_d, store) = open_temp();
        store
            .add_provider("a", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        store
            .add_provider("b", "anthropic", "http://127.0.0.1:2")
            .unwrap();
        store
            .add_credential("b", "x", "3", &Secret::new("sk-b".into()))
            .unwrap();
        store
            .add_provider_with(&crate::catalog::AddProvider {
                name: "c",
                protocol: "openai-responses",
                base_url: "http://127.0.0.1:3/v1",
                preset: "openai",
                catalog: "none",
                ..Default::default()
            })
            .unwrap();
        store
            .add_provider_with(&crate::catalog::AddProvider {
                name: "d",
                protocol: "",
                base_url: "http://127.0.0.1:4",
                preset: "gemini",
                catalog: "none",
                ..Default::default()
            })
            .unwrap();
        for (provider, upstream) in [("a", ""), ("b", "claude-x")] {
            store
                .set_model(&SetModel {
                    model: "m1",
                    provider,
                    upstream_model: upstream,
                    input_usd_per_mtok: "1",
                    output_usd_per_mtok: "2",
                    cache_read_usd_per_mtok: "",
                    cache_write_usd_per_mtok: "",
                })
                .unwrap();
        }
        store.create_key("live").unwrap();
        store.create_key("gone").unwrap();
        store.revoke_key("gone").unwrap();

        let table = compile(&store, 9).unwrap();
        assert_eq!(table.route_version, 9);
        assert_eq!(table.providers.len(), 4);
        assert_eq!(table.providers[3].protocol, pb::Protocol::Gemini as i32);
        assert_eq!(table.providers[3].preset, "gemini");
        assert_eq!(table.providers[3].base_url, "http://127.0.0.1:4");
        assert_eq!(table.providers[1].protocol, pb::Protocol::Anthropic as i32);
        assert_eq!(
            table.providers[2].protocol,
            pb::Protocol::OpenaiResponses as i32
        );
        assert_eq!(table.providers[0].preset, "");
        assert_eq!(table.providers[2].preset, "openai");
        assert_eq!(table.credentials.len(), 1);
        assert_eq!(table.credentials[0].provider_index, 1);
        assert_eq!(table.credentials[0].secret, "sk-b");
        assert_eq!(table.credentials[0].multiplier_ppm, 3_000_000);
        assert_eq!(table.models.len(), 1);
        let offerings = &table.models[0].offerings;
        assert_eq!(offerings.len(), 2);
        assert_eq!(offerings[0].upstream_model, "");
        assert_eq!(offerings[1].upstream_model, "claude-x");
        assert_eq!(offerings[1].input_micro_usd_per_mtok, 1_000_000);
        assert_eq!(table.keys.len(), 1);
        assert_eq!(table.keys[0].sha256.len(), 32);
    }

    #[tokio::test]
    async fn versions_increase_and_changes_are_published() {
        let (_d, store) = open_temp();
        let store = Arc::new(store);
        let routes = Routes::start(Arc::clone(&store)).await.unwrap();
        let mut rx = routes.subscribe();
        let first = rx.borrow_and_update().route_version;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&routes).run(cancel.clone()));
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        routes.changed();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let second = rx.borrow_and_update().clone();
        assert!(second.route_version > first);
        assert_eq!(second.providers.len(), 1);
        cancel.cancel();
        task.await.unwrap();
    }
}
