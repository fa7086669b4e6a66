//! The node registry: which data planes exist, which are connected now, and which route version
//! each was last sent.
//!
//! Connection state lives in memory (a restarted control plane has no connections); the route
//! version and last-seen time are also stored, so `nodes` remembers data planes across restarts.

use crate::error::Result;
use crate::store::{self, NODES, Store, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRec {
    pub node_id: String,
    pub route_version: u64,
    pub last_seen_ms: i64,
    /// Where it serves clients, as it last said when subscribing (empty: not said).
    #[serde(default)]
    pub serve_url: String,
}

/// A node's usage backlog as its last usage report gave it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Records durable in its spool and not acknowledged, beside that report's batch.
    pub records: u64,
    /// When the oldest of them was written (0: none).
    pub oldest_ms: i64,
    /// When the report came (0: no report since this control plane started).
    pub reported_ms: i64,
}

/// A node as `nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: String,
    pub route_version: u64,
    pub connected: bool,
    pub last_seen_ms: i64,
    pub connected_since_ms: i64,
    pub serve_url: String,
    pub backlog: Backlog,
}

#[derive(Default)]
struct Live {
    /// Open subscriptions; a node that reconnects before its old stream is torn down has two.
    streams: usize,
    since_ms: i64,
}

pub struct Registry {
    store: Arc<Store>,
    live: Mutex<HashMap<String, Live>>,
    /// The last usage report's backlog per node. In memory: it is only true as of the report.
    backlogs: Mutex<HashMap<String, Backlog>>,
}

/// Held by a subscription; dropping it (the stream ended, the node went away) marks the node
/// disconnected once its last subscription is gone.
pub struct Connection {
    registry: Arc<Registry>,
    node_id: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        if let Some(entry) = live.get_mut(&self.node_id) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                live.remove(&self.node_id);
            }
        }
        drop(live);
        // Best effort: last_seen is informational.
        let _ = self.registry.touch(&self.node_id, None);
        tracing::info!(node_id = %self.node_id, "node disconnected");
    }
}

impl Registry {
    pub fn new(store: Arc<Store>) -> Arc<Registry> {
        Arc::new(Registry {
            store,
            live: Mutex::new(HashMap::new()),
            backlogs: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // The map holds plain counters; a panic elsewhere cannot leave it inconsistent.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A node subscribed; `serve_url` is where it says it serves clients (empty: not said).
    pub fn connect(self: &Arc<Self>, node_id: &str, serve_url: &str) -> Result<Connection> {
        {
            let mut live = self.lock();
            let entry = live.entry(node_id.to_string()).or_default();
            if entry.streams == 0 {
                entry.since_ms = now_ms();
            }
            entry.streams += 1;
        }
        self.update(node_id, |rec| rec.serve_url = serve_url.to_string())?;
        Ok(Connection {
            registry: Arc::clone(self),
            node_id: node_id.to_string(),
        })
    }

    /// Records that the node was seen now and, if given, the route version it was just sent.
    pub fn touch(&self, node_id: &str, sent_version: Option<u64>) -> Result<()> {
        self.update(node_id, |rec| {
            if let Some(version) = sent_version {
                rec.route_version = version;
            }
        })
    }

    /// The node's usage backlog, from the usage report that just came in.
    pub fn report_backlog(&self, node_id: &str, records: u64, oldest_ms: i64) {
        let backlog = Backlog {
            records,
            oldest_ms: if records == 0 { 0 } else { oldest_ms },
            reported_ms: now_ms(),
        };
        self.backlogs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node_id.to_string(), backlog);
    }

    /// Marks the node seen now, after `change`.
    fn update(&self, node_id: &str, change: impl FnOnce(&mut NodeRec)) -> Result<()> {
        let mut rec: NodeRec =
            store::get(&self.store.nodes, NODES, node_id)?.unwrap_or_else(|| NodeRec {
                node_id: node_id.to_string(),
                ..NodeRec::default()
            });
        rec.last_seen_ms = now_ms();
        change(&mut rec);
        self.store
            .nodes
            .insert(node_id.as_bytes(), store::encode(&rec))?;
        Ok(())
    }

    /// Nodes with an open subscription now.
    pub fn connected_count(&self) -> usize {
        self.lock().len()
    }

    pub fn list(&self) -> Result<Vec<NodeView>> {
        let stored: Vec<NodeRec> = store::scan(&self.store.nodes, NODES, b"")?;
        let backlogs = self
            .backlogs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let live = self.lock();
        let now = now_ms();
        Ok(stored
            .into_iter()
            .map(|rec| {
                let conn = live.get(&rec.node_id);
                NodeView {
                    connected: conn.is_some(),
                    connected_since_ms: conn.map_or(0, |c| c.since_ms),
                    last_seen_ms: if conn.is_some() {
                        now
                    } else {
                        rec.last_seen_ms
                    },
                    route_version: rec.route_version,
                    backlog: backlogs.get(&rec.node_id).copied().unwrap_or_default(),
                    serve_url: rec.serve_url,
                    node_id: rec.node_id,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    #[test]
    fn connections_are_counted_per_node() {
        let (_d, store) = open_temp();
        let registry = Registry::new(Arc::new(store));
        let a = registry.connect("edge-1", "").unwrap();
        let b = registry.connect("edge-1", "").unwrap();
        registry.touch("edge-1", Some(7)).unwrap();
        let view = &registry.list().unwrap()[0];
        assert!(view.connected);
        assert_eq!(view.route_version, 7);
        drop(a);
        assert!(registry.list().unwrap()[0].connected);
        drop(b);
        let view = &registry.list().unwrap()[0];
        assert!(!view.connected);
        assert_eq!(view.route_version, 7);
    }
}
