//! The merchant catalog every node keeps for browsing, outside the actors: a bloom filter of
//! every merchant id, and a spatial index of every merchant's profile (name, location, open).
//!
//! - The bloom filter (`fastbloom`'s `AtomicBloomFilter`, lock-free, 3.6 MB for a million ids
//!   at a 1-in-a-million false-positive rate) is the penetration defence: a read of an id it has
//!   never seen is a 404 without an actor, a cache entry or a store query.
//! - The spatial index ([`geo`]) answers `GET /v1/merchants?near=` without an actor.
//!
//! How it stays current: the whole `merchants` table is read when the node starts and merged
//! again every `gateway.cache.catalog_refresh_ms` (merchants are never deleted, and a merge
//! never replaces a newer version with an older one). In between, a change made through this
//! node is applied at once by the API, and a change made through another node arrives with its
//! event on the events topic (`bus::feed`). Every applied change is announced on
//! [`Catalog::changes`], so the browse cache forgets that merchant.
//!
//! The bound on staleness: a change is visible through the node it was made through at once,
//! through other nodes after the events feed's delay (milliseconds), and at worst after
//! `catalog_refresh_ms` if the event was lost.

pub mod geo;

use std::sync::RwLock;

use fastbloom::AtomicBloomFilter;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::config::CacheConfig;
use crate::domain::Location;
use crate::metrics;
use crate::model::Merchant;
use crate::store::{Store, StoreError};
pub use geo::{Cursor, NearbyMerchant, NearbyPage};
use geo::{Index, Upsert};

/// The profile fields a `merchant_created` / `merchant_opened` / `merchant_closed` event
/// carries (its outbox payload).
#[derive(Debug, Clone, Deserialize)]
pub struct ProfileEvent {
    /// Whether it takes orders.
    pub open: bool,
    /// Display name.
    pub name: String,
    /// The profile's version after the change.
    pub version: i64,
    /// Where it is (absent from events written before the catalog existed).
    #[serde(default)]
    pub location: Option<Location>,
}

/// Where a change came from (the `source` label of `waimai_catalog_changes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Made through this node (the API applied what the actor answered).
    Local,
    /// Read from the events topic (any node's change).
    Events,
    /// The periodic merge with the store.
    Refresh,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Events => "events",
            Source::Refresh => "refresh",
        }
    }
}

/// One node's merchant catalog.
pub struct Catalog {
    bloom: AtomicBloomFilter,
    bloom_items: u64,
    index: RwLock<Index>,
    changes: broadcast::Sender<String>,
}

impl Catalog {
    /// An empty catalog whose bloom filter is sized per `cfg`.
    pub fn new(cfg: &CacheConfig) -> Self {
        let fp = if cfg.bloom_false_pos > 0.0 && cfg.bloom_false_pos < 1.0 {
            cfg.bloom_false_pos
        } else {
            1e-6
        };
        let items = cfg.bloom_items.max(1);
        Catalog {
            bloom: AtomicBloomFilter::with_false_pos(fp).expected_items(items as usize),
            bloom_items: items,
            index: RwLock::new(Index::default()),
            changes: broadcast::channel(4096).0,
        }
    }

    /// Whether merchant `id` may exist (`false`: it certainly does not).
    pub fn may_exist(&self, id: &str) -> bool {
        self.bloom.contains(id)
    }

    /// Ids of merchants whose cached reads are out of date, as they change.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// How many merchants the index holds.
    fn len(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a merchant's profile as an actor answered it or the store holds it.
    pub fn apply(&self, m: &Merchant, source: Source) {
        let (done, len) = {
            let mut idx = self.write();
            let done = idx.upsert(m);
            // Inserted under the index's lock, so a filter and index never disagree for long.
            if done == Upsert::New {
                self.bloom.insert(m.id.as_str());
            }
            (done, idx.len())
        };
        self.applied(&m.id, done, len, source);
    }

    /// Applies a profile event of merchant `id` read from the events topic.
    pub fn apply_event(&self, id: &str, ev: &ProfileEvent) {
        match ev.location {
            Some(location) => self.apply(
                &Merchant {
                    id: id.to_string(),
                    name: ev.name.clone(),
                    location,
                    open: ev.open,
                    version: ev.version,
                },
                Source::Events,
            ),
            None => {
                let (done, len) = {
                    let mut idx = self.write();
                    (
                        idx.update_profile(id, ev.open, &ev.name, ev.version),
                        idx.len(),
                    )
                };
                // Without a location it cannot be indexed, but it does exist.
                self.bloom.insert(id);
                self.applied(id, done, len, Source::Events);
            }
        }
    }

    /// Merchant `id` changed in a way the profile does not show (its menu): cached reads of it
    /// are out of date.
    pub fn touched(&self, id: &str, source: Source) {
        metrics::CATALOG_CHANGES
            .with_label_values(&[source.label()])
            .inc();
        let _ = self.changes.send(id.to_string());
    }

    fn applied(&self, id: &str, done: Upsert, len: usize, source: Source) {
        if done == Upsert::Stale {
            return;
        }
        metrics::CATALOG_MERCHANTS.set(len as i64);
        metrics::CATALOG_CHANGES
            .with_label_values(&[source.label()])
            .inc();
        if done == Upsert::New && len as u64 == self.bloom_items + 1 {
            tracing::warn!(
                items = self.bloom_items,
                "the merchant bloom filter holds more ids than it was sized for: its \
                 false-positive rate now rises; raise gateway.cache.bloom_items"
            );
        }
        let _ = self.changes.send(id.to_string());
    }

    /// Merges every merchant the store holds (at start, then periodically). Returns how many
    /// it holds.
    pub async fn refresh(&self, store: &Store) -> Result<usize, StoreError> {
        let all = store.list_merchants().await?;
        for m in &all {
            self.apply(m, Source::Refresh);
        }
        Ok(self.len())
    }

    /// Merchants near `at` (see [`geo`]).
    pub fn near(
        &self,
        at: Location,
        radius_m: f64,
        open_only: bool,
        limit: usize,
        after: Option<&Cursor>,
    ) -> NearbyPage {
        self.read().near(at, radius_m, open_only, limit, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CacheConfig {
        CacheConfig {
            enabled: true,
            capacity: 10,
            ttl_ms: 1000,
            jitter: 0.0,
            negative_ttl_ms: 1000,
            redis: "off".into(),
            bloom_items: 10_000,
            bloom_false_pos: 1e-6,
            catalog_refresh_ms: 1000,
        }
    }

    #[test]
    fn the_filter_knows_every_merchant_applied_and_almost_nothing_else() {
        let c = Catalog::new(&cfg());
        let ids: Vec<String> = (0..5000)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            c.apply(
                &Merchant {
                    id: id.clone(),
                    name: "m".into(),
                    location: Location {
                        lat: 31.0 + (i as f64) * 1e-4,
                        lng: 121.0,
                    },
                    open: true,
                    version: 1,
                },
                Source::Local,
            );
        }
        assert!(ids.iter().all(|id| c.may_exist(id)));
        let strangers = (0..100_000)
            .filter(|_| c.may_exist(&uuid::Uuid::new_v4().to_string()))
            .count();
        // 1e-6 at 10,000 ids: 0.1 expected among 100,000; 3 would be a broken filter.
        assert!(strangers < 3, "{strangers} unknown ids got past the filter");
        assert_eq!(c.len(), 5000);
    }

    #[test]
    fn events_without_a_location_update_a_held_merchant_and_admit_a_new_id() {
        let c = Catalog::new(&cfg());
        let mut rx = c.changes();
        let at = Location {
            lat: 31.2,
            lng: 121.4,
        };
        c.apply_event(
            "a",
            &ProfileEvent {
                open: true,
                name: "A".into(),
                version: 1,
                location: Some(at),
            },
        );
        assert_eq!(rx.try_recv().ok().as_deref(), Some("a"));
        c.apply_event(
            "a",
            &ProfileEvent {
                open: false,
                name: "A".into(),
                version: 2,
                location: None,
            },
        );
        assert_eq!(rx.try_recv().ok().as_deref(), Some("a"));
        assert!(c.near(at, 10.0, true, 10, None).merchants.is_empty());
        assert_eq!(c.near(at, 10.0, false, 10, None).merchants.len(), 1);
        // A redelivered older event changes nothing and announces nothing.
        c.apply_event(
            "a",
            &ProfileEvent {
                open: true,
                name: "A".into(),
                version: 1,
                location: Some(at),
            },
        );
        assert!(rx.try_recv().is_err());
        assert!(c.near(at, 10.0, true, 10, None).merchants.is_empty());
        c.apply_event(
            "b",
            &ProfileEvent {
                open: true,
                name: "B".into(),
                version: 1,
                location: None,
            },
        );
        assert!(c.may_exist("b"));
    }
}
