//! Per-key limits on the request path: expiry, model globs, requests and tokens per minute,
//! concurrency, and budgets (USD and tokens) enforced against a lease from the control plane.
//!
//! Every admitted request holds a [`Permit`] until it ends. The permit reserved the request's
//! worst-case cost and tokens atomically with the check (one mutex per key), so concurrent
//! requests cannot all slip past a budget; when the request ends the reservation is replaced by
//! what was billed. See `leaser.rs` for how leases are renewed and README for the overshoot bound.

use keyplane_proto::v1 as pb;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::Notify;

/// A key's policy as the data plane enforces it.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub budget_nano_usd: u64,
    pub budget_tokens: u64,
    pub rpm: u32,
    pub tpm: u64,
    pub concurrency: u32,
    pub models: Vec<String>,
    pub expires_at_ms: i64,
}

impl Policy {
    pub fn from_pb(p: &pb::KeyPolicy) -> Policy {
        Policy {
            budget_nano_usd: p.budget_nano_usd,
            budget_tokens: p.budget_tokens,
            rpm: p.rpm,
            tpm: p.tpm,
            concurrency: p.concurrency,
            models: p.models.clone(),
            expires_at_ms: p.expires_at_ms,
        }
    }

    pub fn has_budget(&self) -> bool {
        self.budget_nano_usd > 0 || self.budget_tokens > 0
    }

    pub fn is_limited(&self) -> bool {
        self.has_budget() || self.rpm > 0 || self.tpm > 0 || self.concurrency > 0
    }

    pub fn model_allowed(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| glob_match(g, model))
    }
}

/// `*` matches any run of characters (also `/`); everything else matches itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, rest) = (parts[0], &parts[1..]);
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let last = rest.last().copied().unwrap_or("");
    for part in &rest[..rest.len() - 1] {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Rpm,
    Tpm,
    Concurrency,
    BudgetUsd,
    BudgetTokens,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rpm => "rpm",
            Limit::Tpm => "tpm",
            Limit::Concurrency => "concurrency",
            Limit::BudgetUsd => "budget_usd",
            Limit::BudgetTokens => "budget_tokens",
        }
    }
}

/// A refusal, with what the 429's headers say.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after_secs: u64,
    /// The limit that applied on this node and what remains of it.
    pub limit_value: u64,
    pub remaining: u64,
    /// The key has a budget but this node never got a lease for it (control plane unreachable).
    pub no_lease: bool,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, capacity: f64, now: Instant) {
        let per_sec = capacity / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(capacity);
        self.at = now;
    }

    fn secs_until(&self, need: f64, capacity: f64) -> u64 {
        let per_sec = capacity / 60.0;
        if per_sec <= 0.0 {
            return 60;
        }
        ((need - self.tokens).max(0.0) / per_sec).ceil().max(1.0) as u64
    }
}

/// The lease this node holds for a key.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lease {
    pub period_start_ms: i64,
    pub granted_nano_usd: u64,
    pub granted_tokens: u64,
    pub rpm: u32,
    pub tpm: u64,
    pub concurrency: u32,
}

#[derive(Debug)]
struct Local {
    lease: Option<Lease>,
    /// Billed in the lease's period by this process: [nano-USD, tokens].
    used: [u64; 2],
    /// Reserved by requests in flight.
    reserved: [u64; 2],
    /// The reservation of the last request refused for want of lease.
    want: [u64; 2],
    in_flight: u32,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// One key's counters; outlives table swaps.
#[derive(Debug)]
pub struct KeyState {
    local: Mutex<Local>,
    /// Woken when a lease arrives.
    pub leased: Notify,
    /// Set when the lease runs low: the leaser renews sooner.
    pub wants_lease: std::sync::atomic::AtomicBool,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            local: Mutex::new(Local {
                lease: None,
                used: [0; 2],
                reserved: [0; 2],
                want: [0; 2],
                in_flight: 0,
                requests: None,
                tokens: None,
            }),
            leased: Notify::new(),
            wants_lease: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Released (or settled) when the request ends.
#[derive(Debug)]
pub struct Permit {
    state: Arc<KeyState>,
    reserve: [u64; 2],
    tokens_taken: f64,
    tpm: f64,
}

impl KeyState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks every limit and, if all pass, takes a request slot and reserves `reserve_nano` /
    /// `reserve_tokens` in one step.
    pub fn admit(
        self: &Arc<Self>,
        policy: &Policy,
        reserve_nano: u64,
        reserve_tokens: u64,
    ) -> Result<Permit, Refusal> {
        let now = Instant::now();
        let mut l = self.lock();
        let lease = l.lease;
        let rpm = lease.map_or(policy.rpm, |x| if policy.rpm == 0 { 0 } else { x.rpm });
        let tpm = lease.map_or(policy.tpm, |x| if policy.tpm == 0 { 0 } else { x.tpm });
        let conc = lease.map_or(policy.concurrency, |x| {
            if policy.concurrency == 0 {
                0
            } else {
                x.concurrency
            }
        });
        if conc > 0 && l.in_flight >= conc {
            return Err(Refusal {
                limit: Limit::Concurrency,
                retry_after_secs: 1,
                limit_value: u64::from(conc),
                remaining: 0,
                no_lease: false,
            });
        }
        if rpm > 0 {
            let cap = f64::from(rpm);
            let b = l.requests.get_or_insert(Bucket {
                tokens: cap,
                at: now,
            });
            b.refill(cap, now);
            if b.tokens < 1.0 {
                return Err(Refusal {
                    limit: Limit::Rpm,
                    retry_after_secs: b.secs_until(1.0, cap),
                    limit_value: u64::from(rpm),
                    remaining: 0,
                    no_lease: false,
                });
            }
        }
        let mut tokens_taken = 0.0;
        if tpm > 0 {
            let cap = tpm as f64;
            let need = (reserve_tokens as f64).min(cap);
            let b = l.tokens.get_or_insert(Bucket {
                tokens: cap,
                at: now,
            });
            b.refill(cap, now);
            if b.tokens < need {
                return Err(Refusal {
                    limit: Limit::Tpm,
                    retry_after_secs: b.secs_until(need, cap),
                    limit_value: tpm,
                    remaining: b.tokens.max(0.0) as u64,
                    no_lease: false,
                });
            }
            tokens_taken = need;
        }
        let reserve = [
            if policy.budget_nano_usd > 0 {
                reserve_nano
            } else {
                0
            },
            if policy.budget_tokens > 0 {
                reserve_tokens
            } else {
                0
            },
        ];
        for (dim, (limit, budget)) in [
            (Limit::BudgetUsd, policy.budget_nano_usd),
            (Limit::BudgetTokens, policy.budget_tokens),
        ]
        .into_iter()
        .enumerate()
        {
            if budget == 0 {
                continue;
            }
            let granted = match lease {
                Some(x) if dim == 0 => x.granted_nano_usd,
                Some(x) => x.granted_tokens,
                None => {
                    return Err(Refusal {
                        limit,
                        retry_after_secs: 1,
                        limit_value: budget,
                        remaining: 0,
                        no_lease: true,
                    });
                }
            };
            let committed = l.used[dim].saturating_add(l.reserved[dim]);
            if committed.saturating_add(reserve[dim]) > granted {
                l.want[dim] = reserve[dim];
                self.wants_lease
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(Refusal {
                    limit,
                    retry_after_secs: 60,
                    limit_value: budget,
                    remaining: granted.saturating_sub(committed),
                    no_lease: false,
                });
            }
            // Below a quarter of the allowance left: renew early.
            if granted.saturating_sub(committed + reserve[dim]) < granted / 4 {
                self.wants_lease
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let Some(b) = l.requests.as_mut().filter(|_| rpm > 0) {
            b.tokens -= 1.0;
        }
        if let Some(b) = l.tokens.as_mut().filter(|_| tpm > 0) {
            b.tokens -= tokens_taken;
        }
        l.in_flight += 1;
        l.reserved[0] += reserve[0];
        l.reserved[1] += reserve[1];
        Ok(Permit {
            state: Arc::clone(self),
            reserve,
            tokens_taken,
            tpm: tpm as f64,
        })
    }

    /// What this node used (billed + reserved), and the size of a refused request, for the
    /// lease request.
    pub fn usage(&self) -> (i64, [u64; 2], [u64; 2]) {
        let l = self.lock();
        (
            l.lease.map_or(0, |x| x.period_start_ms),
            [
                l.used[0].saturating_add(l.reserved[0]),
                l.used[1].saturating_add(l.reserved[1]),
            ],
            l.want,
        )
    }

    pub fn has_lease(&self) -> bool {
        self.lock().lease.is_some()
    }

    /// A new lease from the control plane. A new period starts this process's use from zero.
    pub fn set_lease(&self, lease: Lease) {
        let mut l = self.lock();
        if l.lease
            .is_some_and(|old| old.period_start_ms != lease.period_start_ms)
        {
            l.used = [0, 0];
        }
        l.lease = Some(lease);
        l.want = [0, 0];
        drop(l);
        self.leased.notify_waiters();
    }
}

impl Permit {
    /// The request ended having cost `nano_usd` and `tokens`.
    pub fn settle(mut self, nano_usd: u64, tokens: u64) {
        let mut l = self.state.lock();
        l.reserved[0] = l.reserved[0].saturating_sub(self.reserve[0]);
        l.reserved[1] = l.reserved[1].saturating_sub(self.reserve[1]);
        if self.reserve[0] > 0 || nano_usd > 0 {
            l.used[0] = l.used[0].saturating_add(nano_usd);
        }
        l.used[1] = l.used[1].saturating_add(tokens);
        if self.tpm > 0.0
            && let Some(b) = l.tokens.as_mut()
        {
            // Replace the estimate with what was used; the bucket may go negative.
            b.tokens += self.tokens_taken - tokens as f64;
        }
        l.in_flight = l.in_flight.saturating_sub(1);
        self.reserve = [0, 0];
        self.tokens_taken = 0.0;
        self.tpm = -1.0;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.tpm < 0.0 {
            return; // settled
        }
        // Nothing was billed (every upstream failed): give everything back.
        let mut l = self.state.lock();
        l.reserved[0] = l.reserved[0].saturating_sub(self.reserve[0]);
        l.reserved[1] = l.reserved[1].saturating_sub(self.reserve[1]);
        if let Some(b) = l.tokens.as_mut() {
            b.tokens += self.tokens_taken;
        }
        l.in_flight = l.in_flight.saturating_sub(1);
    }
}

/// How far back a key's failed requests count toward its failure budget.
pub const FAILURE_WINDOW_MS: i64 = 60_000;
/// How long a key that spent its failure budget is refused. As long as the window, so that one
/// key's failures reach a credential's circuit breaker at most a budget's worth per minute:
/// with the default budget (10) fewer than the breaker's minimum of 20 requests, so a key alone
/// can never open it.
pub const FAILURE_COOL_OFF_MS: i64 = 60_000;

/// A key's recent requests that failed on every upstream they tried (5xx, timeouts, streams that
/// broke before their first content) in a way the request itself may have caused: the per-key
/// failure budget. Every key has one, limited or not.
#[derive(Debug, Default)]
pub struct KeyFailures {
    /// Refused until then (ms since the epoch); 0 or past: not refused. One atomic load per
    /// request.
    refused_until_ms: AtomicI64,
    /// When each failure in the window was charged, oldest first. Allocated on the first one.
    recent: Mutex<VecDeque<i64>>,
}

impl KeyFailures {
    /// When the key's cool-off ends, if it is refused now.
    pub fn refused_until(&self, now_ms: i64) -> Option<i64> {
        let until = self.refused_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    /// Charges one failed request. `budget` failures within [`FAILURE_WINDOW_MS`] refuse the key
    /// for [`FAILURE_COOL_OFF_MS`]; 0 turns the budget off. Returns whether the key was within
    /// its budget before this failure, that is whether the failure may still count toward the
    /// health of the credentials it failed on.
    pub fn charge(&self, now_ms: i64, budget: u32) -> bool {
        if budget == 0 {
            return true;
        }
        if self.refused_until(now_ms).is_some() {
            return false;
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        while recent
            .front()
            .is_some_and(|&t| now_ms - t >= FAILURE_WINDOW_MS)
        {
            recent.pop_front();
        }
        recent.push_back(now_ms);
        if recent.len() >= budget as usize {
            recent.clear();
            recent.shrink_to_fit();
            self.refused_until_ms
                .store(now_ms + FAILURE_COOL_OFF_MS, Ordering::Relaxed);
        }
        true
    }
}

/// Keeps [`KeyState`] and [`KeyFailures`] per key id across table swaps.
#[derive(Default)]
pub struct LimitsRegistry {
    map: Mutex<HashMap<String, Arc<KeyState>>>,
    failures: Mutex<HashMap<String, Arc<KeyFailures>>>,
}

impl LimitsRegistry {
    pub fn get(&self, key_id: &str) -> Arc<KeyState> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key_id.to_string()).or_default())
    }

    pub fn failures(&self, key_id: &str) -> Arc<KeyFailures> {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key_id.to_string()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("claude-*-4*", "claude-sonnet-4-5"));
        assert!(!glob_match("gpt-4o*", "gpt-5"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn concurrency_and_rpm() {
        let s = Arc::new(KeyState::default());
        let p = Policy {
            concurrency: 1,
            rpm: 2,
            ..Policy::default()
        };
        let a = s.admit(&p, 0, 0).unwrap();
        assert_eq!(s.admit(&p, 0, 0).unwrap_err().limit, Limit::Concurrency);
        drop(a);
        let b = s.admit(&p, 0, 0).unwrap();
        b.settle(0, 0);
        let r = s.admit(&p, 0, 0).unwrap_err();
        assert_eq!(r.limit, Limit::Rpm);
        assert!(r.retry_after_secs >= 1);
    }

    #[test]
    fn budget_reserves_atomically_and_settles() {
        let s = Arc::new(KeyState::default());
        let p = Policy {
            budget_nano_usd: 1000,
            ..Policy::default()
        };
        assert!(s.admit(&p, 10, 0).unwrap_err().no_lease);
        s.set_lease(Lease {
            granted_nano_usd: 1000,
            granted_tokens: u64::MAX,
            ..Lease::default()
        });
        let a = s.admit(&p, 600, 0).unwrap();
        // A concurrent request does not fit next to the first one's reservation.
        assert_eq!(s.admit(&p, 600, 0).unwrap_err().limit, Limit::BudgetUsd);
        a.settle(100, 0);
        let b = s.admit(&p, 600, 0).unwrap();
        b.settle(600, 0);
        assert_eq!(s.usage().1[0], 700);
        assert!(s.admit(&p, 400, 0).is_err());
        assert_eq!(s.usage().2[0], 400);
        assert!(s.admit(&p, 400, 0).is_err());
    }

    #[test]
    fn a_spent_failure_budget_refuses_the_key_for_the_cool_off() {
        let f = KeyFailures::default();
        assert!(f.charge(0, 3));
        // The first one has left the window by the time the third comes.
        assert!(f.charge(1_000, 3));
        assert!(f.charge(FAILURE_WINDOW_MS + 1, 3));
        assert_eq!(f.refused_until(FAILURE_WINDOW_MS + 1), None);
        assert!(
            f.charge(FAILURE_WINDOW_MS + 2, 3),
            "the one that spends it still counts"
        );
        let until = f.refused_until(FAILURE_WINDOW_MS + 2).unwrap();
        assert_eq!(until, FAILURE_WINDOW_MS + 2 + FAILURE_COOL_OFF_MS);
        assert!(!f.charge(until - 1, 3), "over budget: no longer counted");
        assert_eq!(f.refused_until(until), None);
        assert!(f.charge(until, 3), "a fresh window after the cool-off");
        // 0: no budget.
        let off = KeyFailures::default();
        for t in 0..100 {
            assert!(off.charge(t, 0));
        }
        assert_eq!(off.refused_until(0), None);
    }
}
