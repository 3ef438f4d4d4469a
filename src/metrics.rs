//! Prometheus metrics, registered once in the default registry and rendered at `/metrics`.

use once_cell::sync::{Lazy, OnceCell};
use prometheus::{
    register_counter, register_gauge, register_gauge_vec, register_histogram,
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

fn must<T>(r: prometheus::Result<T>, name: &str) -> T {
    match r {
        Ok(m) => m,
        // Registration only fails on a programming error (duplicate or malformed name).
        Err(e) => panic!("metric {name}: {e}"),
    }
}

/// HTTP latency by route template and status.
pub static HTTP_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    must(
        register_histogram_vec!(
            "waimai_http_request_duration_seconds",
            "HTTP request latency by route and status",
            &["route", "status"],
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
        ),
        "http",
    )
});

/// Live actors by kind.
pub static ACTORS_ACTIVE: Lazy<IntGaugeVec> = Lazy::new(|| {
    must(
        register_int_gauge_vec!("waimai_actors_active", "Live actors by kind", &["kind"]),
        "actors_active",
    )
});

/// Actor restarts after a panic, by kind.
pub static ACTOR_RESTARTS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_actor_restarts_total",
            "Actor restarts by kind",
            &["kind"]
        ),
        "restarts",
    )
});

/// Actors passivated for idleness, by kind.
pub static ACTOR_PASSIVATIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_actor_passivations_total",
            "Actors stopped for idleness by kind",
            &["kind"]
        ),
        "passivations",
    )
});

/// Messages routed to actors and not yet answered (mailbox depth), by kind.
pub static MAILBOX_DEPTH: Lazy<IntGaugeVec> = Lazy::new(|| {
    must(
        register_int_gauge_vec!(
            "waimai_mailbox_depth",
            "Messages sent to actors and not yet answered, by kind",
            &["kind"]
        ),
        "mailbox",
    )
});

/// The entity kinds whose mailbox-depth gauges [`mailbox_depth`] keeps: the actors' own
/// `Entity::KIND`s, not a second list of names.
const ENTITY_KINDS: [&str; 4] = {
    use crate::actors::{merchant, order, rider, zone, Entity};
    [
        <order::OrderActor as Entity>::KIND,
        <merchant::MerchantActor as Entity>::KIND,
        <rider::RiderActor as Entity>::KIND,
        <zone::ZoneActor as Entity>::KIND,
    ]
};

/// [`MAILBOX_DEPTH`]'s gauge for `kind`, looked up once per entity kind and kept:
/// `with_label_values` hashes the label and takes the vector's lock, and the router asked it for
/// every message it routed.
pub fn mailbox_depth(kind: &str) -> IntGauge {
    static KEPT: [OnceCell<IntGauge>; ENTITY_KINDS.len()] =
        [const { OnceCell::new() }; ENTITY_KINDS.len()];
    match ENTITY_KINDS.iter().position(|k| *k == kind) {
        Some(i) => KEPT[i]
            .get_or_init(|| MAILBOX_DEPTH.with_label_values(&[kind]))
            .clone(),
        None => MAILBOX_DEPTH.with_label_values(&[kind]),
    }
}

/// Changes per group-commit transaction.
pub static STORE_BATCH_SIZE: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_store_batch_size",
            "Changes per group-commit transaction",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
        ),
        "batch_size",
    )
});

/// Seconds per group-commit transaction.
pub static STORE_BATCH_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_store_batch_seconds",
            "Latency of one group-commit transaction",
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
        ),
        "batch_seconds",
    )
});

/// Checkpoints of the SQLite checkpointer thread (`store/sqlite_writer.rs`) that copied WAL
/// pages into the database file.
pub static STORE_WAL_CHECKPOINTS: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_store_wal_checkpoints_total",
            "Checkpoints of the SQLite checkpointer thread that copied WAL pages into the database"
        ),
        "wal_checkpoints",
    )
});

/// Batches the SQLite fast writer ran, by outcome: `committed`, or `rolled_back` (then run
/// change by change through sqlx, which reports the change that failed).
pub static STORE_FAST_BATCHES: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_store_fast_batches_total",
            "Batches the SQLite fast writer ran, by outcome",
            &["outcome"]
        ),
        "fast_batches",
    )
});

/// Changes the store refused (conflicts, stale fences, errors).
pub static STORE_WRITE_FAILURES: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_store_write_failures_total",
            "Changes the store refused"
        ),
        "write_failures",
    )
});

/// Lock operations by backend, operation (grant, renew, release) and outcome.
pub static LOCK_OPS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_lock_operations_total",
            "Lock grants, renewals and releases by backend and outcome",
            &["backend", "op", "outcome"]
        ),
        "lock_ops",
    )
});

/// Order transitions by from and to status.
pub static ORDER_TRANSITIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_order_transitions_total",
            "Order transitions by from and to status",
            &["from", "to"]
        ),
        "transitions",
    )
});

/// Open websockets by kind (track, merchant_feed, rider_feed).
pub static WS_OPEN: Lazy<IntGaugeVec> = Lazy::new(|| {
    must(
        register_int_gauge_vec!("waimai_ws_open", "Open websockets by kind", &["kind"]),
        "ws_open",
    )
});

/// Messages written to websockets by kind.
pub static WS_SENT: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_ws_messages_sent_total",
            "Messages written to websockets by kind",
            &["kind"]
        ),
        "ws_sent",
    )
});

/// Sockets dropped by the server, by kind and reason (slow, stalled, heartbeat).
pub static WS_DROPS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_ws_drops_total",
            "Websockets the server dropped, by kind and reason",
            &["kind", "reason"]
        ),
        "ws_drops",
    )
});

/// From an actor publishing an event to the event written on a socket.
pub static WS_EVENT_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_ws_event_latency_seconds",
            "Event-to-socket latency: actor publish to websocket write",
            vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0]
        ),
        "ws_event",
    )
});

/// Dispatch outcomes: offered, accepted, declined, expired, failed.
pub static DISPATCH_OFFERS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_dispatch_offers_total",
            "Rider offers by outcome",
            &["outcome"]
        ),
        "dispatch_offers",
    )
});

/// From an order entering dispatch to a rider accepting it.
pub static DISPATCH_TIME_TO_ASSIGN: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_dispatch_time_to_assign_seconds",
            "Time from an order entering dispatch to a rider accepting it",
            vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0]
        ),
        "dispatch_tta",
    )
});

/// Compute time of one dispatch round (the policy's `plan`), by policy and where it ran
/// (`inline` on the zone's actor, `offloaded` on a blocking thread).
pub static DISPATCH_ROUND_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    must(
        register_histogram_vec!(
            "waimai_dispatch_round_seconds",
            "Compute time of one dispatch round",
            &["policy", "where"],
            vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
        ),
        "dispatch_round",
    )
});

/// Waiting orders a dispatch round considered, by policy.
pub static DISPATCH_ROUND_ORDERS: Lazy<HistogramVec> = Lazy::new(|| {
    must(
        register_histogram_vec!(
            "waimai_dispatch_round_orders",
            "Waiting orders per dispatch round",
            &["policy"],
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]
        ),
        "dispatch_round_orders",
    )
});

/// Size of the frames the live dispatch map's socket sends, by kind (snapshot, delta).
pub static OPS_FRAME_BYTES: Lazy<HistogramVec> = Lazy::new(|| {
    must(
        register_histogram_vec!(
            "waimai_ops_frame_bytes",
            "Bytes per live dispatch map frame, by kind",
            &["kind"],
            vec![256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0]
        ),
        "ops_frame_bytes",
    )
});

/// Durable timers fired, by kind (payment_timeout, accept_timeout, auto_complete) and outcome.
pub static TIMERS_FIRED: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_timers_fired_total",
            "Order deadlines fired, by kind and outcome",
            &["kind", "outcome"]
        ),
        "timers",
    )
});

/// Creates waiting at the gateway's door for a turn inside the node.
pub static DOOR_WAITING: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "waimai_door_waiting",
            "Order creations waiting at the door (gateway.door.creates_in_flight) for a turn"
        ),
        "door_waiting",
    )
});

/// How long each create that waited at the door waited, until its turn or until its client gave
/// up (its count is the creates that had to wait). With `waimai_http_request_duration_seconds`
/// for `POST /v1/orders` it splits a create's time into the queue at the door (first come,
/// first in) and the work inside the node.
pub static DOOR_WAIT_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_door_wait_seconds",
            "Time order creations waited at the door, until their turn or until they gave up",
            vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
        ),
        "door_wait_seconds",
    )
});

/// Changes waiting for the store's writers.
pub static STORE_QUEUE_DEPTH: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "waimai_store_queue_depth",
            "Changes queued for the store writers, not yet in a batch"
        ),
        "store_queue",
    )
});

/// Age of the oldest order still in each non-terminal status (sampled).
pub static ORDERS_OLDEST_IN_STATUS: Lazy<GaugeVec> = Lazy::new(|| {
    must(
        register_gauge_vec!(
            "waimai_orders_oldest_in_status_seconds",
            "Age of the oldest order still in each non-terminal status, sampled",
            &["status"]
        ),
        "oldest_in_status",
    )
});

/// Requests forwarded to the node owning their shard, by outcome.
pub static FORWARD_SECONDS: Lazy<HistogramVec> = Lazy::new(|| {
    must(
        register_histogram_vec!(
            "waimai_forward_seconds",
            "Messages forwarded to the node owning their shard, by outcome",
            &["outcome"],
            vec![0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]
        ),
        "forward",
    )
});

/// Shards this node serves.
pub static CLUSTER_SHARDS_OWNED: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!("waimai_cluster_shards_owned", "Shards this node serves"),
        "shards_owned",
    )
});

/// Cluster members with a recent heartbeat, as this node sees them.
pub static CLUSTER_MEMBERS: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "waimai_cluster_members",
            "Cluster members with a recent heartbeat"
        ),
        "members",
    )
});

/// Times this node was fenced out of a shard (a write refused for a stale epoch).
pub static CLUSTER_FENCED: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_cluster_fenced_total",
            "Shards given up because a write carried a superseded epoch"
        ),
        "fenced",
    )
});

/// Messages this node is behind on the events topic.
pub static EVENTS_CONSUMER_LAG: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "waimai_events_consumer_lag",
            "Messages this node's events feed is behind"
        ),
        "consumer_lag",
    )
});

/// Events read from the events topic.
pub static EVENTS_CONSUMED: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_events_consumed_total",
            "Events read from the events topic"
        ),
        "consumed",
    )
});

/// Redelivered order events the feed skipped.
pub static EVENTS_DUPLICATES: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_events_duplicates_total",
            "Order events skipped by the feed as already published"
        ),
        "duplicates",
    )
});

/// Outbox rows shipped to the events topic.
pub static OUTBOX_SHIPPED: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_outbox_shipped_total",
            "Outbox rows shipped to the events topic"
        ),
        "shipped",
    )
});

/// Outbox rows deleted by the retention pruner.
pub static OUTBOX_PRUNED: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_outbox_pruned_total",
            "Outbox rows deleted by the retention pruner (store.outbox_keep_ms)"
        ),
        "pruned",
    )
});

/// Outbox rows of this node's shards not shipped yet.
pub static OUTBOX_PENDING: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "waimai_outbox_pending",
            "Outbox rows of this node's shards not shipped yet"
        ),
        "outbox_pending",
    )
});

/// Age of the oldest unshipped outbox row of this node's shards.
pub static OUTBOX_OLDEST_SECONDS: Lazy<Gauge> = Lazy::new(|| {
    must(
        register_gauge!(
            "waimai_outbox_oldest_pending_seconds",
            "Age of the oldest unshipped outbox row of this node's shards"
        ),
        "outbox_oldest",
    )
});

/// Kafka producers built to replace one that failed fatally.
pub static KAFKA_PRODUCER_REBUILT: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_kafka_producer_rebuilt_total",
            "Kafka producers built to replace one that failed fatally (e.g. idempotence sequence desynchronization)"
        ),
        "producer_rebuilt",
    )
});

/// Live events (offers, positions) that could not be queued for the events topic.
pub static LIVE_EVENTS_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_live_events_dropped_total",
            "Live events that could not be queued for the events topic"
        ),
        "live_dropped",
    )
});

/// From a change's commit time (its event's `created_at`) to the relay's acknowledged produce.
pub static OUTBOX_SHIP_DELAY: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_outbox_ship_delay_seconds",
            "From an outbox row's creation to the broker acknowledging it",
            vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
        ),
        "ship_delay",
    )
});

/// From a change's commit time to this node's events feed reading it.
pub static EVENTS_FEED_DELAY: Lazy<Histogram> = Lazy::new(|| {
    must(
        register_histogram!(
            "waimai_events_feed_delay_seconds",
            "From an event's creation to this node's feed reading it from the topic",
            vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
        ),
        "feed_delay",
    )
});

/// Payment outcomes: intent_created, paid, declined, refunded, duplicate_event,
/// refund_late_payment, callback_rejected, reconciled.
pub static PAYMENTS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_payments_total",
            "Payment intents, callbacks and refunds by outcome",
            &["outcome"]
        ),
        "payments",
    )
});

/// Circuit breaker state by dependency: 0 closed, 1 open, 2 half-open.
pub static BREAKER_STATE: Lazy<IntGaugeVec> = Lazy::new(|| {
    must(
        register_int_gauge_vec!(
            "waimai_breaker_state",
            "Circuit breaker state by dependency (0 closed, 1 open, 2 half-open)",
            &["dependency"]
        ),
        "breaker_state",
    )
});

/// Calls refused by an open breaker, by dependency.
pub static BREAKER_REJECTED: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_breaker_rejected_total",
            "Calls refused at once by an open circuit breaker, by dependency",
            &["dependency"]
        ),
        "breaker_rejected",
    )
});

/// Requests answered 429, by route class and the key that ran out (customer, ip).
pub static RATE_LIMITED: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_rate_limited_total",
            "Requests refused with 429 by route class and scope",
            &["class", "scope"]
        ),
        "rate_limited",
    )
});

/// Writes shed with 503 overloaded, by reason (shard, store).
pub static SHED: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_shed_total",
            "Writes refused by admission control, by reason",
            &["reason"]
        ),
        "shed",
    )
});

/// Browse cache lookups by outcome: hit, miss, negative_hit, invalid_id.
pub static BROWSE_CACHE: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_browse_cache_total",
            "Merchant browse cache lookups by outcome",
            &["outcome"]
        ),
        "browse_cache",
    )
});

/// Merchant reads the store answered.
pub static STORE_MERCHANT_READS: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_store_merchant_reads_total",
            "Merchant reads the store answered: one merchant (`one`, an actor starting) or the whole catalog (`all`)",
            &["scope"]
        ),
        "store_merchant_reads",
    )
});

/// Order reads the store answered (an order actor starting, or a refused create checking for
/// an earlier attempt under its idempotency key).
pub static STORE_ORDER_READS: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_store_order_reads_total",
            "Order reads the store answered (an actor starting, or a refused create looking for an earlier attempt)"
        ),
        "store_order_reads",
    )
});

/// Merchants in this node's catalog (the browse index).
pub static CATALOG_MERCHANTS: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "waimai_catalog_merchants",
            "Merchants in this node's browse catalog (bloom filter and spatial index)"
        ),
        "catalog_merchants",
    )
});

/// Merchant changes the catalog applied, by source.
pub static CATALOG_CHANGES: Lazy<IntCounterVec> = Lazy::new(|| {
    must(
        register_int_counter_vec!(
            "waimai_catalog_changes_total",
            "Merchant changes applied to this node's catalog, by source (local, events, refresh)",
            &["source"]
        ),
        "catalog_changes",
    )
});

/// Loads the browse cache made from the merchant actors (one per key under a stampede).
pub static BROWSE_LOADS: Lazy<IntCounter> = Lazy::new(|| {
    must(
        register_int_counter!(
            "waimai_browse_loads_total",
            "Merchant reads the browse cache sent to the merchant actors"
        ),
        "browse_loads",
    )
});

/// This process's CPU time (user + system), read at each scrape.
pub static PROCESS_CPU: Lazy<Counter> = Lazy::new(|| {
    must(
        register_counter!(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds (in steps of 10 ms)"
        ),
        "process_cpu",
    )
});

/// This process's resident memory, read at each scrape.
pub static PROCESS_RSS: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!(
            "process_resident_memory_bytes",
            "Resident memory size in bytes"
        ),
        "process_rss",
    )
});

/// This process's open file descriptors (sockets included), read at each scrape.
pub static PROCESS_FDS: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!("process_open_fds", "Number of open file descriptors"),
        "process_fds",
    )
});

/// This process's threads, read at each scrape.
pub static PROCESS_THREADS: Lazy<IntGauge> = Lazy::new(|| {
    must(
        register_int_gauge!("process_threads", "Number of OS threads in the process"),
        "process_threads",
    )
});

/// The fields of a `/proc/<pid>/stat` line after the command name (which is in parentheses and
/// may hold spaces): index 0 is field 3 (`state`) of proc(5).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or_else(Vec::new, |(_, rest)| rest.split_whitespace().collect())
}

/// User + system CPU from [`stat_fields`], in clock ticks of 10 ms (100 per second on every
/// Linux this runs on).
fn cpu_of(fields: &[&str]) -> Option<std::time::Duration> {
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

/// This process's CPU time so far (user + system), from `/proc/self/stat` (Linux only; `None`
/// elsewhere), in steps of 10 ms.
pub fn process_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_of(&stat_fields(&stat))
}

/// Reads the `process_*` metrics from `/proc/self` (Linux; left at 0 elsewhere). The CPU
/// counter is kept here rather than by prometheus' own process collector, whose counter moves
/// in whole seconds: too coarse to compare runs of a few seconds.
fn read_process() {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let fields = stat_fields(&stat);
        if let Some(cpu) = cpu_of(&fields) {
            let delta = cpu.as_secs_f64() - PROCESS_CPU.get();
            if delta > 0.0 {
                PROCESS_CPU.inc_by(delta);
            }
        }
        if let Some(threads) = fields.get(17).and_then(|t| t.parse().ok()) {
            PROCESS_THREADS.set(threads);
        }
    }
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        });
    if let Some(kib) = rss_kib {
        PROCESS_RSS.set(kib * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        PROCESS_FDS.set(dir.count() as i64);
    }
}

/// The value of the sample `series` (its name and labels, exactly as exposed) on a Prometheus
/// text page; `None` when it is absent or not a number.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    read_process();
    Lazy::force(&HTTP_SECONDS);
    Lazy::force(&ACTORS_ACTIVE);
    Lazy::force(&ACTOR_RESTARTS);
    Lazy::force(&ACTOR_PASSIVATIONS);
    Lazy::force(&MAILBOX_DEPTH);
    Lazy::force(&STORE_BATCH_SIZE);
    Lazy::force(&STORE_BATCH_SECONDS);
    Lazy::force(&STORE_WRITE_FAILURES);
    Lazy::force(&STORE_FAST_BATCHES);
    Lazy::force(&STORE_WAL_CHECKPOINTS);
    Lazy::force(&LOCK_OPS);
    Lazy::force(&ORDER_TRANSITIONS);
    Lazy::force(&WS_OPEN);
    Lazy::force(&WS_SENT);
    Lazy::force(&WS_DROPS);
    Lazy::force(&WS_EVENT_SECONDS);
    Lazy::force(&DISPATCH_OFFERS);
    Lazy::force(&DISPATCH_TIME_TO_ASSIGN);
    Lazy::force(&DISPATCH_ROUND_SECONDS);
    Lazy::force(&DISPATCH_ROUND_ORDERS);
    Lazy::force(&OPS_FRAME_BYTES);
    Lazy::force(&TIMERS_FIRED);
    Lazy::force(&STORE_QUEUE_DEPTH);
    Lazy::force(&ORDERS_OLDEST_IN_STATUS);
    Lazy::force(&FORWARD_SECONDS);
    Lazy::force(&CLUSTER_SHARDS_OWNED);
    Lazy::force(&CLUSTER_MEMBERS);
    Lazy::force(&CLUSTER_FENCED);
    Lazy::force(&EVENTS_CONSUMER_LAG);
    Lazy::force(&EVENTS_CONSUMED);
    Lazy::force(&EVENTS_DUPLICATES);
    Lazy::force(&OUTBOX_SHIPPED);
    Lazy::force(&OUTBOX_PENDING);
    Lazy::force(&OUTBOX_OLDEST_SECONDS);
    Lazy::force(&LIVE_EVENTS_DROPPED);
    Lazy::force(&KAFKA_PRODUCER_REBUILT);
    Lazy::force(&OUTBOX_SHIP_DELAY);
    Lazy::force(&EVENTS_FEED_DELAY);
    Lazy::force(&PAYMENTS);
    Lazy::force(&BREAKER_STATE);
    Lazy::force(&BREAKER_REJECTED);
    Lazy::force(&RATE_LIMITED);
    Lazy::force(&SHED);
    Lazy::force(&DOOR_WAITING);
    Lazy::force(&DOOR_WAIT_SECONDS);
    Lazy::force(&BROWSE_CACHE);
    Lazy::force(&BROWSE_LOADS);
    Lazy::force(&STORE_MERCHANT_READS);
    Lazy::force(&STORE_ORDER_READS);
    Lazy::force(&CATALOG_MERCHANTS);
    Lazy::force(&CATALOG_CHANGES);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = "process_cpu_seconds_total";

    /// Every entity kind has a kept gauge, and a kept gauge is the vector's own child: what one
    /// counts the other shows (and a kind not kept still gets its child).
    #[test]
    fn kept_mailbox_gauges_are_the_vectors_children() {
        use crate::actors::{
            merchant::MerchantActor, order::OrderActor, rider::RiderActor, zone::ZoneActor, Entity,
        };
        let kinds = [
            OrderActor::KIND,
            MerchantActor::KIND,
            RiderActor::KIND,
            ZoneActor::KIND,
        ];
        for kind in kinds {
            assert!(ENTITY_KINDS.contains(&kind), "{kind} is not kept");
        }
        for kind in kinds.into_iter().chain(["not-an-entity"]) {
            let kept = mailbox_depth(kind);
            let before = MAILBOX_DEPTH.with_label_values(&[kind]).get();
            kept.add(3);
            assert_eq!(MAILBOX_DEPTH.with_label_values(&[kind]).get(), before + 3);
            assert_eq!(mailbox_depth(kind).get(), before + 3, "asked again");
            kept.sub(3);
        }
    }

    #[test]
    fn the_process_cpu_counter_is_read_from_a_metrics_page() {
        let page =
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_other 9\n\
                    process_cpu_seconds_total 12.34\n";
        assert_eq!(sample(page, CPU), Some(12.34));
        // A node without the process collector, or a page that is not Prometheus text.
        assert_eq!(sample("waimai_orders_total 3\n", CPU), None);
        assert_eq!(sample("process_cpu_seconds_total x\n", CPU), None);
        assert_eq!(sample("", CPU), None);
    }

    #[test]
    fn a_histogram_sum_and_count_are_read_apart_from_its_buckets() {
        let page = "waimai_door_wait_seconds_bucket{le=\"0.3\"} 61\n\
                    waimai_door_wait_seconds_sum 29.19\n\
                    waimai_door_wait_seconds_count 100\n";
        assert_eq!(sample(page, "waimai_door_wait_seconds_sum"), Some(29.19));
        assert_eq!(sample(page, "waimai_door_wait_seconds_count"), Some(100.0));
        assert_eq!(
            sample(page, "waimai_door_wait_seconds_bucket{le=\"0.3\"}"),
            Some(61.0)
        );
    }

    #[test]
    fn stat_fields_start_after_a_command_name_with_spaces_and_parentheses() {
        // proc(5): pid (comm) state ppid ... utime stime ... num_threads (field 20).
        let line = "4242 (waimai (x) y) S 1 2 3 4 5 6 7 8 9 10 150 37 0 0 20 0 9 0 100 200";
        let fields = stat_fields(line);
        assert_eq!(fields[0], "S");
        assert_eq!(
            cpu_of(&fields),
            Some(std::time::Duration::from_millis((150 + 37) * 10))
        );
        assert_eq!(fields[17], "9");
        assert!(stat_fields("no parenthesis at all").is_empty());
        assert_eq!(cpu_of(&stat_fields("1 (short) S 1")), None);
    }

    #[test]
    fn the_cpu_counter_follows_the_process_in_ticks_not_whole_seconds() {
        // Some work, so the process has CPU time that is not a whole number of seconds.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let before = process_cpu().expect("/proc/self/stat").as_secs_f64();
        let page = render();
        let after = process_cpu().expect("/proc/self/stat").as_secs_f64();
        let counted = PROCESS_CPU.get();
        assert!(
            before - 1e-6 <= counted && counted <= after + 1e-6,
            "counter {counted} outside [{before}, {after}]"
        );
        assert!(page.contains("# TYPE process_cpu_seconds_total counter"));
        assert!(PROCESS_RSS.get() > 0 && PROCESS_FDS.get() > 0 && PROCESS_THREADS.get() > 0);
    }
}
