//! The node's Kafka producer, rebuilt when librdkafka declares it dead.
//!
//! An idempotent producer can fail fatally: when the broker answers a produce with
//! `OutOfOrderSequenceNumber` (its view of the producer's sequence numbers and ours went apart),
//! librdkafka raises a fatal error and every later send and delivery on that producer fails,
//! for good. Retrying on it only fills the logs while events stop. So every send goes through
//! [`Producer::send`], and a failed send or delivery calls [`Producer::check`]: if the producer
//! in use has a fatal error, a new one is built from the same settings (a new producer id,
//! sequences from zero) and every later send uses it. The rows the dead producer did not get
//! acknowledged are still unshipped in the outbox and are sent again; consumers de-duplicate by
//! (entity, version). Counted in `waimai_kafka_producer_rebuilt_total`.

use std::sync::{Arc, RwLock};

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::ClientConfig;

use crate::metrics;

/// A producer that is replaced when it dies. Cheap to share (`Arc`).
pub struct Producer {
    settings: ClientConfig,
    /// The producer in use and its generation (how many were built before it).
    current: RwLock<(u64, FutureProducer)>,
}

impl Producer {
    /// Builds the first producer from `settings`.
    pub fn new(settings: ClientConfig) -> Result<Arc<Self>, KafkaError> {
        let first: FutureProducer = settings.create()?;
        Ok(Arc::new(Producer {
            settings,
            current: RwLock::new((0, first)),
        }))
    }

    /// The producer in use (a cheap handle onto it).
    pub fn get(&self) -> FutureProducer {
        self.read().1.clone()
    }

    /// Queues `record` on the producer in use; a refusal has the producer checked (and rebuilt
    /// if it died) before it is returned.
    #[allow(clippy::result_large_err)] // rdkafka's own shape: the record comes back
    pub fn send<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let sent = self.get().send_result(record);
        if sent.is_err() {
            self.check();
        }
        sent
    }

    /// How many times the producer was rebuilt.
    pub fn generation(&self) -> u64 {
        self.read().0
    }

    /// After a failed delivery (`send` does it for a refused send): if the producer in use died
    /// (a fatal error), builds a new one in its place. Whether it did.
    pub fn check(&self) -> bool {
        let (generation, producer) = {
            let c = self.read();
            (c.0, c.1.clone())
        };
        let Some((code, reason)) = producer.client().fatal_error() else {
            return false;
        };
        let fresh: FutureProducer = match self.settings.create() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "the Kafka producer died and a new one cannot be built; retrying on the next failure");
                return false;
            }
        };
        let old = {
            let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
            if c.0 != generation {
                // Another failure rebuilt it first; `fresh` is not needed.
                drop(c);
                dispose(fresh);
                return false;
            }
            let old = std::mem::replace(&mut c.1, fresh);
            c.0 += 1;
            old
        };
        metrics::KAFKA_PRODUCER_REBUILT.inc();
        tracing::warn!(?code, %reason, generation = generation + 1, "the Kafka producer failed fatally; built a new one (unacknowledged events are sent again)");
        // `old` and `producer` are the same one: the last handle goes off the async threads.
        drop(producer);
        dispose(old);
        true
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (u64, FutureProducer)> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Drops a producer off the async threads: dropping purges its queue and joins its polling
/// thread, which can block for a while.
fn dispose(p: FutureProducer) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(p));
        }
        Err(_) => drop(p),
    }
}
