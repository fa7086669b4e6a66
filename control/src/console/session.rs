//! The console's sign-in state: sessions held in memory, and the per-address limit on sign-in
//! attempts.
//!
//! Sessions live only in this process's memory: a restart signs everyone out, which costs an
//! operator one sign-in and means no session id ever reaches the store or a backup.

use rand::RngCore;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session lasts after sign-in, used or not.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// The most sessions held at once; past it the oldest is dropped, so that repeated sign-ins
/// cannot grow memory without bound.
const MAX_SESSIONS: usize = 1024;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Signed in with the admin token: the operator console.
    Operator,
    /// Signed in with a client key: the portal, limited to this key id.
    KeyHolder { key_id: String },
}

/// A live session as handlers see it.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    /// The anti-CSRF token every state-changing form of this session carries.
    pub csrf: String,
    pub expires_at: Instant,
}

/// 32 random bytes from the OS generator, hex: a session id or a CSRF token.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Constant-time equality of two strings (their lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session; returns its id (the cookie value) and the session.
    pub fn create(&self, principal: Principal) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            principal,
            csrf: random_hex(),
            expires_at: Instant::now() + SESSION_TTL,
        };
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id; an expired one is removed and is `None`.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.lock();
        let session = map.get(id)?.clone();
        if session.expires_at <= Instant::now() {
            map.remove(id);
            return None;
        }
        Some(session)
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still consistent (every update is
        // a single insert or remove), so a poisoned lock is used as is.
        self.by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sign-in attempts per client address: at most `max` in any `window`.
pub struct AttemptLimit {
    max: usize,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// The most addresses tracked; past it addresses with no recent attempt are forgotten first.
const MAX_TRACKED: usize = 10_000;

impl AttemptLimit {
    pub fn new(max: usize, window: Duration) -> AttemptLimit {
        AttemptLimit {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt from `ip`: `Ok` if allowed, or `Err(seconds)` until the next one is.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&ip) {
            let window = self.window;
            seen.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
            if seen.len() >= MAX_TRACKED {
                // Every tracked address is active: refuse the newcomer rather than forget one.
                return Err(self.window.as_secs().max(1));
            }
        }
        let times = seen.entry(ip).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.max {
            let wait = times.front().map_or(self.window, |t| {
                self.window.saturating_sub(now.duration_since(*t))
            });
            return Err(wait.as_secs().max(1));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_random_and_removable() {
        let sessions = Sessions::default();
        let (a, sa) = sessions.create(Principal::Operator);
        let (b, sb) = sessions.create(Principal::Operator);
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_eq!(a.len(), 64);
        assert!(sessions.get(&a).is_some());
        sessions.remove(&a);
        assert!(sessions.get(&a).is_none());
        assert!(sessions.get(&b).is_some());
        assert!(sessions.get("nope").is_none());
    }

    #[test]
    fn an_expired_session_is_gone() {
        let sessions = Sessions::default();
        let (id, _) = sessions.create(Principal::Operator);
        if let Some(s) = sessions.lock().get_mut(&id) {
            s.expires_at = Instant::now();
        }
        assert!(sessions.get(&id).is_none());
        assert!(sessions.lock().is_empty());
    }

    #[test]
    fn session_count_is_bounded() {
        let sessions = Sessions::default();
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.create(Principal::Operator);
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn attempts_are_limited_per_address() {
        let limit = AttemptLimit::new(3, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.attempt(a).is_ok());
        }
        let wait = limit.attempt(a).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limit.attempt(b).is_ok());
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "a"));
    }
}
