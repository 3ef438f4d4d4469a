//! Typed configuration: `config.yaml` (or `--config FILE`) overlaid with `WAIMAI__SECTION__KEY`
//! environment variables.

use serde::{Deserialize, Serialize};

use crate::dispatch::DispatchSettings;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP front door.
    pub server: ServerConfig,
    /// Database.
    pub store: StoreConfig,
    /// Stock lock service.
    pub lock: LockConfig,
    /// Actor sharding and lifecycle.
    pub shards: ShardConfig,
    /// Bearer tokens.
    pub auth: AuthConfig,
    /// Websockets and live events.
    pub realtime: RealtimeConfig,
    /// Automatic rider dispatch.
    pub dispatch: DispatchConfig,
    /// Durable order deadlines.
    pub timers: TimersConfig,
    /// Running as one node of a cluster (off: a single node, as embedded).
    pub cluster: ClusterConfig,
    /// The payment provider and the refund saga.
    pub payments: PaymentsConfig,
    /// Logs and traces.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The file it was read from (`None`: embedded defaults and environment only); a reload
    /// reads it again.
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
    /// The front door's defences: rate limits, load shedding, circuit breakers, browse cache.
    pub gateway: GatewayConfig,
}

/// The front door's defences (`gateway:`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Per-customer and per-client-IP rate limits (429 past them).
    pub limits: LimitsConfig,
    /// Admission control: writes past these depths get a fast 503 `overloaded`.
    pub shed: ShedConfig,
    /// How many order creations are inside the node at once.
    pub door: DoorConfig,
    /// Circuit breakers around Redis, the store and the payment provider.
    pub breaker: BreakerConfig,
    /// The read cache of `GET /v1/merchants/{id}`.
    pub cache: CacheConfig,
}

/// Rate limits (`gateway.limits`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Off: no request is ever limited (the embedded default).
    pub enabled: bool,
    /// `auto`: one cluster-wide limit through Redis when `lock.backend` is `redis`
    /// (`lock.redis_url`); `local`: each node limits on its own (`governor`).
    pub backend: String,
    /// Quotas of writes (POST, PUT).
    pub write: QuotaConfig,
    /// Quotas of reads (GET).
    pub read: QuotaConfig,
    /// Quotas of websocket connects (`.../track`, `.../feed`).
    pub ws: QuotaConfig,
}

/// One route class's quotas; a rate of 0 means no limit on that key.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per second one caller (the token's subject) may make, sustained (may be a
    /// fraction: 0.5 is one every two seconds).
    pub customer_per_s: f64,
    /// How many a caller may make at once.
    pub customer_burst: u32,
    /// Requests per second from one client IP, sustained.
    pub ip_per_s: f64,
    /// How many from one client IP at once.
    pub ip_burst: u32,
}

/// The door for creates (`gateway.door`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DoorConfig {
    /// Order creations let into the node at once; later ones wait in arrival order (0: no
    /// limit).
    pub creates_in_flight: usize,
}

/// Load shedding (`gateway.shed`); 0 turns a check off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShedConfig {
    /// A write whose shard already has this many requests in flight is shed.
    pub shard_depth: i64,
    /// A write is shed while this many changes wait for the store's writers.
    pub store_depth: i64,
    /// The `Retry-After` of a shed request, seconds.
    pub retry_after_s: u64,
}

/// Circuit breakers (`gateway.breaker`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (errors or timeouts) that open a breaker.
    pub failures: u32,
    /// How long an open breaker refuses calls before it lets one probe through, ms.
    pub cooldown_ms: u64,
    /// Longest a call to Redis or the payment provider may take, ms.
    pub timeout_ms: u64,
}

/// The browse cache (`gateway.cache`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Off: every read goes to the merchant's actor.
    pub enabled: bool,
    /// Merchants kept.
    pub capacity: u64,
    /// How long a cached merchant is served, ms (the staleness bound for changes made through
    /// other nodes and for stock counts).
    pub ttl_ms: u64,
    /// Each entry's TTL is shortened by a random share up to this (against avalanche).
    pub jitter: f64,
    /// How long an unknown id is remembered as unknown, ms.
    pub negative_ttl_ms: u64,
    /// The second level: `auto` keeps merchants on Redis too when `lock.backend` is `redis`
    /// (`lock.redis_url`), so one node's load serves every node; `off`: this node only.
    pub redis: String,
    /// Merchant ids the bloom filter is sized for (past this its false-positive rate rises).
    pub bloom_items: u64,
    /// The bloom filter's false-positive rate at `bloom_items` ids.
    pub bloom_false_pos: f64,
    /// How often the catalog (bloom filter and spatial index) is merged with the store's
    /// merchants, ms: the bound on a change this node missed (an event bus outage).
    pub catalog_refresh_ms: u64,
}

/// Payment settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// `sim`: the built-in simulated provider (the only one shipped).
    pub provider: String,
    /// The key callbacks are signed with (HMAC-SHA256). The shipped value is a dev key.
    pub hmac_secret: String,
    /// A callback signed further than this from now is refused, seconds.
    pub tolerance_s: i64,
    /// Where the simulated provider delivers callbacks; empty = this node's own address.
    pub callback_url: String,
    /// The method `POST /v1/orders/{id}/pay` uses when the body names none.
    pub default_method: String,
    /// How long `POST /v1/orders/{id}/pay` waits for a provider that confirms at once, ms.
    pub pay_wait_ms: u64,
    /// How often the reconciler runs, ms.
    pub reconcile_ms: u64,
    /// An intent still open this long is asked about, ms.
    pub reconcile_after_ms: u64,
    /// A refund not confirmed this long is requested again (doubling each time), ms.
    pub refund_retry_ms: u64,
    /// How late the simulated provider's `card_late` calls back, ms.
    pub sim_late_ms: u64,
}

/// The payment callback key shipped in `config.yaml`.
pub const DEV_PAYMENTS_SECRET: &str = "dev-payments-secret-change-me";

/// HTTP front door settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address `serve` listens on unless `--listen` says otherwise.
    pub listen: String,
    /// Largest accepted request body, bytes.
    pub body_limit_bytes: u64,
    /// How long shutdown waits for in-flight work, ms.
    pub shutdown_grace_ms: u64,
}

/// Database settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://data/waimai.db`, `postgres://...` or `mysql://...`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection, ms.
    pub acquire_timeout_ms: u64,
    /// Most changes committed in one transaction (group commit).
    pub batch_max: usize,
    /// Parallel writer transactions (always 1 on SQLite).
    pub writers: usize,
    /// Changes that may wait for the writer before callers are slowed down.
    pub queue_depth: usize,
    /// Outbox rows written longer ago than this are deleted (on a cluster only shipped ones);
    /// 0 keeps them forever. See `store::prune`.
    pub outbox_keep_ms: u64,
    /// How often the outbox pruner runs, ms.
    pub prune_ms: u64,
}

/// Which lock backend grants stock leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockBackendKind {
    /// In-process; for a single node.
    Local,
    /// Redis `SET NX PX` leases with fencing counters; for clusters.
    Redis,
}

/// Lock service settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// `local` or `redis`.
    pub backend: LockBackendKind,
    /// Redis URL when `backend: redis`.
    pub redis_url: String,
    /// Lease length, ms; leases are renewed at a third of it.
    pub lease_ms: u64,
    /// Key prefix, so several deployments can share one Redis.
    pub key_prefix: String,
}

/// Sharding and actor lifecycle.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Number of shards (a shard may later be a Kafka partition).
    pub count: u32,
    /// Arbiters (threads) the shards spread over; 0 means one per core.
    pub arbiters: usize,
    /// An actor idle this long is passivated, ms.
    pub idle_ms: u64,
    /// An actor of a terminal order idle this long is passivated, ms.
    pub terminal_idle_ms: u64,
}

/// Bearer-token settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret. The shipped default is a dev secret: `serve` refuses a non-loopback address
    /// while it is in use.
    pub jwt_secret: String,
    /// Lifetime of tokens minted by `waimai token`, seconds.
    pub token_ttl_secs: u64,
}

/// Websocket and live-event settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Events a socket may have queued before it is disconnected as too slow.
    pub buffer: usize,
    /// Ping interval, ms; a socket silent for two intervals is dropped.
    pub heartbeat_ms: u64,
    /// Longest a single websocket write may take before the client counts as stalled, ms.
    pub send_timeout_ms: u64,
    /// At most one `rider_location` per order per this many ms.
    pub location_interval_ms: u64,
    /// A rider socket passes at most one position per this many ms to the rider (the newest
    /// wins, and a held one goes when the interval ends); 0 passes each at once.
    pub location_hold_ms: u64,
    /// The live dispatch map's socket (`/v1/ops/live`) sends a delta this often, ms.
    pub ops_interval_ms: u64,
}

/// Automatic dispatch settings. serde cannot deny unknown fields beside `flatten`, so the keys
/// nothing took land in `unknown` and `Config::load` refuses them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DispatchConfig {
    /// Whether accepted orders are offered to riders automatically.
    pub enabled: bool,
    /// How long a rider has to answer an offer, ms.
    pub offer_ttl_ms: u64,
    /// How often `greedy` runs a round anyway (waiting orders are retried), ms.
    pub retry_ms: u64,
    /// A round with at least this many orders plus riders is computed on a blocking thread,
    /// not on the zone's actor (whose mailbox keeps being served meanwhile).
    pub offload_at: usize,
    /// Expected food preparation after the merchant accepts, ms: an order's ready time.
    pub prep_ms: i64,
    /// Delivery is promised this long after the order was placed, ms.
    pub promise_ms: i64,
    /// Dispatch zones, each with one dispatcher in the whole cluster. An order belongs to the
    /// first zone that contains its pickup point, a rider to the first that contains its
    /// position; a zone without `bounds` contains everything.
    pub zones: Vec<ZoneConfig>,
    /// The policy and its settings, the keys of `DispatchSettings` at this level (`policy`,
    /// `batch_ms`, `max_radius_m`, `k_nearest`, ..., `max_stack`): the very settings the
    /// simulator takes. Checked by `DispatchSettings::validate` when the node starts.
    #[serde(flatten)]
    pub settings: DispatchSettings,
    /// Keys neither this struct nor `settings` took (refused by `Config::load`).
    #[serde(flatten, skip_serializing)]
    pub unknown: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

/// One dispatch zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone's id (its dispatcher is the entity with this id).
    pub id: String,
    /// `[min_lat, min_lng, max_lat, max_lng]`; absent = the whole map.
    #[serde(default)]
    pub bounds: Option<[f64; 4]>,
}

/// Cluster settings: shards spread over nodes by a Kafka consumer group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Join a cluster. Needs PostgreSQL or MySQL, Redis locks and a Kafka-compatible broker.
    pub enabled: bool,
    /// Kafka bootstrap servers, `host:port[,host:port..]`.
    pub brokers: String,
    /// This node's id; empty = derived from the listen address.
    pub node_id: String,
    /// The base URL other nodes reach this one at; empty = `http://<listen address>`.
    pub advertise: String,
    /// The consumer group whose assignment decides which node owns which shard.
    pub group: String,
    /// Topics are `<prefix>.shards` (ownership) and `<prefix>.events` (outbox events).
    pub topic_prefix: String,
    /// Replication factor for the topics this node creates.
    pub replication_factor: i32,
    /// Kafka group session timeout, ms: a node silent this long loses its shards.
    pub session_timeout_ms: u64,
    /// Kafka group heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// How long a request waits for its shard to be served somewhere (a rebalance), ms.
    pub forward_wait_ms: u64,
    /// Longest wait for a connection to another node, ms.
    pub connect_timeout_ms: u64,
    /// Longest wait for another node's answer to a forwarded request, ms.
    pub forward_timeout_ms: u64,
    /// How often the shard directory is reread from the store, ms.
    pub refresh_ms: u64,
    /// Longest a revoked shard's handoff may take before the rebalance is acknowledged, ms.
    pub handoff_timeout_ms: u64,
    /// How long the events consumer waits for more data before returning a fetch, ms.
    pub fetch_wait_ms: u64,
    /// Ship events with Kafka's idempotent producer (no duplicates from the producer's own
    /// retries). Consumers de-duplicate by (entity, version) regardless, so turning it off
    /// only trades duplicate-free retries for latency on brokers where it is slow.
    pub idempotent_producer: bool,
    /// Longest a produced event may wait for the broker's acknowledgement before it fails and
    /// counts against the `kafka` circuit breaker, ms (the outbox keeps it; it is sent again).
    pub produce_timeout_ms: u64,
}

/// Order deadlines (all persisted implicitly: status + `updated_at` in the order row).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimersConfig {
    /// `pending_payment` longer than this is cancelled and its stock released, ms.
    pub payment_timeout_ms: u64,
    /// `paid` without the merchant's answer longer than this is refunded, ms.
    pub accept_timeout_ms: u64,
    /// `delivered` without the customer's confirmation longer than this completes, ms.
    pub auto_complete_ms: u64,
    /// Timer resolution: due deadlines are fired on this tick, ms.
    pub tick_ms: u64,
}

impl ClusterConfig {
    /// This node's id: the configured one, or one derived from the listen address.
    pub fn node_id(&self, listen: &str) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let cleaned: String = listen
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("node-{}", cleaned.trim_matches('-'))
    }

    /// The URL other nodes reach this one at.
    pub fn advertise(&self, listen: &str) -> String {
        if self.advertise.is_empty() {
            format!("http://{listen}")
        } else {
            self.advertise.trim_end_matches('/').to_string()
        }
    }
}

/// The secret shipped in `config.yaml`; `serve` refuses a non-loopback address while it is in
/// use (see `server::check_secrets`).
pub const DEV_SECRET: &str = "dev-secret-change-me";

/// The embedded defaults (the repository's `config.yaml`).
pub const DEFAULT_YAML: &str = include_str!("../config.yaml");

/// Configuration failures.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read or parsed.
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    /// A key no setting has.
    #[error("config: unknown key {0}")]
    UnknownKey(String),
    /// A value no setting accepts.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl PaymentsConfig {
    /// Where the simulated provider delivers callbacks: `None` for this node's own address
    /// (`callback_url` empty), else the URL, which must be plain `http://` (the provider speaks
    /// HTTP/1.1 without TLS, as a node serves it; it would otherwise start and never deliver a
    /// callback). `Config::load` refuses a config where this fails.
    pub fn callback(&self) -> Result<Option<url::Url>, ConfigError> {
        let url = self.callback_url.as_str();
        if url.is_empty() {
            return Ok(None);
        }
        let invalid = |reason: String| ConfigError::Invalid {
            key: "payments.callback_url",
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(format!("{url:?}: {e}")))?;
        match parsed.scheme() {
            "http" if parsed.host_str().is_some() => Ok(Some(parsed)),
            "http" => Err(invalid(format!("{url:?}: no host"))),
            other => Err(invalid(format!(
                "{url:?}: scheme {other} (want http: the simulated provider speaks plain \
                 HTTP/1.1; put TLS in front of the node, not in the provider)"
            ))),
        }
    }
}

impl Config {
    /// Embedded defaults, then `file` if given, then `WAIMAI__*` environment variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_YAML,
            config::FileFormat::Yaml,
        ));
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).format(config::FileFormat::Yaml));
        }
        b = b.add_source(
            config::Environment::with_prefix("WAIMAI")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let mut cfg: Config = b.build()?.try_deserialize()?;
        if let Some(key) = cfg.dispatch.unknown.keys().next() {
            return Err(ConfigError::UnknownKey(format!("dispatch.{key}")));
        }
        cfg.payments.callback()?;
        cfg.source = file.map(std::path::Path::to_path_buf);
        Ok(cfg)
    }

    /// Embedded defaults only (tests start from this and adjust).
    pub fn defaults() -> Result<Config, ConfigError> {
        let b = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_YAML,
            config::FileFormat::Yaml,
        ));
        Ok(b.build()?.try_deserialize()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{PolicyKind, Solver};

    #[test]
    fn a_callback_url_that_is_not_http_is_refused_at_load() {
        for bad in [
            "not a url",
            "ftp://example.com/cb",
            "http//missing-colon",
            // No TLS in the simulated provider: an https URL would never get a callback.
            "https://node.example:8443/v1/payments/callback",
        ] {
            let yaml = format!("payments:\n  callback_url: \"{bad}\"\n");
            let err = load_yaml("bad-callback", &yaml).expect_err(bad);
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if *key == "payments.callback_url"),
                "{bad}: {err}"
            );
        }
        let ok = load_yaml(
            "good-callback",
            "payments:\n  callback_url: \"http://node.example:8080/v1/payments/callback\"\n",
        )
        .expect("an http URL loads");
        assert_eq!(
            ok.payments.callback_url,
            "http://node.example:8080/v1/payments/callback"
        );
        assert_eq!(
            ok.payments.callback().expect("parses").map(String::from),
            Some("http://node.example:8080/v1/payments/callback".to_string())
        );
        let own = PaymentsConfig {
            callback_url: String::new(),
            ..ok.payments.clone()
        };
        assert_eq!(own.callback().expect("empty is this node"), None);
    }

    fn load_yaml(name: &str, yaml: &str) -> Result<Config, ConfigError> {
        let path = std::env::temp_dir().join(format!("waimai-{name}-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("write temp config");
        let cfg = Config::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        cfg
    }

    #[test]
    fn dispatch_policy_keys_sit_beside_the_others_and_unknown_ones_are_refused() {
        let cfg = Config::defaults().expect("defaults");
        assert_eq!(cfg.dispatch.settings.policy, PolicyKind::Greedy);
        assert_eq!(cfg.dispatch.settings, DispatchSettings::default());
        cfg.dispatch
            .settings
            .validate()
            .expect("shipped settings are valid");

        let cfg = load_yaml(
            "dispatch-ok",
            "dispatch:\n  policy: stacked\n  batch_ms: 150\n  max_detour_m: 900\n  solver: kuhn_munkres\n  offer_ttl_ms: 5000\n",
        )
        .expect("valid file");
        let s = &cfg.dispatch.settings;
        assert_eq!(s.policy, PolicyKind::Stacked);
        assert_eq!(
            (s.batch_ms, s.max_detour_m, s.solver),
            (150, 900.0, Solver::KuhnMunkres)
        );
        assert_eq!(s.max_stack, 3, "keys not given keep the shipped value");
        assert_eq!(cfg.dispatch.offer_ttl_ms, 5000);

        let bad = load_yaml("dispatch-bad", "dispatch:\n  max_stak: 2\n");
        assert!(
            matches!(&bad, Err(ConfigError::UnknownKey(k)) if k == "dispatch.max_stak"),
            "a misspelt key is refused: {bad:?}"
        );
    }
}
