//! Prometheus metrics, registered once in the default registry and rendered at `/metrics`.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, TextEncoder,
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

/// The text exposition of every registered metric.
pub fn render() -> String {
    Lazy::force(&HTTP_SECONDS);
    Lazy::force(&ACTORS_ACTIVE);
    Lazy::force(&ACTOR_RESTARTS);
    Lazy::force(&ACTOR_PASSIVATIONS);
    Lazy::force(&MAILBOX_DEPTH);
    Lazy::force(&STORE_BATCH_SIZE);
    Lazy::force(&STORE_BATCH_SECONDS);
    Lazy::force(&STORE_WRITE_FAILURES);
    Lazy::force(&LOCK_OPS);
    Lazy::force(&ORDER_TRANSITIONS);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
