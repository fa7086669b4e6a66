//! Captured prompt and completion bodies: kept only for a key whose policy has
//! `capture_bodies`, apart from the request log (`request_log.rs`), for a shorter retention
//! (`--request-body-retention`), and shown only in the console's view of one request. They never
//! reach `Admin/ListRequests`, `keyplanectl requests`, the portal, metrics or a log line.
//!
//! # Layout
//!
//! | tree             | key                                             | value |
//! |------------------|-------------------------------------------------|-------|
//! | `request_bodies` | the log entry's key: start time (Unix ms, `u64` BE) ‖ request id | `CapturedBodies` protobuf |
//!
//! Keyed like the log entry, so the console finds a request's bodies with one lookup, and
//! pruning by age is a range scan from the oldest key that stops at the cut-off.
//!
//! # Exactly once
//!
//! A re-sent record writes the same key with the same value: one set of bodies per request
//! however often it arrives. Bodies arrive inside their usage record (`UsageRecord.bodies`) and
//! are taken out of it before the record is logged or billed, so neither the log entry nor the
//! ledger ever holds them.

use crate::error::{Error, Result};
use crate::request_log::{entry_key, time_bytes};
use crate::store::Store;
use keyplane_proto::v1 as pb;
use prost::Message;

impl Store {
    /// Stores the captured bodies of records (each beside its log entry's key). Idempotent; the
    /// caller must [`Store::flush`] before acknowledging.
    pub fn store_request_bodies<'a>(
        &self,
        bodies: impl IntoIterator<Item = (&'a pb::UsageRecord, &'a pb::CapturedBodies)>,
    ) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for (rec, captured) in bodies {
            batch.insert(
                entry_key(rec.started_at_ms, &rec.request_id),
                captured.encode_to_vec(),
            );
            n += 1;
        }
        if n > 0 {
            let _export = self
                .export_lock
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.request_bodies.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// The captured bodies of the request started at `started_at_ms` with `request_id`, if any
    /// were kept and not pruned yet.
    pub fn request_bodies(
        &self,
        started_at_ms: i64,
        request_id: &str,
    ) -> Result<Option<pb::CapturedBodies>> {
        let Some(raw) = self
            .request_bodies
            .get(entry_key(started_at_ms, request_id))?
        else {
            return Ok(None);
        };
        pb::CapturedBodies::decode(&*raw)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                tree: "request_bodies",
                detail: e.to_string(),
            })
    }

    /// Deletes up to `max` of the oldest bodies of requests started before `before_ms`. Returns
    /// how many were deleted: fewer than `max` when none older are left.
    pub fn prune_request_bodies(&self, before_ms: i64, max: usize) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self
            .request_bodies
            .range(..time_bytes(before_ms.max(0)).to_vec())
            .take(max)
        {
            let (key, _) = item?;
            batch.remove(key);
            n += 1;
        }
        if n > 0 {
            self.request_bodies.apply_batch(batch)?;
        }
        Ok(n)
    }

    /// How many requests' bodies are kept.
    pub fn request_bodies_len(&self) -> usize {
        self.request_bodies.len()
    }
}

/// Prunes bodies older than `retention` every `every`, in batches of `batch`, until `cancel`.
/// A retention of 0 prunes every body there is (none are kept then).
pub async fn prune_forever(
    store: std::sync::Arc<Store>,
    retention: std::time::Duration,
    every: std::time::Duration,
    batch: usize,
    cancel: tokio_util::sync::CancellationToken,
) {
    crate::request_log::prune_loop(
        store,
        crate::request_log::Pruning {
            retention,
            every,
            batch,
            what: "captured request bodies",
            prune: Store::prune_request_bodies,
            rollups: false,
        },
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use crate::store::testing::open_temp;
    use keyplane_proto::v1 as pb;

    fn rec(id: &str, at: i64) -> pb::UsageRecord {
        pb::UsageRecord {
            request_id: id.into(),
            key_id: "k".into(),
            started_at_ms: at,
            ..Default::default()
        }
    }

    fn bodies(text: &str) -> pb::CapturedBodies {
        pb::CapturedBodies {
            request: text.as_bytes().to_vec(),
            request_truncated: false,
            response: b"answer".to_vec(),
            response_truncated: true,
        }
    }

    #[test]
    fn stored_once_found_by_entry_key_and_pruned_oldest_first() {
        let (_dir, store) = open_temp();
        let (r1, r2, r3) = (rec("r1", 1000), rec("r2", 2000), rec("r3", 3000));
        let (b1, b2, b3) = (bodies("one"), bodies("two"), bodies("three"));
        let all = [(&r1, &b1), (&r2, &b2), (&r3, &b3)];
        assert_eq!(store.store_request_bodies(all).unwrap(), 3);
        // A re-sent record is the same key: still three.
        store.store_request_bodies(all).unwrap();
        assert_eq!(store.request_bodies_len(), 3);
        assert_eq!(store.request_bodies(2000, "r2").unwrap(), Some(b2.clone()));
        assert_eq!(store.request_bodies(2001, "r2").unwrap(), None);
        assert_eq!(store.request_bodies(2000, "r").unwrap(), None);
        assert_eq!(store.prune_request_bodies(2500, 1).unwrap(), 1);
        assert_eq!(store.prune_request_bodies(2500, 5).unwrap(), 1);
        assert_eq!(store.prune_request_bodies(2500, 5).unwrap(), 0);
        assert_eq!(store.request_bodies(2000, "r2").unwrap(), None);
        assert_eq!(store.request_bodies(3000, "r3").unwrap(), Some(b3));
    }

    #[test]
    fn a_corrupt_value_is_an_error_not_a_panic() {
        let (_dir, store) = open_temp();
        store
            .request_bodies
            .insert(
                crate::request_log::entry_key(5, "x"),
                &[0xff, 0xff, 0xff][..],
            )
            .unwrap();
        assert!(store.request_bodies(5, "x").is_err());
    }
}
