//! Conversions between the store's records and the gRPC messages, and from errors to statuses.

use crate::catalog::{CredentialRec, OfferingRec, ProviderRec};
use crate::catalog_sync::Status as SyncStatus;
use crate::chains::ChainRec;
use crate::error::Error;
use crate::keys::{ClientKeyRec, KeyPolicy, PolicyInput};
use crate::ledger::UsageRec;
use crate::nodes::NodeView;
use crate::prices::{AliasRec, Effective, FxRec};
use keyplane_proto::v1 as pb;
use tonic::Status;

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::InvalidArgument(m) => Status::invalid_argument(bounded(m)),
            Error::NotFound(m) => Status::not_found(bounded(m)),
            Error::AlreadyExists(m) => Status::already_exists(bounded(m)),
            other => {
                tracing::error!(error = %other, "request failed");
                Status::internal(bounded(other.to_string()))
            }
        }
    }
}

/// The longest message a status carries. tonic sends it in the `grpc-message` header, and a
/// client refuses a header block over its limit (16 KiB in hyper's), which keyplanectl could
/// only report as a failure to talk to the control plane; a message that echoes a caller's
/// oversized input must still arrive as a refusal.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// `message`, cut to [`MAX_STATUS_MESSAGE_BYTES`] (at a character boundary) and marked with its
/// full length when longer.
fn bounded(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let mut cut = MAX_STATUS_MESSAGE_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &message[..cut], message.len())
}

pub fn provider(rec: ProviderRec) -> pb::Provider {
    pb::Provider {
        name: rec.name,
        protocol: rec.protocol.as_str().to_string(),
        base_url: rec.base_url,
        created_at_ms: rec.created_at_ms,
        catalog: rec.catalog.unwrap_or_default(),
        preset: rec.preset.unwrap_or_default(),
        connect_timeout_ms: rec.timeouts.connect_ms,
        first_byte_timeout_ms: rec.timeouts.first_byte_ms,
        idle_timeout_ms: rec.timeouts.idle_ms,
        max_body_bytes: rec.timeouts.max_body_bytes,
    }
}

/// Never carries the secret: the message has no field for it.
pub fn credential(rec: CredentialRec) -> pb::Credential {
    let (state, since) = rec.effective_state(crate::store::now_ms());
    let (state, since) = (state.to_string(), since);
    let active = state == "active";
    pb::Credential {
        id: rec.id,
        provider: rec.provider,
        label: rec.label,
        multiplier_ppm: rec.multiplier_ppm,
        state,
        created_at_ms: rec.created_at_ms,
        state_since_ms: since,
        state_reason: if active && rec.state != "active" {
            String::new()
        } else {
            rec.state_reason
        },
        state_until_ms: if active { 0 } else { rec.state_until_ms },
        quota_resets: rec.quota_resets,
    }
}

pub fn policy(p: &KeyPolicy) -> pb::KeyPolicy {
    pb::KeyPolicy {
        budget_nano_usd: p.budget_nano_usd,
        budget_tokens: p.budget_tokens,
        period: p.period().to_string(),
        rpm: p.rpm,
        tpm: p.tpm,
        concurrency: p.concurrency,
        models: p.models.clone(),
        expires_at_ms: p.expires_at_ms,
        probe: p.probe,
        capture_bodies: p.capture_bodies,
    }
}

pub fn policy_input(p: Option<pb::KeyPolicyInput>) -> PolicyInput {
    let p = p.unwrap_or_default();
    PolicyInput {
        budget_usd: p.budget_usd,
        budget_tokens: p.budget_tokens,
        period: p.period,
        rpm: p.rpm,
        tpm: p.tpm,
        concurrency: p.concurrency,
        models: p.models,
        expires_at_ms: p.expires_at_ms,
        capture_bodies: p.capture_bodies,
    }
}

pub fn chain(rec: ChainRec) -> pb::Chain {
    pb::Chain {
        name: rec.name,
        models: rec.models,
        updated_at_ms: rec.updated_at_ms,
    }
}

pub fn offering(rec: OfferingRec) -> pb::ModelOffering {
    pb::ModelOffering {
        model: rec.model,
        provider: rec.provider,
        upstream_model: rec.upstream_model,
        input_micro_usd_per_mtok: rec.input_micro_usd_per_mtok,
        output_micro_usd_per_mtok: rec.output_micro_usd_per_mtok,
        cache_read_micro_usd_per_mtok: rec.cache_read_micro_usd_per_mtok,
        cache_write_micro_usd_per_mtok: rec.cache_write_micro_usd_per_mtok,
        currency: rec.currency,
        source: rec.source,
        updated_at_ms: rec.updated_at_ms,
        input_micro_per_mtok_native: rec.input_micro_usd_per_mtok,
        output_micro_per_mtok_native: rec.output_micro_usd_per_mtok,
        ..Default::default()
    }
}

/// An offering from any source; prices in USD, plus the native currency's.
pub fn effective(e: Effective) -> pb::ModelOffering {
    let usd = e.usd.as_ref();
    pb::ModelOffering {
        model: e.model,
        provider: e.provider,
        upstream_model: e.upstream_model,
        input_micro_usd_per_mtok: usd.map_or(0, |p| p.input),
        output_micro_usd_per_mtok: usd.map_or(0, |p| p.output),
        cache_read_micro_usd_per_mtok: usd.and_then(|p| p.cache_read),
        cache_write_micro_usd_per_mtok: usd.and_then(|p| p.cache_write),
        currency: e
            .native
            .as_ref()
            .map_or_else(|| "USD".to_string(), |p| p.currency.clone()),
        source: e.source,
        updated_at_ms: e.updated_at_ms,
        synced_at_ms: e.synced_at_ms,
        input_micro_per_mtok_native: e.native.as_ref().map_or(0, |p| p.input),
        output_micro_per_mtok_native: e.native.as_ref().map_or(0, |p| p.output),
        price_unknown: usd.is_none(),
        tiers: usd
            .map(|p| crate::routes::route_tiers(&p.tiers))
            .unwrap_or_default(),
    }
}

pub fn catalog_status(s: SyncStatus) -> pb::ProviderCatalogStatus {
    pb::ProviderCatalogStatus {
        provider: s.rec.provider,
        adapter: s.rec.adapter,
        last_success_ms: s.rec.last_success_ms,
        last_attempt_ms: s.rec.last_attempt_ms,
        models: s.rec.models.len() as u64,
        priced_models: s.rec.models.iter().filter(|m| m.price.is_some()).count() as u64,
        last_error: s.rec.last_error,
        consecutive_failures: s.rec.consecutive_failures,
        next_sync_ms: s.next_sync_ms,
    }
}

pub fn alias(a: AliasRec) -> pb::ModelAlias {
    pb::ModelAlias {
        alias: a.alias,
        target: a.target,
        created_at_ms: a.created_at_ms,
    }
}

pub fn fx(r: FxRec) -> pb::FxRate {
    pb::FxRate {
        currency: r.currency,
        usd_per_unit_micros: r.usd_per_unit_micros,
        updated_at_ms: r.updated_at_ms,
    }
}

pub fn client_key(rec: ClientKeyRec) -> pb::ClientKey {
    pb::ClientKey {
        id: rec.id,
        name: rec.name,
        created_at_ms: rec.created_at_ms,
        revoked: rec.revoked_at_ms.is_some(),
        revoked_at_ms: rec.revoked_at_ms.unwrap_or(0),
        policy: Some(policy(&rec.policy)),
    }
}

pub fn node(view: NodeView) -> pb::Node {
    pb::Node {
        node_id: view.node_id,
        route_version: view.route_version,
        connected: view.connected,
        last_seen_ms: view.last_seen_ms,
        connected_since_ms: view.connected_since_ms,
        backlog_records: view.backlog.records,
        backlog_oldest_ms: view.backlog.oldest_ms,
        backlog_reported_ms: view.backlog.reported_ms,
        serve_url: view.serve_url,
    }
}

/// The wire record's `cost_nano_usd` is the computed cost; what the ledger bills is the
/// provider's reported cost when the record carries one. Borrowed: the same record also goes to
/// the request log.
pub fn usage_record(rec: &pb::UsageRecord) -> UsageRec {
    UsageRec {
        computed_cost_nano_usd: Some(rec.cost_nano_usd),
        reported_cost_nano_usd: rec.reported_cost_nano_usd,
        request_id: rec.request_id.clone(),
        node_id: String::new(),
        key_id: rec.key_id.clone(),
        model: rec.model.clone(),
        provider: rec.provider.clone(),
        credential_id: rec.credential_id.clone(),
        input_tokens: rec.input_tokens,
        output_tokens: rec.output_tokens,
        cost_nano_usd: rec.reported_cost_nano_usd.unwrap_or(rec.cost_nano_usd),
        cache_read_tokens: rec.cache_read_tokens,
        cache_write_tokens: rec.cache_write_tokens,
        latency_ms: rec.latency_ms,
        ttfb_ms: rec.ttfb_ms,
        status: rec.status,
        started_at_ms: rec.started_at_ms,
        estimated: rec.estimated,
        received_at_ms: 0,
        chain: rec.chain.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_message_is_bounded_at_a_char_boundary() {
        let short = Status::from(Error::NotFound("key \"a\" not found".into()));
        assert_eq!(short.message(), "key \"a\" not found");
        let huge = format!("provider {:?} not found", "é".repeat(10_000));
        let status = Status::from(Error::NotFound(huge.clone()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().len() <= MAX_STATUS_MESSAGE_BYTES + 32);
        assert!(
            status
                .message()
                .ends_with(&format!("… ({} bytes)", huge.len()))
        );
        assert!(huge.starts_with(status.message().split('…').next().unwrap()));
        let internal = Status::from(Error::Internal("x".repeat(50_000)));
        assert!(internal.message().len() <= MAX_STATUS_MESSAGE_BYTES + 32);
    }
}
