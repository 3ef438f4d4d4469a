//! The events feed: every node reads every partition of the events topic, from its end when
//! the node starts, and publishes what it reads to its own websocket hub. It is not a member
//! of any consumer group (each node needs every event), and commits nothing.
//!
//! Order events become the same `status` / `new_order` / `assigned` ... messages a single node
//! publishes straight from the order actor (`realtime::publish_order`); live events are
//! published as they are. An order event older than one already published for that order
//! (a redelivery) is skipped. Merchant events go to the node's catalog (its browse index and
//! bloom filter), which tells the browse cache to forget that merchant. The consumer's lag, from librdkafka's statistics, is exported
//! as `waimai_events_consumer_lag`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::{ClientContext, Message, Offset, Statistics, TopicPartitionList};

use super::{BusError, EventRecord, TRACEPARENT};
use crate::actors::order_machine::OrderStatus;
use crate::catalog::{Catalog, ProfileEvent, Source};
use crate::metrics;
use crate::model::Order;
use crate::realtime::{publish_order, Hub, LiveEvent};

/// Keeps the consumer lag from librdkafka's statistics.
pub struct LagContext {
    /// Messages behind, summed over partitions.
    pub lag: Arc<AtomicI64>,
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        let lag: i64 = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0)
            .map(|p| p.consumer_lag.max(0))
            .sum();
        self.lag.store(lag, Ordering::Relaxed);
        metrics::EVENTS_CONSUMER_LAG.set(lag);
    }
}

impl ConsumerContext for LagContext {}

/// Starts reading `topic` (all `partitions`, from their ends as of this call). The end offsets
/// are read before this returns (it blocks: call it off the async threads), so every event
/// produced after it is read. With `Offset::End` librdkafka resolved the end lazily, at its
/// first fetch: a node that had just started could skip an event produced in between, and a
/// tracking socket opened on it right after its snapshot then lacked that version.
pub fn consumer(
    mut config: rdkafka::ClientConfig,
    topic: &str,
    partitions: u32,
    fetch_wait_ms: u64,
    lag: Arc<AtomicI64>,
) -> Result<StreamConsumer<LagContext>, BusError> {
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.max(1).to_string())
        .set("fetch.min.bytes", "1")
        .set("statistics.interval.ms", "2000")
        // librdkafka manages even a manual assignment through a group handle, so it needs a
        // group id; nothing subscribes or commits under it, so no group is ever joined.
        .set(
            "group.id",
            format!("waimai-feed-{}", uuid::Uuid::new_v4().simple()),
        );
    let c: StreamConsumer<LagContext> = config.create_with_context(LagContext { lag })?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let (_, end) = c.fetch_watermarks(topic, p, std::time::Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(end))?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Publishes everything read to `hub`, and merchant changes to `catalog`, until the consumer
/// is dropped.
pub async fn run(consumer: StreamConsumer<LagContext>, hub: Hub, catalog: Arc<Catalog>) {
    let mut latest: HashMap<String, i64> = HashMap::new();
    loop {
        let msg = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "events feed: read failed");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(body) = msg.payload() else {
            continue;
        };
        match serde_json::from_slice::<EventRecord>(body) {
            Ok(record) => {
                metrics::EVENTS_CONSUMED.inc();
                let delay = (crate::domain::now_ms() - record.created_at).max(0);
                metrics::EVENTS_FEED_DELAY.observe(delay as f64 / 1000.0);
                // The delivery continues the trace of the command that committed the event.
                let span = tracing::info_span!(
                    target: "waimai::bus",
                    "event.deliver",
                    otel.name = "deliver event to sockets",
                    otel.kind = "consumer",
                    event = %record.event_type,
                    entity = %record.aggregate_id,
                );
                let tp = msg.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == TRACEPARENT)
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                });
                if tp.is_some() {
                    crate::telemetry::continue_trace(&span, tp);
                }
                span.in_scope(|| publish(&hub, &catalog, record, &mut latest));
            }
            Err(e) => tracing::debug!(error = %e, "events feed: skipped a record it cannot read"),
        }
        if latest.len() > 200_000 {
            latest.clear(); // bounded memory; sockets de-duplicate by version as well
        }
    }
}

/// Publishes one record to the hub (or, for a merchant's, to the catalog).
fn publish(hub: &Hub, catalog: &Catalog, record: EventRecord, latest: &mut HashMap<String, i64>) {
    match record.aggregate_type.as_str() {
        "merchant" => match record.event_type.as_str() {
            "merchant_created" | "merchant_opened" | "merchant_closed" => {
                match serde_json::from_value::<ProfileEvent>(record.payload) {
                    Ok(ev) => catalog.apply_event(&record.aggregate_id, &ev),
                    Err(_) => catalog.touched(&record.aggregate_id, Source::Events),
                }
            }
            _ => catalog.touched(&record.aggregate_id, Source::Events),
        },
        "live" => {
            if let Ok(ev) = serde_json::from_value::<LiveEvent>(record.payload) {
                ev.publish(hub);
            }
        }
        "order" => {
            let (order, from, previous_rider) = match record.event_type.as_str() {
                "order_created" => (
                    serde_json::from_value::<Order>(record.payload).ok(),
                    None,
                    None,
                ),
                "order_status_changed" => {
                    let p = record.payload;
                    (
                        p.get("order")
                            .and_then(|o| serde_json::from_value::<Order>(o.clone()).ok()),
                        p.get("from")
                            .and_then(|f| serde_json::from_value::<OrderStatus>(f.clone()).ok()),
                        p.get("previous_rider_id")
                            .and_then(|r| r.as_str())
                            .map(str::to_string),
                    )
                }
                _ => (None, None, None),
            };
            let Some(order) = order else {
                return;
            };
            if latest.get(&order.id).is_some_and(|v| *v >= order.version) {
                metrics::EVENTS_DUPLICATES.inc();
                return;
            }
            latest.insert(order.id.clone(), order.version);
            publish_order(hub, from, previous_rider.as_deref(), &order);
        }
        _ => {}
    }
}
