//! What the node told the load generator: acknowledged orders, requests whose outcome is unknown
//! (no response), orders the simulated merchants accepted, and for hot-sku the count of each
//! answer. The invariant checks compare this with what the node reports afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde_json::Value;

/// An order the node acknowledged with 201.
#[derive(Debug, Clone)]
pub(crate) struct Acked {
    /// Merchant.
    pub merchant_id: String,
    /// (sku, qty) lines as requested.
    pub lines: Vec<(String, i64)>,
    /// The idempotency key it was placed with.
    pub key: String,
}

/// A create request that got no HTTP answer (or a 5xx): the order may or may not exist. It is
/// replayed with the same idempotency key after the run to find out.
#[derive(Debug, Clone)]
pub(crate) struct Unknown {
    /// Index into the world's customers.
    pub customer: usize,
    /// Idempotency key.
    pub key: String,
    /// The exact body sent.
    pub body: Value,
    /// Merchant.
    pub merchant_id: String,
    /// (sku, qty) lines.
    pub lines: Vec<(String, i64)>,
}

/// B-trees, not hash maps: a hash map of every acknowledged order rehashed all of them under
/// this lock each time it doubled (at 114,688 and 229,376 orders), and every virtual user
/// waited behind it. That was the maximum of about 180 ms in `create` runs, while the node
/// itself answered every create within 100 ms (issue 10, BENCHMARKS.md).
#[derive(Debug, Default)]
struct Inner {
    /// Order id -> acknowledgement.
    acked: BTreeMap<String, Acked>,
    /// Ids acknowledged for two different idempotency keys.
    duplicates: Vec<String>,
    /// Outcome unknown.
    unknown: Vec<Unknown>,
    /// Orders the simulated merchants accepted (their refunds keep the stock).
    accepted: BTreeSet<String>,
    /// Create answers by kind (`"201"`, `"409 out_of_stock"`, `"transport timeout"`), over the
    /// whole run including warm-up.
    answers: BTreeMap<String, u64>,
}

/// Shared, append-only record of the run.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a 201 for order `id`.
    pub fn acked(&self, id: &str, order: Acked) {
        let mut g = self.lock();
        if let Some(prev) = g.acked.get(id) {
            if prev.key != order.key {
                g.duplicates.push(id.to_string());
            }
            return;
        }
        g.acked.insert(id.to_string(), order);
    }

    /// Records a create request with no definite answer.
    pub fn unknown(&self, u: Unknown) {
        self.lock().unknown.push(u);
    }

    /// Records that a simulated merchant accepted `order_id`.
    pub fn accepted(&self, order_id: &str) {
        self.lock().accepted.insert(order_id.to_string());
    }

    /// Counts a create answer.
    pub fn answer(&self, kind: &str) {
        let mut g = self.lock();
        match g.answers.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                g.answers.insert(kind.to_string(), 1);
            }
        }
    }

    /// Takes the unknown outcomes (for resolution).
    pub fn take_unknown(&self) -> Vec<Unknown> {
        std::mem::take(&mut self.lock().unknown)
    }

    /// All acknowledged orders.
    pub fn acked_orders(&self) -> Vec<(String, Acked)> {
        self.lock()
            .acked
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of acknowledged orders.
    pub fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    /// Ids acknowledged twice for different keys.
    pub fn duplicates(&self) -> Vec<String> {
        self.lock().duplicates.clone()
    }

    /// Whether a simulated merchant accepted `order_id`.
    pub fn was_accepted(&self, order_id: &str) -> bool {
        self.lock().accepted.contains(order_id)
    }

    /// Create answers by kind.
    pub fn answers(&self) -> BTreeMap<String, u64> {
        self.lock().answers.clone()
    }
}
