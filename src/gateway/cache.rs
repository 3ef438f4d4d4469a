//! The merchant browse cache: `GET /v1/merchants/{id}` (a merchant and its menu, the most
//! frequent read) answered from a per-node `moka` cache, with Redis as a second level shared by
//! every node, instead of the merchant's actor.
//!
//! The three classic cache failures and the defence against each:
//! - *penetration* (requests for ids that do not exist reaching the store every time): ids
//!   that are not UUIDs are a 404 at once, and so is any id the catalog's bloom filter has
//!   never seen ([`crate::catalog`]): no cache entry, no actor, no store query. An id that gets
//!   past the filter (one in a million) and that the actor reports unknown is remembered as
//!   unknown for `negative_ttl_ms`;
//! - *breakdown* (a hot key expiring and a stampede of loads): `try_get_with` runs one load per
//!   key while every other caller of that key waits for its result (single-flight);
//! - *avalanche* (many keys expiring at once): each entry's TTL is shortened by a random share
//!   of up to `jitter`, on both levels.
//!
//! Freshness: every change to a merchant's profile or menu, through any node, reaches this
//! node's catalog (at once from this node's API, from the events topic otherwise), which
//! announces it; this cache then forgets that merchant on both levels. Stock counts, which
//! move with every order and have no event, are *bounded-stale*: at most `ttl_ms` old (an
//! entry taken from Redis keeps only what is left of the Redis TTL). Invalidating on every
//! stock change would make a hot merchant's entry useless. An operator's or the merchant's own
//! read bypasses the cache (and refreshes it), so they always see the actor's exact state.
//!
//! A Redis that fails or whose breaker is open is skipped: reads go to the actors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use redis::aio::ConnectionManager;

use crate::breaker::{Breaker, BreakerSettings};
use crate::catalog::Catalog;
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

/// The second level: merchants' JSON on Redis, shared by every node.
#[derive(Clone)]
pub struct L2 {
    conn: ConnectionManager,
    prefix: String,
    breaker: Breaker,
}

impl L2 {
    /// Connects to `target` (keys `<prefix>:browse:<id>`).
    pub async fn connect(
        target: &super::RedisTarget,
        breaker: BreakerSettings,
    ) -> Result<L2, redis::RedisError> {
        let client = redis::Client::open(target.url.as_str())?;
        Ok(L2 {
            conn: ConnectionManager::new(client).await?,
            prefix: format!("{}:browse", target.prefix),
            breaker: Breaker::new("redis_cache", breaker),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}:{id}", self.prefix)
    }

    /// The JSON and how long it has left, if Redis has it.
    async fn get(&self, id: &str) -> Option<(Bytes, Duration)> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.get(self.key(id)).pttl(self.key(id));
        let got: Result<(Option<Vec<u8>>, i64), _> = self
            .breaker
            .call(pipe.query_async(&mut conn), |_| true)
            .await;
        match got {
            Ok((Some(json), left_ms)) if left_ms > 0 => {
                Some((Bytes::from(json), Duration::from_millis(left_ms as u64)))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "browse cache: Redis skipped");
                None
            }
        }
    }

    /// Keeps `json` for `ttl` (in the background: a read does not wait for it).
    fn put(&self, id: &str, json: Bytes, ttl: Duration) {
        let (l2, key) = (self.clone(), self.key(id));
        tokio::spawn(async move {
            let mut conn = l2.conn.clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(json.as_ref())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            let r: Result<(), _> = l2.breaker.call(cmd.query_async(&mut conn), |_| true).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "browse cache: Redis write skipped");
            }
        });
    }

    /// Forgets merchant `id`.
    async fn forget(&self, id: &str) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(id));
        let r: Result<i64, _> = self
            .breaker
            .call(cmd.query_async(&mut conn), |_| true)
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "browse cache: Redis invalidation skipped (its TTL bounds the entry)");
        }
    }
}

/// How a miss was filled.
const WAITED: u8 = 0;
const FROM_ACTOR: u8 = 1;
const FROM_REDIS: u8 = 2;

/// The per-node merchant read cache.
#[derive(Clone)]
pub struct BrowseCache {
    cfg: CacheConfig,
    cache: Option<moka::future::Cache<String, Slot>>,
    router: Router,
    catalog: Arc<Catalog>,
    l2: Option<L2>,
}

impl BrowseCache {
    /// A cache per `cfg` in front of `router`'s merchant actors (none when disabled), gated by
    /// `catalog`'s bloom filter, with `l2` as its second level.
    pub fn new(cfg: CacheConfig, router: Router, catalog: Arc<Catalog>, l2: Option<L2>) -> Self {
        let cache = cfg.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(cfg.capacity.max(1))
                .expire_after(Ttl)
                .build()
        });
        let l2 = if cfg.enabled { l2 } else { None };
        BrowseCache {
            cfg,
            cache,
            router,
            catalog,
            l2,
        }
    }

    /// Whether a second level on Redis is in use.
    pub fn shared(&self) -> bool {
        self.l2.is_some()
    }

    /// Forgets every merchant the catalog announces as changed, until the catalog is gone.
    pub fn follow(&self) -> tokio::task::JoinHandle<()> {
        let mut changes = self.catalog.changes();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(id) => me.invalidate(&id).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Changes were missed: forget this node's level (Redis entries expire
                        // within their TTL).
                        tracing::warn!(
                            missed = n,
                            "browse cache: fell behind the catalog's changes; cleared"
                        );
                        if let Some(c) = &me.cache {
                            c.invalidate_all();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
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
        if !self.catalog.may_exist(id) {
            metrics::BROWSE_CACHE.with_label_values(&["filtered"]).inc();
            return Err(Error::not_found("merchant", id.to_string()));
        }
        if let Some(slot) = cache.get(id).await {
            return self.answer(id, slot, "hit");
        }
        let filled = Arc::new(std::sync::atomic::AtomicU8::new(WAITED));
        let how = filled.clone();
        let slot = cache
            .try_get_with(id.to_string(), async move {
                if let Some(l2) = &self.l2 {
                    if let Some((json, left)) = l2.get(id).await {
                        how.store(FROM_REDIS, std::sync::atomic::Ordering::Relaxed);
                        return Ok(Slot {
                            entry: Entry::Found(json),
                            ttl: self.ttl(self.cfg.ttl_ms).min(left),
                        });
                    }
                }
                how.store(FROM_ACTOR, std::sync::atomic::Ordering::Relaxed);
                match self.load(id).await {
                    Ok(json) => {
                        let ttl = self.ttl(self.cfg.ttl_ms);
                        if let Some(l2) = &self.l2 {
                            l2.put(id, json.clone(), ttl);
                        }
                        Ok(Slot {
                            entry: Entry::Found(json),
                            ttl,
                        })
                    }
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
        let outcome = match filled.load(std::sync::atomic::Ordering::Relaxed) {
            FROM_ACTOR => "miss",
            FROM_REDIS => "redis_hit",
            _ => "hit",
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

    /// Stores a view read from the actor directly (an operator's or the merchant's own read,
    /// or a change's answer).
    pub async fn refresh(&self, id: &str, view: &MerchantView) {
        if let (Some(cache), Ok(json)) = (&self.cache, encode(view)) {
            let ttl = self.ttl(self.cfg.ttl_ms);
            if let Some(l2) = &self.l2 {
                l2.put(id, json.clone(), ttl);
            }
            let slot = Slot {
                entry: Entry::Found(json),
                ttl,
            };
            cache.insert(id.to_string(), slot).await;
        }
    }

    /// Forgets merchant `id` on both levels.
    pub async fn invalidate(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(id).await;
        }
        if let Some(l2) = &self.l2 {
            l2.forget(id).await;
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
            redis: "off".into(),
            bloom_items: 1000,
            bloom_false_pos: 0.001,
            catalog_refresh_ms: 10_000,
        };
        let catalog = Arc::new(Catalog::new(&cfg));
        let cache = BrowseCache::new(cfg, Router::new(1), catalog, None);
        let ttls: Vec<u128> = (0..200).map(|_| cache.ttl(1000).as_millis()).collect();
        assert!(ttls.iter().all(|t| (800..=1000).contains(t)), "{ttls:?}");
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(distinct.len() > 20, "TTLs are not spread: {distinct:?}");
    }
}
