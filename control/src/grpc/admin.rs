//! The Admin service: what keyplanectl calls.

use super::convert;
use crate::catalog::{AddProvider, ProviderChange, SetModel};
use crate::catalog_sync::Syncer;
use crate::creds::Secret;
use crate::error::Error;
use crate::nodes::Registry;
use crate::routes::Routes;
use crate::store::Store;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::admin_server::Admin;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    pub store: Arc<Store>,
    pub routes: Arc<Routes>,
    pub registry: Arc<Registry>,
    pub syncer: Arc<Syncer>,
}

type Reply<T> = Result<Response<T>, Status>;

impl AdminService {
    /// `usage --since/--until/--by`: grouped from the stored records.
    fn grouped_usage(
        &self,
        key_id: Option<&str>,
        req: &pb::QueryUsageRequest,
        names: &HashMap<String, String>,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<pb::UsageRow>, Status> {
        let by = req.by.as_str();
        if !matches!(by, "" | "key" | "model" | "provider" | "credential" | "day") {
            return Err(Status::invalid_argument(format!(
                "--by {by:?} is not one of key, model, provider, credential, day"
            )));
        }
        let group_of = |r: &crate::ledger::UsageRec| -> Vec<String> {
            match by {
                "key" => vec![r.key_id.clone()],
                "model" => vec![r.model.clone()],
                "provider" => vec![r.provider.clone()],
                "credential" => vec![r.provider.clone(), r.credential_id.clone()],
                "day" => vec![crate::period::day_text(crate::period::day_of(
                    r.started_at_ms,
                ))],
                _ => vec![
                    r.key_id.clone(),
                    r.model.clone(),
                    r.provider.clone(),
                    r.credential_id.clone(),
                ],
            }
        };
        let groups = self
            .store
            .usage_grouped(key_id, req.since_ms, req.until_ms, &group_of)?;
        let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        Ok(groups
            .into_iter()
            .map(|(g, c)| {
                let mut row = pb::UsageRow {
                    requests: c.requests,
                    input_tokens: c.input_tokens,
                    output_tokens: c.output_tokens,
                    cost_nano_usd: c.cost_nano_usd,
                    reported_cost_nano_usd: c.reported_cost_nano_usd,
                    computed_cost_nano_usd: c.computed_cost_nano_usd(),
                    reported_requests: c.reported_requests,
                    ..Default::default()
                };
                match (by, g.as_slice()) {
                    ("key", [k]) => {
                        row.key = name(k);
                        row.key_id = k.clone();
                        row.group = row.key.clone();
                    }
                    ("model", [m]) => {
                        row.model = m.clone();
                        row.group = m.clone();
                    }
                    ("provider", [p]) => {
                        row.provider = p.clone();
                        row.group = p.clone();
                    }
                    ("credential", [p, c]) => {
                        row.provider = p.clone();
                        row.credential = c.clone();
                        row.credential_label = labels.get(c).cloned().unwrap_or_default();
                        row.group = c.clone();
                    }
                    ("day", [d]) => row.group = d.clone(),
                    (_, [k, m, p, c]) => {
                        row.key = name(k);
                        row.key_id = k.clone();
                        row.model = m.clone();
                        row.provider = p.clone();
                        row.credential = c.clone();
                        row.credential_label = labels.get(c).cloned().unwrap_or_default();
                    }
                    _ => {}
                }
                row
            })
            .collect())
    }

    /// After a successful write: make it durable before answering, then have the route table
    /// recompiled.
    async fn committed(&self) -> Result<(), Status> {
        self.store.flush().await?;
        self.routes.changed();
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_provider(&self, req: Request<pb::AddProviderRequest>) -> Reply<pb::Provider> {
        let req = req.into_inner();
        let rec = self.store.add_provider_with(&AddProvider {
            name: &req.name,
            protocol: &req.protocol,
            base_url: &req.base_url,
            preset: &req.preset,
            catalog: &req.catalog,
            timeouts: crate::catalog::Timeouts {
                connect_ms: req.connect_timeout_ms,
                first_byte_ms: req.first_byte_timeout_ms,
                idle_ms: req.idle_timeout_ms,
                max_body_bytes: req.max_body_bytes,
            },
        })?;
        self.committed().await?;
        self.syncer.wake();
        tracing::info!(
            provider = %rec.name,
            protocol = rec.protocol.as_str(),
            catalog = rec.catalog.as_deref().unwrap_or(""),
            "provider added"
        );
        Ok(Response::new(convert::provider(rec)))
    }

    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Reply<pb::ListProvidersResponse> {
        let providers = self.store.providers()?;
        Ok(Response::new(pb::ListProvidersResponse {
            providers: providers.into_iter().map(convert::provider).collect(),
        }))
    }

    async fn add_credential(
        &self,
        req: Request<pb::AddCredentialRequest>,
    ) -> Reply<pb::Credential> {
        let req = req.into_inner();
        let secret = Secret::new(req.secret);
        let rec = self.store.add_credential_with(
            &req.provider,
            &req.label,
            &req.multiplier,
            &secret,
            &req.quota_resets,
        )?;
        self.committed().await?;
        tracing::info!(provider = %rec.provider, credential_id = %rec.id, "credential added");
        Ok(Response::new(convert::credential(rec)))
    }

    async fn list_credentials(
        &self,
        req: Request<pb::ListCredentialsRequest>,
    ) -> Reply<pb::ListCredentialsResponse> {
        let filter = req.into_inner().provider;
        if !filter.is_empty() && self.store.provider(&filter)?.is_none() {
            return Err(Error::NotFound(format!("provider {filter:?} does not exist")).into());
        }
        let credentials = self
            .store
            .credentials()?
            .into_iter()
            .filter(|c| filter.is_empty() || c.provider == filter)
            .map(convert::credential)
            .collect();
        Ok(Response::new(pb::ListCredentialsResponse { credentials }))
    }

    async fn set_model(&self, req: Request<pb::SetModelRequest>) -> Reply<pb::ModelOffering> {
        let req = req.into_inner();
        let rec = self.store.set_model(&SetModel {
            model: &req.model,
            provider: &req.provider,
            upstream_model: &req.upstream_model,
            input_usd_per_mtok: &req.input_usd_per_mtok,
            output_usd_per_mtok: &req.output_usd_per_mtok,
            cache_read_usd_per_mtok: &req.cache_read_usd_per_mtok,
            cache_write_usd_per_mtok: &req.cache_write_usd_per_mtok,
        })?;
        self.committed().await?;
        tracing::info!(model = %rec.model, provider = %rec.provider, "model offering set");
        Ok(Response::new(convert::offering(rec)))
    }

    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Reply<pb::ListModelsResponse> {
        let model = req.into_inner().model;
        let filter = (!model.is_empty()).then_some(model.as_str());
        let mut offerings = self.store.effective_offerings(filter)?;
        // A client-facing alias lists its target's offerings under its own name.
        if let Some(name) = filter
            && offerings.is_empty()
            && let Some(alias) = self.store.aliases()?.into_iter().find(|a| a.alias == name)
        {
            offerings = self.store.effective_offerings(Some(&alias.target))?;
            for o in &mut offerings {
                o.model = alias.alias.clone();
            }
        }
        Ok(Response::new(pb::ListModelsResponse {
            offerings: offerings.into_iter().map(convert::effective).collect(),
        }))
    }

    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Reply<pb::CreateKeyResponse> {
        let req = req.into_inner();
        let name = req.name;
        let (rec, key) = self
            .store
            .create_key_with(&name, &convert::policy_input(req.policy))?;
        self.committed().await?;
        tracing::info!(key_name = %rec.name, client_key_id = %rec.id, "client key created");
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(convert::client_key(rec)),
            secret: key.expose().to_string(),
        }))
    }

    async fn list_keys(&self, _: Request<pb::ListKeysRequest>) -> Reply<pb::ListKeysResponse> {
        let keys = self.store.keys()?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.into_iter().map(convert::client_key).collect(),
        }))
    }

    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> Reply<pb::ClientKey> {
        let name = req.into_inner().name;
        let rec = self.store.revoke_key(&name)?;
        self.committed().await?;
        tracing::info!(key_name = %rec.name, client_key_id = %rec.id, "client key revoked");
        Ok(Response::new(convert::client_key(rec)))
    }

    async fn query_usage(
        &self,
        req: Request<pb::QueryUsageRequest>,
    ) -> Reply<pb::QueryUsageResponse> {
        let req = req.into_inner();
        let key = req.key.clone();
        let key_id = if key.is_empty() {
            None
        } else {
            let rec = self
                .store
                .key_by_name(&key)?
                .ok_or_else(|| Error::NotFound(format!("no key named {key:?}")))?;
            Some(rec.id)
        };
        let names: HashMap<String, String> = self
            .store
            .keys()?
            .into_iter()
            .map(|k| (k.id, k.name))
            .collect();
        let labels: HashMap<String, String> = self
            .store
            .credentials()?
            .into_iter()
            .map(|c| (c.id, c.label))
            .collect();
        if req.since_ms > 0 || req.until_ms > 0 || !req.by.is_empty() {
            let rows = self.grouped_usage(key_id.as_deref(), &req, &names, &labels)?;
            return Ok(Response::new(pb::QueryUsageResponse { rows }));
        }
        let rows = self
            .store
            .usage_totals(key_id.as_deref())?
            .into_iter()
            .map(|t| pb::UsageRow {
                key: names
                    .get(&t.key_id)
                    .cloned()
                    .unwrap_or_else(|| t.key_id.clone()),
                credential_label: labels.get(&t.credential_id).cloned().unwrap_or_default(),
                key_id: t.key_id,
                model: t.model,
                provider: t.provider,
                credential: t.credential_id,
                requests: t.counts.requests,
                input_tokens: t.counts.input_tokens,
                output_tokens: t.counts.output_tokens,
                cost_nano_usd: t.counts.cost_nano_usd,
                reported_cost_nano_usd: t.counts.reported_cost_nano_usd,
                computed_cost_nano_usd: t.counts.computed_cost_nano_usd(),
                reported_requests: t.counts.reported_requests,
                group: String::new(),
            })
            .collect();
        Ok(Response::new(pb::QueryUsageResponse { rows }))
    }

    // --- health, chains, limits (issue 7) ---

    async fn enable_credential(
        &self,
        req: Request<pb::EnableCredentialRequest>,
    ) -> Reply<pb::Credential> {
        let id = req.into_inner().id;
        let rec = self.store.enable_credential(&id)?;
        self.committed().await?;
        tracing::info!(credential_id = %rec.id, "credential enabled");
        Ok(Response::new(convert::credential(rec)))
    }

    async fn set_credential(
        &self,
        req: Request<pb::SetCredentialRequest>,
    ) -> Reply<pb::Credential> {
        let req = req.into_inner();
        let rec = self.store.set_credential(
            &req.id,
            req.multiplier.as_deref(),
            req.quota_resets.as_deref(),
            req.label.as_deref(),
        )?;
        self.committed().await?;
        tracing::info!(credential_id = %rec.id, "credential set");
        Ok(Response::new(convert::credential(rec)))
    }

    async fn disable_credential(
        &self,
        req: Request<pb::DisableCredentialRequest>,
    ) -> Reply<pb::Credential> {
        let req = req.into_inner();
        let rec = self.store.disable_credential(&req.id, &req.reason)?;
        self.committed().await?;
        tracing::info!(credential_id = %rec.id, "credential disabled");
        Ok(Response::new(convert::credential(rec)))
    }

    async fn set_provider(&self, req: Request<pb::SetProviderRequest>) -> Reply<pb::Provider> {
        let req = req.into_inner();
        let rec = self.store.set_provider(&ProviderChange {
            name: &req.name,
            protocol: req.protocol.as_deref(),
            base_url: req.base_url.as_deref(),
            connect_ms: req.connect_timeout_ms,
            first_byte_ms: req.first_byte_timeout_ms,
            idle_ms: req.idle_timeout_ms,
            max_body_bytes: req.max_body_bytes,
        })?;
        self.committed().await?;
        tracing::info!(
            provider = %rec.name,
            protocol = rec.protocol.as_str(),
            base_url = %rec.base_url,
            "provider set"
        );
        Ok(Response::new(convert::provider(rec)))
    }

    async fn set_chain(&self, req: Request<pb::SetChainRequest>) -> Reply<pb::Chain> {
        let req = req.into_inner();
        let rec = self.store.set_chain(&req.name, &req.models)?;
        self.committed().await?;
        tracing::info!(chain = %rec.name, "chain set");
        Ok(Response::new(convert::chain(rec)))
    }

    async fn list_chains(
        &self,
        _: Request<pb::ListChainsRequest>,
    ) -> Reply<pb::ListChainsResponse> {
        let chains = self.store.chains()?;
        Ok(Response::new(pb::ListChainsResponse {
            chains: chains.into_iter().map(convert::chain).collect(),
        }))
    }

    async fn delete_chain(&self, req: Request<pb::DeleteChainRequest>) -> Reply<pb::Chain> {
        let name = req.into_inner().name;
        let rec = self.store.delete_chain(&name)?;
        self.committed().await?;
        tracing::info!(chain = %rec.name, "chain deleted");
        Ok(Response::new(convert::chain(rec)))
    }

    async fn set_key(&self, req: Request<pb::SetKeyRequest>) -> Reply<pb::ClientKey> {
        let req = req.into_inner();
        let rec = self
            .store
            .set_key_policy(&req.name, &convert::policy_input(req.policy))?;
        self.committed().await?;
        tracing::info!(key_name = %rec.name, client_key_id = %rec.id, "client key policy set");
        Ok(Response::new(convert::client_key(rec)))
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Reply<pb::ListNodesResponse> {
        let nodes = self.registry.list()?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(convert::node).collect(),
        }))
    }

    // --- ops (issue 8) ---
    type BackupStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(&self, _: Request<pb::BackupRequest>) -> Reply<Self::BackupStream> {
        let store = Arc::clone(&self.store);
        let bytes = tokio::task::spawn_blocking(move || store.export())
            .await
            .map_err(|e| Status::internal(format!("backup task failed: {e}")))??;
        tracing::info!(bytes = bytes.len(), "backup exported");
        let chunks: Vec<Result<pb::BackupChunk, Status>> = bytes
            .chunks(BACKUP_CHUNK_BYTES)
            .map(|c| Ok(pb::BackupChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(chunks))))
    }

    // --- catalog (issue 6) ---
    async fn sync_catalog(
        &self,
        req: Request<pb::SyncCatalogRequest>,
    ) -> Reply<pb::CatalogStatusResponse> {
        let provider = req.into_inner().provider;
        let only = (!provider.is_empty()).then_some(provider.as_str());
        let statuses = self.syncer.sync_now(only).await?;
        Ok(Response::new(pb::CatalogStatusResponse {
            providers: statuses.into_iter().map(convert::catalog_status).collect(),
        }))
    }

    async fn catalog_status(
        &self,
        req: Request<pb::CatalogStatusRequest>,
    ) -> Reply<pb::CatalogStatusResponse> {
        let provider = req.into_inner().provider;
        let only = (!provider.is_empty()).then_some(provider.as_str());
        let statuses = self.syncer.status(only)?;
        Ok(Response::new(pb::CatalogStatusResponse {
            providers: statuses.into_iter().map(convert::catalog_status).collect(),
        }))
    }

    async fn set_alias(&self, req: Request<pb::SetAliasRequest>) -> Reply<pb::ModelAlias> {
        let req = req.into_inner();
        let rec = self.store.set_alias(&req.alias, &req.target)?;
        self.committed().await?;
        tracing::info!(alias = %rec.alias, target = %rec.target, "model alias set");
        Ok(Response::new(convert::alias(rec)))
    }

    async fn list_aliases(
        &self,
        _: Request<pb::ListAliasesRequest>,
    ) -> Reply<pb::ListAliasesResponse> {
        let aliases = self.store.aliases()?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: aliases.into_iter().map(convert::alias).collect(),
        }))
    }

    async fn import_prices(
        &self,
        req: Request<pb::ImportPricesRequest>,
    ) -> Reply<pb::ImportPricesResponse> {
        let req = req.into_inner();
        let out = self
            .store
            .import_prices(&req.content, &req.file_name, &req.provider)?;
        self.committed().await?;
        tracing::info!(
            format = out.parsed.format,
            source = %out.parsed.source,
            imported = out.imported,
            skipped = out.parsed.skipped,
            "prices imported"
        );
        Ok(Response::new(pb::ImportPricesResponse {
            imported: out.imported,
            skipped: out.parsed.skipped,
            format: out.parsed.format.to_string(),
            source: out.parsed.source,
        }))
    }

    async fn set_fx_rate(&self, req: Request<pb::SetFxRateRequest>) -> Reply<pb::FxRate> {
        let req = req.into_inner();
        let rec = self.store.set_fx_rate(&req.currency, &req.usd_per_unit)?;
        self.committed().await?;
        tracing::info!(currency = %rec.currency, usd_per_unit_micros = rec.usd_per_unit_micros, "exchange rate set");
        Ok(Response::new(convert::fx(rec)))
    }

    async fn list_fx_rates(
        &self,
        _: Request<pb::ListFxRatesRequest>,
    ) -> Reply<pb::ListFxRatesResponse> {
        let rates = self.store.fx_rates()?;
        Ok(Response::new(pb::ListFxRatesResponse {
            rates: rates.into_iter().map(convert::fx).collect(),
        }))
    }

    // --- request log ---

    async fn list_requests(
        &self,
        req: Request<pb::ListRequestsRequest>,
    ) -> Reply<pb::ListRequestsResponse> {
        let req = req.into_inner();
        let key_id = if req.key.is_empty() {
            None
        } else {
            let rec = self
                .store
                .key_by_name(&req.key)?
                .ok_or_else(|| Error::NotFound(format!("no key named {:?}", req.key)))?;
            Some(rec.id)
        };
        let filter = crate::request_log::RequestFilter {
            key_id,
            model: (!req.model.is_empty()).then_some(req.model),
            status: (req.status != 0).then_some(req.status),
            since_ms: req.since_ms,
            until_ms: req.until_ms,
            limit: req.limit as usize,
        };
        let store = Arc::clone(&self.store);
        let mut requests = tokio::task::spawn_blocking(move || store.list_requests(&filter))
            .await
            .map_err(|e| Status::internal(format!("request log task failed: {e}")))??;
        // Keys by name: the key itself is never stored, and its id means nothing to people.
        let names: HashMap<String, String> = self
            .store
            .keys()?
            .into_iter()
            .map(|k| (k.id, k.name))
            .collect();
        for entry in &mut requests {
            if let Some(rec) = &entry.record {
                entry.key = names.get(&rec.key_id).cloned().unwrap_or_default();
            }
        }
        Ok(Response::new(pb::ListRequestsResponse { requests }))
    }
}

/// Backup chunks stay well under the gRPC message limit.
const BACKUP_CHUNK_BYTES: usize = 1 << 20;
