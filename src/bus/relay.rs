//! The outbox relay: ships the outbox rows of the shards this node owns to the events topic,
//! then marks them shipped.
//!
//! It wakes after every commit that wrote outbox rows (and every second regardless), reads the
//! unshipped rows of its shards in `seq` order, and hands each to the producer for the
//! partition of its shard, keyed by its entity id. It does not wait for the broker's
//! acknowledgement before reading the next rows: acknowledgements are collected beside it,
//! and only acknowledged rows are marked shipped (rows in flight are not read again). So an
//! event's latency is one read plus the broker's append, not a round of acknowledgements.
//! A row whose send failed is read and sent again. A crash between the acknowledgement and the
//! mark ships those rows again on the next owner: delivery is at least once, and consumers
//! de-duplicate by (entity, version). A shard being handed over is flushed (`flush`) before the
//! rebalance is acknowledged. Every message goes through the `kafka` circuit breaker (each
//! delivery bounded by `cluster.produce_timeout_ms`): after `gateway.breaker.failures` failed
//! deliveries the relay stops producing, leaves the rows in the outbox, and sends one probe
//! per cool-down until the broker answers again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::TRACEPARENT;
use tokio::sync::{mpsc, Notify};

use super::producer::Producer;
use super::EventRecord;
use crate::breaker::{Breaker, BreakerError};
use crate::cluster::Directory;
use crate::metrics;
use crate::store::Store;

/// Rows read per round.
const ROUND: usize = 512;

/// How long a round waits for more commits to join it.
const COALESCE: Duration = Duration::from_millis(2);

/// How long acknowledgements gather before they are marked in one statement.
const MARK_EVERY: Duration = Duration::from_millis(25);

/// What the relay knows of rows it sent. A row leaves `in_flight` when its acknowledgement is
/// marked in the store; it is then remembered in `marked` (with the round current at the
/// mark) until a round that began after the mark committed, since a read that started before the
/// commit still sees it unshipped.
#[derive(Default)]
struct Ledger {
    /// Rounds started.
    round: u64,
    /// Rows handed to the producer and not yet marked (or failed).
    in_flight: HashSet<i64>,
    /// Rows marked shipped, with the round current when the mark committed.
    marked: std::collections::HashMap<i64, u64>,
}

/// Ships outbox rows of owned shards.
pub struct Relay {
    store: Store,
    /// Rebuilt when it fails fatally (see `bus::producer`).
    producer: Arc<Producer>,
    topic: String,
    dir: Arc<Directory>,
    /// Around the broker (`waimai_breaker_state{dependency="kafka"}`): while it is open the
    /// outbox keeps the rows.
    breaker: Breaker,
    /// Which rows are on their way (see `Ledger`).
    ledger: Mutex<Ledger>,
    /// Shards being handed over: shipped although no longer served.
    flushing: Mutex<HashSet<u32>>,
    /// Wakes the loop (a flush asked for a round).
    wake: Notify,
    /// Wakes flushes when acknowledgements came in.
    acked: Notify,
}

/// Why a round shipped nothing more.
enum RoundError {
    /// The broker's breaker is open: try again after this.
    Open(Duration),
    /// The store or the producer failed.
    Failed(String),
}

impl Relay {
    /// A relay producing with `producer` (`acks=all`) to `topic`, through `breaker`.
    pub fn new(
        store: Store,
        producer: Arc<Producer>,
        topic: String,
        dir: Arc<Directory>,
        breaker: Breaker,
    ) -> Self {
        Relay {
            store,
            producer,
            topic,
            dir,
            breaker,
            ledger: Mutex::new(Ledger::default()),
            flushing: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            acked: Notify::new(),
        }
    }

    /// Ships until stopped: after each commit with events, when asked, and every second.
    pub async fn run(self: Arc<Self>) {
        let (acks, rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().mark(rx));
        loop {
            let mut shards: HashSet<u32> = self.dir.serving().into_iter().map(|(s, _)| s).collect();
            shards.extend(lock(&self.flushing).iter().copied());
            let shards: Vec<u32> = shards.into_iter().collect();
            match self.round(&shards, &acks).await {
                Ok(n) if n >= ROUND => continue, // more waiting
                Ok(_) => {}
                Err(RoundError::Open(wait)) => {
                    // The broker is failing: rows wait in the outbox (nothing is lost) until
                    // the breaker lets a probe through.
                    tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
                    continue;
                }
                Err(RoundError::Failed(e)) => {
                    tracing::warn!(error = %e, "outbox relay round failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tokio::select! {
                _ = self.store.outbox_written() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Let the commits of the next few milliseconds join this round: under load a read
            // per commit batch costs the database more than the wait costs an event.
            tokio::time::sleep(COALESCE).await;
        }
    }

    /// Reads the unshipped rows of `shards` that are not in flight and hands them to the
    /// producer; returns how many it sent.
    async fn round(
        &self,
        shards: &[u32],
        acks: &mpsc::UnboundedSender<(i64, i64, bool)>,
    ) -> Result<usize, RoundError> {
        if shards.is_empty() {
            return Ok(0);
        }
        let (round, busy) = {
            let mut l = lock(&self.ledger);
            l.round += 1;
            let round = l.round;
            // Marks committed before this round's read cannot show up in it.
            l.marked.retain(|_, at| *at >= round - 1);
            (round, l.in_flight.len())
        };
        let rows = self
            .store
            .unshipped(shards, ROUND + busy)
            .await
            .map_err(|e| RoundError::Failed(e.to_string()))?;
        let mut sent = 0;
        for row in rows {
            {
                let l = lock(&self.ledger);
                // On its way, or marked while this round's read ran (the read may predate the
                // mark's commit and still see the row unshipped).
                if l.marked.get(&row.seq).is_some_and(|at| *at >= round - 1)
                    || l.in_flight.contains(&row.seq)
                {
                    continue;
                }
            }
            // One pass per message: while the breaker is half-open only its probe goes out.
            let pass = match self.breaker.pass::<String>() {
                Ok(p) => p,
                Err(BreakerError::Open { retry_in_ms, .. }) if sent == 0 => {
                    return Err(RoundError::Open(Duration::from_millis(retry_in_ms)))
                }
                Err(_) => return Ok(sent),
            };
            lock(&self.ledger).in_flight.insert(row.seq);
            let body = serde_json::to_vec(&EventRecord::from_outbox(row.seq, &row.event))
                .map_err(|e| RoundError::Failed(e.to_string()))?;
            let mut record = FutureRecord::to(&self.topic)
                .partition(row.shard as i32)
                .key(row.event.aggregate_id.as_bytes())
                .payload(&body);
            // The committing command's trace travels with the event (W3C header name).
            if let Some(tp) = &row.event.traceparent {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT,
                    value: Some(tp.as_bytes()),
                }));
            }
            match self.producer.send(record) {
                Ok(delivery) => {
                    let acks = acks.clone();
                    let (seq, created) = (row.seq, row.event.created_at);
                    let producer = self.producer.clone();
                    tokio::spawn(async move {
                        let ok = super::delivered(delivery, pass, producer).await;
                        let _ = acks.send((seq, created, ok));
                    });
                    sent += 1;
                }
                Err((e, _)) => {
                    pass.done(false, || format!("producing: {e}"));
                    lock(&self.ledger).in_flight.remove(&row.seq);
                    return Err(RoundError::Failed(format!(
                        "producing to {}: {e}",
                        self.topic
                    )));
                }
            }
        }
        Ok(sent)
    }

    /// Collects acknowledgements and marks acknowledged rows shipped, a batch at a time.
    async fn mark(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(i64, i64, bool)>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let until = tokio::time::Instant::now() + MARK_EVERY;
            while batch.len() < 2 * ROUND {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(more)) => batch.push(more),
                    Ok(None) | Err(_) => break,
                }
            }
            let now = crate::domain::now_ms();
            let mut shipped = Vec::with_capacity(batch.len());
            let mut failed = 0;
            for (seq, created, ok) in &batch {
                if *ok {
                    metrics::OUTBOX_SHIP_DELAY.observe((now - created).max(0) as f64 / 1000.0);
                    shipped.push(*seq);
                } else {
                    failed += 1;
                }
            }
            let mut marked = self.store.mark_shipped(&shipped).await;
            for _ in 0..3 {
                if marked.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                marked = self.store.mark_shipped(&shipped).await;
            }
            if let Err(e) = marked {
                // Not marked: they are read and shipped again (consumers de-duplicate).
                tracing::warn!(error = %e, rows = shipped.len(), "could not mark rows shipped");
            } else {
                metrics::OUTBOX_SHIPPED.inc_by(shipped.len() as u64);
            }
            {
                let mut l = lock(&self.ledger);
                let round = l.round;
                for (seq, _, ok) in &batch {
                    l.in_flight.remove(seq);
                    if *ok {
                        l.marked.insert(*seq, round);
                    }
                }
            }
            if failed > 0 {
                tracing::warn!(
                    failed,
                    "events not acknowledged by the broker; sending again"
                );
                self.wake.notify_one();
            }
            self.acked.notify_waiters();
        }
    }

    /// Ships everything unshipped of `shards` (a handoff's last act), giving up at `deadline`.
    pub async fn flush(&self, shards: &[u32], deadline: Duration) {
        lock(&self.flushing).extend(shards.iter().copied());
        let done = tokio::time::timeout(deadline, async {
            loop {
                self.wake.notify_one();
                match self.store.outbox_backlog(shards).await {
                    Ok((0, _)) => return,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "flush: backlog unknown"),
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(50), self.acked.notified()).await;
            }
        })
        .await;
        if done.is_err() {
            tracing::warn!(
                ?shards,
                "outbox flush timed out; the next owner ships the rest"
            );
        }
        let mut flushing = lock(&self.flushing);
        for s in shards {
            flushing.remove(s);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
