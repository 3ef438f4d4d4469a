//! Load shedding: admission control before any work is queued. A write is refused with a fast
//! 503 `overloaded` (and `Retry-After`) while the shard it would go to already has
//! `gateway.shed.shard_depth` requests in flight on this node, or while
//! `gateway.shed.store_depth` changes wait for the store's writers. A request is only ever
//! refused here, before it reaches an actor, so nothing already accepted is dropped.

use crate::cluster::Router;
use crate::config::ShedConfig;
use crate::metrics;
use crate::store::Store;

/// A shed request: what the 503 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overloaded {
    /// `shard` or `store`.
    pub reason: &'static str,
    /// The depth seen.
    pub depth: i64,
    /// The configured limit.
    pub limit: i64,
    /// `Retry-After`, seconds.
    pub retry_after_s: u64,
}

/// The admission check of one node.
#[derive(Clone)]
pub struct Admission {
    cfg: ShedConfig,
    router: Router,
    store: Store,
}

impl Admission {
    /// Checks against `router`'s shard depths and `store`'s writer queue.
    pub fn new(cfg: ShedConfig, router: Router, store: Store) -> Self {
        Admission { cfg, router, store }
    }

    /// Whether any check is on.
    pub fn enabled(&self) -> bool {
        self.cfg.shard_depth > 0 || self.cfg.store_depth > 0
    }

    fn shed(&self, reason: &'static str, depth: i64, limit: i64) -> Overloaded {
        metrics::SHED.with_label_values(&[reason]).inc();
        Overloaded {
            reason,
            depth,
            limit,
            retry_after_s: self.cfg.retry_after_s.max(1),
        }
    }

    /// Admits a write unless the store's writer queue is past its depth.
    pub fn check_store(&self) -> Result<(), Overloaded> {
        let limit = self.cfg.store_depth;
        if limit > 0 {
            let depth = self.store.queued();
            if depth >= limit {
                return Err(self.shed("store", depth, limit));
            }
        }
        Ok(())
    }

    /// Admits a write to the entities `ids` unless one of their shards is past its depth.
    pub fn check_shards(&self, ids: &[&str]) -> Result<(), Overloaded> {
        let limit = self.cfg.shard_depth;
        if limit > 0 {
            for id in ids {
                let depth = self.router.depth(self.router.shard_of(id));
                if depth >= limit {
                    return Err(self.shed("shard", depth, limit));
                }
            }
        }
        Ok(())
    }
}
