//! The front door's defences, in front of the actors: rate limits per caller and per client
//! IP (`limit`), load shedding (`shed`), the door that order creations queue at in arrival
//! order (`door`) and the merchant browse cache (`cache`). Circuit breakers belong to the
//! dependencies they guard (`crate::breaker`). The `api` module asks these before it sends a
//! message; none of them touches entity state.

pub mod cache;
pub mod door;
pub mod limit;
pub mod shed;

use std::net::IpAddr;

pub use cache::BrowseCache;
pub use door::Door;
pub use limit::{Limited, Limits, RouteClass};
pub use shed::{Admission, Overloaded};

/// Where cluster-wide rate limits are kept.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    /// The Redis URL.
    pub url: String,
    /// Key prefix (the lock service's).
    pub prefix: String,
}

/// Why the gateway refused a request before it reached a handler.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// 429.
    Limited(Limited),
    /// 503 overloaded.
    Overloaded(Overloaded),
}

/// One node's gateway.
pub struct Gateway {
    /// Rate limits, when `gateway.limits.enabled`.
    pub limits: Option<Limits>,
    /// Load shedding.
    pub admission: Admission,
    /// How many creates are inside the node at once.
    pub door: Door,
    /// The merchant read cache.
    pub cache: BrowseCache,
    /// The merchant catalog (the cache's bloom filter, the browse route's spatial index).
    pub catalog: std::sync::Arc<crate::catalog::Catalog>,
}

impl Gateway {
    /// Whether `admit` has anything to check (otherwise the API skips it altogether).
    pub fn active(&self) -> bool {
        self.limits.is_some() || self.admission.enabled()
    }

    /// Admits a request of `class` from `caller` (`None` without a valid token, or for an
    /// operator, who is never limited) at `ip`, whose path names entity `entity` (if any).
    pub async fn admit(
        &self,
        class: RouteClass,
        caller: Option<&str>,
        ip: Option<IpAddr>,
        entity: Option<&str>,
    ) -> Result<(), Refusal> {
        if class == RouteClass::Write {
            self.admission.check_store().map_err(Refusal::Overloaded)?;
            if let Some(id) = entity {
                self.admission
                    .check_shards(&[id])
                    .map_err(Refusal::Overloaded)?;
            }
        }
        // Shedding first: a request refused for the node's load is not charged to the caller.
        if let Some(l) = &self.limits {
            l.check(class, caller, ip).await.map_err(Refusal::Limited)?;
        }
        Ok(())
    }
}
