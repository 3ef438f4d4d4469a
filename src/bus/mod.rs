//! The event bus of a cluster: Kafka (or any broker speaking its protocol).
//!
//! # Layout
//! - [`EventRecord`]: the schema of a message on `<prefix>.events` (what external consumers
//!   read too).
//! - [`relay`]: ships each owned shard's outbox rows to the topic (idempotent producer,
//!   `acks=all`, keyed by entity id, partition = shard), then marks them shipped.
//! - [`feed`]: every node reads every partition of the topic (not as a group member) and feeds
//!   its websocket hub; it also reports its consumer lag.
//! - [`live`]: live events that are not persisted (offers, rider positions) go to the same
//!   topic directly.
//! - [`producer`]: the producer the relay and the live events share, rebuilt when librdkafka
//!   declares it dead (a fatal error such as an idempotence sequence desynchronization).
//! - [`topics`]: creates the topics (or checks their partition count) at start.

pub mod feed;
pub mod live;
pub mod producer;
pub mod relay;
pub mod topics;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::model::OutboxEvent;

/// The topic whose partitions are the shards (its consumer group decides ownership).
pub fn shards_topic(cfg: &ClusterConfig) -> String {
    format!("{}.shards", cfg.topic_prefix)
}

/// The topic every event goes to.
pub fn events_topic(cfg: &ClusterConfig) -> String {
    format!("{}.events", cfg.topic_prefix)
}

/// Settings every Kafka client of this node shares.
pub fn client_config(cfg: &ClusterConfig, node_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("waimai-{node_id}"))
        .set("socket.nagle.disable", "true")
        .set("log_level", "4");
    c
}

/// Bus failures (at start; at run time they are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The broker refused or could not be reached.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic exists with a shape this node cannot use.
    #[error("{0}")]
    Topic(String),
}

/// Waits for a produced message's delivery and reports it to the `kafka` breaker through
/// `pass`; whether the broker acknowledged it. A failed delivery has `producer` checked for a
/// fatal error (and rebuilt if it died).
pub(crate) async fn delivered(
    delivery: rdkafka::producer::DeliveryFuture,
    pass: crate::breaker::Pass,
    producer: std::sync::Arc<producer::Producer>,
) -> bool {
    let outcome = delivery.await;
    let ok = matches!(outcome, Ok(Ok(_)));
    if !ok {
        producer.check();
    }
    pass.done(ok, || match outcome {
        Ok(Err((e, _))) => format!("delivery failed: {e}"),
        _ => "delivery cancelled".to_string(),
    });
    ok
}

/// The Kafka header that carries an event's W3C trace context (the committing command's).
pub const TRACEPARENT: &str = "traceparent";

/// One message on `<prefix>.events`, as JSON. The Kafka key is `aggregate_id`; the partition
/// is the entity's shard (`murmur2(key) % partitions`, Kafka's own default partitioner). A
/// traced command's events carry its W3C trace context in the `traceparent` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The outbox row's sequence number (`0` for live events, which have no row).
    pub seq: i64,
    /// `order`, `merchant`, `rider`, or `live` (an offer or a rider's position).
    pub aggregate_type: String,
    /// The entity's id (for live events, the id of whoever follows it).
    pub aggregate_id: String,
    /// `order_created`, `order_status_changed`, `merchant_opened`, ...; for live events the
    /// client-facing type (`offer`, `offer_withdrawn`, `rider_location`).
    pub event_type: String,
    /// The entity's version after the change, when it has one: consumers de-duplicate by
    /// (aggregate_id, version), since delivery is at least once.
    pub version: Option<i64>,
    /// When the change was committed, ms since the epoch.
    pub created_at: i64,
    /// The event's body.
    pub payload: serde_json::Value,
}

impl EventRecord {
    /// The record of an outbox row.
    pub fn from_outbox(seq: i64, e: &OutboxEvent) -> Self {
        let payload = e.payload.value();
        EventRecord {
            seq,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            event_type: e.event_type.clone(),
            version: payload.get("version").and_then(|v| v.as_i64()),
            created_at: e.created_at,
            payload,
        }
    }
}
