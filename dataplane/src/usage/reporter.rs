//! The network half of usage reporting: batches durable records to the control plane's
//! `Nodes.ReportUsage` and deletes spool segments once everything in them is settled.
//!
//! # Invariants
//!
//! - **Only an answer removes a record.** A record of a batch leaves the pending set only when
//!   its `request_id` comes back in that call's `acked_ids` (stored and flushed by the control
//!   plane) or `rejected` (malformed, never storable: logged at `warn` and dropped, never
//!   retried). Errors, timeouts and ids missing from a reply keep records pending; they are sent
//!   again after a backoff of 100 ms doubling to 10 s, plus jitter, forever. A record spooled
//!   twice is two pending entries, each settled by the reply to the call that carried it (the
//!   control plane stores the id once).
//! - **A segment is deleted only when sealed and settled**: the writer has moved on from it and
//!   every record the reporter was given from it was acked or rejected.
//! - **Memory is bounded**: at most `max_in_memory` durable records are held. Past that, records
//!   are left in their segment files (the reporter counts them per segment) and read back in
//!   spool order once pending records fall under half the bound; while any wait on disk, newer
//!   ones wait too, so the oldest always go first. A segment that cannot be read back is never
//!   deleted: its records are sent again at the next start.
//! - **One call in flight.** Batches go out one at a time, oldest records first, at most
//!   `batch_max` per call, as soon as `batch_max` are pending or the oldest pending record has
//!   waited `batch_delay` (at once while shutting down). Records keep arriving while a call is in
//!   flight; they simply wait for the next one.
//! - **Nothing here blocks the writer**: the writer's events queue on an unbounded channel.
//!
//! Batches are zstd-compressed (several times cheaper than gzip for the same size); a control
//! plane too old to take zstd answers `Unimplemented`, and from then on this process sends gzip.

use super::StatsInner;
use super::spool::{EncodedRecord, decode_segment, segment_path};
use bytes::Bytes;
use keyplane_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::client::Grpc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// What the writer tells the reporter, in spool order.
#[derive(Debug)]
pub(super) enum Event {
    /// These records are synced in `segment`.
    Durable {
        segment: u64,
        records: Vec<EncodedRecord>,
    },
    /// `segment` gets no more records. Always sent after the segment's last `Durable`.
    Sealed { segment: u64 },
}

/// Tuning of the reporter task.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReporterConfig {
    /// Most records in one call.
    pub batch_max: usize,
    /// Most durable records held in memory; the rest wait on disk.
    pub max_in_memory: usize,
    /// Most encoded bytes of records held in memory, the bound that matters when records carry
    /// captured bodies; the rest wait on disk. At least one record is always held.
    pub max_in_memory_bytes: usize,
    /// Most encoded bytes in one call (at least one record), far below the gRPC message limit
    /// both ends set, so that a batch of records with captured bodies is never refused for its
    /// size and retried forever.
    pub batch_max_bytes: usize,
    /// Longest a durable record waits for a call while fewer than `batch_max` are pending.
    pub batch_delay: Duration,
    /// Bound on one call, connecting included.
    pub call_timeout: Duration,
    /// First retry delay after a failed call; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// A durable record waiting for the control plane.
struct Pending {
    record: EncodedRecord,
    segment: u64,
    arrived: Instant,
}

/// What the reporter knows of a segment.
#[derive(Default)]
struct SegmentState {
    /// Records from it held in memory and not settled yet.
    outstanding: usize,
    sealed: bool,
    /// Durable records in its file, as the writer reported them.
    in_file: usize,
    /// How many of those (a prefix) were taken into memory; the rest wait on disk.
    loaded: usize,
    /// When the first record still on disk became durable.
    waiting_since: Option<Instant>,
    /// Reading it back failed: it keeps its file, for the next start.
    unreadable: bool,
}

impl SegmentState {
    fn settled(&self) -> bool {
        self.sealed && self.outstanding == 0 && self.loaded == self.in_file && !self.unreadable
    }
}

/// The method the records go to.
const REPORT_USAGE_PATH: &str = "/keyplane.v1.Nodes/ReportUsage";

/// `Nodes/ReportUsage` as the generated client calls it, with the request in its bytes-level
/// form ([`pb::ReportUsageRequestEncoded`]): the held records go out as the spool wrote them,
/// without a copy or a second encoding.
async fn report_usage(
    client: &mut Grpc<Channel>,
    mut request: tonic::Request<pb::ReportUsageRequestEncoded>,
) -> Result<tonic::Response<pb::ReportUsageResponse>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("keyplane.v1.Nodes", "ReportUsage"));
    let codec =
        tonic_prost::ProstCodec::<pb::ReportUsageRequestEncoded, pb::ReportUsageResponse>::default(
        );
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(REPORT_USAGE_PATH),
            codec,
        )
        .await
}

/// The reporter's state; [`Reporter::run`] drives it.
pub(super) struct Reporter {
    client: Grpc<Channel>,
    node_id: String,
    /// `Bearer <node token>`, marked sensitive so that it never shows in `Debug` output.
    authorization: MetadataValue<Ascii>,
    dir: PathBuf,
    config: ReporterConfig,
    stats: Arc<StatsInner>,
    /// By arrival order: keys only grow.
    pending: BTreeMap<u64, Pending>,
    segments: BTreeMap<u64, SegmentState>,
    /// Durable records left on disk (the sum of `in_file - loaded`).
    on_disk: usize,
    /// Encoded bytes of the records in `pending`.
    pending_bytes: usize,
    next_key: u64,
    /// Set once the control plane refused zstd: batches go out gzip-compressed.
    gzip_fallback: bool,
}

impl Reporter {
    pub(super) fn new(
        client: Grpc<Channel>,
        node_id: String,
        authorization: MetadataValue<Ascii>,
        dir: PathBuf,
        config: ReporterConfig,
        stats: Arc<StatsInner>,
    ) -> Self {
        Reporter {
            client,
            node_id,
            authorization,
            dir,
            config,
            stats,
            pending: BTreeMap::new(),
            segments: BTreeMap::new(),
            on_disk: 0,
            pending_bytes: 0,
            next_key: 0,
            gzip_fallback: false,
        }
    }

    /// Reports until the writer's channel is closed and nothing is pending. Once `drain` fires,
    /// sends whatever is pending without waiting for a batch to fill; the caller bounds that
    /// phase with its deadline by aborting the task, which loses nothing (see the module docs of
    /// [`super`]).
    pub(super) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        drain: CancellationToken,
    ) {
        let mut events_open = true;
        let mut draining = false;
        let mut backoff = super::Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut retry_at: Option<Instant> = None;
        let mut attempt = 0u32;
        loop {
            if self.on_disk > 0
                && self.pending.len() <= self.config.max_in_memory / 2
                && self.pending_bytes <= self.config.max_in_memory_bytes / 2
            {
                self.read_back().await;
            }
            if !events_open && self.pending.is_empty() && self.on_disk == 0 {
                break;
            }
            let send_at = self.next_send_at(draining || !events_open, retry_at);
            if send_at.is_some_and(|at| at <= Instant::now()) {
                attempt = attempt.saturating_add(1);
                let sent = self
                    .send_batch(&mut events, &mut events_open, &drain, &mut draining)
                    .await;
                match sent {
                    Ok(settled) => {
                        tracing::debug!(
                            settled,
                            pending = self.pending.len(),
                            "usage batch reported"
                        );
                        backoff.reset();
                        retry_at = None;
                        attempt = 0;
                    }
                    Err((error, records)) => {
                        let delay = backoff.next_delay();
                        retry_at = Some(Instant::now() + delay);
                        tracing::warn!(
                            %error,
                            records,
                            attempt,
                            retry_in_ms = delay.as_millis() as u64,
                            pending = self.pending.len(),
                            "cannot report usage to the control plane; will retry"
                        );
                    }
                }
                continue;
            }
            tokio::select! {
                biased;
                () = drain.cancelled(), if !draining => draining = true,
                event = events.recv(), if events_open => match event {
                    Some(event) => self.absorb(event).await,
                    None => events_open = false,
                },
                () = super::sleep_until_opt(send_at) => {}
            }
        }
        tracing::debug!("usage reporter stopped: nothing pending");
    }

    /// When the next batch should go out, `None` while nothing is pending.
    fn next_send_at(&self, urgent: bool, retry_at: Option<Instant>) -> Option<Instant> {
        let (_, oldest) = self.pending.first_key_value()?;
        let ready_at = if urgent || self.pending.len() >= self.config.batch_max {
            Instant::now()
        } else {
            oldest.arrived + self.config.batch_delay
        };
        Some(retry_at.map_or(ready_at, |retry| retry.max(ready_at)))
    }

    /// Sends the oldest pending records in one call and settles what the reply names, taking in
    /// writer events meanwhile. `Ok` holds how many records were settled; `Err` why the call
    /// failed and how many records it carried.
    async fn send_batch(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        events_open: &mut bool,
        drain: &CancellationToken,
        draining: &mut bool,
    ) -> Result<usize, (String, usize)> {
        let mut batch_bytes = 0usize;
        let batch_max_bytes = self.config.batch_max_bytes;
        let (sent, records): (Vec<u64>, Vec<Bytes>) = self
            .pending
            .iter()
            .take(self.config.batch_max)
            .take_while(|(_, p)| {
                let len = p.record.bytes().len();
                let fits = batch_bytes == 0 || batch_bytes + len <= batch_max_bytes;
                batch_bytes += len;
                fits
            })
            .map(|(key, p)| (*key, p.record.bytes().clone()))
            .unzip();
        let count = records.len();
        let (backlog_records, backlog_oldest_ms) = self.backlog_beside(count);
        let mut request = tonic::Request::new(pb::ReportUsageRequestEncoded {
            node_id: self.node_id.clone(),
            records,
            backlog_records,
            backlog_oldest_ms,
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request.set_timeout(self.config.call_timeout);
        let mut client = self.client.clone();
        let call_timeout = self.config.call_timeout;
        let call = async move {
            tokio::time::timeout(call_timeout, report_usage(&mut client, request)).await
        };
        tokio::pin!(call);
        let reply = loop {
            tokio::select! {
                biased;
                reply = &mut call => break reply,
                () = drain.cancelled(), if !*draining => *draining = true,
                event = events.recv(), if *events_open => match event {
                    Some(event) => self.absorb(event).await,
                    None => *events_open = false,
                },
            }
        };
        let reply = match reply {
            Err(_elapsed) => {
                return Err((
                    format!("no reply within {} ms", call_timeout.as_millis()),
                    count,
                ));
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unimplemented
                    && status.message().contains("compressed")
                    && !self.gzip_fallback
                {
                    tracing::info!(
                        "the control plane does not take zstd-compressed usage; sending gzip"
                    );
                    self.gzip_fallback = true;
                    self.client = self
                        .client
                        .clone()
                        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                return Err((format!("{:?}: {}", status.code(), status.message()), count));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let settled = self.settle(&sent, reply).await;
        if settled == 0 {
            // A reply that settles nothing would have us resend the same batch at once, forever.
            return Err((
                "the reply acknowledged none of the batch".to_string(),
                count,
            ));
        }
        if settled < count {
            tracing::debug!(
                sent = count,
                settled,
                "some usage records were neither acked nor rejected; they stay pending"
            );
        }
        Ok(settled)
    }

    /// Takes in one writer event.
    async fn absorb(&mut self, event: Event) {
        match event {
            Event::Durable { segment, records } => {
                let now = Instant::now();
                let mut records = records;
                let count = records.len();
                // The records that fit in memory (none while older ones wait on disk, so the
                // oldest go first); the rest are on disk already and are read back when there
                // is room (see the module docs).
                let mut fit = 0;
                if self.on_disk == 0 {
                    let mut bytes = self.pending_bytes;
                    for r in &records {
                        let held = self.pending.len() + fit;
                        let len = r.bytes().len();
                        if held >= self.config.max_in_memory
                            || (held > 0 && bytes + len > self.config.max_in_memory_bytes)
                        {
                            break;
                        }
                        bytes += len;
                        fit += 1;
                    }
                }
                records.truncate(fit);
                self.segments.entry(segment).or_default().in_file += count;
                self.hold(segment, now, records);
                if fit < count {
                    let state = self.segments.entry(segment).or_default();
                    state.waiting_since.get_or_insert(now);
                    self.on_disk += count - fit;
                }
                self.publish();
            }
            Event::Sealed { segment } => {
                let state = self.segments.entry(segment).or_default();
                state.sealed = true;
                if state.settled() {
                    self.segments.remove(&segment);
                    self.delete_segment(segment).await;
                }
            }
        }
    }

    /// Reads records left on disk back into memory, oldest segment first, up to the bound.
    async fn read_back(&mut self) {
        while self.on_disk > 0
            && self.pending.len() < self.config.max_in_memory
            && (self.pending.is_empty() || self.pending_bytes < self.config.max_in_memory_bytes)
        {
            let Some((&seq, state)) = self
                .segments
                .iter()
                .find(|(_, s)| s.loaded < s.in_file && !s.unreadable)
            else {
                return;
            };
            let (from, to) = (state.loaded, state.in_file);
            let take = (to - from).min(self.config.max_in_memory - self.pending.len());
            let room_bytes = self
                .config
                .max_in_memory_bytes
                .saturating_sub(self.pending_bytes);
            let take_one = self.pending.is_empty();
            let arrived = state.waiting_since.unwrap_or_else(Instant::now);
            let path = segment_path(&self.dir, seq);
            let read_path = path.clone();
            // The records that fit in memory (a prefix of the wanted ones, at least one when
            // nothing is held), and how many of the `take` wanted the file holds.
            let read = tokio::task::spawn_blocking(move || {
                std::fs::read(&read_path).map(|bytes| {
                    let mut found = 0usize;
                    let mut held = 0usize;
                    let mut full = false;
                    let mut records = Vec::new();
                    for rec in decode_segment(bytes.into())
                        .records
                        .into_iter()
                        .skip(from)
                        .take(take)
                    {
                        found += 1;
                        let len = rec.bytes().len();
                        full =
                            full || ((!take_one || !records.is_empty()) && held + len > room_bytes);
                        if !full {
                            held += len;
                            records.push(rec);
                        }
                    }
                    (records, found)
                })
            })
            .await;
            let read = read
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let (records, found) = match read {
                Ok(read) => read,
                Err(err) => {
                    self.give_up_on(seq, &path, &err);
                    continue;
                }
            };
            let got = records.len();
            if got == 0 && found == take {
                // The next record does not fit yet: it is read once acks make room.
                break;
            }
            self.on_disk = self.on_disk.saturating_sub(got);
            self.hold(seq, arrived, records);
            if found < take {
                self.give_up_on(
                    seq,
                    &path,
                    &format!("it holds {} records, {to} were spooled", from + found),
                );
            }
            tracing::debug!(
                segment = seq,
                records = got,
                "usage records read back from the spool"
            );
        }
        self.publish();
    }

    /// Takes `records`, the next ones of `segment`'s file, into memory.
    fn hold(&mut self, segment: u64, arrived: Instant, records: Vec<EncodedRecord>) {
        let state = self.segments.entry(segment).or_default();
        state.loaded += records.len();
        state.outstanding += records.len();
        if state.loaded == state.in_file {
            state.waiting_since = None;
        }
        for record in records {
            self.pending_bytes += record.bytes().len();
            self.pending.insert(
                self.next_key,
                Pending {
                    record,
                    segment,
                    arrived,
                },
            );
            self.next_key += 1;
        }
    }

    /// Stops reading segment `seq` back: its unread records stay in its file, which is kept, so
    /// the next start sends them.
    fn give_up_on(&mut self, seq: u64, path: &std::path::Path, why: &str) {
        let Some(state) = self.segments.get_mut(&seq) else {
            return;
        };
        if state.unreadable {
            return;
        }
        state.unreadable = true;
        let left = state.in_file - state.loaded;
        self.on_disk = self.on_disk.saturating_sub(left);
        tracing::error!(
            file = %path.display(),
            error = %why,
            records = left,
            "cannot read usage records back from the spool; they stay on disk for the next start"
        );
    }

    /// Drops the records of the batch `sent` (pending keys, in the order sent) that the reply
    /// settles, deletes the segments that became settled, and returns how many were settled.
    async fn settle(&mut self, sent: &[u64], reply: pb::ReportUsageResponse) -> usize {
        let mut done_segments = Vec::new();
        let mut acked = 0;
        let mut rejected = 0;
        // The control plane acks a fully stored batch in the order sent: match it without
        // hashing a single id.
        let in_order = reply.rejected.is_empty()
            && reply.acked_ids.len() == sent.len()
            && sent.iter().zip(&reply.acked_ids).all(|(key, id)| {
                self.pending
                    .get(key)
                    .is_some_and(|p| p.record.request_id() == id)
            });
        if in_order {
            for key in sent {
                acked += self.remove(*key, &mut done_segments);
            }
        } else {
            let acked_ids: HashSet<&str> = reply.acked_ids.iter().map(String::as_str).collect();
            let reasons: HashMap<&str, &str> = reply
                .rejected
                .iter()
                .map(|r| (r.request_id.as_str(), r.reason.as_str()))
                .collect();
            for key in sent {
                let Some(id) = self
                    .pending
                    .get(key)
                    .map(|p| p.record.request_id().to_string())
                else {
                    continue;
                };
                if acked_ids.contains(id.as_str()) {
                    acked += self.remove(*key, &mut done_segments);
                } else if let Some(reason) = reasons.get(id.as_str()) {
                    rejected += self.remove(*key, &mut done_segments);
                    tracing::warn!(
                        request_id = %id,
                        reason = %reason,
                        "control plane rejected a usage record as malformed; dropping it"
                    );
                }
            }
        }
        self.stats.forget((acked + rejected) as u64);
        self.stats.add_acked(acked as u64);
        self.publish();
        for segment in done_segments {
            self.delete_segment(segment).await;
        }
        acked + rejected
    }

    /// Removes one pending entry; pushes its segment onto `done` if that left it sealed and
    /// settled. Returns 1 if the entry was pending.
    fn remove(&mut self, key: u64, done: &mut Vec<u64>) -> usize {
        let Some(entry) = self.pending.remove(&key) else {
            return 0;
        };
        self.pending_bytes = self
            .pending_bytes
            .saturating_sub(entry.record.bytes().len());
        if let Some(state) = self.segments.get_mut(&entry.segment) {
            state.outstanding = state.outstanding.saturating_sub(1);
            if state.settled() {
                self.segments.remove(&entry.segment);
                done.push(entry.segment);
            }
        }
        1
    }

    /// The spool's backlog beside a batch of the `count` oldest pending records: how many other
    /// records are unacknowledged, and the Unix ms the oldest of them became durable (0: none).
    /// The control plane shows it per node, as of the report.
    fn backlog_beside(&self, count: usize) -> (u64, i64) {
        let records = self
            .stats
            .depth
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(count as u64);
        let oldest = self
            .pending
            .values()
            .nth(count)
            .map(|p| p.arrived)
            .into_iter()
            .chain(self.segments.values().filter_map(|s| s.waiting_since))
            .min();
        let oldest_ms = match oldest {
            Some(at) if records > 0 => {
                let age = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
                crate::proxy::now_ms().saturating_sub(age)
            }
            _ => 0,
        };
        (records, oldest_ms)
    }

    /// Publishes the arrival of the oldest pending record, and how many are in memory.
    fn publish(&self) {
        let oldest = self
            .pending
            .first_key_value()
            .map(|(_, p)| p.arrived)
            .or_else(|| self.segments.values().filter_map(|s| s.waiting_since).min());
        self.stats.set_oldest(oldest);
        self.stats.held.store(
            self.pending.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Deletes a settled segment file. A failure only means it is read and re-sent at the next
    /// start, which the control plane's idempotency makes harmless.
    async fn delete_segment(&self, segment: u64) {
        let path = segment_path(&self.dir, segment);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                tracing::debug!(file = %path.display(), "usage spool segment settled and deleted")
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                file = %path.display(),
                error = %err,
                "cannot delete a settled usage spool segment; it will be re-sent at next start"
            ),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Config, UsageHandle, UsageSink, start_with};
    use super::*;
    use futures_util::Stream;
    use keyplane_proto::v1::nodes_server::{Nodes, NodesServer};
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tonic::codec::CompressionEncoding;
    use tonic::transport::Endpoint;
    use tonic::{Request, Response, Status};

    pub(in super::super) const TOKEN: &str = "node-secret-token";
    pub(in super::super) const NODE: &str = "node-1";

    /// A control plane's `Nodes` service that the test steers.
    #[derive(Default)]
    pub(in super::super) struct FakeNodes {
        /// Fail this many calls with `Unavailable` before answering.
        pub fail_next: AtomicUsize,
        /// Fail every call while set.
        pub down: AtomicBool,
        /// Never answer while set.
        pub hang: AtomicBool,
        /// Records whose request id starts with this are rejected.
        pub reject_prefix: Mutex<Option<String>>,
        /// Every request id received, in order, duplicates included.
        pub seen: Mutex<Vec<String>>,
        /// Size of every batch received.
        pub batches: Mutex<Vec<usize>>,
        /// The backlog every batch reported: records besides it, and the oldest one's time.
        pub backlogs: Mutex<Vec<(u64, i64)>>,
        pub calls: AtomicUsize,
    }

    impl FakeNodes {
        pub fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }

        pub fn seen_set(&self) -> HashSet<String> {
            self.seen().into_iter().collect()
        }
    }

    type Tables = Pin<Box<dyn Stream<Item = Result<pb::RouteTable, Status>> + Send>>;

    #[tonic::async_trait]
    impl Nodes for FakeNodes {
        type SubscribeStream = Tables;

        async fn subscribe(
            &self,
            _req: Request<pb::SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }

        async fn report_health(
            &self,
            _req: Request<pb::ReportHealthRequest>,
        ) -> Result<Response<pb::ReportHealthResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }

        async fn lease(
            &self,
            _req: Request<pb::LeaseRequest>,
        ) -> Result<Response<pb::LeaseResponse>, Status> {
            Err(Status::unimplemented("not in this fake"))
        }

        async fn report_usage(
            &self,
            req: Request<pb::ReportUsageRequest>,
        ) -> Result<Response<pb::ReportUsageResponse>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let expected = format!("Bearer {TOKEN}");
            let auth = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth != Some(expected.as_str()) {
                return Err(Status::unauthenticated("bad node token"));
            }
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(Status::unavailable("down"));
            }
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(Status::unavailable("failing as told"));
            }
            let req = req.into_inner();
            if req.node_id != NODE {
                return Err(Status::invalid_argument("bad node id"));
            }
            self.batches.lock().unwrap().push(req.records.len());
            self.backlogs
                .lock()
                .unwrap()
                .push((req.backlog_records, req.backlog_oldest_ms));
            let reject = self.reject_prefix.lock().unwrap().clone();
            let mut reply = pb::ReportUsageResponse::default();
            let mut seen = self.seen.lock().unwrap();
            for rec in req.records {
                seen.push(rec.request_id.clone());
                match &reject {
                    Some(prefix) if rec.request_id.starts_with(prefix.as_str()) => {
                        reply.rejected.push(pb::RejectedRecord {
                            request_id: rec.request_id,
                            reason: "malformed".into(),
                        });
                    }
                    _ => reply.acked_ids.push(rec.request_id),
                }
            }
            Ok(Response::new(reply))
        }
    }

    /// Serves `fake` on a fresh loopback port.
    pub(in super::super) async fn serve(fake: Arc<FakeNodes>) -> SocketAddr {
        serve_accepting(
            fake,
            &[CompressionEncoding::Zstd, CompressionEncoding::Gzip],
        )
        .await
    }

    /// Serves `fake`, taking only the request compressions in `accept`.
    async fn serve_accepting(fake: Arc<FakeNodes>, accept: &[CompressionEncoding]) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let conn = listener.accept().await.map(|(stream, _)| stream);
            Some((conn, listener))
        });
        let mut service = NodesServer::from_arc(fake);
        for encoding in accept {
            service = service.accept_compressed(*encoding);
        }
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        addr
    }

    /// A loopback address nothing listens on.
    pub(in super::super) async fn dead_addr() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    pub(in super::super) fn channel(addr: SocketAddr) -> Channel {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy()
    }

    /// Short delays, so that tests take milliseconds.
    pub(in super::super) fn fast() -> Config {
        let mut config = Config::default();
        config.reporter.batch_delay = Duration::from_millis(20);
        config.reporter.call_timeout = Duration::from_secs(2);
        config.reporter.backoff_min = Duration::from_millis(10);
        config.reporter.backoff_max = Duration::from_millis(100);
        config.writer.limits.max_age = Duration::from_millis(100);
        config
    }

    pub(in super::super) async fn start_at(
        state: &Path,
        addr: SocketAddr,
        config: Config,
    ) -> (UsageSink, UsageHandle) {
        start_with(state, channel(addr), NODE.into(), TOKEN.into(), config)
            .await
            .unwrap()
    }

    pub(in super::super) fn rec(id: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            key_id: "key-1".into(),
            model: "gpt-test".into(),
            provider: "fake".into(),
            credential_id: "cred-1".into(),
            input_tokens: 10,
            output_tokens: 20,
            cost_nano_usd: 1234,
            ..Default::default()
        }
    }

    /// Polls `cond` every 10 ms; fails the test after 10 s.
    pub(in super::super) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting until {what}");
    }

    /// Segment files in `<state>/spool`.
    pub(in super::super) fn segment_count(state: &Path) -> usize {
        std::fs::read_dir(state.join("spool"))
            .map(|dir| {
                dir.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))
                })
                .count()
            })
            .unwrap_or(0)
    }

    /// The request ids on disk, read the way a start reads them.
    pub(in super::super) fn ids_on_disk(state: &Path) -> Vec<String> {
        let limits = fast().writer.limits;
        let (_, loaded) = super::super::spool::Spool::open(&state.join("spool"), limits).unwrap();
        loaded
            .into_iter()
            .flat_map(|s| s.records)
            .map(|r| r.request_id().to_string())
            .collect()
    }

    #[tokio::test]
    async fn delivers_records_and_deletes_settled_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        let addr = serve(Arc::clone(&fake)).await;
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        let ids: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        for id in &ids {
            sink.record(rec(id));
        }
        wait_until("every record is acked", || stats.acked_total() == 50).await;
        assert_eq!(stats.depth(), 0);
        assert_eq!(stats.oldest_unacked_age_ms(), 0);
        // Sealed for age, then deleted because settled: no shutdown needed.
        wait_until("the settled segment is deleted", || {
            segment_count(tmp.path()) == 0
        })
        .await;
        let seen = fake.seen_set();
        assert!(ids.iter().all(|id| seen.contains(id)));
        handle.shutdown(Duration::from_secs(2)).await;
        assert_eq!(segment_count(tmp.path()), 0);
    }

    #[tokio::test]
    async fn a_control_plane_without_zstd_gets_gzip() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        let addr = serve_accepting(Arc::clone(&fake), &[CompressionEncoding::Gzip]).await;
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        for i in 0..20 {
            sink.record(rec(&format!("r{i}")));
        }
        wait_until("every record is acked", || stats.acked_total() == 20).await;
        // One call refused for its zstd body (it never reached the service), then gzip.
        assert_eq!(fake.seen_set().len(), 20);
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn batches_hold_at_most_batch_max() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        let addr = serve(Arc::clone(&fake)).await;
        let mut config = fast();
        config.reporter.batch_max = 100;
        let (sink, handle) = start_at(tmp.path(), addr, config).await;
        let stats = handle.stats();
        for i in 0..1050 {
            sink.record(rec(&format!("r{i}")));
        }
        wait_until("every record is acked", || stats.acked_total() == 1050).await;
        let batches = fake.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|&n| n <= 100), "{batches:?}");
        assert!(batches.len() >= 11);
        handle.shutdown(Duration::from_secs(2)).await;
    }

    /// Records carrying captured bodies (about 100 KB each): a backlog of them is held in
    /// memory and sent per call within the byte bounds, and segments seal by size, yet every
    /// record lands once, in order.
    #[tokio::test]
    async fn records_with_bodies_are_bounded_by_bytes_in_memory_in_calls_and_in_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        fake.down.store(true, Ordering::SeqCst);
        let addr = serve(Arc::clone(&fake)).await;
        let mut config = fast();
        config.reporter.max_in_memory_bytes = 350_000;
        config.reporter.batch_max_bytes = 250_000;
        config.writer.limits.max_bytes = 500_000;
        let (sink, handle) = start_at(tmp.path(), addr, config).await;
        let stats = handle.stats();
        let ids: Vec<String> = (0..30).map(|i| format!("b{i:02}")).collect();
        for id in &ids {
            let mut r = rec(id);
            r.bodies = Some(pb::CapturedBodies {
                request: vec![b'q'; 50_000],
                response: vec![b'a'; 50_000],
                ..Default::default()
            });
            sink.record(r);
        }
        let mut most_held = 0;
        wait_until("the backlog is spooled in size-bounded segments", || {
            most_held = most_held.max(stats.held_in_memory());
            segment_count(tmp.path()) >= 6 && fake.calls.load(Ordering::SeqCst) >= 2
        })
        .await;
        fake.down.store(false, Ordering::SeqCst);
        wait_until("every record is acked", || {
            most_held = most_held.max(stats.held_in_memory());
            stats.acked_total() == 30
        })
        .await;
        // 350 KB holds three records of 100 KB; a call carries two.
        assert!(most_held <= 3, "{most_held} records held in memory");
        let batches = fake.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|&n| (1..=2).contains(&n)), "{batches:?}");
        assert_eq!(fake.seen(), ids);
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn each_batch_reports_the_backlog_beside_it_down_to_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        let addr = serve(Arc::clone(&fake)).await;
        let mut config = fast();
        config.reporter.batch_max = 100;
        let (sink, handle) = start_at(tmp.path(), addr, config).await;
        let stats = handle.stats();
        let before = crate::proxy::now_ms();
        // Recorded before the reporter task runs again: the first batch sees all of them.
        for i in 0..1050 {
            sink.record(rec(&format!("r{i}")));
        }
        wait_until("every record is acked", || stats.acked_total() == 1050).await;
        let backlogs = fake.backlogs.lock().unwrap().clone();
        let batches = fake.batches.lock().unwrap().clone();
        assert_eq!(backlogs[0].0, 1050 - batches[0] as u64, "{backlogs:?}");
        let (first_oldest, after) = (backlogs[0].1, crate::proxy::now_ms());
        assert!(
            (before..=after).contains(&first_oldest),
            "{first_oldest} not in {before}..={after}"
        );
        assert!(
            backlogs.windows(2).all(|w| w[1].0 <= w[0].0),
            "never growing: {backlogs:?}"
        );
        assert_eq!(*backlogs.last().unwrap(), (0, 0), "{backlogs:?}");
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn failed_calls_are_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        fake.fail_next.store(4, Ordering::SeqCst);
        let addr = serve(Arc::clone(&fake)).await;
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        for i in 0..10 {
            sink.record(rec(&format!("r{i}")));
        }
        wait_until("a failing call happened", || {
            fake.calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        assert_eq!(stats.depth(), 10);
        wait_until("every record is acked", || stats.acked_total() == 10).await;
        assert!(fake.calls.load(Ordering::SeqCst) >= 5);
        assert_eq!(stats.depth(), 0);
        handle.shutdown(Duration::from_secs(2)).await;
        assert_eq!(segment_count(tmp.path()), 0);
    }

    #[tokio::test]
    async fn server_unreachable_at_start_is_tolerated() {
        let tmp = tempfile::tempdir().unwrap();
        // Reserve a port, report against it while nothing listens, then serve on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        sink.record(rec("early"));
        wait_until("the record ages", || stats.oldest_unacked_age_ms() >= 50).await;
        assert_eq!(stats.depth(), 1);

        let fake = Arc::new(FakeNodes::default());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            Some((listener.accept().await.map(|(s, _)| s), listener))
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    NodesServer::from_arc(Arc::clone(&fake))
                        .accept_compressed(CompressionEncoding::Zstd),
                )
                .serve_with_incoming(incoming),
        );
        wait_until("the record is acked", || stats.acked_total() == 1).await;
        assert_eq!(fake.seen(), vec!["early".to_string()]);
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn rejected_record_is_dropped_not_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        *fake.reject_prefix.lock().unwrap() = Some("bad".into());
        let addr = serve(Arc::clone(&fake)).await;
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        sink.record(rec("good-1"));
        sink.record(rec("bad-1"));
        sink.record(rec("good-2"));
        wait_until("nothing is pending", || stats.depth() == 0).await;
        assert_eq!(stats.acked_total(), 2);
        wait_until("the settled segment is deleted", || {
            segment_count(tmp.path()) == 0
        })
        .await;
        // Later traffic does not bring the rejected record back.
        sink.record(rec("good-3"));
        wait_until("the later record is acked", || stats.acked_total() == 3).await;
        let bad = fake
            .seen()
            .iter()
            .filter(|id| id.as_str() == "bad-1")
            .count();
        assert_eq!(bad, 1);
        handle.shutdown(Duration::from_secs(2)).await;
        assert_eq!(segment_count(tmp.path()), 0);
    }

    /// A small memory bound, small batches and small segments, so that a backlog of a few
    /// hundred records spans many segments and most of it waits on disk.
    fn bounded() -> Config {
        let mut config = fast();
        config.reporter.batch_max = 7;
        config.reporter.max_in_memory = 20;
        config.writer.limits.max_records = 16;
        config.writer.max_group = 4;
        config
    }

    /// A node tuned by [`bounded`] in `state`, its control plane down, given `n` records named
    /// `{prefix}000`, `{prefix}001`, …: the fake, its address, the node, and the ids in order.
    async fn backlog_while_down(
        state: &Path,
        prefix: &str,
        n: usize,
    ) -> (
        Arc<FakeNodes>,
        SocketAddr,
        UsageSink,
        UsageHandle,
        Vec<String>,
    ) {
        let fake = Arc::new(FakeNodes::default());
        fake.down.store(true, Ordering::SeqCst);
        let addr = serve(Arc::clone(&fake)).await;
        let (sink, handle) = start_at(state, addr, bounded()).await;
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:03}")).collect();
        for id in &ids {
            sink.record(rec(id));
        }
        (fake, addr, sink, handle, ids)
    }

    #[tokio::test]
    async fn a_backlog_past_the_memory_bound_waits_on_disk_and_lands_once_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (fake, _addr, _sink, handle, ids) = backlog_while_down(tmp.path(), "r", 300).await;
        let stats = handle.stats();
        let mut most_held = 0;
        // At most 19 records per segment (groups of 4 until 16 are reached): 16 segments hold
        // most of the backlog, far past the bound of 20 in memory.
        wait_until(
            "the backlog is spooled while the control plane is down",
            || {
                most_held = most_held.max(stats.held_in_memory());
                segment_count(tmp.path()) >= 16 && fake.calls.load(Ordering::SeqCst) >= 3
            },
        )
        .await;
        fake.down.store(false, Ordering::SeqCst);
        wait_until("every record is acked", || {
            most_held = most_held.max(stats.held_in_memory());
            stats.acked_total() == 300
        })
        .await;
        assert!(most_held <= 20, "{most_held} records held in memory");
        assert!(most_held > 0);
        // Each record reached the control plane once, oldest first.
        assert_eq!(fake.seen(), ids);
        wait_until("every segment is deleted", || {
            segment_count(tmp.path()) == 0
        })
        .await;
        assert_eq!(stats.depth(), 0);
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_spool_larger_than_the_bound_at_start_is_read_back_and_lands_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (fake, addr, _sink, handle, ids) = backlog_while_down(tmp.path(), "s", 150).await;
        handle.shutdown(Duration::from_millis(300)).await;
        assert_eq!(ids_on_disk(tmp.path()), ids);

        fake.down.store(false, Ordering::SeqCst);
        let (_sink, handle) = start_at(tmp.path(), addr, bounded()).await;
        let stats = handle.stats();
        let mut most_held = 0;
        wait_until("the spooled records are acked", || {
            most_held = most_held.max(stats.held_in_memory());
            stats.depth() == 0
        })
        .await;
        assert!(most_held <= 20, "{most_held} records held in memory");
        assert_eq!(fake.seen(), ids);
        wait_until("every segment is deleted", || {
            segment_count(tmp.path()) == 0
        })
        .await;
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn an_unreadable_segment_keeps_its_file_for_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (fake, _addr, _sink, handle, _ids) = backlog_while_down(tmp.path(), "u", 100).await;
        wait_until("the reporter has tried the dead control plane", || {
            fake.calls.load(Ordering::SeqCst) >= 2
        })
        .await;
        // The newest segments can no longer be read back: their records wait for a restart.
        let mut files: Vec<_> = std::fs::read_dir(tmp.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let last = files.last().unwrap().clone();
        std::fs::remove_file(&last).unwrap();
        fake.down.store(false, Ordering::SeqCst);
        wait_until("the readable records are acked", || {
            handle.stats().acked_total() > 0 && handle.stats().held_in_memory() == 0
        })
        .await;
        let seen = fake.seen_set();
        assert!(
            seen.len() < 100,
            "the removed segment's records cannot have been sent"
        );
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn restart_resends_what_was_not_acked() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        let addr = serve(Arc::clone(&fake)).await;

        // First run: a first wave is acked, then the control plane goes down.
        let (sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        let first: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        for id in &first {
            sink.record(rec(id));
        }
        wait_until("the first wave is acked", || stats.acked_total() == 20).await;
        fake.down.store(true, Ordering::SeqCst);
        let second: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
        for id in &second {
            sink.record(rec(id));
        }
        handle.shutdown(Duration::from_millis(300)).await;
        let on_disk: HashSet<String> = ids_on_disk(tmp.path()).into_iter().collect();
        assert!(second.iter().all(|id| on_disk.contains(id)), "{on_disk:?}");

        // Second run: everything unacked is delivered, and the spool empties.
        fake.down.store(false, Ordering::SeqCst);
        let (_sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        assert_eq!(stats.depth(), on_disk.len() as u64);
        wait_until("the spooled records are acked", || stats.depth() == 0).await;
        let seen = fake.seen_set();
        assert!(first.iter().chain(&second).all(|id| seen.contains(id)));
        wait_until("the old segments are deleted", || {
            segment_count(tmp.path()) == 0
        })
        .await;
        handle.shutdown(Duration::from_secs(2)).await;
        assert_eq!(segment_count(tmp.path()), 0);
    }

    #[tokio::test]
    async fn restart_with_partially_acked_spool_resends_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        let addr = serve(Arc::clone(&fake)).await;
        // A spool left by a run that crashed: one segment whose first half the control plane
        // already stored (acked, but the segment was never deleted).
        let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        {
            let (spool, _) =
                super::super::spool::Spool::open(&tmp.path().join("spool"), fast().writer.limits)
                    .unwrap();
            let records: Vec<_> = ids.iter().map(|id| rec(id)).collect();
            spool.append_all(&records).unwrap();
        }
        fake.seen.lock().unwrap().extend(ids[..5].iter().cloned());

        let (_sink, handle) = start_at(tmp.path(), addr, fast()).await;
        let stats = handle.stats();
        wait_until("the spool is drained", || stats.depth() == 0).await;
        wait_until("the old segment is deleted", || {
            segment_count(tmp.path()) == 0
        })
        .await;
        let seen = fake.seen_set();
        assert!(ids.iter().all(|id| seen.contains(id)));
        handle.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn shutdown_with_server_down_keeps_records_for_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let addr = dead_addr().await;
        let (sink, handle) = start_at(tmp.path(), addr, Config::default()).await;
        let ids: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
        for id in &ids {
            sink.record(rec(id));
        }
        let deadline = Duration::from_millis(500);
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), handle.shutdown(deadline))
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < deadline + Duration::from_millis(400),
            "took {took:?}"
        );
        assert_eq!(ids_on_disk(tmp.path()), ids);
        // After shutdown, records are refused without panicking.
        sink.record(rec("late"));
        assert_eq!(ids_on_disk(tmp.path()).len(), 100);
    }

    #[tokio::test]
    async fn shutdown_with_hanging_server_returns_within_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeNodes::default());
        fake.hang.store(true, Ordering::SeqCst);
        let addr = serve(Arc::clone(&fake)).await;
        let (sink, handle) = start_at(tmp.path(), addr, Config::default()).await;
        for i in 0..10 {
            sink.record(rec(&format!("h{i}")));
        }
        wait_until("a call is in flight", || {
            fake.calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        let deadline = Duration::from_millis(300);
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), handle.shutdown(deadline))
            .await
            .unwrap();
        assert!(started.elapsed() < deadline + Duration::from_millis(400));
        assert_eq!(ids_on_disk(tmp.path()).len(), 10);
    }
}
