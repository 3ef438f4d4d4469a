//! In-process leases for a single node: same contract as Redis, no network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Leases and fencing counters kept in memory.
#[derive(Clone, Default)]
pub struct LocalLocks {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// key → (token, expiry).
    held: HashMap<String, (String, Instant)>,
    /// key → last fencing token handed out.
    fences: HashMap<String, i64>,
}

impl LocalLocks {
    /// An empty lock table.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update of plain maps; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants if free or expired; returns the fence.
    pub fn acquire(&self, key: &str, token: &str, ttl_ms: u64, floor: i64) -> Option<i64> {
        let mut st = self.state();
        let now = Instant::now();
        if let Some((_, exp)) = st.held.get(key) {
            if *exp > now {
                return None;
            }
        }
        st.held.insert(
            key.to_string(),
            (token.to_string(), now + Duration::from_millis(ttl_ms)),
        );
        let f = st.fences.entry(key.to_string()).or_insert(0);
        *f = (*f + 1).max(floor);
        Some(*f)
    }

    /// Extends if `token` holds a live lease.
    pub fn renew(&self, key: &str, token: &str, ttl_ms: u64) -> bool {
        let mut st = self.state();
        let now = Instant::now();
        match st.held.get_mut(key) {
            Some((t, exp)) if t == token && *exp > now => {
                *exp = now + Duration::from_millis(ttl_ms);
                true
            }
            _ => false,
        }
    }

    /// Releases if `token` holds it.
    pub fn release(&self, key: &str, token: &str) -> bool {
        let mut st = self.state();
        match st.held.get(key) {
            Some((t, _)) if t == token => {
                st.held.remove(key);
                true
            }
            _ => false,
        }
    }
}
