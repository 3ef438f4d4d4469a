//! What the node told the load generator: acknowledged orders, requests whose outcome is unknown
//! (no response), orders the simulated merchants accepted, and for hot-sku the count of each
//! answer. The invariant checks compare this with what the node reports afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// The acknowledged and accepted orders are kept in `PARTS` hash maps each, picked by the id's
/// hash. One map of every acknowledged order rehashed all of them under this ledger's one lock
/// each time it doubled (at 114,688 and 229,376 orders), and every virtual user waited behind
/// it: the maximum of about 180 ms in `create` runs (issue 10, BENCHMARKS.md). A B-tree, tried
/// next, never doubles, but each insert compares its key with about 30 others, each behind a
/// pointer: 2.6 µs per acknowledgement, a tenth of the load generator's CPU in the open model.
/// A part doubles a 64th of the orders at a time, and the parts' locks are rarely contended.
const PARTS: usize = 64;

/// Everything that is not kept by order id.
#[derive(Debug, Default)]
struct Inner {
    /// Ids acknowledged for two different idempotency keys.
    duplicates: Vec<String>,
    /// Outcome unknown.
    unknown: Vec<Unknown>,
    /// Create answers by kind (`"201"`, `"409 out_of_stock"`, `"transport timeout"`), over the
    /// whole run including warm-up.
    answers: BTreeMap<String, u64>,
}

/// One part of the orders kept by id.
#[derive(Debug, Default)]
struct Part {
    /// Order id -> acknowledgement.
    acked: HashMap<String, Acked>,
    /// Orders the simulated merchants accepted (their refunds keep the stock).
    accepted: HashSet<String>,
}

/// Shared, append-only record of the run.
#[derive(Debug)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
    parts: Vec<Mutex<Part>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            inner: Mutex::default(),
            parts: (0..PARTS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The part that keeps order `id`.
    fn part(&self, id: &str) -> std::sync::MutexGuard<'_, Part> {
        let i = crate::cluster::shard_of(id, PARTS as u32) as usize;
        self.parts[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every part in turn.
    fn each_part(&self) -> impl Iterator<Item = std::sync::MutexGuard<'_, Part>> {
        self.parts
            .iter()
            .map(|p| p.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records a 201 for order `id`.
    pub fn acked(&self, id: &str, order: Acked) {
        use std::collections::hash_map::Entry;
        let mut part = self.part(id);
        // One lookup: the id is new for nearly every answer (a repeat is a replay).
        match part.acked.entry(id.to_string()) {
            Entry::Vacant(v) => {
                v.insert(order);
            }
            Entry::Occupied(prev) if prev.get().key != order.key => {
                drop(part);
                self.lock().duplicates.push(id.to_string());
            }
            Entry::Occupied(_) => {}
        }
    }

    /// Records a create request with no definite answer.
    pub fn unknown(&self, u: Unknown) {
        self.lock().unknown.push(u);
    }

    /// Records that a simulated merchant accepted `order_id`.
    pub fn accepted(&self, order_id: &str) {
        self.part(order_id).accepted.insert(order_id.to_string());
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

    /// All acknowledged orders, by id.
    pub fn acked_orders(&self) -> Vec<(String, Acked)> {
        let mut all = Vec::new();
        for p in self.each_part() {
            all.extend(p.acked.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Number of acknowledged orders.
    pub fn acked_count(&self) -> usize {
        self.each_part().map(|p| p.acked.len()).sum()
    }

    /// Ids acknowledged twice for different keys.
    pub fn duplicates(&self) -> Vec<String> {
        self.lock().duplicates.clone()
    }

    /// Whether a simulated merchant accepted `order_id`.
    pub fn was_accepted(&self, order_id: &str) -> bool {
        self.part(order_id).accepted.contains(order_id)
    }

    /// Create answers by kind.
    pub fn answers(&self) -> BTreeMap<String, u64> {
        self.lock().answers.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(key: &str) -> Acked {
        Acked {
            merchant_id: "m".into(),
            lines: vec![("s".into(), 1)],
            key: key.into(),
        }
    }

    #[test]
    fn orders_spread_over_the_parts_and_come_back_once_each_by_id() {
        let ledger = Ledger::default();
        let n = 6_400;
        for i in (0..n).rev() {
            ledger.acked(&format!("ord-{i:05}"), ack(&format!("k{i}")));
        }
        // The same answer again (a replay with its own key) is no duplicate.
        ledger.acked("ord-00007", ack("k7"));
        assert_eq!(ledger.acked_count(), n);
        assert!(ledger.duplicates().is_empty());
        let used = ledger
            .parts
            .iter()
            .filter(|p| !p.lock().unwrap().acked.is_empty())
            .count();
        assert_eq!(used, PARTS, "every part holds some orders");
        let all = ledger.acked_orders();
        let ids: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
        let expected: Vec<String> = (0..n).map(|i| format!("ord-{i:05}")).collect();
        assert_eq!(ids, expected, "every order once, sorted by id");
        assert_eq!(all[7].1.key, "k7");
    }

    #[test]
    fn one_id_acknowledged_for_two_keys_is_a_duplicate() {
        let ledger = Ledger::default();
        ledger.acked("ord-1", ack("a"));
        ledger.acked("ord-1", ack("b"));
        assert_eq!(ledger.duplicates(), vec!["ord-1".to_string()]);
        assert_eq!(ledger.acked_count(), 1);
        assert_eq!(
            ledger.acked_orders()[0].1.key,
            "a",
            "the first answer stays"
        );
    }

    #[test]
    fn accepted_orders_are_remembered() {
        let ledger = Ledger::default();
        ledger.accepted("ord-1");
        assert!(ledger.was_accepted("ord-1"));
        assert!(!ledger.was_accepted("ord-2"));
    }
}
