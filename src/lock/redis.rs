//! Redis leases: `SET key token NX PX ttl` plus `INCR` of a fencing counter in one Lua script;
//! renew and release compare the token first, so a stale holder can do neither.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::Script;

use super::LockError;
use crate::breaker::{Breaker, BreakerError, BreakerSettings};

const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local f = redis.call('INCR', KEYS[2])
  local floor = tonumber(ARGV[3])
  if f < floor then
    redis.call('SET', KEYS[2], floor)
    f = floor
  end
  return f
end
return false
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A Redis-backed lease table. Cheap to clone (the lock actor clones its backend per operation).
#[derive(Clone)]
pub struct RedisLocks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Multiplexed, reconnecting connection.
    conn: ConnectionManager,
    /// Prefix for every key.
    prefix: String,
    /// Every call goes through it: a timeout each, refused at once while Redis is failing.
    breaker: Breaker,
    acquire: Script,
    renew: Script,
    release: Script,
}

fn unavailable(e: BreakerError<redis::RedisError>) -> LockError {
    LockError::Unavailable(e.to_string())
}

impl RedisLocks {
    /// Connects to `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LockError> {
        Self::connect_guarded(url, prefix, BreakerSettings::default()).await
    }

    /// Connects to `url`, with a breaker of these settings around every call.
    pub async fn connect_guarded(
        url: &str,
        prefix: &str,
        breaker: BreakerSettings,
    ) -> Result<Self, LockError> {
        let down = |e: redis::RedisError| LockError::Unavailable(e.to_string());
        let client = redis::Client::open(url).map_err(down)?;
        let conn = ConnectionManager::new(client).await.map_err(down)?;
        Ok(RedisLocks {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_string(),
                breaker: Breaker::new("redis", breaker),
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
            }),
        })
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.inner.prefix)
    }

    fn fence_key(&self, key: &str) -> String {
        format!("{}:fence:{key}", self.inner.prefix)
    }

    /// Grants if free; returns the fence.
    pub async fn acquire(
        &self,
        key: &str,
        token: &str,
        ttl_ms: u64,
        floor: i64,
    ) -> Result<Option<i64>, LockError> {
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.acquire.prepare_invoke();
        inv.key(self.lock_key(key))
            .key(self.fence_key(key))
            .arg(token)
            .arg(ttl_ms)
            .arg(floor);
        self.inner
            .breaker
            .call(inv.invoke_async(&mut conn), |_| true)
            .await
            .map_err(unavailable)
    }

    /// Extends if `token` holds the key.
    pub async fn renew(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool, LockError> {
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.renew.prepare_invoke();
        inv.key(self.lock_key(key)).arg(token).arg(ttl_ms);
        let n: i64 = self
            .inner
            .breaker
            .call(inv.invoke_async(&mut conn), |_| true)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// Deletes if `token` holds the key.
    pub async fn release(&self, key: &str, token: &str) -> Result<bool, LockError> {
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.release.prepare_invoke();
        inv.key(self.lock_key(key)).arg(token);
        let n: i64 = self
            .inner
            .breaker
            .call(inv.invoke_async(&mut conn), |_| true)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// PING.
    pub async fn ping(&self) -> Result<(), LockError> {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        self.inner
            .breaker
            .call(ping.query_async::<String>(&mut conn), |_| true)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
