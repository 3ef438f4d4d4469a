//! Live events in a cluster: offers and rider positions are not persisted, so they skip the
//! outbox and go to the events topic straight from the node that makes them, best effort
//! (an offer lost here is still in the rider's snapshot; a position is superseded by the next).

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::EventRecord;
use crate::cluster::shard_of;
use crate::domain::now_ms;
use crate::metrics;
use crate::realtime::{LiveEvent, LiveSink, Topic};

/// Produces live events to the events topic.
pub struct KafkaLive {
    producer: FutureProducer,
    topic: String,
    shards: u32,
}

impl KafkaLive {
    /// A sink producing to `topic` (with `shards` partitions).
    pub fn new(producer: FutureProducer, topic: String, shards: u32) -> Self {
        KafkaLive {
            producer,
            topic,
            shards,
        }
    }
}

impl LiveSink for KafkaLive {
    fn send(&self, event: LiveEvent) {
        let key = match &event.topic {
            Topic::Order(id) | Topic::Merchant(id) | Topic::Rider(id) => id.clone(),
        };
        let record = EventRecord {
            seq: 0,
            aggregate_type: "live".into(),
            aggregate_id: key.clone(),
            event_type: event.kind.clone(),
            version: None,
            created_at: now_ms(),
            payload: serde_json::to_value(&event).unwrap_or_default(),
        };
        let Ok(body) = serde_json::to_vec(&record) else {
            return;
        };
        let partition = shard_of(&key, self.shards) as i32;
        let sent = self.producer.send_result(
            FutureRecord::to(&self.topic)
                .partition(partition)
                .key(key.as_bytes())
                .payload(&body),
        );
        if sent.is_err() {
            metrics::LIVE_EVENTS_DROPPED.inc();
        }
        // The delivery future is dropped: the message is still delivered, nobody waits for it.
    }
}
