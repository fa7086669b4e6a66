//! Renews budget and rate leases for every limited key of the route table: once a second, and
//! at once when a key's allowance runs low. With the control plane down, the last leases stay in
//! force (a node never grants itself more).

use crate::gateway::Gateway;
use crate::limits::Lease;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::nodes_client::NodesClient;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Leaser {
    pub channel: Channel,
    pub node_id: String,
    pub authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    pub gateway: Arc<Gateway>,
    /// Random per process: tells the control plane this process holds nothing of an older one.
    pub epoch: String,
    pub wake: Arc<Notify>,
}

impl Leaser {
    pub async fn run(self, cancel: CancellationToken) {
        let mut client = NodesClient::new(self.channel.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut since_full = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
                () = cancel.cancelled() => return,
            }
            let Some(table) = self.gateway.table.load_full() else {
                continue;
            };
            since_full += 1;
            // Every second all limited keys; in between only those that asked.
            let full = since_full >= 4;
            let mut uses = Vec::new();
            for key in table.limited_keys() {
                let Some(state) = &key.state else { continue };
                let wants = state.wants_lease.swap(false, Ordering::Relaxed);
                if !(full || wants || !state.has_lease()) {
                    continue;
                }
                let (period_start_ms, used, want) = state.usage();
                uses.push(pb::LeaseUse {
                    key_id: key.id.to_string(),
                    period_start_ms,
                    used_nano_usd: used[0],
                    used_tokens: used[1],
                    want_nano_usd: want[0],
                    want_tokens: want[1],
                });
            }
            if full {
                since_full = 0;
            }
            if uses.is_empty() {
                continue;
            }
            let mut req = tonic::Request::new(pb::LeaseRequest {
                node_id: self.node_id.clone(),
                epoch: self.epoch.clone(),
                uses,
            });
            req.metadata_mut()
                .insert("authorization", self.authorization.clone());
            req.set_timeout(Duration::from_secs(2));
            match client.lease(req).await {
                Ok(resp) => {
                    let table = self.gateway.table.load_full();
                    for g in resp.into_inner().grants {
                        let Some(state) = table
                            .as_ref()
                            .and_then(|t| t.key_by_id(&g.key_id))
                            .and_then(|k| k.state.clone())
                        else {
                            continue;
                        };
                        state.set_lease(Lease {
                            period_start_ms: g.period_start_ms,
                            granted_nano_usd: g.granted_nano_usd,
                            granted_tokens: g.granted_tokens,
                            rpm: g.rpm,
                            tpm: g.tpm,
                            concurrency: g.concurrency,
                        });
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "lease renewal failed; keeping the last leases");
                }
            }
        }
    }
}
