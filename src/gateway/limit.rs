//! Rate limits per caller (the token's subject) and per client IP, with quotas per route class.
//!
//! Both are GCRA (the generic cell rate algorithm: one "theoretical arrival time" per key, no
//! buckets to refill). In the node they are `governor`'s keyed limiters. With Redis configured
//! (`gateway.limits.backend: auto` and `lock.backend: redis`) one Lua script on Redis keeps the
//! arrival times instead, so N nodes share one quota rather than granting N times it; both keys
//! of a request (caller and IP) are checked and charged in one `EVALSHA`, atomically. If Redis
//! fails or its breaker is open, the node falls back to its own limiters (fail open to the
//! per-node quota rather than refusing everything).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use redis::aio::ConnectionManager;
use redis::Script;

use crate::breaker::{Breaker, BreakerSettings};
use crate::config::QuotaConfig;
use crate::metrics;

/// The route classes quotas are set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// POST and PUT.
    Write,
    /// GET.
    Read,
    /// Websocket connects.
    Ws,
}

impl RouteClass {
    /// The metric label and Redis key part.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Write => "write",
            RouteClass::Read => "read",
            RouteClass::Ws => "ws",
        }
    }

    fn index(self) -> usize {
        match self {
            RouteClass::Write => 0,
            RouteClass::Read => 1,
            RouteClass::Ws => 2,
        }
    }
}

/// A request over its quota: what the 429 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The route class.
    pub class: RouteClass,
    /// `customer` or `ip`: which key ran out.
    pub scope: &'static str,
    /// The quota's burst (`RateLimit-Limit`).
    pub limit: u32,
    /// Seconds until a request would be admitted (`Retry-After`, at least 1).
    pub retry_after_s: u64,
    /// Seconds until the whole burst is available again (`RateLimit-Reset`).
    pub reset_s: u64,
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One key's quota in both forms.
struct Rule {
    /// The node's own limiter.
    local: Keyed,
    /// Burst.
    burst: u32,
    /// One request's share of time (the emission interval), µs.
    interval_us: u64,
}

impl Rule {
    fn new(per_s: f64, burst: u32) -> Option<Rule> {
        if !per_s.is_finite() || per_s <= 0.0 {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / per_s).max(Duration::from_micros(1));
        let burst = NonZeroU32::new(burst.max(1))?;
        let quota = Quota::with_period(interval)?.allow_burst(burst);
        Some(Rule {
            local: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            burst: burst.get(),
            interval_us: interval.as_micros().max(1) as u64,
        })
    }

    /// Checks and charges `key` in this node.
    fn check_local(
        &self,
        key: &str,
        class: RouteClass,
        scope: &'static str,
    ) -> Result<(), Limited> {
        match self.local.check_key(&key.to_string()) {
            Ok(_) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let reset =
                    wait + Duration::from_micros(self.interval_us * u64::from(self.burst - 1));
                Err(Limited {
                    class,
                    scope,
                    limit: self.burst,
                    retry_after_s: ceil_s(wait),
                    reset_s: ceil_s(reset),
                })
            }
        }
    }
}

fn ceil_s(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000).max(1) as u64
}

/// One route class's rules.
struct ClassRules {
    customer: Option<Rule>,
    ip: Option<Rule>,
}

/// GCRA over several keys at once, on Redis time. KEYS = the keys; ARGV = per key its
/// emission interval and its burst, in µs and requests. Nothing is charged unless every key
/// admits the request. Returns `{admitted, index of the key that refused (1-based) or 0,
/// retry after µs, reset µs}`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local news = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tau = interval * (tonumber(ARGV[2 * i]) - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if tat - tau > now then
    return {0, i, tat - tau - now, tat - now}
  end
  news[i] = tat + interval
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], news[i], 'PX', math.floor((news[i] - now) / 1000) + 1)
end
return {1, 0, 0, 0}
"#;

/// The cluster-wide limiter on Redis.
struct RedisGcra {
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    breaker: Breaker,
}

/// The rate limits of one node.
pub struct Limits {
    /// Write, read and websocket rules; replaced whole by a config reload (`set_quotas`).
    classes: std::sync::RwLock<Arc<[ClassRules; 3]>>,
    redis: Option<RedisGcra>,
}

/// The three classes' rules from their quotas.
fn class_rules(write: QuotaConfig, read: QuotaConfig, ws: QuotaConfig) -> [ClassRules; 3] {
    let rules = |q: QuotaConfig| ClassRules {
        customer: Rule::new(q.customer_per_s, q.customer_burst),
        ip: Rule::new(q.ip_per_s, q.ip_burst),
    };
    [rules(write), rules(read), rules(ws)]
}

impl Limits {
    /// Limits with these quotas; with `redis`, cluster-wide through that Redis.
    pub async fn new(
        write: QuotaConfig,
        read: QuotaConfig,
        ws: QuotaConfig,
        redis: Option<super::RedisTarget>,
        breaker: BreakerSettings,
    ) -> Result<Limits, redis::RedisError> {
        let redis = match redis {
            Some(t) => {
                let client = redis::Client::open(t.url.as_str())?;
                Some(RedisGcra {
                    conn: ConnectionManager::new(client).await?,
                    script: Script::new(GCRA),
                    prefix: format!("{}:rl", t.prefix),
                    breaker: Breaker::new("redis_limits", breaker),
                })
            }
            None => None,
        };
        Ok(Limits {
            classes: std::sync::RwLock::new(Arc::new(class_rules(write, read, ws))),
            redis,
        })
    }

    /// New quotas (a config reload). The node's own limiters start afresh under them; the
    /// cluster-wide ones on Redis keep their state (the script takes the quota per call).
    pub fn set_quotas(&self, write: QuotaConfig, read: QuotaConfig, ws: QuotaConfig) {
        let next = Arc::new(class_rules(write, read, ws));
        *self.classes.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    fn rules(&self) -> Arc<[ClassRules; 3]> {
        self.classes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether limits are kept on Redis (cluster-wide).
    pub fn cluster_wide(&self) -> bool {
        self.redis.is_some()
    }

    /// Admits or refuses one request of `class` from `caller` (if it has a valid token) and
    /// `ip`; an admitted request is charged to both keys.
    pub async fn check(
        &self,
        class: RouteClass,
        caller: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), Limited> {
        let classes = self.rules();
        let rules = &classes[class.index()];
        let ip_key = ip.map(|ip| ip.to_string());
        let mut keys: Vec<(&'static str, &str, &Rule)> = Vec::with_capacity(2);
        if let (Some(r), Some(c)) = (&rules.customer, caller) {
            keys.push(("customer", c, r));
        }
        if let (Some(r), Some(ip)) = (&rules.ip, &ip_key) {
            keys.push(("ip", ip, r));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let out = match &self.redis {
            Some(redis) => match self.check_redis(redis, class, &keys).await {
                Some(out) => out,
                None => Self::check_local(class, &keys),
            },
            None => Self::check_local(class, &keys),
        };
        if let Err(l) = &out {
            metrics::RATE_LIMITED
                .with_label_values(&[class.as_str(), l.scope])
                .inc();
        }
        out
    }

    fn check_local(class: RouteClass, keys: &[(&'static str, &str, &Rule)]) -> Result<(), Limited> {
        for (scope, key, rule) in keys {
            rule.check_local(key, class, scope)?;
        }
        Ok(())
    }

    /// `None` when Redis could not answer (the caller falls back to the node's limiters).
    async fn check_redis(
        &self,
        redis: &RedisGcra,
        class: RouteClass,
        keys: &[(&'static str, &str, &Rule)],
    ) -> Option<Result<(), Limited>> {
        let mut inv = redis.script.prepare_invoke();
        for (scope, key, rule) in keys {
            inv.key(format!(
                "{}:{}:{}:{}",
                redis.prefix,
                class.as_str(),
                scope,
                key
            ))
            .arg(rule.interval_us)
            .arg(rule.burst);
        }
        let mut conn = redis.conn.clone();
        let answer: Result<(i64, i64, i64, i64), _> = redis
            .breaker
            .call(inv.invoke_async(&mut conn), |_| true)
            .await;
        match answer {
            Ok((1, _, _, _)) => Some(Ok(())),
            Ok((_, i, wait_us, reset_us)) => {
                let (scope, _, rule) = keys.get((i.max(1) - 1) as usize)?;
                Some(Err(Limited {
                    class,
                    scope,
                    limit: rule.burst,
                    retry_after_s: ceil_s(Duration::from_micros(wait_us.max(0) as u64)),
                    reset_s: ceil_s(Duration::from_micros(reset_us.max(0) as u64)),
                }))
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster-wide rate limit unavailable; limiting in this node");
                None
            }
        }
    }

    /// Forgets keys whose limits have fully recovered (bounds the node's memory).
    pub fn retain_recent(&self) {
        for c in self.rules().iter() {
            for r in [&c.customer, &c.ip].into_iter().flatten() {
                r.local.retain_recent();
            }
        }
    }
}
