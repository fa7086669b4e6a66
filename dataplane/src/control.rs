//! The subscription to the control plane: receive route tables forever, reconnecting with
//! backoff and jitter; install each one and seal it into the snapshot.

use crate::gateway::Gateway;
use crate::snapshot;
use crate::table::Table;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::nodes_client::NodesClient;
use rand::Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

pub struct Subscriber {
    pub channel: Channel,
    pub node_id: String,
    /// Where this node serves clients (`--advertise-url`), said when subscribing; may be empty.
    pub serve_url: String,
    pub node_token: String,
    pub state_dir: PathBuf,
    pub gateway: Arc<Gateway>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Subscriber {
    /// Runs until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.session(&cancel).await {
                Ok(received) => {
                    if received {
                        backoff = MIN_BACKOFF;
                    }
                    if !cancel.is_cancelled() {
                        tracing::warn!("route table stream ended; reconnecting");
                    }
                }
                Err(status) => {
                    tracing::warn!(
                        code = ?status.code(),
                        message = status.message(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot subscribe to the control plane; serving the table held"
                    );
                }
            }
            // Full jitter on top of the exponential step, so that many nodes restarting
            // together do not reconnect in lockstep.
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64);
            let wait = backoff + Duration::from_millis(jitter);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One subscription; returns whether any table arrived.
    async fn session(&self, cancel: &CancellationToken) -> Result<bool, tonic::Status> {
        let mut client = NodesClient::new(self.channel.clone())
            .max_decoding_message_size(keyplane_proto::MAX_MESSAGE_BYTES)
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip);
        let have = self.gateway.table.load().as_ref().map_or(0, |t| t.version);
        let mut req = tonic::Request::new(pb::SubscribeRequest {
            node_id: self.node_id.clone(),
            have_route_version: have,
            serve_url: self.serve_url.clone(),
        });
        let auth = format!("Bearer {}", self.node_token).parse().map_err(|_| {
            tonic::Status::invalid_argument("the node token is not a valid header value")
        })?;
        req.metadata_mut().insert("authorization", auth);
        let mut stream = tokio::select! {
            resp = client.subscribe(req) => resp?.into_inner(),
            () = cancel.cancelled() => return Ok(false),
        };
        let mut received = false;
        loop {
            let next = tokio::select! {
                next = stream.message() => next?,
                () = cancel.cancelled() => return Ok(received),
            };
            let Some(table) = next else {
                return Ok(received);
            };
            received = true;
            self.apply(table).await;
        }
    }

    async fn apply(&self, raw: pb::RouteTable) {
        let compiled = match Table::compile(&raw, &self.gateway.stats) {
            Ok(t) => t,
            Err(err) => {
                tracing::error!(error = %err, "route table refused; keeping the one held");
                return;
            }
        };
        let previous = self.gateway.table.load().as_ref().map_or(0, |t| t.version);
        if compiled.version < previous {
            tracing::warn!(
                version = compiled.version,
                previous,
                "the control plane sent an older route version (restored from a backup?); using it"
            );
        }
        tracing::info!(
            route_version = compiled.version,
            models = compiled.models.len(),
            "route table installed"
        );
        self.gateway.install(compiled, raw.generated_at_ms);
        let dir = self.state_dir.clone();
        let token = self.node_token.clone();
        let saved = tokio::task::spawn_blocking(move || snapshot::save(&dir, &token, &raw)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "cannot write the route-table snapshot"),
            Err(err) => tracing::error!(error = %err, "snapshot task failed"),
        }
    }
}
