//! Budget and rate leases: how a key's limits hold across every data plane.
//!
//! Each node asks (every second, and sooner when its allowance runs low) for a slice of each
//! limited key's remaining budget. The control plane keeps, per key and period, what every node
//! process (node id + epoch) was granted and last said it used, and grants from what is left:
//!
//! ```text
//! spent      = max(ledger spend in the period, retired + Σ used of live node processes)
//! available  = budget − spent − Σ (granted − used) of the other nodes
//! slice      = max(available / (2 × nodes), min(available, budget / 50))
//! granted    = used + slice      (cumulative for this node process and period)
//! ```
//!
//! A node admits a request only if its worst-case cost fits in `granted − used − reserved`, so
//! the sum of what all nodes may spend never exceeds the budget by more than one in-flight
//! request per node (whose billed cost exceeded its reservation) plus, after a control-plane
//! restart (this state is in memory), the unused part of the leases granted before it.
//!
//! Rates (RPM, TPM, concurrency) are split evenly: each connected node gets `ceil(limit / n)`.

use crate::error::Result;
use crate::keys::KeyPolicy;
use crate::period;
use crate::store::{Store, now_ms};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// What a node reported for one key.
#[derive(Debug, Clone, Default)]
pub struct Use {
    pub key_id: String,
    pub period_start_ms: i64,
    pub used_nano_usd: u64,
    pub used_tokens: u64,
    /// A refused request's reservation: the slice should fit at least that.
    pub want: [u64; 2],
}

/// A node's allowance for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub key_id: String,
    pub period_start_ms: i64,
    pub granted_nano_usd: u64,
    pub granted_tokens: u64,
    pub rpm: u32,
    pub tpm: u64,
    pub concurrency: u32,
}

#[derive(Debug, Default, Clone)]
struct NodeLease {
    epoch: String,
    granted: [u64; 2],
    used: [u64; 2],
}

#[derive(Debug, Default)]
struct KeyLeases {
    period_start_ms: i64,
    /// Used by node processes that are gone (restarted), still counted in the period.
    retired: [u64; 2],
    nodes: HashMap<String, NodeLease>,
}

pub struct Leases {
    store: Arc<Store>,
    keys: Mutex<HashMap<String, KeyLeases>>,
}

/// The slice of one budget dimension for a node: its new cumulative grant.
fn grant_one(
    budget: u64,
    ledger_spent: u64,
    retired: u64,
    me_used: u64,
    others: &[(u64, u64)],
    nodes: u64,
    want: u64,
) -> u64 {
    if budget == 0 {
        return u64::MAX;
    }
    let others_used: u64 = others.iter().map(|(_, u)| *u).sum();
    let others_out: u64 = others.iter().map(|(g, u)| g.saturating_sub(*u)).sum();
    let spent = ledger_spent.max(retired.saturating_add(me_used).saturating_add(others_used));
    let available = budget.saturating_sub(spent.saturating_add(others_out));
    let floor = available.min((budget / 50).max(1));
    let slice = (available / (2 * nodes.max(1)))
        .max(floor)
        .max(want.min(available));
    me_used.saturating_add(slice)
}

fn share<T: Into<u64> + Copy>(limit: T, nodes: u64) -> u64 {
    let limit: u64 = limit.into();
    if limit == 0 {
        0
    } else {
        limit.div_ceil(nodes.max(1)).max(1)
    }
}

impl Leases {
    pub fn new(store: Arc<Store>) -> Leases {
        Leases {
            store,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Grants `node_id` (process `epoch`) its slices, `nodes` being how many nodes share rates.
    pub fn grant(
        &self,
        node_id: &str,
        epoch: &str,
        uses: &[Use],
        nodes: usize,
    ) -> Result<Vec<Grant>> {
        let nodes = nodes.max(1) as u64;
        let now = now_ms();
        let mut out = Vec::with_capacity(uses.len());
        for u in uses {
            let Some(key) = self.store.key_by_id(&u.key_id)? else {
                continue;
            };
            let policy: &KeyPolicy = &key.policy;
            let period_name = policy.period();
            let period_start_ms = period::period_start_ms(period_name, now);
            let spend = if policy.budget_nano_usd > 0 || policy.budget_tokens > 0 {
                self.store
                    .key_spend_since(&u.key_id, period::period_start_day(period_name, now))?
            } else {
                crate::ledger::Counts::default()
            };
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            let state = keys.entry(u.key_id.clone()).or_default();
            if state.period_start_ms != period_start_ms {
                *state = KeyLeases {
                    period_start_ms,
                    ..KeyLeases::default()
                };
            }
            // Use reported for an older period counts nothing in this one.
            let used = if u.period_start_ms == period_start_ms {
                [u.used_nano_usd, u.used_tokens]
            } else {
                [0, 0]
            };
            let entry = state.nodes.entry(node_id.to_string()).or_default();
            if entry.epoch != epoch {
                // The node restarted: what its old process used stays spent; its lease is gone.
                state.retired[0] = state.retired[0].saturating_add(entry.used[0]);
                state.retired[1] = state.retired[1].saturating_add(entry.used[1]);
                *entry = NodeLease {
                    epoch: epoch.to_string(),
                    ..NodeLease::default()
                };
            }
            entry.used = [entry.used[0].max(used[0]), entry.used[1].max(used[1])];
            let me_used = entry.used;
            let others = |dim: usize| -> Vec<(u64, u64)> {
                state
                    .nodes
                    .iter()
                    .filter(|(id, _)| id.as_str() != node_id)
                    .map(|(_, l)| (l.granted[dim], l.used[dim]))
                    .collect()
            };
            let spent_tokens = spend
                .input_tokens
                .saturating_add(spend.output_tokens)
                .saturating_add(spend.cache_read_tokens)
                .saturating_add(spend.cache_write_tokens);
            let granted = [
                grant_one(
                    policy.budget_nano_usd,
                    spend.cost_nano_usd,
                    state.retired[0],
                    me_used[0],
                    &others(0),
                    nodes,
                    u.want[0],
                ),
                grant_one(
                    policy.budget_tokens,
                    spent_tokens,
                    state.retired[1],
                    me_used[1],
                    &others(1),
                    nodes,
                    u.want[1],
                ),
            ];
            if let Some(entry) = state.nodes.get_mut(node_id) {
                entry.granted = granted;
            }
            out.push(Grant {
                key_id: u.key_id.clone(),
                period_start_ms,
                granted_nano_usd: granted[0],
                granted_tokens: granted[1],
                rpm: share(policy.rpm, nodes) as u32,
                tpm: share(policy.tpm, nodes),
                concurrency: share(policy.concurrency, nodes) as u32,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_never_sum_past_the_budget() {
        // Two nodes alternately asking, each using all it was granted.
        let budget = 1_000_000u64;
        let mut granted = [0u64; 2];
        let mut used = [0u64; 2];
        for round in 0..200 {
            let me = round % 2;
            let other = 1 - me;
            used[me] = granted[me];
            granted[me] = grant_one(
                budget,
                0,
                0,
                used[me],
                &[(granted[other], used[other])],
                2,
                0,
            );
            assert!(granted[0].max(used[0]) + granted[1].max(used[1]) <= budget);
        }
        assert!(used[0] + used[1] > budget * 9 / 10, "{used:?}");
        assert_eq!(grant_one(0, 5, 0, 0, &[], 1, 0), u64::MAX);
        // A refused request's size is granted when it fits.
        assert_eq!(grant_one(1000, 0, 0, 0, &[], 2, 600), 600);
        assert_eq!(grant_one(1000, 900, 0, 0, &[], 2, 600), 100);
        assert_eq!(share(10u32, 3), 4);
        assert_eq!(share(1u32, 3), 1);
        assert_eq!(share(0u32, 3), 0);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::keys::PolicyInput;
    use crate::ledger::UsageRec;
    use crate::store::testing::open_temp;

    #[test]
    fn grants_count_the_ledger_and_restarted_nodes() {
        let (_d, store) = open_temp();
        let store = Arc::new(store);
        let (key, _) = store
            .create_key_with(
                "k",
                &PolicyInput {
                    budget_usd: Some("0.000001".into()), // 1,000 nano-USD
                    rpm: Some(10),
                    ..PolicyInput::default()
                },
            )
            .unwrap();
        let leases = Leases::new(Arc::clone(&store));
        let ask = |node: &str, epoch: &str, used: u64| {
            leases
                .grant(
                    node,
                    epoch,
                    &[Use {
                        key_id: key.id.clone(),
                        period_start_ms: 0,
                        used_nano_usd: used,
                        ..Use::default()
                    }],
                    2,
                )
                .unwrap()
                .remove(0)
        };
        let a = ask("a", "1", 0);
        assert_eq!(a.rpm, 5, "rates are split between the nodes");
        assert_eq!(a.granted_tokens, u64::MAX, "no token budget");
        let b = ask("b", "1", 0);
        assert!(a.granted_nano_usd + b.granted_nano_usd <= 1000);
        // Node a restarts: what it used stays spent.
        ask("a", "1", a.granted_nano_usd);
        let a2 = ask("a", "2", 0);
        assert!(a.granted_nano_usd + b.granted_nano_usd + a2.granted_nano_usd <= 1000);
        // Spend in the ledger counts even when no node reports it.
        store
            .ingest_usage(
                "x",
                vec![UsageRec {
                    request_id: "r".into(),
                    key_id: key.id.clone(),
                    model: "m".into(),
                    provider: "p".into(),
                    credential_id: "c".into(),
                    cost_nano_usd: 1000,
                    started_at_ms: now_ms(),
                    ..UsageRec::default()
                }],
            )
            .unwrap();
        assert_eq!(ask("c", "1", 0).granted_nano_usd, 0);
        assert_eq!(
            store.key_spend_since(&key.id, 0).unwrap().cost_nano_usd,
            1000
        );
    }

    #[test]
    fn health_reports_and_enable() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        let cred = store
            .add_credential("p", "", "", &crate::creds::Secret::new("sk-x".into()))
            .unwrap();
        let later = cred.state_since_ms + 10;
        assert!(
            store
                .apply_health(&cred.id, "invalid", later, 0, "401")
                .unwrap()
        );
        assert!(
            store
                .apply_health(&cred.id, "bogus", later + 1, 0, "")
                .is_err()
        );
        let enabled = store.enable_credential(&cred.id).unwrap();
        assert_eq!(enabled.state, "active");
        // A report older than the operator's enable changes nothing.
        assert!(
            !store
                .apply_health(&cred.id, "invalid", later, 0, "401")
                .unwrap()
        );
        let now = now_ms();
        assert!(
            store
                .apply_health(
                    &cred.id,
                    "cooldown",
                    enabled.state_since_ms + 1,
                    now - 1,
                    "429"
                )
                .unwrap()
        );
        let rec = store.credentials().unwrap().remove(0);
        assert_eq!(
            rec.effective_state(now).0,
            "active",
            "a past cooldown is over"
        );
        assert!(store.enable_credential("nope").is_err());
    }

    #[test]
    fn a_disabled_credential_stays_out_of_routing_whatever_nodes_report_until_enabled() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        let cred = store
            .add_credential("p", "", "", &crate::creds::Secret::new("sk-x".into()))
            .unwrap();
        let routed = |store: &Store| {
            crate::routes::compile(store, 1)
                .unwrap()
                .credentials
                .iter()
                .any(|c| c.id == cred.id)
        };
        assert!(routed(&store));
        let off = store.disable_credential(&cred.id, "").unwrap();
        assert_eq!(off.state, "disabled");
        assert_eq!(off.state_reason, "disabled by an operator");
        assert!(!routed(&store));
        // A node with an older table reports on it later: the report changes nothing.
        assert!(
            !store
                .apply_health(&cred.id, "active", off.state_since_ms + 5_000, 0, "")
                .unwrap()
        );
        assert!(
            !store
                .apply_health(&cred.id, "cooldown", off.state_since_ms + 6_000, 1, "429")
                .unwrap()
        );
        assert_eq!(store.credentials().unwrap()[0].state, "disabled");
        assert!(store.disable_credential(&cred.id, "bad\nreason").is_err());
        assert!(store.disable_credential("nope", "").is_err());
        store.enable_credential(&cred.id).unwrap();
        assert!(routed(&store));
    }

    #[test]
    fn policy_input_validates() {
        let mut p = KeyPolicy::default();
        let bad = |input: PolicyInput| input.apply(&mut KeyPolicy::default()).is_err();
        assert!(bad(PolicyInput {
            budget_usd: Some("-1".into()),
            ..PolicyInput::default()
        }));
        assert!(bad(PolicyInput {
            period: Some("hourly".into()),
            ..PolicyInput::default()
        }));
        PolicyInput {
            budget_usd: Some("2.5".into()),
            models: Some("a/*, b".into()),
            ..PolicyInput::default()
        }
        .apply(&mut p)
        .unwrap();
        assert_eq!(p.budget_nano_usd, 2_500_000_000);
        assert_eq!(p.models, ["a/*", "b"]);
        assert_eq!(p.period(), "total");
    }
}

#[cfg(test)]
mod backfill_tests {
    use crate::creds::MasterKey;
    use crate::ledger::UsageRec;
    use crate::store::Store;

    #[test]
    fn spend_from_before_the_day_totals_is_backfilled_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let store = Store::open(dir.path(), &key).unwrap();
        store
            .ingest_usage(
                "n",
                vec![UsageRec {
                    request_id: "r1".into(),
                    key_id: "k".into(),
                    model: "m".into(),
                    provider: "p".into(),
                    credential_id: "c".into(),
                    cost_nano_usd: 7,
                    started_at_ms: 86_400_000 * 3,
                    ..UsageRec::default()
                }],
            )
            .unwrap();
        // As a store written before the tree existed: day totals and marker gone.
        store.key_days.clear().unwrap();
        store.meta.remove(b"key_days_backfilled").unwrap();
        store.db.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path(), &key).unwrap();
        assert_eq!(store.key_spend_since("k", 0).unwrap().cost_nano_usd, 7);
        drop(store);
        let store = Store::open(dir.path(), &key).unwrap();
        assert_eq!(store.key_spend_since("k", 3).unwrap().cost_nano_usd, 7);
        assert_eq!(store.key_spend_since("k", 4).unwrap().cost_nano_usd, 0);
    }
}

#[cfg(test)]
mod quota_reset_tests {
    use crate::store::testing::open_temp;

    #[test]
    fn an_exhausted_credential_returns_at_its_quota_reset() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        let secret = crate::creds::Secret::new("sk-x".into());
        assert!(
            store
                .add_credential_with("p", "a", "", &secret, "hourly")
                .is_err()
        );
        let cred = store
            .add_credential_with("p", "b", "", &secret, "daily")
            .unwrap();
        let day = 86_400_000;
        let tomorrow = crate::period::period_start_ms("daily", crate::store::now_ms()) + day;
        // Exhausted at noon tomorrow (as a node would report it then).
        assert!(
            store
                .apply_health(&cred.id, "exhausted", tomorrow + day / 2, 0, "402")
                .unwrap()
        );
        let rec = store.credentials().unwrap().remove(0);
        assert_eq!(rec.effective_state(tomorrow + day * 3 / 4).0, "exhausted");
        assert_eq!(
            rec.effective_state(tomorrow + day + 1),
            ("active", tomorrow + day)
        );
        assert!(
            crate::routes::compile(&store, 1)
                .unwrap()
                .credentials
                .is_empty(),
            "out of the table until the reset"
        );
    }
}
