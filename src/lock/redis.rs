//! Redis leases: `SET key token NX PX ttl` plus `INCR` of a fencing counter in one Lua script;
//! renew and release compare the token first, so a stale holder can do neither.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::Script;

use super::LockError;

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
    acquire: Script,
    renew: Script,
    release: Script,
}

fn unavailable(e: redis::RedisError) -> LockError {
    LockError::Unavailable(e.to_string())
}

impl RedisLocks {
    /// Connects to `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LockError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(RedisLocks {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_string(),
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
        self.inner
            .acquire
            .key(self.lock_key(key))
            .key(self.fence_key(key))
            .arg(token)
            .arg(ttl_ms)
            .arg(floor)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Extends if `token` holds the key.
    pub async fn renew(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool, LockError> {
        let mut conn = self.inner.conn.clone();
        let n: i64 = self
            .inner
            .renew
            .key(self.lock_key(key))
            .arg(token)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// Deletes if `token` holds the key.
    pub async fn release(&self, key: &str, token: &str) -> Result<bool, LockError> {
        let mut conn = self.inner.conn.clone();
        let n: i64 = self
            .inner
            .release
            .key(self.lock_key(key))
            .arg(token)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    /// PING.
    pub async fn ping(&self) -> Result<(), LockError> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
