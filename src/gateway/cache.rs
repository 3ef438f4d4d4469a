//! The merchant browse cache: `GET /v1/merchants/{id}` (a merchant and its menu, the most
//! frequent read) answered from a per-node `moka` cache instead of the merchant's actor.
//!
//! The three classic cache failures and the defence against each:
//! - *penetration* (requests for ids that do not exist reaching the store every time): ids are
//!   checked before anything is asked (merchant ids are UUIDs; anything else is a 404 at once),
//!   and an id the actor reported unknown is remembered as unknown for `negative_ttl_ms`;
//! - *breakdown* (a hot key expiring and a stampede of loads): `try_get_with` runs one load per
//!   key while every other caller of that key waits for its result (single-flight);
//! - *avalanche* (many keys expiring at once): each entry's TTL is shortened by a random share
//!   of up to `jitter`.
//!
//! Freshness: a menu or open/closed change made through this node invalidates the entry at
//! once; everything else (stock counts, which move with every order, and changes made through
//! other nodes) is *bounded-stale*: at most `ttl_ms` old. Invalidating on every stock change
//! would make a hot merchant's entry useless (it changes with each order) and would need the
//! merchant's actor, possibly on another node, to reach every node's cache. An operator's or
//! the merchant's own read bypasses the cache (and refreshes it), so they always see the
//! actor's exact state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use crate::cluster::Router;
use crate::config::CacheConfig;
use crate::domain::{Caller, Role};
use crate::error::Error;
use crate::messages::{GetMerchant, MerchantView};
use crate::metrics;

/// A cached answer.
#[derive(Clone)]
enum Entry {
    /// The merchant's JSON, as the API sends it.
    Found(Bytes),
    /// The id is not a merchant.
    Missing,
}

#[derive(Clone)]
struct Slot {
    entry: Entry,
    /// This entry's TTL (jittered).
    ttl: Duration,
}

struct Ttl;

impl moka::Expiry<String, Slot> for Ttl {
    fn expire_after_create(&self, _: &String, v: &Slot, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// The per-node merchant read cache.
#[derive(Clone)]
pub struct BrowseCache {
    cfg: CacheConfig,
    cache: Option<moka::future::Cache<String, Slot>>,
    router: Router,
}

impl BrowseCache {
    /// A cache per `cfg` in front of `router`'s merchant actors (none when disabled).
    pub fn new(cfg: CacheConfig, router: Router) -> Self {
        let cache = cfg.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.capacity.max(1))
                .expire_after(Ttl)
                .build()
        });
        BrowseCache { cfg, cache, router }
    }

    /// Whether `caller`'s read of merchant `id` is served from the cache: not for operators
    /// nor for the merchant itself, who see the actor's exact state.
    pub fn serves(&self, caller: &Caller, id: &str) -> bool {
        self.cache.is_some()
            && !caller.is_admin()
            && !(caller.role == Role::Merchant && caller.id == id)
    }

    fn ttl(&self, base_ms: u64) -> Duration {
        let jitter = self.cfg.jitter.clamp(0.0, 0.9);
        let cut = if jitter > 0.0 {
            rand::thread_rng().gen_range(0.0..jitter)
        } else {
            0.0
        };
        Duration::from_millis(((base_ms as f64) * (1.0 - cut)).max(1.0) as u64)
    }

    /// Merchant `id` as JSON: from the cache, or loaded from its actor once for all callers.
    pub async fn get(&self, id: &str) -> Result<Bytes, Error> {
        let Some(cache) = &self.cache else {
            return self.load(id).await;
        };
        if uuid::Uuid::try_parse(id).is_err() {
            metrics::BROWSE_CACHE
                .with_label_values(&["invalid_id"])
                .inc();
            return Err(Error::not_found("merchant", id.to_string()));
        }
        if let Some(slot) = cache.get(id).await {
            return self.answer(id, slot, "hit");
        }
        let loaded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = loaded.clone();
        let slot = cache
            .try_get_with(id.to_string(), async move {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                match self.load(id).await {
                    Ok(json) => Ok(Slot {
                        entry: Entry::Found(json),
                        ttl: self.ttl(self.cfg.ttl_ms),
                    }),
                    Err(Error::NotFound { .. }) => Ok(Slot {
                        entry: Entry::Missing,
                        ttl: self.ttl(self.cfg.negative_ttl_ms),
                    }),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| Error::clone(&e))?;
        // The callers that waited for another's load count as hits: they caused no load.
        let outcome = if loaded.load(std::sync::atomic::Ordering::Relaxed) {
            "miss"
        } else {
            "hit"
        };
        self.answer(id, slot, outcome)
    }

    fn answer(&self, id: &str, slot: Slot, outcome: &'static str) -> Result<Bytes, Error> {
        match slot.entry {
            Entry::Found(json) => {
                metrics::BROWSE_CACHE.with_label_values(&[outcome]).inc();
                Ok(json)
            }
            Entry::Missing => {
                let outcome = if outcome == "hit" {
                    "negative_hit"
                } else {
                    outcome
                };
                metrics::BROWSE_CACHE.with_label_values(&[outcome]).inc();
                Err(Error::not_found("merchant", id.to_string()))
            }
        }
    }

    /// Asks the merchant's actor.
    async fn load(&self, id: &str) -> Result<Bytes, Error> {
        metrics::BROWSE_LOADS.inc();
        let view = self.router.send(id, GetMerchant).await?;
        encode(&view)
    }

    /// Stores a view read from the actor directly (an operator's or the merchant's own read).
    pub async fn refresh(&self, id: &str, view: &MerchantView) {
        if let (Some(cache), Ok(json)) = (&self.cache, encode(view)) {
            let slot = Slot {
                entry: Entry::Found(json),
                ttl: self.ttl(self.cfg.ttl_ms),
            };
            cache.insert(id.to_string(), slot).await;
        }
    }

    /// Forgets merchant `id` (after a change made through this node, or its creation).
    pub async fn invalidate(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(id).await;
        }
    }
}

fn encode(view: &MerchantView) -> Result<Bytes, Error> {
    serde_json::to_vec(view)
        .map(Bytes::from)
        .map_err(|e| Error::Unavailable(format!("encoding a merchant: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_jittered_downwards_within_the_share() {
        let cfg = CacheConfig {
            enabled: true,
            capacity: 10,
            ttl_ms: 1000,
            jitter: 0.2,
            negative_ttl_ms: 5000,
        };
        let cache = BrowseCache::new(cfg, Router::new(1));
        let ttls: Vec<u128> = (0..200).map(|_| cache.ttl(1000).as_millis()).collect();
        assert!(ttls.iter().all(|t| (800..=1000).contains(t)), "{ttls:?}");
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(distinct.len() > 20, "TTLs are not spread: {distinct:?}");
    }
}
