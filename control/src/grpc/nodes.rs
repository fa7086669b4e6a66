//! The Nodes service: route-table subscriptions and usage reports from data planes.

use crate::catalog::check_name;
use crate::nodes::{Connection, Registry};
use crate::routes::Routes;
use crate::store::Store;
use futures_util::Stream;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::nodes_server::Nodes;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub struct NodesService {
    pub store: Arc<Store>,
    pub routes: Arc<Routes>,
    pub registry: Arc<Registry>,
    pub leases: Arc<crate::leases::Leases>,
    /// Ends every subscription at shutdown, so that graceful shutdown does not wait on streams
    /// that never end by themselves.
    pub cancel: CancellationToken,
    /// Whether usage reports also feed the request log.
    pub request_log: bool,
    /// Whether captured bodies are kept (with the log on and a body retention above 0).
    pub request_bodies: bool,
}

/// Largest usage batch accepted in one call.
pub const MAX_USAGE_BATCH: usize = 10_000;

struct Subscription {
    rx: watch::Receiver<Arc<pb::RouteTable>>,
    first: bool,
    cancel: CancellationToken,
    registry: Arc<Registry>,
    /// Held, never read: dropping it with the stream marks the node disconnected.
    _connection: Connection,
    node_id: String,
}

type TableStream = Pin<Box<dyn Stream<Item = Result<pb::RouteTable, Status>> + Send>>;

/// A node's serve URL as the console's route probe will use it: `http://` or `https://`, at most
/// 512 printable characters without spaces; empty is fine (not said).
fn check_serve_url(url: &str) -> Result<&str, &'static str> {
    let url = url.trim_end_matches('/');
    if url.is_empty() {
        return Ok("");
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("it is not an http:// or https:// URL");
    }
    if url.len() > 512 || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it is longer than 512 characters or holds spaces or control characters");
    }
    Ok(url)
}

/// Stores a usage report ([`Store::ingest_report`]) with the captured bodies taken out of
/// their records first, so that neither the log entry nor the ledger holds them. When `bodies`
/// is on (and the log is) they are kept in their own tree, before the entries, so that an entry
/// never shows without the bodies it came with; else they are dropped. Bodies of a record the
/// report then rejects as malformed have no entry to be shown with and age out unseen.
fn ingest(
    store: &Store,
    node_id: &str,
    mut records: Vec<pb::UsageRecord>,
    log: bool,
    bodies: bool,
) -> Result<crate::ledger::Ingested, crate::error::Error> {
    let captured: Vec<Option<pb::CapturedBodies>> =
        records.iter_mut().map(|r| r.bodies.take()).collect();
    if log && bodies && captured.iter().any(Option::is_some) {
        store.store_request_bodies(
            records
                .iter()
                .zip(&captured)
                .filter(|(r, _)| crate::request_log::check(r).is_ok())
                .filter_map(|(r, b)| b.as_ref().map(|b| (r, b))),
        )?;
    }
    store.ingest_report(node_id, &records, log)
}

#[tonic::async_trait]
impl Nodes for NodesService {
    type SubscribeStream = TableStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = req.into_inner();
        check_name("node", &req.node_id)?;
        let serve_url = match check_serve_url(&req.serve_url) {
            Ok(url) => url,
            Err(why) => {
                // A bad URL only costs the route probe this node: never refuse it service.
                tracing::warn!(node_id = %req.node_id, why, "ignoring the node's serve URL");
                ""
            }
        };
        let connection = self.registry.connect(&req.node_id, serve_url)?;
        tracing::info!(
            node_id = %req.node_id,
            have_route_version = req.have_route_version,
            "node subscribed"
        );
        let state = Subscription {
            rx: self.routes.subscribe(),
            first: true,
            cancel: self.cancel.clone(),
            registry: Arc::clone(&self.registry),
            _connection: connection,
            node_id: req.node_id,
        };
        let stream = futures_util::stream::unfold(state, |mut sub| async move {
            if !sub.first {
                tokio::select! {
                    changed = sub.rx.changed() => changed.ok()?,
                    () = sub.cancel.cancelled() => return None,
                }
            }
            sub.first = false;
            // The newest table: versions published while this subscriber was busy are skipped.
            let table = Arc::clone(&sub.rx.borrow_and_update());
            crate::metrics::COUNTERS.table_sent(&sub.node_id);
            if let Err(err) = sub.registry.touch(&sub.node_id, Some(table.route_version)) {
                tracing::warn!(node_id = %sub.node_id, error = %err, "cannot record node state");
            }
            Some((Ok((*table).clone()), sub))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_health(
        &self,
        req: Request<pb::ReportHealthRequest>,
    ) -> Result<Response<pb::ReportHealthResponse>, Status> {
        let req = req.into_inner();
        check_name("node", &req.node_id)?;
        let mut changed = false;
        for r in &req.reports {
            if self.store.apply_health(
                &r.credential_id,
                &r.state,
                r.since_ms,
                r.until_ms,
                &r.reason,
            )? {
                tracing::info!(
                    node_id = %req.node_id,
                    credential_id = %r.credential_id,
                    state = %r.state,
                    until_ms = r.until_ms,
                    "credential health changed"
                );
                changed = true;
            }
        }
        if changed {
            self.store.flush().await?;
            self.routes.changed();
        }
        Ok(Response::new(pb::ReportHealthResponse {}))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let req = req.into_inner();
        check_name("node", &req.node_id)?;
        let uses: Vec<crate::leases::Use> = req
            .uses
            .into_iter()
            .map(|u| crate::leases::Use {
                key_id: u.key_id,
                period_start_ms: u.period_start_ms,
                used_nano_usd: u.used_nano_usd,
                used_tokens: u.used_tokens,
                want: [u.want_nano_usd, u.want_tokens],
            })
            .collect();
        let nodes = self.registry.connected_count();
        let leases = Arc::clone(&self.leases);
        let node_id = req.node_id.clone();
        let grants =
            tokio::task::spawn_blocking(move || leases.grant(&node_id, &req.epoch, &uses, nodes))
                .await
                .map_err(|e| Status::internal(format!("lease task failed: {e}")))??;
        Ok(Response::new(pb::LeaseResponse {
            grants: grants
                .into_iter()
                .map(|g| pb::LeaseGrant {
                    key_id: g.key_id,
                    period_start_ms: g.period_start_ms,
                    granted_nano_usd: g.granted_nano_usd,
                    granted_tokens: g.granted_tokens,
                    rpm: g.rpm,
                    tpm: g.tpm,
                    concurrency: g.concurrency,
                })
                .collect(),
        }))
    }

    async fn report_usage(
        &self,
        req: Request<pb::ReportUsageRequest>,
    ) -> Result<Response<pb::ReportUsageResponse>, Status> {
        let req = req.into_inner();
        check_name("node", &req.node_id)?;
        if req.records.len() > MAX_USAGE_BATCH {
            return Err(Status::invalid_argument(format!(
                "a usage batch holds at most {MAX_USAGE_BATCH} records, got {}",
                req.records.len()
            )));
        }
        let store = Arc::clone(&self.store);
        let node_id = req.node_id.clone();
        let log = self.request_log;
        let bodies = self.request_bodies;
        let outcome =
            tokio::task::spawn_blocking(move || ingest(&store, &node_id, req.records, log, bodies))
                .await
                .map_err(|e| Status::internal(format!("ingest task failed: {e}")))??;
        // The acknowledgement below is a promise that the records survive a crash.
        self.store.flush().await?;
        if let Err(err) = self.registry.touch(&req.node_id, None) {
            tracing::warn!(node_id = %req.node_id, error = %err, "cannot record node state");
        }
        self.registry
            .report_backlog(&req.node_id, req.backlog_records, req.backlog_oldest_ms);
        let counters = &*crate::metrics::COUNTERS;
        counters.usage_ingested.inc_by(outcome.inserted as u64);
        counters
            .usage_duplicates
            .inc_by((outcome.acked.len() as u64).saturating_sub(outcome.inserted as u64));
        counters
            .usage_rejected
            .inc_by(outcome.rejected.len() as u64);
        for (request_id, reason) in &outcome.rejected {
            tracing::warn!(node_id = %req.node_id, %request_id, %reason, "usage record rejected");
        }
        tracing::debug!(
            node_id = %req.node_id,
            inserted = outcome.inserted,
            acked = outcome.acked.len(),
            "usage batch stored"
        );
        Ok(Response::new(pb::ReportUsageResponse {
            acked_ids: outcome.acked,
            rejected: outcome
                .rejected
                .into_iter()
                .map(|(request_id, reason)| pb::RejectedRecord { request_id, reason })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    fn with_bodies(id: &str, at: i64, key: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            key_id: key.into(),
            model: "m".into(),
            provider: "p".into(),
            credential_id: "c".into(),
            status: 200,
            started_at_ms: at,
            bodies: Some(pb::CapturedBodies {
                request: b"the prompt".to_vec(),
                response: b"the completion".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn bodies_are_kept_apart_from_the_log_entry_and_only_when_on() {
        let (_dir, store) = open_temp();
        let key = store.create_key("k").unwrap().0.id;
        let recs = vec![with_bodies("r1", 1000, &key), with_bodies("r2", 2000, &key)];
        let out = ingest(&store, "n", recs.clone(), true, true).unwrap();
        assert_eq!(out.acked.len(), 2, "{:?}", out.rejected);
        let logged = store
            .list_requests(&crate::request_log::RequestFilter::default())
            .unwrap();
        assert_eq!(logged.len(), 2);
        assert!(
            logged
                .iter()
                .all(|e| e.record.as_ref().unwrap().bodies.is_none())
        );
        let kept = store.request_bodies(1000, "r1").unwrap().unwrap();
        assert_eq!(kept.request, b"the prompt");
        // Re-sent: still one set each.
        ingest(&store, "n", recs, true, true).unwrap();
        assert_eq!(store.request_bodies_len(), 2);

        // Bodies off (a retention of 0), or the log off: logged or billed, bodies dropped.
        let (_dir, store) = open_temp();
        let key = store.create_key("k").unwrap().0.id;
        ingest(
            &store,
            "n",
            vec![with_bodies("r3", 3000, &key)],
            true,
            false,
        )
        .unwrap();
        ingest(
            &store,
            "n",
            vec![with_bodies("r4", 4000, &key)],
            false,
            true,
        )
        .unwrap();
        assert_eq!(store.request_bodies_len(), 0);
        let logged = store
            .list_requests(&crate::request_log::RequestFilter::default())
            .unwrap();
        assert_eq!(logged.len(), 1);
        assert!(logged[0].record.as_ref().unwrap().bodies.is_none());
    }
}
