//! Credential health: what a node learned about each upstream credential, and how it is shared.
//!
//! - 429: `cooldown` for the upstream's `retry-after-ms`, `Retry-After` (seconds) or
//!   `x-ratelimit-reset-*` time, else an exponential backoff from 1 s (doubling per 429 in a
//!   row, at most 5 min). Skipped without being touched until then.
//! - A 401 / 403 whose body says the key is refused: `invalid`; 402 or an out-of-quota error:
//!   `exhausted`. Both last until an operator runs `keyplanectl credential enable`. What a
//!   client's request caused (moderation, a bad parameter, a scope header) changes nothing:
//!   `attribution.rs` tells them apart.
//! - 5xx, timeouts, refused connections: a circuit breaker over a 60 s window opens once the
//!   window holds at least [`BREAKER_MIN_REQUESTS`] requests and at least
//!   [`BREAKER_ERROR_PERCENT`]% of them failed. Open for 30 s (doubling on each failed probe, at
//!   most 5 min), then half-open: one probe request at a time; a success closes it. A request
//!   that failed on every candidate while they answered others is counted against its key
//!   instead (`proxy.rs`, `blame`).
//!
//! Each change is handed to the [`HealthSink`], whose task reports it to the control plane
//! (`Nodes.ReportHealth`); the control plane stores it and ships it to every node with the next
//! route table (`RouteCredential.blocked_until_ms`; invalid and exhausted credentials leave the
//! table). No request waits on that.

use crate::providers::ResetFormat;
use keyplane_proto::v1 as pb;
use keyplane_proto::v1::nodes_client::NodesClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const BREAKER_WINDOW_MS: i64 = 60_000;
pub const BREAKER_MIN_REQUESTS: u32 = 20;
pub const BREAKER_ERROR_PERCENT: u32 = 10;
pub const BREAKER_OPEN_MS: i64 = 30_000;
pub const BACKOFF_START_MS: i64 = 1_000;
pub const MAX_BLOCK_MS: i64 = 300_000;
pub const PROBE_TIMEOUT_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Active = 0,
    Cooldown = 1,
    CircuitOpen = 2,
    Invalid = 3,
    Exhausted = 4,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Active,
        State::Cooldown,
        State::CircuitOpen,
        State::Invalid,
        State::Exhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Cooldown => "cooldown",
            State::CircuitOpen => "circuit_open",
            State::Invalid => "invalid",
            State::Exhausted => "exhausted",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Cooldown,
            2 => State::CircuitOpen,
            3 => State::Invalid,
            4 => State::Exhausted,
            _ => State::Active,
        }
    }
}

/// A state change to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub state: State,
    pub since_ms: i64,
    pub until_ms: i64,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Inner {
    since_ms: i64,
    backoff_ms: i64,
    open_ms: i64,
    window_start_ms: i64,
    requests: u32,
    errors: u32,
}

/// One credential's health. Reads on the request path are two atomic loads.
#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
    /// Skip until then (cooldown, open circuit).
    blocked_until_ms: AtomicI64,
    /// Half-open: when the probe in flight started (0: none). A probe that never reports back
    /// (its client went away) frees the slot after [`PROBE_TIMEOUT_MS`].
    probing: AtomicI64,
    /// When it last answered well (ms since the epoch; 0: never on this node).
    last_ok_ms: AtomicI64,
    inner: Mutex<Inner>,
}

impl Health {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn blocked_until_ms(&self) -> i64 {
        self.blocked_until_ms.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May a request go to this credential now? An open circuit whose time is up lets one probe
    /// through at a time.
    pub fn admit(&self, now_ms: i64) -> bool {
        match self.state() {
            State::Active => true,
            State::Invalid | State::Exhausted => false,
            State::Cooldown => self.blocked_until_ms() <= now_ms,
            State::CircuitOpen => {
                if self.blocked_until_ms() > now_ms {
                    return false;
                }
                let started = self.probing.load(Ordering::Acquire);
                (started == 0 || now_ms - started > PROBE_TIMEOUT_MS)
                    && self
                        .probing
                        .compare_exchange(
                            started,
                            now_ms.max(1),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
            }
        }
    }

    fn set(
        &self,
        inner: &mut Inner,
        state: State,
        now_ms: i64,
        until_ms: i64,
        reason: String,
    ) -> Change {
        inner.since_ms = now_ms;
        self.blocked_until_ms.store(until_ms, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
        self.probing.store(0, Ordering::Release);
        Change {
            state,
            since_ms: now_ms,
            until_ms,
            reason,
        }
    }

    fn count(inner: &mut Inner, now_ms: i64, error: bool) {
        if now_ms - inner.window_start_ms > BREAKER_WINDOW_MS {
            inner.window_start_ms = now_ms;
            inner.requests = 0;
            inner.errors = 0;
        }
        inner.requests += 1;
        if error {
            inner.errors += 1;
        }
    }

    /// Whether it answered well at `since_ms` or later: then it works, and a request that failed
    /// on it (and on every other candidate) most likely failed for what it asked.
    pub fn answered_since(&self, since_ms: i64) -> bool {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        last > 0 && last >= since_ms
    }

    /// The upstream answered well.
    pub fn on_success(&self, now_ms: i64) -> Option<Change> {
        self.last_ok_ms.store(now_ms, Ordering::Relaxed);
        let state = self.state();
        if state == State::Active {
            // The common case stays lock-free but for the breaker window.
            let mut inner = self.lock();
            Self::count(&mut inner, now_ms, false);
            inner.backoff_ms = 0;
            return None;
        }
        let mut inner = self.lock();
        Self::count(&mut inner, now_ms, false);
        inner.backoff_ms = 0;
        inner.open_ms = 0;
        match state {
            State::Cooldown | State::CircuitOpen => Some(self.set(
                &mut inner,
                State::Active,
                now_ms,
                0,
                "answered again".into(),
            )),
            _ => None,
        }
    }

    /// A 429. `wait_ms`: what the upstream said to wait, if anything.
    pub fn on_rate_limited(&self, now_ms: i64, wait_ms: Option<i64>) -> Change {
        let mut inner = self.lock();
        let (wait, reason) = match wait_ms {
            Some(w) => (
                w.clamp(0, 24 * 3_600_000),
                format!("429, retry after {w} ms"),
            ),
            None => {
                inner.backoff_ms = if inner.backoff_ms == 0 {
                    BACKOFF_START_MS
                } else {
                    (inner.backoff_ms * 2).min(MAX_BLOCK_MS)
                };
                (
                    inner.backoff_ms,
                    format!("429, backing off {} ms", inner.backoff_ms),
                )
            }
        };
        self.set(&mut inner, State::Cooldown, now_ms, now_ms + wait, reason)
    }

    /// The upstream refused the credential's key.
    pub fn on_invalid(&self, now_ms: i64, status: u16) -> Change {
        let mut inner = self.lock();
        self.set(
            &mut inner,
            State::Invalid,
            now_ms,
            0,
            format!("upstream answered {status}"),
        )
    }

    /// 402 or an insufficient-quota error.
    pub fn on_exhausted(&self, now_ms: i64, why: &str) -> Change {
        let mut inner = self.lock();
        self.set(&mut inner, State::Exhausted, now_ms, 0, why.to_string())
    }

    /// A 5xx, a timeout or a refused connection.
    pub fn on_server_error(&self, now_ms: i64) -> Option<Change> {
        let mut inner = self.lock();
        Self::count(&mut inner, now_ms, true);
        let state = self.state();
        let trips = match state {
            State::CircuitOpen => true,
            State::Active | State::Cooldown => {
                inner.requests >= BREAKER_MIN_REQUESTS
                    && inner.errors * 100 >= inner.requests * BREAKER_ERROR_PERCENT
            }
            _ => false,
        };
        if !trips {
            return None;
        }
        inner.open_ms = if inner.open_ms == 0 {
            BREAKER_OPEN_MS
        } else {
            (inner.open_ms * 2).min(MAX_BLOCK_MS)
        };
        let reason = format!(
            "circuit open: {} of {} requests failed",
            inner.errors, inner.requests
        );
        let until = now_ms + inner.open_ms;
        Some(self.set(&mut inner, State::CircuitOpen, now_ms, until, reason))
    }

    /// The control plane's view, from a route table: adopted when newer than what this node saw.
    pub fn apply_shared(&self, since_ms: i64, blocked_until_ms: i64, now_ms: i64) {
        let mut inner = self.lock();
        if since_ms <= inner.since_ms {
            return;
        }
        inner.since_ms = since_ms;
        inner.backoff_ms = 0;
        inner.open_ms = 0;
        let state = if blocked_until_ms > now_ms {
            State::Cooldown
        } else {
            State::Active
        };
        self.blocked_until_ms
            .store(blocked_until_ms, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
        self.probing.store(0, Ordering::Release);
    }

    /// An attempt ended in a way that says nothing of the credential's health (the client's own
    /// 4xx, an untranslatable request): a probe slot it held is free again.
    pub fn end_probe(&self) {
        self.probing.store(0, Ordering::Release);
    }
}

/// How long a 429 asks to wait, in ms: `retry-after-ms`, then `Retry-After` (seconds or an HTTP
/// date), then the latest of the providers' own reset headers (`providers::rate_limit_resets`:
/// OpenAI's `x-ratelimit-reset-requests` / `-tokens` as Go durations, `1s`, `6m0s`, `250ms`;
/// Anthropic's `anthropic-ratelimit-*-reset` as RFC 3339 instants).
pub fn retry_wait_ms(headers: &http::HeaderMap) -> Option<i64> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(ms.max(0.0) as i64);
    }
    if let Some(v) = text("retry-after") {
        if let Ok(s) = v.parse::<f64>() {
            return Some((s.max(0.0) * 1000.0) as i64);
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(ms_until(at));
        }
    }
    crate::providers::rate_limit_resets()
        .filter_map(|h| {
            let v = text(h.name)?;
            match h.format {
                ResetFormat::GoDuration => parse_go_duration_ms(v),
                ResetFormat::Rfc3339 => humantime::parse_rfc3339_weak(v).ok().map(ms_until),
            }
        })
        .max()
}

fn ms_until(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

/// `1h2m3.5s`, `250ms`, `20s` to ms.
fn parse_go_duration_ms(text: &str) -> Option<i64> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let value: f64 = num.parse().ok()?;
        num.clear();
        let unit_ms = match c {
            'h' => 3_600_000.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1.0
            }
            'm' => 60_000.0,
            's' => 1000.0,
            _ => return None,
        };
        total += value * unit_ms;
        any = true;
    }
    if !num.is_empty() {
        total += num.parse::<f64>().ok()? * 1000.0;
        any = true;
    }
    any.then_some(total as i64)
}

/// Health changes waiting to be reported, newest per credential.
#[derive(Default)]
pub struct HealthSink {
    pending: Mutex<HashMap<String, Change>>,
    notify: Notify,
}

impl HealthSink {
    pub fn report(&self, credential_id: &str, change: Change) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(credential_id.to_string(), change);
        self.notify.notify_one();
    }

    fn take(&self) -> HashMap<String, Change> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends changes to the control plane as they come; a failed send is retried (newer changes
    /// of the same credential replace older ones) every second until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        channel: Channel,
        node_id: String,
        authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        cancel: CancellationToken,
    ) {
        let mut client = NodesClient::new(channel);
        loop {
            tokio::select! {
                () = self.notify.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => return,
            }
            let batch = self.take();
            if batch.is_empty() {
                continue;
            }
            let reports = batch
                .iter()
                .map(|(id, c)| pb::HealthReport {
                    credential_id: id.clone(),
                    state: c.state.as_str().to_string(),
                    since_ms: c.since_ms,
                    until_ms: c.until_ms,
                    reason: c.reason.clone(),
                })
                .collect();
            let mut req = tonic::Request::new(pb::ReportHealthRequest {
                node_id: node_id.clone(),
                reports,
            });
            req.metadata_mut()
                .insert("authorization", authorization.clone());
            req.set_timeout(Duration::from_secs(5));
            if let Err(err) = client.report_health(req).await {
                tracing::debug!(error = %err, "health report failed; retrying");
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (id, c) in batch {
                    pending.entry(id).or_insert(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_since_is_the_last_success_on_this_node() {
        let h = Health::default();
        assert!(!h.answered_since(0), "never answered");
        assert_eq!(h.on_success(5_000), None);
        assert!(h.answered_since(5_000));
        assert!(h.answered_since(1_000));
        assert!(!h.answered_since(5_001));
        // Failures do not move it.
        h.on_server_error(9_000);
        assert!(!h.answered_since(9_000));
    }

    #[test]
    fn cooldown_backoff_and_headers() {
        let h = Health::default();
        assert!(h.admit(0));
        let c = h.on_rate_limited(1000, Some(30_000));
        assert_eq!((c.state, c.until_ms), (State::Cooldown, 31_000));
        assert!(!h.admit(30_999));
        assert!(h.admit(31_000));
        assert_eq!(h.on_rate_limited(0, None).until_ms, 1000);
        assert_eq!(h.on_rate_limited(0, None).until_ms, 2000);
        assert!(h.on_success(5).is_some());
        assert_eq!(h.on_rate_limited(0, None).until_ms, 1000);

        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", "30".parse().unwrap());
        assert_eq!(retry_wait_ms(&headers), Some(30_000));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_wait_ms(&headers), Some(1500));
        let mut headers = http::HeaderMap::new();
        headers.insert("x-ratelimit-reset-requests", "6m0s".parse().unwrap());
        headers.insert("x-ratelimit-reset-tokens", "250ms".parse().unwrap());
        assert_eq!(retry_wait_ms(&headers), Some(360_000));
        assert_eq!(retry_wait_ms(&http::HeaderMap::new()), None);
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(in_a_minute).parse().unwrap(),
        );
        let wait = retry_wait_ms(&headers).unwrap();
        assert!((55_000..=60_000).contains(&wait), "{wait}");
        let mut headers = http::HeaderMap::new();
        let at = humantime::format_rfc3339_seconds(in_a_minute).to_string();
        headers.insert("anthropic-ratelimit-requests-reset", at.parse().unwrap());
        let wait = retry_wait_ms(&headers).unwrap();
        assert!((55_000..=60_000).contains(&wait), "{wait}");
    }

    #[test]
    fn every_providers_rate_limit_reset_header_is_read_in_its_format() {
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let mut seen = 0;
        for h in crate::providers::rate_limit_resets() {
            let value = match h.format {
                ResetFormat::GoDuration => "1m0s".to_string(),
                ResetFormat::Rfc3339 => humantime::format_rfc3339_seconds(in_a_minute).to_string(),
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(h.name, value.parse().unwrap());
            let wait = retry_wait_ms(&headers).unwrap_or_else(|| panic!("{} unread", h.name));
            assert!((55_000..=60_000).contains(&wait), "{}: {wait}", h.name);
            // In the other format it means nothing.
            let other = match h.format {
                ResetFormat::GoDuration => "2025-06-01T12:00:30Z",
                ResetFormat::Rfc3339 => "1m0s",
            };
            headers.insert(h.name, other.parse().unwrap());
            assert_eq!(retry_wait_ms(&headers), None, "{}: {other}", h.name);
            seen += 1;
        }
        assert!(seen >= 6, "OpenAI's two and Anthropic's four");
    }

    #[test]
    fn breaker_needs_volume_and_rate_then_probes() {
        let h = Health::default();
        // One stray error never opens it.
        assert!(h.on_server_error(0).is_none());
        for t in 0..17 {
            h.on_success(t);
        }
        // 19 requests, 2 errors: below the minimum volume.
        assert!(h.on_server_error(20).is_none());
        let c = h.on_server_error(21).unwrap();
        assert_eq!(c.state, State::CircuitOpen);
        assert!(!h.admit(22));
        let probe_at = c.until_ms;
        assert!(h.admit(probe_at), "one probe");
        assert!(!h.admit(probe_at), "only one probe at a time");
        let again = h.on_server_error(probe_at).unwrap();
        assert_eq!(again.until_ms - probe_at, 2 * BREAKER_OPEN_MS);
        assert!(h.admit(again.until_ms));
        assert_eq!(h.on_success(again.until_ms).unwrap().state, State::Active);
        assert!(h.admit(again.until_ms));
    }

    #[test]
    fn invalid_until_shared_state_is_newer() {
        let h = Health::default();
        h.on_invalid(100, 401);
        assert!(!h.admit(200));
        h.apply_shared(50, 0, 200);
        assert!(!h.admit(200), "an older shared state does not clear it");
        h.apply_shared(150, 0, 200);
        assert!(h.admit(200), "an operator's enable (newer) clears it");
        h.apply_shared(300, 10_000, 200);
        assert!(!h.admit(9_999));
    }
}
