//! Live events in a cluster: offers and rider positions are not persisted, so they skip the
//! outbox and go to the events topic straight from the node that makes them, best effort
//! (an offer lost here is still in the rider's snapshot; a position is superseded by the next).
//! While the `kafka` circuit breaker is open they are dropped at once (counted in
//! `waimai_live_events_dropped_total`) instead of queueing in the producer.

use std::sync::Arc;

use rdkafka::producer::FutureRecord;

use crate::breaker::Breaker;

use super::producer::Producer;
use super::EventRecord;
use crate::cluster::shard_of;
use crate::domain::now_ms;
use crate::metrics;
use crate::realtime::{LiveEvent, LiveSink, Topic};

/// Produces live events to the events topic.
pub struct KafkaLive {
    producer: Arc<Producer>,
    topic: String,
    shards: u32,
    breaker: Breaker,
}

impl KafkaLive {
    /// A sink producing to `topic` (with `shards` partitions), through `breaker`.
    pub fn new(producer: Arc<Producer>, topic: String, shards: u32, breaker: Breaker) -> Self {
        KafkaLive {
            producer,
            topic,
            shards,
            breaker,
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
        let Ok(pass) = self.breaker.pass::<String>() else {
            metrics::LIVE_EVENTS_DROPPED.inc();
            return;
        };
        let Ok(body) = serde_json::to_vec(&record) else {
            return;
        };
        let partition = shard_of(&key, self.shards) as i32;
        let sent = self.producer.send(
            FutureRecord::to(&self.topic)
                .partition(partition)
                .key(key.as_bytes())
                .payload(&body),
        );
        match sent {
            // Nobody waits for the delivery; its outcome only informs the breaker.
            Ok(delivery) => {
                tokio::spawn(super::delivered(delivery, pass, self.producer.clone()));
            }
            Err((e, _)) => {
                pass.done(false, || format!("producing: {e}"));
                metrics::LIVE_EVENTS_DROPPED.inc();
            }
        }
    }
}
