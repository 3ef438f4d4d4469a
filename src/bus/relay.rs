//! The outbox relay: ships the outbox rows of the shards this node owns to the events topic,
//! then marks them shipped.
//!
//! It wakes after every commit that wrote outbox rows (and every second regardless), reads the
//! unshipped rows of its shards in `seq` order, produces each to the partition of its shard
//! keyed by its entity id, waits for the broker's acknowledgement (`acks=all`, idempotent
//! producer, so a retried send is not duplicated in the log), and only then marks the rows
//! shipped. A crash between the acknowledgement and the mark ships those rows again on the
//! next owner: delivery is at least once, and consumers de-duplicate by (entity, version).
//! A shard being handed over is flushed (`flush`) before the rebalance is acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::EventRecord;
use crate::cluster::Directory;
use crate::metrics;
use crate::store::Store;

/// Rows read per round.
const ROUND: usize = 512;

/// Ships outbox rows of owned shards.
pub struct Relay {
    store: Store,
    producer: FutureProducer,
    topic: String,
    dir: Arc<Directory>,
    /// One round at a time (the loop and a handoff's flush).
    turn: tokio::sync::Mutex<()>,
}

impl Relay {
    /// A relay producing with `producer` (idempotent, `acks=all`) to `topic`.
    pub fn new(store: Store, producer: FutureProducer, topic: String, dir: Arc<Directory>) -> Self {
        Relay {
            store,
            producer,
            topic,
            dir,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Ships until stopped: after each commit with events, and every second.
    pub async fn run(self: Arc<Self>) {
        loop {
            let shards: Vec<u32> = self.dir.serving().into_iter().map(|(s, _)| s).collect();
            if let Err(e) = self.ship_all(&shards).await {
                tracing::warn!(error = %e, "outbox relay round failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.store.outbox_written()).await;
        }
    }

    /// Ships everything unshipped of `shards` (a handoff's last round), giving up at `deadline`.
    pub async fn flush(&self, shards: &[u32], deadline: Duration) {
        match tokio::time::timeout(deadline, self.ship_all(shards)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, ?shards, "outbox flush failed; the next owner ships the rest")
            }
            Err(_) => tracing::warn!(
                ?shards,
                "outbox flush timed out; the next owner ships the rest"
            ),
        }
    }

    /// Ships rounds until a round comes back short; returns how many rows were shipped.
    async fn ship_all(&self, shards: &[u32]) -> Result<usize, String> {
        if shards.is_empty() {
            return Ok(0);
        }
        let _turn = self.turn.lock().await;
        let mut total = 0;
        loop {
            let rows = self
                .store
                .unshipped(shards, ROUND)
                .await
                .map_err(|e| e.to_string())?;
            let n = rows.len();
            if n == 0 {
                return Ok(total);
            }
            let bodies = rows
                .iter()
                .map(|row| serde_json::to_vec(&EventRecord::from_outbox(row.seq, &row.event)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let sends: Vec<_> = rows
                .iter()
                .zip(&bodies)
                .map(|(row, body)| {
                    let record = FutureRecord::to(&self.topic)
                        .partition(row.shard as i32)
                        .key(row.event.aggregate_id.as_bytes())
                        .payload(body);
                    self.producer.send(record, Duration::from_secs(5))
                })
                .collect();
            let results = futures::future::join_all(sends).await;
            let mut shipped = Vec::with_capacity(n);
            let mut failed = None;
            for (row, r) in rows.iter().zip(results) {
                match r {
                    Ok(_) => shipped.push(row.seq),
                    Err((e, _)) => failed = Some(e.to_string()),
                }
            }
            self.store
                .mark_shipped(&shipped)
                .await
                .map_err(|e| e.to_string())?;
            metrics::OUTBOX_SHIPPED.inc_by(shipped.len() as u64);
            total += shipped.len();
            if let Some(e) = failed {
                return Err(format!("producing to {}: {e}", self.topic));
            }
            if n < ROUND {
                return Ok(total);
            }
        }
    }
}
