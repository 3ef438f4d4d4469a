//! Lease backends for stock locks: Redis (`SET key token NX PX ttl`, token-checked release and
//! renewal in Lua, a fencing counter per key) and an in-process one for the embedded default.
//! The lock actor (`actors::lock`) sits in front of a backend and renews held leases.

mod local;
mod redis;

pub use self::local::LocalLocks;
pub use self::redis::RedisLocks;

use crate::config::{LockBackendKind, LockConfig};

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The locked key (without prefix).
    pub key: String,
    /// The holder's secret; only it can renew or release.
    pub token: String,
    /// The fencing token: strictly greater than every earlier grant's on this key.
    pub fence: i64,
}

/// Lock failures.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LockError {
    /// Someone else holds the key.
    #[error("{0} is held by another owner")]
    Held(String),
    /// The lease expired or was taken over; the holder must stop writing.
    #[error("lease on {0} was lost")]
    Lost(String),
    /// The lock service cannot be reached.
    #[error("lock service unavailable: {0}")]
    Unavailable(String),
}

/// The configured backend.
#[derive(Clone)]
pub enum LockBackend {
    /// In-process.
    Local(LocalLocks),
    /// Redis.
    Redis(RedisLocks),
}

impl LockBackend {
    /// Builds the backend the config names (connecting to Redis if needed).
    pub async fn from_config(cfg: &LockConfig) -> Result<Self, LockError> {
        Self::from_config_guarded(cfg, crate::breaker::BreakerSettings::default()).await
    }

    /// Like `from_config`, with these circuit breaker settings around Redis.
    pub async fn from_config_guarded(
        cfg: &LockConfig,
        breaker: crate::breaker::BreakerSettings,
    ) -> Result<Self, LockError> {
        Ok(match cfg.backend {
            LockBackendKind::Local => LockBackend::Local(LocalLocks::new()),
            LockBackendKind::Redis => LockBackend::Redis(
                RedisLocks::connect_guarded(&cfg.redis_url, &cfg.key_prefix, breaker).await?,
            ),
        })
    }

    /// `local` or `redis`, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            LockBackend::Local(_) => "local",
            LockBackend::Redis(_) => "redis",
        }
    }

    /// Grants a lease on `key` for `ttl_ms` unless someone holds it. The fence is at least `floor`.
    pub async fn acquire(&self, key: &str, ttl_ms: u64, floor: i64) -> Result<Lease, LockError> {
        let token = uuid::Uuid::new_v4().to_string();
        let fence = match self {
            LockBackend::Local(l) => l.acquire(key, &token, ttl_ms, floor),
            LockBackend::Redis(r) => r.acquire(key, &token, ttl_ms, floor).await?,
        };
        match fence {
            Some(fence) => Ok(Lease {
                key: key.to_string(),
                token,
                fence,
            }),
            None => Err(LockError::Held(key.to_string())),
        }
    }

    /// Extends a lease still held by `lease.token`.
    pub async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<(), LockError> {
        let ok = match self {
            LockBackend::Local(l) => l.renew(&lease.key, &lease.token, ttl_ms),
            LockBackend::Redis(r) => r.renew(&lease.key, &lease.token, ttl_ms).await?,
        };
        if ok {
            Ok(())
        } else {
            Err(LockError::Lost(lease.key.clone()))
        }
    }

    /// Releases a lease if `lease.token` still holds it; a stale token releases nothing.
    pub async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        Ok(match self {
            LockBackend::Local(l) => l.release(&lease.key, &lease.token),
            LockBackend::Redis(r) => r.release(&lease.key, &lease.token).await?,
        })
    }

    /// Checks the backend answers.
    pub async fn ping(&self) -> Result<(), LockError> {
        match self {
            LockBackend::Local(_) => Ok(()),
            LockBackend::Redis(r) => r.ping().await,
        }
    }
}
